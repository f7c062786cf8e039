"""Compliance audit of running containers and of compose files. Pure: functions of an
inspected container or a parsed compose document and the config.

What a container or a compose service must meet, each finding with its rule number
(seeds/architecture-rules.md) and a severity (critical > high > medium > low):

- 1.1 a memory limit (critical), a reservation of 50-75 % of it (medium; low if absent).
  A running container's limit that resource-supervisor gave (the placement component
  publishes which) is a mitigation, not compliance: judged on what the owner declared;
- 1.3 (running containers, when pool cgroups are on) it lives under its pool's cgroup;
- 2.2 a health check (high), with Rule 2.2's interval 30s, timeout 10s, retries 3 and
  start period 60s (compose; an omitted value is Docker's default): a value that delays
  detecting a failure is medium, another difference low;
- 2.3 a restart policy that cannot loop: ``on-failure`` with a maximum (``on-failure:N``,
  or a deploy restart_policy with ``max_attempts``, which compose applies over
  ``restart``); ``always`` is high, ``unless-stopped`` or ``on-failure`` without a
  maximum medium: both restart a service that dies at every start (an OOM loop) without
  end;
- 5.2 no host port among 80, 443, 8080, 8000, 3000, 5000 (critical), except on a
  gateway (label ``supervisor.gateway=true``; Rule 5.2's "gateway services only");
- 5.1 host ports inside its class's range (medium). The class comes from the label,
  the name and image rules as the daemon classifies; when none of them names one, the
  class whose range holds the ports is taken (so a service on 10150 is a critical one);
- 9.3 a non-root user (medium);
- 12.1 Ollama: OLLAMA_NUM_PARALLEL and OLLAMA_MAX_LOADED_MODELS as configured and a CPU
  limit of at most ``ollama.cpu_cores`` from the cgroup (high); ``OLLAMA_CPU_LIMIT``
  has no effect, since Ollama reads no such variable (medium, on any service).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from supervisor.model import rules
from supervisor.model.classify import classify, label_is_true
from supervisor.model.config import Config
from supervisor.model.errors import SupervisorError
from supervisor.policy.ollama_policy import match_container
from supervisor.model.snapshot import ContainerInfo
from supervisor.model.units import format_bytes

FORBIDDEN_HOST_PORTS = (80, 443, 8080, 8000, 3000, 5000)
GATEWAY_LABEL = "supervisor.gateway"
SEVERITIES = ("critical", "high", "medium", "low")
_MAX_RANGE_PORTS = 1024  # a published range wider than this is checked at its ends only
# Rule 2.2's health check, and Docker's values when the compose file omits one.
RULE_HEALTHCHECK = {"interval": 30.0, "timeout": 10.0, "retries": 3, "start_period": 60.0}
DOCKER_HEALTHCHECK_DEFAULTS = {"interval": 30.0, "timeout": 30.0, "retries": 3, "start_period": 0.0}
BOUNDED_RESTART_ADVICE = ("use on-failure with a maximum (restart: on-failure:3, or "
                          "deploy.restart_policy: {condition: on-failure, max_attempts: 3})")


class AuditError(SupervisorError):
    """A compose file that cannot be read as one."""


@dataclass(frozen=True)
class Finding:
    target: str  # container or service name
    rule: str  # "1.1"
    severity: str  # one of SEVERITIES
    message: str
    source: str = ""  # "container" or the compose file's path

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class ServiceSpec:
    """What the checks need of a container or a compose service. None = not set there."""

    name: str
    image: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    memory_limit_bytes: int | None = None
    memory_reservation_bytes: int | None = None
    healthcheck: str = "none"  # "yes" | "none" | "disabled"
    host_ports: list[tuple[int | None, str]] = field(default_factory=list)  # (port, as written)
    unreadable_ports: list[str] = field(default_factory=list)
    restart: str = ""
    restart_bounded: bool | None = None  # deploy.restart_policy: max_attempts given?
    restart_condition: str = ""
    # A running container's ``on-failure`` carries no count in what the daemon inspects.
    restart_count_known: bool = True
    # compose healthcheck values as written (None: omitted) and those that cannot be read
    healthcheck_values: dict[str, float | None] = field(default_factory=dict)
    # The memory limit resource-supervisor gave (a running container), and what the
    # owner had declared before it (0: nothing).
    limit_given_bytes: int | None = None
    declared_limit_bytes: int = 0
    user: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    cpu_limit_cores: float | None = None
    cgroup_parent: str | None = None  # None: not checked
    problems: list[tuple[str, str, str]] = field(default_factory=list)  # (rule, severity, message)


# ---------------------------------------------------------------- the checks


def _is_root(user: str) -> bool:
    u = user.split(":", 1)[0].strip()
    return u in ("", "root", "0")


def _class_for(spec: ServiceSpec, cfg: Config) -> tuple[str, str]:
    info = ContainerInfo(id="", name=spec.name, image=spec.image, labels=spec.labels,
                         state="created", pid=0)
    name, reason = classify(info, cfg)
    if reason in ("label", "name", "service", "image", "repository"):
        return name, reason
    ports = [p for p, _ in spec.host_ports if p is not None]
    if ports:
        for c in cfg.classes.values():
            if c.ports and all(c.ports[0] <= p <= c.ports[1] for p in ports):
                return c.name, "ports"
    return name, reason


def check(spec: ServiceSpec, cfg: Config, source: str) -> list[Finding]:
    out: list[Finding] = []

    def add(rule: str, severity: str, message: str) -> None:
        out.append(Finding(spec.name, rule, severity, message, source))

    for rule, sev, msg in spec.problems:
        add(rule, sev, msg)
    cls_name, _ = _class_for(spec, cfg)
    klass = cfg.classes.get(cls_name)

    # Rule 1.1
    limit, res = spec.memory_limit_bytes, spec.memory_reservation_bytes
    if any(rule == "1.1" for rule, _, _ in spec.problems):
        pass  # a size that cannot be read is reported as such, not as a missing one
    elif spec.limit_given_bytes and not spec.declared_limit_bytes:
        add("1.1", "high", f"no memory limit declared: the limit of "
                           f"{format_bytes(spec.limit_given_bytes)} was given by "
                           "resource-supervisor, not declared (a mitigation, not compliance: "
                           "declare deploy.resources.limits.memory or mem_limit)")
    elif spec.limit_given_bytes:
        add("1.1", "low", f"memory limit {format_bytes(spec.limit_given_bytes)} given by "
                          "resource-supervisor in place of the declared "
                          f"{format_bytes(spec.declared_limit_bytes)}")
    elif not limit:
        add("1.1", "critical", "no memory limit")
    elif not res:
        add("1.1", "low", "no memory reservation: Rule 1.1 wants 50-75% of the limit")
    elif not 0.5 <= res / limit <= 0.75:
        add("1.1", "medium", f"memory reservation is {res / limit:.0%} of the limit, "
                             "not 50-75%")

    # Rule 1.3: under its pool's cgroup (running containers; compose files name no driver)
    if spec.cgroup_parent is not None and klass and cfg.settings.pool_cgroups.enabled:
        # The same name the daemon documents and creates (poolcg), so both agree.
        from supervisor.policy.pool_groups import cgroup_parent_for
        expected = cgroup_parent_for(cfg, klass.pool)
        want = {expected, expected.lstrip("/")}
        if spec.cgroup_parent not in want:
            add("1.3", "low", f"not under the cgroup of pool {klass.pool!r} (cgroup parent "
                              f"{spec.cgroup_parent or 'default'!r}; expected {expected})")

    # Rule 2.2
    if spec.healthcheck == "none":
        add("2.2", "high", "no health check")
    elif spec.healthcheck == "disabled":
        add("2.2", "high", "health check disabled")
    else:
        for sev, msg in healthcheck_findings(spec.healthcheck_values):
            add("2.2", sev, msg)

    # Rule 2.3 (deploy.restart_policy, when given, is what compose applies)
    r = spec.restart.strip().lower()
    if spec.restart_bounded is False and spec.restart_condition != "none":
        add("2.3", "medium", f"deploy.restart_policy (condition {spec.restart_condition}) has "
                             "no max_attempts: a failing service is restarted without end; "
                             + BOUNDED_RESTART_ADVICE)
    elif spec.restart_bounded:
        pass
    elif r == "always":
        add("2.3", "high", "restart policy 'always' restarts it without end, also after a "
                           "clean exit: " + BOUNDED_RESTART_ADVICE)
    elif r == "unless-stopped" or (r == "on-failure" and spec.restart_count_known):
        add("2.3", "medium", f"restart policy {r!r} has no maximum: a service that dies at "
                             "every start (an OOM kill) is restarted without end; "
                             + BOUNDED_RESTART_ADVICE)
    elif r and r not in ("no", "on-failure") and not re.fullmatch(r"on-failure:\d+", r):
        add("2.3", "high", f"unknown restart policy {spec.restart!r}")

    # Rules 5.2 and 5.1
    gateway = label_is_true(spec.labels, GATEWAY_LABEL)
    for port, written in spec.host_ports:
        if port is None:
            add("5.1", "low", f"port {written!r} is published on a host port the engine "
                              "picks, outside every class's range")
        elif port in FORBIDDEN_HOST_PORTS:
            if not gateway:
                rng = f"; use one in {klass.ports[0]}-{klass.ports[1]}" if klass and klass.ports else ""
                add("5.2", "critical", f"host port {port} is forbidden (80, 443, 8080, 8000, "
                                       f"3000, 5000 are for the gateway only){rng}")
        elif klass and klass.ports and not klass.ports[0] <= port <= klass.ports[1]:
            add("5.1", "medium", f"host port {port} is outside the range of class "
                                 f"{cls_name!r} ({klass.ports[0]}-{klass.ports[1]})")
    for written in spec.unreadable_ports:
        add("5.1", "low", f"port {written!r} cannot be read (variable or bad syntax)")

    # Rule 9.3
    if spec.user is None:
        add("9.3", "medium", "no user set: it runs as root unless the image sets USER")
    elif _is_root(spec.user):
        add("9.3", "medium", f"runs as root (user {spec.user!r})" if spec.user else
            "runs as root (no user set, and the image sets no USER)")

    # Rule 12.1
    if "OLLAMA_CPU_LIMIT" in spec.env:
        add("12.1", "medium", "OLLAMA_CPU_LIMIT has no effect: Ollama reads no such "
                              "variable; cap its CPU with a CPU limit (cpus / "
                              "deploy.resources.limits.cpus)")
    o = cfg.settings.ollama
    # The governor's own rule (label opt-in or opt-out first, then image, then name).
    if match_container(spec.labels, spec.image, spec.name, o):
        for var, want_n in (("OLLAMA_NUM_PARALLEL", o.num_parallel),
                            ("OLLAMA_MAX_LOADED_MODELS", o.max_loaded_models)):
            have = spec.env.get(var)
            if have is None:
                add("12.1", "high", f"{var} is not set (Rule 12.1: {want_n})")
            elif have.strip() != str(want_n):
                add("12.1", "high", f"{var} is {have}, not {want_n}")
        if spec.cpu_limit_cores is None:
            add("12.1", "high", f"no CPU limit (Rule 12.1: at most {o.cpu_cores:g} cores)")
        elif spec.cpu_limit_cores > o.cpu_cores + 1e-9:
            add("12.1", "high", f"CPU limit {spec.cpu_limit_cores:g} cores is above "
                                f"{o.cpu_cores:g}")
    return out


def _fmt_healthcheck(key: str, v: float) -> str:
    return str(int(v)) if key == "retries" else f"{v:g}s"


def healthcheck_findings(values: dict[str, float | None]) -> list[tuple[str, str]]:
    """Rule 2.2's values against a compose health check's (None: omitted, Docker's
    default applies; a key absent: not known, not checked)."""
    out = []
    for key, want in RULE_HEALTHCHECK.items():
        if key not in values:
            continue
        have = values[key]
        if have is None:
            have = DOCKER_HEALTHCHECK_DEFAULTS[key]
            said = f"not set (Docker's default {_fmt_healthcheck(key, have)})"
        else:
            said = _fmt_healthcheck(key, have)
        if abs(have - want) < 1e-9:
            continue
        # A longer interval or timeout, or more retries, delays seeing a failure.
        delays = have > want and key != "start_period"
        out.append(("medium" if delays else "low", f"health check {key.replace('_', ' ')} "
                    f"{said}: Rule 2.2 says {_fmt_healthcheck(key, want)}"))
    return out


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_compose_duration(v: Any) -> float:
    """Seconds from a compose duration ("30s", "1m30s", "500ms"; Go's syntax)."""
    if isinstance(v, bool):
        raise ValueError(f"not a duration: {v!r}")
    if isinstance(v, (int, float)):
        return float(v)
    text = str(v).strip()
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {v!r}")
    return sum(float(n) * _DURATION_UNIT_S[u] for n, u in parts)


def sort_findings(findings: Iterable[Finding]) -> list[Finding]:
    def key(f: Finding):
        rule = tuple(int(x) for x in f.rule.split(".") if x.isdigit())
        return (f.source, f.target, SEVERITIES.index(f.severity) if f.severity in SEVERITIES else 9, rule)
    return sorted(findings, key=key)


# ---------------------------------------------------------------- running containers


def spec_from_container(info: ContainerInfo, given: dict[str, int] | None = None) -> ServiceSpec:
    """``given``: the limit resource-supervisor wrote, if it did ({"given_bytes",
    "declared_bytes"}); it counts only while the container still has it."""
    spec = ServiceSpec(
        name=info.name, image=info.image, labels=dict(info.labels),
        memory_limit_bytes=info.memory_limit_bytes or None,
        memory_reservation_bytes=info.memory_reservation_bytes or None,
        healthcheck="yes" if info.has_healthcheck else "none",
        host_ports=[(hp, f"{hip + ':' if hip else ''}{hp}->{cp}") for cp, hip, hp in info.ports if hp],
        restart=info.restart_policy, restart_count_known=False, user=info.user,
        env=_key_values(list(info.env)), cpu_limit_cores=rules.held_cpu_cores(info),
        cgroup_parent=info.cgroup_parent)
    if info.has_healthcheck:
        # Rule 2.2's interval and timeout as inspect gives them (0: not set, Docker's
        # default); retries and start period are not on the container record: not judged.
        spec.healthcheck_values = {"interval": info.healthcheck_interval_s or None,
                                   "timeout": info.healthcheck_timeout_s or None}
    if given and given.get("given_bytes") and info.memory_limit_bytes == given["given_bytes"]:
        spec.limit_given_bytes = int(given["given_bytes"])
        spec.declared_limit_bytes = int(given.get("declared_bytes") or 0)
    return spec


def audit_container(info: ContainerInfo, cfg: Config,
                    given: dict[str, int] | None = None) -> list[Finding]:
    return check(spec_from_container(info, given), cfg, "container")


# ---------------------------------------------------------------- compose files


_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgtp]?)(i?)(b?)\s*", re.I)
_POW = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}


def parse_compose_size(v: Any) -> int:
    """Bytes from a compose size: 1073741824, "512m", "2g", "2Gi", "1.5GB". Compose reads
    every unit as a power of 1024 (docker/go-units RAMInBytes)."""
    if isinstance(v, bool):
        raise ValueError(f"not a size: {v!r}")
    if isinstance(v, (int, float)):
        return int(v)
    m = _SIZE.fullmatch(str(v))
    if not m:
        raise ValueError(f"not a size: {v!r}")
    return int(float(m.group(1)) * 1024 ** _POW[m.group(2).lower()])


def _key_values(v: Any) -> dict[str, str]:
    """Compose's two spellings of labels and environment: a mapping, or "KEY=VALUE" items."""
    if isinstance(v, dict):
        return {str(k): "" if x is None else str(x) for k, x in v.items()}
    if isinstance(v, list):
        out = {}
        for item in v:
            k, _, x = str(item).partition("=")
            out[k] = x
        return out
    return {}


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def _interpolate(text: str) -> str | None:
    """``${VAR:-default}`` -> default; a variable without a default cannot be resolved."""
    unresolved = False

    def sub(m: re.Match) -> str:
        nonlocal unresolved
        if m.group(2) is None:
            unresolved = True
            return ""
        return m.group(2)
    out = _VAR.sub(sub, text)
    if unresolved or "$" in out:
        return None
    return out


def _port_numbers(text: str) -> list[int]:
    lo_s, _, hi_s = text.partition("-")
    lo = int(lo_s)
    hi = int(hi_s) if hi_s else lo
    if not 0 < lo <= hi <= 65535:
        raise ValueError(text)
    if hi - lo >= _MAX_RANGE_PORTS:
        return [lo, hi]
    return list(range(lo, hi + 1))


def parse_port(entry: Any) -> list[int | None]:
    """Host ports a compose ``ports`` entry publishes (None: a port the engine picks).
    Short syntax ``[IP:][HOST[-HOST]:]CONTAINER[-CONTAINER][/PROTO]`` (IPv6 IPs in
    brackets) or long syntax ``{target, published, host_ip, protocol}``.
    Raises ValueError when it cannot be read."""
    if isinstance(entry, bool):
        raise ValueError(entry)
    if isinstance(entry, int):
        return [None]  # container port only
    if isinstance(entry, dict):
        pub = entry.get("published")
        if pub is None or pub == "":
            return [None]
        text = _interpolate(str(pub))
        if text is None:
            raise ValueError(pub)
        return _port_numbers(text)
    text = _interpolate(str(entry))
    if text is None:
        raise ValueError(entry)
    text = text.split("/", 1)[0].strip()
    if text.startswith("["):  # [IPv6]:HOST:CONTAINER
        _, _, rest = text.partition("]")
        parts = rest.lstrip(":").split(":")
        host = parts[0] if len(parts) == 2 else ""
    else:
        parts = text.split(":")
        if len(parts) == 1:
            return [None]
        if len(parts) == 2:
            host = parts[0]
        elif len(parts) == 3:
            host = parts[1]
        else:
            raise ValueError(entry)
    if host == "":
        return [None]
    return _port_numbers(host)


def spec_from_compose(name: str, svc: dict) -> ServiceSpec:
    spec = ServiceSpec(name=str(svc.get("container_name") or name),
                       image=str(svc.get("image") or ""), labels=_key_values(svc.get("labels")))
    deploy = svc.get("deploy") if isinstance(svc.get("deploy"), dict) else {}
    resources = deploy.get("resources") if isinstance(deploy.get("resources"), dict) else {}
    limits = resources.get("limits") if isinstance(resources.get("limits"), dict) else {}
    reservations = resources.get("reservations") if isinstance(resources.get("reservations"), dict) else {}

    def size(*candidates: Any) -> int | None:
        for v in candidates:
            if v is None:
                continue
            try:
                return parse_compose_size(v)
            except ValueError:
                spec.problems.append(("1.1", "high", f"memory size {v!r} cannot be read"))
                return None
        return None
    spec.memory_limit_bytes = size(limits.get("memory"), svc.get("mem_limit"))
    spec.memory_reservation_bytes = size(reservations.get("memory"), svc.get("mem_reservation"))

    for v in (limits.get("cpus"), svc.get("cpus")):
        if v is not None:
            try:
                spec.cpu_limit_cores = float(v)
            except (TypeError, ValueError):
                spec.problems.append(("12.1", "low", f"CPU limit {v!r} cannot be read"))
            break

    hc = svc.get("healthcheck")
    if isinstance(hc, dict):
        test = hc.get("test")
        if hc.get("disable") is True or test == ["NONE"] or test == "NONE":
            spec.healthcheck = "disabled"
        elif test:
            spec.healthcheck = "yes"
            for key in RULE_HEALTHCHECK:
                v = hc.get(key)
                try:
                    spec.healthcheck_values[key] = None if v is None else (
                        float(int(v)) if key == "retries" else parse_compose_duration(v))
                except (TypeError, ValueError):
                    spec.problems.append(("2.2", "low", f"health check {key} {v!r} cannot be read"))
        else:
            spec.healthcheck = "none"

    ports = svc.get("ports") or []
    if not isinstance(ports, list):
        ports = [ports]
    for entry in ports:
        written = str(entry.get("published", entry)) if isinstance(entry, dict) else str(entry)
        try:
            for p in parse_port(entry):
                spec.host_ports.append((p, written))
        except ValueError:
            spec.unreadable_ports.append(written)

    spec.restart = str(svc.get("restart") or "")
    rp = deploy.get("restart_policy")
    if isinstance(rp, dict):
        spec.restart_condition = str(rp.get("condition") or "any")  # compose's default
        spec.restart_bounded = rp.get("max_attempts") not in (None, 0, "0")
    user = svc.get("user")
    spec.user = None if user is None else str(user)
    spec.env = _key_values(svc.get("environment"))
    return spec


def load_compose(path: str) -> dict:
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except FileNotFoundError:
        raise AuditError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise AuditError(f"{path}: cannot read: {e}") from None
    except yaml.YAMLError as e:
        raise AuditError(f"{path}: not valid YAML: {e}") from None
    return doc


def audit_compose(doc: Any, cfg: Config, source: str = "compose") -> list[Finding]:
    if not isinstance(doc, dict) or not isinstance(doc.get("services"), dict):
        raise AuditError(f"{source}: not a compose file (no 'services:' mapping)")
    out: list[Finding] = []
    for name, svc in doc["services"].items():
        if svc is None:
            svc = {}
        if not isinstance(svc, dict):
            raise AuditError(f"{source}: service {name!r} is not a mapping")
        out += check(spec_from_compose(str(name), svc), cfg, source)
    return sort_findings(out)
