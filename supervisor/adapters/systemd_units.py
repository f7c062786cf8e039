"""systemd's units, through systemd itself (issue 16): on a host where Docker uses its
systemd cgroup driver the cgroup tree belongs to systemd (systemd.resource-control(5),
"the single-writer rule" of https://systemd.io/CGROUP_DELEGATION/), so the daemon's pool
slices and a container scope's knobs are set as unit properties, never by writing the
tree behind systemd's back: systemd would put its own values back at the next
``daemon-reload`` or unit change.

It speaks systemctl (the command line of systemd's D-Bus API, present wherever systemd
is PID 1; no D-Bus library to install). The command runner is an argument, so the
parsing and the argument lists are tested without a host (tests/unit/test_systemd_units.py).
Every failure becomes a SystemdError.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from typing import Callable, Iterable

from supervisor.model.errors import SupervisorError

# (argv) -> (exit code, stdout, stderr)
Runner = Callable[[list[str]], tuple[int, str, str]]

SYSTEMD_RUN_DIR = "/run/systemd/system"  # exists iff systemd is PID 1 (sd_booted(3))
_UNIT_NAME = re.compile(r"^[A-Za-z0-9:_.\\-]+\.(slice|scope|service)$")


class SystemdError(SupervisorError):
    """systemctl failed, or systemd is not running."""


def subprocess_runner(timeout_s: float = 20.0) -> Runner:
    def run(argv: list[str]) -> tuple[int, str, str]:
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s,
                               env={**os.environ, "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"})
        except (OSError, subprocess.TimeoutExpired) as e:
            raise SystemdError(f"{argv[0]}: {e}") from None
        return p.returncode, p.stdout, p.stderr
    return run


def systemd_booted(run_dir: str = SYSTEMD_RUN_DIR) -> bool:
    return os.path.isdir(run_dir)


def parse_show(text: str) -> dict[str, str]:
    """``systemctl show -p A -p B UNIT`` output: one ``Key=value`` per line."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        k, sep, v = line.partition("=")
        if sep:
            out[k.strip()] = v.strip()
    return out


def bytes_or_none(value: str) -> int | None:
    """A memory property as systemctl shows it: bytes, or None for "infinity" / unset
    ([not set], and MemoryCurrent's 18446744073709551615 when accounting is off)."""
    if not value or not value.isdigit():
        return None
    n = int(value)
    return None if n >= 2**64 - 1 else n


def check_unit_name(name: str) -> str:
    if not _UNIT_NAME.match(name):
        raise SystemdError(f"not a slice, scope or service name: {name!r}")
    return name


@dataclass(frozen=True)
class SliceState:
    name: str
    active: bool
    memory_max_bytes: int | None  # None: no limit
    memory_current_bytes: int | None
    control_group: str  # below the hierarchy root, "" when the slice has no cgroup yet


class SystemdUnits:
    """Reads and sets unit properties through ``systemctl``."""

    def __init__(self, run: Runner | None = None, systemctl: str = "systemctl"):
        self._run = run or subprocess_runner()
        self._systemctl = systemctl

    def _call(self, *args: str) -> str:
        argv = [self._systemctl, "--no-pager", *args]
        code, out, err = self._run(argv)
        if code != 0:
            raise SystemdError(f"{' '.join(argv[1:])}: exit {code}: {(err or out).strip()[:300]}")
        return out

    def show(self, unit: str, props: Iterable[str]) -> dict[str, str]:
        args = ["show", check_unit_name(unit)]
        for p in props:
            args += ["-p", p]
        return parse_show(self._call(*args))

    def slice_state(self, name: str) -> SliceState:
        got = self.show(name, ("ActiveState", "MemoryMax", "MemoryCurrent", "ControlGroup"))
        return SliceState(name, got.get("ActiveState") == "active",
                          bytes_or_none(got.get("MemoryMax", "")),
                          bytes_or_none(got.get("MemoryCurrent", "")),
                          got.get("ControlGroup", ""))

    def set_properties(self, unit: str, props: dict[str, str], runtime: bool) -> None:
        """``systemctl set-property [--runtime] UNIT K=V...``: systemd applies them to
        the cgroup and keeps them across daemon-reload (a drop-in in
        /etc/systemd/system.control, or /run/... with ``runtime``)."""
        if not props:
            return
        args = ["set-property"] + (["--runtime"] if runtime else []) + [check_unit_name(unit)]
        self._call(*args, *(f"{k}={v}" for k, v in props.items()))

    def start(self, unit: str) -> None:
        """Start a unit; a slice needs no unit file (systemd.slice(5): created on use)."""
        self._call("start", check_unit_name(unit))
