"""Hibernation of idle containers (Rule 6.3) and wake on demand, without a proxy: the
component that ties its layers together.

- observe/activity.py measures each candidate's activity (CPU, network incl. its own
  loopback, block I/O, TCP connections opened) and keeps its idle clock;
- policy/hibernation.py decides, purely: the candidates and how they are sampled, the
  containers idle for their class's idle_after (never one the rule book forbids), what
  their sockets say just before, what is watched while frozen;
- act/hibernation.py executes (``hibernate``: pause + release memory, or stop; ``wake``),
  after the one re-check (act/recheck.py); act/hibernation_store.py keeps the
  hibernations durably (journal state table);
- runtime/wake_watcher.py watches frozen containers for clients and restores the
  hibernations a restarted daemon reads back;
- publish/hibernation.py renders status rows, metric families and API replies.

Health checks are not activity: the engine's exec events of a container's health check
(``exec_start: <its Test command>``, ``exec_die``) open and close a check window in the
activity tracker, with a sample of the container's counters at each edge (the cgroup
read here, the namespace by the tracker), so what the check moves is left out of the idle
clock. A container woken by us that has a health check counts ready at its next
``health_status: healthy`` event, and is not hibernated again until then.

``POST /hibernate`` (``supctl hibernate``, with ``force`` or not) and ``POST /wake`` go
through the actuator like the loop's own actions (same dry-run rule, journal, counts).
Only containers recorded as hibernated by us are ever unpaused; one that somebody else
unpaused (or started) is simply running again and is forgotten.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any, Callable

from supervisor.act.component import Component, Context
from supervisor.act.hibernation import (ContainerLocks, HibernateExecutor, HibernationStats,
                                        WakeExecutor, swap_total_bytes)
from supervisor.act.hibernation_store import HibernationStore
from supervisor.model.activity import is_health_exec
from supervisor.model.errors import CgroupError
from supervisor.adapters.netns import NetnsWorker
from supervisor.model.actions import Action, ActionResult, Outcome
from supervisor.model.params import Param
from supervisor.model.snapshot import ContainerInfo
from supervisor.observe.activity import ActivityTracker
from supervisor.policy.hibernation import (OWNER, PAUSED, STOPPED, HibernationState, candidates,
                                           plan_hibernation, retry_times)
from supervisor.policy.tick import Tick
from supervisor.publish.report import Deferred
from supervisor.publish.hibernation import (HibernationView, LatencyHistogram, api_reply,
                                            metric_families, status_section)
from supervisor.runtime.wake_watcher import WakeWatcher

log = logging.getLogger(__name__)

# After a wake, a health-checked container not healthy within this time is reported as
# not ready (and no longer waited for).
READY_TIMEOUT_S = 300.0
# How often the host's swap size is read again (status says what a pause can release).
SWAP_REREAD_S = 60.0


class Hibernation(Component):
    name = "hibernation"

    def __init__(self, ctx: Context, worker: NetnsWorker | None = None,
                 activity: ActivityTracker | None = None):
        super().__init__(ctx)
        self.worker = worker or NetnsWorker(ctx.proc)
        # The daemon's tracker, fed by its sampler's sweep; without one (a component
        # driven on its own) a tracker of our own, sampled in observe.
        self.activity = activity or ctx.activity or ActivityTracker(ctx.proc)
        self.wake_latency = LatencyHistogram()
        self.ready_latency = LatencyHistogram()
        self._report_view: tuple[Tick, HibernationView] | None = None
        self.stats = HibernationStats(self.wake_latency, self.ready_latency)
        self.counts = self.stats.counts
        self.locks = ContainerLocks()
        self.store = HibernationStore(ctx.journal, self.counts)
        self.store.on_forget = self._on_forget
        self.hibernator = HibernateExecutor(
            ctx, self.worker, self.store, self.stats, self.locks, mark_busy=self._mark_busy,
            drop_track=lambda cid: self.activity.forget(OWNER, cid),
            watch=lambda cid, pid, targets: self.watcher.watch(cid, pid, targets),
            recover=lambda cid: self.watcher.restore_later(cid))
        self.waker = WakeExecutor(ctx, self.store, self.stats, self.locks)
        self.watcher = WakeWatcher(ctx, self.worker, self.store, self.locks, self.counts,
                                   run_wake=self.run_wake, owned_sockets=self.hibernator.owned_sockets)
        self._lock = threading.Lock()
        self._retry_at: dict[str, float] = {}
        self._swap_bytes: int | None = None
        self._swap_read_mono = -math.inf
        self._loaded = False
        # Woken by us, with a health check, not healthy since: never hibernated again
        # before it is (a container paused before its check passes is never healthy).
        self._unready: set[str] = set()

    def hibernated_ids(self) -> frozenset[str]:
        """Ids of the containers currently hibernated by us (any mode)."""
        return self.store.ids()

    # ------------------------------------------------------------------ lifecycle

    def load(self) -> None:
        """Read the persisted hibernations (a restarted daemon keeps watching them)."""
        if self._loaded:
            return
        self._loaded = True
        ids = self.store.load()
        for cid in ids:
            self.watcher.restore_later(cid)
        if ids:
            log.info("hibernation: %d container(s) hibernated before the restart; checking them",
                     len(ids))

    def start(self) -> None:
        self.load()
        self._refresh_swap()
        self.ctx.inventory.add_listener(self._on_event)
        self.watcher.start()

    def stop(self) -> None:
        self.watcher.stop()
        self.worker.stop()

    # ------------------------------------------------------------------ pass hooks

    def plan(self, tick: Tick) -> list[Action]:
        with self._lock:
            retry_at = dict(self._retry_at)
            unready = frozenset(self._unready)
        return plan_hibernation(tick, HibernationState(self.activity.tracks(OWNER),
                                                       self.store.records(), retry_at, unready))

    def observe(self, tick: Tick, results: list[ActionResult]) -> None:
        """Says which containers the activity tracker follows from now on (sampling the
        ones the sweep did not), and holds back a retry after a failed or dry-run
        decision."""
        self.load()  # normally done by start(); a daemon driven pass by pass loads here
        if not tick.snapshot.engine_up:
            return  # PIDs of a stale view may belong to other processes by now
        self.activity.watch(OWNER, candidates(tick, self.store.ids()))
        self.activity.sample_snapshot(tick.snapshot)
        with self._lock:
            self._retry_at = retry_times(self._retry_at, results, tick)
            self._unready &= {c.info.id for c in tick.snapshot.containers}
        self.locks.prune({c.info.id for c in tick.snapshot.containers} | self.store.ids())
        self._expire_readiness()
        self._refresh_swap()

    def executors(self) -> dict[str, Callable[[Action], Outcome]]:
        return {"hibernate": self.hibernator, "wake": self._wake}

    def _wake(self, action: Action) -> Outcome:
        """The wake executor; a woken container that is not ready yet (it has a health
        check) is held from hibernation until its next healthy check."""
        out = self.waker(action)
        if out.ok and not out.skipped and (out.after or {}).get("ready") is False:
            with self._lock:
                self._unready.add(action.target)
        return out

    def _mark_busy(self, cid: str, reason: str) -> None:
        """Restart the idle clock of a container a socket check found busy."""
        self.activity.mark_busy(OWNER, cid, self.ctx.clock(), reason)

    def _on_forget(self, cid: str) -> None:
        self.watcher.unwatch(cid)
        self.activity.forget(OWNER, cid)

    def _refresh_swap(self) -> None:
        if time.monotonic() - self._swap_read_mono >= SWAP_REREAD_S:
            self._swap_read_mono = time.monotonic()
            self._swap_bytes = swap_total_bytes(self.ctx.proc)

    def run_wake(self, cid: str, name: str, trigger: str, reason: str,
                 detected_mono: float | None = None, source: str = "hibernation") -> ActionResult:
        return self.run_action(Action("wake", cid, name, reason, source,
                                      {"trigger": trigger, "detected_mono": detected_mono}))

    def run_action(self, action: Action) -> ActionResult:
        """Execute one of our actions outside the daemon's pass (the watcher, the control
        API) through the actuator: the same dry-run rule, journal and counts."""
        assert self.ctx.execute is not None, "the daemon sets ctx.execute"
        return self.ctx.execute(action)

    # ------------------------------------------------------------------ events

    def _on_event(self, action: str, cid: str, ev: dict) -> None:
        if action.startswith("exec_"):
            self._on_exec(action, cid, ev)
            return
        if action.startswith("health_status"):
            if action.split(":", 1)[-1].strip() == "healthy":
                self._ready(cid)
            return
        rec = self.store.get(cid)
        if rec is None or self.waker.is_waking(cid):
            return
        # The event stream starts a little in the past (inventory: since = start - 1 s), so
        # a restarted daemon also hears the unpause of a wake that came before this
        # hibernation: an event older than the record is not about it.
        at_s = (ev.get("timeNano") or 0) / 1e9 or float(ev.get("time") or 0)
        if at_s and at_s <= rec.since_s:
            return
        ours_gone = False
        if action == "destroy":
            ours_gone, why = True, "removed"
        elif rec.mode == "pause" and action in ("unpause", "start", "restart", "die"):
            ours_gone, why = True, ("unpaused by somebody else: running again" if action == "unpause"
                                    else f"{action} while hibernated")
        elif rec.mode == "stop" and action in ("start", "restart"):
            ours_gone, why = True, "started by somebody else: running again"
        if ours_gone and rec.phase in (PAUSED, STOPPED):
            log.info("hibernated container %s %s; forgotten", rec.name, why)
            self.counts["forgotten"] += 1
            self.store.forget(cid)

    def _on_exec(self, action: str, cid: str, ev: dict) -> None:
        """A health check's exec started or ended: its window in the activity tracker, and
        a sample at the edge (only for a container the tracker watches)."""
        kind, _, command = action.partition(":")
        attrs = (ev.get("Actor") or {}).get("Attributes") or {}
        exec_id = attrs.get("execID") or ""
        info = self.ctx.inventory.get(cid)
        if not exec_id or info is None or info.id != cid or not info.healthcheck_test:
            return
        if not self.activity.is_watched(cid):
            return
        at_s = ev.get("timeNano", 0) / 1e9 or float(ev.get("time") or self.ctx.clock())
        if kind.strip() == "exec_start":
            if not is_health_exec(info.healthcheck_test, command):
                return  # somebody's docker exec: a client like any other
            self.activity.check_started(cid, exec_id, at_s, info.healthcheck_timeout_s)
        elif kind.strip() == "exec_die":
            if not self.activity.check_ended(cid, exec_id, at_s):
                return
        else:
            return
        try:
            loc = self.ctx.cgroups.locate(cid, info.pid, info.cgroup_parent)
            stats = self.ctx.cgroups.read_stats(loc, with_pressure=False)
        except CgroupError:
            self.counts["check_edge_read_errors"] += 1
            return
        self.activity.boundary(info, self.ctx.clock(), stats.cpu_usage_s,
                               stats.blkio_read_bytes + stats.blkio_write_bytes)

    def _ready(self, cid: str) -> None:
        """A woken container's first healthy event: the wake-to-ready time."""
        with self._lock:
            self._unready.discard(cid)
        with self.stats.lock:
            waiting = self.stats.awaiting_ready.pop(cid, None)
        if waiting is None:
            return
        t0, name, trigger = waiting
        ready_s = time.monotonic() - t0
        self.ready_latency.observe(ready_s)
        with self.stats.lock:
            if self.stats.last_wake.get("id") == cid[:12]:
                self.stats.last_wake = {**self.stats.last_wake, "ready": True,
                                        "ready_ms": round(ready_s * 1000, 1)}
        log.info("%s ready (healthy) %.0f ms after the %s", name, ready_s * 1000, trigger)

    def _expire_readiness(self) -> None:
        now = time.monotonic()
        with self.stats.lock:
            for cid, (t0, name, _) in list(self.stats.awaiting_ready.items()):
                if now - t0 > READY_TIMEOUT_S:
                    del self.stats.awaiting_ready[cid]
                    self.counts["not_ready_after_wake"] += 1
                    log.warning("%s not healthy %.0fs after its wake", name, now - t0)

    # ------------------------------------------------------------------ control API

    def routes(self):
        name = {"name": Param(str, required=True)}
        return {("POST", "/hibernate"): (self._api_hibernate, {
                    **name, "mode": Param(str), "force": Param(bool, default=False)}),
                ("POST", "/wake"): (self._api_wake, name)}

    def _resolve(self, body: dict) -> tuple[ContainerInfo | None, tuple[int, dict] | None]:
        name = body["name"]
        if not name.strip():
            return None, (400, {"error": 'body must name a container: {"name": "NAME"}'})
        info = self.ctx.inventory.get(name.strip())
        if info is None:
            return None, (404, {"error": f"no container named {name.strip()!r}"})
        return info, None

    def _api_hibernate(self, body: dict) -> tuple[int, dict]:
        """``force`` skips the socket checks, never the rule book: the executor's
        re-check refuses an untouchable class either way."""
        info, err = self._resolve(body)
        if err:
            return err
        assert info is not None
        mode = body.get("mode")
        if mode is not None and mode not in ("pause", "stop"):
            return 400, {"error": f"mode must be 'pause' or 'stop', not {mode!r}"}
        params: dict[str, Any] = {"trigger": "api", "active_window_s": 5.0}
        if mode:
            params["mode"] = mode
        if body["force"]:
            params["force"] = True
        result = self.run_action(Action("hibernate", info.id, info.name, "requested through the API",
                                        "api", params, destructive=mode == "stop"))
        return api_reply(result, "hibernated")

    def _api_wake(self, body: dict) -> tuple[int, dict]:
        info, err = self._resolve(body)
        if err:
            return err
        assert info is not None
        if info.id not in self.store.ids():
            return 409, {"name": info.name, "id": info.short_id, "state": info.state,
                         "error": f"{info.name} is {info.state} and was not hibernated by the "
                                  "supervisor: left as it is"}
        result = self.run_wake(info.id, info.name, "api", "requested through the API", source="api")
        return api_reply(result, "woken")

    # ------------------------------------------------------------------ publishing

    def view(self) -> HibernationView:
        """A copy of the state for status and /metrics (no file read, no engine call)."""
        now = time.monotonic()
        with self.stats.lock:
            s = self.stats
            hibs, wakes, last, released = dict(s.hibernations), dict(s.wakes), dict(s.last_wake), \
                s.released_bytes_total
            awaiting = {cid: (name, now - t0) for cid, (t0, name, _) in s.awaiting_ready.items()}
        return HibernationView(
            records=tuple(self.store.records().values()), tracks=self.activity.tracks(OWNER),
            watch_errors=self.watcher.errors_by_id(), hibernations=hibs, wakes=wakes,
            last_wake=last, awaiting_ready=awaiting, released_bytes_total=released,
            swap_total_bytes=self._swap_bytes, watcher_alive=self.watcher.alive(),
            watched=self.watcher.watched(), polls=self.watcher.polls,
            watch_cpu_s=self.watcher.cpu_s, counts=self._counts())

    def _counts(self) -> dict[str, int]:
        counts = dict(self.counts)
        if self.activity.counts["counter_read_errors"]:
            counts["counter_read_errors"] = self.activity.counts["counter_read_errors"]
        return counts

    def status(self, tick: Tick) -> Deferred:
        v = self.view()
        self._report_view = (tick, v)
        return Deferred(lambda: status_section(tick, v))

    def collect(self, tick: Tick) -> Deferred:
        # The view status took for this pass's report: status and /metrics show one state.
        seen = self._report_view
        v = seen[1] if seen is not None and seen[0] is tick else self.view()
        wake, ready = self.wake_latency.frozen(), self.ready_latency.frozen()
        return Deferred(lambda: list(metric_families(tick, v, wake, ready)))
