"""The refused events as the command line shows them: `refused`, `show`, `tail` and
`export --format phi-json` (which leaves them out and says how many)."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import pytest
from agent_recorder.v1 import recorder_service_pb2 as api
from agent_recorder.v1 import session_pb2
from google.protobuf import json_format
from support.events import agent_start, aio, append_response, progress, tool_start
from support.recorder import RunningRecorder

from recorder_server.cli import main


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def record_refusals(recorder: RunningRecorder) -> None:
    """Loop r.cfg.0 with a NaN in one tool call (a slot), and an orphan event (the log)."""
    response = await append_response(
        aio(recorder.stub()),
        [
            agent_start("r", "r.cfg.0", at=1),
            tool_start("r.cfg.0", "c1", "bash", {"x": math.nan}),
            progress("r.cfg.0", "c1", "bash", "fine"),
            progress("r.never.0", "c2", "bash", "orphan"),
        ],
        writer_id="cli-writer",
    )
    assert [(r.index, r.holds_slot) for r in response.refusals] == [(1, True), (3, False)]


async def test_refused_lists_each_refusal_with_reason_and_what_was_sent(
    recorder: RunningRecorder, capsys: pytest.CaptureFixture[str]
) -> None:
    await record_refusals(recorder)
    code, out, _ = await cli(capsys, "refused", "r", "--target", recorder.target, "--json")
    assert code == 0
    slot, logged = (json.loads(line) for line in out.splitlines())
    assert (slot["loopId"], slot["slot"], slot["reason"]) == ("r.cfg.0", "1", "INVALID_FIELD")
    assert slot["message"].startswith("events[1].event.tool_execution_start.args")
    assert "NaN or Infinity" in slot["message"]
    assert slot["writerId"] == "cli-writer"
    assert "nan" in slot["event"]["text"]  # JSON cannot hold the NaN: the text form
    assert (logged["loopId"], logged["reason"], "slot" in logged) == (
        "r.never.0",
        "LOOP_NOT_OPEN",
        False,
    )
    assert logged["event"]["progressMessage"]["text"] == "orphan"
    code, out, _ = await cli(capsys, "refused", "--target", recorder.target)
    assert code == 0 and "refused events (2)" in out and "LOOP_NOT_OPEN" in out
    code, out, err = await cli(capsys, "refused", "nothing", "--target", recorder.target)
    assert (code, out) == (2, "")
    assert err == (
        "agent-recorder refused: no session or loop 'nothing', and no session id starts with it\n"
    )


async def test_refusals_of_a_session_never_recorded_are_listed_by_its_id(
    recorder: RunningRecorder, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its AgentStart was refused, so the session does not exist; its refusal does."""
    response = await append_response(
        aio(recorder.stub()),
        [agent_start("ghost", "ghost.c.0", at=1, metadata={"x": math.inf})],
        writer_id="cli-writer",
    )
    assert [(r.index, r.holds_slot) for r in response.refusals] == [(0, False)]
    code, out, _ = await cli(capsys, "refused", "ghost", "--target", recorder.target, "--json")
    assert code == 0
    [logged] = [json.loads(line) for line in out.splitlines()]
    assert (logged["sessionId"], logged["loopId"]) == ("ghost", "ghost.c.0")
    assert "NaN or Infinity" in logged["message"]


async def test_show_and_tail_mark_refusals_and_phi_json_export_leaves_them_out(
    recorder: RunningRecorder, capsys: pytest.CaptureFixture[str]
) -> None:
    await record_refusals(recorder)
    code, out, _ = await cli(capsys, "show", "r", "--target", recorder.target)
    assert code == 0 and "refused events (2)" in out and "INVALID_FIELD" in out
    code, out, _ = await cli(capsys, "tail", "r", "--no-follow", "--target", recorder.target)
    assert code == 0
    assert [line.split()[2:4] for line in out.splitlines()] == [  # after the time
        ["#0", "agent_start"],
        ["#1", "REFUSED"],
        ["#2", "progress_message"],
    ]
    code, out, err = await cli(
        capsys, "export", "r", "--format", "phi-json", "--target", recorder.target
    )
    assert code == 0
    assert err.strip() == (
        "agent-recorder export: left out 2 refused event(s) of session r, which phi-json "
        "has no place for (agent-recorder refused r lists them)"
    )
    (loop,) = json.loads(out)["loops"]
    assert [e["sequence"] for e in loop["events"]] == [0, 2]
    code, out, err = await cli(
        capsys, "export", "r", "--format", "json", "--target", recorder.target
    )
    session = session_pb2.Session()

    json_format.Parse(out, session)
    assert [e.HasField("refused") for e in session.loops[0].events] == [False, True, False]
    assert [r.loop_id for r in session.refusals] == ["r.never.0"]


async def test_a_session_with_refusals_exported_and_imported_keeps_them(
    recorder: RunningRecorder, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Export as protobuf JSON, delete, import the file: slots and log come back as
    they were, and no refusal is doubled in the session's head."""
    await record_refusals(recorder)
    target = recorder.target
    code, out, _ = await cli(capsys, "export", "r", "--format", "json", "--target", target)
    assert code == 0
    before = json_format.Parse(out, session_pb2.Session())
    path = tmp_path / "r.json"
    path.write_text(out, encoding="utf-8")
    assert (await cli(capsys, "delete", "r", "--target", target))[0] == 0
    code, _, err = await cli(capsys, "import", str(path), "--target", target)
    assert (code, err) == (0, "")
    code, out, _ = await cli(capsys, "export", "r", "--format", "json", "--target", target)
    after = json_format.Parse(out, session_pb2.Session())
    assert after == before
    assert [r.loop_id for r in after.refusals] == ["r.never.0"]
    code, out, _ = await cli(capsys, "refused", "r", "--json", "--target", target)
    assert [json.loads(line)["reason"] for line in out.splitlines()] == [
        "INVALID_FIELD",
        "LOOP_NOT_OPEN",
    ]


async def test_a_resent_batch_with_a_refused_event_is_refused_again_and_stored_once(
    recorder: RunningRecorder,
) -> None:
    """A client re-sending after a reconnect: the same refusals, nothing doubled."""
    stub = aio(recorder.stub())
    batch = [
        (0, agent_start("x", "x.cfg.0", at=1)),
        (1, tool_start("x.cfg.0", "c1", "bash", {"x": math.inf})),
        (2, progress("x.cfg.0", "c1", "bash", "fine")),
    ]
    first = await append_response(stub, batch)
    again = await append_response(stub, batch)
    assert list(first.sequences) == list(again.sequences) == [0, 1, 2]
    assert [(r.index, r.reason, r.holds_slot) for r in again.refusals] == [
        (1, "INVALID_FIELD", True)
    ]
    assert again.refusals[0].message == first.refusals[0].message
    loop = (await stub.GetLoop(api.GetLoopRequest(loop_id="x.cfg.0"), timeout=10)).loop
    assert [(e.sequence, e.HasField("refused")) for e in loop.events] == [
        (0, False),
        (1, True),
        (2, False),
    ]
