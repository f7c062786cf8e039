"""Which class a container belongs to, and whether it is managed at all. Pure."""

from __future__ import annotations

from .config import Config, glob_match
from .snapshot import ContainerInfo


def is_managed(info: ContainerInfo, cfg: Config) -> bool:
    m = cfg.settings.manage
    if info.labels.get(m.managed_label, "").lower() in ("false", "0", "no"):
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
