"""The ladder's hands: the executors of "throttle", "unthrottle" and "reclaim", which
keep the durable record of what a throttle replaced (``Throttle``, policy/ladder_state.py).
The decisions are policy/ladder.py's; this module only changes knobs (through Docker
where Docker owns the value, through CgroupFS where it does not), asks the one re-check
(act/recheck.py) just before, and writes the values to put back *before* anything
changes.

Knobs:
- "memory_high" (cgroup v2): memory.high, written with O_NONBLOCK so the write itself does
  not reclaim down to the new value (that would stall the loop; the container's own
  allocations pay for it). Docker maps its reservation to memory.low, never memory.high,
  so the value replaced (usually "max") is ours to restore.
- "cpu": Docker's CPU limit, written and put back by the one CPU writer (act/cpu.py: the
  rule book's rounding and CFS period; NanoCpus for a container started with --cpus).
- "memory_reservation" (cgroup v1): Docker's reservation = memory.soft_limit_in_bytes.

Reclaim: v2 memory.reclaim; v1 lowers memory.limit_in_bytes to usage - bytes (the kernel
reclaims to fit, or answers EBUSY rather than OOM-kill) and restores it at once, with the
limit to restore recorded first (``restore_interrupted_reclaims`` puts it back at start).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable

from supervisor.act.component import Context
from supervisor.act.cpu import cpu_state, restore_cpu_limit, set_cpu_limit
from supervisor.act.recheck import recheck
from supervisor.adapters.cgroups import V1_UNLIMITED
from supervisor.model.actions import Action, Outcome
from supervisor.model.errors import CgroupError, CgroupGone, SupervisorError
from supervisor.model.units import format_bytes
from supervisor.policy.ladder_state import MIN_RECLAIM_BYTES, Throttle

__all__ = ["KnobExecutors", "Throttle", "THROTTLE_PREFIX", "RECLAIM_PREFIX", "MIN_RECLAIM_BYTES"]

if TYPE_CHECKING:  # pragma: no cover
    from supervisor.adapters.cgroups import CgroupLocation
    from supervisor.model.snapshot import ContainerInfo

log = logging.getLogger(__name__)

THROTTLE_PREFIX = "ladder/throttle/"
RECLAIM_PREFIX = "ladder/reclaim/"


class KnobExecutors:
    def __init__(self, ctx: Context):
        self.ctx = ctx

    def executors(self) -> dict[str, Callable[[Action], Outcome]]:
        return {"throttle": self._throttle, "unthrottle": self._unthrottle,
                "reclaim": self._reclaim}

    def _locate(self, info: "ContainerInfo") -> "CgroupLocation":
        return self.ctx.cgroups.locate(info.id, info.pid, info.cgroup_parent)

    def _read_knob(self, knob: str, info: "ContainerInfo") -> Any:
        if knob == "memory_high":
            return self.ctx.cgroups.read_file(self._locate(info), "memory", "memory.high").strip()
        if knob == "cpu":
            return cpu_state(info)
        if knob == "memory_reservation":
            return info.memory_reservation_bytes
        raise SupervisorError(f"unknown throttle knob {knob!r}")

    def _set_knob(self, knob: str, value: Any, info: "ContainerInfo") -> None:
        eng = self.ctx.engine
        if knob == "memory_high":
            # O_NONBLOCK: the kernel does not reclaim down to the new value inside our
            # write (it would stall the loop); the container's own allocations do it.
            self.ctx.cgroups.write_file(self._locate(info), "memory", "memory.high",
                                        int(value), nonblock=True)
        elif knob == "cpu":
            set_cpu_limit(eng, info, float(value))
        elif knob == "memory_reservation":
            eng.update(info.id, mem_reservation=int(value))
        else:
            raise SupervisorError(f"unknown throttle knob {knob!r}")

    def _restore_knob(self, knob: str, before: Any, info: "ContainerInfo") -> None:
        eng = self.ctx.engine
        if knob == "memory_high":
            if info.state != "running":
                return  # its cgroup went with its processes; a restart starts at "max"
            self.ctx.cgroups.write_file(self._locate(info), "memory", "memory.high",
                                        str(before), nonblock=True)
        elif knob == "cpu":
            restore_cpu_limit(eng, info, before)
        elif knob == "memory_reservation":
            value = int(before)
            if value > 0 and info.memory_limit_bytes:
                value = min(value, info.memory_limit_bytes)
            eng.update(info.id, mem_reservation=value if value > 0 else -1)  # -1: none
        else:
            raise SupervisorError(f"unknown throttle knob {knob!r}")

    def _throttle(self, action: Action) -> Outcome:
        info, refused = recheck(self.ctx, action.target, "throttle")
        if info is None:
            return refused  # type: ignore[return-value]
        j = self.ctx.journal
        key = THROTTLE_PREFIX + info.id
        want: dict[str, Any] = dict(action.params.get("set") or {})
        old = j.get_state(key)
        rec = Throttle.from_dict(old) if old else Throttle(
            container_id=info.id, name=info.name, breaches=(), before={}, after={},
            at=self.ctx.clock(), state="applying")
        before_new = {k: self._read_knob(k, info) for k in want if k not in rec.before}
        breach = action.params.get("breach")
        rec = replace(rec, breaches=tuple(sorted(set(rec.breaches) | ({breach} if breach else set()))),
                      before={**rec.before, **before_new}, state="applying", target=want)
        # Intent first: the values to put back are on disk before anything changes, so a
        # crash mid-throttle can never leave a container throttled with no record.
        j.put_state(key, rec.to_dict())
        applied: dict[str, Any] = {}
        try:
            for knob, value in sorted(want.items()):
                self._set_knob(knob, value, info)
                applied[knob] = value
        finally:
            after = {**rec.after, **applied}
            if after:
                j.put_state(key, replace(rec, after=after, state="applied", target={}).to_dict())
            else:
                j.del_state(key)  # nothing changed: nothing to undo
        return Outcome(ok=True, detail="throttled " + ", ".join(
            f"{k} {rec.before[k]} -> {v}" for k, v in sorted(applied.items())),
            before={k: rec.before[k] for k in applied}, after=applied)

    def _unthrottle(self, action: Action) -> Outcome:
        j = self.ctx.journal
        key = THROTTLE_PREFIX + action.target
        old = j.get_state(key)
        if old is None:
            return Outcome(ok=True, skipped=True, detail="no throttle recorded for it")
        rec = Throttle.from_dict(old)
        info = self.ctx.inventory.refresh_one(action.target)
        if info is None:
            j.del_state(key)
            return Outcome(ok=False, skipped=True,
                           detail="container no longer exists; its throttle record is dropped")
        restored: dict[str, Any] = {}
        errors: list[str] = []
        for knob, before in sorted(rec.before.items()):
            try:
                self._restore_knob(knob, before, info)
                restored[knob] = before
            except SupervisorError as e:
                errors.append(f"{knob}: {e}")
        was = {k: rec.after.get(k) for k in restored}
        if errors:
            left = replace(rec, before={k: v for k, v in rec.before.items() if k not in restored},
                           after={k: v for k, v in rec.after.items() if k not in restored})
            j.put_state(key, left.to_dict())
            return Outcome(ok=False, detail="could not restore " + "; ".join(errors),
                           before=was, after=restored)
        j.del_state(key)
        return Outcome(ok=True, before=was, after=restored, detail="restored " + ", ".join(
            f"{k} {was[k]} -> {v}" for k, v in sorted(restored.items())))

    def _reclaim(self, action: Action) -> Outcome:
        info, refused = recheck(self.ctx, action.target, "reclaim")
        if info is None:
            return refused  # type: ignore[return-value]
        fs = self.ctx.cgroups
        loc = self._locate(info)
        nbytes = int(action.params.get("bytes", 0))
        u0 = fs.read_usage(loc)
        if loc.version == 2:
            complete = fs.reclaim(loc, nbytes)
            how = "memory.reclaim"
        else:
            limit = fs.read_file(loc, "memory", "memory.limit_in_bytes").strip()
            restore = "-1" if int(limit) >= V1_UNLIMITED else limit
            target = max(MIN_RECLAIM_BYTES, u0.memory_usage_bytes - nbytes)
            rkey = RECLAIM_PREFIX + info.id
            self.ctx.journal.put_state(rkey, {"container_id": info.id, "name": info.name,
                                              "memory_dir": loc.dir("memory"),
                                              "limit": restore, "at": self.ctx.clock()})
            complete = fs.reclaim_by_limit(loc, target, restore)  # restores before returning
            self.ctx.journal.del_state(rkey)
            how = f"memory.limit_in_bytes lowered to {target} and restored to {restore}"
        u1 = fs.read_usage(loc)
        freed = u0.memory_usage_bytes - u1.memory_usage_bytes
        return Outcome(
            ok=True,
            detail=(f"reclaimed {format_bytes(max(0, freed))} of {format_bytes(nbytes)} asked ({how})"
                    + ("" if complete else "; the kernel could not reclaim all of it")),
            before={"memory_usage_bytes": u0.memory_usage_bytes,
                    "memory_working_set_bytes": u0.memory_working_set_bytes},
            after={"memory_usage_bytes": u1.memory_usage_bytes,
                   "memory_working_set_bytes": u1.memory_working_set_bytes,
                   "complete": complete})

    def restore_interrupted_reclaims(self) -> list[tuple[str, str, str]]:
        """v1 reclaim lowers memory.limit_in_bytes and puts it back at once; a crash in
        between would leave the container on the lowered limit. Its record says what to
        put back. Returns (container id, name, what was done) of each one restored."""
        j = self.ctx.journal
        done = []
        for key, rec in j.states(RECLAIM_PREFIX).items():
            path = f"{rec.get('memory_dir', '')}/memory.limit_in_bytes"
            try:
                self.ctx.cgroups.write(path, rec["limit"])
                log.warning("restored memory limit %s of %s after an interrupted reclaim",
                            rec["limit"], rec.get("name", key))
                done.append((rec.get("container_id", ""), rec.get("name", ""),
                             f"memory.limit_in_bytes put back to {rec['limit']}"))
            except CgroupGone:
                pass  # the container is gone, and its limit with it
            except (CgroupError, KeyError) as e:
                log.error("cannot restore the limit of an interrupted reclaim %s: %s", key, e)
                continue
            j.del_state(key)
        return done
