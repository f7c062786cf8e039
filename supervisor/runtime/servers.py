"""The daemon's two servers: /metrics + /health over HTTP, and the control API on its
unix socket. Both answer from the latest report (and the few calls the runtime hands
in: journal reads, plan, reload, apply); each component adds its own control routes."""

from __future__ import annotations

import logging
from typing import Callable, Sequence

from prometheus_client import CollectorRegistry

from supervisor.act.component import Component
from supervisor.model.config import Config
from supervisor.publish.api import JournalRead, core_routes
from supervisor.publish.control import ControlServer
from supervisor.publish.metrics import MetricsServer
from supervisor.publish.report import Report
from supervisor.publish.status import build_health

log = logging.getLogger("supervisor.daemon")


class Servers:
    def __init__(self, *, get_report: Callable[[], Report], registry: CollectorRegistry,
                 components: Sequence[Component], journal: JournalRead,
                 plan: Callable[[], dict], reload: Callable[[], tuple[bool, str]],
                 apply: Callable[[], list[dict]]):
        self.get_report = get_report
        self.registry = registry
        self.components = components
        self.routes = core_routes(get_report, journal=journal, plan=plan, reload=reload,
                                  apply=apply)
        self.metrics: MetricsServer | None = None
        self.control: ControlServer | None = None

    def start(self, cfg: Config) -> None:
        s = cfg.settings
        self.metrics = MetricsServer(s.metrics.listen, self.registry,
                                     lambda: build_health(self.get_report()))
        self.metrics.start()
        self.control = ControlServer(s.control.socket, s.control.read_group)
        for (method, path), (fn, params) in self.routes.items():
            self.control.add(method, path, fn, params)
        for comp in self.components:
            for (method, path), (fn, params) in comp.routes().items():
                self.control.add(method, path, fn, params)
        self.control.start()
        log.info("serving metrics on http://%s/metrics and control on %s",
                 s.metrics.listen, s.control.socket)

    def close(self) -> None:
        if self.control:
            self.control.close()
            self.control = None
        if self.metrics:
            self.metrics.shutdown()
            self.metrics.server_close()
            self.metrics = None
