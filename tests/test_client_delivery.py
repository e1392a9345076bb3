"""The client library against a real sidecar: delivery, reconnects, proof of flush.

Every test talks to the in-process server of the `recorder` fixture over its Unix
socket and reads back what SQLite holds. Lost replies are made with `ReplyDropper`,
a byte relay in front of the server that can stop passing the server's bytes back
and can cut its connections, so "stored but never acknowledged" is a real state of
a real connection rather than a mock.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from agent_recorder.v1 import events_pb2, session_pb2, types_pb2
from agent_recorder.v1 import recorder_service_pb2 as service_pb2
from support.events import (
    agent_end,
    agent_start,
    assistant,
    config,
    message_end,
    message_update,
    parallel_end,
    parallel_start,
    progress,
    tool_end,
    tool_start,
    ts,
    turn_end,
    turn_start,
    usage,
    user,
)
from support.recorder import RunningRecorder

from recorder_client import (
    DeliveryConfig,
    DeliveryError,
    EventSender,
    EventsRefused,
    QueueFull,
    RecorderClient,
    RecorderRpcError,
    SyncRecorder,
    loop,
    sync_loop,
)
from recorder_client.client import RPCS

pytestmark = pytest.mark.timeout(60)

# Fast reconnects so restarts are noticed within a fraction of a second.
FAST = DeliveryConfig(linger=0.001, initial_backoff=0.02, max_backoff=0.2)


@pytest.fixture
async def client(recorder: RunningRecorder) -> AsyncIterator[RecorderClient]:
    async with RecorderClient.connect(recorder.target) as client:
        yield client


def kinds(record: session_pb2.LoopRecord) -> list[tuple[int, str | None]]:
    return [(e.sequence, e.event.WhichOneof("event")) for e in record.events]


def progress_texts(record: session_pb2.LoopRecord) -> list[str]:
    return [
        e.event.progress_message.text for e in record.events if e.event.HasField("progress_message")
    ]


# -- the happy path ---------------------------------------------------------------------


async def test_emitted_events_are_stored_and_read_back(client: RecorderClient) -> None:
    sender = client.sender(config=FAST)
    answer = assistant("4", use=usage(12, 3), at=3.0)
    sender.emit(
        agent_start(
            "s1", "s1.main.0", config=config(), metadata={"task": "sum"}, agent="calc", at=1.0
        )
    )
    sender.emit(turn_start("s1.main.0", 0, at=1.5))
    sender.emit(message_end("s1.main.0", user("2+2?", at=1.6)))
    sender.emit(tool_start("s1.main.0", "call-1", "add", {"a": 2, "b": 2}))
    sender.emit(tool_end("s1.main.0", "call-1", "add", text="4"))
    sender.emit(turn_end("s1.main.0", answer, use=usage(12, 3), at=3.0))
    sender.emit(agent_end("s1.main.0", [user("2+2?", at=1.6), answer], use=usage(12, 3), at=4.0))
    await sender.flush(10)

    stats = sender.stats()
    assert (stats.emitted, stats.acknowledged, stats.pending) == (7, 7, 0)
    assert (stats.rejected, stats.failed, stats.skipped) == (0, 0, 0)

    session = await client.get_session("s1")
    assert session.session_id == "s1"
    assert session.agent_id == "calc"
    assert session.created_at == ts(1.0)
    assert session.formation.WhichOneof("kind") == "first_loop"
    assert session.formation.first_loop.timestamp == ts(1.0)
    assert session.scope == session_pb2.SESSION_SCOPE_EPHEMERAL
    assert len(session.loops) == 1
    record = session.loops[0]
    assert record.loop_id == "s1.main.0"
    assert record.agent_id == "calc"
    assert not record.HasField("parent_loop_id")
    assert record.status == session_pb2.LOOP_STATUS_COMPLETED
    assert not record.HasField("rejection")
    assert record.started_at == ts(1.0)
    assert record.ended_at == ts(4.0)
    assert record.config.model == "claude-sonnet-4"
    assert record.config.provider == "anthropic"
    assert record.config.config_id == "main"
    assert record.metadata.struct_value["task"] == "sum"
    assert (record.usage.input, record.usage.output, record.usage.total_tokens) == (12, 3, 15)
    assert [m.content[0].text.text for m in record.messages] == ["2+2?", "4"]
    assert kinds(record) == [
        (0, "agent_start"),
        (1, "turn_start"),
        (2, "message_end"),
        (3, "tool_execution_start"),
        (4, "tool_execution_end"),
        (5, "turn_end"),
        (6, "agent_end"),
    ]
    assert record.events[3].event.tool_execution_start.args.struct_value["a"] == 2
    assert len(record.turns) == 1
    turn = record.turns[0]
    assert turn.turn_id.loop_id == "s1.main.0"
    assert turn.turn_id.turn_index == 0
    assert turn.triggered_by == types_pb2.TURN_TRIGGER_USER
    assert [m.content[0].text.text for m in turn.input_messages] == ["2+2?"]
    assert turn.output_message.content[0].text.text == "4"
    assert turn.started_at == ts(1.5)
    assert turn.ended_at == ts(3.0)


async def test_events_are_numbered_per_loop_and_parallel_events_go_unnumbered(
    client: RecorderClient,
) -> None:
    sender = client.sender(config=FAST)
    sender.emit(agent_start("s2", "s2.root.0", at=1.0))
    sender.emit(parallel_start("s2", ["s2.a.0", "s2.b.0"], at=2.0))
    for branch in ("s2.a.0", "s2.b.0"):
        sender.emit(agent_start("s2", branch, "s2.root.0", at=2.1))
    sender.emit(progress("s2.a.0", "c", "t", "a-1"))
    sender.emit(progress("s2.b.0", "c", "t", "b-1"))
    sender.emit(progress("s2.a.0", "c", "t", "a-2"))
    for branch in ("s2.a.0", "s2.b.0"):
        sender.emit(agent_end(branch, at=3.0))
    sender.emit(parallel_end("s2", "s2.b.0", 1, at=3.5))
    sender.emit(agent_end("s2.root.0", at=4.0))
    await sender.flush(10)

    session = await client.get_session("s2")
    loops = {record.loop_id: record for record in session.loops}
    assert kinds(loops["s2.a.0"]) == [
        (0, "agent_start"),
        (1, "progress_message"),
        (2, "progress_message"),
        (3, "agent_end"),
    ]
    assert progress_texts(loops["s2.a.0"]) == ["a-1", "a-2"]
    assert kinds(loops["s2.b.0"]) == [(0, "agent_start"), (1, "progress_message"), (2, "agent_end")]
    assert kinds(loops["s2.root.0"]) == [(0, "agent_start"), (1, "agent_end")]
    assert loops["s2.b.0"].parallel_group.is_selected is True
    assert loops["s2.a.0"].parallel_group.is_selected is False
    assert list(loops["s2.a.0"].parallel_group.all_loop_ids) == ["s2.a.0", "s2.b.0"]


async def test_unstored_streaming_deltas_are_skipped_not_numbered(
    client: RecorderClient,
) -> None:
    """The fixture's server keeps MessageUpdates off (the default): no gap may result."""
    sender = client.sender(config=FAST)
    draft = assistant("partial")
    sender.emit(agent_start("s3", "s3.main.0"))
    sender.emit(message_update("s3.main.0", draft, "par"))
    sender.emit(message_update("s3.main.0", draft, "tial"))
    sender.emit(message_end("s3.main.0", draft))
    sender.emit(agent_end("s3.main.0"))
    await sender.flush(10)

    stats = sender.stats()
    assert (stats.emitted, stats.acknowledged, stats.skipped, stats.pending) == (5, 3, 2, 0)
    record = await client.get_loop("s3.main.0")
    assert kinds(record) == [(0, "agent_start"), (1, "message_end"), (2, "agent_end")]


async def test_emit_copies_the_event_so_the_caller_may_reuse_it(client: RecorderClient) -> None:
    sender = client.sender(config=FAST)
    sender.emit(agent_start("s4", "s4.main.0"))
    event = progress("s4.main.0", "c", "t", "first")
    sender.emit(event)
    event.progress_message.text = "second"
    sender.emit(event)
    sender.emit(agent_end("s4.main.0"))
    await sender.flush(10)
    assert progress_texts(await client.get_loop("s4.main.0")) == ["first", "second"]


async def test_a_flush_hurries_only_the_events_it_waits_for(client: RecorderClient) -> None:
    """Events emitted while a flush waits keep their linger (here: an hour), so
    they go as one batch with the next flush, not one batch each."""
    sender = client.sender(config=DeliveryConfig(linger=3600))
    sender.emit(agent_start("s", "s.main.0", at=1))
    await sender.flush()  # a flush skips the linger
    assert sender.stats().batches == 1
    sender.emit(progress("s.main.0", "c", "t", "waited for"))
    flushing = asyncio.create_task(sender.flush())
    # The sender takes that event at its next turn on the loop; nothing is
    # awaitable for "taken", so yield until it has (no time passes here).
    while sender.stats().batches < 2:  # noqa: ASYNC110
        await asyncio.sleep(0)
    sender.emit(progress("s.main.0", "c", "t", "after the flush 1"))
    sender.emit(progress("s.main.0", "c", "t", "after the flush 2"))
    await flushing
    stats = sender.stats()
    assert (stats.batches, stats.acknowledged, stats.pending) == (2, 2, 2)
    await sender.flush()
    stats = sender.stats()
    assert (stats.batches, stats.acknowledged, stats.pending) == (3, 4, 0)
    await sender.close()
    got = await client.get_loop("s.main.0")
    texts = [e.event.progress_message.text for e in got.events[1:]]
    assert texts == ["waited for", "after the flush 1", "after the flush 2"]


async def test_many_events_batch_and_arrive_in_order(client: RecorderClient) -> None:
    sender = client.sender(
        config=DeliveryConfig(max_batch_events=64, max_batch_bytes=4096, linger=0.002)
    )
    sender.emit(agent_start("s5", "s5.main.0"))
    for i in range(1000):
        sender.emit(progress("s5.main.0", "c", "t", f"step {i}"))
    sender.emit(agent_end("s5.main.0"))
    await sender.flush(20)
    record = await client.get_loop("s5.main.0")
    assert [e.sequence for e in record.events] == list(range(1002))
    assert progress_texts(record) == [f"step {i}" for i in range(1000)]
    assert sender.stats().acknowledged == 1002


# -- reconnects and proof of delivery -----------------------------------------------------


@pytest.mark.slow
async def test_events_emitted_while_the_server_is_down_arrive_once_after_restart(
    recorder: RunningRecorder, client: RecorderClient
) -> None:
    sender = client.sender(config=FAST)
    sender.emit(agent_start("r1", "r1.main.0"))
    for i in range(20):
        sender.emit(progress("r1.main.0", "c", "t", f"before {i}"))
    await sender.flush(10)

    await recorder.stop()
    for i in range(20):
        sender.emit(progress("r1.main.0", "c", "t", f"during {i}"))
    sender.emit(agent_end("r1.main.0"))
    assert sender.stats().pending == 21
    await recorder.start()
    await sender.flush(15)

    record = await client.get_loop("r1.main.0")
    assert [e.sequence for e in record.events] == list(range(42))
    assert progress_texts(record) == [f"before {i}" for i in range(20)] + [
        f"during {i}" for i in range(20)
    ]
    assert record.status == session_pb2.LOOP_STATUS_COMPLETED
    stats = sender.stats()
    assert (stats.emitted, stats.acknowledged, stats.pending, stats.failed) == (42, 42, 0, 0)


async def test_restarts_under_load_store_every_event_exactly_once(
    recorder: RunningRecorder, client: RecorderClient
) -> None:
    sender = client.sender(
        config=DeliveryConfig(max_batch_events=8, linger=0, initial_backoff=0.02, max_backoff=0.2)
    )
    sender.emit(agent_start("r2", "r2.main.0"))
    total = 600

    async def produce() -> None:
        for i in range(total):
            sender.emit(progress("r2.main.0", "c", "t", f"step {i}"))
            if i % 10 == 0:
                await asyncio.sleep(0)  # let batches go out between emits

    producer = asyncio.create_task(produce())
    for _ in range(2):
        await recorder.stop()
        await recorder.start()
    await producer
    sender.emit(agent_end("r2.main.0"))
    await sender.flush(20)

    record = await client.get_loop("r2.main.0")
    assert [e.sequence for e in record.events] == list(range(total + 2))
    assert progress_texts(record) == [f"step {i}" for i in range(total)]
    assert sender.stats().acknowledged == total + 2


class ReplyDropper:
    """A Unix-socket byte relay to the server that can drop the server's replies."""

    def __init__(self, upstream: str, path: Path) -> None:
        self.upstream = upstream.removeprefix("unix://")
        self.path = path
        self.dropping = False
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def target(self) -> str:
        return f"unix://{self.path}"

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._relay, path=str(self.path))

    async def _relay(self, down_r: asyncio.StreamReader, down_w: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_unix_connection(self.upstream)
        self._writers |= {down_w, up_w}
        pumps = [
            asyncio.create_task(self._pump(down_r, up_w, replies=False)),
            asyncio.create_task(self._pump(up_r, down_w, replies=True)),
        ]
        self._tasks.update(pumps)
        await asyncio.wait(pumps)

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, replies: bool
    ) -> None:
        with contextlib.suppress(OSError):
            while data := await source.read(65536):
                if not (replies and self.dropping):
                    sink.write(data)
                    await sink.drain()
        sink.close()

    def cut(self) -> None:
        """Break every relayed connection; new ones pass everything again."""
        self.dropping = False
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._tasks:
            await asyncio.wait(self._tasks)


@pytest.fixture
async def dropper(recorder: RunningRecorder, short_tmp: Path) -> AsyncIterator[ReplyDropper]:
    relay = ReplyDropper(recorder.target, short_tmp / "relay.sock")
    await relay.start()
    try:
        yield relay
    finally:
        await relay.close()


async def wait_for_stored(client: RecorderClient, loop_id: str, sequence: int) -> None:
    """Until the server has committed the loop's event with this sequence (live tail)."""
    async with asyncio.timeout(10):
        async for item in client.stream_events(loop_id=loop_id, follow=True):
            if item.event.sequence >= sequence:
                return


async def test_events_stored_but_unacknowledged_are_resent_and_not_duplicated(
    client: RecorderClient, dropper: ReplyDropper
) -> None:
    async with RecorderClient.connect(dropper.target) as relayed:
        sender = relayed.sender(config=FAST)
        sender.emit(agent_start("r3", "r3.main.0"))
        await sender.flush(10)

        dropper.dropping = True
        for i in range(10):
            sender.emit(progress("r3.main.0", "c", "t", f"step {i}"))
        await wait_for_stored(client, "r3.main.0", 10)
        assert sender.stats().pending == 10  # committed, but the acks were lost

        dropper.cut()
        sender.emit(agent_end("r3.main.0"))
        await sender.flush(15)

        stats = sender.stats()
        assert stats.resent >= 10
        assert (stats.emitted, stats.acknowledged, stats.pending) == (12, 12, 0)
    record = await client.get_loop("r3.main.0")
    assert [e.sequence for e in record.events] == list(range(12))
    assert progress_texts(record) == [f"step {i}" for i in range(10)]


@pytest.mark.slow
async def test_flush_names_the_unacknowledged_count_at_its_deadline(
    recorder: RunningRecorder, client: RecorderClient
) -> None:
    sender = client.sender(config=FAST)
    sender.emit(agent_start("f1", "f1.main.0"))
    await sender.flush(10)
    await recorder.stop()
    for i in range(5):
        sender.emit(progress("f1.main.0", "c", "t", f"step {i}"))

    with pytest.raises(DeliveryError) as caught:
        await sender.flush(0.3)
    assert caught.value.unacknowledged == 5
    assert caught.value.rejections == ()
    assert caught.value.failed == 0
    assert "5 event(s) still unacknowledged" in str(caught.value)

    # Nothing was given up: once the server is back, the same events arrive.
    await recorder.start()
    await sender.flush(15)
    assert [e.sequence for e in (await client.get_loop("f1.main.0")).events] == list(range(6))


async def test_events_are_given_up_after_the_reconnect_deadline(
    recorder: RunningRecorder, client: RecorderClient
) -> None:
    sender = client.sender(
        config=DeliveryConfig(reconnect_deadline=0.5, initial_backoff=0.02, max_backoff=0.1)
    )
    await recorder.stop()
    sender.emit(agent_start("f2", "f2.main.0"))
    sender.emit(progress("f2.main.0", "c", "t", "lost"))
    sender.emit(agent_end("f2.main.0"))

    with pytest.raises(DeliveryError) as caught:
        await sender.flush(10)
    error = caught.value
    assert error.failed == 3
    assert error.unacknowledged == 0
    assert isinstance(error.cause, RecorderRpcError)
    assert error.cause.code == grpc.StatusCode.UNAVAILABLE
    assert "3 event(s) given up undelivered" in str(error)
    stats = sender.stats()
    assert (stats.emitted, stats.failed, stats.pending, stats.acknowledged) == (3, 3, 0, 0)

    # The failure is reported once; a sender keeps working once the server is back
    # (and the channel reconnected, which under load can take longer than the
    # sender's 0.5 s deadline: wait for it, at most 30 s).
    await recorder.start()
    async with asyncio.timeout(30):
        while True:
            try:
                await client.list_sessions()
                break
            except RecorderRpcError:
                await asyncio.sleep(0.1)
    sender.emit(agent_start("f2b", "f2b.main.0"))
    await sender.flush(15)
    assert (await client.get_loop("f2b.main.0")).events[0].sequence == 0


async def test_a_refused_event_surfaces_in_the_next_flush(client: RecorderClient) -> None:
    sender = client.sender(config=FAST)
    sender.emit(progress("x1.never.0", "c", "t", "orphan"))  # its loop was never started
    with pytest.raises(EventsRefused) as caught:
        await sender.flush(10)
    [refusal] = caught.value.refusals
    assert refusal.code == grpc.StatusCode.FAILED_PRECONDITION
    assert refusal.reason == "LOOP_NOT_OPEN"
    assert refusal.metadata["loop_id"] == "x1.never.0"
    assert (refusal.loop_id, refusal.sequence, refusal.holds_slot) == ("x1.never.0", 0, False)
    assert refusal.event.progress_message.text == "orphan"
    assert refusal.message == "loop 'x1.never.0' is not open (never started)"
    assert caught.value.rejections == ()
    text = str(caught.value)
    assert text == (
        "1 event(s) refused by the sidecar: progress_message at loop x1.never.0 sequence 0:"
        " LOOP_NOT_OPEN: loop 'x1.never.0' is not open (never started)"
    )
    stats = sender.stats()
    assert (stats.emitted, stats.refused, stats.acknowledged, stats.pending) == (1, 1, 0, 0)

    # Reported once; the stream stays usable for other loops.
    sender.emit(agent_start("x1", "x1.main.0"))
    await sender.flush(10)
    assert kinds(await client.get_loop("x1.main.0")) == [(0, "agent_start")]


async def test_an_invalid_event_is_refused_naming_the_field(client: RecorderClient) -> None:
    """A missing timestamp is no limit emit() checks: the server refuses it alone."""
    sender = client.sender(config=FAST)
    start = agent_start("x2", "x2.main.0")
    start.agent_start.ClearField("timestamp")
    sender.emit(start)
    sender.emit(agent_start("x2", "x2.main.1"))
    with pytest.raises(EventsRefused) as caught:
        await sender.close(10)
    [refusal] = caught.value.refusals
    assert refusal.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refusal.reason == "INVALID_FIELD"
    assert refusal.metadata["field"] == "batch.events[0].event.agent_start.timestamp"
    assert refusal.loop_id == "x2.main.0"
    assert kinds(await client.get_loop("x2.main.1")) == [(0, "agent_start")]


async def test_emit_refuses_an_event_without_a_kind(client: RecorderClient) -> None:
    sender = client.sender()
    with pytest.raises(ValueError, match="no event set"):
        sender.emit(events_pb2.AgentEvent())
    assert sender.stats().emitted == 0


# -- bounded queue --------------------------------------------------------------------------


async def test_a_full_queue_raises_queue_full_instead_of_dropping(
    recorder: RunningRecorder, client: RecorderClient
) -> None:
    sender = client.sender(config=DeliveryConfig(max_pending_events=3))
    await recorder.stop()
    sender.emit(agent_start("q1", "q1.main.0"))
    sender.emit(progress("q1.main.0", "c", "t", "1"))
    sender.emit(progress("q1.main.0", "c", "t", "2"))
    with pytest.raises(QueueFull, match="3 events"):
        sender.emit(progress("q1.main.0", "c", "t", "3"))
    # emit_wait under the default "raise" policy refuses at once as well.
    with pytest.raises(QueueFull):
        await sender.emit_wait(progress("q1.main.0", "c", "t", "3"))
    assert sender.stats().emitted == 3

    await recorder.start()
    await sender.flush(15)
    sender.emit(progress("q1.main.0", "c", "t", "3"))  # room again once acknowledged
    await sender.flush(10)
    assert progress_texts(await client.get_loop("q1.main.0")) == ["1", "2", "3"]


async def test_the_byte_bound_applies_too(
    recorder: RunningRecorder, client: RecorderClient
) -> None:
    sender = client.sender(config=DeliveryConfig(max_batch_bytes=256, max_pending_bytes=1000))
    await recorder.stop()
    sender.emit(agent_start("q2", "q2.main.0"))
    sender.emit(progress("q2.main.0", "c", "t", "x" * 400))
    with pytest.raises(QueueFull, match="bytes"):
        sender.emit(progress("q2.main.0", "c", "t", "y" * 600))
    await recorder.start()
    await sender.flush(15)
    assert progress_texts(await client.get_loop("q2.main.0")) == ["x" * 400]


@pytest.mark.slow
async def test_the_block_policy_waits_for_room_then_gives_up(
    recorder: RunningRecorder, client: RecorderClient
) -> None:
    sender = client.sender(
        config=DeliveryConfig(
            max_pending_events=2,
            on_full="block",
            block_timeout=0.3,
            initial_backoff=FAST.initial_backoff,
            max_backoff=FAST.max_backoff,
        )
    )
    sender.emit(agent_start("q3", "q3.main.0"))
    sender.emit(progress("q3.main.0", "c", "t", "1"))
    # Full now; the server acknowledges and so makes room within the timeout.
    await sender.emit_wait(progress("q3.main.0", "c", "t", "2"), timeout=10)
    await sender.flush(10)

    await recorder.stop()
    sender.emit(progress("q3.main.0", "c", "t", "3"))
    sender.emit(progress("q3.main.0", "c", "t", "4"))
    loop_time = asyncio.get_running_loop().time
    started = loop_time()
    with pytest.raises(QueueFull, match="stayed full"):
        await sender.emit_wait(progress("q3.main.0", "c", "t", "5"))
    assert loop_time() - started >= 0.3
    await recorder.start()
    await sender.flush(15)
    assert progress_texts(await client.get_loop("q3.main.0")) == ["1", "2", "3", "4"]


# -- closing --------------------------------------------------------------------------------


async def test_close_flushes_and_later_emits_are_refused(client: RecorderClient) -> None:
    sender = client.sender(config=FAST)
    sender.emit(agent_start("c1", "c1.main.0"))
    sender.emit(agent_end("c1.main.0"))
    await sender.close()
    await sender.close()  # a second close does nothing
    with pytest.raises(RuntimeError, match="closed"):
        sender.emit(agent_start("c1", "c1.main.1"))
    assert kinds(await client.get_loop("c1.main.0")) == [(0, "agent_start"), (1, "agent_end")]


async def test_closing_the_client_flushes_its_senders(recorder: RunningRecorder) -> None:
    async with RecorderClient.connect(recorder.target) as client:
        sender = client.sender(config=FAST)
        sender.emit(agent_start("c2", "c2.main.0"))
        sender.emit(agent_end("c2.main.0"))
    assert sender.stats().acknowledged == 2
    async with RecorderClient.connect(recorder.target) as reader:
        assert kinds(await reader.get_loop("c2.main.0")) == [(0, "agent_start"), (1, "agent_end")]


# -- the loop helpers ------------------------------------------------------------------------


async def test_loop_records_start_and_end_with_what_the_body_collected(
    client: RecorderClient,
) -> None:
    sender = client.sender(config=FAST)
    answer = assistant("done", use=usage(7, 2))
    async with loop(
        sender,
        session_id="l1",
        agent_id="helper",
        loop_id="l1.main.0",
        config=config(model="m-1", provider="p-1"),
        metadata={"ticket": 42},
    ) as run:
        assert (run.session_id, run.agent_id, run.loop_id) == ("l1", "helper", "l1.main.0")
        run.emit(turn_start("l1.main.0", 0))
        run.emit(turn_end("l1.main.0", answer, use=usage(7, 2)))
        run.add_usage(usage(7, 2))
        run.add_usage(usage(1, 1))
        run.set_messages([user("go"), answer])
    await sender.flush(10)

    record = await client.get_loop("l1.main.0")
    assert kinds(record) == [
        (0, "agent_start"),
        (1, "turn_start"),
        (2, "turn_end"),
        (3, "agent_end"),
    ]
    assert record.status == session_pb2.LOOP_STATUS_COMPLETED
    assert not record.HasField("rejection")
    assert record.agent_id == "helper"
    assert (record.config.model, record.config.provider) == ("m-1", "p-1")
    assert record.metadata.struct_value["ticket"] == 42
    assert (record.usage.input, record.usage.output, record.usage.total_tokens) == (8, 3, 11)
    assert [m.content[0].text.text for m in record.messages] == ["go", "done"]
    assert record.started_at.seconds > 0
    assert record.ended_at.ToNanoseconds() >= record.started_at.ToNanoseconds()


async def test_loop_records_an_exception_as_the_rejection_and_reraises(
    client: RecorderClient,
) -> None:
    sender = client.sender(config=FAST)
    with pytest.raises(KeyError, match="missing"):
        async with loop(sender, session_id="l2", agent_id="helper", loop_id="l2.main.0"):
            raise KeyError("missing")

    class ToolBroke(Exception):
        pass

    with pytest.raises(ToolBroke):
        async with loop(
            sender,
            session_id="l2",
            agent_id="helper",
            loop_id="l2.sub.0",
            parent_loop_id="l2.main.0",
        ):
            raise ToolBroke("the tool broke")
    await sender.flush(10)

    first = await client.get_loop("l2.main.0")
    assert first.status == session_pb2.LOOP_STATUS_REJECTED
    assert first.rejection == "KeyError: 'missing'"
    assert kinds(first) == [(0, "agent_start"), (1, "agent_end")]
    assert first.events[1].event.agent_end.rejection == "KeyError: 'missing'"
    second = await client.get_loop("l2.sub.0")
    assert second.status == session_pb2.LOOP_STATUS_REJECTED
    assert second.parent_loop_id == "l2.main.0"
    assert re.fullmatch(r"test_client_delivery\..*ToolBroke: the tool broke", second.rejection)


# -- the synchronous facade ------------------------------------------------------------------


async def test_sync_recorder_emits_from_threads_flushes_and_reads(
    recorder: RunningRecorder,
) -> None:
    """The facade blocks, so it runs in worker threads while this loop serves."""

    def agent() -> tuple[session_pb2.Session, service_pb2.ListSessionsResponse]:
        with SyncRecorder(recorder.target, config=FAST) as facade:
            with sync_loop(facade, session_id="y1", agent_id="sync", loop_id="y1.main.0") as run:

                def worker(n: int) -> None:
                    for i in range(50):
                        run.emit(progress("y1.main.0", f"w{n}", "t", f"{n}-{i}"))

                threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                run.add_usage(usage(3, 4))
            facade.flush(10)
            stats = facade.stats()
            assert (stats.emitted, stats.acknowledged, stats.pending) == (202, 202, 0)
            return facade.get_session("y1"), facade.list_sessions(agent_id="sync")

    session, listing = await asyncio.to_thread(agent)
    record = session.loops[0]
    assert record.loop_id == "y1.main.0"
    assert record.status == session_pb2.LOOP_STATUS_COMPLETED
    assert [e.sequence for e in record.events] == list(range(202))
    texts = progress_texts(record)
    assert sorted(texts) == sorted(f"{n}-{i}" for n in range(4) for i in range(50))
    for n in range(4):  # each thread's events keep their order
        assert [t for t in texts if t.startswith(f"{n}-")] == [f"{n}-{i}" for i in range(50)]
    assert (record.usage.input, record.usage.output) == (3, 4)
    assert [s.session_id for s in listing.sessions] == ["y1"]


async def test_sync_recorder_raises_delivery_errors_and_queue_full(
    recorder: RunningRecorder,
) -> None:
    def agent() -> tuple[DeliveryError, QueueFull]:
        facade = SyncRecorder(recorder.target, config=DeliveryConfig(max_pending_events=1))
        try:
            facade.emit(progress("y2.never.0", "c", "t", "orphan"))
            with pytest.raises(QueueFull) as full:
                facade.emit(progress("y2.never.0", "c", "t", "orphan 2"))
            with pytest.raises(DeliveryError) as rejected:
                facade.flush(10)
            return rejected.value, full.value
        finally:
            facade.close()

    rejected, _ = await asyncio.to_thread(agent)
    assert isinstance(rejected, EventsRefused)
    assert [r.reason for r in rejected.refusals] == ["LOOP_NOT_OPEN"]


# -- the API surface -------------------------------------------------------------------------


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def test_every_rpc_of_the_service_has_a_client_method() -> None:
    service = service_pb2.DESCRIPTOR.services_by_name["RecorderService"]
    renamed = {"Flush": "flush_sessions"}  # so it cannot be mistaken for EventSender.flush
    names = {m.name: renamed.get(m.name, _snake(m.name)) for m in service.methods}
    assert "Record" in names
    missing = [
        rpc for rpc, method in names.items() if not callable(getattr(RecorderClient, method, None))
    ]
    assert missing == []
    assert callable(EventSender.flush)
    # How each is called (retried or not, deadline or open-ended) is declared once.
    assert set(RPCS) == set(names) - {"Record"}
    assert {name for name, rpc in RPCS.items() if rpc.open_ended} == {
        "StreamEvents",
        "WatchSessions",
    }
