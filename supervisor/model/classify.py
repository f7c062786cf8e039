"""Which class a container belongs to, and whether it is managed at all. Pure."""

from __future__ import annotations

from supervisor.model.config import Config, glob_match
from supervisor.model.snapshot import ContainerInfo


# Label values that switch a feature off for one container (supervisor.managed,
# supervisor.hibernate, supervisor.ollama...): one list, so every opt-out reads the same.
FALSE_VALUES = ("false", "0", "no", "off")
TRUE_VALUES = ("true", "1", "yes", "on")


def label_is_false(labels: dict[str, str], key: str) -> bool:
    return labels.get(key, "").strip().lower() in FALSE_VALUES


def label_is_true(labels: dict[str, str], key: str) -> bool:
    return labels.get(key, "").strip().lower() in TRUE_VALUES


def is_managed(info: ContainerInfo, cfg: Config) -> bool:
    m = cfg.settings.manage
    if label_is_false(info.labels, m.managed_label):
        return False
    return all(info.labels.get(k) == v for k, v in m.require_labels.items())


# What compose puts on every container it makes: the service name as written in the
# compose file ("redis"), while the container is named "<project>-redis-1" (v2) or
# "<project>_redis_1" (v1).
COMPOSE_SERVICE_LABEL = "com.docker.compose.service"

# The fields a class rule is tried on, in order: match.names on the container name and
# the compose service, match.images on the full image and its repository's last part.
# (reason, what the field is called in a sentence)
FIELDS = {"name": "container name", "service": "compose service",
          "image": "image", "repository": "image repository"}


def image_repository(image: str) -> str:
    """The last part of an image reference's repository, without tag or digest:
    ``bitnami/redis:7`` -> ``redis``, ``registry:5000/team/postgres@sha256:..`` ->
    ``postgres``. "" for an image given by its ID (``sha256:...``)."""
    ref = image.split("@", 1)[0]
    if ref.startswith("sha256:"):
        return ""
    last = ref.rsplit("/", 1)[-1]  # a registry's ":port" sits before the last "/"
    return last.split(":", 1)[0]


def _first_match(patterns: tuple[str, ...], value: str) -> str:
    return next((p for p in patterns if glob_match((p,), value)), "") if value else ""


def _field_values(info: ContainerInfo) -> dict[str, str]:
    """The value of each of ``FIELDS`` for ``info``, in the order they are tried."""
    return {"name": info.name, "service": info.labels.get(COMPOSE_SERVICE_LABEL, ""),
            "image": info.image, "repository": image_repository(info.image)}


def classify_why(info: ContainerInfo, cfg: Config) -> tuple[str, str, str]:
    """(class name, reason, pattern). Reason is "label"; "name" / "service" (a
    match.names glob on the container name / the compose service label); "image" /
    "repository" (a match.images glob on the full image / its repository's last part);
    "default"; or "unknown-label" when the label names a class the config lacks
    (reported, and the default class used: never ignored). Pattern is the glob that
    matched ("" for the others). Classes are tried in file order, each on every field."""
    m = cfg.settings.manage
    label = info.labels.get(m.class_label)
    if label is not None and label in cfg.classes:
        return label, "label", ""
    fields = _field_values(info).items()
    for cls in cfg.classes.values():
        for reason, value in fields:
            patterns = cls.match_names if reason in ("name", "service") else cls.match_images
            p = _first_match(patterns, value)
            if p:
                return cls.name, reason, p
    return m.default_class, ("unknown-label" if label is not None else "default"), ""


def classify(info: ContainerInfo, cfg: Config) -> tuple[str, str]:
    """(class name, reason): classify_why without the pattern."""
    cls, reason, _ = classify_why(info, cfg)
    return cls, reason


def describe_class(info: ContainerInfo, cfg: Config, cls: str, reason: str, pattern: str) -> str:
    """Why a container got its class, in one sentence for status: which label, or which
    rule's pattern matched which field and value, or that none did."""
    class_label = cfg.settings.manage.class_label
    if reason == "label":
        return f"label {class_label}={cls}"
    if reason == "unknown-label":
        return (f"label {class_label}={info.labels.get(class_label, '')} names no class; "
                f"default class {cls}")
    if reason in FIELDS:
        value = _field_values(info)[reason]
        key = "names" if reason in ("name", "service") else "images"
        return f"classes.{cls}.match.{key} {pattern!r} matched {FIELDS[reason]} {value!r}"
    return f"no class rule matched; default class {cls}"
