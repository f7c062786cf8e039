"""Per-container working-set history in numpy ring buffers, for recommended limits."""

from __future__ import annotations

import math

import numpy as np

from supervisor.model import rules


class Ring:
    """Fixed-size ring of float64 samples."""

    __slots__ = ("buf", "n", "i", "_peak")

    def __init__(self, size: int):
        self.buf = np.zeros(max(1, size), dtype=np.float64)
        self.n = 0
        self.i = 0
        self._peak: float | None = None  # the highest sample held; None: to be found again

    def push(self, value: float) -> None:
        if self._peak is not None:
            if value >= self._peak:
                self._peak = float(value)  # a new highest, whatever leaves the window
            elif self.n == len(self.buf) and self.buf[self.i] >= self._peak:
                self._peak = None  # the highest sample leaves the window
        self.buf[self.i] = value
        self.i = (self.i + 1) % len(self.buf)
        self.n = min(self.n + 1, len(self.buf))

    def values(self) -> np.ndarray:
        if self.n < len(self.buf):
            return self.buf[: self.n].copy()
        return np.concatenate((self.buf[self.i:], self.buf[: self.i]))

    def fill(self, values: np.ndarray) -> None:
        """Replaces the samples with ``values`` (oldest first; the newest that fit)."""
        values = np.asarray(values, dtype=np.float64)[-len(self.buf):]
        self.buf[:] = 0.0
        self.buf[: len(values)] = values
        self.n = len(values)
        self.i = self.n % len(self.buf)
        self._peak = None

    def peak(self) -> float | None:
        """The highest sample held (``percentile(100)``), kept as samples come and go:
        placement asks it of every container without a limit on every pass."""
        if self.n == 0:
            return None
        if self._peak is None:
            self._peak = float(self.buf[: self.n].max())
        return self._peak

    def percentile(self, q: float) -> float | None:
        """np.percentile's default ("linear") of the samples, through one partial sort:
        a fifth of np.percentile's cost on an hour of samples (issue 9 soak)."""
        if self.n == 0:
            return None
        buf = self.buf[: self.n] if self.n < len(self.buf) else self.buf
        pos = (self.n - 1) * min(max(q, 0.0), 100.0) / 100.0
        lo = int(math.floor(pos))
        hi = min(lo + 1, self.n - 1)
        part = np.partition(buf, (lo, hi))
        return float(part[lo] + (part[hi] - part[lo]) * (pos - lo))


# History restored from disk for a container the inventory has not listed yet (the
# engine is slow or down at start) is kept this many passes before it is forgotten.
RESTORED_GRACE_PASSES = 120


class History:
    """Working-set samples per container id over a window of ``window_s`` at one sample
    per ``step_s``. ``export``/``restore`` carry it across daemon restarts (the file
    itself is adapters.history_store's)."""

    def __init__(self, window_s: float, step_s: float):
        self.step_s = step_s
        self.size = max(1, int(math.ceil(window_s / max(step_s, 1e-3))))
        self.rings: dict[str, Ring] = {}
        self._unseen_restored: set[str] = set()
        self._grace_passes = 0

    def record(self, cid: str, working_set_bytes: float) -> None:
        ring = self.rings.get(cid)
        if ring is None:
            ring = self.rings[cid] = Ring(self.size)
        ring.push(working_set_bytes)

    def forget_except(self, keep: set[str]) -> None:
        self._unseen_restored -= keep
        if self._grace_passes > 0:
            self._grace_passes -= 1
        else:
            self._unseen_restored.clear()
        for cid in set(self.rings) - keep - self._unseen_restored:
            del self.rings[cid]

    def export(self) -> dict[str, np.ndarray]:
        """A copy of every container's samples, oldest first (to be written elsewhere)."""
        return {cid: ring.values() for cid, ring in self.rings.items() if ring.n}

    def restore(self, samples: dict[str, np.ndarray], step_s: float) -> int:
        """Takes in stored samples (oldest first, one every ``step_s``) for containers
        without history yet; returns how many containers got history. Each keeps at
        most the window's size."""
        added = 0
        for cid, values in samples.items():
            if cid in self.rings or len(values) == 0:
                continue
            ring = self.rings[cid] = Ring(self.size)
            ring.fill(resample(values, step_s, self.step_s))
            self._unseen_restored.add(cid)
            added += 1
        if added:
            self._grace_passes = RESTORED_GRACE_PASSES
        return added

    def percentile(self, cid: str, q: float) -> float | None:
        ring = self.rings.get(cid)
        return ring.percentile(q) if ring else None

    def peak(self, cid: str) -> float | None:
        """The highest working set held for ``cid`` (None: no samples)."""
        ring = self.rings.get(cid)
        return ring.peak() if ring else None

    def samples(self, cid: str) -> int:
        ring = self.rings.get(cid)
        return ring.n if ring else 0

    def covered_s(self, cid: str) -> float:
        """How long the container's samples span (restored ones included)."""
        return self.samples(cid) * self.step_s


def resample(values: np.ndarray, from_step_s: float, to_step_s: float) -> np.ndarray:
    """Samples taken every ``from_step_s`` as if taken every ``to_step_s`` (the config's
    tick changed across a restart), covering the same span. A coarser step keeps each
    bin's highest sample: the percentile is of peaks, and a dropped peak would lower it."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0 or from_step_s <= 0 or abs(from_step_s - to_step_s) <= 0.01 * to_step_s:
        return values
    span_s = len(values) * from_step_s
    n_new = max(1, int(round(span_s / to_step_s)))
    starts = np.minimum((np.arange(n_new) * to_step_s / from_step_s).astype(np.int64),
                        len(values) - 1)
    if to_step_s > from_step_s:
        return np.maximum.reduceat(values, np.unique(starts))
    return values[starts]


_MIB = 1 << 20


def recommend_step_bytes(n: float) -> int:
    """The step a recommended limit is rounded up to: whole MiB below 64 MiB, 16 MiB
    steps below 1 GiB, 64 MiB steps above (limits that read well)."""
    return _MIB if n < 64 * _MIB else (16 * _MIB if n < 1024 * _MIB else 64 * _MIB)


def recommend_limit(p_working_set: float, headroom: float, floor_bytes: int = 0) -> int:
    """Rule 1.1: limit = observed high percentile + 20% (headroom), rounded up."""
    want = p_working_set * (1 + headroom)
    return max(floor_bytes, rules.round_up_bytes(want, recommend_step_bytes(want)))
