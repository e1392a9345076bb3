"""`agent-recorder service install|uninstall|status`: run the sidecar as a user service."""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
from pathlib import Path

from recorder_client.autostart import socket_answers
from recorder_client.defaults import default_db_path, default_target, normalize_target
from recorder_server.cli.common import Commands, add_command
from recorder_server.units import (
    UNIT_NAME,
    Kind,
    ServiceFile,
    default_kind,
    launchd_log,
    service_file,
)

SYSTEMCTL_TIMEOUT_S = 30
EXIT_CODES = (
    "exit status: 0 ok (status: the sidecar answers), 1 failed (status: nothing answers; "
    "install: the file is written but could not be loaded), 2 bad usage"
)


def register(commands: Commands) -> None:
    service = commands.add_parser(
        "service",
        help="run the sidecar as a per-user service (systemd, or launchd on macOS)",
        description="run `agent-recorder serve` with the defaults as a per-user service "
        "that starts at login and is restarted when it fails",
        epilog=f"example: agent-recorder service install\n\n{EXIT_CODES}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = service.add_subparsers(dest="action", required=True)
    for name, help_text, handler in (
        ("install", "write the service file and start it", install),
        ("uninstall", "stop the service and remove its file", uninstall),
        ("status", "say whether it is installed and the sidecar answers", status),
    ):
        example = f"agent-recorder service {name}"
        action = add_command(actions, name, help_text, example, handler, EXIT_CODES)
        action.add_argument(
            "--kind",
            choices=("systemd", "launchd"),
            default=default_kind(),
            help="service manager (default: %(default)s on this system)",
        )
        if name != "status":
            action.add_argument(
                "--no-start",
                dest="start",
                action="store_false",
                help="only write (or remove) the file; do not ask the service manager",
            )


def _run(command: list[str]) -> str | None:
    """Run a service-manager command; None when it worked, else why not."""
    if shutil.which(command[0]) is None:
        return f"{command[0]} is not on PATH"
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=SYSTEMCTL_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        return f"`{shlex.join(command)}` did not finish in {SYSTEMCTL_TIMEOUT_S} s"
    if done.returncode != 0:
        return f"`{shlex.join(command)}` failed: {done.stderr.strip() or done.returncode}"
    return None


def _load_commands(file: ServiceFile) -> list[list[str]]:
    if file.kind == "systemd":
        return [
            ["systemctl", "--user", "daemon-reload"],
            ["systemctl", "--user", "enable", "--now", UNIT_NAME],
        ]
    return [["launchctl", "load", "-w", str(file.path)]]


def _unload_commands(file: ServiceFile) -> list[list[str]]:
    if file.kind == "systemd":
        return [["systemctl", "--user", "disable", "--now", UNIT_NAME]]
    return [["launchctl", "unload", "-w", str(file.path)]]


def _run_all(commands: list[list[str]]) -> str | None:
    for command in commands:
        problem = _run(command)
        if problem is not None:
            return problem
    return None


async def install(args: argparse.Namespace) -> int:
    kind: Kind = args.kind
    file = service_file(kind)
    file.path.parent.mkdir(parents=True, exist_ok=True)
    file.path.write_text(file.text, encoding="utf-8")
    print(f"wrote {file.path}")
    if not args.start:
        print(f"to start it: {' && '.join(shlex.join(c) for c in _load_commands(file))}")
        return 0
    problem = _run_all(_load_commands(file))
    if problem is not None:
        print(f"agent-recorder service: could not start it: {problem}")
        print(f"to start it yourself: {' && '.join(shlex.join(c) for c in _load_commands(file))}")
        return 1
    print(f"started; it runs `agent-recorder serve` and restarts on failure ({_logs_hint(kind)})")
    return 0


async def uninstall(args: argparse.Namespace) -> int:
    file = service_file(args.kind)
    problem = _run_all(_unload_commands(file)) if args.start and file.path.exists() else None
    if file.path.exists():
        file.path.unlink()
        print(f"removed {file.path}")
    else:
        print(f"not installed ({file.path} does not exist)")
    if args.kind == "systemd" and args.start:
        problem = problem or _run(["systemctl", "--user", "daemon-reload"])
    if problem is not None:
        print(f"agent-recorder service: could not stop it: {problem}")
        return 1
    return 0


async def status(args: argparse.Namespace) -> int:
    file = service_file(args.kind)
    if not file.path.exists():
        print(f"service: not installed ({file.path} does not exist)")
    elif file.path.read_text(encoding="utf-8") == file.text:
        print(f"service: installed at {file.path}")
    else:
        print(f"service: installed at {file.path}, but not as `service install` would write it now")
    target = normalize_target(default_target())
    path = Path(target.removeprefix("unix://")) if target.startswith("unix:") else None
    if path is not None and socket_answers(path):
        print(f"sidecar: answering on {target} (pid {_pid_of_lock()})")
        return 0
    print(f"sidecar: nothing answers on {target}")
    return 1


def _pid_of_lock() -> str:
    lock = default_db_path().with_name(default_db_path().name + ".lock")
    try:
        return lock.read_text().strip() or "unknown"
    except OSError:
        return "unknown"


def _logs_hint(kind: Kind) -> str:
    if kind == "systemd":
        return f"logs: journalctl --user -u {UNIT_NAME}"
    return f"logs: {launchd_log()}"
