"""Pool arithmetic, admission, the emergency reserve, recommendations and the pool
cgroups' names, on hand-made snapshots."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from _handmade import GIB, MIB, config, container, tick
from supervisor.policy.admission import Candidate, admit_pool
from supervisor.observe.history import History, recommend_limit
from supervisor.policy.placement import PlacementMemory, plan_placement, recommendations
from supervisor.runtime.poolcg import (cgroup_parent_for, desired_pool_groups, outside_pools,
                               pool_group_rel)
from supervisor.model.pools import account, admit, reserve_state


def test_pool_accounting_sums_limits_and_working_sets_of_live_managed_members():
    cfg = config()
    cs = [container(limit=40 * MIB, working_set=10 * MIB),
          container(limit=30 * MIB, working_set=25 * MIB, state="paused"),
          container(working_set=5 * MIB),  # no limit: counted in "unlimited"
          container(limit=50 * MIB, state="exited"),  # not live
          container(limit=50 * MIB, managed=False),  # not managed
          container(cls="infrastructure", limit=128 * MIB, working_set=64 * MIB)]
    pools = account(tick(cfg, cs).snapshot, cfg)
    s = pools["standard"]
    assert (s.budget_bytes, s.allocated_bytes, s.used_bytes) == (100 * MIB, 70 * MIB, 40 * MIB)
    assert s.free_bytes == 30 * MIB
    assert abs(s.utilisation - 0.4) < 1e-9 and abs(s.allocation_ratio - 0.7) < 1e-9
    assert s.unlimited == (cs[2].info.name,)
    assert len(s.containers) == 3
    i = pools["infrastructure"]
    assert (i.allocated_bytes, i.used_bytes, i.free_bytes) == (128 * MIB, 64 * MIB, GIB - 128 * MIB)


def test_admit_gives_what_fits_the_room_left_or_nothing():
    pool = account(tick(config(), [container(limit=70 * MIB)]).snapshot, config())["standard"]
    assert admit(pool, 30 * MIB, 16 * MIB) == (30 * MIB, "fits")
    assert admit(pool, 40 * MIB, 16 * MIB) == (30 * MIB, "shrunk")
    assert admit(pool, 40 * MIB, 31 * MIB) == (0, "over-budget")


def test_the_overflowing_container_gets_the_remainder_then_nothing():
    members = [Candidate(f"id{i}", f"c{i}", "standard", 40 * MIB, 16 * MIB, 0, True,
                         f"2026-11-01T00:00:0{i}Z") for i in range(4)]
    got = {a.name: (a.granted_bytes, a.verdict) for a in admit_pool("standard", 100 * MIB, members)}
    assert got == {"c0": (40 * MIB, "fits"), "c1": (40 * MIB, "fits"),
                   "c2": (20 * MIB, "shrunk"), "c3": (0, "over-budget")}


def test_admission_order_keeps_holders_before_newcomers():
    # c_new started first but has no limit yet; the holders keep theirs; a paused member
    # counts as it is.
    members = [Candidate("n", "c_new", "p", 40 * MIB, 16 * MIB, 0, True, "2026-11-01T00:00:00Z"),
               Candidate("h", "c_holder", "p", 50 * MIB, 16 * MIB, 50 * MIB, True, "2026-11-01T00:00:09Z"),
               Candidate("z", "c_paused", "p", 30 * MIB, 16 * MIB, 30 * MIB, False, "2026-11-01T00:00:05Z")]
    got = {a.name: (a.granted_bytes, a.verdict) for a in admit_pool("p", 100 * MIB, members)}
    assert got == {"c_paused": (30 * MIB, "held"), "c_holder": (50 * MIB, "fits"),
                   "c_new": (20 * MIB, "shrunk")}


def test_a_container_is_not_shrunk_below_what_it_uses():
    members = [Candidate("a", "a", "p", 80 * MIB, 16 * MIB, 80 * MIB, True, "1"),
               Candidate("b", "b", "p", 40 * MIB, 30 * MIB, 0, True, "2")]  # uses 30 MiB
    got = {a.name: a.verdict for a in admit_pool("p", 100 * MIB, members)}
    assert got == {"a": "fits", "b": "over-budget"}  # 20 MiB left < 30 MiB in use


def test_a_member_over_budget_keeps_its_limit_and_it_counts():
    """Found by the invariant tests: a member whose own limit passes the budget is over
    budget and keeps that limit; the room it holds is not handed to a newcomer too."""
    members = [Candidate("big", "big", "p", 82 * MIB, 50 * MIB, 82 * MIB, True, "1"),
               Candidate("new", "new", "p", 128 * MIB, 8 * MIB, 0, True, "2")]
    got = {a.name: (a.verdict, a.granted_bytes) for a in admit_pool("p", 48 * MIB, members)}
    assert got == {"big": ("over-budget", 0), "new": ("over-budget", 0)}


@given(budget=st.integers(min_value=0, max_value=4 * GIB),
       wants=st.lists(st.tuples(st.integers(min_value=6 * MIB, max_value=GIB),
                                st.integers(min_value=0, max_value=GIB),
                                st.integers(min_value=0, max_value=GIB)), max_size=12))
def test_granted_limits_never_exceed_the_budget(budget, wants):
    members = [Candidate(str(i), f"c{i}", "p", w, floor, cur, True, str(i))
               for i, (w, floor, cur) in enumerate(wants)]
    out = admit_pool("p", budget, members)
    assert sum(a.granted_bytes for a in out) <= budget
    # What the pool ends with: the grants, and the limits over-budget members keep.
    current = {c.id: c.current_bytes for c in members}
    held_before = sum(current.values())
    after = sum(a.granted_bytes or current[a.id] for a in out)
    assert after <= max(budget, held_before)
    for a in out:
        assert a.granted_bytes in (0, a.wanted_bytes) or a.granted_bytes >= max(a.floor_bytes, 6 * MIB)
        assert a.granted_bytes <= a.wanted_bytes


def test_plan_grants_never_exceed_the_pool_and_alert_the_overflow_once():
    cfg = config()
    cs = [container(f"s{i}", started_at=f"2026-11-01T00:00:0{i}Z") for i in range(4)]
    mem = PlacementMemory()
    p = plan_placement(tick(cfg, cs), mem)
    limits = {p.names[cid]: d.memory_limit_bytes for cid, d in p.desired.items()}
    assert limits == {"s0": 40 * MIB, "s1": 40 * MIB, "s2": 20 * MIB, "s3": None}
    assert sum(v or 0 for v in limits.values()) <= cfg.pools["standard"].budget_bytes
    alerts = [a for a in p.actions if a.kind == "alert"]
    assert [(a.name, a.source) for a in alerts] == [("s3", "pools")]
    assert "over budget: pool standard has 0B left" in alerts[0].reason
    assert not [a for a in p.actions if a.kind == "stop"]  # admission = "alert"
    # s3 is still placed on its cores, its memory left alone
    s3 = [a for a in p.actions if a.kind == "place" and a.name == "s3"][0]
    assert s3.params["fields"] == ["cpuset_cpus"]
    mem.alerted.add(cs[3].info.id)
    assert not [a for a in plan_placement(tick(cfg, cs), mem).actions if a.kind == "alert"]


def test_strict_admission_stops_the_overflow_but_never_a_protected_class():
    cfg = config(manage={"default_class": "standard", "admission": "strict"},
                 pools={"infrastructure": {"budget": "150MiB"}, "standard": {"budget": "100MiB"}})
    cs = [container("s0", started_at="1"), container("s1", started_at="2"),
          container("s2", started_at="3", working_set=30 * MIB),
          container("i0", cls="infrastructure", started_at="1"),
          container("i1", cls="infrastructure", started_at="2")]
    p = plan_placement(tick(cfg, cs))
    stops = [a for a in p.actions if a.kind == "stop"]
    assert [(a.name, a.destructive) for a in stops] == [("s2", True)]
    assert "s2" not in [a.name for a in p.actions if a.kind == "place"]  # no update before a stop
    alerts = sorted(a.name for a in p.actions if a.kind == "alert")
    assert alerts == ["i1", "i1", "s2"]  # i1: over budget, and protected so not stopped


def test_strict_admission_never_stops_infrastructure_even_unprotected():
    """Issue 4: infrastructure containers are never stopped, whatever its class says."""
    cfg = config(manage={"default_class": "standard", "admission": "strict"},
                 pools={"infrastructure": {"budget": "150MiB"}, "standard": {"budget": "100MiB"}},
                 classes={"infrastructure": {"pool": "infrastructure", "cpuset": "0",
                                             "memory_limit": "128MiB", "memory_min": "32MiB",
                                             "protected": False},
                          "standard": {"pool": "standard", "memory_limit": "40MiB",
                                       "memory_min": "16MiB"}})
    cs = [container("i0", cls="infrastructure", started_at="1"),
          container("i1", cls="infrastructure", started_at="2")]
    p = plan_placement(tick(cfg, cs))
    assert [a for a in p.actions if a.kind == "stop"] == []
    assert sorted(a.name for a in p.actions if a.kind == "alert") == ["i1", "i1"]


def test_reserve_is_breached_when_available_memory_falls_below_it():
    cfg = config()
    assert not reserve_state(tick(cfg, [], available=GIB).snapshot, cfg).breached
    assert reserve_state(tick(cfg, [], available=500 * MIB).snapshot, cfg).breached


def test_recommendation_is_the_percentile_plus_20_percent_rounded_up():
    h = History(window_s=100, step_s=1)
    for v in range(1, 101):
        h.record("a", v * MIB)
    p99 = h.percentile("a", 99)
    assert p99 == float(np.percentile(np.arange(1, 101) * MIB, 99))  # 99.01 MiB
    # 99.01 MiB x 1.2 = 118.8 MiB -> rounded up to a 16 MiB step: 128 MiB
    assert recommend_limit(p99, 0.20) == 128 * MIB
    for _ in range(100):
        h.record("b", 50 * MIB)
    assert recommend_limit(h.percentile("b", 99), 0.20) == 60 * MIB  # whole MiB below 64 MiB
    # the ring keeps only the window: the last 100 of 200 samples
    for v in range(100):
        h.record("c", 1000 * MIB)
    for v in range(100):
        h.record("c", 10 * MIB)
    assert recommend_limit(h.percentile("c", 99), 0.20) == 12 * MIB


@given(size=st.integers(1, 12), pushes=st.lists(st.integers(0, 50), max_size=60),
       ask_every=st.integers(1, 5))
def test_the_kept_peak_is_the_highest_sample_in_the_window(size, pushes, ask_every):
    """History.peak (kept as samples come and go) is what percentile(100) and the
    window's max say, whenever it is asked, also after the highest sample left."""
    h = History(window_s=size, step_s=1.0)
    for k, v in enumerate(pushes):
        h.record("a", float(v))
        if k % ask_every == 0:
            window = pushes[max(0, k + 1 - size):k + 1]
            assert h.peak("a") == float(max(window)) == h.percentile("a", 100.0)
    assert h.peak("b") is None


def test_recommendations_per_container_use_the_config_percentile_and_class_floor():
    cfg = config(history={"percentile": 90.0, "headroom": 0.5})
    a, b = container("a"), container("b")
    h = History(3600, 1.0)
    for v in range(1, 11):
        h.record(a.info.id, v * 10 * MIB)  # 10..100 MiB: p90 = 91 MiB
    h.record(b.info.id, 1 * MIB)
    rows = {r["name"]: r for r in recommendations(tick(cfg, [a, b], history=h), h)}
    assert rows["a"]["working_set_percentile_bytes"] == int(91 * MIB)
    assert rows["a"]["recommended_limit_bytes"] == 144 * MIB  # 136.5 MiB -> 16 MiB step
    assert rows["a"]["recommended_reservation_bytes"] == 72 * MIB
    assert rows["b"]["recommended_limit_bytes"] == 16 * MIB  # class memory_min floor
    assert rows["a"]["samples"] == 10 and rows["a"]["adaptive"] is False


def test_pool_cgroups_are_named_per_driver_and_page_aligned():
    cfg = config(pool_cgroups={"parent": "resource-supervisor"})
    groups = {g.pool: g for g in desired_pool_groups(cfg)}
    assert groups["standard"].rel == "/resource-supervisor/standard"
    assert groups["standard"].limit_bytes == 100 * MIB
    assert cgroup_parent_for(cfg, "standard") == "/resource-supervisor/standard"
    scaled = config(pools={"infrastructure": {"budget": 1_000_000_001}, "standard": {"budget": "100MiB"}})
    assert {g.pool: g.limit_bytes for g in desired_pool_groups(scaled)}["infrastructure"] == 999_997_440
    sd = config(pool_cgroups={"parent": "supervisor.slice"})
    # systemd owns that tree: a slice per pool, limited through systemd (issue 16)
    slices = {g.pool: g for g in desired_pool_groups(sd)}
    assert slices["standard"].slice == "supervisor-standard.slice"
    assert slices["standard"].rel == "/supervisor.slice/supervisor-standard.slice"
    assert slices["standard"].limit_bytes == 100 * MIB
    assert groups["standard"].slice == ""
    assert cgroup_parent_for(sd, "standard") == "supervisor-standard.slice"
    assert pool_group_rel(sd, "standard") == "/supervisor.slice/supervisor-standard.slice"
    assert desired_pool_groups(config(pool_cgroups={"enabled": False})) == ()


def test_containers_outside_their_pool_cgroup_are_listed():
    cfg = config(pool_cgroups={"parent": "rs"})
    inside, outside = container("in"), container("out")
    paths = {inside.stats.path: f"/rs/standard/{inside.info.id}",
             outside.stats.path: f"/docker/{outside.info.id}"}
    rows = outside_pools((inside, outside, container("gone", state="exited")), cfg, paths.get)
    assert [(r["name"], r["cgroup_parent"]) for r in rows] == [("out", "/rs/standard")]
