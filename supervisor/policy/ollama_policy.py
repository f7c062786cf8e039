"""The Ollama governor's decisions (Rule 12.1), pure: functions of the tick, the
configuration and what the governor remembers, touching nothing: how an Ollama is found,
the checks, the CPU values, when a model is in use and Ollama idle. ``ollama_plan`` puts
them together into one pass; ``runtime.ollama`` holds the component and its docstring
explains the rules (what counts as in use, as idle, the pressure gates)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from supervisor.model import rules
from supervisor.model.classify import COMPOSE_SERVICE_LABEL, label_is_false, label_is_true
from supervisor.policy.tick import Tick
from supervisor.model.config import Config, glob_match
from supervisor.model.memo import ByContainer
from supervisor.model.ollama import DEFAULT_PORT, HostProcess, LoadedModel, check_url
from supervisor.model.snapshot import LIVE_STATES, ContainerSample
from supervisor.model.units import format_cpuset, parse_cpuset

NUM_PARALLEL = "OLLAMA_NUM_PARALLEL"
MAX_LOADED = "OLLAMA_MAX_LOADED_MODELS"
MAX_QUEUE = "OLLAMA_MAX_QUEUE"
CPU_LIMIT_VAR = "OLLAMA_CPU_LIMIT"  # not read by Ollama at all
# What Ollama does when a variable is unset (its envconfig).
OLLAMA_DEFAULTS = {NUM_PARALLEL: "1", MAX_LOADED: "0 = automatic, 3 on CPU", MAX_QUEUE: "512"}
_EPS = 0.005


# ---------------------------------------------------------------- finding (pure)


def match_container(labels: dict[str, str], image: str, name: str, s) -> str:
    """How a container is recognised as Ollama: "label", "image", "name", or ""."""
    if label_is_false(labels, s.label):
        return ""
    if label_is_true(labels, s.label):
        return "label"
    if s.images and glob_match(s.images, image):
        return "image"
    # A compose container is named "<project>_ollama_1" (v1) or "<project>-ollama-1" (v2):
    # the names glob also matches its service, as classification does (model/classify).
    if s.names and (glob_match(s.names, name)
                    or glob_match(s.names, labels.get(COMPOSE_SERVICE_LABEL, ""))):
        return "name"
    return ""


def env_map(env: Iterable[str]) -> dict[str, str]:
    return {k: v for k, sep, v in (item.partition("=") for item in env) if sep}


def listen_port(env: dict[str, str]) -> int:
    """The port Ollama listens on, from OLLAMA_HOST ("0.0.0.0:11434", "http://h:p")."""
    host = env.get("OLLAMA_HOST", "").strip().split("://", 1)[-1].split("/", 1)[0]
    _, sep, port = host.rpartition(":")
    return int(port) if sep and port.isdigit() else DEFAULT_PORT


def container_api_url(env: dict[str, str], ports, s) -> tuple[str | None, str]:
    """Where to reach a container's API: ``ollama.api_url``, else its published port on
    loopback. (url or None, how it was chosen / why there is none)."""
    if s.api_url:
        return check_url(s.api_url), "ollama.api_url"
    port = listen_port(env)
    elsewhere = []
    for cport, hip, hport in ports:
        if cport != f"{port}/tcp" or not hport:
            continue
        if hip in ("", "0.0.0.0", "::", "127.0.0.1"):
            return f"http://127.0.0.1:{hport}", f"published port {hport} on loopback"
        if hip == "::1":
            return f"http://[::1]:{hport}", f"published port {hport} on loopback"
        elsewhere.append(f"{hip}:{hport}")
    if elsewhere:
        return None, (f"port {port} is published only on {', '.join(elsewhere)}, not on "
                      "loopback: set ollama.api_url")
    return None, f"port {port}/tcp is not published: set ollama.api_url to reach the API"


def host_api_url(env: dict[str, str], s) -> tuple[str | None, str]:
    if s.api_url:
        return check_url(s.api_url), "ollama.api_url"
    return f"http://127.0.0.1:{listen_port(env)}", "OLLAMA_HOST of the process (default 11434)"


# ---------------------------------------------------------------- checks (pure)


@dataclass(frozen=True)
class Check:
    name: str  # num_parallel | max_loaded_models | max_queue | cpu_limit | cpuset
    ok: bool
    actual: str
    expected: str

    def describe(self) -> str:
        return f"{self.name}: {self.actual}, wants {self.expected}"

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.name, "ok": self.ok, "actual": self.actual, "expected": self.expected}


def env_check(name: str, var: str, env: dict[str, str], want: int) -> Check:
    raw = env.get(var)
    if raw is None:
        return Check(name, False, f"{var} unset (Ollama's default: {OLLAMA_DEFAULTS[var]})",
                     f"{var}={want}")
    try:
        ok = int(raw.strip()) == want
    except ValueError:
        ok = False
    return Check(name, ok, f"{var}={raw}", f"{var}={want}")


# Each environment check: its name, which is also its ``ollama.*`` setting, and its
# variable. One left unset in the config (max_queue) is not checked.
_ENV_OF_CHECK = {"num_parallel": NUM_PARALLEL, "max_loaded_models": MAX_LOADED,
                 "max_queue": MAX_QUEUE}


def env_checks(env: dict[str, str], s) -> list[Check]:
    return [env_check(name, var, env, getattr(s, name)) for name, var in _ENV_OF_CHECK.items()
            if getattr(s, name) is not None]


def wanted_env(s) -> dict[str, str]:
    return {var: str(getattr(s, name)) for name, var in _ENV_OF_CHECK.items()
            if getattr(s, name) is not None}


def env_drift(checks: Iterable[Check], s) -> dict[str, str]:
    """{variable: compliant value} for every failing environment check."""
    want = wanted_env(s)
    return {_ENV_OF_CHECK[c.name]: want[_ENV_OF_CHECK[c.name]]
            for c in checks if not c.ok and c.name in _ENV_OF_CHECK}


def fmt_cores(cores: float | None) -> str:
    return "no CPU limit" if cores is None else f"{cores:g} cores"


def cpu_check(limit_cores: float | None, s) -> Check:
    ok = limit_cores is not None and limit_cores <= s.cpu_cores + _EPS
    return Check("cpu_limit", ok, fmt_cores(limit_cores), f"at most {s.cpu_cores:g} cores (CPU quota)")


def canonical_cpuset(text: str, host_cores: int) -> str:
    """"" (Docker: no cpuset) means every core."""
    if not text.strip():
        return format_cpuset(tuple(range(host_cores)))
    try:
        return format_cpuset(parse_cpuset(text))
    except ValueError:
        return text


def cpuset_check(actual: str, class_cpuset: str | None, class_name: str, host_cores: int) -> Check:
    have = canonical_cpuset(actual, host_cores)
    if class_cpuset is None:
        return Check("cpuset", True, have, f"any core (class {class_name})")
    return Check("cpuset", have == class_cpuset, have, f"{class_cpuset} (class {class_name})")


def notices(env: dict[str, str]) -> list[str]:
    if CPU_LIMIT_VAR not in env:
        return []
    return [f"{CPU_LIMIT_VAR}={env[CPU_LIMIT_VAR]} has no effect: Ollama has no such "
            "variable; only the container's CPU quota (its cgroup) caps Ollama's CPU"]


# ---------------------------------------------------------------- CPU values (pure)


def close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return abs(a - b) < _EPS


def throttle_cores(current: float | None, s) -> float:
    """The throttled quota: throttled_cpu_cores, or the current limit if lower."""
    return min(s.throttled_cpu_cores, current) if current is not None else s.throttled_cpu_cores


def restore_cores(before: float | None, policy: str, s) -> float | None:
    """The quota once pressure clears: what it was before the throttle; under "enforce"
    never above cpu_cores (and cpu_cores where there was none)."""
    if policy == "enforce":
        return min(before, s.cpu_cores) if before is not None else s.cpu_cores
    return before


@dataclass(frozen=True)
class CpuPlan:
    purpose: str  # "throttle" | "restore" | "enforce"
    set_cores: bool
    cores: float | None  # None: no limit
    cpuset: str | None  # None: leave as is
    reason: str


def plan_cpu(current: float | None, cpu_ok: bool, cpuset_ok: bool, class_cpuset: str | None,
             throttled: bool, saved: dict | None, policy: str, s) -> CpuPlan | None:
    """What to do with one target's CPU limit this pass (None: nothing)."""
    if throttled:
        if saved is None:
            want = throttle_cores(current, s)
            if current is not None and current <= want + _EPS:
                return None  # already at or below the throttled quota
            return CpuPlan("throttle", True, want, None,
                           f"host CPU pressure held: quota {fmt_cores(current)} -> {want:g} cores")
        if not close(current, saved.get("cores")):
            return CpuPlan("throttle", True, saved.get("cores"), None,
                           f"throttle re-applied: quota is {fmt_cores(current)}, "
                           f"throttled to {fmt_cores(saved.get('cores'))}")
        return None
    fix_cpuset = class_cpuset if policy == "enforce" and not cpuset_ok else None
    if saved is not None:
        want = restore_cores(saved.get("before_cores"), policy, s)
        return CpuPlan("restore", True, want, fix_cpuset,
                       f"CPU pressure cleared: quota {fmt_cores(current)} -> {fmt_cores(want)}")
    if policy == "enforce" and (not cpu_ok or fix_cpuset):
        parts = []
        if not cpu_ok:
            parts.append(f"CPU limit {fmt_cores(current)} -> {s.cpu_cores:g} cores")
        if fix_cpuset:
            parts.append(f"cpuset -> {fix_cpuset}")
        return CpuPlan("enforce", not cpu_ok, s.cpu_cores if not cpu_ok else current, fix_cpuset,
                       "Rule 12.1: " + ", ".join(parts))
    return None


def override_cores(current: float | None, hold: float | None, policy: str, s) -> float | None:
    """The CPU cap the governor asks placement to keep on this container (None: no say):
    ``hold`` (the throttled quota, or the one being restored) while either is under way;
    under enforce, at most ``cpu_cores`` and never more than the container has. Other
    components' caps combine with it by ``rules.effective_cpu_cores`` (smallest wins)."""
    if hold is not None:
        return hold
    if policy == "enforce":
        return current if current is not None and current <= s.cpu_cores + _EPS else s.cpu_cores
    return None


# ---------------------------------------------------------------- activity (pure)


@dataclass(frozen=True)
class ModelSeen:
    first_seen_s: float
    expires_at: str
    changed_s: float | None  # last time expires_at moved (None: not since first seen)


class ModelTracker:
    """expires_at of every loaded model, per target, poll after poll."""

    def __init__(self) -> None:
        self.seen: dict[str, dict[str, ModelSeen]] = {}

    def update(self, key: str, models: Iterable[LoadedModel], now: float) -> None:
        prev = self.seen.get(key, {})
        cur = {}
        for m in models:
            p = prev.get(m.name)
            if p is None:
                cur[m.name] = ModelSeen(now, m.expires_at, None)
            elif p.expires_at != m.expires_at:
                cur[m.name] = ModelSeen(p.first_seen_s, m.expires_at, now)
            else:
                cur[m.name] = p
        self.seen[key] = cur

    def get(self, key: str) -> dict[str, ModelSeen]:
        return dict(self.seen.get(key, {}))

    def forget_except(self, keys: set[str]) -> None:
        for k in set(self.seen) - keys:
            del self.seen[k]


def model_activity(m: ModelSeen | None, now: float, idle_for_s: float) -> tuple[str, str]:
    """("active" | "settling" | "idle", why)."""
    if m is None:
        return "settling", "not seen by the poller yet"
    if m.changed_s is not None and now - m.changed_s < idle_for_s:
        return "active", f"expires_at moved {now - m.changed_s:.0f}s ago: requests are running or ending"
    watched = now - m.first_seen_s
    if watched < idle_for_s:
        return "settling", f"watched for {watched:.0f}s of {idle_for_s:g}s"
    since = now - (m.changed_s if m.changed_s is not None else m.first_seen_s)
    return "idle", f"expires_at still for {since:.0f}s"


def unload_verdicts(models: Iterable[LoadedModel], seen: dict[str, ModelSeen], now: float,
                    idle_for_s: float, cpu_busy: bool | None) -> dict[str, tuple[bool, str]]:
    """{model name: (in use, why)} for every loaded model."""
    acts = {m.name: model_activity(seen.get(m.name), now, idle_for_s) for m in models}
    if cpu_busy and not any(a == "active" for a, _ in acts.values()):
        why = "Ollama is using CPU and no model shows which: a long request may be running"
        return {n: (True, why) for n in acts}
    return {n: (a != "idle", w) for n, (a, w) in acts.items()}


def cpu_activity(tick: Tick, key: str) -> tuple[bool | None, float | None]:
    """(busy, quiet seconds) of one target's CPU, from the tick's activity view (the one
    tracker's) by ``hibernation.cpu_idle_cores``: busy when the cores used since the last
    pass are above it; quiet for as long as they have stayed at or below it. Both None
    before two readings. The ladder's hibernate rung asks the same view, same threshold."""
    idle_cores = tick.cfg.settings.hibernation.cpu_idle_cores
    cores = tick.activity.cpu_cores(key)
    return (None if cores is None else cores > idle_cores,
            tick.activity.idle_for_s(key, idle_cores))


def ollama_idle(api_ok: bool, models: list[LoadedModel] | None, cpu_busy: bool | None,
                cpu_quiet_s: float | None, idle_for_s: float) -> tuple[bool, str]:
    """Is it safe to restart Ollama now (no request can be running)?"""
    if api_ok and models is not None:
        if models:
            return False, (f"{len(models)} model(s) loaded ("
                           + ", ".join(m.name for m in models[:3]) + ")")
        if cpu_busy is None:
            return False, "no model loaded; CPU activity not measured yet"
        if cpu_busy:
            return False, "no model loaded but Ollama uses CPU (a pull or a load in progress?)"
        return True, "the API lists no loaded model and Ollama's CPU is quiet"
    if cpu_quiet_s is None:
        return False, "API not reachable and CPU activity not measured yet"
    if cpu_quiet_s >= idle_for_s:
        return True, f"API not reachable; no CPU activity for {cpu_quiet_s:.0f}s"
    return False, f"API not reachable; CPU quiet for {cpu_quiet_s:.0f}s of {idle_for_s:g}s"


# ---------------------------------------------------------------- targets


@dataclass(frozen=True)
class Target:
    key: str  # container id, or "host:<pid>"
    kind: str  # "container" | "host"
    name: str
    found_by: str  # label | image | name | process
    state: str
    env: dict[str, str]
    cpu_limit_cores: float | None
    cpuset: str  # Docker's view; "" = every core
    class_name: str
    class_cpuset: str | None  # None: the class takes any core
    api_url: str | None
    api_note: str
    can_limit: bool = True
    limit_note: str = ""
    cgroup_rel: str = ""


def container_targets(tick: Tick, s, memo: ByContainer[Target | None] | None = None
                      ) -> list[Target]:
    """The snapshot's Ollama containers. With ``memo`` (the caller's, kept between passes)
    a container is matched again only when its inspect data or the config changed (its
    class follows from the two)."""
    out = []
    for c in tick.snapshot.containers:
        if not c.managed or c.info.state not in LIVE_STATES:
            continue
        target = memo.get(c.info, tick.cfg, lambda: container_target(c, tick.cfg, s)) \
            if memo is not None else container_target(c, tick.cfg, s)
        if target is not None:
            out.append(target)
    if memo is not None:
        memo.keep_only(c.info.id for c in tick.snapshot.containers)
    return out


def container_target(c: ContainerSample, cfg: Config, s) -> Target | None:
    """``c`` as an Ollama to govern, or None when it is not one."""
    info = c.info
    how = match_container(info.labels, info.image, info.name, s)
    if not how:
        return None
    env = env_map(info.env)
    url, note = container_api_url(env, info.ports, s)
    klass = cfg.classes.get(c.class_name)
    return Target(
        key=info.id, kind="container", name=info.name, found_by=how, state=info.state,
        env=env, cpu_limit_cores=rules.held_cpu_cores(info), cpuset=info.cpuset_cpus,
        class_name=c.class_name, class_cpuset=klass.cpuset if klass else None,
        api_url=url, api_note=note)


def host_target(hp: HostProcess, s) -> Target:
    url, note = host_api_url(hp.env, s)
    return Target(
        key=f"host:{hp.pid}", kind="host", name=f"{hp.name} (host pid {hp.pid})",
        found_by="process", state="running", env=hp.env, cpu_limit_cores=hp.cpu_limit_cores,
        cpuset="", class_name="", class_cpuset=None, api_url=url, api_note=note,
        can_limit=hp.can_limit, limit_note=hp.limit_note,
        cgroup_rel=hp.cgroup_rel)
