"""The journal: intent before the executor runs, result after; rows a crash left pending
are marked interrupted at the next open; decisions without an action; a damaged file is
moved aside, never reused."""

import os
import sqlite3

from supervisor.model.actions import Action, Outcome
from supervisor.act.actuator import Actuator
from supervisor.adapters.journal import Journal


def test_the_intent_is_on_disk_while_the_executor_runs(tmp_path):
    path = str(tmp_path / "j.sqlite3")
    j = Journal(path)
    seen = []

    def executor(action):
        # another connection (as after a crash) already sees the committed intent
        db = sqlite3.connect(path)
        seen.extend(db.execute("SELECT kind, outcome, params FROM journal").fetchall())
        db.close()
        return Outcome(ok=True, detail="done", before={"x": 1}, after={"x": 2})
    act = Actuator(j)
    act.register("throttle", executor)
    act.execute([Action("throttle", "c1", "web", "pool over", "ladder", {"set": {"cpu": 0.5}})],
                dry_run=False)
    assert seen == [("throttle", "pending", '{"set": {"cpu": 0.5}}')]
    (row,) = j.recent()
    assert (row["outcome"], row["detail"], row["before"], row["after"]) == (
        "ok", "done", {"x": 1}, {"x": 2})
    assert j.integrity_check() == "ok"


def test_a_row_left_pending_by_a_crash_reads_back_as_interrupted(tmp_path):
    path = str(tmp_path / "j.sqlite3")
    j = Journal(path)
    j.begin(Action("stop", "c1", "web", "pool over", "ladder"))
    j.close()  # the daemon dies before finish()
    j = Journal(path)
    assert j.interrupted_at_open == 1
    (row,) = j.recent()
    assert row["outcome"] == "interrupted" and "before this action's result" in row["detail"]


def test_decisions_without_an_action_are_journaled():
    j = Journal(":memory:")
    j.note("hibernate", "ladder", "standard", "pool standard", "pool over", "skipped",
           "no hibernation mechanism", {"step": 4}, time_s=5.0)
    (row,) = j.recent()
    assert (row["kind"], row["outcome"], row["detail"], row["params"]) == (
        "hibernate", "skipped", "no hibernation mechanism", {"step": 4})
    assert [r["kind"] for r in j.since(4.0, source="ladder")] == ["hibernate"]
    assert j.since(6.0) == [] and j.since(4.0, source="pools") == []


def test_a_damaged_database_is_moved_aside_and_a_new_one_started(tmp_path):
    path = tmp_path / "j.sqlite3"
    path.write_bytes(b"this is not an SQLite database" * 100)
    j = Journal(str(path))
    assert j.damaged and j.damaged_moved_to.startswith(str(path) + ".damaged-")
    assert os.path.exists(j.damaged_moved_to)
    assert j.count() == 0 and j.integrity_check() == "ok"


def test_states_are_read_by_exact_prefix(tmp_path):
    """A prefix is matched as written: "_" and "%" are no wildcards and case counts
    (placement's keys hold "_"; hibernation's container names may hold both)."""
    j = Journal(str(tmp_path / "j.sqlite3"), 100)
    for key in ("placement.limit_given.a", "placementXlimitXgiven.b", "PLACEMENT.limit_given.c",
                "hib/50%_x", "hib/50ab"):
        j.put_state(key, [key])
    assert set(j.states("placement.limit_given.")) == {"placement.limit_given.a"}
    assert set(j.states("hib/50%_")) == {"hib/50%_x"}
    assert set(j.states("")) == {"placement.limit_given.a", "placementXlimitXgiven.b",
                                 "PLACEMENT.limit_given.c", "hib/50%_x", "hib/50ab"}
    j.close()
