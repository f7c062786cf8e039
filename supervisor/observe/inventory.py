"""The set of containers, built once from the Docker API and kept current from the
engine's event stream (DESIGN: listing costs ~36 ms for 21 containers; events cost
nothing between changes). When the engine is unreachable the inventory says so, keeps
its last view marked stale, and reconnects with exponential backoff.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import replace
from typing import Callable

from supervisor.adapters.engine import Engine
from supervisor.model.errors import ContainerGone, EngineUnavailable
from supervisor.model.snapshot import ContainerInfo
from supervisor.model.units import docker_time_s

log = logging.getLogger(__name__)

# Events after which the container's inspect data may have changed.
_REINSPECT = {"create", "start", "restart", "die", "stop", "kill", "pause", "unpause",
              "update", "rename", "oom"}

# Exec events: Docker runs each health check as an exec, so these give every check's start
# and end (``exec_start: <command>``, ``exec_die``, attribute ``execID``); passed on to the
# listeners as they come, the container's view unchanged.
_EXEC = {"exec_create", "exec_start", "exec_die"}

Listener = Callable[[str, str, dict], None]  # (action, container id, raw event)

# OOM kills remembered per container: the newest this many, none older than this.
OOM_KILLS_KEPT = 32
OOM_KILLS_MAX_AGE_S = 3600.0


def event_time_s(ev: dict, default: float) -> float:
    if ev.get("timeNano"):
        return int(ev["timeNano"]) / 1e9
    if ev.get("time"):
        return float(ev["time"])
    return default


class Inventory:
    def __init__(self, engine: Engine, events_engine: Engine | None = None,
                 reconnect_max_s: float = 30.0, clock: Callable[[], float] = time.time):
        self.engine = engine
        # The event stream blocks a connection: it gets a client of its own.
        self.events_engine = events_engine or Engine(engine.base_url, engine.timeout_s)
        self.reconnect_max_s = reconnect_max_s
        self.clock = clock
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._containers: dict[str, ContainerInfo] = {}
        # Reads are numbered when they start; a container's view keeps the one that began
        # last, whatever order they finish in (see refresh_one).
        self._read_no = 0
        self._view_read: dict[str, int] = {}  # container id -> number of the read it holds
        self._engine_error = "not connected yet"
        self._listeners: list[Listener] = []
        # container id -> {run (its FinishedAt): time of its OOM kill}: one kill per run,
        # whether Docker's oom event, the die event's State.OOMKilled, or a relist told it.
        self._oom_kills: dict[str, dict[str, float]] = {}
        self._oom_pending: dict[str, float] = {}  # container id -> its last oom event
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.connected = threading.Event()  # set while the engine is reachable

    # ------------------------------------------------------------------ reading

    def view(self) -> tuple[ContainerInfo, ...]:
        with self._lock:
            return tuple(self._containers.values())

    def get(self, ident: str) -> ContainerInfo | None:
        with self._lock:
            c = self._containers.get(ident)
            if c is None:
                for v in self._containers.values():
                    if v.name == ident or v.id.startswith(ident):
                        return v
            return c

    @property
    def engine_up(self) -> bool:
        return self.connected.is_set()

    @property
    def engine_error(self) -> str:
        return self._engine_error

    def add_listener(self, fn: Listener) -> None:
        self._listeners.append(fn)

    # ------------------------------------------------------------------ updating

    def _next_read(self) -> int:
        with self._lock:
            self._read_no += 1
            return self._read_no

    def refresh(self) -> None:
        """Full re-list. Raises EngineUnavailable."""
        no = self._next_read()
        items = self.engine.list_containers()
        with self._lock:
            for c in items:
                if c.oom_killed:
                    self._note_oom_kill(c.id, c.finished_at, docker_time_s(c.finished_at))
            fresh = {c.id: self._with_kills(c) for c in items}
            view_read = {c.id: no for c in items}
            for cid, n in self._view_read.items():
                if n > no:  # read (or gone) after the listing began: newer than the list
                    if cid in self._containers:
                        fresh[cid] = self._containers[cid]
                    else:
                        fresh.pop(cid, None)
                    view_read[cid] = n
            self._containers = fresh
            self._view_read = view_read
        self.counts["relists"] += 1

    def refresh_one(self, cid: str) -> ContainerInfo | None:
        """Re-inspect one container (after an event or before acting on it) and return
        what the view now holds for it.

        Of two reads of one container, the view keeps the one that began last, not the
        one that finished last (issue 13): while Docker works on an update that the
        runtime then refuses, inspect reports the refused values for a moment; an event
        handled in that window reads them, and its read may finish only after the
        executor's read that follows the refusal. Numbered at the start, that stale read
        is dropped and the executor's read, begun after the refusal, stands."""
        no = self._next_read()
        try:
            info = self.engine.inspect(cid)
        except ContainerGone:
            with self._lock:
                if no > self._view_read.get(cid, 0):
                    self._containers.pop(cid, None)
                    self._forget_read(cid, no)
            return None
        with self._lock:
            if no < self._view_read.get(info.id, 0):
                self.counts["stale_reads_dropped"] += 1
                return self._containers.get(info.id)
            info = self._with_kills(info)
            self._containers[info.id] = info
            self._view_read[info.id] = no
        return info

    def _forget_read(self, cid: str, no: int) -> None:
        """A container left the view at read ``no``: remember that number for a while, so
        a read begun before it went cannot bring it back (lock held)."""
        self._view_read[cid] = no
        if len(self._view_read) > 2 * len(self._containers) + 256:
            # Gone containers' numbers only matter for the milliseconds a read takes.
            self._view_read = {k: v for k, v in self._view_read.items()
                               if k in self._containers or v > no - 256}

    # ------------------------------------------------------------------ OOM kills

    def _note_oom_kill(self, cid: str, run: str, at_s: float | None) -> bool:
        """Remember that the run ``run`` of ``cid`` was OOM-killed at ``at_s`` (lock held).
        True when this is news."""
        if at_s is None:
            return False
        kills = self._oom_kills.setdefault(cid, {})
        if run in kills:
            return False
        kills[run] = at_s
        if len(kills) > OOM_KILLS_KEPT or min(kills.values()) < at_s - OOM_KILLS_MAX_AGE_S:
            keep = sorted(kills.items(), key=lambda kv: kv[1])[-OOM_KILLS_KEPT:]
            kills.clear()
            kills.update((k, t) for k, t in keep if t >= at_s - OOM_KILLS_MAX_AGE_S)
        self.counts["oom_kills"] += 1
        return True

    def _with_kills(self, info: ContainerInfo) -> ContainerInfo:
        """``info`` carrying the OOM kills remembered for it (lock held)."""
        kills = self._oom_kills.get(info.id)
        times = tuple(sorted(kills.values())) if kills else ()
        return info if times == info.oom_kill_times_s else replace(info, oom_kill_times_s=times)

    def oom_kill_times(self, cid: str) -> tuple[float, ...]:
        with self._lock:
            return tuple(sorted((self._oom_kills.get(cid) or {}).values()))

    def _oom_event(self, action: str, cid: str, ev: dict, info: ContainerInfo | None) -> None:
        """Docker's ``oom`` event marks the container; its ``die`` is a kill when the
        inspect after it says State.OOMKilled or an oom event came since its last die.
        One kill per run, named by the run's FinishedAt (what a relist sees too), so a
        kill is counted once however it was told, and a restart's new cgroup forgets
        nothing. An oom event without a die (a child process killed, the container lives
        on) is no restart-loop kill: the cgroup counters tell those."""
        now = event_time_s(ev, self.clock())
        with self._lock:
            if action == "oom":
                self._oom_pending[cid] = now
                return
            pending = self._oom_pending.pop(cid, None)
            if info is None or not (info.oom_killed or pending is not None):
                return
            at = docker_time_s(info.finished_at) or now
            if self._note_oom_kill(cid, info.finished_at or f"event {now:.3f}", at):
                log.info("container %s (%s) was OOM-killed (restarts: %d)",
                         info.name, cid[:12], info.restart_count)
            cur = self._containers.get(cid)
            if cur is not None:
                self._containers[cid] = self._with_kills(cur)

    def handle_event(self, ev: dict) -> None:
        action = (ev.get("Action") or ev.get("status") or "").split(":")[0].strip()
        cid = ev.get("id") or (ev.get("Actor") or {}).get("ID") or ""
        if not cid:
            return
        self.counts["events"] += 1
        if action == "destroy":
            no = self._next_read()
            with self._lock:
                self._containers.pop(cid, None)
                self._oom_kills.pop(cid, None)
                self._oom_pending.pop(cid, None)
                self._forget_read(cid, no)
        elif action in _EXEC:
            pass  # nothing to re-read: listeners learn of execs (health checks' windows)
        elif action in _REINSPECT or action.startswith("health_status"):
            # Re-inspecting gives the current truth, so two events out of order, or one
            # replayed after a reconnect, cannot leave a stale state behind.
            info = self.refresh_one(cid)
            if action in ("oom", "die"):
                self._oom_event(action, cid, ev, info)
        else:
            return
        full = ev.get("Action") or ev.get("status") or ""
        for fn in list(self._listeners):
            try:
                fn(full, cid, ev)
            except Exception:  # a listener's bug must not stop the event stream
                log.exception("inventory listener failed on %s %s", full, cid[:12])
                self.counts["listener_errors"] += 1

    def _set_engine(self, up: bool, error: str = "") -> None:
        if up != self.connected.is_set():
            log.info("docker engine %s%s", "reachable" if up else "unreachable",
                     f": {error}" if error else "")
        self._engine_error = error
        if up:
            self.connected.set()
        else:
            self.connected.clear()

    # ------------------------------------------------------------------ the thread

    def run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                since = self.clock() - 1
                self.refresh()
                self._set_engine(True)
                backoff = 0.5
                for fn in list(self._listeners):
                    try:
                        fn("relist", "", {})
                    except Exception:
                        log.exception("inventory listener failed on relist")
                        self.counts["listener_errors"] += 1
                for ev in self.events_engine.events(since=since):
                    if self._stop.is_set():
                        break
                    self.handle_event(ev)
                if not self._stop.is_set():
                    raise EngineUnavailable("event stream ended")
            except EngineUnavailable as e:
                self.counts["engine_errors"] += 1
                self._set_engine(False, str(e))
                self.engine.reset()
                self.events_engine.reset()
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.reconnect_max_s)
                self.counts["reconnects"] += 1

    def start(self) -> threading.Thread:
        self._thread = threading.Thread(target=self.run, name="inventory", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self) -> None:
        self._stop.set()
        self.events_engine.close_events()
        if self._thread:
            self._thread.join(timeout=5)
