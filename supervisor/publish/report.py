"""One frozen report per pass: everything `supctl status`, `--json`, GET /status, /health,
/metrics and the control API show, built on the loop thread right after the pass and
published by swapping one reference.

A reader takes the latest report once and reads only it: it never calls into the
daemon, a component, the engine or a file, and two answers built from one report agree
with each other (the pools /metrics exports are the pools `supctl status` shows).

Besides the report, this module keeps the counts that outlive a pass and that the
report copies: the tick-duration histogram and the onsets of the breaches the daemon
sees in its own accounting.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from itertools import accumulate
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping

from prometheus_client.utils import floatToGoString

from supervisor.model import rules

if TYPE_CHECKING:  # pragma: no cover
    from prometheus_client.core import Metric

    from supervisor.adapters.procself import ProcessFigures
    from supervisor.model.actions import ActionResult
    from supervisor.model.config import Config
    from supervisor.model.pools import PoolUsage, ReserveState
    from supervisor.model.snapshot import Snapshot
    from supervisor.policy.tick import Tick

log = logging.getLogger(__name__)

# Pass durations: from a quiet 2-core host (~1 ms) to a pass stuck on a slow engine (10 s).
TICK_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_EMPTY: Mapping[Any, Any] = MappingProxyType({})


def _empty() -> Mapping[Any, Any]:
    return _EMPTY


def frozen_counts(counter: Any) -> Mapping[Any, int]:
    """A read-only copy of a Counter another thread may add to: list(dict.items()) runs
    in C under the GIL, so no "changed size during iteration"."""
    return MappingProxyType(dict(list(counter.items()))) if counter else _EMPTY


class Deferred:
    """A status section or metric families a component hands the report unbuilt: ``fn``
    holds what the pass froze (the plan, copies of the counts) and builds from only that
    when a reader first asks, once, whatever the loop does meanwhile. Most passes are
    never read (a scrape every 15 s, a status now and then), and building every
    container's rows each pass cost ~1 ms and ~400 objects the GC had to walk (issue 13
    soak)."""

    __slots__ = ("_fn", "_value", "_lock")

    def __init__(self, fn: Callable[[], Any]):
        self._fn: Callable[[], Any] | None = fn
        self._value: Any = None
        self._lock = threading.Lock()

    def get(self) -> Any:
        with self._lock:
            if self._fn is not None:
                self._value = self._fn()  # (one that raises raises again when read again)
                self._fn = None
            return self._value


class Sections(Mapping[str, Any]):
    """Each component's status section, a ``Deferred`` built on first read; one that
    fails reads as {"error": ...}, as a section that failed when the report was built."""

    def __init__(self, raw: Mapping[str, Any]):
        self._raw = dict(raw)

    def __getitem__(self, name: str) -> Any:
        v = self._raw[name]
        if not isinstance(v, Deferred):
            return v
        try:
            return v.get()
        except Exception as e:  # noqa: BLE001 - one section's bug must not hide the rest
            log.exception("status of component %s failed", name)
            self._raw[name] = {"error": f"{type(e).__name__}: {e}"}
            return self._raw[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)


@dataclass(frozen=True)
class Report:
    """What one pass saw and did, as every surface shows it. Never changed once built."""

    seq: int  # passes so far; 0: built before the first pass
    made_mono: float  # time.monotonic() when published
    started_at_s: float  # when the daemon started (epoch)
    pid: int
    cfg: "Config"
    stale_after_s: float  # no pass for this long: the loop has stalled
    # The pass's input, as it decided from it (None before the first pass).
    snapshot: "Snapshot | None" = None
    pools: Mapping[str, "PoolUsage"] = field(default_factory=_empty)
    reserve: "ReserveState | None" = None
    now: float = 0.0  # the pass's clock (the snapshot's time)
    engine_up: bool = False
    engine_error: str = ""
    engine_host: str = ""
    cgroup_version: int = 0
    last_config_error: str = ""
    # Counts, copied when the report was made.
    # the loop's own (passes, errors, reloads...)
    counts: Mapping[str, int] = field(default_factory=_empty)
    sampler_counts: Mapping[str, int] = field(default_factory=_empty)
    inventory_counts: Mapping[str, int] = field(default_factory=_empty)
    action_counts: Mapping[tuple[str, str], int] = field(default_factory=_empty)  # kind, outcome
    breaches: Mapping[str, int] = field(default_factory=_empty)  # onsets, by kind
    tick_buckets: tuple[tuple[str, int], ...] = ()  # cumulative (le, count)
    tick_sum_s: float = 0.0
    last_pass_duration_s: float = 0.0
    pass_durations_s: tuple[float, ...] = ()  # the recent passes, oldest first
    recent_actions: tuple["ActionResult", ...] = ()
    process: "ProcessFigures | None" = None  # the daemon's own footprint
    # The previous pass's snapshot: CPU % between the two (computed by the reader).
    prev_snapshot: "Snapshot | None" = None
    hibernated_ids: frozenset[str] = frozenset()
    # Each component's status section (None: it has none) and metric families, computed
    # right after the pass or, a ``Deferred``, from what the pass froze when first read;
    # the sections' dicts are not to be changed by readers.
    sections: Mapping[str, Any] = field(default_factory=_empty)
    families: tuple["Metric | Deferred", ...] = ()
    # Per component: the passes where its metrics failed, and the time its collect took.
    collect_errors: Mapping[str, int] = field(default_factory=_empty)
    collect_s: Mapping[str, float] = field(default_factory=_empty)

    @property
    def ready(self) -> bool:
        """A pass has run: there is a snapshot to show."""
        return self.snapshot is not None

    def age_s(self, now_mono: float | None = None) -> float | None:
        if not self.seq:
            return None
        return (time.monotonic() if now_mono is None else now_mono) - self.made_mono

    def loop_alive(self, now_mono: float | None = None) -> bool:
        age = self.age_s(now_mono)
        return age is not None and age < self.stale_after_s

    def component_families(self) -> Iterator["Metric"]:
        """The components' metric families, the deferred ones built now (once a report)."""
        for f in self.families:
            if isinstance(f, Deferred):
                yield from f.get()
            else:
                yield f

    def pass_duration_summary(self) -> dict[str, Any]:
        """p50, p95 and max of the recent passes: how much of its tick a pass uses,
        without a histogram's bucket rounding."""
        if not self.pass_durations_s:
            return {"passes": 0}
        xs = sorted(self.pass_durations_s)

        def q(p: float) -> float:
            return round(xs[min(len(xs) - 1, int(p * len(xs)))], 6)
        return {"passes": len(xs), "p50": q(0.50), "p95": q(0.95), "max": round(xs[-1], 6)}


# ---------------------------------------------------------------------- kept across passes

class DurationHistogram:
    """A cumulative histogram with fixed buckets, observed from one thread and read from
    others. Counts only ever grow (a true Prometheus histogram, unlike a window over the
    recent pass durations)."""

    def __init__(self, bounds_s: Iterable[float] = TICK_BUCKETS_S):
        self.bounds_s = tuple(sorted(bounds_s))
        self._les = tuple(floatToGoString(b) for b in (*self.bounds_s, float("inf")))
        self._counts = [0] * (len(self.bounds_s) + 1)  # per bucket; the last is +Inf
        self._sum_s = 0.0
        self._lock = threading.Lock()

    def observe(self, value_s: float) -> None:
        i = bisect.bisect_left(self.bounds_s, value_s)  # first bound >= value: le semantics
        with self._lock:
            self._counts[i] += 1
            self._sum_s += value_s

    def cumulative(self) -> tuple[list[tuple[str, int]], float]:
        with self._lock:
            counts = list(self._counts)
            total_s = self._sum_s
        return list(zip(self._les, accumulate(counts))), total_s


def breach_conditions(tick: "Tick | Report") -> set[tuple[str, str]]:
    """(kind, pool) of every breach the daemon's own accounting shows in this tick: the
    reserve breached (ReserveState.breached), a pool over (PoolUsage.over) by its use
    reaching the budget or by its limits adding up past it (rules.pool_level)."""
    out: set[tuple[str, str]] = set()
    if tick.reserve is not None and tick.reserve.breached:
        out.add(("reserve", ""))
    levels = rules.Levels.of(tick.cfg)
    for name, p in tick.pools.items():
        if not p.over:
            continue
        if rules.ratio_level(p.utilisation, levels) == rules.OVER:
            out.add(("pool_used_over_budget", name))
        if p.allocated_bytes > p.budget_bytes:
            out.add(("pool_allocated_over_budget", name))
    return out


class PassMetrics:
    """The per-pass bookkeeping: the tick-duration histogram, and the onsets of the
    breaches the daemon sees itself (reserve, pool over budget), counted into the shared
    ``breaches`` Counter that components also add their kinds to."""

    def __init__(self, breaches: "Counter[str]"):
        self.tick_duration = DurationHistogram()
        self.breaches = breaches
        self._active: set[tuple[str, str]] = set()

    def observe(self, duration_s: float, tick: "Tick") -> None:
        self.tick_duration.observe(duration_s)
        now = breach_conditions(tick)
        for kind, _pool in now - self._active:
            self.breaches[kind] += 1
        self._active = now
