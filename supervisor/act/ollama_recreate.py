"""Recreating a container with a corrected environment, and rolling back when the new
one does not come up.

Ollama reads OLLAMA_NUM_PARALLEL and OLLAMA_MAX_LOADED_MODELS from its environment at
start, and a container's environment cannot change in place: the fix is a new container
made from the old one's inspect data with only the environment changed (same image,
name, command, entrypoint, mounts, ports, networks, labels, restart policy and resources).

The order keeps a way back at every step (what ``docker compose`` does on recreate):
save the inspect JSON in the durable state -> stop the old container -> rename it aside
-> create the new one under the old name -> start it -> watch it run for a few seconds
-> remove the old one (never its volumes). If the new one fails to be created, to start
or to keep running, it is removed and the old one gets its name back and is started; if
the old one is gone (``--rm``), it is created again from the saved inspect. A crash in
the middle leaves the saved state, and ``recover`` finishes or undoes the swap.
"""

from __future__ import annotations

import copy
import logging
import time
from contextlib import suppress
from dataclasses import dataclass
from typing import Callable

from supervisor.adapters.engine import Engine
from supervisor.model.errors import ContainerGone, EngineRefused, EngineUnavailable, SupervisorError

log = logging.getLogger(__name__)

STATE_PREFIX = "ollama.recreate."


class RecreateError(SupervisorError):
    """The new container did not come up; ``rolled_back`` says whether the old one runs."""

    def __init__(self, message: str, rolled_back: bool):
        super().__init__(message)
        self.rolled_back = rolled_back


@dataclass(frozen=True)
class Recreated:
    old_id: str
    new_id: str
    notes: tuple[str, ...] = ()


def with_env(env: list[str] | tuple[str, ...], updates: dict[str, str]) -> list[str]:
    """``env`` (KEY=VALUE entries) with ``updates`` set: replaced in place where present,
    appended otherwise; every other entry kept in its order."""
    out, done = [], set()
    for item in env:
        key = item.split("=", 1)[0]
        if key in updates:
            if key not in done:
                out.append(f"{key}={updates[key]}")
                done.add(key)
            continue
        out.append(item)
    out += [f"{k}={v}" for k, v in updates.items() if k not in done]
    return out


def create_body(attrs: dict, env: list[str], image: str) -> tuple[dict, dict[str, dict]]:
    """The create request that makes a container like ``attrs`` (an inspect answer) with
    ``env``. Returns (body, extra networks to connect after create: name -> endpoint)."""
    cfg = copy.deepcopy(attrs.get("Config") or {})
    host = copy.deepcopy(attrs.get("HostConfig") or {})
    old_id = attrs.get("Id", "")
    cfg["Env"] = list(env)
    cfg["Image"] = image
    if cfg.get("Hostname") == old_id[:12]:
        cfg.pop("Hostname")  # generated from the old id: let the new one get its own
    # Anonymous volumes (an image's VOLUME, `-v /path`) are not in Binds/Mounts: name the
    # old volume explicitly, or the new container would start with an empty one.
    targets = {b.split(":")[1] for b in host.get("Binds") or [] if ":" in b}
    targets |= {m.get("Target") for m in host.get("Mounts") or []}
    for m in attrs.get("Mounts") or []:
        if m.get("Type") == "volume" and m.get("Destination") not in targets and m.get("Name"):
            host.setdefault("Mounts", [])
            host["Mounts"] = list(host["Mounts"] or []) + [{
                "Type": "volume", "Source": m["Name"], "Target": m["Destination"],
                "ReadOnly": not m.get("RW", True)}]
    body = dict(cfg)
    body["HostConfig"] = host
    mode = host.get("NetworkMode") or ""
    nets = ((attrs.get("NetworkSettings") or {}).get("Networks")) or {}
    extra: dict[str, dict] = {}
    if mode not in ("none", "host") and not mode.startswith("container:") and nets:
        primary = "bridge" if mode in ("", "default") else mode
        endpoints = {}
        for name, ep in nets.items():
            aliases = [a for a in (ep.get("Aliases") or []) if a not in (old_id, old_id[:12])]
            endpoints[name] = {"Aliases": aliases or None, "IPAMConfig": ep.get("IPAMConfig"),
                               "Links": ep.get("Links")}
        first = primary if primary in endpoints else next(iter(endpoints))
        # One endpoint at create (older engines take no more); the rest are connected after.
        body["NetworkingConfig"] = {"EndpointsConfig": {first: endpoints[first]}}
        extra = {n: e for n, e in endpoints.items() if n != first}
    return body, extra


class Recreator:
    def __init__(self, engine: Engine, put_state: Callable[[str, object], None],
                 del_state: Callable[[str], None], clock: Callable[[], float] = time.time,
                 verify_s: float = 3.0, stop_timeout_s: int = 10,
                 sleep: Callable[[float], None] = time.sleep):
        self.engine = engine
        self.put_state = put_state
        self.del_state = del_state
        self.clock = clock
        self.verify_s = verify_s
        self.stop_timeout_s = stop_timeout_s
        self.sleep = sleep

    def _inspect(self, ref: str) -> dict | None:
        """The engine's inspect answer for ``ref`` (an id or a name); None when no such
        container exists."""
        try:
            return self.engine.inspect_raw(ref)
        except ContainerGone:
            return None

    def _image(self, attrs: dict) -> tuple[str, list[str]]:
        """The image by its name when the name still means the same image, else by id."""
        name = (attrs.get("Config") or {}).get("Image") or ""
        image_id = attrs.get("Image") or name
        if name and self.engine.image_id(name) == image_id:
            return name, []
        return image_id, [f"{name!r} now names another image: kept the old one by id"]

    def _verify(self, cid: str) -> str:
        """'' when the container keeps running for verify_s, else what went wrong."""
        deadline = self.clock() + self.verify_s
        while True:
            attrs = self._inspect(cid)
            if attrs is None:
                return "it vanished"
            st = attrs.get("State") or {}
            if st.get("Restarting") or not st.get("Running"):
                return (f"it is {st.get('Status', '?')} (exit code {st.get('ExitCode')}"
                        + (f", {st['Error']}" if st.get("Error") else "") + ")")
            if self.clock() >= deadline:
                return ""
            self.sleep(0.2)

    def _wait_gone(self, cid: str, timeout_s: float = 10.0) -> None:
        deadline = self.clock() + timeout_s
        while self.clock() < deadline and self._inspect(cid) is not None:
            self.sleep(0.1)

    def recreate(self, attrs: dict, env_updates: dict[str, str]) -> Recreated:
        """Swap the container of ``attrs`` for one with ``env_updates`` applied. Raises
        RecreateError (after rolling back) or EngineUnavailable."""
        old_id = attrs["Id"]
        name = (attrs.get("Name") or "").lstrip("/")
        was_running = bool((attrs.get("State") or {}).get("Running"))
        auto_remove = bool((attrs.get("HostConfig") or {}).get("AutoRemove"))
        image, notes = self._image(attrs)
        env = with_env((attrs.get("Config") or {}).get("Env") or [], env_updates)
        body, extra = create_body(attrs, env, image)
        aside = f"{name}-replaced-{int(self.clock())}"
        key = STATE_PREFIX + name
        self.put_state(key, {"phase": "stopping", "name": name, "aside": aside,
                             "old_id": old_id, "attrs": attrs, "time_s": self.clock()})
        new_id = ""
        # The container's own stop timeout (compose stop_grace_period) when it has one.
        stop_s = (attrs.get("Config") or {}).get("StopTimeout") or self.stop_timeout_s
        try:
            self.engine.stop(old_id, timeout_s=int(stop_s))
            if auto_remove:
                self._wait_gone(old_id)  # --rm: the engine removes it on stop
            else:
                self.engine.rename(old_id, aside)
            self.put_state(key, {"phase": "creating", "name": name, "aside": aside,
                                 "old_id": old_id, "attrs": attrs, "time_s": self.clock()})
            new_id = self.engine.create(body, name)
            for net, ep in extra.items():
                self.engine.connect_network(net, new_id, ep)
            self.engine.start(new_id)
            problem = self._verify(new_id)
        except (EngineRefused, ContainerGone) as e:
            problem = str(e)
        except EngineUnavailable:
            # Leave the saved state: recover() finishes or undoes the swap once the
            # engine answers again.
            raise
        if problem:
            how = self.rollback(attrs, new_id, aside, was_running)
            self.del_state(key)
            raise RecreateError(f"new container did not come up: {problem}; {how}",
                                rolled_back=True)
        if not auto_remove:
            note = self._remove_old(old_id)
            if note:
                notes.append(note)
        self.del_state(key)
        return Recreated(old_id=old_id, new_id=new_id, notes=tuple(notes))

    def _remove_old(self, old_id: str, timeout_s: float = 10.0) -> str:
        """Remove the stopped old container; '' when it is gone, else why it is kept.
        Under Docker's systemd cgroup driver (docker 20.10, a systemd host) a remove right
        after the swap answered "No such container" for a container that inspect still
        showed, and the same remove a few seconds later worked: a 404 is believed only
        once inspect agrees (issue 16's lane)."""
        deadline = self.clock() + timeout_s
        while True:
            try:
                self.engine.remove(old_id)
                return ""
            except EngineRefused as e:
                return f"old container not removed: {e}"
            except ContainerGone as e:
                if self._inspect(old_id) is None:
                    return ""
                if self.clock() >= deadline:
                    return f"old container not removed: {e}"
            self.sleep(0.5)

    def rollback(self, attrs: dict, new_id: str, aside: str, was_running: bool) -> str:
        """Put the old container back under its name. Returns what was done."""
        name = (attrs.get("Name") or "").lstrip("/")
        if new_id:
            with suppress(ContainerGone):
                self.engine.remove(new_id, force=True)
        if self._inspect(attrs["Id"]) is not None:
            try:
                self.engine.rename(attrs["Id"], name)
            except EngineRefused:
                pass  # never renamed aside (create failed before the rename stuck)
            if was_running:
                self.engine.start(attrs["Id"])
            return "rolled back: the old container is back" + (" and running" if was_running else "")
        # The old one is gone (--rm): make it again from the saved inspect, env unchanged.
        image = attrs.get("Image") or (attrs.get("Config") or {}).get("Image")
        body, extra = create_body(attrs, (attrs.get("Config") or {}).get("Env") or [], image)
        cid = self.engine.create(body, name)
        for net, ep in extra.items():
            self.engine.connect_network(net, cid, ep)
        if was_running:
            self.engine.start(cid)
        return f"rolled back: the old container was recreated from its saved inspect ({cid[:12]})"

    def recover(self, saved: dict) -> str:
        """Finish or undo a swap a crash interrupted (``saved`` is the durable state)."""
        name, aside, attrs = saved["name"], saved["aside"], saved["attrs"]
        current = self._inspect(name)
        new_id = current["Id"] if current is not None and current["Id"] != attrs["Id"] else ""
        if new_id and (current.get("State") or {}).get("Running"):
            with suppress(ContainerGone):
                self.engine.remove(attrs["Id"])  # the new one runs: drop the old one
            self.del_state(STATE_PREFIX + name)
            return f"the new container {new_id[:12]} runs; removed the old one"
        how = self.rollback(attrs, new_id, aside, bool((attrs.get("State") or {}).get("Running")))
        self.del_state(STATE_PREFIX + name)
        return how
