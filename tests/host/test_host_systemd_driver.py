"""Docker's systemd cgroup driver done right (issue 16): pool slices made and kept in step
through systemd, never shrunk below their usage; the audit flags a managed container
outside its pool's slice; the reader says which driver placed a container; the knobs the
daemon writes on a container scope survive systemd re-applying the scope's properties."""

from __future__ import annotations

import json
import re
import time

from _hostlib import (CGROUP_ROOT, UNIT, cgroup_of_pid, show, status_json, supctl, systemctl,
                      wait_active, wait_for)

MIB = 1024 * 1024


def _slices_config(text: str, standard_budget: str | None = None) -> str:
    assert re.search(r'^parent = "(resource-supervisor|supervisor\.slice)"$', text, re.M), text
    text = re.sub(r'^parent = ".*"$', 'parent = "supervisor.slice"', text, count=1, flags=re.M)
    if standard_budget:
        text = re.sub(r'(\[pools\.standard\]\nbudget = )"[^"]*"', rf'\1"{standard_budget}"', text)
    return text


def _pool_row(pool: str) -> dict:
    return status_json()["pool_cgroups"]["pools"][pool]


def test_install_chose_slices_for_the_systemd_driver():
    from _hostlib import CONFIG
    assert re.search(r'^parent = "supervisor\.slice"$', CONFIG.read_text(), re.M)
    # and no cgroupfs pool directory was made behind systemd's back
    assert not (CGROUP_ROOT / "resource-supervisor").exists()


def test_pool_slices_are_kept_through_systemd_at_the_budget(unit_config, containers):
    unit_config.write_text(_slices_config(unit_config.read_text()))
    systemctl("reload", UNIT)
    wait_active()
    pools = status_json()["pools"]
    for pool, row in pools.items():
        name = f"supervisor-{pool}.slice"
        want = row["budget_bytes"] // 4096 * 4096
        wait_for(lambda: show("MemoryMax", name) == str(want), timeout=60,
                 what=f"{name} MemoryMax={want}")
        assert show("ActiveState", name) == "active"
        assert show("ControlGroup", name) == f"/supervisor.slice/{name}"
        assert (CGROUP_ROOT / f"supervisor.slice/{name}/memory.max").read_text().strip() == str(want)
    # systemd keeps it as a property of its own (a drop-in it wrote), not a stray file write
    out = systemctl("cat", "supervisor-standard.slice").stdout
    assert "MemoryMax=" in out, out

    inside = containers.run(cgroup_parent="supervisor-standard.slice")
    outside = containers.run()
    assert cgroup_of_pid(inside.attrs["State"]["Pid"]) == \
        CGROUP_ROOT / f"supervisor.slice/supervisor-standard.slice/docker-{inside.id}.scope"
    assert cgroup_of_pid(outside.attrs["State"]["Pid"]) == \
        CGROUP_ROOT / f"system.slice/docker-{outside.id}.scope"

    # the reader saw both, placed by the systemd driver, and says so (status and metrics)
    def drivers():
        st = status_json()
        names = {r["name"] for r in st["containers"]}
        return {inside.name, outside.name} <= names and st["pool_cgroups"]["container_cgroup_drivers"]
    seen = wait_for(drivers, timeout=60, what="both containers in the status")
    assert seen["systemd"] >= 2 and seen["cgroupfs"] == 0, seen
    # the audit: only the one outside its pool's slice is flagged (Rule 1.3)
    p = supctl("audit", "--json", check=False)
    rows13 = [f for f in json.loads(p.stdout)["findings"] if f["rule"] == "1.3"]
    flagged = {f["target"] for f in rows13}
    assert outside.name in flagged, rows13
    assert inside.name not in flagged, rows13
    assert "supervisor-standard.slice" in json.dumps(rows13)
    # ...and the status lists it outside its pool
    outs = {r["name"] for r in status_json()["pool_cgroups"]["outside"]}
    assert outside.name in outs and inside.name not in outs


def test_a_pool_slice_is_never_shrunk_below_its_usage(unit_config, containers):
    unit_config.write_text(_slices_config(unit_config.read_text()))
    systemctl("reload", UNIT)
    wait_active()
    name = "supervisor-standard.slice"
    wait_for(lambda: show("ActiveState", name) == "active" and show("MemoryMax", name).isdigit(),
             timeout=60, what=f"{name} made")
    before = show("MemoryMax", name)
    # 48 MiB of tmpfs charged to the slice, then a budget of 16 MiB (scaled to this host);
    # not managed, so the ladder does not stop it to make room (it would, and then the
    # smaller budget is rightly applied: the slice is only never shrunk below its usage)
    containers.run("dd if=/dev/zero of=/dev/shm/fill bs=1M count=48 && sleep 3600",
                   cgroup_parent=name, shm_size="64m", labels={"supervisor.managed": "false"})
    wait_for(lambda: int(show("MemoryCurrent", name) or 0) > 40 * MIB, timeout=60,
             what="48 MiB used in the slice")
    unit_config.write_text(_slices_config(unit_config.read_text(), standard_budget="16MiB"))
    systemctl("reload", UNIT)
    err = wait_for(lambda: status_json()["pool_cgroups"].get("error"), timeout=60,
                   what="the refusal in the status")
    assert "more than the new budget" in err and name in err, err
    assert show("MemoryMax", name) == before
    time.sleep(15)  # the daemon tries again after reconcile_s (10 s): still refused
    assert show("MemoryMax", name) == before
    assert "more than the new budget" in status_json()["pool_cgroups"]["error"]
    assert show("ActiveState", UNIT) == "active"


def test_knobs_on_a_container_scope_survive_systemd_reapplying_them(containers):
    """The daemon writes memory.high (the ladder's throttle) itself; systemd owns the
    scope. Written through the daemon's cgroup writer, the value must still be there
    after `systemctl daemon-reload` and after systemd re-applies the scope's properties
    (a property change on the scope); Docker's own CPU quota too."""
    from supervisor.adapters.cgroups import CgroupFS

    # not managed: only this test writes their knobs (supervisor.managed=false)
    unmanaged = {"supervisor.managed": "false"}
    c = containers.run(nano_cpus=500_000_000, labels=unmanaged)
    scope = f"docker-{c.id}.scope"
    cg = cgroup_of_pid(c.attrs["State"]["Pid"])
    assert cg.name == scope

    # what systemd does to a value written behind its back (printed: the reason for
    # setting it through systemd)
    other = containers.run(labels=unmanaged)
    ocg = cgroup_of_pid(other.attrs["State"]["Pid"])
    (ocg / "memory.high").write_text(str(48 * MIB))
    systemctl("daemon-reload")
    systemctl("set-property", "--runtime", f"docker-{other.id}.scope", "TasksMax=4000")
    print(f"memory.high written behind systemd's back, after daemon-reload + set-property: "
          f"{(ocg / 'memory.high').read_text().strip()}")

    fs = CgroupFS()
    assert fs.units is not None, "the cgroup writer does not see systemd as PID 1"
    loc = fs.locate(c.id, c.attrs["State"]["Pid"])
    fs.write_file(loc, "memory", "memory.high", 64 * MIB, nonblock=True)
    cpu_max = (cg / "cpu.max").read_text().strip()
    assert cpu_max.startswith("50000 ")
    systemctl("daemon-reload")
    assert (cg / "memory.high").read_text().strip() == str(64 * MIB)
    systemctl("set-property", "--runtime", scope, "TasksMax=4000")  # systemd re-applies the scope
    assert (cg / "memory.high").read_text().strip() == str(64 * MIB)
    assert (cg / "cpu.max").read_text().strip() == cpu_max
    assert show("MemoryHigh", scope) == str(64 * MIB)
    # put back: "max" again, and systemd's property follows
    fs.write_file(loc, "memory", "memory.high", "max")
    systemctl("daemon-reload")
    assert (cg / "memory.high").read_text().strip() == "max"
    assert show("MemoryHigh", scope) == "infinity"
