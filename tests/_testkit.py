"""Plain test data and helpers the tests share, in a module of its own name: the tests'
"conftest" is ambiguous once tests/v2 (which has its own) is collected in the same run, so
code imported at run time takes these from here."""

from __future__ import annotations


TEST_CLASSES = {
    "infrastructure": {"pool": "infrastructure", "cpuset": "0", "priority": 100,
                       "memory_limit": "128MiB", "protected": True, "hibernate": False},
    "critical": {"pool": "standard", "cpuset": "1", "memory_limit": "64MiB",
                 "memory_min": "8MiB"},
    "standard": {"pool": "standard", "cpuset": "any", "priority": 50,
                 "memory_limit": "64MiB", "memory_min": "8MiB"},
    "batch": {"pool": "standard", "cpuset": "any", "priority": 10,
              "memory_limit": "48MiB", "memory_min": "8MiB"},
}


def class_table(*names: str, **over: dict) -> dict:
    """Classes of TEST_CLASSES (those named, or all), each with its override in ``over``
    laid over the table's settings: ``class_table("infrastructure", "standard",
    standard={"cpuset": "1"})``. Fresh dicts, the test may change them."""
    names = names or tuple(TEST_CLASSES)
    assert set(over) <= set(names), f"an override for a class not asked for: {set(over) - set(names)}"
    return {n: {**TEST_CLASSES[n], **over.get(n, {})} for n in names}


def merge_sections(data: dict, over: dict) -> dict:
    """Merge ``over`` into ``data`` in place: a section given as a dict is merged over the
    one in ``data`` (one level deep); anything else replaces it."""
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(data.get(k), dict):
            merged = dict(data[k])
            merged.update(v)
            data[k] = merged
        else:
            data[k] = v
    return data
