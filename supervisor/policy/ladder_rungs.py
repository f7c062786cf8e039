"""The ladder's rungs 2-5 (throttle, reclaim, hibernate, stop): which containers of a
breach's scope each one picks, in which order, and what it asks of them. Pure: every
function here is a function of its arguments. What may be done to a class at all is the
rule book's (``rules.refusal``, ``rules.hibernation_block``); how many actions run in a
minute, and how soon one container is acted on again, is the actuator's (its rate
limits hold an action back, and the ladder takes the rung again on a later pass)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable

from supervisor.model import rules
from supervisor.model.actions import Action
from supervisor.model.pools import working_set_bytes
from supervisor.model.units import format_bytes, parse_cpuset
from supervisor.policy.breaches import Signal
from supervisor.policy.ladder_state import (HIBERNATE, MIB, MIN_RECLAIM_BYTES, RECLAIM,
                                            STEP_NAMES, STOP, THROTTLE, Throttle, Track)
from supervisor.policy.tick import Tick

if TYPE_CHECKING:  # pragma: no cover
    from supervisor.model.config import ClassConfig, Config
    from supervisor.model.snapshot import ContainerSample

DOCKER_MIN_RESERVATION_BYTES = 6 * MIB  # "Minimum memory reservation allowed is 6MB"
# CFS takes no quota below 1 ms per 100 ms period.
MIN_CPU_CORES = rules.CPU_MIN_QUOTA_US / rules.CPU_PERIOD_US

# What a rung does to a container, in the rule book's words.
RUNG_KIND = {THROTTLE: "throttle", RECLAIM: "reclaim", HIBERNATE: "hibernate", STOP: "stop"}


# ---------------------------------------------------------------------------- ranking

def class_of(c: "ContainerSample", cfg: "Config") -> "ClassConfig | None":
    return cfg.classes.get(c.class_name)


def reservation_bytes(c: "ContainerSample") -> int:
    if c.info.memory_reservation_bytes > 0:
        return c.info.memory_reservation_bytes
    if c.stats and c.stats.memory_low_bytes:
        return c.stats.memory_low_bytes
    return 0


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


def may_act(c: "ContainerSample", cfg: "Config", kind: str) -> bool:
    """Whether rung ``kind`` may touch ``c`` at all: a running managed container whose
    class the rule book lets ``kind`` be done to."""
    return (c.managed and c.info.state == "running" and c.stats is not None
            and not rules.refusal(class_of(c, cfg), kind))


def cpu_cores_now(c: "ContainerSample", host_cores: int) -> float:
    i = c.info
    held = rules.held_cpu_cores(i)
    if held:
        return held
    if c.stats and c.stats.cpu_quota_cores:
        return c.stats.cpu_quota_cores
    cpuset = i.cpuset_cpus or (c.stats.cpuset_cpus if c.stats else "")
    if cpuset:
        try:
            return float(len(parse_cpuset(cpuset)))
        except ValueError:
            pass
    return float(host_cores)


def _page_floor(n: float) -> int:
    return int(n) // rules.PAGE_BYTES * rules.PAGE_BYTES


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
            # In the rule book's granularity: the cores journaled are the cores written.
            cores = rules.cpu_quota_us(max(MIN_CPU_CORES, now * L.throttle_cpu_ratio)) / rules.CPU_PERIOD_US
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


# ---------------------------------------------------------------------------- rungs

@dataclass
class Env:
    """What every rung of one pass sees."""

    tick: Tick
    cfg: "Config"
    throttles: dict[str, Throttle]
    capabilities: frozenset[str]
    grace_s: float
    acted_step: int = 0  # the last rung that acted on the breach being climbed


# (outcome "acted" | "skipped", actions, why)
RungResult = tuple[str, list[Action], str]


def _rung_action(n: int, t: Track, sig: Signal, env: Env, c: "ContainerSample", why: str,
                 params: dict[str, Any], destructive: bool = False) -> Action:
    prev = STEP_NAMES.get(env.acted_step, "the breach")
    return Action(RUNG_KIND[n], c.info.id, c.info.name,
                  f"ladder step {n} ({STEP_NAMES[n]}) for {sig.summary} ({sig.level}): {prev} "
                  f"did not clear it within {env.grace_s:g}s; {c.info.name} {why}", "ladder",
                  params={"breach": t.key, "step": n, **params}, destructive=destructive)


def _select(ordered: list["ContainerSample"], env: Env, sig: Signal,
            make: Callable[["ContainerSample"], tuple[Action | None, int]]) -> RungResult:
    """Act on ``ordered`` candidates until the expected saving covers the breach's excess
    (when known), else on the lowest-priority tier. Most urgent first: when the actuator's
    rate limits let only some through, the first ones go."""
    if not ordered:
        return "skipped", [], "no candidate"
    out: list[Action] = []
    saved = 0
    tier = priority_of(ordered[0], env.cfg)
    for c in ordered:
        if not sig.excess_bytes and priority_of(c, env.cfg) != tier:
            break
        action, saving = make(c)
        if action is None:
            continue
        out.append(action)
        saved += saving
        if sig.excess_bytes and saved >= sig.excess_bytes:
            break
    if not out:
        return "skipped", [], "nothing left to lower on any candidate"
    return "acted", out, ""


def rung_throttle(t: Track, sig: Signal, env: Env, members: list["ContainerSample"]) -> RungResult:
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
        return _rung_action(THROTTLE, t, sig, env, c, f"is among the lowest priority "
                            f"({cls.name}, priority {cls.priority}): {what}",
                            {"set": want, "resource": sig.resource}), saving
    return _select(throttle_rank(cands, cfg), env, sig, make)


def rung_reclaim(t: Track, sig: Signal, env: Env, members: list["ContainerSample"]) -> RungResult:
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
        return _rung_action(RECLAIM, t, sig, env, c, f"{holds}: asking the kernel to reclaim "
                            f"{format_bytes(amount)}", {"bytes": int(amount)}), amount
    return _select(throttle_rank(members, cfg), env, sig, make)


def idle_for_s(c: "ContainerSample", tick: Tick) -> float | None:
    """Seconds ``c``'s CPU has stayed at or below ``hibernation.cpu_idle_cores``, from the
    tick's activity view (None: not read twice yet, so not known to be idle). The Ollama
    governor asks the same view with the same threshold."""
    return tick.activity.idle_for_s(c.info.id, tick.cfg.settings.hibernation.cpu_idle_cores)


def rung_hibernate(t: Track, sig: Signal, env: Env, members: list["ContainerSample"]) -> RungResult:
    cfg = env.cfg
    if "hibernate" not in env.capabilities:
        return "skipped", [], "no hibernation mechanism (no executor for 'hibernate')"
    if not cfg.settings.hibernation.enabled:
        return "skipped", [], "hibernation is disabled (hibernation.enabled = false)"
    idle_after_s = cfg.settings.ladder.hibernate_idle_after
    idle: dict[str, float] = {}
    for c in members:
        if rules.hibernation_block(c.info, c.class_name, c.managed, cfg):
            continue
        idle_s = idle_for_s(c, env.tick)
        if idle_s is not None and idle_s >= idle_after_s:
            idle[c.info.id] = idle_s
    cands = [c for c in members if c.info.id in idle]
    if not cands:
        return "skipped", [], (f"no container of a hibernating class in scope has been idle "
                               f"for {idle_after_s:g}s")

    def make(c):
        idle_s = idle[c.info.id]
        mode = class_of(c, cfg).hibernate_mode
        # idle_s: the hibernation executor re-checks the container's connections over
        # this window (shorter than the class's idle_after under a breach).
        return _rung_action(HIBERNATE, t, sig, env, c, f"has been idle for {idle_s:.0f}s and "
                            f"holds {format_bytes(working_set_bytes(c))}",
                            {"mode": mode, "idle_s": round(idle_s, 1)},
                            destructive=mode == "stop"), working_set_bytes(c)
    ordered = sorted(cands, key=lambda c: (priority_of(c, cfg), -working_set_bytes(c), c.info.name))
    return _select(ordered, env, sig, make)


def rung_stop(t: Track, sig: Signal, env: Env, members: list["ContainerSample"]) -> RungResult:
    """The container kubelet would evict first. One per pass: if the actuator holds it
    back (it was acted on a moment ago), the rung waits for it rather than stopping
    another one."""
    cfg = env.cfg
    ordered = eviction_rank(members, cfg)
    if not ordered:
        return "skipped", [], "no container in scope may be stopped"
    first = ordered[0]
    cls = class_of(first, cfg)
    why = (f"ranks first for eviction: {format_bytes(working_set_bytes(first))} used, "
           f"{format_bytes(above_request_bytes(first))} above its reservation, class "
           f"{cls.name} priority {cls.priority}")
    timeout_s = max(0, int(round(cfg.settings.ladder.stop_timeout)))
    return "acted", [_rung_action(STOP, t, sig, env, first, why, {"timeout_s": timeout_s},
                                  destructive=True)], ""


RUNGS: dict[int, Callable[[Track, Signal, Env, list["ContainerSample"]], RungResult]] = {
    THROTTLE: rung_throttle, RECLAIM: rung_reclaim, HIBERNATE: rung_hibernate, STOP: rung_stop}
