"""Run the sidecar as a per-user service: a systemd user unit, or a launchd agent on macOS.

Pure: what the files say and where they go. `agent-recorder service` writes them
and asks systemctl or launchctl to load them. Either way the service runs
`agent-recorder serve` with the defaults (the default database and owner-only
socket that every client finds without flags) and is restarted when it fails.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from xml.sax.saxutils import escape

from recorder_common.version import __version__

Kind = Literal["systemd", "launchd"]
UNIT_NAME = "agent-recorder.service"
LAUNCHD_LABEL = "dev.agent-recorder.sidecar"
DOCS = "https://github.com/agent-recorder/agent-recorder#running-as-a-service"


@dataclass(frozen=True)
class ServiceFile:
    kind: Kind
    path: Path
    text: str


def default_kind() -> Kind:
    return "launchd" if sys.platform == "darwin" else "systemd"


def serve_command() -> list[str]:
    """The absolute command that runs `serve`: this install's script, else its Python."""
    script = Path(sys.executable).with_name("agent-recorder")
    if script.exists():
        return [str(script), "serve"]
    return [sys.executable, "-m", "recorder_server.cli", "serve"]


def systemd_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "systemd" / "user" / UNIT_NAME


def launchd_path() -> Path:
    return Path.home() / "Library" / "LaunchAgents" / f"{LAUNCHD_LABEL}.plist"


def launchd_log() -> Path:
    return Path.home() / "Library" / "Logs" / "agent-recorder.log"


def _systemd_quote(word: str) -> str:
    if word and all(c.isalnum() or c in "/._-+=:@" for c in word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def systemd_unit(command: list[str]) -> str:
    exec_start = " ".join(_systemd_quote(word) for word in command)
    return f"""# Written by `agent-recorder service install` (agent-recorder {__version__}).
[Unit]
Description=agent-recorder: records what AI agents do (local gRPC sidecar)
Documentation={DOCS}

[Service]
Type=simple
ExecStart={exec_start}
# SIGTERM drains the writer and commits before exiting.
KillSignal=SIGTERM
TimeoutStopSec=30
Restart=on-failure
RestartSec=2
Environment=PYTHONUNBUFFERED=1

[Install]
WantedBy=default.target
"""


def launchd_plist(command: list[str]) -> str:
    arguments = "\n".join(f"    <string>{escape(word)}</string>" for word in command)
    log = escape(str(launchd_log()))
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<!-- Written by `agent-recorder service install` (agent-recorder {__version__}). -->
<plist version="1.0">
<dict>
  <key>Label</key>
  <string>{LAUNCHD_LABEL}</string>
  <key>ProgramArguments</key>
  <array>
{arguments}
  </array>
  <key>RunAtLoad</key>
  <true/>
  <key>KeepAlive</key>
  <dict>
    <key>SuccessfulExit</key>
    <false/>
  </dict>
  <key>ThrottleInterval</key>
  <integer>2</integer>
  <key>StandardOutPath</key>
  <string>{log}</string>
  <key>StandardErrorPath</key>
  <string>{log}</string>
</dict>
</plist>
"""


def service_file(kind: Kind, command: list[str] | None = None) -> ServiceFile:
    command = command or serve_command()
    if kind == "systemd":
        return ServiceFile(kind, systemd_path(), systemd_unit(command))
    return ServiceFile(kind, launchd_path(), launchd_plist(command))
