"""The one measure of container activity between passes: CPU cores used, network bytes/s
(its interfaces and the loopback of its own namespace), block I/O bytes/s and TCP
connections opened.

Who needs a container's activity says so after each pass with ``watch(owner, {cid:
Watch})`` (hibernation: its candidates, each sampled every tenth of its idle_after).
The sampler hands every container it reads to ``sample`` during its sweep: a watched
container whose interval has passed gets an activity sample, a full read gets the
snapshot's ``NetIO``, and both come from one read of the namespace counters
(/proc/PID/net/dev and net/snmp): each container's namespace is read at most once per
pass. ``sample_snapshot`` takes the samples the sweep did not (a container watched since
this pass, from the sweep's reading when it took one; or a tracker no sampler feeds).

What a consumer reads (all thread-safe):

- ``track(owner, cid)`` / ``tracks(owner)``: the owner's idle judgement of a container
  (``model.activity.Track``: idle since when, why it was last busy), by the thresholds
  and smoothing window of the owner's ``Watch``;
- ``quiet_for_s(cid, now, owner)``: seconds the container has been idle by those
  thresholds (bounded by how long it has been watched), or None when not watched;
- ``cpu_cores(cid, window_s=None)`` and ``rates(cid, window_s=None)``: average rates
  over the last sampling interval, or over ``window_s`` (at most the longest window a
  consumer asked for), or None before two samples;
- ``mark_busy(owner, cid, at_s, reason)``: a busy sign seen elsewhere (a socket check)
  restarts the owner's idle clock; ``forget(owner, cid)`` drops the owner's track.

Every container's CPU, watched or not, is followed pass by pass for the planners that
judge idleness by CPU (the ladder's hibernate rung, the Ollama governor): ``view(snapshot)``,
called once per pass where the Tick is built, folds the snapshot's CPU readings (the
sweep's: nothing is read again) into one ``model.activity.CpuRecord`` per container and
returns them frozen as the Tick's ``ActivityView``. ``record_processes`` adds readings of
processes outside containers (the governor's host Ollama servers, read when it scans);
``cpu_record(key)`` is the last reading, for a re-check just before acting.

Health checks are not activity: ``check_started``/``check_ended`` (fed from the engine's
exec events of a container's health check) keep each check's window as a plain
``CheckWindow``, and ``boundary`` takes a sample at each edge (the caller reads the cgroup;
the namespace is read here), so the growth inside a window is the check's and is left
out of every owner's idle judgement (``model.activity.track_activity``).
"""

from __future__ import annotations

import threading
from collections import Counter
from types import MappingProxyType
from typing import Mapping

from supervisor.adapters.netcounters import NetnsCounters, read_counters
from supervisor.adapters.netns import NetdiagError
from supervisor.model.activity import (ActivitySample, ActivityView, CheckWindow, CpuRecord,
                                       Rates, Track, Watch, cpu_step, mark_busy, rates,
                                       restarted, shares_netns, track_activity, window_start)
from supervisor.model.snapshot import CgroupStats, ContainerInfo, NetIO, Snapshot

# Check windows kept per container: enough for the samples of a smoothing window (30 s)
# at the shortest check intervals a test uses.
CHECK_WINDOWS_MAX = 64


def _sample(time_s: float, pid: int, cpu_s: float, blkio_bytes: int,
            counters: NetnsCounters | None) -> ActivitySample:
    """One activity sample; without the namespace's counters it has no network figures."""
    net = None if counters is None else counters.interface_bytes + counters.loopback_bytes
    conns = None if counters is None else counters.connections_opened
    return ActivitySample(time_s, pid, cpu_s, blkio_bytes, net, conns)


class ActivityTracker:
    def __init__(self, proc: str):
        self.proc = proc
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._wanted: dict[str, dict[str, Watch]] = {}  # owner -> cid -> Watch
        self._merged: dict[str, Watch] = {}  # cid -> the shortest interval, longest window
        self._samples: dict[str, tuple[ActivitySample, ...]] = {}  # cid -> its longest window
        self._tracks: dict[str, dict[str, Track]] = {}  # owner -> cid -> Track
        # This pass's readings (the loop thread's only): cid -> (pid, counters or None)
        self._reads_at: float | None = None
        self._reads: dict[str, tuple[int, bool, NetnsCounters | None]] = {}  # pid, tcp read
        # Every container's CPU, pass by pass (replaced whole each pass), and the CPU of
        # processes outside containers (replaced whole at each of their readings).
        self._cpu: dict[str, CpuRecord] = {}
        self._processes: dict[str, CpuRecord] = {}
        # Health checks' windows per container, oldest first, and the running ones by exec id.
        self._checks: dict[str, tuple[CheckWindow, ...]] = {}
        self._running_checks: dict[tuple[str, str], CheckWindow] = {}

    # ------------------------------------------------------------------ health checks

    def check_started(self, cid: str, exec_id: str, start_s: float, timeout_s: float) -> None:
        """A health check's exec started in ``cid`` at ``start_s`` (the engine's time)."""
        w = CheckWindow(start_s, None, timeout_s)
        with self._lock:
            self._running_checks[(cid, exec_id)] = w
            self._checks[cid] = (self._checks.get(cid, ()) + (w,))[-CHECK_WINDOWS_MAX:]
        self.counts["health_checks"] += 1

    def check_ended(self, cid: str, exec_id: str, end_s: float) -> bool:
        """The health check ``exec_id`` ended at ``end_s``: its window closes. False when
        no such check was running (another exec, or one started before we watched)."""
        with self._lock:
            w = self._running_checks.pop((cid, exec_id), None)
            if w is None:
                return False
            done = CheckWindow(w.start_s, max(end_s, w.start_s), w.timeout_s)
            self._checks[cid] = tuple(done if x is w else x for x in self._checks.get(cid, ()))
        return True

    def is_watched(self, cid: str) -> bool:
        return cid in self._merged

    def checks(self, cid: str) -> tuple[CheckWindow, ...]:
        with self._lock:
            return self._checks.get(cid, ())

    def boundary(self, info: ContainerInfo, time_s: float, cpu_s: float, blkio_bytes: int) -> None:
        """A sample at a check's edge (its start or end), from the cgroup counters the
        caller read at ``time_s``; the namespace is read now. Only watched containers."""
        if info.id not in self._merged or info.state != "running" or info.pid <= 0:
            return
        counters = None
        if not shares_netns(info):
            try:
                counters = read_counters(self.proc, info.pid)
            except NetdiagError:
                self.counts["counter_read_errors"] += 1
                return  # without the namespace's counters the sample would look like a restart
        self.record(info.id, _sample(time_s, info.pid, cpu_s, blkio_bytes, counters))
        self.counts["boundary_samples"] += 1

    # ------------------------------------------------------------------ consumers

    def watch(self, owner: str, wanted: Mapping[str, Watch]) -> None:
        """Follow exactly these containers for ``owner`` from now on (its tracks of the
        others are dropped)."""
        with self._lock:
            old = self._tracks.pop(owner, {})
            if wanted:
                self._wanted[owner] = dict(wanted)
                self._tracks[owner] = {cid: t for cid, t in old.items() if cid in wanted}
            else:
                self._wanted.pop(owner, None)
            merged: dict[str, Watch] = {}
            for ws in self._wanted.values():
                for cid, w in ws.items():
                    m = merged.get(cid)
                    merged[cid] = w if m is None else Watch(
                        min(m.interval_s, w.interval_s), max(m.window_s, w.window_s), m.thresholds)
            self._merged = merged
            for cid in set(self._samples) - set(merged):
                del self._samples[cid]
            for cid in set(self._checks) - set(merged):
                del self._checks[cid]
            self._running_checks = {k: w for k, w in self._running_checks.items() if k[0] in merged}

    def track(self, owner: str, cid: str) -> Track | None:
        with self._lock:
            return self._tracks.get(owner, {}).get(cid)

    def tracks(self, owner: str) -> dict[str, Track]:
        with self._lock:
            return dict(self._tracks.get(owner, {}))

    def quiet_for_s(self, cid: str, now: float, owner: str) -> float | None:
        t = self.track(owner, cid)
        return None if t is None else max(0.0, now - t.idle_since_s)

    def rates(self, cid: str, window_s: float | None = None) -> Rates | None:
        with self._lock:
            samples = self._samples.get(cid, ())
        if len(samples) < 2:
            return None
        cur = samples[-1]
        ref = samples[-2] if window_s is None else samples[window_start(samples, cur.time_s, window_s)]
        return rates(ref, cur)

    def cpu_cores(self, cid: str, window_s: float | None = None) -> float | None:
        r = self.rates(cid, window_s)
        return None if r is None else r.cpu_cores

    def mark_busy(self, owner: str, cid: str, at_s: float, reason: str) -> None:
        with self._lock:
            mine = self._tracks.get(owner, {})
            t = mark_busy(mine.get(cid), at_s, reason)
            if t is not None:
                mine[cid] = t

    def forget(self, owner: str, cid: str) -> None:
        with self._lock:
            self._tracks.get(owner, {}).pop(cid, None)

    def record(self, cid: str, sample: ActivitySample) -> None:
        """Add one sample of a watched container (the sampler's and sample_snapshot's
        way in; a test's too)."""
        with self._lock:
            w = self._merged.get(cid)
            if w is None:
                return
            samples = self._samples.get(cid, ())
            if samples and sample.time_s <= samples[-1].time_s:
                return  # replayed or out of order
            if samples and restarted(samples[-1], sample):
                samples = ()
            samples += (sample,)
            self._samples[cid] = samples[window_start(samples, sample.time_s, w.window_s):]
            checks = self._checks.get(cid, ())
            for owner, ws in self._wanted.items():
                mine = ws.get(cid)
                if mine is not None:
                    tracks = self._tracks.setdefault(owner, {})
                    tracks[cid] = track_activity(tracks.get(cid), sample, mine.thresholds,
                                                 mine.window_s, checks)
        self.counts["samples"] += 1

    # ------------------------------------------------------------------ CPU, every pass

    def view(self, snapshot: Snapshot) -> ActivityView:
        """This pass's activity, frozen for the Tick: the CPU reading of every container
        read in ``snapshot`` folded into its record (a container not read, or gone, is
        dropped: its idle clock starts over when it is read again). Called once per pass;
        a second call on the same snapshot changes nothing."""
        now = snapshot.time_s
        with self._lock:
            cpu: dict[str, CpuRecord] = {}
            for c in snapshot.containers:
                if c.stats is not None:
                    cpu[c.info.id] = cpu_step(self._cpu.get(c.info.id), c.info.pid, now,
                                              c.stats.cpu_usage_s)
            self._cpu = cpu
            return ActivityView(now, MappingProxyType({**self._processes, **cpu}))

    def record_processes(self, readings: Mapping[str, tuple[int, float]], time_s: float) -> None:
        """CPU readings of processes outside containers, ``{key: (pid, cpu seconds)}`` at
        ``time_s``: the whole set (a process not in it is forgotten). Seen by the next
        ``view``."""
        with self._lock:
            self._processes = {key: cpu_step(self._processes.get(key), pid, time_s, cpu_s)
                               for key, (pid, cpu_s) in readings.items()}

    def cpu_record(self, key: str) -> CpuRecord | None:
        """The last CPU reading of a container (or process), for a re-check just before
        acting: cores since then = (fresh reading - it) / elapsed."""
        with self._lock:
            return self._cpu.get(key) or self._processes.get(key)

    # ------------------------------------------------------------------ the sampler

    def sample(self, info: ContainerInfo, stats: CgroupStats, now: float, full: bool,
               engine_up: bool = True) -> NetIO | None:
        """During the sampler's sweep, once per container read: an activity sample when
        the container is watched and due, and the interfaces' NetIO when ``full`` (or
        when the namespace was read anyway); None when nothing was read."""
        if not full and info.id not in self._merged:
            return None  # the hot path of an unwatched container: nothing to read
        due = engine_up and self._due(info, now)
        own = not shares_netns(info)
        counters = None
        if full or (due and own):
            # net/snmp (connections opened) only for an activity sample: a full read of
            # an unwatched container wants just its interfaces' bytes (net/dev).
            counters = self._read(info, now, tcp=due and own)
        if due:
            self._record_from(info, stats, now, counters if own else None)
        return counters.net if counters is not None else None

    def sample_snapshot(self, snapshot: Snapshot) -> None:
        """Sample the watched containers the sweep did not (at the snapshot's time)."""
        if not snapshot.engine_up:
            return  # PIDs of a stale view may belong to other processes by now
        now = snapshot.time_s
        for c in snapshot.containers:
            if c.stats is None or not self._due(c.info, now):
                continue
            own = not shares_netns(c.info)
            self._record_from(c.info, c.stats, now, self._read(c.info, now) if own else None)

    def _due(self, info: ContainerInfo, now: float) -> bool:
        if info.state != "running":
            return False
        # No lock: _merged is replaced whole, never changed in place, and one dict read
        # is atomic; this runs for every watched container on every pass.
        w = self._merged.get(info.id)
        samples = self._samples.get(info.id)
        if w is None:
            return False
        if not samples:
            return True
        last = samples[-1]
        return last.pid != info.pid or now - last.time_s >= w.interval_s

    def _read(self, info: ContainerInfo, now: float, tcp: bool = True) -> NetnsCounters | None:
        """The namespace's counters at ``now`` (the pass's time): read once per pass
        (twice when the TCP counters are wanted after a read without them)."""
        if self._reads_at != now:
            self._reads_at, self._reads = now, {}
        done = self._reads.get(info.id)
        if done is not None and done[0] == info.pid and (done[1] or not tcp):
            return done[2]
        self.counts["namespace_reads"] += 1
        try:
            counters: NetnsCounters | None = read_counters(self.proc, info.pid, tcp=tcp)
        except NetdiagError:
            self.counts["counter_read_errors"] += 1
            counters = None
        self._reads[info.id] = (info.pid, tcp, counters)
        return counters

    def _record_from(self, info: ContainerInfo, stats: CgroupStats, now: float,
                     counters: NetnsCounters | None) -> None:
        self.record(info.id, _sample(now, info.pid, stats.cpu_usage_s,
                                     stats.blkio_read_bytes + stats.blkio_write_bytes, counters))
