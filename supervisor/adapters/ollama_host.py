"""Ollama running on the host, outside Docker: found by process name, its environment
read from /proc/PID/environ, and its cgroup judged before anything is written to it.

A CPU limit on a host process can only be a cgroup's CPU quota, and a cgroup's quota caps
every process in it. So the daemon writes one only where that caps Ollama and nothing
else (``cgroup_verdict``): never the root cgroup, never its own, never a cgroup shared
with other programs, and never a systemd unit's cgroup, whose limits systemd owns and
rewrites (there the operator is told the ``systemctl set-property`` to run). Anything
else is reported, not acted on. psutil errors and OSError end here as data.
"""

from __future__ import annotations

import contextlib
import logging
import re

import psutil

from supervisor.adapters.cgroups import CgroupFS, parse_proc_cgroup, read_text
from supervisor.model import rules
from supervisor.model.errors import CgroupError
from supervisor.model.ollama import HostProcess

log = logging.getLogger(__name__)

_CONTAINER_ID = re.compile(r"(^|[/-])[0-9a-f]{64}(\.scope)?$")
_SYSTEMD_UNIT = re.compile(r"\.(service|scope)$")


def in_container(paths: dict[str, str]) -> bool:
    """A process inside some container (this engine's or another's): its cgroup path ends
    in a 64-hex container id (cgroupfs ``/docker/<id>``, systemd ``docker-<id>.scope``)."""
    return any(_CONTAINER_ID.search(p.rstrip("/")) for p in paths.values() if p)


def cgroup_verdict(rel: str, members: list[tuple[int, str]], names: set[str],
                   own_rel: str) -> tuple[bool, str]:
    """May a CPU quota be written on cgroup ``rel`` to limit Ollama? ``members`` are the
    (pid, name) of every process in it."""
    rel = "/" + rel.strip("/")
    if rel == "/":
        return False, ("lives in the root cgroup: a CPU limit there would limit the whole "
                       "host; run Ollama in a cgroup of its own (e.g. a systemd unit)")
    if rel == "/" + own_rel.strip("/"):
        return False, f"shares the supervisor's own cgroup {rel}"
    others = sorted({n for _, n in members if n not in names})
    if others:
        return False, (f"shares cgroup {rel} with other programs ({', '.join(others[:5])}): "
                       "a limit there would cap them too")
    unit = rel.rsplit("/", 1)[-1]
    if _SYSTEMD_UNIT.search(unit):
        return False, (f"cgroup {rel} is systemd unit {unit}, whose limits systemd owns: run "
                       f"`systemctl set-property {unit} CPUQuota=<cores x 100>%`")
    return True, f"dedicated cgroup {rel}"


class HostOllama:
    """The door to host processes (psutil) and their cgroups (CgroupFS)."""

    def __init__(self, cgroups: CgroupFS, proc: str = "/proc"):
        self.cgroups = cgroups
        self.proc = proc
        if proc != "/proc":
            psutil.PROCFS_PATH = proc  # the daemon may see the host's /proc elsewhere

    def _paths(self, pid: int | str) -> dict[str, str]:
        try:
            return parse_proc_cgroup(read_text(f"{self.proc}/{pid}/cgroup"))
        except CgroupError:
            return {}

    def _quota_rel(self, paths: dict[str, str]) -> str:
        return paths.get("unified" if self.cgroups.version == 2 else "cpu", "")

    def _cpu_dir(self, rel: str) -> str:
        return self.cgroups.location(rel).dir("cpu")

    def scan(self, names: list[str] | tuple[str, ...]) -> list[HostProcess]:
        """Ollama servers on the host: processes named as configured whose parent is not
        one too (``ollama runner`` children belong to their server), outside containers."""
        wanted = set(names)
        found: dict[int, psutil.Process] = {}
        try:
            for p in psutil.process_iter(["name", "ppid"]):
                if p.info.get("name") in wanted:
                    found[p.pid] = p
        except (psutil.Error, OSError) as e:
            log.warning("cannot list host processes: %s", e)
            return []
        own_rel = self._quota_rel(self._paths("self"))
        out = []
        for pid, p in sorted(found.items()):
            if p.info.get("ppid") in found:
                continue
            paths = self._paths(pid)
            if not paths or in_container(paths):
                continue
            out.append(self._describe(p, paths, wanted, own_rel))
        return out

    def _describe(self, p: psutil.Process, paths: dict[str, str], wanted: set[str],
                  own_rel: str) -> HostProcess:
        errors = []
        try:
            env = dict(p.environ())
        except (psutil.Error, OSError) as e:
            env = {}
            errors.append(f"environment unreadable: {e}")
        cpu = 0.0
        with contextlib.suppress(psutil.Error, OSError):
            for q in [p, *p.children(recursive=True)]:
                try:
                    t = q.cpu_times()
                    cpu += t.user + t.system
                except (psutil.Error, OSError):
                    continue
        rel = self._quota_rel(paths)
        members: list[tuple[int, str]] = []
        limit = None
        try:
            d = self._cpu_dir(rel)
            for line in read_text(f"{d}/cgroup.procs").split():
                try:
                    members.append((int(line), psutil.Process(int(line)).name()))
                except (psutil.Error, ValueError, OSError):
                    continue
            limit = self.read_cpu_limit(rel)
        except CgroupError as e:
            errors.append(f"cgroup {rel} unreadable: {e.reason}")
        ok, note = cgroup_verdict(rel, members, wanted, own_rel)
        if ok and errors:
            ok, note = False, "; ".join(errors)
        return HostProcess(pid=p.pid, name=p.info.get("name") or "", env=env,
                           cpu_usage_s=cpu, cgroup_rel=rel, can_limit=ok, limit_note=note,
                           cpu_limit_cores=limit)

    # ---------------------------------------------------------------- CPU quota

    def read_cpu_limit(self, rel: str) -> float | None:
        """Cores of cgroup ``rel``'s CPU quota, None for none. Raises CgroupError."""
        d = self._cpu_dir(rel)
        try:
            if self.cgroups.version == 2:
                quota, _, period = read_text(f"{d}/cpu.max").strip().partition(" ")
                quota_us = -1 if quota == "max" else int(quota)
                period_us = int(period or rules.CPU_PERIOD_US)
            else:
                quota_us = int(read_text(f"{d}/cpu.cfs_quota_us").strip())
                period_us = int(read_text(f"{d}/cpu.cfs_period_us").strip())
            return rules.cpu_limit_cores(0, quota_us, period_us)
        except ValueError as e:
            raise CgroupError(d, f"unexpected CPU quota: {e}") from None

    def write_cpu_quota(self, rel: str, quota_us: int | None, period_us: int) -> None:
        """Write cgroup ``rel``'s CFS quota (None: no quota) over ``period_us``. The caller
        computes both (``rules.cpu_quota_us``, ``rules.CPU_PERIOD_US``): this only writes.
        Raises CgroupError."""
        d = self._cpu_dir(rel)
        if self.cgroups.version == 2:
            self.cgroups.write(f"{d}/cpu.max", f"{'max' if quota_us is None else quota_us} {period_us}")
            return
        try:
            period_now = int(read_text(f"{d}/cpu.cfs_period_us").strip())
        except ValueError as e:
            raise CgroupError(d, f"unexpected CPU period: {e}") from None
        if period_now != period_us:
            # Lift the quota first: the old quota over the new period could exceed what
            # the parent allows, and the kernel would refuse the period.
            self.cgroups.write(f"{d}/cpu.cfs_quota_us", -1)
            self.cgroups.write(f"{d}/cpu.cfs_period_us", period_us)
        self.cgroups.write(f"{d}/cpu.cfs_quota_us", -1 if quota_us is None else quota_us)
