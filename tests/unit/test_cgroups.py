"""cgroup parsing on captured (v1) and documented-format (v2) trees."""

from pathlib import Path

import pytest

from supervisor.adapters.cgroups import CgroupFS, parse_pressure, parse_proc_cgroup
from supervisor.model.errors import CgroupGone, CgroupNotFound

FIX = Path(__file__).parent.parent / "fixtures"
V1_ID, V1_PID = (FIX / "cgroup_v1" / "CAPTURED").read_text().split()


def test_v1_locate_from_pid_and_read():
    fs = CgroupFS(str(FIX / "cgroup_v1"), proc=str(FIX / "proc"))
    assert fs.version == 1
    loc = fs.locate(V1_ID, int(V1_PID))
    assert loc.rel == f"/docker/{V1_ID}"
    s = fs.read_stats(loc)
    assert s.memory_limit_bytes == 64 * 2**20
    assert s.memory_low_bytes == 32 * 2**20  # Docker's reservation = v1 soft limit
    assert s.cpu_quota_cores == 0.5
    assert s.cpuset_cpus == "0"
    assert s.pids == 1  # sh exec-ed into sleep after dd
    # 8 MiB written into tmpfs is shmem: not inactive file, so it counts in the working set.
    assert s.memory_working_set_bytes >= 8 * 2**20
    assert s.memory_events == {"failcnt": 0, "oom_kill": 0}
    assert s.pressure is not None and set(s.pressure) == {"cpu", "memory", "io"}
    assert s.frozen is False


def test_v1_locate_without_pid_by_known_layout():
    fs = CgroupFS(str(FIX / "cgroup_v1"), proc=str(FIX / "proc"))
    assert fs.locate(V1_ID, 0).rel == f"/docker/{V1_ID}"


def test_v1_hot_read_matches_full_read():
    fs = CgroupFS(str(FIX / "cgroup_v1"), proc=str(FIX / "proc"))
    loc = fs.locate(V1_ID, int(V1_PID))
    u, s = fs.read_usage(loc), fs.read_stats(loc)
    assert (u.memory_usage_bytes, u.memory_working_set_bytes) == \
        (s.memory_usage_bytes, s.memory_working_set_bytes)
    assert u.cpu_usage_s == s.cpu_usage_s


def test_v2_systemd_layout():
    fs = CgroupFS(str(FIX / "cgroup_v2"), proc=str(FIX / "proc_v2"))
    assert fs.version == 2
    loc = fs.locate(V1_ID, 4242)
    assert loc.rel == f"/system.slice/docker-{V1_ID}.scope"
    s = fs.read_stats(loc)
    assert s.memory_usage_bytes == 50 * 2**20
    assert s.memory_working_set_bytes == 40 * 2**20  # current - inactive_file
    assert s.memory_limit_bytes == 64 * 2**20
    assert s.memory_high_bytes is None  # "max"
    assert s.memory_low_bytes == 32 * 2**20
    assert s.memory_events["oom_kill"] == 1 and s.memory_events["high"] == 7
    assert s.cpu_usage_s == 2.5 and s.cpu_throttled_s == 0.75 and s.cpu_nr_throttled == 15
    assert s.cpu_quota_cores == 0.5
    assert (s.blkio_read_bytes, s.blkio_write_bytes) == (1572864, 4194304)
    assert s.pressure["memory"].some_avg10 == 1.5 and s.pressure["cpu"].some_total_us == 9876543
    assert s.pids == 3 and s.frozen is False


def test_v2_found_by_systemd_layout_without_pid():
    fs = CgroupFS(str(FIX / "cgroup_v2"), proc=str(FIX / "proc_v2"))
    assert fs.locate(V1_ID).rel == f"/system.slice/docker-{V1_ID}.scope"


def test_unknown_container_is_a_typed_error():
    fs = CgroupFS(str(FIX / "cgroup_v2"), proc=str(FIX / "proc_v2"))
    with pytest.raises(CgroupNotFound):
        fs.locate("f" * 64)


def test_vanished_cgroup_is_cgroup_gone(tmp_path):
    import shutil
    shutil.copytree(FIX / "cgroup_v2", tmp_path / "cg")
    fs = CgroupFS(str(tmp_path / "cg"), proc=str(FIX / "proc_v2"))
    loc = fs.locate(V1_ID, 4242)
    (tmp_path / "cg" / "system.slice" / f"docker-{V1_ID}.scope" / "memory.current").unlink()
    with pytest.raises(CgroupGone):
        fs.read_stats(loc)


def test_parsers():
    p = parse_pressure("some avg10=1.00 avg60=2.00 avg300=3.00 total=4\n"
                       "full avg10=5.00 avg60=6.00 avg300=7.00 total=8\n")
    assert (p.some_avg10, p.some_avg60, p.some_total_us, p.full_avg10, p.full_total_us) == \
        (1.0, 2.0, 4, 5.0, 8)
    paths = parse_proc_cgroup("4:memory:/docker/x\n3:cpu,cpuacct:/docker/x\n0::/docker/x\n")
    assert paths == {"memory": "/docker/x", "cpu": "/docker/x", "cpuacct": "/docker/x",
                     "unified": "/docker/x"}
