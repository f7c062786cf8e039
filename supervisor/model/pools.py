"""Memory pool accounting (Rule 1.3). Pure: a function of a snapshot and the config.

Per pool: budget, allocated (sum of memory limits of its running managed containers),
used (sum of their working sets), free and utilisation. The emergency reserve is never
part of any pool: config validation refuses pools + reserve > host memory, and every
tick the host's available memory is compared with the reserve.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from supervisor.model import rules
from supervisor.model.config import Config
from supervisor.model.snapshot import LIVE_STATES, ContainerSample, Snapshot


@dataclass(frozen=True)
class PoolUsage:
    name: str
    budget_bytes: int
    allocated_bytes: int
    used_bytes: int
    containers: tuple[str, ...] = field(default=())  # container names
    unlimited: tuple[str, ...] = field(default=())  # members without a memory limit
    level: int = rules.OK  # rules.pool_level at the configured levels

    @property
    def state(self) -> str:
        return rules.level_name(self.level)

    @property
    def over(self) -> bool:
        return self.level == rules.OVER

    @property
    def free_bytes(self) -> int:
        return self.budget_bytes - self.allocated_bytes

    @property
    def utilisation(self) -> float:
        """used / budget."""
        return self.used_bytes / self.budget_bytes if self.budget_bytes else 0.0

    @property
    def allocation_ratio(self) -> float:
        return self.allocated_bytes / self.budget_bytes if self.budget_bytes else 0.0

    def to_dict(self) -> dict:
        return {"name": self.name, "budget_bytes": self.budget_bytes,
                "allocated_bytes": self.allocated_bytes, "used_bytes": self.used_bytes,
                "free_bytes": self.free_bytes, "utilisation": round(self.utilisation, 4),
                "allocation_ratio": round(self.allocation_ratio, 4),
                "state": self.state,
                "containers": list(self.containers), "unlimited": list(self.unlimited)}


@dataclass(frozen=True)
class ReserveState:
    reserve_bytes: int
    available_bytes: int
    level: int = rules.OK  # rules.reserve_level at the configured levels

    @property
    def state(self) -> str:
        return rules.level_name(self.level)

    @property
    def breached(self) -> bool:
        """Available memory at or inside the reserve (rules.reserve_level OVER)."""
        return self.level == rules.OVER

    def to_dict(self) -> dict:
        return {"reserve_bytes": self.reserve_bytes, "available_bytes": self.available_bytes,
                "state": self.state, "breached": self.breached}


def container_limit_bytes(c: ContainerSample) -> int:
    """The limit that counts against the pool: Docker's view, else the kernel's."""
    if c.info.memory_limit_bytes:
        return c.info.memory_limit_bytes
    if c.stats and c.stats.memory_limit_bytes:
        return c.stats.memory_limit_bytes
    return 0


def working_set_bytes(c: ContainerSample) -> int:
    """The use that counts against the pool: the working set (0 when not read)."""
    return c.stats.memory_working_set_bytes if c.stats else 0


def pool_of(c: ContainerSample, cfg: Config) -> str:
    return cfg.classes[c.class_name].pool if c.class_name in cfg.classes else ""


def account(snap: Snapshot, cfg: Config) -> dict[str, PoolUsage]:
    acc: dict[str, dict] = {name: {"alloc": 0, "used": 0, "names": [], "unl": []}
                            for name in cfg.pools}
    for c in snap.containers:
        if not c.managed or c.info.state not in LIVE_STATES:
            continue
        p = pool_of(c, cfg)
        if p not in acc:
            continue
        a = acc[p]
        limit = container_limit_bytes(c)
        a["alloc"] += limit
        a["used"] += working_set_bytes(c)
        a["names"].append(c.info.name)
        if not limit:
            a["unl"].append(c.info.name)
    levels = rules.Levels.of(cfg)
    return {name: PoolUsage(name, cfg.pools[name].budget_bytes, a["alloc"], a["used"],
                            tuple(sorted(a["names"])), tuple(sorted(a["unl"])),
                            rules.pool_level(a["used"], a["alloc"], cfg.pools[name].budget_bytes,
                                             levels))
            for name, a in acc.items()}


def reserve_state(snap: Snapshot, cfg: Config) -> ReserveState:
    avail = snap.host.memory_available_bytes
    return ReserveState(cfg.reserve_bytes, avail,
                        rules.reserve_level(cfg.reserve_bytes, avail, rules.Levels.of(cfg)))


FITS, SHRUNK, OVER_BUDGET = "fits", "shrunk", "over-budget"


def admit(pool: PoolUsage, wanted_bytes: int, min_bytes: int) -> tuple[int, str]:
    """Admission of a container wanting ``wanted_bytes`` into ``pool`` (whose allocation
    does not yet include it). Returns (granted bytes, verdict): FITS (what it wants),
    SHRUNK (the room left, which is at least ``min_bytes``, its floor) or OVER_BUDGET
    (granted 0: it keeps what it has, nothing is written). A grant is never more than it
    wants nor more than the room, and a shrunk one never below the floor: the caller
    raises ``wanted_bytes`` to the floor for any new limit (``rules.memory_limit``)."""
    room = pool.budget_bytes - pool.allocated_bytes
    if wanted_bytes <= room:
        return wanted_bytes, FITS
    if room >= min_bytes:
        return room, SHRUNK
    return 0, OVER_BUDGET
