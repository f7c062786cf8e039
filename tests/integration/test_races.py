"""Races on the real engine (issue 9): a container that vanishes between being listed and
being updated, a cgroup that disappears between being located and being read, a container
that somebody else restarts while it is hibernated, and Docker events that arrive out of
order. Each is provoked for real, survived, counted, and leaves no wrong action behind.

The daemon runs in this process with its inventory frozen after the first listing (the
event thread stopped, the engine still reported up): its view is then exactly "a moment
old", and the test decides what happens in that moment."""

import contextlib
import os
import time

import docker
from prometheus_client import generate_latest

from _testkit import class_table, metric_value, wait_for
from supervisor.adapters.cgroups import CgroupFS
from supervisor.adapters.engine import Engine
from supervisor.observe.inventory import Inventory

from ._procs import CONTAINER_KINDS, daemon_stepped, daemon_thread

MIB = 2**20
CLASSES = class_table("infrastructure", "standard",
                      standard={"cpuset": "1", "hibernate": False})


@contextlib.contextmanager
def frozen_view_daemon(cfg, path, **adapters):
    """A daemon whose inventory listed the engine once and then stopped following it."""
    with daemon_stepped(cfg, path, **adapters) as d:
        d.inventory.stop()  # no more events: the view is frozen, the engine still "up"
        assert d.inventory.engine_up
        yield d


def scrape(d) -> str:
    return generate_latest(d.registry).decode()


def results_for(results, c):
    return [r for r in results if r.action.target == c.id]


class VanishingEngine(Engine):
    """The real engine, where a container named in ``doomed`` is removed (for real) in
    the instant between the executor's re-check and its update call."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.doomed: set[str] = set()

    def update(self, ident, **kw):
        if ident in self.doomed:
            self.doomed.discard(ident)
            self.client.api.remove_container(ident, force=True)
        return super().update(ident, **kw)


class VanishingCgroups(CgroupFS):
    """The real cgroupfs, where a container named in ``doomed`` is killed (for real) in
    the instant between locating its cgroup and reading it; the read then meets a
    directory that is gone."""

    def __init__(self, client, *a, **kw):
        super().__init__(*a, **kw)
        self.client = client
        self.doomed: set[str] = set()
        self.killed: list[str] = []

    def locate(self, container_id, pid=0, cgroup_parent=""):
        loc = super().locate(container_id, pid, cgroup_parent)
        if container_id in self.doomed:
            self.doomed.discard(container_id)
            self.client.api.kill(container_id)
            wait_for(lambda: not os.path.isdir(loc.dir("memory")), 15, 0.02,
                     "the killed container's cgroup to go")
            self.killed.append(container_id)
        return loc


def test_a_container_removed_between_listing_and_update(make_config, containers, docker_host,
                                                        docker_client, record_property):
    cfg, path = make_config({"classes": CLASSES})
    early = containers.run()  # gone before the pass: its re-check finds nothing
    late = containers.run()  # gone after its re-check, just before the update call
    keep = containers.run()  # the pass goes on for the others
    engine = VanishingEngine(docker_host)
    with frozen_view_daemon(cfg, path, engine=engine) as d:
        early.remove(force=True)
        engine.doomed.add(late.id)
        _, results = d.run_once(reconcile=True)

        (r_early,) = results_for(results, early)
        assert r_early.action.kind == "place" and r_early.outcome == "skipped"
        assert "no longer exists" in r_early.detail
        (r_late,) = results_for(results, late)
        assert r_late.action.kind == "place" and r_late.outcome == "skipped"
        assert r_late.detail.startswith("container gone:")
        (r_keep,) = results_for(results, keep)
        assert r_keep.outcome == "ok"
        assert docker_client.api.inspect_container(keep.id)["HostConfig"]["Memory"] == 64 * MIB

        body = scrape(d)
        assert metric_value(body, "resource_supervisor_actions_total",
                            'kind="place",outcome="skipped"') == 2.0
        sampler_misses = sum(metric_value(body, "resource_supervisor_sampler_events_total",
                                          f'event="{e}"') or 0
                             for e in ("cgroup_not_found", "cgroup_vanished"))
        assert sampler_misses >= 1  # the earlier one's cgroup was gone at sampling time
        rows = {r["target"]: r for r in d.journal.recent(100, kinds=["place"])}
        assert rows[early.id]["outcome"] == rows[late.id]["outcome"] == "skipped"

        # Nothing is retried on them: at most one more re-check finds them gone (the
        # frozen view never sees their "destroy"), and then they are forgotten.
        assert d.inventory.get(early.id) is None
        for _ in range(2):
            _, again = d.run_once(reconcile=True)
            assert all(r.outcome == "skipped" for r in results_for(again, late))
            assert results_for(again, early) == []
        assert results_for(again, late) == [] and d.inventory.get(late.id) is None
    record_property("faults_survived", 2)


def test_a_cgroup_that_disappears_between_locate_and_read(make_config, containers,
                                                          docker_client, record_property):
    cfg, path = make_config({"classes": CLASSES})
    victim = containers.run()
    other = containers.run()
    cgroups = VanishingCgroups(docker_client)
    with frozen_view_daemon(cfg, path, cgroups=cgroups) as d:
        cgroups.doomed.add(victim.id)
        d.sampler.invalidate()  # a full read: locate, then read
        tick, results = d.run_once(reconcile=True)
        assert cgroups.killed == [victim.id]

        (row,) = [c for c in tick.snapshot.containers if c.info.id == victim.id]
        assert row.stats is None and row.error.startswith("cgroup vanished:")
        (good,) = [c for c in tick.snapshot.containers if c.info.id == other.id]
        assert good.stats is not None and good.stats.memory_usage_bytes > 0
        assert d.sampler.counts["cgroup_vanished"] == 1
        body = scrape(d)
        assert metric_value(body, "resource_supervisor_sampler_events_total",
                            'event="cgroup_vanished"') == 1.0

        # The stale view still says "running": placement planned for it, and the
        # executor's re-check saw the truth and left it alone.
        (r,) = results_for(results, victim)
        assert r.outcome == "skipped" and "exited" in r.detail
        victim.reload()
        assert victim.status == "exited"  # not started again, not updated
        assert victim.attrs["HostConfig"]["Memory"] == 0
        assert results_for(results, other)[0].outcome == "ok"
    record_property("faults_survived", 1)


def open_files_under(directory: str) -> list[str]:
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(directory):
            out.append(target)
    return out


def test_a_cgroup_removed_under_the_files_the_sampler_holds_open(make_config, containers,
                                                                 docker_client, record_property):
    """The tick's usage files stay open between passes (read again from offset 0): when
    the container dies, they answer ENODEV, the sampler says so, counts it and lets go
    of them (an open file would keep the removed cgroup alive in the kernel)."""
    cfg, path = make_config({"classes": CLASSES})
    victim = containers.run(mem_limit="64m")
    with frozen_view_daemon(cfg, path) as d:
        for _ in range(3):  # full reads (new, then placed), then the tick's read: it opens
            d.run_once()    # the usage files and keeps them
        victim.reload()
        memory_dir = CgroupFS().locate(victim.id, victim.attrs["State"]["Pid"]).dir("memory")
        assert open_files_under(memory_dir), "usage files not held open"
        docker_client.api.kill(victim.id)
        wait_for(lambda: not os.path.isdir(memory_dir), 15, 0.02, "the cgroup to go")

        tick, _ = d.run_once()  # the frozen view still says "running"
        (row,) = [c for c in tick.snapshot.containers if c.info.id == victim.id]
        assert row.stats is None and row.error.startswith("cgroup vanished:")
        assert d.sampler.counts["cgroup_vanished"] == 1
        assert open_files_under(memory_dir) == []
    record_property("faults_survived", 1)


def test_a_container_restarted_by_somebody_else_while_hibernated(make_config, containers,
                                                                  docker_client, record_property):
    idle_after_s = 1.5
    classes = {
        **CLASSES,
        "standard": {**CLASSES["standard"], "hibernate": True, "idle_after": f"{idle_after_s}s"},
        "batch": {"pool": "standard", "cpuset": "1", "memory_limit": "32MiB",
                  "memory_min": "8MiB", "idle_after": f"{idle_after_s}s",
                  "hibernate_mode": "stop"},
    }
    cfg, path = make_config({"classes": classes, "ladder": {"max_actions_per_minute": 60}})
    paused = containers.run(mem_limit="64m")
    stopped = containers.run(labels={"supervisor.class": "batch"}, mem_limit="32m")
    with daemon_thread(cfg, path, serve=False) as d:
        hib = next(c for c in d.components if c.name == "hibernation")

        def state(c):
            c.reload()
            return c.status
        wait_for(lambda: state(paused) == "paused" and state(stopped) == "exited", 30, 0.1,
                 "both hibernated")
        wait_for(lambda: {paused.id, stopped.id} <= hib.hibernated_ids(), 10, 0.05,
                 "both recorded as hibernated")

        t_restart = time.time()
        docker_client.api.restart(paused.id, timeout=1)  # somebody else, on a paused one
        docker_client.api.start(stopped.id)  # and on one hibernated by stopping it
        wait_for(lambda: not ({paused.id, stopped.id} & hib.hibernated_ids()), 15, 0.05,
                 "both forgotten")
        assert hib.counts["forgotten"] == 2
        assert d.journal.states("hibernation/") == {}
        assert state(paused) == "running" and state(stopped) == "running"
        # They were never woken by the daemon: somebody else did it.
        assert [r for r in d.journal.recent(200, kinds=["wake"])
                if r["target"] in (paused.id, stopped.id)] == []

        # Idle again, they may hibernate again: but only after a full idle_after counted
        # from the restart, never at once from the old record or the old idle clock.
        wait_for(lambda: len([r for r in d.journal.recent(200, kinds=["hibernate"])
                              if r["target"] == paused.id and r["outcome"] == "ok"]) == 2,
                 30, 0.1, "the second hibernation")
        second = [r for r in d.journal.recent(200, kinds=["hibernate"])
                  if r["target"] == paused.id and r["outcome"] == "ok"][-1]
        assert second["time_s"] - t_restart >= idle_after_s
        assert second["params"]["idle_s"] >= idle_after_s
        assert state(paused) == "paused"
    record_property("faults_survived", 2)


def event(action, c):
    return {"Type": "container", "Action": action, "status": action, "id": c.id,
            "Actor": {"ID": c.id, "Attributes": {"name": c.name}},
            "time": int(time.time()), "timeNano": time.time_ns()}


def as_engine_sees(client, cid):
    try:
        a = client.api.inspect_container(cid)
    except docker.errors.NotFound:
        return None
    return (a["State"]["Status"], a["State"]["Pid"], a["HostConfig"]["CpusetCpus"],
            a["HostConfig"]["Memory"])


def as_inventory_sees(inv, cid):
    i = inv.get(cid)
    return None if i is None else (i.state, i.pid, i.cpuset_cpus, i.memory_limit_bytes)


def test_docker_events_out_of_order_end_where_the_engine_is(make_config, containers, docker_host,
                                                            docker_client, record_property):
    removed = containers.run()
    paused, unpaused, restarted = (containers.run() for _ in range(3))
    inv = Inventory(Engine(docker_host))
    inv.refresh()
    ours = (removed, paused, unpaused, restarted)

    # What happened, in order.
    removed.remove(force=True)
    paused.pause()
    unpaused.pause()
    unpaused.unpause()
    restarted.restart(timeout=1)
    # What arrives: late, replayed and swapped.
    for ev in (event("destroy", removed), event("start", removed),  # a start replayed late
               event("unpause", paused), event("pause", paused),    # swapped
               event("unpause", unpaused), event("pause", unpaused),  # the older one last
               event("start", restarted), event("die", restarted),  # the die of the restart
               event("kill", restarted), {"Action": "start"},  # no id: ignored
               event("exec_create: sh", paused)):  # not about state: ignored
        inv.handle_event(ev)
    for c in ours:
        assert as_inventory_sees(inv, c.id) == as_engine_sees(docker_client, c.id), c.name
    assert inv.get(removed.id) is None
    assert inv.counts["events"] == 10

    # Fed to a daemon, the same stream leaves no wrong action behind: nothing for the
    # removed container, nothing for the paused one, nothing for the ones in place.
    cfg, path = make_config({"classes": CLASSES})
    with frozen_view_daemon(cfg, path) as d:
        d.run_once()  # places the running ones first
        seq0 = max((r["seq"] for r in d.journal.recent(10)), default=0)
        for ev in (event("start", removed), event("unpause", paused), event("pause", paused),
                   event("die", restarted), event("start", restarted)):
            d.inventory.handle_event(ev)
        _, results = d.run_once()
        assert [r for r in results if r.action.kind in CONTAINER_KINDS] == []
        assert [r for r in d.journal.recent(100, after_seq=seq0)
                if r["kind"] in CONTAINER_KINDS] == []
        for c in ours:
            assert as_inventory_sees(d.inventory, c.id) == as_engine_sees(docker_client, c.id)
    record_property("faults_survived", 4)
