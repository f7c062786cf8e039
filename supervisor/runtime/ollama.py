"""The Ollama governor (Rule 12.1): Ollama runs with OLLAMA_NUM_PARALLEL=2,
OLLAMA_MAX_LOADED_MODELS=1 and at most 4 cores; left alone it ate the host's CPU.

Found: containers by label (``supervisor.ollama=true``; ``false`` opts out), image glob
(``ollama/ollama*``) or name glob (container or compose service); Ollama servers on the
host by process name (``ollama_host``). Checked each pass: the environment Ollama reads at start
(NUM_PARALLEL, MAX_LOADED_MODELS, MAX_QUEUE when configured), the CPU limit (a CFS quota
of at most ``cpu_cores``) and the cpuset (the container's class). OLLAMA_CPU_LIMIT is
not an Ollama variable: a compose file setting it caps nothing, and it is reported as
having no effect. Drift shows in status, in the metrics
(``resource_supervisor_ollama_compliant{name}`` and ``..._check{name,check}``) and in
the journal (an alert when the set of problems changes).

Remedies. ``policy = "report"`` fixes no drift. ``"enforce"`` sets the CPU limit and
cpuset live (Docker update, and the same values as overrides so placement keeps them)
and, for environment drift, recreates the container with compliant values
(``ollama_recreate``) once Ollama is idle, never mid-request.

Pressure responses apply under both policies (dry-run aside), as the breach ladder's do:
- CPU: host CPU PSI (some avg10) above ``ladder.psi_cpu_some_avg10`` for
  ``ladder.psi_duration`` steps Ollama's quota down to ``throttled_cpu_cores``; it is
  restored once PSI has stayed below that level x ``ladder.clear_ratio`` for
  ``ladder.clear_after``: the one PSI gate (``policy.psi``), the breach ladder's too.
  What was throttled and from which value is kept in the durable state, so a restarted
  daemon restores it.
- Memory: with the reserve breached, or memory PSI (full avg10) high for psi_duration,
  loaded models that are idle are unloaded through Ollama's API.

When is a model in use? Ollama's /api/ps tells only ``expires_at``, which Ollama sets
when a model's last request *ends* (end + keep_alive); while a model's first request
runs it reports now + keep_alive, which moves with every call. The poller reads /api/ps
every pass and a model is in use when its ``expires_at`` moved within
``model_idle_for`` (requests are ending, or the first one is running), or when it has
been watched for less than that. A long request on a model that had finished an
earlier one leaves ``expires_at`` still, so CPU decides that case: when Ollama's cgroup
uses more than ``hibernation.cpu_idle_cores`` and no model shows activity, every model
counts as in use. (Ollama itself never cuts a running request: an unload of a model
with a request in flight takes effect when the request ends.) The unload re-reads
/api/ps just before, and skips a model whose ``expires_at`` moved since the plan.

When is Ollama idle (recreate)? The API answers and lists no loaded model, and its CPU
is quiet in the last pass (a pull or a load in progress uses CPU); where the API cannot
be reached, no CPU activity for ``idle_for``. CPU is judged from the tick's activity view
(the one activity tracker's, which the ladder's hibernate rung reads too): busy above
``hibernation.cpu_idle_cores``. A host Ollama's CPU is read when the host is scanned and
handed to the tracker. Both are re-checked just before the swap: /api/ps once more, and
one fresh read of the cgroup's CPU usage against the tracker's last reading (everything
since the last pass counts; nothing sleeps on the loop).

Where things live: the pure decisions in ``policy.ollama_policy`` (checks, CPU values,
activity) and ``policy.ollama_plan`` (one pass: views, overrides, actions); the
executors in ``act.ollama``; this module is the component (poller thread, memory,
publishing).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from typing import Any, Callable, Iterable

from prometheus_client.core import GaugeMetricFamily

from supervisor.act.component import Component, Context
from supervisor.act.ollama import ApiPool, OllamaExecutors, Throttles
from supervisor.adapters.ollama_api import OllamaError
from supervisor.adapters.ollama_host import HostOllama
from supervisor.model.actions import Action, ActionResult, Outcome
from supervisor.model.memo import ByContainer
from supervisor.model.ollama import HostProcess
from supervisor.observe.activity import ActivityTracker
from supervisor.policy import ollama_plan, psi
from supervisor.policy.ollama_plan import ApiObs, Memory, Pass, View
from supervisor.policy.ollama_policy import ModelTracker, Target, container_targets, host_target
from supervisor.publish.report import Deferred
from supervisor.policy.psi import PsiGate
from supervisor.policy.tick import Tick

log = logging.getLogger(__name__)

# Host processes are looked for at most this often: a scan walks every process on the
# host (~50 ms with 110 containers' processes, issue 9 soak), and an Ollama server
# started outside a container is rare news. The first scan is at start.
HOST_SCAN_EVERY_S = 60.0


class OllamaGovernor(Component):
    """The component: a poller thread reads /api/ps (and scans the host now and then);
    each pass is decided by ``policy.ollama_plan`` from the tick and ``self.memory``,
    which only ``observe`` replaces (``plan`` and ``overrides`` change nothing, so
    ``GET /plan`` leaves no trace); the executors live in ``act.ollama``."""

    # The containers matched as Ollama, kept for the snapshot they came from and per
    # container (memos that never feed a decision of their own): the only attributes
    # planning writes.
    plan_memo = ("_targets_memo", "_by_container")

    name = "ollama"

    def __init__(self, ctx: Context, host: HostOllama | None = None):
        super().__init__(ctx)
        self.host = host or HostOllama(ctx.cgroups, ctx.proc)
        self.counts: Counter[str] = Counter()
        self.apis = ApiPool()
        self.throttles = Throttles(ctx.journal)
        # A throttle left by the previous run stays until pressure has been clear for
        # clear_after, as if the daemon had never stopped.
        self.memory = Memory(cpu_gate=PsiGate(on=bool(self.throttles.snapshot())))
        # The one activity tracker (the daemon's): the ticks' activity views come from it,
        # and it keeps the last CPU reading the recreate re-check compares with.
        self.activity = ctx.activity or ActivityTracker(ctx.proc)
        self.acts = OllamaExecutors(ctx, self.host, self.apis, self.throttles, self.scan_host,
                                    self.activity.cpu_record)
        self.views: dict[str, View] = {}  # the last committed pass: status and metrics
        # The poller's side, under _lock: its readings and the list it reads.
        self._lock = threading.Lock()
        self.models = ModelTracker()
        self._obs: dict[str, ApiObs] = {}
        self._host_procs: list[HostProcess] = []
        self._host_scanned_at: float | None = None
        self._poll_list: list[tuple[str, str]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._recover_pending = False  # set by start(): the loop finishes old recreates
        self._targets_memo: tuple | None = None  # (snapshot, config, its container targets)
        # Per container its target (None: not an Ollama), matched again only when its
        # inspect data or the config changed (policy.container_targets).
        self._by_container: ByContainer[Target | None] = ByContainer()

    # ------------------------------------------------------------ polling (thread)

    def poll_interval_s(self) -> float:
        return min(5.0, max(0.5, self.ctx.get_config().tick_s))

    def scan_host(self) -> list[HostProcess]:
        s = self.ctx.get_config().settings.ollama
        procs = self.host.scan(s.process_names) if s.process_names else []
        now = self.ctx.clock()
        # Their CPU, read by this scan, to the one tracker (the next pass's activity view).
        self.activity.record_processes({f"host:{p.pid}": (p.pid, p.cpu_usage_s) for p in procs},
                                       now)
        with self._lock:
            self._host_procs = procs
            self._host_scanned_at = now
        return procs

    def poll_now(self) -> None:
        """Read /api/ps of every target (and look for host processes when due). The
        poller thread calls this each interval; tests call it to step deterministically."""
        cfg = self.ctx.get_config()
        s = cfg.settings.ollama
        if not s.enabled:
            return
        scanned = self._host_scanned_at
        if scanned is None or self.ctx.clock() - scanned >= max(cfg.reconcile_s, HOST_SCAN_EVERY_S):
            self.scan_host()
        with self._lock:
            todo = list(self._poll_list)
        for key, url in todo:
            try:
                models = self.apis.get(url, s.api_timeout_s).ps()
                obs = ApiObs(self.ctx.clock(), True, tuple(models), "", url)
            except OllamaError as e:
                obs = ApiObs(self.ctx.clock(), False, None, str(e), url)
                self.counts["api_errors"] += 1
            with self._lock:
                self._obs[key] = obs
                if obs.ok:
                    self.models.update(key, obs.models or (), obs.time_s)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_interval_s()):
            try:
                self.poll_now()
            except Exception:  # noqa: BLE001 - the poller must outlive any one bug
                log.exception("ollama poller failed")
                self.counts["poller_errors"] += 1

    def start(self) -> None:
        self._recover_pending = True
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="ollama-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)

    # ------------------------------------------------------------ one pass

    def _targets(self, tick: Tick) -> list[Target]:
        s = tick.cfg.settings.ollama
        with self._lock:
            procs = list(self._host_procs)
        # A host "process" that is really a container's (its cgroup named a container we
        # know) was already left out by the scan; containers come from the snapshot, and
        # are matched once per snapshot (overrides, plan and observe each ask).
        memo = self._targets_memo
        if memo is None or memo[0] is not tick.snapshot or memo[1] is not tick.cfg:
            memo = self._targets_memo = (tick.snapshot, tick.cfg,
                                         container_targets(tick, s, self._by_container))
        return memo[2] + [host_target(p, s) for p in procs]

    def _pass(self, tick: Tick) -> Pass:
        """This tick folded into the governor's memory, changing nothing."""
        if not tick.cfg.settings.ollama.enabled:
            return Pass(self.memory.cpu_gate, self.memory.mem_gate, {}, [])
        targets = self._targets(tick)
        with self._lock:
            obs = dict(self._obs)
            seen = {t.key: self.models.get(t.key) for t in targets}
        stale_s = max(10.0, 5 * self.poll_interval_s())
        return ollama_plan.advance(tick, targets, self.memory, self.throttles.snapshot(), obs,
                                   seen, stale_s)

    def overrides(self, tick: Tick) -> dict[str, dict[str, Any]]:
        return ollama_plan.overrides(self._pass(tick), tick)

    def plan(self, tick: Tick) -> list[Action]:
        if not tick.cfg.settings.ollama.enabled:
            return []
        return ollama_plan.plan_actions(self._pass(tick), tick, self.memory,
                                        self.throttles.snapshot())

    def observe(self, tick: Tick, results: list[ActionResult]) -> None:
        """Commit the pass: the new gates, the views, what was reported and
        tried; the poller's list and readings follow the targets."""
        if self._recover_pending and tick.snapshot.engine_up:
            self._recover_pending = not self.acts.recover()
        p = self._pass(tick)
        self.memory = ollama_plan.remembered(self.memory, p, tick, results)
        self.views = p.views
        keys = set(p.views)
        with self._lock:
            self._poll_list = p.poll_list
            self._obs = {k: v for k, v in self._obs.items() if k in keys}
            self.models.forget_except(keys)
            pids = {h.pid for h in self._host_procs}
            scanned = self._host_scanned_at is not None
        self._forget_throttles(tick, pids, scanned)

    def _forget_throttles(self, tick: Tick, pids: set[int], scanned: bool) -> None:
        """Drop saved throttles of containers that no longer exist (not merely stopped:
        a stopped one keeps its throttled quota and gets it restored when it runs) and
        of host processes that have gone."""
        ids = {c.info.id for c in tick.snapshot.containers}
        for key in self.throttles.snapshot():
            if key.startswith("host:"):
                gone = scanned and int(key.split(":", 1)[1]) not in pids
            else:
                gone = tick.snapshot.engine_up and key not in ids
            if gone:
                self.throttles.drop(key)

    def executors(self) -> dict[str, Callable[[Action], Outcome]]:
        return self.acts.handlers()

    # ------------------------------------------------------------ publishing

    def status(self, tick: Tick) -> Deferred:
        # Built when read, from what this pass left: the memory and the views are
        # replaced by observe, never changed in place; the rest is copied now.
        memory, views, counts = self.memory, self.views, dict(self.counts)
        throttles = self.throttles.snapshot()

        def build() -> dict[str, Any]:
            s = tick.cfg.settings.ollama
            lad = tick.cfg.settings.ladder
            high, clear = psi.levels(lad.psi_cpu_some_avg10, lad.clear_ratio)
            return {
                "enabled": s.enabled, "policy": s.policy,
                "cpu_pressure": dict(memory.cpu_gate.to_dict(), start_level=high,
                                     clear_level=clear),
                "memory_pressure": tick.reserve.breached or memory.mem_gate.on,
                "throttles": throttles, "counts": counts,
                "instances": [v.to_dict() for v in views.values()],
            }
        return Deferred(build)

    def collect(self, tick: Tick) -> Iterable[GaugeMetricFamily]:
        return metric_families(self.views.values())


def metric_families(views: Iterable[View]) -> list[GaugeMetricFamily]:
    compliant = GaugeMetricFamily("resource_supervisor_ollama_compliant",
                                  "1 when an Ollama meets Rule 12.1 (env, CPU limit, cpuset), else 0",
                                  labels=["name"])
    check = GaugeMetricFamily("resource_supervisor_ollama_check",
                              "1 when one Rule 12.1 check passes for an Ollama, else 0",
                              labels=["name", "check"])
    limit = GaugeMetricFamily("resource_supervisor_ollama_cpu_limit_cores",
                              "CPU limit of an Ollama in cores (0 = none)", labels=["name"])
    throttled = GaugeMetricFamily("resource_supervisor_ollama_throttled",
                                  "1 while an Ollama's CPU quota is stepped down under host CPU pressure",
                                  labels=["name"])
    api_up = GaugeMetricFamily("resource_supervisor_ollama_api_up",
                               "1 when an Ollama's HTTP API answered the last poll", labels=["name"])
    loaded = GaugeMetricFamily("resource_supervisor_ollama_loaded_model_bytes",
                               "Size of each model an Ollama holds in memory (GET /api/ps)",
                               labels=["name", "model"])
    for v in views:
        n = v.target.name
        compliant.add_metric([n], 1.0 if v.compliant else 0.0)
        for c in v.checks:
            check.add_metric([n, c.name], 1.0 if c.ok else 0.0)
        limit.add_metric([n], v.target.cpu_limit_cores or 0.0)
        throttled.add_metric([n], 1.0 if v.throttled_to is not None else 0.0)
        api_up.add_metric([n], 1.0 if v.api_fresh else 0.0)
        if v.api_fresh and v.api and v.api.models:
            for m in v.api.models:
                loaded.add_metric([n, m.name], float(m.size_bytes))
    return [compliant, check, limit, throttled, api_up, loaded]
