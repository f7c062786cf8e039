"""The status dict: one function builds it for `supctl status`, `supctl status --json`
and the control API's GET /status."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from . import __version__

if TYPE_CHECKING:  # pragma: no cover
    from .daemon import Daemon


def container_row(c, tick) -> dict[str, Any]:
    s = c.stats
    cfg = tick.cfg
    cls = cfg.classes.get(c.class_name)
    return {
        "id": c.info.short_id, "name": c.info.name, "image": c.info.image,
        "class": c.class_name, "class_reason": c.class_reason,
        "pool": cls.pool if cls else "", "managed": c.managed, "state": c.info.state,
        "cpuset": c.info.cpuset_cpus or (s.cpuset_cpus if s else ""),
        "memory_limit_bytes": c.info.memory_limit_bytes or (s.memory_limit_bytes if s else 0) or 0,
        "memory_reservation_bytes": c.info.memory_reservation_bytes,
        "memory_working_set_bytes": s.memory_working_set_bytes if s else None,
        "memory_usage_bytes": s.memory_usage_bytes if s else None,
        "cpu_limit_cores": c.info.cpu_limit_cores,
        "cpu_usage_s": s.cpu_usage_s if s else None,
        "error": c.error,
    }


def build_status(d: "Daemon") -> dict[str, Any]:
    tick = d.last_tick
    cfg = d.cfg
    out: dict[str, Any] = {
        "daemon": {
            "version": __version__, "pid": os.getpid(),
            "uptime_s": round(time.time() - d.started_at, 1),
            "config": cfg.source, "dry_run": cfg.dry_run,
            "tick_s": cfg.tick_s, "passes": d.counts["passes"],
            "last_pass_age_s": round(time.monotonic() - d.last_pass_mono, 3) if d.last_pass_mono else None,
            "last_pass_duration_s": round(d.last_pass_duration_s, 6),
            "loop_alive": d.loop_alive(),
            "config_errors": d.last_config_error,
            "cgroup_version": d.cgroups.version,
        },
        "engine": {"up": d.inventory.engine_up, "error": d.inventory.engine_error,
                   "host": cfg.settings.docker.host or os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")},
    }
    if tick is None:
        out["ready"] = False
        return out
    snap = tick.snapshot
    h = snap.host
    out["ready"] = True
    out["host"] = {
        "cores": cfg.host.cores, "memory_total_bytes": h.memory_total_bytes,
        "memory_available_bytes": h.memory_available_bytes,
        "cpu_busy_ratio": [round(x, 4) for x in h.cpu_busy_ratio],
        "pressure": {k: {"some_avg10": p.some_avg10, "full_avg10": p.full_avg10}
                     for k, p in h.pressure.items()},
    }
    out["reserve"] = tick.reserve.to_dict()
    out["pools"] = {name: p.to_dict() for name, p in tick.pools.items()}
    out["classes"] = {name: {"cpuset": c.cpuset or "any", "pool": c.pool, "priority": c.priority,
                             "protected": c.protected, "hibernate": c.hibernate}
                      for name, c in cfg.classes.items()}
    out["containers"] = [container_row(c, tick) for c in snap.containers]
    for comp in d.components:
        try:
            section = comp.status(tick)
        except Exception as e:  # noqa: BLE001 - one section's bug must not hide the rest
            section = {"error": f"{type(e).__name__}: {e}"}
        if section is not None:
            out[comp.name] = section
    out["actions"] = [r.to_dict() for r in list(d.actuator.recent)[-10:]]
    return out
