"""Keeps the recommendation history across daemon restarts: read once at start, written
off the loop's path (a copy taken after a pass, written by a short-lived thread) at most
every SAVE_EVERY_S, and once more at shutdown. The file format and its damage handling
are adapters.history_store's."""

from __future__ import annotations

import logging
import os
import threading
from typing import Callable

from supervisor.adapters.history_store import FILE_NAME, HistoryStore, StoredHistory
from supervisor.observe.history import History

log = logging.getLogger("supervisor.history")

# A crash loses at most this much history; a write costs ~1 ms per 100 containers.
SAVE_EVERY_S = 60.0


class HistoryKeeper:
    def __init__(self, history: History, state_dir: str, clock: Callable[[], float],
                 save_every_s: float = SAVE_EVERY_S):
        self.history = history
        self.store = HistoryStore(os.path.join(state_dir, FILE_NAME))
        self.clock = clock
        self.save_every_s = save_every_s
        self._last_save_s = float("-inf")
        self._writer: threading.Thread | None = None
        self.saves = 0

    def load(self) -> int:
        """Restores the stored history into ``history``; returns how many containers."""
        stored = self.store.load()
        if stored is None:
            return 0
        n = self.history.restore(stored.samples, stored.step_s)
        log.info("recommendation history restored for %d containers (saved %.0f s ago)",
                 n, max(0.0, self.clock() - stored.saved_at_s),
                 extra={"path": self.store.path})
        self._last_save_s = self.clock()
        return n

    def _snapshot(self) -> StoredHistory:
        return StoredHistory(step_s=self.history.step_s, saved_at_s=self.clock(),
                             samples=self.history.export())

    def _write(self, data: StoredHistory) -> None:
        try:
            self.store.save(data, self.history.size)
            self.saves += 1
        except OSError as e:
            log.warning("recommendation history not saved: %s", e,
                        extra={"path": self.store.path})

    def after_pass(self) -> None:
        """On the loop thread after a pass: hands a copy to a writer thread when due
        (skipped while the previous write still runs)."""
        now = self.clock()
        if now - self._last_save_s < self.save_every_s:
            return
        if self._writer is not None and self._writer.is_alive():
            return
        self._last_save_s = now
        self._writer = threading.Thread(target=self._write, args=(self._snapshot(),),
                                        name="history-writer", daemon=True)
        self._writer.start()

    def close(self) -> None:
        """At shutdown: waits for a write in flight, then writes the latest history."""
        if self._writer is not None:
            self._writer.join(timeout=30)
        self._write(self._snapshot())
