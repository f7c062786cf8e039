"""Pools the kernel enforces, on the real engine and real cgroups: the daemon makes one
parent cgroup per pool with the budget as its memory limit, follows a reload, and two
containers started under a 48 MiB pool cannot together take more than 48 MiB."""

import uuid

import pytest

from _testkit import RUN_ID, class_table, remove_test_cgroup, wait_for
from supervisor.adapters.cgroups import CgroupFS
from supervisor.publish.status import build_status

from ._procs import daemon_stepped

MIB = 2**20


@pytest.fixture
def pool_parent(containers):
    """A parent cgroup name of this test's own; removed (in every hierarchy) afterwards."""
    parent = f"rs-test-{RUN_ID}-{uuid.uuid4().hex[:6]}"
    yield parent
    containers.cleanup()  # their cgroups must be gone before the pools' can be removed
    remove_test_cgroup(parent)


def config_data(parent, budget):
    return {"pool_cgroups": {"enabled": True, "parent": parent},
            "pools": {"infrastructure": {"budget": "256MiB"}, "standard": {"budget": budget}}}


def test_pool_cgroups_hold_the_budgets_and_follow_a_reload(make_config, pool_parent):
    cfg, path = make_config(config_data(pool_parent, "48MiB"))
    with daemon_stepped(cfg, path, follow=False) as d:
        d.run_once()  # made on the first pass, engine or not
        fs = CgroupFS()
        loc = fs.location(f"/{pool_parent}/standard")
        assert fs.read_group(loc)["limit_bytes"] == 48 * MIB
        assert fs.read_group(fs.location(f"/{pool_parent}/infrastructure"))["limit_bytes"] == 256 * MIB
        if fs.version == 1:
            # A new cpuset group starts empty and would refuse tasks: filled from the parent.
            root = fs.controller_roots()["cpuset"]
            for name in ("cpuset.cpus", "cpuset.mems"):
                assert fs.read_file(loc, "cpuset", name).strip() == \
                    open(f"{root}/{name}").read().strip()
        else:
            enabled = fs.read_file(loc, "memory", "cgroup.subtree_control").split()
            assert {"memory", "cpu", "cpuset"} <= set(enabled)
        (row,) = [r for r in d.journal.recent(100) if r["kind"] == "pool_cgroups"]
        assert row["outcome"] == "ok"
        assert row["after"]["standard"]["limit_bytes"] == 48 * MIB
        d.run_once()
        assert len([r for r in d.journal.recent(100) if r["kind"] == "pool_cgroups"]) == 1

        # Reload with a larger budget: the cgroup follows.
        new_cfg, new_path = make_config(config_data(pool_parent, "64MiB"))
        path.write_text(new_path.read_text())
        ok, msg = d.reload()
        assert ok, msg
        d.run_once()
        assert fs.read_group(loc)["limit_bytes"] == 64 * MIB

        # Someone changes it by hand: the next reconcile pass puts it back.
        fs.write_file(loc, "memory", "memory.max" if fs.version == 2 else "memory.limit_in_bytes",
                      80 * MIB)
        d.run_once(reconcile=True)  # sees the drift
        d.run_once()  # sets it again
        assert fs.read_group(loc)["limit_bytes"] == 64 * MIB
        st = build_status(d)["pool_cgroups"]
        assert st["pools"]["standard"]["limit_bytes"] == 64 * MIB
        assert st["pools"]["standard"]["cgroup_parent"] == f"/{pool_parent}/standard"


def test_two_containers_under_a_small_pool_cannot_exceed_it(make_config, containers, pool_parent):
    budget = 48 * MIB
    classes = class_table(
        "infrastructure", "standard",
        infrastructure={"priority": 50, "memory_limit": "64MiB", "hibernate": True},
        # 40 MiB fits the first; the second finds 8 MiB left, below its 32 MiB minimum,
        # so admission grants it no limit at all: only the pool's cgroup holds it.
        standard={"memory_limit": "40MiB", "memory_min": "32MiB"})
    cfg, path = make_config({**config_data(pool_parent, "48MiB"), "classes": classes})
    with daemon_stepped(cfg, path) as d:
        d.run_once()
        fs = CgroupFS()
        pool = fs.location(f"/{pool_parent}/standard")
        # 30 MiB of anonymous memory each: dd's buffer, held while the pipe is full.
        cmd = "dd if=/dev/zero bs=30M count=1 2>/dev/null | sleep 3600"
        a = containers.run(command=cmd, cgroup_parent=f"/{pool_parent}/standard")
        wait_for(lambda: fs.read_group(pool)["usage_bytes"] >= 29 * MIB, 60, 0.1,
                 what="the first 30 MiB in the pool")
        b = containers.run(command=cmd, cgroup_parent=f"/{pool_parent}/standard")
        # Managed, but not under its pool's cgroup.
        outside = containers.run(labels={"supervisor.class": "infrastructure"})
        wait_for(lambda: fs.read_group(pool)["limit_hits"] >= 1, 60, 0.1, what="the pool's limit hit")
        for _ in range(5):
            d.run_once(reconcile=True)
            g = fs.read_group(pool)
            assert g["usage_bytes"] <= budget
        g = fs.read_group(pool)
        assert g["peak_bytes"] is not None and g["peak_bytes"] <= budget
        used = {}
        for c in (a, b):
            c.reload()
            used[c.name] = fs.read_stats(fs.locate(c.id, c.attrs["State"]["Pid"])).memory_usage_bytes
        assert sum(used.values()) <= budget, used  # one of the two dd's was OOM-killed
        assert a.attrs["HostConfig"]["Memory"] == 40 * MIB and b.attrs["HostConfig"]["Memory"] == 0
        st = build_status(d)
        assert [o["name"] for o in st["pool_cgroups"]["outside"]] == [outside.name]
        assert st["pool_cgroups"]["pools"]["standard"]["limit_hits"] >= 1
        over = st["placement"]["pools"]["standard"]["over_budget"]
        assert [o["name"] for o in over] == [b.name]
        print(f"pool {budget // MIB} MiB: usage {g['usage_bytes'] / MIB:.1f} MiB, peak "
              f"{g['peak_bytes'] / MIB:.1f} MiB, limit hits {g['limit_hits']}, oom kills "
              f"{g['oom_kills']}; containers {({k: round(v / MIB, 1) for k, v in used.items()})}")
