"""Text rendering for supctl: the status screen an operator reads at a glance, the plan,
journal lines, recommendations and audit findings. Pure: dicts in, text out.
Colour (ANSI) only when asked for; every line is cut to the given width."""

from __future__ import annotations

import json
import re
import shutil
import textwrap
import time
from collections import Counter
from typing import Any

from supervisor.model.units import format_bytes

RED, YELLOW, GREEN, BOLD = "31", "33", "32", "1"


def _c(text: str, code: str, color: bool) -> str:
    return f"\033[{code}m{text}\033[0m" if color and code else text


def _bar(ratio: float, width: int = 20) -> str:
    filled = max(0, min(width, int(round(ratio * width))))
    return "[" + "#" * filled + "." * (width - filled) + "]"


def _fit(text: str, n: int) -> str:
    """Left-aligned in n columns, cut with '~' when longer."""
    return text if len(text) <= n else text[: max(0, n - 1)] + "~"


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _clock(t: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t)) if t else "--:--:--"


_ANSI = re.compile(r"\033\[[0-9;]*m")


def _cut_visible(line: str, width: int) -> str:
    """The line cut to ``width`` columns, escape codes kept whole and not counted."""
    out, cols, pos = [], 0, 0
    for m in _ANSI.finditer(line):
        take = line[pos:m.start()][: max(0, width - cols)]
        out += [take, m.group()]
        cols += len(take)
        pos = m.end()
    out.append(line[pos:][: max(0, width - cols)])
    return "".join(out)


def one_line(text: Any) -> str:
    """Text on one line: newlines and runs of blanks (a multi-line engine error) folded
    into single spaces, so one journal row stays one line."""
    return " ".join(str(text or "").split())


def _wrap(prefix: str, text: str, width: int) -> list[str]:
    """``prefix`` then ``text``, wrapped under the text's first column rather than cut at
    ``width`` (escape codes in the prefix take no columns)."""
    indent = len(_ANSI.sub("", prefix))
    room = width - indent
    text = one_line(text)
    if room < 20 or len(text) <= room:
        return [prefix + text]
    lines = textwrap.wrap(text, room, break_long_words=True, break_on_hyphens=False) or [""]
    return [prefix + lines[0]] + [" " * indent + ln for ln in lines[1:]]


# Trailing blanks, and any escape codes among them (kept: a reset must still close a colour)
_TRAILING = re.compile(r"(?:[ \t]|\033\[[0-9;]*m)+$")


def _rstrip_visible(line: str) -> str:
    return _TRAILING.sub(lambda m: "".join(_ANSI.findall(m.group())), line)


def _cut(lines: list[str], width: int, color: bool) -> str:
    return "\n".join(_rstrip_visible(_cut_visible(line, width)) if color
                     else line[:width].rstrip() for line in lines)


# ---------------------------------------------------------------- status


# A pool's or the reserve's state (ok, warn, critical, over) as the daemon computed it
# from the rule book (model/rules.py): its colour here, and the word shown beside it.
STATE_COLOUR = {"ok": "", "warn": YELLOW, "critical": RED, "over": RED + ";" + BOLD}


def _pool_flag(p: dict) -> str:
    """The word beside a pool that is not ok: why it is over, or how close it is."""
    state = p.get("state", "ok")
    if state == "over":
        return "OVER-ALLOCATED" if p["allocated_bytes"] > p["budget_bytes"] else "OVER BUDGET"
    return "" if state == "ok" else state.upper()


def _ollama_lines(section: Any) -> list[str]:
    """The Ollama component's section: ``instances`` (or ``containers``), each with a
    name, ``compliant`` and a list of ``drift`` (or ``problems``) strings."""
    if not isinstance(section, dict):
        return []
    if section.get("error"):
        return [f"  status unavailable: {section['error']}"]
    items = section.get("instances", section.get("containers"))
    if not isinstance(items, list):
        return ["  " + json.dumps(section, sort_keys=True, default=str)]
    if not items:
        return ["  no Ollama found"]
    out = []
    for it in items:
        if not isinstance(it, dict):
            continue
        drift = it.get("drift", it.get("problems")) or []
        if isinstance(drift, dict):
            drift = [f"{k}: {v}" for k, v in drift.items()]
        ok = it.get("compliant", not drift)
        verdict = "compliant" if ok else "NOT COMPLIANT: " + "; ".join(str(d) for d in drift)
        if it.get("throttled_to_cores"):
            verdict += f"  [CPU throttled to {it['throttled_to_cores']:g} cores under pressure]"
        out.append(f"  {it.get('name', '?')}: {verdict}")
    return out


# How a row's class was chosen, in a few columns (the whole sentence is the row's
# class_why in `supctl status --json`).
_CLASS_BY = {"label": "label", "default": "default", "unknown-label": "default (bad label)",
             "name": "name", "service": "service", "image": "image", "repository": "repo"}


def _class_by(c: dict) -> str:
    reason = c.get("class_reason") or ""
    text = _CLASS_BY.get(reason, reason)
    if c.get("class_pattern"):
        text += " " + c["class_pattern"]
    return _fit(text, 18) if text else ""


def render_status(st: dict, color: bool = False, width: int = 0) -> str:
    width = width or shutil.get_terminal_size((100, 24)).columns
    out: list[str] = []
    d = st.get("daemon", {})
    eng = st.get("engine", {})
    head = (f"resource-supervisor {d.get('version', '?')}  pid {d.get('pid')}  "
            f"up {format_duration(d.get('uptime_s'))}  cgroup v{d.get('cgroup_version', '?')}")
    if d.get("dry_run"):
        head += "  " + _c("DRY RUN (changes nothing)", YELLOW, color)
    out.append(head)
    loop = (f"loop: {d.get('passes', 0)} passes, last {d.get('last_pass_duration_s', 0) * 1000:.1f} ms"
            if d.get("loop_alive", True) else _c("loop: STALLED", RED, color))
    own = (f"  self: {format_bytes(d['rss_bytes'])} RSS, {d.get('cpu_seconds', 0):.1f}s CPU"
           if d.get("rss_bytes") else "")
    engine = ("engine: " + _c("up", GREEN, color) if eng.get("up") else
              "engine: " + _c("UNREACHABLE", RED, color) + f" ({(eng.get('error') or '')[:60]})")
    out.append(f"{engine}  {loop}{own}")
    if d.get("config_errors"):
        first = d["config_errors"].splitlines()[-1].strip()
        out.append(_c(f"last reload refused (running on the previous config): {first}", YELLOW, color))
    if not st.get("ready"):
        out.append("no snapshot yet")
        return _cut(out, width, color)

    h, r = st["host"], st["reserve"]
    rstate = r.get("state", "ok")
    res = (_c("BREACHED", STATE_COLOUR["over"], color) if r["breached"] else
           _c(rstate, STATE_COLOUR.get(rstate, ""), color))
    psi = h.get("pressure", {})
    out.append(f"host: {h['cores']} cores, memory available {format_bytes(h['memory_available_bytes'])}"
               f" of {format_bytes(h['memory_total_bytes'])}, reserve "
               f"{format_bytes(r['reserve_bytes'])} {res}")
    if psi:
        out.append("pressure (avg10 some/full): " + "  ".join(
            f"{k} {v['some_avg10']:.1f}%/{v['full_avg10']:.1f}%" for k, v in sorted(psi.items())))

    out += ["", f"{'POOL':<16}{'BUDGET':>10}{'ALLOCATED':>11}{'USED':>10}  USED/BUDGET"]
    no_room: list[str] = []
    for name, p in st.get("pools", {}).items():
        ratio = p.get("utilisation", 0.0)
        colour = STATE_COLOUR.get(p.get("state", "ok"), "")
        bar = _c(_bar(ratio), colour, color)
        flag = _pool_flag(p)
        flag = "  " + _c(flag, colour, color) if flag else ""
        out.append(f"{_fit(name, 15):<16}{format_bytes(p['budget_bytes']):>10}"
                   f"{format_bytes(p['allocated_bytes']):>11}{format_bytes(p['used_bytes']):>10}  "
                   f"{bar} {ratio:4.0%}{flag}")
        if p.get("unlimited_no_room"):
            names = ", ".join(p["unlimited_no_room"])
            no_room.append(_c(f"  NO MEMORY LIMIT: {names} in pool {name} run without any "
                              "memory limit: the pool had no room for one", STATE_COLOUR["over"],
                              color))
        if p.get("settling"):
            no_room.append(f"  settling: {', '.join(p['settling'])} in pool {name} get a memory "
                           "limit once settled (history.settle)")
    out += no_room

    out += ["", f"{'CLASS':<16}{'CORES':>5}  {'CPUSET':<10}{'POOL':<16}{'PORTS':<12}"]
    for name, c in st.get("classes", {}).items():
        flags = " protected" if c.get("protected") else ""
        out.append(f"{_fit(name, 15):<16}{c.get('cores', ''):>5}  {_fit(c['cpuset'], 9):<10}"
                   f"{_fit(c['pool'], 15):<16}{c.get('ports') or '-':<12}{flags}")

    out.append("")
    fixed = 15 + 11 + 10 + 11 + 22 + 7 + 8
    # Why each container has its class (label, which rule on which field, default): a
    # column where the screen has room for it beside names of 24 columns; --json always.
    by_w = 20 if width - fixed - 20 >= 24 else 0
    name_w = max(12, min(32, width - fixed - by_w))
    out.append(f"{'CONTAINER':<{name_w}}{'CLASS':<15}{'STATE':<11}{'CPUSET':<10}"
               f"{'HEALTH':<11}{'MEM USED/LIMIT':>21} {'CPU%':>6}"
               + (f"  {'CLASS BY':<{by_w - 2}}" if by_w else "") + f"{'IDLE':>8}")
    containers = st.get("containers", [])
    # Why a container is not idle: hibernation's rows carry what last made it busy.
    hib = st.get("hibernation") if isinstance(st.get("hibernation"), dict) else {}
    busy = {r.get("id"): r for r in hib.get("containers", [])
            if isinstance(r, dict) and not r.get("hibernated") and r.get("last_busy")}
    for c in containers:
        used = format_bytes(c["memory_working_set_bytes"]) if c.get("memory_working_set_bytes") is not None else "-"
        limit = format_bytes(c["memory_limit_bytes"]) if c.get("memory_limit_bytes") else "none"
        state = "hibernated" if c.get("hibernated") else c.get("state", "?")
        state_col = {"running": "", "hibernated": YELLOW, "paused": YELLOW}.get(state, RED)
        cpu = f"{c['cpu_percent']:.1f}" if c.get("cpu_percent") is not None else "-"
        name = c["name"] + ("" if c.get("managed", True) else " (unmanaged)")
        mem_text = f"{used}/{limit}"
        # colour after padding: escape codes take no columns
        mem = " " * max(0, 21 - len(mem_text)) + _c(
            mem_text, RED if limit == "none" and c.get("managed", True) else "", color)
        state_text = _c(f"{_fit(state, 10):<11}", state_col, color)
        health = c.get("health") or "-"
        health_text = _c(f"{_fit(health, 10):<11}", {"unhealthy": RED, "starting": YELLOW,
                                            "hibernated": YELLOW}.get(health, ""), color)
        why = busy.get(c.get("id"))
        because = ""
        if why:
            ago = why.get("last_busy_ago_s")
            because = f"  busy: {one_line(why['last_busy'])}" + (
                f", {format_duration(ago)} ago" if ago is not None else "")
        out.append(f"{_fit(name, name_w - 1):<{name_w}}{_fit(c.get('class', ''), 14):<15}"
                   f"{state_text}{_fit(c.get('cpuset') or 'any', 9):<10}{health_text}{mem} {cpu:>6}"
                   + (f"  {_fit(_class_by(c), by_w - 3):<{by_w - 2}}" if by_w else "")
                   + f"{format_duration(c.get('idle_s')):>8}{because}")
    if not containers:
        out.append("(no containers)")

    ladder = st.get("ladder") if isinstance(st.get("ladder"), dict) else {}
    if ladder.get("breaches") or ladder.get("throttled"):
        out += ["", "BREACHES"]
        for b in ladder.get("breaches", []):
            level = b.get("level", "")
            col = RED if level in ("critical", "over") else YELLOW
            nxt = (f", next {b['next_step']} in {b['next_step_in_s']:.0f}s"
                   if b.get("next_step") and b.get("next_step_in_s") is not None else "")
            out.append(f"  {_c(f'{level:<9}', col, color)}"
                       f"{_fit(b.get('summary') or b.get('key', ''), 50):<51}"
                       f"step {b.get('step_name', '')}{nxt}")
        for t in ladder.get("throttled", []):
            out.append(f"  throttled {_fit(t.get('name', ''), 24):<25} for {t.get('since_s', 0):.0f}s "
                       f"({', '.join(t.get('breaches', []))})")

    if "ollama" in st:
        out.append("")
        policy = st["ollama"].get("policy") if isinstance(st["ollama"], dict) else None
        out.append("OLLAMA (Rule 12.1" + (f", policy {policy})" if policy else ")"))
        out += _ollama_lines(st["ollama"])

    actions = st.get("actions") or []
    out += ["", "LAST ACTIONS" if actions else "LAST ACTIONS: none yet"]
    for a in actions[-5:]:
        col = {"ok": GREEN, "failed": RED, "dry_run": YELLOW}.get(a.get("outcome", ""), "")
        outcome = _c(f"{a.get('outcome', ''):<8}", col, color)
        out += _wrap(f"  {_clock(a.get('time_s'))} {outcome} {a.get('kind', ''):<10} "
                     f"{_fit(a.get('name', ''), 24):<24} ", a.get("reason", ""), width)
    return _cut(out, width, color)


# ---------------------------------------------------------------- other commands


def render_journal_entry(e: dict) -> str:
    seq = f"{e['seq']:>6} " if "seq" in e else ""
    extra = (f" [{one_line(e['detail'])}]"
             if e.get("detail") and e.get("outcome") in ("failed", "skipped") else "")
    return (f"{seq}{_clock(e.get('time_s'))} {e.get('outcome', ''):<8} {e.get('kind', ''):<10} "
            f"{_fit(one_line(e.get('name', '')), 24):<24} {one_line(e.get('reason', ''))}{extra}")


def _describe(a: dict) -> str:
    params = ", ".join(f"{k}={v}" for k, v in sorted((a.get("params") or {}).items()))
    return (f"  {a.get('kind', ''):<10} {_fit(a.get('name', ''), 24):<24} {a.get('reason', '')}"
            + (f" ({params})" if params else "") + ("  [destructive]" if a.get("destructive") else ""))


def render_plan(plan: dict) -> str:
    if not plan.get("ready"):
        return "no snapshot yet: the daemon is starting"
    out = [f"plan on the snapshot of {_clock(plan.get('snapshot_time_s'))}"
           + ("  (dry-run mode: the daemon itself will only report these)" if plan.get("dry_run") else "")]
    actions, held = plan.get("actions", []), plan.get("held", [])
    out += [_describe(a) for a in actions]
    if held:
        out.append("held back while the Docker engine is unreachable:")
        out += [_describe(a) for a in held]
    if not actions and not held:
        out.append("  nothing to do: every container is where the rules want it")
    return "\n".join(out)


def _rows_of(body: dict) -> list[dict] | None:
    for key in ("recommendations", "containers", "items"):
        v = body.get(key)
        if isinstance(v, list) and all(isinstance(x, dict) for x in v):
            return v
        if isinstance(v, dict) and all(isinstance(x, dict) for x in v.values()):
            return [{"name": k, **x} for k, x in v.items()]
    return None


def _cell(key: str, v: Any) -> str:
    if v is None:
        return "-"
    if key.endswith("_bytes") and isinstance(v, (int, float)):
        return format_bytes(v)
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, (list, dict)):
        return json.dumps(v, default=str)
    return str(v)


# Columns GET /recommend rows carry, in the order an operator reads them, with headings.
_RECOMMEND_COLUMNS = {
    "name": "CONTAINER", "class": "CLASS", "samples": "SAMPLES",
    "working_set_percentile_bytes": "WS PCTL", "current_limit_bytes": "LIMIT",
    "recommended_limit_bytes": "-> REC LIMIT", "current_reservation_bytes": "RESERVATION",
    "recommended_reservation_bytes": "-> REC RES", "adaptive": "ADAPTIVE",
}


def render_recommend(body: dict, width: int = 0) -> str:
    """A table of whatever rows GET /recommend returns (sizes shown in KiB/MiB/GiB)."""
    width = width or shutil.get_terminal_size((100, 24)).columns
    rows = _rows_of(body)
    if rows is None:
        return json.dumps(body, indent=2, sort_keys=True, default=str)
    if not rows:
        return "no recommendations yet (not enough history)"
    cols = list(dict.fromkeys(k for r in rows for k in r if k != "id"))
    preferred = [k for k in _RECOMMEND_COLUMNS if k in cols]
    if len(preferred) >= 3:
        cols = preferred
    elif "name" in cols:
        cols.remove("name")
        cols.insert(0, "name")
    cells = [[_cell(k, r.get(k)) for k in cols] for r in rows]
    heads = [_RECOMMEND_COLUMNS.get(k) or k.removesuffix("_bytes").upper() for k in cols]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(heads)]
    lines = []
    if body.get("percentile") is not None and body.get("headroom") is not None:
        lines.append(f"recommended limit = p{body['percentile']:g} of the working set over "
                     f"{body.get('window', 'the window')} + {body['headroom']:.0%} (Rule 1.1)")
    lines.append("  ".join(h.ljust(w) for h, w in zip(heads, widths)))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(line.rstrip()[:width] for line in lines)


def render_findings(body: dict, color: bool = False) -> str:
    findings = body.get("findings", [])
    audited = body.get("audited", [])
    if not findings:
        return f"compliant: no findings in {len(audited)} audited"
    sev_col = {"critical": RED + ";" + BOLD, "high": RED, "medium": YELLOW, "low": ""}
    tw = min(32, max(6, *(len(f["target"]) for f in findings)))
    lines = [f"{'SEVERITY':<9} {'RULE':<5} {'TARGET':<{tw}} FINDING"]
    for f in findings:
        sev = _c(f"{f['severity']:<9}", sev_col.get(f["severity"], ""), color)
        lines.append(f"{sev} {f['rule']:<5} {_fit(f['target'], tw):<{tw}} {f['message']}")
    counts = Counter(f["severity"] for f in findings)
    summary = ", ".join(f"{counts[s]} {s}" for s in ("critical", "high", "medium", "low")
                        if s in counts)
    lines.append(f"{len(findings)} finding(s) in {len(audited)} audited: {summary}")
    return "\n".join(lines)
