"""cgroup v1 with per-controller paths, on the real engine and kernel: a container given a
relative --cgroup-parent nests below dockerd's own cgroup in each hierarchy, and on a
host whose processes sit in a nested memory cgroup that puts its memory cgroup on another
path than its cpu/cpuacct/blkio ones. The reader finds each controller's own path in
/proc/PID/cgroup and reads real stats from each."""

import os
import uuid

import pytest

from _testkit import wait_for
from supervisor.adapters.engine import Engine
from supervisor.adapters.cgroups import CgroupFS, parse_proc_cgroup
from supervisor.adapters.host import HostSampler
from supervisor.observe.sampler import Sampler

MIB = 2**20
ROOT = "/sys/fs/cgroup"

pytestmark = pytest.mark.skipif(os.path.exists(f"{ROOT}/cgroup.controllers"),
                                reason="cgroup v1 (per-controller hierarchies) only")


@pytest.fixture
def relative_parent(containers):
    """A relative cgroup parent of this test's own; the parent cgroups Docker made for it
    (one per hierarchy, at whatever path each has) removed afterwards, once the
    containers in them are gone."""
    name = f"rs-rel-{uuid.uuid4().hex[:8]}"
    made: set[str] = set()
    yield name, made
    containers.cleanup()
    for d in sorted(made, key=len, reverse=True):
        try:
            os.rmdir(d)
        except OSError:
            pass


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def test_a_relative_cgroup_parent_gets_real_memory_and_cpu_stats(containers, make_config,
                                                                 relative_parent):
    parent, made = relative_parent
    c = containers.run(command="dd if=/dev/zero of=/dev/shm/fill bs=1M count=16 2>/dev/null; "
                               "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; sleep 3600",
                       cgroup_parent=parent, mem_limit="96m", nano_cpus=500_000_000,
                       shm_size="32m")
    c.reload()
    pid = c.attrs["State"]["Pid"]
    paths = parse_proc_cgroup(read(f"/proc/{pid}/cgroup"))
    for ctrl, rel in paths.items():  # every hierarchy, "name=systemd" and devices too
        made.add(os.path.dirname(f"{ROOT}/{ctrl.removeprefix('name=')}{rel}"))
    mem_dir, cpu_dir = f"{ROOT}/memory{paths['memory']}", f"{ROOT}/cpu{paths['cpu']}"
    acct_dir = f"{ROOT}/cpuacct{paths['cpuacct']}"
    fs = CgroupFS()
    loc = fs.locate(c.id, pid, parent)
    assert (loc.dir("memory"), loc.dir("cpu"), loc.dir("cpuacct")) == (mem_dir, cpu_dir, acct_dir)

    # the busy loop has burned some CPU, the 16 MiB in /dev/shm are resident
    wait_for(lambda: int(read(f"{acct_dir}/cpuacct.usage")) > 50_000_000, 30, what="CPU use")
    s = fs.read_stats(loc)
    assert s.memory_limit_bytes == 96 * MIB == int(read(f"{mem_dir}/memory.limit_in_bytes"))
    assert s.cpu_quota_cores == 0.5
    assert int(read(f"{cpu_dir}/cpu.cfs_quota_us")) == 50_000
    assert s.memory_usage_bytes >= 16 * MIB
    assert abs(s.memory_usage_bytes - int(read(f"{mem_dir}/memory.usage_in_bytes"))) < 4 * MIB
    cpu_s = int(read(f"{acct_dir}/cpuacct.usage")) / 1e9
    assert cpu_s > 0.05 and abs(s.cpu_usage_s - cpu_s) < 0.5
    assert s.pids >= 1

    # the sampler's snapshot: stats every pass, no error
    cfg, _ = make_config()
    sampler = Sampler(fs, HostSampler(), full_every_s=0.0)
    for _ in range(3):
        (row,), _ = sampler.sweep([info_of(c)], cfg)
        assert row.error == "" and row.stats is not None
        assert row.stats.memory_working_set_bytes >= 16 * MIB and row.stats.cpu_usage_s >= cpu_s
    assert sampler.counts["cgroup_vanished"] == sampler.counts["cgroup_errors"] == 0


def info_of(c):
    return Engine(os.environ["DOCKER_HOST"]).inspect(c.id)
