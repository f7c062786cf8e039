"""The daemon as a process: comes up and stays up where no engine answers, saying so;
and sees the real engine's containers when there is one."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

from conftest import ROOT, wait_for


def start_daemon(cfg_path, env_extra=None):
    env = dict(os.environ)
    env.update(env_extra or {})
    return subprocess.Popen([sys.executable, "-m", "supervisor", "-c", str(cfg_path)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def supctl(sock, *args):
    return subprocess.run([sys.executable, "-m", "supervisor.cli", "--socket", str(sock), *args],
                          capture_output=True, text=True, timeout=30)


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_daemon_stays_up_without_an_engine_and_says_so(make_config, tmp_path):
    cfg, path = make_config({"docker": {"host": f"unix://{tmp_path}/no-engine.sock"}})
    proc = start_daemon(path)
    sock = cfg.settings.control.socket
    try:
        wait_for(lambda: os.path.exists(sock), 15, what="control socket")
        st = wait_for(lambda: json.loads(supctl(sock, "status", "--json").stdout or "{}").get("ready"),
                      15, what="first snapshot")
        time.sleep(2)  # several ticks later it is still there
        assert proc.poll() is None
        r = supctl(sock, "status", "--json")
        st = json.loads(r.stdout)
        assert r.returncode == 4  # engine unreachable
        assert st["engine"]["up"] is False and st["engine"]["error"]
        assert st["daemon"]["loop_alive"] is True and st["daemon"]["passes"] >= 3
        text = supctl(sock, "status", "--width", "100")
        assert "engine: UNREACHABLE" in text.stdout
        body = urllib.request.urlopen(f"http://{cfg.settings.metrics.listen}/metrics", timeout=5).read().decode()
        assert "resource_supervisor_docker_engine_up 0.0" in body
    finally:
        stop(proc)
    assert proc.returncode == 0, proc.stderr.read()


def test_daemon_sees_the_engines_containers(make_config, containers):
    c = containers.run(mem_limit="48m")
    cfg, path = make_config()
    proc = start_daemon(path)
    sock = cfg.settings.control.socket
    try:
        wait_for(lambda: os.path.exists(sock), 15, what="control socket")

        def mine():
            r = supctl(sock, "status", "--json")
            st = json.loads(r.stdout or "{}")
            return [x for x in st.get("containers", []) if x["id"] == c.id[:12]]
        rows = wait_for(mine, 15, what="container in status")
        assert rows[0]["memory_limit_bytes"] == 48 * 2**20
        assert rows[0]["memory_working_set_bytes"] is not None
    finally:
        stop(proc)


def test_bad_config_does_not_start_and_names_the_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[pools.standard]\nbudget = "lots"\n[classes.standard]\npool = "standard"\n')
    r = subprocess.run([sys.executable, "-m", "supervisor", "-c", str(bad)], cwd=ROOT,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 78
    assert "pools.standard.budget" in r.stderr and "GiB" in r.stderr
