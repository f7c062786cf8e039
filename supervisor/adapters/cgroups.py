"""The one door to cgroupfs: locate a container's cgroup, read its stats, write its knobs,
and keep the daemon's own groups (a pool's parent cgroup).

Supports cgroup v2 (unified, /sys/fs/cgroup/cgroup.controllers exists) and v1 (one
hierarchy per controller; "hybrid" hosts also mount an empty v2 tree at ``unified/``,
which still carries per-cgroup PSI files). Supports Docker's cgroupfs driver
(``/docker/<id>`` or ``<cgroup-parent>/<id>``) and systemd driver
(``/system.slice/docker-<id>.scope``).

``CgroupFS`` locates and writes; it reads through cgroup_stats.py, offering it under its
own name, and keeps its own groups with the methods it inherits from cgroup_groups.py.
One file's reading, writing and formats are cgroup_files.py's (re-exported here for the
callers). Every OSError becomes a CgroupError at this boundary: CgroupGone when the file
or the directory has vanished (the container died mid-read), CgroupError otherwise.
"""

from __future__ import annotations

import errno
import os
from typing import Iterable

from supervisor.adapters import cgroup_stats
from supervisor.adapters.cgroup_files import (V1_CONTROLLERS, V1_UNLIMITED, CgroupLocation,
                                              Resident, parse_pressure, parse_proc_cgroup,
                                              read_text, resident_of, slice_path, stat_value,
                                              wrap_os_error, write_knob)
from supervisor.adapters.cgroup_groups import CgroupGroups
from supervisor.adapters.cgroup_stats import UsageFiles
from supervisor.adapters.systemd_units import SystemdError, SystemdUnits, systemd_booted
from supervisor.model.errors import CgroupError, CgroupNotFound

__all__ = ["CgroupFS", "CgroupLocation", "Resident", "UsageFiles", "V1_UNLIMITED",
           "parse_pressure", "parse_proc_cgroup", "read_text", "resident_of", "slice_path",
           "stat_value"]


# Knobs the daemon writes itself on a container (Docker owns the rest) and the unit
# property systemd keeps for each: under Docker's systemd driver the container's cgroup
# is systemd's scope docker-<id>.scope, and systemd writes a unit's cgroup attributes
# again from its own properties when it reloads or re-realizes the unit
# (systemd.resource-control(5)); a value it does not know of would go back to "max".
SCOPE_PROPERTIES = {"memory.high": "MemoryHigh"}


def docker_scope(rel: str) -> str | None:
    """The systemd scope a cgroup path is (``.../docker-<id>.scope``), else None."""
    leaf = rel.rstrip("/").rsplit("/", 1)[-1]
    return leaf if leaf.startswith("docker-") and leaf.endswith(".scope") else None


def _below(root: str, rel: str) -> str:
    rel = rel.strip("/")
    return f"{root}/{rel}" if rel else root


class CgroupFS(CgroupGroups):
    """Reads and writes cgroup files below ``root``; finds containers through ``proc``."""

    def __init__(self, root: str = "/sys/fs/cgroup", proc: str = "/proc",
                 units: SystemdUnits | None = None, systemd: bool | None = None):
        self.root = root
        self.proc = proc
        self.version = 2 if os.path.exists(os.path.join(root, "cgroup.controllers")) else 1
        # Knobs on systemd scopes are also set as unit properties (SCOPE_PROPERTIES) when
        # systemd owns this tree: by default, the host's own v2 tree with systemd as PID 1.
        if systemd is None:
            systemd = self.version == 2 and root == "/sys/fs/cgroup" and systemd_booted()
        self.units = (units or SystemdUnits()) if systemd else None
        self._v1_roots: dict[str, str] = {}
        self._unified_root: str | None = root
        if self.version == 1:
            self._v1_roots = {c: os.path.join(root, c) for c in V1_CONTROLLERS
                              if os.path.isdir(os.path.join(root, c))}
            u = os.path.join(root, "unified")
            mounted = os.path.exists(os.path.join(u, "cgroup.controllers"))
            self._unified_root = u if mounted else None

    # ------------------------------------------------------------------ locate

    def location(self, rel: str, paths: dict[str, str] | None = None) -> CgroupLocation:
        """The cgroup at ``rel`` in every hierarchy; on v1, ``paths`` (a process's
        /proc/PID/cgroup, parse_proc_cgroup) gives each controller's own path instead:
        a process may sit at a different path in each v1 hierarchy (a relative
        --cgroup-parent nests below dockerd's own cgroup, which differs per controller
        when dockerd itself sits in a nested memory cgroup)."""
        rel = "/" + rel.strip("/")
        if self.version == 2:
            d = self.root + rel
            return CgroupLocation(2, rel, {"unified": d}, d)
        paths = paths or {}
        dirs = {c: _below(r, paths.get(c, rel)) for c, r in self._v1_roots.items()}
        unified_rel = paths.get("unified", rel)
        # (the unified root's PSI is the whole host's, never a container's)
        psi = _below(self._unified_root, unified_rel) \
            if self._unified_root and unified_rel.strip("/") else None
        if psi and not os.path.exists(os.path.join(psi, "memory.pressure")):
            psi = None
        return CgroupLocation(1, rel, dirs, psi)

    def candidates(self, container_id: str, cgroup_parent: str = "") -> list[str]:
        """Relative paths where Docker puts a container, most likely first."""
        out = []
        if cgroup_parent:
            if cgroup_parent.endswith(".slice"):
                out.append(f"/{slice_path(cgroup_parent)}/docker-{container_id}.scope")
            else:
                out.append(f"/{cgroup_parent.strip('/')}/{container_id}")
        out += [f"/docker/{container_id}", f"/system.slice/docker-{container_id}.scope"]
        return out

    def locate(self, container_id: str, pid: int = 0, cgroup_parent: str = "") -> CgroupLocation:
        """A container's cgroup: from /proc/PID/cgroup when it has a PID, else by Docker's
        known layouts. Raises CgroupNotFound."""
        if pid > 0:
            try:
                paths = parse_proc_cgroup(read_text(f"{self.proc}/{pid}/cgroup"))
            except CgroupError:
                paths = {}
            rel = paths.get("unified") if self.version == 2 else paths.get("memory")
            if rel and rel != "/":
                loc = self.location(rel, paths)
                if os.path.isdir(loc.dir("memory")):
                    return loc
        probe = "unified" if self.version == 2 else "memory"
        base = self.root if self.version == 2 else self._v1_roots.get("memory", "")
        for rel in self.candidates(container_id, cgroup_parent):
            if os.path.isdir(base + rel):
                return self.location(rel)
        raise CgroupNotFound(f"{probe}:{container_id[:12]}", "no cgroup found for container")

    # -------------------------------------------------------------------- read

    # The hot counters (``open_usage``: their files opened once for reading every tick)
    # and everything else, for the periodic full read: cgroup_stats.py.
    read_usage = staticmethod(cgroup_stats.read_usage)
    open_usage = staticmethod(UsageFiles)
    read_stats = staticmethod(cgroup_stats.read_stats)

    def read_resident(self, loc: CgroupLocation) -> Resident:
        """What stays in memory that a reclaim cannot release without swap (resident_of)."""
        usage = self.read_usage(loc).memory_usage_bytes
        return resident_of(loc.version, self.read_file(loc, "memory", "memory.stat"), usage)

    # ------------------------------------------------------------------- write

    def write(self, path: str, value: str | int, nonblock: bool = False) -> None:
        """Write one cgroup knob. ``nonblock`` opens with O_NONBLOCK, which newer kernels
        honour for memory.max/memory.high by skipping the synchronous reclaim that can
        stall the writer. Older ones ignore the flag: on Debian's 6.1 the v2 lane measured
        the write reclaiming 41.5 -> 12.3 MiB before returning, so callers must not rely
        on the write being quick."""
        try:
            write_knob(path, value, os.O_WRONLY | (os.O_NONBLOCK if nonblock else 0))
        except OSError as e:
            raise wrap_os_error(path, e) from None

    def read_file(self, loc: CgroupLocation, controller: str, name: str) -> str:
        return read_text(f"{loc.dir(controller)}/{name}")

    def write_file(self, loc: CgroupLocation, controller: str, name: str, value: str | int,
                   nonblock: bool = False) -> None:
        """Write a knob. On a systemd scope whose knob systemd keeps as a property
        (SCOPE_PROPERTIES), the same value is then set as the scope's runtime property,
        so that a ``systemctl daemon-reload`` or a docker.service restart does not put
        systemd's own value back (issue 16). The file is written first, by us, with the
        caller's O_NONBLOCK: systemd's own write then finds usage already near the new
        value and does not stall PID 1 reclaiming."""
        self.write(f"{loc.dir(controller)}/{name}", value, nonblock=nonblock)
        prop = SCOPE_PROPERTIES.get(name)
        if prop and self.units is not None and (scope := docker_scope(loc.rel)):
            text = str(value).strip()
            try:
                self.units.set_properties(scope, {prop: "infinity" if text == "max" else text},
                                          runtime=True)
            except SystemdError as e:
                raise CgroupError(loc.dir(controller), f"{name} written, but systemd will not "
                                  f"keep it ({e})") from None

    def _write_may_refuse(self, path: str, value: str | int) -> bool:
        """Write a knob whose write the kernel may refuse for lack of reclaimable memory:
        False on EAGAIN/EBUSY (nothing is wrong with the cgroup), CgroupError otherwise."""
        try:
            write_knob(path, value)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EBUSY):
                return False
            raise wrap_os_error(path, e) from None
        return True

    def reclaim(self, loc: CgroupLocation, nbytes: int) -> bool:
        """v2: ask the kernel to reclaim ``nbytes`` from the cgroup now (memory.reclaim,
        Documentation/admin-guide/cgroup-v2.rst). True when all of it was reclaimed, False
        when the kernel reclaimed less (EAGAIN). v1 has no such file: see reclaim_by_limit."""
        if loc.version != 2:
            raise CgroupError(loc.dir("memory"), "memory.reclaim exists only on cgroup v2")
        return self._write_may_refuse(f"{loc.dir('memory')}/memory.reclaim", int(nbytes))

    def reclaim_by_limit(self, loc: CgroupLocation, target_bytes: int, restore_limit: str) -> bool:
        """v1's way to make the kernel reclaim a cgroup's memory: lower
        memory.limit_in_bytes to ``target_bytes`` (the kernel reclaims until usage fits,
        or refuses with EBUSY rather than OOM-kill when it cannot; cgroup-v1/memory.rst
        2.5 and mem_cgroup_resize_max), then write ``restore_limit`` back at once. True
        when usage fitted the target. The caller records ``restore_limit`` durably first:
        a crash between the two writes must not leave the lowered limit behind."""
        path = f"{loc.dir('memory')}/memory.limit_in_bytes"
        try:
            return self._write_may_refuse(path, int(target_bytes))
        finally:
            self.write(path, restore_limit)

    def controller_roots(self) -> dict[str, str]:
        return {"unified": self.root} if self.version == 2 else dict(self._v1_roots)

    def host_controllers(self) -> Iterable[str]:
        if self.version == 2:
            return read_text(f"{self.root}/cgroup.controllers").split()
        return list(self._v1_roots)
