"""The compliance audit: compose files (the rules' own template, one with each kind of
violation, broken ones) and running containers, and `supctl audit --compose` itself."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor.policy.audit import (AuditError, audit_compose, audit_container, load_compose,
                              parse_compose_size, parse_port)
from supervisor.model.config import load_config, shipped_config_path
from supervisor.model.snapshot import ContainerInfo

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "tests" / "fixtures" / "compose"
MIB = 2**20


@pytest.fixture(scope="module")
def cfg():
    return load_config(shipped_config_path())


def pairs(findings):
    return {(f.target, f.rule) for f in findings}


def test_the_rules_compliant_template_has_no_findings(cfg):
    doc = load_compose(str(COMPOSE / "compliant-template.yml"))
    assert list(doc["services"]) == ["example-agent"]
    assert audit_compose(doc, cfg) == []


def test_each_kind_of_violation_is_reported_once_with_its_rule(cfg):
    findings = audit_compose(load_compose(str(COMPOSE / "violations.yml")), cfg, "violations.yml")
    assert pairs(findings) == {
        ("no-memory-limit", "1.1"), ("no-healthcheck", "2.2"), ("restart-always", "2.3"),
        ("forbidden-port", "5.2"), ("port-outside-class", "5.1"), ("runs-as-root", "9.3"),
        ("ollama", "12.1")}
    assert len(findings) == 7
    by = {f.target: f for f in findings}
    assert by["no-memory-limit"].severity == "critical"
    assert by["forbidden-port"].severity == "critical" and "8080" in by["forbidden-port"].message
    assert "10200-10399" in by["port-outside-class"].message
    assert "OLLAMA_CPU_LIMIT has no effect" in by["ollama"].message
    assert all(f.source == "violations.yml" for f in findings)


def svc(**over):
    base = {"image": "example/agent:1",
            "deploy": {"resources": {"limits": {"memory": "512m"}, "reservations": {"memory": "256m"}}},
            "healthcheck": {"test": ["CMD", "true"], "interval": "30s", "timeout": "10s",
                            "retries": 3, "start_period": "60s"},
            "restart": "on-failure:3",
            "user": "1000", "ports": ["10250:10250"]}
    base.update(over)
    return {"services": {"s": base}}


@pytest.mark.parametrize("over, rule, severity, words", [
    ({"deploy": {"resources": {"limits": {"memory": "512m"}}}}, "1.1", "low", "no memory reservation"),
    ({"deploy": {"resources": {"limits": {"memory": "1g"}, "reservations": {"memory": "900m"}}}},
     "1.1", "medium", "88% of the limit"),
    ({"deploy": {}, "mem_limit": "lots"}, "1.1", "high", "cannot be read"),
    ({"healthcheck": {"test": ["NONE"]}}, "2.2", "high", "disabled"),
    ({"restart": "sometimes"}, "2.3", "high", "unknown restart policy"),
    ({"restart": "unless-stopped"}, "2.3", "medium", "on-failure with a maximum"),
    ({"restart": "always"}, "2.3", "high", "restart: on-failure:3"),
    ({"deploy": {"resources": {"limits": {"memory": "512m"}, "reservations": {"memory": "256m"}},
                 "restart_policy": {"condition": "on-failure"}}}, "2.3", "medium", "no max_attempts"),
    ({"ports": [{"target": 80, "published": "3000"}]}, "5.2", "critical", "3000"),
    ({"ports": ["10250"]}, "5.1", "low", "engine picks"),
    ({"ports": ["${PORT}:10250"]}, "5.1", "low", "cannot be read"),
    ({"user": "0:0"}, "9.3", "medium", "runs as root"),
])
def test_single_violations(cfg, over, rule, severity, words):
    findings = audit_compose(svc(**over), cfg)
    assert [(f.rule, f.severity) for f in findings] == [(rule, severity)], findings
    assert words in findings[0].message


def test_missing_keys_are_violations_too(cfg):
    doc = {"services": {"bare": {"image": "x"}}}
    assert {f.rule for f in audit_compose(doc, cfg)} == {"1.1", "2.2", "9.3"}
    # no restart at all: Docker's "no" restarts nothing, so it cannot loop


def test_bounded_restarts_and_gateway_ports_pass(cfg):
    ok = svc(deploy={"resources": {"limits": {"memory": "512m"}, "reservations": {"memory": "256m"}},
                     "restart_policy": {"condition": "on-failure", "max_attempts": 3, "window": "300s"}},
             restart="on-failure:3")
    assert audit_compose(ok, cfg) == []
    gateway = svc(labels={"supervisor.gateway": "true"}, ports=["80:8000", "443:8443"])
    assert audit_compose(gateway, cfg) == []


def test_class_comes_from_label_name_image_or_else_from_the_ports(cfg):
    # no label and no rule names a class: the port's range says critical (10100-10199)
    assert audit_compose(svc(ports=["10150:10150"]), cfg) == []
    # a label says standard: the same port is out of range
    labelled = svc(ports=["10150:10150"], labels=["supervisor.class=standard"])
    assert [f.rule for f in audit_compose(labelled, cfg)] == ["5.1"]
    # the name rule says infrastructure (postgres*): 10250 is outside 10000-10099
    named = {"services": {"postgres": svc()["services"]["s"]}}
    assert "infrastructure" in audit_compose(named, cfg)[0].message


def test_ollama_service_is_held_to_rule_12_1(cfg):
    doc = svc(image="ollama/ollama:latest", ports=["127.0.0.1:10134:11434"],
              environment=["OLLAMA_NUM_PARALLEL=8"])
    msgs = sorted(f.message for f in audit_compose(doc, cfg) if f.rule == "12.1")
    assert msgs == ["OLLAMA_MAX_LOADED_MODELS is not set (Rule 12.1: 1)",
                    "OLLAMA_NUM_PARALLEL is 8, not 2",
                    "no CPU limit (Rule 12.1: at most 4 cores)"]
    doc["services"]["s"].update(environment={"OLLAMA_NUM_PARALLEL": 2, "OLLAMA_MAX_LOADED_MODELS": 1},
                                cpus=6)
    assert [f.message for f in audit_compose(doc, cfg)] == ["CPU limit 6 cores is above 4"]


def test_port_and_size_syntax():
    assert parse_port("8080:80") == [8080]
    assert parse_port("127.0.0.1:8000:8000/udp") == [8000]
    assert parse_port("[::1]:3000:3000") == [3000]
    assert parse_port("127.0.0.1::80") == [None]
    assert parse_port("80") == [None] and parse_port(80) == [None]
    assert parse_port("10200-10202:80-82") == [10200, 10201, 10202]
    assert parse_port({"target": 80, "published": 8080}) == [8080]
    assert parse_port("${PORT:-10250}:10250") == [10250]
    for bad in ("${PORT}:80", "a:b", "70000:80", "1:2:3:4"):
        with pytest.raises(ValueError):
            parse_port(bad)
    assert parse_compose_size("2Gi") == 2 * 2**30
    assert parse_compose_size("512m") == 512 * MIB
    assert parse_compose_size("1.5GB") == int(1.5 * 2**30)
    assert parse_compose_size(1024) == 1024
    with pytest.raises(ValueError):
        parse_compose_size("lots")


def test_a_broken_compose_file_is_a_clear_error(cfg, tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("services:\n  a: [unclosed\n")
    with pytest.raises(AuditError, match="not valid YAML"):
        load_compose(str(bad))
    with pytest.raises(AuditError, match="no such file"):
        load_compose(str(tmp_path / "missing.yml"))
    with pytest.raises(AuditError, match="no 'services:' mapping"):
        audit_compose({"version": "3"}, cfg)
    with pytest.raises(AuditError, match="service 'a' is not a mapping"):
        audit_compose({"services": {"a": ["x"]}}, cfg)


def test_running_container_audit(cfg):
    info = ContainerInfo(id="f" * 64, name="web", image="busybox", labels={}, state="running",
                         pid=1, memory_limit_bytes=0, ports=(("80/tcp", "0.0.0.0", 8080),),
                         restart_policy="always", user="", has_healthcheck=False,
                         env=("OLLAMA_CPU_LIMIT=4",), cgroup_parent="resource-supervisor/standard")
    assert pairs(audit_container(info, cfg)) == {("web", r) for r in
                                                 ("1.1", "2.2", "2.3", "5.2", "9.3", "12.1")}
    good = ContainerInfo(id="e" * 64, name="web", image="busybox", labels={}, state="running",
                         pid=1, memory_limit_bytes=512 * MIB, memory_reservation_bytes=256 * MIB,
                         ports=(("10250/tcp", "127.0.0.1", 10250),), restart_policy="on-failure",
                         user="1000", has_healthcheck=True, healthcheck_interval_s=30.0,
                         healthcheck_timeout_s=10.0, cgroup_parent="/resource-supervisor/standard")
    assert audit_container(good, cfg) == []
    outside = ContainerInfo(id="d" * 64, name="web", image="busybox", labels={}, state="running",
                            pid=1, memory_limit_bytes=512 * MIB, memory_reservation_bytes=256 * MIB,
                            user="1000", has_healthcheck=True, healthcheck_interval_s=30.0,
                            healthcheck_timeout_s=10.0, cgroup_parent="")
    assert [(f.rule, f.severity) for f in audit_container(outside, cfg)] == [("1.3", "low")]


def test_a_running_containers_health_check_is_judged_by_rule_2_2(cfg):
    """Interval and timeout as inspect gives them; Docker's defaults where unset."""
    def info(interval_s, timeout_s):
        return ContainerInfo(id="f" * 64, name="web", image="busybox", labels={},
                             state="running", pid=1, memory_limit_bytes=512 * MIB,
                             memory_reservation_bytes=256 * MIB, restart_policy="on-failure",
                             user="1000", has_healthcheck=True, healthcheck_interval_s=interval_s,
                             healthcheck_timeout_s=timeout_s,
                             cgroup_parent="/resource-supervisor/standard")
    assert audit_container(info(30.0, 10.0), cfg) == []
    slow = [f for f in audit_container(info(120.0, 0.0), cfg) if f.rule == "2.2"]
    assert sorted(f.message for f in slow) == [
        "health check interval 120s: Rule 2.2 says 30s",
        "health check timeout not set (Docker's default 30s): Rule 2.2 says 10s"]


def test_a_limit_the_supervisor_gave_is_a_mitigation_not_compliance(cfg):
    def info(limit, reservation):
        return ContainerInfo(id="c" * 64, name="redis", image="lab/redis", labels={},
                             state="running", pid=1, memory_limit_bytes=limit,
                             memory_reservation_bytes=reservation, restart_policy="on-failure",
                             user="1000", has_healthcheck=True, healthcheck_interval_s=30.0,
                             healthcheck_timeout_s=10.0,
                             cgroup_parent="/resource-supervisor/infrastructure")
    given = {"given_bytes": 256 * MIB, "declared_bytes": 0}
    findings = audit_container(info(256 * MIB, 128 * MIB), cfg, given)
    assert [(f.rule, f.severity) for f in findings] == [("1.1", "high")]
    assert "given by resource-supervisor, not declared" in findings[0].message
    assert "256.0MiB" in findings[0].message
    # Without the record the same container reads as compliant: the record is what tells.
    assert audit_container(info(256 * MIB, 128 * MIB), cfg) == []
    # The owner has since set a limit of their own (docker update): judged as declared.
    assert audit_container(info(512 * MIB, 256 * MIB), cfg, given) == []
    # A declared limit the supervisor replaced (raised to the floor): a note, not a breach.
    raised = audit_container(info(320 * MIB, 160 * MIB), cfg,
                             {"given_bytes": 320 * MIB, "declared_bytes": 128 * MIB})
    assert [(f.rule, f.severity) for f in raised] == [("1.1", "low")]
    assert "in place of the declared 128.0MiB" in raised[0].message


def test_rule_2_2_values_and_rule_2_3_loops_on_a_compose_file(cfg):
    path = COMPOSE / "healthcheck-values-and-restart-loops.yml"
    findings = audit_compose(load_compose(str(path)), cfg, path.name)
    got = sorted((f.target, f.rule, f.severity, f.message) for f in findings)
    assert [(t, r, s) for t, r, s, _ in got] == [
        ("docker-defaults", "2.2", "low", ),
        ("docker-defaults", "2.2", "medium"),
        ("long-timeout-many-retries", "2.2", "medium"),
        ("long-timeout-many-retries", "2.2", "medium"),
        ("on-failure-without-maximum", "2.3", "medium"),
        ("slow-interval", "2.2", "medium"),
        ("unless-stopped-alone", "2.3", "medium"),
        ("unreadable-interval", "2.2", "low"),
    ]
    msgs = {(t, m) for t, _, _, m in got}
    assert ("slow-interval", "health check interval 120s: Rule 2.2 says 30s") in msgs
    assert ("docker-defaults", "health check timeout not set (Docker's default 30s): "
                               "Rule 2.2 says 10s") in msgs
    assert ("docker-defaults", "health check start period not set (Docker's default 0s): "
                               "Rule 2.2 says 60s") in msgs
    assert ("long-timeout-many-retries", "health check retries 10: Rule 2.2 says 3") in msgs
    assert ("unreadable-interval", "health check interval 'soon' cannot be read") in msgs
    loop = next(m for t, _, _, m in got if t == "unless-stopped-alone")
    # The advice cannot loop: on-failure with a maximum, never unless-stopped.
    assert "on-failure with a maximum" in loop and "use unless-stopped" not in loop


def supctl(*args):
    return subprocess.run([sys.executable, "-m", "supervisor.cli", *args], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)


def test_supctl_audit_compose_reports_each_violation_and_exits_5():
    cfg = str(shipped_config_path())
    r = supctl("audit", "--compose", str(COMPOSE / "violations.yml"), "-c", cfg)
    assert r.returncode == 5, r.stderr
    rows = [ln.split(None, 3) for ln in r.stdout.splitlines()[1:-1]]
    assert {(row[2], row[1]) for row in rows} == {
        ("no-memory-limit", "1.1"), ("no-healthcheck", "2.2"), ("restart-always", "2.3"),
        ("forbidden-port", "5.2"), ("port-outside-class", "5.1"), ("runs-as-root", "9.3"),
        ("ollama", "12.1")}
    assert r.stdout.splitlines()[-1] == ("7 finding(s) in 8 audited: 2 critical, 2 high, "
                                         "3 medium")
    ok = supctl("audit", "--compose", str(COMPOSE / "compliant-template.yml"), "-c", cfg)
    assert (ok.returncode, ok.stdout.strip()) == (0, "compliant: no findings in 1 audited")
    js = supctl("audit", "--json", "--compose", str(COMPOSE / "violations.yml"), "-c", cfg)
    body = json.loads(js.stdout)
    assert {f["rule"] for f in body["findings"]} == {"1.1", "2.2", "2.3", "5.1", "5.2", "9.3", "12.1"}


def test_supctl_audit_compose_on_a_bad_file_says_why(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("services: [1, 2]\n")
    r = supctl("audit", "--compose", str(bad), "-c", str(shipped_config_path()))
    assert r.returncode == 1 and "not a compose file" in r.stderr and not r.stdout
