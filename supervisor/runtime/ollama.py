"""The Ollama governor (Rule 12.1): Ollama runs with OLLAMA_NUM_PARALLEL=2,
OLLAMA_MAX_LOADED_MODELS=1 and at most 4 cores; left alone it ate the host's CPU.

Found: containers by label (``supervisor.ollama=true``; ``false`` opts out), image glob
(``ollama/ollama*``) or name glob; Ollama servers on the host by process name
(``ollama_host``). Checked each pass: the environment Ollama reads at start
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
- CPU: host CPU PSI (some avg10) at or above ``ladder.psi_cpu_some_avg10`` for
  ``ladder.psi_duration`` steps Ollama's quota down to ``throttled_cpu_cores``; it is
  restored once PSI has stayed below that level x ``ladder.clear_ratio`` for
  ``ladder.clear_after`` (the ladder's hysteresis). What was throttled and from which
  value is kept in the durable state, so a restarted daemon restores it.
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
be reached, no CPU activity for ``idle_for``. Both are re-checked just before the swap.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from prometheus_client.core import GaugeMetricFamily

from supervisor.model.actions import Action, ActionResult, Outcome
from supervisor.act.component import Component, Context
from supervisor.policy.tick import Tick
from supervisor.model.errors import CgroupError, ContainerGone, EngineUnavailable
from supervisor.adapters.ollama_api import LoadedModel, OllamaAPI, OllamaBusy, OllamaError
from supervisor.adapters.ollama_host import HostOllama, HostProcess
from supervisor.policy.ollama_policy import (
    Check, CpuActivity, CpuPlan, Gate, ModelSeen, ModelTracker, Target, advance_gate,
    canonical_cpuset, close, container_targets, cpu_check, cpuset_check, env_checks,
    env_drift, env_map, fmt_cores, gate_levels, host_target, notices, ollama_idle,
    override_cores, plan_cpu, unload_verdicts)
from supervisor.act.ollama_recreate import STATE_PREFIX as RECREATE_PREFIX
from supervisor.act.ollama_recreate import RecreateError, Recreator
from supervisor.model.units import parse_duration

log = logging.getLogger(__name__)

THROTTLE_PREFIX = "ollama.throttle."
# After a recreate (done or rolled back) the same container name is not recreated again
# for this long: a drift that survives a recreate (an entrypoint that sets the variable
# itself) must not turn into a restart loop.
RECREATE_RETRY_S = 600.0
# Host processes are looked for at most this often: a scan walks every process on the
# host (~50 ms with 110 containers' processes, issue 9 soak), and an Ollama server
# started outside a container is rare news. The first scan is at start.
HOST_SCAN_EVERY_S = 60.0


# ---------------------------------------------------------------- the view of one target


@dataclass(frozen=True)
class ApiObs:
    time_s: float
    ok: bool
    models: tuple[LoadedModel, ...] | None
    error: str
    url: str


@dataclass
class View:
    """Everything decided about one target in one pass: read by plan, status, metrics."""

    target: Target
    checks: list[Check]
    notices: list[str]
    env_drift: dict[str, str]
    cpu_plan: CpuPlan | None
    throttled_to: float | None  # the throttled quota while host CPU pressure holds
    hold_cores: float | None  # the quota placement must keep this pass
    api: ApiObs | None
    api_fresh: bool
    idle: tuple[bool, str]
    models: dict[str, tuple[bool, str]]  # name -> (in use, why)
    recreate: bool  # environment drift, enforce, idle, not recreated lately
    pending: list[str] = field(default_factory=list)

    @property
    def compliant(self) -> bool:
        return all(c.ok for c in self.checks)

    def signature(self) -> str:
        bad = [c.describe() for c in self.checks if not c.ok]
        return json.dumps([bad, self.notices]) if bad or self.notices else ""

    def to_dict(self) -> dict[str, Any]:
        t = self.target
        api: dict[str, Any] = {"url": t.api_url, "note": t.api_note}
        if self.api is not None:
            api.update({"reachable": self.api.ok, "error": self.api.error,
                        "checked_at": self.api.time_s, "fresh": self.api_fresh})
            if self.api.models is not None:
                api["models"] = [dict(m.to_dict(), in_use=self.models.get(m.name, (True, ""))[0],
                                      why=self.models.get(m.name, (True, ""))[1])
                                 for m in self.api.models]
        return {
            "name": t.name, "id": t.key[:12] if t.kind == "container" else t.key,
            "kind": t.kind, "found_by": t.found_by, "state": t.state,
            "compliant": self.compliant, "checks": [c.to_dict() for c in self.checks],
            "drift": [c.describe() for c in self.checks if not c.ok],
            "notices": self.notices, "cpu_limit_cores": t.cpu_limit_cores,
            "cpuset": t.cpuset, "class": t.class_name, "throttled_to_cores": self.throttled_to,
            "can_limit": t.can_limit, "limit_note": t.limit_note,
            "idle": {"idle": self.idle[0], "why": self.idle[1]}, "api": api,
            "pending": self.pending,
        }


# ---------------------------------------------------------------- the component


class OllamaGovernor(Component):
    name = "ollama"

    def __init__(self, ctx: Context, host: HostOllama | None = None):
        super().__init__(ctx)
        self.host = host or HostOllama(ctx.cgroups, ctx.proc)
        self.recreator = Recreator(ctx.engine, ctx.journal.put_state, ctx.journal.del_state,
                                   clock=ctx.clock)
        self.counts: Counter[str] = Counter()
        self.models = ModelTracker()
        self.cpu = CpuActivity()
        self.cpu_gate = Gate()
        self.mem_gate = Gate()
        self._lock = threading.Lock()
        self._apis: dict[str, OllamaAPI] = {}
        self._obs: dict[str, ApiObs] = {}
        self._host_procs: list[HostProcess] = []
        self._host_scanned_at: float | None = None
        self._poll_list: list[tuple[str, str]] = []
        # What the daemon throttled, from which value: survives a restart (journal state).
        self._throttles: dict[str, dict] = {
            k[len(THROTTLE_PREFIX):]: v for k, v in ctx.journal.states(THROTTLE_PREFIX).items()}
        if self._throttles:
            # A throttle left by the previous run stays until pressure has been clear
            # for clear_after, as if the daemon had never stopped.
            self.cpu_gate = Gate(on=True)
        self._reported: dict[str, str] = {}
        self._attempts: dict[tuple[str, str], tuple[str, float]] = {}
        self._recreated: dict[str, tuple[float, bool]] = {}  # name -> (time, worked)
        self._views: dict[str, View] = {}
        self._advanced: Tick | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._recover_pending = False  # set by start(): the loop finishes old recreates

    # ------------------------------------------------------------ polling (thread)

    def _api(self, url: str, s) -> OllamaAPI:
        with self._lock:
            api = self._apis.get(url)
            if api is None or api.timeout_s != s.api_timeout_s:
                api = self._apis[url] = OllamaAPI(url, s.api_timeout_s)
            return api

    def poll_interval_s(self) -> float:
        return min(5.0, max(0.5, self.ctx.get_config().tick_s))

    def scan_host(self) -> list[HostProcess]:
        s = self.ctx.get_config().settings.ollama
        procs = self.host.scan(s.process_names) if s.process_names else []
        with self._lock:
            self._host_procs = procs
            self._host_scanned_at = self.ctx.clock()
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
            api = self._api(url, s)
            try:
                models = api.ps()
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

    def recover(self) -> bool:
        """Finish or undo a recreate that a crash interrupted (saved in the journal state).
        False while some could not be dealt with (the engine is down): tried again later."""
        done = True
        for key, saved in self.ctx.journal.states(RECREATE_PREFIX).items():
            name = saved.get("name", key[len(RECREATE_PREFIX):])
            action = Action("ollama_recreate", saved.get("old_id", ""), name,
                            "finishing a recreate interrupted by a restart", "ollama")
            try:
                how = self.recreator.recover(saved)
                result = ActionResult(action, ok=True, dry_run=False, detail=how,
                                      time_s=self.ctx.clock())
            except EngineUnavailable:
                done = False  # nothing to say yet: retried by the poller
                continue
            except Exception as e:  # noqa: BLE001 - keep the state for a later try
                log.error("cannot recover the recreate of %s: %s", name, e)
                result = ActionResult(action, ok=False, dry_run=False, time_s=self.ctx.clock(),
                                      detail=f"recovery failed, state kept: {e}")
                done = False
            self.ctx.journal.record(result)
        return done

    # ------------------------------------------------------------ one pass

    def _advance(self, tick: Tick) -> None:
        """Fold this tick into the governor's state (CPU activity, pressure gates) and
        decide what each target needs. Once per tick, whoever calls first."""
        if self._advanced is tick:
            return
        self._advanced = tick
        cfg = tick.cfg
        s = cfg.settings.ollama
        if not s.enabled:
            self._views = {}
            with self._lock:
                self._poll_list = []
            return
        now = tick.now
        with self._lock:
            procs = list(self._host_procs)
        # A host "process" that is really a container's (its cgroup named a container we
        # know) was already left out by the scan; containers come from the snapshot.
        targets = container_targets(tick, s) + [host_target(p, s) for p in procs]
        idle_cores = cfg.settings.hibernation.cpu_idle_cores
        keys = {t.key for t in targets}
        for t in targets:
            self.cpu.update(t.key, now, t.cpu_usage_s, idle_cores)
        self.cpu.forget_except(keys)
        lad = cfg.settings.ladder
        hold_s, clear_after_s = parse_duration(lad.psi_duration), parse_duration(lad.clear_after)
        psi = tick.snapshot.host.pressure
        high, clear = gate_levels(lad.psi_cpu_some_avg10, lad.clear_ratio)
        self.cpu_gate = advance_gate(self.cpu_gate, psi["cpu"].some_avg10 if "cpu" in psi else None,
                                     high=high, clear=clear, now=now, hold_s=hold_s,
                                     clear_after_s=clear_after_s)
        high, clear = gate_levels(lad.psi_memory_full_avg10, lad.clear_ratio)
        self.mem_gate = advance_gate(self.mem_gate,
                                     psi["memory"].full_avg10 if "memory" in psi else None,
                                     high=high, clear=clear, now=now, hold_s=hold_s,
                                     clear_after_s=clear_after_s)
        with self._lock:
            self._poll_list = [(t.key, t.api_url) for t in targets if t.api_url]
            obs = {k: v for k, v in self._obs.items() if k in keys}
            self._obs = obs
            self.models.forget_except(keys)
            seen = {k: self.models.get(k) for k in keys}
        stale_s = max(10.0, 5 * self.poll_interval_s())
        views = {}
        for t in targets:
            views[t.key] = self._view(t, tick, obs.get(t.key), seen.get(t.key, {}), stale_s)
        self._views = views

    def _forget_throttles(self, tick: Tick, pids: set[int], scanned: bool) -> None:
        """Drop saved throttles of containers that no longer exist (not merely stopped:
        a stopped one keeps its throttled quota and gets it restored when it runs) and
        of host processes that have gone."""
        ids = {c.info.id for c in tick.snapshot.containers}
        for key in list(self._throttles):
            if key.startswith("host:"):
                gone = scanned and int(key.split(":", 1)[1]) not in pids
            else:
                gone = tick.snapshot.engine_up and key not in ids
            if gone:
                self._drop_throttle(key)

    def _view(self, t: Target, tick: Tick, api: ApiObs | None, seen: dict[str, ModelSeen],
              stale_s: float) -> View:
        cfg = tick.cfg
        s = cfg.settings.ollama
        now = tick.now
        checks = env_checks(t.env, s)
        cpu_c = cpu_check(t.cpu_limit_cores, s)
        checks.append(cpu_c)
        cpuset_ok = True
        if t.kind == "container":
            cs = cpuset_check(t.cpuset, t.class_cpuset, t.class_name, cfg.host.cores)
            checks.append(cs)
            cpuset_ok = cs.ok
        drift = env_drift(checks, s)
        saved = self._throttles.get(t.key)
        plan = None
        if t.can_limit and t.state == "running":
            plan = plan_cpu(t.cpu_limit_cores, cpu_c.ok, cpuset_ok, t.class_cpuset,
                            self.cpu_gate.on, saved, s.policy, s)
        throttled_to = None
        if self.cpu_gate.on:
            if saved is not None:
                throttled_to = saved.get("cores")
            elif plan is not None and plan.purpose == "throttle":
                throttled_to = plan.cores
        # What placement must hold this pass: it plans from the same tick and acts first,
        # so it must not undo a throttle, nor a restore, while either is under way.
        hold = throttled_to
        if hold is None and plan is not None and plan.purpose == "restore":
            hold = plan.cores
        fresh = api is not None and api.ok and now - api.time_s <= stale_s
        idle_cores = cfg.settings.hibernation.cpu_idle_cores
        busy = self.cpu.busy(t.key, idle_cores)
        idle = ollama_idle(fresh, list(api.models or ()) if fresh and api else None, busy,
                           self.cpu.quiet_for(t.key, now), parse_duration(s.idle_for))
        models = {}
        if fresh and api and api.models:
            models = unload_verdicts(api.models, seen, now, parse_duration(s.model_idle_for), busy)
        pending = []
        recreate = False
        if drift:
            last = self._recreated.get(t.name)
            if t.kind == "host":
                pending.append("restart Ollama with " + " ".join(f"{k}={v}" for k, v in drift.items())
                               + " (a host process is never restarted by the supervisor)")
            elif s.policy != "enforce":
                pending.append("policy is report: environment drift reported, not fixed")
            elif last is not None and now - last[0] < RECREATE_RETRY_S:
                pending.append(("recreated" if last[1] else "recreate rolled back")
                               + f" {now - last[0]:.0f}s ago and still drifting: not again before "
                               f"{RECREATE_RETRY_S:.0f}s (does the image's entrypoint set it?)")
            elif not idle[0]:
                pending.append(f"recreate with compliant environment once idle: {idle[1]}")
            else:
                recreate = t.state == "running"
        if not t.can_limit:
            pending.append(f"CPU limit not applied: {t.limit_note}")
        return View(t, checks, notices(t.env), drift, plan, throttled_to, hold, api, fresh,
                    idle, models, recreate, pending)

    def overrides(self, tick: Tick) -> dict[str, dict[str, Any]]:
        self._advance(tick)
        s = tick.cfg.settings.ollama
        out: dict[str, dict[str, Any]] = {}
        for v in self._views.values():
            t = v.target
            if t.kind != "container":
                continue
            cores = override_cores(t.cpu_limit_cores, v.hold_cores, s.policy, s)
            # Merged with what earlier components hold for the container (the daemon
            # replaces a container's whole entry): the stricter CPU quota wins.
            ov: dict[str, Any] = dict(tick.overrides.get(t.key, {}))
            if cores is not None:
                other = ov.get("cpu_quota_cores")
                ov["cpu_quota_cores"] = cores if other is None else min(other, cores)
            if s.policy == "enforce" and t.class_cpuset:
                ov["cpuset_cpus"] = t.class_cpuset
            if ov:
                out[t.key] = ov
        return out

    @staticmethod
    def _params_sig(params: dict) -> str:
        return json.dumps(params, sort_keys=True, default=str)

    def _recent(self, key: str, kind: str, params: dict, now: float, gap_s: float) -> bool:
        last = self._attempts.get((key, kind))
        return last is not None and last[0] == self._params_sig(params) and now - last[1] < gap_s

    def plan(self, tick: Tick) -> list[Action]:
        self._advance(tick)
        cfg = tick.cfg
        s = cfg.settings.ollama
        if not s.enabled:
            return []
        now = tick.now
        gap_s = parse_duration(cfg.settings.ladder.min_action_interval)
        mem_why = ""
        if tick.reserve.breached:
            mem_why = "available memory is inside the emergency reserve"
        elif self.mem_gate.on:
            mem_why = "memory pressure (PSI) held"
        actions: list[Action] = []
        for v in self._views.values():
            t = v.target
            sig = v.signature()
            prev = self._reported.get(t.key)
            if sig != (prev or "") and not (prev is None and sig == ""):
                bad = [c.describe() for c in v.checks if not c.ok]
                reason = ("Ollama drift: " + "; ".join(bad) if bad else "Ollama compliant again")
                if v.notices:
                    reason += "; " + "; ".join(v.notices)
                actions.append(Action("alert", t.key, t.name, reason, "ollama",
                                      {"signature": sig, "compliant": v.compliant,
                                       "drift": bad, "notices": v.notices}))
            if t.state != "running":
                continue
            if v.cpu_plan is not None:
                p = v.cpu_plan
                params = {"target_kind": t.kind, "purpose": p.purpose}
                if p.set_cores:
                    params["cores"] = p.cores
                if p.purpose == "throttle" and t.key not in self._throttles:
                    # The value to restore, as this tick saw it: placement acts before
                    # the executor and may already have applied the throttled override.
                    params["before_cores"] = t.cpu_limit_cores
                if p.cpuset:
                    params["cpuset"] = p.cpuset
                if t.kind == "host":
                    params["cgroup"] = t.cgroup_rel
                if not self._recent(t.key, "ollama_cpu", params, now, gap_s):
                    actions.append(Action("ollama_cpu", t.key, t.name, p.reason, "ollama", params))
            if v.recreate and t.kind == "container":
                params = {"env": v.env_drift, "api_url": t.api_url,
                          "idle_by": "api" if v.api_fresh else "cpu"}
                if not self._recent(t.key, "ollama_recreate", params, now, gap_s):
                    actions.append(Action(
                        "ollama_recreate", t.key, t.name,
                        "Rule 12.1 environment: " + ", ".join(f"{k}={val}" for k, val in v.env_drift.items())
                        + f" (idle: {v.idle[1]})", "ollama", params, destructive=True))
            if mem_why and v.models and v.api is not None and t.api_url:
                for m in v.api.models or ():
                    in_use, why = v.models.get(m.name, (True, ""))
                    if in_use:
                        continue
                    params = {"api_url": t.api_url, "model": m.name, "expires_at": m.expires_at,
                              "size_bytes": m.size_bytes}
                    if not self._recent(t.key, "ollama_unload", params, now, gap_s):
                        actions.append(Action("ollama_unload", t.key, t.name,
                                              f"{mem_why}: model {m.name} is idle ({why})",
                                              "ollama", params))
        return actions

    def observe(self, tick: Tick, results: list[ActionResult]) -> None:
        if self._recover_pending and tick.snapshot.engine_up:
            self._recover_pending = not self.recover()
        with self._lock:
            pids = {p.pid for p in self._host_procs}
            scanned = self._host_scanned_at is not None
        self._forget_throttles(tick, pids, scanned)
        for r in results:
            a = r.action
            if a.source != "ollama":
                continue
            if a.kind == "alert":
                if r.ok or r.dry_run:
                    self._reported[a.target] = a.params.get("signature", "")
                continue
            self._attempts[(a.target, a.kind)] = (self._params_sig(a.params), tick.now)
            if a.kind == "ollama_recreate" and not r.dry_run and not r.skipped:
                self._recreated[a.name] = (tick.now, r.ok)
        live = set(self._views)
        for key in [k for k in self._attempts if k[0] not in live]:
            del self._attempts[key]
        for key in [k for k in self._reported if k not in live]:
            del self._reported[key]

    # ------------------------------------------------------------ executors

    def executors(self) -> dict[str, Callable[[Action], Outcome]]:
        return {"ollama_cpu": self._exec_cpu, "ollama_recreate": self._exec_recreate,
                "ollama_unload": self._exec_unload}

    def _save_throttle(self, key: str, value: dict) -> None:
        self.ctx.journal.put_state(THROTTLE_PREFIX + key, value)
        self._throttles[key] = value

    def _drop_throttle(self, key: str) -> None:
        self.ctx.journal.del_state(THROTTLE_PREFIX + key)
        self._throttles.pop(key, None)

    def _note_throttle(self, action: Action, current: float | None, cores: float | None,
                       name: str) -> None:
        """Save what a throttle replaces, before the write: a crash right after still
        knows what to restore."""
        p = action.params
        if p["purpose"] == "throttle" and action.target not in self._throttles:
            self._save_throttle(action.target, {
                "before_cores": p.get("before_cores", current), "cores": cores,
                "name": name, "since_s": self.ctx.clock()})

    def _exec_cpu(self, action: Action) -> Outcome:
        p = action.params
        if p.get("target_kind") == "host":
            return self._exec_cpu_host(action)
        info = self.ctx.inventory.refresh_one(action.target)  # re-check just before acting
        if info is None:
            self._drop_throttle(action.target)
            return Outcome(ok=False, skipped=True, detail="container no longer exists")
        if info.state != "running":
            return Outcome(ok=False, skipped=True, detail=f"container is {info.state}")
        current = info.cpu_limit_cores
        before = {"cpu_limit_cores": current, "cpuset": info.cpuset_cpus}
        kw: dict[str, Any] = {}
        if "cores" in p:
            cores = p["cores"]
            self._note_throttle(action, current, cores, info.name)
            if not close(current, cores):
                if info.nano_cpus:
                    if cores is None:
                        return Outcome(ok=False, before=before, detail=(
                            "a --cpus limit cannot be lifted live: left at "
                            f"{fmt_cores(current)}"))
                    kw["nano_cpus"] = int(round(cores * 1e9))
                else:
                    period = info.cpu_period_us or 100_000
                    kw["cpu_period"] = period
                    kw["cpu_quota"] = -1 if cores is None else max(1000, int(round(cores * period)))
        cpuset = p.get("cpuset")
        if cpuset and canonical_cpuset(info.cpuset_cpus, self.ctx.get_config().host.cores) != cpuset:
            kw["cpuset_cpus"] = cpuset
        if kw:
            self.ctx.engine.update(info.id, **kw)
            info = self.ctx.inventory.refresh_one(info.id) or info
        if p["purpose"] == "restore":
            self._drop_throttle(action.target)
        after = {"cpu_limit_cores": info.cpu_limit_cores, "cpuset": info.cpuset_cpus}
        if not kw:
            return Outcome(ok=True, skipped=True, before=before, after=after,
                           detail="already so: nothing to change")
        changed = []
        if not close(before["cpu_limit_cores"], after["cpu_limit_cores"]):
            changed.append(f"CPU {fmt_cores(before['cpu_limit_cores'])} -> "
                           f"{fmt_cores(after['cpu_limit_cores'])}")
        if before["cpuset"] != after["cpuset"]:
            changed.append(f"cpuset {before['cpuset'] or 'all'} -> {after['cpuset'] or 'all'}")
        return Outcome(ok=True, before=before, after=after,
                       detail=f"{p['purpose']}: " + (", ".join(changed) or "updated"))

    def _exec_cpu_host(self, action: Action) -> Outcome:
        p = action.params
        pid = int(action.target.split(":", 1)[1])
        hp = next((h for h in self.scan_host() if h.pid == pid), None)  # re-check
        if hp is None:
            self._drop_throttle(action.target)
            return Outcome(ok=False, skipped=True, detail="the Ollama process is gone")
        if not hp.can_limit or hp.cgroup_rel != p.get("cgroup"):
            return Outcome(ok=False, skipped=True, detail=f"not limited: {hp.limit_note}")
        before = {"cpu_limit_cores": hp.cpu_limit_cores, "cgroup": hp.cgroup_rel}
        cores = p.get("cores", hp.cpu_limit_cores)
        self._note_throttle(action, hp.cpu_limit_cores, cores, hp.name)
        try:
            if not close(hp.cpu_limit_cores, cores):
                self.host.write_cpu_limit(hp.cgroup_rel, cores)
            after = {"cpu_limit_cores": self.host.read_cpu_limit(hp.cgroup_rel),
                     "cgroup": hp.cgroup_rel}
        except CgroupError as e:
            return Outcome(ok=False, before=before, detail=f"cgroup write failed: {e}")
        if p["purpose"] == "restore":
            self._drop_throttle(action.target)
        self.scan_host()  # the next pass sees the new limit
        return Outcome(ok=True, before=before, after=after,
                       detail=f"{p['purpose']}: CPU {fmt_cores(before['cpu_limit_cores'])} -> "
                              f"{fmt_cores(after['cpu_limit_cores'])} on cgroup {hp.cgroup_rel}")

    def _cpu_rate_now(self, cid: str, info, sample_s: float = 0.25) -> float | None:
        """Cores used over a short sample taken now (the re-check before a recreate)."""
        try:
            loc = self.ctx.cgroups.locate(cid, info.pid, info.cgroup_parent)
            a = self.ctx.cgroups.read_usage(loc).cpu_usage_s
            t0 = time.monotonic()
            time.sleep(sample_s)
            b = self.ctx.cgroups.read_usage(loc).cpu_usage_s
            return (b - a) / max(1e-6, time.monotonic() - t0)
        except CgroupError:
            return None

    def _exec_recreate(self, action: Action) -> Outcome:
        p = action.params
        cfg = self.ctx.get_config()
        s = cfg.settings.ollama
        try:
            attrs = self.ctx.engine.inspect_raw(action.target)
        except ContainerGone:
            return Outcome(ok=False, skipped=True, detail="container no longer exists")
        info = self.ctx.inventory.refresh_one(action.target)
        if info is None or not (attrs.get("State") or {}).get("Running") or info.state != "running":
            return Outcome(ok=False, skipped=True, detail="container is not running")
        env = env_map((attrs.get("Config") or {}).get("Env") or [])
        changes = {k: v for k, v in p["env"].items() if env.get(k) != v}
        if not changes:
            return Outcome(ok=False, skipped=True, detail="environment already compliant")
        # Idle, re-checked just before the destructive step: never mid-request.
        if p.get("api_url"):
            try:
                models = self._api(p["api_url"], s).ps()
                if models:
                    return Outcome(ok=False, skipped=True, detail=(
                        "not idle any more: " + ", ".join(m.name for m in models) + " loaded"))
            except OllamaError as e:
                if p.get("idle_by") == "api":
                    return Outcome(ok=False, skipped=True,
                                   detail=f"API stopped answering ({e}): idle not confirmed")
        rate = self._cpu_rate_now(info.id, info)
        if rate is None or rate > cfg.settings.hibernation.cpu_idle_cores:
            return Outcome(ok=False, skipped=True, detail=(
                "not idle any more: Ollama uses CPU" if rate is not None
                else "CPU activity unreadable: idle not confirmed"))
        old_env = {k: env.get(k) for k in changes}
        before = {"id": attrs["Id"][:12], "env": old_env}
        try:
            done = self.recreator.recreate(attrs, changes)
        except RecreateError as e:
            self.ctx.inventory.refresh_one(attrs["Id"])
            return Outcome(ok=False, before=before, after={"rolled_back": e.rolled_back},
                           detail=str(e))
        self.ctx.inventory.refresh_one(done.old_id)
        self.ctx.inventory.refresh_one(done.new_id)
        if done.old_id in self._throttles:  # the new one inherits the throttled quota
            self._save_throttle(done.new_id, self._throttles[done.old_id])
            self._drop_throttle(done.old_id)
        detail = (f"recreated as {done.new_id[:12]} with "
                  + " ".join(f"{k}={v}" for k, v in changes.items())
                  + "; also fix the compose file or run command, or the drift comes back with the next deploy")
        if done.notes:
            detail += "; " + "; ".join(done.notes)
        return Outcome(ok=True, before=before, detail=detail,
                       after={"id": done.new_id[:12], "env": dict(changes)})

    def _exec_unload(self, action: Action) -> Outcome:
        p = action.params
        s = self.ctx.get_config().settings.ollama
        api = self._api(p["api_url"], s)
        try:
            models = {m.name: m for m in api.ps()}  # re-check just before acting
            m = models.get(p["model"])
            if m is None:
                return Outcome(ok=False, skipped=True, detail=f"{p['model']} is no longer loaded")
            if m.expires_at != p["expires_at"]:
                return Outcome(ok=False, skipped=True, detail=(
                    f"{p['model']} was used since the plan (expires_at moved): left loaded"))
            api.unload(p["model"])
        except OllamaBusy as e:
            return Outcome(ok=False, detail=f"Ollama's queue is full: {e}")
        except OllamaError as e:
            return Outcome(ok=False, detail=str(e))
        return Outcome(ok=True, before={"loaded": True, "size_bytes": m.size_bytes},
                       after={"loaded": False},
                       detail=f"unloaded {p['model']} ({m.size_bytes / 2**30:.2f} GiB)")

    # ------------------------------------------------------------ publishing

    def status(self, tick: Tick) -> dict[str, Any] | None:
        s = tick.cfg.settings.ollama
        lad = tick.cfg.settings.ladder
        high, clear = gate_levels(lad.psi_cpu_some_avg10, lad.clear_ratio)
        return {
            "enabled": s.enabled, "policy": s.policy,
            "cpu_pressure": dict(self.cpu_gate.to_dict(), start_level=high, clear_level=clear),
            "memory_pressure": tick.reserve.breached or self.mem_gate.on,
            "throttles": dict(self._throttles),
            "counts": dict(self.counts),
            "instances": [v.to_dict() for v in self._views.values()],
        }

    def collect(self, tick: Tick) -> Iterable[GaugeMetricFamily]:
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
        for v in self._views.values():
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
