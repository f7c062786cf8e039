"""The input of one pass's decisions: the snapshot and what is derived from it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

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
