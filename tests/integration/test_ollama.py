"""The Ollama governor on the real engine, with busybox containers standing in for
Ollama (labelled supervisor.ollama=true) and a fake Ollama API on loopback (the test
containers run with --network none, so ollama.api_url points at the fake)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import threading
import time

import pytest

from _testkit import RUN_ID, class_table, wait_for
from fake_ollama import FakeOllama, keep_busy
from supervisor.adapters.cgroups import CgroupFS
from supervisor.act.core_actions import CoreActions
from supervisor.runtime.daemon import Daemon
from supervisor.adapters.host import HostSampler
from supervisor.runtime.ollama import OllamaGovernor
from supervisor.model.snapshot import Pressure
from supervisor.publish.status import build_status

from ._procs import DaemonProcess, daemon_stepped

# Ollama exits on SIGTERM; a plain `sleep` as PID 1 would make every stop wait 10 s.
SERVE = "trap 'exit 0' TERM; sleep 3600 & wait"
OLLAMA = {"supervisor.ollama": "true", "supervisor.class": "critical"}


def ollama_config(make_config, tmp_path, **ollama):
    extra = {
        "classes": class_table("critical"),
        "ladder": {"min_action_interval": "1s"},
        "ollama": {"process_names": [], "cpu_cores": 1.0, "throttled_cpu_cores": 0.5,
                   "idle_for": "1s", "model_idle_for": "1s", "api_timeout_s": 1.0, **ollama},
    }
    return make_config(extra)


@pytest.fixture
def governed():
    """Make a daemon whose only capability is the governor (and the core alert/stop),
    with its inventory following the engine; stopped afterwards."""
    with contextlib.ExitStack() as made:
        def make(cfg, path, host=None) -> tuple[Daemon, OllamaGovernor]:
            d = made.enter_context(daemon_stepped(
                cfg, path, connect_timeout_s=10, host=host,
                components=lambda ctx: [CoreActions(ctx), OllamaGovernor(ctx)]))
            return d, d.components[1]
        yield make


def step(d: Daemon, gov: OllamaGovernor):
    """One pass as the running daemon makes it: fresh inventory, API polled, plan, act."""
    d.inventory.refresh()
    gov.poll_now()
    return d.run_once()


def journal_rows(d: Daemon, kind: str) -> list[dict]:
    return [r for r in d.journal.recent(500) if r["kind"] == kind and r["source"] == "ollama"]


def inspect(client, ident) -> dict:
    return client.api.inspect_container(ident)


# ---------------------------------------------------------------- report (the daemon process)


def test_report_policy_shows_drift_in_status_metrics_and_journal_and_changes_nothing(
        make_config, tmp_path, containers, docker_client):
    name = f"rs-ollama-{RUN_ID}-report"
    c = containers.run(name=name, command=SERVE, labels=OLLAMA,
                       environment={"OLLAMA_NUM_PARALLEL": "8", "OLLAMA_CPU_LIMIT": "4"})
    cfg, path = ollama_config(make_config, tmp_path)
    assert cfg.settings.ollama.policy == "report"
    d = DaemonProcess(cfg, path, tmp_path / "daemon.log").start()
    try:
        def target():
            st = d.status()
            return [t for t in st.get("ollama", {}).get("instances", []) if t["name"] == name]
        (t,) = wait_for(target, 20, 0.2, what="the Ollama container in supctl status")
        assert t["compliant"] is False and t["found_by"] == "label"
        checks = {x["check"]: x for x in t["checks"]}
        assert checks["num_parallel"]["actual"] == "OLLAMA_NUM_PARALLEL=8"
        assert checks["num_parallel"]["ok"] is False and checks["cpu_limit"]["ok"] is False
        assert any("OLLAMA_CPU_LIMIT=4 has no effect" in n for n in t["notices"])
        text = d.supctl("status", "--width", "400").stdout
        (line,) = [x for x in text.splitlines() if x.strip().startswith(f"{name}:")]
        assert "NOT COMPLIANT" in line and "OLLAMA_NUM_PARALLEL=8" in line
        metrics = d.metrics()
        assert f'resource_supervisor_ollama_compliant{{name="{name}"}} 0.0' in metrics
        assert (f'resource_supervisor_ollama_check{{check="num_parallel",name="{name}"}} 0.0'
                in metrics)

        def alert():
            r = d.supctl("journal", "--json", "-n", "200")
            rows = [json.loads(x) for x in r.stdout.splitlines() if x.strip()]
            return [x for x in rows if x["kind"] == "alert" and x["name"] == name]
        rows = wait_for(alert, 10, 0.2, what="the drift alert in the journal")
        assert "OLLAMA_NUM_PARALLEL=8" in rows[0]["reason"]
        assert "has no effect" in rows[0]["reason"]
    finally:
        d.stop()
    after = inspect(docker_client, c.id)  # report: the environment is left as it was
    assert "OLLAMA_NUM_PARALLEL=8" in after["Config"]["Env"]
    assert after["State"]["Running"]


# ---------------------------------------------------------------- enforce: CPU live, recreate when idle


def test_enforce_sets_cpu_live_and_recreates_only_once_idle_keeping_labels_mounts_restart(
        make_config, tmp_path, containers, docker_client, governed):
    fake = FakeOllama().start()
    data = tmp_path / "models"
    data.mkdir()
    (data / "keep.txt").write_text("kept")
    name = f"rs-ollama-{RUN_ID}-enforce"
    try:
        fake.load("llama3.2:latest")  # a loaded model: not idle
        c = containers.run(name=name, command=SERVE, labels=OLLAMA,
                           environment={"OLLAMA_NUM_PARALLEL": "8", "KEEP": "me"},
                           volumes={str(data): {"bind": "/root/.ollama", "mode": "rw"}},
                           restart_policy={"Name": "unless-stopped"})
        before = inspect(docker_client, c.id)
        assert before["HostConfig"]["CpuQuota"] == 0
        cfg, path = ollama_config(make_config, tmp_path, policy="enforce", api_url=fake.url)
        d, gov = governed(cfg, path)

        def cpu_set():
            step(d, gov)
            hc = inspect(docker_client, c.id)["HostConfig"]
            return hc["CpuQuota"] == 100_000 and hc["CpusetCpus"] == "1"
        wait_for(cpu_set, 15, 0.1, what="CPU quota 1 core and cpuset 1 set live")
        for _ in range(8):  # the model stays loaded: never recreated mid-request
            step(d, gov)
            time.sleep(0.1)
        live = inspect(docker_client, name)
        assert live["Id"] == c.id and "OLLAMA_NUM_PARALLEL=8" in live["Config"]["Env"]
        (t,) = build_status(d)["ollama"]["instances"]
        assert any("once idle" in p and "llama3.2" in p for p in t["pending"])
        assert journal_rows(d, "ollama_recreate") == []

        fake.unload_all()  # Ollama idle: the API lists no model

        def recreated():
            step(d, gov)
            return inspect(docker_client, name)["Id"] != c.id
        wait_for(recreated, 20, 0.1, what="the container recreated once idle")
        after = inspect(docker_client, name)
        env = after["Config"]["Env"]
        assert "OLLAMA_NUM_PARALLEL=2" in env and "OLLAMA_MAX_LOADED_MODELS=1" in env
        assert "KEEP=me" in env and "OLLAMA_NUM_PARALLEL=8" not in env
        assert after["Config"]["Labels"] == before["Config"]["Labels"]
        assert after["HostConfig"]["Binds"] == before["HostConfig"]["Binds"]
        assert [(m["Source"], m["Destination"], m["RW"]) for m in after["Mounts"]] == \
            [(m["Source"], m["Destination"], m["RW"]) for m in before["Mounts"]]
        assert after["HostConfig"]["RestartPolicy"] == before["HostConfig"]["RestartPolicy"]
        assert (after["Config"]["Cmd"], after["Config"]["Image"]) == \
            (before["Config"]["Cmd"], before["Config"]["Image"])
        assert after["HostConfig"]["CpuQuota"] == 100_000  # resources as set live
        assert after["State"]["Running"]
        rc, out = docker_client.containers.get(name).exec_run(["cat", "/root/.ollama/keep.txt"])
        assert (rc, out) == (0, b"kept")
        names = [x.name for x in docker_client.containers.list(all=True)]
        assert not any(n.startswith(f"{name}-replaced") for n in names)  # old one removed
        (row,) = [r for r in journal_rows(d, "ollama_recreate") if r["outcome"] == "ok"]
        assert row["before"]["env"]["OLLAMA_NUM_PARALLEL"] == "8"
        assert row["after"]["env"]["OLLAMA_NUM_PARALLEL"] == "2"
        for _ in range(3):
            step(d, gov)
        (t,) = build_status(d)["ollama"]["instances"]
        assert t["compliant"] is True and t["id"] == after["Id"][:12]
    finally:
        try:
            docker_client.containers.get(name).remove(force=True)
        except Exception:  # noqa: BLE001 - cleanup
            pass
        fake.close()


def test_a_new_container_that_does_not_start_is_rolled_back_to_the_old_one(
        make_config, tmp_path, containers, docker_client, governed):
    # This "Ollama" refuses to run with any parallelism but 8: the recreated one exits.
    name = f"rs-ollama-{RUN_ID}-rollback"
    c = containers.run(name=name, labels=OLLAMA, environment={"OLLAMA_NUM_PARALLEL": "8"},
                       command='test "$OLLAMA_NUM_PARALLEL" = 8 || exit 3; ' + SERVE)
    import socket
    with socket.socket() as s:  # an API address nothing answers on: idle = CPU quiet
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
        cfg, path = ollama_config(make_config, tmp_path, policy="enforce", api_url=url)
        d, gov = governed(cfg, path)

        def attempted():
            step(d, gov)
            return journal_rows(d, "ollama_recreate")
        (row,) = wait_for(attempted, 25, 0.1, what="a recreate attempt")
    assert row["outcome"] == "failed"
    assert "exit code 3" in row["detail"] and "rolled back" in row["detail"]
    live = inspect(docker_client, name)
    assert live["Id"] == c.id and live["State"]["Running"]
    assert "OLLAMA_NUM_PARALLEL=8" in live["Config"]["Env"]
    names = [x.name for x in docker_client.containers.list(all=True)]
    assert names.count(name) == 1 and not any(n.startswith(f"{name}-replaced") for n in names)
    for _ in range(5):  # not retried in a loop
        step(d, gov)
    assert len(journal_rows(d, "ollama_recreate")) == 1
    (t,) = build_status(d)["ollama"]["instances"]
    assert any("rolled back" in p for p in t["pending"])
    assert d.journal.states("ollama.recreate.") == {}


# ---------------------------------------------------------------- memory pressure: unload idle models


def test_memory_pressure_unloads_the_idle_model_and_leaves_the_busy_one(
        make_config, tmp_path, containers, governed):
    fake = FakeOllama(gen_s=0.2).start()
    stop = threading.Event()
    try:
        fake.load("idle-model:latest")
        fake.load("busy-model:latest")
        worker = keep_busy(fake.url, "busy-model:latest", stop)
        containers.run(name=f"rs-ollama-{RUN_ID}-mem", command=SERVE, labels=OLLAMA,
                       environment={"OLLAMA_NUM_PARALLEL": "2", "OLLAMA_MAX_LOADED_MODELS": "1"},
                       cpu_quota=100_000, cpuset_cpus="1")
        # The reserve is larger than this machine's available memory: a breach now. The
        # host's memory is pinned so the config still validates.
        cfg, path = make_config({
            "host": {"layout": "exact", "memory": "4096GiB"},
            "reserve": {"emergency": "4000GiB"},
            "classes": class_table("critical"),
            "ladder": {"min_action_interval": "1s"},
            "ollama": {"process_names": [], "cpu_cores": 1.0, "throttled_cpu_cores": 0.5,
                       "api_url": fake.url, "model_idle_for": "1s"}})
        d, gov = governed(cfg, path)
        wait_for(lambda: step(d, gov) and fake.unload_requests(), 20, 0.1,
                 what="an unload request")
        assert d.last_tick.reserve.breached
        for _ in range(10):
            step(d, gov)
            time.sleep(0.1)
        assert fake.unload_requests() == ["idle-model:latest"]
        assert fake.loaded() == ["busy-model:latest"]
        (row,) = [r for r in journal_rows(d, "ollama_unload") if r["outcome"] == "ok"]
        assert row["params"]["model"] == "idle-model:latest" and "reserve" in row["reason"]
        (t,) = build_status(d)["ollama"]["instances"]
        models = {m["name"]: m for m in t["api"]["models"]}
        assert models["busy-model:latest"]["in_use"] is True
        assert worker.is_alive()
    finally:
        stop.set()
        fake.close()


# ---------------------------------------------------------------- CPU pressure: throttle, restore


class PressureHost(HostSampler):
    """Real host readings with the CPU PSI line set by the test."""

    cpu_some_avg10 = 0.0

    def sample(self):
        real = super().sample()
        pressure = dict(real.pressure, cpu=Pressure(some_avg10=self.cpu_some_avg10))
        return dataclasses.replace(real, pressure=pressure)


def test_cpu_pressure_steps_the_quota_down_and_restores_it_when_pressure_clears(
        make_config, tmp_path, containers, docker_client, governed):
    c = containers.run(name=f"rs-ollama-{RUN_ID}-cpu", command=SERVE, labels=OLLAMA,
                       environment={"OLLAMA_NUM_PARALLEL": "2", "OLLAMA_MAX_LOADED_MODELS": "1"},
                       cpu_quota=100_000, cpu_period=100_000, cpuset_cpus="1")
    cfg, path = make_config({
        "classes": class_table("critical"),
        "ladder": {"psi_duration": "1s", "clear_after": "1s", "min_action_interval": "1s"},
        "ollama": {"process_names": [], "cpu_cores": 1.0, "throttled_cpu_cores": 0.5}})
    host = PressureHost()
    d, gov = governed(cfg, path, host=host)
    quota = lambda: inspect(docker_client, c.id)["HostConfig"]["CpuQuota"]  # noqa: E731
    host.cpu_some_avg10 = 95.0

    def throttled():
        step(d, gov)
        return quota() == 50_000
    wait_for(throttled, 10, 0.1, what="quota stepped down to 0.5 core")
    assert d.journal.get_state(f"ollama.throttle.{c.id}")["before_cores"] == 1.0
    # GET /plan between passes: the same plan twice, and the governor is left as it was.
    memory, views, states = gov.memory, gov.views, d.journal.states("ollama.")
    assert d.plan_now() == d.plan_now()
    assert gov.memory is memory and gov.views is views
    assert d.journal.states("ollama.") == states
    cpu_dir = d.cgroups.locate(c.id, inspect(docker_client, c.id)["State"]["Pid"]).dir("cpu")
    quota_file = "cpu.max" if d.cgroups.version == 2 else "cpu.cfs_quota_us"
    with open(os.path.join(cpu_dir, quota_file)) as f:
        assert f.read().split()[0] == "50000"  # the kernel's view agrees
    host.cpu_some_avg10 = 70.0  # below the start level, above the clear level (64%)
    t_end = time.monotonic() + 1.5
    while time.monotonic() < t_end:
        step(d, gov)
        time.sleep(0.1)
    assert quota() == 50_000
    host.cpu_some_avg10 = 5.0

    def restored():
        step(d, gov)
        return quota() == 100_000
    wait_for(restored, 10, 0.1, what="quota restored to 1 core")
    assert d.journal.get_state(f"ollama.throttle.{c.id}") is None
    purposes = [r["params"]["purpose"] for r in journal_rows(d, "ollama_cpu") if r["outcome"] == "ok"]
    assert purposes == ["throttle", "restore"]


# ---------------------------------------------------------------- Ollama as a host process


@pytest.fixture
def host_ollama(tmp_path):
    """A host process named like an Ollama server (a copy of sleep), with drifting env."""
    name = f"ollama-{RUN_ID[:6]}"
    exe = tmp_path / name
    shutil.copy(shutil.which("sleep"), exe)
    proc = subprocess.Popen([str(exe), "300"], env={"OLLAMA_NUM_PARALLEL": "8", "PATH": "/bin"})
    yield name, proc
    proc.kill()
    proc.wait()


def test_host_ollama_in_a_shared_cgroup_is_reported_and_not_limited(
        make_config, tmp_path, containers, host_ollama, governed):
    pname, proc = host_ollama
    cfg, path = make_config({"ollama": {"process_names": [pname], "policy": "enforce",
                                        "cpu_cores": 1.0, "throttled_cpu_cores": 0.5}})
    d, gov = governed(cfg, path)
    for _ in range(3):
        step(d, gov)
    (t,) = [t for t in build_status(d)["ollama"]["instances"] if t["kind"] == "host"]
    assert t["id"] == f"host:{proc.pid}" and t["compliant"] is False
    assert t["can_limit"] is False and t["limit_note"]
    assert any("never restarted" in p for p in t["pending"])
    assert {x["check"]: x["ok"] for x in t["checks"]}["num_parallel"] is False
    assert journal_rows(d, "ollama_cpu") == []


def test_host_ollama_in_a_cgroup_of_its_own_gets_its_cpu_quota(
        make_config, tmp_path, containers, host_ollama, governed):
    pname, proc = host_ollama
    fs = CgroupFS()
    rel = f"/rs-ollama-{RUN_ID}"
    loc = fs.make_group(rel)
    cpu_dir = loc.dir("cpu")
    home = open(f"/proc/{proc.pid}/cgroup").read()
    try:
        fs.write(f"{cpu_dir}/cgroup.procs", proc.pid)
        cfg, path = make_config({"ollama": {"process_names": [pname], "policy": "enforce",
                                            "cpu_cores": 1.0, "throttled_cpu_cores": 0.5}})
        d, gov = governed(cfg, path)

        def limited():
            step(d, gov)
            return [r for r in journal_rows(d, "ollama_cpu") if r["outcome"] == "ok"]
        (row,) = wait_for(limited, 10, 0.1, what="the host Ollama's cgroup limited")
        quota_file = "cpu.max" if fs.version == 2 else "cpu.cfs_quota_us"
        with open(f"{cpu_dir}/{quota_file}") as f:
            assert f.read().split()[0] == "100000"
        assert row["after"]["cpu_limit_cores"] == 1.0 and row["after"]["cgroup"] == rel
        step(d, gov)
        (t,) = [t for t in build_status(d)["ollama"]["instances"] if t["kind"] == "host"]
        assert t["can_limit"] is True
        assert {x["check"]: x["ok"] for x in t["checks"]}["cpu_limit"] is True
    finally:
        # Back to where it came from, then the group we made is removed.
        from supervisor.adapters.cgroups import parse_proc_cgroup
        back = parse_proc_cgroup(home).get("unified" if fs.version == 2 else "cpu", "/")
        fs.write(f"{fs.location(back).dir('cpu')}/cgroup.procs", proc.pid)
        fs.remove_group(rel)
