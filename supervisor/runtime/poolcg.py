"""Pools the kernel enforces (issue 3, Rule 1.3): one parent cgroup per pool whose memory
limit is the pool's budget. Containers started under it (``--cgroup-parent``, compose's
``cgroup_parent``) cannot together take more than the budget, even between two ticks:
the kernel reclaims, then OOM-kills inside the pool.

cgroupfs driver (Docker's default outside systemd hosts): ``<parent>/<pool>`` under the
cgroup root. On v2 it gets ``memory.max`` = budget and ``+memory +cpu +cpuset`` (and io,
pids where offered) in ``cgroup.subtree_control`` of each level, so Docker can set the
containers' own limits below it. On v1 the directory is made in every controller
hierarchy, ``memory.limit_in_bytes`` = budget, and cpuset.cpus/mems are copied from
the parent (an empty cpuset group takes no tasks).

systemd driver (``pool_cgroups.parent`` ends in ".slice", issue 16): the tree belongs to
systemd, so the daemon never writes it; each pool is a slice ``<parent stem>-<pool>.slice``
that the daemon creates and limits through systemd itself (adapters/systemd_units.py:
``systemctl set-property <slice> MemoryMax=<budget>``, persistent, so the kernel holds
the pool to its budget from boot on, even before the daemon's first pass; then
``systemctl start <slice>``). A service gives ``cgroup_parent: <parent stem>-<pool>.slice``.
The status shows the names and what systemd reports for each slice.

Created by the first pass after start, kept in sync on reload, re-checked on reconcile
passes. A budget is never lowered below what the pool uses now: that would make the
kernel OOM-kill inside it (cgroup-v2.rst, memory.max); it is reported instead.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterable

from supervisor.act.component import Component
from supervisor.adapters.cgroups import slice_path
from supervisor.adapters.systemd_units import SliceState, SystemdError, SystemdUnits
from supervisor.model.actions import Action, ActionResult, Outcome
from supervisor.model.config import Config
from supervisor.model.errors import CgroupError
from supervisor.model.pools import pool_of
from supervisor.model.snapshot import LIVE_STATES, ContainerSample
from supervisor.model.units import format_bytes
from prometheus_client.core import GaugeMetricFamily

from supervisor.policy.pool_groups import (PoolGroup, cgroup_parent_for, count_cgroup_drivers,
                                           desired_pool_groups, driver_of, lives_in)
from supervisor.policy.tick import Tick

__all__ = ["PoolCgroups", "PoolGroup", "cgroup_parent_for", "desired_pool_groups",
           "driver_of", "lives_in", "outside_pools", "pool_group_rel"]

log = logging.getLogger(__name__)

# Controllers a pool's subtree needs for Docker to set a container's memory, CPU quota
# and cpuset (and pids / io limits when asked) below it.
SUBTREE_CONTROLLERS = ("memory", "cpu", "cpuset", "io", "pids")


def pool_group_rel(cfg: Config, pool: str) -> str:
    """The pool's cgroup, relative to the hierarchy root (systemd nests slices)."""
    if driver_of(cfg) == "systemd":
        return "/" + slice_path(cgroup_parent_for(cfg, pool))
    return cgroup_parent_for(cfg, pool)


def outside_pools(containers: tuple[ContainerSample, ...], cfg: Config,
                  rel_of: Callable[[str], str | None]) -> list[dict[str, Any]]:
    """Live managed containers whose cgroup is not below their pool's cgroup (so the
    kernel does not hold them to the budget). ``rel_of`` maps a container's cgroup
    directory to its path below the hierarchy root."""
    out = []
    for c in containers:
        if not c.managed or c.info.state not in LIVE_STATES or c.stats is None:
            continue
        pool = pool_of(c, cfg)
        if not pool:
            continue
        rel = rel_of(c.stats.path)
        want = pool_group_rel(cfg, pool)
        if rel is None or not lives_in(rel, want):
            out.append({"name": c.info.name, "id": c.info.short_id, "pool": pool,
                        "cgroup": rel or c.stats.path, "expected_under": want,
                        "cgroup_parent": cgroup_parent_for(cfg, pool)})
    return out


# ---------------------------------------------------------------- the component


class PoolCgroups(Component):
    name = "pool_cgroups"

    def __init__(self, ctx, units: SystemdUnits | None = None):
        super().__init__(ctx)
        self.units = units or SystemdUnits()  # the systemd driver's slices (no call until used)
        self._applied: tuple | None = None  # the key last written (or reported in dry run)
        self._next_try = 0.0
        self.last_error = ""
        # what systemd last said of each pool slice (read on sync and reconcile passes,
        # not every pass: each read is a systemctl call)
        self._slices: dict[str, SliceState] = {}
        self._drivers_memo: tuple | None = None  # (snapshot, its containers by driver)

    @staticmethod
    def _key(cfg: Config) -> tuple:
        return (cfg.dry_run, desired_pool_groups(cfg))

    def plan(self, tick: Tick) -> list[Action]:
        key = self._key(tick.cfg)
        groups = key[1]
        if not groups or key == self._applied or tick.now < self._next_try:
            return []
        why = "pool cgroups hold each pool to its budget: " + ", ".join(
            f"{g.rel} {format_bytes(g.limit_bytes)}" for g in groups)
        return [Action("pool_cgroups", "host", "pool cgroups", why, "pool_cgroups",
                       {"groups": [{"pool": g.pool, "rel": g.rel, "limit_bytes": g.limit_bytes,
                                    "slice": g.slice} for g in groups]})]

    def executors(self) -> dict[str, Callable[[Action], Outcome]]:
        return {"pool_cgroups": self._sync}

    def _sync(self, action: Action) -> Outcome:
        fs = self.ctx.cgroups
        before: dict[str, Any] = {}
        after: dict[str, Any] = {}
        problems = []
        for g in action.params["groups"]:
            pool, rel, limit = g["pool"], g["rel"], int(g["limit_bytes"])
            if g.get("slice"):
                problem = self._sync_slice(pool, g["slice"], limit, before, after)
                if problem:
                    problems.append(problem)
                continue
            try:
                existed = fs.group_exists(rel)
                loc = fs.make_group(rel, SUBTREE_CONTROLLERS)
                now = fs.read_group(loc)
                before[pool] = {"existed": existed, "limit_bytes": now["limit_bytes"]}
                if now["limit_bytes"] != limit:
                    if now["usage_bytes"] > limit:
                        problems.append(f"{pool}: uses {format_bytes(now['usage_bytes'])}, more "
                                        f"than the new budget {format_bytes(limit)}; limit left "
                                        f"at {format_bytes(now['limit_bytes'])}")
                        continue
                    fs.set_group_limit(loc, limit)
                after[pool] = {"path": loc.dir("memory"),
                               "limit_bytes": fs.read_group(loc)["limit_bytes"]}
            except CgroupError as e:
                problems.append(f"{pool}: {e}")
        if problems:
            self.last_error = "; ".join(problems)
            return Outcome(ok=False, detail=self.last_error, before=before, after=after)
        self.last_error = ""
        return Outcome(ok=True, detail="pool cgroups in place", before=before, after=after)

    def _sync_slice(self, pool: str, name: str, limit: int, before: dict[str, Any],
                    after: dict[str, Any]) -> str:
        """One pool slice through systemd: MemoryMax= = the budget (never below what the
        slice uses now), then started. Returns a problem, or ""."""
        try:
            st = self.units.slice_state(name)
            before[pool] = {"existed": st.active, "limit_bytes": st.memory_max_bytes}
            if st.memory_max_bytes != limit:
                if st.memory_current_bytes is not None and st.memory_current_bytes > limit:
                    self._slices[pool] = st
                    return (f"{pool}: {name} uses {format_bytes(st.memory_current_bytes)}, more "
                            f"than the new budget {format_bytes(limit)}; MemoryMax left at "
                            f"{format_bytes(st.memory_max_bytes) if st.memory_max_bytes else 'infinity'}")
                self.units.set_properties(name, {"MemoryMax": str(limit)}, runtime=False)
            if not st.active:
                self.units.start(name)
            st = self.units.slice_state(name)
        except SystemdError as e:
            return f"{pool}: {e}"
        self._slices[pool] = st
        after[pool] = {"slice": name, "cgroup": st.control_group, "limit_bytes": st.memory_max_bytes}
        return ""

    def observe(self, tick: Tick, results: list[ActionResult]) -> None:
        key = self._key(tick.cfg)
        for r in results:
            if r.action.kind != "pool_cgroups":
                continue
            if r.ok or r.dry_run:
                self._applied = key
            else:
                self._next_try = tick.now + max(tick.cfg.reconcile_s, 10.0)
        if tick.reconcile and self._applied == key and not tick.cfg.dry_run and key[1]:
            drift = self._drift(key[1])
            if drift:
                log.warning("pool cgroups drifted (%s); setting them again", drift)
                self._applied = None

    def _drift(self, groups: tuple[PoolGroup, ...]) -> str:
        fs = self.ctx.cgroups
        for g in groups:
            if g.slice:
                try:
                    st = self._slices[g.pool] = self.units.slice_state(g.slice)
                except SystemdError as e:
                    return str(e)
                if not st.active or st.memory_max_bytes != g.limit_bytes:
                    return (f"{g.slice} {'active' if st.active else 'inactive'}, MemoryMax "
                            f"{st.memory_max_bytes} instead of {g.limit_bytes}")
                continue
            try:
                if not fs.group_exists(g.rel):
                    return f"{g.rel} is gone"
                got = fs.read_group(fs.location(g.rel))["limit_bytes"]
            except CgroupError as e:
                return str(e)
            if got != g.limit_bytes:
                return f"{g.rel} limit {got} instead of {g.limit_bytes}"
        return ""

    def _rel_of(self, path: str) -> str | None:
        roots = self.ctx.cgroups.controller_roots()
        root = (roots.get("unified") or roots.get("memory") or "").rstrip("/")
        if root and path.startswith(root + "/"):
            return path[len(root):]
        return None

    def status(self, tick: Tick) -> dict[str, Any] | None:
        cfg = tick.cfg
        pc, driver = cfg.settings.pool_cgroups, driver_of(cfg)
        pools: dict[str, Any] = {}
        for name, p in sorted(cfg.pools.items()):
            row: dict[str, Any] = {"budget_bytes": p.budget_bytes,
                                   "cgroup": pool_group_rel(cfg, name),
                                   "cgroup_parent": cgroup_parent_for(cfg, name)}
            if pc.enabled and driver == "cgroupfs":
                fs = self.ctx.cgroups
                try:
                    if fs.group_exists(row["cgroup"]):
                        row.update(fs.read_group(fs.location(row["cgroup"])))
                    else:
                        row["error"] = "not created (yet)"
                except CgroupError as e:
                    row["error"] = str(e)
            elif pc.enabled and driver == "systemd":
                st = self._slices.get(name)
                row["slice"] = row["cgroup_parent"]
                if st is None:
                    row["error"] = "not created (yet)"
                else:
                    row.update({"active": st.active, "limit_bytes": st.memory_max_bytes,
                                "usage_bytes": st.memory_current_bytes})
            pools[name] = row
        return {"enabled": pc.enabled, "driver": driver, "parent": pc.parent,
                "error": self.last_error, "pools": pools,
                "outside": outside_pools(tick.snapshot.containers, cfg, self._rel_of)
                if pc.enabled else [],
                # which of Docker's cgroup drivers placed the containers the reader found
                "container_cgroup_drivers": self._drivers_seen(tick)}

    def _drivers_seen(self, tick: Tick) -> dict[str, int]:
        """Containers by the cgroup driver that placed them, once per snapshot (the
        status and the metric family of a pass both ask)."""
        memo = self._drivers_memo
        if memo is None or memo[0] is not tick.snapshot:
            rels = [self._rel_of(c.stats.path) or c.stats.path
                    for c in tick.snapshot.containers if c.stats is not None]
            memo = self._drivers_memo = (tick.snapshot, count_cgroup_drivers(rels))
        return dict(memo[1])

    def collect(self, tick: Tick) -> Iterable[GaugeMetricFamily]:
        g = GaugeMetricFamily("resource_supervisor_containers_by_cgroup_driver",
                              "Containers whose cgroup the reader found, by the Docker cgroup "
                              "driver that placed it (systemd: docker-<id>.scope)",
                              labels=["driver"])
        for driver, n in sorted(self._drivers_seen(tick).items()):
            g.add_metric([driver], n)
        return [g]
