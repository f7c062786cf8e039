"""The names of the pool cgroups (issue 3, Rule 1.3): which parent cgroup each pool gets
and what a compose service gives as ``cgroup_parent`` to live under it (a directory
under Docker's cgroupfs driver, a ``<parent>-<pool>.slice`` under its systemd driver,
issue 16). Pure: the daemon (runtime/poolcg.py) creates them, and the audit
(policy/audit.py) checks a service against the same names."""

from __future__ import annotations

from dataclasses import dataclass

from supervisor.model.config import Config
from supervisor.model.rules import PAGE_BYTES


@dataclass(frozen=True)
class PoolGroup:
    pool: str
    rel: str  # path below the hierarchy root, e.g. "/resource-supervisor/standard"
    limit_bytes: int  # the budget, page-aligned (the kernel stores whole pages)
    # systemd driver: the slice unit that is the pool's cgroup (MemoryMax= = limit_bytes),
    # kept through systemd itself; "" for a cgroupfs directory the daemon writes
    slice: str = ""


def driver_of(cfg: Config) -> str:
    return "systemd" if cfg.settings.pool_cgroups.parent.endswith(".slice") else "cgroupfs"


def cgroup_parent_for(cfg: Config, pool: str) -> str:
    """What a compose service gives as ``cgroup_parent`` to live under its pool. An
    absolute path: a relative one is taken below dockerd's own cgroup."""
    parent = cfg.settings.pool_cgroups.parent
    if driver_of(cfg) == "systemd":
        return f"{parent[: -len('.slice')]}-{pool}.slice"
    return f"/{parent.strip('/')}/{pool}"


def slice_rel(slice_name: str) -> str:
    """Where systemd puts a slice below the hierarchy root: it nests slices by dashes,
    a-b.slice lives at /a.slice/a-b.slice (systemd.slice(5))."""
    parts = slice_name[: -len(".slice")].split("-")
    return "/" + "/".join("-".join(parts[: i + 1]) + ".slice" for i in range(len(parts)))


def desired_pool_groups(cfg: Config) -> tuple[PoolGroup, ...]:
    """The pool cgroups the daemon keeps (none when disabled): a directory per pool under
    the cgroupfs driver, a slice per pool under the systemd driver (issue 16), whose tree
    is systemd's: the slice is created and limited through systemd, never written."""
    if not cfg.settings.pool_cgroups.enabled:
        return ()
    systemd = driver_of(cfg) == "systemd"
    out = []
    for name, p in sorted(cfg.pools.items()):
        parent = cgroup_parent_for(cfg, name)
        out.append(PoolGroup(name, slice_rel(parent) if systemd else parent,
                             p.budget_bytes // PAGE_BYTES * PAGE_BYTES,
                             slice=parent if systemd else ""))
    return tuple(out)


def lives_in(container_cgroup_rel: str, group_rel: str) -> bool:
    return container_cgroup_rel.startswith(group_rel.rstrip("/") + "/")


def container_cgroup_driver(rel: str) -> str:
    """Which of Docker's cgroup drivers placed a container, from its cgroup path below
    the hierarchy root: the systemd driver makes a scope ``docker-<id>.scope`` in a slice
    (``/system.slice/docker-<id>.scope``), the cgroupfs driver a directory named by the
    id (``/docker/<id>``, ``<cgroup_parent>/<id>``)."""
    leaf = rel.rstrip("/").rsplit("/", 1)[-1]
    return "systemd" if leaf.startswith("docker-") and leaf.endswith(".scope") else "cgroupfs"


def count_cgroup_drivers(rels: list[str]) -> dict[str, int]:
    out = {"cgroupfs": 0, "systemd": 0}
    for rel in rels:
        out[container_cgroup_driver(rel)] += 1
    return out
