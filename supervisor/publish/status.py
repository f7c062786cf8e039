"""The status dict: one function builds it for `supctl status`, `supctl status --json`
and the control API's GET /status, from the latest pass's report and nothing else (no
daemon internals, no file, no engine call on the control thread)."""

from __future__ import annotations

import time
from typing import Any

from supervisor import __version__
from supervisor.model.classify import describe_class
from supervisor.model import rules
from supervisor.model.pools import container_limit_bytes, pool_of
from supervisor.publish.report import Report


def container_row(c, cfg, now_s: float, cpu: float | None, hib: dict) -> dict[str, Any]:
    """One container's row: ``cpu`` its CPU %, ``hib`` its hibernation row ({}: none)."""
    s = c.stats
    hibernated = bool(hib.get("hibernated"))
    kills = rules.oom_kills_within(c.info.oom_kill_times_s, now_s)
    return {
        "id": c.info.short_id, "name": c.info.name, "image": c.info.image,
        "class": c.class_name, "class_reason": c.class_reason,
        "class_pattern": c.class_pattern,
        "class_why": describe_class(c.info, cfg, c.class_name, c.class_reason, c.class_pattern),
        "pool": pool_of(c, cfg), "managed": c.managed, "state": c.info.state,
        "cpuset": c.info.cpuset_cpus or (s.cpuset_cpus if s else ""),
        "memory_limit_bytes": container_limit_bytes(c),
        "memory_reservation_bytes": c.info.memory_reservation_bytes,
        "memory_working_set_bytes": s.memory_working_set_bytes if s else None,
        "memory_usage_bytes": s.memory_usage_bytes if s else None,
        "cpu_limit_cores": rules.held_cpu_cores(c.info),
        "cpu_usage_s": s.cpu_usage_s if s else None,
        "error": c.error,
        "cpu_percent": cpu, "idle_s": hib.get("idle_s"), "hibernated": hibernated,
        "health": health_label(c.info, hibernated), "restart_count": c.info.restart_count,
        "oom_kills_recent": kills, "oom_loop": c.managed and kills >= rules.OOM_LOOP_KILLS,
    }


def health_label(info: Any, hibernated: bool) -> str:
    """The HEALTH a container is shown with: healthy / unhealthy / starting, "none" without
    a health check, and "hibernated" for one the supervisor holds (Docker calls a paused
    container unhealthy at once: that is the hibernation, not a failure)."""
    if not info.has_healthcheck:
        return "none"
    if hibernated:
        return "hibernated"
    return info.health or "starting"


def cpu_percent(cur_cpu_s: float | None, prev_cpu_s: float | None, interval_s: float) -> float | None:
    """CPU use between two samples, 100 = one core busy (as `docker stats`). None when
    either sample is missing or the counter went back (the container restarted)."""
    if cur_cpu_s is None or prev_cpu_s is None or interval_s <= 0 or cur_cpu_s < prev_cpu_s:
        return None
    return round((cur_cpu_s - prev_cpu_s) / interval_s * 100.0, 1)


def container_cpu_percents(snap, prev_snap) -> dict[str, float | None]:
    """Per container id, CPU % between the previous pass's snapshot and this one."""
    if snap is None or prev_snap is None:
        return {}
    interval_s = snap.time_s - prev_snap.time_s
    prev = {c.info.id: c.stats.cpu_usage_s for c in prev_snap.containers if c.stats}
    return {c.info.id: cpu_percent(c.stats.cpu_usage_s if c.stats else None,
                                   prev.get(c.info.id), interval_s)
            for c in snap.containers}


def hibernation_rows(section: Any) -> dict[str, dict[str, Any]]:
    """The hibernation component's per-container rows (``containers``: a mapping keyed
    by container id, short id or name, or a list of rows carrying ``id``/``name``), keyed
    every way a container row can be looked up."""
    if not isinstance(section, dict):
        return {}
    rows = section.get("containers")
    if isinstance(rows, dict):
        items = [(str(k), v) for k, v in rows.items()]
    elif isinstance(rows, list):
        items = [(str(r.get("id") or r.get("name") or ""), r) for r in rows if isinstance(r, dict)]
    else:
        return {}
    return {k: row for key, row in items if isinstance(row, dict)
            for k in {key, key[:12], str(row.get("id", ""))[:12], str(row.get("name", ""))} - {""}}


def report_of(source: Any) -> Report:
    """The report itself, or the one ``source`` publishes as ``.report`` (the daemon)."""
    return source if isinstance(source, Report) else source.report


def placement_part(sections: Any, key: str) -> dict[str, Any]:
    """Part ``key`` of placement's section (``pools``: its per-pool admission verdicts;
    ``oom``), or {} when the pass published none."""
    placement = sections.get("placement") if hasattr(sections, "get") else None
    part = placement.get(key) if isinstance(placement, dict) else None
    return part if isinstance(part, dict) else {}


def add_unlimited(pools: dict[str, dict[str, Any]], rows: list[dict[str, Any]],
                  sections: Any) -> None:
    """Adds to each pool its managed containers without any memory limit, as placement's
    section (``pools.<pool>``) says why: ``unlimited_no_room``, running ones the pool had
    no room for (admission's verdict ``over_budget``); ``settling``, ones given none yet
    because they have not settled (history.settle): not an exhaustion, they get one once
    they have."""
    unlimited = {r["id"]: r["name"] for r in rows
                 if r.get("managed") and r.get("state") == "running"
                 and not r.get("memory_limit_bytes")}
    for pool, row in placement_part(sections, "pools").items():
        if pool not in pools or not isinstance(row, dict):
            continue
        names = sorted({unlimited[a["id"][:12]] for a in row.get("over_budget") or ()
                        if isinstance(a, dict) and str(a.get("id", ""))[:12] in unlimited})
        if names:
            pools[pool]["unlimited_no_room"] = names
        if row.get("settling"):
            pools[pool]["settling"] = sorted(row["settling"])


def oom_summary(rows: list[dict[str, Any]], sections: Any) -> dict[str, Any]:
    """OOM restart loops (managed containers OOM-killed ``rules.OOM_LOOP_KILLS`` times
    within ``rules.OOM_LOOP_WINDOW_S``) and the containers whose own limit placement
    removed to end one: either makes `supctl status` exit 3."""
    released = placement_part(sections, "oom").get("released")
    return {"window_s": rules.OOM_LOOP_WINDOW_S, "kills": rules.OOM_LOOP_KILLS,
            "loops": sorted(r["name"] for r in rows if r.get("oom_loop")),
            "limit_removed": sorted({n for names in (released or {}).values() for n in names})}


def build_health(source: Any) -> dict[str, Any]:
    """GET /health (metrics server and control API): loop and engine, from the report."""
    r = report_of(source)
    age = r.age_s()
    return {"loop_alive": r.loop_alive(), "engine_up": r.engine_up, "ready": r.ready,
            "last_pass_age_s": round(age, 3) if age is not None else None}


def build_status(source: Any) -> dict[str, Any]:
    """The status of report ``source`` (a Report, or the daemon publishing one)."""
    r = report_of(source)
    cfg = r.cfg
    age = r.age_s()
    proc = r.process
    own = ({"rss_bytes": proc.rss_bytes, "cpu_seconds": round(proc.cpu_seconds, 3),
            "threads": proc.threads} if proc is not None else {})
    out: dict[str, Any] = {
        "daemon": {
            "version": __version__, "pid": r.pid,
            "uptime_s": round(time.time() - r.started_at_s, 1),
            "config": cfg.source, "dry_run": cfg.dry_run,
            "tick_s": cfg.tick_s, "passes": r.counts.get("passes", 0),
            "last_pass_age_s": round(age, 3) if age is not None else None,
            "last_pass_duration_s": round(r.last_pass_duration_s, 6),
            "pass_duration_s": r.pass_duration_summary(),
            "loop_alive": r.loop_alive(),
            "config_errors": r.last_config_error,
            "cgroup_version": r.cgroup_version,
            **own,
        },
        "engine": {"up": r.engine_up, "error": r.engine_error, "host": r.engine_host},
    }
    snap = r.snapshot
    if snap is None or r.reserve is None:
        out["ready"] = False
        return out
    h = snap.host
    out["ready"] = True
    out["host"] = {
        "cores": cfg.host.cores, "memory_total_bytes": h.memory_total_bytes,
        "memory_available_bytes": h.memory_available_bytes,
        "cpu_busy_ratio": [round(x, 4) for x in h.cpu_busy_ratio],
        "pressure": {k: {"some_avg10": p.some_avg10, "full_avg10": p.full_avg10}
                     for k, p in h.pressure.items()},
    }
    out["reserve"] = r.reserve.to_dict()
    pools = {name: p.to_dict() for name, p in r.pools.items()}
    out["pools"] = pools
    out["classes"] = {name: {"cpuset": c.cpuset or "any", "pool": c.pool, "priority": c.priority,
                             "cores": len(c.cores) if c.cores is not None else cfg.host.cores,
                             "memory_limit_bytes": c.memory_limit_bytes,
                             "ports": f"{c.ports[0]}-{c.ports[1]}" if c.ports else "",
                             "protected": c.protected, "hibernate": c.hibernate}
                      for name, c in cfg.classes.items()}
    sections = r.sections
    idle = hibernation_rows(sections.get("hibernation"))
    cpu = container_cpu_percents(snap, r.prev_snapshot)
    rows = [container_row(c, cfg, snap.time_s, cpu.get(c.info.id),
                          idle.get(c.info.short_id) or idle.get(c.info.name) or {})
            for c in snap.containers]
    out["containers"] = rows
    add_unlimited(pools, rows, sections)
    for name, section in sections.items():
        if section is not None:
            out[name] = section
    out["oom"] = oom_summary(rows, sections)
    out["actions"] = [a.to_dict() for a in r.recent_actions]
    return out
