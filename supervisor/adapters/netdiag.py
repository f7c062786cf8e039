"""The door to a container's network namespace: its TCP sockets and its counters.

- TCP sockets come from netlink sock_diag (linux/inet_diag.h, sock_diag(7)).
  ``list_tcp`` uses pyroute2's ``DiagSocket`` for a full listing (LISTEN and ESTABLISHED,
  with tcp_info for the byte counters and the age of the last data). ``ConnectionProbe``
  asks the kernel about *named* sockets (an exact lookup, no NLM_F_DUMP): that is a hash
  lookup in the kernel, ~7 us per socket on the development machines, where a dump that
  includes established sockets walks the host-wide established hash (262144 buckets
  there: ~1.5 ms per query) and pyroute2's own request path costs ~0.4 ms of CPU. The wake
  watcher asks every 100 ms, so it takes the exact path; the request bytes are still
  encoded by pyroute2 (once per socket), only the four reply fields it needs are read
  with ``struct`` at the offsets of ``struct inet_diag_msg``.
- A netlink socket stays in the network namespace it was created in, and setns(2) is per
  thread. ``NetnsWorker`` is a dedicated thread that enters a container's namespace
  (/proc/PID/ns/net), creates the sockets there and returns to its own namespace; the
  sockets then answer for the container's namespace from wherever they are used
  (pyroute2's synchronous sockets must still be used by the thread that made them, so
  ``list_tcp`` runs whole in the worker).
- The namespace's counters come from /proc/PID/net/dev and /proc/PID/net/snmp, which show
  the namespace of PID: no setns needed.

OSError becomes NetdiagError (NetnsGone when the namespace or the process has vanished)
at this boundary.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import queue
import select
import socket
import struct
import sys
import threading
from collections import Counter
from concurrent.futures import Future, TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from supervisor.adapters.cgroups import read_text
from supervisor.model.errors import CgroupError, CgroupGone, SupervisorError
from supervisor.adapters.host import parse_net_dev

log = logging.getLogger(__name__)

CLONE_NEWNET = 0x40000000
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

TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
              6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN",
              11: "CLOSING"}
TCP_LISTEN = 10
TCP_ESTABLISHED = 1
STATES_LISTEN = 1 << TCP_LISTEN
# Every socket that can still move data: all states but TIME_WAIT and CLOSE. A half-closed
# connection (CLOSE_WAIT: the client sent FIN, the server still streams) moves data too.
STATES_OPEN = sum(1 << s for s in TCP_STATES if s not in (6, 7))


class NetdiagError(SupervisorError):
    """A network namespace could not be entered or asked."""


class NetnsGone(NetdiagError):
    """The process (and so the namespace handle) has gone: its container stopped."""


# ---------------------------------------------------------------------- values


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
class NetnsCounters:
    """Cumulative counters of one network namespace."""

    # Bytes on the namespace's own interfaces (rx + tx), loopback left out.
    interface_bytes: int
    # Bytes over loopback inside the namespace, counted once (lo's rx == its tx).
    loopback_bytes: int
    tcp_passive_opens: int  # connections accepted by the kernel (handshakes completed)
    tcp_active_opens: int  # connections opened from inside

    @property
    def connections_opened(self) -> int:
        return self.tcp_passive_opens + self.tcp_active_opens


# ---------------------------------------------------------------------- /proc counters


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


def read_counters(proc: str, pid: int) -> NetnsCounters:
    """The counters of PID's network namespace. Raises NetnsGone / NetdiagError."""
    try:
        devs = parse_net_dev(read_text(f"{proc}/{pid}/net/dev"))
        tcp = parse_snmp(read_text(f"{proc}/{pid}/net/snmp")).get("Tcp", {})
    except CgroupGone:  # read_text's boundary error; these files are under /proc
        raise NetnsGone(f"network namespace of pid {pid} is gone") from None
    except CgroupError as e:
        raise NetdiagError(f"cannot read counters of pid {pid}: {e.reason}") from None
    lo = devs.pop("lo", None)
    return NetnsCounters(
        interface_bytes=sum(d.rx_bytes + d.tx_bytes for d in devs.values()),
        loopback_bytes=lo.rx_bytes if lo else 0,
        tcp_passive_opens=tcp.get("PassiveOpens", 0),
        tcp_active_opens=tcp.get("ActiveOpens", 0))


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


# ---------------------------------------------------------------------- the worker thread


def _libc_setns() -> Callable[[int, int], None]:
    if hasattr(os, "setns"):  # Python 3.12+
        return lambda fd, nstype: os.setns(fd, nstype)
    libc = ctypes.CDLL(None, use_errno=True)

    def setns(fd: int, nstype: int) -> None:
        if libc.setns(fd, nstype) != 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
    return setns


class NetnsWorker:
    """A thread that runs small jobs inside other network namespaces.

    ``run_in(pid, make, use)`` calls ``make()`` inside PID's network namespace, returns
    the thread to its own namespace, then calls ``use(made)`` there (same thread) and
    hands back the result. A thread that cannot return to its own namespace stops and
    the next call starts a fresh one, so no job ever runs in a namespace it did not ask for.
    """

    def __init__(self, proc: str = "/proc", timeout_s: float = 5.0):
        self.proc = proc
        self.timeout_s = timeout_s
        self.counts: Counter[str] = Counter()
        self._q: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._setns = _libc_setns()

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="netns", daemon=True)
                self._thread.start()

    def run_in(self, pid: int, make: Callable[[], Any], use: Callable[[Any], Any] | None = None,
               timeout_s: float | None = None) -> Any:
        if pid <= 0:
            raise NetnsGone(f"no process (pid {pid}): container not running")
        self._ensure_thread()
        fut: Future = Future()
        self._q.put((pid, make, use, fut))
        try:
            return fut.result(timeout=timeout_s or self.timeout_s)
        except FutureTimeout:
            fut.cancel()
            self.counts["timeouts"] += 1
            raise NetdiagError(f"network namespace of pid {pid}: no answer within "
                               f"{timeout_s or self.timeout_s:.1f}s") from None

    def stop(self) -> None:
        with self._lock:
            t = self._thread
            self._thread = None
        if t is not None and t.is_alive():
            self._q.put(None)
            t.join(timeout=5)

    def _run(self) -> None:
        try:
            own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            log.error("netns worker cannot open its own namespace: %s", e)
            return
        try:
            while True:
                item = self._q.get()
                if item is None:
                    return
                pid, make, use, fut = item
                if not fut.set_running_or_notify_cancel():
                    continue
                if not self._job(own, pid, make, use, fut):
                    return  # stranded in a foreign namespace: let a new thread take over
        finally:
            os.close(own)

    def _job(self, own: int, pid: int, make, use, fut: Future) -> bool:
        try:
            target = os.open(f"{self.proc}/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, ProcessLookupError):
            fut.set_exception(NetnsGone(f"process {pid} is gone"))
            return True
        except OSError as e:
            fut.set_exception(NetdiagError(f"cannot open the network namespace of pid {pid}: "
                                           f"{e.strerror}"))
            return True
        made: Any = None
        try:
            try:
                self._setns(target, CLONE_NEWNET)
            except OSError as e:
                fut.set_exception(NetdiagError(f"cannot enter the network namespace of pid "
                                               f"{pid}: {e.strerror}"))
                return True
            try:
                made = make()
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                made = e
            finally:
                try:
                    self._setns(own, CLONE_NEWNET)
                except OSError as e:
                    log.critical("netns worker cannot return to its own namespace (%s); "
                                 "starting a new worker thread", e)
                    self.counts["stranded"] += 1
                    if isinstance(made, socket.socket):
                        made.close()
                    fut.set_exception(NetdiagError("namespace worker stranded"))
                    return False
        finally:
            os.close(target)
        if isinstance(made, BaseException):
            fut.set_exception(_as_netdiag(made, pid))
            return True
        try:
            fut.set_result(use(made) if use is not None else made)
            self.counts["jobs"] += 1
        except BaseException as e:  # noqa: BLE001
            fut.set_exception(_as_netdiag(e, pid))
        return True


def _as_netdiag(e: BaseException, pid: int) -> BaseException:
    if isinstance(e, SupervisorError):
        return e
    if isinstance(e, OSError):
        return NetdiagError(f"sock_diag in the namespace of pid {pid}: {e.strerror or e}")
    return e


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
        self.queries = 0

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
            self.queries += 1
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
        try:
            self.sock.close()
        except OSError:
            pass


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
