"""The Ollama governor's executors: a container's CPU limit and cpuset (through the one
CPU writer, ``act.cpu``), a host Ollama's cgroup quota (the rule book's rounding and
period), the unload of an idle model, the recreate of a drifting container once idle,
and the recovery of a recreate a crash interrupted. Each re-checks just before acting.

What a throttle replaced is saved before the write (``Throttles``, durable in the
journal state), so a crash right after, or a restarted daemon, still knows what to
restore."""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from supervisor.act.component import Context
from supervisor.act.cpu import cpu_params
from supervisor.act.ollama_recreate import STATE_PREFIX as RECREATE_PREFIX
from supervisor.act.ollama_recreate import RecreateError, Recreator
from supervisor.adapters.ollama_api import OllamaAPI, OllamaBusy, OllamaError
from supervisor.adapters.ollama_host import HostOllama
from supervisor.model import rules
from supervisor.model.actions import Action, ActionResult, Outcome
from supervisor.model.activity import CpuRecord, cpu_rate_since
from supervisor.model.errors import CgroupError, ContainerGone, EngineUnavailable
from supervisor.model.ollama import HostProcess
from supervisor.policy.ollama_policy import canonical_cpuset, close, env_map, fmt_cores

log = logging.getLogger(__name__)

THROTTLE_PREFIX = "ollama.throttle."


class Throttles:
    """What the governor throttled, and from which value: {target key: {"before_cores",
    "cores", "name", "since_s"}}, kept in the journal state so it survives a restart."""

    def __init__(self, journal) -> None:
        self._journal = journal
        self._saved: dict[str, dict] = {
            k[len(THROTTLE_PREFIX):]: v for k, v in journal.states(THROTTLE_PREFIX).items()}

    def get(self, key: str) -> dict | None:
        return self._saved.get(key)

    def __contains__(self, key: str) -> bool:
        return key in self._saved

    def snapshot(self) -> dict[str, dict]:
        return dict(self._saved)

    def save(self, key: str, value: dict) -> None:
        self._journal.put_state(THROTTLE_PREFIX + key, value)
        self._saved[key] = value

    def drop(self, key: str) -> None:
        self._journal.del_state(THROTTLE_PREFIX + key)
        self._saved.pop(key, None)


class ApiPool:
    """One client per Ollama URL (its back-off is per server), shared by the poller
    thread and the executors."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._apis: dict[str, OllamaAPI] = {}

    def get(self, url: str, timeout_s: float) -> OllamaAPI:
        with self._lock:
            api = self._apis.get(url)
            if api is None or api.timeout_s != timeout_s:
                api = self._apis[url] = OllamaAPI(url, timeout_s)
            return api


class OllamaExecutors:
    def __init__(self, ctx: Context, host: HostOllama, apis: ApiPool, throttles: Throttles,
                 scan_host: Callable[[], list[HostProcess]],
                 cpu_record: Callable[[str], CpuRecord | None]):
        self.ctx = ctx
        self.host = host
        self.apis = apis
        self.throttles = throttles
        self.scan_host = scan_host  # a fresh scan, also seen by the next pass
        self.cpu_record = cpu_record  # the activity tracker's last CPU reading of a target
        self.recreator = Recreator(ctx.engine, ctx.journal.put_state, ctx.journal.del_state,
                                   clock=ctx.clock)

    def handlers(self) -> dict[str, Callable[[Action], Outcome]]:
        return {"ollama_cpu": self.cpu, "ollama_recreate": self.recreate,
                "ollama_unload": self.unload}

    def _api(self, url: str) -> OllamaAPI:
        return self.apis.get(url, self.ctx.get_config().settings.ollama.api_timeout_s)

    def _note_throttle(self, action: Action, current: float | None, cores: float | None,
                       name: str) -> None:
        """Save what a throttle replaces, before the write: a crash right after still
        knows what to restore."""
        p = action.params
        if p["purpose"] == "throttle" and action.target not in self.throttles:
            self.throttles.save(action.target, {
                "before_cores": p.get("before_cores", current), "cores": cores,
                "name": name, "since_s": self.ctx.clock()})

    # ------------------------------------------------------------ CPU

    def cpu(self, action: Action) -> Outcome:
        p = action.params
        if p.get("target_kind") == "host":
            return self.cpu_host(action)
        info = self.ctx.inventory.refresh_one(action.target)  # re-check just before acting
        if info is None:
            self.throttles.drop(action.target)
            return Outcome(ok=False, skipped=True, detail="container no longer exists")
        if info.state != "running":
            return Outcome(ok=False, skipped=True, detail=f"container is {info.state}")
        current = rules.held_cpu_cores(info)
        before = {"cpu_limit_cores": current, "cpuset": info.cpuset_cpus}
        kw: dict[str, Any] = {}
        if "cores" in p:
            cores = p["cores"]
            self._note_throttle(action, current, cores, info.name)
            if cores is None and info.nano_cpus:
                return Outcome(ok=False, before=before, detail=(
                    f"a --cpus limit cannot be lifted live: left at {fmt_cores(current)}"))
            kw.update(cpu_params(info, cores))  # the one CPU writer's rounding and period
        cpuset = p.get("cpuset")
        if cpuset and canonical_cpuset(info.cpuset_cpus, self.ctx.get_config().host.cores) != cpuset:
            kw["cpuset_cpus"] = cpuset
        if kw:
            # CPU and cpuset in one update: Docker applies both or refuses both.
            self.ctx.engine.update(info.id, **kw)
            info = self.ctx.inventory.refresh_one(info.id) or info
        if p["purpose"] == "restore":
            self.throttles.drop(action.target)
        after = {"cpu_limit_cores": rules.held_cpu_cores(info), "cpuset": info.cpuset_cpus}
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

    def cpu_host(self, action: Action) -> Outcome:
        p = action.params
        pid = int(action.target.split(":", 1)[1])
        hp = next((h for h in self.scan_host() if h.pid == pid), None)  # re-check
        if hp is None:
            self.throttles.drop(action.target)
            return Outcome(ok=False, skipped=True, detail="the Ollama process is gone")
        if not hp.can_limit or hp.cgroup_rel != p.get("cgroup"):
            return Outcome(ok=False, skipped=True, detail=f"not limited: {hp.limit_note}")
        before = {"cpu_limit_cores": hp.cpu_limit_cores, "cgroup": hp.cgroup_rel}
        cores = p.get("cores", hp.cpu_limit_cores)
        self._note_throttle(action, hp.cpu_limit_cores, cores, hp.name)
        try:
            if not close(hp.cpu_limit_cores, cores):
                # The rule book's rounding and CFS period, as for every container.
                self.host.write_cpu_quota(
                    hp.cgroup_rel, None if cores is None else rules.cpu_quota_us(cores),
                    rules.CPU_PERIOD_US)
            after = {"cpu_limit_cores": self.host.read_cpu_limit(hp.cgroup_rel),
                     "cgroup": hp.cgroup_rel}
        except CgroupError as e:
            return Outcome(ok=False, before=before, detail=f"cgroup write failed: {e}")
        if p["purpose"] == "restore":
            self.throttles.drop(action.target)
        self.scan_host()  # the next pass sees the new limit
        return Outcome(ok=True, before=before, after=after,
                       detail=f"{p['purpose']}: CPU {fmt_cores(before['cpu_limit_cores'])} -> "
                              f"{fmt_cores(after['cpu_limit_cores'])} on cgroup {hp.cgroup_rel}")

    # ------------------------------------------------------------ recreate

    def _cpu_rate_now(self, info) -> float | None:
        """Cores used from the last pass's reading (the activity tracker's) to now: one
        fresh read of the cgroup's cumulative usage, no sleep. Any CPU since the last pass
        shows (a pull, a load, a request that started after the plan). None when it
        cannot be told."""
        try:
            loc = self.ctx.cgroups.locate(info.id, info.pid, info.cgroup_parent)
            usage_s = self.ctx.cgroups.read_usage(loc).cpu_usage_s
        except CgroupError:
            return None
        return cpu_rate_since(self.cpu_record(info.id), info.pid, self.ctx.clock(), usage_s)

    def recreate(self, action: Action) -> Outcome:
        p = action.params
        cfg = self.ctx.get_config()
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
                models = self._api(p["api_url"]).ps()
                if models:
                    return Outcome(ok=False, skipped=True, detail=(
                        "not idle any more: " + ", ".join(m.name for m in models) + " loaded"))
            except OllamaError as e:
                if p.get("idle_by") == "api":
                    return Outcome(ok=False, skipped=True,
                                   detail=f"API stopped answering ({e}): idle not confirmed")
        rate = self._cpu_rate_now(info)
        if rate is None or rate > cfg.settings.hibernation.cpu_idle_cores:
            return Outcome(ok=False, skipped=True, detail=(
                f"not idle any more: Ollama used {rate:.2f} cores since the last pass"
                if rate is not None else "CPU activity unreadable: idle not confirmed"))
        before = {"id": attrs["Id"][:12], "env": {k: env.get(k) for k in changes}}
        try:
            done = self.recreator.recreate(attrs, changes)
        except RecreateError as e:
            self.ctx.inventory.refresh_one(attrs["Id"])
            return Outcome(ok=False, before=before, after={"rolled_back": e.rolled_back},
                           detail=str(e))
        self.ctx.inventory.refresh_one(done.old_id)
        self.ctx.inventory.refresh_one(done.new_id)
        saved = self.throttles.get(done.old_id)
        if saved is not None:  # the new one inherits the throttled quota
            self.throttles.save(done.new_id, saved)
            self.throttles.drop(done.old_id)
        detail = (f"recreated as {done.new_id[:12]} with "
                  + " ".join(f"{k}={v}" for k, v in changes.items())
                  + "; also fix the compose file or run command, or the drift comes back with "
                  "the next deploy")
        if done.notes:
            detail += "; " + "; ".join(done.notes)
        return Outcome(ok=True, before=before, detail=detail,
                       after={"id": done.new_id[:12], "env": dict(changes)})

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
                done = False  # nothing to say yet: retried by the next pass
                continue
            except Exception as e:  # noqa: BLE001 - keep the state for a later try
                log.error("cannot recover the recreate of %s: %s", name, e)
                result = ActionResult(action, ok=False, dry_run=False, time_s=self.ctx.clock(),
                                      detail=f"recovery failed, state kept: {e}")
                done = False
            self.ctx.journal.record(result)
        return done

    # ------------------------------------------------------------ unload

    def unload(self, action: Action) -> Outcome:
        p = action.params
        api = self._api(p["api_url"])
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
