"""The containers hibernated by the supervisor, held in memory and in the journal's state
table (one row per container under ``hibernation/<id>``). A record is written *before*
the container is paused or stopped, so a crash after the act still leaves it known as
ours; it is deleted before it is dropped from memory, so a restart never finds one we
already let go."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from typing import TYPE_CHECKING, Callable

from supervisor.adapters.journal import JournalError
from supervisor.policy.hibernation import Record

if TYPE_CHECKING:  # pragma: no cover
    from supervisor.adapters.journal import Journal

log = logging.getLogger(__name__)

STATE_PREFIX = "hibernation/"


class HibernationStore:
    def __init__(self, journal: "Journal", counts: "Counter[str]"):
        self.journal = journal
        self.counts = counts
        # Called (outside the store's lock) with the id of every record let go: whoever
        # watches or tracks that container drops it too.
        self.on_forget: Callable[[str], None] = lambda cid: None
        self._lock = threading.Lock()
        self._records: dict[str, Record] = {}

    def load(self) -> list[str]:
        """Read the persisted hibernations back; the ids read (to be checked against the
        engine). An unreadable row is dropped."""
        try:
            rows = self.journal.states(STATE_PREFIX)
        except JournalError as e:
            log.error("cannot read hibernation state: %s", e)
            return []
        out = []
        for key, value in rows.items():
            try:
                rec = Record.from_dict(value)
            except (TypeError, ValueError) as e:
                log.warning("dropping unreadable hibernation state %s: %s", key, e)
                self._del_state(key[len(STATE_PREFIX):])
                continue
            with self._lock:
                self._records[rec.id] = rec
            out.append(rec.id)
        return out

    def get(self, cid: str) -> Record | None:
        with self._lock:
            return self._records.get(cid)

    def records(self) -> dict[str, Record]:
        with self._lock:
            return dict(self._records)

    def ids(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._records)

    def put(self, rec: Record) -> None:
        with self._lock:
            self._records[rec.id] = rec
        try:
            self.journal.put_state(STATE_PREFIX + rec.id, rec.to_dict())
        except JournalError as e:
            log.error("cannot persist the hibernation of %s: %s", rec.name, e)
            self.counts["state_write_errors"] += 1

    def forget(self, cid: str) -> None:
        # Durable record first: once ids() no longer lists it, a restart must not find
        # it recorded as ours either.
        self._del_state(cid)
        with self._lock:
            self._records.pop(cid, None)
        self.on_forget(cid)

    def _del_state(self, cid: str) -> None:
        try:
            self.journal.del_state(STATE_PREFIX + cid)
        except JournalError as e:
            log.error("cannot clear the hibernation state of %s: %s", cid[:12], e)
            self.counts["state_write_errors"] += 1
