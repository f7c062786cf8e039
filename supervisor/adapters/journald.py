"""The systemd journal's native protocol, through systemd-python when it is installed:
the only module that imports ``systemd``."""

from __future__ import annotations

from typing import Callable


def journal_send() -> Callable[..., None] | None:
    """``systemd.journal.send`` (fields as keyword arguments: MESSAGE=, PRIORITY=...), or
    None when systemd-python is not installed."""
    try:
        from systemd.journal import send  # type: ignore[import-not-found]
    except ImportError:
        return None
    return send
