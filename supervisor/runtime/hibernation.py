"""Hibernation of idle containers (Rule 6.3) and wake on demand, without a proxy.

Idle detection (pure: ``track_activity``, ``idle_since``, ``plan_hibernation``). Each pass
adds one ``ActivitySample`` per candidate: cumulative CPU seconds and block I/O bytes
(the snapshot's cgroup stats), and the counters of the container's network namespace
(bytes on its interfaces, bytes over its loopback, TCP connections opened). A sample is
*busy* when a connection was opened since the previous sample, or when a rate averaged
over a smoothing window (the class's idle_after, at most 30 s, so a timer that wakes for a
few ms every 10 s does not count) is above its threshold. A container that has been idle
for its class's ``idle_after`` is planned for hibernation. A class with ``hibernate =
false`` or ``protected = true`` (infrastructure) never hibernates, nor does a container
labelled ``<hibernation.opt_out_label>=false``.

Loopback traffic inside the container's namespace counts: both ends are the container's
own processes, or a client that entered its namespace (``docker exec``, ``nsenter``), and
that is demand like any other. Loopback bytes are counted once (lo's rx equals its tx).
A Docker health check that connects to the service therefore counts too: such a
container hibernates only if its health-check interval is longer than its idle_after
(it errs on the side of staying awake). Containers that share another namespace
(``network_mode: host`` or ``container:X``) have no counters of their own: only CPU,
block I/O and their own sockets judge them.

Just before hibernating, the executor lists the container's TCP sockets through
sock_diag (``netdiag.list_tcp``): a connection waiting in an accept queue, data in
flight, or a connection (established or half-closed) that moved data within idle_after
(tcp_info's last-data ages) keeps it awake, so a long stream or a quiet WebSocket is never frozen
mid-flight. Then it records the hibernation durably (journal state table) *before*
acting, and:

- mode ``pause``: ``docker pause`` (freezer), then releases memory: cgroup v2 writes
  ``memory.reclaim`` (5.19+); cgroup v1 writes ``memory.force_empty``, which reclaims as
  much as it can even with tasks in the cgroup (cgroup-v1/memory.rst 5.1). Without swap
  only page cache can go; the anonymous memory that stays resident is reported.
- mode ``stop``: ``docker stop`` (all memory released; wake = start).

Wake: a watcher thread polls every ``hibernation.poll_interval`` the listening sockets
(and the established connections) of each container hibernated in pause mode, through
exact sock_diag lookups in its namespace (``netdiag.ConnectionProbe``). A frozen
container's listening sockets still complete TCP handshakes, so a client that connects
shows as a non-empty accept queue: the container is unpaused at once and accepts the
very connection that woke it. ``POST /wake`` (``supctl wake``) wakes either mode. Only
containers recorded as hibernated by us are ever unpaused; one that somebody else
unpaused (or started) is simply running again and is forgotten. After a wake, a
container with a Docker health check is ready at its next ``health_status: healthy``
event; the wake-to-ready time is reported. Docker stops the health monitor of a paused
container and marks it unhealthy (moby daemon/health.go, CloseMonitorChannel), and its
first check after the unpause comes one health-check interval later: wake-to-ready is
about that interval, while the waiting client is served at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Iterable, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from supervisor.model.rules import hibernation_block
from supervisor.model.actions import Action, ActionResult, Outcome
from supervisor.adapters.cgroups import read_text, stat_value
from supervisor.model.classify import classify, is_managed
from supervisor.act.component import Component, Context
from supervisor.policy.tick import Tick
from supervisor.model.config import ClassConfig, Config
from supervisor.model.params import Param
from supervisor.model.errors import CgroupError, CgroupGone, EngineUnavailable, SupervisorError
from supervisor.adapters.host import parse_meminfo
from supervisor.adapters.journal import JournalError
from supervisor.publish.metrics import DurationHistogram
from supervisor.adapters.netcounters import read_counters, socket_inodes, udp_services
from supervisor.adapters.netdiag import ConnectionProbe, list_tcp, open_probe
from supervisor.adapters.netns import NetdiagError, NetnsGone, NetnsWorker
from supervisor.model.sockets import TcpSocket
from supervisor.model.snapshot import ContainerInfo
from supervisor.model.units import parse_duration

log = logging.getLogger(__name__)

STATE_PREFIX = "hibernation/"
SMOOTHING_MAX_S = 30.0
ACTIVITY_SAMPLE_MAX_S = 5.0
# The watcher's wait while nothing is hibernated (a new watch wakes it at once).
IDLE_WATCH_WAIT_S = 1.0
# Established connections of one container watched for incoming data while it is frozen
# (each costs one lookup per poll); listeners are always all watched.
MAX_WATCHED_CONNECTIONS = 32
# Wait before planning a container again after a failed hibernation.
RETRY_AFTER_FAILURE_S = 60.0
# After a wake, a health-checked container not healthy within this time is reported as
# not ready (and no longer waited for).
READY_TIMEOUT_S = 300.0
LATENCY_BUCKETS_S = (0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)

PAUSING, PAUSED, STOPPING, STOPPED = "pausing", "paused", "stopping", "stopped"


class HibernationError(SupervisorError):
    pass


# ====================================================================== pure idle detection


@dataclass(frozen=True, slots=True)
class Thresholds:
    cpu_cores: float
    net_bytes_per_s: float
    blkio_bytes_per_s: float

    @classmethod
    def from_config(cls, cfg: Config) -> "Thresholds":
        h = cfg.settings.hibernation
        return cls(h.cpu_idle_cores, h.net_idle_bytes_per_s, h.blkio_idle_bytes_per_s)


@dataclass(frozen=True, slots=True)
class ActivitySample:
    """Cumulative counters of one container at one time."""

    time_s: float
    pid: int
    cpu_s: float
    blkio_bytes: int
    net_bytes: int | None = None  # interfaces + loopback of its own namespace; None = not attributable
    connections: int | None = None  # TCP connections opened in its namespace (passive + active)


@dataclass(frozen=True, slots=True)
class Track:
    """What is known of one container's activity: the samples of the smoothing window and
    the time from which it has been idle."""

    samples: tuple[ActivitySample, ...]
    idle_since_s: float
    busy_reason: str = ""  # why it was last busy ("" = not seen busy since tracking began)
    busy_at_s: float | None = None


def sample_interval_s(idle_after_s: float) -> float:
    """How often a candidate's activity is sampled: a tenth of its idle_after, at most
    ACTIVITY_SAMPLE_MAX_S (a connection opened in between is still seen: the counter
    only grows), so 5 minutes of idleness are judged from a sample every 5 s, not 300."""
    return min(ACTIVITY_SAMPLE_MAX_S, idle_after_s / 10)


def smoothing_window_s(idle_after_s: float) -> float:
    """Rates are averaged over this window: the class's idle_after, at most 30 s."""
    return max(1e-3, min(idle_after_s, SMOOTHING_MAX_S))


def busy_reason(prev: ActivitySample, cur: ActivitySample, ref: ActivitySample,
                th: Thresholds) -> str:
    """Why the container counts as busy at ``cur``, or "" when it is idle. Connections
    opened since ``prev`` always count; rates are averaged from ``ref`` (the start of the
    smoothing window) to ``cur``."""
    if cur.connections is not None and prev.connections is not None \
            and cur.connections > prev.connections:
        n = cur.connections - prev.connections
        return f"{n} new connection{'s' if n != 1 else ''}"
    span = cur.time_s - ref.time_s
    if span <= 0:
        return ""
    cpu = (cur.cpu_s - ref.cpu_s) / span
    if cpu > th.cpu_cores:
        return f"CPU {cpu:.3f} cores > {th.cpu_cores:g}"
    if cur.net_bytes is not None and ref.net_bytes is not None:
        net = (cur.net_bytes - ref.net_bytes) / span
        if net > th.net_bytes_per_s:
            return f"network {net:.0f} B/s > {th.net_bytes_per_s:g}"
    blk = (cur.blkio_bytes - ref.blkio_bytes) / span
    if blk > th.blkio_bytes_per_s:
        return f"block I/O {blk:.0f} B/s > {th.blkio_bytes_per_s:g}"
    return ""


def _restarted(prev: ActivitySample, cur: ActivitySample) -> bool:
    if cur.pid != prev.pid or cur.cpu_s < prev.cpu_s or cur.blkio_bytes < prev.blkio_bytes:
        return True
    for a, b in ((prev.net_bytes, cur.net_bytes), (prev.connections, cur.connections)):
        if a is not None and b is not None and b < a:
            return True
    return (prev.net_bytes is None) != (cur.net_bytes is None)


def track_activity(track: Track | None, sample: ActivitySample, th: Thresholds,
                   window_s: float) -> Track:
    """The track after one more sample. A first sample starts the idle clock (a container
    is never hibernated before it has been watched for idle_after); a restart (new PID,
    counters going back) counts as busy."""
    if track is None or not track.samples:
        return Track((sample,), sample.time_s)
    prev = track.samples[-1]
    if sample.time_s <= prev.time_s:
        return track  # a replayed or out-of-order sample changes nothing
    if _restarted(prev, sample):
        return Track((sample,), sample.time_s, "restarted", sample.time_s)
    samples = track.samples + (sample,)
    start = 0
    for i, s in enumerate(samples[:-1]):
        if s.time_s <= sample.time_s - window_s:
            start = i
    kept = samples[start:]
    reason = busy_reason(prev, sample, kept[0], th)
    if reason:
        return Track(kept, sample.time_s, reason, sample.time_s)
    return Track(kept, track.idle_since_s, track.busy_reason, track.busy_at_s)


def idle_since(samples: Sequence[ActivitySample], th: Thresholds, window_s: float) -> tuple[float, str]:
    """(time from which the container has been idle, why it was last busy) over a series
    of samples, oldest first. Raises ValueError on an empty series."""
    if not samples:
        raise ValueError("no samples")
    track: Track | None = None
    for s in samples:
        track = track_activity(track, s, th, window_s)
    assert track is not None
    return track.idle_since_s, track.busy_reason


def mark_busy(track: Track | None, at_s: float, reason: str) -> Track | None:
    """A busy sign seen outside the samples (a socket check before hibernating)."""
    if track is None:
        return None
    return replace(track, idle_since_s=max(track.idle_since_s, at_s), busy_reason=reason,
                   busy_at_s=at_s)


def shares_netns(info: ContainerInfo) -> bool:
    """True when the container runs in a namespace that is not its own (host's, or
    another container's): its namespace counters are not its alone."""
    mode = info.network_mode or ""
    return mode == "host" or mode.startswith("container:")


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


# ====================================================================== state and plan


@dataclass
class Record:
    """One container hibernated by us; persisted under STATE_PREFIX + id."""

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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Record":
        if not isinstance(d, dict) or not d.get("id") or d.get("mode") not in ("pause", "stop"):
            raise ValueError(f"not a hibernation record: {d!r}")
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class HibernationState:
    """What plan_hibernation decides from besides the tick."""

    tracks: dict[str, Track] = field(default_factory=dict)
    hibernated: dict[str, Record] = field(default_factory=dict)
    retry_at: dict[str, float] = field(default_factory=dict)


def _fmt_s(s: float) -> str:
    if s >= 120:
        return f"{s / 60:.1f}m"
    return f"{s:.1f}s"


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


# ====================================================================== metrics helpers


class LatencyHistogram(DurationHistogram):
    def __init__(self, buckets: Sequence[float] = LATENCY_BUCKETS_S):
        super().__init__(buckets)

    def family(self, name: str, doc: str) -> HistogramMetricFamily:
        buckets, sum_s = self.cumulative()
        return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=sum_s)


@dataclass
class _Watch:
    cid: str
    pid: int
    probe: ConnectionProbe | None = None
    error: str = ""
    retry_mono: float = 0.0
    errors: int = 0
    wake_failures: int = 0
    next_wake_mono: float = 0.0  # after a failed wake, not before this


# ====================================================================== the component


class Hibernation(Component):
    name = "hibernation"

    def __init__(self, ctx: Context, worker: NetnsWorker | None = None):
        super().__init__(ctx)
        self.worker = worker or NetnsWorker(ctx.proc)
        self.counts: Counter[str] = Counter()
        self.wakes: Counter[str] = Counter()
        self.hibernations: Counter[str] = Counter()
        self.wake_latency = LatencyHistogram()
        self.ready_latency = LatencyHistogram()
        self.released_bytes_total = 0
        self.last_wake: dict[str, Any] = {}
        self._lock = threading.RLock()
        self._container_locks: dict[str, threading.Lock] = {}
        self._records: dict[str, Record] = {}
        self._tracks: dict[str, Track] = {}
        self._retry_at: dict[str, float] = {}
        self._watches: dict[str, _Watch] = {}
        self._waking: set[str] = set()
        self._restore: set[str] = set()
        self._restore_retry_mono = 0.0
        self._awaiting_ready: dict[str, tuple[float, str, str]] = {}  # cid -> (mono, name, trigger)
        self._stop = threading.Event()
        self._kick = threading.Event()  # a watch started, or stop: the idle watcher wakes
        self._thread: threading.Thread | None = None
        self.watch_cpu_s = 0.0
        self.watch_polls = 0
        self._loaded = False

    # ------------------------------------------------------------------ public

    def hibernated_ids(self) -> frozenset[str]:
        """Ids of the containers currently hibernated by us (any mode)."""
        with self._lock:
            return frozenset(self._records)

    # ------------------------------------------------------------------ lifecycle

    def load(self) -> None:
        """Read the persisted hibernations (a restarted daemon keeps watching them)."""
        if self._loaded:
            return
        self._loaded = True
        try:
            rows = self.ctx.journal.states(STATE_PREFIX)
        except JournalError as e:
            log.error("cannot read hibernation state: %s", e)
            return
        for key, value in rows.items():
            try:
                rec = Record.from_dict(value)
            except (TypeError, ValueError) as e:
                log.warning("dropping unreadable hibernation state %s: %s", key, e)
                self._del_state(key[len(STATE_PREFIX):])
                continue
            with self._lock:
                self._records[rec.id] = rec
                self._restore.add(rec.id)
        if self._restore:
            log.info("hibernation: %d container(s) hibernated before the restart; checking them",
                     len(self._restore))

    def start(self) -> None:
        self.load()
        self.ctx.inventory.add_listener(self._on_event)
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch_loop, name="hibernation-watch",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._kick.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            for w in self._watches.values():
                if w.probe is not None:
                    w.probe.close()
            self._watches.clear()
        self.worker.stop()

    # ------------------------------------------------------------------ pass hooks

    def _state(self) -> HibernationState:
        with self._lock:
            return HibernationState(dict(self._tracks), dict(self._records), dict(self._retry_at))

    def plan(self, tick: Tick) -> list[Action]:
        return plan_hibernation(tick, self._state())

    def observe(self, tick: Tick, results: list[ActionResult]) -> None:
        """Adds this pass's activity sample of every candidate (read now, used by the next
        plan), and holds back a retry after a failed or dry-run decision."""
        self.load()  # normally done by start(); a daemon driven pass by pass loads here
        if not tick.snapshot.engine_up:
            return  # PIDs of a stale view may belong to other processes by now
        cfg = tick.cfg
        th = Thresholds.from_config(cfg)
        with self._lock:
            hibernated = set(self._records)
            prev_tracks = dict(self._tracks)
        samples: dict[str, tuple[ActivitySample, float]] = {}
        kept: dict[str, Track] = {}
        # Off: nothing plans from the tracks, and reading every namespace's counters is
        # the costliest part of a pass (issue 9 soak: 15 ms at 110 containers).
        enabled = cfg.settings.hibernation.enabled
        for c in tick.snapshot.containers:
            cid = c.info.id
            if not enabled or cid in hibernated or c.info.state != "running" or c.stats is None:
                continue
            if hibernation_block(c.info, c.class_name, c.managed, cfg):
                continue
            prev = prev_tracks.get(cid)
            if prev is not None and prev.samples and prev.samples[-1].pid == c.info.pid and \
                    tick.now - prev.samples[-1].time_s < sample_interval_s(
                        cfg.classes[c.class_name].idle_after_s):
                kept[cid] = prev  # sampled recently enough for its idle_after
                continue
            net = conns = None
            if not shares_netns(c.info):
                try:
                    counters = read_counters(self.ctx.proc, c.info.pid)
                    net = counters.interface_bytes + counters.loopback_bytes
                    conns = counters.connections_opened
                except NetdiagError:
                    self.counts["counter_read_errors"] += 1
            s = c.stats
            sample = ActivitySample(tick.now, c.info.pid, s.cpu_usage_s,
                                    s.blkio_read_bytes + s.blkio_write_bytes, net, conns)
            samples[cid] = (sample, smoothing_window_s(cfg.classes[c.class_name].idle_after_s))
        with self._lock:
            self._tracks = {**kept, **{cid: track_activity(self._tracks.get(cid), smp, th, win)
                                       for cid, (smp, win) in samples.items()}}
            for r in results:
                if r.action.kind not in ("hibernate", "wake"):
                    continue
                if r.dry_run:
                    # Nothing changed: say "would hibernate" once per idle period, not
                    # once per pass.
                    c = next((x for x in tick.snapshot.containers if x.info.id == r.action.target), None)
                    klass = cfg.classes.get(c.class_name) if c else None
                    self._retry_at[r.action.target] = tick.now + max(
                        RETRY_AFTER_FAILURE_S, klass.idle_after_s if klass else 0.0)
                elif not r.ok and not r.skipped:
                    self._retry_at[r.action.target] = tick.now + RETRY_AFTER_FAILURE_S
            for cid in [k for k, t in self._retry_at.items() if t <= tick.now]:
                del self._retry_at[cid]
            present = {c.info.id for c in tick.snapshot.containers} | set(self._records)
            for cid in [k for k, lk in self._container_locks.items()
                        if k not in present and not lk.locked()]:
                del self._container_locks[cid]
        self._expire_readiness()

    # ------------------------------------------------------------------ executors

    def executors(self) -> dict[str, Callable[[Action], Outcome]]:
        return {"hibernate": self._hibernate, "wake": self._wake}

    def _container_lock(self, cid: str) -> threading.Lock:
        with self._lock:
            lock = self._container_locks.get(cid)
            if lock is None:
                lock = self._container_locks[cid] = threading.Lock()
            return lock

    def _engine(self, what: str, fn: Callable, *args, **kw) -> None:
        """An engine call whose refusals (e.g. 409 'already paused') become domain errors."""
        try:
            fn(*args, **kw)
        except SupervisorError:
            raise
        except Exception as e:  # noqa: BLE001 - the SDK's APIError, which Engine passes on
            raise HibernationError(f"docker {what} refused: {e}") from None

    def _owned_sockets(self, info: ContainerInfo) -> frozenset[int] | None:
        """Inodes of the sockets the container's processes hold, for a container in a
        shared namespace; None for one with its own namespace (all its sockets are its)."""
        if not shares_netns(info):
            return None
        try:
            loc = self.ctx.cgroups.locate(info.id, info.pid, info.cgroup_parent)
            pids = [int(x) for x in self.ctx.cgroups.read_file(loc, "memory", "cgroup.procs").split()]
        except (CgroupError, ValueError):
            pids = [info.pid]
        return socket_inodes(self.ctx.proc, pids)

    def _mark_busy(self, cid: str, reason: str) -> None:
        """Restart the idle clock of a container a socket check found busy."""
        now = self.ctx.clock()
        with self._lock:
            t = mark_busy(self._tracks.get(cid), now, reason)
            if t is not None:
                self._tracks[cid] = t

    def _hibernate(self, action: Action) -> Outcome:
        cid = action.target
        with self._container_lock(cid):
            return self._hibernate_locked(action)

    def _hibernate_locked(self, action: Action) -> Outcome:
        cfg = self.ctx.get_config()
        info = self.ctx.inventory.refresh_one(action.target)  # re-check just before acting
        if info is None:
            return Outcome(ok=False, skipped=True, detail="container no longer exists")
        cid = info.id
        with self._lock:
            if cid in self._records:
                return Outcome(ok=False, skipped=True,
                               detail=f"already hibernated ({self._records[cid].phase})")
        if info.state != "running":
            return Outcome(ok=False, skipped=True, detail=f"container is {info.state}, not running")
        cls, _ = classify(info, cfg)
        block = hibernation_block(info, cls, is_managed(info, cfg), cfg)
        if block:
            return Outcome(ok=False, skipped=True, detail=f"refused: {block}")
        klass: ClassConfig = cfg.classes[cls]
        mode = action.params.get("mode") or klass.hibernate_mode
        if mode not in ("pause", "stop"):
            return Outcome(ok=False, detail=f"unknown hibernation mode {mode!r}")
        owned = self._owned_sockets(info)
        try:
            sockets = list_tcp(self.worker, info.pid)
        except NetnsGone:
            return Outcome(ok=False, skipped=True, detail="container stopped meanwhile")
        except NetdiagError as e:
            self.counts["socket_check_errors"] += 1
            return Outcome(ok=False, detail=f"cannot check its connections, not hibernated: {e}")
        if not action.params.get("force"):
            # No stream may have moved data while the planner judged it idle: the class's
            # idle_after, or the ladder's shorter idle time under a breach.
            window_s = float(action.params.get("active_window_s") or
                             min(klass.idle_after_s, float(action.params.get("idle_s") or klass.idle_after_s)))
            busy = connection_activity(sockets, window_s, owned)
            if busy:
                self._mark_busy(cid, busy)
                self.counts["kept_awake_by_connections"] += 1
                return Outcome(ok=False, skipped=True, detail=f"not idle: {busy}",
                               after={"busy": busy})
        if mode == "pause" and not action.params.get("force"):
            refused = self._udp_refusal(info, owned)
            if refused:
                return refused
        targets = wake_targets(sockets, owned) if mode == "pause" else []
        rec = Record(id=cid, name=info.name, mode=mode, since_s=self.ctx.clock(),
                     phase=PAUSING if mode == "pause" else STOPPING,
                     trigger=str(action.params.get("trigger") or action.source),
                     reason=action.reason, class_name=cls,
                     targets=[t.to_dict() for t in targets])
        # Durable first: a crash after the pause must still leave it known as ours.
        self._put(rec)
        try:
            if mode == "pause":
                self._engine("pause", self.ctx.engine.pause, cid)
            else:
                self._engine("stop", self.ctx.engine.stop, cid,
                             timeout_s=int(action.params.get("timeout_s", 10)))
        except EngineUnavailable:
            # The engine may have paused (or stopped) it before the answer was lost: keep
            # the record and let the watcher look again once the engine answers (paused
            # or exited: ours, and watched; running: forgotten).
            with self._lock:
                self._restore.add(cid)
            raise
        except BaseException:
            self._forget(cid)
            raise
        with self._lock:
            self._tracks.pop(cid, None)
        if mode == "stop":
            rec.phase = STOPPED
            rec.reclaimed_bytes = None
            rec.memory_note = "stopped: all of its memory released"
            self._put(rec)
            with self._lock:
                self.hibernations["stop"] += 1
            return Outcome(ok=True, detail="stopped (wake = start)", before={"state": "running"},
                           after={"state": "exited", "mode": "stop"})
        released, note = self._release_memory(info)
        rec.phase = PAUSED
        rec.reclaimed_bytes = released
        rec.memory_note = note
        self._put(rec)
        with self._lock:
            self.hibernations["pause"] += 1
            self.released_bytes_total += released or 0
        watched = self._start_watch(cid, info.pid, targets)
        return Outcome(ok=True, detail=f"paused; {note}; {watched}", before={"state": "running"},
                       after={"state": "paused", "mode": "pause", "released_bytes": released,
                              "watching": [t.describe() for t in targets]})

    def _udp_refusal(self, info: ContainerInfo, owned: frozenset[int] | None) -> Outcome | None:
        """A paused UDP service would never wake: a datagram opens no connection for the
        watcher to see, it only waits (or is dropped) in the socket's queue. Such a
        container is not paused (stop mode, woken on request, or force are the operator's
        choice); its idle timer starts over, so it is tried again after idle_after."""
        try:
            udp = [u for u in udp_services(self.ctx.proc, info.pid)
                   if owned is None or u.inode in owned]
        except NetnsGone:
            return Outcome(ok=False, skipped=True, detail="container stopped meanwhile")
        except NetdiagError as e:
            self.counts["socket_check_errors"] += 1
            return Outcome(ok=False, detail=f"cannot check its UDP sockets, not hibernated: {e}")
        if not udp:
            return None
        listening = ", ".join(u.describe() for u in udp[:4]) + (" ..." if len(udp) > 4 else "")
        busy = f"serves {listening}: a datagram cannot wake a paused container"
        self._mark_busy(info.id, busy)
        self.counts["kept_awake_by_udp"] += 1
        return Outcome(ok=False, skipped=True,
                       detail=f"not hibernated: {busy} (hibernate_mode = \"stop\" or force to hibernate it)",
                       after={"busy": busy})

    def _release_memory(self, info: ContainerInfo) -> tuple[int | None, str]:
        """Ask the kernel to reclaim the frozen container's memory; (bytes released, what
        happened, in words)."""
        fs = self.ctx.cgroups
        try:
            loc = fs.locate(info.id, info.pid, info.cgroup_parent)
            before = fs.read_usage(loc).memory_usage_bytes
        except CgroupError as e:
            self.counts["reclaim_errors"] += 1
            return None, f"memory not released: {e}"
        knob = "memory.reclaim" if loc.version == 2 else "memory.force_empty"
        try:
            if loc.version == 2:
                # Asking for everything it holds: "could not reclaim all" (EAGAIN) is the
                # usual answer, which CgroupFS.reclaim returns as False, not an error.
                fs.reclaim(loc, before)
            else:
                fs.write_file(loc, "memory", knob, "0")
        except CgroupGone:
            # ENOENT on the knob while the cgroup is still there: a kernel without it
            # (memory.reclaim came in 5.19).
            try:
                fs.read_usage(loc)
            except CgroupError:
                return None, "memory not released: the cgroup vanished"
            return None, f"memory not released: this kernel has no {knob}"
        except CgroupError as e:
            self.counts["reclaim_errors"] += 1
            return None, f"memory not released: {knob}: {e.reason}"
        try:
            after = fs.read_usage(loc).memory_usage_bytes
            anon = stat_value(fs.read_file(loc, "memory", "memory.stat"),
                              "anon" if loc.version == 2 else "total_rss")
        except CgroupError as e:
            return None, f"memory released, then unreadable: {e}"
        released = max(0, before - after)
        note = f"{knob} released {_mib(released)} ({_mib(before)} -> {_mib(after)})"
        if self._swap_total_bytes() == 0:
            note += f"; no swap on this host: {_mib(anon)} of anonymous memory stays resident"
        return released, note

    def _swap_total_bytes(self) -> int | None:
        try:
            return parse_meminfo(read_text(f"{self.ctx.proc}/meminfo")).get("SwapTotal", 0)
        except CgroupError:
            return None

    def _wake(self, action: Action) -> Outcome:
        return self.wake_container(action.target, str(action.params.get("trigger") or action.source),
                                   detected_mono=action.params.get("detected_mono"))

    def wake_container(self, cid: str, trigger: str, detected_mono: float | None = None) -> Outcome:
        t0 = detected_mono if detected_mono is not None else time.monotonic()
        with self._lock:
            rec = self._records.get(cid)
        if rec is None:
            return Outcome(ok=False, skipped=True,
                           detail="not hibernated by the supervisor: left as it is")
        with self._container_lock(cid):
            with self._lock:
                rec = self._records.get(cid)
                if rec is None:
                    return Outcome(ok=False, skipped=True, detail="already woken")
                self._waking.add(cid)
            try:
                return self._wake_locked(rec, trigger, t0)
            finally:
                with self._lock:
                    self._waking.discard(cid)

    def _wake_locked(self, rec: Record, trigger: str, t0: float) -> Outcome:
        cid = rec.id
        want = ("paused",) if rec.mode == "pause" else ("exited", "created")
        # The inventory follows the engine's events: no engine round trip on the way to
        # the unpause; only a state that looks wrong is confirmed with the engine.
        info = self.ctx.inventory.get(cid)
        if info is None or info.id != cid or info.state not in want:
            info = self.ctx.inventory.refresh_one(cid)
        if info is None:
            self._forget(cid)
            return Outcome(ok=False, skipped=True, detail="container no longer exists: forgotten")
        if info.state == "running":
            self._forget(cid)
            return Outcome(ok=True, skipped=True, detail="already running (woken by somebody else)")
        if info.state not in want:
            self._forget(cid)
            return Outcome(ok=False, skipped=True, detail=f"container is {info.state}: forgotten")
        if info.has_healthcheck:
            with self._lock:
                self._awaiting_ready[cid] = (t0, rec.name, trigger)
        try:
            if rec.mode == "pause":
                self._engine("unpause", self.ctx.engine.unpause, cid)
            else:
                self._engine("start", self.ctx.engine.start, cid)
        except HibernationError:
            now = self.ctx.inventory.refresh_one(cid)
            if now is not None and now.state == "running":
                self._forget(cid)
                return Outcome(ok=True, skipped=True,
                               detail="already running (woken by somebody else)")
            raise
        latency_s = time.monotonic() - t0
        self._forget(cid)
        self.wake_latency.observe(latency_s)
        ready = not info.has_healthcheck
        if ready:
            self.ready_latency.observe(latency_s)
        with self._lock:
            self.wakes[trigger] += 1
            self.last_wake = {"id": cid[:12], "name": rec.name, "mode": rec.mode,
                              "trigger": trigger, "latency_ms": round(latency_s * 1000, 1),
                              "ready": ready,
                              "ready_ms": round(latency_s * 1000, 1) if ready else None,
                              "time_s": self.ctx.clock()}
        verb = "unpaused" if rec.mode == "pause" else "started"
        detail = f"{verb} {latency_s * 1000:.0f} ms after the {trigger}"
        if not ready:
            detail += "; ready at its next health_status: healthy"
        return Outcome(ok=True, detail=detail,
                       before={"state": info.state},
                       after={"state": "running", "wake_ms": round(latency_s * 1000, 1),
                              "trigger": trigger, "ready": ready})

    # ------------------------------------------------------------------ durable state

    def _put(self, rec: Record) -> None:
        with self._lock:
            self._records[rec.id] = rec
        try:
            self.ctx.journal.put_state(STATE_PREFIX + rec.id, rec.to_dict())
        except JournalError as e:
            log.error("cannot persist the hibernation of %s: %s", rec.name, e)
            self.counts["state_write_errors"] += 1

    def _del_state(self, cid: str) -> None:
        try:
            self.ctx.journal.del_state(STATE_PREFIX + cid)
        except JournalError as e:
            log.error("cannot clear the hibernation state of %s: %s", cid[:12], e)
            self.counts["state_write_errors"] += 1

    def _forget(self, cid: str) -> None:
        # Durable record first: once hibernated_ids() no longer lists it, a restart must
        # not find it recorded as ours either.
        self._del_state(cid)
        with self._lock:
            self._records.pop(cid, None)
            self._restore.discard(cid)
            w = self._watches.pop(cid, None)
            self._tracks.pop(cid, None)
        if w is not None and w.probe is not None:
            w.probe.close()

    # ------------------------------------------------------------------ events

    def _on_event(self, action: str, cid: str, ev: dict) -> None:
        if action.startswith("health_status"):
            if action.split(":", 1)[-1].strip() == "healthy":
                with self._lock:
                    waiting = self._awaiting_ready.pop(cid, None)
                if waiting is not None:
                    t0, name, trigger = waiting
                    ready_s = time.monotonic() - t0
                    self.ready_latency.observe(ready_s)
                    with self._lock:
                        if self.last_wake.get("id") == cid[:12]:
                            self.last_wake = {**self.last_wake, "ready": True,
                                              "ready_ms": round(ready_s * 1000, 1)}
                    log.info("%s ready (healthy) %.0f ms after the %s", name, ready_s * 1000, trigger)
            return
        with self._lock:
            rec = self._records.get(cid)
            if rec is None or cid in self._waking:
                return
        ours_gone = False
        if action == "destroy":
            ours_gone, why = True, "removed"
        elif rec.mode == "pause" and action in ("unpause", "start", "restart", "die"):
            ours_gone, why = True, ("unpaused by somebody else: running again" if action == "unpause"
                                    else f"{action} while hibernated")
        elif rec.mode == "stop" and action in ("start", "restart"):
            ours_gone, why = True, "started by somebody else: running again"
        if ours_gone and rec.phase in (PAUSED, STOPPED):
            log.info("hibernated container %s %s; forgotten", rec.name, why)
            self.counts["forgotten"] += 1
            self._forget(cid)

    def _expire_readiness(self) -> None:
        now = time.monotonic()
        with self._lock:
            for cid, (t0, name, _) in list(self._awaiting_ready.items()):
                if now - t0 > READY_TIMEOUT_S:
                    del self._awaiting_ready[cid]
                    self.counts["not_ready_after_wake"] += 1
                    log.warning("%s not healthy %.0fs after its wake", name, now - t0)

    # ------------------------------------------------------------------ watching

    def _start_watch(self, cid: str, pid: int, targets: list[TcpSocket]) -> str:
        w = _Watch(cid, pid)
        with self._lock:
            old = self._watches.pop(cid, None)
            self._watches[cid] = w
        self._kick.set()
        if old is not None and old.probe is not None:
            old.probe.close()
        if not targets:
            return "no TCP listener to watch: wakes on request only"
        self._open_probe(w, targets)
        if w.probe is None:
            return f"connections not watched yet: {w.error}"
        return "watching " + ", ".join(t.describe() for t in targets[:6]) + \
               (f" and {len(targets) - 6} more" if len(targets) > 6 else "")

    def _open_probe(self, w: _Watch, targets: list[TcpSocket]) -> None:
        try:
            w.probe = open_probe(self.worker, w.pid, targets)
            w.error = ""
        except NetdiagError as e:
            w.errors += 1
            w.error = str(e)
            w.retry_mono = time.monotonic() + min(30.0, 2.0 ** min(w.errors, 5))
            self.counts["watch_errors"] += 1
            log.warning("cannot watch the sockets of %s: %s", w.cid[:12], e)

    def _watch_loop(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            c0 = time.thread_time()
            try:
                self._restore_pending()
                self._poll_once()
            except Exception:  # noqa: BLE001 - the watcher must outlive any one bug
                self.counts["watch_loop_errors"] += 1
                log.exception("hibernation watcher pass failed")
            self.watch_cpu_s += time.thread_time() - c0
            self.watch_polls += 1
            with self._lock:
                idle = not self._watches and not self._restore
            if idle:
                # Nothing frozen to watch: wait for a watch to start (or stop), rather
                # than polling nothing ten times a second.
                self._kick.wait(IDLE_WATCH_WAIT_S)
                self._kick.clear()
                continue
            try:
                interval = parse_duration(self.ctx.get_config().settings.hibernation.poll_interval)
            except ValueError:
                interval = 0.1
            self._stop.wait(max(0.005, interval - (time.monotonic() - t0)))

    def _poll_once(self) -> None:
        with self._lock:
            watches = list(self._watches.values())
            records = dict(self._records)
        now = time.monotonic()
        for w in watches:
            rec = records.get(w.cid)
            if rec is None:
                continue
            if w.probe is None:
                if rec.targets and now >= w.retry_mono:
                    self._open_probe(w, [TcpSocket.from_dict(t) for t in rec.targets])
                continue
            try:
                waiting = w.probe.waiting()
            except NetdiagError as e:
                w.errors += 1
                w.error = str(e)
                self.counts["watch_errors"] += 1
                continue
            if waiting and now >= w.next_wake_mono:
                detected = time.monotonic()
                what = ", ".join(f"{x.target.describe()} ({x.rqueue})" for x in waiting[:3])
                result = self.run_wake(w.cid, rec.name, "connection", f"client waiting on {what}",
                                       detected_mono=detected)
                if not result.ok and not result.skipped:
                    # e.g. the engine is down: try again, less and less often (journal
                    # rows too), up to every 10 s
                    w.wake_failures += 1
                    w.next_wake_mono = time.monotonic() + min(10.0, 0.5 * 2 ** w.wake_failures)

    def run_wake(self, cid: str, name: str, trigger: str, reason: str,
                 detected_mono: float | None = None, source: str = "hibernation") -> ActionResult:
        action = Action("wake", cid, name, reason, source,
                        {"trigger": trigger, "detected_mono": detected_mono})
        return self.run_action(action)

    def run_action(self, action: Action) -> ActionResult:
        """Execute one of our actions outside the daemon's pass (the watcher, the control
        API) through the actuator: the same dry-run rule, journal and counts."""
        assert self.ctx.execute is not None, "the daemon sets ctx.execute"
        return self.ctx.execute(action)

    def _restore_pending(self) -> None:
        if time.monotonic() < self._restore_retry_mono:
            return
        with self._lock:
            pending = list(self._restore)
        for cid in pending:
            try:
                # Under the container's lock: a wake (API, connection) racing the check
                # would otherwise be taken for "somebody else woke it", or be followed by
                # the record being written back for a container that runs again.
                with self._container_lock(cid):
                    self._restore_one(cid)
            except EngineUnavailable:
                self._restore_retry_mono = time.monotonic() + 1.0  # the engine is down
                return
            with self._lock:
                self._restore.discard(cid)

    def _restore_one(self, cid: str) -> None:
        with self._lock:
            rec = self._records.get(cid)
        if rec is None:
            return
        info = self.ctx.inventory.refresh_one(cid)
        if info is None:
            log.info("hibernated container %s no longer exists; forgotten", rec.name)
            self._forget(cid)
            return
        if rec.mode == "pause":
            if info.state != "paused":
                log.info("hibernated container %s is %s now; forgotten", rec.name, info.state)
                self._forget(cid)
                return
            woken_meanwhile = ("unpause", "start", "restart", "die")
        else:
            if info.state not in ("exited", "created"):
                log.info("hibernated container %s is %s now; forgotten", rec.name, info.state)
                self._forget(cid)
                return
            woken_meanwhile = ("start", "restart")
        # Paused now, but was it unpaused (and paused again by somebody else) while we
        # were down? The engine keeps recent events: look.
        try:
            events = self.ctx.engine.events_between(int(rec.since_s), int(time.time()) + 1, cid)
        except EngineUnavailable:
            events = []
        for ev in events:
            act = (ev.get("Action") or ev.get("status") or "")
            t = (ev.get("timeNano") or 0) / 1e9 or float(ev.get("time") or 0)
            if act in woken_meanwhile and t > rec.since_s:
                log.info("hibernated container %s had a %r event while the daemon was down "
                         "(somebody else woke it); forgotten and left as it is", rec.name, act)
                self._forget(cid)
                return
        if rec.phase == PAUSING:
            rec.phase = PAUSED
            self._put(rec)
        elif rec.phase == STOPPING:
            rec.phase = STOPPED
            self._put(rec)
        if rec.mode == "pause":
            targets: list[TcpSocket]
            try:
                targets = wake_targets(list_tcp(self.worker, info.pid), self._owned_sockets(info))
            except NetdiagError as e:
                log.warning("cannot list the sockets of %s (%s); watching the recorded ones",
                            rec.name, e)
                targets = [TcpSocket.from_dict(t) for t in rec.targets]
            rec.targets = [t.to_dict() for t in targets]
            self._put(rec)
            self._start_watch(cid, info.pid, targets)
        log.info("hibernated container %s (%s) restored", rec.name, rec.mode)

    # ------------------------------------------------------------------ control API

    def routes(self):
        name = {"name": Param(str, required=True)}
        return {("POST", "/hibernate"): (self._api_hibernate, {
                    **name, "mode": Param(str), "force": Param(bool, default=False)}),
                ("POST", "/wake"): (self._api_wake, name)}

    def _resolve(self, body: dict) -> tuple[ContainerInfo | None, tuple[int, dict] | None]:
        name = body["name"]
        if not name.strip():
            return None, (400, {"error": 'body must name a container: {"name": "NAME"}'})
        info = self.ctx.inventory.get(name.strip())
        if info is None:
            return None, (404, {"error": f"no container named {name.strip()!r}"})
        return info, None

    @staticmethod
    def _reply(result: ActionResult, ok_key: str) -> tuple[int, dict]:
        body = {"name": result.action.name, "id": result.action.target[:12],
                "outcome": result.outcome, "detail": result.detail, **result.after}
        if result.dry_run:
            return 200, {**body, "dry_run": True}
        if result.ok and not result.skipped:
            return 200, {**body, ok_key: True}
        if result.ok and result.skipped:
            return 200, {**body, ok_key: False}
        if result.detail.startswith("engine unavailable"):
            return 503, {**body, "error": result.detail}
        return 409, {**body, "error": result.detail}

    def _api_hibernate(self, body: dict) -> tuple[int, dict]:
        info, err = self._resolve(body)
        if err:
            return err
        assert info is not None
        mode = body.get("mode")
        if mode is not None and mode not in ("pause", "stop"):
            return 400, {"error": f"mode must be 'pause' or 'stop', not {mode!r}"}
        force = body["force"]
        params: dict[str, Any] = {"trigger": "api", "active_window_s": 5.0}
        if mode:
            params["mode"] = mode
        if force:
            params["force"] = True
        result = self.run_action(Action("hibernate", info.id, info.name, "requested through the API",
                                        "api", params, destructive=mode == "stop"))
        return self._reply(result, "hibernated")

    def _api_wake(self, body: dict) -> tuple[int, dict]:
        info, err = self._resolve(body)
        if err:
            return err
        assert info is not None
        with self._lock:
            ours = info.id in self._records
        if not ours:
            return 409, {"name": info.name, "id": info.short_id, "state": info.state,
                         "error": f"{info.name} is {info.state} and was not hibernated by the "
                                  "supervisor: left as it is"}
        result = self.run_wake(info.id, info.name, "api", "requested through the API", source="api")
        return self._reply(result, "woken")

    # ------------------------------------------------------------------ publishing

    def status(self, tick: Tick) -> dict[str, Any]:
        """``containers``: one row per container we hibernated or that may hibernate
        (``hibernated``, ``idle_s``: read by the status table)."""
        cfg = tick.cfg
        h = cfg.settings.hibernation
        now = tick.now
        with self._lock:
            records = list(self._records.values())
            watches = dict(self._watches)
            tracks = dict(self._tracks)
            awaiting = dict(self._awaiting_ready)
            hibs, wakes, last = dict(self.hibernations), dict(self.wakes), dict(self.last_wake)
            released = self.released_bytes_total
        swap = self._swap_total_bytes()
        by_id = {c.info.id: c for c in tick.snapshot.containers}
        rows: list[dict[str, Any]] = []
        for r in sorted(records, key=lambda r: r.since_s):
            w = watches.get(r.id)
            rows.append({
                "id": r.id[:12], "name": r.name, "class": r.class_name, "hibernated": True,
                "mode": r.mode, "phase": r.phase, "since_s": r.since_s,
                "idle_s": round(max(0.0, now - r.since_s), 1),
                "trigger": r.trigger, "reason": r.reason, "released_bytes": r.reclaimed_bytes,
                "memory": r.memory_note,
                "watching": ([TcpSocket.from_dict(t).describe() for t in r.targets]
                             if r.mode == "pause" else []),
                "watch_error": (w.error if w else "") if r.mode == "pause" else "",
            })
        idle_rows = []
        for cid, t in tracks.items():
            c = by_id.get(cid)
            klass = cfg.classes.get(c.class_name) if c else None
            if c is None or klass is None:
                continue
            idle_rows.append({
                "id": cid[:12], "name": c.info.name, "class": c.class_name, "hibernated": False,
                "mode": klass.hibernate_mode, "idle_s": round(max(0.0, now - t.idle_since_s), 1),
                "idle_after_s": klass.idle_after_s, "last_busy": t.busy_reason,
                "last_busy_ago_s": round(now - t.busy_at_s, 1) if t.busy_at_s is not None else None})
        rows += sorted(idle_rows, key=lambda x: -x["idle_s"])
        note = ""
        if swap == 0:
            note = ("no swap on this host: hibernation releases page cache only; the anonymous "
                    "memory of a paused container stays resident (stop mode releases all)")
        return {
            "enabled": h.enabled, "poll_interval_s": parse_duration(h.poll_interval),
            "thresholds": {"cpu_idle_cores": h.cpu_idle_cores,
                           "net_idle_bytes_per_s": h.net_idle_bytes_per_s,
                           "blkio_idle_bytes_per_s": h.blkio_idle_bytes_per_s},
            "swap_total_bytes": swap, "memory_note": note,
            "hibernated": len(records),
            "containers": rows,
            "hibernations": hibs,
            "released_bytes_total": released,
            "wakes": {"total": sum(wakes.values()), "by_trigger": wakes, "last": last,
                      "awaiting_ready": [{"id": cid[:12], "name": v[1],
                                          "for_s": round(time.monotonic() - v[0], 1)}
                                         for cid, v in awaiting.items()]},
            "watcher": {"alive": bool(self._thread and self._thread.is_alive()),
                        "watched": sum(1 for w in watches.values() if w.probe is not None),
                        "polls": self.watch_polls, "cpu_s": round(self.watch_cpu_s, 4),
                        "errors": self.counts["watch_errors"]},
            "counts": dict(self.counts),
        }

    def collect(self, tick: Tick) -> Iterable:
        with self._lock:
            records = list(self._records.values())
            tracks = dict(self._tracks)
            hibs, wakes_by = Counter(self.hibernations), Counter(self.wakes)
            released = self.released_bytes_total
        g = GaugeMetricFamily("resource_supervisor_hibernated_containers",
                              "Containers hibernated by the supervisor, by mode", labels=["mode"])
        for mode in ("pause", "stop"):
            g.add_metric([mode], float(sum(1 for r in records if r.mode == mode)))
        yield g
        by_id = {c.info.id: c for c in tick.snapshot.containers}
        idle = GaugeMetricFamily("resource_supervisor_container_idle_seconds",
                                 "How long a container that may hibernate has been idle",
                                 labels=["id", "name", "class"])
        for cid, t in tracks.items():
            c = by_id.get(cid)
            if c is not None:
                idle.add_metric([cid[:12], c.info.name, c.class_name],
                                max(0.0, tick.now - t.idle_since_s))
        yield idle
        hibs_f = CounterMetricFamily("resource_supervisor_hibernations",
                                     "Containers hibernated, by mode", labels=["mode"])
        for mode in ("pause", "stop"):
            hibs_f.add_metric([mode], float(hibs[mode]))
        yield hibs_f
        wakes = CounterMetricFamily("resource_supervisor_hibernation_wakes",
                                    "Wakes of hibernated containers, by trigger", labels=["trigger"])
        for trig in sorted(set(wakes_by) | {"connection", "api"}):
            wakes.add_metric([trig], float(wakes_by[trig]))
        yield wakes
        yield self.wake_latency.family(
            "resource_supervisor_hibernation_wake_latency_seconds",
            "From the trigger (a client waiting, a request) to the container running again")
        yield self.ready_latency.family(
            "resource_supervisor_hibernation_wake_ready_seconds",
            "From the trigger to the container ready (healthy, for one with a health check)")
        rel = CounterMetricFamily("resource_supervisor_hibernation_released_bytes",
                                  "Memory released by hibernating containers in pause mode")
        rel.add_metric([], float(released))
        yield rel
        cpu = CounterMetricFamily("resource_supervisor_hibernation_watch_cpu_seconds",
                                  "CPU time spent watching hibernated containers for clients")
        cpu.add_metric([], self.watch_cpu_s)
        yield cpu


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"
