"""Immutable values that flow from the samplers to the policy, the metrics and the CLI.

Nothing here does I/O: a snapshot is a picture of the host at one instant, so the pure
decision code (classify, pools, placement, policy) can be tested on hand-made ones.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# Docker states in which a container has processes and a cgroup: it holds memory, counts
# against its pool, and has figures to sample.
LIVE_STATES = ("running", "paused", "restarting")


@dataclass(frozen=True, slots=True)
class Pressure:
    """One PSI file (/proc/pressure/* or a cgroup's *.pressure). Percentages and µs."""

    some_avg10: float = 0.0
    some_avg60: float = 0.0
    some_total_us: int = 0
    full_avg10: float = 0.0
    full_avg60: float = 0.0
    full_total_us: int = 0


@dataclass(frozen=True, slots=True)
class DiskIO:
    read_bytes: int
    write_bytes: int
    read_ops: int
    write_ops: int


@dataclass(frozen=True, slots=True)
class NetIO:
    rx_bytes: int
    tx_bytes: int
    rx_packets: int
    tx_packets: int


@dataclass(frozen=True, slots=True)
class HostSample:
    time_s: float
    cores: int
    # Cumulative seconds per core and mode (user, nice, system, idle, iowait, irq, softirq, steal).
    cpu_seconds: tuple[dict[str, float], ...]
    # Busy share per core since the previous sample, 0..1 (empty on the first sample).
    cpu_busy_ratio: tuple[float, ...]
    memory_total_bytes: int
    memory_available_bytes: int
    disks: dict[str, DiskIO]
    nets: dict[str, NetIO]
    pressure: dict[str, Pressure]  # "cpu" | "memory" | "io"


@dataclass(frozen=True, slots=True)
class CgroupStats:
    """What the cgroup files of one container say. None = not available on this kernel/driver."""

    version: int
    path: str
    memory_usage_bytes: int
    memory_working_set_bytes: int
    memory_limit_bytes: int | None  # None = unlimited
    memory_high_bytes: int | None = None  # v2 memory.high; None = max
    memory_low_bytes: int | None = None  # v2 memory.low / v1 soft limit (the reservation)
    memory_events: dict[str, int] = field(default_factory=dict)  # v2 memory.events; v1 failcnt, oom_kill
    cpu_usage_s: float = 0.0
    cpu_throttled_s: float = 0.0
    cpu_nr_throttled: int = 0
    cpu_quota_cores: float | None = None
    cpuset_cpus: str = ""
    pids: int = 0
    blkio_read_bytes: int = 0
    blkio_write_bytes: int = 0
    pressure: dict[str, Pressure] | None = None  # v2 only
    frozen: bool | None = None


@dataclass(frozen=True, slots=True)
class ContainerInfo:
    """What the Docker engine says of one container (inspect), kept current by events."""

    id: str
    name: str
    image: str
    labels: dict[str, str]
    state: str  # created | running | paused | restarting | exited | dead | removing
    pid: int
    cpuset_cpus: str = ""
    memory_limit_bytes: int = 0  # 0 = none (Docker's convention)
    memory_reservation_bytes: int = 0
    memory_swap_bytes: int = 0
    nano_cpus: int = 0
    cpu_quota_us: int = 0
    cpu_period_us: int = 0
    cgroup_parent: str = ""
    restart_policy: str = ""
    restart_count: int = 0
    started_at: str = ""
    # How the last run ended (State.FinishedAt, ExitCode, OOMKilled): a run the kernel's
    # OOM killer ended says so here until the next start.
    finished_at: str = ""
    exit_code: int = 0
    oom_killed: bool = False
    # When this container was OOM-killed lately (epoch seconds, oldest first), one entry
    # per run, kept by the inventory from Docker's oom/die events and State.OOMKilled:
    # it survives the new cgroup every restart brings (the cgroup counters do not).
    oom_kill_times_s: tuple[float, ...] = ()
    health: str = ""  # "" | starting | healthy | unhealthy
    env: tuple[str, ...] = ()
    ports: tuple[tuple[str, str, int], ...] = ()  # (container port/proto, host ip, host port)
    user: str = ""
    has_healthcheck: bool = False
    network_mode: str = ""
    # The health check as inspect gives it (Config.Healthcheck): Test, and Interval and
    # Timeout in seconds (Docker's defaults, 30 s each, when unset).
    healthcheck_test: tuple[str, ...] = ()
    healthcheck_interval_s: float = 0.0
    healthcheck_timeout_s: float = 0.0

    @property
    def short_id(self) -> str:
        return self.id[:12]


@dataclass(frozen=True, slots=True)
class ContainerSample:
    info: ContainerInfo
    class_name: str
    class_reason: str  # "label" | "name" | "service" | "image" | "repository" | "default" | "unknown-label"
    managed: bool
    stats: CgroupStats | None
    error: str = ""  # why stats are missing (cgroup vanished, unreadable...)
    net: NetIO | None = None
    class_pattern: str = ""  # the class rule's glob that matched (classify.classify_why)


@dataclass(frozen=True, slots=True)
class Snapshot:
    time_s: float
    host: HostSample
    containers: tuple[ContainerSample, ...]
    engine_up: bool
    engine_error: str = ""
    cgroup_version: int = 0
    sweep_s: float = 0.0  # wall time of the cgroup sweep

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
