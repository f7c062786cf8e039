"""Hibernation's decisions (Rule 6.3), pure: which containers are candidates and how
their activity is watched, which are planned for hibernation, what their sockets say
just before, and what is watched while they are frozen.

A container idle (model/activity.py) for its class's ``idle_after`` is planned for
hibernation. The rule book (``rules.hibernation_block``) says which may never be: a
class with ``hibernate = false``, a protected or infrastructure class, an unmanaged
container, one labelled ``<hibernation.opt_out_label>=false``. A Docker health check is
not activity (model/activity.py leaves what grows inside a check's window out of the idle
clock), but a container with a health check is hibernated only while Docker says it is
healthy (``health_block``): never one still starting (paused before its first check it
would never become healthy), nor one woken and not healthy since (no "never healthy"
cycle).

Just before hibernating, the executor lists the container's TCP sockets: a connection
waiting in an accept queue, data in flight, or a connection (established or
half-closed) that moved data within idle_after (tcp_info's last-data ages) keeps it
awake (``connection_activity``), so a long stream or a quiet WebSocket is never frozen
mid-flight. While frozen, its listeners and established connections are watched
(``wake_targets``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from supervisor.model.actions import Action, ActionResult
from supervisor.model.activity import (Thresholds, Track, Watch, sample_interval_s,
                                       smoothing_window_s)
from supervisor.model.rules import hibernation_block
from supervisor.model.snapshot import ContainerInfo
from supervisor.model.sockets import TcpSocket
from supervisor.policy.tick import Tick

# The tracker's owner name of hibernation's watches and tracks.
OWNER = "hibernation"
# Established connections of one container watched for incoming data while it is frozen
# (each costs one lookup per poll); listeners are always all watched.
MAX_WATCHED_CONNECTIONS = 32
# Wait before planning a container again after a failed hibernation.
RETRY_AFTER_FAILURE_S = 60.0

PAUSING, PAUSED, STOPPING, STOPPED = "pausing", "paused", "stopping", "stopped"


@dataclass
class Record:
    """One container hibernated by us; persisted in the journal's state table."""

    id: str
    name: str
    mode: str  # "pause" | "stop"
    since_s: float
    phase: str  # pausing | paused | stopping | stopped
    trigger: str = "idle"  # idle | api | ladder | ...
    reason: str = ""
    class_name: str = ""
    reclaimed_bytes: int | None = None
    memory_note: str = ""
    targets: list[dict[str, Any]] = field(default_factory=list)
    # What stayed resident after the memory release (act.hibernation.resident_dict).
    resident: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Record":
        if not isinstance(d, dict) or not d.get("id") or d.get("mode") not in ("pause", "stop"):
            raise ValueError(f"not a hibernation record: {d!r}")
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass
class HibernationState:
    """What plan_hibernation decides from besides the tick."""

    tracks: dict[str, Track] = field(default_factory=dict)
    hibernated: dict[str, Record] = field(default_factory=dict)
    retry_at: dict[str, float] = field(default_factory=dict)
    # woken by us, with a health check, and not healthy since the wake
    unready: frozenset[str] = frozenset()


def health_block(info: ContainerInfo, unready: frozenset[str] | set[str] = frozenset()) -> str:
    """Why a container's health keeps it from idle hibernation, or "": one with a health
    check must be healthy (not starting, not unhealthy) and, when we woke it, have been
    healthy since the wake."""
    if not info.has_healthcheck:
        return ""
    if info.id in unready:
        return "not healthy since its wake"
    if info.health != "healthy":
        return f"health {info.health or 'unknown'}: hibernated only while healthy"
    return ""


def _fmt_s(s: float) -> str:
    return f"{s / 60:.1f}m" if s >= 120 else f"{s:.1f}s"


def candidates(tick: Tick, hibernated: Iterable[str]) -> dict[str, Watch]:
    """The containers whose activity is followed, and how: every running container that
    may hibernate and is not hibernated, sampled every tenth of its class's idle_after
    (at most 5 s), rates averaged over its idle_after (at most 30 s). None while
    hibernation is off (reading every namespace's counters is the costliest part of a
    pass: 15 ms at 110 containers in the issue 9 soak)."""
    cfg = tick.cfg
    if not cfg.settings.hibernation.enabled:
        return {}
    th = Thresholds.from_config(cfg)
    skip = set(hibernated)
    out: dict[str, Watch] = {}
    for c in tick.snapshot.containers:
        if c.info.id in skip or c.info.state != "running" or c.stats is None:
            continue
        if hibernation_block(c.info, c.class_name, c.managed, cfg):
            continue
        idle_after_s = cfg.classes[c.class_name].idle_after_s
        out[c.info.id] = Watch(sample_interval_s(idle_after_s), smoothing_window_s(idle_after_s), th)
    return out


def plan_hibernation(tick: Tick, state: HibernationState) -> list[Action]:
    """Hibernate containers idle for their class's idle_after; wake the ones we hibernated
    whose class or label no longer allows it (after a config reload)."""
    cfg = tick.cfg
    actions: list[Action] = []
    by_id = {c.info.id: c for c in tick.snapshot.containers}
    for cid, rec in state.hibernated.items():
        c = by_id.get(cid)
        if c is None or rec.phase not in (PAUSED, STOPPED):
            continue
        block = hibernation_block(c.info, c.class_name, c.managed, cfg)
        if block and state.retry_at.get(cid, 0.0) <= tick.now:
            actions.append(Action("wake", cid, c.info.name, f"{block}: woken", "hibernation",
                                  {"trigger": "config"}))
    if not cfg.settings.hibernation.enabled:
        return actions
    for c in tick.snapshot.containers:
        cid = c.info.id
        if cid in state.hibernated or c.info.state != "running" or c.stats is None:
            continue
        if hibernation_block(c.info, c.class_name, c.managed, cfg):
            continue
        track = state.tracks.get(cid)
        if track is None or state.retry_at.get(cid, 0.0) > tick.now:
            continue
        if health_block(c.info, state.unready):
            continue
        klass = cfg.classes[c.class_name]
        idle_s = tick.now - track.idle_since_s
        if idle_s < klass.idle_after_s:
            continue
        actions.append(Action(
            "hibernate", cid, c.info.name,
            f"idle for {_fmt_s(idle_s)} (class {c.class_name} idle_after {_fmt_s(klass.idle_after_s)})",
            "hibernation", {"mode": klass.hibernate_mode, "idle_s": round(idle_s, 1),
                            "trigger": "idle"},
            destructive=klass.hibernate_mode == "stop"))
    return actions


def retry_times(retry_at: dict[str, float], results: Iterable[ActionResult],
                tick: Tick) -> dict[str, float]:
    """When each container may be planned again: a failed hibernation or wake waits
    RETRY_AFTER_FAILURE_S; a dry-run decision waits its idle_after (say "would
    hibernate" once per idle period, not once per pass); past times are dropped."""
    out = dict(retry_at)
    by_id = {c.info.id: c for c in tick.snapshot.containers}
    for r in results:
        if r.action.kind not in ("hibernate", "wake"):
            continue
        if r.dry_run:
            c = by_id.get(r.action.target)
            klass = tick.cfg.classes.get(c.class_name) if c else None
            out[r.action.target] = tick.now + max(
                RETRY_AFTER_FAILURE_S, klass.idle_after_s if klass else 0.0)
        elif not r.ok and not r.skipped:
            out[r.action.target] = tick.now + RETRY_AFTER_FAILURE_S
    return {cid: t for cid, t in out.items() if t > tick.now}


def connection_activity(sockets: Iterable[TcpSocket], active_window_s: float,
                        owned: frozenset[int] | None = None) -> str:
    """Why the container's sockets say it is not idle, or "": a connection waiting in an
    accept queue, data in flight, or an established connection that moved data within
    ``active_window_s``. ``owned`` restricts the check to sockets the container's
    processes hold (for a shared namespace)."""
    window_ms = active_window_s * 1000
    for s in sockets:
        if owned is not None and s.inode not in owned:
            continue
        if s.listening:
            if s.rqueue > 0:
                return f"{s.rqueue} connection{'s' if s.rqueue != 1 else ''} waiting on {s.describe()}"
            continue
        if s.state_name in ("TIME_WAIT", "CLOSE"):
            continue
        # ESTABLISHED, or half-closed (CLOSE_WAIT, FIN_WAIT*): still a stream while it moves
        if s.rqueue > 0 or s.wqueue > 0:
            return f"data in flight on {s.describe()} ({s.rqueue} B unread, {s.wqueue} B unsent)"
        ages = [a for a in (s.last_data_sent_ms, s.last_data_recv_ms) if a is not None]
        if ages and min(ages) < window_ms:
            return f"stream {s.describe()} moved data {min(ages) / 1000:.1f}s ago"
    return ""


def wake_targets(sockets: Iterable[TcpSocket], owned: frozenset[int] | None) -> list[TcpSocket]:
    """The sockets to watch while frozen: every listener, and established connections
    held by the container's processes (incoming data on an idle WebSocket or keep-alive
    connection wakes it too), at most MAX_WATCHED_CONNECTIONS of them."""
    listeners, conns = [], []
    for s in sockets:
        if owned is not None and s.inode not in owned:
            continue
        if s.listening:
            listeners.append(s)
        elif s.state_name == "ESTABLISHED" and s.inode:
            conns.append(s)
    return listeners + conns[:MAX_WATCHED_CONNECTIONS]
