"""The systemd driver's pure parts (issue 16): systemctl's output parsed, the commands a
pool slice costs, and the budget rule (never below what the slice uses), with a recorded
command runner instead of a host (the production-host lane runs them for real)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from _handmade import MIB, config
from supervisor.adapters.systemd_units import (SystemdError, SystemdUnits, bytes_or_none,
                                               check_unit_name, parse_show)
from supervisor.model.actions import Action
from supervisor.policy.pool_groups import container_cgroup_driver, count_cgroup_drivers, slice_rel
from supervisor.runtime.poolcg import PoolCgroups, desired_pool_groups


class FakeSystemd:
    """Answers `systemctl show` from a dict of slices and records every other call."""

    def __init__(self, slices: dict[str, dict[str, str]] | None = None, fail: str = ""):
        self.slices = slices or {}
        self.calls: list[list[str]] = []
        self.fail = fail

    def __call__(self, argv: list[str]) -> tuple[int, str, str]:
        args = argv[2:]  # systemctl --no-pager ...
        self.calls.append(args)
        if self.fail and self.fail in args:
            return 1, "", f"Failed to {self.fail}: Access denied"
        if args[0] == "show":
            unit = self.slices.get(args[1], {"ActiveState": "inactive", "MemoryMax": "infinity",
                                             "MemoryCurrent": "[not set]", "ControlGroup": ""})
            props = args[3::2]
            return 0, "".join(f"{p}={unit.get(p, '')}\n" for p in props), ""
        if args[0] == "set-property":
            unit = self.slices.setdefault(args[-2] if "--runtime" not in args else args[2],
                                          {"ActiveState": "inactive", "MemoryCurrent": "0"})
            for kv in args[2:]:
                if "=" in kv:
                    k, _, v = kv.partition("=")
                    unit[k] = v
            return 0, "", ""
        if args[0] == "start":
            self.slices.setdefault(args[1], {"MemoryMax": "infinity", "MemoryCurrent": "0"})
            self.slices[args[1]].update(ActiveState="active", ControlGroup=slice_rel(args[1]))
            return 0, "", ""
        return 0, "", ""

    def writes(self) -> list[list[str]]:
        return [c for c in self.calls if c[0] != "show"]


def test_parse_show_and_memory_values():
    got = parse_show("ActiveState=active\nMemoryMax=104857600\nMemoryCurrent=[not set]\n"
                     "ControlGroup=/supervisor.slice/supervisor-standard.slice\n")
    assert got["ActiveState"] == "active"
    assert bytes_or_none(got["MemoryMax"]) == 100 * MIB
    assert bytes_or_none(got["MemoryCurrent"]) is None
    assert bytes_or_none("infinity") is None
    assert bytes_or_none(str(2**64 - 1)) is None  # accounting off


def test_unit_names_are_checked_before_any_call():
    units = SystemdUnits(run=FakeSystemd())
    with pytest.raises(SystemdError):
        units.show("../../etc/passwd", ("ActiveState",))
    with pytest.raises(SystemdError):
        check_unit_name("supervisor-standard.slice; rm -rf /")
    assert check_unit_name("supervisor-standard.slice")


@given(st.lists(st.from_regex(r"[a-z][a-z0-9]{0,6}", fullmatch=True), min_size=1, max_size=4))
def test_slice_rel_nests_by_dashes(parts):
    name = "-".join(parts) + ".slice"
    rel = slice_rel(name)
    assert rel.endswith("/" + name)
    assert rel.count("/") == len(parts)


def _component(fake: FakeSystemd) -> PoolCgroups:
    ctx = SimpleNamespace(cgroups=None)
    return PoolCgroups(ctx, units=SystemdUnits(run=fake))


def _sync(comp: PoolCgroups, cfg):
    groups = desired_pool_groups(cfg)
    action = Action("pool_cgroups", "host", "pool cgroups", "test", "pool_cgroups",
                    {"groups": [{"pool": g.pool, "rel": g.rel, "limit_bytes": g.limit_bytes,
                                 "slice": g.slice} for g in groups]})
    return comp._sync(action)


def test_pool_slices_are_made_through_systemd_with_the_budget():
    cfg = config(pool_cgroups={"parent": "supervisor.slice"})
    fake = FakeSystemd()
    out = _sync(_component(fake), cfg)
    assert out.ok, out.detail
    writes = fake.writes()
    assert ["set-property", "supervisor-standard.slice", f"MemoryMax={100 * MIB}"] in writes
    assert ["start", "supervisor-standard.slice"] in writes
    assert out.after["standard"]["cgroup"] == "/supervisor.slice/supervisor-standard.slice"
    # in step: a second sync changes nothing
    fake.calls.clear()
    assert _sync(_component(fake), cfg).ok
    assert fake.writes() == []


def test_a_pool_slice_is_never_shrunk_below_its_usage():
    cfg = config(pool_cgroups={"parent": "supervisor.slice"})
    fake = FakeSystemd({"supervisor-standard.slice": {
        "ActiveState": "active", "MemoryMax": str(500 * MIB), "MemoryCurrent": str(150 * MIB),
        "ControlGroup": "/supervisor.slice/supervisor-standard.slice"}})
    out = _sync(_component(fake), cfg)  # budget 100 MiB < 150 MiB used
    assert not out.ok
    assert "supervisor-standard.slice uses 150.0MiB, more than the new budget 100.0MiB" in out.detail
    assert not [c for c in fake.writes() if "supervisor-standard.slice" in c]
    assert fake.slices["supervisor-standard.slice"]["MemoryMax"] == str(500 * MIB)


def test_a_systemctl_failure_is_a_problem_not_a_crash():
    cfg = config(pool_cgroups={"parent": "supervisor.slice"})
    out = _sync(_component(FakeSystemd(fail="set-property")), cfg)
    assert not out.ok and "Access denied" in out.detail


def test_the_reader_says_which_driver_placed_a_container():
    cid = "a" * 64
    assert container_cgroup_driver(f"/system.slice/docker-{cid}.scope") == "systemd"
    assert container_cgroup_driver(f"/supervisor.slice/supervisor-standard.slice/docker-{cid}.scope") == "systemd"
    assert container_cgroup_driver(f"/docker/{cid}") == "cgroupfs"
    assert container_cgroup_driver(f"/resource-supervisor/standard/{cid}") == "cgroupfs"
    assert count_cgroup_drivers([f"/docker/{cid}", f"/system.slice/docker-{cid}.scope",
                                 f"/system.slice/docker-{cid}.scope"]) == {"cgroupfs": 1, "systemd": 2}


def test_memory_high_on_a_systemd_scope_is_also_a_scope_property(tmp_path):
    from supervisor.adapters.cgroups import CgroupFS

    cid = "b" * 64
    rel = f"/system.slice/docker-{cid}.scope"
    (tmp_path / "cgroup.controllers").write_text("memory cpu\n")
    (tmp_path / rel.lstrip("/")).mkdir(parents=True)
    (tmp_path / rel.lstrip("/") / "memory.high").write_text("max\n")
    fake = FakeSystemd()
    fs = CgroupFS(str(tmp_path), units=SystemdUnits(run=fake), systemd=True)
    loc = fs.location(rel)
    fs.write_file(loc, "memory", "memory.high", 32 * MIB, nonblock=True)
    assert (tmp_path / rel.lstrip("/") / "memory.high").read_text() == str(32 * MIB)
    assert fake.writes() == [["set-property", "--runtime", f"docker-{cid}.scope", f"MemoryHigh={32 * MIB}"]]
    fs.write_file(loc, "memory", "memory.high", "max")
    assert fake.writes()[-1][-1] == "MemoryHigh=infinity"
    # cgroupfs driver: a plain directory, nothing asked of systemd
    fake.calls.clear()
    (tmp_path / "docker" / cid).mkdir(parents=True)
    (tmp_path / "docker" / cid / "memory.high").write_text("max\n")
    fs.write_file(fs.location(f"/docker/{cid}"), "memory", "memory.high", 1 * MIB)
    assert fake.calls == []
