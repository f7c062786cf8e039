"""The daemon as a process: comes up and stays up where no engine answers, saying so;
and sees the real engine's containers when there is one."""

import subprocess
import sys
import time

from ._procs import DaemonProcess
from _testkit import ROOT, wait_for


def test_daemon_stays_up_without_an_engine_and_says_so(make_config, tmp_path):
    cfg, path = make_config({"docker": {"host": f"unix://{tmp_path}/no-engine.sock"}})
    d = DaemonProcess(cfg, path, tmp_path / "daemon.log").start()
    try:
        time.sleep(2)  # several ticks later it is still there
        assert d.alive()
        r = d.supctl("status", "--json")
        assert r.returncode == 4, r.stderr  # engine unreachable
        st = d.status()
        assert st["engine"]["up"] is False and st["engine"]["error"]
        assert st["daemon"]["loop_alive"] is True and st["daemon"]["passes"] >= 3
        text = d.supctl("status", "--width", "100")
        assert "UNREACHABLE" in text.stdout
        assert "resource_supervisor_docker_engine_up 0.0" in d.metrics()
    finally:
        assert d.stop() == 0, d.log_text()[-3000:]


def test_daemon_sees_the_engines_containers(make_config, containers, tmp_path):
    c = containers.run(mem_limit="48m")
    cfg, path = make_config()
    d = DaemonProcess(cfg, path, tmp_path / "daemon.log").start()
    try:
        def mine():
            return [x for x in d.status().get("containers", []) if x["id"] == c.id[:12]]
        rows = wait_for(mine, 15, what="container in status")
        assert rows[0]["memory_limit_bytes"] == 48 * 2**20
        assert rows[0]["memory_working_set_bytes"] is not None
    finally:
        d.stop()


def test_bad_config_does_not_start_and_names_the_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[pools.standard]\nbudget = "lots"\n[classes.standard]\npool = "standard"\n')
    r = subprocess.run([sys.executable, "-m", "supervisor", "-c", str(bad)], cwd=ROOT,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 78
    assert "pools.standard.budget" in r.stderr and "GiB" in r.stderr
