"""The one PSI gate: when host pressure (a PSI avg10 line) counts, and when it has ended.
Pure: a frozen value and the function that folds one more reading into it.

The rule, the breach ladder's and the Ollama governor's alike (``ladder.*`` settings):

- pressure **holds** once the reading has stayed *above* the level (``psi_memory_full_avg10``,
  ``psi_cpu_some_avg10``) for ``psi_duration``; any reading at or below the level restarts
  the hold (systemd-oomd's rule: memory full avg10 > 60% for 30 s);
- the gate turns **on** when pressure holds, and **off** only once the reading has stayed
  below ``clear_ratio`` x the level for ``clear_after``; a reading at or above the clear
  level restarts that wait. Between the clear level and the level it stays as it was, so a
  reading that oscillates around the level does not flap.

The ladder reads ``held`` (a breach signal's severity) and ``below_clear`` (its own
clear_after ends the breach: the same off rule); the governor reads ``on`` (its throttle
and its unloads). Both call ``advance`` with the same levels and durations.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class PsiGate:
    on: bool = False
    above_since: float | None = None  # above the level without a break since
    clear_since: float | None = None  # below the clear level without a break since (while on)
    changed_at: float | None = None  # when ``on`` last changed
    value: float = 0.0  # the last reading (0 for none)

    def held_s(self, now: float) -> float:
        """How long the reading has stayed above the level (0 when it is not above)."""
        return 0.0 if self.above_since is None else now - self.above_since

    def held(self, now: float, hold_s: float) -> bool:
        """Pressure held: above the level for at least ``hold_s``."""
        return self.above_since is not None and now - self.above_since >= hold_s

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def levels(level: float, clear_ratio: float) -> tuple[float, float]:
    """(start level, clear level): the ladder's clear_ratio applied to the PSI level as it
    is to pool use (80% start, 64% clear with the defaults)."""
    return level, level * clear_ratio


def advance(g: PsiGate, value: float | None, *, level: float, clear: float, now: float,
            hold_s: float, clear_after_s: float) -> PsiGate:
    """The gate after one more reading. No reading (a kernel without PSI) counts as no
    pressure, so nothing is left throttled for want of data."""
    v = 0.0 if value is None else value
    above_since = (g.above_since if g.above_since is not None else now) if v > level else None
    if not g.on:
        held = above_since is not None and now - above_since >= hold_s
        return PsiGate(held, above_since, None, now if held else g.changed_at, v)
    if v < clear:
        clear_since = g.clear_since if g.clear_since is not None else now
        if now - clear_since >= clear_after_s:
            return PsiGate(False, above_since, None, now, v)
        return PsiGate(True, above_since, clear_since, g.changed_at, v)
    return PsiGate(True, above_since, None, g.changed_at, v)
