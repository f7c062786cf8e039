"""The recommendation history on disk: it round-trips, stays bounded, and a file this
version cannot read is moved aside (never reused, never deleted)."""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest

from supervisor.adapters import history_store as hs
from supervisor.adapters.history_store import HistoryStore, StoredHistory
from supervisor.observe.history import History, resample
from supervisor.policy.placement import ADAPTIVE_MIN_HISTORY_S, adaptive_ready
from supervisor.runtime.history_keeper import HistoryKeeper

from _handmade import config

MIB = 1 << 20


def _store(tmp_path) -> HistoryStore:
    return HistoryStore(str(tmp_path / hs.FILE_NAME))


def test_history_round_trips_through_the_file(tmp_path):
    h = History(window_s=600, step_s=5)
    for v in range(100):
        h.record("a", v * MIB)
    h.record("b", 7 * MIB)
    store = _store(tmp_path)
    store.save(StoredHistory(5.0, 1000.0, h.export()), h.size)
    back = store.load()
    assert back is not None and back.step_s == 5.0 and back.saved_at_s == 1000.0
    assert np.array_equal(back.samples["a"], np.arange(100) * MIB)
    h2 = History(window_s=600, step_s=5)
    assert h2.restore(back.samples, back.step_s) == 2
    assert h2.samples("a") == 100 and h2.percentile("a", 99) == h.percentile("a", 99)
    assert h2.covered_s("a") == 500.0
    assert not [p for p in os.listdir(tmp_path) if p != hs.FILE_NAME]  # no temp file left


def test_the_file_keeps_only_the_window_and_a_bounded_number_of_containers(tmp_path, monkeypatch):
    store = _store(tmp_path)
    monkeypatch.setattr(hs, "MAX_CONTAINERS", 3)
    samples = {f"c{i}": np.arange(1000, dtype=float) for i in range(5)}
    samples["big"] = np.arange(5000, dtype=float)
    size = store.save(StoredHistory(1.0, 0.0, samples), max_samples=200)
    back = store.load()
    assert back is not None and len(back.samples) == 3
    assert all(len(v) == 200 for v in back.samples.values())
    assert np.array_equal(back.samples["big"], np.arange(4800, 5000, dtype=float))  # the newest
    assert size == os.path.getsize(store.path) < 3 * 200 * 8 + 1024


@pytest.mark.parametrize("damage", ["truncated", "flipped", "garbage", "empty"])
def test_a_damaged_file_is_moved_aside_and_the_daemon_starts_without_history(tmp_path, damage):
    store = _store(tmp_path)
    store.save(StoredHistory(1.0, 0.0, {"a": np.arange(50, dtype=float)}), 100)
    raw = open(store.path, "rb").read()
    bad = {"truncated": raw[:-20], "flipped": raw[:40] + bytes([raw[40] ^ 0xFF]) + raw[41:],
           "garbage": b"not a history file at all", "empty": b""}[damage]
    with open(store.path, "wb") as f:
        f.write(bad)
    assert store.load() is None
    assert not os.path.exists(store.path)
    assert store.moved_aside_to and open(store.moved_aside_to, "rb").read() == bad


def test_a_file_of_another_format_version_is_moved_aside(tmp_path, monkeypatch):
    store = _store(tmp_path)
    monkeypatch.setattr(hs, "FORMAT_VERSION", 2)  # written by a newer version
    store.save(StoredHistory(1.0, 0.0, {"a": np.arange(50, dtype=float)}), 100)
    monkeypatch.setattr(hs, "FORMAT_VERSION", 1)
    assert store.load() is None
    assert "format version 2" in store.problem
    assert os.path.exists(store.moved_aside_to) and not os.path.exists(store.path)


def test_a_header_that_lies_about_its_samples_is_refused():
    raw = hs.encode(StoredHistory(1.0, 0.0, {"a": np.arange(10, dtype=float)}), 100)
    body = raw[:-4][:-8]  # one sample fewer than the header says, checksum made to match
    import zlib
    with pytest.raises(hs.HistoryFileError, match="does not match"):
        hs.decode(body + struct.pack("<I", zlib.crc32(body) & 0xFFFFFFFF))


def test_restored_samples_are_resampled_to_the_current_tick_keeping_peaks():
    one_s = np.array([1, 1, 9, 1, 1, 1, 1, 1, 1, 1], dtype=float)
    five_s = resample(one_s, 1.0, 5.0)
    assert list(five_s) == [9.0, 1.0]  # the peak survives the coarser step
    assert len(resample(np.ones(10), 5.0, 1.0)) == 50  # the same 50 s span
    h = History(window_s=3600, step_s=5.0)
    h.restore({"a": np.ones(600)}, 1.0)  # 10 minutes at a 1 s tick
    assert h.samples("a") == 120 and h.covered_s("a") == 600.0


def test_restored_history_is_kept_until_the_inventory_lists_the_container():
    h = History(window_s=3600, step_s=1.0)
    h.restore({"a": np.ones(10), "gone": np.ones(10)}, 1.0)
    h.forget_except(set())  # the engine is not listed yet: restored history stays
    assert h.samples("a") == 10 and h.samples("gone") == 10
    for _ in range(200):
        h.record("a", 1.0)
        h.forget_except({"a"})
    assert h.samples("gone") == 0 and h.samples("a") == 210  # forgotten after the grace
    h.record("new", 1.0)
    h.forget_except({"a"})
    assert h.samples("new") == 0  # a container seen live and gone is forgotten at once


def test_adaptive_limits_count_history_across_restarts_and_never_less_than_the_minimum(tmp_path):
    cfg = config()
    need = int(ADAPTIVE_MIN_HISTORY_S)
    before = History(window_s=3600, step_s=1.0)
    for _ in range(need - 60):
        before.record("a", 50 * MIB)
    keeper = HistoryKeeper(before, str(tmp_path), clock=lambda: 100.0)
    keeper.close()  # the daemon stops
    after = History(window_s=3600, step_s=1.0)
    assert HistoryKeeper(after, str(tmp_path), clock=lambda: 200.0).load() == 1
    assert not adaptive_ready(after, "a", cfg)
    for _ in range(60):
        after.record("a", 50 * MIB)
    assert adaptive_ready(after, "a", cfg)
    # A window shorter than the minimum never makes a short history enough.
    short = History(window_s=ADAPTIVE_MIN_HISTORY_S / 2, step_s=1.0)
    for _ in range(need * 2):
        short.record("a", 50 * MIB)
    assert not adaptive_ready(short, "a", cfg)


def test_the_keeper_writes_at_most_every_interval_and_at_shutdown(tmp_path):
    now = [0.0]
    h = History(window_s=60, step_s=1.0)
    keeper = HistoryKeeper(h, str(tmp_path), clock=lambda: now[0], save_every_s=60)
    h.record("a", 1.0)
    keeper.after_pass()
    keeper._writer.join(5)
    assert keeper.saves == 1
    now[0] = 30.0
    keeper.after_pass()
    assert keeper.saves == 1  # not due yet
    h.record("a", 2.0)
    keeper.close()
    assert keeper.saves == 2
    assert list(_store(tmp_path).load().samples["a"]) == [1.0, 2.0]
