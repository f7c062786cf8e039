"""The service lab's figures and goals (issue 15), from what a leg recorded.

Pure: plain lists and dicts in, numbers and verdicts out; ``scripts/lab-run`` records,
``lab/report.py`` draws. Times are seconds from the start of a leg's timeline.

A leg's record (``Leg``) holds samples taken once a second by the runner, the same way
with and without the supervisor (cgroupfs working sets per container, the machine's
available memory, paused containers), the client requests it made, the OOM kills the
kernel logged for the lab's containers, and, with the supervisor, its journal's actions
and its own CPU and RSS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

MIB = 1 << 20
GIB = 1 << 30

# the goals
GOAL_RESERVE_TICKS = 2          # reserve breached for at most 2 ticks in a row
GOAL_HIBERNATED_SHARE = 0.70    # of the idle agents, within idle_after + 1 min
GOAL_P99_RATIO = 1.1            # critical p99 under the hog / solo
GOAL_WAKE_P95_MS = 300.0


def percentile(values, q: float) -> float | None:
    """The q-th percentile (0-100) with linear interpolation between closest ranks (numpy's
    default); None for no values."""
    xs = sorted(float(v) for v in values)
    if not xs:
        return None
    if len(xs) == 1:
        return xs[0]
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def longest_run(flags) -> int:
    """The most consecutive true values."""
    best = cur = 0
    for f in flags:
        cur = cur + 1 if f else 0
        best = max(best, cur)
    return best


def seconds_true(times, flags) -> float:
    """Time spent with the flag set, each sample holding until the next one (the last
    sample counts for the median step)."""
    times = list(times)
    flags = list(flags)
    if not times:
        return 0.0
    steps = [b - a for a, b in zip(times, times[1:])]
    last = sorted(steps)[len(steps) // 2] if steps else 1.0
    steps.append(last)
    return sum(dt for dt, f in zip(steps, flags) if f)


def integrate_gib_min(times, values_bytes) -> float:
    """The integral of a memory series in GiB·min (trapezoids)."""
    total = 0.0
    for (t0, v0), (t1, v1) in zip(zip(times, values_bytes), list(zip(times, values_bytes))[1:]):
        total += (v0 + v1) / 2.0 * (t1 - t0)
    return total / GIB / 60.0


def hibernated_share(first_paused: dict, idle_names, deadline_s: float) -> tuple[int, int]:
    """(idle services paused by ``deadline_s``, idle services)."""
    names = list(idle_names)
    done = sum(1 for n in names if first_paused.get(n) is not None and first_paused[n] <= deadline_s)
    return done, len(names)


@dataclass
class Request:
    t: float              # when it started
    kind: str             # critical-solo | critical-hog | active | wake-http | wake-psql | wake-redis
    target: str
    ms: float | None      # None: no answer (lost)
    ok: bool
    through_wake: bool = False  # the target was hibernated (paused) when the client started


@dataclass
class Leg:
    name: str                        # without | with
    times: list = field(default_factory=list)          # sample times
    avail_bytes: list = field(default_factory=list)    # the machine's MemAvailable
    lab_used_bytes: list = field(default_factory=list)  # sum of the lab's working sets
    pool_used: dict = field(default_factory=dict)      # pool -> [bytes per sample]
    paused: list = field(default_factory=list)         # paused lab containers per sample
    idle_ws: list = field(default_factory=list)        # idle services' working sets per sample
    first_paused: dict = field(default_factory=dict)   # idle service -> first time paused
    requests: list = field(default_factory=list)       # [Request]
    ooms: list = field(default_factory=list)           # [(t, container name, role, class)]
    actions: list = field(default_factory=list)        # [(t, kind, outcome, name, reason)]
    daemon_cpu_s: float | None = None
    daemon_wall_s: float | None = None
    daemon_rss_max_bytes: int | None = None
    daemon_rss_end_bytes: int | None = None
    released_bytes: int = 0
    deploy_s: float = 0.0
    wall_s: float = 0.0
    daemon_exit: int | None = None   # None: no daemon / still running at the end
    events: list = field(default_factory=list)        # [(t, what)] the timeline's steps
    errors: list = field(default_factory=list)        # what broke the run


def leak_name(roles: dict) -> set:
    return {n for n, r in roles.items() if r == "leaker"}


def oom_summary(leg: Leg, roles: dict) -> dict:
    """OOM kills by container and by class; the number outside the leaking agent."""
    by_container: dict = {}
    by_class: dict = {}
    for _t, name, _role, cls in leg.ooms:
        by_container[name] = by_container.get(name, 0) + 1
        by_class[cls] = by_class.get(cls, 0) + 1
    leakers = leak_name(roles)
    outside = sum(n for c, n in by_container.items() if c not in leakers)
    stale = sum(n for c, n in by_container.items() if roles.get(c) == "stale")
    return {"by_container": by_container, "by_class": by_class, "total": len(leg.ooms),
            "outside_leaker": outside, "stale": stale}


def caused_by_daemon(without: Leg, with_: Leg, roles: dict) -> dict:
    """OOM kills with the supervisor in containers the workload does not kill by itself:
    not the leaking agent, and more than the same container had without it."""
    base = oom_summary(without, roles)["by_container"]
    mine = oom_summary(with_, roles)["by_container"]
    leakers = leak_name(roles)
    return {c: n - base.get(c, 0) for c, n in mine.items()
            if c not in leakers and n > base.get(c, 0)}


def reserve_summary(leg: Leg, lab_bytes: int, reserve_bytes: int) -> dict:
    """The lab's available memory (its host memory minus what its services hold) inside
    its emergency reserve: seconds, samples, the longest run of samples."""
    inside = [lab_bytes - used <= reserve_bytes for used in leg.lab_used_bytes]
    low = min((lab_bytes - u for u in leg.lab_used_bytes), default=None)
    return {"seconds": seconds_true(leg.times, inside), "samples": sum(inside),
            "longest_run": longest_run(inside), "lowest_available_bytes": low}


def pool_peaks(leg: Leg, budgets: dict) -> dict:
    """pool -> (peak working sets, budget, peak / budget)."""
    out = {}
    for pool, series in leg.pool_used.items():
        peak = max(series, default=0)
        b = budgets.get(pool, 0)
        out[pool] = (peak, b, peak / b if b else None)
    return out


def latency(leg: Leg, kind: str) -> dict:
    ms = [r.ms for r in leg.requests if r.kind == kind and r.ok and r.ms is not None]
    return {"n": len(ms), "p50": percentile(ms, 50), "p99": percentile(ms, 99),
            "lost": sum(1 for r in leg.requests if r.kind == kind and not r.ok)}


def wakes(leg: Leg) -> dict:
    """Real-client requests to the idle services that came back: how many went through a
    wake (target hibernated when the client started), their p50/p95, and every lost one."""
    reqs = [r for r in leg.requests if r.kind.startswith("wake-")]
    through = [r.ms for r in reqs if r.through_wake and r.ok and r.ms is not None]
    awake = [r.ms for r in reqs if not r.through_wake and r.ok and r.ms is not None]
    by_client = {}
    for r in reqs:
        d = by_client.setdefault(r.kind[5:], {"n": 0, "wakes": 0, "lost": 0})
        d["n"] += 1
        d["wakes"] += int(r.through_wake)
        d["lost"] += int(not r.ok)
    return {"requests": len(reqs), "wakes": len(through) + sum(
                1 for r in reqs if r.through_wake and not r.ok),
            "p50": percentile(through, 50), "p95": percentile(through, 95),
            "awake_p50": percentile(awake, 50), "awake_p95": percentile(awake, 95),
            "lost": sum(1 for r in reqs if not r.ok), "by_client": by_client}


def lost_total(leg: Leg) -> int:
    return sum(1 for r in leg.requests if not r.ok)


def action_counts(leg: Leg) -> dict:
    out: dict = {}
    for a in leg.actions:
        kind, outcome = a[1], a[2]
        out[(kind, outcome)] = out.get((kind, outcome), 0) + 1
    return out


def summarise(leg: Leg, roles: dict, classes: dict, budgets: dict, lab_bytes: int,
              reserve_bytes: int, idle_after_s: float) -> dict:
    idle = [n for n, r in roles.items() if r in ("idle", "store")]
    hib, n_idle = hibernated_share(leg.first_paused, idle, idle_after_s + 60.0)
    return {
        "oom": oom_summary(leg, roles),
        "reserve": reserve_summary(leg, lab_bytes, reserve_bytes),
        "pools": pool_peaks(leg, budgets),
        "idle_gib_min": integrate_gib_min(leg.times, leg.idle_ws),
        "released_bytes": leg.released_bytes,
        "hibernated": (hib, n_idle),
        "paused_max": max(leg.paused, default=0),
        "machine_avail_min": min(leg.avail_bytes, default=None),
        "solo": latency(leg, "critical-solo"),
        "hog": latency(leg, "critical-hog"),
        "active": latency(leg, "active"),
        "wakes": wakes(leg),
        "lost": lost_total(leg),
        "actions": action_counts(leg),
        "daemon_cpu_pct": (100.0 * leg.daemon_cpu_s / leg.daemon_wall_s
                           if leg.daemon_cpu_s is not None and leg.daemon_wall_s else None),
        "daemon_rss_max_bytes": leg.daemon_rss_max_bytes,
        "deploy_s": leg.deploy_s,
        "wall_s": leg.wall_s,
    }


def goals(s_with: dict) -> list[tuple[str, str, bool | None]]:
    """(goal, figure, met) for the leg with the supervisor; met None: not measured."""
    out = []
    outside = s_with["oom"]["outside_leaker"]
    out.append(("zero OOM kills outside the leaking agent", f"{outside}", outside == 0))
    run = s_with["reserve"]["longest_run"]
    out.append((f"reserve breached at most {GOAL_RESERVE_TICKS} ticks in a row",
                f"{run} in a row", run <= GOAL_RESERVE_TICKS))
    hib, n = s_with["hibernated"]
    share = hib / n if n else None
    out.append((f">= {GOAL_HIBERNATED_SHARE:.0%} of idle agents hibernated within idle_after + 1 min",
                f"{hib}/{n}" + (f" ({share:.0%})" if share is not None else ""),
                None if share is None else share >= GOAL_HIBERNATED_SHARE))
    solo, hog = s_with["solo"]["p99"], s_with["hog"]["p99"]
    ratio = hog / solo if solo and hog else None
    out.append((f"critical p99 under the CPU hog <= {GOAL_P99_RATIO}x solo",
                f"{hog:.1f} / {solo:.1f} ms = {ratio:.2f}x" if ratio else "n/a",
                None if ratio is None else ratio <= GOAL_P99_RATIO))
    w = s_with["wakes"]
    p95 = w["p95"]
    out.append((f"wake p95 < {GOAL_WAKE_P95_MS:.0f} ms with real clients",
                f"{p95:.0f} ms over {w['wakes']} wakes" if p95 is not None else "no wakes",
                None if p95 is None else p95 < GOAL_WAKE_P95_MS))
    out.append(("zero requests lost", f"{s_with['lost']}", s_with["lost"] == 0))
    return out


def broken(without: Leg, with_: Leg, roles: dict) -> list[str]:
    """What makes the run broken (CI fails on these, never on timing figures): a crash,
    a lost request, an OOM kill the supervisor caused."""
    out = []
    for leg in (without, with_):
        out += [f"{leg.name}: {e}" for e in leg.errors]
    if with_.daemon_exit not in (None, 0):
        out.append(f"with: the daemon exited with {with_.daemon_exit}")
    for leg in (without, with_):
        if lost_total(leg):
            lost = [r for r in leg.requests if not r.ok]
            out.append(f"{leg.name}: {len(lost)} request(s) lost, first: {lost[0].kind} "
                       f"to {lost[0].target} at {lost[0].t:.0f}s")
    for c, n in caused_by_daemon(without, with_, roles).items():
        out.append(f"with: {n} OOM kill(s) of {c} more than without the supervisor")
    return out


def fmt_bytes(n) -> str:
    if n is None:
        return "n/a"
    return f"{n / GIB:.2f} GiB" if abs(n) >= GIB else f"{n / MIB:.0f} MiB"


def fmt_ms(v) -> str:
    return "n/a" if v is None else f"{v:.1f} ms"


def table(s_without: dict, s_with: dict) -> list[tuple[str, str, str]]:
    """The side-by-side table: (figure, without, with)."""
    rows = []

    def oom_text(s):
        o = s["oom"]
        if not o["total"]:
            return "0"
        parts = ", ".join(f"{c} {n}" for c, n in sorted(o["by_container"].items()))
        cls = ", ".join(f"{c} {n}" for c, n in sorted(o["by_class"].items()))
        return f"{o['total']} ({parts}; by class: {cls})"

    rows.append(("OOM kills (by container; by class)", oom_text(s_without), oom_text(s_with)))
    def outside(s):
        o = s["oom"]
        return (f"{o['outside_leaker']}" + (f" (the stale-limit agent, under its owner's limit: "
                                            f"{o['stale']})" if o["stale"] else ""))
    rows.append(("OOM kills outside the leaking agent", outside(s_without), outside(s_with)))

    def res(s):
        r = s["reserve"]
        return (f"{r['seconds']:.0f} s, longest {r['longest_run']} in a row; "
                f"lowest available {fmt_bytes(r['lowest_available_bytes'])}")
    rows.append(("lab available memory inside the reserve", res(s_without), res(s_with)))
    rows.append(("the machine's available memory, lowest", fmt_bytes(s_without["machine_avail_min"]),
                 fmt_bytes(s_with["machine_avail_min"])))
    for pool in sorted(s_without["pools"]):
        def pk(s, pool=pool):
            peak, budget, ratio = s["pools"].get(pool, (0, 0, None))
            return f"{fmt_bytes(peak)} / {fmt_bytes(budget)}" + (f" ({ratio:.0%})" if ratio is not None else "")
        rows.append((f"pool {pool}: peak use / budget", pk(s_without), pk(s_with)))
    rows.append(("idle services' memory (GiB·min)", f"{s_without['idle_gib_min']:.2f}",
                 f"{s_with['idle_gib_min']:.2f}"))
    rows.append(("memory released by hibernation", fmt_bytes(s_without["released_bytes"]),
                 fmt_bytes(s_with["released_bytes"])))

    def hib(s):
        h, n = s["hibernated"]
        return f"{h}/{n} (most at once: {s['paused_max']})"
    rows.append(("idle services hibernated within idle_after + 1 min", hib(s_without), hib(s_with)))

    def lat(s):
        return (f"solo p50 {fmt_ms(s['solo']['p50'])} p99 {fmt_ms(s['solo']['p99'])}; "
                f"hog p50 {fmt_ms(s['hog']['p50'])} p99 {fmt_ms(s['hog']['p99'])}")
    rows.append(("critical requests, solo vs Ollama CPU hog", lat(s_without), lat(s_with)))

    def wk(s):
        w = s["wakes"]
        through = (f"{w['wakes']} wakes, p50 {fmt_ms(w['p50'])} p95 {fmt_ms(w['p95'])}"
                   if w["wakes"] else "0 wakes")
        return (f"{w['requests']} requests: {through}; awake p50 {fmt_ms(w['awake_p50'])}; "
                f"lost {w['lost']}")
    rows.append(("real clients to idle services (HTTP, psql, redis-cli)", wk(s_without), wk(s_with)))
    rows.append(("requests lost (all clients)", str(s_without["lost"]), str(s_with["lost"])))

    def acts(s):
        a = s["actions"]
        return ", ".join(f"{k}/{o} {n}" for (k, o), n in sorted(a.items())) or "none"
    rows.append(("actions (kind/outcome)", acts(s_without), acts(s_with)))

    def dm(s):
        if s["daemon_cpu_pct"] is None:
            return "no daemon"
        return f"CPU {s['daemon_cpu_pct']:.1f}% of a core, RSS max {fmt_bytes(s['daemon_rss_max_bytes'])}"
    rows.append(("the daemon's own CPU and RSS", dm(s_without), dm(s_with)))
    rows.append(("deploy (3 phases, healthy) / whole leg",
                 f"{s_without['deploy_s']:.0f} s / {s_without['wall_s']:.0f} s",
                 f"{s_with['deploy_s']:.0f} s / {s_with['wall_s']:.0f} s"))
    return rows


def format_table(rows, widths=(46, 52)) -> str:
    lines = [f"{'':<{widths[0]}} | {'without the supervisor':<{widths[1]}} | with the supervisor"]
    lines.append("-" * (widths[0] + widths[1] + 30))
    for name, a, b in rows:
        lines.append(f"{name:<{widths[0]}} | {a:<{widths[1]}} | {b}")
    return "\n".join(lines)
