"""The breach ladder's cgroup v2 rungs through the project's own executors, inside the v2
lane's guest: throttle = memory.high (Docker's reservation is memory.low, so memory.high
is the ladder's alone), written with O_NONBLOCK and put back on unthrottle; reclaim =
memory.reclaim."""

from __future__ import annotations

import os
import time

import pytest

from _v2lib import kv, page_cache_container, read

MiB = 1024 * 1024
pytestmark = pytest.mark.cgroup_v2


@pytest.fixture
def ladder(docker_client, tmp_path):
    from supervisor.adapters.cgroups import CgroupFS
    from supervisor.act.component import Context
    from supervisor.model.config import load_config
    from supervisor.adapters.engine import Engine
    from supervisor.observe.inventory import Inventory
    from supervisor.adapters.journal import Journal
    from supervisor.runtime.ladder import Ladder

    cfg = load_config(data={
        "state_dir": str(tmp_path), "host": {"layout": "exact"},
        "reserve": {"emergency": "64MiB"},
        "pools": {"standard": {"budget": "512MiB"}},
        "classes": {"batch": {"pool": "standard", "priority": 10, "memory_limit": "128MiB",
                              "memory_min": "8MiB"}},
        "manage": {"require_labels": {"rs-test": "1"}, "default_class": "batch"},
    })
    engine = Engine(os.environ.get("DOCKER_HOST", ""))
    inv = Inventory(engine)
    inv.refresh()
    # No History (numpy): the lane's TCG guest CPU lacks instructions numpy's wheel uses,
    # and the executors under test never read it.
    ctx = Context(engine=engine, inventory=inv, cgroups=CgroupFS(), journal=Journal(
        str(tmp_path / "journal.sqlite3")), history=None, clock=time.time,
        get_config=lambda: cfg)
    return Ladder(ctx)


def test_throttle_sets_memory_high_nonblocking_and_unthrottle_puts_max_back(ladder, containers):
    from supervisor.model.actions import Action

    c = containers.run("dd if=/dev/zero of=/data/f bs=1M count=40 2>/dev/null; sleep 3600",
                       mem_limit="128m", mem_reservation="16m", tmpfs={"/data": "size=100m"})
    cg = containers.cgroup(c)
    time.sleep(0.5)
    assert read(cg / "memory.high") == "max" and read(cg / "memory.low") == str(16 * MiB)
    ladder.ctx.inventory.refresh()
    t0 = time.monotonic()
    out = ladder.executors()["throttle"](Action(
        "throttle", c.id, c.name, "test", "ladder",
        {"breach": "pool:standard", "set": {"memory_high": 32 * MiB}}))
    took = time.monotonic() - t0
    print(f"throttle (memory.high 32 MiB below 40 MiB of tmpfs, O_NONBLOCK) took {took * 1000:.1f} ms")
    assert out.ok, out.detail
    assert out.before == {"memory_high": "max"} and out.after == {"memory_high": 32 * MiB}
    assert read(cg / "memory.high") == str(32 * MiB)
    assert read(cg / "memory.low") == str(16 * MiB)  # Docker's reservation untouched
    high_before = kv(cg / "memory.events")["high"]
    rc, _ = c.exec_run(["dd", "if=/dev/zero", "of=/data/g", "bs=1M", "count=4"])
    assert rc == 0
    assert kv(cg / "memory.events")["high"] > high_before  # allocations over high are throttled
    rec = ladder.ctx.journal.get_state("ladder/throttle/" + c.id)
    assert rec["before"] == {"memory_high": "max"} and rec["state"] == "applied"

    out = ladder.executors()["unthrottle"](Action("unthrottle", c.id, c.name, "test", "ladder"))
    assert out.ok, out.detail
    assert read(cg / "memory.high") == "max"
    assert ladder.ctx.journal.get_state("ladder/throttle/" + c.id) is None


def test_reclaim_writes_memory_reclaim(ladder, containers):
    from supervisor.model.actions import Action

    # wait for the clean page cache (a fixed sleep raced the guest's slow dd + sync)
    c, cg, _ = page_cache_container(containers, mem_limit="128m")
    before = int(read(cg / "memory.current"))
    assert before >= 38 * MiB
    ladder.ctx.inventory.refresh()
    out = ladder.executors()["reclaim"](Action("reclaim", c.id, c.name, "test", "ladder",
                                               {"bytes": 30 * MiB}))
    after = int(read(cg / "memory.current"))
    print(f"memory.reclaim 30 MiB: {before / MiB:.1f} -> {after / MiB:.1f} MiB ({out.detail})")
    assert out.ok and "memory.reclaim" in out.detail
    assert before - after >= 20 * MiB
    assert read(cg / "memory.max") == str(128 * MiB)  # no limit was touched on v2
