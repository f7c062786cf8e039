"""lab ollama: the HTTP server of the ``lab/ollama`` test image.

There is no Ollama package to install and nothing can be pulled, so this serves the
request and response shapes of Ollama's docs/api.md (as tests/fake_ollama.py does for the
unit-level tests) from inside a real container, and does real work: a generation burns CPU
for a time proportional to its length, and a loaded model holds resident memory, so the
container's cgroup sees what the supervisor's Ollama governor acts on.

- ``GET /`` -> ``Ollama is running``; ``GET /api/version`` -> ``{"version"}``.
- ``GET /api/tags`` -> ``{"models": [{name, model, modified_at, size, digest, details}]}``:
  the catalogue (``LAB_OLLAMA_MODELS``, comma-separated names).
- ``GET /api/ps`` -> ``{"models": [{name, model, size, digest, details, expires_at,
  size_vram, context_length}]}``: the loaded models. ``expires_at`` is set when a model's
  last request finishes (finish + keep_alive); while its first request still runs Ollama
  has no expiry yet and reports now + keep_alive. A negative keep_alive never expires.
- ``POST /api/generate`` ``{"model", "prompt", "stream", "keep_alive", "options":
  {"num_predict"}}``: loads the model if needed (``load_duration``), then produces
  ``num_predict`` tokens, or about one per four characters of the prompt (8..256), each
  burning ``LAB_OLLAMA_MS_PER_TOKEN`` ms of CPU. ``stream`` (default true, as Ollama)
  answers NDJSON chunks then a final ``done`` object; ``"stream": false`` one object with
  ``done_reason "stop"`` and the timing fields. Without a prompt it only loads
  (``done_reason "load"``); with ``keep_alive`` 0 and no prompt it unloads
  (``done_reason "unload"``; a model still running a request is unloaded when it ends).
- ``POST /api/chat``: the same with ``messages`` and a ``message`` in the answer.
- Unknown model -> 404; no model -> 400; more requests than ``OLLAMA_NUM_PARALLEL`` +
  ``OLLAMA_MAX_QUEUE`` -> 503, as a full queue does. Requests beyond ``OLLAMA_NUM_PARALLEL``
  wait their turn (clients waiting, as on a real server).
- Models unload by themselves when their keep_alive expires.

Listens on ``OLLAMA_HOST`` (default 127.0.0.1:11434). Standard library only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import sys
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

MIB = 1 << 20
PAGE_BYTES = 4096
FOREVER_S = 10**10  # what a negative keep_alive shows as expiry: centuries away
WORDS = ("the", "model", "answers", "slowly", "with", "real", "work", "on", "a", "core")
# nominal sizes reported for well-known names (bytes on disk in Ollama's library)
KNOWN_SIZES = {"llama3.2:1b": 1_321_098_329, "qwen2.5:0.5b": 397_821_319,
               "llama3.2:3b": 2_019_393_189}
DURATION_RE = re.compile(r"(-?\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).astimezone().isoformat(timespec="microseconds")


def parse_keep_alive(value, default_s: float) -> float:
    """keep_alive as Ollama takes it: a number of seconds, a Go duration ("5m", "1h30m",
    "300ms") or a numeric string; negative means forever. Raises ValueError otherwise."""
    if value is None or value == "":
        return default_s
    if isinstance(value, bool):
        raise ValueError(f"keep_alive: {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    parts = DURATION_RE.findall(body)
    if not parts or "".join(n + u for n, u in parts) != body:
        raise ValueError(f"keep_alive: {value!r} is not a duration")
    return sign * sum(float(n) * UNIT_S[u] for n, u in parts)


def touched(n_bytes: int) -> bytearray:
    """n_bytes with every page written, so they are resident and charged to the cgroup
    (as in lab/agent.py)."""
    block = bytearray(n_bytes)
    block[::PAGE_BYTES] = b"\x01" * len(range(0, n_bytes, PAGE_BYTES))
    return block


def burn(cpu_s: float) -> None:
    """Spin until this thread has used cpu_s seconds of CPU."""
    start = time.thread_time()
    while time.thread_time() - start < cpu_s:
        for _ in range(20000):
            pass


def details() -> dict:
    return {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
            "parameter_size": "1B", "quantization_level": "Q4_0"}


class Model:
    def __init__(self, name: str, size: int, keep_alive_s: float, resident_bytes: int):
        self.name = name
        self.size = size
        self.keep_alive_s = keep_alive_s
        self.expires_at: float | None = None  # None: loaded, no request finished yet
        self.active = 0
        self.unload_when_idle = False
        self.memory = touched(resident_bytes) if resident_bytes else bytearray()


class Server:
    def __init__(self, catalogue: list[str], keep_alive_s: float, num_parallel: int,
                 max_queue: int, ms_per_token: float, load_ms: float, resident_bytes: int):
        self.catalogue = catalogue
        self.keep_alive_s = keep_alive_s
        self.num_parallel = num_parallel
        self.max_queue = max_queue
        self.ms_per_token = ms_per_token
        self.load_ms = load_ms
        self.resident_bytes = resident_bytes
        self.modified_at = rfc3339(time.time())
        self.lock = threading.Lock()
        self.models: dict[str, Model] = {}
        self.in_flight = 0
        self.slots = threading.Semaphore(num_parallel)
        self._stop = threading.Event()
        self._expiry_changed = threading.Event()

    # ------------------------------------------------------------------ state

    def size_of(self, name: str) -> int:
        return KNOWN_SIZES.get(name, 1_000_000_000)

    def digest(self, name: str) -> str:
        return hashlib.sha256(name.encode()).hexdigest()

    def tags(self) -> dict:
        return {"models": [{"name": n, "model": n, "modified_at": self.modified_at,
                            "size": self.size_of(n), "digest": self.digest(n),
                            "details": details()} for n in self.catalogue]}

    def ps(self) -> dict:
        now = time.time()
        out = []
        with self.lock:
            for m in self.models.values():
                if m.keep_alive_s < 0:
                    exp = now + FOREVER_S
                elif m.expires_at is None:
                    exp = now + m.keep_alive_s
                else:
                    exp = m.expires_at
                out.append({"name": m.name, "model": m.name, "size": m.size,
                            "digest": self.digest(m.name), "details": details(),
                            "expires_at": rfc3339(exp), "size_vram": 0, "context_length": 4096})
        return {"models": out}

    def unload(self, name: str) -> None:
        with self.lock:
            m = self.models.get(name)
            if m is None:
                return
            if m.active:
                m.unload_when_idle = True
            else:
                del self.models[name]

    def reap(self) -> None:
        """Unload models whose keep_alive has run out (Ollama's scheduler does the same).
        Sleeps until the next expiry, or until a request changes one: an idle server with
        nothing loaded does not wake up."""
        while not self._stop.is_set():
            self._expiry_changed.clear()
            now = time.time()
            with self.lock:
                for name in [n for n, m in self.models.items()
                             if not m.active and m.keep_alive_s >= 0
                             and m.expires_at is not None and m.expires_at <= now]:
                    del self.models[name]
                pending = [m.expires_at for m in self.models.values()
                           if not m.active and m.keep_alive_s >= 0 and m.expires_at is not None]
            self._expiry_changed.wait(max(0.0, min(pending) - now) + 0.01 if pending else None)

    def stop(self) -> None:
        self._stop.set()
        self._expiry_changed.set()

    # ------------------------------------------------------------------ requests

    def admit(self) -> bool:
        with self.lock:
            if self.in_flight >= self.num_parallel + self.max_queue:
                return False
            self.in_flight += 1
            return True

    def leave(self) -> None:
        with self.lock:
            self.in_flight -= 1

    def acquire(self, name: str, keep_alive_s: float) -> tuple[Model, float]:
        """The model, loaded if it was not (seconds spent loading), marked active."""
        load_s = 0.0
        with self.lock:
            m = self.models.get(name)
            if m is not None:
                m.active += 1
                m.keep_alive_s = keep_alive_s
                m.unload_when_idle = False
                return m, 0.0
        t0 = time.monotonic()
        burn(self.load_ms / 1000.0)
        fresh = Model(name, self.size_of(name), keep_alive_s, self.resident_bytes)
        load_s = time.monotonic() - t0
        with self.lock:
            m = self.models.setdefault(name, fresh)
            m.active += 1
            m.keep_alive_s = keep_alive_s
            return m, load_s

    def release(self, m: Model) -> None:
        with self.lock:
            m.active -= 1
            if m.active == 0:
                m.expires_at = time.time() + m.keep_alive_s
                if m.unload_when_idle or m.keep_alive_s == 0:
                    self.models.pop(m.name, None)
        self._expiry_changed.set()

    def tokens_for(self, prompt: str, options: dict) -> int:
        n = options.get("num_predict") if isinstance(options, dict) else None
        if isinstance(n, int) and not isinstance(n, bool) and n > 0:
            return min(n, 4096)
        return max(8, min(256, len(prompt) // 4))


def make_handler(srv: Server, quiet: bool):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "lab-ollama/1"

        def log_message(self, fmt, *args):
            if not quiet:
                sys.stderr.write("lab-ollama: " + (fmt % args) + "\n")

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, code: int, obj: dict) -> None:
            self._send(code, json.dumps(obj).encode(), "application/json; charset=utf-8")

        def _body(self) -> dict | None:
            n = int(self.headers.get("Content-Length") or 0)
            if not n:
                return {}
            try:
                obj = json.loads(self.rfile.read(n))
            except ValueError:
                return None
            return obj if isinstance(obj, dict) else None

        def do_HEAD(self):  # noqa: N802
            self.do_GET()

        def do_GET(self):  # noqa: N802
            path = urlsplit(self.path).path
            if path == "/":
                self._send(200, b"Ollama is running", "text/plain; charset=utf-8")
            elif path == "/api/version":
                self._json(200, {"version": "0.0.0-lab"})
            elif path == "/api/tags":
                self._json(200, srv.tags())
            elif path == "/api/ps":
                self._json(200, srv.ps())
            else:
                self._json(404, {"error": f"not found: {path}"})

        def do_POST(self):  # noqa: N802
            path = urlsplit(self.path).path
            if path not in ("/api/generate", "/api/chat"):
                self._json(404, {"error": f"not found: {path}"})
                return
            body = self._body()
            if body is None:
                self._json(400, {"error": "invalid JSON body"})
                return
            self._model_call(path == "/api/chat", body)

        # -------------------------------------------------------------- generate/chat

        def _model_call(self, chat: bool, body: dict) -> None:
            name = body.get("model")
            if not name or not isinstance(name, str):
                self._json(400, {"error": "model is required"})
                return
            if name not in srv.catalogue:
                self._json(404, {"error": f'model "{name}" not found, try pulling it first'})
                return
            try:
                keep_alive_s = parse_keep_alive(body.get("keep_alive"), srv.keep_alive_s)
            except ValueError as e:
                self._json(400, {"error": str(e)})
                return
            if chat:
                msgs = body.get("messages") or []
                prompt = " ".join(str(m.get("content", "")) for m in msgs if isinstance(m, dict))
            else:
                prompt = str(body.get("prompt") or "")
            created = datetime.now(timezone.utc).isoformat()
            if not prompt and keep_alive_s == 0:
                srv.unload(name)
                self._json(200, self._final(chat, name, created, "", "unload", {}))
                return
            if not srv.admit():
                self._json(503, {"error": "server busy, please try again.  maximum pending requests exceeded"})
                return
            try:
                with srv.slots:
                    self._run(chat, body, name, prompt, keep_alive_s, created)
            finally:
                srv.leave()

        def _run(self, chat, body, name, prompt, keep_alive_s, created) -> None:
            t0 = time.monotonic()
            m, load_s = srv.acquire(name, keep_alive_s)
            try:
                if not prompt:
                    self._json(200, self._final(chat, name, created, "", "load",
                                                {"total_duration": int((time.monotonic() - t0) * 1e9),
                                                 "load_duration": int(load_s * 1e9)}))
                    return
                n_tokens = srv.tokens_for(prompt, body.get("options") or {})
                stream = body.get("stream", True) is not False
                if stream:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/x-ndjson")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                t_eval = time.monotonic()
                words = []
                for i in range(n_tokens):
                    burn(srv.ms_per_token / 1000.0)
                    word = WORDS[i % len(WORDS)] + " "
                    words.append(word)
                    if stream and not self._chunk(self._piece(chat, name, word)):
                        return  # the client went away: Ollama cancels the generation too
                eval_s = time.monotonic() - t_eval
                stats = {"total_duration": int((time.monotonic() - t0) * 1e9),
                         "load_duration": int(load_s * 1e9),
                         "prompt_eval_count": len(prompt) // 4 + 1,
                         "prompt_eval_duration": 1_000_000,
                         "eval_count": n_tokens, "eval_duration": int(eval_s * 1e9)}
                text = "" if stream else "".join(words).rstrip()
                final = self._final(chat, name, created, text, "stop", stats)
                if stream:
                    if self._chunk(final):
                        self.wfile.write(b"0\r\n\r\n")
                else:
                    self._json(200, final)
            finally:
                srv.release(m)

        def _chunk(self, obj: dict) -> bool:
            """One NDJSON line as one HTTP chunk; False when the client has gone."""
            data = json.dumps(obj).encode() + b"\n"
            try:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True
                return False
            return True

        @staticmethod
        def _piece(chat: bool, name: str, word: str) -> dict:
            created = datetime.now(timezone.utc).isoformat()
            if chat:
                return {"model": name, "created_at": created,
                        "message": {"role": "assistant", "content": word}, "done": False}
            return {"model": name, "created_at": created, "response": word, "done": False}

        @staticmethod
        def _final(chat: bool, name: str, created: str, text: str, reason: str, stats: dict) -> dict:
            out = {"model": name, "created_at": created}
            if chat:
                out["message"] = {"role": "assistant", "content": text}
            else:
                out["response"] = text
            out.update({"done": True, "done_reason": reason})
            if not chat and reason == "stop":
                out["context"] = [1, 2, 3]
            out.update(stats)
            return out

    return Handler


def listen_address(value: str) -> tuple[str, int]:
    """OLLAMA_HOST as Ollama reads it: [scheme://]host[:port], port 11434 by default."""
    v = value.strip()
    if "://" in v:
        v = v.split("://", 1)[1]
    v = v.rstrip("/")
    host, _, port = v.rpartition(":") if ":" in v else (v, "", "11434")
    return (host or "127.0.0.1"), int(port or 11434)


def env_number(name: str, default: float, minimum: float = 0.0) -> float:
    raw = os.environ.get(name, "")
    if raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(f"lab-ollama: {name}={raw!r} is not a number") from None
    if value < minimum:
        raise SystemExit(f"lab-ollama: {name}={raw!r} is below {minimum}")
    return value


def main() -> int:
    host, port = listen_address(os.environ.get("OLLAMA_HOST", "127.0.0.1:11434"))
    try:
        keep_alive_s = parse_keep_alive(os.environ.get("OLLAMA_KEEP_ALIVE") or "5m", 300.0)
    except ValueError as e:
        raise SystemExit(f"lab-ollama: OLLAMA_KEEP_ALIVE: {e}") from None
    catalogue = [n.strip() for n in os.environ.get("LAB_OLLAMA_MODELS",
                                                   "llama3.2:1b,qwen2.5:0.5b").split(",") if n.strip()]
    srv = Server(catalogue=catalogue, keep_alive_s=keep_alive_s,
                 num_parallel=int(env_number("OLLAMA_NUM_PARALLEL", 1, 1)),
                 max_queue=int(env_number("OLLAMA_MAX_QUEUE", 512)),
                 ms_per_token=env_number("LAB_OLLAMA_MS_PER_TOKEN", 4),
                 load_ms=env_number("LAB_OLLAMA_LOAD_MS", 100),
                 resident_bytes=int(env_number("LAB_OLLAMA_RESIDENT_MB", 16) * MIB))
    server = ThreadingHTTPServer((host, port), make_handler(srv, os.environ.get("LAB_OLLAMA_LOG") != "1"))
    server.daemon_threads = True
    # PID 1 of its container: without a handler SIGTERM would be ignored
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    threading.Thread(target=srv.reap, name="keep-alive", daemon=True).start()
    print(f"lab-ollama listening on {host}:{port} (models: {', '.join(catalogue)})", flush=True)
    try:
        server.serve_forever(poll_interval=3600)  # no idle wake-ups; SIGTERM still exits
    finally:
        srv.stop()
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
