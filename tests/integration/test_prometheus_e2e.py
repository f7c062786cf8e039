"""End to end: a real Prometheus server (Debian package `prometheus`, loopback only,
storage in a temp dir) scrapes the daemon while it manages real containers; PromQL
through Prometheus' HTTP API returns the pool figures the daemon computed, as
`supctl status --json` shows them, loads our alert rules, and evaluates every query of
the Grafana dashboard."""

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

from _testkit import ROOT, free_port, stop_process, wait_for
from supervisor.runtime.daemon import Daemon

from ._procs import daemon_stepped

PROM = ROOT / "config" / "prometheus"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
MIB = 2**20
POOL_FIELDS = {"budget_bytes": "resource_supervisor_pool_budget_bytes",
               "allocated_bytes": "resource_supervisor_pool_allocated_bytes",
               "used_bytes": "resource_supervisor_pool_used_bytes"}


class Prometheus:
    def __init__(self, tmp_path, target: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        shutil.copy(PROM / "alerts.yml", tmp_path / "alerts.yml")
        cfg = tmp_path / "prometheus.yml"
        cfg.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "rule_files:\n  - alerts.yml\n"
            "scrape_configs:\n  - job_name: resource-supervisor\n"
            "    scrape_interval: 1s\n    scrape_timeout: 1s\n"
            f"    static_configs:\n      - targets: ['{target}']\n")
        self.log = open(tmp_path / "prometheus.log", "w+")
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT)

    def api(self, path: str, **params) -> dict:
        url = f"{self.url}{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> dict[tuple, float]:
        """Instant query: {sorted label items (without __name__): value}."""
        data = self.api("/api/v1/query", query=expr)
        return {tuple(sorted((k, v) for k, v in r["metric"].items() if k != "__name__")):
                float(r["value"][1]) for r in data["result"]}

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            self.log.seek(0)
            raise AssertionError(f"prometheus exited: {self.log.read()[-3000:]}")
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        # Only the server this test started, by its PID.
        stop_process(self.proc)
        self.log.close()


def supctl_status(sock) -> dict:
    r = subprocess.run([sys.executable, "-m", "supervisor.cli", "--socket", str(sock),
                        "status", "--json"], capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert r.stdout, r.stderr
    return json.loads(r.stdout)


@pytest.fixture
def daemon(make_config):
    cfg, path = make_config()
    with daemon_stepped(cfg, path, serve=True) as d:
        yield d


def scraped_pass(prom: Prometheus, d: Daemon) -> None:
    """Wait until Prometheus holds a scrape of the daemon's latest pass: from then on every
    figure it returns comes from that one pass (no other pass runs in between)."""
    want = d.last_tick.now
    wait_for(lambda: prom.query("resource_supervisor_last_pass_timestamp_seconds")
             .get((("instance", prom_target(d)), ("job", "resource-supervisor"))) == want,
             20, interval_s=0.2, what="a scrape of the latest pass")


def prom_target(d: Daemon) -> str:
    return d.cfg.settings.metrics.listen


def pools_by_prometheus(prom: Prometheus) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for field, metric in {**POOL_FIELDS, "utilisation": "resource_supervisor_pool_utilisation_ratio"}.items():
        for labels, v in prom.query(metric).items():
            out.setdefault(dict(labels)["pool"], {})[field] = v
    return out


def test_prometheus_scrapes_the_pool_figures_the_daemon_computed(tmp_path, daemon, containers):
    d = daemon
    a = containers.run(mem_limit="48m")
    b = containers.run(mem_limit="32m", tmpfs={"/data": "size=16m"})
    b.exec_run(["dd", "if=/dev/zero", "of=/data/fill", "bs=1M", "count=8"])
    infra = containers.run(mem_limit="64m", labels={"supervisor.class": "infrastructure"})
    frozen = containers.run(mem_limit="24m")
    frozen.pause()
    mine = {a.id, b.id, infra.id, frozen.id}
    wait_for(lambda: mine <= {c.id for c in d.inventory.view()}, 15, what="containers in inventory")
    wait_for(lambda: d.inventory.get(frozen.id).state == "paused", 15, what="paused state")
    d.run_once()

    prom = Prometheus(tmp_path, prom_target(d))
    try:
        wait_for(prom.ready, 30, interval_s=0.2, what="prometheus ready")
        scraped_pass(prom, d)
        status = supctl_status(d.cfg.settings.control.socket)
        got = pools_by_prometheus(prom)
        assert set(got) == set(status["pools"]) == {"infrastructure", "standard"}
        for name, p in status["pools"].items():
            for field in POOL_FIELDS:
                assert got[name][field] == p[field], (name, field)
            assert got[name]["utilisation"] == p["used_bytes"] / p["budget_bytes"]
            assert round(got[name]["utilisation"], 4) == p["utilisation"]
        # What the containers hold, as `docker` set it: 48 + 32 + 24 MiB in standard
        # (the paused one still holds its memory), 64 MiB in infrastructure.
        assert got["standard"]["allocated_bytes"] == (48 + 32 + 24) * MIB
        assert got["infrastructure"]["allocated_bytes"] == 64 * MIB
        assert got["standard"]["used_bytes"] >= 8 * MIB  # b's tmpfs is in its working set
        reserve = prom.query("resource_supervisor_emergency_reserve_bytes")
        assert list(reserve.values()) == [status["reserve"]["reserve_bytes"]]
        state = prom.query(f'resource_supervisor_container_state{{id="{frozen.id[:12]}"}} == 1')
        assert [dict(k)["state"] for k in state] == ["paused"]
        wss = prom.query("resource_supervisor_container_memory_working_set_bytes")
        rows = {r["id"]: r for r in status["containers"]}
        for labels, v in wss.items():
            lab = dict(labels)
            assert v == rows[lab["id"]]["memory_working_set_bytes"]
            assert (lab["name"], lab["class"], lab["pool"]) == \
                (rows[lab["id"]]["name"], rows[lab["id"]]["class"], rows[lab["id"]]["pool"])
        assert {dict(k)["id"] for k in wss} >= {x[:12] for x in mine}

        # Our alert rules load into the real server.
        groups = prom.api("/api/v1/rules")["groups"]
        loaded = {r["name"] for g in groups for r in g["rules"]}
        assert "ResourceSupervisorPoolExhausted" in loaded and len(loaded) == sum(
            len(g["rules"]) for g in groups)
        assert all(r["health"] == "ok" for g in groups for r in g["rules"]), groups

        # A container goes: the next pass and scrape have the pool smaller by its limit,
        # and its series are gone (Prometheus marks them stale), not frozen at old values.
        a.remove(force=True)
        wait_for(lambda: d.inventory.get(a.id) is None, 15, what="removal seen")
        time.sleep(0.01)  # a new pass timestamp
        d.run_once()
        scraped_pass(prom, d)
        status = supctl_status(d.cfg.settings.control.socket)
        got = pools_by_prometheus(prom)
        assert got["standard"]["allocated_bytes"] == status["pools"]["standard"]["allocated_bytes"] \
            == (32 + 24) * MIB
        assert got["standard"]["used_bytes"] == status["pools"]["standard"]["used_bytes"]
        assert not prom.query(f'resource_supervisor_container_memory_working_set_bytes{{id="{a.id[:12]}"}}')
        assert prom.query(f'resource_supervisor_container_memory_working_set_bytes{{id="{b.id[:12]}"}}')

        # Every query of the Grafana dashboard parses and runs in the real server.
        dash = json.loads((PROM / "grafana-dashboard.json").read_text())
        exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
        assert len(exprs) >= 20
        for e in exprs:
            q = re.sub(r"\$\{?(instance|pool)\}?", ".*", e).replace("$__rate_interval", "1m")
            prom.api("/api/v1/query", query=q)
        pool_panel = [t["expr"] for p in dash["panels"] if p["title"].startswith("Pool memory")
                      for t in p["targets"]]
        assert prom.api("/api/v1/query", query=pool_panel[0].replace("$instance", ".*")
                        .replace("$pool", ".*"))["result"]
    finally:
        prom.stop()
    assert prom.proc.returncode is not None
