"""Fixtures for the cgroup v2 lane (scripts/v2-lane/run boots a v2 kernel and runs these).

Every test in this directory is marked ``cgroup_v2``. On a host without a unified
cgroup v2 hierarchy at /sys/fs/cgroup (the cgroup v1 development machines), the whole
directory is skipped with a reason, so a plain ``pytest`` on such a host stays green.

Inside the lane's guest (``RS_V2_LANE=1``) nothing is skipped: a missing engine or image
is an error, since the lane is the only proof of the v2 behaviour.
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from _v2lib import (  # noqa: E402
    CGROUP_ROOT, IS_V2, SKIP_REASON, TEST_IMAGE, V2_DIR, Containers, _busybox_image_tar,
    _rmdir_retry,
)


def pytest_configure(config: pytest.Config) -> None:
    # declared in pyproject.toml too; registering here keeps --strict-markers happy
    # when this directory is run on its own
    config.addinivalue_line("markers", "cgroup_v2: runs only on a cgroup v2 host (scripts/v2-lane)")


@pytest.hookimpl(tryfirst=True)  # before -m selection sees the items
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        try:
            Path(str(item.fspath)).resolve().relative_to(V2_DIR.resolve())
        except ValueError:
            continue
        item.add_marker(pytest.mark.cgroup_v2)
        if not IS_V2:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def docker_client():
    """Docker SDK client from DOCKER_HOST (the lane's dockerd in the guest)."""
    import docker

    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except Exception as exc:  # noqa: BLE001
        # Only collected on a v2 host (the lane): there, no engine is an error, not a skip.
        pytest.fail(f"no docker engine reachable (DOCKER_HOST={os.environ.get('DOCKER_HOST')}): {exc}")
    info = client.info()
    if str(info.get("CgroupVersion")) != "2":
        pytest.fail(f"docker engine reports cgroup v{info.get('CgroupVersion')}, not v2")
    try:
        client.images.get(TEST_IMAGE)
    except docker.errors.ImageNotFound:
        repo, tag = TEST_IMAGE.rsplit(":", 1)
        client.api.import_image_from_data(_busybox_image_tar(), repository=repo, tag=tag)
    yield client
    for c in client.containers.list(all=True, filters={"label": "rs-test=1"}):
        try:
            c.remove(force=True)
        except Exception:  # noqa: BLE001
            pass
    client.close()


@pytest.fixture
def containers(docker_client) -> Iterator[Containers]:
    helper = Containers(docker_client)
    try:
        yield helper
    finally:
        helper.cleanup()


@pytest.fixture
def scratch_cgroup() -> Iterator[Callable[[str], Path]]:
    """Makes test-owned cgroups directly under the root (removed afterwards, deepest first)."""
    made: list[Path] = []

    def make(name: str) -> Path:
        path = CGROUP_ROOT / f"rs-test-{name}-{uuid.uuid4().hex[:6]}"
        path.mkdir()
        made.append(path)
        return path

    yield make
    for path in reversed(made):
        for child in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            _rmdir_retry(child)
        _rmdir_retry(path)
