"""The seed runtime's JSON in and out through the CLI: import, export, ingest.

The CLI runs in-process (`main(argv)` in a thread, since it runs its own event
loop) against the real fixture server; a restart test runs it as a subprocess.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from agent_recorder.v1 import recorder_service_pb2 as api
from agent_recorder.v1 import session_pb2
from google.protobuf import json_format
from support.events import agent_end, agent_start, tool_start, turn_start
from support.recorder import RunningRecorder

from recorder_client.client import RecorderClient
from recorder_client.errors import RecorderRpcError
from recorder_client.phi_json import event_from_json, event_to_json, session_from_json
from recorder_server.cli import main
from recorder_server.server import RecorderServer, ServerConfig
from recorder_server.validation import Limits

DATA = Path(__file__).parent / "data"
FULL = DATA / "phi_session_full.json"
EVENTS = DATA / "phi_events.jsonl"
SID = "5f0c2a9e"


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the CLI in a thread and return (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def full() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(FULL.read_text(encoding="utf-8"))
    return loaded


async def test_import_then_export_gives_back_the_session_file(
    recorder: RunningRecorder, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, err = await cli(capsys, "import", "--target", recorder.target, str(FULL))
    assert (code, err) == (0, "")
    assert out == f"imported {SID}: 5 loops, 30 events\n"
    out_dir = tmp_path / "out"
    code, out, _ = await cli(
        capsys, "export", "--target", recorder.target, SID, "--out", str(out_dir)
    )
    assert code == 0
    assert json.loads((out_dir / f"{SID}.json").read_text(encoding="utf-8")) == full()
    code, out, _ = await cli(capsys, "export", "--target", recorder.target, SID)
    assert code == 0
    assert json.loads(out) == full()


async def test_protobuf_json_export_and_import_round_trip(
    recorder: RunningRecorder, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    await cli(capsys, "import", "--target", recorder.target, str(FULL))
    code, out, _ = await cli(capsys, "export", "--target", recorder.target, SID, "--format", "json")
    assert code == 0
    as_proto = json_format.Parse(out, session_pb2.Session())
    assert as_proto == session_from_json(full())
    (tmp_path / "s.json").write_text(out, encoding="utf-8")
    code, out, _ = await cli(
        capsys,
        "import",
        "--target",
        recorder.target,
        "--format",
        "json",
        "--replace",
        str(tmp_path),
    )
    assert (code, out) == (0, f"replaced {SID}: 5 loops, 30 events\n")
    code, out, _ = await cli(capsys, "export", "--target", recorder.target, SID)
    assert json.loads(out) == full()


async def test_import_refuses_an_existing_session_unless_replace(
    recorder: RunningRecorder, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (await cli(capsys, "import", "--target", recorder.target, str(FULL)))[0] == 0
    code, out, err = await cli(capsys, "import", "--target", recorder.target, str(FULL))
    assert (code, out) == (2, "")  # refused by the sidecar
    assert f"{FULL}: ALREADY_EXISTS: session '{SID}' already exists" in err
    changed = full()
    changed["agent_id"] = "agent-2"
    for loop in changed["loops"]:
        loop["agent_id"] = "agent-2"
    async with RecorderClient.connect(recorder.target) as client:
        done = await client.import_session(session_from_json(changed), replace=True)
        assert (done.session_id, done.loops, done.events, done.replaced) == (SID, 5, 30, True)
        stored = await client.get_session(SID)
    assert stored.agent_id == "agent-2"
    assert [loop.agent_id for loop in stored.loops] == ["agent-2"] * 5


async def test_import_names_the_file_and_path_of_what_it_cannot_read(
    recorder: RunningRecorder, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    broken = full()
    del broken["loops"][1]["status"]
    (tmp_path / "a.json").write_text(json.dumps(broken), encoding="utf-8")
    (tmp_path / "b.json").write_text("{", encoding="utf-8")
    code, out, err = await cli(capsys, "import", "--target", recorder.target, str(tmp_path))
    assert (code, out) == (1, "")
    assert err.splitlines()[0].startswith(
        f"agent-recorder import: {tmp_path / 'a.json'}: not a phi-json session: "
    )
    assert "loops[1].status" in err.splitlines()[0]
    # File, line and column once, not again in the decoder's own words.
    assert err.splitlines()[1] == (
        f"agent-recorder import: {tmp_path / 'b.json'}:1:2: "
        "Expecting property name enclosed in double quotes"
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, err = await cli(capsys, "import", "--target", recorder.target, str(empty))
    assert (code, out, err) == (1, "", f"agent-recorder import: no *.json files in {empty}\n")


async def test_import_refuses_loops_of_another_session(recorder: RunningRecorder) -> None:
    async with RecorderClient.connect(recorder.target) as client:
        await client.import_session(session_from_json(full()))
        other = full()
        other["session_id"] = "other"
        for loop in other["loops"]:
            loop["session_id"] = "other"
        with pytest.raises(RecorderRpcError) as caught:
            await client.import_session(session_from_json(other))
    assert caught.value.code == grpc.StatusCode.ALREADY_EXISTS
    assert caught.value.metadata == {"loop_id": f"{SID}.anthropic-claude-opus-high.0"}


@pytest.mark.parametrize(
    ("change", "field", "problem"),
    [
        (
            lambda s: s["loops"][0]["events"].pop(1),
            "session.loops[0].events[1].sequence",
            "gapless",
        ),
        (
            lambda s: s["loops"][1].update(session_id="elsewhere"),
            "session.loops[1].session_id",
            "is not the session's",
        ),
        (
            lambda s: s["loops"][0]["events"][1]["event"].update(loop_id="x.y.0"),
            "session.loops[0].events[1].event.turn_start.loop_id",
            "is not this loop's",
        ),
        (lambda s: s["loops"].append(s["loops"][0]), "session.loops[5].loop_id", "appears twice"),
    ],
)
async def test_import_validates_the_session(
    recorder: RunningRecorder, change: Any, field: str, problem: str
) -> None:
    broken = copy.deepcopy(full())
    change(broken)
    async with RecorderClient.connect(recorder.target) as client:
        with pytest.raises(RecorderRpcError) as caught:
            await client.import_session(session_from_json(broken))
        with pytest.raises(RecorderRpcError):
            await client.get_session(SID)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.metadata["field"] == field
    assert problem in caught.value.message


async def test_imported_open_loops_stay_open_for_the_rules(recorder: RunningRecorder) -> None:
    session = session_from_json(full())
    running = next(loop for loop in session.loops if loop.status == session_pb2.LOOP_STATUS_RUNNING)
    async with RecorderClient.connect(recorder.target) as client:
        await client.import_session(session)
        # Unnumbered: the server gives it the loop's next sequence.
        sequences = await client.append([api.EventEnvelope(event=turn_start(running.loop_id, 1))])
        assert sequences == [len(running.events)]
        loop = await client.get_loop(running.loop_id)
        assert [e.sequence for e in loop.events] == list(range(len(running.events) + 1))
        assert loop.events[-1].event.turn_start.turn_index == 1
        flushed = await client.flush_sessions(SID)
    open_ids = [
        loop.loop_id
        for loop in session.loops
        if loop.status in (session_pb2.LOOP_STATUS_RUNNING, session_pb2.LOOP_STATUS_PENDING)
    ]
    assert sorted(flushed.aborted_loop_ids) == sorted(open_ids)
    assert list(flushed.finalized_session_ids) == [SID]


async def test_replacing_a_session_refreshes_what_the_rules_know_of_it(
    recorder: RunningRecorder,
) -> None:
    """After a replace, the next event continues the imported loop, not the replaced one."""
    session = session_from_json(full())
    running = next(loop for loop in session.loops if loop.status == session_pb2.LOOP_STATUS_RUNNING)
    envelope = api.EventEnvelope(event=turn_start(running.loop_id, 1))
    async with RecorderClient.connect(recorder.target) as client:
        await client.import_session(session)
        assert await client.append([envelope]) == [len(running.events)]
        await client.import_session(session, replace=True)
        assert await client.append([envelope]) == [len(running.events)]
        loop = await client.get_loop(running.loop_id)
    assert len(loop.events) == len(running.events) + 1


# -- ingest ---------------------------------------------------------------------------


def event_lines() -> list[str]:
    return [line for line in EVENTS.read_text(encoding="utf-8").splitlines() if line.strip()]


async def stored_events(target: str, session_id: str) -> list[dict[str, Any]]:
    async with RecorderClient.connect(target) as client:
        return [
            event_to_json(item.event.event)
            async for item in client.stream_events(session_id=session_id)
        ]


def loop_zero_lines() -> list[str]:
    """The fixture's lines of its first loop: a valid recording, start to end."""
    loop = f"{SID}.anthropic-claude-opus-high.0"
    return [line for line in event_lines() if json.loads(line).get("loop_id") == loop]


async def test_ingest_stores_every_event_and_exits_zero(
    recorder: RunningRecorder, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    lines = loop_zero_lines()
    path = tmp_path / "loop0.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    code, out, err = await cli(capsys, "ingest", "--target", recorder.target, str(path))
    assert (code, err) == (0, "")
    kept = [json.loads(line) for line in lines if json.loads(line)["type"] != "MessageUpdate"]
    updates = len(lines) - len(kept)
    assert updates == 3
    assert out == f"ingested {len(kept)} events ({updates} streaming deltas not stored)\n"
    expected = [event_to_json(event_from_json(e)) for e in kept]
    assert await stored_events(recorder.target, SID) == expected


async def test_ingest_names_line_loop_sequence_and_reason_of_each_refusal(
    recorder: RunningRecorder, capsys: pytest.CaptureFixture[str]
) -> None:
    """The event fixture has one event of every type, some of loops never started.

    Each of those is refused alone and named with its line; every other line is stored.
    """
    code, out, err = await cli(capsys, "ingest", "--target", recorder.target, str(EVENTS))
    assert (code, out) == (1, "")
    one, four = f"{SID}.anthropic-claude-opus-high.1", f"{SID}.anthropic-claude-opus-high.4"

    def refused(line: int, kind: str, loop: str, sequence: int) -> str:
        return (
            f"agent-recorder ingest: line {line}: refused: {kind} at loop {loop}"
            f" sequence {sequence}: LOOP_NOT_OPEN: loop '{loop}' is not open (never started)"
        )

    assert err.splitlines() == [
        refused(19, "input_rejected", one, 0),
        refused(22, "compaction_started", four, 0),
        refused(23, "compaction_ended", four, 1),
        refused(30, "agent_end", one, 1),
    ]
    async with RecorderClient.connect(recorder.target) as client:
        session = await client.get_session(SID)
        refusals = [r async for r in client.iter_refusals(SID)]
    assert len(session.loops) > 0  # the lines of started loops were stored
    assert sorted((r.loop_id, r.sent_sequence) for r in refusals) == [
        (one, 0),
        (one, 1),
        (four, 0),
        (four, 1),
    ]


async def test_ingest_names_the_loop_and_line_of_an_orphan_event(
    recorder: RunningRecorder, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    started = event_to_json(agent_start("s1", "s1.c.0"))
    orphan = event_to_json(turn_start("s1.c.9", 0))
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(json.dumps(e) for e in (started, orphan)) + "\n", encoding="utf-8")
    code, out, err = await cli(capsys, "ingest", "--target", recorder.target, str(path))
    assert (code, out) == (1, "")
    assert err == (
        "agent-recorder ingest: line 2: refused: turn_start at loop s1.c.9 sequence 0:"
        " LOOP_NOT_OPEN: loop 's1.c.9' is not open (never started)\n"
    )


async def test_ingest_names_the_line_of_an_event_after_its_loops_end(
    recorder: RunningRecorder, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Numbered on after AgentEnd, so it is refused as sent to an ended loop, at its line."""
    events = [
        agent_start("s2", "s2.c.0"),
        turn_start("s2.c.0", 0),
        agent_end("s2.c.0"),
        turn_start("s2.c.0", 1),
        agent_start("s2", "s2.c.1"),
    ]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(json.dumps(event_to_json(e)) for e in events), encoding="utf-8")
    code, out, err = await cli(capsys, "ingest", "--target", recorder.target, str(path))
    assert (code, out) == (1, "")
    assert err == (
        "agent-recorder ingest: line 4: refused: turn_start at loop s2.c.0 sequence 3:"
        " LOOP_NOT_OPEN: loop 's2.c.0' has ended (completed)\n"
    )
    async with RecorderClient.connect(recorder.target) as client:
        ended = await client.get_loop("s2.c.0")
        later = await client.get_loop("s2.c.1")
    assert [e.event for e in ended.events] == events[:3]
    assert [e.event for e in later.events] == events[4:]


async def test_ingest_names_the_line_and_limit_of_an_event_too_large(
    short_tmp: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = ServerConfig(
        db_path=short_tmp / "r.db",
        listen=f"unix://{short_tmp}/r.sock",
        limits=Limits(max_request_bytes=64 * 1024),
    )
    events = [
        agent_start("s3", "s3.c.0"),
        tool_start("s3.c.0", "call-1", "read", {"text": "x" * 100_000}),
        turn_start("s3.c.0", 0),
    ]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(json.dumps(event_to_json(e)) for e in events), encoding="utf-8")
    async with RecorderServer(config):
        code, out, err = await cli(capsys, "ingest", "--target", config.listen, str(path))
        async with RecorderClient.connect(config.listen) as client:
            loop = await client.get_loop("s3.c.0")
    assert (code, out) == (1, "")
    assert err.startswith("agent-recorder ingest: line 2: not sent: event.tool_execution_start: ")
    assert err.endswith(
        "bytes, larger than the sidecar's request limit of 65536 bytes (loop s3.c.0)\n"
    )
    assert [e.event for e in loop.events] == [events[0], events[2]]


async def test_ingest_names_the_line_of_an_event_the_limits_refuse_and_goes_on(
    recorder: RunningRecorder, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Checked at emit against the sidecar's limits: the line is reported, the rest stored."""
    events = [
        agent_start("s1", "s1.c.0"),
        turn_start("s1.c.0", 0),
        turn_start("", 1),
        turn_start("s1.c.0", 2),
    ]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(json.dumps(event_to_json(e)) for e in events), encoding="utf-8")
    code, out, err = await cli(capsys, "ingest", "--target", recorder.target, str(path))
    assert (code, out) == (1, "")
    assert err == (
        "agent-recorder ingest: line 3: not sent: event.turn_start.loop_id: must not be empty\n"
    )
    async with RecorderClient.connect(recorder.target) as client:
        loop = await client.get_loop("s1.c.0")
    assert [e.event for e in loop.events] == [events[0], events[1], events[3]]


async def test_ingest_names_the_line_of_bad_json(
    recorder: RunningRecorder, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    good = json.dumps(event_to_json(agent_start("s1", "s1.c.0")))
    bad = json.dumps({"type": "TurnStart", "loop_id": "s1.c.0"})
    path = tmp_path / "events.jsonl"
    path.write_text(f"{good}\n\n{bad}\n", encoding="utf-8")
    code, out, err = await cli(capsys, "ingest", "--target", recorder.target, str(path))
    assert (code, out) == (1, "")
    assert err == f"agent-recorder ingest: {path}:3: turn_index: missing\n"
    async with RecorderClient.connect(recorder.target) as client:
        loop = await client.get_loop("s1.c.0")
    assert [e.sequence for e in loop.events] == [0]
    path.write_text(f'{good}\n{{"type": }}\n', encoding="utf-8")
    code, out, err = await cli(capsys, "ingest", "--target", recorder.target, str(path))
    assert (code, out, err) == (1, "", f"agent-recorder ingest: {path}:2:10: Expecting value\n")


@pytest.mark.slow
async def test_ingest_survives_a_server_restart(recorder: RunningRecorder) -> None:
    """Lines piped in while the sidecar is down are delivered once it is back, once each."""
    loop = "r1.c.0"
    lines = [agent_start("r1", loop)] + [turn_start(loop, i) for i in range(40)]
    text = [json.dumps(event_to_json(e)) + "\n" for e in lines]
    env = {**os.environ, "AGENT_RECORDER_TARGET": recorder.target}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "recorder_server.cli",
        "ingest",
        "-",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdin is not None
    proc.stdin.write("".join(text[:21]).encode())
    await proc.stdin.drain()
    async with RecorderClient.connect(recorder.target) as client:
        # Opened beforehand so that following it can start before the first event.
        await client.open_session(agent_id="agent-a", session_id="r1")
        seen = 0
        async for _ in client.stream_events(session_id="r1", follow=True):
            seen += 1
            if seen == 21:
                break
    await recorder.stop()
    proc.stdin.write("".join(text[21:31]).encode())
    await proc.stdin.drain()
    await recorder.start()
    proc.stdin.write("".join(text[31:]).encode())
    proc.stdin.close()
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert (proc.returncode, err.decode()) == (0, "")
    assert out.decode() == "ingested 41 events (0 streaming deltas not stored)\n"
    async with RecorderClient.connect(recorder.target) as client:
        stored = await client.get_loop(loop)
    assert [e.sequence for e in stored.events] == list(range(41))
    assert [e.event for e in stored.events] == lines
    assert stored.status == session_pb2.LOOP_STATUS_RUNNING
