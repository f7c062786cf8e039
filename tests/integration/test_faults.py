"""Engine faults (issue 9): the Docker engine dies under a running daemon. The daemon
keeps serving /metrics and `supctl status` and says the engine is down, holds back every
container action planned on its stale view (only alerts go through), and once the
engine is back resumes placement by itself, without a restart.

The engine here is a second one of the test's own (scripts/test-engine with an instance
folder of its own), so stopping it touches nothing else."""

import time

import docker
import pytest

from _testkit import RUN_ID, Containers, class_table, metric_value, wait_for

from ._procs import CONTAINER_KINDS, DaemonProcess, SecondEngine

MIB = 2**20


@pytest.fixture
def second_engine():
    eng = SecondEngine(f"/tmp/rs-fault-engine-{RUN_ID}")
    eng.start()
    try:
        yield eng
    finally:
        eng.remove()


def hostconfig(client, cid):
    hc = client.api.inspect_container(cid)["HostConfig"]
    return {"memory": hc["Memory"], "cpuset": hc["CpusetCpus"], "cpu_quota": hc["CpuQuota"]}


def placed(client, cid, cpuset):
    try:
        return hostconfig(client, cid) == {"memory": 64 * MIB, "cpuset": cpuset,
                                           "cpu_quota": 50_000}
    except docker.errors.DockerException:
        return False  # the engine is still coming back


def test_engine_stops_and_returns_under_a_running_daemon(make_config, second_engine, tmp_path,
                                                         record_property):
    classes = class_table("infrastructure", "standard",
                          standard={"cpuset": "1", "cpu_quota": 0.5, "hibernate": False})
    cfg, path = make_config({"docker": {"host": second_engine.host}, "classes": classes})
    client = docker.DockerClient(base_url=second_engine.host, timeout=30)
    made = Containers(client)
    # SIGKILL as stop signal: the engine's shutdown stops it at once (sh as PID 1 would
    # ignore SIGTERM and hold the shutdown for its timeout).
    a = made.run(restart_policy={"Name": "always"}, stop_signal="SIGKILL")
    d = DaemonProcess(cfg, path, tmp_path / "daemon.log").start()
    try:
        wait_for(lambda: placed(client, a.id, "1"), 20, 0.1, "the container placed")
        pid = d.pid
        seq_before = max((e["seq"] for e in d.journal()), default=0)

        second_engine.halt()
        t_down = time.time()

        # Still serving, and saying the engine is down.
        st = wait_for(lambda: (s := d.status()).get("engine", {}).get("up") is False and s,
                      20, 0.1, "status to report the engine down")
        assert st["engine"]["error"] and st["daemon"]["pid"] == pid
        assert d.supctl("status", "--json").returncode == 4  # engine unreachable
        text = d.supctl("status", "--width", "120")
        assert text.returncode == 4 and "engine: UNREACHABLE" in text.stdout, text.stderr
        body = d.metrics()
        assert metric_value(body, "resource_supervisor_docker_engine_up") == 0.0
        passes_down = st["daemon"]["passes"]

        # The container runs on (the engine was killed, not its shims) but the daemon can
        # no longer check it. A reload makes placement want to act on that view: the
        # class moves to another core. The daemon must hold the action back.
        text = path.read_text()
        assert text.count('cpuset = "1"') == 1
        path.write_text(text.replace('cpuset = "1"', 'cpuset = "0"'))
        code, reply = d.call("POST", "/reload")
        assert code == 200, reply

        def held_place():
            plan = d.get("/plan")
            return [h for h in plan.get("held", []) if h["kind"] == "place" and h["target"] == a.id]
        (held,) = wait_for(held_place, 15, 0.1, "the place action held back")
        assert held["params"]["cpuset_cpus"] == "0"
        wait_for(lambda: (metric_value(d.metrics(), "resource_supervisor_daemon_events_total",
                                       'event="actions_held_engine_down"') or 0) >= 1,
                 15, 0.2, "held actions counted")
        wait_for(lambda: d.status()["daemon"]["passes"] >= passes_down + 5, 20, 0.2,
                 "several passes while the engine is down")
        down_rows = d.journal(seq_before)
        acted = [e for e in down_rows if e["kind"] in CONTAINER_KINDS]
        assert acted == [], acted
        assert d.alive()

        second_engine.start()
        t_up = time.monotonic()
        wait_for(lambda: d.status().get("engine", {}).get("up") is True, 60, 0.1,
                 "status to report the engine up again")
        # The engine, back, restarts the container (restart policy; no live-restore):
        # it goes to the reloaded core...
        wait_for(lambda: placed(client, a.id, "0"), 30, 0.1,
                 "placement of the restarted container")
        resume_s = time.monotonic() - t_up
        # ...a new one with no limit is placed...
        b = made.run(stop_signal="SIGKILL")
        wait_for(lambda: placed(client, b.id, "0"), 20, 0.1, "placement of a new container")
        # ...and a cpuset changed behind the daemon's back is put back.
        client.api.update_container(a.id, cpuset_cpus="1")
        wait_for(lambda: placed(client, a.id, "0"), 20, 0.1, "drift repaired after the outage")

        assert d.alive() and d.pid == pid and d.status()["daemon"]["pid"] == pid
        body = d.metrics()
        assert metric_value(body, "resource_supervisor_docker_engine_up") == 1.0
        assert (metric_value(body, "resource_supervisor_inventory_events_total",
                             'event="reconnects"') or 0) >= 1
        after = [e for e in d.journal(seq_before) if e["kind"] == "place"]
        assert after and all(e["time_s"] > t_down for e in after)
        assert {e["target"] for e in after if e["outcome"] == "ok"} >= {a.id, b.id}
        record_property("faults_survived", 1)
        record_property("engine_resume_s", round(resume_s, 2))
    finally:
        code = d.stop()
        client.close()  # the engine's removal (fixture) removes its containers
    assert code == 0, d.log_text()[-3000:]
