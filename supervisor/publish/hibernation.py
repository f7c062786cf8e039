"""Hibernation's part of status and /metrics, and its control-API replies: pure
functions of the component's state, copied once (``HibernationView``) so nothing here
reads a file or takes the component's locks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from supervisor.model.actions import ActionResult
from supervisor.model.activity import Track
from supervisor.model.sockets import TcpSocket
from supervisor.policy.hibernation import Record
from supervisor.publish.metrics import DurationHistogram

if TYPE_CHECKING:  # pragma: no cover
    from prometheus_client.core import Metric

    from supervisor.policy.tick import Tick

LATENCY_BUCKETS_S = (0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


class LatencyHistogram(DurationHistogram):
    def __init__(self, buckets: Sequence[float] = LATENCY_BUCKETS_S):
        super().__init__(buckets)
        self._frozen: tuple[tuple, LatencyHistogram] | None = None

    def frozen(self) -> "LatencyHistogram":
        """A copy that no longer changes (what a report's deferred families read); the
        same one until a wake is observed."""
        with self._lock:
            now = (tuple(self._counts), self._sum_s)
        if self._frozen is None or self._frozen[0] != now:
            out = LatencyHistogram(self.bounds_s)
            out._counts, out._sum_s = list(now[0]), now[1]
            self._frozen = (now, out)
        return self._frozen[1]

    def family(self, name: str, doc: str) -> HistogramMetricFamily:
        buckets, sum_s = self.cumulative()
        return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=sum_s)


@dataclass(frozen=True)
class HibernationView:
    """A copy of the component's state at one moment."""

    records: tuple[Record, ...]
    tracks: dict[str, Track]
    watch_errors: dict[str, str]  # cid -> why its sockets are not watched ("" = watched)
    hibernations: dict[str, int]  # by mode
    wakes: dict[str, int]  # by trigger
    last_wake: dict[str, Any]
    awaiting_ready: dict[str, tuple[str, float]]  # cid -> (name, seconds waited)
    released_bytes_total: int
    swap_total_bytes: int | None
    watcher_alive: bool = False
    watched: int = 0
    polls: int = 0
    watch_cpu_s: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)


def status_section(tick: "Tick", v: HibernationView) -> dict[str, Any]:
    """``containers``: one row per container we hibernated or that may hibernate
    (``hibernated``, ``idle_s``: read by the status table)."""
    cfg = tick.cfg
    h = cfg.settings.hibernation
    now = tick.now
    by_id = {c.info.id: c for c in tick.snapshot.containers}
    rows: list[dict[str, Any]] = []
    for r in sorted(v.records, key=lambda r: r.since_s):
        rows.append({
            "id": r.id[:12], "name": r.name, "class": r.class_name, "hibernated": True,
            "mode": r.mode, "phase": r.phase, "since_s": r.since_s,
            "idle_s": round(max(0.0, now - r.since_s), 1),
            "trigger": r.trigger, "reason": r.reason, "released_bytes": r.reclaimed_bytes,
            "memory": r.memory_note,
            "resident_bytes": r.resident.get("total_bytes"),
            "resident": dict(r.resident),
            "watching": ([TcpSocket.from_dict(t).describe() for t in r.targets]
                         if r.mode == "pause" else []),
            "watch_error": v.watch_errors.get(r.id, "") if r.mode == "pause" else "",
        })
    idle_rows = []
    for cid, t in v.tracks.items():
        c = by_id.get(cid)
        klass = cfg.classes.get(c.class_name) if c else None
        if c is None or klass is None:
            continue
        idle_rows.append({
            "id": cid[:12], "name": c.info.name, "class": c.class_name, "hibernated": False,
            "mode": klass.hibernate_mode, "idle_s": round(max(0.0, now - t.idle_since_s), 1),
            "idle_after_s": klass.idle_after_s, "last_busy": t.busy_reason,
            "last_busy_ago_s": round(now - t.busy_at_s, 1) if t.busy_at_s is not None else None})
    rows += sorted(idle_rows, key=lambda x: -x["idle_s"])
    note = ("no swap on this host: hibernation releases page cache only; the anonymous "
            "memory and shmem of a paused container stay resident (stop mode releases all)"
            if v.swap_total_bytes == 0 else "")
    return {
        "enabled": h.enabled, "poll_interval_s": h.poll_interval,
        "thresholds": {"cpu_idle_cores": h.cpu_idle_cores,
                       "net_idle_bytes_per_s": h.net_idle_bytes_per_s,
                       "blkio_idle_bytes_per_s": h.blkio_idle_bytes_per_s},
        "swap_total_bytes": v.swap_total_bytes, "memory_note": note,
        "hibernated": len(v.records),
        "containers": rows,
        "hibernations": dict(v.hibernations),
        "released_bytes_total": v.released_bytes_total,
        "wakes": {"total": sum(v.wakes.values()), "by_trigger": dict(v.wakes), "last": v.last_wake,
                  "awaiting_ready": [{"id": cid[:12], "name": name, "for_s": round(for_s, 1)}
                                     for cid, (name, for_s) in v.awaiting_ready.items()]},
        "watcher": {"alive": v.watcher_alive, "watched": v.watched, "polls": v.polls,
                    "cpu_s": round(v.watch_cpu_s, 4), "errors": v.counts.get("watch_errors", 0)},
        "counts": dict(v.counts),
    }


def metric_families(tick: "Tick", v: HibernationView, wake_latency: LatencyHistogram,
                    ready_latency: LatencyHistogram) -> Iterator["Metric"]:
    g = GaugeMetricFamily("resource_supervisor_hibernated_containers",
                          "Containers hibernated by the supervisor, by mode", labels=["mode"])
    for mode in ("pause", "stop"):
        g.add_metric([mode], float(sum(1 for r in v.records if r.mode == mode)))
    yield g
    by_id = {c.info.id: c for c in tick.snapshot.containers}
    idle = GaugeMetricFamily("resource_supervisor_container_idle_seconds",
                             "How long a container that may hibernate has been idle",
                             labels=["id", "name", "class"])
    for cid, t in v.tracks.items():
        c = by_id.get(cid)
        if c is not None:
            idle.add_metric([cid[:12], c.info.name, c.class_name],
                            max(0.0, tick.now - t.idle_since_s))
    yield idle
    hibs = CounterMetricFamily("resource_supervisor_hibernations",
                               "Containers hibernated, by mode", labels=["mode"])
    for mode in ("pause", "stop"):
        hibs.add_metric([mode], float(v.hibernations.get(mode, 0)))
    yield hibs
    wakes = CounterMetricFamily("resource_supervisor_hibernation_wakes",
                                "Wakes of hibernated containers, by trigger", labels=["trigger"])
    for trig in sorted(set(v.wakes) | {"connection", "api"}):
        wakes.add_metric([trig], float(v.wakes.get(trig, 0)))
    yield wakes
    yield wake_latency.family(
        "resource_supervisor_hibernation_wake_latency_seconds",
        "From the trigger (a client waiting, a request) to the container running again")
    yield ready_latency.family(
        "resource_supervisor_hibernation_wake_ready_seconds",
        "From the trigger to the container ready (healthy, for one with a health check)")
    yield CounterMetricFamily("resource_supervisor_hibernation_released_bytes",
                              "Memory released by hibernating containers in pause mode",
                              value=float(v.released_bytes_total))
    yield CounterMetricFamily("resource_supervisor_hibernation_watch_cpu_seconds",
                              "CPU time spent watching hibernated containers for clients",
                              value=v.watch_cpu_s)


def api_reply(result: ActionResult, ok_key: str) -> tuple[int, dict]:
    """The control API's answer to a hibernate or wake request."""
    body = {"name": result.action.name, "id": result.action.target[:12],
            "outcome": result.outcome, "detail": result.detail, **result.after}
    if result.dry_run:
        return 200, {**body, "dry_run": True}
    if result.ok:
        return 200, {**body, ok_key: not result.skipped}
    if result.detail.startswith("engine unavailable"):
        return 503, {**body, "error": result.detail}
    return 409, {**body, "error": result.detail}
