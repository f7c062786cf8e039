"""Placement's executor: brings one container's Docker resources to what the plan decided
(``policy.placement.Desired``), through the Docker API so ``docker inspect`` tells the
truth, after re-checking the container and the memory floor against a fresh read.

Two rules of issue 13 live here, where the engine is called:

- CPU (cpuset, quota) and memory go to the engine as two separate update calls. On cgroup
  v1 runc writes the cpuset first and only then the memory limit; when the kernel refuses
  the memory limit (below usage) the call fails, Docker puts its old values back, and the
  kernel is left on the new cores while ``docker inspect`` shows the old ones (a cpuset
  half applied). Apart, a refusal of one call leaves the other's values true in both
  views: the CPU call carries no memory change and the memory call no cpuset change.
- A refused update is followed by a fresh read of the container. While a refused update
  is in flight Docker reports the refused values (it sets them, asks the runtime, and
  puts the old ones back when the runtime fails); an event handled in that window caches
  them in the inventory. The read after the failure replaces them (the inventory keeps
  the later read: ``Inventory.refresh_one``), so status and the next plan see the truth.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from supervisor.act.recheck import recheck
from supervisor.model import rules
from supervisor.model.actions import Action, Outcome
from supervisor.model.errors import CgroupError, EngineRefused
from supervisor.model.units import format_bytes
from supervisor.policy.placement import Desired, PlacementMemory
from supervisor.policy.placement_diff import (MEMORY_FIELDS, resources_of, split_update,
                                              update_kwargs, writes_new_limit)

if TYPE_CHECKING:  # pragma: no cover
    from supervisor.act.component import Context
    from supervisor.model.snapshot import ContainerInfo

log = logging.getLogger(__name__)


def fresh_working_set(ctx: "Context", info: "ContainerInfo", planned_bytes: int) -> tuple[int, str]:
    """The container's working set now, from its cgroup (~0.1 ms), and where it came
    from; the plan's (the last snapshot's) when the cgroup cannot be read."""
    try:
        loc = ctx.cgroups.locate(info.id, info.pid, info.cgroup_parent)
        return ctx.cgroups.read_usage(loc).memory_working_set_bytes, "cgroup"
    except CgroupError:
        return planned_bytes, "last sample"


def kernel_view(ctx: "Context", info: "ContainerInfo") -> dict[str, Any]:
    """What the kernel holds for the container (its cgroup files), next to Docker's view
    in the journal after a refused update; {} when the cgroup cannot be read."""
    try:
        s = ctx.cgroups.read_stats(ctx.cgroups.locate(info.id, info.pid, info.cgroup_parent),
                                   with_pressure=False)
    except CgroupError:
        return {}
    return {"cpuset_cpus": s.cpuset_cpus, "memory_limit_bytes": s.memory_limit_bytes or 0}


def place(ctx: "Context", memory: PlacementMemory, action: Action) -> Outcome:
    """Execute one "place" action."""
    # Re-inspect first: the plan saw the inventory's view, which may be a moment old.
    # A limit raised (or removed) after OOM kills is written while the container waits
    # to restart too: Docker keeps it for the next start.
    info, refused = recheck(ctx, action.target, states=(
        ("running", "restarting") if action.params.get("oom") else ("running",)))
    if info is None:
        return refused
    d = Desired.from_params(action.params)
    swap = memory.swap_limit_supported
    kw = update_kwargs(info, d, swap_limit_supported=swap)
    if not kw:
        return Outcome(ok=True, skipped=True, detail="already in place",
                       before=resources_of(info), after=resources_of(info))
    cpu_kw, mem_kw = split_update(kw)
    notes: list[str] = []
    if writes_new_limit(info, mem_kw):
        # The floor once more, against the container's use now: it may have grown since
        # the snapshot the plan was made from (rules.limit_is_safe).
        headroom = ctx.get_config().settings.history.headroom
        ws, src = fresh_working_set(ctx, info, int(action.params.get("working_set_bytes") or 0))
        if not rules.limit_is_safe(mem_kw["mem_limit"], ws, headroom):
            notes.append(
                f"memory limit {format_bytes(mem_kw['mem_limit'])} not written: the container "
                f"uses {format_bytes(ws)} now ({src}), and a limit may not be below "
                f"{format_bytes(rules.memory_floor_bytes(ws, headroom))} (working set + "
                f"{headroom:.0%})")
            mem_kw = {}
    if not cpu_kw and not mem_kw:
        return Outcome(ok=False, skipped=True, detail="; ".join(notes),
                       before=resources_of(info), after=resources_of(info))
    applied, refusals = [], []
    # CPU first, memory second, as two calls (module docstring; issue 13).
    for part in (cpu_kw, mem_kw):
        if not part:
            continue
        try:
            ctx.engine.update(info.id, **part)
            applied += sorted(part)
        except EngineRefused as e:
            refusals.append(str(e))
    after = ctx.inventory.refresh_one(info.id) or info
    left = update_kwargs(after, d, swap_limit_supported=swap)
    if not refusals and not notes and set(left) == MEMORY_FIELDS and \
            after.memory_limit_bytes == d.memory_limit_bytes and \
            after.memory_reservation_bytes == d.memory_reservation_bytes:
        # The engine took the limit but not the swap limit: this kernel has no swap
        # accounting (cgroup v1 without swapaccount=1). Stop comparing it, or every
        # reconcile would "repair" it again.
        memory.swap_limit_supported = False
        log.warning("the engine does not keep swap limits here (no swap accounting); "
                    "swap limits are no longer compared")
        left = {}
    parts = ["applied " + ", ".join(applied)] if applied else []
    parts += [f"refused: {r}" for r in refusals] + notes
    after_row = resources_of(after)
    if refusals:
        after_row["kernel"] = kernel_view(ctx, after)
    if left:
        parts.append("still differing after the update: " + ", ".join(sorted(left)))
    # A memory limit held back by the floor is no failure (nothing was refused): the next
    # plan asks again from the container's use then.
    return Outcome(ok=not left and not refusals, detail="; ".join(parts),
                   skipped=bool(notes) and not refusals,
                   before=resources_of(info), after=after_row)
