"""The CLI as a tool people script and pipe: quiet on a closed pipe, --json listings,
whole ids in pipes, id prefixes and loop ids, a patient tail, a resumable ingest,
import that tells formats apart, and housekeeping that leaves live agents alone.

Commands run as child processes (like a shell would run them) against a real
in-process sidecar; `$AGENT_RECORDER_TARGET` tells them where it is.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from agent_recorder.v1 import recorder_service_pb2 as api
from agent_recorder.v1 import session_pb2
from google.protobuf import json_format
from support.events import (
    EPOCH,
    Event,
    agent_end,
    agent_start,
    assistant,
    progress,
    turn_start,
    user,
)
from support.processes import run_cli
from support.recorder import RunningRecorder

from recorder_client.client import RecorderClient
from recorder_client.phi_json import event_to_json

# Each command is a child process (a second or two of imports each): slow.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]
CLI = [sys.executable, "-m", "recorder_server.cli"]
BIG_TEXT = "x" * 300_000  # well past a pipe's 64 KiB buffer once printed


def env_for(recorder: RunningRecorder) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_RECORDER_")}
    return clean | {"AGENT_RECORDER_TARGET": recorder.target}


async def record(target: str, *events: Event) -> None:
    async with RecorderClient.connect(target) as client:
        await client.append([api.EventEnvelope(event=e) for e in events])


def a_loop(session: str, *, end: bool = True, at: float = 0.0, text: str = "hi") -> list[Event]:
    loop = f"{session}.c.0"
    events = [agent_start(session, loop, at=at), turn_start(loop, 0, at=at)]
    if end:
        events.append(agent_end(loop, [user(text, at=at), assistant("ok")], at=at + 1))
    return events


@pytest.fixture
async def env(recorder: RunningRecorder) -> AsyncIterator[dict[str, str]]:
    yield env_for(recorder)


def read_head_then_close(command: list[str], env: dict[str, str]) -> tuple[int, bytes, bytes]:
    """`command | head -c 100`: read a little, close the pipe, and see how it ends."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert process.stdout is not None and process.stderr is not None
    head = process.stdout.read(100)
    process.stdout.close()
    code = process.wait(timeout=60)
    return code, head, process.stderr.read()


# -- pipes --------------------------------------------------------------------------


async def test_a_closed_pipe_ends_show_ls_and_export_quietly(
    recorder: RunningRecorder, env: dict[str, str]
) -> None:
    await record(recorder.target, *a_loop("big-session", text=BIG_TEXT))
    many = [e for n in range(1500) for e in a_loop(f"s{n:04d}-{'i' * 40}", end=False)[:1]]
    await record(recorder.target, *many)
    for args in (
        ["show", "big-session", "--json"],
        ["export", "big-session"],
        ["ls", "--all"],
    ):
        code, head, err = await asyncio.to_thread(read_head_then_close, [*CLI, *args], env)
        assert (code, err) == (141, b""), (args, err)
        assert len(head) == 100, args


# -- ls -----------------------------------------------------------------------------


async def test_ls_in_a_pipe_prints_whole_ids_one_per_line(
    recorder: RunningRecorder, env: dict[str, str]
) -> None:
    long_id = "session-" + "0123456789" * 12
    await record(recorder.target, *a_loop(long_id), *a_loop("short"))
    code, out, err = await run_cli(["ls"], env)
    assert (code, err) == (0, "")
    lines = [line.split("\t") for line in out.splitlines()]
    assert lines[0] == ["session", "agent", "created", "scope", "loops", "tokens", "cost"]
    assert sorted(line[0] for line in lines[1:]) == sorted([long_id, "short"])
    assert all(line[1:] and line[4] == "1 completed" for line in lines[1:])


async def test_ls_json_and_an_empty_result(recorder: RunningRecorder, env: dict[str, str]) -> None:
    code, out, err = await run_cli(["ls"], env)
    assert (code, out, err) == (0, "", "no sessions recorded yet\n")
    code, out, err = await run_cli(["ls", "--json"], env)
    assert (code, json.loads(out)) == (0, {"sessions": [], "nextPageToken": ""})
    await record(recorder.target, *a_loop("one"))
    code, out, _ = await run_cli(["ls", "--json"], env)
    page = json_format.Parse(out, api.ListSessionsResponse())
    async with RecorderClient.connect(recorder.target) as client:
        assert page == await client.list_sessions()
    assert [s.session_id for s in page.sessions] == ["one"]
    code, out, err = await run_cli(["ls", "--agent", "nobody"], env)
    assert (code, out, err) == (0, "", "no sessions match these filters\n")


# -- show and tail: prefixes and loop ids ---------------------------------------------


async def test_show_takes_a_unique_prefix_and_a_loop_id(
    recorder: RunningRecorder, env: dict[str, str]
) -> None:
    sid = "5f0c2a9e-7b1d-4c2e-9a51-0d6f3b8e2c17"
    child = f"{sid}.c.1"
    await record(
        recorder.target,
        *a_loop(sid),
        agent_start(sid, child, f"{sid}.c.0"),
        agent_end(child),
        *a_loop("5f0c2a00-other"),
    )
    code, out, err = await run_cli(["show", sid[:8]], env)
    assert code == 0, err
    assert out.startswith(f"session {sid} ")
    assert f"{sid}.c.0" in out and child in out
    code, out, err = await run_cli(["show", child], env)
    assert code == 0, err
    assert child in out and f"{sid}.c.0 " not in out
    code, out, _ = await run_cli(["show", child, "--json"], env)
    assert json_format.Parse(out, session_pb2.LoopRecord()).loop_id == child
    code, out, err = await run_cli(["show", "5f0c2a"], env)
    assert (code, out) == (2, "")
    assert err == (
        f"agent-recorder show: '5f0c2a' starts 2 session ids: 5f0c2a00-other, {sid}\n"
    ) or err == (f"agent-recorder show: '5f0c2a' starts 2 session ids: {sid}, 5f0c2a00-other\n")
    code, out, err = await run_cli(["tail", "--no-follow", sid[:8]], env)
    assert code == 0, err
    assert [line.split()[1] for line in out.splitlines()] == [f"{sid}.c.0"] * 3 + [child] * 2
    code, out, err = await run_cli(["tail", "--no-follow", child], env)
    assert [line.split()[3] for line in out.splitlines()] == ["agent_start", "agent_end"]


async def test_export_and_refused_take_a_prefix_and_a_typo_writes_nothing(
    recorder: RunningRecorder, env: dict[str, str], tmp_path: Path
) -> None:
    sid = "7c1e9a2b-5d4f-4e3a-8b6c-1a2b3c4d5e6f"
    await record(recorder.target, *a_loop(sid))
    out_dir = tmp_path / "out"
    code, out, err = await run_cli(["export", sid[:8], f"{sid}.c.0", "--out", str(out_dir)], env)
    assert (code, err) == (0, "")
    assert sorted(p.name for p in out_dir.iterdir()) == [f"{sid}.json"]
    assert json.loads((out_dir / f"{sid}.json").read_text())["session_id"] == sid
    typo_dir = tmp_path / "typo"
    code, out, err = await run_cli(["export", sid[:8], "nosuch", "--out", str(typo_dir)], env)
    assert (code, out, typo_dir.exists()) == (2, "", False)
    assert err == (
        "agent-recorder export: no session or loop 'nosuch', and no session id starts with it\n"
    )
    for given in (sid[:8], f"{sid}.c.0"):
        code, out, err = await run_cli(["refused", given], env)
        assert (code, out, err) == (0, f"no refused events in session {sid}\n", "")
    code, out, err = await run_cli(["refused", "nosuch"], env)
    assert (code, out) == (2, "")
    assert err == (
        "agent-recorder refused: no session or loop 'nosuch', and no session id starts with it\n"
    )


async def read_line(stream: asyncio.StreamReader) -> str:
    async with asyncio.timeout(30):
        return (await stream.readline()).decode()


async def test_tail_waits_for_the_session_and_rides_out_a_sidecar_restart(
    recorder: RunningRecorder, env: dict[str, str]
) -> None:
    tail = await asyncio.create_subprocess_exec(
        *CLI, "tail", "later", env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert tail.stdout is not None and tail.stderr is not None
    try:
        assert "tail: waiting for later to start" in await read_line(tail.stderr)
        await record(recorder.target, *a_loop("later", end=False, at=5))
        first = [await read_line(tail.stdout) for _ in range(2)]
        assert [line.split()[0] for line in first] == [
            time.strftime("%H:%M:%S.000", time.gmtime(EPOCH + 5))
        ] * 2
        assert [line.split()[2:4] for line in first] == [
            ["#0", "agent_start"],
            ["#1", "turn_start"],
        ]
        await recorder.stop()
        assert "the sidecar is gone" in await read_line(tail.stderr)
        await recorder.start()
        await record(recorder.target, progress("later.c.0", "t1", "bash", "after the restart"))
        resumed = await read_line(tail.stdout)
        assert resumed.split()[1:4] == ["later.c.0", "#2", "progress_message"]
    finally:
        tail.terminate()
        await tail.wait()


# -- ingest and import ---------------------------------------------------------------


async def test_ingest_interrupted_says_what_was_stored_and_a_rerun_resumes(
    recorder: RunningRecorder, env: dict[str, str], tmp_path: Path
) -> None:
    lines = [json.dumps(event_to_json(e)) for e in a_loop("ingested")]
    ingest = await asyncio.create_subprocess_exec(
        *CLI, "ingest", "-", env=env, stdin=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert ingest.stdin is not None and ingest.stderr is not None
    ingest.stdin.write(("\n".join(lines[:2]) + "\n").encode())
    await ingest.stdin.drain()
    async with RecorderClient.connect(recorder.target) as client:
        async with asyncio.timeout(30):
            while True:  # both lines stored before the interrupt
                try:
                    if len((await client.get_loop("ingested.c.0")).events) == 2:
                        break
                except Exception:
                    pass
                await asyncio.sleep(0.05)
    ingest.send_signal(signal.SIGINT)
    async with asyncio.timeout(30):
        err = (await ingest.stderr.read()).decode()
        await ingest.wait()
    assert ingest.returncode == 130
    assert "interrupted; 2 event(s) were stored. To resume, run the same command again" in err
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    code, out, err = await run_cli(["ingest", str(path)], env)
    assert (code, out) == (0, "ingested 3 events (0 streaming deltas not stored)\n"), err
    async with RecorderClient.connect(recorder.target) as client:
        loop = await client.get_loop("ingested.c.0")
    assert [e.sequence for e in loop.events] == [0, 1, 2]
    assert loop.status == session_pb2.LOOP_STATUS_COMPLETED


async def test_import_tells_protobuf_json_from_the_runtime_format(
    recorder: RunningRecorder, env: dict[str, str], tmp_path: Path
) -> None:
    await record(recorder.target, *a_loop("exported"))
    for fmt in ("json", "phi-json"):
        out_dir = tmp_path / fmt
        code, _, err = await run_cli(
            ["export", "exported", "--format", fmt, "--out", str(out_dir)], env
        )
        assert code == 0, err
        code, out, err = await run_cli(["import", str(out_dir / "exported.json")], env)
        assert (code, out) == (2, ""), fmt  # already stored: refused, after being read
        assert "ALREADY_EXISTS" in err, (fmt, err)
        code, out, err = await run_cli(["import", "--replace", str(out_dir / "exported.json")], env)
        assert (code, out) == (0, "replaced exported: 1 loops, 3 events\n"), (fmt, err)


# -- housekeeping ----------------------------------------------------------------------


async def test_checkpoint_finalizes_only_sessions_without_an_open_loop(
    recorder: RunningRecorder, env: dict[str, str]
) -> None:
    await record(recorder.target, *a_loop("done"), *a_loop("live", end=False))
    code, out, err = await run_cli(["checkpoint", "--json"], env)
    assert (code, json.loads(out)) == (0, {"finalized_session_ids": ["done"]}), err
    code, out, _ = await run_cli(["checkpoint"], env)
    assert out == "finalized 0 session(s)\n"
    async with RecorderClient.connect(recorder.target) as client:
        live = await client.get_loop("live.c.0")
        assert live.status == session_pb2.LOOP_STATUS_RUNNING
        assert not (await client.get_session("live")).HasField("finalized_at")


async def test_prune_idle_for_takes_idle_sessions_but_never_an_open_loop(
    recorder: RunningRecorder, env: dict[str, str]
) -> None:
    now = time.time() - EPOCH
    await record(
        recorder.target,
        *a_loop("finalized-old"),
        *a_loop("idle-never-finalized"),
        *a_loop("idle-but-open", end=False),
        *a_loop("recent", at=now),
    )
    async with RecorderClient.connect(recorder.target) as client:
        await client.checkpoint("finalized-old")
    code, out, err = await run_cli(["prune"], env)
    assert (code, err) == (2, "agent-recorder prune: give --older-than, --idle-for, or both\n")
    code, out, _ = await run_cli(["prune", "--older-than", "1h", "--json"], env)
    code, out, _ = await run_cli(["prune", "--idle-for", "1h", "--dry-run", "--json"], env)
    assert json.loads(out) == {
        "session_ids": ["idle-never-finalized"],
        "dry_run": True,
    }
    code, out, err = await run_cli(["prune", "--idle-for", "1h"], env)
    assert (code, out) == (0, "deleted 1 session(s)\n  idle-never-finalized\n"), err
    async with RecorderClient.connect(recorder.target) as client:
        left = sorted([s.session_id async for s in client.iter_sessions()])
    assert left == ["idle-but-open", "recent"]


async def test_listings_print_json(recorder: RunningRecorder, env: dict[str, str]) -> None:
    await record(recorder.target, *a_loop("open-one", end=False))
    code, out, _ = await run_cli(["flush", "--json"], env)
    assert code == 0
    flushed = json_format.Parse(out, api.FlushResponse())
    assert list(flushed.aborted_loop_ids) == ["open-one.c.0"]
    assert list(flushed.finalized_session_ids) == ["open-one"]
    _, out, _ = await run_cli(["usage", "--json"], env)
    rows = json.loads(out)["rows"]
    assert rows[0]["usage"]["totalTokens"] == "0" and rows[0]["loops"] == 1
