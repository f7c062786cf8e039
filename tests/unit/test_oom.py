"""OOM restart loops (issue 14): the kill history the inventory keeps from Docker's oom/die
events and State.OOMKilled, the breach signal it feeds (which a restart's new cgroup does
not reset), the raise rule, and what placement does with a limit it gave, one its owner
set, and a pool without room for the raise."""

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from _handmade import GIB, MIB, config, container, tick
from _ladder_kit import container as lcontainer, make_cfg, make_tick
from supervisor.cli.supctl import EXIT_EXHAUSTED, EXIT_OK, health_code
from supervisor.model import rules
from supervisor.model.errors import ContainerGone
from supervisor.observe.history import History
from supervisor.observe.inventory import Inventory, docker_time_s
from supervisor.policy.breaches import NONE, WARN, SignalMemory, evaluate_signals
from supervisor.policy.placement import (SOURCE_OOM_RAISE, SOURCE_OOM_REMOVED, PlacementMemory,
                                         plan_placement)

MB = 1000 * 1000


def with_kills(c, *times, **info):
    return replace(c, info=replace(c.info, oom_kill_times_s=tuple(times), **info))


# ---------------------------------------------------------------- the signal

def oom_signal(c, now, cfg=None, memory=None):
    sigs, mem = evaluate_signals(make_tick(cfg or make_cfg(), [c], now), memory)
    return {s.key: s for s in sigs}.get("oom:" + c.info.id), mem


def test_two_kills_within_the_window_are_an_oom_breach():
    c = with_kills(lcontainer("redis", events={}), 1000.0, 1030.0, restart_count=2)
    s, _ = oom_signal(c, 1031.0)
    assert s.severity == WARN and not s.below_clear
    assert "OOM-killed 2 times" in s.summary and "restarts: 2" in s.summary


def test_one_kill_is_no_breach_nor_are_two_further_apart_than_the_window():
    s, _ = oom_signal(with_kills(lcontainer("a", events={}), 1000.0), 1001.0)
    assert s.severity == NONE
    apart = with_kills(lcontainer("b", events={}), 1000.0, 1000.0 + rules.OOM_LOOP_WINDOW_S + 1)
    s, _ = oom_signal(apart, 1000.0 + rules.OOM_LOOP_WINDOW_S + 2)
    assert s.severity == NONE
    # ... and the breach clears once the kills age out of the window
    two = with_kills(lcontainer("c", events={}), 1000.0, 1010.0)
    assert oom_signal(two, 1011.0)[0].severity == WARN
    s, _ = oom_signal(two, 1010.0 + rules.OOM_LOOP_WINDOW_S + 1)
    assert s.severity == NONE and s.below_clear


def test_a_new_cgroup_per_restart_does_not_reset_the_kill_count():
    """Each restart brings a new cgroup whose counters start at 0 (the old signal saw no
    rise at all); the kill history comes from Docker and carries over."""
    mem = SignalMemory()
    kills: list[float] = []
    severities = []
    for i, now in enumerate((1000.0, 1005.0, 1010.0)):
        c = with_kills(lcontainer("redis", events={"failcnt": 0, "oom_kill": 0}), *kills,
                       restart_count=i)
        s, mem = oom_signal(c, now, memory=mem)
        severities.append(s.severity)
        kills.append(now + 1.0)  # killed in the second after this pass; a new cgroup follows
    c = with_kills(lcontainer("redis", events={"failcnt": 0, "oom_kill": 0}), *kills)
    s, mem = oom_signal(c, 1015.0, memory=mem)
    assert severities == [NONE, NONE, WARN] and s.severity == WARN


def test_unmanaged_containers_give_no_oom_signal_and_the_counter_signal_stays():
    c = with_kills(lcontainer("x", managed=False, events={}), 1.0, 2.0)
    assert oom_signal(c, 3.0)[0] is None
    # a container with counters and no kill: the counter signal as before
    s, _ = oom_signal(lcontainer("y", events={"failcnt": 0, "oom_kill": 0}), 3.0)
    assert s.severity == NONE and "hit its own memory limit" in s.summary


# ---------------------------------------------------------------- the inventory

class Engine:
    """The inventory's engine door, answering from a dict (the Docker SDK itself is
    exercised on the real engine in tests/integration/test_oom_loop.py)."""

    base_url, timeout_s = "", 1.0

    def __init__(self):
        self.infos = {}

    def inspect(self, cid):
        if cid not in self.infos:
            raise ContainerGone(cid)
        return self.infos[cid]

    def list_containers(self):
        return list(self.infos.values())


def inv_with(info):
    eng = Engine()
    eng.infos[info.id] = info
    return Inventory(eng, events_engine=eng, clock=lambda: 5000.0), eng


def ev(action, cid, t):
    return {"Action": action, "id": cid, "time": int(t), "timeNano": int(t * 1e9)}


def test_an_oom_event_and_its_die_count_one_kill_named_by_the_finished_run():
    info = replace(container("redis").info, restart_count=3)
    inv, eng = inv_with(info)
    inv.refresh()
    eng.infos[info.id] = replace(info, state="restarting", oom_killed=True,
                                 finished_at="2026-12-01T17:49:20.048138617Z")
    inv.handle_event(ev("oom", info.id, 1796147360.0))
    inv.handle_event(ev("die", info.id, 1796147360.2))
    t = docker_time_s("2026-12-01T17:49:20.048138617Z")
    assert inv.get(info.id).oom_kill_times_s == (t,)
    # Docker keeps State.OOMKilled true after the restart: the start's inspect and a relist
    # name the same finished run, so no second kill
    eng.infos[info.id] = replace(eng.infos[info.id], state="running")
    inv.handle_event(ev("start", info.id, 1796147361.0))
    inv.refresh()
    assert inv.get(info.id).oom_kill_times_s == (t,)
    # the next run killed: a second kill
    eng.infos[info.id] = replace(eng.infos[info.id], state="restarting",
                                 finished_at="2026-12-01T17:49:22.5Z")
    inv.handle_event(ev("die", info.id, 1796147362.5))
    assert len(inv.get(info.id).oom_kill_times_s) == 2


def test_a_die_without_oom_is_no_kill_and_a_relist_reads_the_last_kill_back():
    info = container("app").info
    inv, eng = inv_with(replace(info, state="exited", exit_code=1,
                                finished_at="2026-12-01T10:00:00Z"))
    inv.handle_event(ev("die", info.id, 1.0))
    assert inv.get(info.id).oom_kill_times_s == ()
    # a daemon started after the kill: the relist sees State.OOMKilled
    inv2, _ = inv_with(replace(info, state="restarting", oom_killed=True,
                               finished_at="2026-12-01T10:00:00Z"))
    inv2.refresh()
    assert inv2.get(info.id).oom_kill_times_s == (docker_time_s("2026-12-01T10:00:00Z"),)
    inv2.handle_event({"Action": "destroy", "id": info.id})
    assert inv2.oom_kill_times(info.id) == ()


def test_docker_times_parse_to_epoch_seconds():
    assert docker_time_s("1970-01-01T00:00:10.5Z") == 10.5
    assert docker_time_s("1970-01-01T00:00:10.123456789Z") == 10.123456
    assert docker_time_s("1970-01-01T01:00:10+01:00") == 10.0
    assert docker_time_s("0001-01-01T00:00:00Z") is None
    assert docker_time_s("") is None and docker_time_s("garbage") is None


# ---------------------------------------------------------------- the raise rule

@settings(deadline=None)
@given(current=st.integers(0, 64 * GIB), ws=st.none() | st.integers(0, 64 * GIB),
       rec=st.none() | st.integers(0, 64 * GIB), headroom=st.floats(0, 1))
def test_a_raise_is_at_least_x1_2_plus_100mb_the_floor_and_the_recommendation(
        current, ws, rec, headroom):
    raised = rules.oom_raise_bytes(current, ws, rec, headroom)
    assert raised >= current * rules.OOM_RAISE_RATIO
    assert raised >= current + rules.OOM_RAISE_MIN_BYTES
    assert raised >= rules.memory_floor_bytes(ws, headroom)
    assert raised >= (rec or 0) and raised >= rules.DOCKER_MIN_MEMORY_BYTES
    assert raised % MIB == 0 or raised == rec


def test_the_raise_of_the_issue_redis():
    # 256 MiB given, 420 MB in use before the kill: raised to working set + 20% at least
    assert rules.oom_raise_bytes(256 * MIB, 420 * MB, None, 0.2) == rules.round_up_bytes(504 * MB)
    assert rules.oom_raise_bytes(256 * MIB, 10 * MIB, None, 0.2) == rules.round_up_bytes(
        256 * MIB + 100 * MB)
    assert rules.oom_raise_bytes(256 * MIB, 10 * MIB, 544 * MIB, 0.2) == 544 * MIB


# ---------------------------------------------------------------- placement

def big_pool(budget="4GiB"):
    return config(pools={"standard": {"budget": budget}})


def looping(limit, kills=(900.0, 950.0), state="running", ws=20 * MIB, **kw):
    c = container("redis", limit=limit, reservation=limit // 2, swap=limit, cpuset="0-3",
                  working_set=ws, state=state, **kw)
    return with_kills(c, *kills, restart_count=len(kills))


def oom_actions(plan):
    return [a for a in plan.actions if a.kind == "place" and a.params.get("oom")]


def test_a_limit_placement_gave_is_raised_after_two_kills_even_while_restarting():
    cfg = big_pool()
    for state in ("running", "restarting"):
        c = looping(40 * MIB, state=state)
        mem = PlacementMemory(given={c.info.id: (40 * MIB, 800.0)})
        plan = plan_placement(tick(cfg, [c], now=1000.0, reconcile=False), mem)
        [place] = [a for a in plan.actions if a.kind == "place"]
        want = rules.oom_raise_bytes(40 * MIB, 20 * MIB, None, 0.2)
        assert place.params["memory_limit_bytes"] == want == 40 * MIB + rules.round_up_bytes(100 * MB)
        assert place.params["limit_source"] == SOURCE_OOM_RAISE and place.params["oom"]
        assert "OOM-killed 2 times" in place.reason
        [alert] = [a for a in plan.actions if a.kind == "alert"]
        assert "raised to" in alert.reason
    # one kill: nothing yet
    c = looping(40 * MIB, kills=(950.0,))
    plan = plan_placement(tick(cfg, [c], now=1000.0, reconcile=False),
                          PlacementMemory(given={c.info.id: (40 * MIB, 800.0)}))
    assert plan.actions == ()


def test_a_raised_limit_is_raised_again_only_after_two_kills_under_it():
    cfg = big_pool()
    raised = 40 * MIB + rules.round_up_bytes(100 * MB)
    c = looping(raised)
    # raised at 960, after both kills: no new raise
    plan = plan_placement(tick(cfg, [c], now=1000.0), PlacementMemory(given={c.info.id: (raised, 960.0)}))
    assert not [a for a in plan.actions if a.kind == "place"]
    c = looping(raised, kills=(900.0, 950.0, 970.0, 990.0))
    plan = plan_placement(tick(cfg, [c], now=1000.0), PlacementMemory(given={c.info.id: (raised, 960.0)}))
    [place] = [a for a in plan.actions if a.kind == "place"]
    assert place.params["memory_limit_bytes"] == rules.oom_raise_bytes(raised, 20 * MIB, None, 0.2)


def test_a_limit_its_owner_set_is_not_raised_alert_only():
    cfg = big_pool()
    c = looping(40 * MIB)
    mem = PlacementMemory()  # placement never wrote this limit
    plan = plan_placement(tick(cfg, [c], now=1000.0), mem)
    assert not [a for a in plan.actions if a.kind == "place"]
    [alert] = plan.actions
    assert alert.kind == "alert" and "its owner set: not raised" in alert.reason
    # a limit placement gave once but somebody changed since is the owner's too
    mem = PlacementMemory(given={c.info.id: (64 * MIB, 800.0)})
    plan = plan_placement(tick(cfg, [c], now=1000.0), mem)
    assert [a.kind for a in plan.actions] == ["alert"]


def test_without_room_for_the_raise_placement_removes_its_own_limit_and_alerts():
    cfg = config()  # standard pool: 100 MiB
    c = looping(40 * MIB)
    mem = PlacementMemory(given={c.info.id: (40 * MIB, 800.0)})
    plan = plan_placement(tick(cfg, [c], now=1000.0), mem)
    [place] = [a for a in plan.actions if a.kind == "place"]
    assert place.params["limit_source"] == SOURCE_OOM_REMOVED
    assert place.params["memory_limit_bytes"] == place.params["memory_swap_bytes"] == 8 * GIB
    assert "remove the memory limit" in place.reason
    [alert] = [a for a in plan.actions if a.kind == "alert"]
    assert "removes its limit" in alert.reason
    assert not [a for a in plan.actions if a.kind == "stop"]  # never stopped for it
    # removed: its memory is left alone from then on (no class default again)
    after = replace(c, info=replace(c.info, memory_limit_bytes=8 * GIB))
    mem = PlacementMemory(released={c.info.id})
    plan = plan_placement(tick(cfg, [after], now=1000.0), mem)
    assert not [a for a in plan.actions if a.kind == "place" and "mem_limit" in a.params["fields"]]
    assert plan.desired[c.info.id].memory_limit_bytes is None


@settings(max_examples=60, deadline=None)  # a config is loaded per example
@given(current_mib=st.integers(8, 2048), budget_mib=st.integers(64, 4096),
       other_mib=st.integers(0, 2048), ws_mib=st.integers(1, 2048))
def test_a_raise_stays_within_the_pools_room_or_the_limit_is_removed(
        current_mib, budget_mib, other_mib, ws_mib):
    cfg = config(pools={"standard": {"budget": f"{budget_mib}MiB"}})
    c = looping(current_mib * MIB, ws=ws_mib * MIB)
    others = [container("other", limit=other_mib * MIB, reservation=other_mib * MIB // 2,
                        swap=other_mib * MIB, cpuset="0-3", working_set=MIB)] if other_mib else []
    mem = PlacementMemory(given={c.info.id: (current_mib * MIB, 800.0)})
    plan = plan_placement(tick(cfg, [c] + others, now=1000.0), mem)
    [act] = oom_actions(plan)
    limit = act.params["memory_limit_bytes"]
    need = rules.oom_raise_bytes(current_mib * MIB, ws_mib * MIB, None, 0.2)
    if act.params["limit_source"] == SOURCE_OOM_RAISE:
        assert need <= limit <= budget_mib * MIB - other_mib * MIB
    else:
        assert act.params["limit_source"] == SOURCE_OOM_REMOVED
        assert need > budget_mib * MIB - other_mib * MIB and limit == 8 * GIB


def test_the_adaptive_recommendation_does_not_lower_a_limit_after_recent_kills():
    cfg = config(classes={"standard": {"pool": "standard", "cpuset": "any",
                                       "memory_limit": "40MiB", "memory_min": "16MiB",
                                       "adaptive_limits": True}},
                 pools={"standard": {"budget": "4GiB"}})
    c = looping(400 * MIB, kills=(990.0,))
    hist = History(3600, 1.0)
    for _ in range(400):
        hist.record(c.info.id, 20 * MIB)
    plan = plan_placement(tick(cfg, [c], now=1000.0, history=hist), PlacementMemory())
    assert plan.desired[c.info.id].memory_limit_bytes == 400 * MIB


# ---------------------------------------------------------------- status exit code

def test_an_oom_loop_or_a_removed_limit_makes_supctl_status_exit_3():
    base = {"engine": {"up": True}, "pools": {}, "reserve": {"breached": False}}
    assert health_code({**base, "oom": {"loops": [], "limit_removed": []}}) == EXIT_OK
    assert health_code({**base, "oom": {"loops": ["redis"], "limit_removed": []}}) == EXIT_EXHAUSTED
    assert health_code({**base, "oom": {"loops": [], "limit_removed": ["redis"]}}) == EXIT_EXHAUSTED


# ---------------------------------------------------------------- durable memory

def test_the_limits_placement_gave_survive_a_daemon_restart_and_an_owners_do_not_count(tmp_path):
    """Which limits are placement's own is kept in the journal's state table: a restarted
    daemon still raises them. A limit re-written unchanged (a reservation set next to an
    owner's limit) is not one it gave."""
    from types import SimpleNamespace

    from supervisor.adapters.journal import Journal
    from supervisor.model.actions import Action, ActionResult
    from supervisor.runtime.placement import Placement

    journal = Journal(str(tmp_path / "j.sqlite3"), 1000)
    ctx = SimpleNamespace(journal=journal, history=History(3600, 1.0))
    cfg = big_pool()
    ours, owners = looping(40 * MIB), looping(24 * MIB)

    def placed(c, before, after, source="class-default"):
        a = Action("place", c.info.id, c.info.name, "place", "placement",
                   {"memory_limit_bytes": after, "limit_source": source,
                    "fields": ["mem_limit", "mem_reservation", "memswap_limit"]})
        return ActionResult(a, ok=True, dry_run=False, before={"memory_limit_bytes": before},
                            after={"memory_limit_bytes": after})

    p = Placement(ctx)
    t = tick(cfg, [ours, owners], now=800.0, reconcile=False)
    p.plan(t)
    p.observe(t, [placed(ours, 0, 40 * MIB), placed(owners, 24 * MIB, 24 * MIB)])
    assert p.memory.given == {ours.info.id: (40 * MIB, 800.0)}
    restarted = Placement(ctx)
    assert restarted.memory.given == {ours.info.id: (40 * MIB, 800.0)}
    plan = plan_placement(tick(cfg, [ours, owners], now=1000.0), restarted.memory)
    assert [a.target for a in oom_actions(plan)] == [ours.info.id]
    # a removal is remembered too: that container is never given a limit again
    t = tick(cfg, [ours, owners], now=1000.0)
    restarted.plan(t)
    restarted.observe(t, [placed(ours, 40 * MIB, 8 * GIB, SOURCE_OOM_REMOVED)])
    again = Placement(ctx)
    assert again.memory.released == {ours.info.id} and ours.info.id not in again.memory.given
    # an engine that is down lists no container: nothing durable is forgotten then (the
    # audit would take a limit placement gave for its owner's)
    t = tick(cfg, [], now=1050.0, engine_up=False)
    again.plan(t)
    again.observe(t, [])
    after_outage = Placement(ctx)
    assert after_outage.memory.released == {ours.info.id}
    assert after_outage.limits_given[ours.info.id]["given_bytes"] == 8 * GIB
    # a container that is gone is forgotten
    t = tick(cfg, [owners], now=1100.0)
    again.plan(t)
    again.observe(t, [])
    assert Placement(ctx).memory.released == set()
    journal.close()
