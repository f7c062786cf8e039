"""Placement and hibernation, the project's own components driven by a real Daemon inside
the v2 lane's guest: placement's limits land in cgroup v2's files, and hibernation
freezes a container (cgroup.events "frozen 1") and thaws it when a client connects."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from _v2lib import daemon_stepped, daemon_thread, kv, read, wait_for

MiB = 1024 * 1024
pytestmark = pytest.mark.cgroup_v2
# The lane's image has no web root of its own: make one, then serve it.
HTTPD = ("/bin/busybox mkdir -p /tmp/www && echo 'resource-supervisor test page' > "
         "/tmp/www/index.html && exec httpd -f -p 127.0.0.1:8080 -h /tmp/www")


def config(tmp_path, **standard):
    from supervisor.model.config import load_config

    return load_config(data={
        "state_dir": str(tmp_path), "host": {"layout": "exact"},
        "reserve": {"emergency": "64MiB"},
        "pools": {"standard": {"budget": "1GiB"}},
        "classes": {"standard": {"pool": "standard", "cpuset": "0", "cpu_quota": 0.5,
                                 "memory_limit": "64MiB", "memory_min": "8MiB",
                                 "reservation_ratio": 0.5, **standard}},
        "manage": {"require_labels": {"rs-test": "1"}, "default_class": "standard"},
        "pool_cgroups": {"enabled": False},
        "docker": {"host": os.environ.get("DOCKER_HOST", "")},
        "intervals": {"tick": "0.2s", "reconcile": "1s"},
        # limits at once: busybox has no warm-up to wait out (history.settle)
        "history": {"settle": "0s"},
        "metrics": {"listen": "127.0.0.1:10499"},
        "control": {"socket": str(tmp_path / "control.sock")},
    })


def test_placement_writes_class_limits_into_the_v2_files(tmp_path, containers):
    c = containers.run("sleep 3600")  # no limits at all
    cg = containers.cgroup(c)
    assert read(cg / "memory.max") == "max" and read(cg / "cpu.max").startswith("max")
    # The inventory's own thread lists, follows events and says the engine is up; the
    # daemon takes no container action while it does not.
    with daemon_stepped(config(tmp_path), connect_timeout_s=60) as d:
        def placed():
            d.run_once(reconcile=True)
            return read(cg / "memory.max") == str(64 * MiB)
        wait_for(placed, 60, 0.5, "placement's memory limit in memory.max")
        assert read(cg / "memory.low") == str(32 * MiB)  # the reservation, as memory.low
        assert read(cg / "cpu.max") == "50000 100000"
        assert read(cg / "cpuset.cpus") == "0"
        c.reload()
        assert c.attrs["HostConfig"]["Memory"] == 64 * MiB  # docker inspect agrees
        rows = [r for r in d.journal.recent(50) if r["kind"] == "place" and r["outcome"] == "ok"]
        assert rows, "the placement is journaled"


def test_hibernation_freezes_and_a_connection_thaws(tmp_path, containers):
    web = containers.run(HTTPD)
    cg = containers.cgroup(web)
    with daemon_thread(config(tmp_path, idle_after="2s"), serve=False, ready_timeout_s=120,
                       join_timeout_s=60):
        wait_for(lambda: kv(cg / "cgroup.events").get("frozen") == 1, 120, 0.2,
                 "the idle httpd frozen (cgroup.events)")
        web.reload()
        assert web.attrs["State"]["Status"] == "paused"
        t0 = time.monotonic()
        got = subprocess.run(["nsenter", "-t", str(web.attrs["State"]["Pid"]), "-n",
                              "/bin/busybox", "wget", "-q", "-O", "-", "http://127.0.0.1:8080/"],
                             capture_output=True, text=True, timeout=60)
        print(f"wake through a connection on v2: {time.monotonic() - t0:.2f} s (emulated)")
        assert got.returncode == 0 and "resource-supervisor test page" in got.stdout, got.stderr
        assert kv(cg / "cgroup.events").get("frozen") == 0
        web.reload()
        assert web.attrs["State"]["Status"] == "running"
