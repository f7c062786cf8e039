"""The foundation on the real engine: the cgroup reader sees what Docker set, working sets
move with real memory, and the inventory follows the event stream."""


from _testkit import RUN_ID, TEST_LABEL, wait_for
from supervisor.adapters.cgroups import CgroupFS
from supervisor.adapters.engine import Engine
from supervisor.adapters.host import HostSampler
from supervisor.observe.inventory import Inventory
from supervisor.observe.sampler import Sampler

MIB = 2**20


def test_limits_set_by_docker_read_back_through_the_cgroup_reader(containers):
    c = containers.run(mem_limit="96m", mem_reservation="48m", nano_cpus=500_000_000,
                       cpuset_cpus="0")
    c.reload()
    fs = CgroupFS()
    s = fs.read_stats(fs.locate(c.id, c.attrs["State"]["Pid"]))
    assert s.memory_limit_bytes == 96 * MIB
    assert s.memory_low_bytes == 48 * MIB
    assert s.cpu_quota_cores == 0.5
    assert s.cpuset_cpus == "0"
    assert s.pids >= 1


def test_working_set_grows_with_40_mib_of_tmpfs(containers):
    c = containers.run(command="sleep 3600", tmpfs={"/data": "size=64m"}, mem_limit="128m")
    c.reload()
    fs = CgroupFS()
    loc = fs.locate(c.id, c.attrs["State"]["Pid"])
    before = fs.read_stats(loc).memory_working_set_bytes
    rc, _ = c.exec_run(["dd", "if=/dev/zero", "of=/data/fill", "bs=1M", "count=40"])
    assert rc == 0
    after = fs.read_stats(loc).memory_working_set_bytes
    grown = after - before
    # 40 MiB of shmem, give or take what the container's other pages did meanwhile: the
    # exec's own short-lived memory and page cache come and go in the same window (a run
    # on a busy machine saw 36.7 MiB)
    assert 34 * MIB <= grown <= 46 * MIB, f"working set grew by {grown / MIB:.1f} MiB"
    # The sampler's light read gives the same working set as the full read: the same
    # counters, read a moment later (the exec's last pages may still be leaving: 8 KiB seen)
    assert abs(fs.read_usage(loc).memory_working_set_bytes - after) <= 256 * 1024


def test_inventory_follows_events_without_a_relist(docker_host, containers):
    engine = Engine(docker_host)
    inv = Inventory(engine)
    inv.start()
    try:
        assert inv.connected.wait(10)
        relists = inv.counts["relists"]
        c = containers.run(name=f"rs-late-{RUN_ID}")
        # "create" arrives before "start": wait for the state the events lead to.
        info = wait_for(lambda: (i := inv.get(c.id)) and i.state == "running" and i, 10,
                        what="running container in inventory")
        assert info.labels[TEST_LABEL] == RUN_ID and info.pid > 0
        c.pause()
        wait_for(lambda: inv.get(c.id).state == "paused", 10, what="paused state")
        c.unpause()
        c.remove(force=True)
        wait_for(lambda: inv.get(c.id) is None, 10, what="container gone from inventory")
        assert inv.counts["relists"] == relists  # all of it came from events
        assert inv.counts["events"] >= 3
    finally:
        inv.stop()


def test_snapshot_has_every_container_with_its_class(docker_host, containers, make_config):
    cfg, _ = make_config({"classes": {
        "infrastructure": {"pool": "infrastructure", "cpuset": "0", "match": {"names": ["rs-pg-*"]}},
        "standard": {"pool": "standard"}}})
    a = containers.run(name=f"rs-pg-{RUN_ID}")
    b = containers.run(labels={"supervisor.class": "infrastructure"})
    u = containers.run(labels={"supervisor.class": "no-such-class"})
    inv = Inventory(Engine(docker_host))
    inv.refresh()
    snap = Sampler(CgroupFS(), HostSampler()).sample(inv.view(), cfg, True)
    by_id = {c.info.id: c for c in snap.containers}
    assert (by_id[a.id].class_name, by_id[a.id].class_reason) == ("infrastructure", "name")
    assert (by_id[b.id].class_name, by_id[b.id].class_reason) == ("infrastructure", "label")
    assert (by_id[u.id].class_name, by_id[u.id].class_reason) == ("standard", "unknown-label")
    assert all(by_id[x.id].stats is not None and by_id[x.id].managed for x in (a, b, u))
    assert snap.host.memory_total_bytes > 0 and snap.engine_up


def test_vanished_container_is_reported_not_raised(docker_host, containers, make_config):
    cfg, _ = make_config()
    c = containers.run()
    inv = Inventory(Engine(docker_host))
    inv.refresh()
    view = inv.view()
    c.remove(force=True)  # gone between listing and sampling
    sampler = Sampler(CgroupFS(), HostSampler())
    snap = sampler.sample(view, cfg, True)
    mine = [x for x in snap.containers if x.info.id == c.id][0]
    assert mine.stats is None and mine.error
    assert sampler.counts["cgroup_not_found"] + sampler.counts["cgroup_vanished"] >= 1
