"""Domain errors. OSError and SDK errors are turned into these at the adapters' boundary
(as psutil's ``wrap_exceptions`` does), so callers handle one vocabulary."""

from __future__ import annotations


class SupervisorError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(SupervisorError):
    """A configuration that cannot be used. ``problems`` holds (key path, reason) pairs."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = list(problems)
        super().__init__(self.render())

    def render(self) -> str:
        lines = [f"{key}: {reason}" if key else reason for key, reason in self.problems]
        return "invalid configuration:\n  " + "\n  ".join(lines)


class CgroupError(SupervisorError):
    """A cgroup file could not be read or written."""

    def __init__(self, path: str, reason: str):
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class CgroupGone(CgroupError):
    """The cgroup (or the file in it) no longer exists: its container has gone."""


class CgroupNotFound(CgroupError):
    """No cgroup could be located for a container."""


class EngineUnavailable(SupervisorError):
    """The Docker engine could not be reached."""


class ContainerGone(SupervisorError):
    """A container vanished between being seen and being acted on."""


class EngineRefused(SupervisorError):
    """The engine answered but refused a request (e.g. conflicting CPU options, a memory
    limit the kernel would not take)."""
