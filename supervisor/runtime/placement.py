"""Class placement as a component (issue 3; Rules 1.1, 1.2, 1.3): the glue between the
pure decisions (``policy.placement``: desired values, the memory limit rule, pool
admission, the plan) and the executor (``act.placement``: the engine calls).

A container is placed at once when it has an event (start, restart, update by someone)
and every container is checked on reconcile passes (drift repair). Idempotent: a
container whose Docker values already match gets no update call. The component keeps
what placement remembers between passes, publishes the last executed plan (status,
/metrics) and serves GET /recommend.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from supervisor.act.component import Component
from supervisor.act.placement import place
from supervisor.model.actions import Action, ActionResult, Outcome
from supervisor.model.params import Param
from supervisor.model.pools import OVER_BUDGET, SHRUNK
from supervisor.model.snapshot import LIVE_STATES
from supervisor.policy.admission import SETTLING
from supervisor.policy.placement import (SOURCE_OOM_REMOVED, Desired, PlacementMemory,
                                         PlacementPlan, oom_cases, place_key, plan_placement,
                                         recommendations)
from supervisor.policy.placement_diff import update_kwargs
from supervisor.policy.tick import Tick
from supervisor.publish.report import Deferred

# Durable memory (the journal's state table): the limits placement gave, per container
# (so a restarted daemon still knows which limits are its own to raise after OOM kills),
# and the containers whose own limit it removed; and the memory limits it wrote next to
# what the owner had declared, so the audit tells a given limit from a declared one
# (Rule 1.1).
GIVEN_PREFIX = "placement/given/"
RELEASED_PREFIX = "placement/released/"
GIVEN_STATE_PREFIX = "placement.limit_given."

# A failed update is retried on reconcile passes, backing off up to this long.
RETRY_MAX_S = 300.0
# Recommendations (percentiles over the history window, which move slowly) are recomputed
# when a container comes, goes or changes its limits, and at least this often: not every
# tick, where they cost ~0.2 ms per container (issue 9 soak: 24 ms a pass at 110).
RECOMMEND_EVERY_S = 30.0


def plan_status(p: PlacementPlan, tick: Tick, swap_limit_supported: bool, counts: dict,
                oom: dict[str, Any]) -> dict[str, Any]:
    """Placement's section of the status: per container its desired values and whether
    Docker holds them, per pool what admission granted and who is over budget."""
    rows = {p.names.get(cid, cid[:12]): {"id": cid[:12], "desired": d.to_params(),
                                         "in_place": cid not in p.pending,
                                         "pending": sorted(p.pending.get(cid, {}))}
            for cid, d in p.desired.items()}
    pools: dict[str, dict[str, Any]] = {}
    for adm in p.admissions.values():
        row = pools.setdefault(adm.pool, {"granted_bytes": 0, "over_budget": [], "shrunk": [],
                                          "settling": []})
        row["granted_bytes"] += adm.granted_bytes
        if adm.verdict == OVER_BUDGET:
            row["over_budget"].append(adm.to_dict())
        elif adm.verdict == SHRUNK:
            row["shrunk"].append(adm.name)
        elif adm.verdict == SETTLING:  # no memory limit yet: given once it has settled
            row["settling"].append(adm.name)
    return {"admission_policy": tick.cfg.settings.manage.admission,
            "swap_limit_supported": swap_limit_supported,
            "counts": counts, "pending": len(p.pending),
            "pools": pools, "containers": rows, "oom": oom}


def oom_status(tick: Tick, memory: PlacementMemory) -> dict[str, Any]:
    """Containers in an OOM loop and what placement does about each (raise, owner's limit:
    alert only, limit removed), and the containers whose own limit it removed, by pool."""
    cases = oom_cases(tick, memory)
    names = {c.info.id: c.info.name for c in tick.snapshot.containers} if cases else {}
    loops = {names.get(cid, cid[:12]): {
        "id": cid[:12], "kills": case.kills, "handling": case.kind,
        "limit_bytes": case.limit_bytes, "raise_bytes": case.raise_bytes or None,
        "recommended_bytes": case.recommended_bytes} for cid, case in cases.items()}
    released: dict[str, list[str]] = {}
    for c in tick.snapshot.containers if memory.released else ():
        cls = tick.cfg.classes.get(c.class_name)
        if c.info.id in memory.released and cls is not None:
            released.setdefault(cls.pool, []).append(c.info.name)
    return {"loops": loops, "released": {k: sorted(v) for k, v in released.items()},
            "given": len(memory.given)}


def plan_metrics(p: PlacementPlan, tick: Tick, counts: Counter) -> Iterable[Any]:
    done = CounterMetricFamily("resource_supervisor_placement_updates_total",
                               "Placement outcomes: placed, drift_repairs, failed, would_place",
                               labels=["outcome"])
    for k in ("placed", "drift_repairs", "failed", "would_place"):
        done.add_metric([k], counts[k])
    yield done
    pend = GaugeMetricFamily("resource_supervisor_placement_pending_containers",
                             "Running managed containers whose Docker values differ from "
                             "their class's")
    pend.add_metric([], len(p.pending))
    yield pend
    over = GaugeMetricFamily("resource_supervisor_pool_over_budget_containers",
                             "Containers admission could not fit into their pool",
                             labels=["pool"])
    granted = GaugeMetricFamily("resource_supervisor_pool_granted_bytes",
                                "Memory limits admission grants in the pool (never above "
                                "its budget)", labels=["pool"])
    for pool in sorted(tick.cfg.pools):
        members = [a for a in p.admissions.values() if a.pool == pool]
        over.add_metric([pool], sum(1 for a in members if a.verdict == OVER_BUDGET))
        granted.add_metric([pool], sum(a.granted_bytes for a in members))
    yield over
    yield granted


def recommended_family(recommended: list[dict[str, Any]]) -> GaugeMetricFamily:
    rec = GaugeMetricFamily("resource_supervisor_container_recommended_memory_limit_bytes",
                            "Working-set percentile over the history window plus headroom "
                            "(Rule 1.1)", labels=["name", "id", "class", "pool"])
    for r in recommended:
        if r["recommended_limit_bytes"] is not None:
            rec.add_metric([r["name"], r["id"], r["class"], r["pool"]], r["recommended_limit_bytes"])
    return rec


class Placement(Component):
    name = "placement"
    # plan() keeps the pure plan it computed for observe() to publish (a memo of its
    # result, which never feeds a later plan): the only attribute plan() writes.
    plan_memo = ("_pending",)

    def __init__(self, ctx):
        super().__init__(ctx)
        self.memory = PlacementMemory()
        # Per container id: the memory limit placement wrote and what the owner had
        # declared before the first write ({"given_bytes", "declared_bytes"}).
        self.limits_given: dict[str, dict[str, int]] = {}
        self._load_given()
        self.counts: Counter[str] = Counter()
        self.last_plan: PlacementPlan | None = None
        self.last_tick: Tick | None = None
        self._pending: tuple[PlacementPlan, Tick] | None = None
        # Recommendations are computed once per pass on the loop thread, so neither the
        # scrape nor GET /recommend runs numpy over the history (which the loop writes).
        self.last_recommendations: list[dict[str, Any]] = []
        self._rec_family: tuple[list, GaugeMetricFamily] | None = None
        self._recommended_for: frozenset[tuple] = frozenset()
        self._recommended_at = float("-inf")

    def _note_given(self, cid: str, before: dict, after: dict) -> None:
        """After a placement write: remember the memory limit the owner did not set."""
        old = int(before.get("memory_limit_bytes") or 0)
        new = int(after.get("memory_limit_bytes") or 0)
        if not new or new == old:
            return
        prev = self.limits_given.get(cid)
        declared = prev["declared_bytes"] if prev and prev.get("given_bytes") == old else old
        row = {"given_bytes": new, "declared_bytes": int(declared)}
        self.limits_given[cid] = row
        self.ctx.journal.put_state(GIVEN_STATE_PREFIX + cid, row)

    def _load_given(self) -> None:
        j = getattr(self.ctx, "journal", None)
        if j is None:
            return
        for key, v in j.states(GIVEN_PREFIX).items():
            try:
                self.memory.given[key[len(GIVEN_PREFIX):]] = (int(v[0]), float(v[1]))
            except (TypeError, ValueError, IndexError):
                continue
        self.memory.released.update(k[len(RELEASED_PREFIX):] for k in j.states(RELEASED_PREFIX))
        try:
            self.limits_given = {key[len(GIVEN_STATE_PREFIX):]: dict(v) for key, v in
                                 j.states(GIVEN_STATE_PREFIX).items()
                                 if key.startswith(GIVEN_STATE_PREFIX) and isinstance(v, dict)}
        except Exception:  # noqa: BLE001 - a journal that cannot answer: nothing known
            pass

    def _remember_given(self, cid: str, limit_bytes: int, at_s: float) -> None:
        m = self.memory
        if limit_bytes <= 0 or m.given.get(cid, (0,))[0] == limit_bytes:
            return
        m.given[cid] = (limit_bytes, at_s)
        self.ctx.journal.put_state(GIVEN_PREFIX + cid, [limit_bytes, at_s])

    def _forget_given(self, cid: str) -> None:
        if self.memory.given.pop(cid, None) is not None:
            self.ctx.journal.del_state(GIVEN_PREFIX + cid)
        if cid in self.memory.released:
            self.memory.released.discard(cid)
            self.ctx.journal.del_state(RELEASED_PREFIX + cid)

    def _observe_given(self, a: Action, r: ActionResult, tick: Tick) -> None:
        """After a "place" that wrote a memory limit: that limit is placement's own (or,
        after an OOM removal, the container's memory is no longer placement's to set)."""
        if r.dry_run or not r.ok or r.skipped or "mem_limit" not in a.params.get("fields", ()):
            return
        limit = int((r.after or {}).get("memory_limit_bytes") or 0)
        if a.params.get("limit_source") == SOURCE_OOM_REMOVED:
            self._forget_given(a.target)
            self.memory.released.add(a.target)
            self.ctx.journal.put_state(RELEASED_PREFIX + a.target, [limit, tick.now])
        elif limit and limit == a.params.get("memory_limit_bytes") and \
                limit != (r.before or {}).get("memory_limit_bytes"):
            # A new limit, not the owner's re-written with a reservation next to it.
            self._remember_given(a.target, limit, tick.now)

    def plan(self, tick: Tick) -> list[Action]:
        # Published in observe(), as the ladder does: a plan nobody executes (GET /plan,
        # planned on a changed copy of the tick) must not show in status or /metrics.
        self._pending = (plan_placement(tick, self.memory), tick)
        return list(self._pending[0].actions)

    def observe_recommendations(self, tick: Tick) -> None:
        # What a row shows besides the percentiles: a change there shows at once.
        live = frozenset((c.info.id, c.info.name, c.class_name, c.info.memory_limit_bytes,
                          c.info.memory_reservation_bytes)
                         for c in tick.snapshot.containers if c.managed and c.info.state in LIVE_STATES)
        if live != self._recommended_for or tick.now - self._recommended_at >= RECOMMEND_EVERY_S:
            self.last_recommendations = recommendations(tick, self.ctx.history)
            self._recommended_for = live
            self._recommended_at = tick.now

    def executors(self) -> dict[str, Callable[[Action], Outcome]]:
        return {"place": lambda action: place(self.ctx, self.memory, action)}

    def observe(self, tick: Tick, results: list[ActionResult]) -> None:
        if self._pending is not None:
            (self.last_plan, self.last_tick), self._pending = self._pending, None
        self.observe_recommendations(tick)
        m = self.memory
        for r in results:
            a = r.action
            if a.kind == "place":
                self._observe_given(a, r, tick)
                if r.dry_run:
                    d = Desired.from_params(a.params)
                    c = next((x for x in tick.snapshot.containers if x.info.id == a.target), None)
                    if c is not None:
                        key = place_key(c.info, d, update_kwargs(
                            c.info, d, swap_limit_supported=m.swap_limit_supported))
                        if m.dry_reported.get(a.target) != key:
                            self.counts["would_place"] += 1
                        m.dry_reported[a.target] = key
                elif r.ok:
                    if not r.skipped:
                        self.counts["drift_repairs" if a.target in m.placed else "placed"] += 1
                        self._note_given(a.target, r.before, r.after)
                    m.placed.add(a.target)
                    m.failures.pop(a.target, None)
                    m.retry_at.pop(a.target, None)
                elif not r.skipped:
                    self.counts["failed"] += 1
                    m.failures[a.target] += 1
                    m.retry_at[a.target] = tick.now + min(
                        RETRY_MAX_S, tick.cfg.reconcile_s * 2 ** m.failures[a.target])
            elif a.kind == "alert" and a.source == "placement" and a.params.get("oom"):
                if not r.skipped:
                    m.oom_alerted[a.target] = int(a.params.get("kills") or 0)
                    self.counts["oom_alerts"] += 1
            elif a.kind == "alert" and a.source == "pools":
                m.alerted.add(a.target)
                self.counts["over_budget_alerts"] += 1
            elif a.kind == "stop" and a.source == "pools":
                if r.ok or r.dry_run or r.skipped:
                    m.stop_sent.add(a.target)
                self.counts["over_budget_stops" if r.ok and not r.dry_run else "over_budget_stop_attempts"] += 1
        # Forget what no longer applies: gone containers, and over-budget episodes that ended.
        live = {c.info.id for c in tick.snapshot.containers}
        over = set()
        if self.last_plan is not None:
            over = {cid for cid, adm in self.last_plan.admissions.items() if adm.verdict == OVER_BUDGET}
            # Seen in place: a difference from now on is drift.
            m.placed.update(set(self.last_plan.desired) - set(self.last_plan.pending))
        m.alerted &= over
        m.stop_sent &= over
        m.placed &= live
        looping = set(oom_cases(tick, m)) if m.oom_alerted else set()
        for cid in set(m.oom_alerted) - looping:
            m.oom_alerted.pop(cid, None)  # the loop ended: a new one is alerted anew
        for d in (m.dry_reported, m.retry_at, m.failures):
            for cid in set(d) - live:
                d.pop(cid, None)
        # The durable records are forgotten only when the engine says a container is gone:
        # an engine that is down (or not up yet at start) lists none.
        if tick.snapshot.engine_up:
            for cid in (set(m.given) | m.released) - live:
                self._forget_given(cid)
            for cid in set(self.limits_given) - live:
                self.limits_given.pop(cid, None)
                self.ctx.journal.del_state(GIVEN_STATE_PREFIX + cid)

    # ------------------------------------------------------------ publishing

    def status(self, tick: Tick) -> Deferred | None:
        if self.last_plan is None:
            return None
        # The rows are built when read, from the plan and copies of what changes; the OOM
        # part now, as it reads the history the loop writes.
        plan, swap, counts = self.last_plan, self.memory.swap_limit_supported, dict(self.counts)
        oom = oom_status(tick, self.memory)
        # What the audit judges Rule 1.1 on (publish.api): limits given, not declared.
        given = dict(self.limits_given)  # (a row is replaced, never changed in place)
        return Deferred(lambda: {**plan_status(plan, tick, swap, counts, oom),
                                 "limits_given": {cid: dict(v) for cid, v in given.items()}})

    def collect(self, tick: Tick) -> Iterable[Any] | Deferred:
        if self.last_plan is None:
            return ()
        # Recommendations change every RECOMMEND_EVERY_S at most: their family (a series per
        # container) is built when they change, not on every pass's report.
        recs = self.last_recommendations
        if self._rec_family is None or self._rec_family[0] is not recs:
            self._rec_family = (recs, recommended_family(recs))
        plan, counts, rec = self.last_plan, Counter(self.counts), self._rec_family[1]
        return Deferred(lambda: [*plan_metrics(plan, tick, counts), rec])

    def routes(self):
        return {("GET", "/recommend"): (self._recommend, {"container": Param(str, default="")})}

    def _recommend(self, body: dict) -> tuple[int, dict]:
        tick = self.last_tick
        if tick is None:
            return 503, {"error": "no pass has run yet"}
        rows = list(self.last_recommendations)
        want = body["container"].strip()
        if want:
            rows = [r for r in rows if r["name"] == want or r["id"].startswith(want[:12])]
            if not rows:
                return 404, {"error": f"no live managed container {want!r}"}
        h = tick.cfg.settings.history
        return 200, {"percentile": h.percentile, "headroom": h.headroom,
                     "window": h.window, "containers": rows}
