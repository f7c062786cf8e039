"""Shared test harness.

Integration tests (marker ``engine``) run against the real, isolated test engine that
``scripts/test-engine`` starts (own socket, data root, cgroup parent; no bridge, no
iptables). When DOCKER_HOST is not set the session starts one itself and stops it at the
end. Containers are made from the locally imported ``rs-test/busybox`` image, run with
``--network none``, carry the label ``rs-test=<run id>``, and are removed afterwards; the
daemon under test is configured to manage only containers with that label, so nothing
else on the host is touched.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from _testkit import class_table, merge_sections

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "rs-test/busybox:latest"
RUN_ID = uuid.uuid4().hex[:10]
TEST_LABEL = "rs-test"

# The tests' one table of service classes, as most tests use them: infrastructure on
# core 0 and untouchable, critical on a core of its own, standard and batch (the lowest
# priority) sharing the standard pool. A test that needs something else derives it with
# class_table(), the override in sight.



def pytest_collection_modifyitems(config, items):
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.engine)


@pytest.fixture(scope="session")
def docker_host() -> str:
    """DOCKER_HOST of the isolated test engine, started here when not given."""
    if os.environ.get("DOCKER_HOST"):
        yield os.environ["DOCKER_HOST"]
        return
    env = dict(os.environ)
    env.setdefault("SUPERVISOR_TEST_ENGINE_DIR", f"/tmp/rs-test-engine-{os.getpid()}")
    out = subprocess.run([str(ROOT / "scripts" / "test-engine"), "start"], env=env,
                         capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        pytest.fail(f"test engine did not start:\n{out.stderr}")
    host = out.stdout.strip().split("=", 1)[1]
    os.environ["DOCKER_HOST"] = host
    yield host
    subprocess.run([str(ROOT / "scripts" / "test-engine"), "stop"], env=env, timeout=120)
    os.environ.pop("DOCKER_HOST", None)


@pytest.fixture(scope="session")
def docker_client(docker_host):
    import docker
    client = docker.DockerClient(base_url=docker_host, timeout=60)
    yield client
    for c in client.containers.list(all=True, filters={"label": f"{TEST_LABEL}={RUN_ID}"}):
        try:
            c.remove(force=True)
        except docker.errors.APIError:
            pass
    client.close()


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


@pytest.fixture
def containers(docker_client):
    f = Containers(docker_client)
    yield f
    f.cleanup()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def make_config(tmp_path, request):
    """Write a test config (exact layout, manages only this run's containers) and load it.
    Sections given as dicts are merged over the base."""
    from supervisor.model.config import HostFacts, load_config

    def make(extra: dict | None = None, host: HostFacts | None = None, **top):
        data = {
            "state_dir": str(tmp_path / "state"),
            "host": {"layout": "exact"},
            "pools": {"infrastructure": {"budget": "2GiB"}, "standard": {"budget": "2GiB"}},
            "classes": class_table("infrastructure", "standard"),
            "manage": {"require_labels": {TEST_LABEL: RUN_ID}, "default_class": "standard"},
            "docker": {"host": os.environ.get("DOCKER_HOST", "")},
            "intervals": {"tick": "0.2s", "reconcile": "1s"},
            # Pool cgroups would go under the host's cgroup root: a test turns them on
            # with a parent of its own (and removes it).
            "pool_cgroups": {"enabled": False},
            "metrics": {"listen": f"127.0.0.1:{free_port()}"},
            "control": {"socket": str(tmp_path / "control.sock")},
        }
        merge_sections(data, extra or {})
        data.update(top)
        path = tmp_path / f"config-{uuid.uuid4().hex[:6]}.toml"
        path.write_text(to_toml(data))
        return load_config(path, host=host), path
    return make





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
