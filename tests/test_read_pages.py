"""GetSession's pass-through bytes and StreamEvents' pages, through the real server.

The server answers both from stored bytes without decoding them (framing.py). What it
sends must be what the message path would have sent: the session assembled from
other RPCs (ListSessions for the head, GetLoop for each loop, both serialized by
protobuf) is the reference, compared as messages and as canonical bytes.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import grpc
import pytest
from agent_recorder.v1 import events_pb2, session_pb2, types_pb2
from agent_recorder.v1 import recorder_service_pb2 as api
from support.events import (
    agent_end,
    agent_start,
    aio,
    append,
    assistant,
    config,
    message_end,
    progress,
    tool_end,
    tool_result,
    tool_start,
    turn_end,
    turn_start,
    usage,
    user,
)
from support.recorder import RunningRecorder

from recorder_client import RecorderClient, RecorderRpcError
from recorder_server.server import SERVICE_NAME
from recorder_server.service import EVENTS_PAGE, PAGE_BYTES

if TYPE_CHECKING:
    from support.events import Stub

DEADLINE = 10.0
SKIPS = list(itertools.product([False, True], repeat=2))


def turn(loop: str, index: int, at: float) -> list[events_pb2.AgentEvent]:
    answer = assistant(f"answer {index}", use=usage(10 + index, 2), tool_calls=[("c", "grep", {})])
    result = tool_result("c", "grep", "found", at=at + 1)
    return [
        turn_start(loop, index, trigger=types_pb2.TURN_TRIGGER_USER, at=at),
        message_end(loop, user(f"question {index}", at=at)),
        message_end(loop, answer),
        tool_start(loop, "c", "grep", {"q": index}),
        tool_end(loop, "c", "grep", text="found"),
        turn_end(loop, answer, use=usage(10 + index, 2), tool_results=[result], at=at + 2),
    ]


async def record_session(stub: Stub) -> list[str]:
    """Session "s": a finished loop with turns and messages, a sub-loop still running,
    events of both interleaved across commits, then finalized. Returns its loop ids."""
    loops = ["s.main.0", "s.main.1"]
    await append(stub, [agent_start("s", loops[0], config=config(), at=1), *turn(loops[0], 0, 2)])
    await append(stub, [agent_start("s", loops[1], loops[0], at=5), *turn(loops[1], 0, 6)])
    await append(stub, [*turn(loops[0], 1, 10), progress(loops[1], "c", "grep", "half")])
    await append(stub, [agent_end(loops[0], [user("bye", at=20)], at=21)])
    await append(stub, [agent_start("other", "other.main.0", at=1)])  # not in "s"
    await stub.Flush(api.FlushRequest(session_id="s"), timeout=DEADLINE)
    return loops


async def message_path(
    stub: Stub, loop_ids: list[str], skip_events: bool, skip_messages: bool
) -> api.GetSessionResponse:
    """What GetSession must answer, built from ListSessions and GetLoop messages."""
    listing = await stub.ListSessions(api.ListSessionsRequest(), timeout=DEADLINE)
    [summary] = [s for s in listing.sessions if s.session_id == "s"]
    session = session_pb2.Session(
        session_id=summary.session_id,
        agent_id=summary.agent_id,
        created_at=summary.created_at,
        last_active_at=summary.last_active_at,
        formation=summary.formation,
        scope=summary.scope,
        finalized_at=summary.finalized_at,
    )
    cost = api.SessionCost()
    for loop_id in loop_ids:
        request = api.GetLoopRequest(loop_id=loop_id, skip_events=skip_events)
        loop = session.loops.add()
        response = await stub.GetLoop(request, timeout=DEADLINE)
        loop.CopyFrom(response.loop)
        cost.loops.add().CopyFrom(response.cost)
        if skip_messages:
            loop.ClearField("messages")
            loop.ClearField("turns")
    return api.GetSessionResponse(session=session, cost=cost)


async def raw_get_session(channel: grpc.aio.Channel, request: api.GetSessionRequest) -> bytes:
    """GetSession's response bytes exactly as they came over the wire."""
    call = channel.unary_unary(
        f"/{SERVICE_NAME}/GetSession",
        request_serializer=api.GetSessionRequest.SerializeToString,
        response_deserializer=None,
    )
    raw: bytes = await call(request, timeout=DEADLINE)
    return raw


@pytest.mark.parametrize(("skip_events", "skip_messages"), SKIPS)
async def test_get_session_bytes_equal_the_message_path(
    recorder: RunningRecorder, skip_events: bool, skip_messages: bool
) -> None:
    stub = aio(recorder.stub())
    loop_ids = await record_session(stub)
    expected = await message_path(stub, loop_ids, skip_events, skip_messages)
    request = api.GetSessionRequest(
        session_id="s", skip_events=skip_events, skip_messages=skip_messages
    )
    async with grpc.aio.insecure_channel(recorder.target) as channel:
        raw = await raw_get_session(channel, request)
    got = api.GetSessionResponse.FromString(raw)
    # The cost (read beside the stored bytes) is GetLoop's, loop by loop.
    assert list(got.cost.loops) == list(expected.cost.loops)
    assert got.cost.session == got.cost.tree and not got.cost.spawned
    got.ClearField("cost")
    expected.ClearField("cost")
    # Canonical bytes: any difference in content fails here, whatever the field order.
    assert got.SerializeToString(deterministic=True) == expected.SerializeToString(
        deterministic=True
    )
    session, want = got.session, expected.session
    assert (session.session_id, session.agent_id) == ("s", want.agent_id)
    assert session.finalized_at == want.finalized_at and session.HasField("finalized_at")
    assert [loop.loop_id for loop in session.loops] == loop_ids
    for loop, wanted in zip(session.loops, want.loops, strict=True):
        assert loop == wanted
        assert len(loop.events) == (0 if skip_events else len(wanted.events))
        assert [e.sequence for e in loop.events] == list(range(len(loop.events)))
        assert bool(loop.turns) == (not skip_messages)
    assert bool(session.loops[0].messages) == (not skip_messages)
    assert len(expected.session.loops[1].events) > 0 or skip_events
    async with RecorderClient.connect(recorder.target) as client:
        parsed = await client.get_session("s", skip_events=skip_events, skip_messages=skip_messages)
    assert parsed == want


async def test_get_session_of_an_unknown_session_is_not_found(recorder: RunningRecorder) -> None:
    async with RecorderClient.connect(recorder.target) as client:
        with pytest.raises(RecorderRpcError) as caught:
            await client.get_session("missing")
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert caught.value.reason == "NOT_FOUND"
    assert caught.value.metadata["session_id"] == "missing"


# -- StreamEvents pages ---------------------------------------------------------------------


async def stored_events(
    stub: Stub, loop_ids: list[str]
) -> dict[tuple[str, int], events_pb2.AgentEvent]:
    events = {}
    for loop_id in loop_ids:
        loop = (await stub.GetLoop(api.GetLoopRequest(loop_id=loop_id), timeout=DEADLINE)).loop
        events.update({(loop_id, e.sequence): e.event for e in loop.events})
    return events


async def test_pages_hold_every_event_in_commit_order_with_resumable_cursors(
    recorder: RunningRecorder,
) -> None:
    stub = aio(recorder.stub())
    loop_ids = await record_session(stub)
    stored = await stored_events(stub, loop_ids)
    async with RecorderClient.connect(recorder.target) as client:
        pages = [p async for p in client.stream_event_pages(session_id="s", page_size=4)]
        events = [e for page in pages for e in page.events]
        flat = [e async for e in client.stream_events(session_id="s")]
        middle = events[len(events) // 2].cursor
        rest = [e async for e in client.stream_events(session_id="s", after_cursor=middle)]
        loop_rest = [
            e async for e in client.stream_events(loop_id=loop_ids[1], after_cursor=middle)
        ]
    assert [len(page.events) for page in pages[:-1]] == [4] * (len(pages) - 1)
    assert 1 <= len(pages[-1].events) <= 4
    assert len(events) == len(stored)
    assert {(e.loop_id, e.event.sequence): e.event.event for e in events} == stored
    cursors = [e.cursor for e in events]
    assert cursors == sorted(set(cursors))
    for loop_id in loop_ids:  # each loop's events in sequence order
        mine = [e.event.sequence for e in events if e.loop_id == loop_id]
        assert mine == list(range(len(mine)))
    assert flat == events  # the default page size gives the same events
    assert rest == [e for e in events if e.cursor > middle]
    assert loop_rest == [e for e in rest if e.loop_id == loop_ids[1]]


async def test_a_followed_tail_gets_each_commit_at_once_and_ends_on_flush(
    recorder: RunningRecorder,
) -> None:
    stub = aio(recorder.stub())
    await append(stub, [agent_start("f", "f.main.0", at=1), progress("f.main.0", "c", "t", "0")])
    seen: list[list[str]] = []
    async with RecorderClient.connect(recorder.target) as client:
        async for page in client.stream_event_pages(session_id="f", follow=True):
            seen.append([str(e.event.event.WhichOneof("event")) for e in page.events])
            if len(seen) == 1:  # the replay; a one-event commit must come without waiting
                await append(stub, [progress("f.main.0", "c", "t", "1")])
            elif len(seen) == 2:
                await stub.Flush(api.FlushRequest(session_id="f"), timeout=DEADLINE)
    assert seen == [["agent_start", "progress_message"], ["progress_message"]]


async def test_pages_are_bounded_by_bytes_and_a_large_event_comes_alone(
    recorder: RunningRecorder,
) -> None:
    stub = aio(recorder.stub())
    third = "x" * (PAGE_BYTES // 3)
    await append(stub, [agent_start("b", "b.main.0", at=1)])
    await append(stub, [progress("b.main.0", "c", "t", third) for _ in range(5)])
    await append(stub, [progress("b.main.0", "c", "t", "y" * (PAGE_BYTES * 2))])
    await append(stub, [progress("b.main.0", "c", "t", "small")])
    async with RecorderClient.connect(recorder.target) as client:
        pages = [p async for p in client.stream_event_pages(loop_id="b.main.0")]
    sizes = [[len(e.event.event.progress_message.text) for e in p.events] for p in pages]
    assert sum(len(p) for p in sizes) == 8
    for page in pages:
        assert page.ByteSize() <= PAGE_BYTES or len(page.events) == 1
        assert len(page.events) <= EVENTS_PAGE
    assert [PAGE_BYTES * 2] in sizes  # alone in its page
    assert max(len(p) for p in sizes) >= 3  # small events still share pages
    sequences = [e.event.sequence for p in pages for e in p.events]
    assert sequences == list(range(8))


async def test_page_size_beyond_the_maximum_is_invalid(recorder: RunningRecorder) -> None:
    async with RecorderClient.connect(recorder.target) as client:
        with pytest.raises(RecorderRpcError) as caught:
            async for _ in client.stream_events(session_id="s", page_size=EVENTS_PAGE + 1):
                pass
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.metadata["field"] == "page_size"
