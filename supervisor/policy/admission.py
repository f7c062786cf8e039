"""Pool admission (Rule 1.3): which memory limit each container may hold so that the sum
of the limits a pool hands out never passes its budget. Pure: a function of the
containers' wanted limits and the pool budgets.

A pool's members are admitted in a stable order, so the same container is the one left
out pass after pass (no flapping): first those whose limit cannot change now (paused,
restarting: counted as they are), then the ones already holding a limit, then the ones
without, each group by start time. A member whose wanted limit does not fit gets the
room that is left if that is at least its floor (class ``memory_min``, Docker's minimum,
and, running, its working set plus headroom, ``rules.memory_floor_bytes``: a limit below
what it uses would only make the kernel refuse it or OOM-kill the container); otherwise it
is over budget and granted nothing, and keeps what it has.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from supervisor.model import rules
from supervisor.model.pools import PoolUsage, admit

HELD = "held"  # a container whose limit cannot be changed now: its current one is kept
# A container without a limit that has not settled yet (``rules.limit_settled``): it is
# given none until it has, and holds none of the pool's room meanwhile.
SETTLING = "settling"


@dataclass(frozen=True)
class Candidate:
    id: str
    name: str
    pool: str
    wanted_bytes: int  # the limit placement would give it (class default, kept, adaptive),
    #                    raised to its floor unless it is the limit it holds already
    floor_bytes: int  # the least a new limit may be: class minimum, working set + headroom
    current_bytes: int  # its limit now; 0 = none
    changeable: bool  # running: its limit can be set now
    started_at: str = ""  # Docker's RFC 3339 StartedAt: sorts in time order
    settling: bool = False  # no limit yet and not settled: none is given now


@dataclass(frozen=True)
class Admission:
    id: str
    name: str
    pool: str
    wanted_bytes: int
    granted_bytes: int  # 0 when over budget
    verdict: str  # fits | shrunk | over-budget | held | settling
    room_bytes: int  # what the pool had left when this member's turn came
    floor_bytes: int

    def to_dict(self) -> dict:
        return {"id": self.id[:12], "name": self.name, "pool": self.pool,
                "wanted_bytes": self.wanted_bytes, "granted_bytes": self.granted_bytes,
                "verdict": self.verdict, "room_bytes": self.room_bytes,
                "floor_bytes": self.floor_bytes}


def admission_order(c: Candidate) -> tuple:
    return (0 if not c.changeable else 1 if c.current_bytes else 2, c.started_at, c.name, c.id)


def admit_pool(pool: str, budget_bytes: int, members: Iterable[Candidate]) -> list[Admission]:
    """Admit ``members`` of one pool in order. The limits the pool grants, and those its
    members keep, sum to at most the budget, except where limits held already pass it on
    their own: admission never pushes a pool further over (rules.py invariant 3). It does
    not shrink one owner's limit to make room for another's; a member asking for more
    than it holds gets the rise only from room no later member holds already."""
    ordered = sorted(members, key=admission_order)
    allocated = 0
    pending_held = sum(c.current_bytes for c in ordered)  # held by members not yet admitted
    out = []
    for c in ordered:
        pending_held -= c.current_bytes
        room = max(0, budget_bytes - allocated)
        if not c.changeable or c.settling:
            allocated += c.current_bytes
            out.append(Admission(c.id, c.name, pool, c.wanted_bytes, c.current_bytes,
                                 SETTLING if c.settling else HELD, room, c.floor_bytes))
            continue
        taken = allocated + (pending_held if c.wanted_bytes > c.current_bytes else 0)
        granted, verdict = admit(PoolUsage(pool, budget_bytes, taken, 0), c.wanted_bytes,
                                 max(c.floor_bytes, rules.DOCKER_MIN_MEMORY_BYTES))
        # Over budget, a member keeps the limit it holds (nothing is written): that limit
        # still counts against the pool, or its room would be handed out again.
        allocated += granted if granted else c.current_bytes
        out.append(Admission(c.id, c.name, pool, c.wanted_bytes, granted, verdict, room,
                             c.floor_bytes))
    return out


def admit_all(budgets: dict[str, int], members: Iterable[Candidate]) -> dict[str, Admission]:
    """Admission of every candidate, by container id. Candidates of a pool the config
    lacks are not admitted (placement leaves their memory alone and says so)."""
    by_pool: dict[str, list[Candidate]] = {}
    for c in members:
        by_pool.setdefault(c.pool, []).append(c)
    return {a.id: a for pool, group in by_pool.items() if pool in budgets
            for a in admit_pool(pool, budgets[pool], group)}
