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


def classify(info: ContainerInfo, cfg: Config) -> tuple[str, str]:
    """(class name, reason). Reason is "label", "name", "image", "default", or
    "unknown-label" when the label names a class the config lacks (reported, and the
    default class used: never ignored)."""
    m = cfg.settings.manage
    label = info.labels.get(m.class_label)
    if label is not None:
        if label in cfg.classes:
            return label, "label"
    for cls in cfg.classes.values():
        if cls.match_names and glob_match(cls.match_names, info.name):
            return cls.name, "name"
        if cls.match_images and glob_match(cls.match_images, info.image):
            return cls.name, "image"
    return m.default_class, ("unknown-label" if label is not None else "default")
