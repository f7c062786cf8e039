"""The input of one pass's decisions: the snapshot and what is derived from it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from supervisor.model import rules
from supervisor.model.activity import ActivityView

if TYPE_CHECKING:  # pragma: no cover
    from supervisor.model.config import Config
    from supervisor.model.pools import PoolUsage, ReserveState
    from supervisor.model.snapshot import Snapshot
    from supervisor.observe.history import History


@dataclass
class Tick:
    """Everything one pass decides from. Built once per pass, then read-only."""

    snapshot: "Snapshot"
    cfg: "Config"
    now: float
    pools: dict[str, "PoolUsage"]
    reserve: "ReserveState"
    history: "History"
    # Desired-value overrides by other components, per container id: e.g. the ladder's
    # or the Ollama governor's CPU quota, which placement must not "repair" back.
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    reconcile: bool = False  # a full drift-repair pass (periodic or after a relist)
    events: tuple[str, ...] = ()  # container ids with events since the last pass
    # Activity taken once per pass from the one tracker (CPU cores, idle time), frozen:
    # the ladder's hibernate rung and the Ollama governor judge idleness from it.
    activity: ActivityView = field(default_factory=ActivityView)


def merge_override(held: "Mapping[str, Any]", own: "Mapping[str, Any]") -> dict[str, Any]:
    """One component's override for a container over what the others hold for it. A CPU
    limit is a cap each asks for: the smallest wins (rules.effective_cpu_cores), whichever
    component planned first; any other key is the later component's."""
    out = {**held, **own}
    if "cpu_quota_cores" in held and "cpu_quota_cores" in own:
        out["cpu_quota_cores"] = rules.effective_cpu_cores(
            {"held": held["cpu_quota_cores"], "own": own["cpu_quota_cores"]})
    return out
