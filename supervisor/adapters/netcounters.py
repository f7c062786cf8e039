"""A container's network namespace read from the host through /proc/PID/net, which
shows the namespace of PID: no setns, no exec.

- ``read_counters``: bytes on its interfaces and over its loopback (net/dev) and the
  TCP connections opened (net/snmp). The activity tracker (observe/activity.py) is the
  one caller in a pass: its reading also gives the snapshot its ``NetIO``.
- ``socket_inodes``: the sockets a set of processes hold (/proc/PID/fd).
- ``udp_services``: the UDP sockets waiting for datagrams from anyone (net/udp, udp6).
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass
from typing import Iterable

from supervisor.adapters.cgroups import read_text
from supervisor.adapters.host import parse_net_dev
from supervisor.adapters.netns import NetdiagError, NetnsGone
from supervisor.model.errors import CgroupError, CgroupGone
from supervisor.model.snapshot import NetIO
from supervisor.model.sockets import UdpSocket


@dataclass(frozen=True, slots=True)
class NetnsCounters:
    """Cumulative counters of one network namespace."""

    # The namespace's own interfaces, summed, loopback left out.
    net: NetIO
    # Bytes over loopback inside the namespace, counted once (lo's rx == its tx).
    loopback_bytes: int
    tcp_passive_opens: int = 0  # connections accepted by the kernel (handshakes completed)
    tcp_active_opens: int = 0  # connections opened from inside

    @property
    def interface_bytes(self) -> int:
        """Bytes on the namespace's own interfaces (rx + tx), loopback left out."""
        return self.net.rx_bytes + self.net.tx_bytes

    @property
    def connections_opened(self) -> int:
        return self.tcp_passive_opens + self.tcp_active_opens


def parse_snmp(text: str) -> dict[str, dict[str, int]]:
    """/proc/net/snmp: pairs of 'Proto: Name Name...' / 'Proto: value value...' lines."""
    out: dict[str, dict[str, int]] = {}
    lines = text.splitlines()
    for head, vals in zip(lines[::2], lines[1::2]):
        proto, _, names = head.partition(":")
        proto2, _, values = vals.partition(":")
        if proto != proto2:
            continue
        row = {}
        for k, v in zip(names.split(), values.split()):
            try:
                row[k] = int(v)
            except ValueError:
                continue
        out[proto.strip()] = row
    return out


def read_counters(proc: str, pid: int, tcp: bool = True) -> NetnsCounters:
    """The counters of PID's network namespace; ``tcp=False`` leaves net/snmp unread
    (its TCP counters stay 0). Raises NetnsGone / NetdiagError."""
    if pid <= 0:
        raise NetnsGone(f"no process (pid {pid}): container not running")
    try:
        devs = parse_net_dev(read_text(f"{proc}/{pid}/net/dev"))
        opens = parse_snmp(read_text(f"{proc}/{pid}/net/snmp")).get("Tcp", {}) if tcp else {}
    except CgroupGone:  # read_text's boundary error; these files are under /proc
        raise NetnsGone(f"network namespace of pid {pid} is gone") from None
    except CgroupError as e:
        raise NetdiagError(f"cannot read counters of pid {pid}: {e.reason}") from None
    lo = devs.pop("lo", None)
    net = NetIO(rx_bytes=sum(d.rx_bytes for d in devs.values()),
                tx_bytes=sum(d.tx_bytes for d in devs.values()),
                rx_packets=sum(d.rx_packets for d in devs.values()),
                tx_packets=sum(d.tx_packets for d in devs.values()))
    return NetnsCounters(net=net, loopback_bytes=lo.rx_bytes if lo else 0,
                         tcp_passive_opens=opens.get("PassiveOpens", 0),
                         tcp_active_opens=opens.get("ActiveOpens", 0))


def container_net(proc: str, pid: int) -> NetIO | None:
    """A container's own interfaces (loopback left out), or None when unreadable."""
    try:
        return read_counters(proc, pid, tcp=False).net
    except NetdiagError:
        return None


def socket_inodes(proc: str, pids: Iterable[int]) -> frozenset[int]:
    """Inodes of the sockets the given processes hold open (from /proc/PID/fd links
    "socket:[INODE]"). A frozen process's fd table reads like any other."""
    out: set[int] = set()
    for pid in pids:
        d = f"{proc}/{pid}/fd"
        try:
            names = os.listdir(d)
        except OSError:
            continue  # exited, or a kernel thread
        for n in names:
            try:
                link = os.readlink(f"{d}/{n}")
            except OSError:
                continue
            if link.startswith("socket:["):
                try:
                    out.add(int(link[8:-1]))
                except ValueError:
                    continue
    return frozenset(out)


# A bound, unconnected UDP socket shows state 07 (TCP_CLOSE) and remote port 0 in
# /proc/net/udp. One bound to a port of the kernel's default ephemeral range
# (net.ipv4.ip_local_port_range, 32768-60999) is taken for a client's (a resolver's
# sendto() socket), not a service.
UDP_UNCONNECTED = 7
EPHEMERAL_PORTS = range(32768, 61000)


def _proc_net_addr(field: str, family: int) -> tuple[str, int]:
    """"0100007F:14E9" -> ("127.0.0.1", 5353). /proc prints the address as 32-bit words
    in host byte order, the port in network order."""
    addr, _, port = field.partition(":")
    raw = bytes.fromhex(addr)
    if sys.byteorder == "little":
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return socket.inet_ntop(family, raw), int(port, 16)


def parse_proc_udp(text: str, family: int) -> list[UdpSocket]:
    """The UDP services of one /proc/PID/net/udp or udp6 table (see EPHEMERAL_PORTS)."""
    out = []
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) < 10 or int(f[3], 16) != UDP_UNCONNECTED:
            continue
        addr, port = _proc_net_addr(f[1], family)
        _, remote_port = _proc_net_addr(f[2], family)
        if remote_port or not port or port in EPHEMERAL_PORTS:
            continue
        out.append(UdpSocket(family, addr, port, int(f[9]), int(f[4].partition(":")[2], 16)))
    return out


def udp_services(proc: str, pid: int) -> list[UdpSocket]:
    """UDP services in PID's network namespace, read from /proc without entering it.
    Raises NetnsGone / NetdiagError."""
    out: list[UdpSocket] = []
    for name, family in (("udp", socket.AF_INET), ("udp6", socket.AF_INET6)):
        path = f"{proc}/{pid}/net/{name}"
        try:
            with open(path, "rb") as f:  # a seq file: read() returns a page at a time
                text = f.read().decode("ascii", "replace")
        except FileNotFoundError:
            if family == socket.AF_INET6 and os.path.exists(f"{proc}/{pid}"):
                continue  # a kernel without IPv6
            raise NetnsGone(f"process {pid} is gone") from None
        except OSError as e:
            raise NetdiagError(f"cannot read {path}: {e.strerror}") from None
        try:
            out.extend(parse_proc_udp(text, family))
        except (ValueError, IndexError) as e:
            raise NetdiagError(f"unexpected line in {path}: {e}") from None
    return out
