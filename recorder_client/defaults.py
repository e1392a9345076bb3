"""Where the sidecar lives when nobody says otherwise.

Server and client read the same defaults so that `agent-recorder serve` and every
client find each other without flags; an environment variable overrides each.
"""

from __future__ import annotations

import os
from pathlib import Path

TARGET_ENV = "AGENT_RECORDER_TARGET"
DB_ENV = "AGENT_RECORDER_DB"
TOKEN_ENV = "AGENT_RECORDER_TOKEN"


def data_dir() -> Path:
    """The user's data directory for agent-recorder (XDG layout)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "agent-recorder"


def runtime_dir() -> Path:
    """A directory only the owner may enter, holding the default socket."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "agent-recorder"
    return data_dir() / "run"


def default_db_path() -> Path:
    return Path(os.environ.get(DB_ENV) or data_dir() / "recorder.db")


def default_target() -> str:
    """The address clients dial: $AGENT_RECORDER_TARGET or the default Unix socket."""
    return os.environ.get(TARGET_ENV) or f"unix://{runtime_dir() / 'recorder.sock'}"


def normalize_target(address: str) -> str:
    """Accept `unix:///path`, `unix:/path`, a bare socket path, or `host:port`."""
    if address.startswith("unix:"):
        return address
    if address.startswith("/") or address.startswith("."):
        return f"unix://{Path(address).resolve()}"
    return address
