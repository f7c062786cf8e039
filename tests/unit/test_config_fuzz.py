"""Property: every config input either loads or gives a ConfigError naming a key and a
reason: never a traceback (issue 9, bad input)."""

import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor.model.config import HostFacts, load_config
from supervisor.model.errors import ConfigError

HOST = HostFacts(cores=2, memory_bytes=8 * 2**30)

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
    st.text(max_size=30),
    st.sampled_from(["1GiB", "5m", "0-3", "any", "auto", "exact", "scaled", "-1", "1e400",
                     "10200-10399", "99999-1", "0x10", "1.38GiB", "NaN", "", " ", "\x00"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=12)

KEYS = {
    "": ["dry_run", "state_dir", "log_level", "host", "reserve", "pools", "classes", "manage",
         "intervals", "ladder", "hibernation", "ollama", "metrics", "control", "journal", "history"],
    "host": ["cores", "memory", "layout", "reference_cores", "reference_memory"],
    "class": ["cpuset", "pool", "priority", "memory_limit", "memory_min", "cpu_quota",
              "reservation_ratio", "protected", "hibernate", "idle_after", "hibernate_mode",
              "ports", "match"],
}


@st.composite
def configs(draw):
    data = {}
    for key in draw(st.lists(st.sampled_from(KEYS[""]), max_size=6, unique=True)):
        data[key] = draw(values)
    data["pools"] = draw(st.one_of(values, st.dictionaries(
        st.sampled_from(["standard", "critical", "x"]),
        st.dictionaries(st.just("budget"), values, max_size=1), max_size=3)))
    data["classes"] = draw(st.one_of(values, st.dictionaries(
        st.sampled_from(["standard", "critical", "weird name"]),
        st.dictionaries(st.sampled_from(KEYS["class"]), values, max_size=6), max_size=3)))
    if draw(st.booleans()):
        data["host"] = draw(st.dictionaries(st.sampled_from(KEYS["host"]), values, max_size=4))
    return data


def assert_loads_or_explains(data=None, path=None):
    try:
        load_config(path, host=HOST, data=data)
    except ConfigError as e:
        assert e.problems, "a ConfigError must name at least one problem"
        for key, reason in e.problems:
            assert isinstance(key, str) and isinstance(reason, str) and reason


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_structured_configs_load_or_explain(data):
    assert_loads_or_explains(data=data)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.one_of(st.binary(max_size=300),
                 st.text(alphabet=string.printable + "[]=\"'\n", max_size=300)))
def test_arbitrary_file_bytes_load_or_explain(tmp_path, raw):
    p = tmp_path / "fuzz.toml"
    p.write_bytes(raw if isinstance(raw, bytes) else raw.encode())
    assert_loads_or_explains(path=p)
