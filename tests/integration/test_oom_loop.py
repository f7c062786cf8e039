"""OOM restart loops on the real engine (issue 14), scaled down from the Redis of the issue
(420 MB under a 256 MiB class default, killed at every start): a container with restart
policy `always` that fills 40 MiB of /dev/shm a moment after each start, under the 24 MiB
class default the supervisor gives it at its first start.

Shown: the breach and placement's alert come within one tick of the second kill (every
restart brings a new cgroup, so the cgroup counters see nothing), `supctl status` exits 3
and /metrics says so; the limit the supervisor gave is raised (pool with room) or removed
(pool without), and the restarts stop; a limit its owner set is left alone (alert only).
"""

import time

from _testkit import metric_value, metrics_text, wait_for

from ._procs import daemon_thread
from supervisor.cli.supctl import EXIT_EXHAUSTED, health_code
from supervisor.model import rules
from supervisor.publish.status import build_status

MIB = 2**20
TICK_S = 1.0
# Let the supervisor place its limit first, then outgrow it: 40 MiB of shmem.
FILL = "sleep 2; head -c 40m /dev/zero > /dev/shm/fill; sleep 3600"


def oom_config(make_config, budget="2GiB"):
    return make_config({
        "pools": {"infrastructure": {"budget": "256MiB"}, "standard": {"budget": budget}},
        "classes": {"standard": {"pool": "standard", "cpuset": "any", "priority": 50,
                                 "memory_limit": "24MiB", "memory_min": "8MiB"}},
        "intervals": {"tick": f"{TICK_S}s", "reconcile": "5s"}})


def restarts(client, c) -> int:
    return client.api.inspect_container(c.id)["RestartCount"]


def host_memory(client, c) -> tuple[int, int]:
    hc = client.api.inspect_container(c.id)["HostConfig"]
    return hc["Memory"], hc["MemorySwap"]


def alerts(d, c, source):
    return [r for r in d.journal.recent(1000, kinds=["alert"])
            if r["target"] == c.id and r["source"] == source]


def of(body: str, family: str, c) -> float | None:
    """A per-container sample's value (whatever order its labels come in)."""
    for line in body.splitlines():
        if line.startswith(family + "{") and f'name="{c.name}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


def second_kill(d, c, timeout_s=60.0) -> float:
    times = wait_for(lambda: (t := d.inventory.oom_kill_times(c.id)) and len(t) >= 2 and t,
                     timeout_s, what="two OOM kills")
    return times[1]


def stays(client, c, seconds: float) -> int:
    """The restart count, once it has not moved for ``seconds``."""
    n = restarts(client, c)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(seconds)
        m = restarts(client, c)
        if m == n:
            return n
        n = m
    raise AssertionError(f"restarts never stopped (at {n})")


def test_a_loop_under_the_limit_the_supervisor_gave_is_alerted_at_once_and_raised(
        make_config, containers, docker_client):
    cfg, path = oom_config(make_config)
    with daemon_thread(cfg, path, serve=True) as d:
        c = containers.run(command=FILL, restart_policy={"Name": "always"})
        wait_for(lambda: host_memory(docker_client, c)[0] == 24 * MIB, 15,
                 what="the class default placed")
        kill2 = second_kill(d, c)
        # The ladder's breach and placement's word, within one tick of the second kill.
        ladder = wait_for(lambda: [r for r in alerts(d, c, "ladder")
                                   if r["params"].get("kind") == "oom"], 10, what="oom breach")
        own = wait_for(lambda: alerts(d, c, "placement"), 10, what="placement's alert")
        delay_s = min(ladder[0]["time_s"], own[0]["time_s"]) - kill2
        print(f"\nsecond kill -> alert: {delay_s * 1000:.0f} ms (tick {TICK_S:.0f} s); "
              f"ladder {(ladder[0]['time_s'] - kill2) * 1000:.0f} ms, "
              f"placement {(own[0]['time_s'] - kill2) * 1000:.0f} ms")
        assert delay_s <= TICK_S + 0.5
        assert "OOM restart loop" in ladder[0]["reason"]
        assert "the supervisor gave: raised to" in own[0]["reason"]
        # Raised by the rule book's rule: 24 MiB + 100 MB at least.
        want = rules.oom_raise_bytes(24 * MIB, None, None, cfg.settings.history.headroom)
        wait_for(lambda: host_memory(docker_client, c)[0] >= want, 10, what="limit raised")
        limit, swap = host_memory(docker_client, c)
        assert limit >= 24 * MIB + 100 * 1000 * 1000 and swap == limit
        raised = [r for r in d.journal.recent(1000, kinds=["place"])
                  if r["target"] == c.id and r["params"].get("limit_source") == "oom-raise"]
        assert raised and raised[-1]["outcome"] == "ok"
        # The restarts stop: the container keeps running with its 40 MiB.
        n = stays(docker_client, c, 6.0)
        assert docker_client.api.inspect_container(c.id)["State"]["Running"]
        print(f"restarts stopped at {n}; limit {limit // MIB} MiB")
        # While the kills are recent status exits 3 and /metrics shows the loop.
        st = build_status(d)
        assert c.name in st["oom"]["loops"] and health_code(st) == EXIT_EXHAUSTED
        row = next(r for r in st["containers"] if r["name"] == c.name)
        assert row["oom_kills_recent"] >= 2 and row["restart_count"] == n
        body = metrics_text(cfg.settings.metrics.listen)
        assert metric_value(body, "resource_supervisor_breaches_active", 'kind="oom"') == 1
        assert of(body, "resource_supervisor_container_oom_loop", c) == 1
        assert of(body, "resource_supervisor_container_oom_kills_recent", c) >= 2
        assert of(body, "resource_supervisor_container_restarts", c) == n


def test_without_room_for_a_raise_the_supervisor_removes_its_limit_and_the_loop_ends(
        make_config, containers, docker_client):
    cfg, path = oom_config(make_config, budget="64MiB")
    with daemon_thread(cfg, path, serve=True) as d:
        c = containers.run(command=FILL, restart_policy={"Name": "always"})
        wait_for(lambda: host_memory(docker_client, c)[0] == 24 * MIB, 15,
                 what="the class default placed")
        second_kill(d, c)
        own = wait_for(lambda: alerts(d, c, "placement"), 10, what="placement's alert")
        assert "removes its limit" in own[0]["reason"]
        host_total = rules.round_up_bytes(d.report.snapshot.host.memory_total_bytes)
        wait_for(lambda: host_memory(docker_client, c) == (host_total, host_total), 10,
                 what="limit removed (the host's memory)")
        n = stays(docker_client, c, 6.0)
        print(f"\nlimit removed ({host_total // MIB} MiB = the host's memory); restarts "
              f"stopped at {n}")
        # never given a limit again; status says so and exits 3
        time.sleep(2 * TICK_S)
        assert host_memory(docker_client, c)[0] == host_total
        st = build_status(d)
        assert st["oom"]["limit_removed"] == [c.name] and health_code(st) == EXIT_EXHAUSTED


def test_a_limit_its_owner_set_is_not_raised_only_alerted(make_config, containers, docker_client):
    cfg, path = oom_config(make_config)
    with daemon_thread(cfg, path, serve=True) as d:
        c = containers.run(command=FILL, restart_policy={"Name": "always"},
                           mem_limit="24m", memswap_limit="24m")
        second_kill(d, c)
        own = wait_for(lambda: alerts(d, c, "placement"), 10, what="placement's alert")
        assert "its owner set: not raised" in own[0]["reason"]
        wait_for(lambda: restarts(docker_client, c) >= 3, 30, what="the loop going on")
        assert host_memory(docker_client, c) == (24 * MIB, 24 * MIB)
        # placement may have set a reservation next to it, never another limit
        assert all(r["params"]["memory_limit_bytes"] in (None, 24 * MIB)
                   and not r["params"]["limit_source"].startswith("oom")
                   for r in d.journal.recent(1000, kinds=["place"]) if r["target"] == c.id)
        assert health_code(build_status(d)) == EXIT_EXHAUSTED
