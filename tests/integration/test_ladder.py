"""The breach ladder on the real engine: a pool pushed over its budget by a container
filling its tmpfs is alerted, throttled, reclaimed and relieved by stopping its
lowest-priority member while infrastructure is left alone; throttles are undone once
the pool is back below its clear level; a daemon killed with SIGKILL while a throttle
stands comes back, keeps it while the breach lasts and undoes it after; and the
executors change (and put back) what `docker inspect` and the cgroup files show."""

import os
import sqlite3
import time

from . import _procs
from _testkit import RUN_ID, class_table, metrics_text, wait_for
from supervisor.model.actions import Action
from supervisor.adapters.cgroups import CgroupFS
from supervisor.act.component import Context
from supervisor.act.core_actions import make_core
from supervisor.adapters.engine import Engine
from supervisor.observe.history import History
from supervisor.observe.inventory import Inventory
from supervisor.adapters.journal import Journal
from supervisor.runtime.ladder import Ladder
from supervisor.act.ladder_knobs import RECLAIM_PREFIX, THROTTLE_PREFIX

MIB = 2**20

LADDER = {"grace": "1s", "min_action_interval": "0.5s", "clear_after": "2s",
          "max_actions_per_minute": 60, "stop_timeout": "1s"}


def ladder_config(make_config, classes=None, **ladder):
    """Standard pool 96 MiB shared by two classes (standard, batch: lower priority);
    infrastructure in a pool of its own; hibernation out of the way."""
    cfg = {
        "pools": {"infrastructure": {"budget": "256MiB"}, "standard": {"budget": "96MiB"}},
        "classes": class_table(
            "infrastructure", "standard", "batch", infrastructure={"memory_limit": "64MiB"},
            standard={"memory_limit": "96MiB", "hibernate": False}, batch={"hibernate": False}),
        "ladder": {**LADDER, **ladder},
        "pool_cgroups": {"enabled": False},
    }
    for name, extra in (classes or {}).items():
        cfg["classes"][name].update(extra)
    return make_config(cfg)


class DaemonProcess(_procs.DaemonProcess):
    def ladder_rows(self, target=None):
        return [e for e in self.journal() if e["source"] == "ladder"
                and (target is None or e["target"] == target)]


def fill(container, mib, name="fill"):
    rc, out = container.exec_run(["dd", "if=/dev/zero", f"of=/data/{name}", "bs=1M",
                                  f"count={mib}"])
    assert rc == 0, out


def host_config(c):
    c.reload()
    h = c.attrs["HostConfig"]
    return {k: h[k] for k in ("CpuQuota", "CpuPeriod", "NanoCpus", "Memory",
                              "MemoryReservation", "CpusetCpus")}


def cfs_quota_us(c):
    c.reload()
    fs = CgroupFS()
    loc = fs.locate(c.id, c.attrs["State"]["Pid"])
    return int(fs.read_file(loc, "cpu", "cpu.cfs_quota_us"))


def first(rows, **match):
    for r in rows:
        if all(r.get(k) == v for k, v in match.items()):
            return r
    return None


def test_a_pool_over_budget_is_alerted_throttled_and_relieved_by_a_stop(
        make_config, containers, tmp_path):
    cfg, path = ladder_config(make_config)
    pg = containers.run(name=f"rs-pg-{RUN_ID}", labels={"supervisor.class": "infrastructure"},
                        mem_limit="64m", mem_reservation="32m", cpuset_cpus="0")
    filler = containers.run(labels={"supervisor.class": "standard"}, mem_limit="96m",
                            mem_reservation="48m", tmpfs={"/data": "size=100m"})
    victim = containers.run(labels={"supervisor.class": "batch"}, mem_limit="48m",
                            mem_reservation="8m", tmpfs={"/data": "size=40m"})
    fill(victim, 24)
    d = DaemonProcess(cfg, path, tmp_path / "daemon.log").start()
    try:
        time.sleep(1.0)  # let placement settle: what the ladder must leave alone from here
        pg_before = host_config(pg)
        quota_before = host_config(filler)["CpuQuota"]
        assert not d.ladder_rows()

        fill(filler, 80)  # the pool: ~105 MiB of 96
        stop = wait_for(lambda: first(d.ladder_rows(), kind="stop", outcome="ok"), 30, 0.2,
                        "the ladder's stop")
        rows = d.ladder_rows()
        alert = first(rows, kind="alert")
        throttle = first(rows, kind="throttle", target=victim.id)
        reclaim = first(rows, kind="reclaim")
        skipped = first(rows, kind="hibernate", outcome="skipped")
        assert alert["params"]["breach"] == "pool:standard" and "breach opened" in alert["reason"]
        assert "pool standard uses" in alert["reason"] and "96.0MiB budget" in alert["reason"]
        # dd fills the tmpfs over a few ticks: the breach may open at warn and rise
        assert first(rows, kind="alert", target="standard")["params"]["level"] in (
            "warn", "critical", "over")
        assert [r["params"]["level"] for r in rows if r["kind"] == "alert"][-1] == "over"
        assert throttle["outcome"] == "ok" and reclaim["outcome"] == "ok" and skipped
        assert alert["seq"] < throttle["seq"] < reclaim["seq"] < stop["seq"]
        # the skipped rung is journaled at the end of the pass that went on to the stop
        assert reclaim["time_s"] < skipped["time_s"] <= stop["time_s"]
        assert "ladder step 2 (throttle)" in throttle["reason"]
        assert "alert did not clear it within 1s" in throttle["reason"]
        assert stop["target"] == victim.id
        assert "ladder step 5 (stop)" in stop["reason"] and "ranks first for eviction" in stop["reason"]

        victim.reload()
        assert victim.attrs["State"]["Status"] == "exited"
        # the filler is throttled (v1: its CPU limit halved, through Docker) and runs on
        filler_throttle = first(rows, kind="throttle", target=filler.id)
        assert filler_throttle["outcome"] == "ok"
        cores = filler_throttle["after"]["cpu"]
        assert host_config(filler)["CpuQuota"] == int(cores * 100_000)
        assert cfs_quota_us(filler) == int(cores * 100_000)
        filler.reload()
        assert filler.attrs["State"]["Status"] == "running"
        # infrastructure: no ladder row names it, Docker's values unchanged, running
        assert not d.ladder_rows(target=pg.id)
        assert host_config(pg) == pg_before
        pg.reload()
        assert pg.attrs["State"]["Status"] == "running"
        st = d.get("/status")["ladder"]
        # the stopped victim keeps its record: Docker keeps the lowered CPU limit for its
        # next start, so it is put back like any other
        assert {t["name"] for t in st["throttled"]} == {filler.name, victim.name}
        assert st["breaches"][0]["key"] == "pool:standard"
        victim_quota = host_config(victim)["CpuQuota"]
        assert victim_quota == int(throttle["after"]["cpu"] * 100_000)
        metrics = metrics_text(cfg.settings.metrics.listen)
        assert 'resource_supervisor_breaches_active{kind="pool"} 1.0' in metrics
        assert 'resource_supervisor_breaches_total{kind="pool_warn"} 1.0' in metrics
        assert "resource_supervisor_throttled_containers 2.0" in metrics
        assert 'resource_supervisor_breach_step{breach="pool:standard",kind="pool"} 5.0' in metrics

        # Back below the clear level for clear_after: the throttle is undone.
        rc, _ = filler.exec_run(["rm", "/data/fill"])
        assert rc == 0
        undo = wait_for(lambda: first(d.ladder_rows(filler.id), kind="unthrottle", outcome="ok"),
                        20, 0.2, "the unthrottle")
        assert "pool:standard" in undo["reason"]
        assert host_config(filler)["CpuQuota"] in (quota_before, -1)
        assert cfs_quota_us(filler) == -1
        wait_for(lambda: first(d.ladder_rows(victim.id), kind="unthrottle", outcome="ok"), 10,
                 0.2, "the stopped victim's unthrottle")
        assert host_config(victim)["CpuQuota"] in (0, -1)
        assert first(d.ladder_rows(), kind="breach", outcome="cleared")
        assert d.get("/status")["ladder"]["throttled"] == []
    finally:
        d.stop()
    assert d.proc.returncode == 0, d.log_text()[-3000:]


def test_sigkill_while_throttled_then_restart_keeps_then_undoes_and_the_journal_is_intact(
        make_config, containers, tmp_path, docker_host):
    # critical (95-100%) climbs to throttle and reclaim but never stops; the standard
    # class's own CPU limit (what placement holds it to) is 0.8 cores
    cfg, path = ladder_config(make_config, classes={"standard": {"cpu_quota": 0.8}}, grace="2s")
    hog = containers.run(labels={"supervisor.class": "batch"}, mem_limit="128m",
                         mem_reservation="16m", tmpfs={"/data": "size=120m"})
    other = containers.run(labels={"supervisor.class": "standard"}, mem_limit="16m",
                           mem_reservation="8m", cpu_quota=80_000, cpu_period=100_000)
    d = DaemonProcess(cfg, path, tmp_path / "daemon.log").start()
    jpath = os.path.join(cfg.settings.state_dir, "journal.sqlite3")
    try:
        fill(hog, 92)
        throttle = wait_for(lambda: first(d.ladder_rows(hog.id), kind="throttle", outcome="ok"),
                            20, 0.1, "the throttle")
        d.kill()  # SIGKILL while the throttle stands and the breach persists
        throttled_quota = host_config(hog)["CpuQuota"]
        assert throttled_quota == int(throttle["after"]["cpu"] * 100_000)

        # What a crash inside the executor would leave: the intent (values to put back)
        # recorded, the change made, the result never written.
        j = Journal(jpath)
        assert j.integrity_check() == "ok"
        assert j.get_state(THROTTLE_PREFIX + hog.id)["state"] == "applied"
        seq_at_kill = max(r["seq"] for r in j.recent(2000))
        j.put_state(THROTTLE_PREFIX + other.id, {
            "container_id": other.id, "name": other.name, "breaches": ["pool:standard"],
            "before": {"cpu": {"nano_cpus": 0, "cpu_quota_us": 80_000, "cpu_period_us": 100_000}},
            "after": {}, "target": {"cpu": 0.4}, "at": time.time(), "state": "applying"})
        j.close()
        other.update(cpu_quota=40_000)

        d.start()  # same config, same journal
        time.sleep(3 * 0.2 + 0.5)
        after = [r for r in d.ladder_rows() if r["seq"] > seq_at_kill]
        assert first(after, kind="throttle", outcome="restored", target=hog.id)
        assert not first(after, kind="throttle", outcome="ok")  # not throttled twice
        assert not first(after, kind="alert", target="standard") or \
            "rose" in first(after, kind="alert", target="standard")["reason"]
        assert host_config(hog)["CpuQuota"] == throttled_quota  # kept: the breach persists
        assert {t["name"] for t in d.get("/status")["ladder"]["throttled"]} == {hog.name, other.name}

        # the breach goes: both throttles are undone, to the values recorded before them
        rc, _ = hog.exec_run(["rm", "/data/fill"])
        assert rc == 0
        wait_for(lambda: first(d.ladder_rows(hog.id), kind="unthrottle", outcome="ok")
                 and first(d.ladder_rows(other.id), kind="unthrottle", outcome="ok"),
                 20, 0.2, "both unthrottles")
        assert host_config(hog)["CpuQuota"] in (0, -1) and cfs_quota_us(hog) == -1
        assert host_config(other)["CpuQuota"] == 80_000 and cfs_quota_us(other) == 80_000
        undo = first(d.ladder_rows(other.id), kind="unthrottle", outcome="ok")
        assert undo["after"] == {"cpu": {"nano_cpus": 0, "cpu_quota_us": 80_000,
                                         "cpu_period_us": 100_000}}
        assert first(d.ladder_rows(other.id), kind="throttle", outcome="restored")
    finally:
        d.stop()
    assert d.proc.returncode == 0, d.log_text()[-3000:]
    db = sqlite3.connect(jpath)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    kinds = [r[0] for r in db.execute(
        "SELECT kind FROM journal WHERE source = 'ladder' ORDER BY seq").fetchall()]
    assert kinds.count("throttle") >= 2 and kinds.count("unthrottle") == 2
    assert db.execute("SELECT COUNT(*) FROM state WHERE key LIKE 'ladder/throttle/%'").fetchone()[0] == 0
    db.close()


def test_an_unprotected_infrastructure_container_in_an_over_budget_pool_is_never_stopped(
        make_config, containers, tmp_path):
    # "infrastructure" with protected = false, in the standard pool at the lowest
    # priority and holding nearly all of it: first in eviction order, were it not for
    # the rule book
    cfg, path = ladder_config(make_config, classes={"infrastructure": {
        "pool": "standard", "protected": False, "cpuset": "any", "priority": 1,
        "memory_limit": "128MiB"}})
    infra = containers.run(labels={"supervisor.class": "infrastructure"}, mem_limit="128m",
                           mem_reservation="16m", tmpfs={"/data": "size=120m"})
    victim = containers.run(labels={"supervisor.class": "batch"}, mem_limit="48m",
                            mem_reservation="8m", tmpfs={"/data": "size=40m"})
    fill(victim, 12)
    d = DaemonProcess(cfg, path, tmp_path / "daemon.log").start()
    try:
        time.sleep(1.0)  # let placement settle (it grants infrastructure the pool's 96 MiB)
        fill(infra, 88)  # the pool: ~101 MiB of 96, nearly all of it infrastructure's
        stop = wait_for(lambda: first(d.ladder_rows(), kind="stop", outcome="ok"), 30, 0.2,
                        "the ladder's stop")
        # the lowest priority and the most above its reservation, infrastructure ranks
        # first for every rung: the ladder passed it over each time
        assert stop["target"] == victim.id and "ranks first for eviction" in stop["reason"]
        assert first(d.ladder_rows(), kind="throttle", target=victim.id, outcome="ok")
        assert first(d.ladder_rows(), kind="reclaim", target=victim.id, outcome="ok")
        time.sleep(3.0)  # three more grace periods with the breach open
        assert not d.ladder_rows(target=infra.id)  # never throttled, reclaimed or stopped
        infra.reload()
        assert infra.attrs["State"]["Status"] == "running"
        assert {t["name"] for t in d.get("/status")["ladder"]["throttled"]} == {victim.name}
    finally:
        d.stop()
    assert d.proc.returncode == 0, d.log_text()[-3000:]


# ---------------------------------------------------------------------------- executors

def make_ladder(docker_host, make_config, tmp_path, classes=None):
    cfg, _ = ladder_config(make_config, classes=classes)
    engine = Engine(docker_host)
    inv = Inventory(engine)
    inv.refresh()
    journal = Journal(str(tmp_path / "executors.sqlite3"))
    ctx = Context(engine=engine, inventory=inv, cgroups=CgroupFS(), journal=journal,
                  history=History(60, 1), clock=time.time, get_config=lambda: cfg)
    return Ladder(ctx), journal


def test_v1_reclaim_lowers_the_limit_reclaims_page_cache_and_puts_the_limit_back(
        docker_host, make_config, containers, tmp_path):
    c = containers.run(labels={"supervisor.class": "batch"}, mem_limit="96m")
    # 40 MiB of page cache: written, synced, read back (active file pages)
    rc, out = c.exec_run(["sh", "-c", "dd if=/dev/zero of=/cache bs=1M count=40 && sync "
                                      "&& cat /cache > /dev/null"])
    assert rc == 0, out
    ladder, journal = make_ladder(docker_host, make_config, tmp_path)
    fs = CgroupFS()
    c.reload()
    loc = fs.locate(c.id, c.attrs["State"]["Pid"])
    limit_before = fs.read_file(loc, "memory", "memory.limit_in_bytes").strip()
    u0 = fs.read_usage(loc).memory_usage_bytes
    assert u0 >= 40 * MIB
    out = ladder.executors()["reclaim"](Action("reclaim", c.id, c.name, "test", "ladder",
                                               {"bytes": 30 * MIB}))
    u1 = fs.read_usage(loc).memory_usage_bytes
    assert out.ok and out.before["memory_usage_bytes"] == u0
    assert u0 - u1 >= 20 * MIB, f"reclaimed only {(u0 - u1) / MIB:.1f} MiB"
    assert "memory.limit_in_bytes lowered" in out.detail
    assert fs.read_file(loc, "memory", "memory.limit_in_bytes").strip() == limit_before
    assert journal.states(RECLAIM_PREFIX) == {}
    c.reload()
    assert c.attrs["State"]["Status"] == "running"


def test_an_interrupted_v1_reclaim_is_put_back_at_start(docker_host, make_config, containers,
                                                         tmp_path):
    c = containers.run(labels={"supervisor.class": "batch"}, mem_limit="96m")
    c.reload()
    fs = CgroupFS()
    loc = fs.locate(c.id, c.attrs["State"]["Pid"])
    journal = Journal(str(tmp_path / "executors.sqlite3"))
    # the daemon died between lowering the limit and restoring it
    journal.put_state(RECLAIM_PREFIX + c.id, {"container_id": c.id, "name": c.name,
                                              "memory_dir": loc.dir("memory"),
                                              "limit": str(96 * MIB), "at": time.time()})
    fs.write(f"{loc.dir('memory')}/memory.limit_in_bytes", 48 * MIB)
    journal.close()
    ladder, journal = make_ladder(docker_host, make_config, tmp_path)
    assert fs.read_file(loc, "memory", "memory.limit_in_bytes").strip() == str(96 * MIB)
    assert journal.states(RECLAIM_PREFIX) == {}


def test_v1_throttle_and_unthrottle_go_through_docker_and_come_back(
        docker_host, make_config, containers, tmp_path):
    a = containers.run(labels={"supervisor.class": "batch"}, mem_limit="64m",
                       mem_reservation="48m", nano_cpus=1_000_000_000)
    b = containers.run(labels={"supervisor.class": "batch"}, mem_limit="64m")
    ladder, journal = make_ladder(docker_host, make_config, tmp_path)
    ex = ladder.executors()
    out = ex["throttle"](Action("throttle", a.id, a.name, "t", "ladder",
                                {"breach": "pool:standard",
                                 "set": {"cpu": 0.5, "memory_reservation": 24 * MIB}}))
    assert out.ok, out.detail
    assert out.before == {"cpu": {"nano_cpus": 1_000_000_000, "cpu_quota_us": 0, "cpu_period_us": 0},
                          "memory_reservation": 48 * MIB}
    h = host_config(a)
    assert (h["NanoCpus"], h["MemoryReservation"]) == (500_000_000, 24 * MIB)
    assert cfs_quota_us(a) == 50_000
    assert journal.get_state(THROTTLE_PREFIX + a.id)["state"] == "applied"
    out = ex["throttle"](Action("throttle", b.id, b.name, "t", "ladder",
                                {"breach": "reserve", "set": {"cpu": 0.25, "memory_reservation": 8 * MIB}}))
    assert out.ok and cfs_quota_us(b) == 25_000
    for c, quota, nano, resv in ((a, 100_000, 1_000_000_000, 48 * MIB), (b, -1, 0, -1)):
        out = ex["unthrottle"](Action("unthrottle", c.id, c.name, "t", "ladder"))
        assert out.ok, out.detail
        h = host_config(c)
        assert cfs_quota_us(c) == quota and h["NanoCpus"] == nano
        assert h["MemoryReservation"] == resv  # -1: Docker's "none" after an update
        assert journal.get_state(THROTTLE_PREFIX + c.id) is None
    out = ex["unthrottle"](Action("unthrottle", a.id, a.name, "t", "ladder"))
    assert out.skipped  # nothing recorded any more


def test_the_executors_refuse_infrastructure(docker_host, make_config, containers, tmp_path):
    pg = containers.run(labels={"supervisor.class": "infrastructure"}, mem_limit="64m")
    ladder, journal = make_ladder(docker_host, make_config, tmp_path)
    before = host_config(pg)
    out = ladder.executors()["throttle"](Action("throttle", pg.id, pg.name, "t", "ladder",
                                                {"breach": "reserve", "set": {"cpu": 0.1}}))
    assert out.skipped and "refused: class 'infrastructure'" in out.detail
    assert host_config(pg) == before and journal.get_state(THROTTLE_PREFIX + pg.id) is None


def test_the_executors_refuse_an_unprotected_infrastructure_container(
        docker_host, make_config, containers, tmp_path):
    pg = containers.run(labels={"supervisor.class": "infrastructure"}, mem_limit="64m")
    ladder, journal = make_ladder(docker_host, make_config, tmp_path,
                                  classes={"infrastructure": {"protected": False}})
    before = host_config(pg)
    executors = {**ladder.executors(), **make_core(ladder.ctx).executors()}
    for kind, params in (("stop", {"timeout_s": 1}), ("reclaim", {"bytes": 8 * MIB}),
                         ("throttle", {"breach": "reserve", "set": {"cpu": 0.1}})):
        out = executors[kind](Action(kind, pg.id, pg.name, "t", "ladder", params,
                                     destructive=kind == "stop"))
        assert out.skipped and "'infrastructure' is infrastructure" in out.detail, out.detail
    pg.reload()
    assert pg.attrs["State"]["Status"] == "running"
    assert host_config(pg) == before and journal.states("ladder/") == {}
