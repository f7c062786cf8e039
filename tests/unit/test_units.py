import pytest

from supervisor.model.units import format_cpuset, parse_cpuset, parse_duration, parse_size


@pytest.mark.parametrize("text,expected", [
    ("1.38GiB", int(1.38 * 2**30)), ("512MiB", 512 * 2**20), ("1GB", 10**9), ("100", 100),
    (4096, 4096), ("2 KiB", 2048),
])
def test_sizes(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["6 gigs", "GiB", "-1", "", True, None, "1.2.3MiB"])
def test_bad_sizes(bad):
    with pytest.raises(ValueError):
        parse_size(bad)


@pytest.mark.parametrize("text,expected", [("5m", 300.0), ("30s", 30.0), ("500ms", 0.5),
                                           ("1h", 3600.0), (2, 2.0), ("1.5", 1.5)])
def test_durations(text, expected):
    assert parse_duration(text) == expected


def test_cpuset_roundtrip():
    assert parse_cpuset("0-3,8,10-11") == (0, 1, 2, 3, 8, 10, 11)
    assert format_cpuset((0, 1, 2, 3, 8, 10, 11)) == "0-3,8,10-11"
    with pytest.raises(ValueError):
        parse_cpuset("3-1")
