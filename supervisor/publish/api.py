"""The daemon's own control-API routes (components add theirs through ``routes()``).

GET (root or the read group):  /status  /health  /journal  /plan  /audit
POST (root only):              /reload  /apply

The reads answer from the latest pass's report; what a report cannot answer (the
journal's history, a plan, a reload, a pass that acts) the runtime hands in as plain
callables. Each route declares the parameters it accepts (``control.Param``); the
server refuses anything else with a 400 before the handler runs.
"""

from __future__ import annotations

from typing import Any, Callable

from supervisor.model.snapshot import LIVE_STATES
from supervisor.policy.audit import audit_container, sort_findings
from supervisor.publish.control import ApiError, Param
from supervisor.publish.report import Report
from supervisor.publish.status import build_health, build_status

Route = tuple[Callable[[dict], tuple[int, dict]], dict[str, Param]]
# (limit, after seq, kinds) -> journal rows, newest last
JournalRead = Callable[[int, int, list[str]], list[dict[str, Any]]]


def audit_report(r: Report) -> dict[str, Any]:
    """GET /audit: the rule findings of the live managed containers of the report."""
    if r.snapshot is None:
        raise ApiError(503, "no snapshot yet: the daemon is starting")
    findings, audited = [], []
    # The memory limits placement gave (Rule 1.1 judges what the owner declared).
    given = (r.sections.get("placement") or {}).get("limits_given") or {}
    for c in r.snapshot.containers:
        if not c.managed or c.info.state not in LIVE_STATES:
            continue
        audited.append(c.info.name)
        findings += audit_container(c.info, r.cfg, given.get(c.info.id))
    return {"audited": sorted(audited),
            "findings": [f.to_dict() for f in sort_findings(findings)]}


def core_routes(get_report: Callable[[], Report], *, journal: JournalRead,
                plan: Callable[[], dict[str, Any]],
                reload: Callable[[], tuple[bool, str]],
                apply: Callable[[], list[dict[str, Any]]]) -> dict[tuple[str, str], Route]:
    def journal_route(body: dict) -> tuple[int, dict]:
        kinds = [body["kind"]] if body["kind"] else []
        return 200, {"entries": journal(body["limit"], body["after"], kinds)}

    def reload_route(body: dict) -> tuple[int, dict]:
        ok, msg = reload()
        return (200, {"message": msg}) if ok else (422, {"error": msg})

    return {
        ("GET", "/status"): (lambda body: (200, build_status(get_report())), {}),
        ("GET", "/health"): (lambda body: (200, build_health(get_report())), {}),
        ("GET", "/journal"): (journal_route, {"limit": Param(int, default=50, min=1, max=10000),
                                              "after": Param(int, default=0, min=0),
                                              "kind": Param(str, default="")}),
        ("GET", "/plan"): (lambda body: (200, plan()), {}),
        ("GET", "/audit"): (lambda body: (200, audit_report(get_report())), {}),
        ("POST", "/reload"): (reload_route, {}),
        ("POST", "/apply"): (lambda body: (200, {"results": apply()}), {}),
    }
