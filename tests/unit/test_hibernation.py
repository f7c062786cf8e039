"""Hibernation's pure decisions on hand-made samples and snapshots, and the sock_diag
wire format (no host needed)."""

import dataclasses
import shutil
import socket
import struct
import time
from pathlib import Path

import pytest

from _handmade import config, container, tick
from supervisor.adapters.cgroups import CgroupFS, resident_of
from supervisor.act.component import Context
from supervisor.model.rules import hibernation_block
from supervisor.adapters.netcounters import parse_proc_udp, parse_snmp, read_counters, udp_services
from supervisor.adapters.netdiag import DONE, ERROR, SOCK, dump_request, exact_request, parse_reply
from supervisor.adapters.netns import NetnsGone
from supervisor.model.activity import (ActivitySample, Thresholds, Track, Watch, idle_since,
                                       mark_busy, smoothing_window_s, track_activity)
from supervisor.model.sockets import TCP_ESTABLISHED, TCP_LISTEN, TcpSocket
from supervisor.policy.hibernation import (MAX_WATCHED_CONNECTIONS, OWNER, HibernationState,
                                           Record, connection_activity, plan_hibernation,
                                           wake_targets)
from supervisor.publish.hibernation import LatencyHistogram
from supervisor.runtime.hibernation import Hibernation

TH = Thresholds(cpu_cores=0.01, net_bytes_per_s=64.0, blkio_bytes_per_s=4096.0)


def series(n, step_s=1.0, cpu_per_s=0.0, net_per_s=0, blk_per_s=0, conns=None, t0=100.0, pid=7):
    """n samples step_s apart with steady rates; conns: {sample index: connections opened}."""
    out, opened = [], 0
    for i in range(n):
        opened += (conns or {}).get(i, 0)
        out.append(ActivitySample(t0 + i * step_s, pid, cpu_per_s * i * step_s,
                                  int(blk_per_s * i * step_s), int(net_per_s * i * step_s), opened))
    return out


# ---------------------------------------------------------------- idle detection

def test_a_container_doing_nothing_is_idle_since_it_was_first_seen():
    since, why = idle_since(series(30), TH, window_s=10)
    assert since == 100.0 and why == ""


def test_steady_cpu_above_the_threshold_keeps_it_busy_until_the_last_sample():
    since, why = idle_since(series(30, cpu_per_s=0.05), TH, window_s=10)
    assert since == 129.0
    assert why.startswith("CPU 0.050 cores")


def test_a_short_timer_every_10s_averages_below_the_threshold():
    # 5 ms of CPU every 10 s: 0.0005 cores over the smoothing window
    samples, cpu = [], 0.0
    for i in range(60):
        if i % 10 == 0:
            cpu += 0.005
        samples.append(ActivitySample(100.0 + i, 7, cpu, 0, 0, 0))
    since, why = idle_since(samples, TH, window_s=10)
    assert (since, why) == (100.0, "")


def test_one_burst_keeps_it_busy_for_the_smoothing_window_then_idle():
    # 0.5 s of CPU in one second at t=110, nothing after
    samples = [ActivitySample(100.0 + i, 7, 0.5 if i >= 10 else 0.0, 0, 0, 0) for i in range(60)]
    since, why = idle_since(samples, TH, window_s=10)
    # busy while the 0.5 s falls inside the 10 s window (until 110 + 10 s)
    assert since == pytest.approx(119.0)
    assert why.startswith("CPU")


def test_a_new_connection_restarts_the_idle_clock_whatever_the_rates():
    since, why = idle_since(series(30, conns={20: 1}), TH, window_s=10)
    assert since == 120.0 and why == "1 new connection"


def test_network_bytes_above_the_threshold_are_busy_below_are_idle():
    assert idle_since(series(30, net_per_s=200), TH, 10)[1].startswith("network 200 B/s")
    assert idle_since(series(30, net_per_s=20), TH, 10) == (100.0, "")


def test_block_io_above_the_threshold_is_busy():
    assert idle_since(series(30, blk_per_s=1 << 20), TH, 10)[1].startswith("block I/O")


def test_a_restart_counts_as_busy_and_starts_a_new_window():
    samples = series(10) + series(10, t0=110.0, pid=8)
    since, why = idle_since(samples, TH, window_s=10)
    assert (since, why) == (110.0, "restarted")


def test_a_container_without_namespace_counters_is_judged_by_cpu_and_io():
    samples = [ActivitySample(100.0 + i, 7, 0.0, 0, None, None) for i in range(20)]
    assert idle_since(samples, TH, 10) == (100.0, "")


def test_the_track_keeps_only_its_smoothing_window():
    t = None
    for s in series(100, step_s=0.5):
        t = track_activity(t, s, TH, window_s=5)
    assert len(t.samples) <= 12
    assert t.samples[-1].time_s - t.samples[0].time_s >= 5


def test_an_out_of_order_sample_changes_nothing():
    t = None
    for s in series(5):
        t = track_activity(t, s, TH, 10)
    assert track_activity(t, series(1, t0=101.0, cpu_per_s=5)[0], TH, 10) is t


def test_mark_busy_moves_the_idle_clock_forward_only():
    t = Track((series(1)[0],), idle_since_s=200.0)
    assert mark_busy(t, 150.0, "x").idle_since_s == 200.0
    assert mark_busy(t, 250.0, "stream").idle_since_s == 250.0
    assert mark_busy(None, 250.0, "x") is None


def test_smoothing_window_is_idle_after_at_most_30s():
    assert smoothing_window_s(3.0) == 3.0
    assert smoothing_window_s(300.0) == 30.0


# ---------------------------------------------------------------- eligibility and plan

def cfg_with(**over):
    classes = {
        "infrastructure": {"pool": "infrastructure", "cpuset": "0", "memory_limit": "128MiB",
                           "protected": True, "hibernate": False},
        "standard": {"pool": "standard", "memory_limit": "40MiB", "memory_min": "16MiB",
                     "idle_after": "60s"},
        "batch": {"pool": "standard", "memory_limit": "40MiB", "memory_min": "16MiB",
                  "idle_after": "60s", "hibernate_mode": "stop"},
        "steady": {"pool": "standard", "memory_limit": "40MiB", "memory_min": "16MiB",
                   "hibernate": False},
        "guarded": {"pool": "standard", "memory_limit": "40MiB", "memory_min": "16MiB",
                    "protected": True},
    }
    return config(classes=classes, **over)


def idle_track(since: float) -> Track:
    return Track((ActivitySample(since, 7, 0.0, 0, 0, 0),), idle_since_s=since)


def test_plan_hibernates_a_container_idle_for_its_class_idle_after_and_not_before():
    cfg = cfg_with()
    c = container("web")
    state = HibernationState(tracks={c.info.id: idle_track(1000.0)})
    assert plan_hibernation(tick(cfg, [c], now=1059.0), state) == []
    (a,) = plan_hibernation(tick(cfg, [c], now=1060.0), state)
    assert (a.kind, a.target, a.source, a.params["mode"], a.destructive) == \
        ("hibernate", c.info.id, "hibernation", "pause", False)
    assert "idle for 60.0s" in a.reason


def test_stop_mode_hibernation_is_planned_as_destructive():
    cfg = cfg_with()
    c = container("job", cls="batch")
    (a,) = plan_hibernation(tick(cfg, [c], now=2000.0),
                            HibernationState(tracks={c.info.id: idle_track(1000.0)}))
    assert a.params["mode"] == "stop" and a.destructive


@pytest.mark.parametrize("make, why", [
    (lambda: container("pg", cls="infrastructure"), "infrastructure: never hibernated"),
    (lambda: container("s", cls="steady"), "never hibernates"),
    (lambda: container("g", cls="guarded"), "protected"),
    (lambda: container("o", labels={"supervisor.hibernate": "false"}), "opted out by label"),
    (lambda: container("u", managed=False), "not managed"),
])
def test_containers_that_may_not_hibernate_never_do(make, why):
    cfg = cfg_with()
    c = make()
    assert why in hibernation_block(c.info, c.class_name, c.managed, cfg)
    state = HibernationState(tracks={c.info.id: idle_track(0.0)})
    assert plan_hibernation(tick(cfg, [c], now=10_000.0), state) == []


def test_an_unprotected_infrastructure_class_is_still_never_hibernated():
    """Issue 13: a class named infrastructure with protected = false and hibernate = true
    was paused by idle hibernation; the rule book refuses it whatever its config says."""
    cfg = config(classes={
        "infrastructure": {"pool": "infrastructure", "cpuset": "0", "memory_limit": "128MiB",
                           "protected": False, "hibernate": True, "idle_after": "60s"},
        "standard": {"pool": "standard", "memory_limit": "40MiB", "memory_min": "16MiB",
                     "idle_after": "60s"}})
    pg = container("pg", cls="infrastructure")
    assert "infrastructure: never hibernated" in hibernation_block(pg.info, pg.class_name, True, cfg)
    state = HibernationState(tracks={pg.info.id: idle_track(0.0)})
    assert plan_hibernation(tick(cfg, [pg], now=10_000.0), state) == []


def test_opt_out_label_is_the_configured_one():
    cfg = cfg_with(hibernation={"opt_out_label": "acme.sleep"})
    c = container("o", labels={"acme.sleep": "no"})
    assert "acme.sleep=no" in hibernation_block(c.info, c.class_name, True, cfg)
    c2 = container("o2", labels={"supervisor.hibernate": "false"})
    assert hibernation_block(c2.info, c2.class_name, True, cfg) == ""


def test_a_container_paused_by_somebody_else_or_stopped_is_not_planned():
    cfg = cfg_with()
    p, x = container("p", state="paused"), container("x", state="exited")
    state = HibernationState(tracks={p.info.id: idle_track(0.0), x.info.id: idle_track(0.0)})
    assert plan_hibernation(tick(cfg, [p, x], now=10_000.0), state) == []


def test_plan_waits_out_a_retry_and_does_nothing_when_disabled():
    cfg = cfg_with()
    c = container("web")
    state = HibernationState(tracks={c.info.id: idle_track(0.0)}, retry_at={c.info.id: 5000.0})
    assert plan_hibernation(tick(cfg, [c], now=4999.0), state) == []
    assert len(plan_hibernation(tick(cfg, [c], now=5001.0), state)) == 1
    off = cfg_with(hibernation={"enabled": False})
    assert plan_hibernation(tick(off, [c], now=5001.0), state) == []


def test_a_hibernated_container_is_not_planned_again_and_is_woken_when_its_class_forbids_it():
    c = container("web", state="paused")
    rec = Record(id=c.info.id, name="web", mode="pause", since_s=900.0, phase="paused")
    state = HibernationState(tracks={}, hibernated={c.info.id: rec})
    assert plan_hibernation(tick(cfg_with(), [c], now=2000.0), state) == []
    moved = container("web", cls="steady", state="paused", cid=c.info.id)
    (a,) = plan_hibernation(tick(cfg_with(), [moved], now=2000.0), state)
    assert (a.kind, a.target, a.params["trigger"]) == ("wake", c.info.id, "config")
    assert "never hibernates" in a.reason


def test_record_round_trips_and_a_bad_one_is_refused():
    rec = Record(id="a" * 64, name="web", mode="stop", since_s=1.5, phase="stopped",
                 reclaimed_bytes=None, targets=[{"family": 2, "state": 10}])
    assert Record.from_dict(rec.to_dict()) == rec
    assert Record.from_dict({**rec.to_dict(), "future_field": 1}) == rec
    for bad in ({}, {"id": "x", "mode": "sleep"}, "text"):
        with pytest.raises(ValueError):
            Record.from_dict(bad)


# ---------------------------------------------------------------- sockets

def sock(state=TCP_ESTABLISHED, rq=0, wq=0, inode=1, last=10_000, port=8080, **kw):
    return TcpSocket(family=socket.AF_INET, state=state, local_addr="127.0.0.1", local_port=port,
                     remote_addr="127.0.0.1" if state != TCP_LISTEN else "0.0.0.0",
                     remote_port=40000 if state != TCP_LISTEN else 0, rqueue=rq, wqueue=wq,
                     inode=inode, last_data_sent_ms=last, last_data_recv_ms=last, **kw)


def test_connection_activity_names_what_keeps_a_container_awake():
    assert "1 connection waiting on 127.0.0.1:8080" in connection_activity(
        [sock(TCP_LISTEN, rq=1)], 60)
    assert "data in flight" in connection_activity([sock(rq=10)], 60)
    assert "moved data 2.0s ago" in connection_activity([sock(last=2000)], 60)
    half_closed = sock(state=8, last=500)  # CLOSE_WAIT: the client sent FIN, data still flows
    assert "moved data 0.5s ago" in connection_activity([half_closed], 60)
    assert connection_activity([sock(state=6, last=10)], 60) == ""  # TIME_WAIT
    # a quiet keep-alive connection and an idle listener do not
    assert connection_activity([sock(TCP_LISTEN), sock(last=90_000)], 60) == ""
    # in a shared namespace only the container's own sockets count
    assert connection_activity([sock(rq=10, inode=5)], 60, owned=frozenset({6})) == ""


def test_wake_targets_are_listeners_and_held_connections_capped():
    conns = [sock(inode=100 + i) for i in range(MAX_WATCHED_CONNECTIONS + 5)]
    waiting_child = sock(inode=0)  # not yet accepted: its listener's queue covers it
    targets = wake_targets([sock(TCP_LISTEN, inode=1), waiting_child] + conns, None)
    assert targets[0].listening
    assert len(targets) == 1 + MAX_WATCHED_CONNECTIONS and waiting_child not in targets
    assert wake_targets([sock(TCP_LISTEN, inode=1)], owned=frozenset({2})) == []


def test_exact_request_is_an_inet_diag_req_v2_for_that_socket():
    t = TcpSocket(family=socket.AF_INET6, state=TCP_LISTEN, local_addr="::1", local_port=8080,
                  remote_addr="::", remote_port=0, rqueue=0, wqueue=0, inode=9, interface=3,
                  cookie=0x1122334455667788)
    req = exact_request(t, seq=7)
    length, typ, flags, seq, _ = struct.unpack_from("=IHHII", req)
    assert (length, typ, flags, seq) == (len(req), 20, 0x1, 7)  # NLM_F_REQUEST, no DUMP
    fam, proto, ext, _pad, states = struct.unpack_from("=BBBBI", req, 16)
    assert (fam, proto, ext, states) == (socket.AF_INET6, socket.IPPROTO_TCP, 0, 1 << TCP_LISTEN)
    sport, dport = struct.unpack_from(">HH", req, 24)
    assert (sport, dport) == (8080, 0)
    assert req[28:44] == socket.inet_pton(socket.AF_INET6, "::1")
    assert req[44:60] == bytes(16)
    ifindex, cookie = struct.unpack_from("=IQ", req, 60)
    assert (ifindex, cookie) == (3, 0x1122334455667788)
    dump = dump_request(socket.AF_INET, 1 << TCP_LISTEN, seq=9)
    assert struct.unpack_from("=IHHII", dump)[2] == 0x301  # NLM_F_REQUEST | NLM_F_DUMP


def test_parse_reply_reads_sockets_errors_and_the_end_of_a_dump():
    def msg(seq, rqueue, inode):
        body = struct.pack("=BBBB", 2, 10, 0, 0) + bytes(48) + struct.pack("=IIIII", 0, rqueue, 5, 0, inode)
        return struct.pack("=IHHII", 16 + len(body), 20, 2, seq, 0) + body
    err = struct.pack("=IHHII", 36, 2, 0, 4, 0) + struct.pack("=i", -2) + bytes(16)
    done = struct.pack("=IHHII", 20, 3, 2, 5, 0) + struct.pack("=i", 0)
    assert parse_reply(msg(1, 3, 77) + err + done) == [
        (1, SOCK, 0, 3, 77), (4, ERROR, -2, 0, 0), (5, DONE, 0, 0, 0)]
    assert parse_reply(b"\x01\x00") == []


def test_namespace_counters_count_loopback_once_and_opened_connections(tmp_path):
    d = tmp_path / "42" / "net"
    d.mkdir(parents=True)
    (d / "dev").write_text(
        "Inter-|   Receive                                                |  Transmit\n"
        " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n"
        "    lo:    1000      10    0    0    0     0          0         0     1000      10    0    0    0     0       0          0\n"
        "  eth0:     300       3    0    0    0     0          0         0      200       2    0    0    0     0       0          0\n")
    (d / "snmp").write_text(
        "Ip: Forwarding DefaultTTL\nIp: 1 64\n"
        "Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails\n"
        "Tcp: 1 200 120000 -1 4 9 0\n")
    c = read_counters(str(tmp_path), 42)
    assert (c.interface_bytes, c.loopback_bytes, c.connections_opened) == (500, 1000, 13)
    assert parse_snmp((d / "snmp").read_text())["Ip"] == {"Forwarding": 1, "DefaultTTL": 64}


def test_latency_histogram_buckets_are_cumulative():
    h = LatencyHistogram(buckets=(0.1, 0.3))
    for s in (0.05, 0.2, 0.2, 5.0):
        h.observe(s)
    fam = h.family("x_seconds", "doc")
    got = {s.labels.get("le"): s.value for s in fam.samples if s.name == "x_seconds_bucket"}
    assert got == {"0.1": 1.0, "0.3": 3.0, "+Inf": 4.0}
    assert [s.value for s in fam.samples if s.name == "x_seconds_count"] == [4.0]


# ---------------------------------------------------------------- memory release (fixture trees)

FIX = Path(__file__).parent.parent / "fixtures"
V1_ID, V1_PID = (FIX / "cgroup_v1" / "CAPTURED").read_text().split()
V2_ID, V2_PID = "1d80b2bcd9525e3d116080e6adab6ed5a2c135370152a9446954687cf979dec7", 4242
MIB = 2**20


def component_on(tmp_path, tree: str, proc: str):
    """The component on a copy of a fixture cgroup tree (its knobs become plain files)."""
    shutil.copytree(FIX / tree, tmp_path / tree)
    shutil.copytree(FIX / proc, tmp_path / proc)
    fs = CgroupFS(str(tmp_path / tree), proc=str(tmp_path / proc))
    ctx = Context(engine=None, inventory=None, cgroups=fs, journal=None, history=None,
                  clock=time.time, get_config=cfg_with, proc=str(tmp_path / proc))
    return Hibernation(ctx), fs


def info_of(cid: str, pid: int):
    return dataclasses.replace(container("web", cid=cid).info, pid=pid)


def test_v2_asks_memory_reclaim_for_all_it_holds(tmp_path):
    hib, fs = component_on(tmp_path, "cgroup_v2", "proc_v2")
    knob = Path(fs.locate(V2_ID, V2_PID).dir("memory")) / "memory.reclaim"
    knob.write_text("")
    released, note, resident = hib.hibernator.release_memory(info_of(V2_ID, V2_PID))
    assert knob.read_text() == "52428800"  # memory.current: everything it holds
    assert released == 0 and note.startswith("memory.reclaim released 0.0 MiB")
    # memory.current 50 MiB = anon 30 MiB + shmem 8 MiB + 12 MiB of the rest (file pages
    # a reclaim did not take: the fixture's knob is a plain file)
    assert (resident.anon_bytes, resident.shmem_bytes, resident.other_bytes) == \
        (30 * MIB, 8 * MIB, 12 * MIB)
    assert "50.0 MiB stays resident (30.0 MiB anonymous, 8.0 MiB shmem, 12.0 MiB other)" in note


def test_a_v2_kernel_without_memory_reclaim_says_so(tmp_path):
    hib, _ = component_on(tmp_path, "cgroup_v2", "proc_v2")
    released, note, resident = hib.hibernator.release_memory(info_of(V2_ID, V2_PID))
    assert released is None and note == "memory not released: this kernel has no memory.reclaim"
    assert resident is None


def test_v1_writes_memory_force_empty_and_reports_the_anonymous_memory_and_shmem_left(tmp_path):
    hib, fs = component_on(tmp_path, "cgroup_v1", "proc")  # the captured host has no swap
    knob = Path(fs.locate(V1_ID, int(V1_PID)).dir("memory")) / "memory.force_empty"
    knob.write_text("")
    released, note, resident = hib.hibernator.release_memory(info_of(V1_ID, int(V1_PID)))
    assert knob.read_text() == "0"
    assert released == 0 and note.startswith("memory.force_empty released")
    # usage_in_bytes 8830976 = total_rss 48 KiB + total_shmem 8 MiB (the captured dd into
    # tmpfs) + 384 KiB of the rest: what stays resident is all of it, not the 48 KiB
    assert (resident.anon_bytes, resident.shmem_bytes, resident.total_bytes) == \
        (49152, 8 * MIB, 8830976)
    assert "8.4 MiB stays resident (0.0 MiB anonymous, 8.0 MiB shmem, 0.4 MiB other)" in note
    assert "no swap on this host: anonymous memory and shmem cannot be released" in note


@pytest.mark.parametrize("version, stat, usage, want", [
    # v2: anon and shmem are separate keys; file pages beyond shmem are "other"
    (2, "anon 4404019\nfile 39845888\nshmem 37748736\n", 44040192,
     (4404019, 37748736, 44040192 - 4404019 - 37748736)),
    # v1: total_rss excludes shmem, which v1 counts in total_cache; the per-cgroup rss and
    # shmem lines (without total_) are not the hierarchy's and are not used
    (1, "rss 1\nshmem 2\ntotal_cache 37748736\ntotal_rss 4404019\ntotal_shmem 37748736\n",
     44040192, (4404019, 37748736, 44040192 - 4404019 - 37748736)),
    # a usage read a moment apart (or v1's batched counter) below anon + shmem: no negative
    (1, "total_rss 3000\ntotal_shmem 5000\n", 7000, (3000, 5000, 0)),
    (2, "", 1000, (0, 0, 1000)),
])
def test_resident_is_anon_plus_shmem_plus_the_rest_of_the_usage(version, stat, usage, want):
    r = resident_of(version, stat, usage)
    assert (r.anon_bytes, r.shmem_bytes, r.other_bytes) == want
    assert r.total_bytes == max(usage, want[0] + want[1])


# ---------------------------------------------------------------- UDP services (captured /proc)


def test_udp_services_are_the_unconnected_sockets_on_fixed_ports():
    """From a container's captured udp/udp6 tables: 0.0.0.0:5353 (832 bytes queued),
    127.0.0.1:161 and [::]:5355 are services; an ephemeral-port client socket, a connected
    socket and [::1]:45354 (ephemeral) are not."""
    got = udp_services(str(FIX / "proc"), 19089)
    assert sorted(u.describe() for u in got) == ["udp 0.0.0.0:5353", "udp 127.0.0.1:161",
                                                  "udp [::]:5355"]
    assert {u.describe(): u.rqueue for u in got}["udp 0.0.0.0:5353"] == 832
    assert {u.inode for u in got} == {1876376, 1876379, 1876380}


def test_udp_table_addresses_are_decoded_in_host_word_order():
    line = (" 1: 00000000000000000000000001000000:13C4 00000000000000000000000000000000:0000 "
            "07 00000000:00000000 00:00000000 00000000     0        0 77 2 0000000000000000 0")
    (u,) = parse_proc_udp("header\n" + line, socket.AF_INET6)
    assert (u.local_addr, u.local_port, u.inode) == ("::1", 5060, 77)


def test_udp_services_of_a_gone_process_raise_netns_gone(tmp_path):
    with pytest.raises(NetnsGone):
        udp_services(str(tmp_path), 999999)


def test_a_udp_service_is_not_paused_and_its_idle_timer_starts_over(tmp_path):
    hib, _ = component_on(tmp_path, "cgroup_v1", "proc")
    info = info_of(V1_ID, int(V1_PID))
    hib.activity.watch(OWNER, {info.id: Watch(1.0, 10.0, TH)})
    hib.activity.record(info.id, ActivitySample(0.0, info.pid, 0.0, 0))
    assert hib.activity.track(OWNER, info.id).idle_since_s == 0.0
    out = hib.hibernator.udp_refusal(info, owned=None)
    assert out is not None and out.skipped and not out.ok
    assert "udp 0.0.0.0:5353" in out.detail and "datagram cannot wake" in out.detail
    assert hib.activity.track(OWNER, info.id).idle_since_s > 0.0
    assert "udp 0.0.0.0:5353" in hib.activity.track(OWNER, info.id).busy_reason
    # In a shared namespace only the container's own sockets count.
    assert hib.hibernator.udp_refusal(info, owned=frozenset({1})) is None


def _with_health(c, health: str):
    return dataclasses.replace(c, info=dataclasses.replace(
        c.info, has_healthcheck=True, health=health,
        healthcheck_test=("CMD-SHELL", "curl -fsS http://127.0.0.1:10210/health")))


def test_a_health_checked_container_hibernates_only_while_healthy_and_not_before_healthy_since_its_wake():
    cfg = cfg_with()
    for health in ("starting", "unhealthy", ""):
        c = _with_health(container("web"), health)
        state = HibernationState(tracks={c.info.id: idle_track(1000.0)})
        assert plan_hibernation(tick(cfg, [c], now=5000.0), state) == [], health
    c = _with_health(container("web"), "healthy")
    state = HibernationState(tracks={c.info.id: idle_track(1000.0)})
    assert len(plan_hibernation(tick(cfg, [c], now=5000.0), state)) == 1
    # woken by us, Docker still says healthy from before the pause: held until a check passes
    woken = HibernationState(tracks={c.info.id: idle_track(1000.0)}, unready=frozenset({c.info.id}))
    assert plan_hibernation(tick(cfg, [c], now=5000.0), woken) == []


def test_health_is_shown_as_hibernated_not_as_dockers_paused_unhealthy():
    from supervisor.publish.status import health_label
    c = _with_health(container("web", state="paused"), "unhealthy")
    assert health_label(c.info, hibernated=True) == "hibernated"
    assert health_label(c.info, hibernated=False) == "unhealthy"  # paused by somebody else
    assert health_label(_with_health(container("x"), "").info, False) == "starting"
    assert health_label(container("plain").info, True) == "none"


def test_an_event_older_than_the_hibernation_does_not_forget_it(tmp_path):
    """A restarted daemon's event stream begins a second in the past, so it replays the
    unpause of the wake before this hibernation: that must not count as somebody else
    waking the container (found by the crash-safety test under load)."""
    from supervisor.adapters.journal import Journal
    from supervisor.policy.hibernation import PAUSED, Record
    hib, _ = component_on(tmp_path, "cgroup_v2", "proc_v2")
    hib.store.journal = Journal(str(tmp_path / "j.sqlite3"), 1000)
    rec = Record(id=V2_ID, name="web", mode="pause", since_s=1000.0, phase=PAUSED)
    hib.store.put(rec)
    hib._on_event("unpause", V2_ID, {"timeNano": int(999.5e9)})  # the earlier wake's
    assert V2_ID in hib.store.ids()
    hib._on_event("unpause", V2_ID, {"timeNano": int(1000.5e9)})  # somebody else, now
    assert V2_ID not in hib.store.ids()
    hib.store.journal.close()
