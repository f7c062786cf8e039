"""The daemon's own control-API routes (components add theirs through ``routes()``).

GET (root or the read group):  /status  /health  /journal  /plan  /audit
POST (root only):              /reload  /apply

Each route declares the parameters it accepts (``control.Param``); the server refuses
anything else with a 400 before the handler runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from supervisor.policy.audit import audit_container, sort_findings
from supervisor.publish.control import ApiError, Param
from supervisor.model.snapshot import LIVE_STATES
from supervisor.publish.status import build_status

if TYPE_CHECKING:  # pragma: no cover
    from supervisor.runtime.daemon import Daemon

Route = tuple[Callable[[dict], tuple[int, dict]], dict[str, Param]]


def core_routes(d: "Daemon") -> dict[tuple[str, str], Route]:
    def status(body: dict) -> tuple[int, dict]:
        return 200, build_status(d)

    def health(body: dict) -> tuple[int, dict]:
        return 200, d.health()

    def journal(body: dict) -> tuple[int, dict]:
        kinds = [body["kind"]] if body["kind"] else []
        entries = d.journal.recent(body["limit"], body["after"], kinds)
        return 200, {"entries": entries}

    def plan(body: dict) -> tuple[int, dict]:
        return 200, d.plan_now()

    def audit(body: dict) -> tuple[int, dict]:
        tick = d.last_tick
        if tick is None:
            raise ApiError(503, "no snapshot yet: the daemon is starting")
        findings = []
        audited = []
        for c in tick.snapshot.containers:
            if not c.managed or c.info.state not in LIVE_STATES:
                continue
            audited.append(c.info.name)
            findings += audit_container(c.info, tick.cfg)
        return 200, {"audited": sorted(audited),
                     "findings": [f.to_dict() for f in sort_findings(findings)]}

    def reload(body: dict) -> tuple[int, dict]:
        ok, msg = d.reload()
        return (200, {"message": msg}) if ok else (422, {"error": msg})

    def apply(body: dict) -> tuple[int, dict]:
        _, results = d.run_once(reconcile=True, dry_run=False)
        return 200, {"results": [r.to_dict() for r in results]}

    return {
        ("GET", "/status"): (status, {}),
        ("GET", "/health"): (health, {}),
        ("GET", "/journal"): (journal, {"limit": Param(int, default=50, min=1, max=10000),
                                        "after": Param(int, default=0, min=0),
                                        "kind": Param(str, default="")}),
        ("GET", "/plan"): (plan, {}),
        ("GET", "/audit"): (audit, {}),
        ("POST", "/reload"): (reload, {}),
        ("POST", "/apply"): (apply, {}),
    }
