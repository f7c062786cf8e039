"""Classes from what operators write, on the real engine: containers named and labelled
the way compose makes them, and images named the way registries do (local busybox
tagged ``bitnami/redis:7``...), get the shipped rules' classes, and `supctl status`
says which field and pattern chose each."""

import subprocess
import sys
import tomllib
import uuid

import pytest

from ._procs import daemon_thread
from _testkit import IMAGE, ROOT, RUN_ID, TEST_LABEL, wait_for
from supervisor.model.config import shipped_config_path
from supervisor.publish.control import request

COMPOSE_SERVICE = "com.docker.compose.service"
TAGS = ("bitnami/redis:7", "localhost:5000/team/postgres:15", "rs-lab/unknown-thing:1")


def shipped_classes_in(make_config):
    """The test config with the shipped classes' match rules, in the shipped order (each
    class in a pool of its own name, any core)."""
    shipped = tomllib.loads(shipped_config_path().read_text())["classes"]
    classes = {name: {"pool": name, "cpuset": "any", "memory_limit": "64MiB",
                      "memory_min": "8MiB", "hibernate": False, "protected": c.get("protected", False),
                      "match": c.get("match", {})}
               for name, c in shipped.items()}
    pools = {name: {"budget": "1GiB"} for name in shipped}
    # (a keyword replaces the base config's classes whole: the shipped order is kept)
    return make_config({"pools": pools}, classes=classes)


@pytest.fixture
def tagged(docker_client):
    """The local busybox image under registry-style names; the tags removed afterwards."""
    image = docker_client.images.get(IMAGE)
    for ref in TAGS:
        repo, _, tag = ref.rpartition(":")
        image.tag(repo, tag)
    yield
    for ref in TAGS:
        docker_client.images.remove(ref, noprune=True)


def run(docker_client, containers, image, name, labels=None):
    lab = {TEST_LABEL: RUN_ID, **(labels or {})}
    c = docker_client.containers.run(image, ["sh", "-c", "sleep 3600"], name=name, labels=lab,
                                     detach=True, network_mode="none")
    containers.made.append(c)
    return c


def test_compose_named_and_registry_named_containers_get_the_shipped_classes(
        make_config, containers, docker_client, tagged):
    cfg, path = shipped_classes_in(make_config)
    project = f"shop{uuid.uuid4().hex[:6]}"
    compose = lambda service: {COMPOSE_SERVICE: service,  # noqa: E731
                               "com.docker.compose.project": project}
    # compose v2's name for service "redis" of project "shop": shop-redis-1
    redis = run(docker_client, containers, IMAGE, f"{project}-redis-1", compose("redis"))
    cache = run(docker_client, containers, "bitnami/redis:7", f"{project}-cache-1",
                compose("cache"))
    pg = run(docker_client, containers, "localhost:5000/team/postgres:15", f"{project}_db_1",
             compose("db"))
    exporter = run(docker_client, containers, IMAGE, f"{project}-redis-exporter-1",
                   compose("redis-exporter"))
    other = run(docker_client, containers, "rs-lab/unknown-thing:1", f"{project}-worker-1",
                compose("worker"))
    pinned = run(docker_client, containers, "bitnami/redis:7", f"{project}-pinned-1",
                 {**compose("redis"), "supervisor.class": "standard"})
    want = {
        redis.name: ("infrastructure", "service", "redis*",
                     "classes.infrastructure.match.names 'redis*' matched compose service 'redis'"),
        cache.name: ("infrastructure", "repository", "redis*",
                     "classes.infrastructure.match.images 'redis*' matched image repository 'redis'"),
        pg.name: ("infrastructure", "repository", "postgres*",
                  "classes.infrastructure.match.images 'postgres*' matched image repository "
                  "'postgres'"),
        exporter.name: ("monitoring", "name", "*exporter*",
                        f"classes.monitoring.match.names '*exporter*' matched container name "
                        f"'{exporter.name}'"),
        other.name: ("standard", "default", "", "no class rule matched; default class standard"),
        pinned.name: ("standard", "label", "", "label supervisor.class=standard"),
    }
    with daemon_thread(cfg, path):
        def rows():
            code, st = request(cfg.settings.control.socket, "GET", "/status")
            assert code == 200
            got = {r["name"]: r for r in st["containers"]}
            return got if set(want) <= set(got) else None
        got = wait_for(rows, 20, what="every container in status")
        for name, (cls, reason, pattern, why) in want.items():
            r = got[name]
            assert (r["class"], r["class_reason"], r["class_pattern"], r["class_why"]) == \
                (cls, reason, pattern, why), name
        text = subprocess.run([sys.executable, "-m", "supervisor.cli", "--socket",
                               cfg.settings.control.socket, "status", "--width", "200"],
                              capture_output=True, text=True, timeout=60, cwd=ROOT)
        lines = {ln.split()[0]: ln for ln in text.stdout.splitlines() if ln.strip()}
        assert "CLASS BY" in text.stdout, text.stdout + text.stderr
        assert lines[redis.name].split()[1] == "infrastructure"
        assert "service redis*" in lines[redis.name]
        assert "repo redis*" in lines[cache.name]
        assert "repo postgres*" in lines[pg.name]
        assert lines[exporter.name].split()[1] == "monitoring"
        assert "default" in lines[other.name].split()
        assert "label" in lines[pinned.name].split()
