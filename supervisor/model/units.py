"""Parsing of human sizes and durations in the config ("1.38GiB", "512MiB", "5m", "30s")."""

from __future__ import annotations

import functools
from datetime import datetime
import re
from typing import Iterable

_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "t": 1000**4, "tb": 1000**4,
    "ki": 1024, "kib": 1024, "mi": 1024**2, "mib": 1024**2, "gi": 1024**3, "gib": 1024**3,
    "ti": 1024**4, "tib": 1024**4,
}
SIZE_UNITS_HELP = "a number of bytes or a number with a unit: B, KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024), e.g. '512MiB', '1.38GiB'"

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
DURATION_UNITS_HELP = "a number of seconds or a number with a unit: ms, s, m, h, d, e.g. '500ms', '30s', '5m'"

_NUM = r"\s*([0-9]+(?:\.[0-9]+)?)\s*"


def _parse_quantity(value: object, what: str, units: dict[str, float], help_text: str,
                    default_unit: str) -> float:
    """A non-negative number as given, or a string's number times its unit (matched without
    case; none: ``default_unit``). Raises ValueError naming the accepted units."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"not a {what}: {value!r}; expected {help_text}")
    if not isinstance(value, str):
        if value < 0:
            raise ValueError(f"a {what} cannot be negative: {value!r}")
        return value
    m = re.fullmatch(_NUM + r"([A-Za-z]*)\s*", value)
    unit = m.group(2).lower() or default_unit if m else ""
    if not m or unit not in units:
        raise ValueError(f"cannot parse {what} {value!r}; expected {help_text}")
    return float(m.group(1)) * units[unit]


def parse_size(value: object) -> int:
    """Bytes from an int or a string such as '1.38GiB'. Raises ValueError naming the accepted units."""
    n = _parse_quantity(value, "size", _SIZE_UNITS, SIZE_UNITS_HELP, "")
    return int(round(n)) if isinstance(value, str) else int(n)


def parse_duration(value: object) -> float:
    """Seconds from a number or a string such as '5m'. Raises ValueError naming the accepted units."""
    return float(_parse_quantity(value, "duration", _DURATION_UNITS, DURATION_UNITS_HELP, "s"))


def format_bytes(n: float | None) -> str:
    """Short human form, powers of 1024: '1.4GiB'."""
    if n is None:
        return "-"
    step = 1024.0
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < step or unit == "TiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= step
    return f"{n:.1f}TiB"


def parse_cpuset(spec: str) -> tuple[int, ...]:
    """Cores from a Linux cpuset list ('0-3,8,10-11'). Raises ValueError on bad syntax."""
    if not isinstance(spec, str):
        raise ValueError(f"not a cpuset: {spec!r}")
    return _parse_cpuset(spec)


@functools.lru_cache(maxsize=1024)
def _parse_cpuset(spec: str) -> tuple[int, ...]:
    # Cached: placement compares every container's cpuset each pass, and a host has few
    # distinct cpusets (issue 9 soak: 220 parses a pass at 110 containers).
    cores: set[int] = set()
    text = spec.strip()
    if not text:
        return ()
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"([0-9]+)(?:-([0-9]+))?", part)
        if not m:
            raise ValueError(f"cannot parse cpuset {spec!r}: expected a list like '0-3,8'")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise ValueError(f"cpuset range {part!r} runs backwards")
        cores.update(range(lo, hi + 1))
    return tuple(sorted(cores))


def format_cpuset(cores: tuple[int, ...] | list[int]) -> str:
    """Canonical Linux cpuset list: (0,1,2,3,8) -> '0-3,8'."""
    return _format_cpuset(tuple(cores))


@functools.lru_cache(maxsize=1024)
def _format_cpuset(cores: tuple[int, ...]) -> str:
    return ",".join(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0])
                    for run in core_runs(sorted(set(cores))))


def core_runs(cores: Iterable[int]) -> list[list[int]]:
    """The runs of consecutive cores, in the order given: (0, 1, 2, 8) -> [[0, 1, 2], [8]]."""
    runs: list[list[int]] = []
    for c in cores:
        if runs and c == runs[-1][-1] + 1:
            runs[-1].append(c)
        else:
            runs.append([c])
    return runs


def docker_time_s(text: str) -> float | None:
    """Epoch seconds of Docker's RFC 3339 time with nanoseconds ("2024-05-01T12:34:56.
    123456789Z"); None for its zero time ("0001-01-01T00:00:00Z") or an unreadable one."""
    if not text or text.startswith("0001-"):
        return None
    head, _, rest = text.partition(".")
    frac, tz = "", "Z"
    if rest:
        i = next((k for k, ch in enumerate(rest) if not ch.isdigit()), len(rest))
        frac, tz = rest[:i], rest[i:] or "Z"
    elif head.endswith("Z"):
        head = head[:-1]
    elif len(head) > 19:
        head, tz = head[:19], head[19:]
    try:
        dt = datetime.fromisoformat(head + ("." + frac[:6] if frac else "")
                                    + ("+00:00" if tz == "Z" else tz))
    except ValueError:
        return None
    return dt.timestamp()
