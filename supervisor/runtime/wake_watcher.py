"""Wake on demand, without a proxy: the watcher thread of hibernation.

It polls every ``hibernation.poll_interval`` the listening sockets (and the established
connections) of each container hibernated in pause mode, through exact sock_diag lookups
in its namespace (``netdiag.ConnectionProbe``). A frozen container's listening sockets
still complete TCP handshakes, so a client that connects shows as a non-empty accept
queue: the container is unpaused at once and accepts the very connection that woke it.
Docker stops the health monitor of a paused container and marks it unhealthy (moby
daemon/health.go, CloseMonitorChannel), and its first check after the unpause comes one
health-check interval later: wake-to-ready is about that interval, while the waiting
client is served at once.

The same thread checks the hibernations a restarted daemon read back (``restore_later``):
still paused (or exited) and not woken by somebody else meanwhile, they are ours again
and watched; otherwise they are forgotten.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable

from supervisor.act.component import Context
from supervisor.act.hibernation import ContainerLocks
from supervisor.act.hibernation_store import HibernationStore
from supervisor.adapters.netdiag import ConnectionProbe, list_tcp, open_probe
from supervisor.adapters.netns import NetdiagError, NetnsWorker
from supervisor.model.actions import ActionResult
from supervisor.model.errors import EngineUnavailable
from supervisor.model.snapshot import ContainerInfo
from supervisor.model.sockets import TcpSocket
from supervisor.policy.hibernation import PAUSED, PAUSING, STOPPED, STOPPING, wake_targets

log = logging.getLogger("supervisor.runtime.hibernation")

# The watcher's wait while nothing is hibernated (a new watch wakes it at once).
IDLE_WATCH_WAIT_S = 1.0


@dataclass
class _Watch:
    cid: str
    pid: int
    probe: ConnectionProbe | None = None
    error: str = ""
    retry_mono: float = 0.0
    errors: int = 0
    wake_failures: int = 0
    next_wake_mono: float = 0.0  # after a failed wake, not before this


class WakeWatcher:
    """``run_wake(cid, name, trigger, reason, detected_mono)`` wakes a container through
    the actuator; ``owned_sockets(info)`` names the sockets of one in a shared namespace."""

    def __init__(self, ctx: Context, worker: NetnsWorker, store: HibernationStore,
                 locks: ContainerLocks, counts: "Counter[str]", *,
                 run_wake: Callable[..., ActionResult],
                 owned_sockets: Callable[[ContainerInfo], frozenset[int] | None]):
        self.ctx, self.worker, self.store, self.locks, self.counts = ctx, worker, store, locks, counts
        self.run_wake, self.owned_sockets = run_wake, owned_sockets
        self.cpu_s = 0.0
        self.polls = 0
        self._lock = threading.RLock()
        self._watches: dict[str, _Watch] = {}
        self._restore: set[str] = set()
        self._restore_retry_mono = 0.0
        self._stop = threading.Event()
        self._kick = threading.Event()  # a watch started, or stop: the idle watcher wakes
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="hibernation-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._kick.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            for w in self._watches.values():
                if w.probe is not None:
                    w.probe.close()
            self._watches.clear()

    def alive(self) -> bool:
        return bool(self._thread and self._thread.is_alive())

    # ------------------------------------------------------------------ what is watched

    def watch(self, cid: str, pid: int, targets: list[TcpSocket]) -> str:
        """Watch a frozen container's sockets for clients; what is watched, in words."""
        w = _Watch(cid, pid)
        with self._lock:
            old = self._watches.pop(cid, None)
            self._watches[cid] = w
        self._kick.set()
        if old is not None and old.probe is not None:
            old.probe.close()
        if not targets:
            return "no TCP listener to watch: wakes on request only"
        self._open_probe(w, targets)
        if w.probe is None:
            return f"connections not watched yet: {w.error}"
        return "watching " + ", ".join(t.describe() for t in targets[:6]) + \
               (f" and {len(targets) - 6} more" if len(targets) > 6 else "")

    def unwatch(self, cid: str) -> None:
        with self._lock:
            self._restore.discard(cid)
            w = self._watches.pop(cid, None)
        if w is not None and w.probe is not None:
            w.probe.close()

    def restore_later(self, cid: str) -> None:
        """Look at a hibernation again once the engine answers (read back at start, or
        one whose pause got no answer)."""
        with self._lock:
            self._restore.add(cid)
        self._kick.set()

    def errors_by_id(self) -> dict[str, str]:
        with self._lock:
            return {cid: w.error for cid, w in self._watches.items()}

    def watched(self) -> int:
        with self._lock:
            return sum(1 for w in self._watches.values() if w.probe is not None)

    def _open_probe(self, w: _Watch, targets: list[TcpSocket]) -> None:
        try:
            w.probe = open_probe(self.worker, w.pid, targets)
            w.error = ""
        except NetdiagError as e:
            w.errors += 1
            w.error = str(e)
            w.retry_mono = time.monotonic() + min(30.0, 2.0 ** min(w.errors, 5))
            self.counts["watch_errors"] += 1
            log.warning("cannot watch the sockets of %s: %s", w.cid[:12], e)

    # ------------------------------------------------------------------ the thread

    def _loop(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            c0 = time.thread_time()
            try:
                self._restore_pending()
                self._poll_once()
            except Exception:  # noqa: BLE001 - the watcher must outlive any one bug
                self.counts["watch_loop_errors"] += 1
                log.exception("hibernation watcher pass failed")
            self.cpu_s += time.thread_time() - c0
            self.polls += 1
            with self._lock:
                idle = not self._watches and not self._restore
            if idle:
                # Nothing frozen to watch: wait for a watch to start (or stop), rather
                # than polling nothing ten times a second.
                self._kick.wait(IDLE_WATCH_WAIT_S)
                self._kick.clear()
                continue
            interval_s = float(self.ctx.get_config().settings.hibernation.poll_interval)
            self._stop.wait(max(0.005, interval_s - (time.monotonic() - t0)))

    def _poll_once(self) -> None:
        with self._lock:
            watches = list(self._watches.values())
        records = self.store.records()
        now = time.monotonic()
        for w in watches:
            rec = records.get(w.cid)
            if rec is None:
                continue
            if w.probe is None:
                if rec.targets and now >= w.retry_mono:
                    self._open_probe(w, [TcpSocket.from_dict(t) for t in rec.targets])
                continue
            try:
                waiting = w.probe.waiting()
            except NetdiagError as e:
                w.errors += 1
                w.error = str(e)
                self.counts["watch_errors"] += 1
                continue
            if waiting and now >= w.next_wake_mono:
                detected = time.monotonic()
                what = ", ".join(f"{x.target.describe()} ({x.rqueue})" for x in waiting[:3])
                result = self.run_wake(w.cid, rec.name, "connection", f"client waiting on {what}",
                                       detected_mono=detected)
                if not result.ok and not result.skipped:
                    # e.g. the engine is down: try again, less and less often (journal
                    # rows too), up to every 10 s
                    w.wake_failures += 1
                    w.next_wake_mono = time.monotonic() + min(10.0, 0.5 * 2 ** w.wake_failures)

    # ------------------------------------------------------------------ restore

    def _restore_pending(self) -> None:
        if time.monotonic() < self._restore_retry_mono:
            return
        with self._lock:
            pending = list(self._restore)
        for cid in pending:
            try:
                # Under the container's lock: a wake (API, connection) racing the check
                # would otherwise be taken for "somebody else woke it", or be followed by
                # the record being written back for a container that runs again.
                with self.locks(cid):
                    self._restore_one(cid)
            except EngineUnavailable:
                self._restore_retry_mono = time.monotonic() + 1.0  # the engine is down
                return
            with self._lock:
                self._restore.discard(cid)

    def _restore_one(self, cid: str) -> None:
        rec = self.store.get(cid)
        if rec is None:
            return
        info = self.ctx.inventory.refresh_one(cid)
        if info is None:
            log.info("hibernated container %s no longer exists; forgotten", rec.name)
            self.store.forget(cid)
            return
        pause = rec.mode == "pause"
        if info.state not in (("paused",) if pause else ("exited", "created")):
            log.info("hibernated container %s is %s now; forgotten", rec.name, info.state)
            self.store.forget(cid)
            return
        woken_meanwhile = ("unpause", "start", "restart", "die") if pause else ("start", "restart")
        # Paused now, but was it unpaused (and paused again by somebody else) while we
        # were down? The engine keeps recent events: look.
        try:
            events = self.ctx.engine.events_between(int(rec.since_s), int(time.time()) + 1, cid)
        except EngineUnavailable:
            events = []
        for ev in events:
            act = (ev.get("Action") or ev.get("status") or "")
            t = (ev.get("timeNano") or 0) / 1e9 or float(ev.get("time") or 0)
            if act in woken_meanwhile and t > rec.since_s:
                log.info("hibernated container %s had a %r event while the daemon was down "
                         "(somebody else woke it); forgotten and left as it is", rec.name, act)
                self.store.forget(cid)
                return
        if rec.phase in (PAUSING, STOPPING):
            rec.phase = PAUSED if rec.phase == PAUSING else STOPPED
            self.store.put(rec)
        if pause:
            targets: list[TcpSocket]
            try:
                targets = wake_targets(list_tcp(self.worker, info.pid), self.owned_sockets(info))
            except NetdiagError as e:
                log.warning("cannot list the sockets of %s (%s); watching the recorded ones",
                            rec.name, e)
                targets = [TcpSocket.from_dict(t) for t in rec.targets]
            rec.targets = [t.to_dict() for t in targets]
            self.store.put(rec)
            self.watch(cid, info.pid, targets)
        log.info("hibernated container %s (%s) restored", rec.name, rec.mode)
