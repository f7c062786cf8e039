"""Placement on the real engine: a new container gets its class's limits and cores as
`docker inspect` shows them; drift is reverted; a correct container gets no update;
a small pool admits what fits and alerts (or stops) the overflow; dry run changes
nothing; recommendations come over the control API."""

import contextlib

from conftest import RUN_ID, wait_for

from ._procs import daemon_thread
from supervisor.adapters.cgroups import CgroupFS
from supervisor.publish.control import request
from supervisor.runtime.daemon import Daemon
from supervisor.publish.status import build_status

MIB = 2**20
CLASSES = {
    "infrastructure": {"pool": "infrastructure", "cpuset": "0", "priority": 100,
                       "memory_limit": "128MiB", "protected": True, "hibernate": False},
    "standard": {"pool": "standard", "cpuset": "1", "priority": 50, "memory_limit": "64MiB",
                 "memory_min": "8MiB", "reservation_ratio": 0.5},
}


@contextlib.contextmanager
def daemon_stepped(cfg, path):
    """The daemon with its event thread but passes driven by the test (run_once)."""
    d = Daemon(cfg, str(path), serve=False)
    d.inventory.start()
    try:
        assert d.inventory.connected.wait(15)
        yield d
    finally:
        d.inventory.stop()
        d.journal.close()


def host_config(client, c):
    return client.api.inspect_container(c.id)["HostConfig"]


def running(d, c):
    info = d.inventory.get(c.id)
    return info is not None and info.state == "running"


def rows(d, kind=None):
    return [r for r in d.journal.recent(1000) if kind is None or r["kind"] == kind]


def test_new_container_gets_class_limit_reservation_and_cores(make_config, containers, docker_client):
    cfg, path = make_config({"classes": CLASSES})
    with daemon_thread(cfg, path, serve=True) as d:
        c = containers.run(labels={"supervisor.class": "standard"})  # no limit of its own
        hc = wait_for(lambda: (h := host_config(docker_client, c))["Memory"] and h, 15,
                      what="memory limit set by placement")
        limit = hc["Memory"]
        assert limit == 64 * MIB  # the standard class default (Rule 1.1)
        assert 0.5 * limit <= hc["MemoryReservation"] <= 0.75 * limit
        assert hc["MemorySwap"] == limit  # no swap beyond the limit
        assert hc["CpusetCpus"] == "1"
        # The journal row is finished once the update call has returned (Docker saves its
        # HostConfig before the runtime has written the cgroup, so inspect alone is early).
        placed = wait_for(lambda: [r for r in rows(d, "place") if r["target"] == c.id
                                   and r["outcome"] != "pending"], 10, what="journal row")
        assert len(placed) == 1 and placed[0]["outcome"] == "ok"
        assert placed[0]["after"]["memory_limit_bytes"] == 64 * MIB
        # Docker's view and the kernel's agree.
        fs = CgroupFS()
        c.reload()
        s = fs.read_stats(fs.locate(c.id, c.attrs["State"]["Pid"]))
        assert (s.memory_limit_bytes, s.cpuset_cpus) == (64 * MIB, "1")
        updates = d.engine.calls["update"]
        passes = d.counts["passes"]
        wait_for(lambda: d.counts["passes"] >= passes + 8, 15, what="more passes")  # > 1 reconcile
        assert d.engine.calls["update"] == updates  # placed once, then left alone
        # The recommendation for it, over the control API.
        code, body = request(cfg.settings.control.socket, "GET", f"/recommend?container={c.name}")
        assert code == 200, body
        (rec,) = body["containers"]
        assert rec["name"] == c.name and rec["samples"] >= 1 and rec["percentile"] == 99.0
        assert rec["recommended_limit_bytes"] >= 8 * MIB  # never below the class minimum
        assert rec["current_limit_bytes"] == 64 * MIB
        code, _ = request(cfg.settings.control.socket, "GET", "/recommend?container=no-such")
        assert code == 404


def test_correct_container_untouched_and_drift_reverted(make_config, containers, docker_client):
    cfg, path = make_config({"classes": CLASSES})
    c = containers.run(labels={"supervisor.class": "standard"}, cpuset_cpus="1", mem_limit="64m",
                       mem_reservation="32m", memswap_limit="64m")
    with daemon_stepped(cfg, path) as d:
        for _ in range(3):
            d.run_once(reconcile=True)
        assert d.engine.calls["update"] == 0  # already right: no update call at all
        assert rows(d, "place") == []
        c.update(cpuset_cpus="0")  # someone runs `docker update --cpuset-cpus 0`
        wait_for(lambda: d.inventory.get(c.id).cpuset_cpus == "0", 10, what="update event")
        d.run_once(reconcile=True)
        assert host_config(docker_client, c)["CpusetCpus"] == "1"
        assert d.engine.calls["update"] == 1
        (row,) = rows(d, "place")
        assert row["outcome"] == "ok" and row["reason"].startswith("repair drift")
        assert (row["before"]["cpuset_cpus"], row["after"]["cpuset_cpus"]) == ("0", "1")
        d.run_once(reconcile=True)
        assert d.engine.calls["update"] == 1


def test_small_pool_admits_what_fits_and_alerts_the_overflow(make_config, containers, docker_client):
    classes = dict(CLASSES, standard={"pool": "standard", "cpuset": "1", "memory_limit": "40MiB",
                                      "memory_min": "16MiB"})
    cfg, path = make_config({"classes": classes,
                             "pools": {"infrastructure": {"budget": "1GiB"},
                                       "standard": {"budget": "100MiB"}}})
    budget = 100 * MIB
    made = []
    with daemon_stepped(cfg, path) as d:
        allocated = []
        for i in range(4):
            c = containers.run(name=f"rs-pool-{RUN_ID}-{i}")
            made.append(c)
            wait_for(lambda: running(d, c), 10, what="container running in the inventory")
            for _ in range(2):
                tick, _ = d.run_once()
                allocated.append(tick.pools["standard"].allocated_bytes)
        tick, _ = d.run_once(reconcile=True)
        allocated.append(tick.pools["standard"].allocated_bytes)
        limits = [host_config(docker_client, c)["Memory"] for c in made]
        assert limits == [40 * MIB, 40 * MIB, 20 * MIB, 0]  # the third gets the remainder
        assert max(allocated) <= budget and allocated[-1] == budget
        alerts = [r for r in rows(d, "alert") if r["source"] == "pools"]
        assert [r["target"] for r in alerts] == [made[3].id]  # alerted once, not every pass
        assert "over budget: pool standard" in alerts[0]["reason"]
        st = build_status(d)
        (over,) = st["placement"]["pools"]["standard"]["over_budget"]
        assert over["name"] == made[3].name and over["granted_bytes"] == 0
        assert st["pools"]["standard"]["allocated_bytes"] <= budget
        # Room frees up: the one left out is admitted on the next pass.
        made[0].remove(force=True)
        wait_for(lambda: d.inventory.get(made[0].id) is None, 10, what="removal seen")
        d.run_once(reconcile=True)
        assert host_config(docker_client, made[3])["Memory"] == 40 * MIB


def test_strict_admission_stops_the_container_that_does_not_fit(make_config, containers, docker_client):
    classes = dict(CLASSES, standard={"pool": "standard", "cpuset": "1", "memory_limit": "40MiB",
                                      "memory_min": "16MiB"})
    cfg, path = make_config({"classes": classes,
                             "pools": {"infrastructure": {"budget": "1GiB"},
                                       "standard": {"budget": "48MiB"}},
                             "manage": {"admission": "strict"}})
    # A shell that ends on SIGTERM, so the stop does not wait for Docker's kill timeout.
    cmd = "trap 'exit 0' TERM; while true; do sleep 1; done"
    with daemon_stepped(cfg, path) as d:
        first = containers.run(command=cmd)
        wait_for(lambda: running(d, first), 10, what="first running in the inventory")
        d.run_once(reconcile=True)
        second = containers.run(command=cmd)
        wait_for(lambda: running(d, second), 10, what="second running in the inventory")
        d.run_once(reconcile=True)
        second.reload()
        first.reload()
        assert second.status == "exited" and first.status == "running"
        assert first.attrs["HostConfig"]["Memory"] == 40 * MIB
        stop = [r for r in rows(d, "stop") if r["target"] == second.id]
        assert stop and stop[0]["outcome"] == "ok" and stop[0]["source"] == "pools"


def test_dry_run_changes_nothing(make_config, containers, docker_client):
    parent = f"rs-test-{RUN_ID}-dry"
    cfg, path = make_config({"classes": CLASSES,
                             "pool_cgroups": {"enabled": True, "parent": parent}}, dry_run=True)
    bare = containers.run(labels={"supervisor.class": "standard"})
    drifted = containers.run(labels={"supervisor.class": "standard"}, cpuset_cpus="0",
                             mem_limit="64m", mem_reservation="32m", memswap_limit="64m")
    before = {c.id: docker_client.api.inspect_container(c.id)["HostConfig"] for c in (bare, drifted)}
    with daemon_stepped(cfg, path) as d:
        for _ in range(3):
            d.run_once(reconcile=True)
        after = {c.id: docker_client.api.inspect_container(c.id)["HostConfig"] for c in (bare, drifted)}
        assert after == before
        assert d.engine.calls["update"] == 0
        assert not CgroupFS().group_exists(f"/{parent}/standard")
        would = {r["target"]: r for r in rows(d, "place")}
        assert set(would) == {bare.id, drifted.id}  # each said once, not every pass
        assert all(r["outcome"] == "dry_run" and r["dry_run"] for r in would.values())
        assert "memory limit none -> 64.0MiB" in would[bare.id]["reason"]
        assert "cpuset 0 -> 1" in would[drifted.id]["reason"]
        (pcg,) = rows(d, "pool_cgroups")
        assert pcg["outcome"] == "dry_run"
