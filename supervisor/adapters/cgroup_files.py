"""cgroupfs at the level of one file: reading and writing a knob, the kernel's file
formats, and where a cgroup's files are (``CgroupLocation``). The modules above it
(cgroup_stats, cgroup_groups, cgroups) build on these; every OSError becomes a
CgroupError here: CgroupGone when the file or the directory has vanished (the container
died mid-read), CgroupError otherwise. Kernel file formats:
Documentation/admin-guide/cgroup-v2.rst and cgroup-v1/*.rst.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from supervisor.model.errors import CgroupError, CgroupGone
from supervisor.model.snapshot import Pressure

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
        return self.dirs["unified" if self.version == 2 else controller]


@dataclass(frozen=True, slots=True)
class CgroupUsage:
    memory_usage_bytes: int
    memory_working_set_bytes: int
    cpu_usage_s: float
    cpu_throttled_s: float | None  # None: not read (UsageFiles on v1; see there)


def wrap_os_error(path: str, e: OSError) -> CgroupError:
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
        raise wrap_os_error(path, e) from None


def write_knob(path: str, value: str | int, flags: int = os.O_WRONLY) -> None:
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
    return parse_int(path, read_text(path))


def parse_int(path: str, text: str) -> int:
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


@dataclass(frozen=True, slots=True)
class Resident:
    """What a cgroup keeps in memory once its reclaimable memory has been released:
    anonymous memory and shmem (tmpfs, /dev/shm, SysV shared memory such as PostgreSQL's
    shared buffers) can only go to swap; ``other`` is the rest of its usage (kernel
    memory, page cache the kernel kept)."""

    anon_bytes: int
    shmem_bytes: int
    other_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.anon_bytes + self.shmem_bytes + self.other_bytes


def resident_of(version: int, memory_stat: str, usage_bytes: int) -> Resident:
    """From memory.stat and the usage read with it: v2 ``anon`` + ``shmem``; v1 the
    hierarchy's ``total_rss`` (anonymous, shmem not included) + ``total_shmem`` (counted
    in v1's cache). The usage beyond them is ``other``."""
    if version == 2:
        anon, shmem = stat_value(memory_stat, "anon"), stat_value(memory_stat, "shmem")
    else:
        anon, shmem = stat_value(memory_stat, "total_rss"), stat_value(memory_stat, "total_shmem")
    return Resident(anon, shmem, max(0, usage_bytes - anon - shmem))


def usage_of(version: int, usage_bytes: int, memory_stat: str, cpu_s: float,
             throttled_s: float | None) -> CgroupUsage:
    """The hot counters; the working set as cAdvisor counts it: usage minus inactive file
    pages (v1 reports the hierarchy's total under total_inactive_file)."""
    inactive = stat_value(memory_stat, "inactive_file" if version == 2 else "total_inactive_file")
    return CgroupUsage(usage_bytes, max(0, usage_bytes - inactive), cpu_s, throttled_s)


def v2_cpu_seconds(cpu_stat: str) -> tuple[float, float]:
    """(CPU seconds used, seconds throttled) from a v2 cpu.stat."""
    return stat_value(cpu_stat, "usage_usec") / 1e6, stat_value(cpu_stat, "throttled_usec") / 1e6


def slice_path(slice_name: str) -> str:
    """systemd nests slices by dashes: a-b.slice lives at a.slice/a-b.slice."""
    stem = slice_name[: -len(".slice")]
    parts = stem.split("-")
    return "/".join("-".join(parts[: i + 1]) + ".slice" for i in range(len(parts)))
