"""Helpers of the production-host lane's tests (tests/host): the installed unit
(resource-supervisor.service, started by systemd as PID 1), its config file, runtime
drop-ins, the journal, supctl, and the lane's Docker engine (docker.service, systemd
cgroup driver).

Everything here acts on the real unit through systemctl/journalctl, the way an operator
would; a test that changes the unit's config or adds a drop-in gets it undone by the
fixtures in conftest.py.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Callable

UNIT = "resource-supervisor.service"
CONFIG = Path("/etc/resource-supervisor/supervisor.toml")
STATE_DIR = Path("/var/lib/resource-supervisor")
SOCKET = "/run/resource-supervisor/control.sock"
DROPIN_DIR = Path("/run/systemd/system/resource-supervisor.service.d")
SUPCTL = "/usr/local/bin/supctl"
CGROUP_ROOT = Path("/sys/fs/cgroup")
IN_LANE = os.environ.get("RS_HOST_LANE") == "1"
SKIP_REASON = ("needs the production-host lane (systemd as PID 1, resource-supervisor.service "
               "installed by scripts/install --system): run `bash scripts/host-lane/run`")


def run(*argv: str, check: bool = False, timeout: float = 120) -> subprocess.CompletedProcess:
    p = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p


def systemctl(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run("systemctl", "--no-pager", *args, check=check)


def show(prop: str, unit: str = UNIT) -> str:
    return systemctl("show", "-P", prop, unit).stdout.strip()


def main_pid() -> int:
    return int(show("MainPID") or 0)


def wait_for(pred: Callable[[], object], timeout: float = 60.0, interval: float = 0.25,
             what: str = "condition"):
    """The v2 lane's wait_for, with this lane's longer defaults (a unit under TCG)."""
    from _v2lib import wait_for as wait
    return wait(pred, timeout, interval, what)


def wait_active(timeout: float = 90.0) -> int:
    """Waits for the unit to be active (READY=1 seen) and returns its main PID."""
    wait_for(lambda: show("ActiveState") == "active" and main_pid() > 0, timeout,
             what=f"{UNIT} active")
    return main_pid()


def supctl(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run(SUPCTL, *args, check=check)


def status_json() -> dict:
    # (its exit code says how the host is: 3 a pool over budget, 6 a stalled loop...;
    # the body is the same whatever it is)
    p = supctl("status", "--json", check=False)
    assert p.stdout.startswith("{"), p
    return json.loads(p.stdout)


def journal(*match: str, since_cursor: str | None = None) -> list[dict]:
    """The unit's journal entries (journalctl -o json), optionally after a cursor."""
    argv = ["journalctl", "--no-pager", "-o", "json", "-u", UNIT]
    if since_cursor:
        argv += ["--after-cursor", since_cursor]
    p = run(*argv, *match, check=True)
    return [json.loads(line) for line in p.stdout.splitlines() if line.strip()]


def journal_cursor() -> str:
    p = run("journalctl", "--no-pager", "-o", "json", "-n", "1", check=True)
    lines = p.stdout.strip().splitlines()
    return json.loads(lines[-1])["__CURSOR"] if lines else ""


def write_dropin(name: str, text: str) -> Path:
    """A runtime drop-in (gone at reboot) for the unit; the caller daemon-reloads."""
    DROPIN_DIR.mkdir(parents=True, exist_ok=True)
    path = DROPIN_DIR / f"{name}.conf"
    path.write_text(text)
    return path


def cgroup_of_pid(pid: int) -> Path:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return CGROUP_ROOT / line[3:].lstrip("/")
    raise AssertionError(f"pid {pid} has no cgroup v2 line")
