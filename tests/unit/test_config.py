"""Config validation: each bad case gives an error naming the key and the reason."""

from pathlib import Path

import pytest

from supervisor.model.config import HostFacts, load_config, scale_cores, shipped_config_path
from supervisor.model.errors import ConfigError

CONFIGS = Path(__file__).parent.parent / "fixtures" / "configs"
TWO_CORES = HostFacts(cores=2, memory_bytes=24 * 2**30)
REFERENCE = HostFacts(cores=12, memory_bytes=int(29.4 * 2**30))


def problems(name: str, host: HostFacts = TWO_CORES) -> dict[str, str]:
    with pytest.raises(ConfigError) as exc:
        load_config(CONFIGS / name, host=host)
    return dict(exc.value.problems)


def test_shipped_config_loads_on_a_two_core_host_with_scaled_layout():
    cfg = load_config(shipped_config_path(), host=TWO_CORES)
    assert cfg.classes["infrastructure"].cpuset == "0"
    assert cfg.classes["standard"].cpuset == "1"
    assert cfg.classes["monitoring"].cores is None  # any core
    assert cfg.reserve_bytes == int(1.38 * 2**30)
    total = sum(p.budget_bytes for p in cfg.pools.values())
    assert total + cfg.reserve_bytes <= TWO_CORES.memory_bytes


def test_shipped_config_on_the_reference_host_is_the_rules_layout():
    cfg = load_config(shipped_config_path(), host=REFERENCE)
    assert [cfg.classes[c].cpuset for c in ("infrastructure", "critical", "standard")] == \
        ["0-3", "4-7", "8-11"]
    gib = {n: round(p.budget_bytes / 2**30, 1) for n, p in cfg.pools.items()}
    assert gib == {"infrastructure": 12.0, "critical": 8.0, "standard": 6.0, "monitoring": 2.0}


def test_cpuset_naming_cores_the_host_lacks():
    p = problems("cpuset-beyond-host.toml")
    assert "classes.standard.cpuset" in p
    assert "8-11" in p["classes.standard.cpuset"] and "0-1" in p["classes.standard.cpuset"]


def test_pools_plus_reserve_above_host_memory():
    p = problems("pools-exceed-memory.toml")
    assert "reserve" in p["pools"] and "exceed host memory" in p["pools"]


def test_class_naming_unknown_pool():
    p = problems("unknown-pool.toml")
    assert "unknown pool 'agents'" in p["classes.critical.pool"]


def test_unparseable_size_lists_accepted_units():
    p = problems("bad-size.toml")
    assert "GiB" in p["pools.standard.budget"] and "MiB" in p["pools.standard.budget"]


def test_unparseable_duration_lists_accepted_units():
    p = problems("bad-duration.toml")
    msg = p["classes.standard.idle_after"]
    assert "5 minutes" in msg and "30s" in msg and "5m" in msg


def test_two_classes_claiming_the_same_ports():
    p = problems("overlapping-ports.toml")
    assert "overlaps class 'standard'" in p["classes.critical.ports"]


def test_unknown_key_is_an_error_not_a_silent_default():
    p = problems("unknown-key.toml")
    assert p["classes.standard.memory_limt"].startswith("unknown key")


def test_not_toml():
    p = problems("not-toml.toml")
    assert "not valid TOML" in p[""]


def test_reservation_ratio_outside_rule_range():
    p = problems("reservation-ratio-out-of-range.toml")
    assert "0.75" in p["classes.standard.reservation_ratio"]


def test_missing_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(CONFIGS / "nope.toml", host=TWO_CORES)


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as exc:
        load_config(data={"host": {"layout": "exact"}, "pools": {"a": {"budget": "1GiB"}},
                          "classes": {"x": {"pool": "b", "cpuset": "0-40"}}}, host=TWO_CORES)
    keys = {k for k, _ in exc.value.problems}
    assert {"classes.x.pool", "classes.x.cpuset", "manage.default_class"} <= keys


def test_env_overrides_the_file(monkeypatch):
    monkeypatch.setenv("RESOURCE_SUPERVISOR_INTERVALS__TICK", "2s")
    monkeypatch.setenv("RESOURCE_SUPERVISOR_DRY_RUN", "true")
    cfg = load_config(CONFIGS / "minimal-valid.toml", host=TWO_CORES)
    assert cfg.tick_s == 2.0 and cfg.dry_run is True


def test_bad_env_override_names_the_key(monkeypatch):
    monkeypatch.setenv("RESOURCE_SUPERVISOR_INTERVALS__TICK", "soon")
    with pytest.raises(ConfigError) as exc:
        load_config(CONFIGS / "minimal-valid.toml", host=TWO_CORES)
    assert "intervals.tick" in dict(exc.value.problems)


@pytest.mark.parametrize("written,actual,expected", [
    ((0, 1, 2, 3), 2, (0,)), ((8, 9, 10, 11), 2, (1,)), ((4, 5, 6, 7), 6, (2, 3)),
    ((8, 9, 10, 11), 24, tuple(range(16, 24))), ((0, 1, 2, 3), 12, (0, 1, 2, 3)),
])
def test_scaled_cpusets(written, actual, expected):
    assert scale_cores(written, 12, actual) == expected


def test_history_settle_is_a_duration_and_a_bad_one_names_its_key():
    assert load_config(shipped_config_path(), host=TWO_CORES).settings.history.settle == 60.0
    with pytest.raises(ConfigError) as exc:
        load_config(data={"history": {"settle": "a while"}}, host=TWO_CORES)
    assert any(k == "history.settle" for k, _ in exc.value.problems), exc.value.problems
