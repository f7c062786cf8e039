"""The unit, proven (issue 16): resource-supervisor.service as systemd runs it on a
production host: READY=1, STATUS=, reload, exit 78, the watchdog, stop, journald."""

from __future__ import annotations

import os
import re
import signal
import time

from _hostlib import (CGROUP_ROOT, UNIT, cgroup_of_pid, journal, journal_cursor, main_pid, show,
                      status_json, supctl, systemctl, wait_active, wait_for, write_dropin)


def test_the_unit_is_active_after_ready():
    # Type=notify: systemd calls it active only once the daemon sent READY=1
    assert show("Type") == "notify"
    assert systemctl("is-active", UNIT).stdout.strip() == "active"
    assert show("SubState") == "running"
    assert show("NotifyAccess") == "main"
    pid = main_pid()
    cmdline = open(f"/proc/{pid}/cmdline").read().split("\0")
    assert "/opt/resource-supervisor/venv/bin/resource-supervisord" in cmdline, cmdline
    # its own slice directly under the root slice, so its memory.min reaches it
    cg = cgroup_of_pid(pid)
    assert cg == CGROUP_ROOT / "resource_supervisor.slice/resource-supervisor.service", cg
    assert (cg.parent / "memory.min").read_text().strip() == str(128 * 2**20)
    assert (cg / "memory.min").read_text().strip() == str(128 * 2**20)


def test_systemctl_status_shows_the_status_line():
    wait_active()
    # STATUS= is re-sent every pass; wait for the first pass's summary
    text = wait_for(lambda: show("StatusText"), timeout=30, what="a STATUS= line")
    assert text.startswith("engine up, "), text
    out = systemctl("status", UNIT, check=False).stdout
    # (re-sent each pass with that pass's duration: compare the line, not the figure)
    assert re.search(r'Status: "engine up, \d+ running, .*, pass [0-9.]+ms"', out), out
    assert "active (running)" in out


def test_the_control_socket_answers_supctl():
    wait_active()
    body = status_json()
    assert body, "supctl status --json returned nothing"


def _break(text: str) -> str:
    """The config with a value that does not validate (the reason names dry_run)."""
    assert "dry_run = false" in text
    return text.replace("dry_run = false", 'dry_run = "maybe"', 1)


def _standard_limit() -> int:
    return status_json()["classes"]["standard"]["memory_limit_bytes"]


def test_reload_with_a_broken_config_fails_visibly_and_keeps_the_old_one(unit_config):
    pid = wait_active()
    before = _standard_limit()
    good = unit_config.read_text()
    # a changed limit the daemon must NOT take, in a file that does not validate
    broken = good.replace('memory_limit = "512MiB"', 'memory_limit = "300MiB"', 1)
    assert broken != good
    unit_config.write_text(_break(broken))
    cursor = journal_cursor()
    p = systemctl("reload", UNIT, check=False)
    assert p.returncode != 0, p
    assert "failed" in p.stderr.lower(), p.stderr
    # the reason is in the unit's journal (ExecReload='s --check printed it)
    text = "\n".join(e.get("MESSAGE", "") for e in journal(since_cursor=cursor)
                     if isinstance(e.get("MESSAGE"), str))
    assert "dry_run" in text, text
    # still the same process, still active, still on the old config
    assert show("ActiveState") == "active" and main_pid() == pid
    assert _standard_limit() == before
    # and a good reload after it works
    unit_config.write_text(good)
    systemctl("reload", UNIT)
    assert main_pid() == pid


def test_a_bad_config_at_start_exits_78_and_is_not_restarted(unit_config):
    wait_active()
    assert "78" in show("RestartPreventExitStatus").split()
    restarts = int(show("NRestarts"))
    unit_config.write_text(_break(unit_config.read_text()))
    p = systemctl("restart", UNIT, check=False)
    assert p.returncode != 0
    wait_for(lambda: show("ActiveState") == "failed", timeout=60, what="the unit failed")
    assert show("ExecMainStatus") == "78"
    assert show("Result") == "exit-code"
    # RestartSec=10s: had it been restarted, it would have been by now
    assert show("RestartUSec") == "10s"
    time.sleep(15)
    assert show("ActiveState") == "failed"
    assert int(show("NRestarts")) == restarts
    assert "dry_run" in "\n".join(str(e.get("MESSAGE", "")) for e in journal("-n", "60"))


def _row(name: str) -> dict:
    rows = [r for r in status_json().get("containers", []) if r["name"] == name]
    return rows[0] if rows else {}


def _hibernate(name: str) -> None:
    out = supctl("hibernate", name, "--mode", "pause", "--force", "--json", check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    wait_for(lambda: _row(name).get("hibernated"), timeout=60, what=f"{name} hibernated in status")


def test_a_hung_loop_is_killed_by_the_watchdog_and_comes_back_with_its_state(unit_config, containers):
    # a short watchdog for this test only (a runtime drop-in, removed by the fixture)
    write_dropin("50-test-watchdog", "[Service]\nWatchdogSec=6s\nTimeoutAbortSec=5s\nRestartSec=1s\n")
    systemctl("daemon-reload")
    systemctl("restart", UNIT)
    wait_active()
    assert show("WatchdogUSec") == "6s"
    c = containers.run()
    wait_for(lambda: _row(c.name), timeout=60, what="the container in the status")
    _hibernate(c.name)
    c.reload()
    assert c.status == "paused"
    assert c.name in supctl("journal", "--json", "-n", "50").stdout

    restarts, pid = int(show("NRestarts")), main_pid()
    cursor = journal_cursor()
    os.kill(pid, signal.SIGSTOP)  # the loop hangs: no WATCHDOG=1 any more
    wait_for(lambda: int(show("NRestarts")) > restarts, timeout=90, what="a watchdog restart")
    new_pid = wait_active()
    assert new_pid != pid
    msgs = "\n".join(str(e.get("MESSAGE", "")) for e in journal(since_cursor=cursor))
    assert "Watchdog timeout" in msgs, msgs
    # its state survived: the action journal and the hibernation record
    after = supctl("journal", "--json", "-n", "50").stdout
    assert c.name in after
    wait_for(lambda: _row(c.name).get("hibernated"), timeout=60, what="hibernation state after restart")
    c.reload()
    assert c.status == "paused"


def test_stop_leaves_every_container_as_it_was(unit_config, containers):
    wait_active()
    running = containers.run(mem_limit="64m")
    paused = containers.run()
    wait_for(lambda: _row(paused.name), timeout=60, what="the containers in the status")
    _hibernate(paused.name)

    def state():
        out = {}
        for c in (running, paused):
            c.reload()
            hc = c.attrs["HostConfig"]
            out[c.name] = (c.status, c.attrs["State"]["Pid"], hc["Memory"], hc["CpusetCpus"],
                           hc["NanoCpus"], hc["CpuQuota"])
        return out

    before = state()
    systemctl("stop", UNIT)
    assert show("ActiveState") == "inactive"
    time.sleep(2)
    assert state() == before
    systemctl("start", UNIT)
    wait_active()


def test_logs_reach_journald_with_their_structured_fields(containers):
    wait_active()
    c = containers.run()
    wait_for(lambda: _row(c.name), timeout=60, what="the container in the status")
    _hibernate(c.name)
    entries = journal("SYSLOG_IDENTIFIER=resource-supervisor")
    assert entries, "no entry of the daemon in the journal"
    native = [e for e in entries if "LOGGER" in e]
    assert native, "no entry carries the LOGGER field (not sent natively)"
    e = native[-1]
    for field in ("MESSAGE", "PRIORITY", "CODE_FILE", "CODE_LINE", "CODE_FUNC", "THREAD_NAME"):
        assert field in e, (field, e)
    assert e["_SYSTEMD_UNIT"] == UNIT
    # an action's extra fields are journal fields of their own (ACTION=, TARGET=, OUTCOME=)
    acted = [e for e in journal("SYSLOG_IDENTIFIER=resource-supervisor", "ACTION=hibernate")
             if e.get("TARGET") == c.name]
    assert acted and "OUTCOME" in acted[-1], entries[-5:]
