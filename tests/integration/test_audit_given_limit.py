"""`supctl audit` on a running container whose only memory limit is the one the daemon
gave: a mitigation, reported as such (Rule 1.1), also after a daemon restart."""

from __future__ import annotations

from supervisor.publish.api import audit_report

from ._procs import daemon_stepped


def _findings(d, name):
    return [f for f in audit_report(d.report)["findings"] if f["target"] == name and f["rule"] == "1.1"]


def test_a_limit_the_daemon_gave_is_reported_as_given_not_declared(make_config, containers):
    c = containers.run()  # no memory limit declared
    cfg, path = make_config()
    with daemon_stepped(cfg, path) as d:
        for _ in range(3):
            d.run_once(reconcile=True)
        c.reload()
        assert c.attrs["HostConfig"]["Memory"] == 64 * 2**20  # the class default, given
        found = _findings(d, c.name)
        assert [f["severity"] for f in found] == ["high"], found
        assert "given by resource-supervisor, not declared" in found[0]["message"]
    with daemon_stepped(cfg, path) as d:  # the record is kept across a restart
        d.run_once(reconcile=True)
        assert "not declared" in _findings(d, c.name)[0]["message"]
