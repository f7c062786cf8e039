"""Prometheus exposition (Rules 1.4, 7.1): a custom collector that yields fresh metric
families from the latest pass's report on every scrape, so a container that disappears
leaves no stale series. The scrape thread reads only that report: no Docker call, no
file (the daemon's own process_* figures are read once per pass on the loop thread, and
the components' families are computed there too, right after the pass).

Names follow node_exporter and cAdvisor where the meaning is the same, under the prefix
``resource_supervisor_``: node_cpu_seconds_total -> resource_supervisor_host_cpu_seconds_total,
container_memory_working_set_bytes -> resource_supervisor_container_memory_working_set_bytes.
GET /metrics writes the families with ``exposition.render`` (the text format, faster than
prometheus_client's writer); components add theirs through ``Component.collect``.
"""

from __future__ import annotations

import json
import logging
import platform
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily, Metric)
from prometheus_client.samples import Sample

from supervisor import __version__
from supervisor.model import rules
from supervisor.model.pools import container_limit_bytes, pool_of
from supervisor.model.snapshot import LIVE_STATES
from supervisor.publish.exposition import render
# The tick histogram lives with the report (DurationHistogram: also hibernation's).
from supervisor.publish.report import DurationHistogram, Report
from supervisor.publish.status import health_label

if TYPE_CHECKING:  # pragma: no cover
    from supervisor.model.snapshot import HostSample
    from supervisor.policy.tick import Tick

    Pass = Tick | Report  # what a pass saw: the families read the same fields of either

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "resource_supervisor_"

CONTAINER_LABELS = ["name", "id", "class", "pool"]
# Docker's container states plus ours: "hibernated" replaces "paused" or "exited" for a
# container the hibernation component holds. One series per container, its state as a
# label (a state change ends the old series; Prometheus marks it stale at once).
CONTAINER_STATES = ("created", "running", "paused", "hibernated", "restarting", "removing",
                    "exited", "dead")
# What resource_supervisor_container_health says (publish.status.health_label).
HEALTH_STATES = ("healthy", "unhealthy", "starting", "none", "hibernated")
# /proc/stat modes, as node_exporter labels them.
CPU_MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def label_value(v: Any) -> str:
    """Any text as a label value that encodes as UTF-8: a lone surrogate (from a name
    decoded with surrogateescape, or a JSON "\\ud800") would otherwise fail the whole
    scrape when the exposition is encoded. Quotes, backslashes and newlines are escaped
    by the exposition writer."""
    s = str(v)
    if s.isascii():
        return s
    return s.encode("utf-8", "replace").decode("utf-8")


# ---------------------------------------------------------------------- families

def _add(fam: Metric, labels: dict[str, str], value: float) -> None:
    """``fam.add_metric`` for a label dict the caller builds once and shares between
    families (add_metric makes a dict per sample); ``_total`` added for counters, as
    add_metric does."""
    fam.samples.append(Sample(fam.name + "_total" if fam.type == "counter" else fam.name,
                              labels, value))


def _counter(name: str, doc: str, labels: list[str] | None = None,
             value: float | None = None) -> CounterMetricFamily:
    return CounterMetricFamily(PREFIX + name, doc, labels=labels, value=value)


def _gauge(name: str, doc: str, labels: list[str] | None = None,
           value: float | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, doc, labels=labels, value=value)


def _by_label(fam: Metric, counts: Mapping[str, float]) -> Metric:
    """``fam`` with one sample per key of ``counts``, in key order."""
    for key, n in sorted(counts.items()):
        fam.add_metric([label_value(key)], n)
    return fam


def _add_levels(fam: GaugeMetricFamily, labels: list[str], level: int) -> None:
    """One sample per state of the rule book, 1 for ``level`` (the current one)."""
    for i, name in enumerate(rules.LEVEL_NAMES):
        fam.add_metric([*labels, name], 1.0 if level == i else 0.0)


def host_families(h: "HostSample") -> Iterator[Metric]:
    cpu = _counter("host_cpu_seconds_total",
                   "Seconds each core spent in each mode (node_cpu_seconds_total)",
                   ["cpu", "mode"])
    for i, modes in enumerate(h.cpu_seconds):
        core = str(i)
        for mode in CPU_MODES:
            if mode in modes:
                cpu.add_metric([core, mode], modes[mode])
    yield cpu
    yield _gauge("host_memory_total_bytes", "Host memory, MemTotal of /proc/meminfo",
                 value=h.memory_total_bytes)
    yield _gauge("host_memory_available_bytes",
                 "Host memory available without swapping, MemAvailable of /proc/meminfo",
                 value=h.memory_available_bytes)
    disk = [
        (_counter("host_disk_read_bytes_total", "Bytes read from each disk", ["device"]), "read_bytes"),
        (_counter("host_disk_written_bytes_total", "Bytes written to each disk", ["device"]), "write_bytes"),
        (_counter("host_disk_reads_completed_total", "Reads completed on each disk", ["device"]), "read_ops"),
        (_counter("host_disk_writes_completed_total", "Writes completed on each disk", ["device"]), "write_ops"),
    ]
    for dev, io in sorted(h.disks.items()):
        lv = [label_value(dev)]
        for fam, attr in disk:
            fam.add_metric(lv, getattr(io, attr))
    for fam, _ in disk:
        yield fam
    rx = _counter("host_network_receive_bytes_total", "Bytes received on each interface", ["device"])
    tx = _counter("host_network_transmit_bytes_total", "Bytes sent on each interface", ["device"])
    for dev, io in sorted(h.nets.items()):
        lv = [label_value(dev)]
        rx.add_metric(lv, io.rx_bytes)
        tx.add_metric(lv, io.tx_bytes)
    yield rx
    yield tx
    stalled = _counter("host_pressure_stalled_seconds_total",
                       "PSI total stall time by resource; some: at least one task stalled, "
                       "full: all non-idle tasks stalled (/proc/pressure/*)",
                       ["resource", "kind"])
    avg10 = _gauge("host_pressure_avg10_ratio",
                   "PSI share of the last 10 s with stalled tasks, 0-1 (avg10 / 100)",
                   ["resource", "kind"])
    for res, p in sorted(h.pressure.items()):
        kinds = [("some", p.some_total_us, p.some_avg10)]
        # System-wide CPU "full" is undefined and reads zero (Documentation/accounting/psi.rst).
        if res != "cpu":
            kinds.append(("full", p.full_total_us, p.full_avg10))
        for kind, total_us, a10 in kinds:
            stalled.add_metric([res, kind], total_us / 1e6)
            avg10.add_metric([res, kind], a10 / 100.0)
    yield stalled
    yield avg10


def container_families(tick: "Pass", hibernated: Iterable[str] = frozenset()) -> Iterator[Metric]:
    cfg = tick.cfg
    L = CONTAINER_LABELS
    managed = _gauge("container_managed", "1 when the supervisor manages this container", L)
    state = _gauge("container_state", "Always 1; the label state is the container's state: "
                   + ", ".join(CONTAINER_STATES) + " (hibernated: held by the supervisor while "
                   "idle, Rule 6.3)", L + ["state"])
    cpuset = _gauge("container_cpuset_info", "The cores the container may run on", L + ["cpuset"])
    limit = _gauge("container_spec_memory_limit_bytes",
                   "Memory limit of a live container; 0 = no limit (Rule 1.1)", L)
    reservation = _gauge("container_spec_memory_reservation_limit_bytes",
                         "Memory reservation (soft limit) of a live container; 0 = none", L)
    wss = _gauge("container_memory_working_set_bytes",
                 "Memory usage minus inactive file pages, as cAdvisor counts it", L)
    usage = _gauge("container_memory_usage_bytes", "Memory usage including page cache", L)
    cpu = _counter("container_cpu_usage_seconds_total", "CPU time consumed", L)
    thr = _counter("container_cpu_cfs_throttled_seconds_total",
                   "Time the container was throttled by its CPU quota", L)
    rx = _counter("container_network_receive_bytes_total",
                  "Bytes received on the container's interfaces (loopback excluded)", L)
    tx = _counter("container_network_transmit_bytes_total",
                  "Bytes sent on the container's interfaces (loopback excluded)", L)
    health = _gauge("container_health", "Always 1; the label health is the container's health: "
                    + ", ".join(HEALTH_STATES) + " (none: no health check; hibernated: held "
                    "by the supervisor, which Docker reports as unhealthy)", L + ["health"])
    # OOM restart loops (issue 14): Docker's kill history per container, which a restart's
    # new cgroup does not reset (the cgroup counters do).
    oom_kills = _gauge("container_oom_kills_recent",
                       f"OOM kills of the container in the last "
                       f"{rules.OOM_LOOP_WINDOW_S / 60:.0f} min (Docker's oom/die events, "
                       "State.OOMKilled)", L)
    oom_loop = _gauge("container_oom_loop",
                      f"1 when the container was OOM-killed {rules.OOM_LOOP_KILLS} times or "
                      f"more in the last {rules.OOM_LOOP_WINDOW_S / 60:.0f} min", L)
    restarts = _gauge("container_restarts", "Docker's RestartCount of the container", L)
    now_s = tick.snapshot.time_s
    # One label dict per container, shared by its samples (not add_metric's dict per
    # sample): ~1300 samples for 110 containers, and the writer escapes each dict once.
    for c in tick.snapshot.containers:
        info = c.info
        lv = {"name": label_value(info.name), "id": info.short_id,
              "class": label_value(c.class_name), "pool": label_value(pool_of(c, cfg))}
        _add(managed, lv, 1.0 if c.managed else 0.0)
        _add(restarts, lv, info.restart_count)
        kills = rules.oom_kills_within(info.oom_kill_times_s, now_s)
        _add(oom_kills, lv, kills)
        _add(oom_loop, lv, 1.0 if kills >= rules.OOM_LOOP_KILLS else 0.0)
        _add(state, {**lv, "state": "hibernated" if info.id in hibernated
                     else label_value(info.state)}, 1.0)
        _add(health, {**lv, "health": health_label(info, info.id in hibernated)}, 1.0)
        if info.state not in LIVE_STATES:
            continue
        s = c.stats
        _add(cpuset, {**lv, "cpuset": label_value(info.cpuset_cpus or (s.cpuset_cpus if s else ""))}, 1.0)
        _add(limit, lv, container_limit_bytes(c))
        _add(reservation, lv, info.memory_reservation_bytes
            or (s.memory_low_bytes if s and s.memory_low_bytes else 0))
        if s is not None:
            _add(wss, lv, s.memory_working_set_bytes)
            _add(usage, lv, s.memory_usage_bytes)
            _add(cpu, lv, s.cpu_usage_s)
            _add(thr, lv, s.cpu_throttled_s)
        if c.net is not None:
            _add(rx, lv, c.net.rx_bytes)
            _add(tx, lv, c.net.tx_bytes)
    yield from (managed, state, health, cpuset, limit, reservation, wss, usage, cpu, thr, rx, tx,
                oom_kills, oom_loop, restarts)


def pool_families(tick: "Pass") -> Iterator[Metric]:
    fams = [
        (_gauge("pool_budget_bytes", "Memory budget of the pool (Rule 1.3)", ["pool"]),
         lambda p: p.budget_bytes),
        (_gauge("pool_allocated_bytes",
                "Sum of the memory limits of the pool's live managed containers", ["pool"]),
         lambda p: p.allocated_bytes),
        (_gauge("pool_used_bytes", "Sum of the working sets of the pool's live managed containers",
                ["pool"]), lambda p: p.used_bytes),
        (_gauge("pool_utilisation_ratio", "Used / budget", ["pool"]), lambda p: p.utilisation),
        (_gauge("pool_allocation_ratio", "Allocated / budget", ["pool"]),
         lambda p: p.allocation_ratio),
        (_gauge("pool_containers", "Live managed containers drawing from the pool", ["pool"]),
         lambda p: len(p.containers)),
    ]
    # The pool's state from the rule book (rules.pool_level), as `supctl status` shows it
    # and the ladder acts on it: one series per state, 1 for the current one (as
    # kube-state-metrics writes a phase), so `pool_state{state="over"} == 1` is the alert.
    state = _gauge("pool_state", "1 for the pool's current state (ok, warn, critical, over: "
                   "used or allocated at or past the budget), 0 for the others", ["pool", "state"])
    for name, p in sorted(tick.pools.items()):
        lv = [label_value(name)]
        for fam, value in fams:
            fam.add_metric(lv, value(p))
        _add_levels(state, lv, p.level)
    for fam, _ in fams:
        yield fam
    yield state
    yield _gauge("emergency_reserve_bytes", "Memory never allocated to any pool (Rule 1.3)",
                 value=tick.reserve.reserve_bytes)
    yield _gauge("emergency_reserve_breached",
                 "1 when the host's available memory is at or inside the emergency reserve",
                 value=1.0 if tick.reserve.breached else 0.0)
    rstate = _gauge("emergency_reserve_state", "1 for the reserve's current state (ok, warn, "
                    "critical, over: available memory at or inside the reserve), 0 for the others",
                    ["state"])
    _add_levels(rstate, [], tick.reserve.level)
    yield rstate


def process_families(proc: Any) -> Iterator[Metric]:
    """The daemon's own footprint under prometheus_client's ProcessCollector names, from
    figures the loop read (``adapters.procself``), not from /proc at scrape time."""
    if proc is None:
        return
    yield GaugeMetricFamily("process_virtual_memory_bytes", "Virtual memory size in bytes.",
                            value=float(proc.virtual_bytes))
    yield GaugeMetricFamily("process_resident_memory_bytes", "Resident memory size in bytes.",
                            value=float(proc.rss_bytes))
    yield GaugeMetricFamily("process_start_time_seconds",
                            "Start time of the process since unix epoch in seconds.",
                            value=proc.start_time_s)
    yield CounterMetricFamily("process_cpu_seconds_total",
                              "Total user and system CPU time spent in seconds.",
                              value=proc.cpu_seconds)
    if proc.open_fds is not None:
        yield GaugeMetricFamily("process_open_fds", "Number of open file descriptors.",
                                value=float(proc.open_fds))
    if proc.max_fds is not None:
        yield GaugeMetricFamily("process_max_fds", "Maximum number of open file descriptors.",
                                value=float(proc.max_fds))


def own_families(r: Report) -> Iterator[Metric]:
    """The daemon's own families: build, engine, mode, reload, the pass histogram and
    the long-lived counts, as the report copied them."""
    info = _gauge("build_info", "Version of resource-supervisor and of its Python",
                  ["version", "python_version"])
    info.add_metric([__version__, platform.python_version()], 1.0)
    yield info
    yield _gauge("docker_engine_up", "1 when the Docker engine answers, 0 when unreachable",
                 value=1.0 if r.engine_up else 0.0)
    yield _gauge("dry_run", "1 when the daemon only reports what it would do",
                 value=1.0 if r.cfg.dry_run else 0.0)
    yield _gauge("config_last_reload_successful",
                 "0 when the last reload was refused (the previous config runs on)",
                 value=0.0 if r.last_config_error else 1.0)
    buckets = list(r.tick_buckets) or DurationHistogram().cumulative()[0]
    yield HistogramMetricFamily(PREFIX + "tick_duration_seconds",
                                "Wall time of one pass: sample, plan, act, publish",
                                buckets=buckets, sum_value=r.tick_sum_s)
    actions = _counter("actions_total", "Actions by kind and outcome "
                       "(ok, failed, skipped, dry_run)", ["kind", "outcome"])
    journal_failed = 0
    for (kind, outcome), n in sorted(r.action_counts.items()):
        if kind == "journal":
            journal_failed += n
            continue
        actions.add_metric([label_value(kind), label_value(outcome)], n)
    yield actions
    yield _counter("journal_write_failures_total", "Action results the journal failed to record",
                   value=journal_failed)
    yield _by_label(_counter("breaches_total", "Breaches seen, by kind (counted at onset)",
                             ["kind"]), r.breaches)
    for name, doc, counts in (
            ("daemon_events_total", "The daemon loop's own counts (passes, errors, reloads...)",
             r.counts),
            ("sampler_events_total", "Sampler counts (full reads, vanished or unreadable cgroups)",
             r.sampler_counts),
            ("inventory_events_total", "Inventory counts (engine events, relists, reconnects)",
             r.inventory_counts)):
        yield _by_label(_counter(name, doc, ["event"]), counts)
    yield from process_families(r.process)


def pass_families(r: Report) -> Iterator[Metric]:
    """What the report's pass saw: host, containers, pools and reserve."""
    if r.snapshot is None:
        return
    yield _gauge("last_pass_timestamp_seconds", "When the latest pass sampled the host",
                 value=r.now)
    yield from host_families(r.snapshot.host)
    yield from container_families(r, r.hibernated_ids)
    yield from pool_families(r)


# Written after the components' families: a component may not take these names either.
_ERROR_FAMILIES = frozenset({PREFIX + "collect_errors", PREFIX + "collect_duration_seconds"})


def exporter_family_names(r: Report) -> frozenset[str]:
    """The names of the families the exporter writes itself from report ``r`` (with a
    snapshot): a component's family of one of these names would make the exposition
    invalid, and is dropped. The names do not depend on the figures."""
    return frozenset(f.name for f in (*own_families(r), *pass_families(r))) | _ERROR_FAMILIES


class SupervisorCollector:
    """Reads the latest report, one per scrape whatever the loop does meanwhile."""

    def __init__(self, get_report: Callable[[], Report | None]):
        self.get_report = get_report

    def collect(self) -> Iterable[Metric]:
        r = self.get_report()
        if r is None:
            return
        t0 = time.perf_counter()
        fams = [*own_families(r), *pass_families(r)]
        exporter_s = time.perf_counter() - t0
        yield from fams
        yield from r.component_families()
        yield _by_label(_counter("collect_errors_total",
                                 "Passes where a component's metrics failed", ["component"]),
                        r.collect_errors)
        took = _gauge("collect_duration_seconds", "Time spent gathering each part's metrics "
                      "(exporter: host, containers, pools, in this scrape; others: each "
                      "component, right after the latest pass, and when first scraped for "
                      "the part it builds then)", ["component"])
        took.add_metric(["exporter"], exporter_s)
        for comp, secs in r.collect_s.items():
            took.add_metric([label_value(comp)], secs)
        yield took


class _Handler(BaseHTTPRequestHandler):
    server: "MetricsServer"

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            try:
                body = render(self.server.registry.collect())
            except Exception:  # noqa: BLE001 - answer 500 and keep serving
                log.exception("rendering /metrics failed")
                self._send(500, b"metrics rendering failed; see the daemon's log\n", "text/plain")
                return
            self._send(200, body, CONTENT_TYPE)
        elif path == "/health":
            h = self.server.health()
            self._send(200 if h.get("loop_alive") else 503, json.dumps(h).encode(),
                       "application/json")
        else:
            self._send(404, b"not found: try /metrics or /health\n", "text/plain")

    def _send(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args) -> None:  # quiet: scrapes are not news
        pass


class MetricsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, listen: str, registry: CollectorRegistry, health):
        host, _, port = listen.rpartition(":")
        self.registry = registry
        self.health = health
        super().__init__((host.strip("[]"), int(port)), _Handler)

    def start(self) -> threading.Thread:
        t = threading.Thread(target=self.serve_forever, name="metrics", daemon=True)
        t.start()
        return t


def make_registry(get_report: Callable[[], Report | None]) -> CollectorRegistry:
    """The registry GET /metrics renders: one collector reading the latest report (the
    daemon's own process_* figures among its families)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(SupervisorCollector(get_report))
    return reg
