"""Executors shared by every component: ``alert`` (journal + log + metric, nothing else)
and ``stop`` (the last rung of any ladder). ``stop`` re-checks its target just before
acting: it must still exist, still be running, and not be of a protected class."""

from __future__ import annotations

from typing import Callable

from .actions import Action, Outcome
from .classify import classify
from .component import Component, Context


class CoreActions(Component):
    name = "core"

    def executors(self) -> dict[str, Callable[[Action], Outcome]]:
        return {"alert": self._alert, "stop": self._stop}

    def _alert(self, action: Action) -> Outcome:
        return Outcome(ok=True, detail=action.reason)

    def _stop(self, action: Action) -> Outcome:
        cfg = self.ctx.get_config()
        info = self.ctx.inventory.refresh_one(action.target)  # re-check just before acting
        if info is None:
            return Outcome(ok=False, skipped=True, detail="container no longer exists")
        if info.state != "running":
            return Outcome(ok=False, skipped=True, detail=f"container is {info.state}, not running")
        cls, _ = classify(info, cfg)
        klass = cfg.classes.get(cls)
        if klass is None or klass.protected:
            return Outcome(ok=False, skipped=True,
                           detail=f"refused: class {cls!r} is protected and is never stopped")
        timeout = int(action.params.get("timeout_s", 10))
        self.ctx.engine.stop(info.id, timeout_s=timeout)
        return Outcome(ok=True, detail="stopped", before={"state": "running"},
                       after={"state": "exited"})


def make_core(ctx: Context) -> CoreActions:
    return CoreActions(ctx)
