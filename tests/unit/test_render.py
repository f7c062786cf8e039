"""supctl's text output from hand-made status dicts: what an operator sees at a glance,
cut to the terminal's width, coloured only when asked."""

import re
from collections import Counter

import pytest

from _handmade import config as handmade_config, container as handmade_container, tick as handmade_tick
from supervisor.act.component import Component
from supervisor.cli.supctl import EXIT_ENGINE_DOWN, EXIT_EXHAUSTED, EXIT_OK, EXIT_STALLED, health_code
from supervisor.cli.render import (format_duration, render_findings, render_journal_entry,
                               render_plan, render_recommend, render_status)
from supervisor.policy.breaches import pool_signals
from supervisor.policy.placement import plan_placement
from supervisor.publish.exposition import render
from supervisor.publish.metrics import make_registry
from supervisor.publish.publisher import ReportBuilder
from supervisor.publish.status import build_status, cpu_percent, hibernation_rows
from supervisor.runtime.placement import plan_status

MIB = 2**20
GIB = 2**30
ANSI = re.compile(r"\033\[[0-9;]*m")


def status(**over) -> dict:
    st = {
        "daemon": {"version": "0.1.0", "pid": 4242, "uptime_s": 3725.0, "dry_run": False,
                   "passes": 3725, "last_pass_duration_s": 0.0021, "loop_alive": True,
                   "cgroup_version": 2, "rss_bytes": 60 * MIB, "cpu_seconds": 12.5,
                   "config_errors": ""},
        "engine": {"up": True, "error": ""},
        "ready": True,
        "host": {"cores": 12, "memory_total_bytes": 32 * GIB, "memory_available_bytes": 20 * GIB,
                 "pressure": {"cpu": {"some_avg10": 3.5, "full_avg10": 0.0},
                              "memory": {"some_avg10": 0.2, "full_avg10": 0.1}}},
        "reserve": {"reserve_bytes": int(1.38 * GIB), "available_bytes": 20 * GIB, "breached": False},
        "pools": {
            "infrastructure": {"budget_bytes": 12 * GIB, "allocated_bytes": 6 * GIB,
                               "used_bytes": 3 * GIB, "utilisation": 0.25, "state": "ok"},
            "standard": {"budget_bytes": 6 * GIB, "allocated_bytes": 7 * GIB,
                         "used_bytes": int(5.8 * GIB), "utilisation": 0.9667, "state": "over"},
        },
        "classes": {
            "infrastructure": {"cpuset": "0-3", "pool": "infrastructure", "cores": 4,
                               "ports": "10000-10099", "protected": True},
            "standard": {"cpuset": "8-11", "pool": "standard", "cores": 4,
                         "ports": "10200-10399", "protected": False},
        },
        "containers": [
            {"id": "a" * 12, "name": "postgres-main", "class": "infrastructure", "state": "running",
             "cpuset": "0-3", "memory_working_set_bytes": 900 * MIB, "memory_limit_bytes": GIB,
             "cpu_percent": 12.3, "idle_s": None, "hibernated": False, "managed": True},
            {"id": "b" * 12, "name": "agent-summarise", "class": "standard", "state": "paused",
             "cpuset": "8-11", "memory_working_set_bytes": 40 * MIB, "memory_limit_bytes": 512 * MIB,
             "cpu_percent": None, "idle_s": 421.0, "hibernated": True, "managed": True},
            {"id": "c" * 12, "name": "scratch", "class": "standard", "state": "running",
             "cpuset": "", "memory_working_set_bytes": 5 * MIB, "memory_limit_bytes": 0,
             "cpu_percent": 0.0, "idle_s": 30.0, "hibernated": False, "managed": True},
        ],
        "ollama": {"policy": "report",
                   "instances": [{"name": "ollama", "compliant": False, "throttled_to_cores": 2.0,
                                  "drift": ["OLLAMA_NUM_PARALLEL is 8, want 2"]}]},
        "actions": [{"time_s": 1700000000.0, "outcome": "ok", "kind": "place",
                     "name": "scratch", "reason": "no memory limit: class default 512MiB"}],
    }
    st.update(over)
    return st


def line_of(text: str, start: str) -> str:
    hits = [ln for ln in text.splitlines() if ln.startswith(start)]
    assert hits, f"no line starting {start!r} in:\n{text}"
    return hits[0]


def test_status_screen_shows_host_pools_classes_containers_ollama_and_actions():
    text = render_status(status(), color=False, width=110)
    assert not ANSI.search(text)
    assert all(len(ln) <= 110 for ln in text.splitlines())
    assert line_of(text, "resource-supervisor 0.1.0").split()[2:6] == ["pid", "4242", "up", "1h02m"]
    assert "engine: up" in text and "self: 60.0MiB RSS" in text
    host = line_of(text, "host:")
    assert "12 cores" in host and "available 20.0GiB of 32.0GiB" in host and "reserve 1.4GiB ok" in host
    assert "cpu 3.5%/0.0%" in line_of(text, "pressure")
    infra = line_of(text, "infrastructure ")
    assert "12.0GiB" in infra and "6.0GiB" in infra and "3.0GiB" in infra and "[#####" in infra
    std = line_of(text, "standard  ")
    assert "97%" in std and "OVER-ALLOCATED" in std
    assert re.search(r"^standard\s+4\s+8-11\s+standard\s+10200-10399$", text, re.M)
    assert re.search(r"^infrastructure\s+4\s+0-3\s+infrastructure\s+10000-10099\s+protected$", text, re.M)
    pg = line_of(text, "postgres-main").split()
    assert pg[1:4] == ["infrastructure", "running", "0-3"]
    assert "900.0MiB/1.0GiB" in pg and "12.3" in pg
    agent = line_of(text, "agent-summarise").split()
    assert agent[1:3] == ["standard", "hibernated"] and agent[-1] == "7m01s"
    scratch = line_of(text, "scratch").split()
    assert scratch[3] == "any" and "5.0MiB/none" in scratch and scratch[-1] == "30s"
    assert "OLLAMA (Rule 12.1, policy report)" in text
    assert ("ollama: NOT COMPLIANT: OLLAMA_NUM_PARALLEL is 8, want 2  "
            "[CPU throttled to 2 cores under pressure]") in text
    assert re.search(r"ok\s+place\s+scratch\s+no memory limit", text)


def test_status_screen_is_cut_to_the_width_and_coloured_only_when_asked():
    narrow = render_status(status(), color=False, width=60)
    assert max(len(ln) for ln in narrow.splitlines()) <= 60
    coloured = render_status(status(), color=True, width=60)
    assert ANSI.search(coloured)
    assert max(len(ANSI.sub("", ln)) for ln in coloured.splitlines()) <= 60
    assert ANSI.sub("", coloured) == narrow


def test_status_screen_says_what_is_wrong():
    st = status(engine={"up": False, "error": "connection refused"},
                reserve={"reserve_bytes": 2 * GIB, "available_bytes": GIB, "breached": True})
    st["daemon"].update(dry_run=True, loop_alive=False,
                        config_errors="invalid configuration:\n  pools.standard.budget: cannot parse size 'lots'")
    text = render_status(st, width=120)
    assert "DRY RUN" in text
    assert "engine: UNREACHABLE (connection refused)" in text and "loop: STALLED" in text
    assert "reserve 2.0GiB BREACHED" in text
    assert "last reload refused (running on the previous config): pools.standard.budget" in text
    starting = render_status({"daemon": {}, "engine": {"up": True}, "ready": False}, width=80)
    assert starting.splitlines()[-1] == "no snapshot yet"


def test_health_codes_for_a_status_check():
    assert health_code(status(pools={"p": {"budget_bytes": 10, "allocated_bytes": 5, "used_bytes": 5,
                                           "state": "critical"}})) == EXIT_OK
    assert health_code(status()) == EXIT_EXHAUSTED  # standard allocated 7 GiB of 6: over
    # The state decides, as the daemon computed it: supctl compares no figures itself.
    assert health_code(status(pools={"p": {"budget_bytes": 10, "allocated_bytes": 5, "used_bytes": 5,
                                           "state": "over"}})) == EXIT_EXHAUSTED
    no_room = status(pools={"p": {"budget_bytes": 10, "allocated_bytes": 10, "used_bytes": 1,
                                  "state": "ok", "unlimited_no_room": ["web"]}})
    assert health_code(no_room) == EXIT_EXHAUSTED
    breached = status(pools={}, reserve={"breached": True})
    assert health_code(breached) == EXIT_EXHAUSTED
    assert health_code(status(pools={}, engine={"up": False})) == EXIT_ENGINE_DOWN
    stalled = status(pools={})
    stalled["daemon"]["loop_alive"] = False
    assert health_code(stalled) == EXIT_STALLED


def test_cpu_percent_needs_two_samples_of_one_counter():
    assert cpu_percent(12.5, 12.0, 1.0) == 50.0
    assert cpu_percent(14.0, 12.0, 1.0) == 200.0  # two cores busy
    assert cpu_percent(12.0, None, 1.0) is None
    assert cpu_percent(1.0, 50.0, 1.0) is None  # restarted: the counter went back
    assert cpu_percent(1.0, 1.0, 0.0) is None


def test_hibernation_rows_are_found_by_id_short_id_or_name():
    rows = hibernation_rows({"containers": {"f" * 64: {"name": "agent", "idle_s": 12.0}}})
    assert rows["f" * 12]["idle_s"] == 12.0 and rows["agent"]["idle_s"] == 12.0
    rows = hibernation_rows({"containers": [{"id": "e" * 12, "name": "x", "hibernated": True}]})
    assert rows["x"]["hibernated"] is True
    assert hibernation_rows(None) == {} and hibernation_rows({"error": "boom"}) == {}


def test_plan_lists_actions_and_those_held_back():
    plan = {"ready": True, "snapshot_time_s": 1700000000.0, "dry_run": True,
            "actions": [{"kind": "place", "name": "web", "reason": "cpuset 0-1 -> 8-11",
                         "params": {"cpuset_cpus": "8-11"}, "destructive": False}],
            "held": [{"kind": "stop", "name": "batch", "reason": "pool over budget",
                      "params": {}, "destructive": True}]}
    text = render_plan(plan)
    assert "dry-run mode" in text.splitlines()[0]
    assert re.search(r"place\s+web\s+cpuset 0-1 -> 8-11 \(cpuset_cpus=8-11\)", text)
    held = text.split("held back while the Docker engine is unreachable:")[1]
    assert "stop" in held and "[destructive]" in held
    assert "nothing to do" in render_plan({"ready": True, "actions": [], "held": []})
    assert "starting" in render_plan({"ready": False})


def test_recommendations_table_shows_sizes():
    body = {"percentile": 99.0, "headroom": 0.2, "window": "1h",
            "containers": [{"id": "x", "name": "web", "class": "standard", "samples": 3600,
                            "working_set_percentile_bytes": 100 * MIB,
                            "current_limit_bytes": 512 * MIB, "recommended_limit_bytes": 128 * MIB,
                            "current_reservation_bytes": 256 * MIB,
                            "recommended_reservation_bytes": 64 * MIB, "adaptive": False}]}
    lines = render_recommend(body, width=200).splitlines()
    assert lines[0] == "recommended limit = p99 of the working set over 1h + 20% (Rule 1.1)"
    assert lines[1].split()[:3] == ["CONTAINER", "CLASS", "SAMPLES"]
    assert lines[2].split() == ["web", "standard", "3600", "100.0MiB", "512.0MiB", "128.0MiB",
                                "256.0MiB", "64.0MiB", "False"]
    assert render_recommend({"containers": []}) == "no recommendations yet (not enough history)"


def test_findings_and_journal_lines():
    body = {"audited": ["a", "b"], "findings": [
        {"target": "a", "rule": "1.1", "severity": "critical", "message": "no memory limit"},
        {"target": "b", "rule": "9.3", "severity": "medium", "message": "runs as root"}]}
    text = render_findings(body)
    assert re.search(r"^critical\s+1\.1\s+a\s+no memory limit$", text, re.M)
    assert text.splitlines()[-1] == "2 finding(s) in 2 audited: 1 critical, 1 medium"
    assert render_findings({"audited": ["a"], "findings": []}) == "compliant: no findings in 1 audited"
    e = {"seq": 7, "time_s": 1700000000.0, "outcome": "failed", "kind": "stop", "name": "web",
         "reason": "pool over budget", "detail": "engine unavailable"}
    assert re.search(r"^\s+7 \d\d:\d\d:\d\d failed\s+stop\s+web\s+pool over budget \[engine unavailable\]$",
                     render_journal_entry(e))


def test_durations_read_at_a_glance():
    assert [format_duration(x) for x in (None, 5, 61, 3600, 90000)] == ["-", "5s", "1m01s", "1h00m", "1d01h"]


def test_supctl_defaults_match_the_daemons():
    import supervisor.cli.supctl as cli
    from supervisor.model import config
    assert cli.DEFAULT_CONFIG_PATH == config.DEFAULT_CONFIG_PATH
    assert cli.DEFAULT_SOCKET == config.ControlSection().socket


def test_colours_follow_the_state_the_daemon_computed():
    """render compares no figures: the bar's colour and the word beside it come from the
    pool's state, whatever its ratio."""
    pools = {"a": {"budget_bytes": 10 * GIB, "allocated_bytes": 5 * GIB, "used_bytes": 5 * GIB,
                   "utilisation": 0.5, "state": "critical"},
             "b": {"budget_bytes": 10 * GIB, "allocated_bytes": 9 * GIB, "used_bytes": int(9.9 * GIB),
                   "utilisation": 0.99, "state": "ok"}}
    text = render_status(status(pools=pools), color=True, width=140)
    a, b = line_of(text, "a  "), line_of(text, "b  ")
    assert "\033[31m[" in a and ANSI.sub("", a).endswith("CRITICAL")
    assert "\033[" not in b and b.endswith("99%")


# ---------------------------------------------------------------- one state everywhere


def report_of(tick, components=()):
    """The report a pass on ``tick`` publishes."""
    return ReportBuilder(list(components), Counter()).build(
        cfg=tick.cfg, seq=1, stale_after_s=10.0, tick=tick, engine_up=True)


def pool_state_series(report) -> dict[str, float]:
    text = render(make_registry(lambda: report).collect()).decode()
    return {m.group(1): float(m.group(2)) for m in re.finditer(
        r'^resource_supervisor_pool_state\{pool="standard",state="(\w+)"\} (\S+)$', text, re.M)}


@pytest.mark.parametrize("working_set, want, code", [
    (50 * MIB, "over", EXIT_EXHAUSTED),  # 100 MiB used of a 100 MiB budget: exactly 100%
    (50 * MIB - MIB // 2, "critical", EXIT_OK),  # 99%
])
def test_at_exactly_the_budget_every_surface_says_over(working_set, want, code):
    """Ladder, /metrics, `supctl status` text and its exit code, from one hand-made tick:
    at used == budget all say over; just below, all say critical and exit 0."""
    cfg = handmade_config()  # pool standard: 100 MiB
    t = handmade_tick(cfg, [handmade_container(limit=50 * MIB, working_set=working_set)
                            for _ in range(2)])
    assert t.pools["standard"].allocated_bytes == cfg.pools["standard"].budget_bytes
    ladder = {s.subject: s for s in pool_signals(t)}["standard"]
    assert ladder.level == want
    report = report_of(t)
    assert pool_state_series(report) == {s: float(s == want) for s in ("ok", "warn", "critical", "over")}
    st = build_status(report)
    assert st["pools"]["standard"]["state"] == want
    line = line_of(render_status(st, width=120), "standard  ")
    assert ("OVER BUDGET" in line) is (want == "over") and ("CRITICAL" in line) is (want == "critical")
    assert health_code(st) == code


class StaticSection(Component):
    """A component whose status section is ``section`` as given."""

    def __init__(self, name, section):
        super().__init__(None)
        self.name, self.section = name, section

    def status(self, tick):
        return self.section


class PlacementSection(Component):
    """Placement's status section as the daemon publishes it: admission's verdicts."""

    name = "placement"

    def __init__(self, over_budget):
        super().__init__(None)
        self.over_budget = over_budget

    def status(self, tick):
        return {"pools": {"standard": {"granted_bytes": 0, "shrunk": [], "over_budget": [
            {"id": c.info.id[:12], "name": c.info.name, "pool": "standard",
             "verdict": "over-budget"} for c in self.over_budget]}}}


def test_a_container_left_unlimited_for_want_of_room_is_exhaustion():
    cfg = handmade_config()
    full = handmade_container("full", limit=100 * MIB, working_set=10 * MIB)
    bare = handmade_container("bare", working_set=5 * MIB)  # no limit: no room for one
    kept = handmade_container("kept", limit=20 * MIB, working_set=5 * MIB, cls="infrastructure")
    t = handmade_tick(cfg, [full, bare, kept])
    assert t.pools["standard"].state == "ok"  # 15 MiB used, 100 MiB allocated of 100
    st = build_status(report_of(t, [PlacementSection([bare, kept])]))
    assert st["pools"]["standard"]["unlimited_no_room"] == ["bare"]  # kept holds a limit
    text = render_status(st, width=160)
    assert ("NO MEMORY LIMIT: bare in pool standard run without any memory limit: the pool "
            "had no room for one") in text
    assert health_code(st) == EXIT_EXHAUSTED
    fine = build_status(report_of(t, [PlacementSection([])]))
    assert "unlimited_no_room" not in fine["pools"]["standard"] and health_code(fine) == EXIT_OK


def test_status_shows_cpu_percent_between_the_reports_two_snapshots():
    from dataclasses import replace
    cfg = handmade_config()
    c = handmade_container("busy", limit=40 * MIB)
    at = lambda now, cpu_s: replace(c, stats=replace(c.stats, cpu_usage_s=cpu_s))  # noqa: E731
    first, second = handmade_tick(cfg, [at(1000.0, 1.0)], now=1000.0), handmade_tick(
        cfg, [at(1002.0, 2.0)], now=1002.0)
    builder = ReportBuilder([], Counter())
    report = builder.build(cfg=cfg, seq=2, stale_after_s=10.0, tick=second, prev_tick=first,
                           engine_up=True)
    (row,) = build_status(report)["containers"]
    assert row["cpu_percent"] == 50.0  # 1 CPU second in 2 s: half a core
    alone = builder.build(cfg=cfg, seq=1, stale_after_s=10.0, tick=first, engine_up=True)
    assert build_status(alone)["containers"][0]["cpu_percent"] is None


def test_idle_column_says_why_a_container_is_not_idle():
    hib = {"containers": [
        {"id": "c" * 12, "name": "scratch", "hibernated": False, "idle_s": 0.0,
         "last_busy": "2 new connections", "last_busy_ago_s": 4.0},
        {"id": "b" * 12, "name": "agent-summarise", "hibernated": True, "idle_s": 421.0}]}
    text = render_status(status(hibernation=hib), color=False, width=170)
    scratch = line_of(text, "scratch")
    assert re.search(r"30s  busy: 2 new connections, 4s ago$", scratch), scratch
    assert "busy:" not in line_of(text, "agent-summarise")  # hibernated: nothing to explain


def test_last_actions_wrap_under_their_reason_instead_of_being_cut():
    reason = ("memory limit raised from 256.0MiB to 544.0MiB after 2 OOM kills in 120s: "
              "the limit resource-supervisor gave was below what the container needs")
    st = status(actions=[{"time_s": 1700000000.0, "outcome": "ok", "kind": "place",
                          "name": "shop-redis-1", "reason": reason}])
    text = render_status(st, color=True, width=100)
    plain = ANSI.sub("", text).splitlines()
    start = next(i for i, ln in enumerate(plain) if "shop-redis-1" in ln)
    col = plain[start].index("memory limit")
    block = [plain[start][col:]] + [ln[col:] for ln in plain[start + 1:] if ln[:col].strip() == ""]
    assert all(len(ln) <= 100 for ln in plain)
    assert len(block) >= 2 and " ".join(block) == reason  # every word, none cut


def test_a_journal_row_is_one_line_even_for_a_multi_line_engine_error():
    e = {"seq": 8, "time_s": 1700000000.0, "outcome": "failed", "kind": "place", "name": "pg",
         "reason": "class default\nafter restart",
         "detail": "refused: 500 Server Error\nfailed to write\n  memory.limit_in_bytes: device busy"}
    line = render_journal_entry(e)
    assert "\n" not in line
    assert line.endswith("class default after restart [refused: 500 Server Error failed to write "
                         "memory.limit_in_bytes: device busy]")


def test_a_container_still_settling_is_listed_and_is_no_exhaustion():
    """A new container without a limit before history.settle: status lists it under its
    pool's ``settling`` (from placement's section), the text says so, the exit code stays 0."""
    cfg = handmade_config(history={"settle": "60s"})
    young = handmade_container("young", working_set=5 * MIB, started_at="2027-01-15T08:00:00Z")
    t = handmade_tick(cfg, [young], now=1_800_000_010.0)
    plan = plan_placement(t)
    assert plan.admissions[young.info.id].verdict == "settling"
    section = plan_status(plan, t, True, Counter(), {})  # placement's own section
    assert section["pools"]["standard"]["settling"] == ["young"]
    st = build_status(report_of(t, [StaticSection("placement", section)]))
    assert st["pools"]["standard"]["settling"] == ["young"]
    assert "settling: young in pool standard get a memory limit once settled" in \
        render_status(st, width=160)
    assert health_code(st) == EXIT_OK
