"""Placement decisions on hand-made snapshots: desired cpuset, CPU quota, memory limit,
reservation and swap limit per class; update arguments only where Docker's values
differ; events place at once, reconcile passes repair drift."""

import dataclasses

from hypothesis import given
from hypothesis import strategies as st

from _handmade import MIB, config, container, tick
from supervisor.act.cpu import cpu_params
from supervisor.model.rules import reservation_for, reservation_in_range
from supervisor.observe.history import History
from supervisor.policy.placement import PlacementMemory, desired_resources, plan_placement
from supervisor.policy.placement_diff import (same_cpuset, split_update, update_kwargs,
                                              writes_new_limit)


def places(plan):
    return {a.target: a for a in plan.actions if a.kind == "place"}


def test_new_container_without_limit_gets_its_class_defaults():
    cfg = config()
    c = container(cls="standard")
    p = plan_placement(tick(cfg, [c]))
    d = p.desired[c.info.id]
    assert d.memory_limit_bytes == 40 * MIB  # Rule 1.1: the class default
    assert d.memory_reservation_bytes == 20 * MIB  # ratio 0.5
    assert d.memory_swap_bytes == 40 * MIB  # no swap beyond the limit
    assert d.cpuset_cpus == "0-3"  # "any" = every core of the 4-core host
    assert d.cpu_quota_cores is None and d.limit_source == "class-default"
    a = places(p)[c.info.id]
    assert a.params["fields"] == ["cpuset_cpus", "mem_limit", "mem_reservation", "memswap_limit"]
    assert "memory limit none -> 40.0MiB" in a.reason


def test_infrastructure_class_gets_its_cores_quota_and_reservation_ratio():
    cfg = config()
    c = container(cls="infrastructure")
    p = plan_placement(tick(cfg, [c]))
    d = p.desired[c.info.id]
    assert (d.cpuset_cpus, d.cpu_quota_cores) == ("0", 2.0)
    assert d.memory_limit_bytes == 128 * MIB and d.memory_reservation_bytes == 96 * MIB
    kw = update_kwargs(c.info, d)
    assert kw["cpu_period"] == 100_000 and kw["cpu_quota"] == 200_000


def test_a_container_already_right_gets_no_update():
    cfg = config()
    c = container(cls="standard", cpuset="0-3", limit=40 * MIB, reservation=20 * MIB, swap=40 * MIB)
    p = plan_placement(tick(cfg, [c], reconcile=True, events=[c.info.id]))
    assert p.actions == () and p.pending == {}


def test_existing_limit_is_kept_and_a_reservation_in_range_too():
    cfg = config()
    c = container(cls="standard", cpuset="1,0,2-3", limit=30 * MIB, reservation=20 * MIB, swap=30 * MIB)
    p = plan_placement(tick(cfg, [c]))
    d = p.desired[c.info.id]
    assert d.memory_limit_bytes == 30 * MIB and d.limit_source == "existing"
    assert d.memory_reservation_bytes == 20 * MIB  # 66%: inside 50-75%, kept
    assert p.actions == ()  # "1,0,2-3" is the same set of cores as "0-3"


def test_reservation_out_of_range_is_set_to_the_class_ratio():
    cfg = config()
    c = container(cls="standard", cpuset="0-3", limit=40 * MIB, reservation=36 * MIB, swap=40 * MIB)
    a = places(plan_placement(tick(cfg, [c])))[c.info.id]
    assert a.params["memory_reservation_bytes"] == 20 * MIB
    assert "reservation 36.0MiB -> 20.0MiB" in a.reason


def test_drift_is_repaired_on_reconcile_or_on_its_event_only():
    cfg = config()
    c = container(cls="infrastructure", cpuset="1", limit=128 * MIB, reservation=96 * MIB,
                  swap=128 * MIB, quota_us=200_000, period_us=100_000)
    mem = PlacementMemory(placed={c.info.id})
    assert plan_placement(tick(cfg, [c], reconcile=False), mem).actions == ()
    p = plan_placement(tick(cfg, [c], reconcile=False, events=[c.info.id]), mem)
    a = places(p)[c.info.id]
    assert a.params["fields"] == ["cpuset_cpus"] and a.reason.startswith("repair drift")
    assert "cpuset 1 -> 0" in a.reason
    assert places(plan_placement(tick(cfg, [c], reconcile=True), mem))


def test_paused_unmanaged_and_stopped_containers_are_left_alone():
    cfg = config()
    cs = [container(state="paused"), container(managed=False), container(state="exited")]
    p = plan_placement(tick(cfg, cs))
    assert p.actions == () and p.desired == {}


def test_overrides_win_over_class_values():
    cfg = config()
    c = container(cls="infrastructure", cpuset="0", limit=128 * MIB, reservation=96 * MIB,
                  swap=128 * MIB, quota_us=200_000, period_us=100_000)
    ov = {c.info.id: {"cpu_quota_cores": 0.5, "memory_limit_bytes": 100 * MIB}}
    p = plan_placement(tick(cfg, [c], overrides=ov))
    d = p.desired[c.info.id]
    assert d.cpu_quota_cores == 0.5 and d.memory_limit_bytes == 100 * MIB
    assert d.limit_source == "override"
    kw = update_kwargs(c.info, d)
    assert kw["cpu_quota"] == 50_000 and kw["mem_limit"] == 100 * MIB


def test_cpu_limits_set_with_cpus_change_through_nano_cpus():
    c = container(nano_cpus=1_500_000_000)
    assert cpu_params(c.info, 0.5) == {"nano_cpus": 500_000_000}
    assert cpu_params(c.info, 1.5) == {}
    assert cpu_params(c.info, None) == {}  # Docker cannot take NanoCpus back to "none"
    q = container(quota_us=50_000, period_us=100_000)
    assert cpu_params(q.info, None) == {"cpu_quota": -1}
    assert cpu_params(q.info, 0.5) == {}
    assert cpu_params(container().info, 0.001) == {"cpu_period": 100_000, "cpu_quota": 1_000}


def test_adaptive_limits_follow_the_recommendation_once_history_is_long_enough():
    cfg = config(classes={
        "infrastructure": {"pool": "infrastructure", "cpuset": "0"},
        "standard": {"pool": "standard", "cpuset": "any", "memory_limit": "40MiB",
                     "memory_min": "16MiB", "adaptive_limits": True}})
    c = container(cls="standard", cpuset="0-3", limit=40 * MIB, reservation=20 * MIB, swap=40 * MIB)
    h = History(window_s=3600, step_s=cfg.tick_s)
    for _ in range(100):  # 100 s at a 1 s tick: not yet the 5 minutes adaptive waits for
        h.record(c.info.id, 50 * MIB)
    assert plan_placement(tick(cfg, [c], history=h)).desired[c.info.id].limit_source == "existing"
    for _ in range(300):
        h.record(c.info.id, 50 * MIB)
    d = plan_placement(tick(cfg, [c], history=h)).desired[c.info.id]
    # p99 of a steady 50 MiB + 20% = 60 MiB
    assert (d.limit_source, d.memory_limit_bytes, d.memory_reservation_bytes) == \
        ("adaptive", 60 * MIB, 30 * MIB)
    near = container(cls="standard", cpuset="0-3", limit=58 * MIB, reservation=29 * MIB, swap=58 * MIB,
                     cid=c.info.id)
    d = plan_placement(tick(cfg, [near], history=h)).desired[c.info.id]
    assert d.limit_source == "existing" and d.memory_limit_bytes == 58 * MIB  # within 10%: kept


def test_dry_run_reports_a_change_once_until_it_changes(tmp_path):
    """The dry run plans what the live run plans, every pass; the actuator journals each
    "would do" once, and again only when it changes."""
    from supervisor.act.actuator import Actuator
    from supervisor.adapters.journal import Journal
    cfg = config(dry_run=True)
    c = container()
    mem = PlacementMemory()
    journal = Journal(str(tmp_path / "j.sqlite3"), 1000)
    act = Actuator(journal, lambda: 1000.0)
    first = places(plan_placement(tick(cfg, [c]), mem))[c.info.id]
    again = places(plan_placement(tick(cfg, [c]), mem))[c.info.id]
    assert again == first  # planned again: a dry run plans exactly what a live run plans
    moved = container(cid=c.info.id, cpuset="2")
    changed = places(plan_placement(tick(cfg, [moved]), mem))[c.info.id]
    for a in (first, again, changed):
        assert act.execute_one(a, dry_run=True).dry_run
    rows = [e for e in journal.recent(10, 0, []) if e["kind"] == "place"]
    assert len(rows) == 2  # "would do" said once, then once more for the change
    journal.close()


def test_a_failed_update_backs_off_until_its_retry_time():
    cfg = config()
    c = container()
    mem = PlacementMemory(retry_at={c.info.id: 2000.0})
    assert plan_placement(tick(cfg, [c], now=1500.0), mem).actions == ()
    assert places(plan_placement(tick(cfg, [c], now=1500.0, events=[c.info.id]), mem))
    assert places(plan_placement(tick(cfg, [c], now=2001.0), mem))


def test_a_cpu_override_never_lifts_a_container_above_its_class_quota():
    """Every CPU limit is a cap (the class's, a throttle's, Rule 12.1's): the smallest wins."""
    cfg = config()
    c = container(cls="infrastructure")  # class quota 2.0 cores
    for ov, want in ((4.0, 2.0), (0.5, 0.5)):
        d = desired_resources(c, cfg, override={"cpu_quota_cores": ov})
        assert d.cpu_quota_cores == want


def test_desired_resources_leaves_memory_alone_without_a_grant():
    cfg = config()
    c = container()
    d = desired_resources(c, cfg, admission=None)
    assert d.memory_limit_bytes is None and d.cpuset_cpus == "0-3"
    assert update_kwargs(c.info, d) == {"cpuset_cpus": "0-3"}


def test_cpu_and_memory_go_to_the_engine_as_two_calls():
    cfg = config()
    c = container(cls="infrastructure")  # cores, quota and memory all to change
    kw = update_kwargs(c.info, plan_placement(tick(cfg, [c])).desired[c.info.id])
    cpu, mem = split_update(kw)
    assert cpu == {"cpuset_cpus": "0", "cpu_period": 100_000, "cpu_quota": 200_000}
    assert mem == {"mem_limit": 128 * MIB, "mem_reservation": 96 * MIB, "memswap_limit": 128 * MIB}
    assert writes_new_limit(c.info, mem)
    held = container(cls="infrastructure", limit=128 * MIB, reservation=10 * MIB, swap=128 * MIB)
    _, mem = split_update(update_kwargs(held.info, plan_placement(tick(cfg, [held])).desired[held.info.id]))
    assert mem["mem_reservation"] == 96 * MIB and not writes_new_limit(held.info, mem)


def test_same_cpuset_compares_cores_not_text():
    assert same_cpuset("0-1", "0,1") and same_cpuset("3,1-2", "1-3")
    assert not same_cpuset("", "0-3")  # Docker's "no pinning" is written out
    assert not same_cpuset("0", "0-1") and not same_cpuset("garbage", "0")


@given(limit=st.integers(min_value=6 * MIB, max_value=64 * 2**30),
       ratio=st.floats(min_value=0.5, max_value=0.75))
def test_reservation_is_always_inside_50_to_75_percent(limit, ratio):
    limit = limit // 4096 * 4096
    res = reservation_for(limit, ratio)
    assert reservation_in_range(res, limit), (limit, ratio, res)
    assert res % 4096 == 0


# ---------------------------------------------------------------- the memory limit rule
# Issue 13: a limit that is written is never below the container's working set plus the
# headroom (20% by default); a pool that cannot grant that floor leaves the container's
# memory alone and reports it over budget.


def test_an_unlimited_container_using_more_than_its_class_default_gets_usage_plus_headroom():
    cfg = config()  # standard: 40 MiB default, 100 MiB pool
    c = container(cls="standard", working_set=50 * MIB)
    p = plan_placement(tick(cfg, [c]))
    d = p.desired[c.info.id]
    assert d.memory_limit_bytes == 60 * MIB  # 50 MiB + 20%, not the 40 MiB default
    assert d.limit_source == "usage-floor" and d.admission == "fits"
    assert p.admissions[c.info.id].wanted_bytes == 60 * MIB  # admission saw the raised want
    assert "memory limit none -> 60.0MiB" in places(p)[c.info.id].reason


def test_a_pool_without_room_for_the_floor_leaves_memory_alone_and_alerts():
    cfg = config()
    small = container("small", started_at="1", working_set=1 * MIB)
    big = container("big", started_at="2", working_set=70 * MIB)  # floor 84 MiB
    p = plan_placement(tick(cfg, [small, big]))
    adm = p.admissions[big.info.id]
    assert (adm.verdict, adm.granted_bytes, adm.room_bytes) == ("over-budget", 0, 60 * MIB)
    # 60 MiB of room would fit its class default, but not what it uses: nothing is written.
    d = p.desired[big.info.id]
    assert d.memory_limit_bytes is None
    assert update_kwargs(big.info, d) == {"cpuset_cpus": "0-3"}
    (alert,) = [a for a in p.actions if a.kind == "alert"]
    assert alert.target == big.info.id
    assert "needs at least 84.0MiB" in alert.reason and "no memory limit granted" in alert.reason
    assert places(p)[big.info.id].params["fields"] == ["cpuset_cpus"]


def test_a_limit_the_container_holds_is_kept_even_close_to_its_use():
    cfg = config()
    c = container(cls="standard", cpuset="0-3", limit=40 * MIB, reservation=20 * MIB,
                  swap=40 * MIB, working_set=38 * MIB)  # floor 46 MiB: above the limit
    p = plan_placement(tick(cfg, [c]))
    assert p.desired[c.info.id].memory_limit_bytes == 40 * MIB
    assert p.actions == ()  # no write: the floor is for new limits, a limit is a cap


def test_admission_shrinks_a_limit_down_to_the_floor_and_never_below():
    cfg = config()
    paused = container("paused", state="paused", limit=30 * MIB, started_at="0")
    for ws, verdict, limit in ((50 * MIB, "shrunk", 70 * MIB), (60 * MIB, "over-budget", None)):
        holder = container("holder", cpuset="0-3", limit=80 * MIB, reservation=40 * MIB,
                           swap=80 * MIB, working_set=ws, started_at="1")
        p = plan_placement(tick(cfg, [paused, holder]))
        # 70 MiB left: enough above 50 MiB x 1.2, not above 60 MiB x 1.2 = 72 MiB
        assert p.admissions[holder.info.id].verdict == verdict
        assert p.desired[holder.info.id].memory_limit_bytes == limit


def test_an_adaptive_recommendation_is_never_below_the_floor():
    cfg = config(classes={
        "infrastructure": {"pool": "infrastructure", "cpuset": "0"},
        "standard": {"pool": "standard", "cpuset": "any", "memory_limit": "40MiB",
                     "memory_min": "16MiB", "adaptive_limits": True}})
    c = container(cls="standard", cpuset="0-3", limit=40 * MIB, reservation=20 * MIB,
                  swap=40 * MIB, working_set=38 * MIB)
    h = History(window_s=3600, step_s=cfg.tick_s)
    for _ in range(400):  # an hour that was quiet: p99 10 MiB, recommendation 16 MiB
        h.record(c.info.id, 10 * MIB)
    d = plan_placement(tick(cfg, [c], history=h)).desired[c.info.id]
    assert (d.limit_source, d.memory_limit_bytes) == ("adaptive", 46 * MIB)  # 38 MiB + 20%


def test_an_override_below_the_floor_is_raised_to_it():
    cfg = config()
    c = container(cls="infrastructure", working_set=100 * MIB)
    p = plan_placement(tick(cfg, [c], overrides={c.info.id: {"memory_limit_bytes": 64 * MIB}}))
    d = p.desired[c.info.id]
    assert (d.memory_limit_bytes, d.limit_source) == (120 * MIB, "usage-floor")


_classes = st.fixed_dictionaries({
    "default_mib": st.integers(min_value=16, max_value=256),
    "budget_mib": st.integers(min_value=1, max_value=1024),
    "headroom": st.sampled_from([0.0, 0.1, 0.2, 0.5]),
})
# (working set MiB, limit held MiB or 0, running): a cgroup keeps its working set under
# its limit, so a held limit is drawn at or above the working set.
_members = st.lists(st.tuples(st.integers(min_value=0, max_value=512),
                              st.one_of(st.just(0), st.integers(min_value=6, max_value=512)),
                              st.sampled_from(["running", "running", "paused"])),
                    max_size=8)


@given(setup=_classes, members=_members)
def test_no_limit_is_written_below_usage_plus_headroom_and_pools_stay_within_budget(setup, members):
    cfg = config(pools={"infrastructure": {"budget": "1GiB"},
                        "standard": {"budget": f"{setup['budget_mib']}MiB"}},
                 classes={"infrastructure": {"pool": "infrastructure", "cpuset": "0"},
                          "standard": {"pool": "standard", "cpuset": "any",
                                       "memory_limit": f"{setup['default_mib']}MiB",
                                       "memory_min": "16MiB"}},
                 history={"headroom": setup["headroom"]})
    cs = []
    for i, (ws_mib, limit_mib, state) in enumerate(members):
        limit = max(limit_mib, ws_mib) * MIB if limit_mib else 0
        cs.append(container(f"m{i}", working_set=ws_mib * MIB, limit=limit, reservation=limit // 2,
                            swap=limit, state=state, started_at=f"2026-11-01T00:00:{i:02d}Z"))
    p = plan_placement(tick(cfg, cs))
    places_ = places(p)
    for c in cs:
        ws = c.stats.memory_working_set_bytes
        d = p.desired.get(c.info.id)
        if d is None:
            assert c.info.state != "running"
            continue
        new = d.memory_limit_bytes
        if new is not None and new != c.info.memory_limit_bytes:
            # A new limit: at least what it uses plus the headroom (Rule 1.1, issue 13).
            assert new >= ws * (1 + setup["headroom"]), (ws, new, d)
        a = places_.get(c.info.id)
        if a is not None and "mem_limit" in a.params["fields"]:
            assert a.params["memory_limit_bytes"] == new
        if new is None:
            # No grant: no memory write at all, and the container is reported over budget.
            assert not {"mem_limit", "mem_reservation", "memswap_limit"} & set(
                update_kwargs(c.info, d))
            assert p.admissions[c.info.id].verdict == "over-budget"
    granted = sum(a.granted_bytes for a in p.admissions.values() if a.verdict != "held")
    held = sum(a.granted_bytes for a in p.admissions.values() if a.verdict == "held")
    # Held (paused) members count as they are; what admission hands out fits beside them.
    assert granted <= max(0, cfg.pools["standard"].budget_bytes - held)


# ---------------------------------------------------------------- settling (history.settle)

def docker_time(epoch_s: float) -> str:
    """Docker's StartedAt for an epoch time (RFC 3339, UTC, with a fraction)."""
    from datetime import datetime, timezone
    return datetime.fromtimestamp(epoch_s, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


START_S = 1_800_000_000.0  # when the container below started


def warm_agent(**kw):
    """A container started without a memory limit at START_S, 4 MiB used so far."""
    return container(cls="standard", started_at=docker_time(START_S), working_set=4 * MIB, **kw)


def test_a_new_container_gets_no_memory_limit_before_it_has_settled():
    """The service lab's stale agent: a class default (20 MiB) written at its second 1 (4 MiB
    used) OOM-killed it when its 24 MiB cache warmed up. Until it has run history.settle, its
    memory is left alone; its cores are placed at once."""
    cfg = config(history={"settle": "60s"})
    c = warm_agent()
    p = plan_placement(tick(cfg, [c], now=START_S + 5))
    assert p.admissions[c.info.id].verdict == "settling"
    d = p.desired[c.info.id]
    assert d.memory_limit_bytes is None and d.cpuset_cpus == "0-3"
    a = places(p)[c.info.id]
    assert a.params["fields"] == ["cpuset_cpus"], a.reason
    assert p.admissions[c.info.id].granted_bytes == 0


def test_a_settled_container_gets_at_least_its_peak_working_set_plus_headroom():
    """After the settle its limit is the class default (40 MiB) raised to the highest working
    set seen (50 MiB during its warm-up) plus 20% headroom, though it uses 10 MiB now."""
    cfg = config(history={"settle": "60s"})
    c = warm_agent()
    h = History(3600, 1.0)
    for ws in (4 * MIB, 50 * MIB, 30 * MIB):
        h.record(c.info.id, ws)
    now = dataclasses.replace(c.stats, memory_working_set_bytes=10 * MIB)
    c = dataclasses.replace(c, stats=now)
    p = plan_placement(tick(cfg, [c], now=START_S + 61, history=h), PlacementMemory(placed={c.info.id}))
    d = p.desired[c.info.id]
    assert d.memory_limit_bytes == 60 * MIB and d.limit_source == "usage-floor"
    a = places(p)[c.info.id]
    assert "mem_limit" in a.params["fields"]
    # its first limit is placement, not a drift repair (its cores were placed before)
    assert a.reason.startswith("place ("), a.reason


def test_a_health_check_still_starting_keeps_the_container_settling():
    cfg = config(history={"settle": "60s"})
    c = warm_agent()
    c = dataclasses.replace(c, info=dataclasses.replace(c.info, health="starting"))
    p = plan_placement(tick(cfg, [c], now=START_S + 300))
    assert p.admissions[c.info.id].verdict == "settling"
    healthy = dataclasses.replace(c, info=dataclasses.replace(c.info, health="healthy"))
    p = plan_placement(tick(cfg, [healthy], now=START_S + 300))
    assert p.desired[healthy.info.id].memory_limit_bytes == 40 * MIB


def test_settling_applies_only_to_a_container_without_a_limit():
    """A limit the container holds (its owner's) is judged as before: kept; a settle of 0 s
    gives the default at once."""
    cfg = config(history={"settle": "60s"})
    owned = warm_agent(limit=30 * MIB, reservation=20 * MIB, swap=30 * MIB, cpuset="0-3")
    p = plan_placement(tick(cfg, [owned], now=START_S + 1))
    assert p.admissions[owned.info.id].verdict == "fits" and p.actions == ()
    p = plan_placement(tick(config(history={"settle": "0s"}), [warm_agent()], now=START_S + 1))
    assert [d.memory_limit_bytes for d in p.desired.values()] == [40 * MIB]
