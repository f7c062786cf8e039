"""The rule book's invariants (supervisor/model/rules.py), proven by hypothesis over
generated configs and snapshots, through the whole planning of each pass: every
component plans together, as the daemon's loop has them plan, and the actions go through
the real actuator (its dry-run rule, its one rate limiter, its journal).

No host is needed and none may be touched: the components are given adapters that fail
the test on any use during planning (plan() is pure), and the actuator's executors
apply each action to a model of the containers (the "world") the next pass is sampled
from, so the ladder climbs, placement's limits land and hibernated containers stay
paused, pass after pass.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import threading
from collections import Counter, deque
from datetime import datetime, timezone

from hypothesis import HealthCheck, given, settings, strategies as st

import _handmade as handmade
from _handmade import GIB, MIB, config, container
from supervisor.act.actuator import Actuator
from supervisor.act.component import Context
from supervisor.adapters.journal import Journal
from supervisor.model import rules
from supervisor.model.actions import Outcome
from supervisor.model.snapshot import Pressure
from supervisor.model.sockets import TCP_STATES, TcpSocket
from supervisor.observe.activity import ActivityTracker
from supervisor.observe.history import History
from supervisor.policy.hibernation import connection_activity
from supervisor.policy.tick import Tick
from supervisor.runtime.daemon import build_components
from supervisor.runtime.passes import plan_tick


CLASSES = ("infrastructure", "critical", "standard", "batch")


class _NoHost:
    """An adapter planning must not use: any attribute read fails the test."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str):
        raise AssertionError(f"planning touched the host: {self._name}.{attr}")


# ---------------------------------------------------------------- generated inputs

SIM_START_S = 1_800_000_000.0  # the simulated clock at the first pass (epoch seconds)


@st.composite
def configs(draw):
    """The classes the rules name, with the flags an operator might get wrong: an
    infrastructure class that is neither protected nor kept from hibernating among them."""
    budget = lambda: f"{draw(st.integers(48, 1024))}MiB"  # noqa: E731
    classes = {
        "infrastructure": {"pool": "infrastructure", "cpuset": "0", "priority": 100,
                           "memory_limit": "128MiB", "memory_min": "32MiB",
                           "protected": draw(st.booleans()), "hibernate": draw(st.booleans()),
                           "idle_after": "30s"},
        "critical": {"pool": "critical", "cpuset": "1", "priority": 80,
                     "memory_limit": "64MiB", "memory_min": "16MiB",
                     "protected": draw(st.booleans()), "hibernate": False},
        "standard": {"pool": "standard", "cpuset": "any", "priority": 50,
                     "memory_limit": f"{draw(st.integers(16, 96))}MiB", "memory_min": "16MiB",
                     "idle_after": "30s", "cpu_quota": 1.0},
        "batch": {"pool": "standard", "cpuset": "any", "priority": 10,
                  "memory_limit": "32MiB", "memory_min": "8MiB", "idle_after": "30s",
                  "hibernate_mode": "stop"},
    }
    return config(
        pools={"infrastructure": {"budget": budget()}, "critical": {"budget": budget()},
               "standard": {"budget": budget()}},
        classes=classes,
        ladder={"grace": "2s", "clear_after": "10s", "min_action_interval": "3s",
                "max_actions_per_minute": draw(st.integers(1, 4)), "psi_duration": "4s",
                "hibernate_idle_after": "5s"},
        manage={"admission": draw(st.sampled_from(["alert", "strict"]))},
        history={"settle": draw(st.sampled_from(["0s", "20s", "60s"]))},
        # Pool cgroups are the kernel's own enforcement, written to the host's cgroup tree;
        # the modelled host has none.
        pool_cgroups={"enabled": False},
        dry_run=draw(st.booleans()))


@st.composite
def worlds(draw):
    """Containers as the engine holds them: some with limits of their own, some without,
    some using more than their class default."""
    out = []
    for i in range(draw(st.integers(1, 7))):
        cls = draw(st.sampled_from(CLASSES))
        ws = draw(st.integers(1, 400)) * MIB
        limit = draw(st.sampled_from([0, 0, ws * 2, ws + 8 * MIB, 256 * MIB]))
        c = container(f"{cls}-{i}", cls=cls, working_set=ws, limit=limit,
                      state=draw(st.sampled_from(["running"] * 5 + ["paused", "exited"])),
                      # started up to two minutes before the simulation's first pass
                      started_at=docker_time(SIM_START_S - draw(st.floats(0.0, 120.0))))
        health = draw(st.sampled_from(["", "", "starting", "healthy", "unhealthy"]))
        out.append(dataclasses.replace(c, info=dataclasses.replace(c.info, health=health)))
    return out


def docker_time(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@st.composite
def timelines(draw):
    """Per pass: seconds since the last one, a working-set growth factor, the host's
    available memory and its memory / CPU pressure."""
    return draw(st.lists(st.tuples(
        st.floats(0.5, 6.0), st.floats(0.8, 1.5), st.integers(64, 2048).map(lambda m: m * MIB),
        st.floats(0.0, 100.0), st.floats(0.0, 100.0)), min_size=2, max_size=14))


# ---------------------------------------------------------------- the simulated host

class Sim:
    """The components and actuator of one daemon, over a world of modelled containers."""

    def __init__(self, cfg, world):
        self.cfg = cfg
        self.world = {c.info.id: c for c in world}
        self.now = SIM_START_S
        self.dir = tempfile.mkdtemp(prefix="rs-invariants-")
        self.journal = Journal(os.path.join(self.dir, "journal.sqlite3"), 10_000)
        self.ctx = Context(engine=_NoHost("engine"), inventory=_NoHost("inventory"),
                           cgroups=_NoHost("cgroups"), journal=self.journal,
                           history=History(3600, 1.0), clock=lambda: self.now,
                           get_config=lambda: self.cfg, proc="/nonexistent",
                           activity=ActivityTracker("/nonexistent"))
        self.components = build_components(self.ctx)
        self.actuator = Actuator(self.journal, lambda: self.now,
                                 cfg.settings.ladder.max_actions_per_minute,
                                 get_config=lambda: self.cfg)
        kinds = {k for comp in self.components for k in comp.executors()}
        for kind in kinds:
            self.actuator.register(kind, self._executor(kind))
        self.ctx.capabilities.update(self.actuator.executors)
        self.executed_destructive: deque[float] = deque()
        self.counts: Counter[str] = Counter()

    def close(self) -> None:
        self.journal.close()

    def _executor(self, kind: str):
        def run(action) -> Outcome:
            c = self.world.get(action.target)
            if action.destructive:
                self.executed_destructive.append(self.now)
            if c is None:
                return Outcome(ok=True, detail=f"{kind} (host-wide)")
            info = c.info
            p = action.params
            if kind == "place":
                changes = {}
                for key, field in (("memory_limit_bytes", "memory_limit_bytes"),
                                   ("memory_reservation_bytes", "memory_reservation_bytes"),
                                   ("cpuset_cpus", "cpuset_cpus")):
                    if p.get(key) is not None:
                        changes[field] = p[key]
                info = dataclasses.replace(info, **changes)
            elif kind == "hibernate":
                info = dataclasses.replace(info, state="exited" if p.get("mode") == "stop" else "paused")
            elif kind == "stop":
                info = dataclasses.replace(info, state="exited")
            elif kind == "wake":
                info = dataclasses.replace(info, state="running")
            self.world[action.target] = dataclasses.replace(c, info=info)
            return Outcome(ok=True, detail=kind)
        return run

    def tick(self, available_bytes: int, psi_mem: float, psi_cpu: float) -> Tick:
        for c in self.world.values():
            if c.stats is not None:
                self.ctx.history.record(c.info.id, c.stats.memory_working_set_bytes)
        return handmade.tick(
            self.cfg, self.world.values(), now=self.now, available=available_bytes,
            pressure={"memory": Pressure(some_avg10=psi_mem, full_avg10=psi_mem),
                      "cpu": Pressure(some_avg10=psi_cpu)},
            history=self.ctx.history)

    def grow(self, factor: float) -> None:
        for cid, c in self.world.items():
            if c.stats is not None and c.info.state == "running":
                ws = max(MIB, int(c.stats.memory_working_set_bytes * factor))
                stats = dataclasses.replace(c.stats, memory_working_set_bytes=ws,
                                            memory_usage_bytes=ws)
                self.world[cid] = dataclasses.replace(c, stats=stats)


def plan(sim: Sim, tick: Tick, dry_run: bool | None = None):
    """Every component's plan on ``tick`` (a fresh copy each time), as the loop plans."""
    cfg = tick.cfg
    if dry_run is not None:
        cfg = dataclasses.replace(cfg, settings=cfg.settings.model_copy(update={"dry_run": dry_run}))
    t = dataclasses.replace(tick, cfg=cfg, overrides={})
    planned, held = plan_tick(sim.components, t, sim.counts)
    assert held == [] and sim.counts["planner_errors"] == 0, "a planner raised"
    return [a for _, a in planned], planned, t


_SKIP = (type(threading.Lock()), type(threading.RLock()), threading.Thread, threading.Event,
         threading.Condition)


def state_of(obj, depth: int = 0, seen=None):
    """A comparable picture of a component's memory (its adapters and threads left out)."""
    seen = set() if seen is None else seen
    if depth > 8 or id(obj) in seen:
        return "..."
    if isinstance(obj, (str, int, float, bool, type(None), bytes)):
        return obj
    if isinstance(obj, _SKIP) or callable(obj) and not hasattr(obj, "__dict__"):
        return type(obj).__name__
    seen = seen | {id(obj)}
    if isinstance(obj, dict):
        return {repr(k): state_of(v, depth + 1, seen) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, deque)):
        return [state_of(v, depth + 1, seen) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted(repr(v) for v in obj)
    if isinstance(obj, (Context, Journal, ActivityTracker, History, _NoHost)):
        return type(obj).__name__  # adapters and shared observers, not the component's own
    if hasattr(obj, "__dict__") or hasattr(obj, "__slots__"):
        names = list(getattr(obj, "__dict__", {})) + list(getattr(obj, "__slots__", ()))
        memo = set(getattr(obj, "plan_memo", ()))
        return {n: state_of(getattr(obj, n, None), depth + 1, seen) for n in names
                if n not in ("ctx", "log") and n not in memo}
    return repr(obj)


def run_timeline(cfg, world, timeline, check) -> None:
    sim = Sim(cfg, world)
    try:
        for comp in sim.components:
            comp.start = lambda: None  # threads (wake watcher, pollers) stay off here
        for step, (dt, growth, available, psi_mem, psi_cpu) in enumerate(timeline):
            sim.now += dt
            sim.grow(growth)
            tick = sim.tick(available, psi_mem, psi_cpu)
            check(sim, tick)
            actions, planned, t = plan(sim, tick)
            results = [sim.actuator.execute_one(a, dry_run=cfg.dry_run) for a in actions]
            by_comp: dict[int, list] = {}
            for (comp, _), r in zip(planned, results):
                by_comp.setdefault(id(comp), []).append(r)
            for comp in sim.components:
                comp.observe(t, by_comp.get(id(comp), []))
    finally:
        sim.close()


SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ---------------------------------------------------------------- the invariants

@SETTINGS
@given(configs(), worlds(), timelines())
def test_no_memory_limit_below_working_set_plus_headroom(cfg, world, timeline):
    headroom = cfg.settings.history.headroom

    def check(sim, tick):
        actions, _, _ = plan(sim, tick)
        ws = {c.info.id: c.stats.memory_working_set_bytes for c in tick.snapshot.containers
              if c.stats is not None}
        held = {c.info.id: c.info.memory_limit_bytes for c in tick.snapshot.containers}
        for a in actions:
            limit = a.params.get("memory_limit_bytes")
            # A limit the container already holds (its owner's) is kept, never written
            # anew; every limit the supervisor gives is at least the floor.
            if a.kind == "place" and limit and limit != held.get(a.target):
                # Worked out here, not by the rule under test: working set + headroom.
                floor = ws.get(a.target, 0) * (1 + headroom)
                assert limit >= floor, f"{a.describe()}: below the floor {floor:.0f}"
    run_timeline(cfg, world, timeline, check)


@SETTINGS
@given(configs(), worlds(), timelines())
def test_no_memory_limit_for_a_container_that_has_not_settled(cfg, world, timeline):
    """Invariant 7: a container without a limit gets none before it has run history.settle
    and while its health check is still "starting"."""
    settle_s = cfg.settings.history.settle
    started = {c.info.id: epoch_of(c.info.started_at) for c in world}

    def check(sim, tick):
        actions, _, _ = plan(sim, tick)
        info = {c.info.id: c.info for c in tick.snapshot.containers}
        for a in actions:
            i = info.get(a.target)
            if a.kind != "place" or i is None or i.memory_limit_bytes or not a.params.get(
                    "memory_limit_bytes") or a.params.get("oom"):
                continue
            # Worked out here, not by the rule under test.
            young = sim.now - started[a.target] < settle_s
            assert not young and i.health != "starting", \
                f"{a.describe()}: {sim.now - started[a.target]:.1f}s old, health {i.health!r}"
    run_timeline(cfg, world, timeline, check)


def epoch_of(docker_time_text: str) -> float:
    return datetime.strptime(docker_time_text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=timezone.utc).timestamp()


@SETTINGS
@given(configs(), worlds(), timelines())
def test_no_throttle_reclaim_hibernation_or_stop_of_an_untouchable_class(cfg, world, timeline):
    def check(sim, tick):
        actions, _, _ = plan(sim, tick)
        by_id = {c.info.id: c for c in tick.snapshot.containers}
        for a in actions:
            if a.kind in rules.DESTRUCTIVE_KINDS and a.target in by_id:
                klass = cfg.classes.get(by_id[a.target].class_name)
                # Worked out here, not by the rule under test.
                never = klass is None or klass.protected or klass.name == "infrastructure"
                assert not never, f"{a.describe()} on class {klass.name}"
    run_timeline(cfg, world, timeline, check)


@SETTINGS
@given(configs(), worlds(), timelines())
def test_placement_never_pushes_a_pool_past_its_budget(cfg, world, timeline):
    """The limits granted in a pass fit the pool: after placement's actions a pool's
    allocation is within its budget, or (limits its owners set already over it) no larger
    than before."""
    def check(sim, tick):
        actions, _, _ = plan(sim, tick)
        granted = {a.target: a.params["memory_limit_bytes"] for a in actions
                   if a.kind == "place" and a.params.get("memory_limit_bytes")}
        for name, pool in tick.pools.items():
            after = 0
            for c in tick.snapshot.containers:
                if c.managed and c.info.state in ("running", "paused", "restarting") \
                        and cfg.classes[c.class_name].pool == name:
                    after += granted.get(c.info.id, c.info.memory_limit_bytes)
            assert after <= max(pool.budget_bytes, pool.allocated_bytes), \
                f"pool {name}: {after} granted > budget {pool.budget_bytes}"
    run_timeline(cfg, world, timeline, check)


@SETTINGS
@given(configs(), worlds(), timelines())
def test_no_more_destructive_actions_than_the_cap(cfg, world, timeline):
    cap = cfg.settings.ladder.max_actions_per_minute
    sims: list[Sim] = []

    def check(sim, tick):
        if not sims:
            sims.append(sim)
        times = sim.executed_destructive
        for i, t0 in enumerate(times):
            assert sum(1 for t in list(times)[i:] if t - t0 < 60.0) <= cap
    run_timeline(cfg, world, timeline, check)


@SETTINGS
@given(configs(), worlds(), timelines())
def test_a_dry_run_plans_what_the_live_run_plans(cfg, world, timeline):
    def check(sim, tick):
        live, _, _ = plan(sim, tick, dry_run=False)
        dry, _, _ = plan(sim, tick, dry_run=True)
        assert [a.to_dict() for a in dry] == [a.to_dict() for a in live]
    run_timeline(cfg, world, timeline, check)


@SETTINGS
@given(configs(), worlds(), timelines())
def test_planning_twice_gives_the_same_plan_and_changes_no_state(cfg, world, timeline):
    def check(sim, tick):
        before = [state_of(c) for c in sim.components]
        first, _, _ = plan(sim, tick)
        middle = [state_of(c) for c in sim.components]
        second, _, _ = plan(sim, tick)
        assert [a.to_dict() for a in first] == [a.to_dict() for a in second]
        assert middle == before, "plan() changed a component's state"
        assert [state_of(c) for c in sim.components] == before
    run_timeline(cfg, world, timeline, check)


# ---------------------------------------------------------------- no pause mid-flight

_STATES = {v: k for k, v in TCP_STATES.items()}


@st.composite
def sockets(draw):
    state = draw(st.sampled_from(["LISTEN", "ESTABLISHED", "CLOSE_WAIT", "FIN_WAIT1", "TIME_WAIT"]))
    ages = st.one_of(st.none(), st.integers(0, 600_000))
    return TcpSocket(family=2, state=_STATES[state], local_addr="127.0.0.1",
                     local_port=draw(st.integers(1, 65535)), remote_addr="127.0.0.1",
                     remote_port=draw(st.integers(0, 65535)), rqueue=draw(st.integers(0, 3)),
                     wqueue=draw(st.integers(0, 3)), inode=draw(st.integers(0, 5)),
                     last_data_sent_ms=draw(ages), last_data_recv_ms=draw(ages))


@settings(max_examples=300, deadline=None)
@given(st.lists(sockets(), max_size=8), st.floats(1.0, 600.0))
def test_no_pause_with_a_client_waiting_or_data_in_flight(socks, window_s):
    """The pre-pause check says busy whenever a client waits in an accept queue or data
    is in flight on a live stream: the hibernate executor pauses only when it says ""."""
    waiting = any(s.state_name == "LISTEN" and s.rqueue > 0 for s in socks)
    in_flight = any(s.state_name not in ("LISTEN", "TIME_WAIT", "CLOSE")
                    and (s.rqueue > 0 or s.wqueue > 0) for s in socks)
    verdict = connection_activity(socks, window_s)
    if waiting or in_flight:
        assert verdict != ""


def test_the_simulation_reaches_the_destructive_rungs():
    """The generated timelines are not vacuous: a pool held over budget climbs to a
    throttle and a stop of an unprotected standard container through the real planners."""
    cfg = config(pools={"infrastructure": {"budget": "512MiB"}, "standard": {"budget": "64MiB"}},
                 ladder={"grace": "1s", "max_actions_per_minute": 10, "min_action_interval": "1s"},
                 pool_cgroups={"enabled": False})
    world = [container("hog", working_set=90 * MIB, limit=120 * MIB),
             container("pg", cls="infrastructure", working_set=50 * MIB, limit=128 * MIB)]
    kinds: list[str] = []

    def check(sim, tick):
        kinds.extend(a.kind for a in plan(sim, tick)[0])
    run_timeline(cfg, world, [(2.0, 1.0, 4 * GIB, 0.0, 0.0)] * 10, check)
    assert "throttle" in kinds and ("stop" in kinds or "hibernate" in kinds), kinds
