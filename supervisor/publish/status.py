"""The status dict: one function builds it for `supctl status`, `supctl status --json`
and the control API's GET /status."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from supervisor import __version__

if TYPE_CHECKING:  # pragma: no cover
    from supervisor.runtime.daemon import Daemon


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


def cpu_percent(cur_cpu_s: float | None, prev_cpu_s: float | None, interval_s: float) -> float | None:
    """CPU use between two samples, 100 = one core busy (as `docker stats`). None when
    either sample is missing or the counter went back (the container restarted)."""
    if cur_cpu_s is None or prev_cpu_s is None or interval_s <= 0 or cur_cpu_s < prev_cpu_s:
        return None
    return round((cur_cpu_s - prev_cpu_s) / interval_s * 100.0, 1)


def container_cpu_percents(tick, prev_tick) -> dict[str, float | None]:
    """Per container id, CPU % between the previous pass and this one."""
    if prev_tick is None:
        return {}
    interval_s = tick.snapshot.time_s - prev_tick.snapshot.time_s
    prev = {c.info.id: c.stats.cpu_usage_s for c in prev_tick.snapshot.containers if c.stats}
    return {c.info.id: cpu_percent(c.stats.cpu_usage_s if c.stats else None,
                                   prev.get(c.info.id), interval_s)
            for c in tick.snapshot.containers}


def hibernation_rows(section: Any) -> dict[str, dict[str, Any]]:
    """The hibernation component's per-container rows (``containers``: a mapping keyed
    by container id, short id or name, or a list of rows carrying ``id``/``name``), keyed
    every way a container row can be looked up."""
    if not isinstance(section, dict):
        return {}
    rows = section.get("containers")
    items: list[tuple[str, Any]] = []
    if isinstance(rows, dict):
        items = [(str(k), v) for k, v in rows.items()]
    elif isinstance(rows, list):
        items = [(str(r.get("id") or r.get("name") or ""), r) for r in rows if isinstance(r, dict)]
    out: dict[str, dict[str, Any]] = {}
    for key, row in items:
        if not isinstance(row, dict):
            continue
        for k in {key, key[:12], str(row.get("id", ""))[:12], str(row.get("name", ""))} - {""}:
            out[k] = row
    return out


def pass_duration_summary(durations_s: list[float]) -> dict[str, Any]:
    """p50, p95 and max of the recent passes (the daemon keeps the last 1000): how much
    of its tick a pass uses, without a histogram's bucket rounding."""
    if not durations_s:
        return {"passes": 0}
    xs = sorted(durations_s)

    def q(p: float) -> float:
        return round(xs[min(len(xs) - 1, int(p * len(xs)))], 6)
    return {"passes": len(xs), "p50": q(0.50), "p95": q(0.95), "max": round(xs[-1], 6)}


def own_process() -> dict[str, Any]:
    """The daemon's own footprint: it must stay small on the host it guards."""
    import psutil

    try:
        p = psutil.Process()
        with p.oneshot():
            t = p.cpu_times()
            return {"rss_bytes": p.memory_info().rss, "cpu_seconds": round(t.user + t.system, 3),
                    "threads": p.num_threads()}
    except psutil.Error:
        return {}


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
            "pass_duration_s": pass_duration_summary(list(d.pass_durations)),
            "loop_alive": d.loop_alive(),
            "config_errors": d.last_config_error,
            "cgroup_version": d.cgroups.version,
            **own_process(),
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
                             "cores": len(c.cores) if c.cores is not None else cfg.host.cores,
                             "memory_limit_bytes": c.memory_limit_bytes,
                             "ports": f"{c.ports[0]}-{c.ports[1]}" if c.ports else "",
                             "protected": c.protected, "hibernate": c.hibernate}
                      for name, c in cfg.classes.items()}
    out["containers"] = [container_row(c, tick) for c in snap.containers]
    sections = component_sections(d, tick)
    cpu = container_cpu_percents(tick, getattr(d, "prev_tick", None))
    idle = hibernation_rows(sections.get("hibernation"))
    for row, c in zip(out["containers"], snap.containers):
        row["cpu_percent"] = cpu.get(c.info.id)
        hib = idle.get(row["id"]) or idle.get(row["name"]) or {}
        row["idle_s"] = hib.get("idle_s")
        row["hibernated"] = bool(hib.get("hibernated"))
    for name, section in sections.items():
        if section is not None:
            out[name] = section
    out["actions"] = [r.to_dict() for r in list(d.actuator.recent)[-10:]]
    return out


def component_sections(d: "Daemon", tick) -> dict[str, Any]:
    """Each component's status section (None: it has none)."""
    out: dict[str, Any] = {}
    for comp in d.components:
        try:
            out[comp.name] = comp.status(tick)
        except Exception as e:  # noqa: BLE001 - one section's bug must not hide the rest
            out[comp.name] = {"error": f"{type(e).__name__}: {e}"}
    return out
