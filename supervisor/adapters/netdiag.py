"""A container's TCP sockets through netlink sock_diag (linux/inet_diag.h, sock_diag(7)).

``list_tcp`` uses pyroute2's ``DiagSocket`` for a full listing (LISTEN and ESTABLISHED,
with tcp_info for the byte counters and the age of the last data). ``ConnectionProbe``
asks the kernel about *named* sockets (an exact lookup, no NLM_F_DUMP): that is a hash
lookup in the kernel, ~7 us per socket on the development machines, where a dump that
includes established sockets walks the host-wide established hash (262144 buckets
there: ~1.5 ms per query) and pyroute2's own request path costs ~0.4 ms of CPU. The wake
watcher asks every 100 ms, so it takes the exact path; the request bytes are still
encoded by pyroute2 (once per socket), only the four reply fields it needs are read
with ``struct`` at the offsets of ``struct inet_diag_msg``.

Both work inside the container's network namespace through ``netns.NetnsWorker``; the
namespace's counters and UDP services are read from /proc in netcounters.py.
"""

from __future__ import annotations

import contextlib
import errno
import select
import socket
import struct
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Iterable

from supervisor.adapters.netns import NetdiagError, NetnsWorker
from supervisor.model.sockets import TCP_LISTEN, TCP_STATES, TcpSocket

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLMSG_ERROR = 2
NLMSG_DONE = 3
INET_DIAG_INFO = 2  # extension: struct tcp_info
_NLMSG_HDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
# struct inet_diag_msg after the netlink header: family, state, timer, retrans (4 bytes),
# struct inet_diag_sockid (48 bytes), expires, rqueue, wqueue, uid, inode (u32 each).
_DIAG_TAIL = struct.Struct("=IIIII")
_DIAG_TAIL_OFFSET = 4 + 48

STATES_LISTEN = 1 << TCP_LISTEN
# Every socket that can still move data: all states but TIME_WAIT and CLOSE. A half-closed
# connection (CLOSE_WAIT: the client sent FIN, the server still streams) moves data too.
STATES_OPEN = sum(1 << s for s in TCP_STATES if s not in (6, 7))


# ---------------------------------------------------------------------- full listing


def _diag_socket():
    from pyroute2 import DiagSocket  # local: pyroute2 costs ~0.2 s to import
    return DiagSocket()


def _from_pyroute2(msg) -> TcpSocket:
    info = msg.get_attr("INET_DIAG_INFO")
    acked = received = last_sent = last_recv = None
    if info is not None:
        try:
            acked = int(info["tcpi_bytes_acked"])
            received = int(info["tcpi_bytes_received"])
            last_sent = int(info["tcpi_last_data_sent"])
            last_recv = int(info["tcpi_last_data_recv"])
        except (KeyError, TypeError, ValueError):
            pass  # an older kernel's shorter tcp_info
    return TcpSocket(
        family=msg["idiag_family"], state=msg["idiag_state"],
        local_addr=msg["idiag_src"], local_port=msg["idiag_sport"],
        remote_addr=msg["idiag_dst"], remote_port=msg["idiag_dport"],
        rqueue=msg["idiag_rqueue"], wqueue=msg["idiag_wqueue"], inode=msg["idiag_inode"],
        interface=msg["idiag_if"], cookie=msg["idiag_cookie"],
        bytes_acked=acked, bytes_received=received,
        last_data_sent_ms=last_sent, last_data_recv_ms=last_recv)


def list_tcp(worker: NetnsWorker, pid: int, states: int = STATES_OPEN,
             families: tuple[int, ...] = (socket.AF_INET, socket.AF_INET6)) -> list[TcpSocket]:
    """Every TCP socket of PID's namespace in ``states`` (IPv4 and IPv6; by default all
    that can still move data), with tcp_info.
    A few ms: used before a decision, not in a loop."""

    def use(ds) -> list[TcpSocket]:
        try:
            ds.bind()
            out = []
            for fam in families:
                for msg in ds.get_sock_stats(family=fam, states=states,
                                             extensions=1 << (INET_DIAG_INFO - 1)):
                    out.append(_from_pyroute2(msg))
            return out
        finally:
            ds.close()

    return worker.run_in(pid, _diag_socket, use)


# ---------------------------------------------------------------------- the watcher's probe


def _request(family: int, states: int, flags: int, seq: int, target: TcpSocket | None = None) -> bytes:
    """One inet_diag_req_v2 (linux/inet_diag.h), encoded by pyroute2."""
    from pyroute2.netlink.diag import inet_diag_req

    def words(addr: str) -> tuple[int, ...]:
        raw = socket.inet_pton(family, addr or ("::" if family == socket.AF_INET6 else "0.0.0.0"))
        return struct.unpack(">4I", raw.ljust(16, b"\0"))

    req = inet_diag_req()
    req["header"]["type"] = SOCK_DIAG_BY_FAMILY
    req["header"]["flags"] = flags
    req["header"]["sequence_number"] = seq
    req["sdiag_family"] = family
    req["sdiag_protocol"] = socket.IPPROTO_TCP
    req["idiag_ext"] = 0
    req["idiag_states"] = states
    t = target
    req["idiag_sport"] = t.local_port if t else 0
    req["idiag_dport"] = t.remote_port if t and not t.listening else 0
    req["idiag_src"] = words(t.local_addr if t else "")
    req["idiag_dst"] = words(t.remote_addr if t and not t.listening else "")
    req["idiag_if"] = t.interface if t else 0
    # With a cookie the kernel checks it is still the very same socket (else ESTALE);
    # all ones (INET_DIAG_NOCOOKIE) skips that check.
    req["idiag_cookie"] = (t.cookie if t else 0) or 0xFFFFFFFFFFFFFFFF
    req.encode()
    return bytes(req.data[: req["header"]["length"]])


def exact_request(target: TcpSocket, seq: int) -> bytes:
    """A request for one named socket: without NLM_F_DUMP the kernel looks it up in its
    hash tables (inet_diag_find_one_icsk) instead of walking them."""
    from pyroute2.netlink import NLM_F_REQUEST
    return _request(target.family, 1 << target.state, NLM_F_REQUEST, seq, target)


def dump_request(family: int, states: int, seq: int) -> bytes:
    """A request for every socket of ``family`` in ``states`` (NLM_F_DUMP)."""
    from pyroute2.netlink import NLM_F_DUMP, NLM_F_REQUEST
    return _request(family, states, NLM_F_REQUEST | NLM_F_DUMP, seq)


SOCK, ERROR, DONE = "sock", "error", "done"


def parse_reply(data: bytes) -> list[tuple[int, str, int, int, int]]:
    """(seq, kind, error, rqueue, inode) per netlink message in one datagram: kind is
    SOCK (a struct inet_diag_msg), ERROR (error = the negative errno) or DONE (the end
    of a dump)."""
    out = []
    off = 0
    while off + _NLMSG_HDR.size <= len(data):
        length, typ, _flags, seq, _pid = _NLMSG_HDR.unpack_from(data, off)
        if length < _NLMSG_HDR.size:
            break
        body = off + _NLMSG_HDR.size
        if typ == NLMSG_ERROR:
            (err,) = struct.unpack_from("=i", data, body)
            out.append((seq, ERROR, err, 0, 0))
        elif typ == NLMSG_DONE:
            out.append((seq, DONE, 0, 0, 0))
        elif typ == SOCK_DIAG_BY_FAMILY and length >= _NLMSG_HDR.size + _DIAG_TAIL_OFFSET + _DIAG_TAIL.size:
            _exp, rqueue, _wq, _uid, inode = _DIAG_TAIL.unpack_from(data, body + _DIAG_TAIL_OFFSET)
            out.append((seq, SOCK, 0, rqueue, inode))
        off += (length + 3) & ~3
    return out


@dataclass(frozen=True, slots=True)
class Waiting:
    target: TcpSocket
    rqueue: int  # connections waiting (listener) or unread bytes (established)


_DUMP_SEQ = 1 << 20


class ConnectionProbe:
    """Asks the kernel, for a fixed set of sockets of one namespace, whether a client is
    waiting: a listener with a non-empty accept queue (a handshake the kernel completed
    while the container was frozen) or an established connection with unread bytes.
    A frozen container cannot open or close sockets, so the set stays valid for as long
    as it is frozen. Usable from any thread, one at a time.

    Each socket is one exact lookup, except the listeners of a SO_REUSEPORT group (several
    listeners on one address and port): an exact lookup would land on one of them, chosen
    by hash, so their family is asked with one dump of its listeners instead (which walks
    only the listening hash: ~30 us)."""

    def __init__(self, sock: socket.socket, targets: Iterable[TcpSocket], timeout_s: float = 1.0):
        self.sock = sock
        self.timeout_s = timeout_s
        self.targets = tuple(targets)
        groups = Counter((t.family, t.local_addr, t.local_port, t.interface)
                         for t in self.targets if t.listening)
        self.dump_families = tuple(sorted({k[0] for k, n in groups.items() if n > 1}))
        dumped = {i for i, t in enumerate(self.targets)
                  if t.listening and t.family in self.dump_families}
        self._by_inode = {self.targets[i].inode: i for i in dumped}
        self._exact = [(i, exact_request(t, seq=i + 1)) for i, t in enumerate(self.targets)
                       if i not in dumped]
        self._dumps = [dump_request(f, STATES_LISTEN, seq=_DUMP_SEQ + f) for f in self.dump_families]
        self._lock = threading.Lock()
        self.gone: set[int] = set()  # indexes of targets the kernel no longer knows

    def waiting(self) -> list[Waiting]:
        """Raises NetdiagError when the socket fails."""
        out: list[Waiting] = []
        with self._lock:
            try:
                pending = 0
                seen: set[int] = set()
                for i, req in self._exact:
                    if i not in self.gone:
                        self.sock.send(req)
                        pending += 1
                for req in self._dumps:
                    self.sock.send(req)
                    pending += 1
                while pending > 0:
                    for seq, kind, err, rqueue, inode in parse_reply(self._recv()):
                        if seq >= _DUMP_SEQ:
                            if kind in (DONE, ERROR):
                                pending -= 1
                            elif inode in self._by_inode:
                                seen.add(inode)
                                if rqueue > 0:
                                    out.append(Waiting(self.targets[self._by_inode[inode]], rqueue))
                            continue
                        pending -= 1
                        i = seq - 1
                        if not 0 <= i < len(self.targets):
                            continue
                        if kind == ERROR and err in (-errno.ENOENT, -errno.ESTALE):
                            self.gone.add(i)
                        elif kind == SOCK and rqueue > 0:
                            out.append(Waiting(self.targets[i], rqueue))
                if self._dumps:
                    self.gone.update(i for ino, i in self._by_inode.items() if ino not in seen)
            except socket.timeout:
                raise NetdiagError("sock_diag: no reply within the socket timeout") from None
            except OSError as e:
                raise NetdiagError(f"sock_diag query failed: {e.strerror or e}") from None
        return out

    def _recv(self) -> bytes:
        # The socket is non-blocking: the kernel answers a sock_diag request inside the
        # send() (and fills the next part of a dump inside each recv()), so the answer is
        # already queued. A socket with a timeout would poll() before every send and
        # recv: twice the syscalls, on the watcher's hot path.
        try:
            return self.sock.recv(65536)
        except BlockingIOError:
            ready, _, _ = select.select([self.sock], [], [], self.timeout_s)
            if not ready:
                raise socket.timeout() from None
            return self.sock.recv(65536)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def open_probe(worker: NetnsWorker, pid: int, targets: Iterable[TcpSocket],
               timeout_s: float = 1.0) -> ConnectionProbe:
    """A ConnectionProbe whose netlink socket lives in PID's network namespace."""
    targets = tuple(targets)

    def make() -> socket.socket:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC,
                             NETLINK_SOCK_DIAG)

    def use(sock: socket.socket) -> ConnectionProbe:
        try:
            sock.bind((0, 0))
            sock.setblocking(False)
            return ConnectionProbe(sock, targets, timeout_s)
        except OSError:
            sock.close()
            raise

    return worker.run_in(pid, make, use)
