"""sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET. Tests give the daemon
their own datagram socket and read what it says (no systemd runs as PID 1 there)."""

from __future__ import annotations

import os
import socket


class Notifier:
    def __init__(self, address: str | None = None):
        self.address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        self._sock: socket.socket | None = None
        if self.address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, **fields: str | int) -> bool:
        """notify(READY=1, STATUS="...") -> sent?"""
        if self._sock is None:
            return False
        msg = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
        addr = self.address
        if addr.startswith("@"):  # abstract namespace socket
            addr = "\0" + addr[1:]
        try:
            # Never block the loop on a slow reader: a full queue drops this one message
            # (the next pass sends another) instead of stalling every pass behind it.
            self._sock.sendto(msg, socket.MSG_DONTWAIT, addr)
            return True
        except OSError:  # no listener, or its queue is full
            return False

    def watchdog_interval_s(self) -> float | None:
        """Half of WatchdogSec (systemd's advice), if the watchdog is on for us."""
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return None
        try:
            return int(usec) / 1e6 / 2
        except ValueError:
            return None
