"""The activity tracker (observe/activity.py): one read of a container's namespace per
pass serves the snapshot's NetIO and the activity samples; its idle judgement agrees with
the pure one; what a consumer reads (rates, quiet time, per-owner thresholds); the
per-pass CPU view the Tick carries, from which the ladder and the Ollama governor judge
idleness alike. On captured cgroup and /proc trees, no host needed."""

import dataclasses
import math
import shutil
from pathlib import Path

from hypothesis import given, settings, strategies as st

from _handmade import config, container, tick
from supervisor.adapters.cgroups import CgroupFS
from supervisor.adapters.host import HostSampler
from supervisor.model.activity import (CPU_PEAKS_MAX, ActivitySample, ActivityView, Thresholds,
                                       Watch, cpu_step, idle_since)
from supervisor.observe.activity import ActivityTracker
from supervisor.observe.sampler import Sampler
from supervisor.policy import ollama_plan
from supervisor.policy.breaches import CRITICAL, Signal
from supervisor.policy.hibernation import OWNER, candidates, retry_times
from supervisor.policy.ladder import plan_breach_actions
from supervisor.policy.ladder_rungs import Env, idle_for_s, rung_hibernate
from supervisor.policy.ladder_state import LadderState
from supervisor.policy.ladder_state import Track as LadderTrack
from supervisor.policy.ollama_policy import container_targets, cpu_activity
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


def test_a_full_read_of_an_unwatched_container_reads_only_its_interfaces(tmp_path):
    s, info, proc = sampler_on(tmp_path, full_every_s=0.0)
    (proc / V1_PID / "net" / "snmp").unlink()  # read only for an activity sample
    (c,), _ = s.sweep([info], config(), now=100.0)
    assert c.net is not None and s.activity.counts["counter_read_errors"] == 0


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
    # Newly watched: sampled now; the sweep read its interfaces only (it was not watched),
    # so its TCP counters are read once more.
    s.activity.sample_snapshot(snap)
    s.activity.sample_snapshot(snap)  # already sampled at this time: nothing
    assert s.activity.counts["namespace_reads"] == 2
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


# ---------------------------------------------------------------- CPU, every pass: the view

IDLE_CORES = 0.05
IDLE_AFTER = 5.0  # the ladder's hibernate_idle_after and the governor's idle_for alike


def idle_cfg():
    return config(hibernation={"cpu_idle_cores": IDLE_CORES},
                  ladder={"hibernate_idle_after": f"{IDLE_AFTER}s"},
                  ollama={"idle_for": f"{IDLE_AFTER}s", "process_names": []})


def spec_idle_for(readings, now, idle_cores=IDLE_CORES):
    """The definition, from the raw readings of one run of a process ((time, cpu s)):
    seconds since the end of the last interval above ``idle_cores`` (since the first
    reading when none was); None before two readings."""
    if len(readings) < 2:
        return None
    busy_at = readings[0][0]
    for (t0, c0), (t1, c1) in zip(readings, readings[1:]):
        if (c1 - c0) / (t1 - t0) > idle_cores:
            busy_at = t1
    return now - busy_at


def ladder_hibernates(t, c):
    """What the ladder's hibernate rung does with ``c`` in a critical breach of its pool."""
    sig = Signal("pool:standard", "pool", "standard", "standard", "memory", CRITICAL, False,
                 0.97, 0.95, "pool standard at 97%")
    env = Env(t, t.cfg, {}, frozenset({"hibernate"}), 1.0)
    track = LadderTrack("pool:standard", "pool", "standard", "standard", "memory", 0.0)
    return rung_hibernate(track, sig, env, [c])[0] == "acted"


def governor_says_idle(t, cid):
    """The governor's idle verdict on an Ollama container whose API does not answer (idle
    is then told by CPU alone)."""
    s = t.cfg.settings.ollama
    p = ollama_plan.advance(t, container_targets(t, s), ollama_plan.Memory(), {}, {}, {}, 10.0)
    return p.views[cid].idle[0]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.floats(0.1, 4.0), st.one_of(st.just(0.0), st.floats(0, 0.2)),
                          st.integers(0, 12)), min_size=1, max_size=40))
def test_the_ladder_and_the_governor_judge_idleness_from_the_same_view(steps):
    """For any CPU series (restarts included), pass after pass: the ladder's idle time and
    the governor's quiet time are the same, both are the definition's, and the ladder
    hibernates exactly when the governor calls Ollama idle (same thresholds)."""
    cfg, tracker = idle_cfg(), ActivityTracker("/nonexistent")
    base = container("ollama", labels={"supervisor.ollama": "true"})
    cid = base.info.id
    now, pid, cpu_s, run = 100.0, base.info.pid, 0.0, []
    for dt, cores, restart in steps:
        now += dt
        if restart == 0:  # now and then a new process: its counter starts over
            pid, cpu_s, run = pid + 1, 0.0, []
        cpu_s += cores * dt
        run.append((now, cpu_s))
        c = dataclasses.replace(base, info=dataclasses.replace(base.info, pid=pid),
                                stats=dataclasses.replace(base.stats, cpu_usage_s=cpu_s))
        t = tick(cfg, [c], now=now, tracker=tracker)
        want = spec_idle_for(run, now)
        busy, quiet_s = cpu_activity(t, cid)
        assert idle_for_s(c, t) == quiet_s  # one view, one answer
        if len(run) > 1:
            assert busy == ((run[-1][1] - run[-2][1]) / (run[-1][0] - run[-2][0]) > IDLE_CORES)
        peaks = [cores for _, cores in t.activity.cpu[cid].peaks]
        assert all(a > b for a, b in zip(peaks, peaks[1:]))  # each busier than any later
        if want is None or len(peaks) < CPU_PEAKS_MAX:
            assert quiet_s == want
        else:  # peaks merged: never idle longer than the definition says
            assert quiet_s <= want
        idle = quiet_s is not None and quiet_s >= IDLE_AFTER
        assert ladder_hibernates(t, c) == governor_says_idle(t, cid) == idle


def test_peaks_stay_bounded_and_never_make_a_container_idle_longer():
    rec, t, cpu_s, readings = None, 0.0, 0.0, []
    for i in range(200):  # ever lower rates: every interval is a peak
        t += 1.0
        cpu_s += 1.0 / (i + 1)
        readings.append((t, cpu_s))
        rec = cpu_step(rec, 1, t, cpu_s)
        assert len(rec.peaks) <= CPU_PEAKS_MAX
        view = ActivityView(t, {"c": rec})
        for idle_cores in (0.001, 0.005, 0.02, 0.1, 0.5):
            got, want = view.idle_for_s("c", idle_cores), spec_idle_for(readings, t, idle_cores)
            assert got == want if i < CPU_PEAKS_MAX else got <= want
    assert view.idle_for_s("c", 2.0) == spec_idle_for(readings, t, 2.0) == t - 1.0


def test_a_pass_reads_each_containers_counters_once(tmp_path):
    """As the daemon runs a pass: the sampler's sweep reads the cgroup and (watched) the
    namespace once; the tracker's view takes the sweep's CPU reading; the planners that
    judge idleness read nothing."""
    s, info, _ = sampler_on(tmp_path, full_every_s=2.0)
    cfg = idle_cfg()
    s.activity.watch(OWNER, {info.id: Watch(0.0, 10.0, TH)})  # sampled every pass
    state = LadderState()
    clock = [100.0]
    s.clock = lambda: clock[0]
    for i in range(6):
        clock[0] = 100.0 + i
        snap = s.sample([info], cfg, engine_up=True)
        reads = (s.counts["full_reads"] + s.counts["usage_reads"],
                 s.activity.counts["namespace_reads"])
        assert reads == (i + 1, i + 1)  # once each per pass
        t = tick(cfg, snap.containers, now=snap.time_s, tracker=s.activity)
        rec = t.activity.cpu[info.id]
        assert (rec.time_s, rec.cpu_s) == (snap.time_s, snap.containers[0].stats.cpu_usage_s)
        state = plan_breach_actions(t, state, {"hibernate"}).state
        ollama_plan.advance(t, container_targets(t, cfg.settings.ollama), ollama_plan.Memory(),
                            {}, {}, {}, 10.0)
        assert (s.counts["full_reads"] + s.counts["usage_reads"],
                s.activity.counts["namespace_reads"]) == reads  # nothing read again
    # The captured tree does not move: idle since the first pass, by the view.
    assert t.activity.idle_for_s(info.id, IDLE_CORES) == 5.0


# ------------------------------------------------------------ health checks are not activity

from supervisor.model.activity import (HEALTH_MARGIN_S, CheckWindow,  # noqa: E402
                                       health_exec_command, in_check_window, is_health_exec)

BIG = {"cpu": 10.0, "net": 1_000_000, "conn": 3}  # each far above any idle threshold


def _series(sample_times, windows, events):
    """Samples at ``sample_times`` plus one at each window's edges (as the tracker takes
    them at a check's exec_start and exec_die), counters holding every event up to then."""
    times = sorted(set(sample_times) | {w.start_s for w in windows} | {w.end_s for w in windows})
    out = []
    for t in times:
        cpu = sum(BIG["cpu"] for te, k in events if k == "cpu" and te <= t)
        net = sum(BIG["net"] for te, k in events if k == "net" and te <= t)
        conns = sum(BIG["conn"] for te, k in events if k == "conn" and te <= t)
        out.append(ActivitySample(t, 1, cpu, 0, net, conns))
    return out


@st.composite
def checked_history(draw):
    """Sample times over 60 s, check windows (1 s interval style: short, apart) and
    activity events of every kind strictly inside them."""
    starts = sorted(draw(st.sets(st.integers(2, 55), min_size=1, max_size=12)))
    windows = [CheckWindow(float(s), s + draw(st.floats(0.01, 0.5)), 5.0) for s in starts]
    inside = [(w.start_s + draw(st.floats(0.001, 0.999)) * (w.end_s - w.start_s),
               draw(st.sampled_from(("cpu", "net", "conn"))))
              for w in windows for _ in range(draw(st.integers(0, 2)))]
    times = [0.0] + sorted(draw(st.lists(st.floats(0.1, 60.0), max_size=30))) + [60.0]
    return times, windows, inside


@settings(max_examples=200, deadline=None)
@given(checked_history())
def test_activity_entirely_inside_check_windows_never_resets_idleness(h):
    times, windows, inside = h
    idle_s, reason = idle_since(_series(times, windows, inside), TH, 30.0, windows)
    assert idle_s == 0.0 and reason == ""


@settings(max_examples=200, deadline=None)
@given(checked_history(), st.floats(0.5, 59.5), st.sampled_from(("cpu", "net", "conn")))
def test_activity_outside_check_windows_always_resets_idleness(h, at_s, kind):
    times, windows, inside = h
    if any(w.start_s - HEALTH_MARGIN_S <= at_s <= w.end_s + HEALTH_MARGIN_S for w in windows):
        at_s = None
    if at_s is None:
        return  # not outside: the property above covers it
    idle_s, reason = idle_since(_series(times, windows, inside + [(at_s, kind)]), TH, 30.0,
                                windows)
    assert idle_s >= at_s and reason


def test_without_windows_a_check_is_activity_as_before():
    windows = [CheckWindow(5.0, 5.1, 5.0)]
    samples = _series([0.0, 4.0, 6.0, 10.0], windows, [(5.05, "conn")])
    assert idle_since(samples, TH, 30.0, ())[0] == 5.1
    assert idle_since(samples, TH, 30.0, windows)[0] == 0.0


def test_a_running_check_covers_up_to_its_timeout():
    running = CheckWindow(10.0, None, 2.0)
    assert in_check_window(10.0, 12.0, [running])
    assert not in_check_window(10.0, 12.0 + HEALTH_MARGIN_S + 0.01, [running])
    assert not in_check_window(9.0, 10.5, [running])


def test_the_health_check_exec_is_told_from_other_execs():
    shell = ("CMD-SHELL", "curl -fsS -o /dev/null http://127.0.0.1:$AGENT_PORT/health")
    assert health_exec_command(shell) == "/bin/sh -c " + shell[1]
    assert is_health_exec(shell, " /bin/sh -c " + shell[1])
    assert not is_health_exec(shell, " /bin/sh -c curl http://127.0.0.1:10210/")
    cmd = ("CMD", "pg_isready", "-q", "-h", "127.0.0.1")
    assert is_health_exec(cmd, "pg_isready -q -h 127.0.0.1")
    assert not is_health_exec((), "pg_isready") and not is_health_exec(("NONE",), "x")


def test_the_tracker_leaves_a_checks_growth_out_of_every_owners_clock():
    tr = ActivityTracker("/nonexistent")
    tr.watch(OWNER, {"c1": Watch(0.5, 30.0, TH)})
    tr.record("c1", ActivitySample(100.0, 1, 0.0, 0, 0, 0))
    tr.check_started("c1", "e1", 101.0, 5.0)
    tr.record("c1", ActivitySample(101.0, 1, 0.0, 0, 0, 0))  # the start edge
    tr.record("c1", ActivitySample(101.05, 1, 0.01, 0, 300, 2))  # a pass inside the check
    assert tr.check_ended("c1", "e1", 101.1) and not tr.check_ended("c1", "e1", 101.1)
    tr.record("c1", ActivitySample(101.1, 1, 0.02, 0, 600, 2))  # the end edge
    tr.record("c1", ActivitySample(104.0, 1, 0.02, 0, 600, 2))
    t = tr.track(OWNER, "c1")
    assert t.idle_since_s == 100.0 and t.checks_discounted == 2
    tr.record("c1", ActivitySample(105.0, 1, 0.02, 0, 900, 3))  # a client, outside
    t = tr.track(OWNER, "c1")
    assert t.idle_since_s == 105.0 and t.busy_reason == "1 new connection"
