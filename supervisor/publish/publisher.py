"""Builds the report of each pass on the loop thread, right after the pass: copies the
counts, asks each component for its status section and metric families, reads the
daemon's own footprint, and freezes it all into one ``Report``.

The builder keeps what outlives a pass (the tick histogram, breach onsets, components'
metric failures); the runtime hands it everything else as plain values, so nothing here
knows the daemon.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from functools import partial
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

from supervisor.publish.metrics import exporter_family_names
from supervisor.publish.report import Deferred, PassMetrics, Report, Sections, frozen_counts

if TYPE_CHECKING:  # pragma: no cover
    from prometheus_client.core import Metric

    from supervisor.act.component import Component
    from supervisor.adapters.procself import ProcessFigures
    from supervisor.model.actions import ActionResult
    from supervisor.model.config import Config
    from supervisor.policy.tick import Tick

log = logging.getLogger(__name__)

RECENT_ACTIONS = 10  # the last actions a status shows


def hibernated_ids(components: Iterable[Any]) -> frozenset[str]:
    """Ids the hibernation component holds, if it is there (before it exists: none)."""
    comp = next((c for c in components if getattr(c, "name", "") == "hibernation"), None)
    fn = getattr(comp, "hibernated_ids", None)
    try:
        return frozenset(fn()) if fn is not None else frozenset()
    except Exception:  # noqa: BLE001 - a component bug must not fail the report
        log.exception("hibernation.hibernated_ids failed")
        return frozenset()


def component_sections(components: Iterable["Component"], tick: "Tick") -> dict[str, Any]:
    """Each component's status section (None: it has none)."""
    out: dict[str, Any] = {}
    for comp in components:
        try:
            out[comp.name] = comp.status(tick)
        except Exception as e:  # noqa: BLE001 - one section's bug must not hide the rest
            log.exception("status of component %s failed", comp.name)
            out[comp.name] = {"error": f"{type(e).__name__}: {e}"}
    return out


class ReportBuilder:
    def __init__(self, components: Sequence["Component"], breaches: "Counter[str]",
                 read_process: Callable[[], "ProcessFigures | None"] = lambda: None,
                 started_at_s: float | None = None, pid: int | None = None):
        self.components = components
        self.pass_metrics = PassMetrics(breaches)
        self.collect_errors: Counter[str] = Counter()
        self._errors_lock = threading.Lock()
        self.read_process = read_process
        self.started_at_s = time.time() if started_at_s is None else started_at_s
        self.pid = os.getpid() if pid is None else pid
        self._exporter_names: frozenset[str] | None = None

    def observe_pass(self, duration_s: float, tick: "Tick") -> None:
        """Count one finished pass (its duration, the breaches it started)."""
        self.pass_metrics.observe(duration_s, tick)

    def _count_error(self, name: str) -> None:
        with self._errors_lock:  # deferred families fail on the scrape thread
            self.collect_errors[name] += 1

    def _families(self, tick: "Tick", taken: frozenset[str]
                  ) -> tuple[list["Metric | Deferred"], dict[str, float]]:
        out: list[Any] = []
        took_s: dict[str, float] = {}
        seen = set(taken)
        for comp in self.components:
            t0 = time.perf_counter()
            try:
                fams = comp.collect(tick)
                if not isinstance(fams, Deferred):
                    fams = list(fams)
            except Exception:  # noqa: BLE001 - one component's bug must not fail the rest
                log.exception("metrics of component %s failed", comp.name)
                self._count_error(comp.name)
                continue
            finally:
                took_s[comp.name] = time.perf_counter() - t0
            if isinstance(fams, Deferred):
                out.append((comp.name, fams))  # checked against every name, below
                continue
            out.extend(self._unique(comp.name, fams, seen))
        names = frozenset(seen)
        return [Deferred(partial(self._checked, f[0], f[1], names, took_s))
                if isinstance(f, tuple) else f for f in out], took_s

    def _unique(self, name: str, fams: Iterable["Metric"], seen: set[str]) -> list["Metric"]:
        out = []
        for fam in fams:
            if fam.name in seen:
                # Two families of one name would make the whole exposition invalid.
                log.error("component %s yields metric %s twice; dropped", name, fam.name)
                self._count_error(name)
                continue
            seen.add(fam.name)
            out.append(fam)
        return out

    def _checked(self, name: str, fams: Deferred, taken: frozenset[str],
                 took_s: dict[str, float]) -> list["Metric"]:
        """A component's deferred families, built when a scrape first reads the report
        (the time it took is added to the report's collect time of the component)."""
        t0 = time.perf_counter()
        try:
            built = list(fams.get())
        except Exception:  # noqa: BLE001
            log.exception("metrics of component %s failed", name)
            self._count_error(name)
            return []
        finally:
            took_s[name] += time.perf_counter() - t0
        return self._unique(name, built, set(taken))

    def build(self, *, cfg: "Config", seq: int, stale_after_s: float,
              tick: "Tick | None" = None, prev_tick: "Tick | None" = None,
              engine_up: bool = False, engine_error: str = "", engine_host: str = "",
              cgroup_version: int = 0, last_config_error: str = "",
              counts: Mapping[str, int] | None = None,
              sampler_counts: Mapping[str, int] | None = None,
              inventory_counts: Mapping[str, int] | None = None,
              action_counts: Mapping[tuple[str, str], int] | None = None,
              recent_actions: Iterable["ActionResult"] = (),
              last_pass_duration_s: float = 0.0,
              pass_durations_s: Iterable[float] = ()) -> Report:
        buckets, sum_s = self.pass_metrics.tick_duration.cumulative()
        recent = tuple(recent_actions)
        fields: dict[str, Any] = dict(
            seq=seq, started_at_s=self.started_at_s, pid=self.pid,
            cfg=cfg, stale_after_s=stale_after_s,
            engine_up=engine_up, engine_error=engine_error, engine_host=engine_host,
            cgroup_version=cgroup_version, last_config_error=last_config_error,
            counts=frozen_counts(counts), sampler_counts=frozen_counts(sampler_counts),
            inventory_counts=frozen_counts(inventory_counts),
            action_counts=frozen_counts(action_counts),
            breaches=frozen_counts(self.pass_metrics.breaches),
            tick_buckets=tuple(buckets), tick_sum_s=sum_s,
            last_pass_duration_s=last_pass_duration_s,
            pass_durations_s=tuple(pass_durations_s),
            recent_actions=recent[-RECENT_ACTIONS:], process=self.read_process())
        if tick is not None:
            fields.update(
                snapshot=tick.snapshot, pools=MappingProxyType(dict(tick.pools)),
                reserve=tick.reserve, now=tick.now,
                prev_snapshot=prev_tick.snapshot if prev_tick is not None else None,
                hibernated_ids=hibernated_ids(self.components),
                sections=Sections(component_sections(self.components, tick)))
            if self._exporter_names is None:
                self._exporter_names = exporter_family_names(
                    Report(made_mono=time.monotonic(), **fields))
            families, took_s = self._families(tick, self._exporter_names)
            with self._errors_lock:
                errors = frozen_counts(self.collect_errors)
            fields.update(families=tuple(families), collect_s=MappingProxyType(took_s),
                          collect_errors=errors)
        return Report(made_mono=time.monotonic(), **fields)
