"""Builds a Snapshot: host sample + every container's cgroup stats + its class.

Each tick reads only the moving counters of each container (``CgroupFS.read_usage``,
4 files); the full set (limits, cpuset, PSI, events, network) is re-read every
``full_every_s`` per container, staggered, and on demand after an event. A container
whose cgroup vanishes mid-read is reported with an error in the snapshot, counted, and
dropped from the cache: the next tick finds it again or not at all.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from typing import Callable, Iterable

from .cgroups import CgroupFS, CgroupLocation
from .classify import classify, is_managed
from .config import Config
from .errors import CgroupError, CgroupGone, CgroupNotFound
from .host import HostSampler, container_net
from .snapshot import CgroupStats, ContainerInfo, ContainerSample, HostSample, NetIO, Snapshot

log = logging.getLogger(__name__)

_LIVE_STATES = ("running", "paused", "restarting")


@dataclasses.dataclass
class _Cached:
    pid: int
    loc: CgroupLocation
    full: CgroupStats
    net: NetIO | None
    full_at: float


class Sampler:
    def __init__(self, cgroups: CgroupFS, host: HostSampler, proc: str = "/proc",
                 full_every_s: float = 5.0, clock: Callable[[], float] = time.time):
        self.cgroups = cgroups
        self.host = host
        self.proc = proc
        self.full_every_s = full_every_s
        self.clock = clock
        self.counts: Counter[str] = Counter()
        self._cache: dict[str, _Cached] = {}
        self._dirty: set[str] = set()

    def invalidate(self, cid: str = "") -> None:
        """Force a full read of one container (or all) on the next sample."""
        if cid:
            self._dirty.add(cid)
        else:
            self._dirty.update(self._cache)

    def read_container(self, info: ContainerInfo, now: float) -> tuple[CgroupStats | None, NetIO | None, str]:
        if info.state not in _LIVE_STATES or info.pid <= 0:
            self._cache.pop(info.id, None)
            return None, None, ""
        cached = self._cache.get(info.id)
        try:
            if (cached is None or cached.pid != info.pid or info.id in self._dirty
                    or now - cached.full_at >= self.full_every_s):
                loc = cached.loc if cached and cached.pid == info.pid else \
                    self.cgroups.locate(info.id, info.pid, info.cgroup_parent)
                full = self.cgroups.read_stats(loc)
                net = container_net(self.proc, info.pid)
                # Stagger: a container first seen now is re-read at a random-ish offset
                # so 110 containers do not all take the full read on the same tick.
                offset = (hash(info.id) % 1000) / 1000 * self.full_every_s if cached is None else 0
                self._cache[info.id] = _Cached(info.pid, loc, full, net, now - offset)
                self._dirty.discard(info.id)
                self.counts["full_reads"] += 1
                return full, net, ""
            u = self.cgroups.read_usage(cached.loc)
            self.counts["usage_reads"] += 1
            stats = dataclasses.replace(
                cached.full, memory_usage_bytes=u.memory_usage_bytes,
                memory_working_set_bytes=u.memory_working_set_bytes,
                cpu_usage_s=u.cpu_usage_s, cpu_throttled_s=u.cpu_throttled_s)
            return stats, cached.net, ""
        except CgroupGone as e:
            self._cache.pop(info.id, None)
            self.counts["cgroup_vanished"] += 1
            log.info("cgroup of %s vanished mid-read (%s)", info.name, e.path)
            return None, None, f"cgroup vanished: {e.path}"
        except CgroupNotFound as e:
            self.counts["cgroup_not_found"] += 1
            return None, None, str(e)
        except CgroupError as e:
            self._cache.pop(info.id, None)
            self.counts["cgroup_errors"] += 1
            log.warning("cannot read cgroup of %s: %s", info.name, e)
            return None, None, f"cgroup unreadable: {e}"

    def sweep(self, infos: Iterable[ContainerInfo], cfg: Config, now: float | None = None
              ) -> tuple[tuple[ContainerSample, ...], float]:
        now = self.clock() if now is None else now
        t0 = time.perf_counter()
        out = []
        seen = set()
        for info in infos:
            seen.add(info.id)
            cls, reason = classify(info, cfg)
            stats, net, err = self.read_container(info, now)
            out.append(ContainerSample(info=info, class_name=cls, class_reason=reason,
                                       managed=is_managed(info, cfg), stats=stats, error=err,
                                       net=net))
        for gone in set(self._cache) - seen:
            del self._cache[gone]
        return tuple(out), time.perf_counter() - t0

    def sample(self, infos: Iterable[ContainerInfo], cfg: Config, engine_up: bool,
               engine_error: str = "", host: HostSample | None = None) -> Snapshot:
        now = self.clock()
        host = host or self.host.sample()
        containers, sweep_s = self.sweep(infos, cfg, now)
        return Snapshot(time_s=now, host=host, containers=containers, engine_up=engine_up,
                        engine_error=engine_error, cgroup_version=self.cgroups.version,
                        sweep_s=sweep_s)
