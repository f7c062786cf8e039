"""Bad input against the real daemon (issue 9).

The control socket of a running daemon (a child process managing real containers) is
fuzzed with hypothesis over every route it serves, its components' included: random
methods, paths, query strings, JSON bodies of the wrong types, huge values, invalid
UTF-8, truncated requests. Each answer is a 2xx, or a 4xx with an error message: never a
5xx, never a hang; and the daemon keeps running and answering /health.

Containers with hostile labels, names and environment (long, unicode, quotes,
backslashes, newlines, shell metacharacters) never reach a shell and never break the
metrics (promtool lints a live scrape), `supctl status` or the journal."""

import json
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from _testkit import ROOT, RUN_ID, class_table, wait_for

from ._procs import DaemonProcess

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
FUZZ_EXAMPLES = 250
REPLY_TIMEOUT_S = 15.0  # the server gives a silent client 10 s (control.REQUEST_TIMEOUT_S)
CLASSES = class_table("infrastructure", "standard",
                      standard={"cpuset": "1", "idle_after": "1h"})


# ---------------------------------------------------------------- raw HTTP on the socket

def exchange(sock_path: str, data: bytes, half_close: bool = True) -> bytes:
    """Send raw bytes, close our side (a truncated request ends here), read all."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(REPLY_TIMEOUT_S)
        s.connect(sock_path)
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before it read everything (e.g. a line too long): read the answer
        if half_close:
            try:
                s.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        chunks = []
        while True:
            try:
                b = s.recv(65536)
            except ConnectionResetError:
                break
            if not b:
                break
            chunks.append(b)
    return b"".join(chunks)


def parse_reply(raw: bytes) -> tuple[int, dict | None]:
    head, _, body = raw.partition(b"\r\n\r\n")
    m = re.match(rb"HTTP/1\.[01] (\d{3}) ", head)
    assert m, f"no HTTP status line in {raw[:200]!r}"
    try:
        parsed = json.loads(body) if body.strip() else None
    except ValueError:
        raise AssertionError(f"reply body is not JSON: {body[:200]!r}") from None
    return int(m.group(1)), parsed


def check_reply(request: bytes, raw: bytes) -> int:
    first_line = request.split(b"\n", 1)[0]
    if not raw:
        # The only request answered by closing: one with a blank first line (no method,
        # no path: http.server drops it, as a keep-alive client's stray CRLF).
        assert not first_line.strip(), f"no answer to {request[:300]!r}"
        return 0
    code, body = parse_reply(raw)
    assert code < 500, f"{code} {body} for {request[:300]!r}"
    assert 200 <= code < 300 or 400 <= code < 500, (code, body)
    if first_line.split(b" ", 1)[0] != b"HEAD":
        assert isinstance(body, dict), (code, raw[:300])
        if code >= 400:
            assert isinstance(body.get("error"), str) and body["error"], (code, body)
    return code


# ---------------------------------------------------------------- request strategies

PARAMS = ["limit", "after", "kind", "name", "mode", "force", "container", "trigger", "x", ""]
NASTY_TEXT = ["\ud800", "\udfff", "\x00", "\n", "\r\n", "'", '"', "\\", "$(touch /tmp/x)",
              "; rm -rf /", "²", "٣", "1" * 5000, "-1", "9" * 30, "1e400", "NaN", "true",
              "stop", "pause", "ü" * 300, " " * 3, "%", "%zz", "&", "=", "a" * 70_000]
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70),
    st.sampled_from([10**4000, -(10**300), 2**63, -(2**63) - 1]),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
    st.sampled_from(NASTY_TEXT))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8)


def query_text(draw) -> str:
    from urllib.parse import quote
    pairs = draw(st.lists(st.tuples(st.sampled_from(PARAMS) | st.text(max_size=6),
                                    st.sampled_from(NASTY_TEXT) | st.text(max_size=12)
                                    | st.integers(-(2**70), 2**70).map(str)),
                          max_size=4))
    if draw(st.booleans()):
        def q(t: str) -> str:
            return quote(t.encode("utf-8", "surrogatepass"), safe="")
        return "&".join(f"{q(k)}={q(v)}" for k, v in pairs)
    # unescaped: spaces, '#', '?', '%' and non-ASCII as they come
    return "&".join(f"{k}={v}" for k, v in pairs)


@st.composite
def plausible_requests(draw, routes: dict[tuple[str, str], list[str] | None],
                       names: list[str]) -> bytes:
    """A route's own method and path, with its own parameters (now and then another)
    given values of every type and size, in the query or in a JSON body."""
    method, path = draw(st.sampled_from(sorted(routes)))
    own = routes[(method, path)]
    own = PARAMS if own is None else own or [""]
    sensible = st.one_of(st.integers(0, 20_000).map(str), st.sampled_from(
        ["true", "false", "pause", "stop", "place", "alert", "hibernate", *names]))
    values = st.one_of(sensible, st.sampled_from(NASTY_TEXT), st.text(max_size=8),
                       st.integers(-(2**70), 2**70).map(str), json_values)
    params = draw(st.dictionaries(st.sampled_from(own), values, max_size=len(own)))
    params.pop("", None)
    if draw(st.integers(0, 9)) == 0:
        params[draw(st.sampled_from(PARAMS))] = draw(json_values)
    if "name" in own and draw(st.booleans()):
        params["name"] = draw(st.sampled_from(names))
    body = b""
    if method == "GET" or draw(st.booleans()):
        from urllib.parse import quote
        if params:
            path += "?" + "&".join(
                f"{quote(k)}={quote(json.dumps(v) if not isinstance(v, str) else v.encode('utf-8', 'surrogatepass'), safe='')}"
                for k, v in params.items())
    else:
        body = json.dumps(params).encode()
    head = f"{method} {path} HTTP/1.1\r\n"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


@st.composite
def raw_requests(draw, paths: list[str], names: list[str]) -> bytes:
    method = draw(st.sampled_from(["GET", "POST", "GET", "POST", "HEAD", "PUT", "DELETE",
                                   "OPTIONS", "PATCH", "TRACE", "get", "PoSt", "G\xe9T", "X" * 300])
                  | st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=0x2FF),
                            min_size=1, max_size=8))
    path = draw(st.sampled_from(paths) | st.sampled_from([p + "/" for p in paths])
                | st.sampled_from(["", "/", "//status", "/status/../health", "*", "/%00",
                                   "/\u00e9t\u00e9", "http://x/status", "/" + "a" * 70_000])
                | st.text(max_size=20).map(lambda t: "/" + t))
    if draw(st.booleans()):
        path += "?" + query_text(draw)
    version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "", "HTTP/2.0",
                                    "HTTP/9.9", "HTTP/x", "FTP/1.0"]))
    line = " ".join(x for x in (method, path, version) if x)
    headers: list[str] = []
    body = b""
    shape = draw(st.sampled_from(["none", "object", "object", "params", "value", "bytes",
                                  "bad-utf8"]))
    if shape == "object":
        body = json.dumps(draw(st.dictionaries(st.sampled_from(PARAMS), json_values,
                                               max_size=4))).encode()
    elif shape == "params":
        obj = draw(st.dictionaries(st.sampled_from(PARAMS), json_values, max_size=3))
        obj["name"] = draw(st.sampled_from(names) | json_values)
        body = json.dumps(obj).encode()
    elif shape == "value":
        body = json.dumps(draw(json_values)).encode()
    elif shape == "bytes":
        body = draw(st.binary(max_size=200))
    elif shape == "bad-utf8":
        body = b'{"name": "\xff\xfe' + draw(st.binary(max_size=10)) + b'", "limit": 1}'
    length = draw(st.sampled_from(["exact", "exact", "exact", "none", "more", "less",
                                   "negative", "text", "huge"]))
    cl = {"exact": str(len(body)), "more": str(len(body) + 7), "less": str(max(0, len(body) - 3)),
          "negative": "-5", "text": "twelve", "huge": str(10**20)}.get(length)
    if cl is not None and (body or draw(st.booleans())):
        headers.append(f"Content-Length: {cl}")
    if draw(st.integers(0, 9)) == 0:
        headers.append("Transfer-Encoding: chunked")
    if draw(st.booleans()):
        headers.append("Content-Type: " + draw(st.sampled_from(
            ["application/json", "text/plain", "application/json; charset=latin-1", ""])))
    for _ in range(draw(st.integers(0, 2))):
        headers.append(draw(st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126,
                                                           exclude_characters=":"),
                                    min_size=1, max_size=10))
                       + ": " + draw(st.text(max_size=30).map(lambda t: t.replace("\n", " ")
                                                               .replace("\r", " "))))
    if draw(st.integers(0, 19)) == 0:
        headers += [f"X-Many-{i}: {i}" for i in range(120)]  # more than http.server takes
    head = line + "\r\n" + "".join(h + "\r\n" for h in headers)
    if draw(st.integers(0, 14)) == 0:
        return head.encode("utf-8", "surrogatepass")  # truncated: the headers never end
    return head.encode("utf-8", "surrogatepass") + b"\r\n" + body


def _json_get(path: str, obj: dict) -> bytes:
    body = json.dumps(obj).encode()
    return f"GET {path} HTTP/1.1\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


# ---------------------------------------------------------------- the daemon under test

def known_routes(d: DaemonProcess) -> dict[tuple[str, str], list[str]]:
    """Every (method, path) the daemon serves, with the parameters it says it accepts
    (None for a route that checks its own body), from its own error messages."""
    code, body = d.call("GET", "/no-such-route")
    assert code == 404
    known = body["error"].split("known: ", 1)[1]
    out = {}
    for r in known.split(", "):
        method, path = r.split(" ", 1)
        # Refused before any handler runs, naming what the route accepts (a handler that
        # checks its own body may refuse it otherwise, or pass over it).
        code, body = d.call(method, path + "?no_such_parameter=1")
        assert code in (200, 400), (method, path, code, body)
        _, found, accepted = body.get("error", "").partition("; accepted: ")
        out[(method, path)] = None if not found else [] if accepted == "none" else accepted.split(", ")
    return out


def test_fuzzed_control_requests_get_a_4xx_or_a_2xx_and_the_daemon_lives_on(
        make_config, containers, tmp_path, record_property):
    cfg, path = make_config({"classes": CLASSES, "intervals": {"tick": "0.5s", "reconcile": "2s"}})
    target = containers.run(name=f"fuzz-target-{RUN_ID}")
    d = DaemonProcess(cfg, path, tmp_path / "daemon.log").start()
    try:
        routes = known_routes(d)
        paths = sorted({p for _, p in routes})
        assert routes[("GET", "/journal")] == ["after", "kind", "limit"]
        # Every route of the daemon and its components is in the fuzz.
        assert {"/status", "/health", "/journal", "/plan", "/audit", "/reload", "/apply",
                "/hibernate", "/wake", "/recommend"} <= set(paths), paths
        names = [target.name, target.id[:12], "", "nope"]

        # A client that sends half a body and then nothing: it gets its answer when the
        # server gives up on it, while everybody else is served meanwhile.
        stalled = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stalled.settimeout(REPLY_TIMEOUT_S + 30)
        stalled.connect(d.sock)
        stalled.sendall(b"POST /reload HTTP/1.1\r\nContent-Length: 10\r\n\r\n{")
        t_stalled = time.monotonic()

        tried = []
        codes: dict[int, int] = {}

        @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(plausible_requests(routes, names) | raw_requests(paths, names))
        @example(b"GET /journal?limit=%C2%B2 HTTP/1.1\r\n\r\n")  # a digit int() refuses
        @example(b"GET /journal?after=" + b"1" * 5000 + b" HTTP/1.1\r\n\r\n")  # too many digits
        @example(b"GET /journal?after=99999999999999999999 HTTP/1.1\r\n\r\n")  # past SQLite's
        @example(_json_get("/journal", {"after": 10**30}))
        @example(_json_get("/journal", {"kind": "\ud800"}))  # a lone surrogate
        @example(b"BREW /status HTTP/1.1\r\n\r\n")
        @example(b"GET /status HTTP/2.0\r\n\r\n")
        def one_request(data):
            tried.append(len(data))
            code = check_reply(data, exchange(d.sock, data))
            codes[code] = codes.get(code, 0) + 1
            if len(tried) % 25 == 0:
                assert d.alive(), d.log_text()[-3000:]
                assert d.call("GET", "/health")[0] == 200

        one_request()

        # The stalled client's answer: a 4xx naming the problem, not a 500.
        chunks = []
        while True:
            b = stalled.recv(65536)
            if not b:
                break
            chunks.append(b)
        stalled.close()
        code, body = parse_reply(b"".join(chunks))
        assert 400 <= code < 500 and "body" in body["error"], (code, body)
        assert time.monotonic() - t_stalled < REPLY_TIMEOUT_S + 30

        assert d.alive(), d.log_text()[-3000:]
        health = d.get("/health")
        assert health["loop_alive"] is True and health["engine_up"] is True
        assert d.status()["daemon"]["pid"] == d.pid
        assert "Traceback" not in d.log_text()
        assert len(tried) >= FUZZ_EXAMPLES * 0.9
        assert sum(v for k, v in codes.items() if 400 <= k < 500) > 0
        assert sum(v for k, v in codes.items() if 200 <= k < 300) > 0
        record_property("inputs_tried", len(tried))
        record_property("reply_codes", json.dumps(dict(sorted(codes.items()))))
    finally:
        code = d.stop()
    assert code == 0, d.log_text()[-3000:]


# ---------------------------------------------------------------- hostile containers

def marker_paths() -> list[Path]:
    return [Path(f"/tmp/pwned-{RUN_ID}"), Path(f"/tmp/pwned-dir-{RUN_ID}")]


def hostile_labels() -> dict[str, str]:
    m = f"/tmp/pwned-{RUN_ID}"
    return {
        "supervisor.class": f"$(touch {m})",  # names no class: reported as unknown-label
        "supervisor.hibernate": f"`touch {m}`",
        "supervisor.ollama": "true",  # the Ollama governor reads its environment too
        "quotes": "it's \"quoted\" and \\back\\slashed",
        "newlines": "line one\nline two\r\nline three\x00",
        "shell": f"; rm -rf /tmp/pwned-dir-{RUN_ID}; touch {m} && echo $HOME | sh",
        "unicode": "\u202eevil\u200b snowman \u2603 \U0001f525 \u00fc\u00f1\u00ef",
        "long": "L" * 20_000,
        f"$(touch {m})": "key with a command",
        "ollama.env": "OLLAMA_NUM_PARALLEL=$(touch {m})",
    }


def hostile_env() -> list[str]:
    m = f"/tmp/pwned-{RUN_ID}"
    return [f"OLLAMA_NUM_PARALLEL=$(touch {m})", f"OLLAMA_MAX_LOADED_MODELS=`touch {m}`",
            "OLLAMA_HOST=127.0.0.1:11434; rm -rf /", "OLLAMA_KEEP_ALIVE=\"'\\",
            "WEIRD=\u2603\n$(id)"]


def test_the_code_never_hands_anything_to_a_shell():
    pattern = re.compile(r"shell\s*=\s*True|os\.system\(|os\.popen\(|\bpopen2\b|commands\."
                         r"getoutput|os\.exec[lv]p?e?\(|pty\.spawn\(")
    hits = [f"{p.relative_to(ROOT)}:{n}: {line.strip()}"
            for p in sorted((ROOT / "supervisor").rglob("*.py"))
            for n, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert hits == []


def test_hostile_labels_names_and_env_reach_no_shell_and_break_no_output(
        make_config, containers, tmp_path, record_property):
    for m in marker_paths():
        assert not m.exists()
    cfg, path = make_config({"classes": CLASSES})
    long_name = "x" + "-._" * 200 + RUN_ID  # Docker takes names this long
    odd = containers.run(name=long_name, labels=hostile_labels(), environment=hostile_env())
    dotted = containers.run(name=f"a.-_.{RUN_ID}-_-..", labels={"supervisor.class": "stand\"ard\n"})
    d = DaemonProcess(cfg, path, tmp_path / "daemon.log").start()
    try:
        def rows():
            return {r["id"]: r for r in d.status().get("containers", [])}
        wait_for(lambda: {odd.id[:12], dotted.id[:12]} <= set(rows()), 20, 0.1,
                 "both containers in status")
        for _ in range(3):  # a few passes, a reconcile among them
            time.sleep(1.0)
            assert d.alive()
        r = rows()
        assert r[odd.id[:12]]["name"] == long_name
        assert r[odd.id[:12]]["class"] == "standard"
        assert r[odd.id[:12]]["class_reason"] == "unknown-label"
        assert r[dotted.id[:12]]["class_reason"] == "unknown-label"

        body = d.metrics()
        lint = subprocess.run([PROMTOOL, "check", "metrics"], input=body.encode(),
                              capture_output=True, timeout=60)
        assert lint.returncode == 0 and not lint.stdout.strip() and not lint.stderr.strip(), \
            lint.stdout.decode() + lint.stderr.decode()
        managed = {s.labels["id"]: s for fam in text_string_to_metric_families(body)
                   for s in fam.samples if s.name == "resource_supervisor_container_managed"}
        assert managed[odd.id[:12]].labels == {"name": long_name, "id": odd.id[:12],
                                               "class": "standard", "pool": "standard"}
        assert managed[odd.id[:12]].value == 1.0

        text = d.supctl("status", "--width", "100")
        assert text.returncode == 0 and text.stdout.strip() and not text.stderr, text.stderr
        assert all(len(ln) <= 100 for ln in text.stdout.splitlines())
        for args in (("status", "--json"), ("journal",), ("audit",), ("plan",), ("recommend",)):
            out = d.supctl(*args)
            assert out.returncode in (0, 5) and "Traceback" not in out.stderr, (args, out.stderr)
        assert "Traceback" not in d.log_text()
        for m in marker_paths():
            assert not m.exists(), f"{m} appeared: something ran a shell"
        record_property("hostile_containers", 2)
    finally:
        code = d.stop()
    assert code == 0, d.log_text()[-3000:]
    for m in marker_paths():
        assert not m.exists()
