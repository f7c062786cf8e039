"""The one door to cgroupfs: locate a container's cgroup, read its stats, write its knobs.

Supports cgroup v2 (unified, /sys/fs/cgroup/cgroup.controllers exists) and v1 (one
hierarchy per controller; "hybrid" hosts also mount an empty v2 tree at ``unified/``,
which still carries per-cgroup PSI files). Supports Docker's cgroupfs driver
(``/docker/<id>`` or ``<cgroup-parent>/<id>``) and systemd driver
(``/system.slice/docker-<id>.scope``).

Every OSError becomes a CgroupError at this boundary: CgroupGone when the file or the
directory has vanished (the container died mid-read), CgroupError otherwise. Kernel
file formats: Documentation/admin-guide/cgroup-v2.rst and cgroup-v1/*.rst.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from typing import Iterable

from supervisor.model.errors import CgroupError, CgroupGone, CgroupNotFound
from supervisor.model.snapshot import CgroupStats, Pressure

V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "cpuset", "pids", "blkio", "freezer")
# v1 reports "no limit" as the largest page-aligned signed 64-bit value.
V1_UNLIMITED = 1 << 62


@dataclass(frozen=True, slots=True)
class CgroupLocation:
    version: int
    rel: str  # path relative to the hierarchy root, e.g. "/docker/<id>"
    dirs: dict[str, str]  # v1: controller -> absolute dir; v2: {"unified": dir}
    psi_dir: str | None = None  # where cpu/memory/io.pressure live (v2, or hybrid's unified)

    def dir(self, controller: str) -> str:
        if self.version == 2:
            return self.dirs["unified"]
        return self.dirs[controller]


@dataclass(frozen=True, slots=True)
class CgroupUsage:
    memory_usage_bytes: int
    memory_working_set_bytes: int
    cpu_usage_s: float
    cpu_throttled_s: float | None  # None: not read (UsageFiles on v1; see there)


def _wrap(path: str, e: OSError) -> CgroupError:
    if e.errno in (errno.ENOENT, errno.ENODEV, errno.ESRCH):
        return CgroupGone(path, "vanished")
    return CgroupError(path, e.strerror or str(e))


def read_text(path: str) -> str:
    # os.open/os.read: a third of the cost of open() on these tiny files, and the sweep
    # reads thousands of them a second with 110 containers.
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            return os.read(fd, 65536).decode()
        finally:
            os.close(fd)
    except OSError as e:
        raise _wrap(path, e) from None


def _write_knob(path: str, value: str | int, flags: int = os.O_WRONLY) -> None:
    """One write(2) of ``value`` to a cgroup file; OSError as raised."""
    fd = os.open(path, flags)
    try:
        os.write(fd, str(value).encode())
    finally:
        os.close(fd)


def stat_value(text: str, key: str) -> int:
    """One key of a flat-keyed file without parsing the rest (memory.stat has ~40 lines)."""
    i = text.find(key + " ")
    while i > 0 and text[i - 1] != "\n":
        i = text.find(key + " ", i + 1)
    if i < 0:
        return 0
    j = text.find("\n", i)
    try:
        return int(text[i + len(key) + 1: j if j >= 0 else None])
    except ValueError:
        return 0


def read_int(path: str) -> int:
    return _parse_int(path, read_text(path))


def _parse_int(path: str, text: str) -> int:
    """A single-value cgroup file's integer ("max" -> -1)."""
    text = text.strip()
    if text == "max":
        return -1
    try:
        return int(text)
    except ValueError:
        raise CgroupError(path, f"expected an integer, found {text[:40]!r}") from None


def parse_flat_keyed(text: str) -> dict[str, int]:
    """'key value' lines (memory.stat, cpu.stat, memory.events) -> dict."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        k, _, v = line.partition(" ")
        if v:
            try:
                out[k] = int(v)
            except ValueError:
                continue
    return out


def parse_pressure(text: str) -> Pressure:
    """PSI format: 'some avg10=0.00 avg60=0.00 avg300=0.00 total=0' and a 'full' line."""
    vals: dict[str, float] = {}
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        for item in rest.split():
            k, _, v = item.partition("=")
            try:
                vals[f"{kind}_{k}"] = float(v)
            except ValueError:
                continue
    return Pressure(
        some_avg10=vals.get("some_avg10", 0.0), some_avg60=vals.get("some_avg60", 0.0),
        some_total_us=int(vals.get("some_total", 0)),
        full_avg10=vals.get("full_avg10", 0.0), full_avg60=vals.get("full_avg60", 0.0),
        full_total_us=int(vals.get("full_total", 0)))


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """/proc/PID/cgroup -> {controller: path}; the v2 line is keyed "unified"."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, ctrls, path = parts
        if not ctrls:
            out["unified"] = path
        for c in ctrls.split(","):
            if c:
                out[c] = path
    return out


def _usage(version: int, usage_bytes: int, memory_stat: str, cpu_s: float,
           throttled_s: float | None) -> CgroupUsage:
    """The hot counters; the working set as cAdvisor counts it: usage minus inactive file
    pages (v1 reports the hierarchy's total under total_inactive_file)."""
    inactive = stat_value(memory_stat, "inactive_file" if version == 2 else "total_inactive_file")
    return CgroupUsage(usage_bytes, max(0, usage_bytes - inactive), cpu_s, throttled_s)


def _v2_cpu_s(cpu_stat: str) -> tuple[float, float]:
    """(CPU seconds used, seconds throttled) from a v2 cpu.stat."""
    return stat_value(cpu_stat, "usage_usec") / 1e6, stat_value(cpu_stat, "throttled_usec") / 1e6


class UsageFiles:
    """The hot-path files of one cgroup (what ``CgroupFS.read_usage`` reads), kept open and
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
                raise _wrap(path, e) from None

    def _text(self, key: str) -> str:
        fd, path = self._fds[key]
        try:
            return os.pread(fd, 65536, 0).decode()
        except OSError as e:
            raise _wrap(path, e) from None

    def _int(self, key: str) -> int:
        return _parse_int(self._fds[key][1], self._text(key))

    def read(self) -> CgroupUsage:
        if not self._fds:
            raise CgroupError("", "usage files already closed")
        usage = self._int("usage")
        mstat = self._text("mstat")
        if self.version == 2:
            return _usage(2, usage, mstat, *_v2_cpu_s(self._text("cstat")))
        cpu_s = self._int("cpuacct") / 1e9 if "cpuacct" in self._fds else 0.0
        return _usage(1, usage, mstat, cpu_s, None)

    def close(self) -> None:
        for fd, _ in self._fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = {}


class CgroupFS:
    """Reads and writes cgroup files below ``root``; finds containers through ``proc``."""

    def __init__(self, root: str = "/sys/fs/cgroup", proc: str = "/proc"):
        self.root = root
        self.proc = proc
        self.version = 2 if os.path.exists(os.path.join(root, "cgroup.controllers")) else 1
        self._v1_roots: dict[str, str] = {}
        self._unified_root: str | None = None
        if self.version == 1:
            for c in V1_CONTROLLERS:
                d = os.path.join(root, c)
                if os.path.isdir(d):
                    self._v1_roots[c] = d
            u = os.path.join(root, "unified")
            if os.path.exists(os.path.join(u, "cgroup.controllers")):
                self._unified_root = u
        else:
            self._unified_root = root

    # ------------------------------------------------------------------ locate

    def location(self, rel: str) -> CgroupLocation:
        rel = "/" + rel.strip("/")
        if self.version == 2:
            d = self.root + rel
            return CgroupLocation(2, rel, {"unified": d}, d)
        dirs = {c: r + rel for c, r in self._v1_roots.items()}
        psi = self._unified_root + rel if self._unified_root else None
        if psi and not os.path.exists(os.path.join(psi, "memory.pressure")):
            psi = None
        return CgroupLocation(1, rel, dirs, psi)

    def candidates(self, container_id: str, cgroup_parent: str = "") -> list[str]:
        """Relative paths where Docker puts a container, most likely first."""
        out = []
        if cgroup_parent:
            if cgroup_parent.endswith(".slice"):
                out.append(f"/{_slice_path(cgroup_parent)}/docker-{container_id}.scope")
            else:
                out.append(f"/{cgroup_parent.strip('/')}/{container_id}")
        out += [f"/docker/{container_id}", f"/system.slice/docker-{container_id}.scope"]
        return out

    def locate(self, container_id: str, pid: int = 0, cgroup_parent: str = "") -> CgroupLocation:
        """A container's cgroup: from /proc/PID/cgroup when it has a PID, else by Docker's
        known layouts. Raises CgroupNotFound."""
        if pid > 0:
            try:
                paths = parse_proc_cgroup(read_text(f"{self.proc}/{pid}/cgroup"))
            except CgroupError:
                paths = {}
            rel = paths.get("unified") if self.version == 2 else paths.get("memory")
            if rel and rel != "/":
                loc = self.location(rel)
                if os.path.isdir(loc.dir("memory")):
                    return loc
        probe = "unified" if self.version == 2 else "memory"
        base = self.root if self.version == 2 else self._v1_roots.get("memory", "")
        for rel in self.candidates(container_id, cgroup_parent):
            if os.path.isdir(base + rel):
                return self.location(rel)
        raise CgroupNotFound(f"{probe}:{container_id[:12]}", "no cgroup found for container")

    # -------------------------------------------------------------------- read

    def read_usage(self, loc: CgroupLocation) -> CgroupUsage:
        """The hot path, read every tick: only the counters that move (4 files). Limits,
        cpuset and quota change only through Docker (seen as events) or by hand (seen by
        the periodic full read)."""
        if loc.version == 2:
            d = loc.dirs["unified"]
            usage = read_int(f"{d}/memory.current")
            return _usage(2, usage, read_text(f"{d}/memory.stat"), *_v2_cpu_s(read_text(f"{d}/cpu.stat")))
        m = loc.dirs["memory"]
        usage = read_int(f"{m}/memory.usage_in_bytes")
        cpu_s = read_int(f"{loc.dirs['cpuacct']}/cpuacct.usage") / 1e9 if "cpuacct" in loc.dirs else 0.0
        thr = stat_value(read_text(f"{loc.dirs['cpu']}/cpu.stat"), "throttled_time") / 1e9 \
            if "cpu" in loc.dirs else 0.0
        return _usage(1, usage, read_text(f"{m}/memory.stat"), cpu_s, thr)

    def open_usage(self, loc: CgroupLocation) -> UsageFiles:
        """The files ``read_usage`` reads, opened once for reading every tick."""
        return UsageFiles(loc)

    def read_stats(self, loc: CgroupLocation, with_pressure: bool = True) -> CgroupStats:
        if loc.version == 2:
            return self._read_v2(loc, with_pressure)
        return self._read_v1(loc, with_pressure)

    def _pressure(self, loc: CgroupLocation) -> dict[str, Pressure] | None:
        if not loc.psi_dir:
            return None
        out = {}
        for res in ("cpu", "memory", "io"):
            try:
                out[res] = parse_pressure(read_text(f"{loc.psi_dir}/{res}.pressure"))
            except CgroupGone:
                raise
            except CgroupError:
                continue  # PSI disabled for this cgroup (psi=0 or cgroup.pressure=0)
        return out

    def _read_v2(self, loc: CgroupLocation, with_pressure: bool) -> CgroupStats:
        d = loc.dirs["unified"]
        usage = read_int(f"{d}/memory.current")
        mstat = parse_flat_keyed(read_text(f"{d}/memory.stat"))
        limit = read_int(f"{d}/memory.max")
        high = read_int(f"{d}/memory.high")
        low = read_int(f"{d}/memory.low")
        events = parse_flat_keyed(read_text(f"{d}/memory.events"))
        cstat = parse_flat_keyed(read_text(f"{d}/cpu.stat"))
        quota = None
        cpuset = ""
        pids = 0
        try:
            qtext = read_text(f"{d}/cpu.max").split()
            if qtext and qtext[0] != "max":
                quota = int(qtext[0]) / int(qtext[1])
        except CgroupGone:
            raise
        except CgroupError:
            pass  # cpu controller not enabled for this subtree
        try:
            cpuset = read_text(f"{d}/cpuset.cpus").strip()
        except CgroupGone:
            raise
        except CgroupError:
            pass
        try:
            pids = read_int(f"{d}/pids.current")
        except CgroupGone:
            raise
        except CgroupError:
            pass
        rbytes = wbytes = 0
        try:
            for line in read_text(f"{d}/io.stat").splitlines():
                for item in line.split()[1:]:
                    k, _, v = item.partition("=")
                    if k == "rbytes":
                        rbytes += int(v)
                    elif k == "wbytes":
                        wbytes += int(v)
        except CgroupGone:
            raise
        except CgroupError:
            pass
        frozen = None
        try:
            frozen = parse_flat_keyed(read_text(f"{d}/cgroup.events")).get("frozen") == 1
        except CgroupError:
            pass
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
            pressure=self._pressure(loc) if with_pressure else None, frozen=frozen)

    def _read_v1(self, loc: CgroupLocation, with_pressure: bool) -> CgroupStats:
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
            pressure=self._pressure(loc) if with_pressure else None, frozen=frozen)

    # ------------------------------------------------------------------- write

    def write(self, path: str, value: str | int, nonblock: bool = False) -> None:
        """Write one cgroup knob. ``nonblock`` opens with O_NONBLOCK, which newer kernels
        honour for memory.max/memory.high by skipping the synchronous reclaim that can
        stall the writer. Older ones ignore the flag: on Debian's 6.1 the v2 lane measured
        the write reclaiming 41.5 -> 12.3 MiB before returning, so callers must not rely
        on the write being quick."""
        try:
            _write_knob(path, value, os.O_WRONLY | (os.O_NONBLOCK if nonblock else 0))
        except OSError as e:
            raise _wrap(path, e) from None

    def read_file(self, loc: CgroupLocation, controller: str, name: str) -> str:
        return read_text(f"{loc.dir(controller)}/{name}")

    def write_file(self, loc: CgroupLocation, controller: str, name: str, value: str | int,
                   nonblock: bool = False) -> None:
        self.write(f"{loc.dir(controller)}/{name}", value, nonblock=nonblock)

    def _write_may_refuse(self, path: str, value: str | int) -> bool:
        """Write a knob whose write the kernel may refuse for lack of reclaimable memory:
        False on EAGAIN/EBUSY (nothing is wrong with the cgroup), CgroupError otherwise."""
        try:
            _write_knob(path, value)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EBUSY):
                return False
            raise _wrap(path, e) from None
        return True

    def reclaim(self, loc: CgroupLocation, nbytes: int) -> bool:
        """v2: ask the kernel to reclaim ``nbytes`` from the cgroup now (memory.reclaim,
        Documentation/admin-guide/cgroup-v2.rst). True when all of it was reclaimed, False
        when the kernel reclaimed less (EAGAIN). v1 has no such file: see reclaim_by_limit."""
        if loc.version != 2:
            raise CgroupError(loc.dir("memory"), "memory.reclaim exists only on cgroup v2")
        return self._write_may_refuse(f"{loc.dir('memory')}/memory.reclaim", int(nbytes))

    def reclaim_by_limit(self, loc: CgroupLocation, target_bytes: int, restore_limit: str) -> bool:
        """v1's way to make the kernel reclaim a cgroup's memory: lower
        memory.limit_in_bytes to ``target_bytes`` (the kernel reclaims until usage fits,
        or refuses with EBUSY rather than OOM-kill when it cannot; cgroup-v1/memory.rst
        2.5 and mem_cgroup_resize_max), then write ``restore_limit`` back at once. True
        when usage fitted the target. The caller records ``restore_limit`` durably first:
        a crash between the two writes must not leave the lowered limit behind."""
        path = f"{loc.dir('memory')}/memory.limit_in_bytes"
        try:
            return self._write_may_refuse(path, int(target_bytes))
        finally:
            self.write(path, restore_limit)

    def controller_roots(self) -> dict[str, str]:
        if self.version == 2:
            return {"unified": self.root}
        return dict(self._v1_roots)

    def host_controllers(self) -> Iterable[str]:
        if self.version == 2:
            return read_text(f"{self.root}/cgroup.controllers").split()
        return list(self._v1_roots)

    # ------------------------------------------------------------- own groups

    def group_exists(self, rel: str) -> bool:
        base = self.root if self.version == 2 else self._v1_roots.get("memory", "")
        return bool(base) and os.path.isdir(base + "/" + rel.strip("/"))

    def make_group(self, rel: str, subtree: tuple[str, ...] = ()) -> CgroupLocation:
        """Create the cgroup ``rel`` and its missing ancestors (a pool's parent cgroup).

        v2: every level we walk gets those of ``subtree`` its cgroup.controllers offers
        enabled in cgroup.subtree_control, so the level below (and the containers Docker
        starts there with --cgroup-parent) have memory.max, cpu.max, cpuset.cpus
        (Documentation/admin-guide/cgroup-v2.rst, "Enabling and Disabling"). The host's
        root is never written. v1: the directory is made in every controller hierarchy;
        a new cpuset group starts with empty cpuset.cpus/mems, in which no task may run
        (cgroup-v1/cpusets.rst), so both are copied from the parent level by level."""
        parts = [p for p in rel.strip("/").split("/") if p]
        if not parts:
            raise CgroupError(self.root, "refusing to treat the root as a group of our own")
        if self.version == 2:
            d = self.root
            for p in parts:
                d = f"{d}/{p}"
                self._mkdir(d)
                if subtree:
                    self._enable_subtree(d, subtree)
        else:
            seen: set[str] = set()
            for ctrl, root in self._v1_roots.items():
                real = os.path.realpath(root)  # cpu and cpuacct are often one mount
                if real in seen:
                    continue
                seen.add(real)
                d = root
                for p in parts:
                    parent, d = d, f"{d}/{p}"
                    self._mkdir(d)
                    if ctrl == "cpuset":
                        for name in ("cpuset.cpus", "cpuset.mems"):
                            if not read_text(f"{d}/{name}").strip():
                                self.write(f"{d}/{name}", read_text(f"{parent}/{name}").strip())
        return self.location("/" + "/".join(parts))

    def remove_group(self, rel: str) -> None:
        """Remove ``rel`` and every empty cgroup below it, in every hierarchy mounted
        under the root (Docker's cgroupfs driver also makes the --cgroup-parent path in
        devices, freezer, name=systemd...). A group that still holds tasks raises
        CgroupError (EBUSY); one already gone is fine."""
        tail = rel.strip("/")
        if not tail:
            raise CgroupError(self.root, "refusing to remove the root")
        if self.version == 2:
            bases = [self.root]
        else:
            try:
                bases = sorted(f"{self.root}/{n}" for n in os.listdir(self.root))
            except OSError as e:
                raise _wrap(self.root, e) from None
        seen: set[str] = set()
        for base in bases:
            top = os.path.realpath(f"{base}/{tail}")
            if top in seen or not os.path.isdir(top):
                continue
            seen.add(top)
            for d, _, _ in os.walk(top, topdown=False):  # children before their parent
                try:
                    os.rmdir(d)
                except FileNotFoundError:
                    continue
                except OSError as e:
                    raise _wrap(d, e) from None

    def _mkdir(self, d: str) -> None:
        try:
            os.mkdir(d)
        except FileExistsError:
            pass
        except OSError as e:
            raise _wrap(d, e) from None

    def _enable_subtree(self, d: str, wanted: tuple[str, ...]) -> None:
        offered = set(read_text(f"{d}/cgroup.controllers").split())
        enabled = set(read_text(f"{d}/cgroup.subtree_control").split())
        for c in wanted:
            if c in offered and c not in enabled:
                # One controller per write: a write naming one the kernel refuses would
                # otherwise leave the others unset too.
                self.write(f"{d}/cgroup.subtree_control", f"+{c}")


def _slice_path(slice_name: str) -> str:
    """systemd nests slices by dashes: a-b.slice lives at a.slice/a-b.slice."""
    stem = slice_name[: -len(".slice")]
    parts = stem.split("-")
    return "/".join("-".join(parts[: i + 1]) + ".slice" for i in range(len(parts)))
