"""Start the sidecar on demand: `RecorderClient.connect(autostart=True)`.

When nothing answers the default Unix socket (the one every client and `serve`
agree on, `$AGENT_RECORDER_TARGET` included), this starts `agent-recorder serve`
on it with the default database, detached in its own session so that it outlives
the agent, writing its output to `<data dir>/sidecar.log`, and waits until it
answers. It says what it started (a warning on the `recorder_client.autostart`
logger, which Python shows by default). Two agents starting at once are fine:
the second server finds the database locked and exits, and both clients then
reach the first. Only for the default local socket: a TCP or other target is
someone else's to run. Needs the `[server]` extra in the agent's environment.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from recorder_client import defaults

log = logging.getLogger(__name__)
START_TIMEOUT_S: Final = 15.0
_POLL_S: Final = 0.05
LOG_NAME: Final = "sidecar.log"
# Started servers, kept so that Python never warns about a child it let go of.
_started: list[subprocess.Popen[bytes]] = []


class AutostartError(RuntimeError):
    """The sidecar could not be started; the message says why and where its log is."""


@dataclass(frozen=True)
class StartedSidecar:
    pid: int
    target: str
    log_path: Path


def socket_answers(path: Path) -> bool:
    """Whether a server accepts connections on the Unix socket at `path`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def _socket_path(target: str) -> Path | None:
    """The socket of `target` when it is the default one, else None."""
    if target != defaults.normalize_target(defaults.default_target()):
        return None
    if not target.startswith("unix:"):
        return None
    return Path(target.removeprefix("unix://").removeprefix("unix:"))


def ensure_sidecar(target: str) -> StartedSidecar | None:
    """Start the sidecar on `target` if it is the default socket and nothing answers it.

    Returns what it started, or None when there was nothing to do. Blocks until the
    new server answers (at most START_TIMEOUT_S); raises AutostartError otherwise.
    """
    path = _socket_path(target)
    if path is None or socket_answers(path):
        return None
    log_path = defaults.data_dir() / LOG_NAME
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "recorder_server.launcher", "serve", "--listen", target]
    with log_path.open("ab") as output:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _started.append(process)
    _wait_until_answering(process, path, log_path)
    started = StartedSidecar(process.pid, target, log_path)
    log.warning(
        "agent-recorder: nothing answered %s, so started the sidecar there "
        "(pid %d, `agent-recorder serve` with the default database); its log: %s",
        target,
        process.pid,
        log_path,
    )
    return started


def _wait_until_answering(process: subprocess.Popen[bytes], path: Path, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not socket_answers(path):
        code = process.poll()
        if code is not None and not socket_answers(path):
            raise AutostartError(
                f"the sidecar exited with status {code} at start: {_last_line(log_path)} "
                f"(log: {log_path})"
            )
        if time.monotonic() > deadline:
            raise AutostartError(
                f"the sidecar (pid {process.pid}) did not answer on {path} within "
                f"{START_TIMEOUT_S:.0f} s (log: {log_path})"
            )
        time.sleep(_POLL_S)


def _last_line(log_path: Path) -> str:
    lines = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    return lines[-1].strip() if lines else "(nothing logged)"
