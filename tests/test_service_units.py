"""`agent-recorder service`: the systemd user unit and launchd plist it writes (read back
and checked key by key), what it asks systemctl to do, and what `status` reports.
No running systemd is needed: a stand-in `systemctl` on PATH records its arguments."""

from __future__ import annotations

import asyncio
import configparser
import os
import plistlib
import sys
from pathlib import Path

import pytest
from support.processes import run_cli
from support.recorder import RunningRecorder

# Each command is a child process: slow.
pytestmark = pytest.mark.slow


@pytest.fixture
def env(short_tmp: Path) -> dict[str, str]:
    """HOME, XDG dirs and PATH in a temp dir: the service files land there."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_RECORDER_")}
    bin_dir = short_tmp / "bin"
    bin_dir.mkdir()
    return clean | {
        "HOME": str(short_tmp / "home"),
        "XDG_CONFIG_HOME": str(short_tmp / "config"),
        "XDG_RUNTIME_DIR": str(short_tmp / "run"),
        "XDG_DATA_HOME": str(short_tmp / "data"),
        "PATH": str(bin_dir),  # nothing but the stand-ins a test puts there
    }


def fake_systemctl(env: dict[str, str], exit_code: int = 0) -> Path:
    """A `systemctl` that appends its arguments to a file (and exits `exit_code`)."""
    bin_dir = Path(env["PATH"])
    calls = bin_dir.parent / "systemctl-calls"
    script = bin_dir / "systemctl"
    script.write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexit {exit_code}\n')
    script.chmod(0o755)
    return calls


def unit_path(env: dict[str, str]) -> Path:
    return Path(env["XDG_CONFIG_HOME"]) / "systemd" / "user" / "agent-recorder.service"


def read_unit(path: Path) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # keys keep their case
    unit.read_string(path.read_text())
    return unit


async def test_install_writes_a_user_unit_that_serves_with_defaults_and_restarts(
    env: dict[str, str],
) -> None:
    calls = fake_systemctl(env)
    code, out, err = await run_cli(["service", "install"], env)
    assert code == 0, err
    path = unit_path(env)
    unit = read_unit(path)
    script = Path(sys.executable).with_name("agent-recorder")
    assert unit["Service"]["ExecStart"] == f"{script} serve"
    assert unit["Service"]["Type"] == "simple"
    assert unit["Service"]["Restart"] == "on-failure"
    assert unit["Service"]["RestartSec"] == "2"
    assert unit["Service"]["KillSignal"] == "SIGTERM"
    assert unit["Install"]["WantedBy"] == "default.target"
    assert unit["Unit"]["Description"].startswith("agent-recorder")
    assert calls.read_text().splitlines() == [
        "--user daemon-reload",
        "--user enable --now agent-recorder.service",
    ]
    assert f"wrote {path}" in out
    assert "journalctl --user -u agent-recorder.service" in out


async def test_install_without_systemctl_writes_the_unit_and_says_how_to_start_it(
    env: dict[str, str],
) -> None:
    code, out, _ = await run_cli(["service", "install"], env)
    assert code == 1
    assert unit_path(env).exists()
    assert "could not start it: systemctl is not on PATH" in out
    assert (
        "to start it yourself: systemctl --user daemon-reload && "
        "systemctl --user enable --now agent-recorder.service"
    ) in out


async def test_a_failing_systemctl_is_reported(env: dict[str, str]) -> None:
    fake_systemctl(env, exit_code=1)
    code, out, _ = await run_cli(["service", "install"], env)
    assert code == 1
    assert "`systemctl --user daemon-reload` failed" in out


async def test_uninstall_stops_it_and_removes_the_unit(env: dict[str, str]) -> None:
    calls = fake_systemctl(env)
    assert (await run_cli(["service", "install"], env))[0] == 0
    code, out, err = await run_cli(["service", "uninstall"], env)
    assert code == 0, err
    assert not unit_path(env).exists()
    assert calls.read_text().splitlines()[2:] == [
        "--user disable --now agent-recorder.service",
        "--user daemon-reload",
    ]
    code, out, _ = await run_cli(["service", "uninstall", "--no-start"], env)
    assert (code, "not installed" in out) == (0, True)


async def test_the_launchd_plist_runs_serve_keeps_it_alive_and_logs(env: dict[str, str]) -> None:
    code, out, err = await run_cli(["service", "install", "--kind", "launchd", "--no-start"], env)
    assert code == 0, err
    home = Path(env["HOME"])
    path = home / "Library" / "LaunchAgents" / "dev.agent-recorder.sidecar.plist"
    assert f"wrote {path}" in out
    plist = plistlib.loads(path.read_bytes())
    script = Path(sys.executable).with_name("agent-recorder")
    log = str(home / "Library" / "Logs" / "agent-recorder.log")
    assert plist == {
        "Label": "dev.agent-recorder.sidecar",
        "ProgramArguments": [str(script), "serve"],
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": 2,
        "StandardOutPath": log,
        "StandardErrorPath": log,
    }


async def test_status_says_whether_it_is_installed_and_the_sidecar_answers(
    env: dict[str, str],
) -> None:
    code, out, _ = await run_cli(["service", "status"], env)
    socket = Path(env["XDG_RUNTIME_DIR"]) / "agent-recorder" / "recorder.sock"
    assert code == 1
    assert out.splitlines() == [
        f"service: not installed ({unit_path(env)} does not exist)",
        f"sidecar: nothing answers on unix://{socket}",
    ]
    assert (await run_cli(["service", "install", "--no-start"], env))[0] == 0
    data = Path(env["XDG_DATA_HOME"])
    await asyncio.to_thread(data.mkdir, parents=True, exist_ok=True)
    running = RunningRecorder(db_path=data / "r.db", socket_path=socket)
    await running.start()
    try:
        code, out, _ = await run_cli(["service", "status"], env)
    finally:
        await running.stop()
    assert code == 0
    assert out.splitlines()[0] == f"service: installed at {unit_path(env)}"
    assert out.splitlines()[1].startswith(f"sidecar: answering on unix://{socket}")
