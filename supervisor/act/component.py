"""The shape every capability (placement, pools, ladder, hibernation, Ollama) takes.

A component sees the daemon's adapters through ``Context`` and hooks into each pass:
``plan`` (pure: decides from the tick, touches nothing) -> the actuator runs the actions
through the component's ``executors`` -> ``observe`` sees the results. ``status`` and
``collect`` publish from the same tick: the daemon calls them on the loop thread right
after each pass and freezes what they return into the pass's report, which `supctl
status`, the control API and /metrics read (they never call a component); ``routes`` add
control-API calls.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable

from supervisor.model.actions import Action, ActionResult, Outcome
from supervisor.model.config import DockerSection
from supervisor.model.params import Param
from supervisor.policy.tick import Tick

if TYPE_CHECKING:  # pragma: no cover
    from prometheus_client.core import Metric

    from supervisor.adapters.cgroups import CgroupFS
    from supervisor.model.config import Config
    from supervisor.adapters.engine import Engine
    from supervisor.observe.activity import ActivityTracker
    from supervisor.observe.history import History
    from supervisor.observe.inventory import Inventory
    from supervisor.adapters.journal import Journal

# The config names the default roots; the context passes the one in use to the adapters.
_DEFAULT_PROC: str = DockerSection.model_fields["proc_root"].default


@dataclass
class Context:
    """The adapters, passed in so tests can hand in their own (fixture roots, clocks)."""

    engine: "Engine"
    inventory: "Inventory"
    cgroups: "CgroupFS"
    journal: "Journal"
    history: "History"
    clock: Callable[[], float]
    get_config: Callable[[], "Config"]
    proc: str = _DEFAULT_PROC  # the /proc root the adapters read (docker.proc_root)
    # Action kinds some executor handles (filled by the daemon after registration), so a
    # planner can skip a step whose mechanism is absent and say so.
    capabilities: set[str] = field(default_factory=set)
    # Execute one action now, outside the pass (wake watcher, control API), through the
    # actuator: same dry-run rule, journal, counts and logs as the loop's actions.
    execute: Callable[[Action], ActionResult] | None = None
    # Breach onsets by kind (e.g. "psi_memory"), shown as resource_supervisor_breaches_total.
    # The daemon counts "reserve", "pool_used_over_budget" and "pool_allocated_over_budget"
    # itself; a component adds its own kinds: ``ctx.breaches["psi_memory"] += 1``.
    breaches: "Counter[str]" = field(default_factory=Counter)
    # The one measure of container activity (observe/activity.py), fed by the sampler.
    activity: "ActivityTracker | None" = None


class Component:
    name = "component"

    def __init__(self, ctx: Context):
        self.ctx = ctx

    def plan(self, tick: Tick) -> list[Action]:
        return []

    def executors(self) -> dict[str, Callable[[Action], Outcome]]:
        return {}

    def observe(self, tick: Tick, results: list[ActionResult]) -> None:
        pass

    def overrides(self, tick: Tick) -> dict[str, dict[str, Any]]:
        """Desired-value overrides this component holds (merged into tick.overrides
        before any component plans)."""
        return {}

    def status(self, tick: Tick) -> dict[str, Any] | None:
        """This component's section of the status (JSON-able), once per pass on the loop
        thread; the dict is published as it is and must not be changed afterwards."""
        return None

    def collect(self, tick: Tick) -> Iterable["Metric"]:
        """This component's metric families, once per pass on the loop thread; every
        scrape until the next pass writes the same families."""
        return ()

    def routes(self) -> dict[tuple[str, str], tuple[Callable[[dict], tuple[int, dict]], dict[str, "Param"]]]:
        """{(method, path): (handler(params) -> (http status, json), {name: Param})}. The
        server refuses unknown or ill-typed parameters before the handler runs, as for the
        daemon's own routes; POST routes are root-only."""
        return {}

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass
