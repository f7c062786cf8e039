"""Acting on breaches: the ladder, least harmful first. Pure planning.

``plan_breach_actions(tick, state, capabilities)`` holds every decision: it follows the
breach signals (breaches.py) into *tracks* (one per open breach), climbs each track's
ladder one rung at a time, and undoes throttles once their breach has cleared. The
``Ladder`` component (runtime/ladder.py) stores the state it returns, registers the
``throttle``/``unthrottle``/``reclaim`` executors (act/ladder_knobs.py; ``alert``,
``stop`` and ``hibernate`` are other components' executors), journals, and reads its
durable state back at start.

The rungs, each taken only when the previous one did not clear the breach within
``ladder.grace``, and only as far as the breach's level allows (warn: alert only;
critical: up to hibernate; over budget / reserve breached / memory PSI held: up to stop;
CPU PSI: alert and CPU throttle; a container hitting its own limit: alert):

1. alert (journal, log, metric).
2. throttle the lowest-priority containers in scope (enough of them to cover the memory
   above the clear level). cgroup v2: memory.high = usage x throttle_ratio, written with
   O_NONBLOCK (Docker's reservation is memory.low, so memory.high is ours alone; the
   value it replaced is recorded). cgroup v1 has no memory.high: the CPU limit goes to
   throttle_cpu_ratio of itself (which slows the allocating workload) and the soft limit
   (Docker's memory reservation, memory.soft_limit_in_bytes) to usage x throttle_ratio
   (which makes the container the first one global reclaim takes from), both through
   Docker so ``docker inspect`` stays true, and published as overrides so placement does
   not "repair" them back.
3. reclaim: v2 memory.reclaim of the bytes above the target; v1 lowers
   memory.limit_in_bytes to usage - bytes (the kernel reclaims, or refuses with EBUSY
   instead of OOM-killing) and restores it at once.
4. hibernate idle containers of hibernating classes, when a "hibernate" executor exists;
   else the rung is skipped, and the journal and status say so. Idle: CPU at or below
   ``hibernation.cpu_idle_cores`` for ``ladder.hibernate_idle_after``, as the tick's
   activity view (the one tracker's) tells; the governor judges Ollama's CPU from it too.
5. stop the container kubelet would evict first: usage above its reservation, then lowest
   priority, then most usage above reservation. Never a class the rule book makes
   untouchable (protected, infrastructure). Repeated every grace period while the breach
   stays over its level.

No flapping: a breach opens at its start level and closes only after ``clear_after``
below ``clear_ratio`` (hysteresis); inside the band between the two nothing climbs and
nothing is undone. Rate limits are the actuator's alone (``ladder.min_action_interval``
between two actions on one container, ``ladder.max_actions_per_minute`` across all
counted actions): the plan lists the most urgent breach's actions first, an action the
actuator holds back comes back "skipped", and ``settle`` puts its rung back so that a
later pass takes it again.

Durable state (the component's, in the journal's state table): ``ladder/throttle/<id>``
(the values a throttle replaced, written *before* any change), ``ladder/breach/<key>``
(each open breach's rung), ``ladder/reclaim/<id>`` (v1: the limit to put back if a
crash hits between lowering and restoring).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Iterable

from supervisor.model.actions import Action
from supervisor.policy.breaches import (CRITICAL, NONE, OVER, WARN, Signal, evaluate_signals,
                                        scope_members)
from supervisor.policy.ladder_rungs import RUNG_KIND, RUNGS, Env, may_act
from supervisor.policy.ladder_state import (ALERT, KIND_ORDER, STEP_NAMES, STOP, THROTTLE,
                                            HIBERNATE, LadderPlan, LadderState, Note, Track)
from supervisor.policy.tick import Tick


def top_rung(sig: Signal) -> int:
    """The highest rung this signal's level allows now."""
    if sig.severity == NONE:
        return 0
    if sig.kind == "oom":
        return ALERT
    if sig.resource == "cpu":
        return THROTTLE if sig.severity >= CRITICAL else ALERT
    return {WARN: ALERT, CRITICAL: HIBERNATE, OVER: STOP}[sig.severity]


def _alert(t: Track, sig: Signal) -> Action:
    first = t.step == 0
    return Action(
        "alert", sig.subject, sig.name,
        f"{sig.summary}: {sig.level} breach {'opened' if first else 'rose'}; ladder step 1 "
        f"(alert)" + ("" if first else f", now at step {t.step} ({STEP_NAMES[t.step]})"),
        "ladder", params={"breach": t.key, "kind": t.kind, "level": sig.level,
                          "step": ALERT, "value": sig.value})


def _climb(t: Track, sig: Signal, env: Env, actions: list[Action], notes: list[Note]) -> Track:
    """Take the next rung(s) of one open breach, if it is time."""
    now = env.tick.now

    def note(n: int, outcome: str, why: str) -> Note:
        return Note(STEP_NAMES[n], sig.subject, sig.name, sig.summary, outcome, why,
                    {"breach": t.key, "step": n})

    if t.step == 0 or sig.severity > t.top_severity:
        actions.append(_alert(t, sig))
        first = t.step == 0
        t = replace(t, top_severity=max(t.top_severity, sig.severity))
        if first:
            return replace(t, step=ALERT, acted_step=ALERT, step_at=now)
    top = top_rung(sig)
    if sig.severity == NONE or now - t.step_at < env.grace_s:
        return t  # in the band between clear and start levels, or within grace
    repeat = t.step == STOP
    n = STOP if repeat else t.step + 1
    if n > top:
        return t
    if not env.tick.snapshot.engine_up:
        why = "the Docker engine is unreachable: container actions wait"
        if why != t.hold:
            notes.append(note(n, "held", why))
        return replace(t, hold=why)
    scope = scope_members(sig, env.tick)
    env.acted_step = t.acted_step
    while n <= top:
        members = [c for c in scope if may_act(c, env.cfg, RUNG_KIND[n])]
        if not members:
            outcome, acts, why = "skipped", [], ("no container in scope may be acted on "
                                                 "(protected, infrastructure or not running)")
        else:
            outcome, acts, why = RUNGS[n](t, sig, env, members)
        if outcome == "acted":
            actions.extend(acts)
            return replace(t, step=n, acted_step=n, step_at=now, hold="")
        if repeat:
            if why != t.hold:
                notes.append(note(n, outcome, why))
            return replace(t, hold=why)
        # This rung cannot act at all: say so once and go on to the next one now.
        notes.append(note(n, "skipped", why))
        t = replace(t, step=n, hold="")
        n += 1
    return t


def _covered(tracks: dict[str, Track], by_key: dict[str, Signal], tick: Tick) -> set[str]:
    """Containers inside the scope of an open breach that has reached the throttle rung."""
    out: set[str] = set()
    for key, t in tracks.items():
        sig = by_key.get(key)
        if sig is not None and t.step >= THROTTLE:
            out.update(c.info.id for c in scope_members(sig, tick))
    return out


def _follow(signals: list[Signal], state: LadderState, now: float,
            opened: list[str]) -> dict[str, Track]:
    """This tick's tracks: one per signal at or above its start level or still open."""
    by_key = {s.key for s in signals}
    tracks: dict[str, Track] = {}
    for sig in signals:
        t = state.tracks.get(sig.key)
        if t is None:
            if sig.severity == NONE:
                continue
            t = Track(key=sig.key, kind=sig.kind, subject=sig.subject, name=sig.name,
                      resource=sig.resource, opened_at=now, step_at=now)
            opened.append(sig.kind)
        clear_since = (t.clear_since if t.clear_since is not None else now) if sig.below_clear else None
        tracks[sig.key] = replace(t, severity=sig.severity, clear_since=clear_since,
                                  summary=sig.summary, name=sig.name)
    for key, t in state.tracks.items():
        if key not in by_key:  # its subject is gone (container removed, pool unconfigured)
            tracks[key] = replace(t, severity=NONE,
                                  clear_since=t.clear_since if t.clear_since is not None else now)
    return tracks


def plan_breach_actions(tick: Tick, state: LadderState,
                        capabilities: Iterable[str] = ()) -> LadderPlan:
    """Every ladder decision of one tick: which breaches open, climb, clear; which
    containers are throttled, reclaimed, hibernated, stopped, unthrottled. Pure; the
    actions come most urgent first (the actuator's rate limits let the first through)."""
    cfg = tick.cfg
    L = cfg.settings.ladder
    now = tick.now
    grace_s, clear_after_s = L.grace, L.clear_after
    signals, sigmem = evaluate_signals(tick, state.signals)
    by_key = {s.key: s for s in signals}
    notes: list[Note] = []
    actions: list[Action] = []
    opened: list[str] = []

    # 1. Follow the signals into tracks.
    tracks = _follow(signals, state, now, opened)

    # 2. Close the breaches that stayed below the clear level long enough.
    for key, t in list(tracks.items()):
        if t.clear_since is not None and now - t.clear_since >= clear_after_s:
            del tracks[key]
            notes.append(Note("breach", t.subject, t.name,
                              f"{t.summary or t.key}: stayed below the clear level "
                              f"(ladder.clear_ratio = {L.clear_ratio:g}) for "
                              f"{clear_after_s:g}s", "cleared",
                              f"open {now - t.opened_at:.1f}s, reached step {t.step} "
                              f"({STEP_NAMES.get(t.step, 'none')})",
                              {"breach": key, "step": t.step}))

    # 3. Climb, most urgent first.
    env = Env(tick, cfg, dict(state.throttles), frozenset(capabilities), grace_s)
    order = sorted(tracks.values(), key=lambda t: (-t.severity, KIND_ORDER.get(t.kind, 9), t.key))
    for t in order:
        sig = by_key.get(t.key)
        if sig is None:
            continue
        tracks[t.key] = _climb(t, sig, env, actions, notes)

    # 4. Undo the throttles no open breach needs any more (and drop the records of
    #    containers that no longer exist at all). One the actuator holds back is planned
    #    again on the next pass: its record stays until the undo has run.
    covered = _covered(tracks, by_key, tick)
    present = {c.info.id for c in tick.snapshot.containers}
    for cid, th in sorted(state.throttles.items()):
        if cid in present and (any(k in tracks for k in th.breaches) or cid in covered):
            continue
        if not tick.snapshot.engine_up:
            continue  # tried again on a later tick
        actions.append(Action(
            "unthrottle", cid, th.name,
            f"breach {', '.join(th.breaches) or '(none recorded)'} cleared (below "
            f"{L.clear_ratio:.0%} for {clear_after_s:g}s): restoring "
            + ", ".join(f"{k}={v}" for k, v in sorted(th.before.items())),
            "ladder", params={"breaches": list(th.breaches), "restore": dict(th.before)}))

    new_state = LadderState(tracks=tracks, throttles=dict(state.throttles), signals=sigmem)
    return LadderPlan(actions, new_state, notes, signals, opened)


def settle(prev: LadderState, plan: LadderPlan,
           not_done: Iterable[tuple[Action, str]]) -> LadderState:
    """The state after ``plan`` ran, given the actions of it that did not run: dropped
    (the engine was down; ``why`` "") or held back by the actuator's rate limits (``why``
    says which). The rung such an action belonged to was not taken, unless another
    action of the same rung ran: the breach goes back to the rung before it, with the
    grace it had, so a later pass takes the rung again (most urgent first), and its
    status says what holds it. Pure."""
    missed = [(a, why) for a, why in not_done
              if a.kind != "alert" and a.params.get("step", 0) >= THROTTLE]
    if not missed:
        return plan.state
    gone = {id(a) for a, _ in missed}
    ran = {(a.params.get("breach"), a.params.get("step")) for a in plan.actions
           if id(a) not in gone and a.kind != "alert" and a.params.get("step", 0) >= THROTTLE}
    tracks = dict(plan.state.tracks)
    for a, why in missed:
        key, step = a.params.get("breach"), a.params["step"]
        t, p = tracks.get(key), prev.tracks.get(key)
        if t is None or p is None or (key, step) in ran or t.step != step:
            continue  # the rung ran through another action, or is settled already
        back = STOP if step == STOP and p.step == STOP else step - 1
        tracks[key] = replace(t, step=back, acted_step=p.acted_step, step_at=p.step_at,
                              hold=why or t.hold)
    return replace(plan.state, tracks=tracks)
