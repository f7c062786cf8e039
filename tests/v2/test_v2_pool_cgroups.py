"""Pool cgroups and placement on cgroup v2, through the daemon itself: the first pass makes
<parent>/<pool> with memory.max = budget and memory/cpu/cpuset enabled down the tree;
placement gives the first container its class limit under the pool; the second gets no
limit from admission, and the pool's memory.max holds both to 48 MiB."""

from __future__ import annotations

import os
import time
import uuid

import pytest

from _v2lib import CGROUP_ROOT, daemon_stepped, kv, read, wait_for

MiB = 1024 * 1024
pytestmark = pytest.mark.cgroup_v2


@pytest.fixture
def daemon(docker_client, tmp_path):
    from supervisor.adapters.cgroups import CgroupFS
    from supervisor.model.config import load_config

    parent = f"rs-test-pools-{uuid.uuid4().hex[:6]}"
    cfg = load_config(data={
        "state_dir": str(tmp_path / "state"), "host": {"layout": "exact"},
        "reserve": {"emergency": "64MiB"},
        "pools": {"infrastructure": {"budget": "256MiB"}, "standard": {"budget": "48MiB"}},
        "classes": {
            "infrastructure": {"pool": "infrastructure", "cpuset": "0", "memory_limit": "64MiB",
                               "protected": True, "hibernate": False},
            # 40 MiB fits the first container; the second finds 8 MiB left, below its
            # 32 MiB minimum: admission grants it nothing, only the pool holds it.
            "standard": {"pool": "standard", "cpuset": "any", "memory_limit": "40MiB",
                         "memory_min": "32MiB", "hibernate": False},
        },
        "manage": {"require_labels": {"rs-test": "1"}, "default_class": "standard"},
        "docker": {"host": os.environ.get("DOCKER_HOST", "")},
        "pool_cgroups": {"enabled": True, "parent": parent},
        # limits at once: busybox has no warm-up to wait out (history.settle)
        "history": {"settle": "0s"},
        "control": {"socket": str(tmp_path / "control.sock")},
    })
    try:
        with daemon_stepped(cfg, connect_timeout_s=30) as d:
            d.pool_parent = parent
            yield d
    finally:
        for c in docker_client.containers.list(all=True, filters={"label": "rs-test=1"}):
            c.remove(force=True)
        for _ in range(100):
            try:
                CgroupFS().remove_group(f"/{parent}")
                break
            except Exception:  # noqa: BLE001 - the engine removes dead containers' cgroups late
                time.sleep(0.1)
        assert not (CGROUP_ROOT / parent).exists()


def test_pool_cgroup_has_the_budget_and_holds_two_containers_to_it(daemon, containers):
    d = daemon
    d.run_once()
    pool = CGROUP_ROOT / d.pool_parent / "standard"
    assert read(pool / "memory.max") == str(48 * MiB)
    for level in (pool.parent, pool):
        enabled = set(read(level / "cgroup.subtree_control").split())
        assert {"memory", "cpu", "cpuset"} <= enabled, (level, enabled)
    assert read(CGROUP_ROOT / d.pool_parent / "infrastructure" / "memory.max") == str(256 * MiB)

    cmd = "dd if=/dev/zero bs=30M count=1 2>/dev/null | sleep 3600"
    a = containers.run(cmd, cgroup_parent=f"/{d.pool_parent}/standard")
    cga = containers.cgroup(a)
    assert cga.parent == pool
    wait_for(lambda: kv(cga / "memory.stat")["anon"] >= 29 * MiB, 120, 0.25, "first 30 MiB")
    wait_for(lambda: d.inventory.get(a.id) and d.inventory.get(a.id).state == "running", 30)
    d.run_once(reconcile=True)
    assert read(cga / "memory.max") == str(40 * MiB)  # placement: the class default
    a.reload()
    assert a.attrs["HostConfig"]["Memory"] == 40 * MiB

    b = containers.run(cmd, cgroup_parent=f"/{d.pool_parent}/standard")
    cgb = containers.cgroup(b)
    wait_for(lambda: kv(pool / "memory.events")["oom_kill"] >= 1, 120, 0.25, "an OOM kill in the pool")
    wait_for(lambda: d.inventory.get(b.id) and d.inventory.get(b.id).state == "running", 30)
    d.run_once(reconcile=True)
    ev = kv(pool / "memory.events")
    peak = int(read(pool / "memory.peak"))
    print(f"pool 48 MiB: memory.current {int(read(pool / 'memory.current')) / MiB:.1f} MiB, "
          f"peak {peak / MiB:.1f} MiB, events {ev}")
    assert peak <= 48 * MiB and int(read(pool / "memory.current")) <= 48 * MiB
    assert ev["max"] >= 1 and ev["oom_kill"] >= 1
    assert read(cgb / "memory.max") == "max"  # over budget: no limit of its own
    from supervisor.publish.status import build_status
    st = build_status(d)
    assert [o["name"] for o in st["placement"]["pools"]["standard"]["over_budget"]] == [b.name]
    assert st["pool_cgroups"]["pools"]["standard"]["oom_kills"] >= 1
    assert not [o for o in st["pool_cgroups"]["outside"] if o["name"] in (a.name, b.name)]
