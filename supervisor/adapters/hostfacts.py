"""The host facts the config is resolved against (cores, memory), read from /proc: the
config itself stays pure and is handed them (``load_config(path, host=read_host_facts())``)."""

from __future__ import annotations

import os

from supervisor.model.config import HostFacts, detect_host
from supervisor.adapters.host import parse_meminfo


def read_host_facts(proc: str = "/proc") -> HostFacts:
    """Online cores and MemTotal of ``proc``/meminfo (what psutil.virtual_memory().total
    reads); the config's own estimate when that file cannot be read."""
    try:
        with open(f"{proc}/meminfo", encoding="ascii", errors="replace") as f:
            total = parse_meminfo(f.read()).get("MemTotal", 0)
    except OSError:
        total = 0
    if total <= 0:
        return detect_host()
    return HostFacts(cores=os.cpu_count() or 1, memory_bytes=total)
