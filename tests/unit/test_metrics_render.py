"""/metrics rendered from hand-made ticks through the pass's report: the families and
their labels, no stale series after a container disappears, a true cumulative tick
histogram, breach onsets, the pool and reserve states of the rule book, the daemon's own
process_* figures read once per pass, and hostile label values that still parse as the
text exposition format."""

import re
from collections import Counter
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.utils import floatToGoString
from prometheus_client.parser import text_string_to_metric_families

import _handmade as handmade
from supervisor.model.actions import Action, Outcome
from supervisor.act.actuator import Actuator
from supervisor.act.component import Component
from supervisor.adapters.procself import ProcSelf
from supervisor.publish.exposition import go_float, render
from supervisor.model.config import HostFacts, load_config
from supervisor.publish.metrics import CONTAINER_STATES, make_registry
from supervisor.publish.publisher import ReportBuilder
from supervisor.publish.report import (Deferred, DurationHistogram, PassMetrics,
                                       breach_conditions)
from supervisor.model.snapshot import (CgroupStats, ContainerInfo, ContainerSample, DiskIO, NetIO,
                                       Pressure)

MIB = 2**20
GIB = 2**30
ROOT = Path(__file__).resolve().parent.parent.parent
PROM = ROOT / "config" / "prometheus"


def make_cfg(pools=None, classes=None):
    pools = pools or {"infrastructure": {"budget": "1GiB"}, "standard": {"budget": "256MiB"}}
    classes = classes or {
        "infrastructure": {"pool": "infrastructure", "cpuset": "0", "memory_limit": "128MiB"},
        "standard": {"pool": "standard", "memory_limit": "64MiB", "memory_min": "8MiB"}}
    return load_config(data={"host": {"layout": "exact"}, "reserve": {"emergency": "1GiB"},
                             "pools": pools, "classes": classes,
                             "manage": {"default_class": next(iter(classes))}},
                       host=HostFacts(cores=2, memory_bytes=8 * GIB))


def host_sample(available_bytes=6 * GIB, disks=None, nets=None):
    """The factory's host with CPU, disk, network and pressure figures to render."""
    modes = {"user": 10.5, "nice": 0.0, "system": 4.25, "idle": 100.0, "iowait": 1.0,
             "irq": 0.0, "softirq": 0.5, "steal": 0.0}
    return handmade.host(
        2, available_bytes, cpu_seconds=(modes, {k: v * 2 for k, v in modes.items()}),
        cpu_busy_ratio=(0.1, 0.2),
        disks=disks if disks is not None else {"vda": DiskIO(4096, 8192, 3, 5)},
        nets=nets if nets is not None else {"eth0": NetIO(1000, 2000, 10, 20)},
        pressure={"cpu": Pressure(some_avg10=12.5, some_total_us=3_000_000),
                  "memory": Pressure(some_avg10=1.0, some_total_us=500_000,
                                     full_avg10=0.5, full_total_us=250_000)})


def container(cid, name, state="running", limit=64 * MIB, wss=10 * MIB, class_label=None,
              managed=True, cpuset="0", stats=True):
    labels = {"supervisor.class": class_label} if class_label else {}
    info = ContainerInfo(id=cid * 64, name=name, image="busybox", labels=labels, state=state,
                         pid=100 if state in ("running", "paused") else 0, cpuset_cpus=cpuset,
                         memory_limit_bytes=limit, memory_reservation_bytes=limit // 2)
    st = CgroupStats(version=1, path="/x", memory_usage_bytes=wss + MIB,
                     memory_working_set_bytes=wss, memory_limit_bytes=limit or None,
                     cpu_usage_s=2.5, cpu_throttled_s=0.25, cpuset_cpus=cpuset) \
        if stats and state in ("running", "paused") else None
    cls = class_label or "standard"
    return ContainerSample(info=info, class_name=cls, class_reason="label" if class_label else "default",
                           managed=managed, stats=st,
                           net=NetIO(111, 222, 1, 2) if st else None)


def make_tick(cfg, containers, host=None):
    return handmade.tick(cfg, containers, host_sample=host or host_sample(), reconcile=False)


class DaemonView:
    """What a daemon hands the report builder after a pass, without a host behind it:
    ``publish()`` makes the report a pass would, and scrapes read only that."""

    def __init__(self, tick, components=(), engine_up=True):
        self.tick = tick
        self.cfg = tick.cfg
        self.components = list(components)
        self.engine_up = engine_up
        self.actuator = Actuator(None)
        self.breaches: Counter = Counter()
        self.counts = Counter(passes=7)
        self.builder = ReportBuilder(self.components, self.breaches, read_process=ProcSelf().read)
        self.report = None
        self.publish()

    def publish(self):
        self.report = self.builder.build(
            cfg=self.cfg, seq=self.counts["passes"], stale_after_s=10.0, tick=self.tick,
            engine_up=self.engine_up, counts=self.counts,
            sampler_counts=Counter(cgroup_vanished=2), inventory_counts=Counter(relists=1),
            action_counts=self.actuator.counts, recent_actions=self.actuator.recent)
        return self.report


def daemon_view(tick, components=(), engine_up=True) -> DaemonView:
    return DaemonView(tick, components, engine_up)


def registry(view: DaemonView):
    return make_registry(lambda: view.report)


def scrape(view) -> str:
    """What GET /metrics answers after a pass (the view publishes its report first)."""
    view.publish()
    return render(registry(view).collect()).decode("utf-8")


def without_scrape_time(text: str) -> str:
    return re.sub(r'^resource_supervisor_collect_duration_seconds\{component="exporter"\} .*$',
                  "", text, flags=re.M)


def samples(text: str) -> dict[str, list]:
    """Family name -> its samples, as Prometheus' text parser reads them."""
    out: dict[str, list] = {}
    for fam in text_string_to_metric_families(text):
        out.setdefault(fam.name, []).extend(fam.samples)
    return out


def value(text, metric, /, **labels):
    found = [s.value for fams in samples(text).values() for s in fams
             if s.name == metric and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, f"{metric}{labels}: {found}"
    return found[0]


def types(text: str) -> dict[str, str]:
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))


# ---------------------------------------------------------------------- families

def test_host_families_follow_node_exporter_names_and_units():
    cfg = make_cfg()
    text = scrape(daemon_view(make_tick(cfg, [])))
    t = types(text)
    assert t["resource_supervisor_host_cpu_seconds_total"] == "counter"
    assert value(text, "resource_supervisor_host_cpu_seconds_total", cpu="1", mode="system") == 8.5
    cpu_series = [s for s in samples(text)["resource_supervisor_host_cpu_seconds"]]
    assert len(cpu_series) == 2 * 8  # every core x every /proc/stat mode
    assert value(text, "resource_supervisor_host_memory_total_bytes") == 8 * GIB
    assert value(text, "resource_supervisor_host_memory_available_bytes") == 6 * GIB
    assert value(text, "resource_supervisor_host_disk_written_bytes_total", device="vda") == 8192
    assert value(text, "resource_supervisor_host_disk_writes_completed_total", device="vda") == 5
    assert value(text, "resource_supervisor_host_network_transmit_bytes_total", device="eth0") == 2000
    assert value(text, "resource_supervisor_host_pressure_stalled_seconds_total",
                 resource="memory", kind="full") == 0.25
    assert value(text, "resource_supervisor_host_pressure_avg10_ratio",
                 resource="cpu", kind="some") == 0.125
    # System-wide CPU "full" is undefined in PSI: no series rather than a fake zero.
    assert not [s for s in samples(text)["resource_supervisor_host_pressure_avg10_ratio"]
                if s.labels == {"resource": "cpu", "kind": "full"}]
    assert t["resource_supervisor_host_pressure_avg10_ratio"] == "gauge"


def test_container_families_carry_name_id_class_and_pool():
    cfg = make_cfg()
    a = container("a", "postgres-main", class_label="infrastructure", limit=128 * MIB, wss=40 * MIB)
    b = container("b", "worker-1", limit=0, wss=5 * MIB, cpuset="")
    text = scrape(daemon_view(make_tick(cfg, [a, b])))
    la = {"name": "postgres-main", "id": "a" * 12, "class": "infrastructure", "pool": "infrastructure"}
    lb = {"name": "worker-1", "id": "b" * 12, "class": "standard", "pool": "standard"}
    assert value(text, "resource_supervisor_container_memory_working_set_bytes", **la) == 40 * MIB
    assert value(text, "resource_supervisor_container_memory_usage_bytes", **la) == 41 * MIB
    assert value(text, "resource_supervisor_container_spec_memory_limit_bytes", **la) == 128 * MIB
    assert value(text, "resource_supervisor_container_spec_memory_reservation_limit_bytes", **la) == 64 * MIB
    assert value(text, "resource_supervisor_container_spec_memory_limit_bytes", **lb) == 0  # no limit
    assert value(text, "resource_supervisor_container_cpu_usage_seconds_total", **la) == 2.5
    assert value(text, "resource_supervisor_container_cpu_cfs_throttled_seconds_total", **lb) == 0.25
    assert value(text, "resource_supervisor_container_network_receive_bytes_total", **la) == 111
    assert value(text, "resource_supervisor_container_network_transmit_bytes_total", **lb) == 222
    assert value(text, "resource_supervisor_container_cpuset_info", cpuset="0", **la) == 1
    assert value(text, "resource_supervisor_container_managed", **lb) == 1
    t = types(text)
    assert t["resource_supervisor_container_cpu_usage_seconds_total"] == "counter"
    assert t["resource_supervisor_container_memory_working_set_bytes"] == "gauge"


def test_every_container_has_one_state_series_and_hibernated_replaces_paused():
    cfg = make_cfg()
    run = container("r", "runner")
    paused = container("p", "frozen", state="paused")
    held = container("h", "sleeper", state="paused")
    gone = container("e", "finished", state="exited")

    class Hibernation(Component):
        name = "hibernation"

        def hibernated_ids(self):
            return {"h" * 64}
    text = scrape(daemon_view(make_tick(cfg, [run, paused, held, gone]),
                              components=[Hibernation(None)]))
    fam = samples(text)["resource_supervisor_container_state"]
    for cname, want in (("runner", "running"), ("frozen", "paused"), ("sleeper", "hibernated"),
                        ("finished", "exited")):
        mine = [(s.labels["state"], s.value) for s in fam if s.labels["name"] == cname]
        assert mine == [(want, 1.0)], cname
        assert want in CONTAINER_STATES
    # An exited container has no spec/usage series: it holds no memory from any pool.
    assert not [s for s in samples(text)["resource_supervisor_container_spec_memory_limit_bytes"]
                if s.labels["name"] == "finished"]


def test_hibernation_component_without_the_method_yet_is_tolerated():
    class Hibernation(Component):
        name = "hibernation"
    cfg = make_cfg()
    text = scrape(daemon_view(make_tick(cfg, [container("p", "frozen", state="paused")]),
                              components=[Hibernation(None)]))
    assert value(text, "resource_supervisor_container_state", name="frozen", state="paused") == 1


def test_pool_and_reserve_families_equal_the_pool_accounting():
    cfg = make_cfg()
    cs = [container("a", "s1", limit=200 * MIB, wss=100 * MIB),
          container("b", "s2", limit=100 * MIB, wss=60 * MIB),
          container("c", "opted-out", limit=900 * MIB, wss=500 * MIB, managed=False)]
    tick = make_tick(cfg, cs, host=host_sample(available_bytes=GIB // 2))
    text = scrape(daemon_view(tick))
    p = tick.pools["standard"]
    assert value(text, "resource_supervisor_pool_budget_bytes", pool="standard") == 256 * MIB
    assert value(text, "resource_supervisor_pool_allocated_bytes", pool="standard") == 300 * MIB
    assert value(text, "resource_supervisor_pool_used_bytes", pool="standard") == 160 * MIB
    assert value(text, "resource_supervisor_pool_utilisation_ratio", pool="standard") == p.utilisation
    assert value(text, "resource_supervisor_pool_allocation_ratio", pool="standard") == 300 / 256
    assert value(text, "resource_supervisor_pool_containers", pool="standard") == 2
    assert value(text, "resource_supervisor_pool_used_bytes", pool="infrastructure") == 0
    assert value(text, "resource_supervisor_emergency_reserve_bytes") == GIB
    assert value(text, "resource_supervisor_emergency_reserve_breached") == 1


def test_a_container_that_disappears_leaves_no_series():
    cfg = make_cfg()
    view = daemon_view(make_tick(cfg, [container("a", "stays"), container("b", "leaves")]))
    reg = registry(view)
    first = render(reg.collect()).decode()
    assert "b" * 12 in first and 'name="leaves"' in first
    view.tick = make_tick(cfg, [container("a", "stays")],
                          host=host_sample(disks={}, nets={"lo": NetIO(1, 1, 1, 1)}))
    # Until the next pass, every scrape writes the same report (but this scrape's time).
    assert without_scrape_time(render(reg.collect()).decode()) == without_scrape_time(first)
    view.publish()
    second = render(reg.collect()).decode()
    assert "b" * 12 not in second and "leaves" not in second
    assert 'name="stays"' in second
    assert 'device="vda"' not in second and 'device="eth0"' not in second  # host devices too


def test_before_the_first_pass_only_the_daemons_own_families_render():
    cfg = make_cfg()
    view = daemon_view(make_tick(cfg, []), engine_up=False)
    view.tick = None
    text = scrape(view)
    assert value(text, "resource_supervisor_docker_engine_up") == 0
    from supervisor import __version__
    assert value(text, "resource_supervisor_build_info", version=__version__) == 1
    assert "resource_supervisor_pool_budget_bytes" not in text
    assert "process_resident_memory_bytes" in text  # the daemon's own RSS


def state_series(text, metric, **labels) -> dict[str, float]:
    return {s.labels["state"]: s.value for fams in samples(text).values() for s in fams
            if s.name == metric and all(s.labels.get(k) == v for k, v in labels.items())}


@pytest.mark.parametrize("used_mib, allocated_mib, want", [
    (100, 100, "over"),  # exactly the budget used: full, no room left (rules.ratio_level)
    (99, 100, "critical"),  # allocated exactly the budget is not over: admission fills it so
    (90, 90, "warn"),
    (10, 101, "over"),  # limits adding up past the budget
    (10, 20, "ok"),
])
def test_pool_state_is_the_rule_books_with_one_series_per_state(used_mib, allocated_mib, want):
    cfg = make_cfg(pools={"infrastructure": {"budget": "1GiB"}, "standard": {"budget": "100MiB"}})
    cs = [container("a", "s1", limit=allocated_mib * MIB, wss=used_mib * MIB)]
    tick = make_tick(cfg, cs)
    assert tick.pools["standard"].state == want
    text = scrape(daemon_view(tick))
    assert state_series(text, "resource_supervisor_pool_state", pool="standard") == {
        s: 1.0 if s == want else 0.0 for s in ("ok", "warn", "critical", "over")}
    assert value(text, "resource_supervisor_pool_used_bytes", pool="standard") == used_mib * MIB
    assert (("pool_used_over_budget", "standard") in breach_conditions(tick)) == (used_mib >= 100)
    assert (("pool_allocated_over_budget", "standard") in breach_conditions(tick)) == (
        allocated_mib > 100)


@pytest.mark.parametrize("available, breached", [(GIB, True), (GIB + 1, False), (GIB - 1, True)])
def test_the_reserve_is_breached_at_exactly_its_size(available, breached):
    tick = make_tick(make_cfg(), [], host=host_sample(available_bytes=available))
    assert tick.reserve.breached is breached
    text = scrape(daemon_view(tick))
    assert value(text, "resource_supervisor_emergency_reserve_breached") == float(breached)
    assert state_series(text, "resource_supervisor_emergency_reserve_state")["over"] == float(breached)
    assert (("reserve", "") in breach_conditions(tick)) is breached


def test_a_scrape_reads_only_the_report(monkeypatch):
    """The daemon's own process_* figures come from the report (read once per pass), the
    components' families too: a scrape opens no file and calls no component."""
    import builtins
    import os

    calls = []

    class Counting(Component):
        name = "counting"

        def collect(self, tick):
            calls.append(tick.now)
            g = GaugeMetricFamily("resource_supervisor_counting", "calls")
            g.add_metric([], len(calls))
            return [g]
    view = daemon_view(make_tick(make_cfg(), [container("a", "s1")]), components=[Counting(None)])
    own = view.report.process
    assert own is not None and own.rss_bytes > 0 and own.open_fds > 0
    reg = registry(view)

    def forbidden(*a, **kw):
        raise AssertionError(f"file access on the scrape thread: {a}")
    with monkeypatch.context() as m:
        for mod, name in ((builtins, "open"), (os, "open"), (os, "listdir"), (os, "scandir"),
                          (os, "stat")):
            m.setattr(mod, name, forbidden)
        texts = [render(reg.collect()).decode() for _ in range(3)]
    assert len(calls) == 1  # once, when the pass's report was built
    for text in texts:
        assert value(text, "process_resident_memory_bytes") == own.rss_bytes
        assert value(text, "process_cpu_seconds_total") == own.cpu_seconds
        assert value(text, "process_open_fds") == own.open_fds
        assert value(text, "resource_supervisor_counting") == 1
    assert types(texts[0])["process_cpu_seconds_total"] == "counter"


def test_process_figures_parse_proc_stat_as_prometheus_client_does():
    from supervisor.adapters.procself import parse_stat
    # The command name may hold spaces and parentheses: fields count from its last ")".
    fields = ["S"] + [str(i) for i in range(4, 53)]
    fields[11], fields[12], fields[17], fields[19], fields[20], fields[21] = (
        "250", "150", "7", "1000", "123456789", "2500")
    text = "4242 (evil) name (x) " + " ".join(fields)
    rss, virt, user, system, threads, start = parse_stat(text, 100.0, 4096, 1_700_000_000.0)
    assert (rss, virt, user, system, threads, start) == (
        2500 * 4096, 123456789, 2.5, 1.5, 7, 1_700_000_010.0)


def test_actions_counted_by_kind_and_outcome_from_the_actuator():
    cfg = make_cfg()
    view = daemon_view(make_tick(cfg, []))
    act = view.actuator
    act.register("alert", lambda a: Outcome(ok=True))
    act.register("stop", lambda a: Outcome(ok=False, detail="refused"))
    alert = Action("alert", "standard", "standard", "pool over", "pools")
    stop = Action("stop", "x" * 64, "w", "ladder", "ladder", destructive=True)
    act.execute([alert, alert, stop], dry_run=False)
    act.execute([stop], dry_run=True)
    view.breaches["psi_memory"] += 3
    text = scrape(view)
    assert value(text, "resource_supervisor_actions_total", kind="alert", outcome="ok") == 2
    assert value(text, "resource_supervisor_actions_total", kind="stop", outcome="failed") == 1
    assert value(text, "resource_supervisor_actions_total", kind="stop", outcome="dry_run") == 1
    assert value(text, "resource_supervisor_breaches_total", kind="psi_memory") == 3
    assert value(text, "resource_supervisor_daemon_events_total", event="passes") == 7
    assert value(text, "resource_supervisor_sampler_events_total", event="cgroup_vanished") == 2
    assert types(text)["resource_supervisor_actions_total"] == "counter"


def test_breach_onsets_are_counted_once_per_episode():
    cfg = make_cfg()
    fine = make_tick(cfg, [container("a", "s1", limit=100 * MIB)])
    over = make_tick(cfg, [container("a", "s1", limit=300 * MIB, wss=270 * MIB)],
                     host=host_sample(available_bytes=GIB // 4))
    assert breach_conditions(fine) == set()
    assert breach_conditions(over) == {("reserve", ""), ("pool_used_over_budget", "standard"),
                                       ("pool_allocated_over_budget", "standard")}
    breaches: Counter = Counter()
    pm = PassMetrics(breaches)
    for t in (fine, over, over, over, fine, over):
        pm.observe(0.01, t)
    assert breaches == {"reserve": 2, "pool_used_over_budget": 2, "pool_allocated_over_budget": 2}


def test_tick_histogram_is_cumulative_with_le_buckets():
    h = DurationHistogram((0.01, 0.1, 1.0))
    for v in (0.005, 0.01, 0.05, 0.5, 3.0, 0.01):
        h.observe(v)
    buckets, total = h.cumulative()
    assert buckets == [("0.01", 3), ("0.1", 4), ("1.0", 5), ("+Inf", 6)]  # 0.01 <= le 0.01
    assert total == pytest.approx(3.575)
    cfg = make_cfg()
    view = daemon_view(make_tick(cfg, []))
    for v in (0.002, 0.002, 0.3):
        view.builder.observe_pass(v, view.tick)
    text = scrape(view)
    assert types(text)["resource_supervisor_tick_duration_seconds"] == "histogram"
    assert value(text, "resource_supervisor_tick_duration_seconds_bucket", le="0.0025") == 2
    assert value(text, "resource_supervisor_tick_duration_seconds_bucket", le="0.25") == 2
    assert value(text, "resource_supervisor_tick_duration_seconds_bucket", le="+Inf") == 3
    assert value(text, "resource_supervisor_tick_duration_seconds_count") == 3
    counts = [s.value for s in samples(text)["resource_supervisor_tick_duration_seconds"]
              if s.name.endswith("_bucket")]
    assert counts == sorted(counts)


def test_a_failing_or_clashing_component_loses_only_its_own_metrics():
    class Broken(Component):
        name = "broken"

        def collect(self, tick):
            raise RuntimeError("bug")

    class Clashing(Component):
        name = "clashing"

        def collect(self, tick):
            g = GaugeMetricFamily("resource_supervisor_pool_budget_bytes", "again")
            g.add_metric([], 1)
            b = CounterMetricFamily("resource_supervisor_breaches_total", "again", labels=["kind"])
            b.add_metric(["x"], 1)
            ok = GaugeMetricFamily("resource_supervisor_ollama_compliant", "ok", labels=["name"])
            ok.add_metric(["ollama"], 0)
            return [g, b, ok]
    cfg = make_cfg()
    view = daemon_view(make_tick(cfg, []), components=[Broken(None), Clashing(None)])
    view.publish()  # a second pass: its components' metrics are gathered once more
    reg = registry(view)
    render(reg.collect())
    text = render(reg.collect()).decode()  # a scrape gathers nothing: the counts are per pass
    assert text.count("# TYPE resource_supervisor_pool_budget_bytes ") == 1
    assert text.count("# TYPE resource_supervisor_breaches_total ") == 1
    assert value(text, "resource_supervisor_ollama_compliant", name="ollama") == 0
    assert value(text, "resource_supervisor_collect_errors_total", component="broken") == 2
    assert value(text, "resource_supervisor_collect_errors_total", component="clashing") == 4
    took = samples(text)["resource_supervisor_collect_duration_seconds"]
    assert {s.labels["component"] for s in took} == {"exporter", "broken", "clashing"}
    assert all(s.value >= 0 for s in took)


def test_deferred_sections_and_families_are_built_once_when_read_from_what_the_pass_froze():
    built = Counter()

    class Lazy(Component):
        name = "lazy"

        def __init__(self, ctx):
            super().__init__(ctx)
            self.value = 1

        def status(self, tick):
            v = self.value  # frozen now; built when read
            return Deferred(lambda: built.update(["status"]) or {"value": v})

        def collect(self, tick):
            v = self.value

            def fams():
                built["collect"] += 1
                g = GaugeMetricFamily("resource_supervisor_lazy_value", "v")
                g.add_metric([], v)
                again = GaugeMetricFamily("resource_supervisor_pool_budget_bytes", "again")
                return [g, again]
            return Deferred(fams)

    class Broken(Component):
        name = "broken"

        def status(self, tick):
            return Deferred(lambda: 1 / 0)

        def collect(self, tick):
            return Deferred(lambda: 1 / 0)
    lazy = Lazy(None)
    view = daemon_view(make_tick(make_cfg(), []), components=[lazy, Broken(None)])
    report = view.report
    assert not built  # a pass nobody reads builds nothing
    lazy.value = 2  # the next pass's state: not what this report shows
    reg = make_registry(lambda: report)
    texts = [render(reg.collect()).decode() for _ in range(2)]
    assert report.sections["lazy"] == {"value": 1} and report.sections["lazy"] == {"value": 1}
    assert built == Counter(status=1, collect=1)
    assert all(value(t, "resource_supervisor_lazy_value") == 1 for t in texts)
    # One family of a name (the exporter's pool_budget_bytes is not written twice).
    assert texts[0].count("# TYPE resource_supervisor_pool_budget_bytes ") == 1
    assert report.sections["broken"]["error"].startswith("ZeroDivisionError")
    assert set(report.sections) == {"lazy", "broken"}
    later = view.publish()  # the errors of a deferred build are counted into later reports
    text = render(make_registry(lambda: later).collect()).decode()
    assert value(text, "resource_supervisor_collect_errors_total", component="broken") == 1
    assert value(text, "resource_supervisor_collect_errors_total", component="lazy") == 1


# ---------------------------------------------------------------------- hostile labels

HOSTILE = [
    'quote"and\\backslash',
    "new\nline",
    "ünïcødé-名前-🚀",
    "x" * 10_000,
    "trailing\\",
    "{braces},=commas",
]


def hostile_tick():
    classes = {name: {"pool": f"pool {i} {name}", "memory_limit": "8MiB", "memory_min": "1MiB"}
               for i, name in enumerate(HOSTILE[:3])}
    pools = {f"pool {i} {name}": {"budget": "64MiB"} for i, name in enumerate(HOSTILE[:3])}
    cfg = make_cfg(pools=pools, classes=classes)
    cs = [container(str(i), name, class_label=HOSTILE[i % 3], limit=8 * MIB, cpuset=name)
          for i, name in enumerate(HOSTILE)]
    cs.append(container("s", "lone\udcffsurrogate", class_label=HOSTILE[0]))
    host = host_sample(disks={'d"isk\n': DiskIO(1, 2, 3, 4)}, nets={"ét\\h0": NetIO(5, 6, 7, 8)})
    return make_tick(cfg, cs, host=host)


def hostile_exposition() -> bytes:
    return render(registry(daemon_view(hostile_tick())).collect())


def test_hostile_label_values_render_as_valid_exposition_and_round_trip():
    body = hostile_exposition()
    text = body.decode("utf-8")  # valid UTF-8 even with a lone surrogate in a name
    fam = samples(text)
    names = {s.labels["name"] for s in fam["resource_supervisor_container_managed"]}
    assert names == set(HOSTILE) | {"lone?surrogate"}
    pools = {s.labels["pool"] for s in fam["resource_supervisor_pool_budget_bytes"]}
    assert pools == {f"pool {i} {n}" for i, n in enumerate(HOSTILE[:3])}
    cpusets = {s.labels["cpuset"] for s in fam["resource_supervisor_container_cpuset_info"]}
    assert set(HOSTILE) <= cpusets
    assert {s.labels["device"] for s in fam["resource_supervisor_host_disk_read_bytes"]} == {'d"isk\n'}
    assert {s.labels["device"] for s in fam["resource_supervisor_host_network_receive_bytes"]} == {"ét\\h0"}
    # Every sample line is one line: a raw newline inside a label would split it.
    for line in text.splitlines():
        assert line.startswith(("#", "resource_supervisor_", "process_", "python_")), line[:80]


class Fixed:
    """A collector replaying one scrape's families, so two writers see the same values."""

    def __init__(self, families):
        self.families = families

    def collect(self):
        return self.families


def test_go_float_formats_values_as_prometheus_client_does():
    vals = [0.0, -0.0, 1.0, 1, 0.5, -3.25, 1e-9, 123456.0, 1234567.0, 1795440528.1008437,
            2**53, 29.38 * 2**30, 1e22, -1e22, float("inf"), float("-inf"), float("nan"), True]
    assert [go_float(v) for v in vals] == [floatToGoString(v) for v in vals]


@pytest.mark.parametrize("tick", ["plain", "hostile"])
def test_the_fast_writer_writes_what_prometheus_client_writes(tick):
    cfg = make_cfg()
    t = hostile_tick() if tick == "hostile" else make_tick(cfg, [container("a", "s1"),
                                                                container("b", "s2", state="paused")])
    view = daemon_view(t)
    view.builder.observe_pass(0.004, t)
    view.actuator.counts[("throttle", "ok")] += 2
    view.publish()
    fams = list(registry(view).collect())
    assert render(fams) == generate_latest(Fixed(fams))


# ---------------------------------------------------------------------- rules and dashboard

def rendered_family_names() -> set[str]:
    cfg = make_cfg()
    view = daemon_view(make_tick(cfg, [container("a", "s1")]))
    view.actuator.counts[("alert", "ok")] += 1
    view.breaches["reserve"] += 1
    text = scrape(view)
    out = set()
    for fam in text_string_to_metric_families(text):
        out.update(s.name for s in fam.samples)
    return out


def referenced_metrics(text: str) -> set[str]:
    return set(re.findall(r"\b(resource_supervisor_[a-z0-9_]+)", text))


# Families other components render: the Ollama governor's compliance gauge.
OTHER_COMPONENTS = {"resource_supervisor_ollama_compliant"}


@pytest.mark.parametrize("path", ["alerts.yml", "grafana-dashboard.json"])
def test_rules_and_dashboard_name_only_metrics_the_exporter_renders(path):
    text = (PROM / path).read_text()
    refs = referenced_metrics(text)
    assert refs, path
    missing = refs - rendered_family_names() - OTHER_COMPONENTS
    assert not missing, f"{path} names metrics nobody renders: {sorted(missing)}"


def test_every_alert_has_summary_description_severity_and_a_test():
    rules = yaml.safe_load((PROM / "alerts.yml").read_text())
    tests = (PROM / "alerts_test.yml").read_text()
    alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r]
    names = {r["alert"] for r in alerts}
    for want in ("ResourceSupervisorPoolNearlyExhausted", "ResourceSupervisorPoolExhausted",
                 "ResourceSupervisorPoolOverAllocated", "ResourceSupervisorEmergencyReserveBreached",
                 "ResourceSupervisorDown", "ResourceSupervisorDockerEngineUnreachable",
                 "ResourceSupervisorContainerWithoutMemoryLimit",
                 "ResourceSupervisorOllamaNonCompliant"):
        assert want in names
    for r in alerts:
        assert r["labels"]["severity"] in ("warning", "critical"), r["alert"]
        assert len(r["annotations"]["summary"]) > 10, r["alert"]
        assert len(r["annotations"]["description"]) > 60, r["alert"]
        assert f"alertname: {r['alert']}\n" in tests, f"no promtool test for {r['alert']}"


def test_own_figures_are_read_at_most_every_few_seconds():
    """/proc/self/stat is re-read every ``every_s``; the passes between use the last one."""
    now = [100.0]
    me = ProcSelf(clock=lambda: now[0], every_s=5.0)
    first = me.read()
    assert first is not None and first.rss_bytes > 0
    now[0] += 4.9
    assert me.read() is first
    now[0] += 0.2
    again = me.read()
    assert again is not None and again is not first
