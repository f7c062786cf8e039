"""supctl, the operator's CLI."""

from supervisor.cli.supctl import main

__all__ = ["main"]
