"""The project's cgroup reader (supervisor/cgroups.py) against a real cgroup v2 kernel and
a real Docker engine (cgroupfs driver), inside the v2 lane's guest."""

from __future__ import annotations

import time

import pytest

from _v2lib import CGROUP_ROOT, kv, read, wait_for

MiB = 1024 * 1024
pytestmark = pytest.mark.cgroup_v2


@pytest.fixture
def fs():
    from supervisor.adapters.cgroups import CgroupFS

    cgfs = CgroupFS()
    assert cgfs.version == 2
    return cgfs


def test_host_controllers(fs):
    assert {"cpuset", "cpu", "io", "memory", "pids"} <= set(fs.host_controllers())
    assert fs.controller_roots() == {"unified": str(CGROUP_ROOT)}


def test_locate_cgroupfs_layout(fs, containers):
    """Found from the PID (/proc/PID/cgroup) and, without a PID, by Docker's known layouts."""
    c = containers.run()
    pid = c.attrs["State"]["Pid"]
    by_pid = fs.locate(c.id, pid=pid)
    by_layout = fs.locate(c.id)
    print(f"by pid: {by_pid.rel}; by layout: {by_layout.rel}")
    assert by_pid.version == 2
    assert by_pid.rel == by_layout.rel == f"/docker/{c.id}"
    assert by_pid.dir("memory") == by_pid.psi_dir == str(CGROUP_ROOT / "docker" / c.id)


def test_locate_under_cgroup_parent(fs, containers, scratch_cgroup):
    pool = scratch_cgroup("parent")
    c = containers.run(cgroup_parent="/" + pool.name)
    loc = fs.locate(c.id, cgroup_parent="/" + pool.name)
    assert loc.rel == f"/{pool.name}/{c.id}"
    assert fs.locate(c.id, pid=c.attrs["State"]["Pid"]).rel == loc.rel


def test_locate_unknown_container_raises(fs):
    from supervisor.model.errors import CgroupNotFound

    with pytest.raises(CgroupNotFound):
        fs.locate("0" * 64)


def test_read_stats_matches_docker_limits(fs, containers):
    """Limits set through Docker read back through the reader: memory, reservation
    (memory.low), CPU quota, cpuset, pids; per-container PSI; frozen flag."""
    c = containers.run("dd if=/dev/zero of=/data/f bs=1M count=8 2>/dev/null; sleep 3600",
                       mem_limit="64m", mem_reservation="32m", nano_cpus=500_000_000, cpuset_cpus="0")
    loc = fs.locate(c.id, pid=c.attrs["State"]["Pid"])
    wait_for(lambda: kv(f"{loc.dir('memory')}/memory.stat")["file"] >= 7 * MiB, what="8 MiB written")
    t0 = time.perf_counter()
    st = fs.read_stats(loc)
    took = time.perf_counter() - t0
    print(f"read_stats {took * 1000:.2f} ms: {st}")
    assert st.version == 2
    assert st.memory_limit_bytes == 64 * MiB
    assert st.memory_low_bytes == 32 * MiB
    assert st.memory_high_bytes is None
    assert st.cpu_quota_cores == pytest.approx(0.5)
    assert st.cpuset_cpus == "0"
    assert st.pids >= 1
    assert st.memory_usage_bytes >= 8 * MiB
    assert 0 < st.memory_working_set_bytes <= st.memory_usage_bytes
    assert st.memory_usage_bytes == pytest.approx(int(read(f"{loc.dir('memory')}/memory.current")), abs=2 * MiB)
    assert st.frozen is False
    assert st.pressure is not None and set(st.pressure) == {"cpu", "memory", "io"}
    assert {"low", "high", "max", "oom", "oom_kill"} <= set(st.memory_events)

    u = fs.read_usage(loc)
    assert u.memory_usage_bytes > 0 and u.cpu_usage_s >= 0


def test_read_stats_sees_pause_as_frozen(fs, containers):
    c = containers.run()
    loc = fs.locate(c.id, pid=c.attrs["State"]["Pid"])
    c.pause()
    try:
        assert fs.read_stats(loc, with_pressure=False).frozen is True
    finally:
        c.unpause()
    assert fs.read_stats(loc, with_pressure=False).frozen is False


def test_read_stats_pressure_counts_memory_stall(fs, containers):
    """Per-container memory PSI read through the reader rises when the container stalls
    on reclaim (memory.high far below what it allocates)."""
    c = containers.run("while [ ! -e /tmp/go ]; do sleep 0.1; done; "
                       "dd if=/dev/zero bs=24M count=1 2>/dev/null | sleep 3600", mem_limit="128m")
    loc = fs.locate(c.id, pid=c.attrs["State"]["Pid"])
    fs.write_file(loc, "memory", "memory.high", 8 * MiB)
    p0 = fs.read_stats(loc).pressure["memory"]
    c.exec_run(["touch", "/tmp/go"])
    wait_for(lambda: kv(f"{loc.dir('memory')}/memory.stat")["anon"] >= 22 * MiB, timeout=120, what="anon growth")
    # The breach is counted (memory.events "high", the reclaim stall in PSI) when dd's one
    # 24 MiB read() returns to user mode (mm/memcontrol.c: try_charge only sets
    # notify-resume; mem_cgroup_handle_over_high -> reclaim_high counts and stalls), which
    # under an emulated CPU can come seconds after the pages were charged.
    st = wait_for(lambda: ((s := fs.read_stats(loc)).memory_events["high"] > 0
                           and s.pressure["memory"].some_total_us > p0.some_total_us and s),
                  timeout=60, interval=0.25, what="memory.events high and memory PSI to count the stall")
    p1 = st.pressure["memory"]
    print(f"memory.high {st.memory_high_bytes}, usage {st.memory_usage_bytes / MiB:.1f} MiB, "
          f"events {st.memory_events}, memory PSI some total {p0.some_total_us} -> {p1.some_total_us} us")
    assert st.memory_high_bytes == 8 * MiB
    assert st.memory_events["high"] > 0
    assert p1.some_total_us > p0.some_total_us


@pytest.mark.parametrize("nonblock", [False, True], ids=["blocking", "O_NONBLOCK"])
def test_write_memory_high_reclaim(fs, containers, nonblock):
    """CgroupFS.write_file(memory.high) below usage: report whether the write reclaimed.
    The blocking write must reclaim on any kernel; O_NONBLOCK skips the synchronous
    reclaim only on kernels with "memcg: don't reclaim on O_NONBLOCK write" (newer than
    6.1), so on 6.1 it is recorded, not asserted."""
    c = containers.run("dd if=/dev/zero of=/data/fill bs=1M count=40 2>/dev/null && sync && sleep 3600",
                       mem_limit="256m")
    loc = fs.locate(c.id, pid=c.attrs["State"]["Pid"])
    d = loc.dir("memory")
    wait_for(lambda: (s := kv(f"{d}/memory.stat"))["file"] >= 38 * MiB and s["file_dirty"] == 0
             and s["file_writeback"] == 0, timeout=120, interval=0.25, what="clean page cache")
    before = fs.read_usage(loc).memory_usage_bytes
    high = before - 24 * MiB
    t0 = time.monotonic()
    fs.write_file(loc, "memory", "memory.high", high, nonblock=nonblock)
    took = time.monotonic() - t0
    after_write = fs.read_usage(loc).memory_usage_bytes
    print(f"nonblock={nonblock}: usage {before / MiB:.1f} MiB, memory.high -> {high / MiB:.1f} MiB, "
          f"usage right after the write {after_write / MiB:.1f} MiB ({took * 1000:.0f} ms)")
    assert fs.read_stats(loc, with_pressure=False).memory_high_bytes == high
    if not nonblock:
        assert after_write <= high + MiB


def test_project_imports_without_systemd_python():
    """The guest has the project's deps except systemd-python: every module must import."""
    import importlib
    import importlib.util
    import pkgutil

    import supervisor

    # (a bare `import systemd` would find the repo's systemd/ folder as a namespace package)
    try:
        has_systemd_python = importlib.util.find_spec("systemd.daemon") is not None
    except ImportError:
        has_systemd_python = False
    if has_systemd_python:
        # Make it absent for this check: a None entry makes `import systemd...` fail.
        import sys
        for name in [m for m in sys.modules if m == "systemd" or m.startswith("systemd.")]:
            sys.modules.pop(name)
        sys.modules["systemd"] = None  # type: ignore[assignment]
    failed = {}
    for mod in pkgutil.walk_packages(supervisor.__path__, "supervisor."):
        if mod.name.endswith(".__main__"):  # runs the CLI on import
            continue
        try:
            importlib.import_module(mod.name)
        except Exception as e:  # noqa: BLE001
            failed[mod.name] = f"{type(e).__name__}: {e}"
    assert not failed, failed
