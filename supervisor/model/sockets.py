"""The sockets of a container's network namespace, as values: what sock_diag and
/proc/PID/net/udp report (adapters/netdiag.py, adapters/netcounters.py) and what the
hibernation decisions read (policy/hibernation.py)."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
              6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN",
              11: "CLOSING"}
TCP_LISTEN = 10
TCP_ESTABLISHED = 1


@dataclass(frozen=True, slots=True)
class TcpSocket:
    """One TCP socket as sock_diag reports it."""

    family: int  # socket.AF_INET | socket.AF_INET6
    state: int  # TCP_LISTEN, TCP_ESTABLISHED...
    local_addr: str
    local_port: int
    remote_addr: str
    remote_port: int
    # LISTEN: connections completed by the kernel and waiting for accept() (the accept
    # queue); other states: bytes received and not yet read by the application.
    rqueue: int
    # LISTEN: the backlog; other states: bytes not yet sent/acknowledged.
    wqueue: int
    inode: int  # 0 = not held by any process (e.g. still waiting in an accept queue)
    interface: int = 0
    cookie: int = 0
    bytes_acked: int | None = None  # tcp_info (kernel 4.1+); None when not reported
    bytes_received: int | None = None
    last_data_sent_ms: int | None = None  # how long ago data was last sent / received
    last_data_recv_ms: int | None = None

    @property
    def state_name(self) -> str:
        return TCP_STATES.get(self.state, str(self.state))

    @property
    def listening(self) -> bool:
        return self.state == TCP_LISTEN

    def describe(self) -> str:
        host = f"[{self.local_addr}]" if self.family == socket.AF_INET6 else self.local_addr
        if self.listening:
            return f"{host}:{self.local_port}"
        peer = f"[{self.remote_addr}]" if self.family == socket.AF_INET6 else self.remote_addr
        return f"{host}:{self.local_port}<->{peer}:{self.remote_port}"

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, "state": self.state, "local_addr": self.local_addr,
                "local_port": self.local_port, "remote_addr": self.remote_addr,
                "remote_port": self.remote_port, "inode": self.inode,
                "interface": self.interface, "cookie": self.cookie}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TcpSocket":
        return cls(family=int(d["family"]), state=int(d["state"]), local_addr=str(d["local_addr"]),
                   local_port=int(d["local_port"]), remote_addr=str(d.get("remote_addr", "")),
                   remote_port=int(d.get("remote_port", 0)), rqueue=0, wqueue=0,
                   inode=int(d.get("inode", 0)), interface=int(d.get("interface", 0)),
                   cookie=int(d.get("cookie", 0)))


@dataclass(frozen=True, slots=True)
class UdpSocket:
    """A UDP socket that waits for datagrams from anyone: a UDP service."""

    family: int
    local_addr: str
    local_port: int
    inode: int
    rqueue: int  # bytes received and not yet read

    def describe(self) -> str:
        host = f"[{self.local_addr}]" if self.family == socket.AF_INET6 else self.local_addr
        return f"udp {host}:{self.local_port}"
