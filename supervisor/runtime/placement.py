"""Class placement (issue 3; Rules 1.1, 1.2, 1.3): every running managed container on its
class's cores, with its class's CPU quota, a memory limit (Rule 1.1: the class default
for a container that has none), a reservation of 50-75% of the limit and no swap beyond
the limit, inside its pool's budget (``admission``).

Decided purely from the tick (``desired_resources``, ``plan_placement``); applied
through the Docker API (``Engine.update``) so ``docker inspect`` tells the truth. A
container is placed at once when it has an event (start, restart, update by someone)
and every container is checked on reconcile passes (drift repair). Idempotent: a
container whose Docker values already match gets no update call.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from supervisor.model import rules
from supervisor.model.actions import Action, ActionResult, Outcome
from supervisor.policy.admission import DOCKER_MIN_MEMORY_BYTES, HELD, Admission, Candidate, admit_all
from supervisor.act.component import Component
from supervisor.policy.tick import Tick
from supervisor.model.config import ClassConfig, Config
from supervisor.model.params import Param
from supervisor.observe.history import History, recommend_limit
from supervisor.model.pools import FITS, OVER_BUDGET, SHRUNK
from supervisor.model.snapshot import LIVE_STATES, ContainerInfo, ContainerSample
from supervisor.model.units import format_bytes, format_cpuset, parse_cpuset

log = logging.getLogger(__name__)

CPU_PERIOD_US = 100_000  # the CFS period Docker uses by default (cpu.cfs_period_us)
CPU_MIN_QUOTA_US = 1_000  # the kernel refuses a CFS quota below 1 ms
# Adaptive limits wait for this much history: a percentile of the first minutes is only
# the warm-up's maximum.
ADAPTIVE_MIN_HISTORY_S = 300.0
# ...and change a limit only when the recommendation moved by more than this share of
# it, so a limit does not follow every wiggle of the working set.
ADAPTIVE_CHANGE_RATIO = 0.10
# A failed update is retried on reconcile passes, backing off up to this long.
RETRY_MAX_S = 300.0
# Recommendations (percentiles over the history window, which move slowly) are recomputed
# when a container comes, goes or changes its limits, and at least this often: not every
# tick, where they cost ~0.2 ms per container (issue 9 soak: 24 ms a pass at 110).
RECOMMEND_EVERY_S = 30.0
_PAGE = 4096


# ---------------------------------------------------------------- desired values


@dataclass(frozen=True)
class Desired:
    """What one container's Docker resources should be. ``None`` memory fields: memory is
    left as it is (the pool had no room to grant, or the container is not running)."""

    cpuset_cpus: str
    cpu_quota_cores: float | None  # None = no CPU quota
    memory_limit_bytes: int | None
    memory_reservation_bytes: int | None
    memory_swap_bytes: int | None
    limit_source: str = ""  # override | adaptive | existing | class-default
    admission: str = ""  # fits | shrunk | over-budget | held

    def to_params(self) -> dict[str, Any]:
        return {"cpuset_cpus": self.cpuset_cpus, "cpu_quota_cores": self.cpu_quota_cores,
                "memory_limit_bytes": self.memory_limit_bytes,
                "memory_reservation_bytes": self.memory_reservation_bytes,
                "memory_swap_bytes": self.memory_swap_bytes,
                "limit_source": self.limit_source, "admission": self.admission}

    @classmethod
    def from_params(cls, p: dict[str, Any]) -> "Desired":
        def opt_int(k: str) -> int | None:
            return None if p.get(k) is None else int(p[k])
        q = p.get("cpu_quota_cores")
        return cls(cpuset_cpus=str(p["cpuset_cpus"]), cpu_quota_cores=None if q is None else float(q),
                   memory_limit_bytes=opt_int("memory_limit_bytes"),
                   memory_reservation_bytes=opt_int("memory_reservation_bytes"),
                   memory_swap_bytes=opt_int("memory_swap_bytes"),
                   limit_source=str(p.get("limit_source", "")), admission=str(p.get("admission", "")))


def class_cpuset(cls: ClassConfig, cfg: Config) -> str:
    """The class's cores; "any" means every online core of the host (written out, so
    ``docker inspect`` shows the cores rather than an empty "no pinning")."""
    if cls.cores is not None:
        return format_cpuset(cls.cores)
    return format_cpuset(tuple(range(cfg.host.cores)))


def reservation_for(limit_bytes: int, ratio: float) -> int:
    """Rule 1.1: reservation = limit x ratio (0.5-0.75), page-aligned and kept inside
    50-75% of the limit."""
    res = int(limit_bytes * ratio) // _PAGE * _PAGE
    if res < limit_bytes * 0.5:
        res += _PAGE
    return min(res, limit_bytes)


def reservation_in_range(reservation_bytes: int, limit_bytes: int) -> bool:
    return 0 < reservation_bytes and limit_bytes * 0.5 <= reservation_bytes <= limit_bytes * 0.75


def adaptive_ready(history: History, cid: str, cfg: Config) -> bool:
    need = min(history.size, math.ceil(ADAPTIVE_MIN_HISTORY_S / max(cfg.tick_s, 1e-3)))
    return history.samples(cid) >= need


def recommended_limit(history: History, cid: str, cls: ClassConfig, cfg: Config) -> int | None:
    """Rule 1.1: the configured percentile (p99) of the working set over the history
    window plus headroom (20%), rounded up; never below the class minimum."""
    h = cfg.settings.history
    p = history.percentile(cid, h.percentile)
    if p is None:
        return None
    return recommend_limit(p, h.headroom, floor_bytes=max(cls.memory_min_bytes, DOCKER_MIN_MEMORY_BYTES))


def wanted_limit(c: ContainerSample, cls: ClassConfig, cfg: Config, override: dict[str, Any],
                 history: History | None) -> tuple[int, str]:
    """The memory limit a container should hold before pool admission, and why: another
    component's override; the adaptive recommendation (when the class enables it and
    history is long enough); the limit it already has; else the class default."""
    if override.get("memory_limit_bytes"):
        return int(override["memory_limit_bytes"]), "override"
    current = c.info.memory_limit_bytes
    if cls.adaptive_limits and history is not None and adaptive_ready(history, c.info.id, cfg):
        rec = recommended_limit(history, c.info.id, cls, cfg)
        if rec is not None:
            if current and abs(rec - current) <= ADAPTIVE_CHANGE_RATIO * current:
                return current, "existing"
            return rec, "adaptive"
    if current:
        return current, "existing"
    return cls.memory_limit_bytes, "class-default"


def desired_resources(c: ContainerSample, cfg: Config, *, override: dict[str, Any] | None = None,
                      admission: Admission | None = None, limit_source: str = "") -> Desired:
    """The cpuset, CPU quota and memory values ``c`` should have. Memory comes from the
    pool's admission (granted limit); without a grant it is left alone."""
    ov = override or {}
    cls = cfg.classes[c.class_name]
    cpuset = str(ov.get("cpuset_cpus") or class_cpuset(cls, cfg))
    quota = ov["cpu_quota_cores"] if "cpu_quota_cores" in ov else cls.cpu_quota_cores
    if admission is None or admission.verdict in (OVER_BUDGET, HELD) or admission.granted_bytes <= 0:
        return Desired(cpuset, quota, None, None, None, limit_source,
                       admission.verdict if admission else "")
    limit = admission.granted_bytes
    current_res = c.info.memory_reservation_bytes
    if ov.get("memory_reservation_bytes"):
        res = min(int(ov["memory_reservation_bytes"]), limit)
    elif reservation_in_range(current_res, limit):
        res = current_res  # already within Rule 1.1's range: not worth an update
    else:
        res = reservation_for(limit, cls.reservation_ratio)
    # Swap limit = memory limit: no swap beyond the limit.
    return Desired(cpuset, quota, limit, res, limit, limit_source, admission.verdict)


# ---------------------------------------------------------------- differences


def same_cpuset(current: str, desired: str) -> bool:
    """Compared as sets of cores ("0,1" == "0-1"). Docker's "" (no pinning) differs from
    any explicit list: placement always writes the cores out."""
    if not current:
        return not desired
    try:
        return parse_cpuset(current) == parse_cpuset(desired)
    except ValueError:
        return False


def cpu_kwargs(info: ContainerInfo, quota_cores: float | None) -> dict[str, Any]:
    """Engine.update arguments that bring the CPU limit to ``quota_cores`` ({} if it is).
    A container started with --cpus holds NanoCpus, which Docker lets change only as
    NanoCpus (and never back to "none")."""
    if quota_cores is None:
        if info.nano_cpus == 0 and info.cpu_quota_us > 0:
            return {"cpu_quota": -1}  # -1 = no quota (cpu.cfs_quota_us / cpu.max "max")
        return {}
    if info.nano_cpus > 0:
        want = int(round(quota_cores * 1e9))
        return {} if info.nano_cpus == want else {"nano_cpus": want}
    want = max(CPU_MIN_QUOTA_US, int(round(quota_cores * CPU_PERIOD_US)))
    if info.cpu_quota_us == want and (info.cpu_period_us or CPU_PERIOD_US) == CPU_PERIOD_US:
        return {}
    return {"cpu_period": CPU_PERIOD_US, "cpu_quota": want}


def update_kwargs(info: ContainerInfo, d: Desired, *, swap_limit_supported: bool = True
                  ) -> dict[str, Any]:
    """The Engine.update arguments that bring ``info`` to ``d``: empty when it is there
    already (then no update call is made)."""
    kw: dict[str, Any] = {}
    if not same_cpuset(info.cpuset_cpus, d.cpuset_cpus):
        kw["cpuset_cpus"] = d.cpuset_cpus
    kw.update(cpu_kwargs(info, d.cpu_quota_cores))
    if d.memory_limit_bytes is not None:
        swap_differs = swap_limit_supported and info.memory_swap_bytes != d.memory_swap_bytes
        if (info.memory_limit_bytes != d.memory_limit_bytes
                or info.memory_reservation_bytes != d.memory_reservation_bytes or swap_differs):
            # The three go together: Docker checks limit <= swap limit and
            # reservation <= limit against the values already set.
            kw["mem_limit"] = d.memory_limit_bytes
            kw["mem_reservation"] = d.memory_reservation_bytes
            kw["memswap_limit"] = d.memory_swap_bytes
    return kw


def resources_of(info: ContainerInfo) -> dict[str, Any]:
    """The Docker values placement manages, as journaled before/after."""
    return {"cpuset_cpus": info.cpuset_cpus, "cpu_limit_cores": info.cpu_limit_cores,
            "memory_limit_bytes": info.memory_limit_bytes,
            "memory_reservation_bytes": info.memory_reservation_bytes,
            "memory_swap_bytes": info.memory_swap_bytes}


def _fmt_mem(n: int) -> str:
    return "none" if n <= 0 else format_bytes(n)


def describe_changes(info: ContainerInfo, kw: dict[str, Any]) -> str:
    parts = []
    if "cpuset_cpus" in kw:
        parts.append(f"cpuset {info.cpuset_cpus or 'all'} -> {kw['cpuset_cpus']}")
    if "cpu_quota" in kw or "nano_cpus" in kw:
        cur = info.cpu_limit_cores
        if kw.get("cpu_quota") == -1:
            new = "none"
        elif "nano_cpus" in kw:
            new = f"{kw['nano_cpus'] / 1e9:g}"
        else:
            new = f"{kw['cpu_quota'] / kw['cpu_period']:g}"
        parts.append(f"cpu {'none' if cur is None else f'{cur:g}'} -> {new} cores")
    if "mem_limit" in kw:
        parts.append(f"memory limit {_fmt_mem(info.memory_limit_bytes)} -> {_fmt_mem(kw['mem_limit'])}")
        if info.memory_reservation_bytes != kw["mem_reservation"]:
            parts.append(f"reservation {_fmt_mem(info.memory_reservation_bytes)} -> "
                         f"{_fmt_mem(kw['mem_reservation'])}")
        if info.memory_swap_bytes != kw["memswap_limit"]:
            parts.append(f"swap limit {_fmt_mem(info.memory_swap_bytes)} -> "
                         f"{_fmt_mem(kw['memswap_limit'])}")
    return ", ".join(parts)


# ---------------------------------------------------------------- the plan


@dataclass
class PlacementMemory:
    """What placement remembers between passes (kept by the component, read by the plan)."""

    placed: set[str] = field(default_factory=set)  # placed before: a new difference is drift
    alerted: set[str] = field(default_factory=set)  # over budget, alert already raised
    stop_sent: set[str] = field(default_factory=set)  # over budget, strict stop already tried
    dry_reported: dict[str, tuple] = field(default_factory=dict)  # dry run: already said
    retry_at: dict[str, float] = field(default_factory=dict)  # failed update: not before
    failures: Counter = field(default_factory=Counter)
    swap_limit_supported: bool = True


@dataclass(frozen=True)
class PlacementPlan:
    actions: tuple[Action, ...]
    desired: dict[str, Desired]  # running managed containers, by id
    admissions: dict[str, Admission]  # live managed containers, by id
    pending: dict[str, dict[str, Any]]  # id -> update kwargs still needed
    names: dict[str, str]


def admission_candidates(tick: Tick) -> tuple[list[Candidate], dict[str, str]]:
    cfg = tick.cfg
    out, sources = [], {}
    for c in tick.snapshot.containers:
        if not c.managed or c.info.state not in LIVE_STATES:
            continue
        cls = cfg.classes.get(c.class_name)
        if cls is None:
            continue
        wanted, source = wanted_limit(c, cls, cfg, tick.overrides.get(c.info.id, {}), tick.history)
        working_set = c.stats.memory_working_set_bytes if c.stats else 0
        out.append(Candidate(id=c.info.id, name=c.info.name, pool=cls.pool, wanted_bytes=wanted,
                             floor_bytes=max(cls.memory_min_bytes, working_set),
                             current_bytes=c.info.memory_limit_bytes,
                             changeable=c.info.state == "running", started_at=c.info.started_at))
        sources[c.info.id] = source
    return out, sources


def _place_key(info: ContainerInfo, d: Desired, kw: dict[str, Any]) -> tuple:
    """What a dry-run report said: the same change from the same values is not repeated."""
    return (tuple(sorted(resources_of(info).items())), tuple(sorted(d.to_params().items())),
            tuple(sorted(kw.items())))


def plan_placement(tick: Tick, memory: PlacementMemory | None = None) -> PlacementPlan:
    """Every decision of one pass: per running managed container its desired values and
    a "place" action where Docker's values differ (for containers with an event, or all
    on a reconcile pass); per pool the admission, with an "alert" (and, under
    ``manage.admission = "strict"``, a "stop") for a container over budget."""
    mem = memory or PlacementMemory()
    cfg = tick.cfg
    candidates, sources = admission_candidates(tick)
    admissions = admit_all({p.name: p.budget_bytes for p in cfg.pools.values()}, candidates)
    strict = cfg.settings.manage.admission == "strict"
    places: list[Action] = []
    others: list[Action] = []
    desired: dict[str, Desired] = {}
    pending: dict[str, dict[str, Any]] = {}
    names: dict[str, str] = {}
    events = set(tick.events)
    stopping: set[str] = set()  # strict admission stops these: no update before the stop
    for c in tick.snapshot.containers:
        cid = c.info.id
        if cid not in sources:
            continue
        names[cid] = c.info.name
        cls = cfg.classes[c.class_name]
        adm = admissions.get(cid)
        if adm is not None and adm.verdict == OVER_BUDGET:
            why = (f"over budget: pool {adm.pool} has {format_bytes(adm.room_bytes)} left of "
                   f"{format_bytes(cfg.pools[adm.pool].budget_bytes)}, {c.info.name} wants "
                   f"{format_bytes(adm.wanted_bytes)} and needs at least "
                   f"{format_bytes(max(adm.floor_bytes, DOCKER_MIN_MEMORY_BYTES))}")
            params = {"pool": adm.pool, "wanted_bytes": adm.wanted_bytes,
                      "room_bytes": adm.room_bytes, "floor_bytes": adm.floor_bytes}
            if cid not in mem.alerted:
                held = c.info.memory_limit_bytes
                others.append(Action("alert", cid, c.info.name, why + (
                    f"; its limit of {format_bytes(held)} is left as it is" if held
                    else "; no memory limit granted"), "pools", params))
            if strict and cid not in mem.stop_sent and c.info.state == "running":
                if rules.untouchable(cls):
                    if cid not in mem.alerted:
                        others.append(Action("alert", cid, c.info.name,
                                             f"class {cls.name} is never stopped: not stopped "
                                             "although admission is strict", "pools", params))
                else:
                    others.append(Action("stop", cid, c.info.name,
                                         why + "; admission is strict", "pools",
                                         params, destructive=True))
                    stopping.add(cid)
        if c.info.state != "running":
            continue  # paused / restarting: Docker's values are changed when it runs again
        d = desired_resources(c, cfg, override=tick.overrides.get(cid, {}), admission=adm,
                              limit_source=sources[cid])
        desired[cid] = d
        kw = update_kwargs(c.info, d, swap_limit_supported=mem.swap_limit_supported)
        if not kw:
            continue
        pending[cid] = kw
        if not (tick.reconcile or cid in events) or cid in stopping:
            continue
        if cid not in events and tick.now < mem.retry_at.get(cid, 0.0):
            continue
        if cfg.dry_run and mem.dry_reported.get(cid) == _place_key(c.info, d, kw):
            continue  # already reported as "would do"; say it again only when it changes
        kind = "repair drift" if cid in mem.placed else "place"
        why = f"{kind} ({cls.name}, {d.limit_source or 'memory untouched'}"
        if d.admission and d.admission != FITS:
            why += f", {d.admission}"
        why += "): " + describe_changes(c.info, kw)
        places.append(Action("place", cid, c.info.name, why, "placement",
                             {"class": cls.name, **d.to_params(), "fields": sorted(kw)}))
    return PlacementPlan(tuple(places + others), desired, admissions, pending, names)


# ---------------------------------------------------------------- recommendations


def recommendations(tick: Tick, history: History) -> list[dict[str, Any]]:
    """Per live managed container: the working-set percentile over the history window,
    the recommended limit (+ headroom, Rule 1.1) and reservation, next to what it holds."""
    cfg = tick.cfg
    h = cfg.settings.history
    out = []
    for c in tick.snapshot.containers:
        cls = cfg.classes.get(c.class_name)
        if not c.managed or cls is None or c.info.state not in LIVE_STATES:
            continue
        p = history.percentile(c.info.id, h.percentile)
        limit = recommended_limit(history, c.info.id, cls, cfg)
        out.append({
            "id": c.info.short_id, "name": c.info.name, "class": cls.name, "pool": cls.pool,
            "samples": history.samples(c.info.id), "percentile": h.percentile,
            "working_set_percentile_bytes": None if p is None else int(p),
            "recommended_limit_bytes": limit,
            "recommended_reservation_bytes":
                None if limit is None else reservation_for(limit, cls.reservation_ratio),
            "current_limit_bytes": c.info.memory_limit_bytes,
            "current_reservation_bytes": c.info.memory_reservation_bytes,
            "adaptive": cls.adaptive_limits,
            "adaptive_ready": adaptive_ready(history, c.info.id, cfg),
        })
    return out


# ---------------------------------------------------------------- the component


class Placement(Component):
    name = "placement"

    def __init__(self, ctx):
        super().__init__(ctx)
        self.memory = PlacementMemory()
        self.counts: Counter[str] = Counter()
        self.last_plan: PlacementPlan | None = None
        self.last_tick: Tick | None = None
        self._pending: tuple[PlacementPlan, Tick] | None = None
        # Recommendations are computed once per pass on the loop thread, so neither the
        # scrape nor GET /recommend runs numpy over the history (which the loop writes).
        self.last_recommendations: list[dict[str, Any]] = []
        self._recommended_for: frozenset[tuple] = frozenset()
        self._recommended_at = float("-inf")

    def plan(self, tick: Tick) -> list[Action]:
        # Published in observe(), as the ladder does: a plan nobody executes (GET /plan,
        # planned on a changed copy of the tick) must not show in status or /metrics.
        self._pending = (plan_placement(tick, self.memory), tick)
        return list(self._pending[0].actions)

    def observe_recommendations(self, tick: Tick) -> None:
        # What a row shows besides the percentiles: a change there shows at once.
        live = frozenset((c.info.id, c.info.name, c.class_name, c.info.memory_limit_bytes,
                          c.info.memory_reservation_bytes)
                         for c in tick.snapshot.containers if c.managed and c.info.state in LIVE_STATES)
        if live != self._recommended_for or tick.now - self._recommended_at >= RECOMMEND_EVERY_S:
            self.last_recommendations = recommendations(tick, self.ctx.history)
            self._recommended_for = live
            self._recommended_at = tick.now

    def executors(self) -> dict[str, Callable[[Action], Outcome]]:
        return {"place": self._place}

    def _place(self, action: Action) -> Outcome:
        # Re-inspect first: the plan saw the inventory's view, which may be a moment old.
        info = self.ctx.inventory.refresh_one(action.target)
        if info is None:
            return Outcome(ok=False, skipped=True, detail="container no longer exists")
        if info.state != "running":
            return Outcome(ok=False, skipped=True, detail=f"container is {info.state}, not running")
        d = Desired.from_params(action.params)
        kw = update_kwargs(info, d, swap_limit_supported=self.memory.swap_limit_supported)
        if not kw:
            return Outcome(ok=True, skipped=True, detail="already in place",
                           before=resources_of(info), after=resources_of(info))
        self.ctx.engine.update(info.id, **kw)
        after = self.ctx.inventory.refresh_one(info.id) or info
        left = update_kwargs(after, d, swap_limit_supported=self.memory.swap_limit_supported)
        if set(left) == {"mem_limit", "mem_reservation", "memswap_limit"} and \
                after.memory_limit_bytes == d.memory_limit_bytes and \
                after.memory_reservation_bytes == d.memory_reservation_bytes:
            # The engine took the limit but not the swap limit: this kernel has no swap
            # accounting (cgroup v1 without swapaccount=1). Stop comparing it, or every
            # reconcile would "repair" it again.
            self.memory.swap_limit_supported = False
            log.warning("the engine does not keep swap limits here (no swap accounting); "
                        "swap limits are no longer compared")
            left = {}
        detail = "applied " + ", ".join(sorted(kw))
        if left:
            detail += "; still differing after the update: " + ", ".join(sorted(left))
        return Outcome(ok=not left, detail=detail, before=resources_of(info),
                       after=resources_of(after))

    def observe(self, tick: Tick, results: list[ActionResult]) -> None:
        if self._pending is not None:
            (self.last_plan, self.last_tick), self._pending = self._pending, None
        self.observe_recommendations(tick)
        m = self.memory
        for r in results:
            a = r.action
            if a.kind == "place":
                if r.dry_run:
                    d = Desired.from_params(a.params)
                    c = next((x for x in tick.snapshot.containers if x.info.id == a.target), None)
                    if c is not None:
                        m.dry_reported[a.target] = _place_key(
                            c.info, d, update_kwargs(c.info, d, swap_limit_supported=m.swap_limit_supported))
                    self.counts["would_place"] += 1
                elif r.ok:
                    if not r.skipped:
                        self.counts["drift_repairs" if a.target in m.placed else "placed"] += 1
                    m.placed.add(a.target)
                    m.failures.pop(a.target, None)
                    m.retry_at.pop(a.target, None)
                elif not r.skipped:
                    self.counts["failed"] += 1
                    m.failures[a.target] += 1
                    m.retry_at[a.target] = tick.now + min(
                        RETRY_MAX_S, tick.cfg.reconcile_s * 2 ** m.failures[a.target])
            elif a.kind == "alert" and a.source == "pools":
                m.alerted.add(a.target)
                self.counts["over_budget_alerts"] += 1
            elif a.kind == "stop" and a.source == "pools":
                if r.ok or r.dry_run or r.skipped:
                    m.stop_sent.add(a.target)
                self.counts["over_budget_stops" if r.ok and not r.dry_run else "over_budget_stop_attempts"] += 1
        # Forget what no longer applies: gone containers, and over-budget episodes that ended.
        live = {c.info.id for c in tick.snapshot.containers}
        over = set()
        if self.last_plan is not None:
            over = {cid for cid, adm in self.last_plan.admissions.items() if adm.verdict == OVER_BUDGET}
            # Seen in place: a difference from now on is drift.
            m.placed.update(set(self.last_plan.desired) - set(self.last_plan.pending))
        m.alerted &= over
        m.stop_sent &= over
        m.placed &= live
        for d in (m.dry_reported, m.retry_at, m.failures):
            for cid in set(d) - live:
                d.pop(cid, None)

    # ------------------------------------------------------------ publishing

    def status(self, tick: Tick) -> dict[str, Any] | None:
        p = self.last_plan
        if p is None:
            return None
        rows = {}
        for cid, d in p.desired.items():
            rows[p.names.get(cid, cid[:12])] = {
                "id": cid[:12], "desired": d.to_params(),
                "in_place": cid not in p.pending,
                "pending": sorted(p.pending.get(cid, {})),
            }
        pools: dict[str, dict[str, Any]] = {}
        for adm in p.admissions.values():
            row = pools.setdefault(adm.pool, {"granted_bytes": 0, "over_budget": [], "shrunk": []})
            row["granted_bytes"] += adm.granted_bytes
            if adm.verdict == OVER_BUDGET:
                row["over_budget"].append(adm.to_dict())
            elif adm.verdict == SHRUNK:
                row["shrunk"].append(adm.name)
        return {"admission_policy": tick.cfg.settings.manage.admission,
                "swap_limit_supported": self.memory.swap_limit_supported,
                "counts": dict(self.counts), "pending": len(p.pending),
                "pools": pools, "containers": rows}

    def collect(self, tick: Tick) -> Iterable[Any]:
        p = self.last_plan
        if p is None:
            return
        done = CounterMetricFamily("resource_supervisor_placement_updates_total",
                                   "Placement outcomes: placed, drift_repairs, failed, would_place",
                                   labels=["outcome"])
        for k in ("placed", "drift_repairs", "failed", "would_place"):
            done.add_metric([k], self.counts[k])
        yield done
        pend = GaugeMetricFamily("resource_supervisor_placement_pending_containers",
                                 "Running managed containers whose Docker values differ from "
                                 "their class's")
        pend.add_metric([], len(p.pending))
        yield pend
        over = GaugeMetricFamily("resource_supervisor_pool_over_budget_containers",
                                 "Containers admission could not fit into their pool",
                                 labels=["pool"])
        granted = GaugeMetricFamily("resource_supervisor_pool_granted_bytes",
                                    "Memory limits admission grants in the pool (never above "
                                    "its budget)", labels=["pool"])
        for pool in sorted(tick.cfg.pools):
            members = [a for a in p.admissions.values() if a.pool == pool]
            over.add_metric([pool], sum(1 for a in members if a.verdict == OVER_BUDGET))
            granted.add_metric([pool], sum(a.granted_bytes for a in members))
        yield over
        yield granted
        rec = GaugeMetricFamily("resource_supervisor_container_recommended_memory_limit_bytes",
                                "Working-set percentile over the history window plus headroom "
                                "(Rule 1.1)", labels=["name", "id", "class", "pool"])
        for r in self.last_recommendations:
            if r["recommended_limit_bytes"] is not None:
                rec.add_metric([r["name"], r["id"], r["class"], r["pool"]], r["recommended_limit_bytes"])
        yield rec

    def routes(self):
        return {("GET", "/recommend"): (self._recommend, {"container": Param(str, default="")})}

    def _recommend(self, body: dict) -> tuple[int, dict]:
        tick = self.last_tick
        if tick is None:
            return 503, {"error": "no pass has run yet"}
        rows = list(self.last_recommendations)
        want = body["container"].strip()
        if want:
            rows = [r for r in rows if r["name"] == want or r["id"].startswith(want[:12])]
            if not rows:
                return 404, {"error": f"no live managed container {want!r}"}
        h = tick.cfg.settings.history
        return 200, {"percentile": h.percentile, "headroom": h.headroom,
                     "window": h.window, "containers": rows}
