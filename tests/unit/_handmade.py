"""Hand-made configs, snapshots and ticks for the pure decision code (no host needed)."""

from __future__ import annotations

import itertools

from _testkit import class_table, merge_sections
from supervisor.model.activity import ActivityView
from supervisor.observe.activity import ActivityTracker
from supervisor.policy.tick import Tick
from supervisor.model.config import HostFacts, load_config
from supervisor.observe.history import History
from supervisor.model.pools import account, reserve_state
from supervisor.model.snapshot import CgroupStats, ContainerInfo, ContainerSample, HostSample, Snapshot

MIB = 2**20
GIB = 2**30
_ids = itertools.count(1)


def config(cores: int = 4, memory: int = 8 * GIB, **over):
    """Two classes: infrastructure on core 0 (protected), standard on "any" core."""
    data = {
        "state_dir": "/nonexistent",
        "host": {"layout": "exact"},
        "reserve": {"emergency": "512MiB"},
        "pools": {"infrastructure": {"budget": "1GiB"}, "standard": {"budget": "100MiB"}},
        "classes": class_table(
            "infrastructure", "standard",
            infrastructure={"memory_min": "32MiB", "reservation_ratio": 0.75, "cpu_quota": 2.0,
                            "hibernate": True},
            standard={"memory_limit": "40MiB", "memory_min": "16MiB", "reservation_ratio": 0.5}),
        "manage": {"default_class": "standard"},
    }
    merge_sections(data, over)
    return load_config(data=data, host=HostFacts(cores=cores, memory_bytes=memory))


def container(name: str | None = None, *, cls: str = "standard", state: str = "running",
              limit: int = 0, reservation: int = 0, swap: int = 0, cpuset: str = "",
              quota_us: int = 0, period_us: int = 0, nano_cpus: int = 0,
              working_set: int = 1 * MIB, managed: bool = True, started_at: str = "",
              cid: str | None = None, labels: dict | None = None) -> ContainerSample:
    n = next(_ids)
    cid = cid or f"{n:064x}"
    name = name or f"c{n}"
    info = ContainerInfo(id=cid, name=name, image="busybox", labels=dict(labels or {}),
                         state=state, pid=1000 + n, cpuset_cpus=cpuset,
                         memory_limit_bytes=limit, memory_reservation_bytes=reservation,
                         memory_swap_bytes=swap, cpu_quota_us=quota_us, cpu_period_us=period_us,
                         nano_cpus=nano_cpus,
                         started_at=started_at or f"2026-11-01T00:00:{n % 60:02d}.{n:06d}Z")
    stats = CgroupStats(version=1, path=f"/sys/fs/cgroup/memory/docker/{cid}",
                        memory_usage_bytes=working_set, memory_working_set_bytes=working_set,
                        memory_limit_bytes=limit or None, cpuset_cpus=cpuset)
    return ContainerSample(info=info, class_name=cls, class_reason="label", managed=managed,
                           stats=stats if state in ("running", "paused", "restarting") else None)


def host(cores: int = 4, available: int = 6 * GIB, *, time_s: float = 1000.0,
         total: int = 8 * GIB, pressure: dict | None = None, cpu_seconds=(),
         cpu_busy_ratio=(), disks: dict | None = None, nets: dict | None = None) -> HostSample:
    """The host's side of a snapshot: ``available`` of ``total`` memory free, and no
    pressure, disks or networks unless given."""
    return HostSample(time_s=time_s, cores=cores, cpu_seconds=tuple(cpu_seconds),
                      cpu_busy_ratio=tuple(cpu_busy_ratio), memory_total_bytes=total,
                      memory_available_bytes=available, disks=dict(disks or {}),
                      nets=dict(nets or {}), pressure=dict(pressure or {}))


def snapshot(cfg, containers, *, now: float = 1000.0, host_sample: HostSample | None = None,
             cores: int | None = None, available: int = 6 * GIB, total: int = 8 * GIB,
             pressure: dict | None = None, engine_up: bool = True,
             cgroup_version: int = 1) -> Snapshot:
    """A snapshot of ``containers`` at ``now``: on ``host_sample`` as given, or on a host of
    ``cores`` (the config's unless given) with ``available`` of ``total`` memory free."""
    hs = host_sample or host(cfg.host.cores if cores is None else cores, available,
                             time_s=now, total=total, pressure=pressure)
    return Snapshot(time_s=now, host=hs, containers=tuple(containers), engine_up=engine_up,
                    cgroup_version=cgroup_version)


def tick(cfg, containers, *, reconcile: bool = True, events=(), overrides=None,
         history: History | None = None, now: float = 1000.0, available: int = 6 * GIB,
         activity: ActivityView | None = None, tracker: ActivityTracker | None = None,
         **snap) -> Tick:
    """A tick of ``containers`` at ``now`` (the snapshot as ``snapshot()`` makes it, with
    ``snap``'s host, pressure, engine and cgroup version). No activity is known (an empty
    view) unless given: ``activity`` as is, or ``tracker``'s view of this tick's snapshot
    (as the daemon takes it once per pass: feed one tracker tick after tick)."""
    s = snapshot(cfg, containers, now=now, available=available, **snap)
    if activity is None:
        activity = tracker.view(s) if tracker is not None else ActivityView()
    return Tick(snapshot=s, cfg=cfg, now=now, pools=account(s, cfg),
                reserve=reserve_state(s, cfg),
                history=history if history is not None else History(3600, 1.0),
                overrides=dict(overrides or {}), reconcile=reconcile, events=tuple(events),
                activity=activity)
