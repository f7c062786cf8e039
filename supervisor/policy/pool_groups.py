"""The names of the pool cgroups (issue 3, Rule 1.3): which parent cgroup each pool gets
and what a compose service gives as ``cgroup_parent`` to live under it. Pure: the
daemon (runtime/poolcg.py) creates them, and the audit (policy/audit.py) checks a
service against the same names."""

from __future__ import annotations

from dataclasses import dataclass

from supervisor.model.config import Config

_PAGE = 4096


@dataclass(frozen=True)
class PoolGroup:
    pool: str
    rel: str  # path below the hierarchy root, e.g. "/resource-supervisor/standard"
    limit_bytes: int  # the budget, page-aligned (the kernel stores whole pages)


def driver_of(cfg: Config) -> str:
    return "systemd" if cfg.settings.pool_cgroups.parent.endswith(".slice") else "cgroupfs"


def cgroup_parent_for(cfg: Config, pool: str) -> str:
    """What a compose service gives as ``cgroup_parent`` to live under its pool. An
    absolute path: a relative one is taken below dockerd's own cgroup."""
    parent = cfg.settings.pool_cgroups.parent
    if driver_of(cfg) == "systemd":
        return f"{parent[: -len('.slice')]}-{pool}.slice"
    return f"/{parent.strip('/')}/{pool}"


def desired_pool_groups(cfg: Config) -> tuple[PoolGroup, ...]:
    """The pool cgroups the daemon keeps (none when disabled or under systemd, whose
    tree is systemd's: there the cgroupfs path is the ``cgroup_parent`` itself)."""
    if not cfg.settings.pool_cgroups.enabled or driver_of(cfg) != "cgroupfs":
        return ()
    return tuple(PoolGroup(name, cgroup_parent_for(cfg, name), p.budget_bytes // _PAGE * _PAGE)
                 for name, p in sorted(cfg.pools.items()))


def lives_in(container_cgroup_rel: str, group_rel: str) -> bool:
    return container_cgroup_rel.startswith(group_rel.rstrip("/") + "/")
