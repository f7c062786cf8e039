"""The one in-process daemon harness, shared by the integration tests (through
tests/integration/_procs.py) and the cgroup v2 lane (through tests/v2/_v2lib.py): the
daemon with its passes driven by the test (``daemon_stepped``) or running its own loop in
a thread (``daemon_thread``). It imports no conftest, so either tree can load it."""

from __future__ import annotations

import contextlib
import threading
import time


def _until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.05)


@contextlib.contextmanager
def daemon_stepped(cfg, path="", *, serve: bool = False, follow: bool = True,
                   connect_timeout_s: float = 15.0, **daemon_kw):
    """The daemon with its passes driven by the test (``d.run_once()``): with ``follow``
    its inventory follows the engine's events (connected before the test starts), with
    ``serve`` its /metrics and control socket answer. Shut down on the way out (its
    components stopped, its servers closed, its journal closed)."""
    from supervisor.runtime.daemon import Daemon
    d = Daemon(cfg, str(path), serve=serve, **daemon_kw)
    try:
        if serve:
            d.start_servers()
        if follow:
            d.inventory.start()
            assert d.inventory.connected.wait(connect_timeout_s), \
                "the inventory did not reach the engine"
        yield d
    finally:
        d.shutdown()


@contextlib.contextmanager
def daemon_thread(cfg, path="", serve: bool = True, *, ready_timeout_s: float = 15.0,
                  join_timeout_s: float = 30.0, **daemon_kw):
    """The daemon's own loop (and, with ``serve``, its servers) in a thread of this
    process: events wake it as in production; stopped and joined on the way out."""
    from supervisor.runtime.daemon import Daemon
    d = Daemon(cfg, str(path), serve=serve, **daemon_kw)
    t = threading.Thread(target=d.run, name="daemon-under-test")
    t.start()
    try:
        _until(lambda: d.report.ready or not t.is_alive(), ready_timeout_s, "first pass")
        assert t.is_alive(), "the daemon's loop ended before its first pass"
        yield d
    finally:
        d.request_stop()
        t.join(timeout=join_timeout_s)
        assert not t.is_alive()
