"""The control API's request checking, on a real unix socket: every bad request gets a
4xx with a reason and its handler never runs; the server lives on after each."""

import json
import socket

import pytest

from supervisor.publish.control import ApiError, ControlServer, Param, check_params, request


@pytest.fixture(scope="module")
def control_server(tmp_path_factory):
    calls = []

    def record(body):
        calls.append(body)
        return 200, {"got": body}

    def explode(body):
        raise RuntimeError("bug")

    def refuse(body):
        raise ApiError(409, "not now")

    srv = ControlServer(str(tmp_path_factory.mktemp("ctl") / "ctl.sock"), read_group="nogroup")
    srv.add("GET", "/items", record, {"limit": Param(int, default=10, min=1, max=100),
                                      "name": Param(str), "deep": Param(bool, default=False)})
    srv.add("POST", "/act", record, {"name": Param(str, required=True), "ratio": Param(float, min=0, max=1)})
    srv.add("GET", "/raw", record)  # checks its own body
    srv.add("GET", "/explode", explode, {})
    srv.add("POST", "/refuse", refuse, {})
    srv.start()
    srv.calls = calls
    yield srv
    srv.close()


@pytest.fixture
def server(control_server):
    control_server.calls.clear()
    control_server.counts.clear()
    return control_server


def raw(srv, data: bytes) -> tuple[int, dict]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(srv.path)
        s.sendall(data)
        chunks = []
        while True:
            b = s.recv(65536)
            if not b:
                break
            chunks.append(b)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_valid_requests_reach_their_handler_with_converted_values(server):
    assert request(server.path, "GET", "/items?limit=5&name=web&deep=true") == (
        200, {"got": {"limit": 5, "name": "web", "deep": True}})
    assert request(server.path, "GET", "/items")[1] == {"got": {"limit": 10, "name": None, "deep": False}}
    assert request(server.path, "POST", "/act", {"name": "web", "ratio": 0.5})[0] == 200
    assert request(server.path, "GET", "/raw?anything=1")[1] == {"got": {"anything": "1"}}
    assert len(server.calls) == 4


@pytest.mark.parametrize("method, url, body, status, words", [
    ("GET", "/nope", None, 404, "known: GET /explode, GET /items"),
    ("POST", "/items", None, 405, "/items takes GET, not POST"),
    ("GET", "/items?limit=lots", None, 400, "limit must be an integer"),
    ("GET", "/items?limit=0", None, 400, "limit must be in [1, 100]"),
    ("GET", "/items?limit=1&limit=2", None, 400, "given twice"),
    ("GET", "/items?colour=red", None, 400, "unknown parameter 'colour'; accepted: deep, limit, name"),
    ("GET", "/items?deep=perhaps", None, 400, "deep must be true or false"),
    ("POST", "/act", {}, 400, "missing required parameter 'name'"),
    ("POST", "/act", {"name": 7}, 400, "name must be a string"),
    ("POST", "/act", {"name": ""}, 400, "1-256 printable characters"),
    ("POST", "/act", {"name": "a\nb"}, 400, "1-256 printable characters"),
    ("POST", "/act", {"name": "web", "ratio": "x"}, 400, "ratio must be a number"),
    ("POST", "/act", {"name": "web", "ratio": True}, 400, "ratio must be a number"),
    ("POST", "/act", {"name": "web", "ratio": 2}, 400, "ratio must be in [0, 1]"),
    ("POST", "/refuse", None, 409, "not now"),
    # found by the fuzz of the real daemon (tests/integration/test_hostile_input.py)
    ("GET", "/items?limit=%C2%B2", None, 400, "limit must be an integer"),  # isdigit(), not int()
    ("GET", "/items?limit=" + "1" * 5000, None, 400, "limit is out of range"),  # > 4300 digits
    ("POST", "/act", {"name": "\ud800"}, 400, "1-256 printable characters"),  # lone surrogate
])
def test_bad_requests_get_a_reason_and_change_nothing(server, method, url, body, status, words):
    code, reply = request(server.path, method, url, body)
    assert code == status and words in reply["error"], reply
    assert server.calls == []


@pytest.mark.parametrize("data, status, words", [
    (b"POST /act HTTP/1.1\r\nContent-Length: 9\r\n\r\n{not json", 400, "not valid JSON"),
    (b"POST /act HTTP/1.1\r\nContent-Length: 7\r\n\r\n[1,2,3]", 400, "must be a JSON object"),
    (b"POST /act HTTP/1.1\r\nContent-Length: 2\r\n\r\n\xff\xfe", 400, "not valid JSON"),
    (b"POST /act HTTP/1.1\r\nContent-Length: 999999\r\n\r\n{}", 413, "larger than"),
    (b"POST /act HTTP/1.1\r\nContent-Length: abc\r\n\r\n{}", 400, "Content-Length is not a number"),
    (b"POST /act HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 411, "Content-Length"),
    (b"POST /act?name=a HTTP/1.1\r\nContent-Length: 12\r\n\r\n{\"name\":\"b\"}", 400, "both query and body"),
    (b"GARBAGE\r\n\r\n", 400, "Bad request"),
    (b"DELETE /items HTTP/1.1\r\n\r\n", 405, "not supported"),
    (b"GET /items?%zz=1&& HTTP/1.1\r\n\r\n", 400, "malformed query string"),
    (b"BREW /items HTTP/1.1\r\n\r\n", 405, "not supported; use GET or POST"),  # not 501
    (b"GET /items HTTP/2.0\r\n\r\n", 400, "use HTTP/1.1"),  # not 505
])
def test_malformed_http_and_bodies_are_refused(server, data, status, words):
    code, reply = raw(server, data)
    assert code == status and words.lower() in reply["error"].lower(), reply
    assert server.calls == []


def test_a_handler_bug_answers_500_and_the_server_lives_on(server):
    code, reply = request(server.path, "GET", "/explode")
    assert code == 500 and reply == {"error": "internal error: RuntimeError"}
    assert request(server.path, "GET", "/items")[0] == 200
    assert server.counts["http_500"] == 1


def test_the_socket_is_open_to_all_and_the_handler_decides(server):
    import os
    import stat
    assert stat.S_IMODE(os.stat(server.path).st_mode) == 0o666


def test_check_params_directly():
    spec = {"n": Param(int, required=True, min=0)}
    assert check_params({"n": "3"}, spec) == {"n": 3}
    for body, words in (({}, "missing"), ({"n": -1}, "in [0, ]"), ({"n": 1.5}, "integer"),
                        ({"n": False}, "integer"), ({"n": 1, "m": 2}, "unknown parameter 'm'")):
        with pytest.raises(ApiError, match=words.replace("[", r"\[")) as e:
            check_params(body, spec)
        assert e.value.status == 400
