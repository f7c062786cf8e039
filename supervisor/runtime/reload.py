"""Reloading the config (SIGHUP, POST /reload): a whole new config, or the old one kept
and the reason said."""

from __future__ import annotations

from supervisor.adapters.hostfacts import read_host_facts
from supervisor.model.config import Config, load_config
from supervisor.runtime.passes import with_dry_run

# Settings a running daemon cannot take over: its sockets, its state and its engine.
RESTART_ONLY = (("metrics.listen", lambda s: s.metrics.listen),
                ("control.socket", lambda s: s.control.socket),
                ("state_dir", lambda s: s.state_dir),
                ("docker.host", lambda s: s.docker.host))


def load_new(path: str, force_dry_run: bool) -> Config:
    """The config at ``path`` (raises ConfigError), dry-run kept when the command line
    asked for it: --dry-run outlives any reload."""
    new = load_config(path, host=read_host_facts())
    if force_dry_run and not new.dry_run:
        new = with_dry_run(new, True)
    return new


def restart_only_changes(old: Config, new: Config) -> list[str]:
    """The keys that changed but take effect only at the next start."""
    return [key for key, get in RESTART_ONLY if get(old.settings) != get(new.settings)]
