"""What the planners decide and the actuator executes. Plain values: a plan can be
printed (``supctl plan``), journaled, and compared in tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Action:
    kind: str  # e.g. "place", "alert", "throttle", "unthrottle", "reclaim", "hibernate", "wake", "stop"
    target: str  # container id, or a pool name / "host" for alerts
    name: str  # human name of the target
    reason: str  # why, in words an operator reads
    source: str  # the planner: "placement", "pools", "ladder", "hibernation", "ollama", "api"
    params: dict[str, Any] = field(default_factory=dict)
    destructive: bool = False  # stops, recreates: re-checked just before, rate-limited

    def describe(self) -> str:
        p = ", ".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return f"{self.kind} {self.name}" + (f" ({p})" if p else "") + f": {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "target": self.target, "name": self.name,
                "reason": self.reason, "source": self.source, "params": dict(self.params),
                "destructive": self.destructive}


@dataclass(frozen=True)
class ActionResult:
    action: Action
    ok: bool
    dry_run: bool
    detail: str = ""
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)
    time_s: float = 0.0
    skipped: bool = False  # re-check found it no longer needed, or rate limit held it

    @property
    def outcome(self) -> str:
        if self.dry_run:
            return "dry_run"
        if self.skipped:
            return "skipped"
        return "ok" if self.ok else "failed"

    def to_dict(self) -> dict[str, Any]:
        return {**self.action.to_dict(), "ok": self.ok, "dry_run": self.dry_run,
                "detail": self.detail, "before": self.before, "after": self.after,
                "time_s": self.time_s, "outcome": self.outcome}


@dataclass(frozen=True)
class Outcome:
    """What an executor returns; the actuator wraps it into an ActionResult."""

    ok: bool
    detail: str = ""
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)
    skipped: bool = False
