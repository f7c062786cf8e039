"""The control API's request vocabulary: the parameters a route accepts and the error a
handler raises. Plain values, so components declare their routes without the server."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------- parameter checking

# Integers a parameter may take: what SQLite (the journal) stores, and far beyond any
# count, size or sequence number a caller means.
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1


def _as_int(name: str, v: Any) -> int:
    if isinstance(v, bool):
        raise ApiError(400, f"{name} must be an integer, not {json.dumps(v)}")
    if isinstance(v, str):
        digits = v.strip().removeprefix("-")
        # ASCII digits only: str.isdigit() also says yes to "²", which int() refuses.
        if digits.isascii() and digits.isdigit():
            # int() refuses more than 4300 digits; anything past 19 is out of range anyway
            v = int(v) if len(digits) <= 19 else _INT_MAX + 1
    if isinstance(v, int) and not isinstance(v, bool):
        if not _INT_MIN <= v <= _INT_MAX:
            raise ApiError(400, f"{name} is out of range (a 64-bit integer)")
        return v
    raise ApiError(400, f"{name} must be an integer, not {json.dumps(v, default=str)[:80]}")


def _as_float(name: str, v: Any) -> float:
    if isinstance(v, bool):
        raise ApiError(400, f"{name} must be a number, not {json.dumps(v)}")
    if isinstance(v, (int, float, str)):
        try:
            return float(v)
        except ValueError:
            pass
    raise ApiError(400, f"{name} must be a number, not {json.dumps(v, default=str)}")


def _as_bool(name: str, v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("true", "1", "yes", "false", "0", "no"):
        return v.lower() in ("true", "1", "yes")
    raise ApiError(400, f"{name} must be true or false, not {json.dumps(v, default=str)}")


def _as_str(name: str, v: Any) -> str:
    if not isinstance(v, str):
        raise ApiError(400, f"{name} must be a string, not {json.dumps(v, default=str)}")
    if not v or len(v) > 256 or any(ord(ch) < 32 or 0xD800 <= ord(ch) <= 0xDFFF for ch in v):
        # (a lone surrogate, from a JSON "\ud800", is no character: it cannot be stored)
        raise ApiError(400, f"{name} must be 1-256 printable characters")
    return v


_CONVERT = {int: _as_int, float: _as_float, bool: _as_bool, str: _as_str}


@dataclass(frozen=True)
class Param:
    """One accepted parameter: its type, whether it must be given, its default, and the
    inclusive range an int/float must lie in."""

    type: type = str
    required: bool = False
    default: Any = None
    min: float | None = None
    max: float | None = None


def check_params(body: dict, spec: dict[str, Param]) -> dict[str, Any]:
    """The body's parameters, converted and range-checked, or ApiError(400) naming the
    first problem. Parameters not in ``spec`` are refused (a typo must not be ignored)."""
    unknown = sorted(set(body) - set(spec))
    if unknown:
        accepted = ", ".join(sorted(spec)) or "none"
        raise ApiError(400, f"unknown parameter {unknown[0]!r}; accepted: {accepted}")
    out: dict[str, Any] = {}
    for name, p in spec.items():
        if name not in body or body[name] is None:
            if p.required:
                raise ApiError(400, f"missing required parameter {name!r}")
            out[name] = p.default
            continue
        v = _CONVERT[p.type](name, body[name])
        if p.min is not None and v < p.min or p.max is not None and v > p.max:
            lo = "" if p.min is None else f"{p.min:g}"
            hi = "" if p.max is None else f"{p.max:g}"
            raise ApiError(400, f"{name} must be in [{lo}, {hi}], not {v}")
        out[name] = v
    return out
