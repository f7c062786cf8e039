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
import subprocess
import uuid

import pytest

from _testkit import (ROOT, RUN_ID, TEST_LABEL, Containers, class_table, free_port,
                      merge_sections, to_toml)



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


@pytest.fixture
def containers(docker_client):
    f = Containers(docker_client)
    yield f
    f.cleanup()


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
            # Limits at once: these busybox containers have no warm-up, and the tests are of
            # what placement writes. The settle itself has tests of its own
            # (test_placement.py: a service that warms up after its start).
            "history": {"settle": "0s"},
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
