"""Executes planned actions: the one place where decisions touch the host.

Dry-run is decided here (executors are never called; the journal records "would do").
Every result is journaled before the next action runs. Executors re-check their target
just before a destructive step (act/recheck.py).

The one rate limiter is here too (``RateLimits``): at most
``ladder.max_actions_per_minute`` counted actions in any minute, and at least
``ladder.min_action_interval`` between two of the ladder's actions on one container,
both read from the live config at each action, so a reload applies at once. An action
a limit holds back is not run: it comes back "skipped", its detail naming the limit,
and its planner asks again on a later pass (the ladder plans the most urgent first).
A hold repeated on every pass is journaled once a minute, not on every pass (and a full
minute once, not once per action it holds).

Besides the loop, the wake watcher and the control API execute through here too (from
their own threads): the bookkeeping is under a lock; executors are not (a 10 s stop must
not hold up a wake), and guard their own targets.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter, deque
from contextlib import suppress
from typing import TYPE_CHECKING, Any, Callable

from supervisor.adapters.journal import Journal, JournalError
from supervisor.model.actions import Action, ActionResult, Outcome
from supervisor.model.errors import ContainerGone, EngineUnavailable, SupervisorError

if TYPE_CHECKING:  # pragma: no cover
    from supervisor.model.config import Config

log = logging.getLogger(__name__)

Executor = Callable[[Action], Outcome]

CAP = "ladder.max_actions_per_minute"
INTERVAL = "ladder.min_action_interval"
HELD = "held back by "
WINDOW_S = 60.0
# Journal outcomes of ladder rows that did nothing to a container (not counted at start).
_NOT_ACTED = frozenset({"skipped", "held", "cleared", "restored", "dry_run"})


def counted(action: Action) -> bool:
    """Whether the per-minute cap counts ``action``: every destructive action (stop,
    recreate, a hibernation that stops), and every container action of the ladder
    (throttle, reclaim, unthrottle too, as the ladder always counted them). Never an
    alert: telling is not acting."""
    return action.kind != "alert" and (action.destructive or action.source == "ladder")


def spaced(action: Action) -> bool:
    """Whether ``ladder.min_action_interval`` applies: the ladder's container actions
    (one container is never acted on by the ladder twice within the interval)."""
    return action.kind != "alert" and action.source == "ladder"


def held_by(result: ActionResult) -> str:
    """The limit (``CAP`` or ``INTERVAL``) that held ``result``'s action back, or ""."""
    if not result.skipped or not result.detail.startswith(HELD):
        return ""
    return result.detail[len(HELD):].split(":", 1)[0]


class RateLimits:
    """The counted actions of the last minute and the last spaced action per container.
    Not thread-safe on its own: the actuator calls it under its lock."""

    def __init__(self) -> None:
        self.times: deque[float] = deque()  # counted actions, oldest first
        self.last_at: dict[str, float] = {}  # container id -> its last spaced action

    def _prune(self, now: float, keep_s: float) -> None:
        while self.times and now - self.times[0] >= WINDOW_S:
            self.times.popleft()
        for cid in [c for c, t in self.last_at.items() if now - t >= keep_s]:
            del self.last_at[cid]

    def why_held(self, action: Action, now: float, cap: int, interval_s: float) -> str:
        """The detail of a hold ("" when ``action`` may run now)."""
        self._prune(now, max(interval_s, WINDOW_S))
        if spaced(action):
            last = self.last_at.get(action.target)
            if last is not None and now - last < interval_s:
                return (f"{HELD}{INTERVAL}: {action.name} was acted on less than "
                        f"{interval_s:g}s ago")
        if counted(action) and len(self.times) >= cap:
            return (f"{HELD}{CAP}: {cap} counted actions in the last minute; "
                    f"tried again on a later pass")
        return ""

    def take(self, action: Action, now: float) -> float | None:
        """Count ``action`` as done at ``now``; returns what ``give_back`` needs."""
        prev = self.last_at.get(action.target)
        if counted(action):
            self.times.append(now)
        if spaced(action):
            self.last_at[action.target] = now
        return prev

    def give_back(self, action: Action, now: float, prev: float | None) -> None:
        """Undo ``take`` for an action that did nothing (its re-check refused it)."""
        if counted(action):
            with suppress(ValueError):
                self.times.remove(now)
        if spaced(action) and self.last_at.get(action.target) == now:
            if prev is None:
                del self.last_at[action.target]
            else:
                self.last_at[action.target] = prev

    def restore(self, rows: list[dict], now: float) -> None:
        """The ladder's actions of the last minute from the journal (a restart must not
        start with a fresh budget)."""
        for r in rows:
            if (r["kind"] in ("alert", "breach") or r["dry_run"] or r["outcome"] in _NOT_ACTED
                    or now - r["time_s"] >= WINDOW_S):
                continue
            self.times.append(r["time_s"])
            self.last_at[r["target"]] = max(self.last_at.get(r["target"], 0.0), r["time_s"])
        self.times = deque(sorted(self.times))


class Actuator:
    def __init__(self, journal: Journal | None, clock: Callable[[], float] = time.time,
                 max_destructive_per_minute: int = 10, *,
                 get_config: "Callable[[], Config] | None" = None):
        """``get_config``: the live config, read at each action for the rate limits;
        without it, the cap is ``max_destructive_per_minute`` and nothing is spaced."""
        self.journal = journal
        self.clock = clock
        self.max_destructive_per_minute = max_destructive_per_minute
        self.get_config = get_config
        self.executors: dict[str, Executor] = {}
        self.counts: Counter[tuple[str, str]] = Counter()  # (kind, outcome)
        self.limits = RateLimits()
        self._held: dict[tuple[str, str], tuple[str, float]] = {}  # journaled holds
        self._said_dry: dict[tuple[str, str], str] = {}  # (kind, target) -> last "would do"
        self.recent: deque[ActionResult] = deque(maxlen=50)
        self._lock = threading.Lock()
        self._restore_limits()

    def register(self, kind: str, fn: Executor) -> None:
        self.executors[kind] = fn

    def rate_limits(self) -> tuple[int, float]:
        """(max counted actions per minute, seconds between two spaced actions on one
        container), from the live config."""
        if self.get_config is None:
            return self.max_destructive_per_minute, 0.0
        L = self.get_config().settings.ladder
        return int(L.max_actions_per_minute), float(L.min_action_interval)

    def _restore_limits(self) -> None:
        if self.journal is None:
            return
        now = self.clock()
        try:
            rows = self.journal.since(now - max(WINDOW_S, self.rate_limits()[1]), source="ladder")
        except Exception:  # noqa: BLE001 - rate limits start empty rather than not at all
            log.exception("cannot read the last minute of the journal")
            return
        self.limits.restore(rows, now)

    def _journal(self, write: Callable[[Journal], Any]) -> Any:
        """``write`` to the journal; 0 without one, or when the write fails (logged and
        counted, never raised: the action's result stands)."""
        if self.journal is None:
            return 0
        try:
            return write(self.journal)
        except JournalError as e:
            log.error("%s", e)
            self.counts[("journal", "failed")] += 1
            return 0

    def _admit(self, action: Action, now: float) -> tuple[str, float | None]:
        """Check the limits and take a slot at once (another thread may be acting)."""
        if not (counted(action) or spaced(action)):
            return "", None
        cap, interval_s = self.rate_limits()
        with self._lock:
            why = self.limits.why_held(action, now, cap, interval_s)
            return why, (None if why else self.limits.take(action, now))

    def _run(self, action: Action, now: float) -> tuple[Outcome, int]:
        fn = self.executors.get(action.kind)
        if fn is None:
            return Outcome(ok=False, detail=f"no executor for action kind {action.kind!r}"), 0
        # Intent first (issue 4): a crash inside the executor leaves a row saying what
        # was under way, marked "interrupted" at the next open.
        seq = self._journal(lambda j: j.begin(action, now))
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
        return out, seq

    def _quiet_hold(self, action: Action, why: str, now: float) -> bool:
        """Whether this hold repeats one journaled within the last minute (a planner asks
        again on every pass while it lasts)."""
        limit = why[len(HELD):].split(":", 1)[0]
        # A full minute holds every counted action alike: said once, not once per action.
        key = ("", CAP) if limit == CAP else (action.kind, action.target)
        with self._lock:
            for k in [k for k, (_, t) in self._held.items() if now - t >= WINDOW_S]:
                del self._held[k]
            if self._held.get(key, ("", 0.0))[0] == limit:
                return True
            self._held[key] = (limit, now)
            return False

    def execute_one(self, action: Action, dry_run: bool) -> ActionResult:
        now = self.clock()
        seq = 0
        if dry_run:
            result = ActionResult(action, ok=True, dry_run=True,
                                  detail="would " + action.describe(), time_s=now)
            # A dry run plans exactly what the live run plans (rules.py, invariant 6), so
            # the same "would do" comes back every pass until something changes: it is
            # journaled, logged and counted once, and again only when it differs.
            said = json.dumps(action.to_dict(), sort_keys=True, default=str)
            with self._lock:
                if self._said_dry.get((action.kind, action.target)) == said:
                    return result
                self._said_dry[(action.kind, action.target)] = said
        else:
            why, token = self._admit(action, now)
            if why:
                result = ActionResult(action, ok=False, dry_run=False, skipped=True,
                                      time_s=now, detail=why)
                if self._quiet_hold(action, why, now):
                    return result
            else:
                out, seq = self._run(action, now)
                with self._lock:
                    self._held.pop((action.kind, action.target), None)
                    if counted(action):
                        self._held.pop(("", CAP), None)
                    if out.skipped and (counted(action) or spaced(action)):
                        self.limits.give_back(action, now, token)  # it did nothing
                result = ActionResult(action, ok=out.ok, dry_run=False, detail=out.detail,
                                      before=out.before, after=out.after, time_s=now,
                                      skipped=out.skipped)
        with self._lock:
            self.counts[(action.kind, result.outcome)] += 1
            self.recent.append(result)
        self._journal(lambda j: j.finish(seq, result) if seq else j.record(result))
        level = logging.INFO if result.ok or result.skipped else logging.WARNING
        log.log(level, "%s %s: %s", result.outcome, action.describe(), result.detail,
                extra={"action": action.kind, "target": action.name, "outcome": result.outcome})
        return result

    def execute(self, actions: list[Action], dry_run: bool) -> list[ActionResult]:
        return [self.execute_one(a, dry_run) for a in actions]
