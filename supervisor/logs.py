"""Structured logs (Rule 7.2): one JSON object per line on stderr; under systemd
(JOURNAL_STREAM set and systemd-python present) to the journal with structured fields."""

from __future__ import annotations

import json
import logging
import os
import sys
import time

_STD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
               + f".{int(record.msecs):03d}Z",
               "level": record.levelname.lower(), "logger": record.name,
               "msg": record.getMessage()}
        for k, v in vars(record).items():
            if k not in _STD and not k.startswith("_"):
                out[k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def setup(level: str = "info") -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler: logging.Handler | None = None
    if os.environ.get("JOURNAL_STREAM"):
        try:
            from systemd.journal import JournalHandler  # type: ignore[import-not-found]
            handler = JournalHandler(SYSLOG_IDENTIFIER="resource-supervisor")
        except ImportError:
            handler = None
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
