"""Entering a container's network namespace: ``NetnsWorker``, the one thread that does.

A netlink socket stays in the network namespace it was created in, and setns(2) is per
thread. ``NetnsWorker`` is a dedicated thread that enters a container's namespace
(/proc/PID/ns/net), creates the sockets there and returns to its own namespace; the
sockets then answer for the container's namespace from wherever they are used
(pyroute2's synchronous sockets must still be used by the thread that made them, so
``netdiag.list_tcp`` runs whole in the worker).

OSError becomes NetdiagError (NetnsGone when the namespace or the process has vanished)
at this boundary; netdiag.py and netcounters.py raise the same two.
"""

from __future__ import annotations

import ctypes
import logging
import os
import queue
import socket
import threading
from collections import Counter
from concurrent.futures import Future, TimeoutError as FutureTimeout
from typing import Any, Callable

from supervisor.model.errors import SupervisorError

log = logging.getLogger(__name__)

CLONE_NEWNET = 0x40000000


class NetdiagError(SupervisorError):
    """A network namespace could not be entered or asked."""


class NetnsGone(NetdiagError):
    """The process (and so the namespace handle) has gone: its container stopped."""


def _libc_setns() -> Callable[[int, int], None]:
    if hasattr(os, "setns"):  # Python 3.12+
        return lambda fd, nstype: os.setns(fd, nstype)
    libc = ctypes.CDLL(None, use_errno=True)

    def setns(fd: int, nstype: int) -> None:
        if libc.setns(fd, nstype) != 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
    return setns


class NetnsWorker:
    """A thread that runs small jobs inside other network namespaces.

    ``run_in(pid, make, use)`` calls ``make()`` inside PID's network namespace, returns
    the thread to its own namespace, then calls ``use(made)`` there (same thread) and
    hands back the result. A thread that cannot return to its own namespace stops and
    the next call starts a fresh one, so no job ever runs in a namespace it did not ask for.
    """

    def __init__(self, proc: str = "/proc", timeout_s: float = 5.0):
        self.proc = proc
        self.timeout_s = timeout_s
        self.counts: Counter[str] = Counter()
        self._q: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._setns = _libc_setns()

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="netns", daemon=True)
                self._thread.start()

    def run_in(self, pid: int, make: Callable[[], Any], use: Callable[[Any], Any] | None = None,
               timeout_s: float | None = None) -> Any:
        if pid <= 0:
            raise NetnsGone(f"no process (pid {pid}): container not running")
        self._ensure_thread()
        fut: Future = Future()
        self._q.put((pid, make, use, fut))
        try:
            return fut.result(timeout=timeout_s or self.timeout_s)
        except FutureTimeout:
            fut.cancel()
            self.counts["timeouts"] += 1
            raise NetdiagError(f"network namespace of pid {pid}: no answer within "
                               f"{timeout_s or self.timeout_s:.1f}s") from None

    def stop(self) -> None:
        with self._lock:
            t = self._thread
            self._thread = None
        if t is not None and t.is_alive():
            self._q.put(None)
            t.join(timeout=5)

    def _run(self) -> None:
        try:
            own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            log.error("netns worker cannot open its own namespace: %s", e)
            return
        try:
            while True:
                item = self._q.get()
                if item is None:
                    return
                pid, make, use, fut = item
                if not fut.set_running_or_notify_cancel():
                    continue
                if not self._job(own, pid, make, use, fut):
                    return  # stranded in a foreign namespace: let a new thread take over
        finally:
            os.close(own)

    def _job(self, own: int, pid: int, make, use, fut: Future) -> bool:
        try:
            target = os.open(f"{self.proc}/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, ProcessLookupError):
            fut.set_exception(NetnsGone(f"process {pid} is gone"))
            return True
        except OSError as e:
            fut.set_exception(NetdiagError(f"cannot open the network namespace of pid {pid}: "
                                           f"{e.strerror}"))
            return True
        made: Any = None
        try:
            try:
                self._setns(target, CLONE_NEWNET)
            except OSError as e:
                fut.set_exception(NetdiagError(f"cannot enter the network namespace of pid "
                                               f"{pid}: {e.strerror}"))
                return True
            try:
                made = make()
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                made = e
            finally:
                try:
                    self._setns(own, CLONE_NEWNET)
                except OSError as e:
                    log.critical("netns worker cannot return to its own namespace (%s); "
                                 "starting a new worker thread", e)
                    self.counts["stranded"] += 1
                    if isinstance(made, socket.socket):
                        made.close()
                    fut.set_exception(NetdiagError("namespace worker stranded"))
                    return False
        finally:
            os.close(target)
        if isinstance(made, BaseException):
            fut.set_exception(_as_netdiag(made, pid))
            return True
        try:
            fut.set_result(use(made) if use is not None else made)
            self.counts["jobs"] += 1
        except BaseException as e:  # noqa: BLE001
            fut.set_exception(_as_netdiag(e, pid))
        return True


def _as_netdiag(e: BaseException, pid: int) -> BaseException:
    if isinstance(e, SupervisorError):
        return e
    if isinstance(e, OSError):
        return NetdiagError(f"sock_diag in the namespace of pid {pid}: {e.strerror or e}")
    return e
