"""Text rendering of the status dict for `supctl status`: one screen at a glance."""

from __future__ import annotations

import shutil

from .units import format_bytes


def _bar(ratio: float, width: int = 20) -> str:
    filled = max(0, min(width, int(round(ratio * width))))
    return "[" + "#" * filled + "." * (width - filled) + "]"


def _c(text: str, code: str, color: bool) -> str:
    return f"\033[{code}m{text}\033[0m" if color else text


def render_status(st: dict, color: bool = False, width: int = 0) -> str:
    width = width or shutil.get_terminal_size((100, 24)).columns
    out: list[str] = []
    d = st.get("daemon", {})
    eng = st.get("engine", {})
    out.append(f"resource-supervisor {d.get('version', '?')}  pid {d.get('pid')}  "
               f"up {d.get('uptime_s', 0):.0f}s  {'DRY RUN  ' if d.get('dry_run') else ''}"
               f"cgroup v{d.get('cgroup_version', '?')}")
    out.append("engine: " + (_c("up", "32", color) if eng.get("up") else
                             _c("UNREACHABLE", "31", color) + f" ({eng.get('error', '')[:60]})"))
    if not st.get("ready"):
        out.append("no snapshot yet")
        return "\n".join(out)
    h = st["host"]
    r = st["reserve"]
    res = _c("BREACHED", "31;1", color) if r["breached"] else "ok"
    psi = h.get("pressure", {})
    out.append(f"host: {h['cores']} cores, available {format_bytes(h['memory_available_bytes'])} "
               f"of {format_bytes(h['memory_total_bytes'])}, reserve "
               f"{format_bytes(r['reserve_bytes'])} {res}; PSI avg10 "
               + " ".join(f"{k} {v['some_avg10']:.1f}%" for k, v in sorted(psi.items())))
    out.append("")
    out.append(f"{'POOL':<16}{'BUDGET':>10}{'ALLOCATED':>11}{'USED':>10}  USE")
    for name, p in st["pools"].items():
        ratio = p["utilisation"]
        bar = _bar(ratio)
        if ratio >= 0.95 or p["allocated_bytes"] > p["budget_bytes"]:
            bar = _c(bar, "31", color)
        elif ratio >= 0.85:
            bar = _c(bar, "33", color)
        out.append(f"{name:<16}{format_bytes(p['budget_bytes']):>10}"
                   f"{format_bytes(p['allocated_bytes']):>11}{format_bytes(p['used_bytes']):>10}  "
                   f"{bar} {ratio:.0%}")
    out.append("")
    out.append("classes: " + ", ".join(f"{n} cores {c['cpuset']} ({c['pool']})"
                                       for n, c in st["classes"].items()))
    out.append("")
    out.append(f"{'CONTAINER':<24}{'CLASS':<15}{'STATE':<11}{'CPUSET':<8}{'MEM USED/LIMIT':>20}")
    for c in st["containers"]:
        used = format_bytes(c["memory_working_set_bytes"]) if c["memory_working_set_bytes"] is not None else "-"
        limit = format_bytes(c["memory_limit_bytes"]) if c["memory_limit_bytes"] else "none"
        out.append(f"{c['name'][:23]:<24}{c['class'][:14]:<15}{c['state'][:10]:<11}"
                   f"{(c['cpuset'] or 'any')[:7]:<8}{used + '/' + limit:>20}")
    if st.get("actions"):
        out.append("")
        out.append("last actions:")
        for a in st["actions"][-5:]:
            out.append(f"  {a['outcome']:<8} {a['kind']:<10} {a['name'][:24]:<24} {a['reason'][:60]}")
    return "\n".join(line[:width] for line in out)
