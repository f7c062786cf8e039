"""The daemon as a service: its systemd unit, sd_notify, the control API through supctl
on the real engine, peer-credential checks, and SIGHUP reloads."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from _testkit import ROOT, wait_for
from supervisor.model.actions import Action, Outcome
from supervisor.act.component import Component

from ._procs import DaemonProcess, daemon_thread

MIB = 2**20
GIB = 2**30
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


# ---------------------------------------------------------------- helpers


def supctl(sock, *args, as_nobody=False, timeout=60):
    cmd = [sys.executable, "-m", "supervisor.cli", "--socket", str(sock), *args]
    return subprocess.run(NOBODY + cmd if as_nobody else cmd, capture_output=True, text=True,
                          timeout=timeout, cwd="/" if as_nobody else ROOT)


def status_json(sock):
    r = supctl(sock, "status", "--json")
    return json.loads(r.stdout) if r.stdout.strip() else {}


def log_lines(path):
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


@pytest.fixture
def open_dir():
    """A directory user nobody can reach (pytest's tmp dirs are root's alone)."""
    d = tempfile.mkdtemp(prefix="rs-ctl-", dir="/tmp")
    os.chmod(d, 0o755)
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


# ---------------------------------------------------------------- the unit file


def unit_directives(text):
    """[(section, key, value, commented)] where commented = a comment line stands in the
    paragraph (lines since the last blank line) above the directive."""
    out, section, comment_seen = [], "", False
    for line in text.splitlines():
        s = line.strip()
        if not s:
            comment_seen = False
        elif s.startswith("#"):
            comment_seen = True
        elif s.startswith("["):
            section, comment_seen = s.strip("[]"), False
        else:
            key, _, value = s.partition("=")
            out.append((section, key, value, comment_seen))
    return out


def test_unit_file_verifies_with_the_installers_paths(tmp_path):
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing (Debian package systemd)"
    venv = Path(sys.prefix)
    assert (venv / "bin" / "resource-supervisord").exists()
    r = subprocess.run([str(ROOT / "scripts" / "install"), "--render-units", str(tmp_path)],
                       env={**os.environ, "VENV": str(venv)}, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    unit_path = tmp_path / "resource-supervisor.service"
    assert (tmp_path / "resource_supervisor.slice").exists()
    v = subprocess.run([analyze, "verify", str(unit_path)], capture_output=True, text=True,
                       timeout=120)
    # verify exits 0 even on a directive it ignores: its output must be empty as well
    assert (v.returncode, v.stdout + v.stderr) == (0, "")

    d = unit_directives(unit_path.read_text())
    one = {(s, k): val for s, k, val, _ in d}
    many = lambda s, k: [val for sec, key, val, _ in d if (sec, key) == (s, k)]  # noqa: E731
    svc = lambda k: one[("Service", k)]  # noqa: E731
    assert svc("ExecStart") == f"{venv}/bin/resource-supervisord -c /etc/resource-supervisor/supervisor.toml"
    assert many("Service", "ExecReload") == [
        f"{venv}/bin/resource-supervisord --check -c /etc/resource-supervisor/supervisor.toml",
        "/bin/kill -HUP $MAINPID"]
    assert (svc("Type"), svc("NotifyAccess"), svc("Restart")) == ("notify", "main", "on-failure")
    assert svc("RestartPreventExitStatus") == "78"  # what the daemon exits with on a bad config
    # Rule 2.3: the start limit must be reachable, so restarts cannot loop
    restart_s = int(svc("RestartSec").rstrip("s"))
    assert int(one[("Unit", "StartLimitBurst")]) * restart_s < int(one[("Unit", "StartLimitIntervalSec")])
    # the watchdog must outlast one bounded engine call (docker.timeout_s, 10 s)
    assert int(svc("WatchdogSec").rstrip("s")) > 2 * 10
    assert int(svc("OOMScoreAdjust")) <= -500 and svc("MemoryMin") == "128M"
    # directly under the root slice (a dash in the name would nest it, systemd.slice(5))
    assert svc("Slice") == "resource_supervisor.slice" and "-" not in svc("Slice")
    assert (svc("ProtectSystem"), svc("ReadWritePaths")) == ("strict", "/sys/fs/cgroup")
    assert set(svc("RestrictAddressFamilies").split()) == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
    assert {"CAP_SYS_ADMIN", "CAP_NET_ADMIN", "CAP_SYS_PTRACE"} <= set(svc("CapabilityBoundingSet").split())
    # the paths the daemon is pinned to lie in the directories systemd makes for it
    env = dict(e.split("=", 1) for e in many("Service", "Environment"))
    assert env["RESOURCE_SUPERVISOR_STATE_DIR"] == "/var/lib/" + svc("StateDirectory")
    from supervisor.cli.supctl import DEFAULT_SOCKET
    assert env["RESOURCE_SUPERVISOR_CONTROL__SOCKET"] == DEFAULT_SOCKET
    assert DEFAULT_SOCKET.startswith("/run/" + svc("RuntimeDirectory") + "/")
    # every directive says why it is there
    bare = [f"{k}={v}" for s, k, v, commented in d if s == "Service" and not commented]
    assert bare == []


# ---------------------------------------------------------------- sd_notify


class NotifyReceiver:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET, read by a thread so the
    daemon's messages never queue up (the kernel keeps only ~10 unread datagrams)."""

    def __init__(self, path):
        self.path = str(path)
        self.messages: list[dict] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self.path)
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                data = self._sock.recv(65536).decode()
            except socket.timeout:
                continue
            self.messages.append(dict(line.split("=", 1) for line in data.splitlines()))

    def wait(self, until, timeout_s, what):
        return wait_for(lambda: until(list(self.messages)), timeout_s, what=what)

    def close(self):
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()


def pings(msgs):
    return [m for m in msgs if m.get("WATCHDOG") == "1"]


def test_sd_notify_ready_status_watchdog_each_pass_and_stopping(make_config, containers, tmp_path):
    containers.run()
    cfg, path = make_config()
    rx = NotifyReceiver(tmp_path / "notify.sock")
    d = DaemonProcess(cfg, path, tmp_path / "daemon.log",
                      {"NOTIFY_SOCKET": rx.path, "WATCHDOG_USEC": "4000000"}).start()
    try:
        # one WATCHDOG=1 per pass, with the pass's one-line summary in STATUS=
        per_pass = lambda ms: [m for m in pings(ms) if "STATUS" in m]  # noqa: E731
        rx.wait(lambda ms: len(per_pass(ms)) >= 8, 30, "READY=1 and eight passes' WATCHDOG=1")
        first = rx.messages[0]
        assert first["READY"] == "1" and first["MAINPID"] == str(d.pid)
        assert re.fullmatch(r"engine up, \d+ running, fullest pool \w+ \d+%, pass [\d.]+ms",
                            first["STATUS"])
        after = per_pass(rx.messages)
        assert all(m["STATUS"].startswith("engine up, ") for m in after)
        assert status_json(cfg.settings.control.socket)["daemon"]["passes"] >= len(after)
    finally:
        code = d.stop()
        try:
            rx.wait(lambda ms: any(m.get("STOPPING") == "1" for m in ms), 10, "STOPPING=1")
        finally:
            rx.close()
    assert code == 0


def test_watchdog_is_fed_between_passes_when_the_tick_is_long(make_config, tmp_path):
    cfg, path = make_config({"intervals": {"tick": "60s", "reconcile": "60s"}})
    rx = NotifyReceiver(tmp_path / "notify.sock")
    d = DaemonProcess(cfg, path, tmp_path / "daemon.log",
                      {"NOTIFY_SOCKET": rx.path, "WATCHDOG_USEC": "1000000"}).start()
    try:
        rx.wait(lambda ms: len(pings(ms)) >= 6, 30, "six WATCHDOG=1 after READY=1")
        assert rx.messages[0]["READY"] == "1"
        passes = status_json(cfg.settings.control.socket)["daemon"]["passes"]
        # most pings came while the loop waited out its 60 s tick
        assert passes < len(pings(rx.messages))
    finally:
        d.stop()
        rx.close()


class SlowSteps(Component):
    """A capability whose actions each take 1.2 s to execute (as an engine call answering
    near its timeout would): on its second pass it plans three, making that pass ~3.6 s."""

    name = "slow-steps"

    def __init__(self, ctx):
        super().__init__(ctx)
        self.passes = 0

    def plan(self, tick):
        self.passes += 1
        if self.passes != 2:
            return []
        return [Action("slow-step", "host", f"step {i}", "a slow step", "test") for i in range(3)]

    def executors(self):
        def step(action):
            time.sleep(1.2)
            return Outcome(ok=True, detail="done")
        return {"slow-step": step}


def test_a_slow_pass_keeps_the_watchdog_fed_and_is_reported(make_config, tmp_path, monkeypatch,
                                                            caplog):
    from supervisor.act.core_actions import CoreActions
    from supervisor.adapters.sdnotify import Notifier
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")  # a ping at least every second
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    cfg, path = make_config()
    rx = NotifyReceiver(tmp_path / "notify.sock")
    caplog.set_level("WARNING", logger="supervisor.daemon")
    try:
        with daemon_thread(cfg, path, serve=False, notifier=Notifier(rx.path),
                           components=lambda ctx: [CoreActions(ctx), SlowSteps(ctx)]) as d:
            wait_for(lambda: d.counts["passes"] >= 3, 40, what="the slow pass and one after it")
    finally:
        rx.close()
    assert rx.messages[0]["READY"] == "1"
    # Each pass ends with WATCHDOG=1 + STATUS=; inside the slow pass the loop pinged
    # between its actions (WATCHDOG=1 alone), so systemd never saw it go quiet.
    between = [m for m in rx.messages if m == {"WATCHDOG": "1"}]
    assert len(between) >= 2
    assert [r.outcome for r in d.actuator.recent if r.action.kind == "slow-step"] == ["ok"] * 3
    # ...and the long pass is not silent: counted and logged with what ran in it
    assert d.counts["slow_passes"] >= 1
    warn = [r.getMessage() for r in caplog.records if "watchdog interval" in r.getMessage()]
    assert any("3 actions ran in it" in w for w in warn)


# ---------------------------------------------------------------- end to end


def test_status_agrees_with_docker_inspect_renders_and_journal_follows(make_config, containers,
                                                                       docker_client, tmp_path):
    a = containers.run(mem_limit="48m")
    b = containers.run(labels={"supervisor.class": "infrastructure"})
    u = containers.run(labels={"supervisor.managed": "false"})
    cfg, path = make_config()
    sock = cfg.settings.control.socket
    d = DaemonProcess(cfg, path, tmp_path / "daemon.log").start()
    try:
        ours = {a.id[:12], b.id[:12], u.id[:12]}

        def disagreements():
            st = status_json(sock)
            rows = [r for r in st.get("containers", []) if r["id"] in ours]
            if {r["id"] for r in rows} != ours:
                return ["not all containers in status yet"]
            bad = []
            for r in rows:
                if not r["managed"]:
                    continue
                hc = docker_client.api.inspect_container(r["id"])["HostConfig"]
                if (hc["CpusetCpus"], hc["Memory"]) != (r["cpuset"], r["memory_limit_bytes"]):
                    bad.append((r["name"], hc["CpusetCpus"], hc["Memory"], r["cpuset"],
                                r["memory_limit_bytes"]))
            return bad
        wait_for(lambda: disagreements() == [], 20, what="status to agree with docker inspect")
        st = status_json(sock)
        rows = {r["id"]: r for r in st["containers"]}
        assert rows[b.id[:12]]["cpuset"] == "0"  # placed on its class's core by the daemon
        assert rows[a.id[:12]]["memory_limit_bytes"] == 48 * MIB
        assert rows[u.id[:12]]["managed"] is False

        r = supctl(sock, "status", "--width", "120")
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert all(len(ln) <= 120 for ln in lines) and "\033[" not in r.stdout
        assert lines[0].startswith("resource-supervisor ") and "pid " + str(d.pid) in lines[0]
        assert lines[1].startswith("engine: up")
        assert any(ln.startswith("host: ") and "reserve" in ln for ln in lines)
        pool_head = lines.index(next(ln for ln in lines if ln.startswith("POOL")))
        assert lines[pool_head + 1].split()[:2] == ["infrastructure", "2.0GiB"]
        row_a = next(ln for ln in lines if ln.startswith(a.name)).split()
        assert row_a[1:3] == ["standard", "running"]
        # CONTAINER CLASS STATE CPUSET HEALTH MEM...: no health check here
        assert row_a[4] == "none" and row_a[5].endswith("/48.0MiB")
        assert rows[a.id[:12]]["cpuset"] == row_a[3]
        row_b = next(ln for ln in lines if ln.startswith(b.name)).split()
        assert row_b[1:4] == ["infrastructure", "running", "0"]
        assert any(ln.startswith(f"{u.name} (unmanaged)") for ln in lines)

        audit = supctl(sock, "audit")
        assert audit.returncode == 5
        found = {tuple(ln.split()[1:3]) for ln in audit.stdout.splitlines()[1:-1]}
        assert {("2.2", a.name), ("9.3", a.name), ("2.2", b.name)} <= found
        assert not any(u.name in ln for ln in audit.stdout.splitlines())  # unmanaged: not audited

        # SIGINT as a terminal sends it: a runner started in the background by a shell
        # ignores it, and a child inherits that (Python then installs no handler).
        follow = subprocess.Popen([sys.executable, "-m", "supervisor.cli", "--socket", sock,
                                   "journal", "-f", "--interval", "0.2"], cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        seen: list[str] = []
        reader = threading.Thread(target=lambda: seen.extend(iter(follow.stdout.readline, "")),
                                  daemon=True)
        reader.start()
        try:
            time.sleep(1.0)
            before = len(seen)
            late = containers.run()  # no limit: the daemon acts on it and journals that
            wait_for(lambda: any(late.name in ln for ln in seen[before:]), 20,
                     what="the new container's action in `supctl journal -f`")
        finally:
            follow.send_signal(signal.SIGINT)
            follow.wait(timeout=10)
        assert follow.returncode == 0
        line = next(ln for ln in seen[before:] if late.name in ln)
        assert re.match(r"\s*\d+ \d\d:\d\d:\d\d ok\s+\w+\s+" + re.escape(late.name), line)
    finally:
        code = d.stop()
    assert code == 0


def test_plan_changes_nothing_apply_acts_and_only_root_may_mutate(make_config, containers,
                                                                 docker_client, tmp_path, open_dir):
    c = containers.run()  # no memory limit: the daemon would give it its class default
    cfg, path = make_config({"control": {"socket": str(open_dir / "control.sock"),
                                         "read_group": "nogroup"}}, dry_run=True)
    sock = cfg.settings.control.socket
    d = DaemonProcess(cfg, path, tmp_path / "daemon.log").start()
    memory = lambda: docker_client.api.inspect_container(c.id)["HostConfig"]["Memory"]  # noqa: E731
    try:
        wait_for(lambda: status_json(sock).get("ready"), 20, what="first snapshot")

        def planned():
            r = supctl(sock, "plan", "--json")
            return [a for a in json.loads(r.stdout)["actions"] if a["target"] == c.id]
        mine = wait_for(planned, 20, what="an action planned for the container")
        text = supctl(sock, "plan")
        assert text.returncode == 0 and "dry-run mode" in text.stdout.splitlines()[0]
        assert any(c.name in ln and mine[0]["kind"] in ln for ln in text.stdout.splitlines()[1:])
        time.sleep(1)
        assert memory() == 0  # planning (and dry-run passes) changed nothing

        # nobody is in group nogroup (the read group): may read, may not act
        r = supctl(sock, "status", "--json", as_nobody=True)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["daemon"]["dry_run"] is True
        assert supctl(sock, "plan", as_nobody=True).returncode == 0
        for cmd in ("apply", "reload"):
            r = supctl(sock, cmd, as_nobody=True)
            assert r.returncode == 1 and "needs root (you are uid 65534)" in r.stderr, r.stderr
        assert memory() == 0
        assert supctl(sock, "journal", "--kind", "place", "--json").stdout.count('"dry_run": false') == 0

        r = supctl(sock, "apply")
        assert r.returncode == 0, r.stderr
        assert memory() > 0  # root's apply acted, for real, once
        assert c.name in r.stdout
    finally:
        d.stop()


def test_sighup_with_a_broken_config_keeps_the_old_one_and_says_why(make_config, tmp_path):
    cfg, path = make_config()
    good = path.read_text()
    sock = cfg.settings.control.socket
    log = tmp_path / "daemon.log"
    d = DaemonProcess(cfg, path, log).start()
    try:
        wait_for(lambda: status_json(sock).get("ready"), 20, what="first snapshot")
        budget = lambda: status_json(sock)["pools"]["standard"]["budget_bytes"]  # noqa: E731
        assert budget() == 2 * GIB

        path.write_text(good.replace('budget = "2GiB"', 'budget = "lots"'))
        d.proc.send_signal(signal.SIGHUP)
        refused = wait_for(lambda: [e for e in log_lines(log) if "reload refused" in e.get("message", "")],
                           15, what="the refusal in the log")
        assert refused[0]["level"] == "ERROR" and refused[0]["config"] == str(path)
        assert any(p.startswith("pools.infrastructure.budget: cannot parse size 'lots'")
                   for p in refused[0]["problems"])
        time.sleep(0.5)
        assert d.alive()
        st = status_json(sock)
        assert st["daemon"]["loop_alive"] and budget() == 2 * GIB
        assert "pools.standard.budget" in st["daemon"]["config_errors"]
        r = supctl(sock, "reload")  # the same through the API
        assert r.returncode == 1 and "pools.standard.budget: cannot parse size 'lots'" in r.stderr

        path.write_text(good.replace('[pools.standard]\nbudget = "2GiB"', '[pools.standard]\nbudget = "1GiB"'))
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: budget() == GIB, 15, what="the new budget after a good reload")
        assert status_json(sock)["daemon"]["config_errors"] == ""
    finally:
        code = d.stop()
    assert code == 0


def test_status_exits_3_while_a_container_runs_unlimited_for_want_of_room(make_config, containers,
                                                                          docker_client, tmp_path):
    """A pool of 16 MiB: the container holding a 16 MiB limit is admitted first and takes
    all of it; the one without a limit is over budget and left unlimited. The pool itself
    is fine (it uses little), yet `supctl status` exits 3 and says which container runs
    without a limit and why; once room is made the daemon gives it one and exits 0."""
    full = containers.run(mem_limit="16m")
    bare = containers.run()  # no limit: wants the class's 64 MiB
    cfg, path = make_config({"pools": {"infrastructure": {"budget": "2GiB"},
                                       "standard": {"budget": "16MiB"}}})
    d = DaemonProcess(cfg, path, tmp_path / "daemon.log").start()
    memory = lambda c: docker_client.api.inspect_container(c.id)["HostConfig"]["Memory"]  # noqa: E731
    try:
        pool = wait_for(lambda: (lambda p: p if p.get("unlimited_no_room") else None)(
            d.status().get("pools", {}).get("standard", {})), 20,
            what="the unlimited container listed under its pool")
        assert pool["unlimited_no_room"] == [bare.name]
        assert pool["state"] == "ok" and pool["allocated_bytes"] == pool["budget_bytes"]
        assert memory(bare) == 0 and memory(full) == 16 * MIB  # left as they are
        r = d.supctl("status", "--width", "200")
        assert r.returncode == 3, r.stdout + r.stderr
        assert (f"NO MEMORY LIMIT: {bare.name} in pool standard run without any memory limit: "
                "the pool had no room for one") in r.stdout
        assert d.supctl("status", "--json").returncode == 3
        alerts = [e for e in d.journal() if e["kind"] == "alert" and e["target"] == bare.id]
        assert alerts and "no memory limit granted" in alerts[0]["reason"]

        full.remove(force=True)  # room: the daemon gives it what the pool has left
        wait_for(lambda: memory(bare) == 16 * MIB, 20, what="a limit for the container")
        wait_for(lambda: d.supctl("status").returncode == 0, 20, what="supctl status to exit 0")
        assert "NO MEMORY LIMIT" not in d.supctl("status", "--width", "200").stdout
    finally:
        assert d.stop() == 0, d.log_text()[-3000:]
