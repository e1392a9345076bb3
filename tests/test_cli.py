"""The `agent-recorder` commands against a real sidecar: ls, tail, usage, flush, delete, prune.

Most run in-process (`main(argv)` in a thread: the CLI runs its own event loop);
`tail` runs as a subprocess so its live output can be read line by line, and it
finds the sidecar through $AGENT_RECORDER_TARGET alone.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from agent_recorder.v1 import recorder_service_pb2 as api
from agent_recorder.v1 import session_pb2
from google.protobuf import json_format
from support.events import (
    EPOCH,
    agent_end,
    agent_start,
    assistant,
    config,
    turn_end,
    turn_start,
    usage,
)
from support.recorder import RunningRecorder

from recorder_client.client import RecorderClient
from recorder_server.cli import build_parser, main
from recorder_server.cli.common import parse_when
from recorder_server.cli.serve import config_from


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


CLOCK = re.compile(r"\d\d:\d\d:\d\d\.\d{3}")


def iso(offset: float) -> str:
    """The events builders' time EPOCH + offset, as an ISO string for --since/--until."""
    return datetime.fromtimestamp(EPOCH + offset, tz=UTC).isoformat()


async def record(target: str, *events: api.EventEnvelope) -> None:
    async with RecorderClient.connect(target) as client:
        await client.append(events)


def loop_events(
    session: str, loop: str, agent: str, model: str, tokens: int, at: float, end: bool
) -> list[api.EventEnvelope]:
    answer = assistant("ok", model=model, use=usage(tokens, 1))
    events = [
        agent_start(session, loop, agent=agent, config=config(model=model), at=at),
        turn_start(loop, 0, at=at),
        turn_end(loop, answer, use=usage(tokens, 1), at=at + 1),
    ]
    if end:
        events.append(agent_end(loop, [answer], use=usage(tokens, 1), at=at + 2))
    return [api.EventEnvelope(event=e) for e in events]


@pytest.fixture
async def two_agents(recorder: RunningRecorder) -> RunningRecorder:
    """s-old: agent-a, ephemeral, ended at EPOCH; s-new: agent-b, persistent, open at +1000."""
    await record(recorder.target, *loop_events("s-old", "s-old.c.0", "agent-a", "m1", 10, 0, True))
    async with RecorderClient.connect(recorder.target) as client:
        await client.open_session(
            agent_id="agent-b",
            session_id="s-new",
            scope=session_pb2.SESSION_SCOPE_PERSISTENT,
            timestamp=datetime.fromtimestamp(EPOCH + 1000, tz=UTC),
        )
    await record(
        recorder.target, *loop_events("s-new", "s-new.c.0", "agent-b", "m2", 20, 1000, False)
    )
    return recorder


def test_every_command_shows_an_example_and_its_exit_codes_in_its_help(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert {"ingest", "export", "import", "ls", "show", "tail", "usage", "flush", "delete"} <= set(
        commands.choices
    )
    invocations = [[name] for name in commands.choices]
    invocations += [["service", action] for action in ("install", "uninstall", "status")]
    for words in [[], *invocations]:
        with pytest.raises(SystemExit) as exited:
            build_parser().parse_args([*words, "--help"])
        assert exited.value.code == 0
        out = " ".join(capsys.readouterr().out.split())
        if words:
            assert "example: agent-recorder " in out, words
        assert "exit status: 0 " in out, words
        assert " 1 " in out.split("exit status:")[1] and " 2 " in out, words
    with pytest.raises(SystemExit):
        build_parser().parse_args(["import", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "2 the sidecar refused a session (e.g. one already stored, without --replace)" in out


def test_times_are_iso_dates_or_durations_ago() -> None:
    before = datetime.now(UTC)
    week_ago = parse_when("7d")
    assert before - timedelta(days=7) <= week_ago <= datetime.now(UTC) - timedelta(days=7)
    assert parse_when("1h30m") <= datetime.now(UTC) - timedelta(minutes=90)
    assert parse_when("2026-11-01") == datetime(2026, 11, 1, tzinfo=UTC)
    assert parse_when("2026-11-01T10:00:00+02:00") == datetime(2026, 11, 1, 8, tzinfo=UTC)
    for bad in ("7 days", "d7", "yesterday", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_when(bad)


async def test_ls_filters_by_agent_scope_and_time(
    two_agents: RunningRecorder, capsys: pytest.CaptureFixture[str]
) -> None:
    target = ("--target", two_agents.target)
    code, out, _ = await cli(capsys, "ls", *target)
    assert code == 0
    assert "s-old" in out and "s-new" in out
    assert "1 completed" in out and "1 running" in out
    for flags, shown, hidden in (
        (["--agent", "agent-a"], "s-old", "s-new"),
        (["--scope", "persistent"], "s-new", "s-old"),
        (["--scope", "ephemeral"], "s-old", "s-new"),
        (["--since", iso(500)], "s-new", "s-old"),
    ):
        code, out, _ = await cli(capsys, "ls", *target, *flags)
        assert code == 0
        assert shown in out and hidden not in out, flags


async def test_ls_pages(two_agents: RunningRecorder, capsys: pytest.CaptureFixture[str]) -> None:
    """The next page's command goes to stderr: stdout stays the sessions alone."""
    target = ("--target", two_agents.target)
    _, out, err = await cli(capsys, "ls", *target, "--limit", "1")
    assert "s-new" in out and "s-old" not in out
    more = err.splitlines()[-1].split()
    assert more[:6] == ["more:", "agent-recorder", "ls", *target, "--limit"]
    assert more[6:8] == ["1", "--page"]
    _, out, err = await cli(capsys, *more[2:])
    assert "s-old" in out and "s-new" not in out and "more:" not in out + err
    _, out, err = await cli(capsys, "ls", *target, "--limit", "1", "--since", iso(-10))
    more = err.splitlines()[-1].split()
    assert more[5:7] == ["--since", iso(-10)]
    _, out, err = await cli(capsys, "ls", *target, "--limit", "1", "--all")
    assert "s-old" in out and "s-new" in out and "more:" not in out + err


async def test_usage_sums_by_agent_and_model_over_a_time_range(
    two_agents: RunningRecorder, capsys: pytest.CaptureFixture[str]
) -> None:
    target = ("--target", two_agents.target)
    code, out, _ = await cli(capsys, "usage", *target, "--json")
    assert code == 0
    rows = json_format.Parse(out, api.GetUsageResponse()).rows
    assert [(r.agent_id, r.model, r.loops) for r in rows] == [
        ("agent-a", "m1", 1),
        ("agent-b", "m2", 1),
    ]
    assert (rows[0].usage.input, rows[0].usage.output, rows[0].usage.total_tokens) == (10, 1, 11)
    # A loop's usage is its AgentEnd's: the open loop has none yet.
    assert (rows[1].usage.input, rows[1].usage.output, rows[1].usage.total_tokens) == (0, 0, 0)
    code, out, _ = await cli(capsys, "usage", *target, "--json", "--until", iso(500))
    assert [r.agent_id for r in json_format.Parse(out, api.GetUsageResponse()).rows] == ["agent-a"]
    code, out, _ = await cli(
        capsys, "usage", *target, "--json", "--since", iso(500), "--agent", "agent-b"
    )
    assert [r.model for r in json_format.Parse(out, api.GetUsageResponse()).rows] == ["m2"]
    code, out, _ = await cli(capsys, "usage", *target, "--agent", "agent-a")
    assert code == 0
    assert "token usage" in out and "m1" in out and "m2" not in out


async def test_flush_delete_and_prune(
    two_agents: RunningRecorder, capsys: pytest.CaptureFixture[str]
) -> None:
    target = ("--target", two_agents.target)
    code, out, _ = await cli(capsys, "flush", *target, "--session", "s-new")
    assert (code, out) == (
        0,
        "aborted 1 open loop(s), finalized 1 session(s)\n  aborted s-new.c.0\n",
    )
    async with RecorderClient.connect(two_agents.target) as client:
        loop = await client.get_loop("s-new.c.0", skip_events=True)
        assert loop.status == session_pb2.LOOP_STATUS_ABORTED
        await client.checkpoint("s-old")
    code, out, _ = await cli(capsys, "prune", *target, "--older-than", "1d", "--dry-run")
    assert (code, out) == (0, "would delete 1 session(s)\n  s-old\n")
    code, out, _ = await cli(capsys, "prune", *target, "--older-than", "1d")
    assert (code, out) == (0, "deleted 1 session(s)\n  s-old\n")
    code, out, _ = await cli(capsys, "delete", *target, "s-new")
    assert (code, out) == (0, "deleted s-new\n")
    async with RecorderClient.connect(two_agents.target) as client:
        assert list((await client.list_sessions()).sessions) == []
    code, out, err = await cli(capsys, "delete", *target, "s-new")
    assert code == 2
    assert "NOT_FOUND" in err


async def test_prune_needs_a_valid_time(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["prune", "--older-than", "soon"])
    assert "neither an ISO date/time nor a duration" in capsys.readouterr().err


async def test_tail_prints_stored_events_then_follows_live_ones(
    two_agents: RunningRecorder, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = await cli(capsys, "tail", "--target", two_agents.target, "--no-follow", "s-old")
    assert code == 0
    assert all(CLOCK.fullmatch(line.split()[0]) for line in out.splitlines()), out
    assert [line.split()[2:4] for line in out.splitlines()] == [
        ["#0", "agent_start"],
        ["#1", "turn_start"],
        ["#2", "turn_end"],
        ["#3", "agent_end"],
    ]
    env = {**os.environ, "AGENT_RECORDER_TARGET": two_agents.target}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "recorder_server.cli",
        "tail",
        "s-new",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None
    stored = [await proc.stdout.readline() for _ in range(3)]
    assert [line.split()[3] for line in stored] == [b"agent_start", b"turn_start", b"turn_end"]
    await record(two_agents.target, api.EventEnvelope(event=turn_start("s-new.c.0", 1)))
    live = await asyncio.wait_for(proc.stdout.readline(), timeout=30)
    assert live.decode().split()[1:] == ["s-new.c.0", "#3", "turn_start", "turn", "1"]
    async with RecorderClient.connect(two_agents.target) as client:
        await client.flush_sessions("s-new")
    rest, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert (proc.returncode, err) == (0, b"")
    assert rest == b""  # aborting a loop changes its status, it adds no event


async def test_show_json_is_the_stored_session(
    two_agents: RunningRecorder, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = await cli(capsys, "show", "--target", two_agents.target, "--json", "s-old")
    assert code == 0
    async with RecorderClient.connect(two_agents.target) as client:
        stored = await client.get_session("s-old")
    assert json_format.Parse(out, session_pb2.Session()) == stored
    code, out, _ = await cli(capsys, "show", "--target", two_agents.target, "s-old")
    assert "s-old.c.0" in out and "completed" in out and "turn 0" in out


async def test_a_refused_call_exits_two_with_the_reason(
    recorder: RunningRecorder, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = await cli(capsys, "delete", "--target", recorder.target, "nope")
    assert (code, out) == (2, "")
    assert err == "agent-recorder delete: NOT_FOUND: session 'nope' not found [NOT_FOUND]\n"


def test_serve_sends_spans_where_otlp_endpoint_says() -> None:
    args = build_parser().parse_args(["serve", "--otlp-endpoint", "https://collector:4317"])
    assert config_from(args).otlp_endpoint == "https://collector:4317"
    assert config_from(build_parser().parse_args(["serve"])).otlp_endpoint is None


@pytest.mark.slow
async def test_commands_find_the_default_sidecar_without_flags(short_tmp: Path) -> None:
    """`serve` and `ls` with no address agree on the default socket (from the XDG dirs)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_RECORDER_")}
    env |= {"XDG_RUNTIME_DIR": str(short_tmp / "run"), "XDG_DATA_HOME": str(short_tmp / "data")}
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "recorder_server.cli", "serve", stdout=subprocess.PIPE, env=env
    )
    try:
        assert server.stdout is not None
        ready = await asyncio.wait_for(server.stdout.readline(), timeout=60)
        assert ready.startswith(b"agent-recorder listening on unix://")
        ls = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "recorder_server.cli",
            "ls",
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        out, err = await asyncio.wait_for(ls.communicate(), timeout=60)
        assert (ls.returncode, out, err) == (0, b"", b"no sessions recorded yet\n")
    finally:
        server.terminate()
        await server.wait()
    assert server.returncode == 0
