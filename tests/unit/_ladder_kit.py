"""Hand-made snapshots and ticks for the breach and ladder tests (no host needed)."""

from __future__ import annotations

from dataclasses import replace

import _handmade as handmade
from _testkit import class_table

from supervisor.act.actuator import Actuator, held_by
from supervisor.adapters.journal import Journal
from supervisor.model.actions import Outcome
from supervisor.model.config import HostFacts, load_config
from supervisor.model.snapshot import CgroupStats, ContainerInfo, ContainerSample, Pressure
from supervisor.observe.activity import ActivityTracker
from supervisor.observe.history import History
from supervisor.policy.ladder import plan_breach_actions, settle
from supervisor.policy.ladder_state import LadderPlan, LadderState, Throttle
from supervisor.policy.tick import Tick

MIB = 2**20
GIB = 2**30


def make_cfg(ladder: dict | None = None, classes: dict | None = None, **top):
    """Pools: infrastructure 512 MiB, standard 96 MiB. Classes: infrastructure (protected,
    100), standard (50), batch (10, standard pool). Short ladder timings."""
    data = {
        "host": {"layout": "exact", "cores": 2, "memory": "4GiB"},
        "reserve": {"emergency": "256MiB"},
        "pools": {"infrastructure": {"budget": "512MiB"}, "standard": {"budget": "96MiB"}},
        "classes": class_table("infrastructure", "standard", "batch",
                               infrastructure={"cpuset": "any"},
                               batch={"memory_limit": "64MiB"}),
        "ladder": {"grace": "1s", "clear_after": "3s", "min_action_interval": "0.5s",
                   "max_actions_per_minute": 30, "psi_duration": "2s"},
    }
    for k, v in (classes or {}).items():
        data["classes"][k] = {**data["classes"].get(k, {}), **v}
    data["ladder"].update(ladder or {})
    data.update(top)
    return load_config(data=data, host=HostFacts(cores=2, memory_bytes=4 * GIB))


def container(name: str, cls: str = "standard", ws_mib: float = 10, resv_mib: float = 0,
              limit_mib: float = 64, state: str = "running", version: int = 1,
              cpu_s: float = 0.0, events: dict | None = None, labels: dict | None = None,
              managed: bool = True, quota_us: int = 0, high_mib: float | None = None,
              usage_mib: float | None = None) -> ContainerSample:
    cid = (name.encode().hex() + "0" * 64)[:64]
    ws = int(ws_mib * MIB)
    info = ContainerInfo(id=cid, name=name, image="rs-test/busybox:latest",
                         labels={"supervisor.class": cls, **(labels or {})}, state=state,
                         pid=1000, memory_limit_bytes=int(limit_mib * MIB),
                         memory_reservation_bytes=int(resv_mib * MIB),
                         cpu_quota_us=quota_us, cpu_period_us=100_000 if quota_us else 0)
    stats = None
    if state in ("running", "paused"):
        stats = CgroupStats(version=version, path=f"/sys/fs/cgroup/memory/docker/{cid}",
                            memory_usage_bytes=int((usage_mib if usage_mib is not None else ws_mib) * MIB),
                            memory_working_set_bytes=ws,
                            memory_limit_bytes=int(limit_mib * MIB),
                            memory_high_bytes=int(high_mib * MIB) if high_mib else None,
                            memory_low_bytes=int(resv_mib * MIB) or None,
                            memory_events=dict(events if events is not None else
                                               ({"failcnt": 0, "oom_kill": 0} if version == 1 else
                                                {"low": 0, "high": 0, "max": 0, "oom": 0, "oom_kill": 0})),
                            cpu_usage_s=cpu_s,
                            cpu_quota_cores=quota_us / 100_000 if quota_us else None)
    return ContainerSample(info=info, class_name=cls, class_reason="label", managed=managed,
                           stats=stats)


def make_tick(cfg, containers, now: float, available_mib: float = 2048,
              psi: dict | None = None, engine_up: bool = True, version: int = 1,
              tracker: ActivityTracker | None = None) -> Tick:
    """The factory's tick on the ladder's host (2 cores, 4 GiB, zero pressure unless
    ``psi``; no reconcile, a one-minute history); its activity is ``tracker``'s view of
    its snapshot (as the daemon takes it once per pass), or none known."""
    return handmade.tick(
        cfg, containers, now=now, cores=2, total=4 * GIB, available=int(available_mib * MIB),
        pressure=psi if psi is not None else {"memory": Pressure(), "cpu": Pressure(),
                                              "io": Pressure()},
        engine_up=engine_up, cgroup_version=version, reconcile=False,
        history=History(60, 1), tracker=tracker)


LADDER_KINDS = ("alert", "throttle", "unthrottle", "reclaim", "hibernate", "stop")


def sim_actuator(journal, clock, get_config):
    """The daemon's actuator (its rate limits, its journal), with executors that succeed
    and change nothing: what the ladder decides is what the tests look at."""
    act = Actuator(journal, clock, get_config=get_config)
    for kind in LADDER_KINDS:
        act.register(kind, lambda a: Outcome(ok=True, detail="done"))
    return act


class Sim:
    """Drives the pure planner tick by tick through the actuator, as the loop does, and
    stands in for the executors the way the component's records would: a throttle adds
    a record, an unthrottle removes it. The ticks' activity comes from one tracker fed
    tick after tick. ``actions`` are the ones that ran; ``held`` the results the
    actuator's rate limits held back."""

    def __init__(self, cfg, capabilities=(), state: LadderState | None = None):
        self.cfg = cfg
        self.capabilities = frozenset(capabilities)
        self.state = state or LadderState()
        self.now = 0.0
        self.journal = Journal(":memory:")
        self.activity = ActivityTracker("/nonexistent")  # CPU only: reads no /proc
        self.actuator = sim_actuator(self.journal, lambda: self.now, lambda: self.cfg)
        self.actions = []  # (time, Action) that ran
        self.held = []  # (time, ActionResult) held back by a rate limit
        self.notes = []  # (time, Note)

    def step(self, containers, now: float, **kw) -> LadderPlan:
        self.now = now
        p = plan_breach_actions(make_tick(self.cfg, containers, now, tracker=self.activity, **kw),
                                self.state, self.capabilities)
        results = self.actuator.execute(p.actions, dry_run=False)
        ran = [r.action for r in results if not held_by(r)]
        held = [r for r in results if held_by(r)]
        state = settle(self.state, p, [(r.action, r.detail) for r in held])
        throttles = dict(state.throttles)
        for a in ran:
            if a.kind == "throttle":
                old = throttles.get(a.target)
                before = {k: "orig" for k in a.params["set"]}
                throttles[a.target] = Throttle(
                    container_id=a.target, name=a.name,
                    breaches=tuple(sorted({a.params["breach"], *(old.breaches if old else ())})),
                    before={**before, **(old.before if old else {})},
                    after={**(old.after if old else {}), **a.params["set"]}, at=now)
            elif a.kind == "unthrottle":
                throttles.pop(a.target, None)
        self.state = replace(state, throttles=throttles)
        self.actions += [(now, a) for a in ran]
        self.held += [(now, r) for r in held]
        self.notes += [(now, n) for n in p.notes]
        return p

    def kinds(self) -> list[str]:
        return [a.kind for _, a in self.actions]

    def of(self, kind: str) -> list:
        return [(t, a) for t, a in self.actions if a.kind == kind]

    def journaled_holds(self) -> list[dict]:
        """The holds an operator reads in the journal."""
        return [r for r in self.journal.recent(100_000) if r["outcome"] == "skipped"]
