"""The service lab's report: PNG time plots (matplotlib) and one self-contained HTML file
(the PNGs embedded as data URIs, and written beside it) with the side-by-side table, the
goals next to the figures they judge, the machine it ran on and what ran beside it.

Both legs share each figure's axes: without the supervisor in grey/red, with it in blue.
"""

from __future__ import annotations

import base64
import html
import io
import os

import matplotlib

matplotlib.use("Agg")  # no display: files only
import matplotlib.pyplot as plt  # noqa: E402

from lab import analysis  # noqa: E402
from lab.analysis import GIB, MIB  # noqa: E402

COLOURS = {"without": "#c0392b", "with": "#1f77b4"}
LABELS = {"without": "without the supervisor", "with": "with the supervisor"}
DPI = 80


def _save(fig, out: str, name: str) -> tuple[str, bytes]:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    data = buf.getvalue()
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
    return name, data


def _markers(ax, leg, y_top):
    """The supervisor's actions as markers along the top of a plot."""
    kinds = sorted({a[1] for a in leg.actions if a[1] != "place"})
    marks = "v^<>osdP*Xh"
    for i, kind in enumerate(kinds):
        ts = [a[0] for a in leg.actions if a[1] == kind and a[0] >= 0]
        if ts:
            ax.plot(ts, [y_top] * len(ts), marks[i % len(marks)], ms=5, alpha=0.7,
                    color=f"C{(i + 2) % 10}", label=f"action: {kind}", linestyle="none")


def _events(ax, leg):
    for t, what in leg.events:
        if what.startswith(("Ollama", "perf-agent", "come back", "redis grew")) or "stale" in what:
            ax.axvline(t, color="#999", lw=0.6, ls=":")


def fig_pools(out, legs, size):
    pools = [p for p in ("standard", "critical", "infrastructure") if p in size.budgets]
    fig, axes = plt.subplots(len(pools), 1, figsize=(9, 2.4 * len(pools)), sharex=True)
    for ax, pool in zip(axes, pools):
        for name, leg in legs.items():
            ys = [v / MIB for v in leg.pool_used.get(pool, [])]
            ax.plot(leg.times[:len(ys)], ys, color=COLOURS[name], lw=1.2, label=LABELS[name])
        ax.axhline(size.budgets[pool] / MIB, color="k", lw=1, ls="--", label="budget")
        if "with" in legs:
            _markers(ax, legs["with"], size.budgets[pool] / MIB * 1.05)
        ax.set_ylabel(f"{pool}\nMiB")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=3, loc="upper left")
    axes[-1].set_xlabel("seconds into the timeline")
    fig.suptitle("Memory per pool (sum of working sets) against its budget", fontsize=10)
    return _save(fig, out, "pools.png")


def fig_reserve(out, legs, size):
    fig, ax = plt.subplots(figsize=(9, 2.8))
    for name, leg in legs.items():
        ys = [(size.lab_bytes - u) / MIB for u in leg.lab_used_bytes]
        ax.plot(leg.times[:len(ys)], ys, color=COLOURS[name], lw=1.2, label=LABELS[name])
        _events(ax, leg)
    ax.axhline(size.reserve_bytes / MIB, color="k", lw=1, ls="--", label="emergency reserve")
    ax.axhline(0, color="#555", lw=0.6)
    ax.set_ylabel("lab available, MiB")
    ax.set_xlabel("seconds into the timeline")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title(f"The lab's available memory (its {size.lab_bytes / GIB:.2f} GiB minus what its "
                 "services hold) against its reserve", fontsize=10)
    return _save(fig, out, "reserve.png")


def fig_hibernated(out, legs, n_idle):
    fig, ax = plt.subplots(figsize=(9, 2.4))
    for name, leg in legs.items():
        ax.step(leg.times[:len(leg.paused)], leg.paused, where="post", color=COLOURS[name],
                lw=1.2, label=LABELS[name])
        ax2 = ax
        if name == "with":
            _markers(ax2, leg, n_idle + 1)
    ax.axhline(n_idle, color="k", lw=0.8, ls="--", label="idle services")
    ax.set_ylabel("hibernated")
    ax.set_xlabel("seconds into the timeline")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="upper left")
    ax.set_title("Hibernated (paused) lab containers, with the supervisor's actions", fontsize=10)
    return _save(fig, out, "hibernated.png")


def fig_idle_memory(out, legs):
    fig, ax = plt.subplots(figsize=(9, 2.4))
    for name, leg in legs.items():
        ax.plot(leg.times[:len(leg.idle_ws)], [v / MIB for v in leg.idle_ws], color=COLOURS[name],
                lw=1.2, label=LABELS[name])
    ax.set_ylabel("MiB")
    ax.set_xlabel("seconds into the timeline")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("Memory held by the idle services (working sets)", fontsize=10)
    return _save(fig, out, "idle-memory.png")


def fig_latency(out, legs, scale):
    fig, axes = plt.subplots(1, 2, figsize=(9, 2.8), gridspec_kw={"width_ratios": [2, 1]})
    ax = axes[0]
    for name, leg in legs.items():
        rs = [r for r in leg.requests if r.kind.startswith("critical") and r.ok]
        ax.plot([r.t for r in rs], [r.ms for r in rs], ".", ms=2, color=COLOURS[name],
                label=LABELS[name], alpha=0.6)
    ax.axvspan(scale.solo_s, scale.solo_s + scale.hog_s, color="#f5b041", alpha=0.15,
               label="Ollama burns CPU")
    ax.set_yscale("log")
    ax.set_ylabel("ms")
    ax.set_xlabel("seconds into the timeline")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title("Critical requests (GET /work?ms=5)", fontsize=10)
    ax = axes[1]
    for name, leg in legs.items():
        ms = sorted(r.ms for r in leg.requests if r.kind.startswith("wake-") and r.ok and r.through_wake)
        if ms:
            ax.plot(ms, [i / len(ms) for i in range(1, len(ms) + 1)], color=COLOURS[name],
                    label=f"{LABELS[name]} ({len(ms)} wakes)")
        aw = sorted(r.ms for r in leg.requests if r.kind.startswith("wake-") and r.ok and not r.through_wake)
        if aw:
            ax.plot(aw, [i / len(aw) for i in range(1, len(aw) + 1)], color=COLOURS[name], ls=":",
                    label=f"{LABELS[name]}, awake")
    ax.axvline(analysis.GOAL_WAKE_P95_MS, color="k", lw=0.8, ls="--")
    ax.set_xlabel("client start -> answer, ms")
    ax.set_ylabel("share")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="lower right")
    ax.set_title("Real clients to idle services", fontsize=10)
    fig.tight_layout()
    return _save(fig, out, "latency.png")


def write(out: str, scale, size, svcs, legs, summaries, facts) -> str:
    os.makedirs(out, exist_ok=True)
    n_idle = sum(1 for s in svcs if s.role in ("idle", "store"))
    goals = analysis.goals(summaries["with"]) if "with" in summaries else []
    g = {i: goals[i] for i in range(len(goals))}

    def goal_html(*idx):
        items = []
        for i in idx:
            if i in g:
                goal, fig, met = g[i]
                v = "met" if met else ("n/a" if met is None else "NOT met")
                colour = "#1e8449" if met else ("#777" if met is None else "#c0392b")
                items.append(f'<li>Goal: {html.escape(goal)}: <b>{html.escape(fig)}</b> '
                             f'<span style="color:{colour};font-weight:bold">{v}</span></li>')
        return "<ul>" + "".join(items) + "</ul>"

    figs = [
        (fig_pools(out, legs, size), goal_html(0)),
        (fig_reserve(out, legs, size), goal_html(1)),
        (fig_hibernated(out, legs, n_idle), goal_html(2)),
        (fig_idle_memory(out, legs), ""),
        (fig_latency(out, legs, scale), goal_html(3, 4, 5)),
    ]
    rows = analysis.table(summaries["without"], summaries["with"])
    table = "".join(f"<tr><th>{html.escape(a)}</th><td>{html.escape(b)}</td><td>{html.escape(c)}</td></tr>"
                    for a, b, c in rows)
    beside = ", ".join(facts.get("beside") or []) or "nothing heavy"
    body = [
        "<!doctype html><html><head><meta charset='utf-8'><title>resource-supervisor service lab</title>",
        "<style>body{font:14px sans-serif;max-width:1000px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:3px 6px;"
        "text-align:left;vertical-align:top}th{background:#f4f4f4}img{max-width:100%}"
        "code{background:#f4f4f4;padding:1px 3px}</style></head><body>",
        f"<h1>Service lab: {html.escape(scale.name)} scale ({'+'.join(map(str, scale.phases))} services)</h1>",
        f"<p>Machine: {facts['cores']} cores ({html.escape(facts['cpu'])}), {facts['memory_gib']} GiB, "
        f"kernel {html.escape(facts['kernel'])}, cgroup {facts['cgroup']}; load average "
        f"{facts['load_avg']} at the start, {facts.get('load_avg_end', '?')} at the end; running beside: "
        f"{html.escape(beside)}. {html.escape(facts['date'])}; whole run {facts.get('runtime_s', '?')} s.</p>",
        f"<p>The lab host: {size.lab_bytes / GIB:.2f} GiB = pools "
        + ", ".join(f"{p} {b // MIB} MiB" for p, b in size.budgets.items())
        + f" + reserve {size.reserve_bytes // MIB} MiB. The leak is bounded at "
        f"{size.leak_bytes // MIB} MiB, Redis grows by {size.redis_bytes // MIB} MiB. "
        f"idle_after {scale.idle_after_s} s; health checks every {scale.health_interval_s} s.</p>",
        "<p>Reproduce: <code>scripts/lab --scale " + html.escape(scale.name) + "</code></p>",
        "<h2>Side by side</h2><table><tr><th></th><th>without the supervisor</th>"
        "<th>with the supervisor</th></tr>" + table + "</table>",
        "<h2>Timeline</h2><ul>" + "".join(
            f"<li>{html.escape(n)}: " + "; ".join(f"{t:.0f}s {html.escape(w)}" for t, w in leg.events[:40])
            + "</li>" for n, leg in legs.items()) + "</ul>",
    ]
    journal = ""
    if "with" in legs:
        acts = [a for a in legs["with"].actions if a[1] != "place"]
        journal = ("<h2>What the supervisor did (its journal; placements left out)</h2>"
                    "<table><tr><th>t (s)</th><th>kind</th><th>outcome</th><th>container</th>"
                    "<th>reason</th></tr>" + "".join(
                        f"<tr><td>{a[0]:.0f}</td><td>{html.escape(a[1])}</td><td>{html.escape(a[2])}</td>"
                        f"<td>{html.escape(a[3])}</td><td>{html.escape(str(a[4])[:220])}</td></tr>"
                        for a in acts[:150]) + "</table>"
                    + (f"<p>... and {len(acts) - 150} more.</p>" if len(acts) > 150 else ""))
    for (name, data), goals_html in figs:
        b64 = base64.b64encode(data).decode()
        body.append(f"<h3>{html.escape(name)}</h3>{goals_html}"
                    f"<img alt='{html.escape(name)}' src='data:image/png;base64,{b64}'>")
    body.append(journal)
    body.append("</body></html>")
    path = os.path.join(out, "index.html")
    with open(path, "w") as f:
        f.write("\n".join(body))
    return path


def write_markdown(out: str, summary: dict) -> str:
    """README.md beside the report (what a repository browser shows): the machine, the
    table and the goals from ``summary.json``, the PNGs linked."""
    f = summary["facts"]
    beside = ", ".join(f.get("beside") or []) or "nothing heavy"
    lines = [
        f"# Service lab, {summary['scale']} scale",
        "",
        f"`scripts/lab --scale {summary['scale']}` on {f['cores']} cores ({f['cpu']}), "
        f"{f['memory_gib']} GiB, kernel {f['kernel']}, cgroup {f['cgroup']}, {f['date']}; "
        f"load average {f['load_avg']} at the start, {f.get('load_avg_end', '?')} at the end; "
        f"running beside: {beside}; whole run {f.get('runtime_s', '?')} s. "
        "The full report with the plots: `index.html`.",
        "",
        "| | without the supervisor | with the supervisor |",
        "|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in summary["table"]]
    lines += ["", "Goals (the leg with the supervisor):", ""]
    for goal, fig, met in summary["goals"]:
        verdict = "met" if met else ("n/a" if met is None else "**not met**")
        lines.append(f"- {goal}: {fig}: {verdict}")
    lines += [""] + [f"![{n}]({n})" for n in ("pools.png", "reserve.png", "hibernated.png",
                                              "idle-memory.png", "latency.png")]
    path = os.path.join(out, "README.md")
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


if __name__ == "__main__":
    # python -m lab.report DIR: README.md again from DIR/summary.json
    import json
    import sys
    with open(os.path.join(sys.argv[1], "summary.json")) as fh:
        print(write_markdown(sys.argv[1], json.load(fh)))
