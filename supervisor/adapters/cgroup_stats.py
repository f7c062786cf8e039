"""Reading a cgroup: the hot counters every tick (``read_usage``, or ``UsageFiles`` kept
open), and everything else on the periodic full read (``read_stats``: limits, events,
CPU quota, cpuset, pids, I/O, PSI, freezer), for cgroup v2 and v1."""

from __future__ import annotations

import contextlib
import os
from typing import Callable, TypeVar

from supervisor.adapters.cgroup_files import (V1_UNLIMITED, CgroupLocation, CgroupUsage,
                                              parse_flat_keyed, parse_int, parse_pressure,
                                              read_int, read_text, stat_value, usage_of,
                                              v2_cpu_seconds, wrap_os_error)
from supervisor.model.errors import CgroupError, CgroupGone
from supervisor.model.snapshot import CgroupStats, Pressure

T = TypeVar("T")


class UsageFiles:
    """The hot-path files of one cgroup (what ``read_usage`` reads), kept open and
    re-read with pread at offset 0: a cgroup file is generated afresh on each read from
    its start, and the path walk plus open and close were ~60% of the cost of a tick's
    sweep (issue 9 soak, 110 containers). A removed cgroup's open files answer ENODEV
    (CgroupGone). Close it as soon as the container is gone: an open file keeps the
    removed cgroup's kernel state alive."""

    __slots__ = ("version", "_fds")

    def __init__(self, loc: CgroupLocation):
        self.version = loc.version
        if loc.version == 2:
            d = loc.dirs["unified"]
            paths = {"usage": f"{d}/memory.current", "mstat": f"{d}/memory.stat",
                     "cstat": f"{d}/cpu.stat"}
        else:
            m = loc.dirs["memory"]
            paths = {"usage": f"{m}/memory.usage_in_bytes", "mstat": f"{m}/memory.stat"}
            if "cpuacct" in loc.dirs:
                paths["cpuacct"] = f"{loc.dirs['cpuacct']}/cpuacct.usage"
            # v1's cpu.stat holds only the throttling counters (a metric): they come with
            # the periodic full read, and the tick reads three files, not four.
        self._fds: dict[str, tuple[int, str]] = {}
        for key, path in paths.items():
            try:
                self._fds[key] = (os.open(path, os.O_RDONLY), path)
            except OSError as e:
                self.close()
                raise wrap_os_error(path, e) from None

    def _text(self, key: str) -> str:
        fd, path = self._fds[key]
        try:
            return os.pread(fd, 65536, 0).decode()
        except OSError as e:
            raise wrap_os_error(path, e) from None

    def _int(self, key: str) -> int:
        return parse_int(self._fds[key][1], self._text(key))

    def read(self) -> CgroupUsage:
        if not self._fds:
            raise CgroupError("", "usage files already closed")
        usage = self._int("usage")
        mstat = self._text("mstat")
        if self.version == 2:
            return usage_of(2, usage, mstat, *v2_cpu_seconds(self._text("cstat")))
        cpu_s = self._int("cpuacct") / 1e9 if "cpuacct" in self._fds else 0.0
        return usage_of(1, usage, mstat, cpu_s, None)

    def close(self) -> None:
        for fd, _ in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = {}


def read_usage(loc: CgroupLocation) -> CgroupUsage:
    """The hot path, read every tick: only the counters that move (4 files). Limits,
    cpuset and quota change only through Docker (seen as events) or by hand (seen by
    the periodic full read)."""
    if loc.version == 2:
        d = loc.dirs["unified"]
        usage = read_int(f"{d}/memory.current")
        return usage_of(2, usage, read_text(f"{d}/memory.stat"), *v2_cpu_seconds(read_text(f"{d}/cpu.stat")))
    m = loc.dirs["memory"]
    usage = read_int(f"{m}/memory.usage_in_bytes")
    cpu_s = read_int(f"{loc.dirs['cpuacct']}/cpuacct.usage") / 1e9 if "cpuacct" in loc.dirs else 0.0
    thr = stat_value(read_text(f"{loc.dirs['cpu']}/cpu.stat"), "throttled_time") / 1e9 \
        if "cpu" in loc.dirs else 0.0
    return usage_of(1, usage, read_text(f"{m}/memory.stat"), cpu_s, thr)


def read_stats(loc: CgroupLocation, with_pressure: bool = True) -> CgroupStats:
    return (_read_v2 if loc.version == 2 else _read_v1)(loc, with_pressure)


def _optional(d: str, read: Callable[[], T], default: T) -> T:
    """``read()`` of a file in the cgroup directory ``d``, or ``default`` when the file is
    not there or cannot be read: a controller not enabled for this subtree has no files
    (ENOENT), nor has PSI booted with psi=0, and cgroup.pressure=0 answers EOPNOTSUPP.
    ENOENT reads as CgroupGone (``wrap_os_error``): only a directory that is gone too
    ends the whole read."""
    try:
        return read()
    except CgroupGone:
        if os.path.isdir(d):
            return default
        raise
    except CgroupError:
        return default


def _pressure(loc: CgroupLocation) -> dict[str, Pressure] | None:
    if not loc.psi_dir:
        return None
    # PSI may be disabled for this cgroup (psi=0 or cgroup.pressure=0)
    texts = {res: _optional(loc.psi_dir, lambda: read_text(f"{loc.psi_dir}/{res}.pressure"),
                            None)
             for res in ("cpu", "memory", "io")}
    return {res: parse_pressure(t) for res, t in texts.items() if t is not None}


def _read_v2(loc: CgroupLocation, with_pressure: bool) -> CgroupStats:
    d = loc.dirs["unified"]
    usage = read_int(f"{d}/memory.current")
    mstat = parse_flat_keyed(read_text(f"{d}/memory.stat"))
    limit = read_int(f"{d}/memory.max")
    high = read_int(f"{d}/memory.high")
    low = read_int(f"{d}/memory.low")
    events = parse_flat_keyed(read_text(f"{d}/memory.events"))
    cstat = parse_flat_keyed(read_text(f"{d}/cpu.stat"))
    qtext = _optional(d, lambda: read_text(f"{d}/cpu.max").split(), [])
    quota = int(qtext[0]) / int(qtext[1]) if qtext and qtext[0] != "max" else None
    cpuset = _optional(d, lambda: read_text(f"{d}/cpuset.cpus").strip(), "")
    pids = _optional(d, lambda: read_int(f"{d}/pids.current"), 0)
    rbytes = wbytes = 0
    for line in _optional(d, lambda: read_text(f"{d}/io.stat"), "").splitlines():
        for item in line.split()[1:]:
            k, _, v = item.partition("=")
            if k == "rbytes":
                rbytes += int(v)
            elif k == "wbytes":
                wbytes += int(v)
    frozen = None
    with contextlib.suppress(CgroupError):
        frozen = parse_flat_keyed(read_text(f"{d}/cgroup.events")).get("frozen") == 1
    return CgroupStats(
        version=2, path=d, memory_usage_bytes=usage,
        memory_working_set_bytes=max(0, usage - mstat.get("inactive_file", 0)),
        memory_limit_bytes=None if limit < 0 else limit,
        memory_high_bytes=None if high < 0 else high,
        memory_low_bytes=None if low <= 0 else low,
        memory_events=events,
        cpu_usage_s=cstat.get("usage_usec", 0) / 1e6,
        cpu_throttled_s=cstat.get("throttled_usec", 0) / 1e6,
        cpu_nr_throttled=cstat.get("nr_throttled", 0),
        cpu_quota_cores=quota, cpuset_cpus=cpuset, pids=pids,
        blkio_read_bytes=rbytes, blkio_write_bytes=wbytes,
        pressure=_pressure(loc) if with_pressure else None, frozen=frozen)


def _read_v1(loc: CgroupLocation, with_pressure: bool) -> CgroupStats:
    m = loc.dirs["memory"]
    usage = read_int(f"{m}/memory.usage_in_bytes")
    mstat = parse_flat_keyed(read_text(f"{m}/memory.stat"))
    limit = read_int(f"{m}/memory.limit_in_bytes")
    soft = read_int(f"{m}/memory.soft_limit_in_bytes")
    events = {"failcnt": read_int(f"{m}/memory.failcnt")}
    oom = parse_flat_keyed(read_text(f"{m}/memory.oom_control"))
    events["oom_kill"] = oom.get("oom_kill", 0)
    cpu_usage_ns = read_int(f"{loc.dirs['cpuacct']}/cpuacct.usage") if "cpuacct" in loc.dirs else 0
    cstat: dict[str, int] = {}
    quota = None
    if "cpu" in loc.dirs:
        c = loc.dirs["cpu"]
        cstat = parse_flat_keyed(read_text(f"{c}/cpu.stat"))
        q = read_int(f"{c}/cpu.cfs_quota_us")
        if q > 0:
            quota = q / read_int(f"{c}/cpu.cfs_period_us")
    cpuset = read_text(f"{loc.dirs['cpuset']}/cpuset.cpus").strip() if "cpuset" in loc.dirs else ""
    pids = read_int(f"{loc.dirs['pids']}/pids.current") if "pids" in loc.dirs else 0
    rbytes = wbytes = 0
    if "blkio" in loc.dirs:
        for line in read_text(f"{loc.dirs['blkio']}/blkio.throttle.io_service_bytes").splitlines():
            parts = line.split()
            if len(parts) == 3:
                if parts[1] == "Read":
                    rbytes += int(parts[2])
                elif parts[1] == "Write":
                    wbytes += int(parts[2])
    frozen = None
    if "freezer" in loc.dirs:
        frozen = read_text(f"{loc.dirs['freezer']}/freezer.state").strip() == "FROZEN"
    return CgroupStats(
        version=1, path=m, memory_usage_bytes=usage,
        memory_working_set_bytes=max(0, usage - mstat.get("total_inactive_file", 0)),
        memory_limit_bytes=None if limit < 0 or limit >= V1_UNLIMITED else limit,
        memory_high_bytes=None,
        memory_low_bytes=None if soft < 0 or soft >= V1_UNLIMITED else soft,
        memory_events=events, cpu_usage_s=cpu_usage_ns / 1e9,
        cpu_throttled_s=cstat.get("throttled_time", 0) / 1e9,
        cpu_nr_throttled=cstat.get("nr_throttled", 0), cpu_quota_cores=quota,
        cpuset_cpus=cpuset, pids=pids, blkio_read_bytes=rbytes, blkio_write_bytes=wbytes,
        pressure=_pressure(loc) if with_pressure else None, frozen=frozen)
