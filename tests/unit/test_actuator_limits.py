"""The actuator's rate limits, the only ones: the per-minute cap over counted actions
(every destructive action, every container action of the ladder, never an alert) and
the ladder's minimum interval per container, both read from the live config; what a
held action looks like, how often it is journaled, and what survives a restart."""

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.act.actuator import CAP, INTERVAL, Actuator, held_by
from supervisor.adapters.journal import Journal
from supervisor.model.actions import Action, Outcome

from _ladder_kit import make_cfg


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


def make(cfg, clock, journal=None, outcome=None):
    holder = {"cfg": cfg}
    act = Actuator(journal or Journal(":memory:"), clock, get_config=lambda: holder["cfg"])
    for kind in ("alert", "throttle", "unthrottle", "reclaim", "stop", "place"):
        act.register(kind, lambda a: outcome or Outcome(ok=True, detail="done"))
    return act, holder


def ladder(kind, n, destructive=False):
    return Action(kind, f"c{n}", f"c{n}", "r", "ladder", {"breach": "pool:standard"},
                  destructive=destructive)


def test_the_cap_counts_ladder_actions_and_destructive_ones_never_alerts():
    clock = Clock()
    act, _ = make(make_cfg(ladder={"max_actions_per_minute": 3}), clock)
    for i in range(5):
        assert act.execute_one(Action("alert", "standard", "pool standard", "r", "ladder"),
                               dry_run=False).outcome == "ok"
    results = [act.execute_one(ladder("throttle", 1), False),
               act.execute_one(Action("stop", "x", "x", "r", "api", destructive=True), False),
               act.execute_one(Action("place", "y", "y", "r", "placement"), False),
               act.execute_one(ladder("reclaim", 2), False),
               act.execute_one(ladder("reclaim", 3), False)]
    assert [r.outcome for r in results] == ["ok", "ok", "ok", "ok", "skipped"]
    assert held_by(results[-1]) == CAP and "3 counted actions in the last minute" in results[-1].detail
    clock.t += 59.9
    assert held_by(act.execute_one(ladder("reclaim", 3), False)) == CAP
    clock.t += 0.1  # the minute of the first three has passed
    assert act.execute_one(ladder("reclaim", 3), False).outcome == "ok"


def test_the_interval_spaces_the_ladders_actions_on_one_container():
    clock = Clock()
    act, _ = make(make_cfg(ladder={"min_action_interval": "15s"}), clock)
    assert act.execute_one(ladder("throttle", 1), False).outcome == "ok"
    clock.t += 14.0
    r = act.execute_one(ladder("reclaim", 1), False)
    assert held_by(r) == INTERVAL and "less than 15s ago" in r.detail
    assert act.execute_one(ladder("reclaim", 2), False).outcome == "ok"  # another container
    # another planner's action on it is not the ladder's to space
    assert act.execute_one(Action("place", "c1", "c1", "r", "placement"), False).outcome == "ok"
    clock.t += 1.0
    assert act.execute_one(ladder("reclaim", 1), False).outcome == "ok"


def test_a_reload_applies_at_the_next_action():
    clock = Clock()
    act, holder = make(make_cfg(ladder={"max_actions_per_minute": 1}), clock)
    assert act.execute_one(ladder("throttle", 1), False).outcome == "ok"
    assert held_by(act.execute_one(ladder("throttle", 2), False)) == CAP
    holder["cfg"] = make_cfg(ladder={"max_actions_per_minute": 5})
    assert act.execute_one(ladder("throttle", 2), False).outcome == "ok"


def test_a_hold_repeated_every_pass_is_journaled_once():
    clock = Clock()
    journal = Journal(":memory:")
    act, _ = make(make_cfg(ladder={"max_actions_per_minute": 2}), clock, journal)
    for _ in range(30):  # a planner asking again on every pass
        for i in range(5):
            act.execute_one(ladder("throttle", i), False)
        clock.t += 0.5
    rows = journal.recent(1000)
    assert [r["outcome"] for r in rows] == ["ok", "ok", "skipped"]  # the full minute: once
    assert CAP in rows[-1]["detail"]
    assert act.counts[("throttle", "skipped")] == 1


def test_a_dry_run_is_never_held_and_uses_no_budget():
    clock = Clock()
    act, _ = make(make_cfg(ladder={"max_actions_per_minute": 1}), clock)
    for i in range(5):
        assert act.execute_one(ladder("stop", i, destructive=True), dry_run=True).outcome == "dry_run"
    assert act.execute_one(ladder("stop", 9, destructive=True), dry_run=False).outcome == "ok"


def test_an_action_that_did_nothing_gives_its_slot_back():
    clock = Clock()
    act, _ = make(make_cfg(ladder={"max_actions_per_minute": 1}), clock,
                  outcome=Outcome(ok=False, skipped=True, detail="container no longer exists"))
    for i in range(3):
        assert "no longer exists" in act.execute_one(ladder("stop", i, True), False).detail


def test_the_limits_survive_a_restart_through_the_journal(tmp_path):
    path = str(tmp_path / "journal.sqlite3")
    clock = Clock()
    cfg = make_cfg(ladder={"max_actions_per_minute": 2, "min_action_interval": "30s"})
    act, _ = make(cfg, clock, Journal(path))
    act.execute_one(ladder("throttle", 1), False)
    clock.t += 20.0
    act.execute_one(ladder("throttle", 2), False)
    act.journal.close()
    clock.t += 5.0
    again, _ = make(cfg, clock, Journal(path))
    assert held_by(again.execute_one(ladder("reclaim", 1), False)) == INTERVAL
    assert held_by(again.execute_one(ladder("reclaim", 3), False)) == CAP


def test_without_a_config_the_constructors_cap_holds_destructive_actions():
    clock = Clock()
    act = Actuator(None, clock, 2)
    act.register("stop", lambda a: Outcome(ok=True))
    outs = [act.execute_one(Action("stop", f"c{i}", "c", "r", "api", destructive=True), False)
            for i in range(3)]
    assert [o.outcome for o in outs] == ["ok", "ok", "skipped"] and held_by(outs[2]) == CAP


@settings(max_examples=80, deadline=None)
@given(cap=st.integers(1, 6), interval_s=st.floats(0, 20),
       plan=st.lists(st.tuples(st.floats(0, 10), st.integers(0, 4),
                               st.sampled_from(["throttle", "reclaim", "stop", "alert", "place"])),
                     min_size=1, max_size=80))
def test_whatever_is_asked_the_limits_hold(cap, interval_s, plan):
    clock = Clock(0.0)
    cfg = make_cfg(ladder={"max_actions_per_minute": cap})
    cfg = replace(cfg, settings=cfg.settings.model_copy(update={
        "ladder": cfg.settings.ladder.model_copy(update={"min_action_interval": interval_s})}))
    act, _ = make(cfg, clock)
    ran = []
    for dt, n, kind in plan:
        clock.t += dt
        source = "placement" if kind == "place" else "ladder"
        a = Action(kind, f"c{n}", f"c{n}", "r", source, destructive=kind == "stop")
        r = act.execute_one(a, False)
        if not r.skipped:
            ran.append((clock.t, a))
    counted = [t for t, a in ran if a.kind not in ("alert", "place")]
    for t in counted:
        assert sum(1 for u in counted if t - 60 < u <= t) <= cap
    by_target = {}
    for t, a in ran:
        if a.source == "ladder" and a.kind != "alert":
            by_target.setdefault(a.target, []).append(t)
    for times in by_target.values():
        assert all(b - a >= interval_s for a, b in zip(times, times[1:]))
