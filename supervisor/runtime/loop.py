"""The daemon's loop (the shape of earlyoom's poll_loop): a pass, then sleep until the
next tick or an event. Signal handlers only set flags; the loop acts on them. READY=1,
WATCHDOG=1 and STATUS= are sent from the loop itself, so a hung loop stops feeding the
watchdog and systemd restarts it."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import TYPE_CHECKING, Callable

from supervisor.adapters.sdnotify import Notifier
from supervisor.model.errors import SupervisorError
from supervisor.publish.report import Report

if TYPE_CHECKING:  # pragma: no cover
    from collections import Counter

    from supervisor.model.config import Config

log = logging.getLogger("supervisor.daemon")

MIN_GAP_S = 0.05  # a burst of events coalesces into passes this far apart


def status_line(r: Report) -> str:
    """The one line systemd shows (STATUS=), from the latest report."""
    if r.snapshot is None or r.reserve is None:
        return "starting"
    n = sum(1 for c in r.snapshot.containers if c.info.state == "running")
    worst = max(r.pools.values(), key=lambda p: p.utilisation, default=None)
    eng = "engine up" if r.snapshot.engine_up else "ENGINE UNREACHABLE"
    pool = f", fullest pool {worst.name} {worst.utilisation:.0%}" if worst else ""
    if worst is not None and worst.level:
        pool += f" ({worst.state})"
    res = " RESERVE BREACHED" if r.reserve.breached else ""
    return f"{eng}, {n} running{pool}{res}, pass {r.last_pass_duration_s * 1000:.1f}ms"


class Loop:
    def __init__(self, *, notifier: Notifier, counts: "Counter[str]",
                 get_config: Callable[[], "Config"], get_report: Callable[[], Report],
                 run_once: Callable[[], object], reload: Callable[[], object],
                 actions_in_last_pass: Callable[[], int], wake: threading.Event):
        self.notifier = notifier
        self.counts = counts
        self.get_config = get_config
        self.get_report = get_report
        self.run_once = run_once
        self.reload = reload
        self.actions_in_last_pass = actions_in_last_pass
        self.wake = wake
        self.stop_flag = threading.Event()
        self.reload_flag = threading.Event()
        self._last_watchdog_mono = 0.0
        self._keepalive_every_s = 1.0  # at most this often; less when the watchdog is short

    def request_stop(self) -> None:
        self.stop_flag.set()
        self.wake.set()

    def request_reload(self) -> None:
        self.reload_flag.set()
        self.wake.set()

    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, lambda signum, frame: self.request_stop())
        signal.signal(signal.SIGINT, lambda signum, frame: self.request_stop())
        signal.signal(signal.SIGHUP, lambda signum, frame: self.request_reload())

    def keepalive(self) -> None:
        """WATCHDOG=1 while a long pass makes progress (sent at most once a second):
        each engine call is bounded by docker.timeout_s, so a pass with many slow actions
        keeps the watchdog fed, and only a call that hangs lets systemd restart us."""
        now = time.monotonic()
        # _last_watchdog_mono is 0 until READY=1 is sent: systemd's watchdog starts then.
        if (self.notifier.enabled and self._last_watchdog_mono
                and now - self._last_watchdog_mono >= self._keepalive_every_s):
            self._last_watchdog_mono = now
            self.notifier.notify(WATCHDOG=1)

    def _note_slow_pass(self, watchdog_s: float | None) -> None:
        """Say so when a pass runs long: past the tick it is an overrun (counted); past
        half the watchdog interval systemd would soon restart us (logged, with why)."""
        r = self.get_report()
        took = r.last_pass_duration_s
        if took > self.get_config().tick_s:
            self.counts["tick_overruns"] += 1
        if watchdog_s and took > watchdog_s:
            self.counts["slow_passes"] += 1
            log.warning("pass took %.1fs, more than half the watchdog interval (%.0fs); "
                        "%d actions ran in it", took, 2 * watchdog_s, self.actions_in_last_pass(),
                        extra={"pass_s": round(took, 3), "watchdog_s": 2 * watchdog_s})

    def _one_pass(self) -> None:
        if self.reload_flag.is_set():
            self.reload_flag.clear()
            self.notifier.notify(RELOADING=1, STATUS="reloading the config",
                                 MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)
            self.reload()
            self.notifier.notify(READY=1, STATUS=status_line(self.get_report()))
        try:
            self.run_once()
        except SupervisorError as e:
            self.counts["pass_errors"] += 1
            log.error("pass failed: %s", e)
        except Exception:  # noqa: BLE001 - the loop must outlive any one bug
            self.counts["pass_errors"] += 1
            log.exception("pass failed")

    def _sleep(self, t0: float, watchdog_s: float | None) -> None:
        """Wait for the next tick or an event; a tick longer than the watchdog interval
        is waited out in slices, pinging between them."""
        deadline = t0 + max(MIN_GAP_S, self.get_config().tick_s)
        while not self.stop_flag.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if self.wake.wait(timeout=min(remaining, watchdog_s or remaining)):
                break
            self.notifier.notify(WATCHDOG=1)
            self._last_watchdog_mono = time.monotonic()
        self.wake.clear()
        gap = time.monotonic() - t0
        if gap < MIN_GAP_S:
            time.sleep(MIN_GAP_S - gap)

    def run(self) -> None:
        """Passes until asked to stop."""
        ready_sent = False
        # systemd's watchdog (WATCHDOG_USEC) wants a ping at least this often.
        watchdog_s = self.notifier.watchdog_interval_s()
        if watchdog_s:
            self._keepalive_every_s = min(1.0, watchdog_s / 2)
        while not self.stop_flag.is_set():
            t0 = time.monotonic()
            self._one_pass()
            line = status_line(self.get_report())
            if not ready_sent:
                self.notifier.notify(READY=1, STATUS=line, MAINPID=os.getpid())
                ready_sent = True
                log.info("ready: %s", line)
            else:
                self.notifier.notify(WATCHDOG=1, STATUS=line)
            self._last_watchdog_mono = time.monotonic()
            self._note_slow_pass(watchdog_s)
            self._sleep(t0, watchdog_s)
