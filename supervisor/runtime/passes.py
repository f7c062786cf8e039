"""One pass: sample -> plan (every component, pure) -> act (the actuator) -> observe, and
the engine events gathered between passes. The loop, GET /plan and POST /apply take
turns through ``lock``; publishing the pass's report is the daemon's, right after."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from dataclasses import replace
from typing import TYPE_CHECKING, Callable, Sequence

from supervisor.act.actuator import Actuator
from supervisor.act.component import Component
from supervisor.model.actions import Action, ActionResult
from supervisor.model.config import Config
from supervisor.model.pools import account, reserve_state
from supervisor.policy.tick import Tick, merge_override

if TYPE_CHECKING:  # pragma: no cover
    from supervisor.observe.history import History
    from supervisor.observe.inventory import Inventory
    from supervisor.observe.sampler import Sampler

log = logging.getLogger("supervisor.daemon")

# Actions that act on a container; held back while the engine is down (stale view).
# "pool_cgroups" writes only the pools' own cgroups, which need no engine.
_HOST_ONLY_KINDS = {"alert", "pool_cgroups"}

Planned = list[tuple[Component, Action]]


def with_dry_run(cfg: Config, dry_run: bool) -> Config:
    """The same config with ``dry_run`` set so."""
    return replace(cfg, settings=cfg.settings.model_copy(update={"dry_run": dry_run}))


def acting(cfg: Config) -> Config:
    """The same config with dry_run off (GET /plan plans, POST /apply acts, for real)."""
    return with_dry_run(cfg, False) if cfg.dry_run else cfg


def plan_tick(components: Sequence[Component], tick: Tick,
              counts: "Counter[str]") -> tuple[Planned, list[Action]]:
    """What the components decide on ``tick``: (actions to run, actions held back
    because the engine is down). Runs every plan() and executes nothing."""
    for comp in components:
        for cid, own in comp.overrides(tick).items():
            tick.overrides[cid] = merge_override(tick.overrides.get(cid, {}), own)
    planned: Planned = []
    for comp in components:
        try:
            planned += [(comp, a) for a in comp.plan(tick)]
        except Exception:  # noqa: BLE001 - one planner's bug must not stop the others
            log.exception("planner %s failed", comp.name)
            counts["planner_errors"] += 1
    held: list[Action] = []
    if not tick.snapshot.engine_up:
        # The container view is stale while the engine is down: no container action.
        held = [a for _, a in planned if a.kind not in _HOST_ONLY_KINDS]
        planned = [(c, a) for c, a in planned if a.kind in _HOST_ONLY_KINDS]
    return planned, held


class Passes:
    """The passes of one daemon and what they leave for the next: the last two ticks,
    the last results and durations, the engine events not yet seen by a pass."""

    def __init__(self, *, inventory: "Inventory", sampler: "Sampler", history: "History",
                 actuator: Actuator, components: Sequence[Component], counts: "Counter[str]",
                 clock: Callable[[], float], get_config: Callable[[], Config],
                 keepalive: Callable[[], None], wake: threading.Event):
        self.inventory = inventory
        self.sampler = sampler
        self.history = history
        self.actuator = actuator
        self.components = components
        self.counts = counts
        self.clock = clock
        self.get_config = get_config
        self.keepalive = keepalive
        self.wake = wake
        # One pass at a time: the loop, GET /plan and POST /apply take turns.
        self.lock = threading.RLock()
        self._events_lock = threading.Lock()
        self._event_ids: set[str] = set()
        self._relisted = True
        self._last_reconcile = 0.0
        self.last_tick: Tick | None = None
        self.prev_tick: Tick | None = None  # the pass before last_tick (CPU % in status)
        self.last_results: list[ActionResult] = []
        self.last_pass_duration_s = 0.0
        self.durations_s: deque[float] = deque(maxlen=1000)

    def on_event(self, action: str, cid: str, ev: dict) -> None:
        """The inventory's listener: remember what changed, and wake the loop."""
        with self._events_lock:
            if action == "relist":
                self._relisted = True
                self.sampler.invalidate()
            else:
                self._event_ids.add(cid)
                self.sampler.invalidate(cid)
        self.wake.set()

    def plan_now(self) -> dict:
        """GET /plan: what the daemon would do on its last snapshot, changing nothing: a
        full (reconcile) pass planned as if it acted for real, and nothing executed."""
        with self.lock:
            tick = self.last_tick
            if tick is None:
                return {"ready": False, "actions": [], "held": []}
            planned, held = plan_tick(self.components, replace(
                tick, cfg=acting(tick.cfg), overrides={}, reconcile=True), self.counts)
        return {"ready": True, "snapshot_time_s": tick.snapshot.time_s,
                "dry_run": tick.cfg.dry_run, "engine_up": tick.snapshot.engine_up,
                "actions": [a.to_dict() for _, a in planned],
                "held": [a.to_dict() for a in held]}

    def _tick(self, cfg: Config, reconcile: bool | None) -> Tick:
        now = self.clock()
        with self._events_lock:
            events = tuple(self._event_ids)
            self._event_ids.clear()
            relisted, self._relisted = self._relisted, False
        if reconcile is None:
            reconcile = relisted or (time.monotonic() - self._last_reconcile >= cfg.reconcile_s)
        if reconcile:
            self._last_reconcile = time.monotonic()
        snap = self.sampler.sample(self.inventory.view(), cfg, self.inventory.engine_up,
                                   self.inventory.engine_error)
        for c in snap.containers:
            if c.stats is not None:
                self.history.record(c.info.id, c.stats.memory_working_set_bytes)
        self.history.forget_except({c.info.id for c in snap.containers})
        return Tick(snapshot=snap, cfg=cfg, now=now, pools=account(snap, cfg),
                    reserve=reserve_state(snap, cfg), history=self.history,
                    reconcile=reconcile, events=events,
                    activity=self.sampler.activity.view(snap))

    def run(self, reconcile: bool | None, dry_run: bool | None) -> tuple[Tick, list[ActionResult]]:
        """One pass (the caller holds ``lock``). ``dry_run`` overrides the config's."""
        t0 = time.perf_counter()
        cfg = self.get_config()
        if dry_run is False and cfg.dry_run:
            cfg = acting(cfg)  # planners plan for real too (they may hold back repeats in dry-run)
        tick = self._tick(cfg, reconcile)
        self.keepalive()
        planned, held = plan_tick(self.components, tick, self.counts)
        if held:
            self.counts["actions_held_engine_down"] += len(held)
        results = []
        for _, a in planned:
            results.append(self.actuator.execute_one(
                a, dry_run=cfg.dry_run if dry_run is None else dry_run))
            self.keepalive()
        live = {c.info.id for c in tick.snapshot.containers}
        for r in results:
            # A cgroup write is no engine event: read the container in full next pass. An
            # alert or a skipped action wrote nothing.
            if (not r.dry_run and not r.skipped and r.action.kind != "alert"
                    and r.action.target in live):
                self.sampler.invalidate(r.action.target)
        by_comp: dict[int, list[ActionResult]] = {}
        for (comp, _), r in zip(planned, results):
            by_comp.setdefault(id(comp), []).append(r)
        for comp in self.components:
            try:
                comp.observe(tick, by_comp.get(id(comp), []))
            except Exception:  # noqa: BLE001
                log.exception("observer %s failed", comp.name)
                self.counts["planner_errors"] += 1
        self.prev_tick, self.last_tick = self.last_tick, tick
        self.last_results = results
        self.counts["passes"] += 1
        self.last_pass_duration_s = time.perf_counter() - t0
        self.durations_s.append(self.last_pass_duration_s)
        return tick, results
