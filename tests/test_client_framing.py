"""EventSender's encoded Record requests: the same RecordRequest the message path built.

The sender keeps each event as its bytes and frames batches by concatenation
(recorder_client/framing.py). `RecordTap` sits between a sender and the real
recorder as a gRPC Record endpoint that keeps every request's raw bytes and
relays them unchanged, so a test sees exactly what the server decoded and stored.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import grpc
import pytest
from agent_recorder.v1 import events_pb2
from agent_recorder.v1 import recorder_service_pb2 as service_pb2
from support.events import (
    agent_end,
    agent_start,
    assistant,
    message_end,
    message_update,
    parallel_end,
    parallel_start,
    progress,
    tool_start,
    turn_request,
    usage,
    user,
)
from support.recorder import RunningRecorder

from recorder_client import DeliveryConfig, QueueFull, RecorderClient, SyncRecorder
from recorder_client.framing import batch_request, envelope_head, hello_request
from recorder_common.varint import varint

pytestmark = pytest.mark.timeout(60)

SERVICE = service_pb2.DESCRIPTOR.services_by_name["RecorderService"].full_name
RECORD = f"/{SERVICE}/Record"


class RecordTap:
    """A Record endpoint that records each request's bytes and relays them upstream."""

    def __init__(self, upstream: str) -> None:
        self.requests: list[bytes] = []
        self._channel = grpc.aio.insecure_channel(upstream)
        self._upstream = self._channel.stream_stream(
            RECORD, request_serializer=None, response_deserializer=None
        )
        self._server = grpc.aio.server()
        handler = grpc.stream_stream_rpc_method_handler(
            self._record, request_deserializer=None, response_serializer=None
        )
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, {"Record": handler}),)
        )

    async def start(self, socket: Path) -> str:
        target = f"unix://{socket}"
        self._server.add_insecure_port(target)
        await self._server.start()
        return target

    async def close(self) -> None:
        await self._server.stop(None)
        await self._channel.close(None)

    async def _record(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        call = self._upstream(None)

        async def pump() -> None:
            async for raw in requests:
                self.requests.append(raw)
                await call.write(raw)
            await call.done_writing()

        pumping = asyncio.create_task(pump())
        try:
            async for response in call:
                yield response
        finally:
            pumping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pumping

    def batches(self) -> list[service_pb2.RecordRequest]:
        """Every request after the first (the hello), decoded."""
        return [service_pb2.RecordRequest.FromString(raw) for raw in self.requests[1:]]


@pytest.fixture
async def tap(recorder: RunningRecorder, short_tmp: Path) -> AsyncIterator[tuple[RecordTap, str]]:
    relay = RecordTap(recorder.target)
    target = await relay.start(short_tmp / "tap.sock")
    try:
        yield relay, target
    finally:
        await relay.close()


def snapshot(event: events_pb2.AgentEvent) -> events_pb2.AgentEvent:
    copy = events_pb2.AgentEvent()
    copy.CopyFrom(event)
    return copy


def message_path_batches(
    emitted: Iterable[events_pb2.AgentEvent], sizes: Iterable[int]
) -> list[service_pb2.RecordRequest]:
    """The requests the sender built from messages before framing.py, cut as given.

    Per loop numbering in emit order; MessageUpdates skipped (the fixture's server
    does not store them); Parallel* events unnumbered; batch ids 1, 2, ...
    """
    envelopes: list[service_pb2.EventEnvelope] = []
    next_sequence: dict[str, int] = {}
    for event in emitted:
        kind = event.WhichOneof("event")
        if kind == "message_update":
            continue
        envelope = service_pb2.EventEnvelope(event=event)
        if kind not in ("parallel_loop_start", "parallel_loop_end"):
            loop_id = getattr(event, str(kind)).loop_id
            envelope.sequence = next_sequence.get(loop_id, 0)
            next_sequence[loop_id] = envelope.sequence + 1
        envelopes.append(envelope)
    requests = []
    for batch_id, size in enumerate(sizes, start=1):
        taken, envelopes = envelopes[:size], envelopes[size:]
        requests.append(
            service_pb2.RecordRequest(batch=service_pb2.EventBatch(batch_id=batch_id, events=taken))
        )
    assert envelopes == [], "the sender sent fewer events than expected"
    return requests


# -- the framing alone -------------------------------------------------------------


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 16383, 16384, 2**32, 2**64 - 1])
def test_varint_is_protobufs_encoding(value: int) -> None:
    assert varint(value) == service_pb2.EventEnvelope(sequence=value).SerializeToString()[1:]


@pytest.mark.parametrize("sequence", [None, 0, 5, 200, 70_000])
@pytest.mark.parametrize("text_size", [0, 100, 20_000])
def test_a_framed_batch_is_the_serialized_request(sequence: int | None, text_size: int) -> None:
    events = [
        progress("f.main.0", "c", "t", "x" * text_size),
        parallel_start("f", ["f.a.0", "f.b.0"]),
    ]
    pieces = []
    expected = service_pb2.RecordRequest()
    expected.batch.batch_id = 300
    for event in events:
        data = event.SerializeToString()
        pieces += [envelope_head(sequence, len(data)), data]
        envelope = expected.batch.events.add(event=event)
        if sequence is not None:
            envelope.sequence = sequence
    raw = batch_request(300, pieces)
    assert raw == expected.SerializeToString()
    decoded = service_pb2.RecordRequest.FromString(raw)
    assert decoded.WhichOneof("kind") == "batch"
    assert decoded.batch.batch_id == 300
    assert [e.HasField("sequence") for e in decoded.batch.events] == [sequence is not None] * 2
    assert [e.sequence for e in decoded.batch.events] == [sequence or 0] * 2
    assert list(decoded.batch.events) == list(expected.batch.events)


def test_hello_is_the_serialized_hello() -> None:
    decoded = service_pb2.RecordRequest.FromString(hello_request("writer-1"))
    assert decoded.WhichOneof("kind") == "hello"
    assert decoded.hello.writer_id == "writer-1"


# -- through the real server --------------------------------------------------------------


async def test_the_sender_sends_the_bytes_the_message_path_would(
    recorder: RunningRecorder, tap: tuple[RecordTap, str]
) -> None:
    relay, target = tap
    # Structs here have one key each: a map's entries have no fixed wire order and a
    # copy may list them in another, which only the field-by-field checks tolerate
    # (the next test sends many-keyed ones).
    draft = assistant("partial")
    answer = assistant("y" * 20_000, use=usage(5, 7), tool_calls=[("call-1", "grep", {"n": 3})])
    emitted = [
        agent_start("t1", "t1.root.0", metadata={"tags": ["a", "b"]}),
        parallel_start("t1", ["t1.a.0", "t1.b.0"]),
        agent_start("t1", "t1.a.0", "t1.root.0"),
        agent_start("t1", "t1.b.0", "t1.root.0"),
        turn_request("t1.a.0", 0, {"messages": [{"content": "q"}]}),
        tool_start("t1.a.0", "call-1", "grep", {"pattern": "x"}),
        message_update("t1.a.0", draft, "par"),
        message_end("t1.a.0", answer),
        *(progress("t1.b.0", "c", "t", f"step {i}") for i in range(300)),
        agent_end("t1.a.0", [user("q"), answer], use=usage(5, 7)),
        agent_end("t1.b.0"),
        parallel_end("t1", "t1.a.0", 0),
        agent_end("t1.root.0"),
    ]
    async with RecorderClient.connect(target) as client:
        # Two events a batch: batch ids pass 127 (a two-byte varint), as do sequences.
        sender = client.sender(config=DeliveryConfig(max_batch_events=2, linger=0.001))
        for event in emitted:
            sender.emit(event)
        await sender.flush(30)
        writer_id = sender.writer_id

    assert relay.requests[0] == hello_request(writer_id)
    batches = relay.batches()
    expected = message_path_batches(emitted, (len(b.batch.events) for b in batches))
    assert len(batches) > 127
    for raw, decoded, wanted in zip(relay.requests[1:], batches, expected, strict=True):
        assert decoded.WhichOneof("kind") == "batch"
        assert decoded.batch.batch_id == wanted.batch.batch_id
        for got, want in zip(decoded.batch.events, wanted.batch.events, strict=True):
            assert got.HasField("sequence") == want.HasField("sequence")
            assert got.sequence == want.sequence
            assert got.event == want.event
        assert raw == wanted.SerializeToString()

    async with RecorderClient.connect(recorder.target) as client:
        session = await client.get_session("t1")
    stored = {(loop.loop_id, e.sequence): e.event for loop in session.loops for e in loop.events}
    sent = {
        (getattr(e.event, str(e.event.WhichOneof("event"))).loop_id, e.sequence): e.event
        for wanted in expected
        for e in wanted.batch.events
        if e.HasField("sequence")
    }
    assert stored == sent
    assert len(stored) == len(emitted) - 3  # two Parallel* events, one MessageUpdate


async def test_changing_an_event_after_emit_does_not_change_what_is_recorded(
    recorder: RunningRecorder,
) -> None:
    async with RecorderClient.connect(recorder.target) as client:
        sender = client.sender(config=DeliveryConfig(linger=0.001))
        start = agent_start("t2", "t2.main.0", metadata={"task": "first", "n": 1, "ok": True})
        sender.emit(start)
        args = {"a": 1, "b": "two", "c": [3], "d": {"e": None}}
        event = message_end("t2.main.0", assistant("first", tool_calls=[("c1", "ls", args)]))
        wanted = [snapshot(start), snapshot(event)]
        sender.emit(event)
        # Change every level of the emitted message: scalars, nested, repeated, Struct.
        start.agent_start.metadata.struct_value["task"] = "changed"
        start.agent_start.loop_id = "t2.other.0"
        message = event.message_end.message
        message.content[0].text.text = "changed"
        message.content[1].tool_call.arguments.struct_value["a"] = 2
        message.content.add().text.text = "added"
        message.usage.input = 99
        sender.emit(event)
        wanted.append(snapshot(event))
        event.message_end.ClearField("message")
        sender.emit(agent_end("t2.main.0"))
        await sender.flush(10)
        record = await client.get_loop("t2.main.0")

    assert [e.sequence for e in record.events] == [0, 1, 2, 3]
    assert [e.event for e in record.events[:3]] == wanted
    assert record.events[1].event.message_end.message.content[0].text.text == "first"
    assert record.events[2].event.message_end.message.content[0].text.text == "changed"
    assert record.events[0].event.agent_start.metadata.struct_value["task"] == "first"


async def test_the_sync_facade_records_the_event_as_it_was_at_emit(
    recorder: RunningRecorder,
) -> None:
    """The facade encodes in the caller's thread; it blocks, so it runs in a worker."""
    event = progress("t5.main.0", "c", "t", "first")

    def agent() -> None:
        with SyncRecorder(recorder.target, config=DeliveryConfig(linger=0.001)) as facade:
            facade.emit(agent_start("t5", "t5.main.0"))
            facade.emit(event)
            event.progress_message.text = "second"
            facade.emit(event)
            event.progress_message.text = "third"
            facade.flush(10)

    await asyncio.to_thread(agent)
    async with RecorderClient.connect(recorder.target) as client:
        record = await client.get_loop("t5.main.0")
    texts = [e.event.progress_message.text for e in record.events[1:]]
    assert texts == ["first", "second"]


async def test_pending_bytes_are_the_encoded_sizes_and_bound_the_sender(
    recorder: RunningRecorder,
) -> None:
    events = [agent_start("t3", "t3.main.0")] + [
        progress("t3.main.0", "c", "t", "z" * size) for size in (100, 300, 200, 50)
    ]
    sizes = [len(event.SerializeToString()) for event in events]
    config = DeliveryConfig(max_batch_bytes=sizes[0], max_pending_bytes=sum(sizes[:4]))
    async with RecorderClient.connect(recorder.target) as client:
        sender = client.sender(config=config)
        await recorder.stop()
        for event in events[:4]:
            sender.emit(event)
        with pytest.raises(QueueFull, match=f"4 events / {sum(sizes[:4])} bytes"):
            sender.emit(events[4])
        await recorder.start()
        await sender.flush(15)
        sender.emit(events[4])  # room again once acknowledged
        await sender.flush(10)
        record = await client.get_loop("t3.main.0")
    assert [e.event for e in record.events] == events


async def test_batches_stay_within_max_batch_bytes_of_encoded_events(
    tap: tuple[RecordTap, str],
) -> None:
    relay, target = tap
    limit = 1000
    emitted = [agent_start("t4", "t4.main.0")] + [
        progress("t4.main.0", "c", "t", "w" * (50 + 97 * i % 900)) for i in range(40)
    ]
    sizes = [len(event.SerializeToString()) for event in emitted]
    async with RecorderClient.connect(target) as client:
        sender = client.sender(config=DeliveryConfig(max_batch_bytes=limit, linger=0.001))
        for event in emitted:  # all queued before the first batch is taken
            sender.emit(event)
        await sender.flush(15)

    counts = [len(request.batch.events) for request in relay.batches()]
    assert sum(counts) == len(emitted)
    first = 0
    for count in counts:
        batch = sizes[first : first + count]
        assert sum(batch) <= limit or count == 1
        if first + count < len(sizes):  # full: the next event would not have fitted
            assert sum(batch) + sizes[first + count] > limit
        first += count
