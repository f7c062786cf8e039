"""Fixtures for the production-host lane (scripts/host-lane/run boots systemd as PID 1,
installs resource-supervisor.service the operator's way and runs these against it).

Every test in this directory is marked ``systemd_host``. Anywhere else (no
``RS_HOST_LANE=1``), the whole directory is skipped with a reason: these tests restart,
reconfigure and SIGSTOP the installed unit, which only the lane's throwaway guest may
have done to it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import pytest

HOST_DIR = Path(__file__).parent
sys.path.insert(0, str(HOST_DIR))
# the busybox container helpers are the v2 lane's (the same image and label, another guest)
sys.path.insert(1, str(HOST_DIR.parent / "v2"))

from _hostlib import CONFIG, DROPIN_DIR, IN_LANE, SKIP_REASON, systemctl, wait_active  # noqa: E402
from _v2lib import TEST_IMAGE, Containers  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "systemd_host: runs only in the production-host lane "
                            "(scripts/host-lane)")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        try:
            Path(str(item.fspath)).resolve().relative_to(HOST_DIR.resolve())
        except ValueError:
            continue
        item.add_marker(pytest.mark.systemd_host)
        if not IN_LANE:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def docker_client():
    """The lane's engine: docker.service on /run/docker.sock, systemd cgroup driver."""
    import docker

    client = docker.from_env(timeout=120)
    info = client.info()
    assert (info.get("CgroupDriver"), str(info.get("CgroupVersion"))) == ("systemd", "2"), info
    client.images.get(TEST_IMAGE)  # imported by guest-main
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
def unit_config() -> Iterator[Path]:
    """The installed config file; whatever a test writes there is put back afterwards,
    along with any runtime drop-in, and the unit is left active on the original."""
    original = CONFIG.read_text()
    yield CONFIG
    changed = CONFIG.read_text() != original
    CONFIG.write_text(original)
    dropins = list(DROPIN_DIR.glob("*.conf")) if DROPIN_DIR.is_dir() else []
    for d in dropins:
        d.unlink()
    if dropins:
        systemctl("daemon-reload")
    active = systemctl("is-active", "resource-supervisor", check=False).returncode == 0
    if dropins or not active:
        systemctl("reset-failed", "resource-supervisor.service", check=False)
        systemctl("restart", "resource-supervisor.service")
    elif changed:
        systemctl("reload", "resource-supervisor.service")  # (a restart costs ~20 s under TCG)
    wait_active()
