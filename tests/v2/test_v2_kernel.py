"""Kernel and engine behaviours the supervisor relies on, seen on a real cgroup v2 kernel.

Run by scripts/v2-lane/run inside a QEMU guest (Debian bookworm's 6.1 kernel, cgroup2
only, dockerd with the cgroupfs driver). Raw cgroupfs here, no project code: these pin
down what the kernel and Docker actually do, so the project's v2 code is built on facts.
Numbers are printed (pytest -s / the lane's log shows them with -rA).
"""

from __future__ import annotations

import time

import pytest

from _v2lib import CGROUP_ROOT, kv, page_cache_container, parse_pressure, read, wait_for, write

MiB = 1024 * 1024
pytestmark = pytest.mark.cgroup_v2


def test_unified_hierarchy_only():
    """cgroup2 at /sys/fs/cgroup, no v1 hierarchy, the controllers the project needs."""
    mounts = [line.split() for line in read("/proc/mounts").splitlines()]
    fstypes = {m[1]: m[2] for m in mounts}
    assert fstypes.get("/sys/fs/cgroup") == "cgroup2"
    assert not [m for m in mounts if m[2] == "cgroup"], "a v1 hierarchy is mounted"
    controllers = read(CGROUP_ROOT / "cgroup.controllers").split()
    print(f"cgroup.controllers: {' '.join(controllers)}")
    for needed in ("cpuset", "cpu", "io", "memory", "pids"):
        assert needed in controllers
    # PSI is on (host-wide and per cgroup)
    assert parse_pressure("/proc/pressure/memory")["some"]["total"] >= 0


def test_docker_limits_map_to_v2_files(containers):
    """--memory 64m --memory-reservation 32m --cpus 0.5 --cpuset-cpus 0 on v2:
    memory.max, memory.low (Docker maps the reservation to memory.low, NOT memory.high),
    cpu.max and cpuset.cpus."""
    c = containers.run(mem_limit="64m", mem_reservation="32m", nano_cpus=500_000_000, cpuset_cpus="0")
    cg = containers.cgroup(c)
    # cgroupfs driver layout: /sys/fs/cgroup/docker/<full id>
    assert cg == CGROUP_ROOT / "docker" / c.id
    got = {f: read(cg / f) for f in ("memory.max", "memory.low", "memory.high", "cpu.max", "cpuset.cpus")}
    print(f"{cg}: {got}")
    assert got["memory.max"] == str(64 * MiB)
    assert got["memory.low"] == str(32 * MiB)
    assert got["memory.high"] == "max"
    assert got["cpu.max"] == "50000 100000"
    assert got["cpuset.cpus"] == "0"


def test_live_update_reaches_cgroup_files(containers):
    """container.update() (what placement does) changes the v2 files of a running container."""
    c = containers.run()
    cg = containers.cgroup(c)
    before = {f: read(cg / f) for f in ("memory.max", "memory.low", "cpu.max", "cpuset.cpus")}
    t0 = time.monotonic()
    c.update(cpuset_cpus="1", cpu_period=100_000, cpu_quota=25_000,
             mem_limit="96m", memswap_limit="96m", mem_reservation="48m")
    took = time.monotonic() - t0
    after = {f: read(cg / f) for f in ("memory.max", "memory.low", "cpu.max", "cpuset.cpus", "memory.swap.max")}
    print(f"update took {took * 1000:.0f} ms; before {before}; after {after}")
    assert after["cpuset.cpus"] == "1"
    assert after["cpu.max"] == "25000 100000"
    assert after["memory.max"] == str(96 * MiB)
    assert after["memory.low"] == str(48 * MiB)
    assert after["memory.swap.max"] == "0"
    c.reload()
    hc = c.attrs["HostConfig"]
    assert (hc["CpusetCpus"], hc["CpuQuota"], hc["Memory"], hc["MemoryReservation"]) == ("1", 25_000, 96 * MiB, 48 * MiB)


def test_memory_high_below_current_reclaims(containers):
    """Writing memory.high below memory.current makes the kernel reclaim down to it
    (synchronously, in the write) when the memory is reclaimable (page cache)."""
    c, cg, st = page_cache_container(containers)
    before = int(read(cg / "memory.current"))
    high = before - 24 * MiB
    t0 = time.monotonic()
    write(cg / "memory.high", str(high))
    took = time.monotonic() - t0
    after = int(read(cg / "memory.current"))
    print(f"memory.current {before / MiB:.1f} MiB -> memory.high {high / MiB:.1f} MiB -> "
          f"memory.current {after / MiB:.1f} MiB (write took {took * 1000:.0f} ms); "
          f"file {st['file'] / MiB:.1f} -> {kv(cg / 'memory.stat')['file'] / MiB:.1f} MiB")
    assert after <= high + 1 * MiB
    assert after < before - 20 * MiB
    write(cg / "memory.high", "max")
    assert read(cg / "memory.high") == "max"


def test_memory_reclaim_makes_current_fall(containers):
    """memory.reclaim (5.19+) reclaims on demand, without changing any limit."""
    c, cg, st = page_cache_container(containers)
    before = int(read(cg / "memory.current"))
    t0 = time.monotonic()
    try:
        write(cg / "memory.reclaim", "24M")
        outcome = "ok"
    except OSError as e:  # EAGAIN: could not reclaim the full amount
        outcome = f"{e.__class__.__name__}: {e}"
    took = time.monotonic() - t0
    after = int(read(cg / "memory.current"))
    print(f"memory.reclaim 24M: {outcome}; memory.current {before / MiB:.1f} -> {after / MiB:.1f} MiB "
          f"(fell {(before - after) / MiB:.1f} MiB, {took * 1000:.0f} ms); memory.max {read(cg / 'memory.max')}, "
          f"memory.high {read(cg / 'memory.high')} unchanged")
    assert outcome == "ok"
    assert after <= before - 20 * MiB
    assert read(cg / "memory.high") == "max"


def test_memory_high_throttles_unreclaimable_growth(containers):
    """Above memory.high with nothing reclaimable (anon, no swap) the allocation is not
    refused: memory.current goes past memory.high (it is a throttle, not a cap) while
    memory.events 'high' counts the breaches and the reclaim stalls show in the
    container's memory.pressure."""
    c = containers.run("while [ ! -e /tmp/go ]; do sleep 0.1; done; "
                       "dd if=/dev/zero bs=24M count=1 2>/dev/null | sleep 3600", mem_limit="128m")
    cg = containers.cgroup(c)
    high = 8 * MiB
    write(cg / "memory.high", str(high))
    ev0 = kv(cg / "memory.events")
    psi0 = parse_pressure(cg / "memory.pressure")
    assert c.exec_run(["touch", "/tmp/go"]).exit_code == 0
    st = wait_for(lambda: (s := kv(cg / "memory.stat"))["anon"] >= 22 * MiB and s,
                  timeout=120, interval=0.25, what="24 MiB of anon memory")
    # Counted when dd's 24 MiB read() returns to user mode (mm/memcontrol.c:
    # mem_cgroup_handle_over_high -> reclaim_high), seconds later under an emulated CPU.
    ev1, psi1 = wait_for(lambda: ((e := kv(cg / "memory.events"))["high"] > ev0["high"]
                                  and (p := parse_pressure(cg / "memory.pressure"))["some"]["total"]
                                  > psi0["some"]["total"] and (e, p)),
                         timeout=60, interval=0.25, what="memory.events high and memory PSI to count the stall")
    cur = int(read(cg / "memory.current"))
    print(f"memory.high {high / MiB:.0f} MiB, memory.current {cur / MiB:.1f} MiB (anon {st['anon'] / MiB:.1f}); "
          f"memory.events high {ev0['high']} -> {ev1['high']}, max {ev1['max']}, oom_kill {ev1['oom_kill']}; "
          f"memory.pressure some total {psi0['some']['total']:.0f} -> {psi1['some']['total']:.0f} us, "
          f"full total {psi0['full']['total']:.0f} -> {psi1['full']['total']:.0f} us")
    assert cur > high
    assert ev1["high"] > ev0["high"]
    assert ev1["oom_kill"] == 0
    assert psi1["some"]["total"] > psi0["some"]["total"]


def test_cgroup_freeze_and_docker_pause(containers):
    """cgroup.freeze=1 -> cgroup.events 'frozen 1' and the cgroup gets no CPU;
    docker pause uses the same freezer on v2."""
    c = containers.run("while :; do :; done", nano_cpus=200_000_000)
    cg = containers.cgroup(c)
    wait_for(lambda: kv(cg / "cpu.stat")["usage_usec"] > 0, what="the busy loop to run")

    t0 = time.monotonic()
    write(cg / "cgroup.freeze", "1")
    wait_for(lambda: kv(cg / "cgroup.events")["frozen"] == 1, timeout=10, interval=0.01, what="frozen 1")
    t_freeze = time.monotonic() - t0
    u0 = kv(cg / "cpu.stat")["usage_usec"]
    time.sleep(1.0)
    u1 = kv(cg / "cpu.stat")["usage_usec"]
    t0 = time.monotonic()
    write(cg / "cgroup.freeze", "0")
    wait_for(lambda: kv(cg / "cgroup.events")["frozen"] == 0, timeout=10, interval=0.01, what="frozen 0")
    t_thaw = time.monotonic() - t0
    wait_for(lambda: kv(cg / "cpu.stat")["usage_usec"] > u1, timeout=10, what="CPU use after thaw")
    print(f"cgroup.freeze: frozen in {t_freeze * 1000:.0f} ms, thawed in {t_thaw * 1000:.0f} ms; "
          f"usage_usec while frozen {u0} -> {u1}")
    assert u1 == u0

    t0 = time.monotonic()
    c.pause()
    t_pause = time.monotonic() - t0
    assert kv(cg / "cgroup.events")["frozen"] == 1
    assert read(cg / "cgroup.freeze") == "1"
    c.reload()
    assert c.attrs["State"]["Paused"] is True
    t0 = time.monotonic()
    c.unpause()
    t_unpause = time.monotonic() - t0
    assert kv(cg / "cgroup.events")["frozen"] == 0
    print(f"docker pause {t_pause * 1000:.0f} ms, unpause {t_unpause * 1000:.0f} ms")


def test_per_container_pressure_files(containers):
    """memory.pressure, cpu.pressure and io.pressure exist per container and parse
    ('some' and 'full' lines with avg10/avg60/avg300/total)."""
    c = containers.run()
    cg = containers.cgroup(c)
    for res in ("memory", "cpu", "io"):
        p = parse_pressure(cg / f"{res}.pressure")
        print(f"{res}.pressure: {p}")
        assert set(p) == {"some", "full"}, p
        for kind in ("some", "full"):
            assert set(p[kind]) == {"avg10", "avg60", "avg300", "total"}
            assert all(v >= 0 for v in p[kind].values())


def test_pool_parent_holds_its_budget(containers, scratch_cgroup):
    """A parent cgroup with memory.max (a pool) holds its budget across containers started
    under it with --cgroup-parent: two containers each wanting 30 MiB of anon memory in a
    48 MiB pool cannot both have it; the kernel OOM-kills in the pool and counts it."""
    pool = scratch_cgroup("pool")
    write(pool / "memory.max", str(48 * MiB))
    for ctrl in ("+memory", "+cpu", "+pids"):
        write(pool / "cgroup.subtree_control", ctrl)
    parent = "/" + pool.name
    cmd = "dd if=/dev/zero bs=30M count=1 2>/dev/null | sleep 3600"
    a = containers.run(cmd, cgroup_parent=parent)
    cga = containers.cgroup(a)
    assert cga == pool / a.id
    wait_for(lambda: kv(cga / "memory.stat")["anon"] >= 29 * MiB, timeout=120, interval=0.25, what="first 30 MiB")
    b = containers.run(cmd, cgroup_parent=parent)
    cgb = containers.cgroup(b)
    wait_for(lambda: kv(pool / "memory.events")["oom_kill"] >= 1, timeout=120, interval=0.25, what="an OOM kill in the pool")
    time.sleep(0.5)
    ev = kv(pool / "memory.events")
    cur = int(read(pool / "memory.current"))
    peak = int(read(pool / "memory.peak"))
    anon = {"a": kv(cga / "memory.stat")["anon"], "b": kv(cgb / "memory.stat")["anon"]}
    print(f"pool memory.max 48 MiB: memory.current {cur / MiB:.1f} MiB, memory.peak {peak / MiB:.1f} MiB, "
          f"anon a {anon['a'] / MiB:.1f} b {anon['b'] / MiB:.1f} MiB, pool memory.events {ev}, "
          f"children oom_kill a {kv(cga / 'memory.events')['oom_kill']} b {kv(cgb / 'memory.events')['oom_kill']}")
    assert peak <= 48 * MiB
    assert cur <= 48 * MiB
    assert ev["max"] >= 1 and ev["oom_kill"] >= 1
    assert sum(anon.values()) <= 48 * MiB
    # the containers themselves had no limit of their own: the pool did it
    assert read(cga / "memory.max") == "max" and read(cgb / "memory.max") == "max"
