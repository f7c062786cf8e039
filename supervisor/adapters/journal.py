"""A crash-safe journal of every decision and action, in SQLite (WAL mode) in the state
directory. Each row is committed before the next action starts, so a crash loses at
most the action under way, never one already recorded. Bounded: the oldest rows are
pruned past ``max_rows``. Also a small key/value table for state that must survive a
restart (what the daemon throttled or hibernated).

An action is written twice: ``begin`` commits its intent (outcome "pending") before the
executor runs and ``finish`` fills in the result, so a crash between deciding and acting
leaves a row saying what was under way; the next open marks such rows "interrupted".
``note`` records a decision that led to no action (a ladder step skipped or held, a
breach cleared). At open the database is checked (PRAGMA quick_check); a damaged file is
moved aside, never silently reused."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from typing import Any, Iterable

from supervisor.model.actions import Action, ActionResult
from supervisor.model.errors import SupervisorError

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


log = logging.getLogger(__name__)


class JournalError(SupervisorError):
    pass


class Journal:
    def __init__(self, path: str, max_rows: int = 100_000, clock=time.time):
        self.path = path
        self.max_rows = max_rows
        self.clock = clock
        self._lock = threading.Lock()
        self.damaged_moved_to = ""  # where a database that failed its check at open went
        try:
            if path != ":memory:":
                os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            db: sqlite3.Connection | None = None
            try:
                db = self._open(path)
                problem = self._check(db)
            except sqlite3.OperationalError:
                raise  # locked, unreadable, no space: not damage; never move a sound file
            except sqlite3.DatabaseError as e:  # "file is not a database", malformed image
                problem = str(e)
            if problem and path != ":memory:":
                if db is not None:
                    db.close()
                self.damaged_moved_to = f"{path}.damaged-{int(time.time())}"
                for suffix in ("", "-wal", "-shm"):
                    if os.path.exists(path + suffix):
                        os.replace(path + suffix, self.damaged_moved_to + suffix)
                log.error("journal %s failed its check (%s); moved to %s and started anew",
                          path, problem, self.damaged_moved_to)
                db = self._open(path)
            assert db is not None
            self._db = db
            self.damaged = problem
            # Rows a crash left between begin() and finish(): the action may or may not
            # have run; say so instead of leaving them "pending" for ever.
            cur = self._db.execute(
                "UPDATE journal SET outcome = 'interrupted', detail = ? WHERE outcome = 'pending'",
                ("the daemon stopped before this action's result was recorded",))
            self.interrupted_at_open = cur.rowcount
        except (sqlite3.Error, OSError) as e:
            raise JournalError(f"cannot open journal {path}: {e}") from None
        self._writes = 0

    @staticmethod
    def _open(path: str) -> sqlite3.Connection:
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        # FULL: a row is on disk when record() returns (crash between decide and act).
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
        return db

    @staticmethod
    def _check(db: sqlite3.Connection) -> str:
        """"" when the database is sound, else what SQLite found wrong."""
        rows = db.execute("PRAGMA quick_check").fetchall()
        text = "; ".join(str(r[0]) for r in rows)
        return "" if text == "ok" else text

    def integrity_check(self) -> str:
        """PRAGMA integrity_check: "ok" when the database is sound."""
        with self._lock:
            try:
                rows = self._db.execute("PRAGMA integrity_check").fetchall()
            except sqlite3.Error as e:
                return str(e)
        return "; ".join(str(r[0]) for r in rows)

    def _insert(self, row: tuple) -> int:
        """One journal row, committed before this returns (autocommit, synchronous=FULL)."""
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

    def begin(self, action: Action, time_s: float | None = None, dry_run: bool = False) -> int:
        """Commit an action's intent (outcome "pending") before its executor runs."""
        return self.record(ActionResult(action, ok=True, dry_run=dry_run, time_s=time_s or 0.0),
                           outcome="pending")

    def finish(self, seq: int, result: ActionResult) -> None:
        """Fill in the result of the row ``begin`` returned."""
        with self._lock:
            try:
                self._db.execute(
                    "UPDATE journal SET outcome = ?, detail = ?, before = ?, after = ? WHERE seq = ?",
                    (result.outcome, result.detail, json.dumps(result.before, default=str),
                     json.dumps(result.after, default=str), seq))
            except sqlite3.Error as e:
                raise JournalError(f"journal write failed: {e}") from None

    def note(self, kind: str, source: str, target: str, name: str, reason: str, outcome: str,
             detail: str = "", params: dict[str, Any] | None = None, dry_run: bool = False,
             time_s: float | None = None) -> int:
        """A decision that led to no action (e.g. outcome "skipped", "held", "cleared")."""
        return self.record(ActionResult(
            Action(kind=kind, target=target, name=name, reason=reason, source=source,
                   params=dict(params or {})),
            ok=True, dry_run=dry_run, detail=detail, time_s=time_s or self.clock()),
            outcome=outcome)

    def record(self, result: ActionResult, outcome: str | None = None) -> int:
        a = result.action
        row = (result.time_s or self.clock(), a.kind, a.source, a.target, a.name, a.reason,
               outcome or result.outcome, int(result.dry_run), result.detail,
               json.dumps(a.params, default=str), json.dumps(result.before, default=str),
               json.dumps(result.after, default=str))
        return self._insert(row)

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
        rows = self._newest(q, args, limit)
        for r in rows:
            for k in ("params", "before", "after"):
                r[k] = json.loads(r[k])
            r["dry_run"] = bool(r["dry_run"])
        return list(reversed(rows))

    def since(self, time_s: float, source: str = "", limit: int = 1000) -> list[dict[str, Any]]:
        """Rows at or after ``time_s`` (oldest first), of one source when given: what a
        restarted planner reads back to keep its rate limits."""
        q = "SELECT seq, time_s, kind, source, target, name, outcome, dry_run FROM journal WHERE time_s >= ?"
        args: list[Any] = [time_s]
        if source:
            q += " AND source = ?"
            args.append(source)
        return list(reversed(self._newest(q, args, limit)))

    def _newest(self, q: str, args: list[Any], limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` rows of query ``q`` as dicts, newest first."""
        with self._lock:
            cur = self._db.execute(q + " ORDER BY seq DESC LIMIT ?", [*args, limit])
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, r)) for r in cur.fetchall()]

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
            # Not LIKE: its "_" matches any character and it ignores case.
            rows = self._db.execute("SELECT key, value FROM state "
                                    "WHERE substr(key, 1, length(?1)) = ?1",
                                    (prefix,)).fetchall()
        return {k: json.loads(v) for k, v in rows}

    def close(self) -> None:
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._db.close()
