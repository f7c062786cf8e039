"""The breach ladder's decisions on hand-made ticks: order of the rungs, grace periods,
levels that cap the ladder, protected classes, eviction order, hysteresis (oscillating
usage yields a bounded number of actions), undo after recovery, rate limits, and a
restart from the state the journal holds."""

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.act.component import Context
from supervisor.act.ladder_knobs import THROTTLE_PREFIX, Throttle
from supervisor.adapters.journal import Journal
from supervisor.model.actions import Action, ActionResult, Outcome
from supervisor.model.snapshot import Pressure
from supervisor.policy.ladder import plan_breach_actions
from supervisor.policy.ladder_rungs import eviction_rank
from supervisor.policy.ladder_state import LadderState
from supervisor.runtime.ladder import BREACH_PREFIX, Ladder

from _ladder_kit import MIB, Sim, container, make_cfg, make_tick, sim_actuator

STD_BUDGET_MIB = 96


def pool_members(filler_mib=80.0, victim_mib=24.0):
    return [container("filler", "standard", ws_mib=filler_mib, resv_mib=16),
            container("victim", "batch", ws_mib=victim_mib, resv_mib=8),
            container("pg", "infrastructure", ws_mib=30, resv_mib=96, limit_mib=128)]


def run(sim, containers, start, end, dt=0.2, **kw):
    t = start
    while t < end - 1e-9:
        sim.step(containers if not callable(containers) else containers(t), round(t, 3), **kw)
        t = round(t + dt, 3)
    return t


def test_rungs_climb_in_order_one_grace_apart_and_infrastructure_is_untouched():
    sim = Sim(make_cfg())  # grace 1 s, no hibernation mechanism
    cs = pool_members()
    run(sim, cs, 0.0, 3.2)
    got = [(t, a.kind, a.name) for t, a in sim.actions]
    assert got[0] == (0.0, "alert", "pool standard")
    assert [x for x in got if x[1] == "throttle"] == [(1.0, "throttle", "victim"),
                                                      (1.0, "throttle", "filler")]
    assert [x for x in got if x[1] == "reclaim"][0][0] == 2.0
    assert [x for x in got if x[1] == "stop"] == [(3.0, "stop", "victim")]
    assert [k for k in sim.kinds() if k != "alert"] == ["throttle", "throttle", "reclaim",
                                                        "reclaim", "stop"]
    skipped = [(t, n.kind, n.outcome, n.detail) for t, n in sim.notes]
    assert skipped == [(3.0, "hibernate", "skipped",
                        "no hibernation mechanism (no executor for 'hibernate')")]
    assert all(a.target != cs[2].info.id for _, a in sim.actions)  # pg
    stop = sim.of("stop")[0][1]
    assert stop.destructive and stop.params["timeout_s"] == 10
    assert "ladder step 5 (stop)" in stop.reason and "reclaim did not clear it" in stop.reason
    assert "104.0MiB = 108% of its 96.0MiB budget" in stop.reason


def test_once_the_stop_brings_the_pool_into_the_band_nothing_more_happens():
    sim = Sim(make_cfg())
    cs = pool_members()
    run(sim, cs, 0.0, 3.2)
    # victim stopped (still there, exited): 80 MiB = 83%, between clear and warn
    after_stop = [cs[0], container("victim", "batch", state="exited"), cs[2]]
    n = len(sim.actions)
    run(sim, after_stop, 3.2, 30.0)
    assert len(sim.actions) == n  # no new rung, no undo: the last rung is working
    assert "pool:standard" in sim.state.tracks


def test_no_rung_before_its_grace_period():
    sim = Sim(make_cfg(ladder={"grace": "5s"}))
    cs = pool_members()
    run(sim, cs, 0.0, 5.0)
    assert sim.kinds() == ["alert"]
    sim.step(cs, 5.0)
    assert sim.kinds()[1:] == ["throttle", "throttle"]


def test_the_level_caps_the_ladder():
    # warn (85-95%): alert only, however long it lasts
    sim = Sim(make_cfg())
    run(sim, [container("a", ws_mib=84, resv_mib=8)], 0.0, 20.0)
    assert sim.kinds() == ["alert"]
    # critical (95-100%): up to hibernate, never stop
    sim = Sim(make_cfg())
    crit = [container("a", ws_mib=93, resv_mib=8)]
    run(sim, crit, 0.0, 20.0)
    assert sim.kinds() == ["alert", "throttle", "reclaim"]
    assert [n.kind for _, n in sim.notes] == ["hibernate"]
    # over budget: the rise is alerted, and since the last rung failed long ago (reclaim
    # at 2 s) the stop comes at once
    run(sim, [container("a", ws_mib=100, resv_mib=8)], 20.0, 20.2)
    assert [(t, a.kind) for t, a in sim.actions[3:]] == [(20.0, "alert"), (20.0, "stop")]
    assert "over breach rose" in sim.actions[3][1].reason


def test_protected_classes_are_never_throttled_or_stopped():
    cfg = make_cfg(classes={"standard": {"protected": True}})
    sim = Sim(cfg)
    cs = [container("keep", "standard", ws_mib=90, resv_mib=8),  # most above its request
          container("cheap", "batch", ws_mib=10, resv_mib=4)]
    run(sim, cs, 0.0, 10.0)
    assert {a.name for _, a in sim.actions if a.kind != "alert"} == {"cheap"}
    assert [a.name for _, a in sim.of("stop")][:1] == ["cheap"]
    # a pool of nothing but protected containers: alerts and notes only
    sim = Sim(cfg)
    run(sim, [container("keep", "standard", ws_mib=100, resv_mib=8)], 0.0, 10.0)
    assert sim.kinds() == ["alert"]
    # rungs 2-5 skipped once each, the repeated stop rung once more: then silence
    assert [(n.kind, n.outcome) for _, n in sim.notes] == [
        ("throttle", "skipped"), ("reclaim", "skipped"), ("hibernate", "skipped"),
        ("stop", "skipped"), ("stop", "skipped")]
    assert all("may be acted on" in n.detail for _, n in sim.notes)


def test_infrastructure_is_never_stopped_even_unprotected():
    cfg = make_cfg(classes={"infrastructure": {"protected": False, "pool": "standard"}})
    sim = Sim(cfg)
    run(sim, [container("pg", "infrastructure", ws_mib=110, resv_mib=8)], 0.0, 10.0)
    assert sim.kinds() == ["alert"]


def test_eviction_order_is_kubelets():
    cfg = make_cfg()
    a = container("a", "standard", ws_mib=60, resv_mib=50)  # 10 above its request
    b = container("b", "batch", ws_mib=20, resv_mib=30)  # lowest priority, under its request
    c = container("c", "standard", ws_mib=40, resv_mib=10)  # 30 above
    d = container("d", "batch", ws_mib=12, resv_mib=10)  # lowest priority, 2 above
    assert [x.info.name for x in eviction_rank([a, b, c, d], cfg)] == ["d", "c", "a", "b"]
    sim = Sim(cfg)
    run(sim, [a, b, c, d], 0.0, 3.2)
    assert [x.name for _, x in sim.of("stop")] == ["d"]


def test_stop_repeats_each_grace_while_still_over():
    sim = Sim(make_cfg())
    cs = [container("big", "standard", ws_mib=90, resv_mib=16),
          container("small", "batch", ws_mib=20, resv_mib=4),
          container("idle", "batch", ws_mib=2, resv_mib=8)]
    run(sim, cs, 0.0, 3.2)
    assert [a.name for _, a in sim.of("stop")] == ["small"]
    left = [cs[0], cs[2]]  # 92 MiB: critical, not over: no second stop
    run(sim, left, 3.2, 8.0)
    assert len(sim.of("stop")) == 1
    grown = [container("big", "standard", ws_mib=100, resv_mib=16), cs[2]]
    run(sim, grown, 8.0, 8.2)
    assert [a.name for _, a in sim.of("stop")] == ["small", "big"]  # idle is under its request


def test_usage_oscillating_around_the_start_level_alerts_once():
    sim = Sim(make_cfg())
    series = lambda t: [container("a", ws_mib=80.5 if int(t * 5) % 2 else 82.5)]  # 84% / 86%
    run(sim, series, 0.0, 60.0)
    assert sim.kinds() == ["alert"]


def test_usage_oscillating_around_the_clear_level_neither_undoes_nor_redoes():
    sim = Sim(make_cfg())
    run(sim, [container("a", "batch", ws_mib=93, resv_mib=8)], 0.0, 1.2)  # critical: throttled
    assert sim.kinds() == ["alert", "throttle"]
    wobble = lambda t: [container("a", "batch", ws_mib=76 if int(t * 5) % 2 else 78)]  # 79% / 81%
    run(sim, wobble, 1.2, 61.2)
    assert sim.kinds() == ["alert", "throttle"]  # nothing climbs, nothing is undone
    run(sim, [container("a", "batch", ws_mib=70)], 61.2, 70.0)
    assert sim.kinds() == ["alert", "throttle", "unthrottle"]
    # the wobble's last sample (61.0) was already below clear: undone 3 s (clear_after) later
    assert sim.of("unthrottle")[0][0] == 64.0


def test_a_noisy_series_stays_inside_the_rate_limits():
    cfg = make_cfg(ladder={"max_actions_per_minute": 6, "min_action_interval": "5s",
                           "clear_after": "2s"})
    sim = Sim(cfg)
    rnd = random.Random(4)
    names = [f"c{i}" for i in range(6)]

    def series(t):
        total = rnd.uniform(60, 115)
        return [container(n, "batch" if i % 2 else "standard", ws_mib=total / 6, resv_mib=4)
                for i, n in enumerate(names)]
    run(sim, series, 0.0, 600.0)
    acts = [(t, a) for t, a in sim.actions if a.kind != "alert"]
    assert acts, "the series must make the ladder act"
    for t, _ in acts:
        assert sum(1 for u, _ in acts if t - 60 < u <= t) <= 6
    by_target = {}
    for t, a in acts:
        by_target.setdefault(a.target, []).append(t)
    for times in by_target.values():
        assert all(b - a >= 5.0 for a, b in zip(times, times[1:]))


def test_throttles_are_undone_after_clear_after_below_the_clear_level():
    sim = Sim(make_cfg())
    run(sim, pool_members(), 0.0, 1.2)
    throttled = {a.target for _, a in sim.of("throttle")}
    assert len(throttled) == 2 and set(sim.state.throttles) == throttled
    calm = pool_members(filler_mib=40, victim_mib=10)  # 52%
    run(sim, calm, 1.2, 4.2)
    assert not sim.of("unthrottle")  # 3 s below clear not yet reached
    run(sim, calm, 4.2, 4.6)
    undone = sim.of("unthrottle")
    assert {a.target for _, a in undone} == throttled and undone[0][0] == 4.2
    assert undone[0][1].params["restore"] == {"cpu": "orig"}
    assert "pool:standard" in undone[0][1].reason
    assert not sim.state.tracks


def test_a_throttle_stays_while_another_open_breach_covers_its_container():
    sim = Sim(make_cfg())
    cs = [container("a", "batch", ws_mib=100, resv_mib=8)]
    run(sim, cs, 0.0, 1.2)  # the pool is over: throttled for it
    assert {a.params["breach"] for _, a in sim.of("throttle")} == {"pool:standard"}
    calm = [container("a", "batch", ws_mib=30, resv_mib=8)]
    run(sim, calm, 1.2, 10.0, available_mib=200)  # pool fine, host reserve breached
    assert "pool:standard" not in sim.state.tracks and sim.state.tracks["reserve"].step >= 2
    assert len(sim.of("throttle")) == 1  # throttles do not stack
    assert not sim.of("unthrottle")
    run(sim, calm, 10.0, 14.2, available_mib=2048)
    assert len(sim.of("unthrottle")) == 1


def test_the_per_minute_cap_holds_rungs_back_and_says_so():
    cfg = make_cfg(ladder={"max_actions_per_minute": 3})
    sim = Sim(cfg)
    cs = [container(f"b{i}", "batch", ws_mib=10, resv_mib=4) for i in range(10)]
    run(sim, cs, 0.0, 3.2)
    assert len(sim.of("throttle")) == 3 and not sim.of("reclaim")
    held = sim.journaled_holds()
    assert len(held) == 1 and "max_actions_per_minute" in held[0]["detail"]  # said once
    run(sim, cs, 3.2, 61.2)
    assert sim.of("reclaim")[0][0] == 61.0  # the minute has passed


def test_min_action_interval_delays_the_stop_of_a_just_throttled_container():
    sim = Sim(make_cfg(ladder={"min_action_interval": "2.5s"}))
    cs = [container("only", "batch", ws_mib=100, resv_mib=8)]
    run(sim, cs, 0.0, 6.0)
    # throttle at 1.0; reclaim held until 3.5; stop held until 6.0 - reclaim at 3.6
    times = [(t, a.kind) for t, a in sim.actions]
    assert times[:3] == [(0.0, "alert"), (1.0, "throttle"), (3.6, "reclaim")]
    sim.step(cs, 6.0)
    sim.step(cs, 6.2)
    assert sim.of("stop")[0][0] == 6.2
    assert any("min_action_interval" in r.detail for _, r in sim.held)


def test_with_the_engine_down_only_alerts_go_out():
    sim = Sim(make_cfg())
    run(sim, pool_members(), 0.0, 5.0, engine_up=False)
    assert sim.kinds() == ["alert"]
    assert [n.outcome for _, n in sim.notes] == ["held"]
    run(sim, pool_members(), 5.0, 5.2)
    assert sim.kinds()[1:] == ["throttle", "throttle"]


def test_v2_throttles_memory_high_and_v1_the_cpu_and_soft_limit():
    cfg = make_cfg()
    v2 = [container("a", "batch", ws_mib=100, usage_mib=100, resv_mib=8, version=2)]
    sim = Sim(cfg)
    run(sim, v2, 0.0, 1.2, version=2)
    (_, a), = sim.of("throttle")
    assert a.params["set"] == {"memory_high": int(100 * MIB * 0.9) // 4096 * 4096}
    v1 = [container("a", "batch", ws_mib=100, resv_mib=96, quota_us=50_000)]
    sim = Sim(cfg)
    run(sim, v1, 0.0, 1.2)
    (_, a), = sim.of("throttle")
    assert a.params["set"] == {"cpu": 0.25, "memory_reservation": int(100 * MIB * 0.9) // 4096 * 4096}
    # without a CPU limit the throttle halves what its cpuset (here: none, the host) offers
    sim = Sim(cfg)
    run(sim, [container("a", "batch", ws_mib=100, resv_mib=8)], 0.0, 1.2)
    assert sim.of("throttle")[0][1].params["set"] == {"cpu": 1.0}


def test_cpu_pressure_is_answered_with_a_cpu_throttle_only():
    cfg = make_cfg(ladder={"psi_cpu_some_avg10": 50.0, "psi_duration": "1s"})
    sim = Sim(cfg)
    busy = {"memory": Pressure(), "cpu": Pressure(some_avg10=95.0)}
    cs = [container("a", "batch", ws_mib=10, resv_mib=4),
          container("b", "standard", ws_mib=10, resv_mib=4)]
    run(sim, cs, 0.0, 30.0, psi=busy)
    assert sim.kinds() == ["alert", "throttle"]
    (_, a), = sim.of("throttle")
    assert a.name == "a" and a.params["set"] == {"cpu": 1.0} and a.params["resource"] == "cpu"


def test_a_container_hitting_its_own_limit_is_alerted_only():
    sim = Sim(make_cfg())
    for i in range(40):
        sim.step([container("a", events={"failcnt": i * 10, "oom_kill": 0})], float(i))
    assert sim.kinds() == ["alert"]
    assert "hit its own memory limit" in sim.actions[0][1].reason


def test_the_hibernate_rung_picks_idle_containers_when_the_mechanism_exists():
    cfg = make_cfg(ladder={"hibernate_idle_after": "2s"})
    sim = Sim(cfg, capabilities={"hibernate"})

    def cs(t):
        return [container("busy", "batch", ws_mib=50, resv_mib=60, cpu_s=t),  # one core
                container("idle", "batch", ws_mib=43, resv_mib=60, cpu_s=1.0),
                container("nohib", "batch", ws_mib=1, resv_mib=60,
                          labels={"supervisor.hibernate": "false"})]
    run(sim, cs, 0.0, 3.2)  # critical: 94 MiB
    (_, h), = sim.of("hibernate")
    assert h.name == "idle" and h.params["idle_s"] >= 2.0
    assert not sim.of("stop")


def test_a_vanished_container_closes_its_own_breach():
    sim = Sim(make_cfg())
    for i in range(5):
        sim.step([container("a", events={"failcnt": i * 10, "oom_kill": 0})], float(i))
    assert any(k.startswith("oom:") for k in sim.state.tracks)
    run(sim, [], 5.0, 9.0)
    assert not sim.state.tracks
    assert [n.outcome for _, n in sim.notes] == ["cleared"]


# ---------------------------------------------------------------------------- restart

def ladder_on(journal, now, caps=(), cfg=None):
    """The component as the daemon builds it: its actions go through the actuator
    (ctx.execute), whose executors write the durable records the way the throttle
    executor does (intent, then result)."""
    clock = lambda: now[0]
    ctx = Context(engine=None, inventory=None, cgroups=None, journal=journal, history=None,
                  clock=clock, get_config=lambda: cfg or make_cfg(), capabilities=set(caps))
    ladder = Ladder(ctx)
    actuator = sim_actuator(journal, clock, ctx.get_config)

    def throttle(a):
        key = THROTTLE_PREFIX + a.target
        rec = Throttle(a.target, a.name, (a.params["breach"],),
                       before={k: "orig" for k in a.params["set"]}, after={}, at=now[0],
                       state="applying")
        journal.put_state(key, rec.to_dict())
        journal.put_state(key, {**rec.to_dict(), "after": a.params["set"], "state": "applied"})
        return Outcome(ok=True)

    def unthrottle(a):
        journal.del_state(THROTTLE_PREFIX + a.target)
        return Outcome(ok=True)
    actuator.register("throttle", throttle)
    actuator.register("unthrottle", unthrottle)
    ctx.execute = lambda a: actuator.execute_one(a, dry_run=False)
    ladder.actuator = actuator  # for the tests' eyes only
    return ladder


def drive(ladder, cfg, containers, now, start, end, dt=0.2, **kw):
    """plan / execute / observe as the daemon does; the actions that ran."""
    t = start
    out = []
    while t < end - 1e-9:
        now[0] = t
        tick = make_tick(cfg, containers, t, **kw)
        results = [ladder.ctx.execute(a) for a in ladder.plan(tick)]
        ladder.observe(tick, results)
        out += [(t, r.action) for r in results if not r.skipped]
        t = round(t + dt, 3)
    return out


def test_after_a_restart_a_throttle_whose_breach_persists_is_kept_and_the_ladder_goes_on(tmp_path):
    cfg = make_cfg()
    path = str(tmp_path / "journal.sqlite3")
    now = [0.0]
    j = Journal(path)
    first = ladder_on(j, now)
    cs = [container("a", "batch", ws_mib=100, resv_mib=8)]
    acts = drive(first, cfg, cs, now, 0.0, 1.2)
    assert [a.kind for _, a in acts] == ["alert", "throttle"]
    assert first.overrides(None) == {cs[0].info.id: {"cpu_quota_cores": 1.0}}
    j.close()  # the process dies here (no shutdown hook runs)

    now[0] = 1.4
    second = ladder_on(Journal(path), now)
    assert set(second.state.throttles) == {cs[0].info.id}
    assert second.state.tracks["pool:standard"].step == 2
    assert second.overrides(None) == {cs[0].info.id: {"cpu_quota_cores": 1.0}}
    acts = drive(second, cfg, cs, now, 1.4, 3.0)
    # no new alert, no second throttle; the next rung a grace after the restart
    assert [(t, a.kind) for t, a in acts] == [(2.4, "reclaim")]
    rows = second.ctx.journal.recent(100)
    assert [r["outcome"] for r in rows if r["kind"] == "throttle"] == ["ok", "restored"]


def test_after_a_restart_a_throttle_whose_breach_has_gone_is_undone(tmp_path):
    cfg = make_cfg()
    path = str(tmp_path / "journal.sqlite3")
    now = [0.0]
    first = ladder_on(Journal(path), now)
    drive(first, cfg, [container("a", "batch", ws_mib=100, resv_mib=8)], now, 0.0, 1.2)
    first.ctx.journal.close()
    now[0] = 50.0
    second = ladder_on(Journal(path), now)
    calm = [container("a", "batch", ws_mib=20, resv_mib=8)]
    acts = drive(second, cfg, calm, now, 50.0, 54.0)
    assert [(t, a.kind) for t, a in acts] == [(53.0, "unthrottle")]
    assert acts[0][1].params["restore"] == {"cpu": "orig"}
    assert not second.ctx.journal.states(THROTTLE_PREFIX)
    assert not second.ctx.journal.states(BREACH_PREFIX)


def test_a_throttle_record_left_mid_write_with_no_breach_record_is_restored(tmp_path):
    # The daemon died inside the throttle executor: intent on disk, breach state not yet.
    cfg = make_cfg()
    j = Journal(str(tmp_path / "journal.sqlite3"))
    cid = container("a", "batch").info.id
    j.put_state(THROTTLE_PREFIX + cid, Throttle(cid, "a", ("pool:standard",),
                                               before={"cpu": {"cpu_quota_us": 0}}, after={},
                                               at=5.0, state="applying").to_dict())
    now = [10.0]
    ladder = ladder_on(j, now)
    t = ladder.state.tracks["pool:standard"]
    assert (t.step, t.kind, t.subject) == (2, "pool", "standard")
    acts = drive(ladder, cfg, [container("a", "batch", ws_mib=20)], now, 10.0, 13.2)
    assert [(t, a.kind) for t, a in acts] == [(13.0, "unthrottle")]
    assert acts[0][1].params["restore"] == {"cpu": {"cpu_quota_us": 0}}


def test_rate_limits_survive_a_restart_through_the_journal(tmp_path):
    cfg = make_cfg(ladder={"min_action_interval": "30s"})
    j = Journal(str(tmp_path / "journal.sqlite3"))
    c = container("a", "batch", ws_mib=100, resv_mib=8)
    j.record(ActionResult(Action("reclaim", c.info.id, "a", "r", "ladder"), ok=True,
                          dry_run=False, time_s=90.0))
    now = [100.0]
    ladder = ladder_on(j, now, cfg=cfg)
    assert ladder.actuator.limits.last_at == {c.info.id: 90.0}
    acts = drive(ladder, cfg, [c], now, 100.0, 121.0)
    kinds = [(t, a.kind) for t, a in acts]
    assert kinds[0] == (100.0, "alert")
    assert kinds[1] == (120.0, "throttle")  # 30 s after the reclaim before the restart


def test_the_component_journals_skipped_rungs_and_persists_breaches(tmp_path):
    cfg = make_cfg()
    j = Journal(str(tmp_path / "journal.sqlite3"))
    now = [0.0]
    ladder = ladder_on(j, now)
    drive(ladder, cfg, pool_members(), now, 0.0, 3.2)
    notes = [r for r in j.recent(100) if r["outcome"] == "skipped"]
    assert [(r["kind"], r["detail"]) for r in notes] == [
        ("hibernate", "no hibernation mechanism (no executor for 'hibernate')")]
    assert j.get_state(BREACH_PREFIX + "pool:standard")["step"] == 5
    st = ladder.status(make_tick(cfg, pool_members(), 3.2))
    assert st["breaches"][0]["key"] == "pool:standard" and st["breaches"][0]["step_name"] == "stop"
    assert st["hibernate_step"].startswith("skipped")
    names = {f.name for f in ladder.collect(make_tick(cfg, pool_members(), 3.2))}
    assert {"resource_supervisor_breaches_active", "resource_supervisor_throttled_containers",
            "resource_supervisor_container_throttled"} <= names


def test_plan_is_pure():
    cfg = make_cfg()
    state = LadderState()
    tick = make_tick(cfg, pool_members(), 0.0)
    a = plan_breach_actions(tick, state)
    b = plan_breach_actions(tick, state)
    assert a.actions == b.actions and a.state == b.state
    assert state == LadderState()


def test_a_plan_nobody_executes_changes_nothing(tmp_path):
    # GET /plan runs every plan() on the last tick and executes nothing
    cfg = make_cfg()
    now = [0.0]
    ladder = ladder_on(Journal(str(tmp_path / "journal.sqlite3")), now)
    drive(ladder, cfg, pool_members(), now, 0.0, 1.0)  # alert at 0.0
    before = ladder.state
    tick = make_tick(cfg, pool_members(), 1.0)
    first = ladder.plan(tick)
    again = ladder.plan(tick)
    assert [a.kind for a in first] == [a.kind for a in again] == ["throttle", "throttle"]
    assert ladder.state == before


def test_the_record_of_a_removed_container_is_dropped_at_once():
    sim = Sim(make_cfg())
    cs = [container("a", "batch", ws_mib=100, resv_mib=8), container("b", ws_mib=10)]
    run(sim, cs, 0.0, 1.2)
    assert set(sim.state.throttles) == {cs[0].info.id, cs[1].info.id}
    n = len(sim.actions)
    run(sim, [cs[1]], 1.2, 1.8)  # "a" removed; the pool breach is still open for "b"
    # once min_action_interval (0.5 s) after its throttle has passed
    assert [(t, a.kind, a.name) for t, a in sim.actions[n:]] == [(1.6, "unthrottle", "a")]
    assert set(sim.state.throttles) == {cs[1].info.id}


# ---------------------------------------------------------------------------- infrastructure

UNPROTECTED_INFRA = {"infrastructure": {"protected": False, "pool": "standard",
                                        "hibernate": True, "priority": 1}}


def test_an_unprotected_infrastructure_class_is_never_throttled_reclaimed_hibernated_or_stopped():
    # "infrastructure" with protected = false, in the pool that breaches, at the lowest
    # priority and holding the most memory: first for every rung, were it not for its name
    cfg = make_cfg(classes=UNPROTECTED_INFRA, ladder={"hibernate_idle_after": "1s"})
    sim = Sim(cfg, capabilities={"hibernate"})
    cs = [container("pg", "infrastructure", ws_mib=90, resv_mib=8),
          container("victim", "batch", ws_mib=20, resv_mib=4)]
    run(sim, cs, 0.0, 10.0)
    assert {"throttle", "reclaim", "hibernate", "stop"} <= set(sim.kinds())  # the ladder climbed
    assert [a.name for _, a in sim.actions if a.kind != "alert"] and \
        all(a.name == "victim" for _, a in sim.actions if a.kind != "alert")
    # alone in an over-budget pool: alerted, every rung says why it cannot act
    sim = Sim(cfg, capabilities={"hibernate"})
    run(sim, [container("pg", "infrastructure", ws_mib=110, resv_mib=8)], 0.0, 10.0)
    assert sim.kinds() == ["alert"]
    assert {n.kind for _, n in sim.notes} == {"throttle", "reclaim", "hibernate", "stop"}


MEMBER_CLASSES = ("infrastructure", "standard", "batch")


@settings(max_examples=60, deadline=None)
@given(members=st.lists(st.tuples(st.sampled_from(MEMBER_CLASSES), st.floats(1, 60),
                                  st.floats(0, 30), st.booleans()), min_size=1, max_size=6),
       growth=st.lists(st.floats(0.5, 1.5), min_size=4, max_size=12))
def test_no_plan_ever_touches_an_unprotected_infrastructure_class(members, growth):
    cfg = make_cfg(classes=UNPROTECTED_INFRA, ladder={"hibernate_idle_after": "1s"})
    sim = Sim(cfg, capabilities={"hibernate"})
    infra = set()
    t = 0.0
    for k, g in enumerate(growth):
        cs = []
        for i, (cls, ws, resv, v2) in enumerate(members):
            c = container(f"c{i}", cls, ws_mib=ws * g, resv_mib=resv, version=2 if v2 else 1)
            cs.append(c)
            if cls == "infrastructure":
                infra.add(c.info.id)
        # several passes at each level, a grace period apart: every rung gets its turn
        for _ in range(3):
            sim.step(cs, t, available_mib=2048 if k % 3 else 100)
            t += 1.0
    touched = [(a.kind, a.name) for _, a in sim.actions
               if a.kind != "alert" and a.target in infra]
    assert touched == []
    planned = [a for _, a in sim.actions] + [r.action for _, r in sim.held]
    assert not [a for a in planned if a.kind != "alert" and a.target in infra]


class _Inventory:
    """The engine's view of one container, as the re-check reads it."""

    def __init__(self, info):
        self.info = info

    def refresh_one(self, cid):
        return self.info if cid == self.info.id else None


class _Engine:
    """Records every change an executor asks of the engine (there must be none)."""

    def __init__(self):
        self.calls = []

    def stop(self, cid, **kw):
        self.calls.append(("stop", cid))

    def update(self, cid, **kw):
        self.calls.append(("update", cid, kw))


def test_the_executors_refuse_an_unprotected_infrastructure_class_at_their_recheck():
    from supervisor.act.actuator import Actuator
    from supervisor.act.core_actions import CoreActions
    from supervisor.act.ladder_knobs import KnobExecutors
    cfg = make_cfg(classes=UNPROTECTED_INFRA)
    pg = container("pg", "infrastructure", ws_mib=90).info
    engine, journal = _Engine(), Journal(":memory:")
    ctx = Context(engine=engine, inventory=_Inventory(pg), cgroups=None, journal=journal,
                  history=None, clock=lambda: 100.0, get_config=lambda: cfg)
    actuator = Actuator(journal, ctx.clock, get_config=ctx.get_config)
    for kind, fn in {**CoreActions(ctx).executors(), **KnobExecutors(ctx).executors()}.items():
        actuator.register(kind, fn)
    for kind, params in (("stop", {"timeout_s": 1}), ("throttle", {"breach": "pool:standard",
                                                                   "set": {"cpu": 0.5}}),
                         ("reclaim", {"bytes": 8 * MIB})):
        r = actuator.execute_one(Action(kind, pg.id, pg.name, "t", "ladder", params,
                                        destructive=kind == "stop"), dry_run=False)
        assert r.skipped and "'infrastructure' is infrastructure" in r.detail, r.detail
    assert engine.calls == []
    assert journal.states("ladder/") == {}
    # refused actions did nothing: they use none of the rate budget
    assert not actuator.limits.times and not actuator.limits.last_at
