"""A small client for Ollama's HTTP API (docs/api.md of the Ollama project): the two calls
the governor needs, ``GET /api/ps`` (models loaded in memory) and the unload request
``POST /api/generate {"model": NAME, "keep_alive": 0}`` (answered with
``"done_reason": "unload"``).

urllib with a timeout on every call. An Ollama that does not answer is not an error of
the daemon: the call raises ``OllamaUnavailable`` and the client backs off (1 s, 2 s, 4 s
... up to ``backoff_max_s``), refusing further calls without touching the network until
the wait is over, so a hung Ollama costs the loop nothing. A full queue
(``OLLAMA_MAX_QUEUE``, default 512) answers 503: ``OllamaBusy``.
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.error
import urllib.request
from collections import Counter
from datetime import datetime
from typing import Any, Callable

from supervisor.model.errors import SupervisorError
from supervisor.model.ollama import LoadedModel, check_url


class OllamaError(SupervisorError):
    """Ollama answered, but not as documented."""


class OllamaUnavailable(OllamaError):
    """Ollama did not answer (refused, timed out, or we are backing off)."""


class OllamaBusy(OllamaError):
    """503: Ollama's request queue is full."""


def parse_time(text: str) -> float | None:
    """RFC 3339 as Go writes it ("2024-06-04T14:38:31.83753-07:00", "...Z", up to 9
    fractional digits) -> Unix seconds."""
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except (ValueError, OverflowError, OSError):
        return None


def parse_ps(body: Any) -> list[LoadedModel]:
    """The /api/ps answer -> models. Raises OllamaError on a shape Ollama does not send."""
    if not isinstance(body, dict) or not isinstance(body.get("models", []), list):
        raise OllamaError(f"/api/ps: expected {{'models': [...]}}, got {str(body)[:80]!r}")
    out = []
    for m in body.get("models") or []:
        if not isinstance(m, dict) or not (m.get("name") or m.get("model")):
            raise OllamaError(f"/api/ps: model entry without a name: {str(m)[:80]!r}")
        name = str(m.get("name") or m.get("model"))
        try:
            out.append(LoadedModel(
                name=name, model=str(m.get("model") or name), size_bytes=int(m.get("size") or 0),
                digest=str(m.get("digest") or ""), expires_at=str(m.get("expires_at") or ""),
                expires_at_s=parse_time(m.get("expires_at") or ""),
                size_vram_bytes=int(m.get("size_vram") or 0),
                context_length=int(m.get("context_length") or 0),
                details=dict(m.get("details") or {})))
        except (TypeError, ValueError) as e:
            raise OllamaError(f"/api/ps: bad field in {name!r}: {e}") from None
    return out


class OllamaAPI:
    def __init__(self, base_url: str, timeout_s: float = 2.0, backoff_max_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic):
        self.base_url = check_url(base_url)
        self.timeout_s = timeout_s
        self.backoff_max_s = backoff_max_s
        self.clock = clock
        self.counts: Counter[str] = Counter()
        self.failures = 0  # consecutive
        self.last_error = ""
        self.retry_at = 0.0  # monotonic; no call before this while failing

    @property
    def backing_off(self) -> bool:
        return self.failures > 0 and self.clock() < self.retry_at

    def _failed(self, reason: str) -> OllamaUnavailable:
        self.failures += 1
        self.last_error = reason
        delay = min(self.backoff_max_s, 2.0 ** (self.failures - 1))
        self.retry_at = self.clock() + delay
        self.counts["unavailable"] += 1
        return OllamaUnavailable(f"{self.base_url}: {reason} (next try in {delay:.0f}s)")

    def _request(self, method: str, path: str, body: dict | None = None) -> Any:
        if self.backing_off:
            self.counts["skipped_backoff"] += 1
            raise OllamaUnavailable(f"{self.base_url}: not answering ({self.last_error}); "
                                    f"next try in {self.retry_at - self.clock():.1f}s")
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base_url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
        self.counts[f"{method} {path}"] += 1
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            # Ollama answered: not a reason to back off.
            self.failures = 0
            detail = ""
            with contextlib.suppress(ValueError, AttributeError, OSError):
                detail = json.loads(e.read() or b"{}").get("error", "")
            if e.code == 503:
                self.counts["busy"] += 1
                raise OllamaBusy(f"{method} {path}: 503 queue full {detail}".strip()) from None
            raise OllamaError(f"{method} {path}: HTTP {e.code} {detail}".strip()) from None
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            reason = getattr(e, "reason", None) or e
            raise self._failed(f"{method} {path}: {reason}") from None
        self.failures = 0
        self.last_error = ""
        try:
            return json.loads(raw or b"{}")
        except ValueError:
            raise OllamaError(f"{method} {path}: answer is not JSON: {raw[:60]!r}") from None

    def ps(self) -> list[LoadedModel]:
        """GET /api/ps: the models loaded in memory now."""
        return parse_ps(self._request("GET", "/api/ps"))

    def unload(self, model: str) -> dict[str, Any]:
        """Unload one model now (an empty prompt with keep_alive 0). A request still running
        on it finishes first: Ollama unloads when the model's last request ends."""
        body = self._request("POST", "/api/generate", {"model": model, "keep_alive": 0})
        if not isinstance(body, dict) or body.get("done_reason") != "unload":
            raise OllamaError(f"unload {model}: unexpected answer {str(body)[:100]!r}")
        return body
