"""What counts as a container's activity, and since when it has been idle: pure values
and functions, kept by the activity tracker (observe/activity.py) and read by the
planners that decide from idleness (policy/hibernation.py; the ladder's hibernate rung
and the Ollama governor through ``ActivityView``).

Two measures, one tracker. Every container's CPU is folded into a ``CpuRecord`` once per
pass, from the reading the sampler's sweep already took; the Tick carries them frozen as
an ``ActivityView``: cores used since the last pass, and how long the CPU has stayed at
or below a given threshold (``cpu_idle_cores``). Containers a consumer watches (the
hibernation candidates) get full samples besides, judged as follows.

Each sample holds the cumulative counters of one container at one time: CPU seconds and
block I/O bytes (its cgroup), and the counters of its own network namespace (bytes on its
interfaces, bytes over its loopback, TCP connections opened). A sample is *busy* when a
connection was opened since the previous sample, or when a rate averaged over a smoothing
window (at most SMOOTHING_MAX_S, so a timer that wakes for a few ms every 10 s does not
count) is above its threshold.

Loopback traffic inside the container's namespace counts: both ends are the container's
own processes, or a client that entered its namespace (``docker exec``, ``nsenter``), and
that is demand like any other. Loopback bytes are counted once (lo's rx equals its tx).
Containers that share another namespace (``network_mode: host`` or ``container:X``) have
no counters of their own: only CPU and block I/O judge them.

Health checks are not activity. Docker runs a container's health check as an exec inside
it (Rule 2.2: a curl to localhost every 30 s): it uses CPU, opens a loopback connection
and moves bytes. The engine says when each check ran (its ``exec_start`` and ``exec_die``
events); those times are ``CheckWindow`` values, and the tracker takes a sample at each
edge. Whatever grows in an interval between two samples that lies inside a check's window
(widened by HEALTH_MARGIN_S each side, for the event's delivery and the read) is the
check's: it is taken out of the counters the idle clock judges (``Track.samples`` hold the
counters net of it), so it never resets idleness; everything else counts as before.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Mapping, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from supervisor.model.config import Config
    from supervisor.model.snapshot import ContainerInfo

SMOOTHING_MAX_S = 30.0
ACTIVITY_SAMPLE_MAX_S = 5.0
# A check's window is widened by this much each side: the engine's event reaches us, and
# the counters are read, a little after the exec started or ended.
HEALTH_MARGIN_S = 0.25


@dataclass(frozen=True, slots=True)
class CheckWindow:
    """When one health check ran in a container (engine times, seconds). ``end_s`` None:
    still running; it counts as running for at most ``timeout_s`` (the check's timeout:
    Docker kills it then)."""

    start_s: float
    end_s: float | None = None
    timeout_s: float = 30.0

    def covers(self, from_s: float, to_s: float, margin_s: float = HEALTH_MARGIN_S) -> bool:
        """True when the whole interval from_s..to_s lies inside this window (widened)."""
        end = self.end_s if self.end_s is not None else self.start_s + self.timeout_s
        return self.start_s - margin_s <= from_s and to_s <= end + margin_s


def in_check_window(from_s: float, to_s: float, windows: Sequence[CheckWindow],
                    margin_s: float = HEALTH_MARGIN_S) -> bool:
    """True when the interval from_s..to_s lies entirely inside one check's window: what
    grew in it is the check's, not a client's."""
    return any(w.covers(from_s, to_s, margin_s) for w in windows)


def health_exec_command(test: Sequence[str], shell: Sequence[str] = ("/bin/sh", "-c")) -> str:
    """The command line Docker's events name a health check's exec by (``exec_start:
    <command>``): ``CMD a b`` runs ``a b``; ``CMD-SHELL x`` runs ``<shell> x``. "" when
    the container has no check."""
    if not test or test[0] == "NONE":
        return ""
    if test[0] == "CMD-SHELL":
        return " ".join((*shell, *test[1:]))
    if test[0] == "CMD":
        return " ".join(test[1:])
    return " ".join(test)


def is_health_exec(test: Sequence[str], command: str) -> bool:
    """True when an exec's command line (from its exec_create/exec_start event) is the
    container's health check. The shell prefix is not compared (an image may set its own
    SHELL)."""
    want = health_exec_command(test, ())
    return bool(want) and command.strip().endswith(want)


@dataclass(frozen=True, slots=True)
class Thresholds:
    """At or below these rates a container is idle."""

    cpu_cores: float
    net_bytes_per_s: float
    blkio_bytes_per_s: float

    @classmethod
    def from_config(cls, cfg: "Config") -> "Thresholds":
        h = cfg.settings.hibernation
        return cls(h.cpu_idle_cores, h.net_idle_bytes_per_s, h.blkio_idle_bytes_per_s)


@dataclass(frozen=True, slots=True)
class Watch:
    """How one consumer wants a container's activity followed: a sample at least every
    ``interval_s``, rates averaged over ``window_s``, idle at or below ``thresholds``."""

    interval_s: float
    window_s: float
    thresholds: Thresholds


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

    samples: tuple[ActivitySample, ...]  # counters net of health checks (see above)
    idle_since_s: float
    busy_reason: str = ""  # why it was last busy ("" = not seen busy since tracking began)
    busy_at_s: float | None = None
    raw: ActivitySample | None = None  # the last sample as read (None: samples[-1] is)
    checks_discounted: int = 0  # intervals whose growth was a health check's


@dataclass(frozen=True, slots=True)
class Rates:
    """Average rates between two samples of one container."""

    span_s: float
    cpu_cores: float
    blkio_bytes_per_s: float
    net_bytes_per_s: float | None  # None: no namespace counters of its own
    connections_opened: int | None


def sample_interval_s(idle_after_s: float) -> float:
    """How often a candidate's activity is sampled: a tenth of its idle_after, at most
    ACTIVITY_SAMPLE_MAX_S (a connection opened in between is still seen: the counter
    only grows), so 5 minutes of idleness are judged from a sample every 5 s, not 300."""
    return min(ACTIVITY_SAMPLE_MAX_S, idle_after_s / 10)


def smoothing_window_s(idle_after_s: float) -> float:
    """Rates are averaged over this window: the class's idle_after, at most 30 s."""
    return max(1e-3, min(idle_after_s, SMOOTHING_MAX_S))


def shares_netns(info: "ContainerInfo") -> bool:
    """True when the container runs in a namespace that is not its own (host's, or
    another container's): its namespace counters are not its alone."""
    mode = info.network_mode or ""
    return mode == "host" or mode.startswith("container:")


def rates(ref: ActivitySample, cur: ActivitySample) -> Rates | None:
    """The rates from ``ref`` to ``cur`` (same process, ``cur`` later), or None."""
    span = cur.time_s - ref.time_s
    if span <= 0 or restarted(ref, cur):
        return None
    net = conns = None
    if cur.net_bytes is not None and ref.net_bytes is not None:
        net = (cur.net_bytes - ref.net_bytes) / span
    if cur.connections is not None and ref.connections is not None:
        conns = cur.connections - ref.connections
    return Rates(span, (cur.cpu_s - ref.cpu_s) / span, (cur.blkio_bytes - ref.blkio_bytes) / span,
                 net, conns)


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


def restarted(prev: ActivitySample, cur: ActivitySample) -> bool:
    """A new process, or counters going back: the two samples are not one run's."""
    if cur.pid != prev.pid or cur.cpu_s < prev.cpu_s or cur.blkio_bytes < prev.blkio_bytes:
        return True
    for a, b in ((prev.net_bytes, cur.net_bytes), (prev.connections, cur.connections)):
        if a is not None and b is not None and b < a:
            return True
    return (prev.net_bytes is None) != (cur.net_bytes is None)


def window_start(samples: Sequence[ActivitySample], now_s: float, window_s: float) -> int:
    """Index of the sample a window of ``window_s`` ending at ``now_s`` starts from: the
    last one at or before its start (the first one when none is that old)."""
    start = 0
    for i, s in enumerate(samples[:-1]):
        if s.time_s <= now_s - window_s:
            start = i
    return start


def _net_step(adj: ActivitySample, prev: ActivitySample, cur: ActivitySample,
              keep: bool) -> ActivitySample:
    """``adj`` (counters net of checks at ``prev``) moved to ``cur``: with the growth from
    prev to cur when ``keep``, without it when the interval was a health check's."""
    if not keep:
        return replace(adj, time_s=cur.time_s, pid=cur.pid)

    def grow(a: int | None, p: int | None, c: int | None) -> int | None:
        return None if a is None or p is None or c is None else a + (c - p)
    return ActivitySample(cur.time_s, cur.pid, adj.cpu_s + (cur.cpu_s - prev.cpu_s),
                          adj.blkio_bytes + (cur.blkio_bytes - prev.blkio_bytes),
                          grow(adj.net_bytes, prev.net_bytes, cur.net_bytes),
                          grow(adj.connections, prev.connections, cur.connections))


def track_activity(track: Track | None, sample: ActivitySample, th: Thresholds,
                   window_s: float, checks: Sequence[CheckWindow] = ()) -> Track:
    """The track after one more sample. A first sample starts the idle clock (a container
    is never hibernated before it has been watched for idle_after); a restart (new PID,
    counters going back) counts as busy. What grew since the last sample is left out when
    that interval lies inside one of ``checks`` (a health check's window)."""
    if track is None or not track.samples:
        return Track((sample,), sample.time_s)
    prev = track.raw or track.samples[-1]
    if sample.time_s <= prev.time_s:
        return track  # a replayed or out-of-order sample changes nothing
    if restarted(prev, sample):
        return Track((sample,), sample.time_s, "restarted", sample.time_s)
    discount = in_check_window(prev.time_s, sample.time_s, checks)
    adj_prev = track.samples[-1]
    adj = _net_step(adj_prev, prev, sample, keep=not discount)
    samples = track.samples + (adj,)
    kept = samples[window_start(samples, sample.time_s, window_s):]
    n = track.checks_discounted + (1 if discount else 0)
    reason = busy_reason(adj_prev, adj, kept[0], th)
    if reason:
        return Track(kept, sample.time_s, reason, sample.time_s, sample, n)
    return Track(kept, track.idle_since_s, track.busy_reason, track.busy_at_s, sample, n)


def idle_since(samples: Sequence[ActivitySample], th: Thresholds, window_s: float,
               checks: Sequence[CheckWindow] = ()) -> tuple[float, str]:
    """(time from which the container has been idle, why it was last busy) over a series
    of samples, oldest first, health checks' windows discounted. Raises ValueError on an
    empty series."""
    if not samples:
        raise ValueError("no samples")
    track: Track | None = None
    for s in samples:
        track = track_activity(track, s, th, window_s, checks)
    assert track is not None
    return track.idle_since_s, track.busy_reason


def mark_busy(track: Track | None, at_s: float, reason: str) -> Track | None:
    """A busy sign seen outside the samples (a socket check before hibernating)."""
    if track is None:
        return None
    return replace(track, idle_since_s=max(track.idle_since_s, at_s), busy_reason=reason,
                   busy_at_s=at_s)


# ---------------------------------------------------------------------------- CPU, every pass

# At most this many peaks per record: past it the two oldest merge, so a long series of
# ever-lower rates cannot grow a record without bound. A merge can only make a container
# look busy more recently than it was (never idle longer), so no idle verdict is wrong
# in the harmful direction.
CPU_PEAKS_MAX = 16


@dataclass(frozen=True, slots=True)
class CpuRecord:
    """The CPU of one container (or one process) as read pass after pass, since this run
    of its process was first read: the last two readings (the cores used between them),
    and the *peaks* from which idleness by any threshold is told.

    ``peaks``: (end time, cores) of past intervals between two readings, each one busier
    than every later interval (cores strictly decreasing, oldest first). The last interval
    above a threshold is always one of them: an interval is dropped only when a later
    one used at least as much."""

    pid: int
    since_s: float  # first reading of this run (a restart starts over)
    time_s: float  # last reading
    cpu_s: float  # cumulative CPU seconds at the last reading
    prev: tuple[float, float] | None = None  # (time, CPU seconds) of the one before
    peaks: tuple[tuple[float, float], ...] = ()

    @property
    def cores(self) -> float | None:
        """Cores used between the last two readings; None after one."""
        if self.prev is None:
            return None
        return (self.cpu_s - self.prev[1]) / (self.time_s - self.prev[0])


def cpu_step(rec: CpuRecord | None, pid: int, time_s: float, cpu_s: float) -> CpuRecord:
    """The record after one more reading. A first reading starts the idle clock; a new
    process or a counter going back starts the record over (a restart counts as busy)."""
    if rec is None or pid != rec.pid or cpu_s < rec.cpu_s:
        return CpuRecord(pid, time_s, time_s, cpu_s)
    if time_s <= rec.time_s:
        return rec  # a replayed or out-of-order reading changes nothing
    cores = (cpu_s - rec.cpu_s) / (time_s - rec.time_s)
    peaks: "tuple[tuple[float, float], ...] | list[tuple[float, float]]" = rec.peaks
    if cores > 0:  # an interval without CPU is above no threshold (the idle pass: as it was)
        peaks = list(peaks)
        while peaks and peaks[-1][1] <= cores:
            peaks.pop()
        peaks.append((time_s, cores))
        if len(peaks) > CPU_PEAKS_MAX:
            peaks[0:2] = [(peaks[1][0], peaks[0][1])]
    return CpuRecord(pid, rec.since_s, time_s, cpu_s, (rec.time_s, rec.cpu_s), tuple(peaks))


def cpu_idle_since(rec: CpuRecord, idle_cores: float) -> float:
    """When the CPU last ended an interval above ``idle_cores`` (at or below it a
    container is idle), or the first reading when it never did."""
    for end_s, cores in reversed(rec.peaks):
        if cores > idle_cores:
            return end_s
    return rec.since_s


def cpu_rate_since(rec: CpuRecord | None, pid: int, time_s: float, cpu_s: float) -> float | None:
    """Cores used up to a fresh reading (a re-check just before acting, no sleep) from the
    reading before the record's last one: the record was taken by this pass's view, so
    that is the last pass's reading, and everything since the last pass counts (the
    interval the plan judged and whatever started after). From the last reading when
    there is no earlier one; None when there is none of this process, or its counter
    went back."""
    if rec is None or pid != rec.pid or cpu_s < rec.cpu_s:
        return None
    t0, c0 = rec.prev if rec.prev is not None else (rec.time_s, rec.cpu_s)
    if time_s <= t0:
        return None
    return (cpu_s - c0) / (time_s - t0)


@dataclass(frozen=True)
class ActivityView:
    """CPU activity as one pass sees it, read-only: taken once per pass from the activity
    tracker (observe/activity.py) into the Tick (``tick.activity``), so every planner
    judges from the same readings and planning twice gives the same plan. Keyed by
    container id (and ``host:<pid>`` for an Ollama server outside containers). Empty by
    default: a hand-made tick knows no activity, and nothing counts as idle."""

    time_s: float = 0.0  # the readings' time (the snapshot's)
    cpu: Mapping[str, CpuRecord] = field(default_factory=lambda: MappingProxyType({}))

    def __deepcopy__(self, memo: dict) -> "ActivityView":
        return self  # immutable all through (a read-only mapping of frozen records)

    def cpu_cores(self, key: str) -> float | None:
        """Cores used between the last two readings; None before two readings."""
        rec = self.cpu.get(key)
        return None if rec is None else rec.cores

    def idle_for_s(self, key: str, idle_cores: float) -> float | None:
        """Seconds the CPU has stayed at or below ``idle_cores``, up to this view's time
        (bounded by how long it has been read); None before two readings."""
        rec = self.cpu.get(key)
        if rec is None or rec.cores is None:
            return None
        return max(0.0, self.time_s - cpu_idle_since(rec, idle_cores))
