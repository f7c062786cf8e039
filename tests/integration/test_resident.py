"""Resident memory told truly, on the real engine and kernel: a PostgreSQL 15 whose shared
buffers hold a table (shmem, which no reclaim can release without swap) is hibernated
through the control API; the journal's note and `supctl status` say what stays resident
as anonymous memory + shmem + the rest, and it is at least the shmem the kernel counts."""

import re
import uuid

import pytest

from . import test_lab_images as lab_images
from ._procs import daemon_thread
from _testkit import RUN_ID, TEST_LABEL, wait_for
from supervisor.adapters.cgroups import CgroupFS, stat_value
from supervisor.publish.control import request

MIB = 2**20
NOTE = re.compile(r"([\d.]+) MiB stays resident \(([\d.]+) MiB anonymous, ([\d.]+) MiB shmem, "
                  r"([\d.]+) MiB other\)")


@pytest.fixture(scope="module")
def lab(docker_host):
    return lab_images.build_lab_images(docker_host)


def api(cfg, method, url, body=None):
    return request(cfg.settings.control.socket, method, url, body)


def test_a_hibernated_postgres_reports_its_shared_buffers_as_resident(make_config, lab,
                                                                      docker_client, containers):
    cfg, path = make_config({"classes": {
        "standard": {"pool": "standard", "cpuset": "any", "memory_limit": "512MiB",
                     "memory_min": "8MiB", "idle_after": "1h"}}})
    pg = docker_client.containers.run(
        "lab/postgres", name=f"rs-pg-{uuid.uuid4().hex[:8]}", labels={TEST_LABEL: RUN_ID},
        network_mode="none", healthcheck=lab_images.FAST_HEALTH, detach=True)
    containers.made.append(pg)
    wait_for(lambda: lab.psql(pg, "select 1").stdout == "1\n", 60, 0.05, what="postgres up")
    # ~24 MiB of table read through shared buffers (128 MiB: no ring buffer for a table
    # under a quarter of them), which live in shared memory: shmem
    r = lab.psql(pg, "create table filler as select g, repeat('x', 200) as pad "
                     "from generate_series(1, 100000) g; select count(*) from filler")
    assert r.stdout.strip().endswith("100000"), r.stderr
    fs = CgroupFS()
    pg.reload()
    loc = fs.locate(pg.id, pg.attrs["State"]["Pid"], pg.attrs["HostConfig"]["CgroupParent"])
    shmem_key = "shmem" if loc.version == 2 else "total_shmem"
    wait_for(lambda: stat_value(fs.read_file(loc, "memory", "memory.stat"), shmem_key) > 16 * MIB,
             20, what="shared buffers in shmem")

    with daemon_thread(cfg, path):
        # force: the image's health check, every 0.3 s here, holds a loopback connection
        # to 5432 now and then, which the idle check counts as a stream moving data (one
        # CI run). This test is about what stays resident; test_health_hibernation.py
        # proves the idle check around health checks.
        code, body = api(cfg, "POST", "/hibernate", {"name": pg.name, "force": True})
        assert code == 200 and body["hibernated"] is True, body
        print(f"\nlab/postgres hibernated: {body['detail']}")
        # what the kernel says while it is paused, after the release
        shmem = stat_value(fs.read_file(loc, "memory", "memory.stat"), shmem_key)
        usage = fs.read_usage(loc).memory_usage_bytes
        resident = body["resident"]
        assert shmem > 16 * MIB
        assert abs(resident["shmem_bytes"] - shmem) < MIB
        assert resident["total_bytes"] >= resident["shmem_bytes"] + resident["anon_bytes"]
        assert resident["total_bytes"] >= shmem
        assert abs(resident["total_bytes"] - usage) < 4 * MIB  # nothing more is released

        # the note in the journal's detail says the same, in MiB
        total, anon, shm, other = (float(x) for x in NOTE.search(body["detail"]).groups())
        assert shm >= 16 and total >= shm + anon
        assert abs(total - resident["total_bytes"] / MIB) < 0.1
        # Status is the report of a pass: the one after the hibernation finished (a pass
        # that ran while it was under way shows it recorded, before its memory release).
        def done_row():
            code, st = api(cfg, "GET", "/status")
            rows = [r for r in st.get("hibernation", {}).get("containers", [])
                    if r["id"] == pg.id[:12] and (r.get("resident") or {}).get("shmem_bytes")]
            return rows[0] if rows else None
        row = wait_for(done_row, 10, what="the hibernation's resident memory in status")
        assert row["resident_bytes"] == resident["total_bytes"] >= row["resident"]["shmem_bytes"]
        assert NOTE.search(row["memory"]).groups() == (f"{total:.1f}", f"{anon:.1f}",
                                                        f"{shm:.1f}", f"{other:.1f}")

        code, body = api(cfg, "POST", "/wake", {"name": pg.name})
        assert code == 200 and body["woken"] is True
        assert lab.psql(pg, "select count(*) from filler").stdout == "100000\n"
