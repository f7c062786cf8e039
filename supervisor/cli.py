"""supctl: the operator's CLI. Talks to the daemon's control socket (HTTP + JSON);
`supctl snapshot` alone works without a daemon (it samples the host itself).

Exit codes (so `supctl status` can serve as a health check):
  0  healthy
  1  usage error or a refused request
  2  the daemon is unreachable
  3  a pool is exhausted (allocated or used over budget) or the emergency reserve is breached
  4  the Docker engine is unreachable (the daemon runs)
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .config import DEFAULT_CONFIG_PATH
from .control import request

EXIT_OK, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_EXHAUSTED, EXIT_ENGINE_DOWN = 0, 1, 2, 3, 4
DEFAULT_SOCKET = "/run/resource-supervisor/control.sock"


def _socket(args) -> str:
    return args.socket or os.environ.get("SUPCTL_SOCKET") or DEFAULT_SOCKET


def call(args, method: str, url: str, body: dict | None = None) -> tuple[int, dict]:
    try:
        return request(_socket(args), method, url, body)
    except (FileNotFoundError, ConnectionRefusedError, PermissionError, TimeoutError, OSError) as e:
        print(f"supctl: daemon unreachable at {_socket(args)}: {e}", file=sys.stderr)
        raise SystemExit(EXIT_UNREACHABLE) from None


def health_code(status: dict) -> int:
    if any(p.get("used_bytes", 0) > p.get("budget_bytes", 0) or
           p.get("allocated_bytes", 0) > p.get("budget_bytes", 0)
           for p in status.get("pools", {}).values()):
        return EXIT_EXHAUSTED
    if status.get("reserve", {}).get("breached"):
        return EXIT_EXHAUSTED
    if not status.get("engine", {}).get("up"):
        return EXIT_ENGINE_DOWN
    return EXIT_OK


def cmd_status(args) -> int:
    code, st = call(args, "GET", "/status")
    if code != 200:
        print(f"supctl: {st.get('error', code)}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(st, indent=2, sort_keys=True))
    else:
        from .render import render_status
        print(render_status(st, color=sys.stdout.isatty() and not args.no_color,
                            width=args.width))
    return health_code(st)


def cmd_snapshot(args) -> int:
    """One full snapshot sampled right here, without a daemon."""
    from .cgroups import CgroupFS
    from .config import load_config
    from .engine import Engine
    from .errors import ConfigError, EngineUnavailable
    from .host import HostSampler
    from .inventory import Inventory
    from .sampler import Sampler

    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(e.render(), file=sys.stderr)
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
    code, body = call(args, "GET", f"/journal?limit={args.limit}")
    if code != 200:
        print(f"supctl: {body.get('error', code)}", file=sys.stderr)
        return EXIT_USAGE
    for e in body.get("entries", []):
        print(json.dumps(e, sort_keys=True) if args.json else
              f"{e['seq']:>6} {e['outcome']:<8} {e['kind']:<10} {e['name']:<24} {e['reason']}")
    return EXIT_OK


def cmd_reload(args) -> int:
    code, body = call(args, "POST", "/reload")
    print(body.get("message") or body.get("error"), file=sys.stdout if code == 200 else sys.stderr)
    return EXIT_OK if code == 200 else EXIT_USAGE


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="supctl", description="Talk to resource-supervisor.")
    ap.add_argument("--socket", help=f"control socket (default {DEFAULT_SOCKET}, or $SUPCTL_SOCKET)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("status", help="host, pools, classes, containers at a glance")
    p.add_argument("--json", action="store_true", help="machine-readable")
    p.add_argument("--no-color", action="store_true")
    p.add_argument("--width", type=int, default=0, help="render for this many columns")
    p.set_defaults(fn=cmd_status)
    p = sub.add_parser("snapshot", help="sample host and containers here and print JSON (no daemon needed)")
    p.add_argument("-c", "--config", default=os.environ.get("RESOURCE_SUPERVISOR_CONFIG", DEFAULT_CONFIG_PATH))
    p.set_defaults(fn=cmd_snapshot)
    p = sub.add_parser("journal", help="recent actions")
    p.add_argument("-n", "--limit", type=int, default=20)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_journal)
    p = sub.add_parser("reload", help="reload the config (a bad one is refused, the old one kept)")
    p.set_defaults(fn=cmd_reload)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
