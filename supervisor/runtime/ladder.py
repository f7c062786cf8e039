"""Acting on breaches: the ladder, least harmful first.

``plan_breach_actions(tick, state, capabilities)`` is pure and holds every decision: it
follows the breach signals (breaches.py) into *tracks* (one per open breach), climbs
each track's ladder one rung at a time, and undoes throttles once their breach has
cleared. The ``Ladder`` component only stores the state it returns, registers the
``throttle``/``unthrottle``/``reclaim`` executors of ladder_knobs.py (``alert``, ``stop``
and ``hibernate`` are other components' executors), journals, and reads its durable state
back at start.

The rungs, each taken only when the previous one did not clear the breach within
``ladder.grace``, and only as far as the breach's level allows (warn: alert only;
critical: up to hibernate; over budget / reserve breached / memory PSI held: up to stop;
CPU PSI: alert and CPU throttle; a container hitting its own limit: alert):

1. alert (journal, log, metric).
2. throttle the lowest-priority containers in scope (enough of them to cover the memory
   above the clear level). cgroup v2: memory.high = usage x throttle_ratio, written with
   O_NONBLOCK (Docker's reservation is memory.low, so memory.high is ours alone; the
   value it replaced is recorded). cgroup v1 has no memory.high: the CPU limit goes to
   throttle_cpu_ratio of itself (which slows the allocating workload) and the soft limit
   (Docker's memory reservation, memory.soft_limit_in_bytes) to usage x throttle_ratio
   (which makes the container the first one global reclaim takes from), both through
   Docker so ``docker inspect`` stays true, and published as overrides so placement does
   not "repair" them back.
3. reclaim: v2 memory.reclaim of the bytes above the target; v1 lowers
   memory.limit_in_bytes to usage - bytes (the kernel reclaims, or refuses with EBUSY
   instead of OOM-killing) and restores it at once.
4. hibernate idle containers of hibernating classes, when a "hibernate" executor exists;
   else the rung is skipped, and the journal and status say so.
5. stop the container kubelet would evict first: usage above its reservation, then lowest
   priority, then most usage above reservation. Never a protected class, never
   infrastructure. Repeated every grace period while the breach stays over its level.

No flapping: a breach opens at its start level and closes only after ``clear_after``
below ``clear_ratio`` (hysteresis); inside the band between the two nothing climbs and
nothing is undone; ``min_action_interval`` between two actions on one container;
``max_actions_per_minute`` across all container actions.

Durable state (journal state table): ``ladder/throttle/<id>`` (the values a throttle
replaced, written *before* any change, so a crash mid-throttle leaves a record to
restore from), ``ladder/breach/<key>`` (each open breach's rung), and
``ladder/reclaim/<id>`` (v1: the limit to put back if a crash hits between lowering and
restoring). At start these are read back: a throttle whose breach persists is kept and
the ladder continues from its rung (after one more grace period); one whose breach has
gone is undone after ``clear_after`` like any other.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, Callable, Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from supervisor.model.actions import Action, ActionResult, Outcome
from supervisor.policy.breaches import (CRITICAL, NONE, OVER, SEVERITY_NAMES, WARN, Signal, SignalMemory,
                       evaluate_signals, scope_members)
from supervisor.model.classify import label_is_false
from supervisor.act.component import Component, Context
from supervisor.policy.tick import Tick
from supervisor.adapters.journal import JournalError
from supervisor.act.ladder_knobs import MIB, MIN_RECLAIM_BYTES, THROTTLE_PREFIX, KnobExecutors, Throttle
from supervisor.model import rules
from supervisor.model.units import format_bytes, parse_cpuset, parse_duration

if TYPE_CHECKING:  # pragma: no cover
    from prometheus_client.core import Metric

    from supervisor.model.config import ClassConfig, Config
    from supervisor.model.snapshot import ContainerSample

log = logging.getLogger(__name__)

ALERT, THROTTLE, RECLAIM, HIBERNATE, STOP = 1, 2, 3, 4, 5
STEP_NAMES = {ALERT: "alert", THROTTLE: "throttle", RECLAIM: "reclaim",
              HIBERNATE: "hibernate", STOP: "stop"}
# Most urgent first when several breaches want the same rate budget.
KIND_ORDER = {"reserve": 0, "psi_memory": 1, "pool": 2, "psi_cpu": 3, "oom": 4}
# Names under which ladder breach onsets are counted in resource_supervisor_breaches_total
# (the daemon counts "reserve" and "pool_used_over_budget" itself, at the budget line).
ONSET_KIND = {"pool": "pool_warn", "reserve": "reserve_warn", "psi_memory": "psi_memory",
              "psi_cpu": "psi_cpu", "oom": "container_limit"}
BREACH_PREFIX = "ladder/breach/"

PAGE_BYTES = 4096
DOCKER_MIN_RESERVATION_BYTES = 6 * MIB  # "Minimum memory reservation allowed is 6MB"
MIN_CPU_CORES = 0.01  # CFS takes no quota below 1 ms per 100 ms period


# ---------------------------------------------------------------------------- state

@dataclass(frozen=True)
class Track:
    """One open breach and how far up its ladder it has gone."""

    key: str
    kind: str
    subject: str
    name: str
    resource: str
    opened_at: float
    step: int = 0  # last rung taken or skipped (0 = none yet)
    acted_step: int = 0  # last rung that acted (a skipped rung does not count)
    step_at: float = 0.0  # when a rung last acted (grace runs from here)
    severity: int = NONE  # this tick's level
    top_severity: int = NONE  # highest level alerted so far
    clear_since: float | None = None  # below the clear level since
    summary: str = ""
    hold: str = ""  # why the next rung waits (journaled once per reason)

    _DURABLE = ("key", "kind", "subject", "name", "resource", "opened_at", "step",
                "acted_step", "step_at", "top_severity")

    def durable(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._DURABLE}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Track":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class LadderState:
    tracks: dict[str, Track] = field(default_factory=dict)
    throttles: dict[str, Throttle] = field(default_factory=dict)
    signals: SignalMemory = field(default_factory=SignalMemory)
    # container id -> (time, cpu seconds, last time it was busy): for "idle" (rung 4)
    activity: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    last_action_at: dict[str, float] = field(default_factory=dict)  # container id -> time
    action_times: tuple[float, ...] = ()  # container actions in the last minute


@dataclass(frozen=True)
class Note:
    """A decision that led to no action: journaled as is."""

    kind: str  # "breach", or the rung's name
    target: str
    name: str
    reason: str
    outcome: str  # "skipped" | "held" | "cleared" | "restored"
    detail: str = ""
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LadderPlan:
    actions: list[Action]
    state: LadderState
    notes: list[Note]
    signals: list[Signal]
    opened: list[str]  # kinds of the breaches opened this tick


# ---------------------------------------------------------------------------- ranking

def class_of(c: "ContainerSample", cfg: "Config") -> "ClassConfig | None":
    return cfg.classes.get(c.class_name)


def reservation_bytes(c: "ContainerSample") -> int:
    if c.info.memory_reservation_bytes > 0:
        return c.info.memory_reservation_bytes
    if c.stats and c.stats.memory_low_bytes:
        return c.stats.memory_low_bytes
    return 0


def working_set_bytes(c: "ContainerSample") -> int:
    return c.stats.memory_working_set_bytes if c.stats else 0


def above_request_bytes(c: "ContainerSample") -> int:
    return working_set_bytes(c) - reservation_bytes(c)


def priority_of(c: "ContainerSample", cfg: "Config") -> int:
    cls = class_of(c, cfg)
    return cls.priority if cls else 0


def eviction_rank(members: Iterable["ContainerSample"], cfg: "Config") -> list["ContainerSample"]:
    """kubelet's memory eviction order (rankMemoryPressure): those whose usage exceeds
    their request first, then the lowest priority, then the most usage above request."""
    return sorted(members, key=lambda c: (above_request_bytes(c) <= 0, priority_of(c, cfg),
                                          -above_request_bytes(c), c.info.name))


def throttle_rank(members: Iterable["ContainerSample"], cfg: "Config") -> list["ContainerSample"]:
    """Lowest priority first; within a priority the most usage above request first."""
    return sorted(members, key=lambda c: (priority_of(c, cfg), -above_request_bytes(c),
                                          -working_set_bytes(c), c.info.name))


def actionable(c: "ContainerSample", cfg: "Config") -> bool:
    return (c.managed and c.info.state == "running" and c.stats is not None
            and not rules.untouchable(class_of(c, cfg)))


def cpu_cores_now(c: "ContainerSample", host_cores: int) -> float:
    if c.info.cpu_limit_cores:
        return c.info.cpu_limit_cores
    if c.stats and c.stats.cpu_quota_cores:
        return c.stats.cpu_quota_cores
    cpuset = c.info.cpuset_cpus or (c.stats.cpuset_cpus if c.stats else "")
    if cpuset:
        try:
            return float(len(parse_cpuset(cpuset)))
        except ValueError:
            pass
    return float(host_cores)


def _page_floor(n: float) -> int:
    return int(n) // PAGE_BYTES * PAGE_BYTES


def throttle_knobs(resource: str, version: int) -> tuple[str, ...]:
    if resource == "cpu":
        return ("cpu",)
    return ("memory_high",) if version == 2 else ("cpu", "memory_reservation")


def throttle_targets(c: "ContainerSample", resource: str, cfg: "Config") -> tuple[dict[str, Any], int]:
    """The knob values a throttle sets on ``c`` and the memory it is expected to save;
    ({}, 0) when there is nothing to lower."""
    L = cfg.settings.ladder
    s = c.stats
    assert s is not None
    want: dict[str, Any] = {}
    saving = 0
    for knob in throttle_knobs(resource, s.version):
        if knob == "memory_high":
            high = max(_page_floor(s.memory_usage_bytes * L.throttle_ratio), reservation_bytes(c), MIB)
            if high < s.memory_usage_bytes and (s.memory_high_bytes is None or high < s.memory_high_bytes):
                want[knob] = high
                saving = s.memory_usage_bytes - high
        elif knob == "cpu":
            now = cpu_cores_now(c, cfg.host.cores)
            cores = round(max(MIN_CPU_CORES, now * L.throttle_cpu_ratio), 3)
            if cores < now:
                want[knob] = cores
        elif knob == "memory_reservation":
            current = reservation_bytes(c)
            target = max(_page_floor(working_set_bytes(c) * L.throttle_ratio),
                         DOCKER_MIN_RESERVATION_BYTES)
            if current == 0 or target < current:
                want[knob] = target
                saving = max(0, working_set_bytes(c) - target)
    if resource == "memory" and want and not saving:
        saving = int(working_set_bytes(c) * (1 - L.throttle_ratio))
    return want, saving


# ---------------------------------------------------------------------------- planning

def top_rung(sig: Signal) -> int:
    """The highest rung this signal's level allows now."""
    if sig.severity == NONE:
        return 0
    if sig.kind == "oom":
        return ALERT
    if sig.resource == "cpu":
        return THROTTLE if sig.severity >= CRITICAL else ALERT
    return {WARN: ALERT, CRITICAL: HIBERNATE, OVER: STOP}[sig.severity]


def track_activity(tick: Tick, prev: dict[str, tuple[float, float, float]]
                   ) -> dict[str, tuple[float, float, float]]:
    """Per container (time, cpu seconds, last busy time): busy = CPU at or above
    hibernation.cpu_idle_cores since the previous tick. A container first seen counts as
    busy now: its idle time is not known."""
    idle_cores = tick.cfg.settings.hibernation.cpu_idle_cores
    out = {}
    for c in tick.snapshot.containers:
        if c.stats is None:
            continue
        cpu = c.stats.cpu_usage_s
        p = prev.get(c.info.id)
        if p is None:
            out[c.info.id] = (tick.now, cpu, tick.now)
            continue
        t0, cpu0, busy_at = p
        dt = tick.now - t0
        if cpu < cpu0 or (dt > 0 and (cpu - cpu0) / dt >= idle_cores):
            busy_at = tick.now
        out[c.info.id] = (tick.now, cpu, busy_at)
    return out


class _Budget:
    """Rate limits while one plan is made: per-container interval and per-minute cap."""

    def __init__(self, state: LadderState, now: float, min_interval_s: float, cap: int):
        self.now = now
        self.min_interval_s = min_interval_s
        self.cap = cap
        self.times = [t for t in state.action_times if now - t < 60.0]
        self.last = {cid: t for cid, t in state.last_action_at.items()
                     if now - t < max(min_interval_s, 60.0)}

    def room(self) -> int:
        return self.cap - len(self.times)

    def recent(self, cid: str) -> bool:
        t = self.last.get(cid)
        return t is not None and (t == self.now or self.now - t < self.min_interval_s)

    def take(self, cid: str) -> None:
        self.times.append(self.now)
        self.last[cid] = self.now


@dataclass
class _Env:
    tick: Tick
    cfg: "Config"
    budget: _Budget
    throttles: dict[str, Throttle]
    activity: dict[str, tuple[float, float, float]]
    capabilities: frozenset[str]
    grace_s: float
    acted_step: int = 0  # the last rung that acted on the breach being climbed


def _rung_reason(n: int, t: Track, sig: Signal, env: _Env, c: "ContainerSample", why: str) -> str:
    prev = STEP_NAMES.get(env.acted_step, "the breach")
    return (f"ladder step {n} ({STEP_NAMES[n]}) for {sig.summary} ({sig.level}): {prev} did "
            f"not clear it within {env.grace_s:g}s; {c.info.name} {why}")


def _select(ordered: list["ContainerSample"], env: _Env, sig: Signal,
            make: Callable[["ContainerSample"], tuple[Action | None, int]]
            ) -> tuple[str, list[Action], str]:
    """Act on ``ordered`` candidates until the expected saving covers the breach's excess
    (when known), else on the lowest-priority tier. ("acted"|"held"|"skipped", ...)."""
    if not ordered:
        return "skipped", [], "no candidate"
    if env.budget.room() <= 0:
        return "held", [], (f"{env.budget.cap} container actions in the last minute "
                            f"(ladder.max_actions_per_minute)")
    free = [c for c in ordered if not env.budget.recent(c.info.id)]
    if not free:
        return "held", [], "every candidate was acted on within ladder.min_action_interval"
    out: list[Action] = []
    saved = 0
    tier = priority_of(free[0], env.cfg)
    for c in free:
        if env.budget.room() <= 0:
            break
        if not sig.excess_bytes and priority_of(c, env.cfg) != tier:
            break
        action, saving = make(c)
        if action is None:
            continue
        out.append(action)
        env.budget.take(c.info.id)
        saved += saving
        if sig.excess_bytes and saved >= sig.excess_bytes:
            break
    if not out:
        return "skipped", [], "nothing left to lower on any candidate"
    return "acted", out, ""


def _rung_throttle(t: Track, sig: Signal, env: _Env, members: list["ContainerSample"]):
    cfg = env.cfg
    cands = []
    for c in members:
        # Throttles do not stack: a knob another breach already lowered stays as it is.
        have = env.throttles[c.info.id].knobs if c.info.id in env.throttles else set()
        if not set(throttle_knobs(sig.resource, c.stats.version)) & have:
            cands.append(c)
    if not cands:
        return "skipped", [], "every container in scope is already throttled"

    def make(c):
        want, saving = throttle_targets(c, sig.resource, cfg)
        if not want:
            return None, 0
        cls = class_of(c, cfg)
        what = ", ".join(f"{k}={format_bytes(v) if k != 'cpu' else f'{v:g} cores'}"
                         for k, v in sorted(want.items()))
        return Action("throttle", c.info.id, c.info.name,
                      _rung_reason(THROTTLE, t, sig, env, c,
                                   f"is among the lowest priority ({cls.name}, priority "
                                   f"{cls.priority}): {what}"),
                      "ladder", params={"breach": t.key, "step": THROTTLE, "set": want,
                                        "resource": sig.resource}), saving
    return _select(throttle_rank(cands, cfg), env, sig, make)


def _rung_reclaim(t: Track, sig: Signal, env: _Env, members: list["ContainerSample"]):
    cfg = env.cfg
    L = cfg.settings.ladder
    remaining = [sig.excess_bytes]

    def make(c):
        above = above_request_bytes(c) if reservation_bytes(c) else int(
            working_set_bytes(c) * (1 - L.throttle_ratio))
        amount = min(above, remaining[0]) if sig.excess_bytes else above
        if amount < MIN_RECLAIM_BYTES:
            return None, 0
        remaining[0] -= amount
        holds = (f"holds {format_bytes(above)} above its reservation" if reservation_bytes(c)
                 else f"has no reservation and uses {format_bytes(working_set_bytes(c))}")
        return Action("reclaim", c.info.id, c.info.name,
                      _rung_reason(RECLAIM, t, sig, env, c,
                                   f"{holds}: asking the kernel to reclaim {format_bytes(amount)}"),
                      "ladder", params={"breach": t.key, "step": RECLAIM, "bytes": int(amount)}), amount
    return _select(throttle_rank(members, cfg), env, sig, make)


def _rung_hibernate(t: Track, sig: Signal, env: _Env, members: list["ContainerSample"]):
    cfg = env.cfg
    if "hibernate" not in env.capabilities:
        return "skipped", [], "no hibernation mechanism (no executor for 'hibernate')"
    if not cfg.settings.hibernation.enabled:
        return "skipped", [], "hibernation is disabled (hibernation.enabled = false)"
    idle_after = parse_duration(cfg.settings.ladder.hibernate_idle_after)
    opt_out = cfg.settings.hibernation.opt_out_label
    cands = []
    for c in members:
        cls = class_of(c, cfg)
        if not cls or not cls.hibernate:
            continue
        if label_is_false(c.info.labels, opt_out):
            continue
        a = env.activity.get(c.info.id)
        if a is None or env.tick.now - a[2] < idle_after:
            continue
        cands.append(c)
    if not cands:
        return "skipped", [], (f"no container of a hibernating class in scope has been idle "
                               f"for {idle_after:g}s")

    def make(c):
        idle_s = env.tick.now - env.activity[c.info.id][2]
        mode = class_of(c, cfg).hibernate_mode
        # idle_s: the hibernation executor re-checks the container's connections over
        # this window (shorter than the class's idle_after under a breach).
        return Action("hibernate", c.info.id, c.info.name,
                      _rung_reason(HIBERNATE, t, sig, env, c,
                                   f"has been idle for {idle_s:.0f}s and holds "
                                   f"{format_bytes(working_set_bytes(c))}"),
                      "ladder", params={"breach": t.key, "step": HIBERNATE, "mode": mode,
                                        "idle_s": round(idle_s, 1)},
                      destructive=mode == "stop"), working_set_bytes(c)
    ordered = sorted(cands, key=lambda c: (priority_of(c, cfg), -working_set_bytes(c), c.info.name))
    return _select(ordered, env, sig, make)


def _rung_stop(t: Track, sig: Signal, env: _Env, members: list["ContainerSample"]):
    cfg = env.cfg
    ordered = eviction_rank(members, cfg)
    if not ordered:
        return "skipped", [], "no container in scope may be stopped"
    first = ordered[0]
    if env.budget.room() <= 0:
        return "held", [], (f"{env.budget.cap} container actions in the last minute "
                            f"(ladder.max_actions_per_minute)")
    if env.budget.recent(first.info.id):
        return "held", [], (f"{first.info.name}, first in eviction order, was acted on within "
                            f"ladder.min_action_interval")
    cls = class_of(first, cfg)
    env.budget.take(first.info.id)
    why = (f"ranks first for eviction: {format_bytes(working_set_bytes(first))} used, "
           f"{format_bytes(above_request_bytes(first))} above its reservation, class "
           f"{cls.name} priority {cls.priority}")
    return "acted", [Action(
        "stop", first.info.id, first.info.name, _rung_reason(STOP, t, sig, env, first, why),
        "ladder", destructive=True,
        params={"breach": t.key, "step": STOP,
                "timeout_s": max(0, int(round(parse_duration(cfg.settings.ladder.stop_timeout))))})], ""


_RUNGS = {THROTTLE: _rung_throttle, RECLAIM: _rung_reclaim, HIBERNATE: _rung_hibernate,
          STOP: _rung_stop}


def _climb(t: Track, sig: Signal, env: _Env, actions: list[Action], notes: list[Note]) -> Track:
    """Take the next rung(s) of one open breach, if it is time."""
    now = env.tick.now
    if t.step == 0 or sig.severity > t.top_severity:
        first = t.step == 0
        actions.append(Action(
            "alert", sig.subject, sig.name,
            f"{sig.summary}: {sig.level} breach {'opened' if first else 'rose'}; ladder step 1 "
            f"(alert)" + ("" if first else f", now at step {t.step} ({STEP_NAMES[t.step]})"),
            "ladder", params={"breach": t.key, "kind": t.kind, "level": sig.level,
                              "step": ALERT, "value": sig.value}))
        t = replace(t, top_severity=max(t.top_severity, sig.severity))
        if first:
            return replace(t, step=ALERT, acted_step=ALERT, step_at=now)
    top = top_rung(sig)
    if sig.severity == NONE or now - t.step_at < env.grace_s:
        return t  # in the band between clear and start levels, or within grace
    repeat = t.step == STOP
    n = STOP if repeat else t.step + 1
    if n > top:
        return t
    if not env.tick.snapshot.engine_up:
        why = "the Docker engine is unreachable: container actions wait"
        if why != t.hold:
            notes.append(Note(STEP_NAMES[n], sig.subject, sig.name, sig.summary, "held", why,
                              {"breach": t.key, "step": n}))
        return replace(t, hold=why)
    members = [c for c in scope_members(sig, env.tick) if actionable(c, env.cfg)]
    env.acted_step = t.acted_step
    while n <= top:
        if not members:
            outcome, acts, why = "skipped", [], ("no container in scope may be acted on "
                                                 "(protected, infrastructure or not running)")
        else:
            outcome, acts, why = _RUNGS[n](t, sig, env, members)
        if outcome == "acted":
            actions.extend(acts)
            return replace(t, step=n, acted_step=n, step_at=now, hold="")
        if outcome == "held" or repeat:
            if why != t.hold:
                notes.append(Note(STEP_NAMES[n], sig.subject, sig.name, sig.summary, outcome,
                                  why, {"breach": t.key, "step": n}))
            return replace(t, hold=why)
        # This rung cannot act at all: say so once and go on to the next one now.
        notes.append(Note(STEP_NAMES[n], sig.subject, sig.name, sig.summary, "skipped", why,
                          {"breach": t.key, "step": n}))
        t = replace(t, step=n, hold="")
        n += 1
    return t


def _covered(tracks: dict[str, Track], by_key: dict[str, Signal], tick: Tick) -> set[str]:
    """Containers inside the scope of an open breach that has reached the throttle rung."""
    out: set[str] = set()
    for key, t in tracks.items():
        sig = by_key.get(key)
        if sig is not None and t.step >= THROTTLE:
            out.update(c.info.id for c in scope_members(sig, tick))
    return out


def plan_breach_actions(tick: Tick, state: LadderState,
                        capabilities: Iterable[str] = ()) -> LadderPlan:
    """Every ladder decision of one tick: which breaches open, climb, clear; which
    containers are throttled, reclaimed, hibernated, stopped, unthrottled. Pure."""
    cfg = tick.cfg
    L = cfg.settings.ladder
    now = tick.now
    grace_s = parse_duration(L.grace)
    clear_after_s = parse_duration(L.clear_after)
    signals, sigmem = evaluate_signals(tick, state.signals)
    by_key = {s.key: s for s in signals}
    activity = track_activity(tick, state.activity)
    budget = _Budget(state, now, parse_duration(L.min_action_interval), L.max_actions_per_minute)
    notes: list[Note] = []
    actions: list[Action] = []
    opened: list[str] = []

    # 1. Follow the signals into tracks.
    tracks: dict[str, Track] = {}
    for sig in signals:
        t = state.tracks.get(sig.key)
        if t is None:
            if sig.severity == NONE:
                continue
            t = Track(key=sig.key, kind=sig.kind, subject=sig.subject, name=sig.name,
                      resource=sig.resource, opened_at=now, step_at=now)
            opened.append(sig.kind)
        clear_since = (t.clear_since if t.clear_since is not None else now) if sig.below_clear else None
        tracks[sig.key] = replace(t, severity=sig.severity, clear_since=clear_since,
                                  summary=sig.summary, name=sig.name)
    for key, t in state.tracks.items():
        if key not in by_key:  # its subject is gone (container removed, pool unconfigured)
            tracks[key] = replace(t, severity=NONE,
                                  clear_since=t.clear_since if t.clear_since is not None else now)

    # 2. Close the breaches that stayed below the clear level long enough.
    for key, t in list(tracks.items()):
        if t.clear_since is not None and now - t.clear_since >= clear_after_s:
            del tracks[key]
            notes.append(Note("breach", t.subject, t.name,
                              f"{t.summary or t.key}: stayed below the clear level "
                              f"(ladder.clear_ratio = {L.clear_ratio:g}) for "
                              f"{clear_after_s:g}s", "cleared",
                              f"open {now - t.opened_at:.1f}s, reached step {t.step} "
                              f"({STEP_NAMES.get(t.step, 'none')})",
                              {"breach": key, "step": t.step}))

    # 3. Climb, most urgent first.
    env = _Env(tick, cfg, budget, dict(state.throttles), activity, frozenset(capabilities), grace_s)
    order = sorted(tracks.values(), key=lambda t: (-t.severity, KIND_ORDER.get(t.kind, 9), t.key))
    for t in order:
        sig = by_key.get(t.key)
        if sig is None:
            continue
        tracks[t.key] = _climb(t, sig, env, actions, notes)

    # 4. Undo the throttles no open breach needs any more (and drop the records of
    #    containers that no longer exist at all).
    covered = _covered(tracks, by_key, tick)
    present = {c.info.id for c in tick.snapshot.containers}
    for cid, th in sorted(state.throttles.items()):
        if cid in present and (any(k in tracks for k in th.breaches) or cid in covered):
            continue
        if not tick.snapshot.engine_up or budget.room() <= 0 or budget.recent(cid):
            continue  # tried again on a later tick
        budget.take(cid)
        actions.append(Action(
            "unthrottle", cid, th.name,
            f"breach {', '.join(th.breaches) or '(none recorded)'} cleared (below "
            f"{L.clear_ratio:.0%} for {clear_after_s:g}s): restoring "
            + ", ".join(f"{k}={v}" for k, v in sorted(th.before.items())),
            "ladder", params={"breaches": list(th.breaches), "restore": dict(th.before)}))

    new_state = LadderState(tracks=tracks, throttles=dict(state.throttles), signals=sigmem,
                            activity=activity, last_action_at=budget.last,
                            action_times=tuple(budget.times))
    return LadderPlan(actions, new_state, notes, signals, opened)


# ---------------------------------------------------------------------------- component

class Ladder(Component):
    name = "ladder"

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self.counts: Counter[tuple[str, str]] = Counter()  # (kind, outcome) incl. notes
        self.notes: deque[dict[str, Any]] = deque(maxlen=20)
        self.last_plan: LadderPlan | None = None  # the last plan executed
        self._pending: LadderPlan | None = None
        self._persisted: dict[str, dict[str, Any]] = {}
        self._startup_notes: list[Note] = []
        self.knobs = KnobExecutors(ctx)
        self.state = self._load()

    # ------------------------------------------------------------------ restart

    def _load(self) -> LadderState:
        """Read back what a previous run left: throttles, open breaches, interrupted v1
        reclaims, and the last minute of actions (for the rate limits)."""
        j = self.ctx.journal
        now = self.ctx.clock()
        for cid, name, detail in self.knobs.restore_interrupted_reclaims():
            self._startup_notes.append(Note(
                "reclaim", cid, name,
                "a reclaim was interrupted between lowering and restoring the limit",
                "restored", detail))
        throttles = {}
        for key, value in j.states(THROTTLE_PREFIX).items():
            try:
                th = Throttle.from_dict(value)
            except (KeyError, TypeError, ValueError):
                log.error("unreadable throttle record %s: %r; left in place", key, value)
                continue
            throttles[th.container_id] = th
            self._startup_notes.append(Note(
                "throttle", th.container_id, th.name,
                f"read back at start: throttled since {th.at:.0f} for "
                f"{', '.join(th.breaches) or 'an unrecorded breach'}", "restored",
                f"state {th.state}; before {th.before}; after {th.after}",
                {"breaches": list(th.breaches)}))
        tracks = {}
        for key, value in j.states(BREACH_PREFIX).items():
            try:
                t = Track.from_dict(value)
            except TypeError:
                log.error("unreadable breach record %s: %r; ignored", key, value)
                continue
            # One more grace period before the next rung: the host was not watched while
            # the daemon was down.
            tracks[t.key] = replace(t, step_at=max(t.step_at, now), clear_since=None, hold="")
            self._persisted[t.key] = t.durable()
        for th in throttles.values():
            for b in th.breaches:
                if b not in tracks:
                    # The breach's own record was lost (crash before it was written): the
                    # throttle still stands for it, at the throttle rung.
                    kind, _, subject = b.partition(":")
                    tracks[b] = Track(key=b, kind=kind, subject=subject or "host", name=b,
                                      resource="cpu" if kind == "psi_cpu" else "memory",
                                      opened_at=th.at, step=THROTTLE, acted_step=THROTTLE,
                                      step_at=now, top_severity=WARN)
        last: dict[str, float] = {}
        times: list[float] = []
        try:
            rows = j.since(now - 60.0, source="ladder")
        except Exception:  # noqa: BLE001 - rate limits start empty rather than not at all
            log.exception("cannot read the last minute of the journal")
            rows = []
        for r in rows:
            if r["kind"] in ("alert", "breach") or r["dry_run"] or r["outcome"] in (
                    "skipped", "held", "cleared", "restored", "dry_run"):
                continue
            times.append(r["time_s"])
            last[r["target"]] = max(last.get(r["target"], 0.0), r["time_s"])
        return LadderState(tracks=tracks, throttles=throttles, last_action_at=last,
                           action_times=tuple(times))

    # ------------------------------------------------------------------ the pass

    def overrides(self, tick: Tick) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for cid, th in self.state.throttles.items():
            o: dict[str, Any] = {}
            held = th.in_force
            if "cpu" in held:
                o["cpu_quota_cores"] = held["cpu"]
            if "memory_reservation" in held:
                o["memory_reservation_bytes"] = held["memory_reservation"]
            if o:
                out[cid] = o
        return out

    def plan(self, tick: Tick) -> list[Action]:
        # Kept aside until observe(): a plan nobody executes (GET /plan) changes nothing.
        self._pending = plan_breach_actions(tick, self.state, self.ctx.capabilities)
        return list(self._pending.actions)

    def observe(self, tick: Tick, results: list[ActionResult]) -> None:
        p, self._pending = self._pending, None
        if p is None:
            return
        prev, self.state, self.last_plan = self.state, p.state, p
        done = {id(r.action) for r in results}
        dropped = [a for a in p.actions if id(a) not in done]
        if dropped:
            self._roll_back(prev, dropped)
        for r in results:
            self.counts[(r.action.kind, r.outcome)] += 1
        if any(r.action.kind in ("throttle", "unthrottle") and not r.dry_run for r in results):
            self._reload_throttles()
        breaches = getattr(self.ctx, "breaches", None)
        for kind in p.opened:
            if breaches is not None:
                breaches[ONSET_KIND.get(kind, kind)] += 1
        for n in self._startup_notes + p.notes:
            self._note(n, tick)
        self._startup_notes = []
        self._persist_tracks()

    def _roll_back(self, prev: LadderState, dropped: list[Action]) -> None:
        """Actions the daemon did not run (engine down) did not happen: the rung they
        belonged to is taken again later, and they use no rate budget."""
        tracks = dict(self.state.tracks)
        last = dict(self.state.last_action_at)
        times = list(self.state.action_times)
        for a in dropped:
            key = a.params.get("breach")
            if key in tracks and key in prev.tracks:
                tracks[key] = replace(tracks[key], step=prev.tracks[key].step,
                                      step_at=prev.tracks[key].step_at)
            if a.kind != "alert":
                if a.target in prev.last_action_at:
                    last[a.target] = prev.last_action_at[a.target]
                else:
                    last.pop(a.target, None)
                if times:
                    times.pop()
        self.state = replace(self.state, tracks=tracks, last_action_at=last,
                             action_times=tuple(times))

    def _reload_throttles(self) -> None:
        try:
            recs = self.ctx.journal.states(THROTTLE_PREFIX)
        except Exception:  # noqa: BLE001 - keep the last known set
            log.exception("cannot read throttle records")
            return
        throttles = {}
        for value in recs.values():
            try:
                th = Throttle.from_dict(value)
            except (KeyError, TypeError, ValueError):
                continue
            throttles[th.container_id] = th
        self.state = replace(self.state, throttles=throttles)

    def _note(self, n: Note, tick: Tick) -> None:
        self.counts[(n.kind, n.outcome)] += 1
        entry = {"time_s": tick.now, "kind": n.kind, "target": n.target[:12], "name": n.name,
                 "outcome": n.outcome, "reason": n.reason, "detail": n.detail}
        self.notes.append(entry)
        log.info("ladder %s %s %s: %s (%s)", n.outcome, n.kind, n.name, n.reason, n.detail,
                 extra={"action": n.kind, "target": n.name, "outcome": n.outcome})
        try:
            self.ctx.journal.note(n.kind, "ladder", n.target, n.name, n.reason, n.outcome,
                                  n.detail, n.params, dry_run=tick.cfg.dry_run, time_s=tick.now)
        except JournalError as e:
            log.error("%s", e)

    def _persist_tracks(self) -> None:
        j = self.ctx.journal
        try:
            for key, t in self.state.tracks.items():
                d = t.durable()
                if self._persisted.get(key) != d:
                    j.put_state(BREACH_PREFIX + key, d)
                    self._persisted[key] = d
            for key in list(self._persisted):
                if key not in self.state.tracks:
                    j.del_state(BREACH_PREFIX + key)
                    del self._persisted[key]
        except JournalError as e:
            log.error("cannot persist breach state: %s", e)

    # ------------------------------------------------------------------ executors

    def executors(self) -> dict[str, Callable[[Action], Outcome]]:
        return self.knobs.executors()

    # ------------------------------------------------------------------ publishing

    def status(self, tick: Tick) -> dict[str, Any]:
        now = tick.now
        L = tick.cfg.settings.ladder
        grace_s = parse_duration(L.grace)
        clear_after_s = parse_duration(L.clear_after)
        p = self.last_plan
        sigs = {s.key: s for s in p.signals} if p else {}
        breaches = []
        for t in sorted(self.state.tracks.values(), key=lambda t: (-t.severity, t.key)):
            sig = sigs.get(t.key)
            top = top_rung(sig) if sig else 0
            nxt = STOP if t.step == STOP else t.step + 1
            breaches.append({
                "key": t.key, "kind": t.kind, "name": t.name, "level": SEVERITY_NAMES[t.severity],
                "summary": t.summary, "step": t.step, "step_name": STEP_NAMES.get(t.step, "none"),
                "open_s": round(now - t.opened_at, 1),
                "next_step": STEP_NAMES[nxt] if nxt <= top else None,
                "next_step_in_s": round(max(0.0, t.step_at + grace_s - now), 1) if nxt <= top else None,
                "clearing_for_s": round(now - t.clear_since, 1) if t.clear_since is not None else None,
                "clears_after_s": clear_after_s, "held": t.hold or None})
        throttled = [{"id": th.container_id[:12], "name": th.name, "breaches": list(th.breaches),
                      "before": th.before, "after": th.after, "since_s": round(now - th.at, 1),
                      "state": th.state}
                     for th in sorted(self.state.throttles.values(), key=lambda th: th.name)]
        recent = [t for t in self.state.action_times if now - t < 60.0]
        return {
            "breaches": breaches,
            "throttled": throttled,
            "actions_last_minute": len(recent),
            "max_actions_per_minute": L.max_actions_per_minute,
            "hibernate_step": ("available" if "hibernate" in self.ctx.capabilities else
                               "skipped: no hibernation mechanism registered"),
            "psi": sorted(tick.snapshot.host.pressure) or "unavailable (kernel without PSI)",
            # What the journal this ladder restarted from looked like when it was opened.
            "journal_at_start": {
                "damaged": getattr(self.ctx.journal, "damaged", "") or None,
                "moved_to": getattr(self.ctx.journal, "damaged_moved_to", "") or None,
                "interrupted_actions": getattr(self.ctx.journal, "interrupted_at_open", 0)},
            "notes": list(self.notes)[-10:],
        }

    def collect(self, tick: Tick) -> Iterable["Metric"]:
        active = GaugeMetricFamily("resource_supervisor_breaches_active",
                                   "Breaches the ladder holds open, by kind", labels=["kind"])
        by_kind = Counter(t.kind for t in self.state.tracks.values())
        for kind in KIND_ORDER:
            active.add_metric([kind], by_kind.get(kind, 0))
        yield active
        step = GaugeMetricFamily("resource_supervisor_breach_step",
                                 "Ladder rung an open breach has reached (1 alert .. 5 stop)",
                                 labels=["breach", "kind"])
        level = GaugeMetricFamily("resource_supervisor_breach_level",
                                  "Level of an open breach now: 0 below its start level "
                                  "(clearing), 1 warn, 2 critical, 3 over", labels=["breach", "kind"])
        for t in self.state.tracks.values():
            step.add_metric([t.key, t.kind], t.step)
            level.add_metric([t.key, t.kind], t.severity)
        yield step
        yield level
        count = GaugeMetricFamily("resource_supervisor_throttled_containers",
                                  "Containers the ladder holds throttled")
        count.add_metric([], len(self.state.throttles))
        yield count
        per = GaugeMetricFamily("resource_supervisor_container_throttled",
                                "1 for each knob the ladder holds lowered on a container",
                                labels=["name", "id", "knob"])
        for th in self.state.throttles.values():
            for knob in sorted(th.knobs):
                per.add_metric([th.name, th.container_id[:12], knob], 1.0)
        yield per
        decisions = CounterMetricFamily("resource_supervisor_ladder_decisions",
                                        "Ladder actions and decisions by kind and outcome "
                                        "(ok, failed, skipped, held, cleared, restored, dry_run)",
                                        labels=["kind", "outcome"])
        for (kind, outcome), n in sorted(list(self.counts.items())):  # copied under the GIL
            decisions.add_metric([kind, outcome], n)
        yield decisions
