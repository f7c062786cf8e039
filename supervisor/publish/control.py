"""The control API: HTTP + JSON on a unix socket in the runtime directory.

Reads (GET) are for root and members of ``control.read_group``; mutating calls (POST)
for root only. The caller is known from the socket's peer credentials (SO_PEERCRED,
unix(7)), not from anything it says. Every request is validated before its handler
runs: malformed HTTP, a body that is not a JSON object, an unknown parameter, a value
of the wrong type, an unknown path or method all get a 4xx with a reason, and nothing
is changed. A handler signals a bad request by raising ``ApiError``.
"""

from __future__ import annotations

import grp
import json
import logging
import os
import pwd
import socket
import socketserver
import struct
import threading
from contextlib import suppress
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Callable
from urllib.parse import parse_qsl

from supervisor.model.params import ApiError, Param, check_params  # noqa: F401 - the API's vocabulary

log = logging.getLogger(__name__)

Handler = Callable[[dict], tuple[int, dict]]
MAX_BODY_BYTES = 64 * 1024
# A client that connects and then says nothing must not hold a thread for ever.
REQUEST_TIMEOUT_S = 10.0


# ---------------------------------------------------------------- the server

def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process on the other end of a unix socket."""
    data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", data)


def groups_of(uid: int, gid: int) -> set[int]:
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return {gid}
    return {gid} | {g.gr_gid for g in grp.getgrall() if name in g.gr_mem}


@dataclass(frozen=True)
class Route:
    fn: Handler
    params: dict[str, Param] | None  # None: the handler checks its own body


class _RequestHandler(BaseHTTPRequestHandler):
    server: "ControlServer"
    protocol_version = "HTTP/1.1"
    # A garbled request line still gets a status line and headers, not a bare HTTP/0.9 body.
    default_request_version = "HTTP/1.0"
    timeout = REQUEST_TIMEOUT_S

    def address_string(self) -> str:  # unix sockets have no client address
        return "unix"

    def log_message(self, fmt: str, *args) -> None:
        log.debug("control: " + fmt, *args)

    def _reply(self, status: int, body: dict) -> None:
        data = (json.dumps(body, default=str) + "\n").encode()
        # One request per connection: after an early refusal the unread rest of a request
        # must not be taken for the next one.
        self.close_connection = True
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Connection", "close")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # Malformed request lines and headers (caught by http.server) answer in JSON too.
        self.close_connection = True
        # http.server answers a method it has no do_X for with 501 and an HTTP version
        # it does not speak with 505: both are the client's mistake, answered with a 4xx
        # (a 5xx would say the daemon is at fault).
        if code == 501:
            code, message = 405, f"method {self.command!r} not supported; use GET or POST"
        elif code >= 500:
            code, message = 400, f"{message or explain or 'bad request'}; use HTTP/1.1"
        with suppress(OSError):
            self._reply(code, {"error": message or explain or "bad request"})

    def _body(self) -> dict:
        body: dict = {}
        _, _, query = self.path.partition("?")
        if query:
            try:
                pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
            except ValueError:
                raise ApiError(400, "malformed query string") from None
            for k, v in pairs:
                if k in body:
                    raise ApiError(400, f"parameter {k!r} given twice")
                body[k] = v
        if self.headers.get("Transfer-Encoding"):
            raise ApiError(411, "send the body with a Content-Length, not chunked")
        length = self.headers.get("Content-Length")
        if length:
            try:
                n = int(length)
            except ValueError:
                raise ApiError(400, "Content-Length is not a number") from None
            if n < 0 or n > MAX_BODY_BYTES:
                raise ApiError(413, f"body larger than {MAX_BODY_BYTES} bytes")
            try:
                raw = self.rfile.read(n)
            except TimeoutError:
                # A client that stops sending mid-body: its fault, not the daemon's.
                raise ApiError(408, f"body not received within {REQUEST_TIMEOUT_S:g} s "
                                    "of its Content-Length") from None
            if len(raw) != n:
                raise ApiError(400, "body shorter than its Content-Length")
            if raw.strip():
                try:
                    parsed = json.loads(raw)
                except (ValueError, UnicodeDecodeError):
                    raise ApiError(400, "body is not valid JSON") from None
                if not isinstance(parsed, dict):
                    raise ApiError(400, "body must be a JSON object")
                for k, v in parsed.items():
                    if k in body:
                        raise ApiError(400, f"parameter {k!r} given in both query and body")
                    body[k] = v
        return body

    def _handle(self, method: str) -> None:
        try:
            _, uid, gid = peer_credentials(self.connection)
            path = self.path.partition("?")[0]
            route = self.server.routes.get((method, path))
            if route is None:
                other = sorted(m for m, p in self.server.routes if p == path)
                if other:
                    raise ApiError(405, f"{path} takes {', '.join(other)}, not {method}")
                known = sorted(f"{m} {p}" for m, p in self.server.routes)
                raise ApiError(404, f"no {method} {path}; known: {', '.join(known)}")
            if method == "POST" and uid != 0:
                raise ApiError(403, f"{method} {path} changes the daemon's state and needs "
                                    f"root (you are uid {uid})")
            if method == "GET" and uid != 0 and not self.server.may_read(uid, gid):
                raise ApiError(403, f"reading needs root or membership of group "
                                    f"{self.server.read_group!r} (you are uid {uid})")
            body = self._body()
            if route.params is not None:
                body = check_params(body, route.params)
            result = route.fn(body)
            if (not isinstance(result, tuple) or len(result) != 2
                    or not isinstance(result[0], int) or not isinstance(result[1], dict)):
                raise TypeError(f"handler for {method} {path} returned {type(result).__name__}")
            self._reply(*result)
        except ApiError as e:
            self.server.count(f"http_{e.status}")
            self._reply(e.status, {"error": str(e)})
        except Exception as e:  # noqa: BLE001 - a handler bug answers 500 and the daemon lives
            log.exception("control API handler failed")
            self.server.count("http_500")
            self._reply(500, {"error": f"internal error: {type(e).__name__}"})

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def _not_allowed(self) -> None:
        self._reply(405, {"error": f"method {self.command} not supported; use GET or POST"})

    do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _not_allowed  # noqa: N815


class ControlServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, read_group: str):
        self.path = path
        self.read_group = read_group
        self.routes: dict[tuple[str, str], Route] = {}
        self.counts: dict[str, int] = {}
        self._counts_lock = threading.Lock()
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with suppress(FileNotFoundError):
            os.unlink(path)  # a stale socket from a crashed run
        super().__init__(path, _RequestHandler)
        # Anyone may connect; the handler decides by peer credentials.
        os.chmod(path, 0o666)

    def count(self, key: str) -> None:
        with self._counts_lock:
            self.counts[key] = self.counts.get(key, 0) + 1

    def may_read(self, uid: int, gid: int) -> bool:
        try:
            want = grp.getgrnam(self.read_group).gr_gid
        except KeyError:
            return False
        return want in groups_of(uid, gid)

    def add(self, method: str, path: str, fn: Handler,
            params: dict[str, Param] | None = None) -> None:
        if method not in ("GET", "POST"):
            raise ValueError(f"control routes are GET or POST, not {method}")
        self.routes[(method, path)] = Route(fn, params)

    def start(self) -> threading.Thread:
        t = threading.Thread(target=self.serve_forever, name="control", daemon=True)
        t.start()
        return t

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        with suppress(FileNotFoundError):
            os.unlink(self.path)


def request(path: str, method: str, url: str, body: dict | None = None,
            timeout_s: float | None = None) -> tuple[int, dict]:
    """Client side (supctl): one HTTP request over the unix socket. Raises OSError when
    the socket cannot be reached. Reads answer at once; a mutating call may wait on the
    engine (a stop waits out the container's own stop timeout, 10 s by default), so POSTs
    get a minute."""
    if timeout_s is None:
        timeout_s = 60.0 if method == "POST" else 10.0
    import http.client

    class _Conn(http.client.HTTPConnection):
        def connect(self) -> None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(timeout_s)
            try:
                s.connect(path)
            except OSError:
                s.close()
                raise
            self.sock = s

    conn = _Conn("localhost", timeout=timeout_s)
    try:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data else {}
        try:
            conn.request(method, url, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        except http.client.HTTPException as e:
            raise ConnectionError(f"bad answer from the daemon: {e}") from None
    finally:
        conn.close()
    try:
        parsed = json.loads(raw) if raw else {}
    except ValueError:
        return resp.status, {"error": raw.decode(errors="replace")}
    return resp.status, parsed if isinstance(parsed, dict) else {"value": parsed}
