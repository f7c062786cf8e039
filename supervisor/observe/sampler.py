"""Builds a Snapshot: host sample + every container's cgroup stats + its class.

Each tick reads only the moving counters of each container (``UsageFiles``: 3 files
on v1, 3 on v2, kept open and re-read from offset 0); the full set (limits, cpuset,
PSI, events, network) is re-read every ``full_every_s`` per container, staggered, and
on demand after an event. A container's network namespace is read through the activity
tracker (observe/activity.py), whose one read per pass serves both the snapshot's NetIO
and the activity samples. A container whose cgroup vanishes mid-read is reported with
an error in the snapshot, counted, and dropped from the cache (its files closed): the
next tick finds it again or not at all.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from typing import Callable, Iterable

from supervisor.adapters.cgroups import CgroupFS, CgroupLocation, UsageFiles
from supervisor.model.classify import classify_why, is_managed
from supervisor.model.config import Config
from supervisor.model.errors import CgroupError, CgroupGone, CgroupNotFound
from supervisor.model.memo import ByContainer
from supervisor.adapters.host import HostSampler
from supervisor.observe.activity import ActivityTracker
from supervisor.model.snapshot import LIVE_STATES, CgroupStats, ContainerInfo, ContainerSample, HostSample, NetIO, Snapshot

log = logging.getLogger(__name__)

_STATS_FIELDS = tuple(f.name for f in dataclasses.fields(CgroupStats))
# Where the hot counters sit among CgroupStats' fields: a tick's copy is built from the
# full read's values by position (~half the cost of keywords, 110 containers a pass).
_HOT = tuple(_STATS_FIELDS.index(n) for n in (
    "memory_usage_bytes", "memory_working_set_bytes", "cpu_usage_s", "cpu_throttled_s"))


@dataclasses.dataclass
class _Cached:
    pid: int
    loc: CgroupLocation
    full: CgroupStats
    net: NetIO | None
    full_at: float
    files: UsageFiles | None = None  # the hot-path files, open while the container lives
    values: list | None = None  # ``full``'s field values in order, for the tick's copies
    last: CgroupStats | None = None  # the last tick's copy: served again while nothing moved


class Sampler:
    def __init__(self, cgroups: CgroupFS, host: HostSampler, proc: str | None = None,
                 full_every_s: float = 5.0, clock: Callable[[], float] = time.time,
                 container_pressure: bool = True, activity: ActivityTracker | None = None):
        self.cgroups = cgroups
        # Per-container PSI files (3 of a full read's 16): the daemon plans from the
        # host's PSI only, so it leaves them out; `supctl snapshot` shows them.
        self.container_pressure = container_pressure
        self.host = host
        # The host sampler's root unless told otherwise: containers' /proc/PID files too.
        self.proc = proc if proc is not None else host.proc
        self.activity = activity if activity is not None else ActivityTracker(self.proc)
        self.full_every_s = full_every_s
        self.clock = clock
        self.counts: Counter[str] = Counter()
        self._cache: dict[str, _Cached] = {}
        self._classes: ByContainer[tuple[str, str, str, bool]] = ByContainer()
        self._dirty: set[str] = set()
        # Per container whose cgroup failed to read: (its pid, the path warned about),
        # so each is warned about once, not every tick; forgotten once read again.
        self._failed: dict[str, tuple[int, str]] = {}

    def invalidate(self, cid: str = "") -> None:
        """Force a full read of one container (or all) on the next sample."""
        if cid:
            self._dirty.add(cid)
        else:
            self._dirty.update(self._cache)

    def _drop(self, cid: str) -> None:
        cached = self._cache.pop(cid, None)
        if cached is not None and cached.files is not None:
            cached.files.close()

    def read_container(self, info: ContainerInfo, now: float, engine_up: bool = True
                       ) -> tuple[CgroupStats | None, NetIO | None, str]:
        if info.state not in LIVE_STATES or info.pid <= 0:
            self._drop(info.id)
            return None, None, ""
        cached = self._cache.get(info.id)
        try:
            if (cached is None or cached.pid != info.pid or info.id in self._dirty
                    or now - cached.full_at >= self.full_every_s):
                same = cached is not None and cached.pid == info.pid
                if cached is not None and not same:
                    self._drop(info.id)  # restarted: a new cgroup, new files
                loc = cached.loc if same else \
                    self.cgroups.locate(info.id, info.pid, info.cgroup_parent)
                full = self.cgroups.read_stats(loc, with_pressure=self.container_pressure)
                net = self.activity.sample(info, full, now, full=True, engine_up=engine_up)
                # Stagger: a container first seen now is re-read at a random-ish offset
                # so 110 containers do not all take the full read on the same tick.
                offset = (hash(info.id) % 1000) / 1000 * self.full_every_s if cached is None else 0
                self._cache[info.id] = _Cached(info.pid, loc, full, net, now - offset,
                                               cached.files if same else None)
                self._dirty.discard(info.id)
                self.counts["full_reads"] += 1
                if self._failed.pop(info.id, (0, ""))[1]:
                    log.info("the cgroup of %s can be read again", info.name)
                return full, net, ""
            if cached.files is None:
                cached.files = self.cgroups.open_usage(cached.loc)
            u = cached.files.read()
            self.counts["usage_reads"] += 1
            stats = cached.last
            # An idle container's counters often stand still from one tick to the next:
            # its last copy (frozen) serves again, and no new one is built.
            if stats is None or not (
                    stats.memory_usage_bytes == u.memory_usage_bytes
                    and stats.memory_working_set_bytes == u.memory_working_set_bytes
                    and stats.cpu_usage_s == u.cpu_usage_s
                    and (u.cpu_throttled_s is None or stats.cpu_throttled_s == u.cpu_throttled_s)):
                if cached.values is None:
                    cached.values = [getattr(cached.full, f) for f in _STATS_FIELDS]
                v = cached.values.copy()
                v[_HOT[0]], v[_HOT[1]], v[_HOT[2]] = (u.memory_usage_bytes,
                                                      u.memory_working_set_bytes, u.cpu_usage_s)
                if u.cpu_throttled_s is not None:
                    v[_HOT[3]] = u.cpu_throttled_s
                stats = cached.last = CgroupStats(*v)
            fresh = self.activity.sample(info, stats, now, full=False, engine_up=engine_up)
            if fresh is not None:
                cached.net = fresh  # the namespace was read for the tracker: the newer figures
            return stats, cached.net, ""
        except CgroupGone as e:
            self._drop(info.id)
            self.counts["cgroup_vanished"] += 1
            if self._failed.get(info.id, (0, ""))[0] != info.pid:
                # The first time: most likely the container died between the inventory
                # and this read; the next pass will not see it again.
                self._failed[info.id] = (info.pid, "")
                log.debug("cgroup of %s vanished mid-read (%s)", info.name, e.path)
                return None, None, f"cgroup vanished: {e.path}"
            return None, None, self._unreadable(info, e)
        except CgroupNotFound as e:
            self.counts["cgroup_not_found"] += 1
            return None, None, str(e)
        except CgroupError as e:
            self._drop(info.id)
            self.counts["cgroup_errors"] += 1
            return None, None, self._unreadable(info, e)

    def _unreadable(self, info: ContainerInfo, e: CgroupError) -> str:
        """A cgroup that cannot be read (again, or not for having vanished): one warning
        per container and cgroup, with its path; the status row carries it every pass."""
        text = f"cgroup unreadable: {e.path}: {e.reason}"
        if self._failed.get(info.id) != (info.pid, e.path):
            self._failed[info.id] = (info.pid, e.path)
            log.warning("cannot read the cgroup of %s (%s): %s; its stats stay empty until "
                        "it can be read", info.name, info.short_id, text)
        return text

    def sweep(self, infos: Iterable[ContainerInfo], cfg: Config, now: float | None = None,
              engine_up: bool = True) -> tuple[tuple[ContainerSample, ...], float]:
        now = self.clock() if now is None else now
        t0 = time.perf_counter()
        out = []
        seen = set()
        for info in infos:
            seen.add(info.id)
            # Class and managed flag change only with the container's inspect data or the
            # config: worked out again only then.
            cls, reason, pattern, managed = self._classes.get(
                info, cfg, lambda: (*classify_why(info, cfg), is_managed(info, cfg)))
            stats, net, err = self.read_container(info, now, engine_up)
            out.append(ContainerSample(info=info, class_name=cls, class_reason=reason,
                                       managed=managed, stats=stats, error=err, net=net,
                                       class_pattern=pattern))
        for gone in set(self._cache) - seen:
            self._drop(gone)
        self._classes.keep_only(seen)
        for gone in set(self._failed) - seen:
            del self._failed[gone]
        return tuple(out), time.perf_counter() - t0

    def sample(self, infos: Iterable[ContainerInfo], cfg: Config, engine_up: bool,
               engine_error: str = "", host: HostSample | None = None) -> Snapshot:
        now = self.clock()
        host = host or self.host.sample()
        containers, sweep_s = self.sweep(infos, cfg, now, engine_up)
        return Snapshot(time_s=now, host=host, containers=containers, engine_up=engine_up,
                        engine_error=engine_error, cgroup_version=self.cgroups.version,
                        sweep_s=sweep_s)
