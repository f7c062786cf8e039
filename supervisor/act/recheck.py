"""The one re-check just before acting on a container (the kubelet's "re-verify before
eviction"): every executor that changes a container asks ``recheck`` first, so a
container that vanished, stopped, changed class or became untouchable between the plan
and the act is left alone, for the same reasons everywhere."""

from __future__ import annotations

from typing import TYPE_CHECKING

from supervisor.model import rules
from supervisor.model.actions import Outcome
from supervisor.model.classify import classify

if TYPE_CHECKING:  # pragma: no cover
    from supervisor.act.component import Context
    from supervisor.model.snapshot import ContainerInfo


def recheck(ctx: "Context", cid: str, kind: str = "",
            states: tuple[str, ...] = ("running",)) -> "tuple[ContainerInfo | None, Outcome | None]":
    """The container as the engine sees it now, or why it may not be acted on: gone, not
    in one of ``states``, or of a class ``rules.refusal`` forbids ``kind`` on (any of
    throttle, reclaim, hibernate, stop; "" skips that check, e.g. for a wake)."""
    info = ctx.inventory.refresh_one(cid)
    if info is None:
        return None, Outcome(ok=False, skipped=True, detail="container no longer exists")
    if info.state not in states:
        return None, Outcome(ok=False, skipped=True,
                             detail=f"container is {info.state}, not {' or '.join(states)}")
    if kind:
        cfg = ctx.get_config()
        cls, _ = classify(info, cfg)
        why = rules.refusal(cfg.classes.get(cls), kind)
        if why:
            return None, Outcome(ok=False, skipped=True, detail=f"refused: {why}")
    return info, None
