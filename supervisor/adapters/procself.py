"""The daemon's own footprint, read from /proc/self: resident and virtual memory, CPU
seconds, threads, open file descriptors. Read on the loop thread once per pass (about
30 us) and published in the pass's report, so neither `supctl status` nor a scrape of
/metrics reads a file to show it (prometheus_client's ProcessCollector read /proc on
every scrape). The same figures, under the same names, as that collector's process_*
(open file descriptors are counted every few seconds, not every pass).
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import time
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class ProcessFigures:
    rss_bytes: int
    virtual_bytes: int
    cpu_user_s: float
    cpu_system_s: float
    threads: int
    start_time_s: float  # since the epoch
    open_fds: int | None  # None: /proc/self/fd unreadable
    max_fds: int | None  # the soft RLIMIT_NOFILE; None: unlimited

    @property
    def cpu_seconds(self) -> float:
        return self.cpu_user_s + self.cpu_system_s


def parse_stat(text: str, ticks_per_s: float, page_bytes: int,
               boot_time_s: float) -> tuple[int, int, float, float, int, float]:
    """(rss bytes, virtual bytes, user s, system s, threads, start time s) from the text
    of /proc/PID/stat (proc(5); the command name may hold spaces and parentheses, so the
    fields are counted from its closing parenthesis)."""
    f = text.rsplit(")", 1)[1].split()
    # f[0] is field 3 (state): field n of proc(5) is f[n - 3].
    return (int(f[21]) * page_bytes, int(f[20]), int(f[11]) / ticks_per_s,
            int(f[12]) / ticks_per_s, int(f[17]), boot_time_s + int(f[19]) / ticks_per_s)


def boot_time_s(proc: str = "/proc") -> float:
    """When the host booted (btime of /proc/stat), 0.0 when unreadable."""
    with contextlib.suppress(OSError), open(f"{proc}/stat", "rb") as f:
        for line in f:
            if line.startswith(b"btime "):
                return float(line.split()[1])
    return 0.0


class ProcSelf:
    """Reads this process's figures; ``read()`` is None when /proc cannot be read."""

    def __init__(self, proc: str = "/proc", fds_every_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic, every_s: float = 0.0):
        self.proc = proc
        self._ticks = float(os.sysconf("SC_CLK_TCK"))
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._btime = boot_time_s(proc)
        # Counting open fds lists /proc/self/fd: ~0.2 ms with the ~400 cgroup files the
        # sampler keeps open for 110 containers, so it is counted every few seconds.
        self.fds_every_s = fds_every_s
        self.clock = clock
        self._fds: int | None = None
        self._fds_at = -math.inf
        # /proc/self/stat of a process with a dozen threads and a few hundred open files
        # costs the kernel a walk over them (~1 ms a second at a 1 s tick, measured with
        # py-spy on the 110-container soak): the figures are re-read this often, and the
        # last reading serves the passes in between.
        self.every_s = every_s
        self._last: ProcessFigures | None = None
        self._last_at = -math.inf

    def _open_fds(self) -> int | None:
        now = self.clock()
        if now - self._fds_at >= self.fds_every_s:
            try:
                self._fds = len(os.listdir(f"{self.proc}/self/fd"))
            except OSError:
                self._fds = None
            self._fds_at = now
        return self._fds

    def read(self) -> ProcessFigures | None:
        now = self.clock()
        if self._last is not None and now - self._last_at < self.every_s:
            return self._last
        self._last, self._last_at = self._read(), now
        return self._last

    def _read(self) -> ProcessFigures | None:
        try:
            with open(f"{self.proc}/self/stat", "rb") as f:
                rss, virt, user, system, threads, start = parse_stat(
                    f.read().decode("utf-8", "replace"), self._ticks, self._page, self._btime)
        except (OSError, IndexError, ValueError):
            return None
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        return ProcessFigures(rss_bytes=rss, virtual_bytes=virt, cpu_user_s=user,
                              cpu_system_s=system, threads=threads, start_time_s=start,
                              open_fds=self._open_fds(),
                              max_fds=None if soft == resource.RLIM_INFINITY else soft)
