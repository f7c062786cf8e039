"""The daemon: a short loop, read -> pure decision -> act -> publish -> sleep (the shape
of earlyoom's poll_loop), plus the inventory's event thread and the two servers.

Signal handlers only set flags; the loop acts on them. WATCHDOG=1 and STATUS= are sent
from the loop itself, so a hung loop stops feeding the watchdog and systemd restarts it.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections import Counter, deque
from dataclasses import replace
from typing import Callable

from supervisor.runtime import logs
from supervisor.model.actions import Action, ActionResult
from supervisor.adapters.cgroups import CgroupFS
from supervisor.act.component import Component, Context
from supervisor.policy.tick import Tick
from supervisor.model.config import DEFAULT_CONFIG_PATH, Config, load_config
from supervisor.publish.control import ControlServer
from supervisor.act.core_actions import CoreActions
from supervisor.adapters.engine import Engine
from supervisor.model.errors import ConfigError, SupervisorError
from supervisor.runtime.hibernation import Hibernation
from supervisor.observe.history import History
from supervisor.adapters.host import HostSampler
from supervisor.observe.inventory import Inventory
from supervisor.adapters.journal import Journal
from supervisor.runtime.ladder import Ladder
from supervisor.act.actuator import Actuator
from supervisor.publish.metrics import MetricsServer, PassMetrics, make_registry
from supervisor.runtime.ollama import OllamaGovernor
from supervisor.runtime.placement import Placement
from supervisor.runtime.poolcg import PoolCgroups
from supervisor.model.pools import account, reserve_state
from supervisor.observe.sampler import Sampler
from supervisor.adapters.sdnotify import Notifier

log = logging.getLogger("supervisor.daemon")

# Actions that act on a container; held back while the engine is down (stale view).
# "pool_cgroups" writes only the pools' own cgroups, which need no engine.
_HOST_ONLY_KINDS = {"alert", "pool_cgroups"}


def build_components(ctx: Context) -> list[Component]:
    """Every capability of the daemon, in the order they plan each pass: pool cgroups
    exist before placement puts containers in them; placement before the ladder, which
    throttles what placement set; hibernation and Ollama last."""
    return [CoreActions(ctx), PoolCgroups(ctx), Placement(ctx), Ladder(ctx),
            Hibernation(ctx), OllamaGovernor(ctx)]


def _with_dry_run(cfg: Config, dry_run: bool) -> Config:
    """The same config with ``dry_run`` set so."""
    return replace(cfg, settings=cfg.settings.model_copy(update={"dry_run": dry_run}))


def _acting(cfg: Config) -> Config:
    """The same config with dry_run off (GET /plan plans, POST /apply acts, for real)."""
    return _with_dry_run(cfg, False) if cfg.dry_run else cfg


class Daemon:
    def __init__(self, cfg: Config, config_path: str = "", *, engine: Engine | None = None,
                 cgroups: CgroupFS | None = None, host: HostSampler | None = None,
                 clock: Callable[[], float] = time.time, notifier: Notifier | None = None,
                 serve: bool = True,
                 components: Callable[[Context], list[Component]] | None = None):
        self.cfg = cfg
        self.config_path = config_path
        self.clock = clock
        self.serve = serve
        s = cfg.settings
        self.started_at = time.time()
        self.counts: Counter[str] = Counter()
        self.last_config_error = ""
        self.notifier = notifier or Notifier()
        self.journal = Journal(os.path.join(s.state_dir, "journal.sqlite3"), s.journal.max_rows)
        self.engine = engine or Engine(s.docker.host, s.docker.timeout_s)
        self.inventory = Inventory(self.engine, reconnect_max_s=cfg.reconnect_max_s, clock=clock)
        self.cgroups = cgroups or CgroupFS(s.docker.cgroup_root, s.docker.proc_root)
        self.host = host or HostSampler(s.docker.proc_root, clock=clock)
        # Limits, cpuset and events are re-read in full every 15 s (a scrape interval),
        # at once after an engine event, and after the daemon acted on the container: a
        # full read costs ~4x the tick's usage read (issue 9 soak, 110 containers).
        self.sampler = Sampler(self.cgroups, self.host, proc=s.docker.proc_root, clock=clock,
                               full_every_s=15.0, container_pressure=False)
        from supervisor.model.units import parse_duration
        self.history = History(parse_duration(s.history.window), cfg.tick_s)
        self.actuator = Actuator(self.journal, clock, s.ladder.max_actions_per_minute)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._events_lock = threading.Lock()
        self._event_ids: set[str] = set()
        self._relisted = True
        self.ctx = Context(engine=self.engine, inventory=self.inventory, cgroups=self.cgroups,
                           journal=self.journal, history=self.history, clock=clock,
                           get_config=lambda: self.cfg, request_pass=self._wake.set,
                           proc=s.docker.proc_root, activity=self.sampler.activity)
        self.components = (components or build_components)(self.ctx)
        for comp in self.components:
            for kind, fn in comp.executors().items():
                self.actuator.register(kind, fn)
        self.ctx.capabilities.update(self.actuator.executors)
        self.ctx.execute = lambda action: self.actuator.execute_one(action, self.cfg.dry_run)
        self.inventory.add_listener(self._on_event)
        self.last_tick: Tick | None = None
        self.last_results: list[ActionResult] = []
        self.last_pass_mono = 0.0
        self.last_pass_duration_s = 0.0
        self.pass_durations: deque[float] = deque(maxlen=1000)
        self.breaches = self.ctx.breaches  # breach onsets by kind, for /metrics
        self.pass_metrics = PassMetrics(self.breaches)  # tick histogram, breach onsets
        self._last_reconcile = 0.0
        self.prev_tick: Tick | None = None  # the pass before last_tick (CPU % in status)
        self.force_dry_run = False  # --dry-run given on the command line
        # One pass at a time: the loop, GET /plan and POST /apply take turns.
        self.pass_lock = threading.RLock()
        self._last_watchdog_mono = 0.0
        self._keepalive_every_s = 1.0  # at most this often; less when the watchdog is short
        self.metrics_server: MetricsServer | None = None
        self.control_server: ControlServer | None = None
        self.registry = make_registry(self)

    # ------------------------------------------------------------------ events

    def _on_event(self, action: str, cid: str, ev: dict) -> None:
        with self._events_lock:
            if action == "relist":
                self._relisted = True
                self.sampler.invalidate()
            else:
                self._event_ids.add(cid)
                self.sampler.invalidate(cid)
        self._wake.set()

    def loop_alive(self) -> bool:
        if not self.last_pass_mono:
            return False
        return time.monotonic() - self.last_pass_mono < max(10.0, 5 * self.cfg.tick_s)

    # ------------------------------------------------------------------ one pass

    def run_once(self, reconcile: bool | None = None,
                 dry_run: bool | None = None) -> tuple[Tick, list[ActionResult]]:
        """One pass: sample, plan, act, publish. Tests drive the daemon through this.
        ``dry_run`` overrides the config's for this pass (POST /apply acts for real)."""
        with self.pass_lock:
            return self._pass(reconcile, dry_run)

    def plan_tick(self, tick: Tick) -> tuple[list[tuple[Component, Action]], list[Action]]:
        """What the components decide on ``tick``: (actions to run, actions held back
        because the engine is down). Runs every plan() and executes nothing."""
        for comp in self.components:
            tick.overrides.update(comp.overrides(tick))
        planned: list[tuple[Component, Action]] = []
        for comp in self.components:
            try:
                for a in comp.plan(tick):
                    planned.append((comp, a))
            except Exception:  # noqa: BLE001 - one planner's bug must not stop the others
                log.exception("planner %s failed", comp.name)
                self.counts["planner_errors"] += 1
        held: list[Action] = []
        if not tick.snapshot.engine_up:
            # The container view is stale while the engine is down: no container action.
            held = [a for _, a in planned if a.kind not in _HOST_ONLY_KINDS]
            planned = [(c, a) for c, a in planned if a.kind in _HOST_ONLY_KINDS]
        return planned, held

    def plan_now(self) -> dict:
        """GET /plan: what the daemon would do on its last snapshot, changing nothing: a
        full (reconcile) pass planned as if it acted for real, and nothing executed."""
        with self.pass_lock:
            tick = self.last_tick
            if tick is None:
                return {"ready": False, "actions": [], "held": []}
            planned, held = self.plan_tick(replace(
                tick, cfg=_acting(tick.cfg), overrides={}, reconcile=True))
        return {"ready": True, "snapshot_time_s": tick.snapshot.time_s,
                "dry_run": tick.cfg.dry_run, "engine_up": tick.snapshot.engine_up,
                "actions": [a.to_dict() for _, a in planned],
                "held": [a.to_dict() for a in held]}

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

    def _pass(self, reconcile: bool | None, dry_run: bool | None) -> tuple[Tick, list[ActionResult]]:
        t0 = time.perf_counter()
        cfg = self.cfg
        if dry_run is False and cfg.dry_run:
            cfg = _acting(cfg)  # planners plan for real too (they may hold back repeats in dry-run)
        now = self.clock()
        with self._events_lock:
            events = tuple(self._event_ids)
            self._event_ids.clear()
            relisted, self._relisted = self._relisted, False
        if reconcile is None:
            reconcile = relisted or (time.monotonic() - self._last_reconcile >= cfg.reconcile_s)
        if reconcile:
            self._last_reconcile = time.monotonic()
        engine_up = self.inventory.engine_up
        snap = self.sampler.sample(self.inventory.view(), cfg, engine_up,
                                   self.inventory.engine_error)
        live = set()
        for c in snap.containers:
            if c.stats is not None:
                live.add(c.info.id)
                self.history.record(c.info.id, c.stats.memory_working_set_bytes)
        self.history.forget_except({c.info.id for c in snap.containers})
        tick = Tick(snapshot=snap, cfg=cfg, now=now, pools=account(snap, cfg),
                    reserve=reserve_state(snap, cfg), history=self.history,
                    reconcile=reconcile, events=events, activity=self.sampler.activity.view(snap))
        self.keepalive()
        planned, held = self.plan_tick(tick)
        if held:
            self.counts["actions_held_engine_down"] += len(held)
        results = []
        for _, a in planned:
            results.append(self.actuator.execute_one(
                a, dry_run=cfg.dry_run if dry_run is None else dry_run))
            self.keepalive()
        live = {c.info.id for c in snap.containers}
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
        self.last_pass_mono = time.monotonic()
        self.last_pass_duration_s = time.perf_counter() - t0
        self.pass_durations.append(self.last_pass_duration_s)
        self.pass_metrics.observe(self.last_pass_duration_s, tick)
        return tick, results

    # ------------------------------------------------------------------ reload

    def reload(self) -> tuple[bool, str]:
        """Swap in a whole new config, or keep the old one and say why."""
        try:
            new = load_config(self.config_path, host=None)
        except ConfigError as e:
            self.last_config_error = e.render()
            self.counts["reload_failed"] += 1
            log.error("reload refused, keeping the running config: %s", e.render(),
                      extra={"config": self.config_path,
                             "problems": [f"{k}: {r}" if k else r for k, r in e.problems]})
            return False, e.render()
        if self.force_dry_run and not new.dry_run:
            # --dry-run on the command line outlives any reload.
            new = _with_dry_run(new, True)
        old = self.cfg
        fixed = []
        for key, a, b in (("metrics.listen", old.settings.metrics.listen, new.settings.metrics.listen),
                          ("control.socket", old.settings.control.socket, new.settings.control.socket),
                          ("state_dir", old.settings.state_dir, new.settings.state_dir),
                          ("docker.host", old.settings.docker.host, new.settings.docker.host)):
            if a != b:
                fixed.append(key)
        self.cfg = new
        self.last_config_error = ""
        self.counts["reloads"] += 1
        self.sampler.invalidate()
        msg = "config reloaded"
        if fixed:
            msg += "; these take effect at restart: " + ", ".join(fixed)
        log.info(msg, extra={"config": new.source})
        self._wake.set()
        return True, msg

    # ------------------------------------------------------------------ servers

    def _routes(self) -> None:
        from supervisor.publish.api import core_routes
        srv = self.control_server
        assert srv is not None
        for (method, path), (fn, params) in core_routes(self).items():
            srv.add(method, path, fn, params)
        for comp in self.components:
            for (method, path), (fn, params) in comp.routes().items():
                srv.add(method, path, fn, params)

    def health(self) -> dict:
        return {"loop_alive": self.loop_alive(), "engine_up": self.inventory.engine_up,
                "ready": self.last_tick is not None,
                "last_pass_age_s": round(time.monotonic() - self.last_pass_mono, 3)
                if self.last_pass_mono else None}

    def start_servers(self) -> None:
        s = self.cfg.settings
        self.metrics_server = MetricsServer(s.metrics.listen, self.registry, self.health)
        self.metrics_server.start()
        self.control_server = ControlServer(s.control.socket, s.control.read_group)
        self._routes()
        self.control_server.start()
        log.info("serving metrics on http://%s/metrics and control on %s",
                 s.metrics.listen, s.control.socket)

    # ------------------------------------------------------------------ the loop

    def _install_signals(self) -> None:
        def stop(signum, frame):
            self._stop.set()
            self._wake.set()

        def hup(signum, frame):
            self._reload.set()
            self._wake.set()
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, hup)

    def _note_slow_pass(self, watchdog_s: float | None) -> None:
        """Say so when a pass runs long: past the tick it is an overrun (counted); past
        half the watchdog interval systemd would soon restart us (logged, with why)."""
        took = self.last_pass_duration_s
        if took > self.cfg.tick_s:
            self.counts["tick_overruns"] += 1
        if watchdog_s and took > watchdog_s:
            self.counts["slow_passes"] += 1
            log.warning("pass took %.1fs, more than half the watchdog interval (%.0fs); "
                        "%d actions ran in it", took, 2 * watchdog_s, len(self.last_results),
                        extra={"pass_s": round(took, 3), "watchdog_s": 2 * watchdog_s})

    def request_stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def status_line(self) -> str:
        t = self.last_tick
        if t is None:
            return "starting"
        n = sum(1 for c in t.snapshot.containers if c.info.state == "running")
        worst = max(t.pools.values(), key=lambda p: p.utilisation, default=None)
        eng = "engine up" if t.snapshot.engine_up else "ENGINE UNREACHABLE"
        pool = f", fullest pool {worst.name} {worst.utilisation:.0%}" if worst else ""
        res = " RESERVE BREACHED" if t.reserve.breached else ""
        return f"{eng}, {n} running{pool}{res}, pass {self.last_pass_duration_s * 1000:.1f}ms"

    def run(self) -> int:
        if threading.current_thread() is threading.main_thread():
            self._install_signals()
        if self.serve:
            self.start_servers()
        self.inventory.start()
        # Give the engine a moment so the first snapshot has containers, without waiting
        # long where no engine runs.
        self.inventory.connected.wait(timeout=2.0)
        for comp in self.components:
            comp.start()
        ready_sent = False
        min_gap_s = 0.05  # a burst of events coalesces into passes this far apart
        # systemd's watchdog (WATCHDOG_USEC) wants a ping at least this often.
        watchdog_s = self.notifier.watchdog_interval_s()
        if watchdog_s:
            self._keepalive_every_s = min(1.0, watchdog_s / 2)
        try:
            while not self._stop.is_set():
                t0 = time.monotonic()
                if self._reload.is_set():
                    self._reload.clear()
                    self.notifier.notify(RELOADING=1, STATUS="reloading the config",
                                         MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)
                    self.reload()
                    self.notifier.notify(READY=1, STATUS=self.status_line())
                try:
                    self.run_once()
                except SupervisorError as e:
                    self.counts["pass_errors"] += 1
                    log.error("pass failed: %s", e)
                except Exception:  # noqa: BLE001 - the loop must outlive any one bug
                    self.counts["pass_errors"] += 1
                    log.exception("pass failed")
                if not ready_sent:
                    self.notifier.notify(READY=1, STATUS=self.status_line(), MAINPID=os.getpid())
                    ready_sent = True
                    log.info("ready: %s", self.status_line())
                else:
                    self.notifier.notify(WATCHDOG=1, STATUS=self.status_line())
                self._last_watchdog_mono = time.monotonic()
                self._note_slow_pass(watchdog_s)
                # Wait for the next tick or an event; a tick longer than the watchdog
                # interval is waited out in slices, pinging between them.
                deadline = t0 + max(min_gap_s, self.cfg.tick_s)
                while not self._stop.is_set():
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    if self._wake.wait(timeout=min(remaining, watchdog_s or remaining)):
                        break
                    self.notifier.notify(WATCHDOG=1)
                    self._last_watchdog_mono = time.monotonic()
                self._wake.clear()
                gap = time.monotonic() - t0
                if gap < min_gap_s:
                    time.sleep(min_gap_s - gap)
        finally:
            self.shutdown()
        return 0

    def shutdown(self) -> None:
        self.notifier.notify(STOPPING=1, STATUS="stopping")
        for comp in reversed(self.components):
            try:
                comp.stop()
            except Exception:  # noqa: BLE001
                log.exception("stopping %s failed", comp.name)
        self.inventory.stop()
        if self.control_server:
            self.control_server.close()
        if self.metrics_server:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
        self.journal.close()
        log.info("stopped; containers left as they are")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="resource-supervisord",
                                 description="Keeps every container inside the host's resource rules.")
    ap.add_argument("-c", "--config", default=os.environ.get("RESOURCE_SUPERVISOR_CONFIG",
                                                              DEFAULT_CONFIG_PATH))
    ap.add_argument("--check", action="store_true", help="validate the config and exit")
    ap.add_argument("--dry-run", action="store_true", help="decide and report, change nothing")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(e.render(), file=sys.stderr)
        return 78  # EX_CONFIG: systemd's RestartPreventExitStatus keeps it from looping
    if args.check:
        print(f"{args.config}: ok")
        for w in cfg.warnings:
            print(f"warning: {w}")
        return 0
    if args.dry_run:
        cfg = _with_dry_run(cfg, True)
    logs.setup(cfg.settings.log_level)
    for w in cfg.warnings:
        log.warning("config: %s", w)
    try:
        d = Daemon(cfg, args.config)
        d.force_dry_run = args.dry_run
    except SupervisorError as e:
        log.error("cannot start: %s", e)
        return 1
    except OSError as e:
        log.error("cannot start: %s", e)
        return 1
    try:
        return d.run()
    except OSError as e:  # e.g. the metrics port is taken or the socket dir unwritable
        log.error("cannot serve: %s", e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
