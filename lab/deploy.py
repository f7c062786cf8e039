"""The service lab's deployment: a SutazAI-shaped host (issue 15) as a compose file, and
the supervisor's config scaled to it.

Pure: nothing here touches Docker, files or the host. ``scripts/lab-run`` writes what
these functions return.

The shape follows the rules (``/work/shared/seeds``): Rule 2.1's three phases (phase 1:
infrastructure and critical services, phase 2: performance agents, phase 3: specialised
agents), each phase started once the one before is healthy (``depends_on: condition:
service_healthy``), every service with a Rule 2.2 health check, some with Rule 1.1
limits (``mem_limit`` + ``mem_reservation`` at 50-75 %) and some without, Rule 2.3's
bounded restarts (``on-failure:3``), and classes given the ways operators write them: a
``supervisor.class`` label on some, compose service names (``postgres``, ``ollama``,
``orchestrator-N``) or images (``session-cache`` runs Redis) on the others, the default
class for the rest.
Every service runs with ``network_mode: none``: clients reach a service inside its own
network namespace only.

Sizes: the lab is a small host of its own. Its pools are sized from what the services use
(the reference host's pools hold 110 services in 28 GiB; these agents use ~10 MiB each,
so the lab's pools are a few GiB at most), the lab's emergency reserve is the rules' share
of it (1.38 / 29.38), and the workload's growth (the leak, Redis) is bounded so the run
without the supervisor presses the lab's pools and reserve without coming near the
machine's own memory (``check_fits``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

MIB = 1 << 20
GIB = 1 << 30
RUN_LABEL = "org.resource-supervisor.lab"
ROLE_LABEL = "org.resource-supervisor.lab.role"
CLASS_LABEL = "supervisor.class"
AGENT_PORT = 10210
OLLAMA_IMAGE = "ollama/ollama:lab"
OLLAMA_PORT = 11434
# The rules' reference host: pools 28 GiB + reserve 1.38 GiB (Rule 1.3).
REF_POOLS_GIB = 28.0
REF_RESERVE_GIB = 1.38


@dataclass(frozen=True)
class Scale:
    """How big the lab is and how long its timeline runs."""

    name: str
    critical_agents: int      # phase 1 besides postgres, redis and ollama
    perf_agents: int          # phase 2
    spec_agents: int          # phase 3 besides the agent-owned PostgreSQL and Redis
    health_interval_s: int    # Rule 2.2 says 30 s; shorter for CI
    idle_after_s: int         # the lab config's idle_after (shipped: 5 m)
    settle_s: int             # the lab config's history.settle (shipped: 60 s)
    # timeline, seconds from its start
    solo_s: int               # critical requests with the host otherwise idle
    hog_s: int                # then the same requests while Ollama burns CPU
    leak_at_s: int
    leak_mib_per_s: int
    redis_at_s: int
    redis_steps: int
    stale_at_s: int
    back_at_s: int            # idle agents come back (real clients)
    end_s: int
    wakes_per_client: int     # real-client requests per woken service
    per_agent_mib: int = 24   # pool room per agent (about twice what one holds)

    @property
    def phases(self) -> tuple[int, int, int]:
        return (3 + self.critical_agents, self.perf_agents, self.spec_agents + 2)


SCALES = {
    # CI: 4 + 4 + 10, the whole invocation (both legs) within a few minutes
    "small": Scale("small", critical_agents=1, perf_agents=4, spec_agents=8,
                   health_interval_s=5, idle_after_s=20, settle_s=15,
                   solo_s=15, hog_s=25, leak_at_s=20, leak_mib_per_s=12, redis_at_s=25,
                   redis_steps=4, stale_at_s=30, back_at_s=82, end_s=110,
                   wakes_per_client=2),
    # the rules' 15 + 25 + 70
    "full": Scale("full", critical_agents=12, perf_agents=25, spec_agents=68,
                  health_interval_s=30, idle_after_s=120, settle_s=60,
                  solo_s=45, hog_s=90, leak_at_s=120, leak_mib_per_s=16, redis_at_s=140,
                  redis_steps=8, stale_at_s=200, back_at_s=200, end_s=330,
                  wakes_per_client=3),
}


@dataclass(frozen=True)
class Service:
    name: str                  # compose service name
    image: str
    phase: int                 # 1, 2, 3 (Rule 2.1)
    cls: str                   # the class the supervisor should find
    class_by: str              # label | name | image | default
    role: str = "idle"         # idle | active | critical | leaker | stale | hog | infra | store
    env: dict = field(default_factory=dict)
    mem_limit_bytes: int | None = None   # Rule 1.1 limit in compose (the owner's)

    @property
    def pool(self) -> str:
        return self.cls

    @property
    def kind(self) -> str:
        """agent | ollama | postgres | redis: the lab image it runs."""
        return self.image.split("/")[-1].split(":")[0]


@dataclass(frozen=True)
class Sizing:
    """The lab's memory: pool budgets, class default limits, the reserve, the workload's
    bounded growth."""

    budgets: dict             # pool -> bytes
    class_limits: dict        # class -> default memory_limit bytes
    reserve_bytes: int        # the lab's emergency reserve
    leak_bytes: int           # the leaking agent holds at most this
    redis_bytes: int          # Redis grows by at most this
    warm_bytes: int           # what the stale-limit agent holds from its start
    stale_limit_bytes: int    # the too-small limit it is restarted with

    @property
    def pools_bytes(self) -> int:
        return sum(self.budgets.values())

    @property
    def lab_bytes(self) -> int:
        """The lab host's memory: pools + reserve (Rule 1.3)."""
        return self.pools_bytes + self.reserve_bytes


def agent_env(**kw) -> dict:
    return {k: str(v) for k, v in kw.items()}


def services(scale: Scale) -> list[Service]:
    """The deployment, phase by phase. Roles: ``critical`` answers the timed requests,
    ``hog`` is Ollama, ``leaker`` leaks, ``stale`` is restarted with a too-small limit,
    ``active`` agents get client traffic all along (never idle), ``idle`` ones get none
    until they come back; ``store`` is an agent's own PostgreSQL or Redis (standard class,
    hibernates like the agents; woken by psql / redis-cli)."""
    out = [
        Service("postgres", "lab/postgres", 1, "infrastructure", "name", "infra",
                mem_limit_bytes=96 * MIB),
        # named for its use, so only its image (redis) says it is infrastructure
        Service("session-cache", "lab/redis", 1, "infrastructure", "image", "infra"),
        # lab/ollama tagged as Ollama's own image (scripts/lab-run tags it in the lab
        # engine): the supervisor finds an Ollama by image or container name, and a compose
        # container is named <project>_ollama_1
        Service("ollama", OLLAMA_IMAGE, 1, "critical", "name", "hog",
                env=agent_env(OLLAMA_NUM_PARALLEL=2, OLLAMA_MAX_LOADED_MODELS=1,
                              LAB_OLLAMA_MS_PER_TOKEN=20, LAB_OLLAMA_RESIDENT_MB=32),
                mem_limit_bytes=128 * MIB),
    ]
    for i in range(1, scale.critical_agents + 1):
        # half by name (*orchestrator*), half by label; the first serves the timed requests
        if i % 2:
            out.append(Service(f"orchestrator-{(i + 1) // 2}", "lab/agent", 1, "critical", "name",
                               "critical" if i == 1 else "active",
                               mem_limit_bytes=48 * MIB if i % 4 == 3 else None))
        else:
            out.append(Service(f"core-agent-{i // 2}", "lab/agent", 1, "critical", "label",
                               "idle" if i % 3 else "active"))
    for i in range(1, scale.perf_agents + 1):
        role = {1: "leaker", 2: "stale"}.get(i, "active" if i % 4 == 0 else "idle")
        env = {}
        limit = 32 * MIB if i % 3 == 0 else None
        if role == "stale":
            env = agent_env(AGENT_WARM_MB=24)
        out.append(Service(f"perf-agent-{i}", "lab/agent", 2, "standard",
                           "label" if i % 2 else "default", role, env, limit))
    out.append(Service("spec-pgstore", "lab/postgres", 3, "standard", "label", "store",
                       mem_limit_bytes=96 * MIB))
    out.append(Service("spec-cache", "lab/redis", 3, "standard", "label", "store"))
    for i in range(1, scale.spec_agents + 1):
        role = "active" if i % 4 == 0 else "idle"
        env = agent_env(AGENT_BEHAVIOUR="bursty", AGENT_BURST_MS=50, AGENT_BURST_EVERY_S=10) \
            if i % 8 == 0 else {}
        out.append(Service(f"spec-agent-{i}", "lab/agent", 3, "standard",
                           "label" if i % 5 == 0 else "default", role, env,
                           32 * MIB if i % 3 == 0 else None))
    return out


def sizing(scale: Scale, svcs: list[Service]) -> Sizing:
    """Pools sized like the rules' (what their members' limits add up to), the reserve
    the rules' share of the lab, and growth that presses them without the supervisor:
    the leak alone takes the standard pool past its budget and the lab into its reserve."""
    by_pool: dict[str, list[Service]] = {"infrastructure": [], "critical": [], "standard": []}
    for s in svcs:
        by_pool[s.pool].append(s)
    per = scale.per_agent_mib * MIB
    redis_bytes = (48 if scale.name == "small" else 192) * MIB
    class_limits = {
        "infrastructure": redis_bytes + 96 * MIB,
        "critical": 32 * MIB,
        "standard": 20 * MIB,
        "monitoring": 32 * MIB,
    }

    def pool_budget(pool: str) -> int:
        total = 0
        for s in by_pool[pool]:
            if s.role == "leaker":
                total += class_limits[pool]  # its owner's limit is far beyond its share
            elif s.mem_limit_bytes:
                total += s.mem_limit_bytes
            elif pool == "standard":
                total += per
            else:
                total += class_limits[pool]
        return total + 32 * MIB

    budgets = {p: pool_budget(p) for p in by_pool}
    budgets["monitoring"] = 32 * MIB
    pools = sum(budgets.values())
    reserve = int(pools * REF_RESERVE_GIB / REF_POOLS_GIB)
    # what the services hold at rest, roughly: ~10 MiB an agent, PostgreSQL ~30 MiB
    resting = sum(30 * MIB if s.kind == "postgres" else 10 * MIB for s in svcs)
    # the leak: past the lab's pools altogether (into the reserve) with room to spare
    leak = _round_mib(pools - resting - redis_bytes + reserve + max(96 * MIB, pools // 10))
    return Sizing(budgets=budgets, class_limits=class_limits, reserve_bytes=reserve,
                  leak_bytes=leak, redis_bytes=redis_bytes, warm_bytes=24 * MIB,
                  stale_limit_bytes=24 * MIB)


def _round_mib(n: int) -> int:
    return max(MIB, (int(n) + MIB - 1) // MIB * MIB)


def check_fits(size: Sizing, available_bytes: int, share: float = 0.5) -> str | None:
    """Why the lab may not run on a machine with ``available_bytes`` free (None: it fits).
    Without the supervisor nothing stops the workload, so everything it can hold at once
    (the lab's host memory + the leak + Redis) must stay under ``share`` of what is free."""
    peak = size.lab_bytes + size.leak_bytes + size.redis_bytes
    if peak > available_bytes * share:
        return (f"the lab can hold {peak / GIB:.2f} GiB at its peak; this machine has "
                f"{available_bytes / GIB:.2f} GiB available (the lab may use {share:.0%} of it): "
                f"use --scale small")
    return None


def reservation(limit_bytes: int) -> int:
    """Rule 1.1: a reservation at 50-75 % of the limit (here 50 %)."""
    return limit_bytes // 2


def healthcheck(s: Service, interval_s: int) -> dict:
    """Rule 2.2's check (the image's own test, written out), at the scale's interval."""
    tests = {
        "agent": ["CMD-SHELL", f"curl -fsS -o /dev/null http://127.0.0.1:{AGENT_PORT}/health"],
        "ollama": ["CMD-SHELL", f"curl -fsS -o /dev/null http://127.0.0.1:{OLLAMA_PORT}/api/version"],
        "postgres": ["CMD", "pg_isready", "-q", "-h", "127.0.0.1", "-U", "postgres"],
        "redis": ["CMD-SHELL", "redis-cli -h 127.0.0.1 ping | grep -qx PONG"],
    }
    return {"test": tests[s.kind], "interval": f"{interval_s}s", "timeout": "10s",
            "retries": 3, "start_period": "60s"}


def compose(svcs: list[Service], scale: Scale, run: str, cgroup_parent: str,
            size: Sizing) -> dict:
    """The compose file (version 2.4: Debian's docker-compose 1.29 honours mem_limit,
    cgroup_parent and depends_on conditions there)."""
    phase_names = {p: [s.name for s in svcs if s.phase == p] for p in (1, 2, 3)}
    out = {}
    for s in svcs:
        env = dict(s.env)
        if s.role == "leaker":
            env.update(AGENT_LEAK_MB_PER_S=str(scale.leak_mib_per_s),
                       AGENT_LEAK_MAX_MB=str(size.leak_bytes // MIB))
        labels = {RUN_LABEL: run, ROLE_LABEL: s.role}
        if s.class_by == "label":
            labels[CLASS_LABEL] = s.cls
        svc = {
            "image": s.image,
            "network_mode": "none",
            "labels": labels,
            "healthcheck": healthcheck(s, scale.health_interval_s),
            "restart": "on-failure:3",
            "cgroup_parent": f"/{cgroup_parent}/{s.pool}",
            "stop_grace_period": "5s",
        }
        if env:
            svc["environment"] = env
        limit = s.mem_limit_bytes
        if s.role == "leaker":
            # its owner gave it room for its leak (so without the supervisor it is never
            # OOM-killed; the leak is bounded in the agent itself)
            limit = size.leak_bytes + 64 * MIB
        if limit:
            svc["mem_limit"] = limit
            svc["memswap_limit"] = limit
            svc["mem_reservation"] = reservation(limit)
        if s.phase > 1:
            svc["depends_on"] = {n: {"condition": "service_healthy"}
                                 for n in phase_names[s.phase - 1]}
        out[s.name] = svc
    return {"version": "2.4", "services": out}


def scaled_cpuset(spec: str, cores: int, reference: int = 12) -> str:
    """The shipped ``scaled`` layout's cpuset for this host, written out exactly (the lab
    config is ``exact`` because its pools are the lab's, not the reference host's)."""
    from supervisor.model.config import scale_cores  # the daemon's own scaling
    from supervisor.model.units import parse_cpuset
    return ",".join(str(c) for c in scale_cores(tuple(parse_cpuset(spec)), reference, cores))


def lab_config(shipped: dict, scale: Scale, size: Sizing, *, run: str, cores: int,
               state_dir: str, metrics_listen: str, control_socket: str, docker_host: str,
               cgroup_parent: str, overlay: dict) -> dict:
    """The shipped config scaled to the lab: ``overlay`` (lab/supervisor-lab.toml) on top
    of config/supervisor.toml, then what depends on the lab's size and this run."""
    import copy
    data = copy.deepcopy(shipped)
    _merge(data, overlay)
    ref_cores = int(shipped.get("host", {}).get("reference_cores", 12))
    data["host"]["layout"] = "exact"
    for name, cls in data["classes"].items():
        if cls.get("cpuset", "any") != "any":
            cls["cpuset"] = scaled_cpuset(cls["cpuset"], cores, ref_cores)
        if name in size.class_limits:
            cls["memory_limit"] = f"{size.class_limits[name] // MIB}MiB"
            cls["memory_min"] = "16MiB"
        if cls.get("hibernate", False) and "idle_after" in cls:
            cls["idle_after"] = f"{scale.idle_after_s}s"
    for pool, budget in size.budgets.items():
        data["pools"].setdefault(pool, {})["budget"] = f"{budget // MIB}MiB"
    data.setdefault("history", {})["settle"] = f"{scale.settle_s}s"
    # Ollama's "at most 4 CPUs" is a third of the reference host's 12
    ol = data["ollama"]
    ol["cpu_cores"] = round(float(ol["cpu_cores"]) * cores / ref_cores, 2)
    ol["throttled_cpu_cores"] = round(float(ol["throttled_cpu_cores"]) * cores / ref_cores, 2)
    data["state_dir"] = state_dir
    data["manage"]["require_labels"] = {RUN_LABEL: run}
    data["docker"]["host"] = docker_host
    data["metrics"]["listen"] = metrics_listen
    data["control"]["socket"] = control_socket
    data["pool_cgroups"]["parent"] = cgroup_parent
    return data


def to_toml(data: dict, prefix: str = "") -> str:
    """A small TOML writer for the lab config (tables, strings, numbers, bools, lists)."""
    import json
    scalars, tables = [], []
    for k, v in data.items():
        key = k if all(ch.isalnum() or ch in "_-" for ch in k) else json.dumps(k)
        if isinstance(v, dict):
            tables.append((key, v))
        else:
            scalars.append(f"{key} = {_toml_value(v)}")
    out = "\n".join(scalars) + "\n"
    for key, v in tables:
        name = f"{prefix}.{key}" if prefix else key
        if not v:
            # an empty table written inline in its parent would need the parent's scalars;
            # a header with nothing under it means the same
            out += f"\n[{name}]\n"
            continue
        out += f"\n[{name}]\n" + to_toml(v, name)
    return out


def _toml_value(v) -> str:
    import json
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _merge(into: dict, extra: dict) -> None:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v
