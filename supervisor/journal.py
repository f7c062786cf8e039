"""A crash-safe journal of every decision and action, in SQLite (WAL mode) in the state
directory. Each row is committed before the next action starts, so a crash loses at
most the action under way, never one already recorded. Bounded: the oldest rows are
pruned past ``max_rows``. Also a small key/value table for state that must survive a
restart (what the daemon throttled or hibernated)."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from typing import Any, Iterable

from .actions import ActionResult
from .errors import SupervisorError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS journal (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    time_s REAL NOT NULL,
    kind TEXT NOT NULL,
    source TEXT NOT NULL,
    target TEXT NOT NULL,
    name TEXT NOT NULL,
    reason TEXT NOT NULL,
    outcome TEXT NOT NULL,
    dry_run INTEGER NOT NULL,
    detail TEXT NOT NULL,
    params TEXT NOT NULL,
    before TEXT NOT NULL,
    after TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS state (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    time_s REAL NOT NULL
);
"""


class JournalError(SupervisorError):
    pass


class Journal:
    def __init__(self, path: str, max_rows: int = 100_000, clock=time.time):
        self.path = path
        self.max_rows = max_rows
        self.clock = clock
        self._lock = threading.Lock()
        try:
            if path != ":memory:":
                os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a row is on disk when record() returns (crash between decide and act).
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as e:
            raise JournalError(f"cannot open journal {path}: {e}") from None
        self._writes = 0

    def record(self, result: ActionResult) -> int:
        a = result.action
        row = (result.time_s or self.clock(), a.kind, a.source, a.target, a.name, a.reason,
               result.outcome, int(result.dry_run), result.detail,
               json.dumps(a.params, default=str), json.dumps(result.before, default=str),
               json.dumps(result.after, default=str))
        with self._lock:
            try:
                cur = self._db.execute(
                    "INSERT INTO journal (time_s, kind, source, target, name, reason, outcome,"
                    " dry_run, detail, params, before, after) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", row)
                self._writes += 1
                if self._writes % 500 == 0:
                    self._prune()
                return int(cur.lastrowid)
            except sqlite3.Error as e:
                raise JournalError(f"journal write failed: {e}") from None

    def _prune(self) -> None:
        self._db.execute("DELETE FROM journal WHERE seq <= (SELECT MAX(seq) FROM journal) - ?",
                         (self.max_rows,))

    def recent(self, limit: int = 50, after_seq: int = 0, kinds: Iterable[str] = ()) -> list[dict[str, Any]]:
        q = "SELECT * FROM journal WHERE seq > ?"
        args: list[Any] = [after_seq]
        kinds = list(kinds)
        if kinds:
            q += " AND kind IN (%s)" % ",".join("?" * len(kinds))
            args += kinds
        q += " ORDER BY seq DESC LIMIT ?"
        args.append(limit)
        with self._lock:
            cur = self._db.execute(q, args)
            cols = [d[0] for d in cur.description]
            rows = [dict(zip(cols, r)) for r in cur.fetchall()]
        for r in rows:
            for k in ("params", "before", "after"):
                r[k] = json.loads(r[k])
            r["dry_run"] = bool(r["dry_run"])
        return list(reversed(rows))

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM journal").fetchone()[0])

    # ---------------------------------------------------------------- durable state

    def put_state(self, key: str, value: Any) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO state (key, value, time_s) VALUES (?,?,?)",
                             (key, json.dumps(value, default=str), self.clock()))

    def get_state(self, key: str, default: Any = None) -> Any:
        with self._lock:
            row = self._db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def del_state(self, key: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM state WHERE key = ?", (key,))

    def states(self, prefix: str) -> dict[str, Any]:
        with self._lock:
            rows = self._db.execute("SELECT key, value FROM state WHERE key LIKE ?",
                                    (prefix.replace("%", r"\%") + "%",)).fetchall()
        return {k: json.loads(v) for k, v in rows}

    def close(self) -> None:
        with self._lock:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
