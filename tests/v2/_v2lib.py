"""Helpers of the cgroup v2 lane's tests (tests/v2): cgroupfs parsing, the busybox test
image, and a container starter that labels (rs-test=1) and removes what it starts."""

from __future__ import annotations

import io
import os
import shutil
import sys
import tarfile
import time
import uuid
from pathlib import Path
from typing import Callable

import pytest

CGROUP_ROOT = Path("/sys/fs/cgroup")
IS_V2 = (CGROUP_ROOT / "cgroup.controllers").exists()
IN_LANE = os.environ.get("RS_V2_LANE") == "1"
TEST_IMAGE = "rs-test/busybox:latest"
TEST_LABEL = {"rs-test": "1"}
V2_DIR = Path(__file__).parent
_MiB = 1024 * 1024

# The daemon harness is the integration tests' own (tests/_harness.py), loaded from the
# tests folder whether or not the lane's pytest put it on the path.
if str(V2_DIR.parent) not in sys.path:
    sys.path.append(str(V2_DIR.parent))
from _harness import daemon_stepped, daemon_thread  # noqa: E402

__all__ = ["CGROUP_ROOT", "IN_LANE", "IS_V2", "SKIP_REASON", "TEST_IMAGE", "TEST_LABEL", "V2_DIR",
           "Containers", "cgroup_of_pid", "daemon_stepped", "daemon_thread", "kv",
           "page_cache_container", "parse_pressure", "read", "wait_for", "write"]

SKIP_REASON = (
    "not a cgroup v2 host (/sys/fs/cgroup/cgroup.controllers missing): "
    "run `bash scripts/v2-lane/run` to prove these on a v2 kernel"
)


# --- cgroupfs helpers ----------------------------------------------------------------------


def read(path: Path | str) -> str:
    return Path(path).read_text().strip()


def write(path: Path | str, value: str) -> None:
    # one write() per value: cgroupfs files parse one write at a time
    with open(path, "w") as f:
        f.write(value)


def kv(path: Path | str) -> dict[str, int]:
    """Parse a flat keyed file (memory.stat, memory.events, cgroup.events, cpu.stat)."""
    out: dict[str, int] = {}
    for line in read(path).splitlines():
        k, _, v = line.partition(" ")
        out[k] = int(v)
    return out


def parse_pressure(path: Path | str) -> dict[str, dict[str, float]]:
    """Parse a PSI file: {'some': {'avg10':..,'avg60':..,'avg300':..,'total':..}, 'full': {...}}."""
    out: dict[str, dict[str, float]] = {}
    for line in read(path).splitlines():
        kind, *fields = line.split()
        out[kind] = {k: float(v) for k, v in (f.split("=", 1) for f in fields)}
    return out


def cgroup_of_pid(pid: int) -> Path:
    """The v2 cgroup folder of a process, from /proc/PID/cgroup ('0::/docker/<id>')."""
    for line in read(f"/proc/{pid}/cgroup").splitlines():
        hid, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hid == "0" and controllers == "":
            return CGROUP_ROOT / path.lstrip("/")
    raise AssertionError(f"pid {pid} has no v2 cgroup line: {read(f'/proc/{pid}/cgroup')!r}")


def wait_for(pred: Callable[[], object], timeout: float = 30.0, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def page_cache_container(containers, mib: int = 40, mem_limit: str = "256m"):
    """A container that wrote `mib` MiB to its writable layer and synced: clean page cache
    charged to its cgroup (reclaimable without swap, unlike tmpfs)."""
    c = containers.run(f"dd if=/dev/zero of=/data/fill bs=1M count={mib} 2>/dev/null && sync && sleep 3600",
                       mem_limit=mem_limit)
    cg = containers.cgroup(c)

    def ready():
        st = kv(cg / "memory.stat")
        return st["file"] >= (mib - 2) * _MiB and st["file_dirty"] == 0 and st["file_writeback"] == 0 and st

    st = wait_for(ready, timeout=120, interval=0.25, what=f"{mib} MiB of clean page cache")
    return c, cg, st


# --- docker ------------------------------------------------------------------------------------


def _busybox_image_tar() -> bytes:
    """A tar of bin/busybox (busybox-static) + applet symlinks, for `docker import`."""
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.fail("busybox (busybox-static) is needed to build the test image")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in ("bin", "tmp", "data", "etc", "proc", "sys", "dev"):
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        tar.add(busybox, arcname="bin/busybox")
        for applet in ("sh", "sleep", "httpd", "nc", "dd", "cat", "wget", "sync", "ls", "head", "rm", "true"):
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type = tarfile.SYMTYPE
            info.linkname = "busybox"
            tar.addfile(info)
    return buf.getvalue()


class Containers:
    """Starts busybox containers (--network none, label rs-test=1) and removes them."""

    def __init__(self, client) -> None:
        self.client = client
        self.started: list = []

    def run(self, command: str = "sleep 3600", **kwargs):
        labels = {**TEST_LABEL, **kwargs.pop("labels", {})}
        name = kwargs.pop("name", f"rs-test-{uuid.uuid4().hex[:10]}")
        c = self.client.containers.run(
            TEST_IMAGE,
            ["sh", "-c", command],
            name=name,
            detach=True,
            network_mode="none",
            labels=labels,
            **kwargs,
        )
        self.started.append(c)
        c.reload()
        return c

    def cgroup(self, container) -> Path:
        container.reload()
        pid = container.attrs["State"]["Pid"]
        assert pid, f"container {container.name} is not running: {container.attrs['State']}"
        path = cgroup_of_pid(pid)
        assert path.is_dir(), path
        return path

    def cleanup(self) -> None:
        for c in self.started:
            try:
                c.remove(force=True)
            except Exception:  # noqa: BLE001
                pass
        self.started.clear()


def _rmdir_retry(path: Path) -> None:
    for _ in range(50):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)
