"""Hibernation's executors: ``hibernate`` (pause or stop an idle container, release its
memory) and ``wake`` (unpause or start one we hibernated).

Hibernate re-checks the container (act/recheck.py: it exists, runs, and its class may be
hibernated, whatever the action says or ``force`` asks), then asks the rule book's
``hibernation_block`` (managed, hibernate = true, not opted out), then lists its TCP
sockets (a stream or a waiting client keeps it awake, unless forced), refuses to pause a
UDP service (a datagram could not wake it), records the hibernation durably, and acts:

- mode ``pause``: ``docker pause`` (freezer), then releases memory: cgroup v2 writes
  ``memory.reclaim`` (5.19+); cgroup v1 writes ``memory.force_empty``, which reclaims as
  much as it can even with tasks in the cgroup (cgroup-v1/memory.rst 5.1). Without swap
  only page cache can go; the anonymous memory that stays resident is reported.
- mode ``stop``: ``docker stop`` (all memory released; wake = start).

Wake unpauses (or starts) only a container recorded as hibernated by us; one somebody
else woke is running again and is forgotten. A container with a health check is ready
at its next ``health_status: healthy`` event (the runtime reports wake-to-ready).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import TYPE_CHECKING, Any, Callable, Protocol

from supervisor.act.hibernation_store import HibernationStore
from supervisor.act.recheck import recheck
from supervisor.adapters.cgroups import Resident, read_text
from supervisor.adapters.host import parse_meminfo
from supervisor.adapters.netcounters import socket_inodes, udp_services
from supervisor.adapters.netdiag import list_tcp
from supervisor.adapters.netns import NetdiagError, NetnsGone, NetnsWorker
from supervisor.model.actions import Action, Outcome
from supervisor.model.activity import shares_netns
from supervisor.model.classify import classify, is_managed
from supervisor.model.errors import CgroupError, CgroupGone, EngineUnavailable, SupervisorError
from supervisor.model.rules import hibernation_block
from supervisor.model.snapshot import ContainerInfo
from supervisor.model.sockets import TcpSocket
from supervisor.policy.hibernation import (PAUSED, PAUSING, STOPPED, STOPPING, Record,
                                           connection_activity, wake_targets)

if TYPE_CHECKING:  # pragma: no cover
    from supervisor.act.component import Context


class HibernationError(SupervisorError):
    pass


class Observes(Protocol):
    def observe(self, value_s: float) -> None: ...


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def engine_call(what: str, fn: Callable, *args, **kw) -> None:
    """An engine call whose refusals (e.g. 409 'already paused') become domain errors."""
    try:
        fn(*args, **kw)
    except SupervisorError:
        raise
    except Exception as e:  # noqa: BLE001 - the SDK's APIError, which Engine passes on
        raise HibernationError(f"docker {what} refused: {e}") from None


def swap_total_bytes(proc: str) -> int | None:
    try:
        return parse_meminfo(read_text(f"{proc}/meminfo")).get("SwapTotal", 0)
    except CgroupError:
        return None


def resident_words(r: Resident) -> str:
    """'42.0 MiB stays resident (4.2 MiB anonymous, 36.0 MiB shmem, 1.8 MiB other)'."""
    return (f"{_mib(r.total_bytes)} stays resident ({_mib(r.anon_bytes)} anonymous, "
            f"{_mib(r.shmem_bytes)} shmem, {_mib(r.other_bytes)} other)")


def resident_dict(r: Resident | None) -> dict[str, int]:
    """The resident memory as the record keeps it (and status shows it); {} when unread."""
    if r is None:
        return {}
    return {"total_bytes": r.total_bytes, "anon_bytes": r.anon_bytes,
            "shmem_bytes": r.shmem_bytes, "other_bytes": r.other_bytes}


class ContainerLocks:
    """One lock per container: a hibernation, a wake and a restore of the same container
    never interleave."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    def __call__(self, cid: str) -> threading.Lock:
        with self._lock:
            return self._locks.setdefault(cid, threading.Lock())

    def prune(self, keep: set[str]) -> None:
        """Drop the unheld locks of containers not in ``keep``."""
        with self._lock:
            for cid in [k for k, lk in self._locks.items() if k not in keep and not lk.locked()]:
                del self._locks[cid]


class HibernationStats:
    """What hibernation has done, for status and /metrics (read from other threads)."""

    def __init__(self, wake_latency: Observes, ready_latency: Observes):
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.hibernations: Counter[str] = Counter()
        self.wakes: Counter[str] = Counter()
        self.released_bytes_total = 0
        self.last_wake: dict[str, Any] = {}
        self.awaiting_ready: dict[str, tuple[float, str, str]] = {}  # cid -> (mono, name, trigger)
        self.wake_latency = wake_latency
        self.ready_latency = ready_latency


class HibernateExecutor:
    """The ``hibernate`` executor. ``mark_busy(cid, reason)`` restarts the idle clock of
    a container its sockets show busy; ``drop_track(cid)`` forgets the activity of one
    just hibernated; ``watch(cid, pid, targets)`` starts watching a frozen container
    for clients (says what it watches); ``recover(cid)`` has the watcher look again at
    one whose pause or stop got no answer."""

    def __init__(self, ctx: "Context", worker: NetnsWorker, store: HibernationStore,
                 stats: HibernationStats, locks: ContainerLocks, *,
                 mark_busy: Callable[[str, str], None], drop_track: Callable[[str], None],
                 watch: Callable[[str, int, list[TcpSocket]], str],
                 recover: Callable[[str], None]):
        self.ctx, self.worker, self.store, self.stats, self.locks = ctx, worker, store, stats, locks
        self.counts = stats.counts
        self.mark_busy, self.drop_track, self.watch, self.recover = mark_busy, drop_track, watch, recover

    def __call__(self, action: Action) -> Outcome:
        with self.locks(action.target):
            return self._hibernate(action)

    def _hibernate(self, action: Action) -> Outcome:
        rec = self.store.get(action.target)
        if rec is not None:
            return Outcome(ok=False, skipped=True, detail=f"already hibernated ({rec.phase})")
        # The one re-check: it still runs, and its class may be hibernated (force or not).
        info, refused = recheck(self.ctx, action.target, "hibernate")
        if refused is not None:
            return refused
        assert info is not None
        cfg = self.ctx.get_config()
        cid = info.id
        cls, _ = classify(info, cfg)
        block = hibernation_block(info, cls, is_managed(info, cfg), cfg)
        if block:
            return Outcome(ok=False, skipped=True, detail=f"refused: {block}")
        klass = cfg.classes[cls]
        mode = action.params.get("mode") or klass.hibernate_mode
        if mode not in ("pause", "stop"):
            return Outcome(ok=False, detail=f"unknown hibernation mode {mode!r}")
        force = bool(action.params.get("force"))
        owned = self.owned_sockets(info)
        sockets, failed = self._read_sockets("connections", lambda: list_tcp(self.worker, info.pid))
        if failed is not None:
            return failed
        if not force:
            # No stream may have moved data while the planner judged it idle: the class's
            # idle_after, or the ladder's shorter idle time under a breach.
            window_s = float(action.params.get("active_window_s") or
                             min(klass.idle_after_s, float(action.params.get("idle_s") or klass.idle_after_s)))
            busy = connection_activity(sockets, window_s, owned)
            if busy:
                self.mark_busy(cid, busy)
                self.counts["kept_awake_by_connections"] += 1
                return Outcome(ok=False, skipped=True, detail=f"not idle: {busy}",
                               after={"busy": busy})
        if mode == "pause" and not force:
            refused = self.udp_refusal(info, owned)
            if refused:
                return refused
        targets = wake_targets(sockets, owned) if mode == "pause" else []
        rec = Record(id=cid, name=info.name, mode=mode, since_s=self.ctx.clock(),
                     phase=PAUSING if mode == "pause" else STOPPING,
                     trigger=str(action.params.get("trigger") or action.source),
                     reason=action.reason, class_name=cls,
                     targets=[t.to_dict() for t in targets])
        self.store.put(rec)  # durable first: a crash after the pause must leave it ours
        try:
            if mode == "pause":
                engine_call("pause", self.ctx.engine.pause, cid)
            else:
                engine_call("stop", self.ctx.engine.stop, cid,
                            timeout_s=int(action.params.get("timeout_s", 10)))
        except EngineUnavailable:
            # The engine may have paused (or stopped) it before the answer was lost: keep
            # the record and let the watcher look again once the engine answers (paused
            # or exited: ours, and watched; running: forgotten).
            self.recover(cid)
            raise
        except BaseException:
            self.store.forget(cid)
            raise
        self.drop_track(cid)
        return self._pause_done(rec, info, targets) if mode == "pause" else self._stop_done(rec)

    def _stop_done(self, rec: Record) -> Outcome:
        rec.phase = STOPPED
        rec.reclaimed_bytes = None
        rec.memory_note = "stopped: all of its memory released"
        self.store.put(rec)
        with self.stats.lock:
            self.stats.hibernations["stop"] += 1
        return Outcome(ok=True, detail="stopped (wake = start)", before={"state": "running"},
                       after={"state": "exited", "mode": "stop"})

    def _pause_done(self, rec: Record, info: ContainerInfo, targets: list[TcpSocket]) -> Outcome:
        released, note, resident = self.release_memory(info)
        rec.phase = PAUSED
        rec.reclaimed_bytes = released
        rec.memory_note = note
        rec.resident = resident_dict(resident)
        self.store.put(rec)
        with self.stats.lock:
            self.stats.hibernations["pause"] += 1
            self.stats.released_bytes_total += released or 0
        watched = self.watch(rec.id, info.pid, targets)
        return Outcome(ok=True, detail=f"paused; {note}; {watched}", before={"state": "running"},
                       after={"state": "paused", "mode": "pause", "released_bytes": released,
                              "resident": rec.resident,
                              "watching": [t.describe() for t in targets]})

    def owned_sockets(self, info: ContainerInfo) -> frozenset[int] | None:
        """Inodes of the sockets the container's processes hold, for a container in a
        shared namespace; None for one with its own namespace (all its sockets are its)."""
        if not shares_netns(info):
            return None
        try:
            loc = self.ctx.cgroups.locate(info.id, info.pid, info.cgroup_parent)
            pids = [int(x) for x in self.ctx.cgroups.read_file(loc, "memory", "cgroup.procs").split()]
        except (CgroupError, ValueError):
            pids = [info.pid]
        return socket_inodes(self.ctx.proc, pids)

    def _read_sockets(self, what: str, read: Callable[[], list]) -> tuple[list, Outcome | None]:
        """The container's sockets, or why it is not hibernated now: gone meanwhile
        (skipped), or unreadable (failed and counted)."""
        try:
            return read(), None
        except NetnsGone:
            return [], Outcome(ok=False, skipped=True, detail="container stopped meanwhile")
        except NetdiagError as e:
            self.counts["socket_check_errors"] += 1
            return [], Outcome(ok=False, detail=f"cannot check its {what}, not hibernated: {e}")

    def udp_refusal(self, info: ContainerInfo, owned: frozenset[int] | None) -> Outcome | None:
        """A paused UDP service would never wake: a datagram opens no connection for the
        watcher to see, it only waits (or is dropped) in the socket's queue. Such a
        container is not paused (stop mode, woken on request, or force are the operator's
        choice); its idle timer starts over, so it is tried again after idle_after."""
        found, failed = self._read_sockets("UDP sockets", lambda: udp_services(self.ctx.proc, info.pid))
        if failed is not None:
            return failed
        udp = [u for u in found if owned is None or u.inode in owned]
        if not udp:
            return None
        listening = ", ".join(u.describe() for u in udp[:4]) + (" ..." if len(udp) > 4 else "")
        busy = f"serves {listening}: a datagram cannot wake a paused container"
        self.mark_busy(info.id, busy)
        self.counts["kept_awake_by_udp"] += 1
        return Outcome(ok=False, skipped=True,
                       detail=f"not hibernated: {busy} (hibernate_mode = \"stop\" or force to hibernate it)",
                       after={"busy": busy})

    def release_memory(self, info: ContainerInfo) -> tuple[int | None, str, Resident | None]:
        """Ask the kernel to reclaim the frozen container's memory; (bytes released, what
        happened, in words, and what stays resident: anonymous memory, shmem, the rest)."""
        fs = self.ctx.cgroups
        try:
            loc = fs.locate(info.id, info.pid, info.cgroup_parent)
            before = fs.read_usage(loc).memory_usage_bytes
        except CgroupError as e:
            self.counts["reclaim_errors"] += 1
            return None, f"memory not released: {e}", None
        knob = "memory.reclaim" if loc.version == 2 else "memory.force_empty"
        try:
            if loc.version == 2:
                # Asking for everything it holds: "could not reclaim all" (EAGAIN) is the
                # usual answer, which CgroupFS.reclaim returns as False, not an error.
                fs.reclaim(loc, before)
            else:
                fs.write_file(loc, "memory", knob, "0")
        except CgroupGone:
            # ENOENT on the knob while the cgroup is still there: a kernel without it
            # (memory.reclaim came in 5.19).
            try:
                fs.read_usage(loc)
            except CgroupError:
                return None, "memory not released: the cgroup vanished", None
            return None, f"memory not released: this kernel has no {knob}", None
        except CgroupError as e:
            self.counts["reclaim_errors"] += 1
            return None, f"memory not released: {knob}: {e.reason}", None
        try:
            resident = fs.read_resident(loc)
        except CgroupError as e:
            return None, f"memory released, then unreadable: {e}", None
        released = max(0, before - resident.total_bytes)
        note = (f"{knob} released {_mib(released)} ({_mib(before)} -> "
                f"{_mib(resident.total_bytes)}); {resident_words(resident)}")
        if swap_total_bytes(self.ctx.proc) == 0:
            note += "; no swap on this host: anonymous memory and shmem cannot be released"
        return released, note, resident


class WakeExecutor:
    """The ``wake`` executor, also called by the wake watcher and the control API."""

    def __init__(self, ctx: "Context", store: HibernationStore, stats: HibernationStats,
                 locks: ContainerLocks):
        self.ctx, self.store, self.stats, self.locks = ctx, store, stats, locks
        self._lock = threading.Lock()
        self._waking: set[str] = set()

    def is_waking(self, cid: str) -> bool:
        """True while we wake it (its unpause/start events are ours)."""
        with self._lock:
            return cid in self._waking

    def __call__(self, action: Action) -> Outcome:
        cid, detected_mono = action.target, action.params.get("detected_mono")
        trigger = str(action.params.get("trigger") or action.source)
        t0 = detected_mono if detected_mono is not None else time.monotonic()
        if self.store.get(cid) is None:
            return Outcome(ok=False, skipped=True,
                           detail="not hibernated by the supervisor: left as it is")
        with self.locks(cid):
            rec = self.store.get(cid)
            if rec is None:
                return Outcome(ok=False, skipped=True, detail="already woken")
            with self._lock:
                self._waking.add(cid)
            try:
                return self._wake(rec, trigger, t0)
            finally:
                with self._lock:
                    self._waking.discard(cid)

    def _confirm(self, rec: Record, want: tuple[str, ...]) -> tuple[ContainerInfo | None, Outcome | None]:
        """The container as the engine sees it, or why it is let go (forgotten)."""
        cid = rec.id
        # The inventory follows the engine's events: no engine round trip on the way to
        # the unpause; only a state that looks wrong is re-checked with the engine.
        info = self.ctx.inventory.get(cid)
        if info is not None and info.id == cid and info.state in want:
            return info, None
        info, refused = recheck(self.ctx, cid, states=want)
        if refused is None:
            return info, None
        now = self.ctx.inventory.get(cid)  # as the re-check found it
        self.store.forget(cid)
        if now is None or now.id != cid:
            return None, Outcome(ok=False, skipped=True, detail="container no longer exists: forgotten")
        if now.state == "running":
            return None, Outcome(ok=True, skipped=True, detail="already running (woken by somebody else)")
        return None, Outcome(ok=False, skipped=True, detail=f"container is {now.state}: forgotten")

    def _wake(self, rec: Record, trigger: str, t0: float) -> Outcome:
        cid = rec.id
        info, gone = self._confirm(rec, ("paused",) if rec.mode == "pause" else ("exited", "created"))
        if gone is not None:
            return gone
        assert info is not None
        if info.has_healthcheck:
            with self.stats.lock:
                self.stats.awaiting_ready[cid] = (t0, rec.name, trigger)
        try:
            if rec.mode == "pause":
                engine_call("unpause", self.ctx.engine.unpause, cid)
            else:
                engine_call("start", self.ctx.engine.start, cid)
        except HibernationError:
            now = self.ctx.inventory.refresh_one(cid)
            if now is not None and now.state == "running":
                self.store.forget(cid)
                return Outcome(ok=True, skipped=True,
                               detail="already running (woken by somebody else)")
            raise
        latency_s = time.monotonic() - t0
        ms = round(latency_s * 1000, 1)
        self.store.forget(cid)
        self.stats.wake_latency.observe(latency_s)
        ready = not info.has_healthcheck
        if ready:
            self.stats.ready_latency.observe(latency_s)
        with self.stats.lock:
            self.stats.wakes[trigger] += 1
            self.stats.last_wake = {"id": cid[:12], "name": rec.name, "mode": rec.mode,
                                    "trigger": trigger, "latency_ms": ms, "ready": ready,
                                    "ready_ms": ms if ready else None, "time_s": self.ctx.clock()}
        verb = "unpaused" if rec.mode == "pause" else "started"
        detail = f"{verb} {latency_s * 1000:.0f} ms after the {trigger}"
        if not ready:
            detail += "; ready at its next health_status: healthy"
        return Outcome(ok=True, detail=detail,
                       before={"state": info.state},
                       after={"state": "running", "wake_ms": ms, "trigger": trigger,
                              "ready": ready})
