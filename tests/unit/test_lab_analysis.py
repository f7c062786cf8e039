"""The service lab's pure parts (lab/analysis.py, lab/deploy.py): the figures the runner
prints and the goals it judges, and the deployment and config it generates."""

from __future__ import annotations

import os
import sys
import tomllib

from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from lab import analysis, deploy  # noqa: E402
from lab.analysis import GIB, MIB, Leg, Request  # noqa: E402
from supervisor.model.config import HostFacts, load_settings, resolve  # noqa: E402


def test_percentile_interpolates_like_numpy():
    assert analysis.percentile([], 50) is None
    assert analysis.percentile([7], 99) == 7
    assert analysis.percentile([1, 2, 3, 4], 50) == 2.5
    assert analysis.percentile(range(101), 99) == 99
    assert analysis.percentile([10, 0], 100) == 10


@given(st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1), st.floats(0, 100))
def test_percentile_stays_within_the_values(xs, q):
    p = analysis.percentile(xs, q)
    assert min(xs) <= p <= max(xs)


@given(st.lists(st.booleans()))
def test_longest_run_is_the_longest_block_of_trues(flags):
    text = "".join("1" if f else "0" for f in flags)
    assert analysis.longest_run(flags) == max((len(b) for b in text.split("0")), default=0)


def test_seconds_true_counts_each_sample_until_the_next():
    assert analysis.seconds_true([0, 1, 2, 4], [False, True, True, False]) == 3.0
    # the last sample holds for the median step
    assert analysis.seconds_true([0, 1, 2], [False, False, True]) == 1.0
    assert analysis.seconds_true([], []) == 0.0


def test_integrate_gib_min_of_a_constant():
    assert analysis.integrate_gib_min([0, 30, 60], [GIB, GIB, GIB]) == 1.0
    assert analysis.integrate_gib_min([0, 60], [0, 2 * GIB]) == 1.0


def test_hibernated_share_counts_only_idle_services_paused_by_the_deadline():
    first = {"a": 10.0, "b": 80.0, "busy": 5.0}
    assert analysis.hibernated_share(first, ["a", "b", "c"], 75.0) == (1, 3)


def _leg(name, ooms=(), requests=(), used=(), **kw):
    leg = Leg(name)
    leg.ooms = list(ooms)
    leg.requests = list(requests)
    leg.times = [float(i) for i in range(len(used))]
    leg.lab_used_bytes = list(used)
    for k, v in kw.items():
        setattr(leg, k, v)
    return leg


ROLES = {"leaky": "leaker", "stale": "stale", "orch": "critical", "idle1": "idle", "pg": "store"}


def test_oom_kills_outside_the_leaker_and_the_ones_the_daemon_caused():
    without = _leg("without", ooms=[(1, "stale", "stale", "standard")] * 3)
    with_ = _leg("with", ooms=[(1, "leaky", "leaker", "standard"), (2, "stale", "stale", "standard"),
                               (3, "stale", "stale", "standard"), (4, "stale", "stale", "standard"),
                               (5, "orch", "critical", "critical")])
    s = analysis.oom_summary(with_, ROLES)
    assert s["by_container"] == {"leaky": 1, "stale": 3, "orch": 1}
    assert s["by_class"] == {"standard": 4, "critical": 1}
    assert s["outside_leaker"] == 4
    # stale was killed as often without the supervisor; orch only with it
    assert analysis.caused_by_daemon(without, with_, ROLES) == {"orch": 1}
    problems = analysis.broken(without, with_, ROLES)
    assert problems == ["with: 1 OOM kill(s) of orch more than without the supervisor"]


def test_reserve_runs_are_counted_on_the_lab_s_own_memory():
    leg = _leg("with", used=[100, 960, 960, 100, 960, 960, 960])
    r = analysis.reserve_summary(leg, lab_bytes=1000, reserve_bytes=50)
    assert r["samples"] == 5 and r["longest_run"] == 3 and r["lowest_available_bytes"] == 40


def test_wakes_latency_and_lost_requests():
    reqs = [Request(0, "wake-http", "idle1", 100.0, True, True),
            Request(1, "wake-http", "idle1", 20.0, True, False),
            Request(2, "wake-psql", "pg", 200.0, True, True),
            Request(3, "wake-redis", "cache", None, False, True),
            Request(4, "critical-solo", "orch", 5.0, True)]
    leg = _leg("with", requests=reqs)
    w = analysis.wakes(leg)
    assert w["requests"] == 4 and w["wakes"] == 3 and w["lost"] == 1
    assert w["p50"] == 150.0 and w["awake_p50"] == 20.0
    assert w["by_client"]["redis"] == {"n": 1, "wakes": 1, "lost": 1}
    assert analysis.lost_total(leg) == 1
    problems = analysis.broken(_leg("without"), leg, ROLES)
    assert problems == ["with: 1 request(s) lost, first: wake-redis to cache at 3s"]


def test_goals_judge_the_leg_with_the_supervisor():
    reqs = ([Request(i, "critical-solo", "orch", 10.0, True) for i in range(100)]
            + [Request(i, "critical-hog", "orch", 10.5, True) for i in range(100)]
            + [Request(0, "wake-http", "idle1", 120.0, True, True)])
    leg = _leg("with", requests=reqs, used=[0, 0], first_paused={"idle1": 70.0, "pg": 90.0})
    leg.pool_used = {"standard": [0, 10]}
    s = analysis.summarise(leg, ROLES, {}, {"standard": 100}, 1000, 50, idle_after_s=20)
    verdicts = {g: met for g, _fig, met in analysis.goals(s)}
    assert verdicts == {
        "zero OOM kills outside the leaking agent": True,
        "reserve breached at most 2 ticks in a row": True,
        ">= 70% of idle agents hibernated within idle_after + 1 min": False,  # pg at 90 s > 80 s
        "critical p99 under the CPU hog <= 1.1x solo": True,
        "wake p95 < 300 ms with real clients": True,
        "zero requests lost": True,
    }
    rows = dict((a, (b, c)) for a, b, c in analysis.table(s, s))
    assert rows["pool standard: peak use / budget"][1] == "0 MiB / 0 MiB (10%)"


# ---------------------------------------------------------------------------- deploy

def test_deployments_follow_the_rules_phases_and_roles():
    for name, want in (("small", (4, 4, 10)), ("full", (15, 25, 70))):
        scale = deploy.SCALES[name]
        svcs = deploy.services(scale)
        assert tuple(sum(1 for s in svcs if s.phase == p) for p in (1, 2, 3)) == want == scale.phases
        roles = [s.role for s in svcs]
        for one in ("critical", "hog", "leaker", "stale"):
            assert roles.count(one) == 1, one
        assert {s.class_by for s in svcs} == {"label", "name", "image", "default"}
        assert any(s.mem_limit_bytes for s in svcs) and any(not s.mem_limit_bytes for s in svcs)
        assert len({s.name for s in svcs}) == len(svcs)


def test_compose_file_isolates_every_service_and_waits_for_health_by_phase():
    scale = deploy.SCALES["small"]
    svcs = deploy.services(scale)
    size = deploy.sizing(scale, svcs)
    doc = deploy.compose(svcs, scale, "r1", "rs-lab-r1", size)
    assert doc["version"] == "2.4"
    by_phase = {s.name: s.phase for s in svcs}
    for s in svcs:
        c = doc["services"][s.name]
        assert c["network_mode"] == "none"
        assert c["labels"][deploy.RUN_LABEL] == "r1"
        assert c["healthcheck"]["interval"] == f"{scale.health_interval_s}s"
        assert c["cgroup_parent"] == f"/rs-lab-r1/{s.cls}"
        assert (deploy.CLASS_LABEL in c["labels"]) == (s.class_by == "label")
        if "mem_limit" in c:
            assert c["mem_reservation"] * 2 == c["mem_limit"]  # Rule 1.1: 50 %
        deps = c.get("depends_on", {})
        assert {by_phase[d] for d in deps} == ({s.phase - 1} if s.phase > 1 else set())
        assert all(v == {"condition": "service_healthy"} for v in deps.values())
    leaker = next(s for s in svcs if s.role == "leaker")
    env = doc["services"][leaker.name]["environment"]
    # the leak is bounded in the agent, below its owner's limit
    assert int(env["AGENT_LEAK_MAX_MB"]) * MIB == size.leak_bytes
    assert doc["services"][leaker.name]["mem_limit"] > size.leak_bytes


@settings(max_examples=20, deadline=None)
@given(st.sampled_from(sorted(deploy.SCALES)), st.integers(1, 64))
def test_the_lab_config_loads_and_keeps_the_lab_s_sizes(scale_name, cores):
    scale = deploy.SCALES[scale_name]
    svcs = deploy.services(scale)
    size = deploy.sizing(scale, svcs)
    with open(os.path.join(ROOT, "config", "supervisor.toml"), "rb") as f:
        shipped = tomllib.load(f)
    with open(os.path.join(ROOT, "lab", "supervisor-lab.toml"), "rb") as f:
        overlay = tomllib.load(f)
    data = deploy.lab_config(shipped, scale, size, run="r1", cores=cores, state_dir="/x",
                             metrics_listen="127.0.0.1:10499", control_socket="/x/s",
                             docker_host="unix:///x/d.sock", cgroup_parent="rs-lab-r1",
                             overlay=overlay)
    round_trip = tomllib.loads(deploy.to_toml(data))
    assert round_trip == data
    cfg = resolve(load_settings(data=round_trip), HostFacts(cores=cores, memory_bytes=32 * GIB))
    for pool, budget in size.budgets.items():
        assert cfg.pools[pool].budget_bytes == budget // MIB * MIB
    assert cfg.settings.manage.require_labels == {deploy.RUN_LABEL: "r1"}
    # the shipped "scaled" cpusets, written out for this many cores
    scaled = resolve(load_settings(data=shipped), HostFacts(cores=cores, memory_bytes=32 * GIB))
    for name in ("infrastructure", "critical", "standard"):
        assert cfg.classes[name].cores == scaled.classes[name].cores


def test_the_workload_must_fit_the_machine():
    scale = deploy.SCALES["full"]
    size = deploy.sizing(scale, deploy.services(scale))
    # without the supervisor the leak runs the lab past its pools into its reserve
    resting = 110 * 10 * MIB
    assert resting + size.leak_bytes > size.pools_bytes
    assert deploy.check_fits(size, 64 * GIB) is None
    assert "--scale small" in deploy.check_fits(size, 4 * GIB)
