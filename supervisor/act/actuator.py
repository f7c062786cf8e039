"""Executes planned actions: the one place where decisions touch the host.

Dry-run is decided here (executors are never called; the journal records "would do").
Destructive actions are capped per minute. Every result is journaled before the next
action runs. Executors re-check their target just before a destructive step.

Besides the loop, the wake watcher and the control API execute through here too (from
their own threads): the bookkeeping is under a lock; executors are not (a 10 s stop must
not hold up a wake), and guard their own targets.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from typing import Callable

from supervisor.model.actions import Action, ActionResult, Outcome
from supervisor.model.errors import ContainerGone, EngineUnavailable, SupervisorError
from supervisor.adapters.journal import Journal, JournalError

log = logging.getLogger(__name__)

Executor = Callable[[Action], Outcome]


class Actuator:
    def __init__(self, journal: Journal | None, clock: Callable[[], float] = time.time,
                 max_destructive_per_minute: int = 10):
        self.journal = journal
        self.clock = clock
        self.max_destructive_per_minute = max_destructive_per_minute
        self.executors: dict[str, Executor] = {}
        self.counts: Counter[tuple[str, str]] = Counter()  # (kind, outcome)
        self._destructive_times: deque[float] = deque()
        self.recent: deque[ActionResult] = deque(maxlen=50)
        self._lock = threading.Lock()

    def register(self, kind: str, fn: Executor) -> None:
        self.executors[kind] = fn

    def _rate_limited(self, now: float) -> bool:
        with self._lock:
            while self._destructive_times and now - self._destructive_times[0] > 60:
                self._destructive_times.popleft()
            return len(self._destructive_times) >= self.max_destructive_per_minute

    def _begin(self, action: Action, now: float) -> int:
        if self.journal is None:
            return 0
        try:
            return self.journal.begin(action, now)
        except JournalError as e:
            log.error("%s", e)
            self.counts[("journal", "failed")] += 1
            return 0

    def execute_one(self, action: Action, dry_run: bool) -> ActionResult:
        now = self.clock()
        seq = 0
        if dry_run:
            result = ActionResult(action, ok=True, dry_run=True,
                                  detail="would " + action.describe(), time_s=now)
        elif action.destructive and self._rate_limited(now):
            result = ActionResult(action, ok=False, dry_run=False, skipped=True, time_s=now,
                                  detail="held back: destructive action limit per minute reached")
        else:
            fn = self.executors.get(action.kind)
            if fn is None:
                result = ActionResult(action, ok=False, dry_run=False, time_s=now,
                                      detail=f"no executor for action kind {action.kind!r}")
            else:
                # Intent first (issue 4): a crash inside the executor leaves a row saying
                # what was under way, marked "interrupted" at the next open.
                seq = self._begin(action, now)
                try:
                    out = fn(action)
                except ContainerGone as e:
                    out = Outcome(ok=False, skipped=True, detail=f"container gone: {e}")
                except EngineUnavailable as e:
                    out = Outcome(ok=False, detail=f"engine unavailable: {e}")
                except SupervisorError as e:
                    out = Outcome(ok=False, detail=str(e))
                except Exception as e:  # noqa: BLE001 - an executor bug must not kill the loop
                    log.exception("executor for %s failed", action.kind)
                    out = Outcome(ok=False, detail=f"internal error: {type(e).__name__}: {e}")
                if action.destructive and out.ok and not out.skipped:
                    with self._lock:
                        self._destructive_times.append(now)
                result = ActionResult(action, ok=out.ok, dry_run=False, detail=out.detail,
                                      before=out.before, after=out.after, time_s=now,
                                      skipped=out.skipped)
        with self._lock:
            self.counts[(action.kind, result.outcome)] += 1
            self.recent.append(result)
        if self.journal is not None:
            try:
                if seq:
                    self.journal.finish(seq, result)
                else:
                    self.journal.record(result)
            except JournalError as e:
                log.error("%s", e)
                self.counts[("journal", "failed")] += 1
        level = logging.INFO if result.ok or result.skipped else logging.WARNING
        log.log(level, "%s %s: %s", result.outcome, action.describe(), result.detail,
                extra={"action": action.kind, "target": action.name, "outcome": result.outcome})
        return result

    def execute(self, actions: list[Action], dry_run: bool) -> list[ActionResult]:
        return [self.execute_one(a, dry_run) for a in actions]
