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
TOKEN_FILE_ENV = "AGENT_RECORDER_TOKEN_FILE"
# PEM files of a TLS connection: the CA that signed the server, and for mTLS the
# client's own certificate and key.
TLS_CA_ENV = "AGENT_RECORDER_TLS_CA"
TLS_CERT_ENV = "AGENT_RECORDER_TLS_CERT"
TLS_KEY_ENV = "AGENT_RECORDER_TLS_KEY"
# The largest response: a whole session with every event can run to hundreds of MB
# (gRPC's default limit is 4 MiB). The server sends up to it, the client takes it.
MAX_RESPONSE_BYTES = 512 * 1024 * 1024


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


def read_token_file(path: Path) -> str:
    """The file holds the token alone: surrounding whitespace (a final newline) is not in it."""
    return path.read_text(encoding="utf-8").strip()


def default_token() -> str | None:
    """$AGENT_RECORDER_TOKEN, else the file $AGENT_RECORDER_TOKEN_FILE names, else none.

    A file keeps the secret out of the process environment (visible in /proc to the
    same user, and inherited by every child process).
    """
    token = os.environ.get(TOKEN_ENV)
    if token:
        return token
    path = os.environ.get(TOKEN_FILE_ENV)
    return read_token_file(Path(path)) if path else None
