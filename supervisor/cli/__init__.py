"""supctl, the operator's CLI."""

from supervisor.cli.main import main

__all__ = ["main"]
