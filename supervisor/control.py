"""The control API: HTTP + JSON on a unix socket in the runtime directory.

Reads (GET) are for root and members of ``control.read_group``; mutating calls (POST)
for root only. The caller is known from the socket's peer credentials (SO_PEERCRED),
not from anything it says. Every request is validated; a bad one gets a 4xx with a
reason and changes nothing.
"""

from __future__ import annotations

import grp
import json
import logging
import os
import socket
import socketserver
import struct
import threading
from http.server import BaseHTTPRequestHandler
from typing import Callable

log = logging.getLogger(__name__)

Handler = Callable[[dict], tuple[int, dict]]
MAX_BODY_BYTES = 64 * 1024


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process on the other end of a unix socket."""
    data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", data)


def _groups_of(uid: int, gid: int) -> set[int]:
    import pwd
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return {gid}
    return {gid} | {g.gr_gid for g in grp.getgrall() if name in g.gr_mem}


class _RequestHandler(BaseHTTPRequestHandler):
    server: "ControlServer"
    protocol_version = "HTTP/1.1"

    def address_string(self) -> str:  # unix sockets have no client address
        return "unix"

    def log_message(self, fmt: str, *args) -> None:
        log.debug("control: " + fmt, *args)

    def _reply(self, status: int, body: dict) -> None:
        data = (json.dumps(body, default=str) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method: str) -> None:
        try:
            _, uid, gid = peer_credentials(self.connection)
            path, _, query = self.path.partition("?")
            route = self.server.routes.get((method, path))
            if route is None:
                known = sorted(p for m, p in self.server.routes if m == method)
                raise ApiError(404, f"no {method} {path}; known: {', '.join(known)}")
            if method == "POST" and uid != 0:
                raise ApiError(403, "mutating calls need root")
            if method == "GET" and uid != 0 and not self.server.may_read(uid, gid):
                raise ApiError(403, f"reading needs root or membership of group "
                                    f"{self.server.read_group!r}")
            body: dict = {}
            if query:
                from urllib.parse import parse_qsl
                body.update(dict(parse_qsl(query)))
            length = self.headers.get("Content-Length")
            if length:
                try:
                    n = int(length)
                except ValueError:
                    raise ApiError(400, "Content-Length is not a number") from None
                if n < 0 or n > MAX_BODY_BYTES:
                    raise ApiError(413, f"body larger than {MAX_BODY_BYTES} bytes")
                raw = self.rfile.read(n)
                if raw.strip():
                    try:
                        parsed = json.loads(raw)
                    except (ValueError, UnicodeDecodeError):
                        raise ApiError(400, "body is not valid JSON") from None
                    if not isinstance(parsed, dict):
                        raise ApiError(400, "body must be a JSON object")
                    body.update(parsed)
            status, reply = route(body)
            self._reply(status, reply)
        except ApiError as e:
            self._reply(e.status, {"error": str(e)})
        except Exception as e:  # noqa: BLE001 - a handler bug answers 500 and the daemon lives
            log.exception("control API handler failed")
            self._reply(500, {"error": f"internal error: {type(e).__name__}"})

    def do_GET(self) -> None:  # noqa: N802
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")


class ControlServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, read_group: str):
        self.path = path
        self.read_group = read_group
        self.routes: dict[tuple[str, str], Handler] = {}
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        try:
            os.unlink(path)  # a stale socket from a crashed run
        except FileNotFoundError:
            pass
        super().__init__(path, _RequestHandler)
        # Anyone may connect; the handler decides by peer credentials.
        os.chmod(path, 0o666)

    def may_read(self, uid: int, gid: int) -> bool:
        try:
            want = grp.getgrnam(self.read_group).gr_gid
        except KeyError:
            return False
        return want in _groups_of(uid, gid)

    def add(self, method: str, path: str, fn: Handler) -> None:
        self.routes[(method, path)] = fn

    def start(self) -> threading.Thread:
        t = threading.Thread(target=self.serve_forever, name="control", daemon=True)
        t.start()
        return t

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def request(path: str, method: str, url: str, body: dict | None = None,
            timeout_s: float = 10.0) -> tuple[int, dict]:
    """Client side (supctl): one HTTP request over the unix socket."""
    import http.client

    class _Conn(http.client.HTTPConnection):
        def connect(self) -> None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(timeout_s)
            s.connect(path)
            self.sock = s

    conn = _Conn("localhost", timeout=timeout_s)
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"} if data else {}
    conn.request(method, url, body=data, headers=headers)
    resp = conn.getresponse()
    raw = resp.read()
    conn.close()
    try:
        return resp.status, json.loads(raw) if raw else {}
    except ValueError:
        return resp.status, {"error": raw.decode(errors="replace")}
