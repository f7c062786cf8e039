"""Which class a container gets from what an operator writes: the class label, the
container name, the compose service, the full image and the image's repository name;
and the reason status gives for it."""

import pytest
from hypothesis import given, strategies as st

from supervisor.cli.render import render_status
from supervisor.model.classify import (COMPOSE_SERVICE_LABEL, classify, classify_why,
                                       describe_class, image_repository)
from supervisor.model.config import HostFacts, load_config, shipped_config_path
from supervisor.model.snapshot import ContainerInfo

TWO_CORES = HostFacts(cores=2, memory_bytes=24 * 2**30)


@pytest.fixture(scope="module")
def shipped():
    return load_config(shipped_config_path(), host=TWO_CORES)


def info(name="c", image="busybox", **labels) -> ContainerInfo:
    return ContainerInfo(id="f" * 64, name=name, image=image, labels=dict(labels),
                         state="running", pid=1)


def compose(project: str, service: str, image: str, v1: bool = False) -> ContainerInfo:
    """A container as compose names and labels it (v2: project-service-1, v1: _)."""
    sep = "_" if v1 else "-"
    return info(name=f"{project}{sep}{service}{sep}1", image=image,
                **{COMPOSE_SERVICE_LABEL: service, "com.docker.compose.project": project})


@pytest.mark.parametrize("image, repo", [
    ("redis", "redis"),
    ("redis:7", "redis"),
    ("bitnami/redis:7", "redis"),
    ("docker.io/bitnami/redis:7.2.4-debian-12-r0", "redis"),
    ("registry:5000/team/postgres@sha256:" + "a" * 64, "postgres"),
    ("registry:5000/team/postgres:15@sha256:" + "a" * 64, "postgres"),
    ("localhost:5000/qdrant", "qdrant"),
    ("sha256:" + "b" * 64, ""),
    ("", ""),
])
def test_image_repository_is_the_last_path_part_without_tag_or_digest(image, repo):
    assert image_repository(image) == repo


_part = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8)


@given(registry=st.one_of(st.just(""), st.builds(lambda h, p: f"{h}:{p}/", _part,
                                                  st.integers(1, 65535))),
       path=st.lists(_part, max_size=3), name=_part,
       tag=st.one_of(st.just(""), _part.map(lambda t: ":" + t)),
       digest=st.one_of(st.just(""), st.just("@sha256:" + "c" * 64)))
def test_image_repository_of_any_reference(registry, path, name, tag, digest):
    ref = registry + "".join(p + "/" for p in path) + name + tag + digest
    assert image_repository(ref) == name


@pytest.mark.parametrize("container, want, reason, pattern", [
    # compose v2 and v1 names: the service label says what the name only embeds
    (compose("shop", "redis", "bitnami/redis:7"), "infrastructure", "service", "redis*"),
    (compose("shop", "postgres", "lab/db", v1=True), "infrastructure", "service", "postgres*"),
    (compose("shop", "cache", "bitnami/redis:7"), "infrastructure", "repository", "redis*"),
    (compose("shop", "queue", "bitnami/rabbitmq:3.12"), "infrastructure", "repository",
     "rabbitmq*"),
    (compose("mesh", "discovery", "hashicorp/consul:1.17"), "infrastructure", "repository",
     "consul*"),
    (compose("edge", "gateway", "kong/kong-gateway:3.5"), "infrastructure", "image", "kong*"),
    (compose("kg", "graph", "neo4j:5"), "infrastructure", "image", "neo4j*"),
    (compose("rag", "vectors", "chromadb/chroma:0.4"), "infrastructure", "image", "chroma*"),
    (compose("rag", "vectors", "ghcr.io/chroma-core/chroma:0.5"), "infrastructure",
     "repository", "chroma*"),
    (compose("rag", "search", "docker.io/qdrant/qdrant:v1.7"), "infrastructure",
     "repository", "qdrant*"),
    (info(name="db", image="registry:5000/team/postgres@sha256:" + "a" * 64),
     "infrastructure", "repository", "postgres*"),
    (info(name="postgres-main", image="busybox"), "infrastructure", "name", "postgres*"),
    # an exporter of a database is monitoring, not the database
    (compose("shop", "redis-exporter", "oliver006/redis_exporter:v1.55"), "monitoring",
     "name", "*exporter*"),
    (info("metrics", "oliver006/redis_exporter:v1.55", **{COMPOSE_SERVICE_LABEL: "redis"}),
     "monitoring", "image", "*exporter*"),
    (info(name="pgx", image="prometheuscommunity/postgres-exporter"), "monitoring",
     "image", "prometheus*"),
    (compose("ai", "llm", "ollama/ollama:0.1.32"), "critical", "image", "ollama*"),
    (compose("ai", "summariser", "lab/agent"), "standard", "default", ""),
])
def test_shipped_rules_classify_what_operators_write(shipped, container, want, reason, pattern):
    assert classify_why(container, shipped) == (want, reason, pattern)
    assert classify(container, shipped) == (want, reason)


def test_a_class_label_wins_over_every_rule(shipped):
    c = compose("shop", "redis", "bitnami/redis:7")
    labelled = info(c.name, c.image, **c.labels, **{"supervisor.class": "standard"})
    assert classify_why(labelled, shipped) == ("standard", "label", "")
    unknown = info(c.name, c.image, **{"supervisor.class": "no-such-class"})
    assert classify_why(unknown, shipped)[:2] == ("infrastructure", "repository")
    plain = info("scratch", "busybox", **{"supervisor.class": "no-such-class"})
    assert classify_why(plain, shipped) == ("standard", "unknown-label", "")


def test_names_globs_never_match_images_and_images_globs_never_match_names(shipped):
    # match.names covers the name and the compose service; match.images the image and
    # its repository: "*orchestrator*" is a critical name rule only, "prom/*" an image one
    assert classify(info(name="main-orchestrator", image="lab/x"), shipped) == ("critical", "name")
    assert classify(info(name="x", image="lab/orchestrator"), shipped) == ("standard", "default")
    assert classify(info(name="prom/x", image="lab/x", **{COMPOSE_SERVICE_LABEL: "prom/x"}),
                    shipped) == ("standard", "default")
    assert classify(info(name="x", image="prom/node-exporter"), shipped) == ("monitoring", "image")


def test_the_reason_names_the_field_the_pattern_and_the_value(shipped):
    def why(c):
        return describe_class(c, shipped, *classify_why(c, shipped))
    assert why(compose("shop", "redis", "bitnami/redis:7")) == \
        "classes.infrastructure.match.names 'redis*' matched compose service 'redis'"
    assert why(compose("shop", "cache", "bitnami/redis:7")) == \
        "classes.infrastructure.match.images 'redis*' matched image repository 'redis'"
    assert why(info("postgres-main", "busybox")) == \
        "classes.infrastructure.match.names 'postgres*' matched container name 'postgres-main'"
    assert why(info("x", "neo4j:5")) == \
        "classes.infrastructure.match.images 'neo4j*' matched image 'neo4j:5'"
    assert why(info("x", "busybox")) == "no class rule matched; default class standard"
    assert why(info("x", "busybox", **{"supervisor.class": "critical"})) == \
        "label supervisor.class=critical"
    assert why(info("x", "busybox", **{"supervisor.class": "nope"})) == \
        "label supervisor.class=nope names no class; default class standard"


def test_status_text_shows_how_each_class_was_chosen():
    row = {"memory_working_set_bytes": 1, "memory_limit_bytes": 2**30, "cpu_percent": 0.0,
           "idle_s": None, "hibernated": False, "managed": True, "cpuset": "0",
           "state": "running"}
    st = {"daemon": {}, "engine": {"up": True}, "ready": True,
          "host": {"cores": 2, "memory_total_bytes": 2**32, "memory_available_bytes": 2**31},
          "reserve": {"reserve_bytes": 2**28, "breached": False}, "pools": {}, "classes": {},
          "containers": [
              {**row, "name": "shop-redis-1", "class": "infrastructure",
               "class_reason": "service", "class_pattern": "redis*"},
              {**row, "name": "cache", "class": "infrastructure",
               "class_reason": "repository", "class_pattern": "redis*"},
              {**row, "name": "pinned", "class": "critical", "class_reason": "label"},
              {**row, "name": "scratch", "class": "standard", "class_reason": "default"}]}
    text = render_status(st, width=160)
    assert "CLASS BY" in text
    lines = {ln.split()[0]: ln for ln in text.splitlines() if ln}
    assert "service redis*" in lines["shop-redis-1"]
    assert "repo redis*" in lines["cache"]
    assert lines["pinned"].split()[-2:] == ["label", "-"]
    assert lines["scratch"].split()[-2:] == ["default", "-"]
    assert all(len(ln) <= 160 for ln in text.splitlines())
