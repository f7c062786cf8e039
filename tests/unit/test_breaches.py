"""Breach signals on hand-made ticks: levels, hysteresis flags, PSI held for a duration,
a container repeatedly hitting its own limit, and which containers a breach may touch;
the one PSI gate the ladder and the Ollama governor share."""

from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.model.snapshot import Pressure
from supervisor.policy.breaches import (CRITICAL, NONE, OVER, WARN, SignalMemory,
                                        evaluate_signals, scope_members)
from supervisor.policy.ollama_plan import advance_gates
from supervisor.policy.psi import PsiGate

from _ladder_kit import Sim, container, make_cfg, make_tick


def signals_of(tick, memory=None):
    sigs, mem = evaluate_signals(tick, memory)
    return {s.key: s for s in sigs}, mem


def pool_at(used_mib, cfg=None):
    cfg = cfg or make_cfg()
    sigs, _ = signals_of(make_tick(cfg, [container("a", ws_mib=used_mib)], 0.0))
    return sigs["pool:standard"]


def test_pool_levels_follow_the_configured_ratios_of_the_budget():
    # budget 96 MiB: warn 85% = 81.6, critical 95% = 91.2, over = 96, clear below 80% = 76.8
    assert (pool_at(76).severity, pool_at(76).below_clear) == (NONE, True)
    assert (pool_at(80).severity, pool_at(80).below_clear) == (NONE, False)  # the band
    assert pool_at(82).severity == WARN
    assert pool_at(92).severity == CRITICAL
    assert pool_at(96).severity == OVER
    s = pool_at(104)
    assert s.severity == OVER and s.level == "over"
    assert abs(s.excess_bytes - (104 - 0.8 * 96) * 2**20) <= 1  # above the clear level
    assert "104.0MiB" in s.summary and "96.0MiB" in s.summary


def test_pool_levels_move_with_the_config():
    cfg = make_cfg(ladder={"pool_warn_ratio": 0.5, "pool_critical_ratio": 0.6, "clear_ratio": 0.4})
    assert pool_at(50, cfg).severity == WARN
    assert pool_at(60, cfg).severity == CRITICAL
    assert pool_at(38, cfg).below_clear


def test_unmanaged_and_stopped_containers_do_not_count_against_a_pool():
    cfg = make_cfg()
    cs = [container("a", ws_mib=50), container("b", ws_mib=60, managed=False),
          container("c", ws_mib=0, state="exited")]
    sigs, _ = signals_of(make_tick(cfg, cs, 0.0))
    assert sigs["pool:standard"].severity == NONE


def test_reserve_levels_are_the_pool_levels_on_reserve_over_available():
    cfg = make_cfg()  # reserve 256 MiB
    def at(avail):
        sigs, _ = signals_of(make_tick(cfg, [], 0.0, available_mib=avail))
        return sigs["reserve"]
    assert at(2048).severity == NONE and at(2048).below_clear
    assert at(300).severity == WARN  # 256/300 = 0.853
    assert at(265).severity == CRITICAL  # 0.966
    assert at(200).severity == OVER  # inside the reserve
    assert at(0).severity == OVER
    assert not at(310).below_clear and at(330).below_clear  # clears above 256/0.8 = 320 MiB
    assert at(200).excess_bytes == 120 * 2**20


def test_memory_pressure_counts_only_once_held_for_the_duration():
    cfg = make_cfg(ladder={"psi_memory_full_avg10": 60.0, "psi_duration": "2s"})
    high = {"memory": Pressure(full_avg10=75.0), "cpu": Pressure()}
    low = {"memory": Pressure(full_avg10=10.0), "cpu": Pressure()}
    mem = SignalMemory()
    seen = []
    for t, p in ((0.0, high), (1.0, high), (2.0, high), (3.0, high), (3.5, low), (4.0, high),
                 (5.0, high), (6.0, high)):
        sigs, mem = signals_of(make_tick(cfg, [], t, psi=p), mem)
        seen.append(sigs["psi_memory"].severity)
    # held 2 s at t=2 and 3; the dip at 3.5 restarts the clock: held again at t=6
    assert seen == [NONE, NONE, OVER, OVER, NONE, NONE, NONE, OVER]
    sigs, _ = signals_of(make_tick(cfg, [], 7.0, psi=low), mem)
    assert sigs["psi_memory"].below_clear  # 10 < 60 * 0.8


def test_cpu_pressure_is_a_cpu_signal_at_critical_level():
    cfg = make_cfg(ladder={"psi_cpu_some_avg10": 50.0, "psi_duration": "1s"})
    p = {"memory": Pressure(), "cpu": Pressure(some_avg10=90.0)}
    mem = SignalMemory()
    for t in (0.0, 1.0):
        sigs, mem = signals_of(make_tick(cfg, [], t, psi=p), mem)
    s = sigs["psi_cpu"]
    assert (s.severity, s.resource) == (CRITICAL, "cpu")
    assert "cpu pressure" in s.summary


def test_no_pressure_signal_without_psi():
    sigs, _ = signals_of(make_tick(make_cfg(), [], 0.0, psi={}))
    assert "psi_memory" not in sigs and "psi_cpu" not in sigs


def test_v1_limit_hits_count_failcnt_and_oom_kill_rising_within_a_minute():
    cfg = make_cfg(ladder={"oom_events_threshold": 3})
    mem = SignalMemory()
    levels = []
    for t, failcnt, kills in ((0, 10, 0), (10, 11, 0), (20, 12, 0), (30, 12, 1), (40, 12, 1)):
        c = container("a", events={"failcnt": failcnt, "oom_kill": kills})
        sigs, mem = signals_of(make_tick(cfg, [c], float(t)), mem)
        levels.append((sigs["oom:" + c.info.id].severity, sigs["oom:" + c.info.id].value))
    assert levels == [(NONE, 0), (NONE, 1), (NONE, 2), (WARN, 3), (WARN, 3)]
    # a minute later with no new event the rise drops out of the window
    c = container("a", events={"failcnt": 12, "oom_kill": 1})
    sigs, mem = signals_of(make_tick(cfg, [c], 95.0), mem)
    s = sigs["oom:" + c.info.id]
    assert s.severity == NONE and s.below_clear


def test_slow_limit_hits_are_not_repeated_hits():
    cfg = make_cfg(ladder={"oom_events_threshold": 3})
    mem = SignalMemory()
    for i in range(8):  # one event every 31 s: never 3 within a minute
        c = container("a", events={"failcnt": i, "oom_kill": 0})
        sigs, mem = signals_of(make_tick(cfg, [c], i * 31.0), mem)
        assert sigs["oom:" + c.info.id].severity == NONE


def test_v2_limit_events_are_oom_oom_kill_and_max_and_a_restart_resets_them():
    cfg = make_cfg(ladder={"oom_events_threshold": 2})
    mem = SignalMemory()
    ev = {"low": 0, "high": 500, "max": 0, "oom": 0, "oom_kill": 0}
    c = container("a", version=2, events=ev)
    sigs, mem = signals_of(make_tick(cfg, [c], 0.0), mem)
    c = container("a", version=2, events={**ev, "high": 9000, "max": 1, "oom": 1})
    sigs, mem = signals_of(make_tick(cfg, [c], 1.0), mem)
    assert sigs["oom:" + c.info.id].severity == WARN  # high events do not count
    c = container("a", version=2, events=ev)  # counters back to zero: a new cgroup
    sigs, mem = signals_of(make_tick(cfg, [c], 2.0), mem)
    assert sigs["oom:" + c.info.id].severity == NONE


def test_scope_of_a_pool_breach_is_its_members_and_of_the_host_every_managed_container():
    cfg = make_cfg()
    cs = [container("a"), container("b", "batch"), container("pg", "infrastructure"),
          container("x", managed=False)]
    tick = make_tick(cfg, cs, 0.0, available_mib=100)
    sigs, _ = signals_of(tick)
    assert [c.info.name for c in scope_members(sigs["pool:standard"], tick)] == ["a", "b"]
    assert [c.info.name for c in scope_members(sigs["reserve"], tick)] == ["a", "b", "pg"]


# ---------------------------------------------------------------- one PSI gate


def test_pressure_exactly_at_the_level_counts_for_neither_the_ladder_nor_the_governor():
    cfg = make_cfg(ladder={"psi_cpu_some_avg10": 50.0, "psi_duration": "1s"})
    at = {"memory": Pressure(), "cpu": Pressure(some_avg10=50.0)}
    mem, gate = SignalMemory(), PsiGate()
    for t in (0.0, 1.0, 2.0, 3.0):
        tick = make_tick(cfg, [], t, psi=at)
        sigs, mem = signals_of(tick, mem)
        gate, _ = advance_gates(tick, gate, PsiGate())
        assert sigs["psi_cpu"].severity == NONE and not gate.on
    above = {"memory": Pressure(), "cpu": Pressure(some_avg10=50.01)}
    for t in (4.0, 5.0):
        tick = make_tick(cfg, [], t, psi=above)
        sigs, mem = signals_of(tick, mem)
        gate, _ = advance_gates(tick, gate, PsiGate())
    assert sigs["psi_cpu"].severity == CRITICAL and gate.on


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from([0.0, 30.0, 39.9, 40.0, 45.0, 50.0, 55.0, 90.0]),
                min_size=1, max_size=40))
def test_the_ladders_cpu_breach_is_open_exactly_while_the_governors_gate_is_on(series):
    # Levels: start 50, clear 40 (0.8); held for 2 s, cleared after 3 s (make_cfg).
    cfg = make_cfg(ladder={"psi_cpu_some_avg10": 50.0})
    sim = Sim(cfg)
    cpu_gate = mem_gate = PsiGate()
    for i, v in enumerate(series):
        now = float(i)
        psi = {"memory": Pressure(), "cpu": Pressure(some_avg10=v)}
        sim.step([], now, psi=psi)
        cpu_gate, mem_gate = advance_gates(make_tick(cfg, [], now, psi=psi), cpu_gate, mem_gate)
        assert ("psi_cpu" in sim.state.tracks) == cpu_gate.on, (i, v)
