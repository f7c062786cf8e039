"""cgroup parsing on captured (v1) and documented-format (v2) trees."""

import shutil
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


def test_v2_files_of_a_controller_not_enabled_or_of_psi_off_are_skipped(tmp_path):
    """A controller not enabled for the subtree has no files, nor has PSI booted with
    psi=0: the read goes on without them (ENOENT with the directory still there)."""
    shutil.copytree(FIX / "cgroup_v2", tmp_path / "cg")
    fs = CgroupFS(str(tmp_path / "cg"), proc=str(FIX / "proc_v2"))
    loc = fs.locate(V1_ID, 4242)
    d = tmp_path / "cg" / "system.slice" / f"docker-{V1_ID}.scope"
    for name in ("cpu.max", "cpuset.cpus", "pids.current", "io.stat", "cpu.pressure",
                 "memory.pressure", "io.pressure"):
        (d / name).unlink()
    s = fs.read_stats(loc)
    assert s.memory_usage_bytes == 50 * 2**20 and s.memory_limit_bytes == 64 * 2**20
    assert (s.cpu_quota_cores, s.cpuset_cpus, s.pids) == (None, "", 0)
    assert (s.blkio_read_bytes, s.blkio_write_bytes) == (0, 0)
    assert s.pressure == {}
    shutil.rmtree(d)
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


def split_v1_tree(tmp_path, memory_rel: str, other_rel: str):
    """The captured v1 tree rearranged as a relative --cgroup-parent leaves it on a host
    whose dockerd sits in a nested memory cgroup: the memory cgroup at ``memory_rel``,
    every other controller's at ``other_rel``; /proc/PID/cgroup says so."""
    root, proc = tmp_path / "cg", tmp_path / "proc"
    shutil.copytree(FIX / "cgroup_v1", root)
    shutil.copytree(FIX / "proc", proc)
    for ctrl in [d.name for d in root.iterdir() if d.is_dir()]:
        target = root / ctrl / (memory_rel if ctrl == "memory" else other_rel).strip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        (root / ctrl / "docker" / V1_ID).rename(target)
    lines = []
    for line in (proc / V1_PID / "cgroup").read_text().splitlines():
        num, ctrls, _ = line.split(":", 2)
        lines.append(f"{num}:{ctrls}:{memory_rel if ctrls == 'memory' else other_rel}")
    (proc / V1_PID / "cgroup").write_text("\n".join(lines) + "\n")
    return CgroupFS(str(root), proc=str(proc)), root


def test_v1_each_controller_is_read_at_its_own_path(tmp_path):
    mem_rel, other_rel = f"/process_api/abc/shop/{V1_ID}", f"/shop/{V1_ID}"
    fs, root = split_v1_tree(tmp_path, mem_rel, other_rel)
    loc = fs.locate(V1_ID, int(V1_PID), "shop")
    assert loc.rel == mem_rel
    assert loc.dir("memory") == f"{root}/memory{mem_rel}"
    for ctrl in ("cpu", "cpuacct", "cpuset", "pids", "blkio", "freezer"):
        assert loc.dir(ctrl) == f"{root}/{ctrl}{other_rel}"
    assert loc.psi_dir == f"{root}/unified{other_rel}"
    s = fs.read_stats(loc)
    want = fs.read_stats(CaptureLayout.loc())
    assert (s.memory_limit_bytes, s.memory_usage_bytes, s.cpu_quota_cores, s.cpuset_cpus,
            s.pids, s.cpu_usage_s, s.blkio_read_bytes, s.frozen) == \
        (want.memory_limit_bytes, want.memory_usage_bytes, want.cpu_quota_cores,
         want.cpuset_cpus, want.pids, want.cpu_usage_s, want.blkio_read_bytes, want.frozen)
    assert s.cpu_usage_s > 0 and s.cpu_quota_cores == 0.5
    u = fs.read_usage(loc)
    assert (u.memory_usage_bytes, u.cpu_usage_s) == (s.memory_usage_bytes, s.cpu_usage_s)
    hot = fs.open_usage(loc)
    try:
        assert hot.read().cpu_usage_s == s.cpu_usage_s
    finally:
        hot.close()


class CaptureLayout:
    """The captured tree as it was captured (every controller at /docker/<id>)."""

    @staticmethod
    def loc():
        fs = CgroupFS(str(FIX / "cgroup_v1"), proc=str(FIX / "proc"))
        return fs.locate(V1_ID, int(V1_PID))


def test_a_tick_between_full_reads_shows_the_fresh_counters_and_the_full_reads_limits(
        tmp_path):
    import dataclasses
    from _handmade import config, container
    from supervisor.adapters.host import HostSampler
    from supervisor.observe.sampler import Sampler
    shutil.copytree(FIX / "cgroup_v1", tmp_path / "cgroup_v1")
    fs = CgroupFS(str(tmp_path / "cgroup_v1"), proc=str(FIX / "proc"))
    s = Sampler(fs, HostSampler(str(FIX / "proc")), full_every_s=3600.0, clock=lambda: 0.0)
    info = dataclasses.replace(container("web", cid=V1_ID).info, pid=int(V1_PID))
    (full,), _ = s.sweep([info], config(), now=100.0)
    mem = tmp_path / "cgroup_v1" / "memory" / "docker" / V1_ID
    (mem / "memory.usage_in_bytes").write_text(str(full.stats.memory_usage_bytes + 2**20))
    (hot,), _ = s.sweep([info], config(), now=101.0)
    assert s.counts["usage_reads"] == 1
    assert hot.stats.memory_usage_bytes == full.stats.memory_usage_bytes + 2**20
    assert hot.stats.memory_working_set_bytes == full.stats.memory_working_set_bytes + 2**20
    same = ("memory_limit_bytes", "memory_low_bytes", "memory_events", "cpu_quota_cores",
            "cpuset_cpus", "pids", "cpu_throttled_s", "pressure", "frozen")
    assert [getattr(hot.stats, f) for f in same] == [getattr(full.stats, f) for f in same]


def test_an_unreadable_cgroup_is_one_warning_with_its_path_and_an_error_every_pass(
        tmp_path, caplog):
    import dataclasses
    import logging
    from _handmade import config, container
    from supervisor.adapters.host import HostSampler
    from supervisor.observe.sampler import Sampler
    fs, root = split_v1_tree(tmp_path, f"/nested/shop/{V1_ID}", f"/shop/{V1_ID}")
    shutil.rmtree(root / "cpuacct" / "shop" / V1_ID)  # one controller's cgroup is not there
    s = Sampler(fs, HostSampler(str(tmp_path / "proc")), full_every_s=0.0, clock=lambda: 0.0)
    info = dataclasses.replace(container("web", cid=V1_ID).info, pid=int(V1_PID))
    cfg = config()
    caplog.set_level(logging.DEBUG, logger="supervisor.observe.sampler")
    errors = []
    for i in range(10):
        (c,), _ = s.sweep([info], cfg, now=100.0 + i)
        assert c.stats is None
        errors.append(c.error)
    path = f"{root}/cpuacct/shop/{V1_ID}/cpuacct.usage"
    assert all(path in e for e in errors)
    assert all(e.startswith("cgroup unreadable") for e in errors[1:])
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and path in warnings[0].getMessage()
    assert not [r for r in caplog.records if r.levelno == logging.INFO]
    # Readable again: stats come back, and a later failure is warned about once more.
    shutil.copytree(FIX / "cgroup_v1" / "cpuacct" / "docker" / V1_ID,
                    root / "cpuacct" / "shop" / V1_ID)
    (c,), _ = s.sweep([info], cfg, now=200.0)
    assert c.stats is not None and c.error == "" and c.stats.cpu_usage_s > 0
