"""Host sampling from /proc: per-core CPU, memory, disk and network counters, PSI.

Reads /proc directly (the same files psutil reads) so a captured tree under
tests/fixtures/proc can stand in for the host; ``proc`` is the root to read.
"""

from __future__ import annotations

import os
import re
import time

from supervisor.adapters.cgroups import parse_pressure, read_text
from supervisor.model.errors import CgroupError, SupervisorError
from supervisor.model.snapshot import DiskIO, HostSample, NetIO, Pressure

_CPU_MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
_SECTOR_BYTES = 512  # /proc/diskstats counts 512-byte sectors whatever the device's size
# Partitions and virtual devices would count the same I/O twice (node_exporter's default).
_DISK_IGNORE = re.compile(r"^(ram\d+|loop\d+|fd\d+|zram\d+|sr\d+|(h|s|v|xv)d[a-z]+\d+|nvme\d+n\d+p\d+|mmcblk\d+p\d+)$")


class HostReadError(SupervisorError):
    pass


def _read(path: str) -> str:
    try:
        return read_text(path)
    except CgroupError as e:
        raise HostReadError(f"{path}: {e.reason}") from None


def parse_stat_cpus(text: str, user_hz: int = 100) -> tuple[dict[str, float], ...]:
    cores = []
    for line in text.splitlines():
        if line.startswith("cpu") and line[3:4].isdigit():
            fields = line.split()[1:9]
            cores.append({m: int(v) / user_hz for m, v in zip(_CPU_MODES, fields)})
    return tuple(cores)


def parse_meminfo(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        k, _, rest = line.partition(":")
        parts = rest.split()
        if parts:
            out[k] = int(parts[0]) * (1024 if len(parts) > 1 and parts[1] == "kB" else 1)
    return out


def parse_diskstats(text: str) -> dict[str, DiskIO]:
    out = {}
    for line in text.splitlines():
        f = line.split()
        if len(f) < 14 or _DISK_IGNORE.match(f[2]):
            continue
        out[f[2]] = DiskIO(read_bytes=int(f[5]) * _SECTOR_BYTES, write_bytes=int(f[9]) * _SECTOR_BYTES,
                           read_ops=int(f[3]), write_ops=int(f[7]))
    return out


def parse_net_dev(text: str) -> dict[str, NetIO]:
    out = {}
    for line in text.splitlines()[2:]:
        name, _, rest = line.partition(":")
        f = rest.split()
        if len(f) >= 10:
            out[name.strip()] = NetIO(rx_bytes=int(f[0]), rx_packets=int(f[1]),
                                      tx_bytes=int(f[8]), tx_packets=int(f[9]))
    return out


def busy_ratios(prev: tuple[dict[str, float], ...], cur: tuple[dict[str, float], ...]) -> tuple[float, ...]:
    out = []
    for a, b in zip(prev, cur):
        total = sum(b.values()) - sum(a.values())
        idle = (b["idle"] + b["iowait"]) - (a["idle"] + a["iowait"])
        out.append(0.0 if total <= 0 else max(0.0, min(1.0, 1 - idle / total)))
    return tuple(out)


class HostSampler:
    def __init__(self, proc: str = "/proc", clock=time.time):
        self.proc = proc
        self.clock = clock
        self._prev_cpu: tuple[dict[str, float], ...] = ()
        self._user_hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def pressure(self) -> dict[str, Pressure]:
        out = {}
        for res in ("cpu", "memory", "io"):
            try:
                out[res] = parse_pressure(_read(f"{self.proc}/pressure/{res}"))
            except HostReadError:
                continue  # kernel without PSI (psi=0): leave it out, say so in status
        return out

    def sample(self) -> HostSample:
        cpus = parse_stat_cpus(_read(f"{self.proc}/stat"), self._user_hz)
        busy = busy_ratios(self._prev_cpu, cpus) if self._prev_cpu else ()
        self._prev_cpu = cpus
        mem = parse_meminfo(_read(f"{self.proc}/meminfo"))
        try:
            disks = parse_diskstats(_read(f"{self.proc}/diskstats"))
        except HostReadError:
            disks = {}
        try:
            nets = parse_net_dev(_read(f"{self.proc}/net/dev"))
        except HostReadError:
            nets = {}
        return HostSample(
            time_s=self.clock(), cores=len(cpus), cpu_seconds=cpus, cpu_busy_ratio=busy,
            memory_total_bytes=mem.get("MemTotal", 0),
            memory_available_bytes=mem.get("MemAvailable", mem.get("MemFree", 0)),
            disks=disks, nets=nets, pressure=self.pressure())
