"""The one daemon harness of the integration tests: the daemon stepped by the test
(``daemon_stepped``), running its own loop in a thread (``daemon_thread``; both from
tests/_harness.py, which the v2 lane shares) or as a real process (``DaemonProcess``),
and a second Docker engine, for the fault, crash and hostile-input tests: start, ask,
SIGKILL, restart, and read what they left behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from _harness import daemon_stepped, daemon_thread
from _testkit import ROOT, metrics_text, stop_process, wait_for
from supervisor.publish.control import request

__all__ = ["CONTAINER_KINDS", "DaemonProcess", "SecondEngine", "daemon_stepped", "daemon_thread",
           "journal_integrity", "journal_states"]

ENGINE_SCRIPT = ROOT / "scripts" / "test-engine"
CONTAINER_KINDS = {"place", "throttle", "unthrottle", "reclaim", "hibernate", "wake", "stop",
                   "ollama_cpu", "ollama_recreate", "ollama_unload"}


class DaemonProcess:
    """``python -m supervisor -c CONFIG`` as a child process, logging to a file."""

    def __init__(self, cfg, path, log_path, env_extra: dict | None = None, args=()):
        self.cfg, self.path, self.log_path = cfg, Path(path), Path(log_path)
        self.sock = cfg.settings.control.socket
        self.journal_path = os.path.join(cfg.settings.state_dir, "journal.sqlite3")
        self.env_extra = env_extra or {}
        self.args = tuple(args)  # more command-line arguments (--dry-run)
        self.proc: subprocess.Popen | None = None

    def start(self, ready_timeout_s: float = 30.0) -> "DaemonProcess":
        """Start it and wait for its first pass (GET /status says ready)."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "supervisor", "-c", str(self.path), *self.args],
                cwd=ROOT, env={**os.environ, **self.env_extra}, stdout=log, stderr=log)
        wait_for(lambda: self.proc.poll() is not None or self.get("/status").get("ready"),
                 ready_timeout_s, 0.05, "the daemon's first pass")
        assert self.proc.poll() is None, self.log_text()[-3000:]
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def call(self, method: str, url: str, body: dict | None = None,
             timeout_s: float = 10.0) -> tuple[int, dict]:
        return request(self.sock, method, url, body, timeout_s=timeout_s)

    def get(self, url: str) -> dict:
        try:
            code, body = self.call("GET", url, timeout_s=5)
        except OSError:
            return {}
        return body if code == 200 else {}

    def journal(self, after_seq: int = 0) -> list[dict]:
        return self.get(f"/journal?limit=5000&after={after_seq}").get("entries", [])

    def metrics(self) -> str:
        return metrics_text(self.cfg.settings.metrics.listen)

    def supctl(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "supervisor.cli", "--socket", self.sock,
                               *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)

    def status(self) -> dict:
        r = self.supctl("status", "--json")
        return json.loads(r.stdout) if r.stdout.strip() else {}

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as after a crash or the OOM killer."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> int | None:
        return None if self.proc is None else stop_process(self.proc)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def journal_integrity(path: str) -> str:
    """PRAGMA integrity_check of a journal file the daemon may have died holding."""
    db = sqlite3.connect(path, timeout=10)
    try:
        return db.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        db.close()


def journal_states(path: str, prefix: str) -> dict[str, dict]:
    db = sqlite3.connect(path, timeout=10)
    try:
        rows = db.execute("SELECT key, value FROM state WHERE key LIKE ?",
                          (prefix + "%",)).fetchall()
    finally:
        db.close()
    return {k[len(prefix):]: json.loads(v) for k, v in rows}


class SecondEngine:
    """A Docker engine of the test's own (scripts/test-engine with its own instance
    folder), which the test may stop and start again while a daemon watches it."""

    def __init__(self, folder: str):
        self.folder = folder
        self.env = {**os.environ, "SUPERVISOR_TEST_ENGINE_DIR": folder}
        self.host = ""

    def _script(self, verb: str) -> str:
        out = subprocess.run([str(ENGINE_SCRIPT), verb], env=self.env, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, f"test-engine {verb} failed:\n{out.stderr}"
        return out.stdout

    def start(self) -> str:
        self.host = self._script("start").strip().split("=", 1)[1]
        return self.host

    def pid(self) -> int | None:
        try:
            return int(Path(self.folder, "dockerd.pid").read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def halt(self, sig: int = signal.SIGKILL, timeout_s: float = 60.0) -> None:
        """End the dockerd this test started. SIGKILL, as a crash or the OOM killer would:
        its containerd goes with it (parent-death signal) while the containers run on
        under their shims, so a daemon's last view of them stays true but can no longer
        be checked. SIGTERM, as `systemctl stop docker`: the containers stop with it."""
        pid = self.pid()
        assert pid is not None, "the second engine is not running"
        os.kill(pid, sig)
        # Until it is reaped, `kill -0` (the script's liveness check) still finds it.
        wait_for(lambda: not os.path.exists(f"/proc/{pid}"), timeout_s, 0.05, "dockerd to exit")

    def alive(self) -> bool:
        pid = self.pid()
        return pid is not None and os.path.exists(f"/proc/{pid}")

    def remove(self) -> None:
        """Stop it through the script (which removes its containers) and delete its
        folder. An engine a test left killed is started first: its containers outlived
        it under their shims, and only the engine can take them down."""
        if not self.alive():
            try:
                self._script("start")
            except AssertionError:
                pass
        self._script("stop")
        shutil.rmtree(self.folder, ignore_errors=True)
