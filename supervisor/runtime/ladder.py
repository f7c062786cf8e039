"""The breach ladder as a component of the loop: it plans with ``plan_breach_actions``
(policy/ladder.py, where every decision and the ladder's description live), registers
the ``throttle``/``unthrottle``/``reclaim`` executors of act/ladder_knobs.py, settles its
state from the results the actuator returns (an action the actuator's rate limits held
back puts its rung back, to be taken again on a later pass), journals its notes,
persists its open breaches, publishes status and metrics, and reads its durable state
back at start.

Durable state (journal state table): ``ladder/throttle/<id>`` (the values a throttle
replaced, written *before* any change, so a crash mid-throttle leaves a record to
restore from), ``ladder/breach/<key>`` (each open breach's rung), and
``ladder/reclaim/<id>`` (v1: the limit to put back if a crash hits between lowering and
restoring). At start these are read back: a throttle whose breach persists is kept and
the ladder continues from its rung (after one more grace period); one whose breach has
gone is undone after ``clear_after`` like any other.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable, Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from supervisor.act.actuator import held_by
from supervisor.act.component import Component, Context
from supervisor.act.ladder_knobs import THROTTLE_PREFIX, KnobExecutors
from supervisor.adapters.journal import JournalError
from supervisor.model.actions import Action, ActionResult, Outcome
from supervisor.policy.breaches import SEVERITY_NAMES, WARN
from supervisor.policy.ladder import plan_breach_actions, settle, top_rung
from supervisor.policy.ladder_state import (KIND_ORDER, STEP_NAMES, STOP, THROTTLE, LadderPlan,
                                            LadderState, Note, Throttle, Track)
from supervisor.policy.tick import Tick

if TYPE_CHECKING:  # pragma: no cover
    from prometheus_client.core import Metric

log = logging.getLogger(__name__)

# Names under which ladder breach onsets are counted in resource_supervisor_breaches_total
# (the daemon counts "reserve" and "pool_used_over_budget" itself, at the budget line).
ONSET_KIND = {"pool": "pool_warn", "reserve": "reserve_warn", "psi_memory": "psi_memory",
              "psi_cpu": "psi_cpu", "oom": "container_limit"}
BREACH_PREFIX = "ladder/breach/"


# ---------------------------------------------------------------------------- component

class Ladder(Component):
    name = "ladder"
    # plan() keeps the pure plan it computed for observe() to publish (a memo of its
    # result, which never feeds a later plan): the only attribute plan() writes.
    plan_memo = ("_pending",)

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self.counts: Counter[tuple[str, str]] = Counter()  # (kind, outcome) incl. notes
        self.notes: deque[dict[str, Any]] = deque(maxlen=20)
        self.last_plan: LadderPlan | None = None  # the last plan executed
        self._pending: LadderPlan | None = None
        self._persisted: dict[str, dict[str, Any]] = {}
        self._startup_notes: list[Note] = []
        self.knobs = KnobExecutors(ctx)
        # Held back by the actuator's rate limits at the last pass: (kind, target) -> limit.
        self._held: dict[tuple[str, str], str] = {}
        self.acted_at: deque[float] = deque(maxlen=1000)  # the ladder's actions that ran
        self.state = self._load()

    # ------------------------------------------------------------------ restart

    def _load(self) -> LadderState:
        """Read back what a previous run left: throttles, open breaches and interrupted v1
        reclaims (the last minute of actions is the actuator's to read back)."""
        j = self.ctx.journal
        now = self.ctx.clock()
        for cid, name, detail in self.knobs.restore_interrupted_reclaims():
            self._startup_notes.append(Note(
                "reclaim", cid, name,
                "a reclaim was interrupted between lowering and restoring the limit",
                "restored", detail))
        throttles = {}
        for key, value in j.states(THROTTLE_PREFIX).items():
            try:
                th = Throttle.from_dict(value)
            except (KeyError, TypeError, ValueError):
                log.error("unreadable throttle record %s: %r; left in place", key, value)
                continue
            throttles[th.container_id] = th
            self._startup_notes.append(Note(
                "throttle", th.container_id, th.name,
                f"read back at start: throttled since {th.at:.0f} for "
                f"{', '.join(th.breaches) or 'an unrecorded breach'}", "restored",
                f"state {th.state}; before {th.before}; after {th.after}",
                {"breaches": list(th.breaches)}))
        tracks = {}
        for key, value in j.states(BREACH_PREFIX).items():
            try:
                t = Track.from_dict(value)
            except TypeError:
                log.error("unreadable breach record %s: %r; ignored", key, value)
                continue
            # One more grace period before the next rung: the host was not watched while
            # the daemon was down.
            tracks[t.key] = replace(t, step_at=max(t.step_at, now), clear_since=None, hold="")
            self._persisted[t.key] = t.durable()
        for th in throttles.values():
            for b in th.breaches:
                if b not in tracks:
                    # The breach's own record was lost (crash before it was written): the
                    # throttle still stands for it, at the throttle rung.
                    kind, _, subject = b.partition(":")
                    tracks[b] = Track(key=b, kind=kind, subject=subject or "host", name=b,
                                      resource="cpu" if kind == "psi_cpu" else "memory",
                                      opened_at=th.at, step=THROTTLE, acted_step=THROTTLE,
                                      step_at=now, top_severity=WARN)
        return LadderState(tracks=tracks, throttles=throttles)

    # ------------------------------------------------------------------ the pass

    def overrides(self, tick: Tick) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for cid, th in self.state.throttles.items():
            o: dict[str, Any] = {}
            held = th.in_force
            if "cpu" in held:
                o["cpu_quota_cores"] = held["cpu"]
            if "memory_reservation" in held:
                o["memory_reservation_bytes"] = held["memory_reservation"]
            if o:
                out[cid] = o
        return out

    def plan(self, tick: Tick) -> list[Action]:
        # Kept aside until observe(): a plan nobody executes (GET /plan) changes nothing.
        self._pending = plan_breach_actions(tick, self.state, self.ctx.capabilities)
        return list(self._pending.actions)

    def observe(self, tick: Tick, results: list[ActionResult]) -> None:
        p, self._pending = self._pending, None
        if p is None:
            return
        by_action = {id(r.action): r for r in results}
        not_done: list[tuple[Action, str]] = []
        for a in p.actions:
            r = by_action.get(id(a))
            if r is None:
                not_done.append((a, ""))  # dropped: the engine was down
            elif held_by(r):
                not_done.append((a, r.detail))
        self.state, self.last_plan = settle(self.state, p, not_done), p
        held_now: dict[tuple[str, str], str] = {}
        for r in results:
            if held_by(r):
                key = (r.action.kind, r.action.target)
                held_now[key] = held_by(r)
                if self._held.get(key) == held_now[key]:
                    continue  # still held, asked again: counted once
                self.counts[(r.action.kind, "held")] += 1
                continue
            self.counts[(r.action.kind, r.outcome)] += 1
            if r.action.kind != "alert" and not r.skipped and not r.dry_run:
                self.acted_at.append(r.time_s)
        self._held = held_now
        if any(r.action.kind in ("throttle", "unthrottle") and not r.dry_run for r in results):
            self._reload_throttles()
        breaches = getattr(self.ctx, "breaches", None)
        for kind in p.opened:
            if breaches is not None:
                breaches[ONSET_KIND.get(kind, kind)] += 1
        for n in self._startup_notes + p.notes:
            self._note(n, tick)
        self._startup_notes = []
        self._persist_tracks()

    def _reload_throttles(self) -> None:
        try:
            recs = self.ctx.journal.states(THROTTLE_PREFIX)
        except Exception:  # noqa: BLE001 - keep the last known set
            log.exception("cannot read throttle records")
            return
        throttles = {}
        for value in recs.values():
            try:
                th = Throttle.from_dict(value)
            except (KeyError, TypeError, ValueError):
                continue
            throttles[th.container_id] = th
        self.state = replace(self.state, throttles=throttles)

    def _note(self, n: Note, tick: Tick) -> None:
        self.counts[(n.kind, n.outcome)] += 1
        entry = {"time_s": tick.now, "kind": n.kind, "target": n.target[:12], "name": n.name,
                 "outcome": n.outcome, "reason": n.reason, "detail": n.detail}
        self.notes.append(entry)
        log.info("ladder %s %s %s: %s (%s)", n.outcome, n.kind, n.name, n.reason, n.detail,
                 extra={"action": n.kind, "target": n.name, "outcome": n.outcome})
        try:
            self.ctx.journal.note(n.kind, "ladder", n.target, n.name, n.reason, n.outcome,
                                  n.detail, n.params, dry_run=tick.cfg.dry_run, time_s=tick.now)
        except JournalError as e:
            log.error("%s", e)

    def _persist_tracks(self) -> None:
        j = self.ctx.journal
        try:
            for key, t in self.state.tracks.items():
                d = t.durable()
                if self._persisted.get(key) != d:
                    j.put_state(BREACH_PREFIX + key, d)
                    self._persisted[key] = d
            for key in list(self._persisted):
                if key not in self.state.tracks:
                    j.del_state(BREACH_PREFIX + key)
                    del self._persisted[key]
        except JournalError as e:
            log.error("cannot persist breach state: %s", e)

    # ------------------------------------------------------------------ executors

    def executors(self) -> dict[str, Callable[[Action], Outcome]]:
        return self.knobs.executors()

    # ------------------------------------------------------------------ publishing

    def status(self, tick: Tick) -> dict[str, Any]:
        now = tick.now
        L = tick.cfg.settings.ladder
        grace_s, clear_after_s = L.grace, L.clear_after
        p = self.last_plan
        sigs = {s.key: s for s in p.signals} if p else {}
        breaches = []
        for t in sorted(self.state.tracks.values(), key=lambda t: (-t.severity, t.key)):
            sig = sigs.get(t.key)
            top = top_rung(sig) if sig else 0
            nxt = STOP if t.step == STOP else t.step + 1
            breaches.append({
                "key": t.key, "kind": t.kind, "name": t.name, "level": SEVERITY_NAMES[t.severity],
                "summary": t.summary, "step": t.step, "step_name": STEP_NAMES.get(t.step, "none"),
                "open_s": round(now - t.opened_at, 1),
                "next_step": STEP_NAMES[nxt] if nxt <= top else None,
                "next_step_in_s": round(max(0.0, t.step_at + grace_s - now), 1) if nxt <= top else None,
                "clearing_for_s": round(now - t.clear_since, 1) if t.clear_since is not None else None,
                "clears_after_s": clear_after_s, "held": t.hold or None})
        throttled = [{"id": th.container_id[:12], "name": th.name, "breaches": list(th.breaches),
                      "before": th.before, "after": th.after, "since_s": round(now - th.at, 1),
                      "state": th.state}
                     for th in sorted(self.state.throttles.values(), key=lambda th: th.name)]
        return {
            "breaches": breaches,
            "throttled": throttled,
            "actions_last_minute": sum(1 for t in list(self.acted_at) if now - t < 60.0),
            "max_actions_per_minute": L.max_actions_per_minute,
            "hibernate_step": ("available" if "hibernate" in self.ctx.capabilities else
                               "skipped: no hibernation mechanism registered"),
            "psi": sorted(tick.snapshot.host.pressure) or "unavailable (kernel without PSI)",
            # What the journal this ladder restarted from looked like when it was opened.
            "journal_at_start": {
                "damaged": getattr(self.ctx.journal, "damaged", "") or None,
                "moved_to": getattr(self.ctx.journal, "damaged_moved_to", "") or None,
                "interrupted_actions": getattr(self.ctx.journal, "interrupted_at_open", 0)},
            "notes": list(self.notes)[-10:],
        }

    def collect(self, tick: Tick) -> Iterable["Metric"]:
        active = GaugeMetricFamily("resource_supervisor_breaches_active",
                                   "Breaches the ladder holds open, by kind", labels=["kind"])
        by_kind = Counter(t.kind for t in self.state.tracks.values())
        for kind in KIND_ORDER:
            active.add_metric([kind], by_kind.get(kind, 0))
        yield active
        step = GaugeMetricFamily("resource_supervisor_breach_step",
                                 "Ladder rung an open breach has reached (1 alert .. 5 stop)",
                                 labels=["breach", "kind"])
        level = GaugeMetricFamily("resource_supervisor_breach_level",
                                  "Level of an open breach now: 0 below its start level "
                                  "(clearing), 1 warn, 2 critical, 3 over", labels=["breach", "kind"])
        for t in self.state.tracks.values():
            step.add_metric([t.key, t.kind], t.step)
            level.add_metric([t.key, t.kind], t.severity)
        yield step
        yield level
        count = GaugeMetricFamily("resource_supervisor_throttled_containers",
                                  "Containers the ladder holds throttled")
        count.add_metric([], len(self.state.throttles))
        yield count
        per = GaugeMetricFamily("resource_supervisor_container_throttled",
                                "1 for each knob the ladder holds lowered on a container",
                                labels=["name", "id", "knob"])
        for th in self.state.throttles.values():
            for knob in sorted(th.knobs):
                per.add_metric([th.name, th.container_id[:12], knob], 1.0)
        yield per
        decisions = CounterMetricFamily("resource_supervisor_ladder_decisions",
                                        "Ladder actions and decisions by kind and outcome "
                                        "(ok, failed, skipped, held, cleared, restored, dry_run)",
                                        labels=["kind", "outcome"])
        for (kind, outcome), n in sorted(list(self.counts.items())):  # copied under the GIL
            decisions.add_metric([kind, outcome], n)
        yield decisions
