"""What the daemon says to the outside: JSON log lines (Rule 7.2), journal fields under
systemd, and sd_notify datagrams."""

import json
import logging
import os
import socket

from supervisor.runtime import logs
from supervisor.runtime.logs import JsonFormatter, JournalHandler, journal_fields, stderr_is_journal
from supervisor.adapters.sdnotify import Notifier


def record(msg="pass took %.1fs", args=(1.5,), level=logging.WARNING, **extra):
    r = logging.LogRecord("supervisor.daemon", level, "/x/daemon.py", 42, msg, args, None)
    for k, v in extra.items():
        setattr(r, k, v)
    return r


def test_json_lines_carry_the_rules_fields_and_extras():
    line = JsonFormatter().format(record(action="stop", target="web", problems=["a", "b"]))
    out = json.loads(line)
    assert out["level"] == "WARNING" and out["service"] == "resource-supervisor"
    assert out["message"] == "pass took 1.5s" and out["logger"] == "supervisor.daemon"
    assert out["timestamp"].endswith("Z") and "T" in out["timestamp"]
    assert (out["action"], out["target"], out["problems"]) == ("stop", "web", ["a", "b"])
    assert "\n" not in line


def test_journal_fields_are_upper_case_and_valid():
    f = journal_fields(record(action="stop", **{"pass-s": 2.0, "_hidden": 1, "MESSAGE": "x"}), "m")
    assert f["MESSAGE"] == "m" and f["PRIORITY"] == "4" and f["SYSLOG_IDENTIFIER"] == "resource-supervisor"
    assert f["ACTION"] == "stop" and f["PASS_S"] == "2.0"
    assert "_HIDDEN" not in f and "HIDDEN" not in f
    sent = []
    h = JournalHandler(lambda **kw: sent.append(kw))
    h.emit(record(level=logging.ERROR, target="web"))
    assert sent[0]["PRIORITY"] == "3" and sent[0]["TARGET"] == "web"


def test_journal_is_used_only_when_stderr_is_the_journal_stream():
    st = os.fstat(2)
    assert stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    assert not stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
    assert not stderr_is_journal({"JOURNAL_STREAM": "garbage"})
    assert not stderr_is_journal({})


def test_notifier_sends_one_datagram_per_call(tmp_path):
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as rx:
        rx.bind(path)
        rx.settimeout(2)
        n = Notifier(path)
        assert n.enabled and n.notify(READY=1, STATUS="engine up, 3 running")
        assert rx.recv(4096) == b"READY=1\nSTATUS=engine up, 3 running"
    assert not Notifier("").enabled and Notifier("").notify(READY=1) is False
    assert Notifier(str(tmp_path / "gone.sock")).notify(WATCHDOG=1) is False


def test_watchdog_interval_is_half_of_watchdog_usec(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert Notifier("").watchdog_interval_s() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # meant for another process
    assert Notifier("").watchdog_interval_s() is None
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    monkeypatch.setenv("WATCHDOG_USEC", "soon")
    assert Notifier("").watchdog_interval_s() is None


def test_setup_sends_to_the_journal_only_through_the_adapter(monkeypatch):
    """Under systemd (stderr is the journal stream) records go to the sender the journald
    adapter gives; without systemd-python, JSON lines on stderr as anywhere else."""
    st = os.fstat(2)
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    sent = []
    try:
        monkeypatch.setattr(logs, "journal_send", lambda: lambda **kw: sent.append(kw))
        logs.setup("info")
        (h,) = root.handlers
        assert isinstance(h, JournalHandler)
        logging.getLogger("supervisor.daemon").info("hello", extra={"target": "web"})
        assert sent[-1]["MESSAGE"] == "hello" and sent[-1]["TARGET"] == "web"
        monkeypatch.setattr(logs, "journal_send", lambda: None)
        logs.setup("info")
        (h,) = root.handlers
        assert isinstance(h, logging.StreamHandler) and isinstance(h.formatter, JsonFormatter)
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in before[0]:
            root.addHandler(h)
        root.setLevel(before[1])
