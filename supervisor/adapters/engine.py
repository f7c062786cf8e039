"""The one door to the Docker engine (Docker SDK). SDK and connection errors become
EngineUnavailable or ContainerGone here; callers never see docker.errors or requests.

Limits are set through Docker (``container.update``), not by writing cgroup files, so
``docker inspect`` keeps telling the truth (DESIGN: ~20 ms per update).
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from typing import Any, Iterator

import docker
import docker.errors
import requests.exceptions

from supervisor.model.errors import ContainerGone, EngineRefused, EngineUnavailable
from supervisor.model.snapshot import ContainerInfo

_CONN_ERRORS = (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                ConnectionError, TimeoutError, FileNotFoundError, OSError)


def _ports(bindings: dict | None) -> list[tuple[str, str, int]]:
    """(container port, host address, host port) of each binding."""
    out = []
    for cport, binds in (bindings or {}).items():
        for b in binds or ():
            try:
                out.append((cport, b.get("HostIp", ""), int(b.get("HostPort") or 0)))
            except (TypeError, ValueError):
                continue
    return out


def info_from_inspect(attrs: dict[str, Any]) -> ContainerInfo:
    """ContainerInfo from the engine's inspect JSON (GET /containers/{id}/json)."""
    cfg = attrs.get("Config") or {}
    hc = attrs.get("HostConfig") or {}
    st = attrs.get("State") or {}
    ports = (_ports((attrs.get("NetworkSettings") or {}).get("Ports"))
             or _ports(hc.get("PortBindings")))
    health = ((st.get("Health") or {}).get("Status")) or ""
    check = cfg.get("Healthcheck") or {}
    given = tuple(check.get("Test") or ())
    test = given if given != ("NONE",) else ()
    return ContainerInfo(
        id=attrs["Id"], name=(attrs.get("Name") or "").lstrip("/"),
        image=cfg.get("Image") or "", labels=dict(cfg.get("Labels") or {}),
        state=st.get("Status") or "unknown", pid=int(st.get("Pid") or 0),
        cpuset_cpus=hc.get("CpusetCpus") or "", memory_limit_bytes=int(hc.get("Memory") or 0),
        memory_reservation_bytes=int(hc.get("MemoryReservation") or 0),
        memory_swap_bytes=int(hc.get("MemorySwap") or 0), nano_cpus=int(hc.get("NanoCpus") or 0),
        cpu_quota_us=int(hc.get("CpuQuota") or 0), cpu_period_us=int(hc.get("CpuPeriod") or 0),
        cgroup_parent=hc.get("CgroupParent") or "",
        restart_policy=((hc.get("RestartPolicy") or {}).get("Name")) or "",
        restart_count=int(attrs.get("RestartCount") or 0), started_at=st.get("StartedAt") or "",
        finished_at=st.get("FinishedAt") or "", exit_code=int(st.get("ExitCode") or 0),
        oom_killed=bool(st.get("OOMKilled")),
        health=health, env=tuple(cfg.get("Env") or ()), ports=tuple(ports),
        user=cfg.get("User") or "", has_healthcheck=bool(test),
        network_mode=hc.get("NetworkMode") or "", healthcheck_test=test,
        # Docker's durations are ns; 0 = its default of 30 s
        healthcheck_interval_s=int(check.get("Interval") or 0) / 1e9 or 30.0 if given else 0.0,
        healthcheck_timeout_s=int(check.get("Timeout") or 0) / 1e9 or 30.0 if given else 0.0)


class Engine:
    """Thin wrapper around a DockerClient. ``calls`` counts every engine call by kind so
    tests and metrics can see, e.g., that a correct container received no update."""

    def __init__(self, base_url: str = "", timeout_s: float = 10.0):
        self.base_url = base_url
        self.timeout_s = timeout_s
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._client: docker.DockerClient | None = None

    def _c(self) -> docker.DockerClient:
        with self._lock:
            if self._client is None:
                try:
                    if self.base_url:
                        self._client = docker.DockerClient(base_url=self.base_url, timeout=self.timeout_s)
                    else:
                        self._client = docker.from_env(timeout=self.timeout_s)
                except docker.errors.DockerException as e:
                    raise EngineUnavailable(str(e)) from None
            return self._client

    def reset(self) -> None:
        with self._lock:
            if self._client is not None:
                with contextlib.suppress(*_CONN_ERRORS):
                    self._client.close()
            self._client = None

    def _call(self, kind: str, fn, *args, **kw):
        self.calls[kind] += 1
        try:
            return fn(*args, **kw)
        except docker.errors.NotFound as e:
            raise ContainerGone(str(e.explanation or e)) from None
        except docker.errors.APIError as e:
            # 409 on a container that is not running (e.g. update/pause of a dead one)
            if e.status_code == 409 and "is not running" in str(e.explanation or ""):
                raise ContainerGone(str(e.explanation)) from None
            raise
        except (docker.errors.DockerException, *_CONN_ERRORS) as e:
            raise EngineUnavailable(f"{kind}: {e}") from None

    def ping(self) -> bool:
        return bool(self._call("ping", lambda: self._c().ping()))

    def version(self) -> dict:
        return self._call("version", lambda: self._c().version())

    def list_containers(self) -> list[ContainerInfo]:
        """Every container, running or not, with full inspect data."""
        api = self._c().api

        def go():
            out = []
            for summary in api.containers(all=True):
                try:
                    out.append(info_from_inspect(api.inspect_container(summary["Id"])))
                except docker.errors.NotFound:
                    continue  # removed between list and inspect
            return out
        return self._call("list", go)

    def inspect(self, ident: str) -> ContainerInfo:
        return info_from_inspect(self.inspect_raw(ident))

    def inspect_raw(self, ident: str) -> dict:
        return self._call("inspect", lambda: self._c().api.inspect_container(ident))

    def events(self, since: float | None = None) -> Iterator[dict]:
        """Container events as dicts; blocks. Use a dedicated Engine for the stream."""
        stream = self._call("events", lambda: self._c().events(
            decode=True, since=int(since) if since else None, filters={"type": "container"}))
        self._stream = stream
        try:
            for ev in stream:
                yield ev
        except (docker.errors.DockerException, *_CONN_ERRORS) as e:
            raise EngineUnavailable(f"event stream: {e}") from None

    def close_events(self) -> None:
        stream = getattr(self, "_stream", None)
        if stream is not None:
            with contextlib.suppress(*_CONN_ERRORS):
                stream.close()

    def update(self, ident: str, **kw) -> None:
        """container.update(cpuset_cpus=…, mem_limit=…, mem_reservation=…, memswap_limit=…,
        cpu_quota=…, cpu_period=…, nano_cpus=…). Raises EngineRefused when the engine
        refuses the values."""
        nano_cpus = kw.pop("nano_cpus", None)

        def go() -> None:
            api = self._c().api
            if kw:
                api.update_container(ident, **kw)
            if nano_cpus is not None:
                # The SDK's update_container has no NanoCpus, and a container started with
                # --cpus refuses CpuQuota/CpuPeriod updates ("Conflicting options"): its
                # CPU limit changes only through NanoCpus (API POST /containers/{id}/update).
                res = api._post_json(api._url("/containers/{0}/update", ident),
                                     data={"NanoCpus": int(nano_cpus)})
                api._raise_for_status(res)
        self._refusable("update", go)

    def pause(self, ident: str) -> None:
        self._call("pause", lambda: self._c().api.pause(ident))

    def unpause(self, ident: str) -> None:
        self._call("unpause", lambda: self._c().api.unpause(ident))

    def stop(self, ident: str, timeout_s: int = 10) -> None:
        self._call("stop", lambda: self._c().api.stop(ident, timeout=timeout_s))

    def start(self, ident: str) -> None:
        self._call("start", lambda: self._c().api.start(ident))

    def events_between(self, since_s: int, until_s: int, ident: str = "") -> list[dict]:
        """Past container events (the engine keeps recent ones in memory), optionally of one
        container; returns at once. Hibernation asks whether a container it paused was
        unpaused by somebody else while the daemon was down."""
        filters: dict = {"type": "container"}
        if ident:
            filters["container"] = ident
        return self._call("events", lambda: list(self._c().events(
            since=int(since_s), until=int(until_s), filters=filters, decode=True)))

    # -- recreating a container (Ollama governor): create / rename / remove / networks

    def _refusable(self, kind: str, fn):
        try:
            return self._call(kind, fn)
        except docker.errors.APIError as e:
            raise EngineRefused(f"{kind} refused: {e.explanation or e}") from None

    def create(self, body: dict, name: str) -> str:
        """POST /containers/create with a whole body (Config fields + HostConfig +
        NetworkingConfig, the shapes inspect returns). Returns the new id."""
        res = self._refusable("create", lambda: self._c().api.create_container_from_config(body, name))
        return res["Id"]

    def rename(self, ident: str, name: str) -> None:
        self._refusable("rename", lambda: self._c().api.rename(ident, name))

    def remove(self, ident: str, force: bool = False) -> None:
        """Remove a container; its volumes are never removed (v=False)."""
        self._refusable("remove", lambda: self._c().api.remove_container(ident, v=False, force=force))

    def image_id(self, ref: str) -> str | None:
        """The id an image reference resolves to now, None when unknown."""
        try:
            return self._refusable("image", lambda: self._c().api.inspect_image(ref))["Id"]
        except ContainerGone:  # NotFound: no such image
            return None

    def connect_network(self, network: str, ident: str, endpoint: dict) -> None:
        """Attach a container to one more network with its old aliases/addresses."""
        ipam = endpoint.get("IPAMConfig") or {}
        self._refusable("connect", lambda: self._c().api.connect_container_to_network(
            ident, network, aliases=endpoint.get("Aliases") or None,
            ipv4_address=ipam.get("IPv4Address") or None,
            ipv6_address=ipam.get("IPv6Address") or None))

    @property
    def client(self) -> docker.DockerClient:
        """The raw SDK client, for a caller that needs a call this class does not offer."""
        return self._c()
