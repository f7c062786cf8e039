"""lab agent: the small HTTP service of the ``lab/agent`` test image.

A stand-in for the Python agents the supervisor keeps in line: it answers HTTP on
127.0.0.1 inside its container's own network namespace and behaves in one of four ways,
chosen at start (``AGENT_BEHAVIOUR``) and switchable while it runs
(``POST /behaviour?mode=...``):

- ``idle``     nothing between requests;
- ``steady``   ``AGENT_STEADY_MS`` ms of CPU every second;
- ``bursty``   ``AGENT_BURST_MS`` ms of CPU every ``AGENT_BURST_EVERY_S`` seconds;
- ``leaking``  allocates ``AGENT_LEAK_MB_PER_S`` MiB a second (pages touched, so they are
  resident and charged to the container's memory cgroup) and holds it, up to
  ``AGENT_LEAK_MAX_MB``. Like a real leak the memory stays held after a switch to another
  behaviour; ``POST /release`` frees it.

Routes: ``GET /health`` (200 ``ok``), ``GET /metrics`` (Prometheus text format),
``GET /`` (a small JSON answer), ``GET|POST /behaviour``, ``POST /release``,
``GET /bytes?n=N`` (N bytes of body, a client with data to fetch),
``GET /slow?seconds=S&bytes=N`` (N bytes spread over S seconds, data in flight) and
``GET /work?ms=N`` (N ms of CPU in the handler, then a small answer: a request whose
latency shows CPU contention).

``AGENT_WARM_MB`` (default 0): memory taken and held from the start (a warm cache, part of
what the service needs to run; ``/release`` leaves it).

Listens on ``AGENT_BIND``:``AGENT_PORT`` (default 127.0.0.1:10210). Standard library only.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

MIB = 1 << 20
PAGE_BYTES = 4096
BEHAVIOURS = ("idle", "steady", "bursty", "leaking")
# /metrics counts requests by path; anything else is "other" so a client cannot grow the
# label set without bound.
KNOWN_PATHS = ("/", "/health", "/metrics", "/behaviour", "/release", "/bytes", "/slow", "/work")
MAX_WORK_MS = 10_000
MAX_BODY_BYTES = 64 * MIB


def env_number(name: str, default: float, minimum: float = 0.0) -> float:
    raw = os.environ.get(name, "")
    if raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(f"lab-agent: {name}={raw!r} is not a number") from None
    if value < minimum:
        raise SystemExit(f"lab-agent: {name}={raw!r} is below {minimum}")
    return value


def touched(n_bytes: int) -> bytearray:
    """n_bytes of memory with every page written, so the kernel really backs (and charges)
    it. CPython's bytearray(n) zero-fills already; writing each page says so explicitly
    (bytes(n), from calloc, would stay untouched zero pages)."""
    block = bytearray(n_bytes)
    block[::PAGE_BYTES] = b"\x01" * len(range(0, n_bytes, PAGE_BYTES))
    return block


class Agent:
    """The behaviours and the counters /metrics shows; one worker thread runs the
    behaviour, the HTTP threads only read and switch it."""

    def __init__(self, behaviour: str, steady_ms: float, burst_ms: float, burst_every_s: float,
                 leak_mib_per_s: float, leak_max_mib: float):
        if behaviour not in BEHAVIOURS:
            raise SystemExit(f"lab-agent: AGENT_BEHAVIOUR={behaviour!r}: one of {', '.join(BEHAVIOURS)}")
        self.steady_ms = steady_ms
        self.burst_ms = burst_ms
        self.burst_every_s = burst_every_s
        self.leak_bytes_per_s = int(leak_mib_per_s * MIB)
        self.leak_max_bytes = int(leak_max_mib * MIB)
        self.started = time.time()
        self.lock = threading.Lock()
        self.mode = behaviour
        self.held: list[bytearray] = []
        self.held_bytes = 0
        self.burned_s = 0.0
        self.requests: dict[str, int] = {p: 0 for p in KNOWN_PATHS + ("other",)}
        self.switches = 0
        self._changed = threading.Event()
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._run, name="behaviour", daemon=True)

    # ------------------------------------------------------------------ control

    def start(self) -> None:
        self._worker.start()

    def stop(self) -> None:
        self._stop.set()
        self._changed.set()

    def set_mode(self, mode: str) -> bool:
        if mode not in BEHAVIOURS:
            return False
        with self.lock:
            if mode != self.mode:
                self.switches += 1
            self.mode = mode
        self._changed.set()
        return True

    def release(self) -> int:
        with self.lock:
            freed = self.held_bytes
            self.held = []
            self.held_bytes = 0
        return freed

    def count(self, path: str) -> None:
        key = path if path in self.requests else "other"
        with self.lock:
            self.requests[key] += 1

    # ------------------------------------------------------------------ behaviours

    def _run(self) -> None:
        while not self._stop.is_set():
            # clear before reading the mode: a switch after this point either is read
            # now or ends the wait below at once
            self._changed.clear()
            mode = self.mode
            if mode == "idle":
                self._changed.wait()
            elif mode == "steady":
                t0 = time.monotonic()
                self._burn(self.steady_ms / 1000.0)
                self._changed.wait(max(0.0, 1.0 - (time.monotonic() - t0)))
            elif mode == "bursty":
                self._burn(self.burst_ms / 1000.0)
                self._changed.wait(self.burst_every_s)
            else:  # leaking
                self._leak_one_second()
                self._changed.wait(1.0)

    def _burn(self, cpu_s: float) -> None:
        """Spin until this thread has used cpu_s seconds of CPU (a throttled container takes
        longer in wall time, as a real one would); a switch or stop ends it early."""
        start = time.thread_time()
        while time.thread_time() - start < cpu_s and not self._changed.is_set():
            for _ in range(20000):
                pass
        with self.lock:
            self.burned_s += time.thread_time() - start

    def _leak_one_second(self) -> None:
        with self.lock:
            room = self.leak_max_bytes - self.held_bytes
        step = min(self.leak_bytes_per_s, room)
        if step <= 0:
            return
        block = touched(step)
        with self.lock:
            self.held.append(block)
            self.held_bytes += step

    # ------------------------------------------------------------------ views

    def summary(self) -> dict:
        with self.lock:
            return {"service": "lab-agent", "behaviour": self.mode, "held_bytes": self.held_bytes,
                    "uptime_s": round(time.time() - self.started, 3),
                    "requests": sum(self.requests.values())}

    def metrics(self) -> str:
        t = os.times()
        with self.lock:
            lines = [
                "# HELP lab_agent_requests_total HTTP requests answered, by path.",
                "# TYPE lab_agent_requests_total counter",
            ]
            lines += [f'lab_agent_requests_total{{path="{p}"}} {n}' for p, n in self.requests.items()]
            lines += [
                "# HELP lab_agent_held_bytes Memory the leaking behaviour holds.",
                "# TYPE lab_agent_held_bytes gauge",
                f"lab_agent_held_bytes {self.held_bytes}",
                "# HELP lab_agent_behaviour The running behaviour (1) and the others (0).",
                "# TYPE lab_agent_behaviour gauge",
            ]
            lines += [f'lab_agent_behaviour{{mode="{m}"}} {int(m == self.mode)}' for m in BEHAVIOURS]
            lines += [
                "# HELP lab_agent_behaviour_switches_total Behaviour changes since start.",
                "# TYPE lab_agent_behaviour_switches_total counter",
                f"lab_agent_behaviour_switches_total {self.switches}",
                "# HELP lab_agent_burned_cpu_seconds_total CPU time the behaviours spent.",
                "# TYPE lab_agent_burned_cpu_seconds_total counter",
                f"lab_agent_burned_cpu_seconds_total {self.burned_s:.6f}",
                "# HELP lab_agent_cpu_seconds_total CPU time of the whole process.",
                "# TYPE lab_agent_cpu_seconds_total counter",
                f"lab_agent_cpu_seconds_total {t.user + t.system:.6f}",
                "# HELP lab_agent_start_time_seconds Start time, seconds since the epoch.",
                "# TYPE lab_agent_start_time_seconds gauge",
                f"lab_agent_start_time_seconds {self.started:.3f}",
            ]
        return "\n".join(lines) + "\n"


def make_handler(agent: Agent, quiet: bool):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "lab-agent/1"

        def log_message(self, fmt, *args):
            if not quiet:
                sys.stderr.write("lab-agent: " + (fmt % args) + "\n")

        def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, code: int, obj: dict) -> None:
            self._send(code, (json.dumps(obj) + "\n").encode(), "application/json")

        def _route(self) -> tuple[str, dict]:
            url = urlsplit(self.path)
            agent.count(url.path)
            return url.path, {k: v[-1] for k, v in parse_qs(url.query).items()}

        def _drain(self) -> None:
            n = int(self.headers.get("Content-Length") or 0)
            if 0 < n <= MAX_BODY_BYTES:
                self.rfile.read(n)

        def do_HEAD(self):  # noqa: N802
            self.do_GET()

        def do_GET(self):  # noqa: N802
            path, q = self._route()
            if path == "/health":
                self._send(200, b"ok\n")
            elif path == "/metrics":
                self._send(200, agent.metrics().encode(), "text/plain; version=0.0.4; charset=utf-8")
            elif path == "/":
                self._json(200, agent.summary())
            elif path == "/behaviour":
                self._json(200, {"behaviour": agent.mode})
            elif path == "/bytes":
                n = self._int(q, "n", 1024)
                if n is not None:
                    self._send(200, b"x" * n, "application/octet-stream")
            elif path == "/slow":
                self._slow(q)
            elif path == "/work":
                ms = self._int(q, "ms", 10)
                if ms is not None:
                    cpu_s = min(ms, MAX_WORK_MS) / 1000.0
                    start = time.thread_time()
                    while time.thread_time() - start < cpu_s:
                        for _ in range(2000):
                            pass
                    self._json(200, {"worked_ms": round((time.thread_time() - start) * 1000, 3)})
            else:
                self._json(404, {"error": f"not found: {path}"})

        def do_POST(self):  # noqa: N802
            self._drain()
            path, q = self._route()
            if path == "/behaviour":
                mode = q.get("mode", "")
                if agent.set_mode(mode):
                    self._json(200, {"behaviour": mode})
                else:
                    self._json(400, {"error": f"mode must be one of {', '.join(BEHAVIOURS)}",
                                     "got": mode})
            elif path == "/release":
                self._json(200, {"released_bytes": agent.release()})
            else:
                self._json(404, {"error": f"not found: {path}"})

        def _int(self, q: dict, key: str, default: int) -> int | None:
            try:
                n = int(q.get(key, default))
            except ValueError:
                n = -1
            if not 0 <= n <= MAX_BODY_BYTES:
                self._json(400, {"error": f"{key} must be 0..{MAX_BODY_BYTES}"})
                return None
            return n

        def _slow(self, q: dict) -> None:
            """n bytes in 20 pieces over `seconds`: a response still in flight."""
            n = self._int(q, "bytes", 20)
            if n is None:
                return
            try:
                seconds = min(max(float(q.get("seconds", 2.0)), 0.0), 600.0)
            except ValueError:
                self._json(400, {"error": "seconds must be a number"})
                return
            pieces = 20
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(n))
            self.end_headers()
            if self.command == "HEAD":
                return
            sent = 0
            for i in range(pieces):
                size = n * (i + 1) // pieces - sent
                if size:
                    self.wfile.write(b"x" * size)
                    self.wfile.flush()
                    sent += size
                if i + 1 < pieces:
                    time.sleep(seconds / pieces)

    return Handler


def main() -> int:
    port = int(env_number("AGENT_PORT", 10210, 1))
    bind = os.environ.get("AGENT_BIND", "127.0.0.1")
    agent = Agent(
        behaviour=os.environ.get("AGENT_BEHAVIOUR", "idle"),
        steady_ms=env_number("AGENT_STEADY_MS", 50),
        burst_ms=env_number("AGENT_BURST_MS", 1500),
        burst_every_s=env_number("AGENT_BURST_EVERY_S", 10, 0.01),
        leak_mib_per_s=env_number("AGENT_LEAK_MB_PER_S", 8),
        leak_max_mib=env_number("AGENT_LEAK_MAX_MB", 256),
    )
    # the warm cache is held by main() for the life of the process
    warm = touched(int(env_number("AGENT_WARM_MB", 0) * MIB))
    server = ThreadingHTTPServer((bind, port), make_handler(agent, os.environ.get("AGENT_LOG") != "1"))
    server.daemon_threads = True
    # As PID 1 of its container the process gets no default action for SIGTERM: without a
    # handler `docker stop` would wait its full timeout and then kill.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    agent.start()
    print(f"lab-agent listening on {bind}:{port} (behaviour {agent.mode})", flush=True)
    try:
        # idle means idle: no poll wake-ups (SIGTERM interrupts the wait and exits)
        server.serve_forever(poll_interval=3600)
    finally:
        agent.stop()
        server.server_close()
        del warm
    return 0


if __name__ == "__main__":
    sys.exit(main())
