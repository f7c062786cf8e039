"""What placement wants of one container (``Desired``), how its Docker values differ from
that (the Engine.update arguments that close the gap) and how the change reads in the
journal. Pure; ``policy.placement`` decides the values, this module compares and words them."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from supervisor.model import rules
from supervisor.model.snapshot import ContainerInfo
from supervisor.model.units import format_bytes, parse_cpuset


@dataclass(frozen=True)
class Desired:
    """What one container's Docker resources should be. ``None`` memory fields: memory is
    left as it is (the pool had no room to grant, or the container is not running)."""

    cpuset_cpus: str
    cpu_quota_cores: float | None  # None = no CPU quota
    memory_limit_bytes: int | None
    memory_reservation_bytes: int | None
    memory_swap_bytes: int | None
    limit_source: str = ""  # override | adaptive | existing | class-default | usage-floor
    admission: str = ""  # fits | shrunk | over-budget | held | settling

    def to_params(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_params(cls, p: dict[str, Any]) -> "Desired":
        def opt_int(k: str) -> int | None:
            return None if p.get(k) is None else int(p[k])
        q = p.get("cpu_quota_cores")
        return cls(cpuset_cpus=str(p["cpuset_cpus"]), cpu_quota_cores=None if q is None else float(q),
                   memory_limit_bytes=opt_int("memory_limit_bytes"),
                   memory_reservation_bytes=opt_int("memory_reservation_bytes"),
                   memory_swap_bytes=opt_int("memory_swap_bytes"),
                   limit_source=str(p.get("limit_source", "")), admission=str(p.get("admission", "")))


#: Engine.update arguments by the call they go in (see ``split_update``).
CPU_FIELDS = frozenset({"cpuset_cpus", "cpu_quota", "cpu_period", "nano_cpus"})
MEMORY_FIELDS = frozenset({"mem_limit", "mem_reservation", "memswap_limit"})


def same_cpuset(current: str, desired: str) -> bool:
    """Compared as sets of cores ("0,1" == "0-1"). Docker's "" (no pinning) differs from
    any explicit list: placement always writes the cores out."""
    if not current:
        return not desired
    try:
        return parse_cpuset(current) == parse_cpuset(desired)
    except ValueError:
        return False


def update_kwargs(info: ContainerInfo, d: Desired, *, swap_limit_supported: bool = True
                  ) -> dict[str, Any]:
    """The Engine.update arguments that bring ``info`` to ``d``: empty when it is there
    already (then no update call is made)."""
    kw: dict[str, Any] = {}
    if not same_cpuset(info.cpuset_cpus, d.cpuset_cpus):
        kw["cpuset_cpus"] = d.cpuset_cpus
    cpu = rules.cpu_update_params(info.nano_cpus, info.cpu_quota_us, info.cpu_period_us,
                                  d.cpu_quota_cores)
    if cpu:
        kw.update(cpu)
    if d.memory_limit_bytes is not None:
        swap_differs = swap_limit_supported and info.memory_swap_bytes != d.memory_swap_bytes
        if (info.memory_limit_bytes != d.memory_limit_bytes
                or info.memory_reservation_bytes != d.memory_reservation_bytes or swap_differs):
            # The three go together: Docker checks limit <= swap limit and
            # reservation <= limit against the values already set.
            kw["mem_limit"] = d.memory_limit_bytes
            kw["mem_reservation"] = d.memory_reservation_bytes
            kw["memswap_limit"] = d.memory_swap_bytes
    return kw


def split_update(kw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(CPU arguments, memory arguments) of one update: they go to the engine as two
    calls (see ``act.placement``)."""
    return ({k: v for k, v in kw.items() if k in CPU_FIELDS},
            {k: v for k, v in kw.items() if k in MEMORY_FIELDS})


def writes_new_limit(info: ContainerInfo, kw: dict[str, Any]) -> bool:
    """Whether ``kw`` writes a memory limit other than the one ``info`` holds (what the
    floor must be checked for; re-writing the same limit changes nothing)."""
    return "mem_limit" in kw and kw["mem_limit"] != info.memory_limit_bytes


def resources_of(info: ContainerInfo) -> dict[str, Any]:
    """The Docker values placement manages, as journaled before/after."""
    return {"cpuset_cpus": info.cpuset_cpus, "cpu_limit_cores": rules.held_cpu_cores(info),
            "memory_limit_bytes": info.memory_limit_bytes,
            "memory_reservation_bytes": info.memory_reservation_bytes,
            "memory_swap_bytes": info.memory_swap_bytes}


def fmt_mem(n: int) -> str:
    return "none" if n <= 0 else format_bytes(n)


def describe_changes(info: ContainerInfo, kw: dict[str, Any]) -> str:
    parts = []
    if "cpuset_cpus" in kw:
        parts.append(f"cpuset {info.cpuset_cpus or 'all'} -> {kw['cpuset_cpus']}")
    if "cpu_quota" in kw or "nano_cpus" in kw:
        cur = rules.held_cpu_cores(info)
        if kw.get("cpu_quota") == -1:
            new = "none"
        elif "nano_cpus" in kw:
            new = f"{kw['nano_cpus'] / 1e9:g}"
        else:
            new = f"{kw['cpu_quota'] / kw['cpu_period']:g}"
        parts.append(f"cpu {'none' if cur is None else f'{cur:g}'} -> {new} cores")
    if "mem_limit" in kw:
        parts.append(f"memory limit {fmt_mem(info.memory_limit_bytes)} -> {fmt_mem(kw['mem_limit'])}")
        if info.memory_reservation_bytes != kw["mem_reservation"]:
            parts.append(f"reservation {fmt_mem(info.memory_reservation_bytes)} -> "
                         f"{fmt_mem(kw['mem_reservation'])}")
        if info.memory_swap_bytes != kw["memswap_limit"]:
            parts.append(f"swap limit {fmt_mem(info.memory_swap_bytes)} -> "
                         f"{fmt_mem(kw['memswap_limit'])}")
    return ", ".join(parts)
