"""A value worked out per container from its inspect data and the config, kept between
passes while both are the same objects: the inventory makes a new ``ContainerInfo`` only
when Docker's inspect data changes (an event, a relist), and a reload makes a new
``Config``. What is worked out from only these two (a container's class, whether it is an
Ollama) need not be worked out again for 110 containers on every pass."""

from __future__ import annotations

from typing import Callable, Generic, Iterable, TypeVar

from supervisor.model.config import Config
from supervisor.model.snapshot import ContainerInfo

T = TypeVar("T")


class ByContainer(Generic[T]):
    __slots__ = ("_known",)

    def __init__(self) -> None:
        self._known: dict[str, tuple[ContainerInfo, Config, T]] = {}

    def get(self, info: ContainerInfo, cfg: Config, work_out: Callable[[], T]) -> T:
        """The value for ``info`` under ``cfg``: the kept one while both are the objects it
        was worked out from, else ``work_out()`` (kept)."""
        known = self._known.get(info.id)
        if known is not None and known[0] is info and known[1] is cfg:
            return known[2]
        value = work_out()
        self._known[info.id] = (info, cfg, value)
        return value

    def keep_only(self, ids: Iterable[str]) -> None:
        """Forget the containers not in ``ids`` (gone from the snapshot)."""
        for gone in set(self._known) - set(ids):
            del self._known[gone]
