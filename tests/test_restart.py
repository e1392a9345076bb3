"""Stop the server, start it on the same file: nothing lost, open work continues."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
from agent_recorder.v1 import recorder_service_pb2 as api
from agent_recorder.v1 import session_pb2, types_pb2
from support.events import (
    RecordStream,
    agent_end,
    agent_start,
    aio,
    append,
    append_response,
    assistant,
    config,
    message_end,
    parallel_end,
    parallel_start,
    progress,
    struct,
    tool_end,
    tool_result,
    tool_start,
    ts,
    turn_end,
    turn_request,
    turn_start,
    usage,
    user,
)
from support.recorder import RunningRecorder

from recorder_server.recording import RecordingOptions

if TYPE_CHECKING:
    from support.events import Stub

DEADLINE = 10.0
SESSIONS = ("main", "done", "kid")


async def dump(stub: Stub) -> dict[str, bytes]:
    """Every session, the listing and the event log, as bytes."""
    out: dict[str, bytes] = {}
    for sid in SESSIONS:
        response = await stub.GetSession(api.GetSessionRequest(session_id=sid), timeout=DEADLINE)
        out[sid] = response.SerializeToString(deterministic=True)
    listing = await stub.ListSessions(api.ListSessionsRequest(), timeout=DEADLINE)
    out["list"] = listing.SerializeToString(deterministic=True)
    events = stub.StreamEvents(api.StreamEventsRequest(session_id="main"), timeout=DEADLINE)
    out["events"] = b"".join([r.SerializeToString(deterministic=True) async for r in events])
    return out


async def test_restart_reads_back_identical_and_open_loops_continue(
    recorder: RunningRecorder,
) -> None:
    recorder.options = RecordingOptions(capture_turn_requests=True)
    await recorder.stop()
    await recorder.start()
    stub = aio(recorder.stub())
    answer0 = assistant("reading", use=usage(10, 2), tool_calls=[("t0", "read", {})], at=3)
    acked = await append(
        stub,
        [
            (0, agent_start("main", "main.m.0", agent="lead", config=config(), at=1)),
            (1, turn_start("main.m.0", 0, at=2)),
            (2, message_end("main.m.0", user("do it", at=2))),
            (3, tool_start("main.m.0", "t0", "read")),
            (4, tool_end("main.m.0", "t0", "read")),
            (
                5,
                turn_end(
                    "main.m.0",
                    answer0,
                    use=usage(10, 2),
                    tool_results=[tool_result("t0", "read", "x")],
                    at=4,
                ),
            ),
            # A partial turn left open across the restart, with input and a request.
            (6, turn_start("main.m.0", 1, at=5)),
            (7, message_end("main.m.0", user("and then?", at=5))),
            (8, turn_request("main.m.0", 1, {"round": 1}, at=5)),
            # A spawn ref waiting for a child session that does not exist yet.
            (9, tool_end("main.m.0", "t1", "delegate", child_loop_id="late.sub.0")),
            # A parallel evaluation with one branch still PENDING.
            (None, parallel_start("main", ["main.a.1", "main.b.1"], at=6)),
            (0, agent_start("main", "main.a.1", "main.m.0", agent="lead", at=6)),
            # A finished, finalized session, and a sub-agent session still open.
            (0, agent_start("done", "done.m.0", agent="lead", at=1)),
            (1, agent_end("done.m.0", [user("bye")], use=usage(1, 1), at=2)),
            (0, agent_start("kid", "kid.m.0", "main.m.0", agent="helper", at=7)),
        ],
    )
    assert acked == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 0, 0, 1, 0]
    await stub.Checkpoint(api.CheckpointRequest(session_id="done"), timeout=DEADLINE)
    before = await dump(stub)

    await recorder.stop()
    await recorder.start()
    stub = aio(recorder.stub())
    assert await dump(stub) == before

    # Re-sent pre-restart events are recognised from the store, not stored again.
    assert await append(stub, [(8, turn_request("main.m.0", 1, {"round": 1}, at=5))]) == [8]
    conflict = await append_response(stub, [(8, turn_request("main.m.0", 1, {"round": 2}, at=5))])
    assert [r.reason for r in conflict.refusals] == ["SEQUENCE_CONFLICT"]

    # Open loops continue at their next sequences; the open partial turn materializes.
    answer1 = assistant("finished", use=usage(20, 4), at=9)
    stream = RecordStream(stub, "after-restart")
    ack = await stream.send(
        [
            (10, message_end("main.m.0", user("one more input", at=8))),
            (11, turn_end("main.m.0", answer1, use=usage(20, 4), at=10)),
            (12, tool_end("main.m.0", "t2", "delegate", child_loop_id="kid.m.0")),
            (1, progress("main.a.1", "p", "bash", "working")),
            (0, agent_start("main", "main.b.1", "main.m.0", agent="lead", at=11)),
            (None, parallel_end("main", "main.b.1", 1, use=usage(5, 5), at=12)),
            (0, agent_start("late", "late.sub.0", "main.m.0", agent="helper", at=12)),
            (1, agent_end("kid.m.0", at=13)),
            (2, agent_end("main.a.1", at=13)),
            (1, agent_end("main.b.1", use=usage(3, 3), at=13)),
            (13, agent_end("main.m.0", [answer0, answer1], use=usage(30, 6), at=14)),
        ]
    )
    assert not ack.HasField("rejection"), ack.rejection
    assert list(ack.sequences) == [10, 11, 12, 1, 0, 0, 0, 1, 2, 1, 13]
    assert await stream.close() == grpc.StatusCode.OK

    main = (
        await stub.GetSession(api.GetSessionRequest(session_id="main"), timeout=DEADLINE)
    ).session
    assert [loop.loop_id for loop in main.loops] == ["main.m.0", "main.a.1", "main.b.1"]
    root, branch_a, branch_b = main.loops
    assert [e.sequence for e in root.events] == list(range(14))
    assert root.status == session_pb2.LOOP_STATUS_COMPLETED
    assert root.usage == usage(30, 6)
    assert list(root.children_loop_ids) == ["main.a.1", "main.b.1"]
    assert [ref.child_loop_id for ref in root.child_loop_refs] == ["late.sub.0", "kid.m.0"]

    assert len(root.turns) == 2
    turn = root.turns[1]
    assert turn.turn_id == types_pb2.TurnId(loop_id="main.m.0", turn_index=1)
    assert turn.started_at == ts(5)
    assert turn.ended_at == ts(10)
    assert [m.content[0].text.text for m in turn.input_messages] == ["and then?", "one more input"]
    assert turn.output_message == answer1
    assert turn.usage == usage(20, 4)
    assert turn.request_payload == struct({"round": 1})  # kept across the restart

    for loop in (branch_a, branch_b):
        assert loop.status == session_pb2.LOOP_STATUS_COMPLETED
        assert list(loop.parallel_group.all_loop_ids) == ["main.a.1", "main.b.1"]
        assert loop.parallel_group.is_selected == (loop.loop_id == "main.b.1")
    assert branch_b.started_at == ts(11)
    assert [e.sequence for e in branch_a.events] == [0, 1, 2]

    late = (
        await stub.GetSession(api.GetSessionRequest(session_id="late"), timeout=DEADLINE)
    ).session
    assert late.parent_spawn_ref == session_pb2.SpawnRef(
        parent_session_id="main",
        parent_loop_id="main.m.0",
        tool_call_id="t1",
        tool_name="delegate",
    )
    kid = (await stub.GetSession(api.GetSessionRequest(session_id="kid"), timeout=DEADLINE)).session
    assert kid.parent_spawn_ref.tool_call_id == "t2"
    assert kid.loops[0].status == session_pb2.LOOP_STATUS_COMPLETED

    # The finalized session is still finalized and unchanged.
    done = await stub.GetSession(api.GetSessionRequest(session_id="done"), timeout=DEADLINE)
    assert done.SerializeToString(deterministic=True) == before["done"]


async def test_restart_keeps_flushed_state_and_a_new_loop_readmits(
    recorder: RunningRecorder,
) -> None:
    stub = aio(recorder.stub())
    await append(stub, [agent_start("s", "s.m.0", at=1), turn_start("s.m.0", 0, at=2)])
    flushed = await stub.Flush(api.FlushRequest(), timeout=DEADLINE)
    assert list(flushed.aborted_loop_ids) == ["s.m.0"]
    before = await stub.GetSession(api.GetSessionRequest(session_id="s"), timeout=DEADLINE)
    await recorder.stop()
    await recorder.start()
    stub = aio(recorder.stub())
    after = await stub.GetSession(api.GetSessionRequest(session_id="s"), timeout=DEADLINE)
    assert after.SerializeToString(deterministic=True) == before.SerializeToString(
        deterministic=True
    )
    # Nothing is open after the restart, so there is nothing to abort...
    again = await stub.Flush(api.FlushRequest(), timeout=DEADLINE)
    assert list(again.aborted_loop_ids) == [] and list(again.finalized_session_ids) == []
    # ...and the aborted loop stays closed.
    refused = await append_response(stub, [progress("s.m.0", "c", "t", "late")])
    assert [r.message for r in refused.refusals] == ["loop 's.m.0' has ended (aborted)"]
    assert await append(stub, [agent_start("s", "s.m.1", at=3)]) == [0]
    session = (
        await stub.GetSession(api.GetSessionRequest(session_id="s"), timeout=DEADLINE)
    ).session
    assert not session.HasField("finalized_at")
    assert [loop.status for loop in session.loops] == [
        session_pb2.LOOP_STATUS_ABORTED,
        session_pb2.LOOP_STATUS_RUNNING,
    ]
