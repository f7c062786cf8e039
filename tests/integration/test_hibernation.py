"""Hibernation on the real engine and kernel: an idle httpd is paused and a client in its
namespace wakes it and gets its page; busy and infrastructure containers stay up; a slow
stream is not frozen; stop mode through supctl; nobody else's pause is undone; page cache
is released; readiness follows the health check; a restarted daemon still wakes on a
connection. Plus the sock_diag probe on the host's loopback."""

import os
import re
import socket
import subprocess
import sys
import time

from ._procs import DaemonProcess, daemon_thread
from _testkit import ROOT, class_table, metrics_text, wait_for
from supervisor.adapters.cgroups import CgroupFS
from supervisor.publish.control import request
from supervisor.adapters.netdiag import list_tcp, open_probe
from supervisor.adapters.netns import NetnsWorker

MIB = 2**20
HTTPD = ["httpd", "-f", "-p", "127.0.0.1:8080", "-h", "/www"]
PAGE = "resource-supervisor test page"
IDLE_AFTER_S = 2.0


def hib_config(make_config, idle_after=f"{IDLE_AFTER_S}s", **extra):
    classes = class_table(
        "infrastructure", "standard", "batch", standard={"idle_after": idle_after},
        batch={"priority": 50, "memory_limit": "64MiB", "idle_after": "1h",
               "hibernate_mode": "stop"})
    return make_config({"classes": classes, **extra})


def state(c) -> str:
    c.reload()
    return c.status


def in_ns(c, *argv, timeout=20):
    """A busybox command in the container's network namespace (its loopback)."""
    c.reload()
    pid = c.attrs["State"]["Pid"]
    return subprocess.run(["nsenter", "-t", str(pid), "-n", "/bin/busybox", *argv],
                          capture_output=True, text=True, timeout=timeout)


def api(cfg, method, url, body=None):
    return request(cfg.settings.control.socket, method, url, body)


def rows_for(d, c, kind):
    return [e for e in d.journal.recent(1000, kinds=[kind]) if e["target"] == c.id]


def hib_row(cfg, c):
    code, st = api(cfg, "GET", "/status")
    assert code == 200
    return next((r for r in st["hibernation"]["containers"] if r["id"] == c.id[:12]), None)


def test_idle_httpd_is_paused_and_a_client_in_its_namespace_wakes_it(make_config, containers):
    cfg, path = hib_config(make_config)
    web = containers.run(command=HTTPD)
    with daemon_thread(cfg, path) as d:
        wait_for(lambda: state(web) == "paused", 20, what="the idle httpd paused")
        (row,) = wait_for(lambda: [r for r in rows_for(d, web, "hibernate") if r["outcome"] == "ok"],
                          10, what="the hibernation's journal row")
        assert row["source"] == "hibernation" and "idle for" in row["reason"]
        assert "watching 127.0.0.1:8080" in row["detail"] and "released" in row["detail"]
        st_row = hib_row(cfg, web)
        assert st_row["hibernated"] and st_row["mode"] == "pause"
        assert st_row["watching"] == ["127.0.0.1:8080"]
        code, st = api(cfg, "GET", "/status")
        assert [c for c in st["containers"] if c["id"] == web.id[:12]][0]["hibernated"] is True

        got = in_ns(web, "wget", "-q", "-O", "-", "http://127.0.0.1:8080/")
        assert got.returncode == 0 and PAGE in got.stdout
        assert state(web) == "running"
        # The intent row ("pending") is written before the wake runs; wait for its result.
        (wake,) = wait_for(lambda: [r for r in rows_for(d, web, "wake") if r["outcome"] != "pending"],
                           10, what="the wake's journal row")
        assert wake["outcome"] == "ok" and wake["params"]["trigger"] == "connection"
        assert "127.0.0.1:8080" in wake["reason"]
        # /metrics shows the pass's report: the wake, made between passes, is in the next.
        body = wait_for(lambda: (lambda b: b if 'wakes_total{trigger="connection"} 1.0' in b
                                 else None)(metrics_text(cfg.settings.metrics.listen)),
                        5, what="the wake in /metrics")
        assert 'resource_supervisor_hibernation_wakes_total{trigger="connection"} 1.0' in body
        assert "resource_supervisor_hibernation_wake_latency_seconds_count 1.0" in body


def test_busy_and_infrastructure_containers_are_never_hibernated(make_config, containers):
    cfg, path = hib_config(make_config)
    idle = containers.run(command=HTTPD)
    writer = containers.run(  # ~0.03 cores: CPU above cpu_idle_cores
        command="while :; do dd if=/dev/zero of=/data/f bs=64k count=32 2>/dev/null; sleep 0.1; done",
        tmpfs={"/data": "size=16m"})
    polled = containers.run(  # ~0.002 cores: only its connections say it is in use
        command="httpd -p 127.0.0.1:8080 -h /www; while sleep 1; do wget -q -O /dev/null http://127.0.0.1:8080/; done")
    infra = containers.run(command=HTTPD, labels={"supervisor.class": "infrastructure"})
    busy = (writer, polled, infra)
    with daemon_thread(cfg, path) as d:
        wait_for(lambda: state(idle) == "paused", 20, what="the idle control paused")
        deadline = time.monotonic() + 3 * IDLE_AFTER_S
        while time.monotonic() < deadline:
            assert [state(c) for c in busy] == ["running"] * 3
            time.sleep(0.25)
        for c in busy:
            assert rows_for(d, c, "hibernate") == []
        assert hib_row(cfg, writer)["last_busy"]
        # its loopback traffic, not its CPU, keeps it awake
        # (one wget a second: one or two new connections per sample, by timing)
        assert re.match(r"network|\d+ new connections?\b", hib_row(cfg, polled)["last_busy"])
        assert hib_row(cfg, infra) is None  # not even a candidate
        code, body = api(cfg, "POST", "/hibernate", {"name": infra.name})
        assert code == 409 and "infrastructure: never hibernated" in body["error"]
        assert state(infra) == "running"


UDP_SERVICE = """import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 5353))
print("bound", flush=True)
time.sleep(600)"""


def test_a_udp_service_is_not_paused_while_it_listens(make_config, containers):
    """A datagram opens no connection for the watcher to see, so a paused UDP service
    would never wake. busybox-static has no UDP server applet: a process of this test
    enters the container's network namespace (nsenter -n) and binds UDP 5353 there, as a
    DNS or syslog service would. The container stays running and says why; once that
    socket is gone it is paused like any idle container."""
    cfg, path = hib_config(make_config)
    svc = containers.run(command=HTTPD)
    svc.reload()
    udp = subprocess.Popen(["nsenter", "-t", str(svc.attrs["State"]["Pid"]), "-n",
                            sys.executable, "-c", UDP_SERVICE], stdout=subprocess.PIPE, text=True)
    try:
        assert udp.stdout.readline().strip() == "bound"
        with daemon_thread(cfg, path) as d:
            deadline = time.monotonic() + 3 * IDLE_AFTER_S
            while time.monotonic() < deadline:
                assert state(svc) == "running"
                time.sleep(0.25)
            row = wait_for(lambda: (r := hib_row(cfg, svc)) and "udp 0.0.0.0:5353" in r["last_busy"] and r,
                           10, what="status naming the UDP service")
            assert "datagram cannot wake" in row["last_busy"]
            skipped = [r for r in rows_for(d, svc, "hibernate") if r["outcome"] == "skipped"]
            assert skipped and "udp 0.0.0.0:5353" in skipped[0]["detail"]
            code, body = api(cfg, "POST", "/hibernate", {"name": svc.name})
            assert code == 409 and "udp 0.0.0.0:5353" in body["error"], body
            assert state(svc) == "running"
            udp.kill()
            udp.wait(10)
            wait_for(lambda: state(svc) == "paused", 20, what="paused once the UDP service is gone")
    finally:
        if udp.poll() is None:
            udp.kill()
            udp.wait(10)


def test_a_slow_stream_is_not_frozen_mid_flight(make_config, containers):
    # Bytes alone would not tell: the byte threshold is set above this stream's rate, so
    # only the sock_diag check (its last data a moment ago) keeps it awake.
    cfg, path = hib_config(make_config, idle_after="3s",
                           hibernation={"net_idle_bytes_per_s": 4096})
    streamer = containers.run(
        command="printf 'while :; do echo x; sleep 1; done\\n' > /tmp/s.sh; "
                "exec nc -ll -p 9000 -e sh /tmp/s.sh")
    time.sleep(0.5)
    streamer.reload()
    pid = streamer.attrs["State"]["Pid"]
    # The client's stdin is empty: it sends FIN at once and only reads, so the server's end
    # is half-closed (CLOSE_WAIT) while the stream flows, as after an HTTP request.
    client = subprocess.Popen(["nsenter", "-t", str(pid), "-n", "/bin/busybox", "nc",
                               "127.0.0.1", "9000"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, text=True)
    try:
        with daemon_thread(cfg, path) as d:
            wait_for(lambda: any("not idle: stream" in r["detail"]
                                 for r in rows_for(d, streamer, "hibernate")),
                     20, what="a hibernation held back by the stream")
            assert state(streamer) == "running"
            assert all(r["outcome"] == "skipped" for r in rows_for(d, streamer, "hibernate"))
            assert client.stdout.readline() == "x\n"  # the stream still flows
            client.kill()
            client.wait(10)
            wait_for(lambda: state(streamer) == "paused", 20,
                     what="hibernation once the stream ended")
    finally:
        if client.poll() is None:
            client.kill()
            client.wait(10)


def supctl(cfg, *args):
    return subprocess.run([sys.executable, "-m", "supervisor.cli", "--socket",
                           cfg.settings.control.socket, *args],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_stop_mode_hibernate_and_wake_through_supctl(make_config, containers):
    cfg, path = hib_config(make_config)
    job = containers.run(command="trap 'exit 0' TERM; while :; do sleep 1; done",
                         labels={"supervisor.class": "batch"})
    with daemon_thread(cfg, path) as d:
        r = supctl(cfg, "hibernate", job.name)
        assert r.returncode == 0, r.stderr
        assert "stopped" in r.stdout
        assert state(job) == "exited"
        row = hib_row(cfg, job)
        assert row["hibernated"] and row["mode"] == "stop"
        assert d.journal.get_state(f"hibernation/{job.id}")["phase"] == "stopped"

        r = supctl(cfg, "wake", job.name)
        assert r.returncode == 0, r.stderr
        assert "started" in r.stdout
        assert state(job) == "running"
        assert d.journal.get_state(f"hibernation/{job.id}") is None
        (wake,) = rows_for(d, job, "wake")
        assert wake["source"] == "api" and wake["outcome"] == "ok"

        r = supctl(cfg, "wake", job.name)
        assert r.returncode == 1 and "not hibernated by the supervisor" in r.stderr
        r = supctl(cfg, "hibernate", "no-such-container")
        assert r.returncode == 1 and "no container named" in r.stderr


def unprotected_infrastructure_config(make_config, mode):
    """Issue 13: an infrastructure class whose config says protected = false and
    hibernate = true, with a short idle_after; a batch class to show idle hibernation
    does act meanwhile."""
    classes = class_table(
        "infrastructure", "standard",
        infrastructure={"protected": False, "hibernate": True,
                        "idle_after": f"{IDLE_AFTER_S}s", "hibernate_mode": mode},
        standard={"idle_after": f"{IDLE_AFTER_S}s", "hibernate_mode": mode})
    return make_config({"classes": classes})


def test_unprotected_infrastructure_is_refused_by_the_api_even_with_force(make_config, containers):
    cfg, path = unprotected_infrastructure_config(make_config, "pause")
    pg = containers.run(command=HTTPD, labels={"supervisor.class": "infrastructure"})
    with daemon_thread(cfg, path, serve=True) as d:
        for extra in ((), ("--force",), ("--mode", "stop", "--force"), ("--mode", "pause", "--force")):
            r = supctl(cfg, "hibernate", pg.name, *extra)
            assert r.returncode == 1, (extra, r.stdout, r.stderr)
            assert "infrastructure: never hibernated" in r.stderr, (extra, r.stderr)
            assert state(pg) == "running"
        code, body = api(cfg, "POST", "/hibernate", {"name": pg.name, "force": True, "mode": "stop"})
        assert code == 409 and "infrastructure: never hibernated" in body["error"], body
        assert state(pg) == "running"
        assert pg.id not in next(c for c in d.components if c.name == "hibernation").hibernated_ids()
        assert d.journal.get_state(f"hibernation/{pg.id}") is None
        assert all(r["outcome"] == "skipped" for r in rows_for(d, pg, "hibernate"))


def test_unprotected_infrastructure_is_never_stopped_in_stop_mode(make_config, containers):
    cfg, path = unprotected_infrastructure_config(make_config, "stop")
    pg = containers.run(command=HTTPD, labels={"supervisor.class": "infrastructure"})
    job = containers.run(command="trap 'exit 0' TERM; while :; do sleep 1; done")
    with daemon_thread(cfg, path) as d:
        wait_for(lambda: state(job) == "exited", 20, what="the idle standard container stopped")
        deadline = time.monotonic() + 3 * IDLE_AFTER_S
        while time.monotonic() < deadline:
            assert state(pg) == "running"
            time.sleep(0.25)
        assert rows_for(d, pg, "hibernate") == [] and rows_for(d, pg, "stop") == []
        assert hib_row(cfg, pg) is None  # not even a candidate


def test_nobody_elses_pause_is_undone_and_their_unpause_is_respected(make_config, containers):
    cfg, path = hib_config(make_config)
    theirs = containers.run(command=HTTPD)
    ours = containers.run(command=HTTPD)
    with daemon_thread(cfg, path) as d:
        hib = next(c for c in d.components if c.name == "hibernation")
        theirs.pause()
        wait_for(lambda: state(ours) == "paused", 20, what="ours hibernated")
        # A client waits on the container somebody else paused: it stays paused, and the
        # client keeps waiting.
        theirs.reload()
        client = subprocess.Popen(["nsenter", "-t", str(theirs.attrs["State"]["Pid"]), "-n",
                                   "/bin/busybox", "wget", "-q", "-O", "-",
                                   "http://127.0.0.1:8080/"], stdout=subprocess.PIPE)
        try:
            time.sleep(2.0)
            assert client.poll() is None and state(theirs) == "paused"
        finally:
            client.kill()
            client.wait(10)
        assert rows_for(d, theirs, "wake") == []
        code, body = api(cfg, "POST", "/wake", {"name": theirs.name})
        assert code == 409 and "not hibernated by the supervisor" in body["error"]
        assert state(theirs) == "paused"
        # Ours, unpaused by somebody else, is simply running again and forgotten.
        assert ours.id in hib.hibernated_ids()
        ours.unpause()
        wait_for(lambda: ours.id not in hib.hibernated_ids(), 10, what="ours forgotten")
        assert d.journal.get_state(f"hibernation/{ours.id}") is None
        assert rows_for(d, ours, "wake") == []


def test_hibernation_releases_the_page_cache(make_config, containers):
    cfg, path = hib_config(make_config, idle_after="1h")
    fat = containers.run(
        command="dd if=/dev/zero of=/cache.bin bs=1M count=24 2>/dev/null && sync && "
                "exec httpd -f -p 127.0.0.1:8080 -h /www", mem_limit="128m")
    fs = CgroupFS()
    wait_for(lambda: fat.reload() or fat.attrs["State"]["Pid"], 10, what="pid")
    loc = fs.locate(fat.id, fat.attrs["State"]["Pid"])
    wait_for(lambda: fs.read_usage(loc).memory_usage_bytes > 24 * MIB, 15, what="page cache")
    with daemon_thread(cfg, path):
        before = fs.read_usage(loc).memory_usage_bytes
        code, body = api(cfg, "POST", "/hibernate", {"name": fat.name})
        assert code == 200, body
        assert body["hibernated"] is True and state(fat) == "paused"
        after = fs.read_usage(loc).memory_usage_bytes
        assert before - after >= 20 * MIB
        assert body["released_bytes"] >= 20 * MIB
        knob = "memory.reclaim" if fs.version == 2 else "memory.force_empty"
        assert knob in body["detail"]
        code, body = api(cfg, "POST", "/wake", {"name": fat.name})
        assert code == 200 and body["woken"] is True and state(fat) == "running"


def test_a_health_checked_container_is_ready_at_its_next_healthy_event(make_config, containers):
    cfg, path = hib_config(make_config, idle_after="1h")
    web = containers.run(command=HTTPD, healthcheck={
        "test": ["CMD", "true"], "interval": 500_000_000, "retries": 1})
    wait_for(lambda: web.reload() or web.attrs["State"]["Health"]["Status"] == "healthy", 15,
             what="healthy")
    with daemon_thread(cfg, path):
        code, body = api(cfg, "POST", "/hibernate", {"name": web.name})
        assert code == 200, body
        got = in_ns(web, "wget", "-q", "-O", "-", "http://127.0.0.1:8080/")
        assert PAGE in got.stdout

        def last_wake():
            code, st = api(cfg, "GET", "/status")
            last = st["hibernation"]["wakes"]["last"]
            return last if last.get("ready") else None
        last = wait_for(last_wake, 15, what="ready after the wake")
        assert last["trigger"] == "connection"
        # Docker stops the health monitor of a paused container; it reports healthy at
        # its first check after the wake, which is when the container counts as ready.
        assert last["ready_ms"] > last["latency_ms"]
        body = metrics_text(cfg.settings.metrics.listen)
        assert "resource_supervisor_hibernation_wake_ready_seconds_count 1.0" in body


def test_a_restarted_daemon_still_wakes_a_container_on_a_connection(make_config, containers,
                                                                     tmp_path):
    cfg, path = hib_config(make_config)
    web = containers.run(command=HTTPD)
    first = DaemonProcess(cfg, path, tmp_path / "daemon.log").start()
    try:
        wait_for(lambda: state(web) == "paused", 30, what="hibernated by the first daemon")
    finally:
        assert first.stop() == 0, first.log_text()[-3000:]
    time.sleep(0.5)
    assert state(web) == "paused"  # left as it was
    second = DaemonProcess(cfg, path, tmp_path / "daemon.log").start()
    try:
        def watched():
            try:
                row = hib_row(cfg, web)
            except (OSError, KeyError, AssertionError):
                return None
            return row if row and row["hibernated"] and not row["watch_error"] else None
        wait_for(watched, 20, what="the restored hibernation")
        got = in_ns(web, "wget", "-q", "-O", "-", "http://127.0.0.1:8080/")
        assert got.returncode == 0 and PAGE in got.stdout
        assert state(web) == "running"

        def wakes():
            return [e for e in second.journal() if e["kind"] == "wake" and e["target"] == web.id
                    and e["outcome"] != "pending"]
        wakes = wait_for(wakes, 10, what="the wake's journal row")
        assert wakes[-1]["outcome"] == "ok" and wakes[-1]["params"]["trigger"] == "connection"
    finally:
        assert second.stop() == 0, second.log_text()[-3000:]


# ---------------------------------------------------------------- the probe itself


def test_the_probe_sees_waiting_clients_v4_v6_reuseport_and_gone_sockets():
    """On this process's own namespace (the host's loopback): a listener with a
    connection not yet accepted, unread bytes on an established connection, a
    SO_REUSEPORT group, and a listener closed after the probe was made."""
    worker = NetnsWorker()
    made = []

    def listener(family, addr, port=0, reuse=False):
        s = socket.socket(family)
        if reuse:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind((addr, port))
        s.listen(8)
        made.append(s)
        return s
    try:
        v4 = listener(socket.AF_INET, "127.0.0.1")
        v6 = listener(socket.AF_INET6, "::1")
        r1 = listener(socket.AF_INET, "127.0.0.1", reuse=True)
        listener(socket.AF_INET, "127.0.0.1", r1.getsockname()[1], reuse=True)  # r1's group
        gone = listener(socket.AF_INET, "127.0.0.1")
        ports = {s.getsockname()[1] for s in made}
        mine = [t for t in list_tcp(worker, os.getpid()) if t.local_port in ports]
        assert {t.local_port for t in mine if t.listening} == ports
        probe = open_probe(worker, os.getpid(), [t for t in mine if t.listening])
        try:
            assert probe.dump_families == (socket.AF_INET,)
            assert probe.waiting() == []
            clients = [socket.create_connection(s.getsockname()[:2], timeout=5)
                       for s in (v4, v6, r1)]
            made.extend(clients)
            gone.close()
            waiting = {w.target.local_port: w.rqueue for w in probe.waiting()}
            assert waiting == {v4.getsockname()[1]: 1, v6.getsockname()[1]: 1,
                               r1.getsockname()[1]: 1}
            assert len(probe.gone) == 1
            # accepted, then 5 bytes arrive unread on the established connection
            server_side, _ = v4.accept()
            made.append(server_side)
        finally:
            probe.close()
        est = [t for t in list_tcp(worker, os.getpid())
               if t.state_name == "ESTABLISHED" and t.inode and
               (t.local_addr, t.local_port, t.remote_port) == (
                   "127.0.0.1", v4.getsockname()[1], clients[0].getsockname()[1])]
        probe = open_probe(worker, os.getpid(), est)
        try:
            assert probe.waiting() == []
            clients[0].send(b"hello")
            time.sleep(0.05)
            assert [(w.target.inode, w.rqueue) for w in probe.waiting()] == [(est[0].inode, 5)]
        finally:
            probe.close()
    finally:
        for s in made:
            s.close()
        worker.stop()
