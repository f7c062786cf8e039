"""/metrics and the alert rules, checked by Prometheus' own tool (promtool from the
Debian package `prometheus`): a live scrape of the daemon managing real containers
lints clean, the rules load, and `promtool test rules` proves every alert fires when it
should, stays silent when it should not, and waits exactly its `for`."""

import importlib.util
import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import yaml

from ._procs import DaemonProcess
from _testkit import ROOT, class_table, wait_for

PROM = ROOT / "config" / "prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
# Class and pool names are free text in the config; they come back as label values.
ODD_CLASS = 'batch "night" ü\\x'
ODD_POOL = "pool ünï \"q\"\nline"


def promtool(*args, stdin: bytes | None = None, cwd: Path | None = None):
    return subprocess.run([PROMTOOL, *args], input=stdin, capture_output=True, timeout=60,
                          cwd=cwd)


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, ConnectionError):  # not listening yet
        return 0, b""


def series(body: str, metric: str, **labels) -> list[float]:
    from prometheus_client.parser import text_string_to_metric_families
    return [s.value for fam in text_string_to_metric_families(body) for s in fam.samples
            if s.name == metric and all(s.labels.get(k) == v for k, v in labels.items())]


def test_live_scrape_of_a_daemon_managing_real_containers_passes_promtool(make_config, containers,
                                                                          tmp_path):
    cfg, path = make_config({
        "pools": {"infrastructure": {"budget": "2GiB"}, "standard": {"budget": "2GiB"},
                  ODD_POOL: {"budget": "256MiB"}},
        "classes": {**class_table("infrastructure", "standard", infrastructure={"priority": 50}),
                    ODD_CLASS: {"pool": ODD_POOL, "memory_limit": "16MiB", "memory_min": "8MiB"}}})
    run = containers.run(mem_limit="48m")
    odd = containers.run(mem_limit="24m", labels={"supervisor.class": ODD_CLASS})
    frozen = containers.run(mem_limit="32m")
    frozen.pause()
    done = containers.run(command="true", mem_limit="32m")
    wait_for(lambda: (done.reload(), done.status)[1] == "exited", 15, what="container exit")
    daemon = DaemonProcess(cfg, path, tmp_path / "daemon.log").start()
    url = f"http://{cfg.settings.metrics.listen}"
    try:
        def scraped():
            code, body = get(url + "/metrics") if daemon.alive() else (0, b"")
            text = body.decode() if code == 200 else ""
            return text if series(text, "resource_supervisor_container_state",
                                  id=frozen.id[:12], state="paused") == [1.0] else ""
        text = wait_for(scraped, 20, interval_s=0.2, what="paused container in /metrics")
        lint = promtool("check", "metrics", stdin=text.encode())
        assert lint.returncode == 0 and not lint.stdout.strip() and not lint.stderr.strip(), \
            lint.stdout.decode() + lint.stderr.decode()
        # It is a real scrape of this host and these containers, not an empty page.
        assert series(text, "resource_supervisor_docker_engine_up") == [1.0]
        assert series(text, "resource_supervisor_container_spec_memory_limit_bytes",
                      id=run.id[:12], pool="standard") == [48 * 2**20]
        assert series(text, "resource_supervisor_container_state", id=done.id[:12],
                      state="exited") == [1.0]
        assert series(text, "resource_supervisor_pool_allocated_bytes", pool=ODD_POOL) == [24 * 2**20]
        assert series(text, "resource_supervisor_container_managed", id=odd.id[:12],
                      **{"class": ODD_CLASS}) == [1.0]
        assert series(text, "resource_supervisor_host_memory_total_bytes")[0] > 0
        assert series(text, "process_resident_memory_bytes")[0] > 0
        assert series(text, "resource_supervisor_tick_duration_seconds_count")[0] >= 1
        # /health answers next to it, from the same server.
        code, body = get(url + "/health")
        health = json.loads(body)
        assert code == 200 and health["loop_alive"] and health["engine_up"]
        # The container that goes away takes its series with it on the next pass.
        run.remove(force=True)
        gone = wait_for(lambda: (lambda t: t if run.id[:12] not in t else "")(
            get(url + "/metrics")[1].decode()), 15, interval_s=0.2, what="series of a removed container gone")
        assert frozen.id[:12] in gone
    finally:
        assert daemon.stop() == 0, daemon.log_text()[-3000:]


def _hostile_exposition() -> bytes:
    """The unit tests' hand-made tick with hostile names (quotes, newlines, unicode, a lone
    surrogate, 10k characters), rendered by the real collector."""
    unit = ROOT / "tests" / "unit"
    if str(unit) not in sys.path:
        sys.path.append(str(unit))  # it builds its tick with the unit tests' factory (_handmade)
    spec = importlib.util.spec_from_file_location(
        "metrics_render_cases", unit / "test_metrics_render.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.hostile_exposition()


def test_hostile_label_values_pass_promtool():
    body = _hostile_exposition()
    assert b'\\n' in body and "ü".encode() in body  # the hostile values are in there
    lint = promtool("check", "metrics", stdin=body)
    assert lint.returncode == 0 and not lint.stdout.strip() and not lint.stderr.strip(), \
        lint.stdout.decode() + lint.stderr.decode()


def test_rules_and_the_example_scrape_config_load():
    r = promtool("check", "rules", "alerts.yml", cwd=PROM)
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    n = sum(len(g["rules"]) for g in yaml.safe_load((PROM / "alerts.yml").read_text())["groups"])
    assert f"SUCCESS: {n} rules found" in r.stdout.decode()
    r = promtool("check", "config", "scrape.yml", cwd=PROM)
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()


def test_promtool_unit_tests_of_every_alert_pass():
    r = promtool("test", "rules", "alerts_test.yml", cwd=PROM)
    out = r.stdout.decode() + r.stderr.decode()
    assert r.returncode == 0 and "SUCCESS" in out, out


def _shorter(duration: str) -> str:
    """Half a Prometheus duration ("5m" -> "150s")."""
    units = {"s": 1, "m": 60, "h": 3600}
    return f"{int(duration[:-1]) * units[duration[-1]] // 2}s"


def test_the_unit_tests_catch_a_wrong_for_duration_in_every_alert(tmp_path):
    """Each alert's `for` is pinned by its test: halve it (or add one where there is none)
    and promtool's test of that alert fails, naming that alert and no other."""
    rules = yaml.safe_load((PROM / "alerts.yml").read_text())
    names = [r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r]
    assert len(names) >= 8
    files = []
    for i, name in enumerate(names):
        mutated = yaml.safe_load((PROM / "alerts.yml").read_text())
        for g in mutated["groups"]:
            for r in g["rules"]:
                if r.get("alert") == name:
                    r["for"] = _shorter(r["for"]) if "for" in r else "5m"
        d = tmp_path / f"m{i}"
        d.mkdir()
        (d / "alerts.yml").write_text(yaml.safe_dump(mutated, sort_keys=False))
        shutil.copy(PROM / "alerts_test.yml", d / "alerts_test.yml")
        files.append(str(d / "alerts_test.yml"))
    # One promtool per mutant, run side by side.
    procs = [subprocess.Popen([PROMTOOL, "test", "rules", "alerts_test.yml"], cwd=Path(f).parent,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for f in files]
    for name, p in zip(names, procs):
        out = p.communicate(timeout=120)[0].decode()
        assert p.returncode != 0, f"changing the `for` of {name} went unnoticed"
        failed = {line.split("alertname: ", 1)[1].split(",")[0]
                  for line in out.splitlines() if "alertname: " in line}
        assert failed == {name}, f"changing the `for` of {name}:\n{out[-1500:]}"
