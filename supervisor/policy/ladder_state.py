"""The ladder's values: the rungs, an open breach's track, the ladder's state between
passes, a throttle's durable record, and what one plan returns. Plain frozen values, so
a plan can be compared, journaled and replayed in tests (policy/ladder.py decides)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from supervisor.model.actions import Action
from supervisor.policy.breaches import NONE, Signal, SignalMemory

ALERT, THROTTLE, RECLAIM, HIBERNATE, STOP = 1, 2, 3, 4, 5
STEP_NAMES = {ALERT: "alert", THROTTLE: "throttle", RECLAIM: "reclaim",
              HIBERNATE: "hibernate", STOP: "stop"}
# Most urgent first when several breaches want the same rate budget.
KIND_ORDER = {"reserve": 0, "psi_memory": 1, "pool": 2, "psi_cpu": 3, "oom": 4}

MIB = 1 << 20
MIN_RECLAIM_BYTES = MIB  # asking the kernel for less is not worth a write


@dataclass(frozen=True)
class Track:
    """One open breach and how far up its ladder it has gone."""

    key: str
    kind: str
    subject: str
    name: str
    resource: str
    opened_at: float
    step: int = 0  # last rung taken or skipped (0 = none yet)
    acted_step: int = 0  # last rung that acted (a skipped rung does not count)
    step_at: float = 0.0  # when a rung last acted (grace runs from here)
    severity: int = NONE  # this tick's level
    top_severity: int = NONE  # highest level alerted so far
    clear_since: float | None = None  # below the clear level since
    summary: str = ""
    hold: str = ""  # why the next rung waits (journaled once per reason)

    _DURABLE = ("key", "kind", "subject", "name", "resource", "opened_at", "step",
                "acted_step", "step_at", "top_severity")

    def durable(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._DURABLE}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Track":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Throttle:
    """A container the ladder throttled: the original value of every knob it changed
    (``before``), what it set (``after``), and the breaches it was for. Knobs:
    "memory_high" (v2 memory.high text), "cpu" (before: Docker's NanoCpus/CpuQuota/
    CpuPeriod; after: cores), "memory_reservation" (bytes; v1 soft limit via Docker)."""

    container_id: str
    name: str
    breaches: tuple[str, ...]
    before: dict[str, Any]
    after: dict[str, Any]
    at: float
    state: str = "applied"  # "applying": intent recorded, changes may be partly made
    target: dict[str, Any] = field(default_factory=dict)  # what "applying" is setting

    @property
    def knobs(self) -> set[str]:
        return set(self.before) | set(self.after)

    @property
    def in_force(self) -> dict[str, Any]:
        """The lowered values to hold: while "applying" (a crash may have cut the write
        short) they may already be set, so they count as set until undone."""
        return {**self.target, **self.after} if self.state == "applying" else dict(self.after)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["breaches"] = list(self.breaches)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Throttle":
        return cls(container_id=d["container_id"], name=d.get("name", d["container_id"][:12]),
                   breaches=tuple(d.get("breaches", ())), before=dict(d.get("before", {})),
                   after=dict(d.get("after", {})), at=float(d.get("at", 0.0)),
                   state=d.get("state", "applied"), target=dict(d.get("target", {})))


@dataclass(frozen=True)
class LadderState:
    tracks: dict[str, Track] = field(default_factory=dict)
    throttles: dict[str, Throttle] = field(default_factory=dict)
    signals: SignalMemory = field(default_factory=SignalMemory)


@dataclass(frozen=True)
class Note:
    """A decision that led to no action: journaled as is."""

    kind: str  # "breach", or the rung's name
    target: str
    name: str
    reason: str
    outcome: str  # "skipped" | "held" | "cleared" | "restored"
    detail: str = ""
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LadderPlan:
    actions: list[Action]
    state: LadderState  # the state once every action has run (see ladder.settle)
    notes: list[Note]
    signals: list[Signal]
    opened: list[str]  # kinds of the breaches opened this tick
