"""Recommendation history survives a daemon restart (a real daemon process, stopped as
systemd stops it and started again), and adaptive limits count it towards their
minimum."""

from __future__ import annotations

import os

import numpy as np

from supervisor.adapters.history_store import FILE_NAME, HistoryStore, StoredHistory
from supervisor.policy.placement import ADAPTIVE_MIN_HISTORY_S

from ._procs import DaemonProcess
from _testkit import wait_for

MIB = 1 << 20


def _row(d: DaemonProcess, cid: str) -> dict:
    rows = d.get(f"/recommend?container={cid[:12]}").get("containers", [])
    return rows[0] if rows else {}


def test_history_survives_a_daemon_restart(make_config, containers, tmp_path):
    c = containers.run(mem_limit="48m")
    cfg, path = make_config()
    first = DaemonProcess(cfg, path, tmp_path / "daemon-1.log").start()
    try:
        passes = first.get("/status")["daemon"]["passes"]
        wait_for(lambda: first.get("/status")["daemon"]["passes"] >= passes + 10, 30,
                 what="ten more passes")
    finally:
        assert first.stop() == 0, first.log_text()[-3000:]
    # Written at shutdown, atomically: the file holds every sample of that run.
    stored = HistoryStore(os.path.join(cfg.settings.state_dir, FILE_NAME)).load()
    assert stored is not None and len(stored.samples[c.id]) >= 10

    second = DaemonProcess(cfg, path, tmp_path / "daemon-2.log").start()
    try:
        # Right after its first pass the daemon knows what the first one sampled.
        after = _row(second, c.id)
        assert after["samples"] > len(stored.samples[c.id]), after
        assert "recommendation history restored for 1 containers" in second.log_text()
    finally:
        assert second.stop() == 0, second.log_text()[-3000:]


def test_adaptive_limits_count_history_from_before_the_restart(make_config, containers, tmp_path):
    c = containers.run(mem_limit="48m")
    cfg, path = make_config({"classes": {"standard": {
        "pool": "standard", "cpuset": "any", "priority": 50, "memory_limit": "64MiB",
        "memory_min": "8MiB", "adaptive_limits": True}}})
    # What a daemon that ran almost the minimum before it was restarted left behind.
    short_s = 4.0
    n = int((ADAPTIVE_MIN_HISTORY_S - short_s) / cfg.tick_s)
    HistoryStore(os.path.join(cfg.settings.state_dir, FILE_NAME)).save(
        StoredHistory(cfg.tick_s, 0.0, {c.id: np.full(n, 20.0 * MIB)}), 100_000)
    d = DaemonProcess(cfg, path, tmp_path / "daemon.log").start()
    try:
        row = _row(d, c.id)
        assert row["samples"] > n and row["adaptive_ready"] is False, row
        assert row["recommended_limit_bytes"] == 24 * MIB  # 20 MiB + 20%

        def limit() -> int | None:
            mine = [x for x in d.status().get("containers", []) if x["id"] == c.id[:12]]
            return mine[0]["memory_limit_bytes"] if mine else None
        assert limit() == 48 * MIB  # not yet: less than the minimum in all
        # A few seconds of its own complete the minimum (not a full five minutes):
        # then the adaptive limit is written.
        wait_for(lambda: limit() == 24 * MIB, 30, what="the adaptive limit")
        c.reload()
        assert c.attrs["HostConfig"]["Memory"] == 24 * MIB
    finally:
        assert d.stop() == 0, d.log_text()[-3000:]


def test_a_damaged_history_file_is_moved_aside_and_the_daemon_starts(make_config, tmp_path):
    cfg, path = make_config()
    os.makedirs(cfg.settings.state_dir, exist_ok=True)
    bad = os.path.join(cfg.settings.state_dir, FILE_NAME)
    with open(bad, "wb") as f:
        f.write(b"RSHIST\x00\x01 this is not what the daemon wrote")
    d = DaemonProcess(cfg, path, tmp_path / "daemon.log").start()
    try:
        aside = [p for p in os.listdir(cfg.settings.state_dir) if p.startswith(FILE_NAME + ".damaged-")]
        assert aside, os.listdir(cfg.settings.state_dir)
        assert "moved to" in d.log_text()
    finally:
        assert d.stop() == 0, d.log_text()[-3000:]
