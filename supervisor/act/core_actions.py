"""Executors shared by every component: ``alert`` (journal + log + metric, nothing else)
and ``stop`` (the last rung of any ladder). ``stop`` asks the one re-check just before
acting (act/recheck.py): the container must still exist, still be running, and be of a
class the rule book lets be stopped (never protected, never infrastructure)."""

from __future__ import annotations

from typing import Callable

from supervisor.model.actions import Action, Outcome
from supervisor.act.component import Component, Context
from supervisor.act.recheck import recheck


class CoreActions(Component):
    name = "core"

    def executors(self) -> dict[str, Callable[[Action], Outcome]]:
        return {"alert": self._alert, "stop": self._stop}

    def _alert(self, action: Action) -> Outcome:
        return Outcome(ok=True, detail=action.reason)

    def _stop(self, action: Action) -> Outcome:
        info, refused = recheck(self.ctx, action.target, "stop")
        if refused is not None:
            return refused
        timeout = int(action.params.get("timeout_s", 10))
        self.ctx.engine.stop(info.id, timeout_s=timeout)
        # The engine answers 304 "not modified" (which the SDK does not raise) for a
        # container caught between states: believe inspect, not the call's return.
        after = self.ctx.inventory.refresh_one(info.id)
        state = after.state if after else "removed"
        if state in ("running", "restarting"):
            return Outcome(ok=False, detail=f"stop returned but the container is {state}",
                           before={"state": "running"}, after={"state": state})
        return Outcome(ok=True, detail="stopped", before={"state": "running"},
                       after={"state": state})


def make_core(ctx: Context) -> CoreActions:
    return CoreActions(ctx)
