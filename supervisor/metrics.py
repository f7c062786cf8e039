"""Prometheus exposition: a custom collector that yields fresh metric families from the
latest tick on every scrape (a container that disappears leaves no stale series; no
Docker call on the scrape thread). Long-lived Counters only for the daemon's own counts.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from . import __version__

if TYPE_CHECKING:  # pragma: no cover
    from .daemon import Daemon

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class SupervisorCollector:
    def __init__(self, daemon: "Daemon"):
        self.d = daemon

    def collect(self) -> Iterable[Metric]:
        d = self.d
        up = GaugeMetricFamily("resource_supervisor_docker_engine_up",
                               "1 when the Docker engine answers, 0 when unreachable")
        up.add_metric([], 1.0 if d.inventory.engine_up else 0.0)
        yield up
        info = GaugeMetricFamily("resource_supervisor_build_info", "Build information",
                                 labels=["version"])
        info.add_metric([__version__], 1.0)
        yield info
        tick = d.last_tick
        if tick is None:
            return
        h = tick.snapshot.host
        mem = GaugeMetricFamily("resource_supervisor_host_memory_bytes",
                                "Host memory by kind", labels=["kind"])
        mem.add_metric(["total"], h.memory_total_bytes)
        mem.add_metric(["available"], h.memory_available_bytes)
        yield mem
        for comp in d.components:
            yield from comp.collect(tick)


class _Handler(BaseHTTPRequestHandler):
    server: "MetricsServer"

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            body = generate_latest(self.server.registry)
            self._send(200, body, CONTENT_TYPE)
        elif path == "/health":
            h = self.server.health()
            self._send(200 if h.get("loop_alive") else 503, json.dumps(h).encode(),
                       "application/json")
        else:
            self._send(404, b"not found: try /metrics or /health\n", "text/plain")

    def _send(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args) -> None:  # quiet: scrapes are not news
        pass


class MetricsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, listen: str, registry: CollectorRegistry, health):
        host, _, port = listen.rpartition(":")
        self.registry = registry
        self.health = health
        super().__init__((host.strip("[]"), int(port)), _Handler)

    def start(self) -> threading.Thread:
        t = threading.Thread(target=self.serve_forever, name="metrics", daemon=True)
        t.start()
        return t


def make_registry(daemon: "Daemon") -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(SupervisorCollector(daemon))
    return reg
