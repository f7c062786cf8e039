"""The activity tracker (observe/activity.py): one read of a container's namespace per
pass serves the snapshot's NetIO and the activity samples; its idle judgement agrees with
the pure one; what a consumer reads (rates, quiet time, per-owner thresholds). On captured
cgroup and /proc trees, no host needed."""

import dataclasses
import math
import shutil
from pathlib import Path

from hypothesis import given, settings, strategies as st

from _handmade import config, container, tick
from supervisor.adapters.cgroups import CgroupFS
from supervisor.adapters.host import HostSampler
from supervisor.model.activity import ActivitySample, Thresholds, Watch, idle_since
from supervisor.observe.activity import ActivityTracker
from supervisor.observe.sampler import Sampler
from supervisor.policy.hibernation import OWNER, candidates, retry_times
from supervisor.model.actions import Action, ActionResult

FIX = Path(__file__).parent.parent / "fixtures"
V1_ID, V1_PID = (FIX / "cgroup_v1" / "CAPTURED").read_text().split()
TH = Thresholds(cpu_cores=0.01, net_bytes_per_s=64.0, blkio_bytes_per_s=4096.0)
SNMP = ("Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails\n"
        "Tcp: 1 200 120000 -1 {active} {passive} 0\n")


def sampler_on(tmp_path, full_every_s):
    """A sampler on a copy of the captured v1 tree, its container's namespace with a
    net/snmp the test can move."""
    shutil.copytree(FIX / "cgroup_v1", tmp_path / "cgroup_v1")
    shutil.copytree(FIX / "proc", tmp_path / "proc")
    proc = tmp_path / "proc"
    (proc / V1_PID / "net" / "snmp").write_text(SNMP.format(active=0, passive=0))
    fs = CgroupFS(str(tmp_path / "cgroup_v1"), proc=str(proc))
    s = Sampler(fs, HostSampler(str(proc)), full_every_s=full_every_s, clock=lambda: 0.0)
    info = dataclasses.replace(container("web", cid=V1_ID).info, pid=int(V1_PID))
    return s, info, proc


def test_one_namespace_read_per_pass_serves_the_snapshot_and_the_tracker(tmp_path):
    s, info, proc = sampler_on(tmp_path, full_every_s=0.0)  # a full read every pass
    cfg = config()
    s.activity.watch(OWNER, {info.id: Watch(0.0, 10.0, TH)})  # sampled every pass
    for i in range(5):
        (c,), _ = s.sweep([info], cfg, now=100.0 + i)
        assert c.net is not None and c.net.rx_bytes == 0  # --network none: only lo
    assert s.activity.counts["namespace_reads"] == 5  # not 10: one read, two uses
    track = s.activity.track(OWNER, info.id)
    assert [x.time_s for x in track.samples][-1] == 104.0
    assert track.samples[-1].connections == 0 and track.samples[-1].net_bytes is not None
    # A connection opened in its namespace is seen at the next pass.
    (proc / V1_PID / "net" / "snmp").write_text(SNMP.format(active=0, passive=1))
    s.sweep([info], cfg, now=105.0)
    assert s.activity.track(OWNER, info.id).busy_reason == "1 new connection"
    assert s.activity.counts["namespace_reads"] == 6


def test_hot_passes_read_the_namespace_only_when_a_sample_is_due(tmp_path):
    s, info, _ = sampler_on(tmp_path, full_every_s=3600.0)
    cfg = config()
    s.sweep([info], cfg, now=100.0)  # the first full read: net/dev only
    assert s.activity.counts["namespace_reads"] == 1
    for i in range(1, 5):
        s.sweep([info], cfg, now=100.0 + i)  # hot reads of an unwatched container
    assert s.activity.counts["namespace_reads"] == 1
    s.activity.watch(OWNER, {info.id: Watch(2.0, 10.0, TH)})
    for i in range(5, 11):
        s.sweep([info], cfg, now=100.0 + i)
    assert s.activity.counts["namespace_reads"] == 1 + 3  # at 105, 107, 109
    # engine down: the view's PIDs may be stale, no activity sample is taken
    s.sweep([info], cfg, now=200.0, engine_up=False)
    assert s.activity.counts["namespace_reads"] == 4


def test_sample_snapshot_takes_only_the_samples_the_sweep_did_not(tmp_path):
    s, info, _ = sampler_on(tmp_path, full_every_s=0.0)
    cfg = config()
    snap = s.sample([info], cfg, engine_up=True)  # clock 0.0, not watched yet
    assert s.activity.counts["namespace_reads"] == 1
    s.activity.watch(OWNER, {info.id: Watch(1.0, 10.0, TH)})
    s.activity.sample_snapshot(snap)  # newly watched: sampled now, from the sweep's reading
    s.activity.sample_snapshot(snap)  # already sampled at this time: nothing
    assert s.activity.counts["namespace_reads"] == 1
    assert s.activity.track(OWNER, info.id).samples[-1].connections == 0
    assert s.activity.quiet_for_s(info.id, 30.0, OWNER) == 30.0


def test_a_tracker_no_sampler_feeds_samples_in_sample_snapshot(tmp_path):
    _, info, proc = sampler_on(tmp_path, full_every_s=0.0)
    tr = ActivityTracker(str(proc))
    cfg = config()
    c = dataclasses.replace(container("web", cid=V1_ID), info=info)
    tr.watch(OWNER, {info.id: Watch(1.0, 10.0, TH)})
    for t in (100.0, 100.5, 101.0):
        tr.sample_snapshot(tick(cfg, [c], now=t).snapshot)
    assert [x.time_s for x in tr.track(OWNER, info.id).samples] == [100.0, 101.0]


def samples(cpu_per_s, n=10, step=1.0, pid=7, net_per_s=0, t0=100.0):
    return [ActivitySample(t0 + i * step, pid, cpu_per_s * i * step, 0,
                           int(net_per_s * i * step), 0) for i in range(n)]


def fed(watches, series, cid="c"):
    tr = ActivityTracker("unused")
    for owner, w in watches.items():
        tr.watch(owner, {cid: w})
    for smp in series:
        tr.record(cid, smp)
    return tr


def test_rates_cpu_cores_and_quiet_time():
    tr = fed({OWNER: Watch(1.0, 5.0, TH)}, samples(0.5, n=10))
    assert math.isclose(tr.cpu_cores("c"), 0.5)
    assert math.isclose(tr.rates("c", window_s=5.0).cpu_cores, 0.5)
    assert tr.rates("c").net_bytes_per_s == 0.0 and tr.rates("c").connections_opened == 0
    assert tr.quiet_for_s("c", 109.0, OWNER) == 0.0  # busy until the last sample
    assert tr.quiet_for_s("c", 109.0, "nobody") is None and tr.cpu_cores("other") is None


def test_each_owner_judges_by_its_own_thresholds():
    cpu_only = Thresholds(cpu_cores=0.01, net_bytes_per_s=math.inf, blkio_bytes_per_s=math.inf)
    tr = fed({OWNER: Watch(1.0, 5.0, TH), "ollama": Watch(0.0, 5.0, cpu_only)},
             samples(0.0, n=10, net_per_s=1000))
    assert tr.track(OWNER, "c").busy_reason.startswith("network")
    assert tr.quiet_for_s("c", 109.0, "ollama") == 9.0
    tr.forget(OWNER, "c")
    assert tr.track(OWNER, "c") is None and tr.track("ollama", "c") is not None
    tr.watch("ollama", {})
    assert tr.tracks("ollama") == {} and tr.cpu_cores("c") is not None  # still watched
    tr.watch(OWNER, {})
    assert tr.tracks(OWNER) == {} and tr.cpu_cores("c") is None  # nobody watches it


def test_a_restart_starts_the_samples_over():
    tr = fed({OWNER: Watch(1.0, 5.0, TH)}, samples(0.0, n=5) + samples(0.0, n=1, pid=8, t0=110.0))
    assert tr.rates("c") is None  # one sample of the new process: no rate yet
    assert tr.track(OWNER, "c").busy_reason == "restarted"
    tr.record("c", samples(0.5, n=2, pid=8, t0=110.0)[1])
    assert tr.rates("c").span_s == 1.0 and tr.cpu_cores("c") == 0.5


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0.1, 4.0), st.floats(0, 0.05), st.integers(0, 400),
                          st.integers(0, 1)), min_size=1, max_size=40),
       st.floats(1.0, 30.0))
def test_the_trackers_idle_clock_is_the_pure_idle_since(steps, window_s):
    """However the samples come, the tracker's incremental judgement equals
    model.activity.idle_since over the same series."""
    series, t, cpu, net, conns = [], 100.0, 0.0, 0, 0
    for dt, cores, net_per_s, new_conn in steps:
        t += dt
        cpu += cores * dt
        net += int(net_per_s * dt)
        conns += new_conn
        series.append(ActivitySample(t, 7, cpu, 0, net, conns))
    tr = fed({OWNER: Watch(0.0, window_s, TH)}, series)
    assert (tr.track(OWNER, "c").idle_since_s, tr.track(OWNER, "c").busy_reason) == \
        idle_since(series, TH, window_s)


# ---------------------------------------------------------------- what hibernation watches

def test_candidates_are_the_running_containers_that_may_hibernate():
    cfg = config(classes={
        "infrastructure": {"pool": "infrastructure", "cpuset": "0", "memory_limit": "128MiB",
                           "protected": False, "hibernate": True, "idle_after": "60s"},
        "standard": {"pool": "standard", "memory_limit": "40MiB", "memory_min": "16MiB",
                     "idle_after": "20s"}})
    web, pg, held = container("web"), container("pg", cls="infrastructure"), container("h")
    paused = container("p", state="paused")
    got = candidates(tick(cfg, [web, pg, held, paused]), hibernated={held.info.id})
    assert set(got) == {web.info.id}  # infrastructure never, whatever `protected` says
    assert (got[web.info.id].interval_s, got[web.info.id].window_s) == (2.0, 20.0)
    off = config(hibernation={"enabled": False})
    assert candidates(tick(off, [web]), hibernated=()) == {}


def test_retry_times_hold_back_failures_and_dry_runs_and_drop_past_ones():
    cfg = config()
    web, job = container("web"), container("job")

    def result(c, **kw):
        return ActionResult(Action("hibernate", c.info.id, c.info.name, "", "hibernation"),
                            **{"ok": True, "dry_run": False, **kw})
    t = tick(cfg, [web, job], now=1000.0)
    got = retry_times({"gone": 900.0}, [result(web, ok=False), result(job, dry_run=True),
                                        result(web, ok=False, skipped=True)], t)
    assert got == {web.info.id: 1060.0, job.info.id: 1000.0 + 300.0}  # standard idle_after 5m
