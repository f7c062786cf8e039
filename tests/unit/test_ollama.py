"""The Ollama governor's decisions on hand-made values: recognition, the Rule 12.1 checks,
the CPU throttle's steps and their restoration (the ladder's hysteresis), when a model
counts as in use, when Ollama counts as idle, and how a recreate body is made."""

from __future__ import annotations

import copy
import dataclasses
import threading

import pytest

from _testkit import wait_for
from fake_ollama import FakeOllama
import _handmade as handmade
from supervisor.model.actions import ActionResult
from supervisor.adapters.cgroups import CgroupFS
from supervisor.act.component import Context
from supervisor.policy.tick import Tick
from supervisor.model.config import HostFacts, load_config
from supervisor.adapters.engine import Engine
from supervisor.observe.history import History
from supervisor.observe.inventory import Inventory
from supervisor.adapters.journal import Journal
from supervisor.runtime.ollama import OllamaGovernor
from supervisor.policy import psi
from supervisor.policy.ollama_plan import ApiObs
from supervisor.policy.tick import merge_override
from supervisor.policy.ollama_policy import (
    ModelSeen, ModelTracker, container_api_url, cpu_activity, cpu_check, cpuset_check, env_checks, env_drift, env_map, match_container, model_activity, notices,
    ollama_idle, plan_cpu, restore_cores, unload_verdicts)
from supervisor.policy.psi import PsiGate
from supervisor.adapters.ollama_api import (
    LoadedModel, OllamaAPI, OllamaError, OllamaUnavailable, parse_ps, parse_time)
from supervisor.adapters.ollama_host import cgroup_verdict, in_container
from supervisor.act.ollama_recreate import create_body, with_env
from supervisor.model.activity import cpu_rate_since, cpu_step
from supervisor.observe.activity import ActivityTracker
from supervisor.model.snapshot import (
    CgroupStats, ContainerInfo, ContainerSample, Pressure)

GIB = 2**30
HOST = HostFacts(cores=4, memory_bytes=16 * GIB)


def config(**ollama):
    data = {
        "state_dir": "/nonexistent",
        "host": {"layout": "exact"},
        "pools": {"critical": {"budget": "4GiB"}, "standard": {"budget": "4GiB"}},
        "classes": {
            "critical": {"pool": "critical", "cpuset": "2-3", "cpu_quota": 2.0},
            "standard": {"pool": "standard", "cpuset": "any"},
        },
        "manage": {"default_class": "standard"},
        "ladder": {"psi_cpu_some_avg10": 80.0, "psi_duration": "30s", "clear_ratio": 0.8,
                   "clear_after": "60s", "min_action_interval": "15s"},
        "ollama": {"process_names": [], **ollama},
    }
    return load_config(data=data, host=HOST)


S = config().settings.ollama


def model(name: str, expires_at: str = "2026-11-01T10:05:00.123456789+01:00",
          size: int = 4 * GIB) -> LoadedModel:
    return LoadedModel(name=name, model=name, size_bytes=size, digest="d" * 64,
                       expires_at=expires_at, expires_at_s=parse_time(expires_at))


# ---------------------------------------------------------------- recognition and checks


def test_ollama_is_recognised_by_label_image_or_name_and_a_false_label_opts_out():
    assert match_container({"supervisor.ollama": "true"}, "busybox", "llm", S) == "label"
    assert match_container({}, "ollama/ollama:0.5.1", "llm", S) == "image"
    assert match_container({}, "busybox", "ollama-gpu", S) == "name"
    assert match_container({}, "busybox", "postgres", S) == ""
    # compose names the container after its project; the service name is what was written
    compose = {"com.docker.compose.service": "ollama"}
    assert match_container(compose, "busybox", "lab_ollama_1", S) == "name"
    assert match_container({"com.docker.compose.service": "db"}, "busybox", "lab_db_1", S) == ""
    assert match_container({"supervisor.ollama": "false"}, "ollama/ollama", "ollama", S) == ""


def test_env_checks_flag_num_parallel_8_and_unset_max_loaded_models():
    env = env_map(["PATH=/bin", "OLLAMA_NUM_PARALLEL=8"])
    checks = {c.name: c for c in env_checks(env, S)}
    assert set(checks) == {"num_parallel", "max_loaded_models"}  # max_queue only when set
    assert not checks["num_parallel"].ok
    assert checks["num_parallel"].actual == "OLLAMA_NUM_PARALLEL=8"
    assert not checks["max_loaded_models"].ok
    assert "unset" in checks["max_loaded_models"].actual and "3 on CPU" in checks["max_loaded_models"].actual
    assert env_drift(checks.values(), S) == {"OLLAMA_NUM_PARALLEL": "2",
                                              "OLLAMA_MAX_LOADED_MODELS": "1"}


def test_compliant_env_passes_and_max_queue_is_checked_when_configured():
    s = config(max_queue=64).settings.ollama
    env = env_map(["OLLAMA_NUM_PARALLEL=2", "OLLAMA_MAX_LOADED_MODELS=1", "OLLAMA_MAX_QUEUE=512"])
    checks = {c.name: c.ok for c in env_checks(env, s)}
    assert checks == {"num_parallel": True, "max_loaded_models": True, "max_queue": False}


def test_ollama_cpu_limit_variable_is_reported_as_having_no_effect():
    out = notices({"OLLAMA_CPU_LIMIT": "4"})
    assert len(out) == 1 and "has no effect" in out[0]
    assert notices({"OLLAMA_NUM_PARALLEL": "2"}) == []


def test_cpu_limit_must_exist_and_be_at_most_the_configured_cores():
    assert not cpu_check(None, S).ok
    assert not cpu_check(6.0, S).ok
    assert cpu_check(4.0, S).ok and cpu_check(1.5, S).ok


def test_cpuset_is_compared_with_the_class_as_sets_of_cores():
    assert cpuset_check("2,3", "2-3", "critical", 4).ok
    assert not cpuset_check("", "2-3", "critical", 4).ok  # "" = every core
    assert cpuset_check("", None, "standard", 4).ok  # class takes any core
    assert cpuset_check("", "0-3", "all", 4).ok


def test_api_url_comes_from_config_or_the_published_port_on_loopback():
    s = config(api_url="http://127.0.0.1:9999/").settings.ollama
    assert container_api_url({}, (), s) == ("http://127.0.0.1:9999", "ollama.api_url")
    url, _ = container_api_url({}, (("11434/tcp", "0.0.0.0", 31434),), S)
    assert url == "http://127.0.0.1:31434"
    url, _ = container_api_url({"OLLAMA_HOST": "0.0.0.0:8080"}, (("8080/tcp", "", 18080),), S)
    assert url == "http://127.0.0.1:18080"
    url, note = container_api_url({}, (("11434/tcp", "10.1.2.3", 11434),), S)
    assert url is None and "not on loopback" in note
    url, note = container_api_url({}, (), S)
    assert url is None and "not published" in note


def test_a_bad_api_url_or_idle_time_is_refused_naming_the_key():
    from supervisor.model.errors import ConfigError
    with pytest.raises(ConfigError) as e:
        config(api_url="127.0.0.1:11434", model_idle_for="soon")
    keys = dict(e.value.problems)
    assert "http" in keys["ollama.api_url"] and "duration" in keys["ollama.model_idle_for"]
    for url in ("http://:11434", "ftp://127.0.0.1:11434", "http://"):
        with pytest.raises(ConfigError) as e:
            config(api_url=url)
        assert "http" in dict(e.value.problems)["ollama.api_url"], url


# ---------------------------------------------------------------- throttle steps (hysteresis)


def run_gate(series, *, high=80.0, clear=64.0, hold_s=30.0, clear_after_s=60.0, step_s=5.0,
             gate=None):
    """Feed (PSI avg10) readings every step_s; return the gate after each."""
    g = gate or PsiGate()
    out = []
    for i, v in enumerate(series):
        g = psi.advance(g, v, level=high, clear=clear, now=1000.0 + i * step_s, hold_s=hold_s,
                        clear_after_s=clear_after_s)
        out.append(g)
    return out


def test_clear_level_is_the_start_level_times_clear_ratio():
    assert psi.levels(80.0, 0.8) == (80.0, 64.0)


def test_throttle_comes_on_only_after_pressure_is_held_for_psi_duration():
    gates = run_gate([90.0] * 8)  # readings at t = 0, 5, ... 35 s
    on = [g.on for g in gates]
    assert on == [False] * 6 + [True, True]  # on at t = 30 s
    assert gates[6].changed_at == 1030.0


def test_a_dip_below_the_level_restarts_the_hold():
    on = [g.on for g in run_gate([90, 90, 90, 90, 90, 79, 90, 90, 90, 90, 90, 90, 90])]
    assert on.index(True) == 12  # held again from t = 30 s (index 6) to 60 s


def test_throttle_is_restored_only_after_pressure_stays_below_the_clear_level_for_clear_after():
    on_gate = run_gate([90.0] * 7)[-1]
    assert on_gate.on
    # 70% is below the start level but above the clear level: stays throttled.
    assert all(g.on for g in run_gate([70.0] * 30, gate=on_gate))
    # Below the clear level: restored after 60 s (13th reading at 5 s steps).
    gates = run_gate([50.0] * 14, gate=on_gate)
    assert [g.on for g in gates].index(False) == 12


def test_a_rise_above_the_clear_level_restarts_the_clear_wait():
    on_gate = run_gate([90.0] * 7)[-1]
    series = [50.0] * 10 + [70.0] + [50.0] * 13
    on = [g.on for g in run_gate(series, gate=on_gate)]
    assert on.index(False) == 11 + 12


def test_pressure_oscillating_around_the_level_does_not_flap():
    series = [85.0, 75.0] * 200  # crosses the start level every reading
    gates = run_gate(series, step_s=1.0)
    changes = sum(1 for a, b in zip(gates, gates[1:]) if a.on != b.on)
    assert changes == 0


def test_sustained_pressure_then_calm_gives_one_throttle_and_one_restore():
    series = [95.0] * 60 + [30.0] * 80 + [95.0, 60.0] * 40
    gates = run_gate(series, step_s=1.0)
    changes = [i for i, (a, b) in enumerate(zip(gates, gates[1:])) if a.on != b.on]
    assert len(changes) == 2


def test_no_psi_reading_counts_as_no_pressure():
    on_gate = run_gate([90.0] * 7)[-1]
    gates = run_gate([None] * 14, gate=on_gate)
    assert not gates[-1].on


def test_throttle_steps_the_quota_down_to_throttled_cores():
    p = plan_cpu(4.0, True, True, None, True, None, "report", S)
    assert (p.purpose, p.cores) == ("throttle", 2.0)
    p = plan_cpu(None, False, True, None, True, None, "report", S)  # no limit at all
    assert (p.purpose, p.cores) == ("throttle", 2.0)
    assert plan_cpu(1.0, True, True, None, True, None, "report", S) is None  # already lower


def test_a_throttle_changed_behind_our_back_is_reapplied():
    saved = {"before_cores": 4.0, "cores": 2.0}
    assert plan_cpu(2.0, True, True, None, True, saved, "report", S) is None
    p = plan_cpu(4.0, True, True, None, True, saved, "report", S)
    assert (p.purpose, p.cores) == ("throttle", 2.0)


def test_restore_brings_back_the_value_from_before_the_throttle():
    saved = {"before_cores": 3.0, "cores": 2.0}
    p = plan_cpu(2.0, True, True, None, False, saved, "report", S)
    assert (p.purpose, p.cores) == ("restore", 3.0)
    # report: "no limit" before means no limit after; enforce never restores above cpu_cores
    assert restore_cores(None, "report", S) is None
    assert restore_cores(None, "enforce", S) == 4.0
    assert restore_cores(6.0, "enforce", S) == 4.0


def test_enforce_sets_the_limit_and_cpuset_while_report_does_not():
    assert plan_cpu(None, False, False, "2-3", False, None, "report", S) is None
    p = plan_cpu(None, False, False, "2-3", False, None, "enforce", S)
    assert (p.purpose, p.cores, p.cpuset, p.set_cores) == ("enforce", 4.0, "2-3", True)
    p = plan_cpu(1.0, True, False, "2-3", False, None, "enforce", S)
    assert (p.set_cores, p.cpuset) == (False, "2-3")  # a lower limit is compliant: kept


# ---------------------------------------------------------------- the component on hand-made ticks


def ollama_sample(cid="a" * 64, *, env=("OLLAMA_NUM_PARALLEL=2", "OLLAMA_MAX_LOADED_MODELS=1"),
                  quota_us=400_000, cpuset="2-3", cpu_s=10.0) -> ContainerSample:
    info = ContainerInfo(id=cid, name="ollama", image="ollama/ollama:latest", labels={},
                         state="running", pid=4242, cpuset_cpus=cpuset, cpu_quota_us=quota_us,
                         cpu_period_us=100_000 if quota_us else 0, env=tuple(env))
    stats = CgroupStats(version=1, path="/x", memory_usage_bytes=GIB,
                        memory_working_set_bytes=GIB, memory_limit_bytes=None, cpu_usage_s=cpu_s)
    return ContainerSample(info=info, class_name="critical", class_reason="image", managed=True,
                           stats=stats)


def make_tick(cfg, containers, now, cpu_psi=0.0, mem_full=0.0, available=8 * GIB,
              tracker: ActivityTracker | None = None) -> Tick:
    """The factory's tick on the governor's host (4 cores, 16 GiB; CPU and memory
    pressure as given; no reconcile, a one-minute history); its activity is
    ``tracker``'s view (fed tick after tick, as the daemon does once per pass), or none
    known."""
    return handmade.tick(cfg, containers, now=now, cores=4, total=16 * GIB, available=available,
                         pressure={"cpu": Pressure(some_avg10=cpu_psi),
                                   "memory": Pressure(full_avg10=mem_full)},
                         reconcile=False, history=History(60, 1), tracker=tracker)


@pytest.fixture
def governor(tmp_path):
    cfgs = {"cfg": config()}
    engine = Engine("unix:///nonexistent/docker.sock")  # never called by plan()
    journal = Journal(str(tmp_path / "j.sqlite3"))
    ctx = Context(engine=engine, inventory=Inventory(engine), cgroups=CgroupFS(str(tmp_path)),
                  journal=journal, history=History(60, 1), clock=lambda: 0.0,
                  get_config=lambda: cfgs["cfg"])
    gov = OllamaGovernor(ctx)
    gov.cfgs = cfgs
    yield gov
    journal.close()


def test_compliant_ollama_gets_no_alert_and_drift_gets_one_alert_until_it_changes(governor):
    cfg = governor.cfgs["cfg"]
    t = make_tick(cfg, [ollama_sample()], 1000.0)
    assert governor.plan(t) == []
    bad = ollama_sample(env=("OLLAMA_NUM_PARALLEL=8", "OLLAMA_CPU_LIMIT=4"), quota_us=0)
    t = make_tick(cfg, [bad], 1001.0)
    acts = governor.plan(t)
    assert [a.kind for a in acts] == ["alert"]
    assert "OLLAMA_NUM_PARALLEL=8" in acts[0].reason and "no CPU limit" in acts[0].reason
    assert "has no effect" in acts[0].reason
    governor.observe(t, [ActionResult(acts[0], ok=True, dry_run=False)])
    assert governor.plan(make_tick(cfg, [bad], 1002.0)) == []  # reported once
    st = governor.status(t).get()["instances"][0]
    assert st["compliant"] is False
    assert {c["check"]: c["ok"] for c in st["checks"]} == {
        "num_parallel": False, "max_loaded_models": False, "cpu_limit": False, "cpuset": True}
    acts = governor.plan(make_tick(cfg, [ollama_sample()], 1003.0))
    assert [a.kind for a in acts] == ["alert"] and "compliant again" in acts[0].reason


def test_cpu_pressure_throttles_then_restores_through_plan_and_overrides(governor):
    cfg = governor.cfgs["cfg"]
    now = 1000.0
    seen = []
    # 35 s of CPU PSI at 95%: the throttle action comes once psi_duration (30 s) is held.
    for i in range(8):
        t = make_tick(cfg, [ollama_sample()], now + 5 * i, cpu_psi=95.0)
        ov = governor.overrides(t)
        seen.append(([a.kind for a in governor.plan(t)], ov))
        governor.observe(t, [])  # the pass ends (nothing executed in this unit test)
    assert [k for k, _ in seen[:6]] == [[]] * 6
    kinds, ov = seen[6]
    assert kinds == ["ollama_cpu"]
    assert ov["a" * 64]["cpu_quota_cores"] == 2.0  # placement keeps the throttle
    act = governor.plan(t)[0]
    assert act.params == {"target_kind": "container", "purpose": "throttle", "cores": 2.0,
                          "before_cores": 4.0}
    # The executor's effect (unit test: no engine): state saved, quota now 2 cores.
    governor.throttles.save("a" * 64, {"before_cores": 4.0, "cores": 2.0})
    later = now + 40
    for i in range(12):  # 55 s below the clear level: still throttled
        t = make_tick(cfg, [ollama_sample(quota_us=200_000)], later + 5 * i, cpu_psi=10.0)
        assert governor.overrides(t)["a" * 64]["cpu_quota_cores"] == 2.0
        assert governor.plan(t) == []
        governor.observe(t, [])
    t = make_tick(cfg, [ollama_sample(quota_us=200_000)], later + 60, cpu_psi=10.0)
    # While restoring, placement is told to hold the restored value, not the throttle.
    assert governor.overrides(t)["a" * 64]["cpu_quota_cores"] == 4.0
    acts = governor.plan(t)
    assert [(a.kind, a.params["purpose"], a.params["cores"]) for a in acts] == \
        [("ollama_cpu", "restore", 4.0)]


def test_memory_pressure_plans_unloads_of_idle_models_only(governor):
    cfg = governor.cfgs["cfg"]
    key = "a" * 64
    idle = model("idle:latest")
    # The poller's view: both loaded since t=1000; "busy" renewed its expiry at t=1059.
    governor.models.seen[key] = {
        "idle:latest": ModelSeen(1000.0, idle.expires_at, None),
        "busy:latest": ModelSeen(1000.0, "x", 1059.0)}
    governor._obs[key] = ApiObs(1060.0, True, (idle, model("busy:latest", "x")), "",
                                "http://127.0.0.1:1")
    s = ollama_sample()
    info = dataclasses.replace(s.info, ports=(("11434/tcp", "127.0.0.1", 1),))
    s = dataclasses.replace(s, info=info)
    t = make_tick(cfg, [s], 1060.0)
    assert [a.kind for a in governor.plan(t)] == []  # no pressure: nothing
    t = make_tick(cfg, [s], 1061.0, available=GIB // 2)  # inside the 1.38 GiB reserve
    acts = [a for a in governor.plan(t) if a.kind == "ollama_unload"]
    assert [a.params["model"] for a in acts] == ["idle:latest"]
    assert acts[0].params["expires_at"] == idle.expires_at
    governor.observe(t, [])
    models = {m["name"]: m["in_use"] for m in governor.status(t).get()["instances"][0]["api"]["models"]}
    assert models == {"idle:latest": False, "busy:latest": True}


def governor_state(gov) -> dict:
    """Everything the governor remembers, copied: its memory (CPU activity, PSI gates,
    what it reported and tried), the committed views, the saved throttles (and their
    durable copy), the poller's readings and list, its counts."""
    with gov._lock:
        poller = copy.deepcopy((gov._obs, gov.models.seen, gov._poll_list, gov._host_procs,
                                gov._host_scanned_at))
    return {"memory": copy.deepcopy(gov.memory), "views": copy.deepcopy(gov.views),
            "throttles": gov.throttles.snapshot(), "poller": poller,
            "journal": gov.ctx.journal.states("ollama."), "counts": dict(gov.counts),
            "recover_pending": gov._recover_pending}


def test_planning_twice_from_one_tick_gives_the_same_plan_and_changes_no_state(governor):
    cfg = config(policy="enforce")
    governor.cfgs["cfg"] = cfg
    key = "a" * 64
    drifting = ollama_sample(env=("OLLAMA_NUM_PARALLEL=8",), quota_us=0, cpuset="")
    info = dataclasses.replace(drifting.info, ports=(("11434/tcp", "127.0.0.1", 1),))
    drifting = dataclasses.replace(drifting, info=info)
    governor.models.seen[key] = {"m:latest": ModelSeen(900.0, "x", None)}
    governor._obs[key] = ApiObs(1039.5, True, (model("m:latest", "x"),), "", "http://127.0.0.1:1")
    # A history: CPU pressure held (the gate turns on at t = 1030), Ollama's CPU quiet.
    tracker = ActivityTracker("/nonexistent")
    for i in range(7):
        t = make_tick(cfg, [drifting], 1000.0 + 5 * i, cpu_psi=95.0, tracker=tracker)
        governor.plan(t)
        governor.observe(t, [])
    assert governor.memory.cpu_gate.on and cpu_activity(t, key) == (False, 30.0)
    # The next tick: the reserve breached (unload), drift (alert, enforce), CPU pressure on.
    t = make_tick(cfg, [dataclasses.replace(drifting, stats=dataclasses.replace(
        drifting.stats, cpu_usage_s=10.01))], 1040.0, cpu_psi=10.0, available=GIB // 2,
        tracker=tracker)
    before = governor_state(governor)
    first = (governor.overrides(t), governor.plan(t))
    second = (governor.overrides(t), governor.plan(t))
    assert first == second
    assert {a.kind for a in first[1]} >= {"alert", "ollama_cpu", "ollama_unload"}
    assert governor_state(governor) == before
    # GET /plan replans the last tick the loop committed, with fresh overrides: the same.
    governor.observe(t, [])
    committed = governor_state(governor)
    again = dataclasses.replace(t, overrides={})
    assert (governor.overrides(again), governor.plan(again)) == first
    assert governor_state(governor) == committed


def test_the_governors_cpu_cap_combines_with_other_caps_smallest_wins(governor):
    cfg = config(policy="enforce")
    governor.cfgs["cfg"] = cfg
    key = "a" * 64
    t = make_tick(cfg, [ollama_sample(quota_us=0)], 1000.0)  # no limit: Rule 12.1 caps at 4
    assert governor.overrides(t)[key] == {"cpu_quota_cores": 4.0, "cpuset_cpus": "2-3"}
    # The loop merges each component's override over the others' (runtime.passes).
    throttle = {"cpu_quota_cores": 1.5, "memory_reservation_bytes": GIB}
    assert merge_override(throttle, governor.overrides(t)[key]) == {
        "cpu_quota_cores": 1.5, "cpuset_cpus": "2-3", "memory_reservation_bytes": GIB}
    assert merge_override({"cpu_quota_cores": 6.0}, governor.overrides(t)[key])["cpu_quota_cores"] == 4.0
    a, b = {"cpu_quota_cores": 3.0, "x": 1}, {"cpu_quota_cores": 2.0}
    assert merge_override(a, b)["cpu_quota_cores"] == merge_override(b, a)["cpu_quota_cores"] == 2.0


# ---------------------------------------------------------------- in use, idle


def test_a_model_whose_expiry_moves_is_active_and_one_still_for_long_enough_is_idle():
    tr = ModelTracker()
    tr.update("k", [model("a", "t1"), model("b", "t1")], 100.0)
    tr.update("k", [model("a", "t2"), model("b", "t1")], 101.0)
    seen = tr.get("k")
    assert model_activity(seen["a"], 101.5, 30.0)[0] == "active"
    assert model_activity(seen["b"], 101.5, 30.0)[0] == "settling"  # watched 1.5 s only
    assert model_activity(seen["b"], 131.0, 30.0)[0] == "idle"
    assert model_activity(seen["a"], 131.5, 30.0)[0] == "idle"
    tr.update("k", [model("b", "t1")], 140.0)
    assert set(tr.get("k")) == {"b"}  # unloaded models are forgotten


def test_busy_cpu_with_no_model_showing_activity_keeps_every_model():
    seen = {"a": ModelSeen(0.0, "t", None), "b": ModelSeen(0.0, "t", 95.0)}
    ms = [model("a", "t"), model("b", "t")]
    v = unload_verdicts(ms, seen, 100.0, 30.0, cpu_busy=False)
    assert v["a"][0] is False and v["b"][0] is True
    v = unload_verdicts(ms, seen, 100.0, 30.0, cpu_busy=True)
    assert v["a"][0] is False  # the CPU is explained by b's requests
    seen["b"] = ModelSeen(0.0, "t", None)
    v = unload_verdicts(ms, seen, 100.0, 30.0, cpu_busy=True)
    assert v["a"][0] and v["b"][0] and "long request" in v["a"][1]


def test_idle_needs_no_loaded_model_and_quiet_cpu_or_long_quiet_without_api():
    assert ollama_idle(True, [], False, 0.0, 120.0)[0]
    assert not ollama_idle(True, [model("m")], False, 500.0, 120.0)[0]
    assert not ollama_idle(True, [], True, 0.0, 120.0)[0]
    assert not ollama_idle(True, [], None, None, 120.0)[0]
    assert not ollama_idle(False, None, False, 60.0, 120.0)[0]
    assert ollama_idle(False, None, False, 120.0, 120.0)[0]


def test_cpu_activity_tracks_rate_and_quiet_time():
    """Busy and quiet time of Ollama's CPU, from the activity views of successive ticks
    (busy above hibernation.cpu_idle_cores, 0.01 here)."""
    cfg, tracker = config(), ActivityTracker("/nonexistent")

    def at(now, cpu_s, cid="a" * 64):
        return cpu_activity(make_tick(cfg, [ollama_sample(cid, cpu_s=cpu_s)], now,
                                      tracker=tracker), cid)
    assert at(0.0, 10.0) == (None, None)  # one reading: not measured yet
    assert at(1.0, 10.5) == (True, 0.0)
    at(2.0, 10.5)
    assert at(5.0, 10.5) == (False, 4.0)
    assert at(6.0, 1.0) == (None, None)  # counter went back: a restart, measured anew
    assert at(7.0, 1.0) == (False, 1.0)


def test_the_recreate_recheck_rate_counts_everything_since_the_last_pass():
    # The last pass read 50.0 s at t=100; this pass's view read 50.0 s at t=105 (quiet).
    rec = cpu_step(cpu_step(None, 7, 100.0, 50.0), 7, 105.0, 50.0)
    assert cpu_rate_since(rec, 7, 105.5, 50.0) == 0.0  # still quiet at the re-check
    assert cpu_rate_since(rec, 7, 106.0, 53.0) == pytest.approx(0.5)  # a request started
    assert cpu_rate_since(None, 7, 106.0, 50.5) is None  # never read: not confirmed
    assert cpu_rate_since(rec, 7, 106.0, 1.0) is None  # counter went back: restarted
    assert cpu_rate_since(rec, 8, 106.0, 50.5) is None  # another process
    first = cpu_step(None, 7, 100.0, 50.0)  # read once only: from that reading
    assert cpu_rate_since(first, 7, 102.0, 51.0) == pytest.approx(0.5)


def test_a_ticks_activity_view_is_frozen_and_later_passes_leave_it_as_it_was():
    cfg, tracker = config(), ActivityTracker("/nonexistent")
    a, b = "a" * 64, "b" * 64
    first = make_tick(cfg, [ollama_sample(a, cpu_s=10.0), ollama_sample(b, cpu_s=1.0)], 0.0,
                      tracker=tracker)
    kept = dict(first.activity.cpu)
    nxt = make_tick(cfg, [ollama_sample(a, cpu_s=12.0)], 1.0, tracker=tracker)
    assert dict(first.activity.cpu) == kept  # what the first pass decided from
    assert nxt.activity.cpu_cores(a) == 2.0 and cpu_activity(nxt, a)[0] is True
    assert nxt.activity.cpu.get(b) is None  # gone: forgotten
    with pytest.raises(TypeError):
        first.activity.cpu[b] = None  # read-only
    assert copy.deepcopy(first.activity) is first.activity  # immutable: shared, not copied


# ---------------------------------------------------------------- API client and fake


def test_ps_shapes_are_parsed_and_bad_shapes_refused():
    body = {"models": [{"name": "mistral:latest", "model": "mistral:latest", "size": 5137025024,
                        "digest": "2ae6", "details": {"format": "gguf"},
                        "expires_at": "2024-06-04T14:38:31.83753-07:00", "size_vram": 5137025024,
                        "context_length": 4096}]}
    (m,) = parse_ps(body)
    assert (m.name, m.size_bytes, m.context_length) == ("mistral:latest", 5137025024, 4096)
    assert m.expires_at_s == pytest.approx(1717537111.83753)
    with pytest.raises(OllamaError):
        parse_ps({"models": [{"size": 1}]})
    with pytest.raises(OllamaError):
        parse_ps(["not", "a", "dict"])


def test_client_unloads_through_the_fake_and_the_fake_records_keep_alive_0():
    fake = FakeOllama().start()
    try:
        fake.load("llama3.2:latest")
        api = OllamaAPI(fake.url, timeout_s=2.0)
        assert [m.name for m in api.ps()] == ["llama3.2:latest"]
        answer = api.unload("llama3.2:latest")
        assert answer["done_reason"] == "unload" and answer["done"] is True
        assert fake.unload_requests() == ["llama3.2:latest"] and fake.loaded() == []
    finally:
        fake.close()


def test_client_backs_off_from_a_silent_ollama_without_touching_the_network():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        now = [0.0]
        api = OllamaAPI(f"http://127.0.0.1:{port}", timeout_s=0.5, clock=lambda: now[0])
        with pytest.raises(OllamaUnavailable):
            api.ps()
        with pytest.raises(OllamaUnavailable, match="next try"):
            api.ps()
        assert api.counts["skipped_backoff"] == 1 and api.counts["GET /api/ps"] == 1
        now[0] = 1.5  # past the first 1 s wait: tries again, fails, waits 2 s
        with pytest.raises(OllamaUnavailable):
            api.ps()
        assert api.counts["GET /api/ps"] == 2 and api.retry_at == pytest.approx(3.5)


def test_fake_answers_503_when_the_queue_is_full():
    fake = FakeOllama(gen_s=1.0, num_parallel=1, max_queue=0).start()
    try:
        fake.load("m")
        import json
        import urllib.error
        import urllib.request
        done = threading.Event()

        def gen():
            req = urllib.request.Request(fake.url + "/api/generate", method="POST",
                                         data=json.dumps({"model": "m", "prompt": "x"}).encode())
            urllib.request.urlopen(req, timeout=5).read()
            done.set()
        threading.Thread(target=gen, daemon=True).start()
        wait_for(lambda: fake.models["m"].active == 1, 3, what="a generation in flight")
        req = urllib.request.Request(fake.url + "/api/generate", method="POST",
                                     data=json.dumps({"model": "m", "prompt": "y"}).encode())
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=5)
        assert e.value.code == 503
        assert done.wait(5)
    finally:
        fake.close()


# ---------------------------------------------------------------- host processes, recreate body


def test_host_cgroup_verdict_refuses_root_shared_own_and_systemd_cgroups():
    names = {"ollama"}
    assert not cgroup_verdict("/", [(1, "ollama")], names, "/x")[0]
    assert not cgroup_verdict("/x", [(1, "ollama")], names, "/x")[0]
    ok, why = cgroup_verdict("/work", [(1, "ollama"), (2, "bash")], names, "/x")
    assert not ok and "bash" in why
    ok, why = cgroup_verdict("/system.slice/ollama.service", [(1, "ollama")], names, "/")
    assert not ok and "systemctl set-property ollama.service" in why
    assert cgroup_verdict("/ollama", [(1, "ollama"), (2, "ollama")], names, "/")[0]


def test_processes_inside_containers_are_not_host_processes():
    assert in_container({"memory": "/docker/" + "ab" * 32})
    assert in_container({"unified": "/system.slice/docker-" + "cd" * 32 + ".scope"})
    assert not in_container({"cpu": "/", "memory": "/user.slice/session-1.scope"})


def test_with_env_replaces_in_place_and_appends():
    env = ["PATH=/bin", "OLLAMA_NUM_PARALLEL=8", "OLLAMA_HOST=0.0.0.0"]
    assert with_env(env, {"OLLAMA_NUM_PARALLEL": "2", "OLLAMA_MAX_LOADED_MODELS": "1"}) == [
        "PATH=/bin", "OLLAMA_NUM_PARALLEL=2", "OLLAMA_HOST=0.0.0.0", "OLLAMA_MAX_LOADED_MODELS=1"]


def test_create_body_keeps_config_hostconfig_named_and_anonymous_volumes_and_networks():
    attrs = {
        "Id": "f" * 64, "Name": "/ollama", "Image": "sha256:abc",
        "Config": {"Hostname": "f" * 12, "Image": "ollama/ollama", "Env": ["A=1"],
                   "Cmd": ["serve"], "Entrypoint": ["/bin/ollama"], "Labels": {"x": "y"}},
        "HostConfig": {"Binds": ["models:/root/.ollama"], "NetworkMode": "backend",
                       "RestartPolicy": {"Name": "unless-stopped"}, "CpuQuota": 400000,
                       "PortBindings": {"11434/tcp": [{"HostIp": "127.0.0.1", "HostPort": "11434"}]}},
        "Mounts": [{"Type": "volume", "Name": "models", "Destination": "/root/.ollama", "RW": True},
                   {"Type": "volume", "Name": "anon123", "Destination": "/cache", "RW": True}],
        "NetworkSettings": {"Networks": {
            "backend": {"Aliases": ["ollama", "f" * 12], "IPAMConfig": None},
            "monitoring": {"Aliases": ["llm"], "IPAMConfig": {"IPv4Address": "172.30.0.9"}}}},
    }
    body, extra = create_body(attrs, ["A=1", "OLLAMA_NUM_PARALLEL=2"], "ollama/ollama")
    assert "Hostname" not in body  # generated from the old id
    assert body["Env"] == ["A=1", "OLLAMA_NUM_PARALLEL=2"]
    assert (body["Cmd"], body["Entrypoint"], body["Labels"]) == (["serve"], ["/bin/ollama"], {"x": "y"})
    hc = body["HostConfig"]
    assert hc["Binds"] == ["models:/root/.ollama"] and hc["RestartPolicy"]["Name"] == "unless-stopped"
    assert hc["Mounts"] == [{"Type": "volume", "Source": "anon123", "Target": "/cache",
                             "ReadOnly": False}]
    assert hc["PortBindings"]["11434/tcp"][0]["HostPort"] == "11434" and hc["CpuQuota"] == 400000
    assert body["NetworkingConfig"]["EndpointsConfig"]["backend"]["Aliases"] == ["ollama"]
    assert set(extra) == {"monitoring"}
    assert attrs["HostConfig"].get("Mounts") is None  # the saved inspect is left untouched
