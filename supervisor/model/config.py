"""Typed configuration, validated once at load.

Two stages, both reporting every problem as (key path, reason):

1. ``load_settings(path)`` reads the TOML file plus environment overrides (prefix
   ``RESOURCE_SUPERVISOR_``, nested keys joined by ``__``, e.g.
   ``RESOURCE_SUPERVISOR_INTERVALS__TICK=2s``) into ``Settings`` (pydantic-settings).
2. ``resolve(settings, host)`` checks what depends on the host (cores, memory) and turns
   the file's values into ``Config``: byte counts, core tuples, seconds.

``load_config`` does both. A config that fails either stage raises ``ConfigError`` and
nothing of it is used: the daemon keeps its last good ``Config`` (SIGHUP swaps a whole
new object or keeps the old one).
"""

from __future__ import annotations

import fnmatch
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from supervisor.model.errors import ConfigError
from supervisor.model.ollama import check_url
from supervisor.model.units import (core_runs, format_cpuset, parse_cpuset, parse_duration,
                                    parse_size)

ENV_PREFIX = "RESOURCE_SUPERVISOR_"
DEFAULT_CONFIG_PATH = "/etc/resource-supervisor/supervisor.toml"

Size = str | int
# A duration is written "30s", "5m", 1.5...; it is parsed once, here, and every Duration
# field of a loaded config holds float seconds (no caller parses it again).
Duration = str | int | float


class _Section(BaseModel):
    # Unknown keys are errors: a typo must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid", validate_default=True)


def _check_size(v: Any) -> Any:
    parse_size(v)
    return v


def _sizes(*names: str) -> Any:
    """A validator of size fields: each must parse, and is kept as written."""
    return field_validator(*names)(classmethod(lambda cls, v: _check_size(v)))


def _durations(*names: str) -> Any:
    """A validator of duration fields: each becomes float seconds."""
    return field_validator(*names)(classmethod(lambda cls, v: parse_duration(v)))


class HostSection(_Section):
    cores: int | Literal["auto"] = "auto"
    memory: Size | Literal["auto"] = "auto"
    # "scaled": cpusets and pool budgets are written for the reference host and scaled
    # in proportion to this host. "exact": taken literally, and refused where the host
    # lacks the cores or the memory.
    layout: Literal["scaled", "exact"] = "exact"
    reference_cores: int = Field(12, ge=1)
    reference_memory: Size = "29.38GiB"

    @field_validator("memory", "reference_memory")
    @classmethod
    def _size(cls, v: Any) -> Any:
        return v if v == "auto" else _check_size(v)

    @field_validator("cores")
    @classmethod
    def _cores(cls, v: Any) -> Any:
        if v != "auto" and v < 1:
            raise ValueError("must be at least 1, or \"auto\"")
        return v


class ReserveSection(_Section):
    emergency: Size = "1.38GiB"

    _v = _sizes("emergency")


class PoolSection(_Section):
    budget: Size

    _v = _sizes("budget")


class MatchSection(_Section):
    names: list[str] = []
    images: list[str] = []


class ClassSection(_Section):
    cpuset: str = "any"
    pool: str
    priority: int = 50
    memory_limit: Size = "512MiB"
    memory_min: Size = "32MiB"
    cpu_quota: float | None = Field(None, gt=0, description="cores; None = no quota")
    reservation_ratio: float = Field(0.5, ge=0.5, le=0.75)
    protected: bool = False
    hibernate: bool = True
    idle_after: Duration = "5m"
    hibernate_mode: Literal["pause", "stop"] = "pause"
    adaptive_limits: bool = False
    ports: str | None = None
    match: MatchSection = MatchSection()

    _size = _sizes("memory_limit", "memory_min")
    _dur = _durations("idle_after")

    @field_validator("cpuset")
    @classmethod
    def _cpuset(cls, v: str) -> str:
        if v != "any":
            parse_cpuset(v)
        return v

    @field_validator("ports")
    @classmethod
    def _ports(cls, v: str | None) -> str | None:
        if v is not None:
            _parse_port_range(v)
        return v


class DockerSection(_Section):
    host: str = ""  # "" = DOCKER_HOST from the environment, else the default socket
    timeout_s: float = Field(10.0, gt=0)
    cgroup_root: str = "/sys/fs/cgroup"
    proc_root: str = "/proc"


class IntervalsSection(_Section):
    tick: Duration = "1s"
    reconcile: Duration = "10s"
    reconnect_max: Duration = "30s"

    _v = _durations("tick", "reconcile", "reconnect_max")


class ManageSection(_Section):
    class_label: str = "supervisor.class"
    managed_label: str = "supervisor.managed"
    default_class: str = "standard"
    # Only containers carrying all of these labels are managed (empty: every container).
    require_labels: dict[str, str] = {}
    # "strict": a container that does not fit its pool is stopped; "alert": only reported.
    admission: Literal["alert", "strict"] = "alert"


class PoolCgroupsSection(_Section):
    enabled: bool = True
    # Parent cgroup of the per-pool cgroups (cgroupfs driver: a directory under each
    # controller root; systemd driver: a slice name such as "supervisor.slice").
    parent: str = "resource-supervisor"


class HistorySection(_Section):
    window: Duration = "1h"
    percentile: float = Field(99.0, gt=0, le=100)
    headroom: float = Field(0.20, ge=0)
    # A container without a memory limit gets one only once it has run this long (and its
    # health check, if any, has passed), never below the peak working set seen meanwhile:
    # a limit written in a service's first seconds sees only its interpreter loading and
    # OOM-kills it when it warms up (Rule 2.2's start_period is 60 s).
    settle: Duration = "60s"

    _v = _durations("window", "settle")


class LadderSection(_Section):
    pool_warn_ratio: float = Field(0.85, gt=0)
    pool_critical_ratio: float = Field(0.95, gt=0)
    clear_ratio: float = Field(0.80, gt=0, description="hysteresis: breach clears below this")
    psi_memory_full_avg10: float = Field(60.0, ge=0, le=100)
    psi_cpu_some_avg10: float = Field(80.0, ge=0, le=100)
    psi_duration: Duration = "30s"
    grace: Duration = "10s"
    clear_after: Duration = "60s"
    min_action_interval: Duration = "15s"
    max_actions_per_minute: int = Field(10, ge=1)
    throttle_ratio: float = Field(0.9, gt=0, le=1)
    # CPU throttle: the container's CPU limit times this (the v1 stand-in for memory.high).
    throttle_cpu_ratio: float = Field(0.5, gt=0, le=1)
    oom_events_threshold: int = Field(3, ge=1)
    # Under a breach, a container idle this long may be hibernated (ladder step 4).
    hibernate_idle_after: Duration = "30s"
    # Grace a container gets to exit when the ladder stops it (then SIGKILL).
    stop_timeout: Duration = "10s"

    _v = _durations("psi_duration", "grace", "clear_after", "min_action_interval",
                    "hibernate_idle_after", "stop_timeout")


class HibernationSection(_Section):
    enabled: bool = True
    poll_interval: Duration = "100ms"
    cpu_idle_cores: float = Field(0.01, ge=0)
    net_idle_bytes_per_s: float = Field(64.0, ge=0)
    blkio_idle_bytes_per_s: float = Field(4096.0, ge=0)
    opt_out_label: str = "supervisor.hibernate"

    _v = _durations("poll_interval")


class OllamaSection(_Section):
    enabled: bool = True
    images: list[str] = ["ollama/ollama*"]
    names: list[str] = ["ollama*"]
    label: str = "supervisor.ollama"
    process_names: list[str] = ["ollama"]
    num_parallel: int = Field(2, ge=1)
    max_loaded_models: int = Field(1, ge=1)
    max_queue: int | None = None
    cpu_cores: float = Field(4.0, gt=0)
    throttled_cpu_cores: float = Field(2.0, gt=0)
    policy: Literal["report", "enforce"] = "report"
    api_url: str = ""  # "" = the container's published 11434 port on loopback
    api_timeout_s: float = Field(2.0, gt=0)
    idle_for: Duration = "2m"
    # A loaded model whose /api/ps expires_at has not moved this long counts as idle
    # (may be unloaded under memory pressure).
    model_idle_for: Duration = "30s"

    _v = _durations("idle_for", "model_idle_for")

    @field_validator("api_url")
    @classmethod
    def _api_url(cls, v: str) -> str:
        # The planner's own check (a URL without a host, "http://:11434", would otherwise
        # load and then fail every pass).
        if v:
            check_url(v)
        return v


class MetricsSection(_Section):
    listen: str = "127.0.0.1:10400"

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        host, _, port = v.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected HOST:PORT, e.g. 127.0.0.1:10400, not {v!r}")
        return v


class ControlSection(_Section):
    socket: str = "/run/resource-supervisor/control.sock"
    read_group: str = "docker"


class JournalSection(_Section):
    max_rows: int = Field(100_000, ge=100)


class Settings(BaseSettings):
    """The file as written (plus env overrides). See config/supervisor.toml for each key."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid",
        case_sensitive=False)

    dry_run: bool = False
    state_dir: str = "/var/lib/resource-supervisor"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    host: HostSection = HostSection()
    reserve: ReserveSection = ReserveSection()
    pools: dict[str, PoolSection] = {}
    classes: dict[str, ClassSection] = {}
    manage: ManageSection = ManageSection()
    docker: DockerSection = DockerSection()
    intervals: IntervalsSection = IntervalsSection()
    pool_cgroups: PoolCgroupsSection = PoolCgroupsSection()
    history: HistorySection = HistorySection()
    ladder: LadderSection = LadderSection()
    hibernation: HibernationSection = HibernationSection()
    ollama: OllamaSection = OllamaSection()
    metrics: MetricsSection = MetricsSection()
    control: ControlSection = ControlSection()
    journal: JournalSection = JournalSection()

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings,
                                   dotenv_settings, file_secret_settings):
        # Env overrides the file (passed as init kwargs); no dotenv or secrets dirs.
        return (env_settings, init_settings)


# ---------------------------------------------------------------- resolved config


@dataclass(frozen=True)
class HostFacts:
    cores: int
    memory_bytes: int


@dataclass(frozen=True)
class PoolConfig:
    name: str
    budget_bytes: int


@dataclass(frozen=True)
class ClassConfig:
    name: str
    cores: tuple[int, ...] | None  # None = any core
    pool: str
    priority: int
    memory_limit_bytes: int
    memory_min_bytes: int
    cpu_quota_cores: float | None
    reservation_ratio: float
    protected: bool
    hibernate: bool
    idle_after_s: float
    hibernate_mode: str
    adaptive_limits: bool
    ports: tuple[int, int] | None
    match_names: tuple[str, ...]
    match_images: tuple[str, ...]

    @property
    def cpuset(self) -> str | None:
        return format_cpuset(self.cores) if self.cores is not None else None


@dataclass(frozen=True)
class Config:
    settings: Settings
    host: HostFacts
    reserve_bytes: int
    pools: dict[str, PoolConfig]
    classes: dict[str, ClassConfig]
    tick_s: float
    reconcile_s: float
    reconnect_max_s: float
    source: str = ""
    warnings: tuple[str, ...] = field(default=())

    @property
    def dry_run(self) -> bool:
        return self.settings.dry_run


def _parse_port_range(text: str) -> tuple[int, int]:
    parts = text.split("-")
    try:
        lo, hi = (int(parts[0]), int(parts[-1])) if len(parts) <= 2 else (0, -1)
    except ValueError:
        lo, hi = 0, -1
    if not (1 <= lo <= hi <= 65535):
        raise ValueError(f"expected a port range like '10200-10399', not {text!r}")
    return lo, hi


def scale_cores(cores: tuple[int, ...], reference: int, actual: int) -> tuple[int, ...]:
    """Map a cpuset written for a ``reference``-core host onto ``actual`` cores, keeping
    proportions run by run: on 12 -> 2 cores, 0-3 -> 0, 4-7 -> 0, 8-11 -> 1; on
    12 -> 24 cores, 8-11 -> 16-23. Never empty."""
    if reference == actual:
        return tuple(c for c in cores if c < actual) or (0,)
    out: set[int] = set()
    for run in core_runs(sorted(cores)):
        lo = run[0] * actual // reference
        hi = max(lo, (run[-1] + 1) * actual // reference - 1)
        out.update(range(min(lo, actual - 1), min(hi, actual - 1) + 1))
    return tuple(sorted(out)) or (0,)


def detect_host() -> HostFacts:
    """The host's facts when the caller hands in none (tools, tests): the daemon and supctl
    pass those the adapter reads (``adapters.hostfacts.read_host_facts``). Physical pages
    x page size is the kernel's totalram, the same figure as MemTotal."""
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        memory = 0
    return HostFacts(cores=os.cpu_count() or 1, memory_bytes=max(0, memory))


def _pydantic_problems(err: ValidationError) -> list[tuple[str, str]]:
    problems = []
    for e in err.errors():
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check its spelling and section)"
        problems.append((".".join(str(p) for p in e["loc"]), msg))
    return problems


def read_toml(path: str | os.PathLike) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError([("", f"config file {path} does not exist")]) from None
    except OSError as e:
        raise ConfigError([("", f"cannot read config file {path}: {e.strerror}")]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([("", f"{path} is not valid TOML: {e}")]) from None
    except UnicodeDecodeError as e:
        raise ConfigError([("", f"{path} is not UTF-8 text (byte {e.start}): TOML files "
                            "must be UTF-8")]) from None


def load_settings(path: str | os.PathLike | None = None, data: dict | None = None) -> Settings:
    raw = dict(data) if data is not None else (read_toml(path) if path else {})
    try:
        return Settings(**raw)
    except ValidationError as e:
        raise ConfigError(_pydantic_problems(e)) from None


def resolve(settings: Settings, host: HostFacts, source: str = "") -> Config:
    problems: list[tuple[str, str]] = []
    warnings: list[str] = []
    s = settings
    cores = host.cores if s.host.cores == "auto" else int(s.host.cores)
    memory = host.memory_bytes if s.host.memory == "auto" else parse_size(s.host.memory)
    facts = HostFacts(cores=cores, memory_bytes=memory)
    reserve = parse_size(s.reserve.emergency)
    scaled = s.host.layout == "scaled"

    if not s.pools:
        problems.append(("pools", "at least one pool must be defined"))
    if not s.classes:
        problems.append(("classes", "at least one class must be defined"))

    # Pools: in "scaled" layout budgets shrink or grow with (host memory - reserve).
    ref_mem = parse_size(s.host.reference_memory)
    factor = 1.0
    if scaled:
        if ref_mem <= reserve:
            problems.append(("host.reference_memory", "must be larger than reserve.emergency"))
        else:
            factor = max(0.0, (memory - reserve) / (ref_mem - reserve))
    pools = {}
    for name, p in s.pools.items():
        budget = int(parse_size(p.budget) * factor)
        if budget <= 0:
            problems.append((f"pools.{name}.budget", "must be larger than zero"))
        pools[name] = PoolConfig(name=name, budget_bytes=budget)
    total = sum(p.budget_bytes for p in pools.values())
    if total + reserve > memory:
        problems.append((
            "pools",
            f"pools ({total / 2**30:.2f} GiB) plus reserve.emergency ({reserve / 2**30:.2f} GiB) "
            f"exceed host memory ({memory / 2**30:.2f} GiB): the reserve would be allocated"))
    if reserve >= memory:
        problems.append(("reserve.emergency", "is not smaller than host memory"))

    classes = {}
    ranges: list[tuple[str, tuple[int, int]]] = []
    for name, c in s.classes.items():
        key = f"classes.{name}"
        if c.pool not in s.pools:
            problems.append((f"{key}.pool", f"names unknown pool {c.pool!r}; pools are: "
                             + ", ".join(sorted(s.pools)) ))
        class_cores: tuple[int, ...] | None = None
        if c.cpuset != "any":
            written = parse_cpuset(c.cpuset)
            if scaled:
                if max(written, default=0) >= s.host.reference_cores:
                    problems.append((f"{key}.cpuset", f"names core {max(written)} but "
                                     f"host.reference_cores is {s.host.reference_cores}"))
                class_cores = scale_cores(written, s.host.reference_cores, cores)
            else:
                missing = [x for x in written if x >= cores]
                if missing:
                    problems.append((f"{key}.cpuset", f"names core(s) {format_cpuset(tuple(missing))} "
                                     f"but this host has cores 0-{cores - 1}"))
                class_cores = written
        if c.cpu_quota is not None and c.cpu_quota > cores:
            warnings.append(f"{key}.cpu_quota {c.cpu_quota} exceeds the host's {cores} cores")
        limit = parse_size(c.memory_limit)
        minimum = parse_size(c.memory_min)
        if minimum > limit:
            problems.append((f"{key}.memory_min", "is larger than memory_limit"))
        port_range = _parse_port_range(c.ports) if c.ports else None
        if port_range:
            for other, r in ranges:
                if port_range[0] <= r[1] and r[0] <= port_range[1]:
                    problems.append((f"{key}.ports", f"range {c.ports} overlaps class {other!r} "
                                     f"({r[0]}-{r[1]})"))
            ranges.append((name, port_range))
        classes[name] = ClassConfig(
            name=name, cores=class_cores, pool=c.pool, priority=c.priority,
            memory_limit_bytes=limit, memory_min_bytes=minimum, cpu_quota_cores=c.cpu_quota,
            reservation_ratio=c.reservation_ratio, protected=c.protected,
            hibernate=c.hibernate, idle_after_s=parse_duration(c.idle_after),
            hibernate_mode=c.hibernate_mode, adaptive_limits=c.adaptive_limits,
            ports=port_range, match_names=tuple(c.match.names),
            match_images=tuple(c.match.images))

    if s.manage.default_class not in s.classes and s.classes:
        problems.append(("manage.default_class", f"names unknown class {s.manage.default_class!r}"))
    if s.ladder.clear_ratio >= s.ladder.pool_warn_ratio:
        problems.append(("ladder.clear_ratio", "must be below ladder.pool_warn_ratio (hysteresis)"))
    if s.ladder.pool_warn_ratio > s.ladder.pool_critical_ratio:
        problems.append(("ladder.pool_warn_ratio", "must not exceed ladder.pool_critical_ratio"))
    if s.ollama.throttled_cpu_cores > s.ollama.cpu_cores:
        problems.append(("ollama.throttled_cpu_cores", "must not exceed ollama.cpu_cores"))
    if problems:
        raise ConfigError(problems)
    return Config(
        settings=s, host=facts, reserve_bytes=reserve, pools=pools, classes=classes,
        tick_s=parse_duration(s.intervals.tick), reconcile_s=parse_duration(s.intervals.reconcile),
        reconnect_max_s=parse_duration(s.intervals.reconnect_max), source=source,
        warnings=tuple(warnings))


def load_config(path: str | os.PathLike | None = None, host: HostFacts | None = None,
                data: dict | None = None) -> Config:
    """Load, validate and resolve. Raises ConfigError listing every problem found."""
    settings = load_settings(path, data)
    return resolve(settings, host or detect_host(), source=str(path or ""))


def glob_match(patterns: tuple[str, ...] | list[str], value: str) -> bool:
    return any(fnmatch.fnmatchcase(value, p) for p in patterns)


def shipped_config_path() -> Path:
    """config/supervisor.toml of this checkout (used by tests and the run script)."""
    return Path(__file__).resolve().parents[2] / "config" / "supervisor.toml"
