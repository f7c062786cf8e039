"""FakeOllama: a stand-in for Ollama's HTTP server in tests (there is no Ollama package to
install here). It follows the request and response shapes of Ollama's docs/api.md and the
scheduler behaviour the governor relies on:

- ``GET /api/ps`` -> ``{"models": [{name, model, size, digest, details{...}, expires_at,
  size_vram, context_length}]}``.
- ``expires_at`` is set when a model's last request *finishes* (finish time + keep_alive).
  While a model's first request is still running Ollama has no expiry yet and reports
  now + keep_alive, a value that moves with every call.
- ``POST /api/generate`` with a prompt: a (fake) generation that takes ``gen_s`` seconds;
  ``{"model", "keep_alive": 0}`` without a prompt unloads and answers
  ``{"model", "created_at", "response": "", "done": true, "done_reason": "unload"}``
  (a model still running a request is unloaded when that request ends).
- More requests in flight than ``num_parallel + max_queue`` -> 503, as a full
  ``OLLAMA_MAX_QUEUE`` does.

Listens on 127.0.0.1 on a free port; records every request for assertions.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).astimezone().isoformat(timespec="microseconds")


class _Model:
    def __init__(self, name: str, size: int, keep_alive_s: float):
        self.name = name
        self.size = size
        self.keep_alive_s = keep_alive_s
        self.expires_at: float | None = None  # None: loaded, no request finished yet
        self.active = 0
        self.unload_when_idle = False


class FakeOllama:
    def __init__(self, gen_s: float = 0.2, num_parallel: int = 2, max_queue: int = 512):
        self.gen_s = gen_s
        self.num_parallel = num_parallel
        self.max_queue = max_queue
        self.lock = threading.Lock()
        self.models: dict[str, _Model] = {}
        self.requests: list[dict] = []  # {"method", "path", "body", "status"}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt, *args):  # quiet
                pass

            def _body(self) -> dict:
                n = int(self.headers.get("Content-Length") or 0)
                if not n:
                    return {}
                try:
                    return json.loads(self.rfile.read(n))
                except ValueError:
                    return {"_invalid": True}

            def _send(self, code: int, obj: dict) -> None:
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):  # noqa: N802
                code, obj = fake._get(self.path)
                fake._record("GET", self.path, None, code)
                self._send(code, obj)

            def do_POST(self):  # noqa: N802
                body = self._body()
                code, obj = fake._post(self.path, body)
                fake._record("POST", self.path, body, code)
                self._send(code, obj)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="fake-ollama",
                                        daemon=True)

    # ------------------------------------------------------------------ control

    def start(self) -> "FakeOllama":
        self._thread.start()
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def load(self, name: str, size: int = 2_000_000_000, keep_alive_s: float = 300.0) -> None:
        """A model that was loaded by a request that has finished (expiry set)."""
        with self.lock:
            m = _Model(name, size, keep_alive_s)
            m.expires_at = time.time() + keep_alive_s
            self.models[name] = m

    def unload_all(self) -> None:
        with self.lock:
            self.models.clear()

    def loaded(self) -> list[str]:
        with self.lock:
            return sorted(self.models)

    def unload_requests(self) -> list[str]:
        """Models named in a request carrying keep_alive 0."""
        with self.lock:
            return [r["body"].get("model") for r in self.requests
                    if r["method"] == "POST" and r["path"] == "/api/generate"
                    and isinstance(r["body"], dict) and r["body"].get("keep_alive") == 0]

    def _record(self, method, path, body, code) -> None:
        with self.lock:
            self.requests.append({"method": method, "path": path, "body": body, "status": code})

    # ------------------------------------------------------------------ API

    def _get(self, path: str) -> tuple[int, dict]:
        if path == "/api/ps":
            now = time.time()
            with self.lock:
                models = []
                for m in self.models.values():
                    exp = m.expires_at if m.expires_at is not None else now + m.keep_alive_s
                    models.append({
                        "name": m.name, "model": m.name, "size": m.size,
                        "digest": f"{abs(hash(m.name)):064x}"[:64],
                        "details": {"parent_model": "", "format": "gguf", "family": "llama",
                                    "families": ["llama"], "parameter_size": "1B",
                                    "quantization_level": "Q4_0"},
                        "expires_at": _rfc3339(exp), "size_vram": 0, "context_length": 4096})
            return 200, {"models": models}
        if path == "/api/version":
            return 200, {"version": "0.0.0-fake"}
        return 404, {"error": f"not found: {path}"}

    def _post(self, path: str, body: dict) -> tuple[int, dict]:
        if path != "/api/generate":
            return 404, {"error": f"not found: {path}"}
        name = body.get("model")
        if not name or body.get("_invalid"):
            return 400, {"error": "model is required"}
        created = datetime.now(timezone.utc).isoformat()
        if not body.get("prompt") and body.get("keep_alive") == 0:
            with self.lock:
                m = self.models.get(name)
                if m is not None:
                    if m.active:
                        m.unload_when_idle = True
                    else:
                        del self.models[name]
            return 200, {"model": name, "created_at": created, "response": "", "done": True,
                         "done_reason": "unload"}
        with self.lock:
            if sum(m.active for m in self.models.values()) >= self.num_parallel + self.max_queue:
                return 503, {"error": "server busy, please try again.  maximum pending requests exceeded"}
            m = self.models.get(name)
            if m is None:
                m = self.models[name] = _Model(name, 2_000_000_000, 300.0)
            m.active += 1
        if body.get("prompt"):
            time.sleep(self.gen_s)
        with self.lock:
            m.active -= 1
            if m.active == 0:
                m.expires_at = time.time() + m.keep_alive_s
                if m.unload_when_idle:
                    self.models.pop(name, None)
        return 200, {"model": name, "created_at": created,
                     "response": "fake" if body.get("prompt") else "", "done": True,
                     "done_reason": "stop" if body.get("prompt") else "load"}


def keep_busy(url: str, model: str, stop: threading.Event, timeout_s: float = 5.0) -> threading.Thread:
    """A client that sends one generation after another to ``model`` until ``stop``."""
    import urllib.request

    def run():
        while not stop.is_set():
            req = urllib.request.Request(url + "/api/generate", method="POST",
                                         data=json.dumps({"model": model, "prompt": "hi",
                                                          "stream": False}).encode(),
                                         headers={"Content-Type": "application/json"})
            try:
                urllib.request.urlopen(req, timeout=timeout_s).read()
            except OSError:
                time.sleep(0.05)
    t = threading.Thread(target=run, name=f"busy-{model}", daemon=True)
    t.start()
    return t

