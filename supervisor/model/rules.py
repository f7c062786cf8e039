"""The rule book: every decision that more than one actor needs, in one pure module.

Placement, the ladder, hibernation, the Ollama governor, the control API, ``supctl``
and /metrics ask these functions; none of them re-derives a rule. A fix to a rule goes
here, never as a special case in a caller (the shape of kubelet's eviction helpers).

Invariants these rules carry, each proven over generated snapshots and configs by
``tests/unit/test_invariants.py`` through the whole planning of one pass:

1. No memory limit is written below a container's working set plus the configured
   headroom (``memory_floor_bytes``): on cgroup v1 runc refuses such a write after it has
   already written the cpuset; on cgroup v2 the kernel OOM-kills the container.
2. No throttle, reclaim, hibernation or stop of an untouchable class (``untouchable``).
3. The limits a pool grants sum to at most its budget (``admission``).
4. No pause of a container with a client waiting or data in flight (hibernation's
   re-check through sock_diag, ``policy.hibernation``).
5. No more destructive actions in a minute than ``ladder.max_actions_per_minute`` (the
   actuator's one rate limiter).
6. A dry run plans exactly what the live run plans; planning twice from the same input
   gives the same plan and changes no state.
7. No memory limit is given to a container without one before it has settled
   (``limit_settled``): running ``history.settle`` long, its health check (if any) passed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from supervisor.model.classify import label_is_false
from supervisor.model.units import docker_time_s

if TYPE_CHECKING:  # pragma: no cover
    from supervisor.model.config import ClassConfig, Config
    from supervisor.model.snapshot import ContainerInfo

# ---------------------------------------------------------------- untouchable classes

#: The class the rules name as never hibernated or stopped, whatever its config says
#: (seeds/architecture-rules.md Rule 6.3; issue 4).
INFRASTRUCTURE = "infrastructure"

#: What may never be done to an untouchable class.
DESTRUCTIVE_KINDS = frozenset({"throttle", "reclaim", "hibernate", "stop"})


def untouchable(cls: "ClassConfig | None") -> bool:
    """Never throttled, reclaimed, hibernated or stopped: a protected class, the
    infrastructure class whatever its ``protected`` says, and a container whose class is
    unknown (nothing is known that would make acting on it safe)."""
    return cls is None or cls.protected or cls.name == INFRASTRUCTURE


def refusal(cls: "ClassConfig | None", kind: str) -> str:
    """Why ``kind`` may not be done to a container of ``cls`` ("" when it may)."""
    if kind not in DESTRUCTIVE_KINDS:
        return ""
    if cls is None:
        return "its class is unknown"
    if cls.name == INFRASTRUCTURE:
        return f"class {cls.name!r} is infrastructure: never {_past(kind)}"
    if cls.protected:
        return f"class {cls.name!r} is protected: never {_past(kind)}"
    return ""


def _past(kind: str) -> str:
    return {"throttle": "throttled", "reclaim": "reclaimed", "hibernate": "hibernated",
            "stop": "stopped"}[kind]


def hibernation_block(info: "ContainerInfo", class_name: str, managed: bool, cfg: "Config") -> str:
    """Why this container may not be hibernated (idle or by API), or "" when it may."""
    if not managed:
        return "not managed by the supervisor"
    klass = cfg.classes.get(class_name)
    if klass is None:
        return f"unknown class {class_name!r}"
    why = refusal(klass, "hibernate")
    if why:
        return why
    if not klass.hibernate:
        return f"class {class_name!r} never hibernates (hibernate = false)"
    if klass.idle_after_s <= 0:
        return f"class {class_name!r} has idle_after 0"
    label = cfg.settings.hibernation.opt_out_label
    if label_is_false(info.labels, label):
        return f"opted out by label {label}={info.labels.get(label)}"
    return ""


# ---------------------------------------------------------------- pool and reserve state

OK, WARN, CRITICAL, OVER = 0, 1, 2, 3
LEVEL_NAMES = ("ok", "warn", "critical", "over")


@dataclass(frozen=True)
class Levels:
    """The configured levels (``ladder.pool_warn_ratio``, ``pool_critical_ratio``,
    ``clear_ratio``); over is 1.0: at exactly the budget a pool is full."""

    warn: float = 0.85
    critical: float = 0.95
    clear: float = 0.80

    @classmethod
    def of(cls, cfg: "Config") -> "Levels":
        L = cfg.settings.ladder
        return cls(L.pool_warn_ratio, L.pool_critical_ratio, L.clear_ratio)


def ratio_level(ratio: float, levels: Levels) -> int:
    """OK..OVER for a use ratio (1.0 = the limit). At exactly 1.0 the level is OVER: a
    pool whose members use all of its budget has no room left for any of them."""
    if ratio >= 1.0:
        return OVER
    if ratio >= levels.critical:
        return CRITICAL
    if ratio >= levels.warn:
        return WARN
    return OK


def pool_level(used_bytes: int, allocated_bytes: int, budget_bytes: int, levels: Levels) -> int:
    """A pool's state. Its use (sum of working sets) against the budget gives the level;
    an allocation (sum of limits) above the budget makes it OVER too. An allocation of
    exactly the budget is not over: admission fills a pool to exactly its budget."""
    if budget_bytes <= 0:
        return OK
    if allocated_bytes > budget_bytes:
        return OVER
    return ratio_level(used_bytes / budget_bytes, levels)


def reserve_ratio(reserve_bytes: int, available_bytes: int) -> float:
    """reserve / available: 1.0 exactly when available memory reaches the reserve, so the
    pool levels apply unchanged (inf when nothing is available)."""
    if reserve_bytes <= 0:
        return 0.0
    avail = max(0, available_bytes)
    return reserve_bytes / avail if avail else math.inf


def reserve_level(reserve_bytes: int, available_bytes: int, levels: Levels) -> int:
    """The emergency reserve's state: OVER (breached) once the host's available memory is
    at or inside the reserve."""
    if reserve_bytes <= 0:
        return OK
    return ratio_level(reserve_ratio(reserve_bytes, available_bytes), levels)


def level_name(level: int) -> str:
    return LEVEL_NAMES[level]


# ---------------------------------------------------------------- memory limits

PAGE_BYTES = 4096
#: Docker refuses a memory limit below 6 MiB (daemon/daemon_unix.go linuxMinMemory).
DOCKER_MIN_MEMORY_BYTES = 6 * 1024 * 1024


def round_up_bytes(n: float, step: int = 1024 * 1024) -> int:
    """Rounded up to a whole MiB (limits read better; never below what was asked)."""
    return int(math.ceil(max(0.0, n) / step) * step)


def memory_floor_bytes(working_set_bytes: int | None, headroom: float) -> int:
    """Rule 1.1: the lowest limit that may be written on a running container: its
    working set plus the headroom (20%), rounded up to a MiB. 0 when nothing is known
    (a container that does not run has no usage to protect)."""
    if not working_set_bytes or working_set_bytes <= 0:
        return 0
    return round_up_bytes(working_set_bytes * (1.0 + headroom))


def memory_limit(wanted_bytes: int, working_set_bytes: int | None, headroom: float) -> int:
    """The memory limit a container may be given when ``wanted_bytes`` is asked for: never
    below its floor. A class default smaller than what a running service uses would make
    the kernel reclaim-fail (v1) or OOM-kill (v2) it, at every start after a restart."""
    return max(wanted_bytes, memory_floor_bytes(working_set_bytes, headroom))


def limit_settled(started_at: str, health: str, now_s: float, settle_s: float) -> bool:
    """Whether a container without a memory limit may be given one now: it has run at
    least ``settle_s`` and is not still in its health check's start ("starting"). Before
    that its working set is its warm-up's, not its need: a class default written at
    second 1 OOM-killed a service holding a 24 MiB cache on every start (the service lab,
    issue 15). An unknown start, or one the clock puts in the future, is no evidence of
    youth: settled (the limit is still floored by the working set)."""
    if health == "starting":
        return False
    started_s = docker_time_s(started_at)
    if started_s is None or settle_s <= 0:
        return True
    age_s = now_s - started_s
    return age_s < 0 or age_s >= settle_s


def limit_is_safe(limit_bytes: int, working_set_bytes: int | None, headroom: float) -> bool:
    """Whether writing ``limit_bytes`` respects the floor (the re-check before a write)."""
    return limit_bytes >= memory_floor_bytes(working_set_bytes, headroom)


def reservation_for(limit_bytes: int, ratio: float) -> int:
    """Rule 1.1: reservation = limit x ratio (0.5-0.75), page-aligned and kept inside
    50-75% of the limit."""
    res = int(limit_bytes * ratio) // PAGE_BYTES * PAGE_BYTES
    if res < limit_bytes * 0.5:
        res += PAGE_BYTES
    return min(res, limit_bytes)


def reservation_in_range(reservation_bytes: int, limit_bytes: int) -> bool:
    return 0 < reservation_bytes and limit_bytes * 0.5 <= reservation_bytes <= limit_bytes * 0.75


# ---------------------------------------------------------------- CPU limits

CPU_PERIOD_US = 100_000  # the CFS period Docker uses by default (cpu.cfs_period_us)
CPU_MIN_QUOTA_US = 1_000  # the kernel refuses a CFS quota below 1 ms


def cpu_quota_us(cores: float) -> int:
    """A CPU limit in cores as a CFS quota over ``CPU_PERIOD_US`` (one rounding)."""
    return max(CPU_MIN_QUOTA_US, int(round(cores * CPU_PERIOD_US)))


def cpu_limit_cores(nano_cpus: int, quota_us: int, period_us: int) -> float | None:
    """The CPU limit a container holds, in cores (None: none), from Docker's fields."""
    if nano_cpus > 0:
        return nano_cpus / 1e9
    if quota_us > 0:
        return quota_us / (period_us or CPU_PERIOD_US)
    return None


def held_cpu_cores(info: "ContainerInfo") -> float | None:
    """The CPU limit ``info`` holds, in cores (None: none)."""
    return cpu_limit_cores(info.nano_cpus, info.cpu_quota_us, info.cpu_period_us)


def cpu_update_params(nano_cpus: int, quota_us: int, period_us: int,
                      cores: float | None) -> dict[str, Any]:
    """Docker update parameters that bring a container's CPU limit to ``cores`` ({} when
    it is there already). A container started with --cpus holds NanoCpus, which Docker
    lets change only as NanoCpus (and never back to "none"); -1 clears a CFS quota."""
    if cores is None:
        if nano_cpus == 0 and quota_us > 0:
            return {"cpu_quota": -1}
        return {}
    if nano_cpus > 0:
        want = int(round(cores * 1e9))
        return {} if nano_cpus == want else {"nano_cpus": want}
    want = cpu_quota_us(cores)
    if quota_us == want and (period_us or CPU_PERIOD_US) == CPU_PERIOD_US:
        return {}
    return {"cpu_period": CPU_PERIOD_US, "cpu_quota": want}


def effective_cpu_cores(wanted: Mapping[str, float | None]) -> float | None:
    """When several actors want a CPU limit on one container (its class, the ladder's
    throttle, the Ollama governor), the container gets the smallest of them: each asks
    for a cap, and the tightest cap satisfies every ask. None when nobody asks."""
    caps = [v for v in wanted.values() if v is not None and v > 0]
    return min(caps) if caps else None


# ---------------------------------------------------------------- OOM restart loops

#: A container killed by the kernel's OOM killer this many times within
#: ``OOM_LOOP_WINDOW_S`` is in an OOM loop (a restart policy brings it back into the
#: same limit, which kills it again).
OOM_LOOP_KILLS = 2
OOM_LOOP_WINDOW_S = 600.0
#: A raise of a limit the supervisor gave is at least x1.2 and at least +100 MB (the
#: Kubernetes VPA's bump after an OOM kill: OOMBumpUpRatio, OOMMinBumpUp).
OOM_RAISE_RATIO = 1.2
OOM_RAISE_MIN_BYTES = 100 * 1000 * 1000


def oom_kills_within(kill_times_s: "tuple[float, ...] | list[float]", now_s: float,
                     window_s: float = OOM_LOOP_WINDOW_S, since_s: float = float("-inf")) -> int:
    """How many of a container's OOM kills fall within the window before ``now_s`` (and
    after ``since_s``: e.g. only those under the limit it holds since then)."""
    if not kill_times_s:
        return 0  # the common case, asked of every container every pass
    cut = max(now_s - window_s, since_s)
    return sum(1 for t in kill_times_s if cut < t <= now_s + 1.0)


def oom_loop(kill_times_s: "tuple[float, ...] | list[float]", now_s: float,
             since_s: float = float("-inf")) -> bool:
    """Whether a container is in an OOM loop: killed ``OOM_LOOP_KILLS`` times or more
    within ``OOM_LOOP_WINDOW_S`` (after ``since_s``, when given)."""
    return oom_kills_within(kill_times_s, now_s, since_s=since_s) >= OOM_LOOP_KILLS


def oom_raise_bytes(current_limit_bytes: int, working_set_bytes: int | None,
                    recommendation_bytes: int | None, headroom: float) -> int:
    """The memory limit that replaces one the supervisor gave and under which the
    container was OOM-killed repeatedly: at least x1.2 and +100 MB of it (VPA), at least
    its use plus headroom (``memory_floor_bytes``; the peak before a kill is what the
    history holds), and at least the recommendation; rounded up to a MiB."""
    current = max(0, current_limit_bytes)
    bumped = max(current * OOM_RAISE_RATIO, current + OOM_RAISE_MIN_BYTES)
    return max(round_up_bytes(bumped), memory_floor_bytes(working_set_bytes, headroom),
               recommendation_bytes or 0, DOCKER_MIN_MEMORY_BYTES)
