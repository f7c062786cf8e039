"""Plain test data and helpers the tests share, in a module of its own name: the tests'
"conftest" is ambiguous once tests/v2 or tests/host (each has its own) is collected in the
same run (pytest imports each as "conftest", the last one wins), so test modules import
these from here, never from conftest."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "rs-test/busybox:latest"
RUN_ID = uuid.uuid4().hex[:10]
TEST_LABEL = "rs-test"


class Containers:
    """Factory for test containers; removes what it made."""

    def __init__(self, client):
        self.client = client
        self.made: list = []

    def run(self, name: str | None = None, command="sleep 3600", labels: dict | None = None,
            **kw):
        name = name or f"rs-{uuid.uuid4().hex[:8]}"
        lab = {TEST_LABEL: RUN_ID}
        lab.update(labels or {})
        kw.setdefault("network_mode", "none")
        if isinstance(command, str) and not command.startswith("/"):
            command = ["sh", "-c", command]
        c = self.client.containers.run(IMAGE, command, name=name, labels=lab, detach=True, **kw)
        self.made.append(c)
        return c

    def cleanup(self) -> None:
        import docker
        for c in self.made:
            try:
                c.remove(force=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError:
                pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def to_toml(data: dict, prefix: str = "") -> str:
    """A tiny TOML writer for test configs (tables, strings, numbers, bools, lists)."""
    import json
    scalars, tables = [], []
    for k, v in data.items():
        key = k if all(ch.isalnum() or ch in "_-" for ch in k) else json.dumps(k)
        if isinstance(v, dict):
            tables.append((key, v))
        else:
            scalars.append(f"{key} = {_toml_value(v)}")
    out = "\n".join(scalars) + "\n"
    for key, v in tables:
        name = f"{prefix}.{key}" if prefix else key
        if not v:
            out += f"[{name}]\n"
            continue
        out += f"\n[{name}]\n" + to_toml(v, name)
    return out


def _toml_value(v) -> str:
    import json
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v)} to TOML")


def wait_for(predicate, timeout_s: float = 10.0, interval_s: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what} (last: {last!r})")


def stop_process(proc: subprocess.Popen, timeout_s: float = 20.0) -> int | None:
    """SIGTERM to a child this process started (by its Popen, so by its PID), SIGKILL if
    it has not exited within ``timeout_s``; its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def proc_cpu_s(pid: int) -> float:
    """CPU seconds (utime + stime) process PID has used, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metrics_text(listen: str, timeout_s: float = 5.0) -> str:
    """One scrape of the daemon's /metrics at ``listen`` (host:port)."""
    with urllib.request.urlopen(f"http://{listen}/metrics", timeout=timeout_s) as r:
        return r.read().decode()


def metric_value(body: str, name: str, labels: str = "") -> float | None:
    """One sample's value from an exposition, e.g. metric_value(b, "x_total", 'kind="a"')."""
    want = f"{name}{{{labels}}}" if labels else name
    for line in body.splitlines():
        if line.startswith(want + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def remove_test_cgroup(parent: str) -> None:
    """Remove a parent cgroup a test made (in every hierarchy), once the engine has removed
    its containers' cgroups under it (a moment after they die); fails if it stays."""
    from supervisor.adapters.cgroups import CgroupFS
    from supervisor.model.errors import CgroupError
    fs = CgroupFS()
    for _ in range(50):
        try:
            fs.remove_group(f"/{parent}")
            break
        except CgroupError:
            time.sleep(0.1)
    assert not fs.group_exists(f"/{parent}")

# The tests' one table of service classes, as most tests use them: infrastructure on
# core 0 and untouchable, critical on a core of its own, standard and batch (the lowest
# priority) sharing the standard pool. A test that needs something else derives it with
# class_table(), the override in sight.
TEST_CLASSES = {
    "infrastructure": {"pool": "infrastructure", "cpuset": "0", "priority": 100,
                       "memory_limit": "128MiB", "protected": True, "hibernate": False},
    "critical": {"pool": "standard", "cpuset": "1", "memory_limit": "64MiB",
                 "memory_min": "8MiB"},
    "standard": {"pool": "standard", "cpuset": "any", "priority": 50,
                 "memory_limit": "64MiB", "memory_min": "8MiB"},
    "batch": {"pool": "standard", "cpuset": "any", "priority": 10,
              "memory_limit": "48MiB", "memory_min": "8MiB"},
}


def class_table(*names: str, **over: dict) -> dict:
    """Classes of TEST_CLASSES (those named, or all), each with its override in ``over``
    laid over the table's settings: ``class_table("infrastructure", "standard",
    standard={"cpuset": "1"})``. Fresh dicts, the test may change them."""
    names = names or tuple(TEST_CLASSES)
    assert set(over) <= set(names), f"an override for a class not asked for: {set(over) - set(names)}"
    return {n: {**TEST_CLASSES[n], **over.get(n, {})} for n in names}


def merge_sections(data: dict, over: dict) -> dict:
    """Merge ``over`` into ``data`` in place: a section given as a dict is merged over the
    one in ``data`` (one level deep); anything else replaces it."""
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(data.get(k), dict):
            merged = dict(data[k])
            merged.update(v)
            data[k] = merged
        else:
            data[k] = v
    return data
