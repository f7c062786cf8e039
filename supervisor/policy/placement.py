"""Class placement decisions (issue 3; Rules 1.1, 1.2, 1.3): every running managed
container on its class's cores, with its class's CPU quota, a memory limit (Rule 1.1: the
class default for a container that has none), a reservation of 50-75% of the limit and no
swap beyond the limit, inside its pool's budget (``admission``).

Pure: decided from the tick (``desired_resources``, ``plan_placement``); the executor
(``act.placement``) applies the result through the Docker API and the component
(``runtime.placement``) keeps the memory between passes and publishes.

The memory limit rule (``rules.memory_limit``, issue 13): a limit that is written is
never below the container's working set plus the configured headroom. A running
container without a limit whose usage is above its class default asks for that floor;
when its pool cannot grant at least the floor, its memory is left as it is and it is
reported over budget.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator

from supervisor.model import rules
from supervisor.model.actions import Action
from supervisor.model.config import ClassConfig, Config
from supervisor.model.pools import FITS, OVER_BUDGET, working_set_bytes
from supervisor.model.snapshot import LIVE_STATES, ContainerInfo, ContainerSample
from supervisor.model.units import format_bytes, format_cpuset
from supervisor.observe.history import History, recommend_limit
from supervisor.policy.admission import HELD, SETTLING, Admission, Candidate, admit_all
from supervisor.policy.placement_diff import (Desired, describe_changes, fmt_mem, resources_of,
                                              update_kwargs)
from supervisor.policy.tick import Tick

# Adaptive limits wait for this much history: a percentile of the first minutes is only
# the warm-up's maximum.
ADAPTIVE_MIN_HISTORY_S = 300.0
# ...and change a limit only when the recommendation moved by more than this share of
# it, so a limit does not follow every wiggle of the working set.
ADAPTIVE_CHANGE_RATIO = 0.10

#: Where a memory limit comes from (Desired.limit_source).
SOURCE_OVERRIDE, SOURCE_ADAPTIVE, SOURCE_EXISTING = "override", "adaptive", "existing"
SOURCE_DEFAULT = "class-default"
#: The limit asked for was below the working set plus headroom and was raised to it.
SOURCE_FLOOR = "usage-floor"
#: A limit the supervisor gave was raised after OOM kills under it (rules.oom_raise_bytes),
#: or, its pool having no room for the raise, removed.
SOURCE_OOM_RAISE, SOURCE_OOM_REMOVED = "oom-raise", "oom-removed"

# ---------------------------------------------------------------- desired values


def class_cpuset(cls: ClassConfig, cfg: Config) -> str:
    """The class's cores; "any" means every online core of the host (written out, so
    ``docker inspect`` shows the cores rather than an empty "no pinning")."""
    if cls.cores is not None:
        return format_cpuset(cls.cores)
    return format_cpuset(tuple(range(cfg.host.cores)))


def adaptive_ready(history: History, cid: str, cfg: Config) -> bool:
    """Whether the container's history spans ADAPTIVE_MIN_HISTORY_S: samples kept
    across daemon restarts count (the history is persisted), and a window shorter than
    the minimum never makes a short history enough."""
    del cfg  # the history knows its own sample step (restored samples are resampled to it)
    return history.covered_s(cid) >= ADAPTIVE_MIN_HISTORY_S - 1e-6


def recommended_limit(history: History, cid: str, cls: ClassConfig, cfg: Config) -> int | None:
    """Rule 1.1: the configured percentile (p99) of the working set over the history
    window plus headroom (20%), rounded up; never below the class minimum."""
    h = cfg.settings.history
    p = history.percentile(cid, h.percentile)
    if p is None:
        return None
    return recommend_limit(p, h.headroom,
                           floor_bytes=max(cls.memory_min_bytes, rules.DOCKER_MIN_MEMORY_BYTES))


def limit_basis_bytes(c: ContainerSample, history: History | None) -> int:
    """The use a new limit for ``c`` must cover (plus headroom): its working set, running;
    for one that holds no limit yet, the highest working set seen of it, now or in its
    history (earlier runs included: the history is by container id, and a restart keeps
    the id). It has settled by then, and its warm-up is part of its need."""
    if c.info.state != "running":
        return 0
    ws = working_set_bytes(c)
    if c.info.memory_limit_bytes or not ws or history is None:
        return ws
    return max(int(history.peak(c.info.id) or 0), ws)


def settling(c: ContainerSample, cfg: Config, override: dict[str, Any], now_s: float) -> bool:
    """A running container without a memory limit (and none asked for by another
    component) that has not settled yet (``rules.limit_settled``): it gets no limit now."""
    return (c.info.state == "running" and not c.info.memory_limit_bytes
            and not override.get("memory_limit_bytes")
            and not rules.limit_settled(c.info.started_at, c.info.health, now_s,
                                        cfg.settings.history.settle))


def wanted_limit(c: ContainerSample, cls: ClassConfig, cfg: Config, override: dict[str, Any],
                 history: History | None, now_s: float | None = None,
                 basis_bytes: int | None = None) -> tuple[int, str]:
    """The memory limit a container should hold before pool admission, and why: another
    component's override; the adaptive recommendation (when the class enables it and
    history is long enough); the limit it already has; else the class default.

    A new limit (anything but the one it holds) is never below its working set plus the
    headroom (``rules.memory_limit``): a class default under what a running service uses
    would make the kernel refuse it (cgroup v1) or OOM-kill the service (v2), and after a
    restart it would land at the start event and kill it on every start (issue 13). For a
    container that holds no limit yet, that working set is the peak seen of it
    (``limit_basis_bytes``, or ``basis_bytes`` when the caller has it already). The limit
    it already holds is kept as it is (no write), whatever its use."""
    headroom = cfg.settings.history.headroom
    current = c.info.memory_limit_bytes
    ws = limit_basis_bytes(c, history) if basis_bytes is None else basis_bytes

    def floored(want: int, source: str) -> tuple[int, str]:
        limit = rules.memory_limit(want, ws, headroom)
        return (limit, source) if limit == want else (limit, SOURCE_FLOOR)

    if override.get("memory_limit_bytes"):
        return floored(int(override["memory_limit_bytes"]), SOURCE_OVERRIDE)
    if cls.adaptive_limits and history is not None and adaptive_ready(history, c.info.id, cfg):
        rec = recommended_limit(history, c.info.id, cls, cfg)
        if rec is not None:
            rec = rules.memory_limit(rec, ws, headroom)
            if current and abs(rec - current) <= ADAPTIVE_CHANGE_RATIO * current:
                return current, SOURCE_EXISTING
            if current and rec < current and now_s is not None and rules.oom_kills_within(
                    c.info.oom_kill_times_s, now_s):
                # OOM-killed lately: its working-set history ends at each kill, so it
                # understates the need. The limit is not lowered until the kills age out.
                return current, SOURCE_EXISTING
            return rec, SOURCE_ADAPTIVE
    if current:
        return current, SOURCE_EXISTING
    return floored(cls.memory_limit_bytes, SOURCE_DEFAULT)


def cpu_cap(cls: ClassConfig, override: dict[str, Any]) -> float | None:
    """Every CPU limit is a cap: the class's, the ladder's throttle, Rule 12.1's for Ollama.
    The tightest satisfies them all (an override never lifts a container above its class)."""
    return rules.effective_cpu_cores({"class": cls.cpu_quota_cores,
                                      "override": override.get("cpu_quota_cores")})


def desired_resources(c: ContainerSample, cfg: Config, *, override: dict[str, Any] | None = None,
                      admission: Admission | None = None, limit_source: str = "") -> Desired:
    """The cpuset, CPU quota and memory values ``c`` should have. Memory comes from the
    pool's admission (granted limit); without a grant it is left alone."""
    ov = override or {}
    cls = cfg.classes[c.class_name]
    cpuset = str(ov.get("cpuset_cpus") or class_cpuset(cls, cfg))
    quota = cpu_cap(cls, ov)
    if admission is None or admission.verdict in (OVER_BUDGET, HELD, SETTLING) \
            or admission.granted_bytes <= 0:
        return Desired(cpuset, quota, None, None, None, limit_source,
                       admission.verdict if admission else "")
    limit = admission.granted_bytes
    current_res = c.info.memory_reservation_bytes
    if ov.get("memory_reservation_bytes"):
        res = min(int(ov["memory_reservation_bytes"]), limit)
    elif rules.reservation_in_range(current_res, limit):
        res = current_res  # already within Rule 1.1's range: not worth an update
    else:
        res = rules.reservation_for(limit, cls.reservation_ratio)
    # Swap limit = memory limit: no swap beyond the limit.
    return Desired(cpuset, quota, limit, res, limit, limit_source, admission.verdict)


# ---------------------------------------------------------------- the plan


@dataclass
class PlacementMemory:
    """What placement remembers between passes (kept by the component, read by the plan)."""

    placed: set[str] = field(default_factory=set)  # placed before: a new difference is drift
    alerted: set[str] = field(default_factory=set)  # over budget, alert already raised
    stop_sent: set[str] = field(default_factory=set)  # over budget, strict stop already tried
    retry_at: dict[str, float] = field(default_factory=dict)  # failed update: not before
    failures: Counter = field(default_factory=Counter)
    swap_limit_supported: bool = True
    # Dry run: the change last reported as "would do", per container, so "would_place"
    # counts reports, not passes (the plan itself is the live run's; the actuator says
    # each report once).
    dry_reported: dict[str, tuple] = field(default_factory=dict)
    # The memory limits placement wrote: container id -> (limit bytes, when). A limit a
    # container holds that is not here is its owner's (or another tool's): never raised.
    given: dict[str, tuple[int, float]] = field(default_factory=dict)
    # Containers whose own limit placement removed after an OOM loop its pool had no
    # room to end: their memory is left alone from then on (no class default again).
    released: set[str] = field(default_factory=set)
    # OOM loops alerted already, per container: the kill count at the alert.
    oom_alerted: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class PlacementPlan:
    actions: tuple[Action, ...]
    desired: dict[str, Desired]  # running managed containers, by id
    admissions: dict[str, Admission]  # live managed containers, by id
    pending: dict[str, dict[str, Any]]  # id -> update kwargs still needed
    names: dict[str, str]


@dataclass(frozen=True)
class OomCase:
    """A live managed container in an OOM loop (``rules.oom_loop``) and what placement
    does about it: ``raise`` a limit it gave (to ``raise_bytes``, within the pool's room,
    else remove it), ``owner``: alert only (the limit is its owner's), ``released``: its
    limit was removed already (alert only)."""

    kind: str  # raise | owner | released
    kills: int  # OOM kills within the window
    limit_bytes: int  # the limit it holds
    raise_bytes: int = 0
    recommended_bytes: int | None = None


def live_managed(tick: Tick) -> Iterator[tuple[ContainerSample, ClassConfig]]:
    """Every live managed container of a class the config has, with its class."""
    for c in tick.snapshot.containers:
        cls = tick.cfg.classes.get(c.class_name)
        if c.managed and cls is not None and c.info.state in LIVE_STATES:
            yield c, cls


def oom_cases(tick: Tick, mem: PlacementMemory) -> dict[str, OomCase]:
    """Every live managed container the kernel OOM-killed repeatedly lately, by id."""
    cfg = tick.cfg
    headroom = cfg.settings.history.headroom
    out = {}
    for c, cls in live_managed(tick):
        times = c.info.oom_kill_times_s
        if not times or not rules.oom_loop(times, tick.now):  # (most have no kill at all)
            continue
        cid, limit = c.info.id, c.info.memory_limit_bytes
        kills = rules.oom_kills_within(times, tick.now)
        rec = recommended_limit(tick.history, cid, cls, cfg) if tick.history is not None else None
        given = mem.given.get(cid)
        if cid in mem.released:
            out[cid] = OomCase("released", kills, limit, recommended_bytes=rec)
        elif given is None or not limit or given[0] != limit:
            out[cid] = OomCase("owner", kills, limit, recommended_bytes=rec)
        elif rules.oom_loop(times, tick.now, since_s=given[1]):
            # Killed again under the limit placement gave (or raised last): raise it. The
            # working set's peak is what the history holds of the runs that were killed.
            peak = tick.history.peak(cid) if tick.history is not None else None
            ws = max(int(peak or 0), working_set_bytes(c))
            out[cid] = OomCase("raise", kills, limit,
                               rules.oom_raise_bytes(limit, ws, rec, headroom), rec)
    return out


def admission_candidates(tick: Tick, oom: dict[str, OomCase] | None = None,
                         released: set[str] | frozenset[str] = frozenset()
                         ) -> tuple[list[Candidate], dict[str, str]]:
    """Per live managed container what it asks its pool for (already raised to its floor)
    and the least it may be given: its class minimum and, running, its working set plus
    headroom (``rules.memory_floor_bytes``). A container in an OOM loop under a limit
    placement gave asks for the raise and takes nothing less (restarting included: Docker
    keeps the new limit for its next start); one whose limit placement removed asks for
    nothing (its memory is left alone)."""
    cfg = tick.cfg
    headroom = cfg.settings.history.headroom
    oom = oom or {}
    out, sources = [], {}
    for c, cls in live_managed(tick):
        case = oom.get(c.info.id)
        if case is not None and case.kind == "raise":
            out.append(Candidate(id=c.info.id, name=c.info.name, pool=cls.pool,
                                 wanted_bytes=case.raise_bytes, floor_bytes=case.raise_bytes,
                                 current_bytes=c.info.memory_limit_bytes, changeable=True,
                                 started_at=c.info.started_at))
            sources[c.info.id] = SOURCE_OOM_RAISE
            continue
        if c.info.id in released:
            sources[c.info.id] = SOURCE_OOM_REMOVED
            continue
        override = tick.overrides.get(c.info.id, {})
        basis = limit_basis_bytes(c, tick.history)
        wanted, source = wanted_limit(c, cls, cfg, override, tick.history, tick.now, basis)
        running = c.info.state == "running"
        floor = rules.memory_floor_bytes(basis, headroom)
        out.append(Candidate(id=c.info.id, name=c.info.name, pool=cls.pool, wanted_bytes=wanted,
                             floor_bytes=max(cls.memory_min_bytes, floor),
                             current_bytes=c.info.memory_limit_bytes,
                             changeable=running, started_at=c.info.started_at,
                             settling=settling(c, cfg, override, tick.now)))
        sources[c.info.id] = source
    return out, sources


def place_key(info: ContainerInfo, d: Desired, kw: dict[str, Any]) -> tuple:
    """What a dry-run report said: the same change from the same values is one report."""
    return (tuple(sorted(resources_of(info).items())), tuple(sorted(d.to_params().items())),
            tuple(sorted(kw.items())))


def over_budget_actions(c: ContainerSample, cls: ClassConfig, adm: Admission, cfg: Config,
                        mem: PlacementMemory) -> list[Action]:
    """The alert (once per episode) for a container its pool cannot fit, and under
    ``manage.admission = "strict"`` the stop (never of an untouchable class)."""
    cid = c.info.id
    out = []
    why = (f"over budget: pool {adm.pool} has {format_bytes(adm.room_bytes)} left of "
           f"{format_bytes(cfg.pools[adm.pool].budget_bytes)}, {c.info.name} wants "
           f"{format_bytes(adm.wanted_bytes)} and needs at least "
           f"{format_bytes(max(adm.floor_bytes, rules.DOCKER_MIN_MEMORY_BYTES))}")
    params = {"pool": adm.pool, "wanted_bytes": adm.wanted_bytes,
              "room_bytes": adm.room_bytes, "floor_bytes": adm.floor_bytes}
    if cid not in mem.alerted:
        held = c.info.memory_limit_bytes
        out.append(Action("alert", cid, c.info.name, why + (
            f"; its limit of {format_bytes(held)} is left as it is" if held
            else "; no memory limit granted"), "pools", params))
    if cfg.settings.manage.admission == "strict" and cid not in mem.stop_sent \
            and c.info.state == "running":
        if rules.untouchable(cls):
            if cid not in mem.alerted:
                out.append(Action("alert", cid, c.info.name,
                                  f"class {cls.name} is never stopped: not stopped "
                                  "although admission is strict", "pools", params))
        else:
            out.append(Action("stop", cid, c.info.name, why + "; admission is strict", "pools",
                              params, destructive=True))
    return out


def plan_placement(tick: Tick, memory: PlacementMemory | None = None) -> PlacementPlan:
    """Every decision of one pass: per running managed container its desired values and
    a "place" action where Docker's values differ (for containers with an event, or all
    on a reconcile pass); per pool the admission, with an "alert" (and, under
    ``manage.admission = "strict"``, a "stop") for a container over budget."""
    mem = memory or PlacementMemory()
    cfg = tick.cfg
    oom = oom_cases(tick, mem)
    candidates, sources = admission_candidates(tick, oom, mem.released)
    admissions = admit_all({p.name: p.budget_bytes for p in cfg.pools.values()}, candidates)
    places: list[Action] = []
    others: list[Action] = []
    desired: dict[str, Desired] = {}
    pending: dict[str, dict[str, Any]] = {}
    names: dict[str, str] = {}
    events = set(tick.events)
    for c in tick.snapshot.containers:
        cid = c.info.id
        if cid not in sources:
            continue
        names[cid] = c.info.name
        cls = cfg.classes[c.class_name]
        adm = admissions.get(cid)
        stopping = False  # strict admission stops it: no update before the stop
        case = oom.get(cid)
        raising = case is not None and case.kind == "raise"
        if case is not None:
            others += oom_alerts(c, case, adm, tick, mem)
        if raising and adm is not None and adm.verdict == OVER_BUDGET:
            # No room for the raise: the limit placement gave is removed rather than kept
            # killing the container (oom_alerts says so).
            if c.info.state in ("running", "restarting"):
                places.append(oom_removal(c, cls, cfg, tick, case))
            continue
        if adm is not None and adm.verdict == OVER_BUDGET:
            acts = over_budget_actions(c, cls, adm, cfg, mem)
            others += acts
            stopping = any(a.kind == "stop" for a in acts)
        if c.info.state != "running" and not (raising and c.info.state == "restarting"):
            continue  # paused / restarting: Docker's values are changed when it runs again
        d = desired_resources(c, cfg, override=tick.overrides.get(cid, {}), admission=adm,
                              limit_source=sources[cid])
        desired[cid] = d
        kw = update_kwargs(c.info, d, swap_limit_supported=mem.swap_limit_supported)
        if not kw:
            continue
        pending[cid] = kw
        if not (tick.reconcile or cid in events or raising) or stopping:
            continue
        if cid not in events and tick.now < mem.retry_at.get(cid, 0.0):
            continue
        # A first memory limit (the container has settled) is placement, not a repair.
        first_limit = "mem_limit" in kw and not c.info.memory_limit_bytes
        kind = "repair drift" if cid in mem.placed and not first_limit else "place"
        why = f"{kind} ({cls.name}, {d.limit_source or 'memory untouched'}"
        if d.admission and d.admission != FITS:
            why += f", {d.admission}"
        why += "): " + describe_changes(c.info, kw)
        if raising:
            why += (f"; OOM-killed {case.kills} times in the last "
                    f"{rules.OOM_LOOP_WINDOW_S / 60:.0f} min under the limit the supervisor gave")
        places.append(Action("place", cid, c.info.name, why, "placement",
                             {"class": cls.name, **d.to_params(), "fields": sorted(kw),
                              "oom": raising,
                              # The executor re-checks the floor against a fresh read; this
                              # is what it falls back on when the cgroup cannot be read.
                              "working_set_bytes": working_set_bytes(c)}))
    return PlacementPlan(tuple(places + others), desired, admissions, pending, names)


# ---------------------------------------------------------------- OOM loops


def oom_removal(c: ContainerSample, cls: ClassConfig, cfg: Config, tick: Tick,
                case: OomCase) -> Action:
    """The "place" action that removes a limit placement gave, for a container in an OOM
    loop whose pool has no room for a raise. Docker refuses to clear a memory limit
    ("Minimum memory limit allowed is 6MB" for -1), so the limit (and the swap limit, which
    may not be below it) becomes the host's memory: no limit in effect."""
    host_bytes = rules.round_up_bytes(tick.snapshot.host.memory_total_bytes)
    d = Desired(class_cpuset(cls, cfg), cpu_cap(cls, tick.overrides.get(c.info.id, {})),
                host_bytes, c.info.memory_reservation_bytes, host_bytes,
                SOURCE_OOM_REMOVED, OVER_BUDGET)
    kw = update_kwargs(c.info, d)
    return Action("place", c.info.id, c.info.name,
                  f"remove the memory limit the supervisor gave ({fmt_mem(case.limit_bytes)}): "
                  f"OOM-killed {case.kills} times in the last "
                  f"{rules.OOM_LOOP_WINDOW_S / 60:.0f} min and pool {cls.pool} has no room "
                  f"for {format_bytes(case.raise_bytes)}; " + describe_changes(c.info, kw),
                  "placement", {"class": cls.name, **d.to_params(), "fields": sorted(kw),
                                "oom": True, "working_set_bytes": working_set_bytes(c)})


def oom_alerts(c: ContainerSample, case: OomCase | None, adm: Admission | None, tick: Tick,
               mem: PlacementMemory) -> list[Action]:
    """Placement's word on an OOM loop, once per episode (and again when it is killed
    more often): what it does about the limit, or why it does nothing."""
    said = mem.oom_alerted.get(c.info.id, 0)
    if case is None or (said and case.kills < 2 * said):
        return []  # said already; said again when the kills have doubled
    window = f"{rules.OOM_LOOP_WINDOW_S / 60:.0f} min"
    head = (f"OOM loop: {c.info.name} was OOM-killed {case.kills} times in the last {window} "
            f"(restarts: {c.info.restart_count})")
    rec = (f"; recommended limit {format_bytes(case.recommended_bytes)}"
           if case.recommended_bytes else "")
    if case.kind == "owner":
        text = (f"{head} under a memory limit of {fmt_mem(case.limit_bytes)} its owner set: "
                f"not raised (the supervisor raises only limits it gave itself){rec}")
    elif case.kind == "released":
        text = (f"{head}; the supervisor removed the limit it gave before: nothing more "
                "it can do")
    elif adm is not None and adm.verdict == OVER_BUDGET:
        text = (f"{head} under the limit of {fmt_mem(case.limit_bytes)} the supervisor gave; "
                f"pool {adm.pool} has {format_bytes(adm.room_bytes)} left, not the "
                f"{format_bytes(case.raise_bytes)} a raise needs: the supervisor removes its "
                "limit (the container now runs outside its pool's budget)")
    else:
        text = (f"{head} under the limit of {fmt_mem(case.limit_bytes)} the supervisor gave: "
                f"raised to {format_bytes(case.raise_bytes)}{rec}")
    return [Action("alert", c.info.id, c.info.name, text, "placement",
                   {"oom": case.kind, "kills": case.kills, "limit_bytes": case.limit_bytes,
                    "raise_bytes": case.raise_bytes})]


# ---------------------------------------------------------------- recommendations


def recommendations(tick: Tick, history: History) -> list[dict[str, Any]]:
    """Per live managed container: the working-set percentile over the history window,
    the recommended limit (+ headroom, Rule 1.1) and reservation, next to what it holds."""
    cfg = tick.cfg
    h = cfg.settings.history
    out = []
    for c, cls in live_managed(tick):
        p = history.percentile(c.info.id, h.percentile)
        limit = recommended_limit(history, c.info.id, cls, cfg)
        out.append({
            "id": c.info.short_id, "name": c.info.name, "class": cls.name, "pool": cls.pool,
            "samples": history.samples(c.info.id), "percentile": h.percentile,
            "working_set_percentile_bytes": None if p is None else int(p),
            "recommended_limit_bytes": limit,
            "recommended_reservation_bytes":
                None if limit is None else rules.reservation_for(limit, cls.reservation_ratio),
            "current_limit_bytes": c.info.memory_limit_bytes,
            "current_reservation_bytes": c.info.memory_reservation_bytes,
            "adaptive": cls.adaptive_limits,
            "adaptive_ready": adaptive_ready(history, c.info.id, cfg),
        })
    return out
