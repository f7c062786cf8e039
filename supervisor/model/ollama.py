"""Plain values about Ollama that the adapters produce and the pure layers decide on: a
loaded model as ``GET /api/ps`` lists it, an Ollama server found on the host, the port
Ollama listens on by default and the shape of a base URL. No I/O here."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field
from typing import Any

DEFAULT_PORT = 11434


@dataclass(frozen=True)
class LoadedModel:
    """One entry of GET /api/ps."""

    name: str
    model: str
    size_bytes: int
    digest: str
    expires_at: str  # as Ollama wrote it (RFC 3339, nanoseconds): compared verbatim
    expires_at_s: float | None  # the same as a Unix time; None when unparseable
    size_vram_bytes: int = 0
    context_length: int = 0
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "model": self.model, "size_bytes": self.size_bytes,
                "digest": self.digest, "expires_at": self.expires_at,
                "size_vram_bytes": self.size_vram_bytes, "context_length": self.context_length}


@dataclass(frozen=True)
class HostProcess:
    """An Ollama server running on the host, outside Docker (found by process name)."""

    pid: int
    name: str
    env: dict[str, str]
    cpu_usage_s: float  # the server and its model runners (child processes)
    cgroup_rel: str  # the cgroup holding its CPU quota (v1: cpu controller; v2: unified)
    can_limit: bool
    limit_note: str  # why it can or cannot be limited safely
    cpu_limit_cores: float | None = None


def check_url(url: str) -> str:
    """Normalise a base URL ("http://127.0.0.1:11434"); ValueError on anything else."""
    p = urllib.parse.urlsplit(url.strip())
    if p.scheme not in ("http", "https") or not p.hostname:
        raise ValueError(f"expected an http(s) URL such as http://127.0.0.1:11434, not {url!r}")
    return f"{p.scheme}://{p.netloc}{p.path.rstrip('/')}"
