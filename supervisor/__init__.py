"""resource-supervisor: keeps every container on a Docker host inside the host's resource rules."""

__version__ = "0.1.0"
