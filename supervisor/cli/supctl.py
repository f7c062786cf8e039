"""supctl: the operator's CLI. Talks to the daemon's control socket (HTTP + JSON);
`supctl snapshot` and `supctl audit --compose` work without a daemon.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Callable
from urllib.parse import quote

from supervisor.publish.control import request

# The same as config.DEFAULT_CONFIG_PATH, written out so that talking to the daemon does
# not import the config machinery (pydantic): `supctl status` starts in a fraction of the time.
DEFAULT_CONFIG_PATH = "/etc/resource-supervisor/supervisor.toml"

EXIT_OK, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_EXHAUSTED, EXIT_ENGINE_DOWN = 0, 1, 2, 3, 4
EXIT_FINDINGS, EXIT_STALLED = 5, 6
EXIT_CODES_HELP = """exit codes (`supctl status` serves as a health check):
  0  healthy
  1  usage error, or the daemon refused the request (the reason is printed)
  2  the daemon is unreachable (no socket, or nothing answers on it)
  3  a memory pool is over (its use reached the budget, or its limits add up past
     it), a managed container runs without any memory limit because its pool had no
     room for one, the host's available memory is at or inside the emergency reserve,
     or a managed container is in an OOM restart loop (OOM-killed twice or more in 10
     min) or runs without the limit the daemon removed to end one
  4  the Docker engine is unreachable (the daemon runs and says so)
  5  `supctl audit` found violations
  6  the daemon answers but its loop has stalled (no pass for a while)
"""
DEFAULT_SOCKET = "/run/resource-supervisor/control.sock"


def _socket(args) -> str:
    return args.socket or os.environ.get("SUPCTL_SOCKET") or DEFAULT_SOCKET


def call(args, method: str, url: str, body: dict | None = None) -> tuple[int, dict]:
    try:
        return request(_socket(args), method, url, body)
    except OSError as e:  # no socket, refused, no permission, timed out, a bad answer
        print(f"supctl: daemon unreachable at {_socket(args)}: {e}", file=sys.stderr)
        raise SystemExit(EXIT_UNREACHABLE) from None


def health_code(status: dict) -> int:
    """The exit code of `supctl status`, from the states the daemon computed (the rule
    book's, as the ladder and /metrics see them): supctl decides nothing itself."""
    if status.get("daemon", {}).get("loop_alive") is False and status.get("ready"):
        return EXIT_STALLED
    pools = status.get("pools", {}).values()
    oom = status.get("oom") or {}
    if (any(p.get("state") == "over" or p.get("unlimited_no_room") for p in pools)
            or status.get("reserve", {}).get("breached")
            or oom.get("loops") or oom.get("limit_removed")):
        return EXIT_EXHAUSTED
    if not status.get("engine", {}).get("up"):
        return EXIT_ENGINE_DOWN
    return EXIT_OK


def _color(args) -> bool:
    # Colour only on a terminal, and never when NO_COLOR is set (no-color.org).
    return sys.stdout.isatty() and not args.no_color and not os.environ.get("NO_COLOR")


def show(args, body: dict, text: Callable[[dict], str]) -> None:
    """The reply as JSON with --json, else as the renderer's text: one body, two views."""
    print(json.dumps(body, indent=2, sort_keys=True) if args.json else text(body))


def refused(code: int, body: dict) -> int:
    print(f"supctl: {body.get('error') or f'HTTP {code}'}", file=sys.stderr)
    return EXIT_USAGE


def cmd_status(args) -> int:
    code, st = call(args, "GET", "/status")
    if code != 200:
        return refused(code, st)
    from supervisor.cli.render import render_status
    show(args, st, lambda b: render_status(b, color=_color(args), width=args.width))
    return health_code(st)


def cmd_snapshot(args) -> int:
    """One full snapshot sampled right here, without a daemon."""
    from supervisor.adapters.cgroups import CgroupFS
    from supervisor.adapters.engine import Engine
    from supervisor.model.errors import EngineUnavailable
    from supervisor.adapters.host import HostSampler
    from supervisor.observe.inventory import Inventory
    from supervisor.observe.sampler import Sampler

    cfg = _load_config(args.config)
    if cfg is None:
        return EXIT_USAGE
    s = cfg.settings
    engine = Engine(s.docker.host, s.docker.timeout_s)
    inv = Inventory(engine)
    up, err = True, ""
    try:
        inv.refresh()
    except EngineUnavailable as e:
        up, err = False, str(e)
    sampler = Sampler(CgroupFS(s.docker.cgroup_root, s.docker.proc_root),
                      HostSampler(s.docker.proc_root), proc=s.docker.proc_root)
    snap = sampler.sample(inv.view(), cfg, up, err)
    print(json.dumps(snap.to_dict(), indent=2, sort_keys=True, default=str))
    return EXIT_OK if up else EXIT_ENGINE_DOWN


def cmd_journal(args) -> int:
    from supervisor.cli.render import render_journal_entry
    kind = f"&kind={quote(args.kind)}" if args.kind else ""
    code, body = call(args, "GET", f"/journal?limit={args.limit}{kind}")
    if code != 200:
        return refused(code, body)

    # -f prints each action once, when its result is in: a row is first written "pending"
    # (its intent) and completed in place, so the cursor stays below the oldest pending row.
    printed: set[int] = set()
    cursor = 0

    def take(entries: list[dict]) -> None:
        nonlocal cursor, printed
        pending = []
        for e in entries:
            if args.follow and e["outcome"] == "pending":
                pending.append(e["seq"])
            elif e["seq"] not in printed:
                print(json.dumps(e, sort_keys=True) if args.json else render_journal_entry(e),
                      flush=True)
                printed.add(e["seq"])
        top = max((e["seq"] for e in entries), default=cursor)
        cursor = min(pending) - 1 if pending else top
        printed = {q for q in printed if q > cursor}
    take(body.get("entries", []))
    if not args.follow:
        return EXIT_OK
    try:
        while True:  # like tail -f: poll for rows after the cursor
            time.sleep(args.interval)
            code, body = call(args, "GET", f"/journal?limit=1000&after={cursor}{kind}")
            if code != 200:
                return refused(code, body)
            entries = body.get("entries", [])
            if len(entries) == 1000 and entries[0]["seq"] > cursor + 1:
                print(f"... entries {cursor + 1}-{entries[0]['seq'] - 1} skipped (too many)",
                      flush=True)
            take(entries)
    except KeyboardInterrupt:
        return EXIT_OK


def cmd_reload(args) -> int:
    code, body = call(args, "POST", "/reload")
    if code != 200:
        return refused(code, body)
    print(body.get("message", "reloaded"))
    return EXIT_OK


def cmd_plan(args) -> int:
    code, body = call(args, "GET", "/plan")
    if code != 200:
        return refused(code, body)
    from supervisor.cli.render import render_plan
    show(args, body, render_plan)
    return EXIT_OK


def cmd_apply(args) -> int:
    code, body = call(args, "POST", "/apply")
    if code != 200:
        return refused(code, body)
    from supervisor.cli.render import render_journal_entry
    results = body.get("results", [])
    show(args, body, lambda b: "\n".join([*map(render_journal_entry, results),
                                          f"{len(results)} action(s) run" if results
                                          else "nothing to do"]))
    return EXIT_OK if all(r.get("ok") or r.get("outcome") == "skipped" for r in results) else EXIT_USAGE


def cmd_recommend(args) -> int:
    code, body = call(args, "GET", "/recommend")
    if code == 404:
        print("supctl: this daemon serves no recommendations (GET /recommend is not there)",
              file=sys.stderr)
        return EXIT_USAGE
    if code != 200:
        return refused(code, body)
    from supervisor.cli.render import render_recommend
    show(args, body, lambda b: render_recommend(b, width=args.width))
    return EXIT_OK


def _load_config(path: str | None):
    """The config at ``path`` (None: $RESOURCE_SUPERVISOR_CONFIG, else the installed one,
    else the shipped one), or None when it is invalid (the reason is printed)."""
    from supervisor.adapters.hostfacts import read_host_facts
    from supervisor.model.config import load_config, shipped_config_path
    from supervisor.model.errors import ConfigError
    if path is None:
        env = os.environ.get("RESOURCE_SUPERVISOR_CONFIG")
        candidates = [env] if env else [DEFAULT_CONFIG_PATH, str(shipped_config_path())]
        path = next((c for c in candidates if os.path.exists(c)), candidates[0])
    try:
        return load_config(path, host=read_host_facts())
    except ConfigError as e:
        print(e.render(), file=sys.stderr)
        return None


def cmd_audit(args) -> int:
    from supervisor.policy.audit import AuditError, audit_compose, load_compose
    from supervisor.cli.render import render_findings
    if args.compose:
        cfg = _load_config(args.config)
        if cfg is None:
            return EXIT_USAGE
        findings, audited = [], []
        for path in args.compose:
            try:
                doc = load_compose(path)
                findings += [f.to_dict() for f in audit_compose(doc, cfg, path)]
            except AuditError as e:
                print(f"supctl: {e}", file=sys.stderr)
                return EXIT_USAGE
            audited += [f"{path}: {n}" for n in doc["services"]]
        body = {"audited": audited, "findings": findings}
    else:
        code, body = call(args, "GET", "/audit")
        if code != 200:
            return refused(code, body)
    show(args, body, lambda b: render_findings(b, color=_color(args)))
    return EXIT_FINDINGS if body.get("findings") else EXIT_OK


def cmd_hibernate(args) -> int:
    body: dict = {"name": args.name}
    if args.mode:
        body["mode"] = args.mode
    if args.force:
        body["force"] = True
    return _container_call(args, "/hibernate", body)


def cmd_wake(args) -> int:
    return _container_call(args, "/wake", {"name": args.name})


def _container_call(args, url: str, body: dict) -> int:
    """POST a hibernate or wake request; print what the daemon did."""
    code, reply = call(args, "POST", url, body)
    if code != 200:
        return refused(code, reply)
    print(json.dumps(reply, sort_keys=True) if args.json else
          f"{reply.get('name', args.name)}: {reply.get('detail', reply.get('outcome', ''))}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="supctl", description="Talk to resource-supervisor.",
                                 epilog=EXIT_CODES_HELP,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--socket", help=f"control socket (default {DEFAULT_SOCKET}, or $SUPCTL_SOCKET)")
    sub = ap.add_subparsers(dest="cmd", required=True)

    def command(name: str, fn: Callable[..., int], help: str, **kw) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, **kw)
        p.set_defaults(fn=fn)
        return p
    p = command("status", cmd_status, "host, pools, classes, containers at a glance")
    p.add_argument("--json", action="store_true", help="machine-readable")
    p.add_argument("--no-color", action="store_true")
    p.add_argument("--width", type=int, default=0, help="render for this many columns")
    p = command("snapshot", cmd_snapshot,
                "sample host and containers here and print JSON (no daemon needed)")
    p.add_argument("-c", "--config", default=os.environ.get("RESOURCE_SUPERVISOR_CONFIG", DEFAULT_CONFIG_PATH))
    p = command("journal", cmd_journal, "recent actions (-f to follow)")
    p.add_argument("-n", "--limit", type=_positive_int, default=20)
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new actions")
    p.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)
    p.add_argument("--kind", help="only actions of this kind (place, stop, hibernate...)")
    p.add_argument("--json", action="store_true")
    command("reload", cmd_reload, "reload the config (a bad one is refused, the old one kept)")
    p = command("plan", cmd_plan, "what the daemon would do now (changes nothing)")
    p.add_argument("--json", action="store_true")
    p = command("apply", cmd_apply,
                "run one pass now and act on its plan, even in dry-run mode (root)")
    p.add_argument("--json", action="store_true")
    p = command("recommend", cmd_recommend, "memory limits recommended from observed usage")
    p.add_argument("--json", action="store_true")
    p.add_argument("--width", type=int, default=0, help="render for this many columns")
    p = command("audit", cmd_audit,
                "rule compliance of the running containers, or of compose files",
                epilog="exit code 5 when anything is found, 0 when compliant")
    p.add_argument("--compose", action="append", metavar="FILE",
                   help="audit this compose file instead (no daemon needed; repeatable)")
    p.add_argument("-c", "--config", help="config whose classes and port ranges apply "
                   f"(with --compose; default $RESOURCE_SUPERVISOR_CONFIG or {DEFAULT_CONFIG_PATH})")
    p.add_argument("--json", action="store_true")
    p.add_argument("--no-color", action="store_true")
    p = command("hibernate", cmd_hibernate,
                "hibernate a container now (root): pause it, or stop it")
    p.add_argument("name", help="container name or id")
    p.add_argument("--mode", choices=("pause", "stop"), help="default: its class's hibernate_mode")
    p.add_argument("--force", action="store_true",
                   help="even with connections waiting or a stream moving data")
    p.add_argument("--json", action="store_true")
    p = command("wake", cmd_wake, "wake a container the supervisor hibernated (root)")
    p.add_argument("name", help="container name or id")
    p.add_argument("--json", action="store_true")
    return ap


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 1 <= n <= 10000:
        raise argparse.ArgumentTypeError("must be 1-10000")
    return n


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except BrokenPipeError:
        # `supctl status | head`: the reader left; not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
