"""The recording rules 1–14 through the real server, over its Unix socket.

Events go in through Append or a Record stream; what is stored is read back with
GetSession / GetLoop / ListSessions / StreamEvents and checked field by field.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import sys
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import grpc
import pytest
from agent_recorder.v1 import events_pb2, session_pb2, types_pb2
from agent_recorder.v1 import recorder_service_pb2 as api
from google.rpc import code_pb2, error_details_pb2
from grpc_status import rpc_status
from support.events import (
    RecordStream,
    agent_end,
    agent_start,
    aio,
    append,
    append_response,
    assistant,
    config,
    continuation,
    input_rejected,
    message_end,
    message_update,
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
    value,
)
from support.recorder import RunningRecorder

from recorder_client.queries import (
    children_of,
    loop_chain_to,
    parallel_siblings,
    root_loops,
    total_usage,
)
from recorder_server.recording import RecordingOptions

if TYPE_CHECKING:
    from support.events import Stub

PENDING = session_pb2.LOOP_STATUS_PENDING
RUNNING = session_pb2.LOOP_STATUS_RUNNING
COMPLETED = session_pb2.LOOP_STATUS_COMPLETED
REJECTED = session_pb2.LOOP_STATUS_REJECTED
ABORTED = session_pb2.LOOP_STATUS_ABORTED
DEADLINE = 10.0


# -- helpers ------------------------------------------------------------------------------


async def get_session(
    stub: Stub, session_id: str, skip_events: bool = False
) -> session_pb2.Session:
    request = api.GetSessionRequest(session_id=session_id, skip_events=skip_events)
    return (await stub.GetSession(request, timeout=DEADLINE)).session


async def get_loop(stub: Stub, loop_id: str) -> session_pb2.LoopRecord:
    return (await stub.GetLoop(api.GetLoopRequest(loop_id=loop_id), timeout=DEADLINE)).loop


async def refused(call: Awaitable[Any], code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()
    return info.value


async def refused_event(
    stub: Stub, events: list[Any], code: grpc.StatusCode, index: int | None = None
) -> api.EventRefusal:
    """Append events of which exactly one is refused (the others stored); its refusal."""
    response = await append_response(stub, events)
    (refusal,) = response.refusals
    assert refusal.code == code.value[0], refusal.message
    assert refusal.index == (len(events) - 1 if index is None else index)
    return refusal


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    """The google.rpc.ErrorInfo detail of a refused unary call."""
    # An AioRpcError has the grpc.Call surface from_call reads (code, details, trailers).
    status = rpc_status.from_call(cast(grpc.Call, error))
    assert status is not None
    assert status.code == error.code().value[0]
    assert status.message == error.details()
    [detail] = status.details
    info = error_details_pb2.ErrorInfo()
    assert detail.Unpack(info)
    assert info.domain == "agent-recorder"
    return info


def sequences(loop: session_pb2.LoopRecord) -> list[int]:
    return [e.sequence for e in loop.events]


def kinds(loop: session_pb2.LoopRecord) -> list[str]:
    return [str(e.event.WhichOneof("event")) for e in loop.events]


async def restart_with(recorder: RunningRecorder, options: RecordingOptions) -> Stub:
    await recorder.stop()
    recorder.options = options
    await recorder.start()
    return aio(recorder.stub())


@contextlib.asynccontextmanager
async def watching(stub: Stub, agent_id: str = "") -> AsyncIterator[asyncio.Queue[Any]]:
    """A WatchSessions subscription that is live (proven by a seen warm-up) on entry."""
    call = stub.WatchSessions(api.WatchSessionsRequest(agent_id=agent_id), timeout=DEADLINE)
    queue: asyncio.Queue[Any] = asyncio.Queue()

    async def pump() -> None:
        async for message in call:
            await queue.put(message)

    task = asyncio.create_task(pump())
    try:
        # The subscription starts on the server some time after the call; admit
        # warm-up sessions until one is seen, so no later event can be missed.
        for attempt in range(200):
            warm = f"warmup-{attempt}"
            await stub.OpenSession(
                api.OpenSessionRequest(session_id=warm, agent_id=agent_id or "w"), timeout=DEADLINE
            )
            got = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait({got}, timeout=0.05)
            if done:
                while got.result().session_id != warm:
                    got = asyncio.ensure_future(queue.get())
                    await got
                break
            got.cancel()
        else:
            raise AssertionError("WatchSessions never delivered a warm-up admission")
        yield queue
    finally:
        call.cancel()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await task


async def next_lifecycle(queue: asyncio.Queue[Any]) -> api.WatchSessionsResponse:
    message = await asyncio.wait_for(queue.get(), DEADLINE)
    assert isinstance(message, api.WatchSessionsResponse)
    return message


# -- rule 1: new session ------------------------------------------------------------------


async def test_rule1_first_agent_start_forms_a_first_loop_session(
    recorder: RunningRecorder,
) -> None:
    stub = aio(recorder.stub())
    assert await append(stub, [agent_start("s1", "s1.main.0", agent="coder", at=5)]) == [0]
    session = await get_session(stub, "s1")
    assert session.session_id == "s1"
    assert session.agent_id == "coder"
    assert session.created_at == ts(5)
    assert session.last_active_at == ts(5)
    assert session.formation.WhichOneof("kind") == "first_loop"
    assert session.formation.first_loop.timestamp == ts(5)
    assert session.scope == session_pb2.SESSION_SCOPE_EPHEMERAL
    assert not session.HasField("parent_spawn_ref")
    assert not session.HasField("finalized_at")
    assert [loop.loop_id for loop in session.loops] == ["s1.main.0"]

    await append(stub, [agent_start("s1", "s1.main.1", "s1.main.0", agent="coder", at=8)])
    session = await get_session(stub, "s1")
    assert session.created_at == ts(5)
    assert session.last_active_at == ts(8)
    assert session.formation.first_loop.timestamp == ts(5)
    assert [loop.loop_id for loop in session.loops] == ["s1.main.0", "s1.main.1"]


# -- rule 2: sub-agent inbound link -------------------------------------------------------


async def test_rule2_parent_in_another_session_links_the_sub_agent_session(
    recorder: RunningRecorder,
) -> None:
    stub = aio(recorder.stub())
    await append(stub, [agent_start("lead", "lead.main.0", agent="lead", at=1)])
    await append(stub, [agent_start("sub", "sub.main.0", "lead.main.0", agent="helper", at=2)])
    sub = await get_session(stub, "sub")
    assert sub.agent_id == "helper"
    assert sub.parent_spawn_ref == session_pb2.SpawnRef(
        parent_session_id="lead", parent_loop_id="lead.main.0"
    )
    assert sub.loops[0].parent_loop_id == "lead.main.0"
    lead = await get_session(stub, "lead")
    assert not lead.HasField("parent_spawn_ref")


# -- rule 3: loop start -------------------------------------------------------------------


async def test_rule3_agent_start_creates_a_running_loop_with_its_fields(
    recorder: RunningRecorder,
) -> None:
    stub = aio(recorder.stub())
    start = agent_start(
        "s",
        "s.fast.0",
        agent="coder",
        kind=continuation("branch", "try-2"),
        config=config("m", "p", "fast"),
        metadata={"task": "t-1", "n": 2},
        at=3,
    )
    await append(stub, [start])
    loop = await get_loop(stub, "s.fast.0")
    assert loop.loop_id == "s.fast.0"
    assert loop.session_id == "s"
    assert loop.agent_id == "coder"
    assert not loop.HasField("parent_loop_id")
    assert loop.status == RUNNING
    assert loop.continuation_kind == continuation("branch", "try-2")
    assert loop.config == config("m", "p", "fast")
    assert loop.metadata == value({"task": "t-1", "n": 2})
    assert loop.started_at == ts(3)
    assert not loop.HasField("ended_at")
    assert [(e.sequence, e.event) for e in loop.events] == [(0, start)]
    # A loop that has started cannot start again (kept in the refusal log).
    again = await refused_event(stub, [start], grpc.StatusCode.ALREADY_EXISTS)
    assert "s.fast.0" in again.message and not again.holds_slot


async def test_rule3_agent_start_promotes_a_pending_loop(recorder: RunningRecorder) -> None:
    stub = aio(recorder.stub())
    await append(stub, [agent_start("s", "s.main.0", at=1), parallel_start("s", ["s.a.1"], at=2)])
    assert (await get_loop(stub, "s.a.1")).status == PENDING
    await append(stub, [agent_start("s", "s.a.1", "s.main.0", config=config(config_id="a"), at=3)])
    loop = await get_loop(stub, "s.a.1")
    assert loop.status == RUNNING
    assert loop.started_at == ts(3)
    assert loop.parent_loop_id == "s.main.0"
    assert loop.config.config_id == "a"
    assert sequences(loop) == [0]


# -- rule 4: event stream -----------------------------------------------------------------


async def test_rule4_gapless_sequences_and_a_not_open_loop_refused_in_stream(
    recorder: RunningRecorder,
) -> None:
    stub = aio(recorder.stub())
    stream = RecordStream(stub, "writer-1")
    first = [
        agent_start("s", "s.main.0", at=1),
        agent_start("s", "s.main.1", "s.main.0", at=1),
        progress("s.main.0", "c1", "bash", "a"),
        input_rejected("s.main.1", "empty"),
    ]
    ack = await stream.send(first)
    assert list(ack.sequences) == [0, 0, 1, 1]
    assert not ack.HasField("rejection")

    bad = await stream.send(
        [progress("s.main.0", "c1", "bash", "b"), progress("s.ghost.7", "x", "t", "?")]
    )
    assert list(bad.sequences) == [2, 0]
    assert not bad.HasField("rejection")
    (refusal,) = bad.refusals
    assert refusal.index == 1 and not refusal.holds_slot
    assert refusal.code == code_pb2.FAILED_PRECONDITION
    assert refusal.reason == "LOOP_NOT_OPEN"
    assert refusal.metadata["loop_id"] == "s.ghost.7"
    assert "s.ghost.7" in refusal.message

    # The stream stays open; the batch's valid event was stored.
    again = await stream.send([progress("s.main.0", "c1", "bash", "c")])
    assert list(again.sequences) == [3]
    assert await stream.close() == grpc.StatusCode.OK
    loop = await get_loop(stub, "s.main.0")
    assert sequences(loop) == [0, 1, 2, 3]
    assert [e.event.progress_message.text for e in loop.events[1:]] == ["a", "b", "c"]
    (logged,) = (await get_session(stub, "s")).refusals
    assert (logged.loop_id, logged.reason, logged.writer_id) == (
        "s.ghost.7",
        "LOOP_NOT_OPEN",
        "writer-1",
    )
    assert events_pb2.AgentEvent.FromString(logged.event).progress_message.text == "?"
    assert sequences(await get_loop(stub, "s.main.1")) == [0, 1]
    await refused(get_loop(stub, "s.ghost.7"), grpc.StatusCode.NOT_FOUND)


async def test_rule4_an_event_for_an_ended_loop_is_refused_by_append_with_details(
    recorder: RunningRecorder,
) -> None:
    stub = aio(recorder.stub())
    await append(stub, [agent_start("s", "s.main.0", at=1), agent_end("s.main.0", at=2)])
    late = await refused_event(
        stub,
        [agent_start("s", "s.main.1", at=3), progress("s.main.0", "c", "t", "late")],
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert late.message == "loop 's.main.0' has ended (completed)"
    assert (late.reason, late.metadata["loop_id"], late.holds_slot) == (
        "LOOP_NOT_OPEN",
        "s.main.0",
        False,
    )
    # One bad event costs nothing else: the batch's AgentStart was stored.
    assert (await get_loop(stub, "s.main.1")).status == RUNNING
    session = await get_session(stub, "s")
    assert [loop.loop_id for loop in session.loops] == ["s.main.0", "s.main.1"]
    assert [(r.loop_id, r.reason) for r in session.refusals] == [("s.main.0", "LOOP_NOT_OPEN")]


async def test_rule4_stream_events_replays_and_follows_a_loop(recorder: RunningRecorder) -> None:
    stub = aio(recorder.stub())
    await append(stub, [agent_start("s", "s.main.0", at=1), progress("s.main.0", "c", "t", "1")])
    tail = stub.StreamEvents(
        api.StreamEventsRequest(loop_id="s.main.0", follow=True), timeout=DEADLINE
    )
    seen: list[api.StreamedEvent] = []
    async for page in tail:
        seen.extend(page.events)
        if len(seen) == 2:  # the replay is complete: now append while following
            await append(stub, [progress("s.main.0", "c", "t", "2"), agent_end("s.main.0", at=2)])
    assert [(r.loop_id, r.event.sequence) for r in seen] == [("s.main.0", i) for i in range(4)]
    assert [r.event.event.WhichOneof("event") for r in seen] == [
        "agent_start",
        "progress_message",
        "progress_message",
        "agent_end",
    ]
    cursors = [r.cursor for r in seen]
    assert cursors == sorted(cursors) and len(set(cursors)) == 4
    # Resuming after a cursor gives only what came later.
    rest = stub.StreamEvents(
        api.StreamEventsRequest(session_id="s", after_cursor=cursors[1]), timeout=DEADLINE
    )
    assert [e.event.sequence async for page in rest for e in page.events] == [2, 3]


# -- rule 5: streaming deltas -------------------------------------------------------------


async def test_rule5_message_updates_are_dropped_by_default(recorder: RunningRecorder) -> None:
    stub = aio(recorder.stub())
    partial = assistant("Hel")
    got = await append(
        stub,
        [
            agent_start("s", "s.main.0", at=1),
            message_update("s.main.0", partial, "Hel"),
            message_end("s.main.0", assistant("Hello")),
        ],
    )
    assert got == [0, 0, 1]
    assert kinds(await get_loop(stub, "s.main.0")) == ["agent_start", "message_end"]


async def test_rule5_a_dropped_message_update_for_a_loop_not_open_is_refused(
    recorder: RunningRecorder,
) -> None:
    stub = aio(recorder.stub())
    await append(stub, [agent_start("s", "s.main.0", at=1)])
    gone = await refused_event(
        stub,
        [progress("s.main.0", "c", "t", "x"), message_update("s.gone.0", user("x"), "x")],
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert (gone.reason, gone.metadata["loop_id"]) == ("LOOP_NOT_OPEN", "s.gone.0")
    assert sequences(await get_loop(stub, "s.main.0")) == [0, 1]


async def test_rule5_message_updates_are_stored_when_configured(
    recorder: RunningRecorder,
) -> None:
    stub = await restart_with(recorder, RecordingOptions(include_streaming_events=True))
    update = message_update("s.main.0", assistant("Hel"), "Hel")
    got = await append(
        stub,
        [
            agent_start("s", "s.main.0", at=1),
            update,
            message_end("s.main.0", assistant("Hello")),
        ],
    )
    assert got == [0, 1, 2]
    loop = await get_loop(stub, "s.main.0")
    assert kinds(loop) == ["agent_start", "message_update", "message_end"]
    assert loop.events[1].event == update


# -- rule 6: turns ------------------------------------------------------------------------


def _turn(loop: str, index: int, at: float) -> tuple[list[Any], session_pb2.Turn]:
    """The events of one turn with a tool call, and the Turn they must materialize."""
    ask = user(f"question {index}", at=at)
    answer = assistant(
        f"answer {index}",
        use=usage(100 + index, 10),
        tool_calls=[(f"call-{index}", "grep", {"q": "x"})],
        at=at + 1,
    )
    result = tool_result(f"call-{index}", "grep", "3 matches", at=at + 2)
    events = [
        turn_start(loop, index, trigger=types_pb2.TURN_TRIGGER_USER, at=at),
        message_end(loop, ask),
        turn_request(loop, index, {"messages": 1, "model": "m"}, at=at),
        message_end(loop, answer),
        tool_start(loop, f"call-{index}", "grep", {"q": "x"}),
        tool_end(loop, f"call-{index}", "grep", text="3 matches"),
        turn_end(loop, answer, use=usage(100 + index, 10), tool_results=[result], at=at + 3),
    ]
    turn = session_pb2.Turn(triggered_by=types_pb2.TURN_TRIGGER_USER)
    turn.turn_id.loop_id = loop
    turn.turn_id.turn_index = index
    turn.usage.CopyFrom(usage(100 + index, 10))
    turn.input_messages.append(ask)
    turn.output_message.CopyFrom(answer)
    stamped = turn.tool_results.add()
    stamped.CopyFrom(result)
    stamped.turn_id.CopyFrom(turn.turn_id)
    turn.started_at.CopyFrom(ts(at))
    turn.ended_at.CopyFrom(ts(at + 3))
    return events, turn


async def test_rule6_turns_are_materialized_with_inputs_and_stamped_tool_results(
    recorder: RunningRecorder,
) -> None:
    stub = aio(recorder.stub())
    first, turn0 = _turn("s.main.0", 0, 10)
    second, turn1 = _turn("s.main.0", 1, 20)
    await append(stub, [agent_start("s", "s.main.0", config=config(), at=1), *first])
    await append(stub, second[:3])  # a partial turn spans batches
    await append(stub, second[3:])
    loop = await get_loop(stub, "s.main.0")
    assert list(loop.turns) == [turn0, turn1]  # request payloads dropped: capture is off
    assert kinds(loop).count("turn_request") == 2  # ...but the events are kept
    assert sequences(loop) == list(range(15))
    assert loop.config == config()


async def test_get_session_skip_messages_leaves_out_only_messages_and_turns(
    recorder: RunningRecorder,
) -> None:
    """The outline view: loops and events as stored, messages and turns left for GetLoop."""
    stub = aio(recorder.stub())
    first, turn0 = _turn("s.main.0", 0, 10)
    said = user("bye", at=30)
    await append(
        stub,
        [
            agent_start("s", "s.main.0", config=config(), at=1),
            *first,
            agent_end("s.main.0", [said], at=31),
        ],
    )
    full = await get_session(stub, "s")
    request = api.GetSessionRequest(session_id="s", skip_messages=True)
    outline = (await stub.GetSession(request, timeout=DEADLINE)).session
    assert list(full.loops[0].turns) == [turn0]
    assert list(full.loops[0].messages) == [said]
    assert list(outline.loops[0].turns) == []
    assert list(outline.loops[0].messages) == []
    expected = session_pb2.LoopRecord()
    expected.CopyFrom(full.loops[0])
    del expected.turns[:]
    del expected.messages[:]
    assert outline.loops[0] == expected
    assert outline.session_id == full.session_id and len(outline.loops) == 1


async def test_rule6_request_payload_is_kept_with_capture_on(recorder: RunningRecorder) -> None:
    stub = await restart_with(recorder, RecordingOptions(capture_turn_requests=True))
    events, turn = _turn("s.main.0", 0, 10)
    turn.request_payload.CopyFrom(struct({"messages": 1, "model": "m"}))
    await append(stub, [agent_start("s", "s.main.0", at=1), *events])
    assert list((await get_loop(stub, "s.main.0")).turns) == [turn]


async def test_rule6_turn_end_without_partial_turn_and_config_from_turn_end(
    recorder: RunningRecorder,
) -> None:
    stub = aio(recorder.stub())
    answer = assistant("orphan", model="gpt-5", provider="openai")
    await append(stub, [agent_start("s", "s.cfg-7.0", at=1), turn_end("s.cfg-7.0", answer, at=2)])
    loop = await get_loop(stub, "s.cfg-7.0")
    assert len(loop.turns) == 0
    assert kinds(loop) == ["agent_start", "turn_end"]
    assert loop.config == types_pb2.LoopConfigSnapshot(
        model="gpt-5", provider="openai", config_id="cfg-7"
    )
    # An open partial turn is discarded by AgentEnd: no turn appears.
    await append(
        stub,
        [
            turn_start("s.cfg-7.0", 0, at=3),
            message_end("s.cfg-7.0", user("q")),
            agent_end("s.cfg-7.0"),
        ],
    )
    assert len((await get_loop(stub, "s.cfg-7.0")).turns) == 0


# -- rule 7: a tool spawned a sub-agent ----------------------------------------------------


FULL_REF = session_pb2.SpawnRef(
    parent_session_id="p", parent_loop_id="p.main.0", tool_call_id="call-1", tool_name="delegate"
)
CHILD_REF = session_pb2.ChildLoopRef(
    tool_call_id="call-1", tool_name="delegate", child_loop_id="c.main.0", child_session_id="c"
)


async def test_rule7_spawn_ref_filled_when_the_child_is_open(recorder: RunningRecorder) -> None:
    stub = aio(recorder.stub())
    await append(
        stub, [agent_start("p", "p.main.0", at=1), tool_start("p.main.0", "call-1", "delegate")]
    )
    await append(stub, [agent_start("c", "c.main.0", "p.main.0", agent="helper", at=2)])
    await append(stub, [tool_end("p.main.0", "call-1", "delegate", child_loop_id="c.main.0")])
    assert list((await get_loop(stub, "p.main.0")).child_loop_refs) == [CHILD_REF]
    child = await get_session(stub, "c")
    assert child.parent_spawn_ref == FULL_REF
    assert child.loops[0].status == RUNNING


async def test_rule7_spawn_ref_filled_when_the_child_is_finalized(
    recorder: RunningRecorder,
) -> None:
    stub = aio(recorder.stub())
    await append(stub, [agent_start("p", "p.main.0", at=1)])
    await append(
        stub, [agent_start("c", "c.main.0", "p.main.0", at=2), agent_end("c.main.0", at=3)]
    )
    done = await stub.Checkpoint(api.CheckpointRequest(session_id="c"), timeout=DEADLINE)
    assert list(done.finalized_session_ids) == ["c"]
    await append(
        stub, [tool_end("p.main.0", "call-1", "delegate", child_loop_id="c.main.0", on_event=True)]
    )
    child = await get_session(stub, "c")
    assert child.parent_spawn_ref == FULL_REF
    assert child.HasField("finalized_at")
    assert list((await get_loop(stub, "p.main.0")).child_loop_refs) == [CHILD_REF]


async def test_rule7_spawn_ref_reaches_a_child_session_that_appears_later(
    recorder: RunningRecorder,
) -> None:
    stub = aio(recorder.stub())
    await append(stub, [agent_start("p", "p.main.0", at=1)])
    await append(stub, [tool_end("p.main.0", "call-1", "delegate", child_loop_id="c.main.0")])
    await refused(get_session(stub, "c"), grpc.StatusCode.NOT_FOUND)
    assert list((await get_loop(stub, "p.main.0")).child_loop_refs) == [CHILD_REF]
    await append(stub, [agent_start("c", "c.main.0", "p.main.0", agent="helper", at=5)])
    child = await get_session(stub, "c")
    assert child.parent_spawn_ref == FULL_REF
    assert child.formation.first_loop.timestamp == ts(5)


# -- rule 8: parallel evaluation ------------------------------------------------------------


async def test_rule8_parallel_branches_pending_at_once_then_marked_open_or_ended(
    recorder: RunningRecorder,
) -> None:
    stub = aio(recorder.stub())
    branches = ["s.cfg-b.1", "s.cfg-a.1", "s.cfg-c.1"]
    await append(stub, [agent_start("s", "s.main.0", agent="lead", at=1)])
    assert await append(stub, [parallel_start("s", branches, at=2)]) == [0]
    session = await get_session(stub, "s")
    assert [loop.loop_id for loop in session.loops] == ["s.main.0", *branches]
    for loop in session.loops[1:]:
        assert loop.status == PENDING
        assert loop.session_id == "s"
        assert loop.agent_id == "lead"
        assert loop.started_at == ts(2)
        assert len(loop.events) == 0
        assert not loop.HasField("parallel_group")

    await append(stub, [agent_start("s", b, "s.main.0", agent="lead", at=3) for b in branches[:2]])
    await append(stub, [agent_end("s.cfg-b.1", rejection="worse", at=4)])
    ended = await append(stub, [parallel_end("s", "s.cfg-a.1", 1, use=usage(30, 3), at=5)])
    assert ended == [0]
    session = await get_session(stub, "s")
    by_id = {loop.loop_id: loop for loop in session.loops}
    assert [by_id[b].status for b in branches] == [REJECTED, RUNNING, PENDING]
    for loop_id in branches:
        group = by_id[loop_id].parallel_group
        assert list(group.all_loop_ids) == branches
        assert group.selected_loop_id == "s.cfg-a.1"
        assert group.selected_config_index == 1
        assert group.evaluation_usage == usage(30, 3)
        assert group.is_selected == (loop_id == "s.cfg-a.1")
    assert not by_id["s.main.0"].HasField("parallel_group")
    assert [s.loop_id for s in parallel_siblings(session, "s.cfg-c.1")] == branches


# -- rule 9: loop end ------------------------------------------------------------------------


async def test_rule9_completed_and_rejected_with_messages_usage_and_children(
    recorder: RunningRecorder,
) -> None:
    stub = aio(recorder.stub())
    await append(
        stub,
        [
            agent_start("s", "s.main.0", at=1),
            agent_start("s", "s.main.1", "s.main.0", at=2),
            agent_start("s", "s.main.2", "s.main.0", at=2),
            agent_start("x", "x.main.0", "s.main.0", at=2),
        ],
    )
    messages = [user("go", at=1), assistant("done", model="m9", provider="p9", at=2)]
    await append(stub, [agent_end("s.main.2", messages, use=usage(40, 4, cache_read=7), at=5)])
    await append(
        stub, [agent_end("s.main.1", rejection="policy", at=6), agent_end("x.main.0", at=6)]
    )
    await append(stub, [agent_end("s.main.0", at=7)])

    done = await get_loop(stub, "s.main.2")
    assert done.status == COMPLETED
    assert not done.HasField("rejection")
    assert done.ended_at == ts(5)
    assert list(done.messages) == messages
    assert done.usage == usage(40, 4, cache_read=7)
    assert done.config == types_pb2.LoopConfigSnapshot(model="m9", provider="p9", config_id="main")
    assert kinds(done) == ["agent_start", "agent_end"]

    rejected = await get_loop(stub, "s.main.1")
    assert rejected.status == REJECTED
    assert rejected.rejection == "policy"
    assert rejected.ended_at == ts(6)
    assert not rejected.HasField("config")

    parent = await get_loop(stub, "s.main.0")
    assert list(parent.children_loop_ids) == ["s.main.2", "s.main.1"]  # x.main.0: other session
    assert parent.status == COMPLETED


async def test_rule9_a_loops_messages_are_stored_once_and_read_in_every_view(
    recorder: RunningRecorder,
) -> None:
    """Kept in the AgentEnd event alone, even when a child ends after its parent."""
    stub = aio(recorder.stub())
    messages = [user("go", at=1), assistant("done", model="m", provider="p", at=2)]
    await append(
        stub,
        [agent_start("s", "s.main.0", at=1), agent_start("s", "s.main.1", "s.main.0", at=2)],
    )
    await append(stub, [agent_end("s.main.0", messages, at=3)])  # its row is updated
    await recorder.stop()  # the next server loads the ended parent's row back...
    await recorder.start()
    stub = aio(recorder.stub())
    await append(stub, [agent_end("s.main.1", at=4)])  # ...to rewrite it with its child

    parent = await get_loop(stub, "s.main.0")
    assert list(parent.messages) == messages
    assert list(parent.children_loop_ids) == ["s.main.1"]
    for skip_events in (False, True):
        session = await get_session(stub, "s", skip_events=skip_events)
        assert [list(loop.messages) for loop in session.loops] == [messages, []]
    request = api.GetSessionRequest(session_id="s", skip_messages=True)
    outline = (await stub.GetSession(request, timeout=DEADLINE)).session
    assert [list(loop.messages) for loop in outline.loops] == [[], []]

    conn = sqlite3.connect(recorder.db_path)
    try:
        blob, end_event = conn.execute(
            "SELECT record, end_event FROM loops WHERE loop_id = 's.main.0'"
        ).fetchone()
        [stored_end] = conn.execute(
            "SELECT body FROM events WHERE loop_id = 's.main.0' AND kind = 'agent_end'"
        ).fetchone()
    finally:
        conn.close()
    assert end_event == 1  # AgentStart is 0
    assert list(session_pb2.LoopRecord.FromString(blob).messages) == []
    assert list(events_pb2.AgentEvent.FromString(stored_end).agent_end.messages) == messages


# -- rule 10: flush, checkpoint, lifecycle ---------------------------------------------------


async def test_rule10_flush_one_session_then_all(recorder: RunningRecorder) -> None:
    stub = aio(recorder.stub())
    await append(
        stub,
        [
            agent_start("a", "a.main.0", at=1),
            turn_start("a.main.0", 0, at=2),
            message_end("a.main.0", user("q")),
            agent_start("b", "b.main.0", at=1),
            parallel_start("b", ["b.x.1", "b.y.1"], at=2),
        ],
    )
    one = await stub.Flush(api.FlushRequest(session_id="a"), timeout=DEADLINE)
    assert list(one.aborted_loop_ids) == ["a.main.0"]
    assert list(one.finalized_session_ids) == ["a"]
    a = await get_session(stub, "a")
    assert a.HasField("finalized_at")
    assert a.loops[0].status == ABORTED
    assert a.loops[0].HasField("ended_at")
    assert len(a.loops[0].turns) == 0  # the partial turn was dropped
    b = await get_session(stub, "b")
    assert not b.HasField("finalized_at")
    assert [loop.status for loop in b.loops] == [RUNNING, PENDING, PENDING]
    late = await refused_event(
        stub, [progress("a.main.0", "c", "t", "late")], grpc.StatusCode.FAILED_PRECONDITION
    )
    assert late.message == "loop 'a.main.0' has ended (aborted)"

    every = await stub.Flush(api.FlushRequest(), timeout=DEADLINE)
    assert sorted(every.aborted_loop_ids) == ["b.main.0", "b.x.1", "b.y.1"]
    assert list(every.finalized_session_ids) == ["b"]  # a was finalized already
    b = await get_session(stub, "b")
    assert b.HasField("finalized_at")
    assert [loop.status for loop in b.loops] == [ABORTED, ABORTED, ABORTED]
    await refused(stub.Flush(api.FlushRequest(session_id="nope")), grpc.StatusCode.NOT_FOUND)


async def test_rule10_checkpoint_finalizes_only_idle_sessions(recorder: RunningRecorder) -> None:
    stub = aio(recorder.stub())
    await append(
        stub,
        [
            agent_start("idle", "idle.main.0", at=1),
            agent_end("idle.main.0", at=2),
            agent_start("busy", "busy.main.0", at=1),
        ],
    )
    scoped = await stub.Checkpoint(api.CheckpointRequest(session_id="busy"), timeout=DEADLINE)
    assert list(scoped.finalized_session_ids) == []
    every = await stub.Checkpoint(api.CheckpointRequest(), timeout=DEADLINE)
    assert list(every.finalized_session_ids) == ["idle"]
    assert (await get_session(stub, "idle")).HasField("finalized_at")
    busy = await get_session(stub, "busy")
    assert not busy.HasField("finalized_at")
    assert busy.loops[0].status == RUNNING
    assert not busy.loops[0].HasField("ended_at")


async def test_rule10_watch_sessions_sees_admission_and_finalization(
    recorder: RunningRecorder,
) -> None:
    stub = aio(recorder.stub())
    async with watching(stub, agent_id="watched") as queue:
        await append(stub, [agent_start("w1", "w1.main.0", agent="other", at=1)])
        await append(stub, [agent_start("w2", "w2.main.0", agent="watched", at=1)])
        admitted = await next_lifecycle(queue)
        assert admitted.lifecycle == api.SESSION_LIFECYCLE_ADMITTED
        assert (admitted.session_id, admitted.agent_id) == ("w2", "watched")
        assert admitted.HasField("timestamp")
        await append(stub, [agent_end("w2.main.0", at=2)])
        await stub.Checkpoint(api.CheckpointRequest(session_id="w2"), timeout=DEADLINE)
        finalized = await next_lifecycle(queue)
        assert finalized.lifecycle == api.SESSION_LIFECYCLE_FINALIZED
        assert (finalized.session_id, finalized.agent_id) == ("w2", "watched")
        # A new loop re-admits the finalized session.
        await append(stub, [agent_start("w2", "w2.main.1", agent="watched", at=3)])
        again = await next_lifecycle(queue)
        assert (again.lifecycle, again.session_id) == (api.SESSION_LIFECYCLE_ADMITTED, "w2")
        assert not (await get_session(stub, "w2")).HasField("finalized_at")
        assert queue.empty()


async def test_rule10_a_followed_session_tail_ends_when_the_session_is_flushed(
    recorder: RunningRecorder,
) -> None:
    stub = aio(recorder.stub())
    await append(stub, [agent_start("f", "f.main.0", at=1)])
    tail = stub.StreamEvents(api.StreamEventsRequest(session_id="f", follow=True), timeout=DEADLINE)
    seen: list[str] = []
    async for page in tail:
        seen.extend(str(item.event.event.WhichOneof("event")) for item in page.events)
        if len(seen) == 1:  # replayed; now write and flush while following
            await append(stub, [progress("f.main.0", "c", "t", "x")])
            await stub.Flush(api.FlushRequest(session_id="f"), timeout=DEADLINE)
    assert seen == ["agent_start", "progress_message"]
    assert await tail.code() == grpc.StatusCode.OK


# -- rule 11: queries ------------------------------------------------------------------------


async def test_rule11_tree_queries_and_total_usage(recorder: RunningRecorder) -> None:
    stub = aio(recorder.stub())
    await append(stub, [agent_start("x", "x.main.0", agent="other", at=0)])
    await append(
        stub,
        [
            agent_start("q", "q.main.0", agent="qa", at=1),
            agent_start("q", "q.main.1", "q.main.0", agent="qa", at=2),
            agent_start("q", "q.main.2", "q.main.1", agent="qa", at=3),
            parallel_start("q", ["q.a.3", "q.b.3"], at=4),
            agent_start("q", "q.a.3", "q.main.0", agent="qa", at=4),
            agent_start("q", "q.b.3", "q.main.0", agent="qa", at=4),
            agent_start("q", "q.main.4", "x.main.0", agent="qa", at=5),
        ],
    )
    await append(
        stub,
        [
            agent_end("q.main.2", use=usage(1, 2, reasoning=3), at=6),
            agent_end("q.main.1", use=usage(10, 20, cache_write=5), at=6),
            agent_end("q.a.3", use=usage(100, 0), at=6),
            agent_end("q.b.3", use=usage(1000, 0), at=6),
            parallel_end("q", "q.a.3", 0, at=7),
            agent_end("q.main.0", use=usage(5, 5), at=8),
        ],
    )
    session = await get_session(stub, "q")
    assert [loop.loop_id for loop in root_loops(session)] == ["q.main.0", "q.main.4"]
    assert [loop.loop_id for loop in children_of(session, "q.main.0")] == [
        "q.main.1",
        "q.a.3",
        "q.b.3",
    ]
    assert [loop.loop_id for loop in children_of(session, "q.main.1")] == ["q.main.2"]
    assert [loop.loop_id for loop in parallel_siblings(session, "q.b.3")] == ["q.a.3", "q.b.3"]
    assert parallel_siblings(session, "q.main.1") == []
    assert loop_chain_to(session, "q.main.2") == ["q.main.0", "q.main.1", "q.main.2"]
    assert loop_chain_to(session, "q.main.4") == ["x.main.0", "q.main.4"]
    # The same chain, walked loop by loop on the server.
    chain, current = [], "q.main.2"
    while True:
        loop = await get_loop(stub, current)
        chain.append(loop.loop_id)
        if not loop.HasField("parent_loop_id"):
            break
        current = loop.parent_loop_id
    assert chain[::-1] == ["q.main.0", "q.main.1", "q.main.2"]

    expected = types_pb2.Usage(
        input=1116, output=27, reasoning=3, cache_write=5, total_tokens=1116 + 27 + 3 + 5
    )
    assert total_usage(session) == expected
    listed = await stub.ListSessions(api.ListSessionsRequest(agent_id="qa"), timeout=DEADLINE)
    [summary] = listed.sessions
    assert summary.usage == expected
    assert summary.loops == api.LoopStatusCounts(completed=5, running=1)
    assert summary.session_id == "q"
    assert summary.formation == session.formation
    assert summary.created_at == ts(1) and summary.last_active_at == ts(5)


async def test_rule11_sessions_of_an_agent_newest_first_paged_and_delete(
    recorder: RunningRecorder,
) -> None:
    stub = aio(recorder.stub())
    for n in range(1, 6):
        await append(stub, [agent_start(f"l{n}", f"l{n}.main.0", agent="lister", at=n)])
    await append(stub, [agent_start("o1", "o1.main.0", agent="other", at=9)])
    pages: list[list[str]] = []
    token = ""
    while True:
        page = await stub.ListSessions(
            api.ListSessionsRequest(agent_id="lister", page_size=2, page_token=token),
            timeout=DEADLINE,
        )
        pages.append([s.session_id for s in page.sessions])
        token = page.next_page_token
        if not token:
            break
    assert pages == [["l5", "l4"], ["l3", "l2"], ["l1"]]
    everyone = await stub.ListSessions(api.ListSessionsRequest(), timeout=DEADLINE)
    assert [s.session_id for s in everyone.sessions] == ["o1", "l5", "l4", "l3", "l2", "l1"]

    await stub.DeleteSession(api.DeleteSessionRequest(session_id="l3"), timeout=DEADLINE)
    await refused(get_session(stub, "l3"), grpc.StatusCode.NOT_FOUND)
    await refused(get_loop(stub, "l3.main.0"), grpc.StatusCode.NOT_FOUND)
    error = await refused(
        stub.DeleteSession(api.DeleteSessionRequest(session_id="l3"), timeout=DEADLINE),
        grpc.StatusCode.NOT_FOUND,
    )
    assert error_info(error).metadata["session_id"] == "l3"
    listed = await stub.ListSessions(api.ListSessionsRequest(agent_id="lister"), timeout=DEADLINE)
    assert [s.session_id for s in listed.sessions] == ["l5", "l4", "l2", "l1"]
    # A deleted session's loop is not open any more: its events are refused.
    await refused_event(
        stub, [progress("l3.main.0", "c", "t", "x")], grpc.StatusCode.FAILED_PRECONDITION
    )


# -- rule 12: formation on demand -------------------------------------------------------------


async def test_rule12_open_session_explicit_then_its_first_loop(recorder: RunningRecorder) -> None:
    stub = aio(recorder.stub())
    request = api.OpenSessionRequest(
        session_id="e1", agent_id="planner", scope=session_pb2.SESSION_SCOPE_PERSISTENT
    )
    request.timestamp.CopyFrom(ts(10))
    opened = (await stub.OpenSession(request, timeout=DEADLINE)).session
    assert opened.session_id == "e1"
    assert opened.agent_id == "planner"
    assert opened.scope == session_pb2.SESSION_SCOPE_PERSISTENT
    assert opened.formation.WhichOneof("kind") == "explicit"
    assert opened.formation.explicit.timestamp == ts(10)
    assert opened.created_at == ts(10) and opened.last_active_at == ts(10)
    assert len(opened.loops) == 0
    assert await get_session(stub, "e1") == opened

    await append(stub, [agent_start("e1", "e1.main.0", agent="planner", at=11)])
    session = await get_session(stub, "e1")
    assert session.formation == opened.formation
    assert session.created_at == ts(10)
    assert session.last_active_at == ts(11)
    assert session.scope == session_pb2.SESSION_SCOPE_PERSISTENT
    assert [loop.loop_id for loop in session.loops] == ["e1.main.0"]
    await refused(stub.OpenSession(request, timeout=DEADLINE), grpc.StatusCode.ALREADY_EXISTS)
    generated = await stub.OpenSession(api.OpenSessionRequest(agent_id="planner"), timeout=DEADLINE)
    assert generated.session.session_id not in ("", "e1")


async def test_rule12_rotate_session_after_inactivity_only(recorder: RunningRecorder) -> None:
    stub = aio(recorder.stub())
    await append(stub, [agent_start("r1", "r1.main.0", agent="rot", at=100)])

    fresh = api.RotateSessionRequest(agent_id="rot", threshold_secs=60, new_session_id="r2")
    fresh.timestamp.CopyFrom(ts(160))
    kept = await stub.RotateSession(fresh, timeout=DEADLINE)
    assert kept.rotated is False
    assert kept.session.session_id == "r1"
    assert kept.session.formation.WhichOneof("kind") == "first_loop"
    await refused(get_session(stub, "r2"), grpc.StatusCode.NOT_FOUND)

    idle = api.RotateSessionRequest(
        agent_id="rot",
        threshold_secs=60,
        new_session_id="r2",
        scope=session_pb2.SESSION_SCOPE_PERSISTENT,
    )
    idle.timestamp.CopyFrom(ts(161))
    rotated = await stub.RotateSession(idle, timeout=DEADLINE)
    assert rotated.rotated is True
    session = rotated.session
    assert session.session_id == "r2"
    assert session.agent_id == "rot"
    assert session.scope == session_pb2.SESSION_SCOPE_PERSISTENT
    timeout = session.formation.inactivity_timeout
    assert session.formation.WhichOneof("kind") == "inactivity_timeout"
    assert timeout.threshold_secs == 60
    assert timeout.previous_session_id == "r1"
    assert timeout.timestamp == ts(161)
    assert session.created_at == ts(161)
    assert await get_session(stub, "r2") == session

    first = api.RotateSessionRequest(agent_id="newcomer", threshold_secs=5, new_session_id="n1")
    first.timestamp.CopyFrom(ts(1))
    made = await stub.RotateSession(first, timeout=DEADLINE)
    assert made.rotated is True
    assert not made.session.formation.inactivity_timeout.HasField("previous_session_id")


# -- rule 13: scope and retention -------------------------------------------------------------


async def test_rule13_prune_keeps_persistent_and_open_sessions(recorder: RunningRecorder) -> None:
    stub = aio(recorder.stub())
    keep = api.OpenSessionRequest(
        session_id="keep", agent_id="a", scope=session_pb2.SESSION_SCOPE_PERSISTENT
    )
    keep.timestamp.CopyFrom(ts(1))
    await stub.OpenSession(keep, timeout=DEADLINE)
    await append(
        stub,
        [
            agent_start("keep", "keep.main.0", agent="a", at=1),
            agent_end("keep.main.0", at=2),
            agent_start("old", "old.main.0", agent="a", at=1),
            agent_end("old.main.0", at=2),
            agent_start("open", "open.main.0", agent="a", at=1),
            agent_start("new", "new.main.0", agent="a", at=500),
            agent_end("new.main.0", at=501),
        ],
    )
    await stub.Checkpoint(api.CheckpointRequest(), timeout=DEADLINE)
    cutoff = api.PruneSessionsRequest(dry_run=True)
    cutoff.older_than.CopyFrom(ts(100))
    dry = await stub.PruneSessions(cutoff, timeout=DEADLINE)
    assert list(dry.session_ids) == ["old"]
    await get_session(stub, "old")  # a dry run deletes nothing
    cutoff.dry_run = False
    pruned = await stub.PruneSessions(cutoff, timeout=DEADLINE)
    assert list(pruned.session_ids) == ["old"]
    await refused(get_session(stub, "old"), grpc.StatusCode.NOT_FOUND)
    for kept in ("keep", "open", "new"):
        await get_session(stub, kept)
    persistent = await stub.ListSessions(
        api.ListSessionsRequest(scope=session_pb2.SESSION_SCOPE_PERSISTENT), timeout=DEADLINE
    )
    assert [s.session_id for s in persistent.sessions] == ["keep"]


async def test_rule13_prune_keeps_an_opened_session_that_is_not_finalized(
    recorder: RunningRecorder,
) -> None:
    """PruneSessions deletes *finalized* EPHEMERAL sessions (recorder_service.proto).

    A session opened ahead of its first loop is not finalized and must survive.
    """
    stub = aio(recorder.stub())
    early = api.OpenSessionRequest(session_id="early", agent_id="a")
    early.timestamp.CopyFrom(ts(1))
    await stub.OpenSession(early, timeout=DEADLINE)
    await append(
        stub, [agent_start("ended", "ended.main.0", at=1), agent_end("ended.main.0", at=2)]
    )
    cutoff = api.PruneSessionsRequest()
    cutoff.older_than.CopyFrom(ts(100))
    pruned = await stub.PruneSessions(cutoff, timeout=DEADLINE)
    assert list(pruned.session_ids) == []
    await get_session(stub, "early")
    await get_session(stub, "ended")


# -- rule 14: single writer ----------------------------------------------------------------------


@pytest.mark.slow
async def test_rule14_a_second_server_on_the_same_database_refuses_to_start(
    recorder: RunningRecorder,
) -> None:
    stub = aio(recorder.stub())
    cli = Path(sys.executable).with_name("agent-recorder")
    other_socket = recorder.socket_path.with_name("other.sock")
    process = await asyncio.create_subprocess_exec(
        str(cli),
        "serve",
        "--db",
        str(recorder.db_path),
        "--listen",
        f"unix://{other_socket}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    message = err.decode()
    assert process.returncode == 2, (out, err)
    assert str(recorder.db_path) in message
    assert f"pid {os.getpid()}" in message
    assert "in use" in message
    assert not other_socket.exists()
    # The owner is unaffected.
    assert await append(stub, [agent_start("s", "s.main.0", at=1)]) == [0]


async def test_rule14_a_second_server_in_python_gets_database_in_use(
    recorder: RunningRecorder,
) -> None:
    script = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from recorder_server.server import DatabaseInUse, RecorderServer, ServerConfig\n"
        "async def main():\n"
        "    config = ServerConfig(db_path=Path(sys.argv[1]), listen='unix://' + sys.argv[2])\n"
        "    try:\n"
        "        async with RecorderServer(config):\n"
        "            print('started')\n"
        "    except DatabaseInUse as exc:\n"
        "        print(f'DatabaseInUse: {exc}')\n"
        "        raise SystemExit(3)\n"
        "asyncio.run(main())\n"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        str(recorder.db_path),
        str(recorder.socket_path.with_name("py.sock")),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 3, (out, err)
    assert out.decode().strip() == (
        f"DatabaseInUse: database {recorder.db_path} is in use by another "
        f"agent-recorder server (pid {os.getpid()})"
    )


async def test_rule14_one_writer_per_session_locked_until_its_stream_ends(
    recorder: RunningRecorder,
) -> None:
    stub = aio(recorder.stub())
    first = RecordStream(stub, "writer-a")
    ack = await first.send([agent_start("s", "s.main.0", at=1)])
    assert list(ack.sequences) == [0]

    second = RecordStream(stub, "writer-b")
    locked = await second.send([progress("s.main.0", "c", "t", "b")])
    assert list(locked.sequences) == []
    assert locked.rejection.code == code_pb2.ABORTED
    assert locked.rejection.reason == "LOCKED"
    assert locked.rejection.metadata["session_id"] == "s"
    assert "'s'" in locked.rejection.message
    # Another session is free for writer-b, on the same stream.
    assert list((await second.send([agent_start("t", "t.main.0", at=1)])).sequences) == [0]

    # writer-a reconnects (a second stream, same id) and keeps the session.
    reconnected = RecordStream(stub, "writer-a")
    assert list((await reconnected.send([progress("s.main.0", "c", "t", "a")])).sequences) == [1]
    assert await first.close() == grpc.StatusCode.OK
    still = await second.send([progress("s.main.0", "c", "t", "b")])
    assert still.rejection.reason == "LOCKED"
    # Unary Append of another writer is refused the same way, with details.
    error = await refused(
        append(stub, [progress("s.main.0", "c", "t", "u")], writer_id="writer-c"),
        grpc.StatusCode.ABORTED,
    )
    info = error_info(error)
    assert info.reason == "LOCKED"
    assert info.metadata["session_id"] == "s"

    # writer-a's last stream ends: the session is released.
    assert await reconnected.close() == grpc.StatusCode.OK
    free = await second.send([progress("s.main.0", "c", "t", "b")])
    assert list(free.sequences) == [2]
    assert await second.close() == grpc.StatusCode.OK
    texts = [e.event.progress_message.text for e in (await get_loop(stub, "s.main.0")).events[1:]]
    assert texts == ["a", "b"]


# -- bad input and re-sent events ---------------------------------------------------------------


async def test_missing_id_is_invalid_argument_naming_the_field(recorder: RunningRecorder) -> None:
    stub = aio(recorder.stub())
    nameless = agent_start("s", "s.main.0", at=1)
    nameless.agent_start.loop_id = ""
    bad = await refused_event(
        stub, [agent_start("s", "s.main.1", at=1), nameless], grpc.StatusCode.INVALID_ARGUMENT
    )
    assert bad.message == "events[1].event.agent_start.loop_id: must not be empty"
    assert bad.reason == "INVALID_FIELD"
    assert bad.metadata["field"] == "events[1].event.agent_start.loop_id"
    session = await get_session(stub, "s")  # the valid AgentStart was stored
    assert [loop.loop_id for loop in session.loops] == ["s.main.1"]
    assert [r.message for r in session.refusals] == [bad.message]

    stream = RecordStream(stub, "w")
    ack = await stream.send([progress("", "c", "t", "x")])
    (refusal,) = ack.refusals
    assert refusal.code == code_pb2.INVALID_ARGUMENT
    assert refusal.reason == "INVALID_FIELD"
    assert refusal.metadata["field"] == "batch.events[0].event.progress_message.loop_id"
    assert await stream.close() == grpc.StatusCode.OK

    error = await refused(
        stub.GetSession(api.GetSessionRequest(), timeout=DEADLINE), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert error_info(error).metadata["field"] == "session_id"


async def test_resent_events_are_acknowledged_again_and_stored_once(
    recorder: RunningRecorder,
) -> None:
    stub = aio(recorder.stub())
    batch = [
        (0, agent_start("s", "s.main.0", at=1)),
        (1, turn_start("s.main.0", 0, at=2)),
        (2, message_end("s.main.0", user("q"))),
    ]
    assert await append(stub, batch) == [0, 1, 2]
    before = await get_session(stub, "s")
    # A reconnecting writer re-sends what was not acknowledged, plus what is new.
    resent = [*batch[1:], (3, turn_end("s.main.0", assistant("a"), at=3))]
    assert await append(stub, resent) == [1, 2, 3]
    assert await append(stub, resent) == [1, 2, 3]
    loop = await get_loop(stub, "s.main.0")
    assert sequences(loop) == [0, 1, 2, 3]
    assert len(loop.turns) == 1
    assert [m.content[0].text.text for m in loop.turns[0].input_messages] == ["q"]
    after = await get_session(stub, "s")
    assert after.created_at == before.created_at and after.last_active_at == before.last_active_at

    # In a Record stream too.
    stream = RecordStream(stub, "w")
    assert list((await stream.send(batch)).sequences) == [0, 1, 2]
    assert await stream.close() == grpc.StatusCode.OK
    assert sequences(await get_loop(stub, "s.main.0")) == [0, 1, 2, 3]


async def test_resent_sequence_with_different_content_is_aborted(
    recorder: RunningRecorder,
) -> None:
    stub = aio(recorder.stub())
    await append(
        stub, [(0, agent_start("s", "s.main.0", at=1)), (1, progress("s.main.0", "c", "t", "a"))]
    )
    conflict = await refused_event(
        stub,
        [(2, progress("s.main.0", "c", "t", "new")), (1, progress("s.main.0", "c", "t", "B"))],
        grpc.StatusCode.ABORTED,
    )
    assert "s.main.0" in conflict.message and "sequence 1" in conflict.message
    assert conflict.reason == "SEQUENCE_CONFLICT"
    assert (conflict.metadata["loop_id"], conflict.metadata["sequence"]) == ("s.main.0", "1")
    loop = await get_loop(stub, "s.main.0")
    assert sequences(loop) == [0, 1, 2]  # the batch's new event 2 was stored
    assert loop.events[1].event.progress_message.text == "a"

    gap = await refused_event(
        stub, [(5, progress("s.main.0", "c", "t", "skip"))], grpc.StatusCode.FAILED_PRECONDITION
    )
    assert gap.reason == "SEQUENCE_GAP"
    assert dict(gap.metadata) == {"loop_id": "s.main.0", "sequence": "5", "expected": "3"}


async def test_rule14_a_session_whose_loops_all_ended_is_free_for_another_writer(
    recorder: RunningRecorder,
) -> None:
    """A long-lived stream keeps leases only on sessions it still has open loops in."""
    stub = aio(recorder.stub())
    first = RecordStream(stub, "writer-a")
    ack = await first.send([agent_start("s", "s.main.0", at=1), agent_start("t", "t.main.0", at=1)])
    assert list(ack.sequences) == [0, 0]
    assert list((await first.send([agent_end("s.main.0", at=2)])).sequences) == [1]
    second = RecordStream(stub, "writer-b")
    continued = await second.send([agent_start("s", "s.next.1", "s.main.0", at=3)])
    assert list(continued.sequences) == [0]
    locked = await second.send([progress("t.main.0", "c", "t", "b")])
    assert locked.rejection.reason == "LOCKED"
    assert locked.rejection.metadata["session_id"] == "t"
    back = await first.send([progress("s.next.1", "c", "t", "a")])
    assert back.rejection.reason == "LOCKED"
    assert back.rejection.metadata["session_id"] == "s"
    assert await first.close() == grpc.StatusCode.OK
    assert await second.close() == grpc.StatusCode.OK
