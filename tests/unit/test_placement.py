"""Placement decisions on hand-made snapshots: desired cpuset, CPU quota, memory limit,
reservation and swap limit per class; update arguments only where Docker's values
differ; events place at once, reconcile passes repair drift."""

from hypothesis import given
from hypothesis import strategies as st

from _handmade import MIB, config, container, tick
from supervisor.observe.history import History
from supervisor.runtime.placement import (Desired, PlacementMemory, cpu_kwargs, desired_resources,
                                  plan_placement, reservation_for, reservation_in_range,
                                  same_cpuset, update_kwargs)


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
    assert cpu_kwargs(c.info, 0.5) == {"nano_cpus": 500_000_000}
    assert cpu_kwargs(c.info, 1.5) == {}
    assert cpu_kwargs(c.info, None) == {}  # Docker cannot take NanoCpus back to "none"
    q = container(quota_us=50_000, period_us=100_000)
    assert cpu_kwargs(q.info, None) == {"cpu_quota": -1}
    assert cpu_kwargs(q.info, 0.5) == {}
    assert cpu_kwargs(container().info, 0.001) == {"cpu_period": 100_000, "cpu_quota": 1_000}


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


def test_dry_run_reports_a_change_once_until_it_changes():
    cfg = config(dry_run=True)
    c = container()
    mem = PlacementMemory()
    p = plan_placement(tick(cfg, [c]), mem)
    a = places(p)[c.info.id]
    d = Desired.from_params(a.params)
    from supervisor.runtime.placement import _place_key
    mem.dry_reported[c.info.id] = _place_key(c.info, d, update_kwargs(c.info, d))
    assert plan_placement(tick(cfg, [c]), mem).actions == ()
    moved = container(cid=c.info.id, cpuset="2")
    assert places(plan_placement(tick(cfg, [moved]), mem))


def test_a_failed_update_backs_off_until_its_retry_time():
    cfg = config()
    c = container()
    mem = PlacementMemory(retry_at={c.info.id: 2000.0})
    assert plan_placement(tick(cfg, [c], now=1500.0), mem).actions == ()
    assert places(plan_placement(tick(cfg, [c], now=1500.0, events=[c.info.id]), mem))
    assert places(plan_placement(tick(cfg, [c], now=2001.0), mem))


def test_desired_resources_leaves_memory_alone_without_a_grant():
    cfg = config()
    c = container()
    d = desired_resources(c, cfg, admission=None)
    assert d.memory_limit_bytes is None and d.cpuset_cpus == "0-3"
    assert update_kwargs(c.info, d) == {"cpuset_cpus": "0-3"}


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
