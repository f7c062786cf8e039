"""The cgroups the daemon makes itself (a pool's parent cgroup, issue 3): creating one
with its ancestors and the controllers its subtree needs, removing one, and reading and
setting a pool group's memory limit. ``CgroupFS`` inherits these methods: they use its
``root``, ``version``, ``_v1_roots``, ``location`` and ``write``."""

from __future__ import annotations

import os
from typing import Any, Callable

from supervisor.adapters.cgroup_files import (V1_UNLIMITED, CgroupLocation, parse_flat_keyed,
                                              read_int, read_text, wrap_os_error)
from supervisor.model.errors import CgroupError


def _dir_op(op: Callable[[str], None], d: str, fine: type[OSError]) -> None:
    """``op(d)`` (os.mkdir, os.rmdir): ``fine`` is no error, any other OSError a
    CgroupError."""
    try:
        op(d)
    except fine:
        pass
    except OSError as e:
        raise wrap_os_error(d, e) from None


def memory_files(version: int) -> dict[str, str]:
    """A group's memory limit, usage and peak files."""
    if version == 2:
        return {"limit": "memory.max", "usage": "memory.current", "peak": "memory.peak"}
    return {"limit": "memory.limit_in_bytes", "usage": "memory.usage_in_bytes",
            "peak": "memory.max_usage_in_bytes"}


class CgroupGroups:
    """Groups below ``root`` (v2) or below each controller's root (v1)."""

    def read_group(self, loc: CgroupLocation) -> dict[str, Any]:
        """A group of ours: limit, usage, peak, limit hits, OOM kills. Raises CgroupError."""
        d = loc.dir("memory")
        f = memory_files(loc.version)
        limit = read_int(f"{d}/{f['limit']}")
        out: dict[str, Any] = {
            "limit_bytes": None if limit < 0 or limit >= V1_UNLIMITED else limit,
            "usage_bytes": read_int(f"{d}/{f['usage']}"),
        }
        try:
            out["peak_bytes"] = read_int(f"{d}/{f['peak']}")
        except CgroupError:
            out["peak_bytes"] = None  # memory.peak is new in 5.19
        if loc.version == 2:
            ev = parse_flat_keyed(read_text(f"{d}/memory.events"))
            out["limit_hits"] = ev.get("max", 0)
            out["oom_kills"] = ev.get("oom_kill", 0)
        else:
            out["limit_hits"] = read_int(f"{d}/memory.failcnt")
            out["oom_kills"] = parse_flat_keyed(
                read_text(f"{d}/memory.oom_control")).get("oom_kill", 0)
        return out

    def set_group_limit(self, loc: CgroupLocation, limit_bytes: int) -> None:
        """A group of ours: its memory limit. O_NONBLOCK: v2 memory.max does not stall the
        caller in reclaim (on kernels that honour it; see CgroupFS.write)."""
        self.write(f"{loc.dir('memory')}/{memory_files(loc.version)['limit']}",
                   int(limit_bytes), nonblock=True)

    def group_exists(self, rel: str) -> bool:
        base = self.root if self.version == 2 else self._v1_roots.get("memory", "")
        return bool(base) and os.path.isdir(base + "/" + rel.strip("/"))

    def make_group(self, rel: str, subtree: tuple[str, ...] = ()) -> CgroupLocation:
        """Create the cgroup ``rel`` and its missing ancestors (a pool's parent cgroup).

        v2: every level we walk gets those of ``subtree`` its cgroup.controllers offers
        enabled in cgroup.subtree_control, so the level below (and the containers Docker
        starts there with --cgroup-parent) have memory.max, cpu.max, cpuset.cpus
        (Documentation/admin-guide/cgroup-v2.rst, "Enabling and Disabling"). The host's
        root is never written. v1: the directory is made in every controller hierarchy;
        a new cpuset group starts with empty cpuset.cpus/mems, in which no task may run
        (cgroup-v1/cpusets.rst), so both are copied from the parent level by level."""
        parts = [p for p in rel.strip("/").split("/") if p]
        if not parts:
            raise CgroupError(self.root, "refusing to treat the root as a group of our own")
        if self.version == 2:
            d = self.root
            for p in parts:
                d = f"{d}/{p}"
                _dir_op(os.mkdir, d, FileExistsError)
                if subtree:
                    self._enable_subtree(d, subtree)
        else:
            seen: set[str] = set()
            for ctrl, root in self._v1_roots.items():
                real = os.path.realpath(root)  # cpu and cpuacct are often one mount
                if real in seen:
                    continue
                seen.add(real)
                d = root
                for p in parts:
                    parent, d = d, f"{d}/{p}"
                    _dir_op(os.mkdir, d, FileExistsError)
                    if ctrl == "cpuset":
                        for name in ("cpuset.cpus", "cpuset.mems"):
                            if not read_text(f"{d}/{name}").strip():
                                self.write(f"{d}/{name}", read_text(f"{parent}/{name}").strip())
        return self.location("/" + "/".join(parts))

    def remove_group(self, rel: str) -> None:
        """Remove ``rel`` and every empty cgroup below it, in every hierarchy mounted
        under the root (Docker's cgroupfs driver also makes the --cgroup-parent path in
        devices, freezer, name=systemd...). A group that still holds tasks raises
        CgroupError (EBUSY); one already gone is fine."""
        tail = rel.strip("/")
        if not tail:
            raise CgroupError(self.root, "refusing to remove the root")
        if self.version == 2:
            bases = [self.root]
        else:
            try:
                bases = sorted(f"{self.root}/{n}" for n in os.listdir(self.root))
            except OSError as e:
                raise wrap_os_error(self.root, e) from None
        seen: set[str] = set()
        for base in bases:
            top = os.path.realpath(f"{base}/{tail}")
            if top in seen or not os.path.isdir(top):
                continue
            seen.add(top)
            for d, _, _ in os.walk(top, topdown=False):  # children before their parent
                _dir_op(os.rmdir, d, FileNotFoundError)

    def _enable_subtree(self, d: str, wanted: tuple[str, ...]) -> None:
        offered = set(read_text(f"{d}/cgroup.controllers").split())
        enabled = set(read_text(f"{d}/cgroup.subtree_control").split())
        for c in wanted:
            if c in offered and c not in enabled:
                # One controller per write: a write naming one the kernel refuses would
                # otherwise leave the others unset too.
                self.write(f"{d}/cgroup.subtree_control", f"+{c}")
