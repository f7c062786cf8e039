"""Structured logs (Rule 7.2): one JSON object per line on stderr, with the rule's field
names (timestamp, level, service, message) plus the logger and any ``extra=`` fields.

Under systemd, when stderr really is the journal stream (JOURNAL_STREAM names the
device:inode of fd 2, see systemd.exec(5) "$JOURNAL_STREAM") and systemd-python is
installed, records go to the journal natively instead: MESSAGE, PRIORITY, LOGGER,
CODE_* and each ``extra=`` field as an upper-case journal field (ACTION=, TARGET=...),
so `journalctl -u resource-supervisor ACTION=stop` finds them.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from typing import Any

from supervisor.adapters.journald import journal_send

SERVICE = "resource-supervisor"
_STD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
# syslog priorities (sd-daemon(3)) by logging level
_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6,
             logging.DEBUG: 7}


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The ``extra=`` fields a caller attached to a record."""
    return {k: v for k, v in vars(record).items() if k not in _STD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname, "service": SERVICE, "logger": record.name,
            "message": record.getMessage()}
        for k, v in extra_fields(record).items():
            out.setdefault(k, v)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def journal_fields(record: logging.LogRecord, message: str) -> dict[str, str | int]:
    """Journal fields for one record. Journal field names are upper-case letters, digits
    and underscores and may not start with an underscore (systemd.journal-fields(7));
    an ``extra=`` key that cannot be made one is dropped rather than sent malformed."""
    fields: dict[str, str | int] = {"MESSAGE": message, "PRIORITY": str(_PRIORITY.get(record.levelno, 6)),
              "SYSLOG_IDENTIFIER": SERVICE, "LOGGER": record.name,
              "THREAD_NAME": record.threadName or "", "CODE_FILE": record.pathname,
              # an int: systemd-python's send() formats CODE_LINE with {:d} and raises
              # on a str, which lost every record (seen in the production-host lane)
              "CODE_LINE": record.lineno, "CODE_FUNC": record.funcName}
    for k, v in extra_fields(record).items():
        name = re.sub(r"[^A-Z0-9_]", "_", k.upper()).lstrip("_")
        if name and name not in fields:
            fields[name] = v if isinstance(v, str) else json.dumps(v, default=str)
    return fields


class JournalHandler(logging.Handler):
    """Sends each record to journald with structured fields (systemd-python's send)."""

    def __init__(self, send):
        super().__init__()
        self._send = send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
            if record.exc_info:
                msg += "\n" + logging.Formatter().formatException(record.exc_info)
            self._send(**journal_fields(record, msg))
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)


def stderr_is_journal(environ: dict[str, str] | None = None) -> bool:
    """True when fd 2 is the stream systemd connected to the journal."""
    value = (environ if environ is not None else os.environ).get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat(2)
    except OSError:
        return False
    return st.st_dev == int(dev) and st.st_ino == int(ino)


def setup(level: str = "info") -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    send = journal_send() if stderr_is_journal() else None
    if send is not None:
        handler: logging.Handler = JournalHandler(send)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
