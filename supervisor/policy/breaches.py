"""Breach signals, evaluated every tick from the Tick. Pure: a function of the tick and
of a small memory of earlier ticks (the PSI gates, recent OOM counts),
returned anew each time, never mutated.

Every signal reports a **severity** against the levels that start the ladder and a
**below_clear** flag against the level that ends a breach (hysteresis: the ladder opens
a breach at severity >= WARN and closes it only after ``ladder.clear_after`` below
clear). Signals, and the ladder rungs their severity allows (see ladder.py):

- ``pool:<name>``: used bytes (sum of working sets) / budget. >= pool_warn_ratio WARN,
  >= pool_critical_ratio CRITICAL, >= 1.0 (over budget) OVER; clear below clear_ratio.
- ``reserve``: the emergency reserve / host available memory, on the same scale: OVER when
  available memory is inside the reserve, CRITICAL/WARN when within 1/0.95 and 1/0.85 of
  it; clear once available is above reserve / clear_ratio (1.25x the reserve by default).
- ``psi_memory``: host memory "full" avg10 above ladder.psi_memory_full_avg10 held for
  ladder.psi_duration (systemd-oomd's default: 60% for 30 s) is OVER; clear below
  clear_ratio x the level. Held and clear are the one PSI gate's (``policy.psi``), which
  the Ollama governor's pressure responses use too.
- ``psi_cpu``: host cpu "some" avg10 above ladder.psi_cpu_some_avg10 held for
  psi_duration is CRITICAL (CPU pressure is answered with CPU throttling only).
- ``oom:<container id>``: the container's own limit events (v2 memory.events oom,
  oom_kill and max; v1 memory.failcnt and oom_kill) rose by >= oom_events_threshold
  within a minute, or the container is in an OOM restart loop: OOM-killed
  ``rules.OOM_LOOP_KILLS`` times within ``rules.OOM_LOOP_WINDOW_S`` (the inventory's kill
  times from Docker's oom/die events and State.OOMKilled, which a restart's new cgroup
  does not reset, unlike the counters): WARN (alert only here: the kernel already acts
  inside that container; placement raises a limit it gave). It clears once neither holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING

from supervisor.model import rules
from supervisor.model.pools import pool_of
from supervisor.model.units import format_bytes
from supervisor.policy import psi
from supervisor.policy.psi import PsiGate

if TYPE_CHECKING:  # pragma: no cover
    from supervisor.policy.tick import Tick
    from supervisor.model.snapshot import ContainerSample

NONE, WARN, CRITICAL, OVER = 0, 1, 2, 3
SEVERITY_NAMES = {NONE: "none", WARN: "warn", CRITICAL: "critical", OVER: "over"}
OOM_WINDOW_S = 60.0  # "repeatedly hitting its limit" = this many events within a minute
# Which limit events count, per cgroup version (keys of CgroupStats.memory_events).
OOM_EVENT_KEYS = {2: ("oom", "oom_kill", "max"), 1: ("failcnt", "oom_kill")}


@dataclass(frozen=True)
class Signal:
    key: str  # "pool:standard", "reserve", "psi_memory", "psi_cpu", "oom:<id>"
    kind: str  # "pool" | "reserve" | "psi_memory" | "psi_cpu" | "oom"
    subject: str  # pool name, "host", or a container id
    name: str  # human name of the subject
    resource: str  # "memory" | "cpu": which rungs can help
    severity: int  # NONE..OVER
    below_clear: bool  # under the level that ends a breach
    value: float  # the measure, in the unit of ``threshold``
    threshold: float  # the start level of this measure
    summary: str  # what an operator reads, e.g. "pool standard at 104% of 96.0MiB"
    excess_bytes: int = 0  # memory to free to get below the clear level (0: unknown)

    @property
    def level(self) -> str:
        return SEVERITY_NAMES[self.severity]


@dataclass(frozen=True)
class SignalMemory:
    """What a signal needs from earlier ticks."""

    psi: dict[str, PsiGate] = field(default_factory=dict)  # "memory"/"cpu" -> its PSI gate
    # container id -> ((time, event count), ...): changes only, plus one baseline older
    # than the window.
    oom_samples: dict[str, tuple[tuple[float, int], ...]] = field(default_factory=dict)


def pool_signals(tick: "Tick") -> list[Signal]:
    L = tick.cfg.settings.ladder
    levels = rules.Levels.of(tick.cfg)
    out = []
    for name, p in sorted(tick.pools.items()):
        if p.budget_bytes <= 0:
            continue
        ratio = p.used_bytes / p.budget_bytes
        excess = max(0, p.used_bytes - int(L.clear_ratio * p.budget_bytes))
        out.append(Signal(
            key=f"pool:{name}", kind="pool", subject=name, name=f"pool {name}",
            resource="memory", severity=rules.ratio_level(ratio, levels),
            below_clear=ratio < L.clear_ratio, value=round(ratio, 4),
            threshold=L.pool_warn_ratio, excess_bytes=excess,
            summary=(f"pool {name} uses {format_bytes(p.used_bytes)} = {ratio:.0%} of its "
                     f"{format_bytes(p.budget_bytes)} budget")))
    return out


def reserve_signal(tick: "Tick") -> Signal | None:
    L = tick.cfg.settings.ladder
    r = tick.reserve
    if r.reserve_bytes <= 0:
        return None
    avail = max(0, r.available_bytes)
    ratio = rules.reserve_ratio(r.reserve_bytes, avail)
    excess = max(0, int(r.reserve_bytes / L.clear_ratio) - avail)
    return Signal(
        key="reserve", kind="reserve", subject="host", name="host",
        resource="memory", severity=rules.ratio_level(ratio, rules.Levels.of(tick.cfg)),
        below_clear=ratio < L.clear_ratio, value=round(min(ratio, 1e6), 4),
        threshold=L.pool_warn_ratio, excess_bytes=excess,
        summary=(f"host available memory {format_bytes(avail)} against the emergency "
                 f"reserve of {format_bytes(r.reserve_bytes)}"))


def psi_signals(tick: "Tick", memory: SignalMemory) -> tuple[list[Signal], dict[str, PsiGate]]:
    """The host's memory and CPU pressure through the one PSI gate (``policy.psi``): a
    signal's severity is the gate's hold, its below_clear the gate's clear level."""
    L = tick.cfg.settings.ladder
    pressure = tick.snapshot.host.pressure
    gates: dict[str, PsiGate] = {}
    out = []
    for res, line, level, top, key in (
            ("memory", "full", L.psi_memory_full_avg10, OVER, "psi_memory"),
            ("cpu", "some", L.psi_cpu_some_avg10, CRITICAL, "psi_cpu")):
        p = pressure.get(res)
        if p is None:  # kernel without PSI: no signal (status says so)
            continue
        value = p.full_avg10 if line == "full" else p.some_avg10
        start, clear = psi.levels(level, L.clear_ratio)
        g = gates[res] = psi.advance(memory.psi.get(res, PsiGate()), value, level=start,
                                     clear=clear, now=tick.now, hold_s=L.psi_duration,
                                     clear_after_s=L.clear_after)
        out.append(Signal(
            key=key, kind=key, subject="host", name="host", resource=res,
            severity=top if g.held(tick.now, L.psi_duration) else NONE,
            below_clear=value < clear, value=value, threshold=level,
            summary=(f"host {res} pressure ({line} avg10) {value:.1f}% against {level:.0f}%"
                     + (f", above it for {g.held_s(tick.now):.0f}s"
                        if g.above_since is not None else ""))))
    return out, gates


def limit_event_count(c: "ContainerSample") -> int | None:
    s = c.stats
    if s is None or not s.memory_events:
        return None
    return sum(int(s.memory_events.get(k, 0)) for k in OOM_EVENT_KEYS.get(s.version, ()))


@lru_cache(maxsize=4096)
def _quiet_oom_signal(cid: str, name: str, version: int, threshold: float) -> Signal:
    """A container that hit its limit 0 times in the last minute and is in no OOM loop
    (what ``oom_signals`` would build; frozen, so one value serves every pass)."""
    return Signal(key=f"oom:{cid}", kind="oom", subject=cid, name=name, resource="memory",
                  severity=NONE, below_clear=True, value=0.0, threshold=threshold,
                  summary=_limit_hits_text(name, 0, version))


def _limit_hits_text(name: str, hits: int, version: int) -> str:
    return (f"container {name} hit its own memory limit {hits} times in the last minute "
            f"({'/'.join(OOM_EVENT_KEYS.get(version, ()))})")


def oom_signals(tick: "Tick", memory: SignalMemory
                ) -> tuple[list[Signal], dict[str, tuple[tuple[float, int], ...]]]:
    L = tick.cfg.settings.ladder
    now = tick.now
    samples: dict[str, tuple[tuple[float, int], ...]] = {}
    out = []
    for c in tick.snapshot.containers:
        if not c.managed:
            continue
        kills = rules.oom_kills_within(c.info.oom_kill_times_s, now)
        loop = kills >= rules.OOM_LOOP_KILLS
        count = limit_event_count(c)
        if count is None and not c.info.oom_kill_times_s:
            continue  # (a kill remembered keeps the signal, so its breach clears as usual)
        rise = 0
        if count is not None:
            old = memory.oom_samples.get(c.info.id, ())
            if old and count < old[-1][1]:
                old = ()  # counters restarted: the container restarted in a new cgroup
            seq = list(old)
            if not seq or seq[-1][1] != count:
                seq.append((now, count))
            # Keep the newest sample older than the window as the baseline; drop the rest.
            cut = now - OOM_WINDOW_S
            older = [i for i, (t, _) in enumerate(seq) if t <= cut]
            if older:
                seq = seq[older[-1]:]
            samples[c.info.id] = tuple(seq)
            rise = count - seq[0][1]
        if count is not None and rise == 0 and L.oom_events_threshold > 0 and not loop:
            # The common case, every pass for nearly every container: a quiet signal (it
            # still clears a breach of this container), the same value each time.
            out.append(_quiet_oom_signal(c.info.id, c.info.name, c.stats.version,
                                         float(L.oom_events_threshold)))
            continue
        hits = count is not None and rise >= L.oom_events_threshold
        parts = []
        if loop or count is None:
            parts.append(f"container {c.info.name} was OOM-killed {kills} times in the last "
                         f"{rules.OOM_LOOP_WINDOW_S / 60:.0f} min (restarts: "
                         f"{c.info.restart_count})" + (": an OOM restart loop" if loop else ""))
        if count is not None and (hits or not loop):
            parts.append(_limit_hits_text(c.info.name, rise, c.stats.version))
        out.append(Signal(
            key=f"oom:{c.info.id}", kind="oom", subject=c.info.id, name=c.info.name,
            resource="memory", severity=WARN if hits or loop else NONE,
            below_clear=rise == 0 and not loop,
            value=float(kills if loop else rise),
            threshold=float(rules.OOM_LOOP_KILLS if loop else L.oom_events_threshold),
            summary="; ".join(parts)))
    return out, samples


def evaluate_signals(tick: "Tick", memory: SignalMemory | None = None
                     ) -> tuple[list[Signal], SignalMemory]:
    """Every breach signal of this tick, and the memory the next tick needs."""
    memory = memory or SignalMemory()
    signals = pool_signals(tick)
    r = reserve_signal(tick)
    if r is not None:
        signals.append(r)
    pressure, gates = psi_signals(tick, memory)
    oom, samples = oom_signals(tick, memory)
    return signals + pressure + oom, SignalMemory(psi=gates, oom_samples=samples)


def scope_members(signal: Signal, tick: "Tick") -> list["ContainerSample"]:
    """The containers a breach's ladder may act on: a pool's members for a pool breach,
    the container itself for its own limit events, every managed container for the host."""
    cs = [c for c in tick.snapshot.containers if c.managed]
    if signal.kind == "pool":
        return [c for c in cs if pool_of(c, tick.cfg) == signal.subject]
    if signal.kind == "oom":
        return [c for c in cs if c.info.id == signal.subject]
    return cs
