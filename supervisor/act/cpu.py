"""The one CPU writer for containers: placement, the ladder's throttle and the Ollama
governor all set a container's CPU limit through ``set_cpu_limit``, so every CPU limit
is written with one rounding and one CFS period (``rules.cpu_update_params``), through
Docker (so ``docker inspect`` tells the truth), and only when it differs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from supervisor.model import rules

if TYPE_CHECKING:  # pragma: no cover
    from supervisor.adapters.engine import Engine
    from supervisor.model.snapshot import ContainerInfo


def cpu_params(info: "ContainerInfo", cores: float | None) -> dict[str, Any]:
    """The Engine.update arguments that bring ``info``'s CPU limit to ``cores`` ({} when
    it holds that limit already)."""
    return rules.cpu_update_params(info.nano_cpus, info.cpu_quota_us, info.cpu_period_us, cores)


def set_cpu_limit(engine: "Engine", info: "ContainerInfo", cores: float | None) -> bool:
    """Write ``cores`` (None: no limit) as ``info``'s CPU limit. Returns whether an update
    was made. Raises what Engine.update raises (EngineRefused, ContainerGone, ...)."""
    kw = cpu_params(info, cores)
    if not kw:
        return False
    engine.update(info.id, **kw)
    return True


def cpu_state(info: "ContainerInfo") -> dict[str, int]:
    """What a CPU limit replaces, for a durable record to restore from."""
    return {"nano_cpus": info.nano_cpus, "cpu_quota_us": info.cpu_quota_us,
            "cpu_period_us": info.cpu_period_us}


def restore_cpu_limit(engine: "Engine", info: "ContainerInfo", before: dict[str, Any]) -> None:
    """Put back a CPU limit recorded by ``cpu_state`` (exactly as it was, its own period
    included: it was the owner's, not ours)."""
    if before.get("nano_cpus"):
        engine.update(info.id, nano_cpus=int(before["nano_cpus"]))
    elif before.get("cpu_quota_us", 0) > 0:
        engine.update(info.id, cpu_quota=int(before["cpu_quota_us"]),
                      cpu_period=int(before.get("cpu_period_us") or rules.CPU_PERIOD_US))
    else:
        engine.update(info.id, cpu_quota=-1)  # -1: no quota (0 would mean "unchanged")
