"""The lab service images (scripts/lab-images) on the real test engine: PostgreSQL 15,
Redis 7, the Python agent and the Ollama-shaped server, each run with ``--network none``
and its image's Rule 2.2 health check (interval shortened), become healthy and answer a
real client. Clients run on the host from the cached root filesystem, inside the
container's own network namespace (``nsenter -t PID -n chroot ROOTFS ...``): every byte of
test traffic stays on that namespace's loopback.

The images are built (or loaded from the cached rootfs) by ``scripts/test`` after the
test engine starts; the ``lab`` fixture does it too when they are missing, and fails,
never skips, when they cannot be built: these tests exist to prove the real services.

The helpers here (``lab``, ``lab_run``, ``LabImages.in_ns``/``psql``/``redis``/``http``)
are meant for the other real-service tests as well.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from _testkit import ROOT, RUN_ID, TEST_LABEL, wait_for
from supervisor.adapters.cgroups import CgroupFS

MIB = 2**20
BUILD = ROOT / "scripts" / "lab-images" / "build"
NAMES = ("lab/base", "lab/postgres", "lab/redis", "lab/agent", "lab/ollama")
RECIPE_LABEL = "org.resource-supervisor.lab.recipe"
# the images carry Rule 2.2's 30 s checks; tests keep the check and shorten its timing
FAST_HEALTH = {"interval": 300_000_000, "timeout": 5_000_000_000, "retries": 3,
               "start_period": 0}
AGENT_PORT = 10210
OLLAMA_PORT = 11434


@dataclass(frozen=True)
class LabImages:
    """The built images' cache entry: ``rootfs`` is the tree clients run from."""

    entry: Path
    rootfs: Path
    pg_bin: str  # e.g. /usr/lib/postgresql/15/bin, inside rootfs

    def in_ns(self, container, *argv: str, timeout_s: float = 20) -> subprocess.CompletedProcess:
        """A client from the rootfs, run in the container's network namespace only."""
        container.reload()
        pid = container.attrs["State"]["Pid"]
        assert pid > 0, f"{container.name} is not running"
        env = {"PATH": f"{self.pg_bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "LANG": "C.UTF-8",
               "HOME": "/nonexistent"}
        return subprocess.run(["nsenter", "-t", str(pid), "-n", "chroot", str(self.rootfs), *argv],
                              capture_output=True, text=True, timeout=timeout_s, env=env)

    def psql(self, container, sql: str, port: int = 5432) -> subprocess.CompletedProcess:
        return self.in_ns(container, f"{self.pg_bin}/psql", "-h", "127.0.0.1", "-p", str(port),
                          "-U", "postgres", "-XAtqc", sql)

    def redis(self, container, *args: str, port: int = 6379) -> subprocess.CompletedProcess:
        return self.in_ns(container, "redis-cli", "-h", "127.0.0.1", "-p", str(port), *args)

    def http(self, container, method: str, port: int, path: str, body=None,
             timeout_s: float = 20) -> tuple[int, str]:
        """(status, body) of one HTTP request to 127.0.0.1:port in the container's
        namespace; status 0 when nothing answered."""
        argv = ["curl", "-sS", "-m", str(timeout_s), "-X", method, "-o", "-", "-w", "\n%{http_code}",
                f"http://127.0.0.1:{port}{path}"]
        if body is not None:
            argv += ["-H", "Content-Type: application/json", "--data-binary", json.dumps(body)]
        r = self.in_ns(container, *argv, timeout_s=timeout_s + 5)
        text, _, code = r.stdout.rpartition("\n")
        return (int(code) if code.isdigit() else 0), text


def build_lab_images(docker_host: str) -> LabImages:
    """scripts/lab-images/build: a no-op when the engine has the current images."""
    env = dict(os.environ, DOCKER_HOST=docker_host)
    out = subprocess.run(["bash", str(BUILD)], env=env, capture_output=True, text=True,
                         timeout=1800)
    if out.returncode != 0:
        pytest.fail("the lab images could not be built (scripts/lab-images/build):\n"
                    + out.stderr[-4000:], pytrace=False)
    entry = Path(subprocess.run(["bash", str(BUILD), "--print-dir"], env=env, capture_output=True,
                                text=True, check=True).stdout.strip())
    info = dict(line.split("=", 1) for line in (entry / "build-info").read_text().splitlines()
                if "=" in line)
    return LabImages(entry, entry / "rootfs", f"/usr/lib/postgresql/{info['postgres_major']}/bin")


@pytest.fixture(scope="session")
def lab(docker_host) -> LabImages:
    return build_lab_images(docker_host)


@pytest.fixture
def lab_run(docker_client, lab):
    """Create and start a lab container (``--network none``, this run's test label, the
    image's health check with FAST_HEALTH timing); removed afterwards. Returns the
    container; ``started_at[c.id]`` is the monotonic time its start returned."""
    made = []

    def run(image: str, command=None, healthcheck: dict | None = None, **kw):
        labels = {TEST_LABEL: RUN_ID, **kw.pop("labels", {})}
        c = docker_client.containers.create(
            image, command, name=kw.pop("name", f"rs-lab-{uuid.uuid4().hex[:8]}"), labels=labels,
            network_mode="none", healthcheck=FAST_HEALTH if healthcheck is None else healthcheck,
            **kw)
        made.append(c)
        c.start()
        run.started_at[c.id] = time.monotonic()
        return c

    run.started_at = {}
    yield run
    import docker
    for c in made:
        try:
            c.remove(force=True)
        except docker.errors.APIError:
            pass


def health(c) -> str:
    c.reload()
    return (c.attrs["State"].get("Health") or {}).get("Status", "none")


def wait_healthy(c, timeout_s: float = 60) -> None:
    wait_for(lambda: health(c) == "healthy", timeout_s, 0.1, what=f"{c.name} healthy")


def ready_after(start: float, probe, timeout_s: float = 60, interval_s: float = 0.02) -> float:
    """Seconds from ``start`` until ``probe()`` first succeeds."""
    wait_for(probe, timeout_s, interval_s, what="first answer")
    return time.monotonic() - start


def cgroup_usage(c):
    c.reload()
    fs = CgroupFS()
    return fs.read_usage(fs.locate(c.id, c.attrs["State"]["Pid"]))


# ---------------------------------------------------------------------------- images

def test_images_are_loaded_once_from_the_cached_rootfs(docker_client, docker_host, lab):
    assert (lab.entry / "built.ok").is_file() and (lab.rootfs / "usr/bin/redis-cli").is_file()
    images = {n: docker_client.images.get(n) for n in NAMES}
    recipes = {img.labels.get(RECIPE_LABEL) for img in images.values()}
    assert len(recipes) == 1 and None not in recipes
    assert recipes.pop().startswith(lab.entry.name + "-")
    # one Debian layer under every name: the engine unpacked the tree once
    assert len({img.attrs["RootFS"]["Layers"][0] for img in images.values()}) == 1
    assert images["lab/postgres"].attrs["Config"]["Cmd"] == ["/usr/local/bin/lab-postgres"]
    assert images["lab/agent"].attrs["Config"]["Healthcheck"]["Interval"] == 30_000_000_000

    ids = {n: img.id for n, img in images.items()}
    build_lab_images(docker_host)  # current: nothing is loaded again
    assert {n: docker_client.images.get(n).id for n in NAMES} == ids

    docker_client.images.remove("lab/base:latest")  # an engine missing one name
    build_lab_images(docker_host)
    assert {n: docker_client.images.get(n).id for n in NAMES} == ids


# ---------------------------------------------------------------------------- services

def test_postgres_answers_select_1_in_its_own_namespace(lab, lab_run):
    pg = lab_run("lab/postgres")
    took_s = ready_after(lab_run.started_at[pg.id], lambda: lab.psql(pg, "select 1").stdout == "1\n")
    print(f"\nlab/postgres: start -> select 1 answered in {took_s * 1000:.0f} ms (initdb included)")
    wait_healthy(pg)
    r = lab.psql(pg, "select current_setting('server_version_num')::int / 10000, "
                     "current_setting('listen_addresses')")
    assert r.stdout == "15|127.0.0.1\n", r.stderr
    # the same server answers again after a restart, on the data it made
    lab.psql(pg, "create table kept (v int); insert into kept values (42)")
    pg.restart(timeout=30)
    wait_for(lambda: lab.psql(pg, "select v from kept").stdout == "42\n", 60, 0.05,
             what="postgres after restart")


def test_redis_answers_ping_in_its_own_namespace(lab, lab_run):
    rd = lab_run("lab/redis")
    took_s = ready_after(lab_run.started_at[rd.id], lambda: lab.redis(rd, "ping").stdout == "PONG\n")
    print(f"\nlab/redis: start -> PONG in {took_s * 1000:.0f} ms")
    wait_healthy(rd)
    info = lab.redis(rd, "info", "server").stdout
    assert "redis_version:7." in info
    assert lab.redis(rd, "config", "get", "bind").stdout.split() == ["bind", "127.0.0.1"]
    # DEBUG POPULATE is allowed from loopback: a test can fill it fast
    before = cgroup_usage(rd).memory_usage_bytes
    assert lab.redis(rd, "debug", "populate", "20000", "k", "1024").stdout.strip() == "OK"
    assert lab.redis(rd, "dbsize").stdout == "20000\n"
    assert cgroup_usage(rd).memory_usage_bytes - before > 16 * MIB


def test_agent_health_metrics_and_behaviours(lab, lab_run):
    ag = lab_run("lab/agent", environment={"AGENT_LEAK_MB_PER_S": "16", "AGENT_LEAK_MAX_MB": "48",
                                           "AGENT_STEADY_MS": "300", "AGENT_BURST_MS": "600",
                                           "AGENT_BURST_EVERY_S": "1"})
    took_s = ready_after(lab_run.started_at[ag.id],
                         lambda: lab.http(ag, "GET", AGENT_PORT, "/health") == (200, "ok\n"))
    print(f"\nlab/agent: start -> /health in {took_s * 1000:.0f} ms")
    wait_healthy(ag)
    code, body = lab.http(ag, "GET", AGENT_PORT, "/")
    assert code == 200 and json.loads(body)["behaviour"] == "idle"
    code, metrics = lab.http(ag, "GET", AGENT_PORT, "/metrics")
    assert code == 200 and "lab_agent_held_bytes 0\n" in metrics
    assert 'lab_agent_requests_total{path="/health"}' in metrics
    assert lab.http(ag, "POST", AGENT_PORT, "/behaviour?mode=sleepy")[0] == 400
    code, body = lab.http(ag, "GET", AGENT_PORT, "/bytes?n=100000")
    assert code == 200 and len(body) == 100000
    t0 = time.monotonic()
    code, body = lab.http(ag, "GET", AGENT_PORT, "/slow?seconds=1&bytes=2000")
    assert code == 200 and len(body) == 2000 and time.monotonic() - t0 >= 0.9

    # leaking: the container's memory cgroup grows by what the agent holds
    base = cgroup_usage(ag).memory_usage_bytes
    assert lab.http(ag, "POST", AGENT_PORT, "/behaviour?mode=leaking") == (200, '{"behaviour": "leaking"}\n')
    wait_for(lambda: cgroup_usage(ag).memory_usage_bytes - base >= 44 * MIB, 20, 0.2,
             what="leak in the cgroup")
    code, metrics = lab.http(ag, "GET", AGENT_PORT, "/metrics")
    assert f"lab_agent_held_bytes {48 * MIB}\n" in metrics  # capped at AGENT_LEAK_MAX_MB
    assert 'lab_agent_behaviour{mode="leaking"} 1' in metrics
    code, body = lab.http(ag, "POST", AGENT_PORT, "/release")
    assert code == 200 and json.loads(body)["released_bytes"] == 48 * MIB
    wait_for(lambda: cgroup_usage(ag).memory_usage_bytes - base < 16 * MIB, 20, 0.2,
             what="memory returned")

    # steady burns CPU every second; idle does not
    assert lab.http(ag, "POST", AGENT_PORT, "/behaviour?mode=steady")[0] == 200
    cpu0 = cgroup_usage(ag).cpu_usage_s
    time.sleep(2.0)
    steady_s = cgroup_usage(ag).cpu_usage_s - cpu0
    assert lab.http(ag, "POST", AGENT_PORT, "/behaviour?mode=idle")[0] == 200
    time.sleep(1.2)  # a burn of the second steady was in when the switch came ends first
    cpu1 = cgroup_usage(ag).cpu_usage_s
    time.sleep(2.0)
    idle_s = cgroup_usage(ag).cpu_usage_s - cpu1
    assert lab.http(ag, "POST", AGENT_PORT, "/behaviour?mode=bursty")[0] == 200
    cpu2 = cgroup_usage(ag).cpu_usage_s
    time.sleep(2.0)
    bursty_s = cgroup_usage(ag).cpu_usage_s - cpu2
    assert steady_s >= 0.4, steady_s
    assert idle_s < 0.15, idle_s
    assert bursty_s >= 0.6, bursty_s
    code, metrics = lab.http(ag, "GET", AGENT_PORT, "/metrics")
    assert 'lab_agent_behaviour{mode="bursty"} 1' in metrics
    assert "lab_agent_behaviour_switches_total 4\n" in metrics

    # PID 1 handles SIGTERM: `docker stop` does not wait for its timeout
    t0 = time.monotonic()
    ag.stop(timeout=20)
    assert time.monotonic() - t0 < 5
    ag.reload()
    assert ag.attrs["State"]["ExitCode"] == 0


def test_ollama_api_shapes_and_real_cpu(lab, lab_run):
    ol = lab_run("lab/ollama", environment={"LAB_OLLAMA_MS_PER_TOKEN": "5"})
    took_s = ready_after(lab_run.started_at[ol.id],
                         lambda: lab.http(ol, "GET", OLLAMA_PORT, "/")[0] == 200)
    print(f"\nlab/ollama: start -> / in {took_s * 1000:.0f} ms")
    wait_healthy(ol)
    code, body = lab.http(ol, "GET", OLLAMA_PORT, "/api/tags")
    assert code == 200 and "llama3.2:1b" in [m["name"] for m in json.loads(body)["models"]]
    assert lab.http(ol, "GET", OLLAMA_PORT, "/api/ps") == (200, '{"models": []}')

    cpu0 = cgroup_usage(ol).cpu_usage_s
    code, body = lab.http(ol, "POST", OLLAMA_PORT, "/api/generate",
                          {"model": "llama3.2:1b", "prompt": "why is the sky blue?",
                           "stream": False, "options": {"num_predict": 100}})
    burned_s = cgroup_usage(ol).cpu_usage_s - cpu0
    assert code == 200, body
    answer = json.loads(body)
    assert answer["done"] is True and answer["done_reason"] == "stop"
    assert answer["eval_count"] == 100 and answer["response"]
    assert answer["model"] == "llama3.2:1b" and answer["load_duration"] > 0
    assert burned_s >= 0.45, burned_s  # 100 tokens x 5 ms of real CPU in the container

    code, body = lab.http(ol, "GET", OLLAMA_PORT, "/api/ps")
    (loaded,) = json.loads(body)["models"]
    assert loaded["name"] == "llama3.2:1b" and loaded["expires_at"] and loaded["size"] > 0

    # the default is a stream: NDJSON pieces, then the final object
    code, body = lab.http(ol, "POST", OLLAMA_PORT, "/api/generate",
                          {"model": "llama3.2:1b", "prompt": "hi", "options": {"num_predict": 5}})
    lines = [json.loads(x) for x in body.splitlines()]
    assert code == 200 and [x["done"] for x in lines] == [False] * 5 + [True]

    code, body = lab.http(ol, "POST", OLLAMA_PORT, "/api/generate",
                          {"model": "llama3.2:1b", "keep_alive": 0})
    assert code == 200 and json.loads(body)["done_reason"] == "unload"
    assert lab.http(ol, "GET", OLLAMA_PORT, "/api/ps") == (200, '{"models": []}')
    assert lab.http(ol, "POST", OLLAMA_PORT, "/api/generate",
                    {"model": "nope:1b", "prompt": "x"})[0] == 404

    # a model unloads by itself when its keep_alive runs out
    code, body = lab.http(ol, "POST", OLLAMA_PORT, "/api/generate",
                          {"model": "qwen2.5:0.5b", "keep_alive": "1s"})
    assert code == 200 and json.loads(body)["done_reason"] == "load"
    assert "qwen2.5:0.5b" in lab.http(ol, "GET", OLLAMA_PORT, "/api/ps")[1]
    wait_for(lambda: lab.http(ol, "GET", OLLAMA_PORT, "/api/ps") == (200, '{"models": []}'),
             10, 0.2, what="keep_alive expiry")
