"""One pass of the Ollama governor, decided purely: from the tick (CPU activity included:
the tick's activity view, the one tracker's) and what the governor remembers (its two
PSI gates, its saved throttles, what it reported and tried), the view of every target,
the overrides placement must keep and the actions to take. Nothing here changes anything: the component commits a pass in ``observe``, so
planning twice from one tick (``GET /plan``) gives the same plan and leaves no trace."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from supervisor.model.actions import Action, ActionResult
from supervisor.model.ollama import LoadedModel
from supervisor.policy import psi
from supervisor.policy.ollama_policy import (
    Check, CpuPlan, ModelSeen, Target, cpu_activity, cpu_check, cpuset_check, env_checks,
    env_drift, notices, ollama_idle, override_cores, plan_cpu, unload_verdicts)
from supervisor.policy.psi import PsiGate
from supervisor.policy.tick import Tick

# After a recreate (done or rolled back) the same container name is not recreated again
# for this long: a drift that survives a recreate (an entrypoint that sets the variable
# itself) must not turn into a restart loop.
RECREATE_RETRY_S = 600.0


@dataclass(frozen=True)
class ApiObs:
    """The poller's last reading of one target's /api/ps."""

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


@dataclass(frozen=True)
class Memory:
    """What the governor remembers between passes (the component owns and commits it)."""

    cpu_gate: PsiGate = PsiGate()
    mem_gate: PsiGate = PsiGate()
    reported: Mapping[str, str] = field(default_factory=dict)  # key -> alerted signature
    attempts: Mapping[tuple[str, str], tuple[str, float]] = field(default_factory=dict)
    recreated: Mapping[str, tuple[float, bool]] = field(default_factory=dict)  # name -> (time, ok)


@dataclass(frozen=True)
class Pass:
    """One tick folded into the governor's memory: the next gates, the view of every
    target, and which APIs the poller should read."""

    cpu_gate: PsiGate
    mem_gate: PsiGate
    views: dict[str, View]
    poll_list: list[tuple[str, str]]  # (target key, API URL)


def advance_gates(tick: Tick, cpu_gate: PsiGate, mem_gate: PsiGate) -> tuple[PsiGate, PsiGate]:
    """The governor's CPU and memory gates after this tick's PSI readings: the one PSI
    gate with the ladder's levels and durations, so both react to the same pressure."""
    lad = tick.cfg.settings.ladder
    pressure = tick.snapshot.host.pressure
    cpu = pressure["cpu"].some_avg10 if "cpu" in pressure else None
    mem = pressure["memory"].full_avg10 if "memory" in pressure else None
    out = []
    for gate, value, level in ((cpu_gate, cpu, lad.psi_cpu_some_avg10),
                               (mem_gate, mem, lad.psi_memory_full_avg10)):
        start, clear = psi.levels(level, lad.clear_ratio)
        out.append(psi.advance(gate, value, level=start, clear=clear, now=tick.now,
                               hold_s=lad.psi_duration, clear_after_s=lad.clear_after))
    return out[0], out[1]


def advance(tick: Tick, targets: list[Target], mem: Memory, throttles: Mapping[str, dict],
            obs: Mapping[str, ApiObs], seen: Mapping[str, dict[str, ModelSeen]],
            stale_s: float) -> Pass:
    """The governor's pass on ``tick``. Pure. ``throttles``: the saved throttles (what
    each replaced), ``obs`` and ``seen``: the poller's readings of /api/ps."""
    cpu_gate, mem_gate = advance_gates(tick, mem.cpu_gate, mem.mem_gate)
    views = {t.key: view_of(t, tick, obs.get(t.key), seen.get(t.key, {}), stale_s,
                            cpu_gate.on, throttles.get(t.key), mem.recreated.get(t.name))
             for t in targets}
    return Pass(cpu_gate, mem_gate, views, [(t.key, t.api_url) for t in targets if t.api_url])


def view_of(t: Target, tick: Tick, api: ApiObs | None, seen: dict[str, ModelSeen],
            stale_s: float, cpu_pressure: bool, saved: dict | None,
            last_recreate: tuple[float, bool] | None) -> View:
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
    plan = None
    if t.can_limit and t.state == "running":
        plan = plan_cpu(t.cpu_limit_cores, cpu_c.ok, cpuset_ok, t.class_cpuset,
                        cpu_pressure, saved, s.policy, s)
    throttled_to = None
    if cpu_pressure:
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
    busy, quiet_s = cpu_activity(tick, t.key)
    idle = ollama_idle(fresh, list(api.models or ()) if fresh and api else None, busy,
                       quiet_s, s.idle_for)
    models = {}
    if fresh and api and api.models:
        models = unload_verdicts(api.models, seen, now, s.model_idle_for, busy)
    pending = []
    recreate = False
    if drift:
        if t.kind == "host":
            pending.append("restart Ollama with " + " ".join(f"{k}={v}" for k, v in drift.items())
                           + " (a host process is never restarted by the supervisor)")
        elif s.policy != "enforce":
            pending.append("policy is report: environment drift reported, not fixed")
        elif last_recreate is not None and now - last_recreate[0] < RECREATE_RETRY_S:
            pending.append(("recreated" if last_recreate[1] else "recreate rolled back")
                           + f" {now - last_recreate[0]:.0f}s ago and still drifting: not again "
                           f"before {RECREATE_RETRY_S:.0f}s (does the image's entrypoint set it?)")
        elif not idle[0]:
            pending.append(f"recreate with compliant environment once idle: {idle[1]}")
        else:
            recreate = t.state == "running"
    if not t.can_limit:
        pending.append(f"CPU limit not applied: {t.limit_note}")
    return View(t, checks, notices(t.env), drift, plan, throttled_to, hold, api, fresh,
                idle, models, recreate, pending)


# ---------------------------------------------------------------- overrides


def overrides(p: Pass, tick: Tick) -> dict[str, dict[str, Any]]:
    """What placement must keep on each Ollama container: the CPU cap the governor wants
    (combined with the caps other components hold by ``rules.effective_cpu_cores``: the
    smallest wins) and, under enforce, the class cpuset."""
    s = tick.cfg.settings.ollama
    out: dict[str, dict[str, Any]] = {}
    for v in p.views.values():
        t = v.target
        if t.kind != "container":
            continue
        ov: dict[str, Any] = {}
        cap = override_cores(t.cpu_limit_cores, v.hold_cores, s.policy, s)
        if cap is not None:
            ov["cpu_quota_cores"] = cap
        if s.policy == "enforce" and t.class_cpuset:
            ov["cpuset_cpus"] = t.class_cpuset
        if ov:
            out[t.key] = ov
    return out


# ---------------------------------------------------------------- actions


def params_sig(params: dict) -> str:
    return json.dumps(params, sort_keys=True, default=str)


def recent(mem: Memory, key: str, kind: str, params: dict, now: float, gap_s: float) -> bool:
    """The same action on the same target within ``ladder.min_action_interval``."""
    last = mem.attempts.get((key, kind))
    return last is not None and last[0] == params_sig(params) and now - last[1] < gap_s


def memory_pressure(tick: Tick, mem_gate: PsiGate) -> str:
    """Why idle models should be unloaded now ("" when they should not)."""
    if tick.reserve.breached:
        return "available memory is inside the emergency reserve"
    if mem_gate.on:
        return "memory pressure (PSI) held"
    return ""


def alert_for(v: View, prev: str | None) -> Action | None:
    """An alert when the set of problems changed since the last one reported."""
    sig = v.signature()
    if sig == (prev or "") or (prev is None and sig == ""):
        return None
    bad = [c.describe() for c in v.checks if not c.ok]
    reason = "Ollama drift: " + "; ".join(bad) if bad else "Ollama compliant again"
    if v.notices:
        reason += "; " + "; ".join(v.notices)
    return Action("alert", v.target.key, v.target.name, reason, "ollama",
                  {"signature": sig, "compliant": v.compliant, "drift": bad,
                   "notices": v.notices})


def plan_actions(p: Pass, tick: Tick, mem: Memory, throttles: Mapping[str, dict]) -> list[Action]:
    """Every action of the pass: alerts, CPU limits, recreates, unloads."""
    now = tick.now
    # A repeat of the same action on the same target waits min_action_interval.
    gap_s = tick.cfg.settings.ladder.min_action_interval
    mem_why = memory_pressure(tick, p.mem_gate)
    actions: list[Action] = []
    for v in p.views.values():
        t = v.target
        alert = alert_for(v, mem.reported.get(t.key))
        if alert is not None:
            actions.append(alert)
        if t.state != "running":
            continue
        if v.cpu_plan is not None:
            c = v.cpu_plan
            params: dict[str, Any] = {"target_kind": t.kind, "purpose": c.purpose}
            if c.set_cores:
                params["cores"] = c.cores
            if c.purpose == "throttle" and t.key not in throttles:
                # The value to restore, as this tick saw it: placement acts before
                # the executor and may already have applied the throttled override.
                params["before_cores"] = t.cpu_limit_cores
            if c.cpuset:
                params["cpuset"] = c.cpuset
            if t.kind == "host":
                params["cgroup"] = t.cgroup_rel
            if not recent(mem, t.key, "ollama_cpu", params, now, gap_s):
                actions.append(Action("ollama_cpu", t.key, t.name, c.reason, "ollama", params))
        if v.recreate and t.kind == "container":
            params = {"env": v.env_drift, "api_url": t.api_url,
                      "idle_by": "api" if v.api_fresh else "cpu"}
            if not recent(mem, t.key, "ollama_recreate", params, now, gap_s):
                actions.append(Action(
                    "ollama_recreate", t.key, t.name,
                    "Rule 12.1 environment: "
                    + ", ".join(f"{k}={val}" for k, val in v.env_drift.items())
                    + f" (idle: {v.idle[1]})", "ollama", params, destructive=True))
        if mem_why and v.models and v.api is not None and t.api_url:
            for m in v.api.models or ():
                in_use, why = v.models.get(m.name, (True, ""))
                if in_use:
                    continue
                params = {"api_url": t.api_url, "model": m.name, "expires_at": m.expires_at,
                          "size_bytes": m.size_bytes}
                if not recent(mem, t.key, "ollama_unload", params, now, gap_s):
                    actions.append(Action("ollama_unload", t.key, t.name,
                                          f"{mem_why}: model {m.name} is idle ({why})",
                                          "ollama", params))
    return actions


def remembered(mem: Memory, p: Pass, tick: Tick, results: list[ActionResult]) -> Memory:
    """The memory after the pass ran: the new gates, what was reported and
    tried (``results``: this component's ActionResults), forgotten targets dropped."""
    reported = dict(mem.reported)
    attempts = dict(mem.attempts)
    recreated = dict(mem.recreated)
    for r in results:
        a = r.action
        if a.source != "ollama":
            continue
        if a.kind == "alert":
            if r.ok or r.dry_run:
                reported[a.target] = a.params.get("signature", "")
            continue
        attempts[(a.target, a.kind)] = (params_sig(a.params), tick.now)
        if a.kind == "ollama_recreate" and not r.dry_run and not r.skipped:
            recreated[a.name] = (tick.now, r.ok)
    live = set(p.views)
    return Memory(cpu_gate=p.cpu_gate, mem_gate=p.mem_gate,
                  reported={k: v for k, v in reported.items() if k in live},
                  attempts={k: v for k, v in attempts.items() if k[0] in live},
                  recreated=recreated)
