"""The daemon: a short loop, read -> pure decision -> act -> publish -> sleep, plus the
inventory's event thread and the two servers.

Its parts: ``passes`` (one pass and the events between passes), ``loop`` (the loop,
signals, sd_notify); the daemon itself starts the servers (/metrics and the control API)
and swaps in a new config (``Daemon.reload``). After each pass the daemon publishes one
frozen report (``publish.report``): every surface (`supctl status`, the control API,
/metrics, /health) reads only the latest one, swapped in as one reference.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
import threading
import time
from collections import Counter, deque
from typing import Callable

from supervisor.act.actuator import Actuator
from supervisor.act.component import Component, Context
from supervisor.act.core_actions import CoreActions
from supervisor.adapters.cgroups import CgroupFS
from supervisor.adapters.engine import Engine
from supervisor.adapters.host import HostSampler
from supervisor.adapters.hostfacts import read_host_facts
from supervisor.adapters.journal import Journal
from supervisor.adapters.procself import ProcSelf
from supervisor.adapters.sdnotify import Notifier
from supervisor.model.actions import Action, ActionResult
from supervisor.model.config import DEFAULT_CONFIG_PATH, Config, load_config
from supervisor.model.errors import ConfigError, SupervisorError
from supervisor.observe.history import History
from supervisor.observe.inventory import Inventory
from supervisor.observe.sampler import Sampler
from supervisor.policy.tick import Tick
from supervisor.publish.api import core_routes
from supervisor.publish.control import ControlServer
from supervisor.publish.metrics import MetricsServer, make_registry
from supervisor.publish.publisher import ReportBuilder
from supervisor.publish.report import Report
from supervisor.publish.status import build_health
from supervisor.runtime import logs
from supervisor.runtime.hibernation import Hibernation
from supervisor.runtime.history_keeper import HistoryKeeper
from supervisor.runtime.ladder import Ladder
from supervisor.runtime.loop import Loop
from supervisor.runtime.ollama import OllamaGovernor
from supervisor.runtime.passes import Passes, with_dry_run
from supervisor.runtime.placement import Placement
from supervisor.runtime.poolcg import PoolCgroups

log = logging.getLogger("supervisor.daemon")

# The daemon's own RSS and CPU (status, process_* metrics) are read at most this often: a
# Prometheus scrape comes every 15 s, and reading /proc/self/stat every pass cost more than
# the figures are worth.
PROCESS_EVERY_S = 5.0
# The cyclic GC's first-generation threshold (CPython's default is 700). A pass keeps
# ~1500 container objects alive until the next one replaces them (snapshot, plan,
# report), so at 700 every pass ran a collection and promoted them, and every ~100
# passes a full collection walked the whole heap: 60-80 ms on the soak's 110 containers,
# the periodic spike in the pass duration (gc.callbacks on the soak, issue 13). Objects
# are freed by reference counting as before; only cyclic garbage waits longer.
GC_GEN0_THRESHOLD = 20_000
DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
# Settings a running daemon cannot take over: its sockets, its state and its engine.
RESTART_ONLY = (("metrics.listen", lambda s: s.metrics.listen),
                ("control.socket", lambda s: s.control.socket),
                ("state_dir", lambda s: s.state_dir),
                ("docker.host", lambda s: s.docker.host))


def build_components(ctx: Context) -> list[Component]:
    """Every capability of the daemon, in the order they plan each pass: pool cgroups
    exist before placement puts containers in them; placement before the ladder, which
    throttles what placement set; hibernation and Ollama last."""
    return [CoreActions(ctx), PoolCgroups(ctx), Placement(ctx), Ladder(ctx),
            Hibernation(ctx), OllamaGovernor(ctx)]


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
        self.force_dry_run = False  # --dry-run given on the command line
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
        self.history = History(s.history.window, cfg.tick_s)
        # Recommendation history survives restarts: read here, written after passes.
        self.history_keeper = HistoryKeeper(self.history, s.state_dir, clock)
        self.history_keeper.load()
        self.actuator = Actuator(self.journal, clock, s.ladder.max_actions_per_minute,
                                 get_config=lambda: self.cfg)
        self.wake = threading.Event()
        self.ctx = Context(engine=self.engine, inventory=self.inventory, cgroups=self.cgroups,
                           journal=self.journal, history=self.history, clock=clock,
                           get_config=lambda: self.cfg, proc=s.docker.proc_root,
                           activity=self.sampler.activity)
        self.components = (components or build_components)(self.ctx)
        for comp in self.components:
            for kind, fn in comp.executors().items():
                self.actuator.register(kind, fn)
        self.ctx.capabilities.update(self.actuator.executors)
        self.ctx.execute = self._execute_outside_pass
        self.loop = Loop(notifier=self.notifier, counts=self.counts, get_config=lambda: self.cfg,
                         get_report=lambda: self.report, run_once=self.run_once,
                         reload=self.reload, wake=self.wake,
                         actions_in_last_pass=lambda: len(self.passes.last_results))
        self.passes = Passes(inventory=self.inventory, sampler=self.sampler,
                             history=self.history, actuator=self.actuator,
                             components=self.components, counts=self.counts, clock=clock,
                             get_config=lambda: self.cfg, keepalive=self.loop.keepalive,
                             wake=self.wake)
        self.inventory.add_listener(self.passes.on_event)
        self.reports = ReportBuilder(self.components, self.ctx.breaches,
                                     read_process=ProcSelf(s.docker.proc_root, every_s=PROCESS_EVERY_S).read,
                                     started_at_s=self.started_at)
        self.report: Report = self._build_report()  # replaced whole after each pass
        self.registry = make_registry(lambda: self.report)
        self.metrics_server: MetricsServer | None = None
        self.control: ControlServer | None = None

    # ------------------------------------------------------------------ the passes

    @property
    def last_tick(self) -> Tick | None:
        return self.passes.last_tick

    @property
    def pass_durations(self) -> deque[float]:
        return self.passes.durations_s

    def run_once(self, reconcile: bool | None = None,
                 dry_run: bool | None = None) -> tuple[Tick, list[ActionResult]]:
        """One pass: sample, plan, act, publish. Tests drive the daemon through this.
        ``dry_run`` overrides the config's for this pass (POST /apply acts for real)."""
        with self.passes.lock:
            tick, results = self.passes.run(reconcile, dry_run)
            self.reports.observe_pass(self.passes.last_pass_duration_s, tick)
            self.history_keeper.after_pass()
            self.report = self._build_report()
            return tick, results

    def _execute_outside_pass(self, action: Action) -> ActionResult:
        """An action from the wake watcher or the control API, through the actuator; then a
        pass at once, so the report (status, /metrics) shows its result without waiting
        for the next tick."""
        result = self.actuator.execute_one(action, self.cfg.dry_run)
        self.wake.set()
        return result

    def plan_now(self) -> dict:
        """GET /plan: what the daemon would do on its last snapshot, changing nothing."""
        return self.passes.plan_now()

    def _build_report(self) -> Report:
        cfg = self.cfg
        p = self.passes
        engine_host = cfg.settings.docker.host or os.environ.get("DOCKER_HOST", DEFAULT_DOCKER_HOST)
        return self.reports.build(
            cfg=cfg, seq=self.counts["passes"], stale_after_s=max(10.0, 5 * cfg.tick_s),
            tick=p.last_tick, prev_tick=p.prev_tick,
            engine_up=self.inventory.engine_up, engine_error=self.inventory.engine_error,
            engine_host=engine_host,
            cgroup_version=self.cgroups.version, last_config_error=self.last_config_error,
            counts=self.counts, sampler_counts=self.sampler.counts,
            inventory_counts=self.inventory.counts, action_counts=self.actuator.counts,
            recent_actions=self.actuator.recent,
            last_pass_duration_s=p.last_pass_duration_s, pass_durations_s=p.durations_s)

    # ------------------------------------------------------------------ reload

    def reload(self) -> tuple[bool, str]:
        """Swap in a whole new config (SIGHUP, POST /reload), or keep the old one and say
        why."""
        try:
            new = load_config(self.config_path, host=read_host_facts())
        except ConfigError as e:
            self.last_config_error = e.render()
            self.counts["reload_failed"] += 1
            log.error("reload refused, keeping the running config: %s", e.render(),
                      extra={"config": self.config_path,
                             "problems": [f"{k}: {r}" if k else r for k, r in e.problems]})
            self.wake.set()  # the next pass's report says so
            return False, e.render()
        if self.force_dry_run and not new.dry_run:
            new = with_dry_run(new, True)  # --dry-run outlives any reload
        # The keys that changed but take effect only at the next start.
        fixed = [key for key, get in RESTART_ONLY if get(self.cfg.settings) != get(new.settings)]
        self.cfg = new
        self.last_config_error = ""
        self.counts["reloads"] += 1
        self.sampler.invalidate()
        msg = "config reloaded"
        if fixed:
            msg += "; these take effect at restart: " + ", ".join(fixed)
        log.info(msg, extra={"config": new.source})
        self.wake.set()
        return True, msg

    # ------------------------------------------------------------------ run and stop

    def start_servers(self) -> None:
        """/metrics + /health over HTTP, and the control API on its unix socket. Both answer
        from the latest report (and the few calls handed in here: journal reads, plan,
        reload, apply); each component adds its own control routes."""
        s = self.cfg.settings
        self.metrics_server = MetricsServer(s.metrics.listen, self.registry,
                                            lambda: build_health(self.report))
        self.metrics_server.start()
        self.control = ControlServer(s.control.socket, s.control.read_group)
        core = core_routes(lambda: self.report, journal=self.journal.recent, plan=self.plan_now,
                           reload=self.reload,
                           apply=lambda: [r.to_dict() for r in
                                          self.run_once(reconcile=True, dry_run=False)[1]])
        for routes in (core, *(comp.routes() for comp in self.components)):
            for (method, path), (fn, params) in routes.items():
                self.control.add(method, path, fn, params)
        self.control.start()
        log.info("serving metrics on http://%s/metrics and control on %s",
                 s.metrics.listen, s.control.socket)

    def request_stop(self) -> None:
        self.loop.request_stop()

    def run(self) -> int:
        if threading.current_thread() is threading.main_thread():
            self.loop.install_signals()
        if self.serve:
            self.start_servers()
        self.inventory.start()
        # Give the engine a moment so the first snapshot has containers, without waiting
        # long where no engine runs.
        self.inventory.connected.wait(timeout=2.0)
        for comp in self.components:
            comp.start()
        try:
            self.loop.run()
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
        if self.control:
            self.control.close()
            self.control = None
        if self.metrics_server:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
            self.metrics_server = None
        self.history_keeper.close()
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
        cfg = load_config(args.config, host=read_host_facts())
    except ConfigError as e:
        print(e.render(), file=sys.stderr)
        return 78  # EX_CONFIG: systemd's RestartPreventExitStatus keeps it from looping
    if args.check:
        print(f"{args.config}: ok")
        for w in cfg.warnings:
            print(f"warning: {w}")
        return 0
    if args.dry_run:
        cfg = with_dry_run(cfg, True)
    logs.setup(cfg.settings.log_level)
    for w in cfg.warnings:
        log.warning("config: %s", w)
    try:
        d = Daemon(cfg, args.config)
        d.force_dry_run = args.dry_run
    except (SupervisorError, OSError) as e:
        log.error("cannot start: %s", e)
        return 1
    # What the daemon built to start (modules, config, components) lives as long as it
    # does: kept out of the cyclic GC's full collections, which then walk only the
    # objects of the recent passes (gc.freeze; see GC_GEN0_THRESHOLD).
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])
    try:
        return d.run()
    except OSError as e:  # e.g. the metrics port is taken or the socket dir unwritable
        log.error("cannot serve: %s", e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
