"""RecorderClient's RPC methods, errors, retries, deadlines and credentials.

The session RPCs run against the real sidecar of the `recorder` fixture. What the
real sidecar cannot be made to do on cue (answer UNAVAILABLE a set number of times,
show the metadata it received, store streaming deltas) is done by `ScriptedServer`:
a real gRPC server on a real socket that implements a few RecorderService methods
with scripted behaviour, so the client's channel, retries and status decoding are
the real ones.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from agent_recorder.v1 import recorder_service_pb2 as service_pb2
from agent_recorder.v1 import session_pb2
from google.protobuf.message import Message
from support.events import (
    EPOCH,
    agent_end,
    agent_start,
    assistant,
    message_update,
    progress,
    tool_start,
    turn_start,
)
from support.recorder import RunningRecorder

from recorder_client import (
    DeliveryConfig,
    DeliveryError,
    EventsRefused,
    RecorderClient,
    RecorderRpcError,
    RetryPolicy,
)
from recorder_client.defaults import TOKEN_ENV

pytestmark = pytest.mark.timeout(60)

T0 = datetime.fromtimestamp(EPOCH, UTC)
Context = grpc.aio.ServicerContext[object, object]


@pytest.fixture
async def client(recorder: RunningRecorder) -> AsyncIterator[RecorderClient]:
    async with RecorderClient.connect(recorder.target) as client:
        yield client


def numbered(*events: object) -> list[service_pb2.EventEnvelope]:
    out = []
    for sequence, event in enumerate(events):
        envelope = service_pb2.EventEnvelope(event=event)  # type: ignore[arg-type]
        envelope.sequence = sequence
        out.append(envelope)
    return out


# -- against the real sidecar -------------------------------------------------------------


async def test_session_lifecycle_through_the_write_rpcs(client: RecorderClient) -> None:
    opened = await client.open_session(
        agent_id="ops", session_id="o1", scope=session_pb2.SESSION_SCOPE_PERSISTENT, timestamp=T0
    )
    assert opened.session_id == "o1"
    assert opened.agent_id == "ops"
    assert opened.scope == session_pb2.SESSION_SCOPE_PERSISTENT
    assert opened.formation.WhichOneof("kind") == "explicit"
    assert opened.formation.explicit.timestamp.ToDatetime(UTC) == T0
    assert list(opened.loops) == []

    events = numbered(agent_start("o1", "o1.c.0", agent="ops", at=1), agent_end("o1.c.0", at=2))
    assert await client.append(events, writer_id="w-ops") == [0, 1]
    # A re-sent batch is acknowledged with the same sequences and stored once.
    assert await client.append(events, writer_id="w-ops") == [0, 1]
    record = await client.get_loop("o1.c.0")
    assert [e.sequence for e in record.events] == [0, 1]
    assert record.status == session_pb2.LOOP_STATUS_COMPLETED
    bare = await client.get_loop("o1.c.0", skip_events=True)
    assert list(bare.events) == []
    assert bare.status == session_pb2.LOOP_STATUS_COMPLETED

    assert await client.checkpoint("o1") == ["o1"]
    assert (await client.get_session("o1", skip_events=True)).HasField("finalized_at")

    await client.append(
        numbered(agent_start("o2", "o2.c.0", agent="ops", at=10)), writer_id="w-ops"
    )
    flushed = await client.flush_sessions("o2")
    assert list(flushed.aborted_loop_ids) == ["o2.c.0"]
    assert list(flushed.finalized_session_ids) == ["o2"]
    assert (await client.get_loop("o2.c.0")).status == session_pb2.LOOP_STATUS_ABORTED

    page = await client.list_sessions(agent_id="ops", page_size=1)
    assert [s.session_id for s in page.sessions] == ["o2"]
    assert page.next_page_token != ""
    summaries = [s async for s in client.iter_sessions(agent_id="ops", page_size=1)]
    assert [s.session_id for s in summaries] == ["o2", "o1"]
    assert summaries[0].loops.aborted == 1
    assert summaries[1].loops.completed == 1
    assert summaries[1].scope == session_pb2.SESSION_SCOPE_PERSISTENT
    persistent = await client.list_sessions(
        agent_id="ops", scope=session_pb2.SESSION_SCOPE_PERSISTENT
    )
    assert [s.session_id for s in persistent.sessions] == ["o1"]

    later = T0 + timedelta(hours=1)
    rotated = await client.rotate_session(
        agent_id="ops", threshold_secs=60, new_session_id="o3", timestamp=later
    )
    assert rotated.rotated is True
    assert rotated.session.session_id == "o3"
    formation = rotated.session.formation.inactivity_timeout
    assert formation.threshold_secs == 60
    assert formation.previous_session_id == "o2"
    assert formation.timestamp.ToDatetime(UTC) == later
    fresh = await client.rotate_session(
        agent_id="ops", threshold_secs=3600, timestamp=later + timedelta(seconds=1)
    )
    assert fresh.rotated is False
    assert fresh.session.session_id == "o3"

    # Only finalized EPHEMERAL sessions are pruned: o1 is persistent, o3 still open.
    far = T0 + timedelta(days=365)
    assert await client.prune_sessions(far, dry_run=True) == ["o2"]
    assert (await client.get_session("o2", skip_events=True)).session_id == "o2"
    assert await client.prune_sessions(far) == ["o2"]

    await client.delete_session("o1")
    with pytest.raises(RecorderRpcError) as caught:
        await client.delete_session("o1")
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    remaining = [s.session_id async for s in client.iter_sessions(agent_id="ops")]
    assert remaining == ["o3"]


async def test_a_refusal_carries_the_servers_reason_and_ids(client: RecorderClient) -> None:
    with pytest.raises(RecorderRpcError) as caught:
        await client.get_session("nope")
    error = caught.value
    assert error.code == grpc.StatusCode.NOT_FOUND
    assert error.reason == "NOT_FOUND"
    assert error.metadata == {"session_id": "nope"}
    assert error.message == "session 'nope' not found"
    assert str(error) == "NOT_FOUND: session 'nope' not found [NOT_FOUND]"

    with pytest.raises(RecorderRpcError) as invalid:
        await client.get_loop("")
    assert invalid.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert invalid.value.reason == "INVALID_FIELD"
    assert invalid.value.metadata["field"] == "loop_id"


async def test_stream_events_in_commit_order_and_resume_after_a_cursor(
    client: RecorderClient,
) -> None:
    await client.append(
        numbered(
            agent_start("e1", "e1.c.0"),
            progress("e1.c.0", "c", "t", "a"),
            progress("e1.c.0", "c", "t", "b"),
            agent_end("e1.c.0"),
        )
    )
    items = [item async for item in client.stream_events(session_id="e1")]
    assert [(i.loop_id, i.event.sequence) for i in items] == [("e1.c.0", n) for n in range(4)]
    assert [i.event.event.WhichOneof("event") for i in items] == [
        "agent_start",
        "progress_message",
        "progress_message",
        "agent_end",
    ]
    cursors = [i.cursor for i in items]
    assert cursors == sorted(set(cursors))
    rest = [i async for i in client.stream_events(loop_id="e1.c.0", after_cursor=cursors[1])]
    assert [i.event.sequence for i in rest] == [2, 3]

    with pytest.raises(ValueError, match="exactly one"):
        client.stream_events()
    with pytest.raises(ValueError, match="exactly one"):
        client.stream_events(session_id="e1", loop_id="e1.c.0")
    with pytest.raises(RecorderRpcError) as caught:
        async for _ in client.stream_events(session_id="missing"):
            pass
    assert caught.value.code == grpc.StatusCode.NOT_FOUND


async def test_watch_sessions_reports_admission_finalization_and_deletion(
    client: RecorderClient,
) -> None:
    watch = client.watch_sessions(agent_id="watched")
    first = asyncio.ensure_future(anext(watch))
    async with asyncio.timeout(20):
        # The watch is live once it reports something; until then admissions may
        # happen before the server subscribed, so keep admitting fresh sessions.
        attempt = 0
        while not first.done():
            await client.open_session(agent_id="watched", session_id=f"w{attempt}")
            await asyncio.wait([first], timeout=0.5)
            attempt += 1
        admitted = first.result()
        assert admitted.lifecycle == service_pb2.SESSION_LIFECYCLE_ADMITTED
        assert admitted.agent_id == "watched"
        assert admitted.HasField("timestamp")

        await client.open_session(agent_id="someone-else", session_id="not-watched")
        await client.open_session(agent_id="watched", session_id="w-last")
        seen = await anext(watch)
        while seen.session_id != "w-last":  # admissions of the priming sessions
            seen = await anext(watch)
        assert seen.lifecycle == service_pb2.SESSION_LIFECYCLE_ADMITTED
        assert await client.checkpoint("w-last") == ["w-last"]
        finalized = await anext(watch)
        assert (finalized.lifecycle, finalized.session_id) == (
            service_pb2.SESSION_LIFECYCLE_FINALIZED,
            "w-last",
        )
    await watch.aclose()


# -- against a scripted server --------------------------------------------------------------


@dataclass
class ScriptedServer:
    """GetSession, DeleteSession and Record with scripted answers, on a real socket."""

    socket: Path
    unavailable_first: int = 0
    calls: dict[str, int] = field(default_factory=dict)
    metadata: list[dict[str, str]] = field(default_factory=list)
    batches: list[service_pb2.EventBatch] = field(default_factory=list)
    # What Record's RecordReady says, which events of each batch it refuses (by
    # index), and the largest request it takes (gRPC's limit, as `serve` sets it).
    ready: service_pb2.RecordReady = field(
        default_factory=lambda: service_pb2.RecordReady(include_streaming_events=True)
    )
    refuse: Callable[[service_pb2.EventBatch], list[service_pb2.EventRefusal]] = lambda batch: []
    # A whole-batch refusal to answer instead of storing (None: store).
    reject: service_pb2.BatchRejection | None = None
    max_receive_bytes: int = 4 * 1024 * 1024
    server: grpc.aio.Server | None = None

    @property
    def target(self) -> str:
        return f"unix://{self.socket}"

    async def _answer(self, method: str, context: Context) -> None:
        self.calls[method] = self.calls.get(method, 0) + 1
        self.metadata.append({k: str(v) for k, v in context.invocation_metadata() or ()})
        if self.calls[method] <= self.unavailable_first:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "scripted outage")

    async def get_session(
        self,
        request: service_pb2.GetSessionRequest,
        context: Context,
    ) -> service_pb2.GetSessionResponse:
        await self._answer("GetSession", context)
        return service_pb2.GetSessionResponse(
            session=session_pb2.Session(session_id=request.session_id)
        )

    async def delete_session(
        self,
        request: service_pb2.DeleteSessionRequest,
        context: Context,
    ) -> service_pb2.DeleteSessionResponse:
        await self._answer("DeleteSession", context)
        return service_pb2.DeleteSessionResponse()

    async def record(
        self,
        requests: AsyncIterator[service_pb2.RecordRequest],
        context: Context,
    ) -> AsyncIterator[service_pb2.RecordResponse]:
        await self._answer("Record", context)
        async for request in requests:
            if request.HasField("hello"):
                yield service_pb2.RecordResponse(ready=self.ready)
                continue
            if self.reject is not None:
                yield service_pb2.RecordResponse(
                    batch_id=request.batch.batch_id, rejection=self.reject
                )
                continue
            self.batches.append(request.batch)
            yield service_pb2.RecordResponse(
                batch_id=request.batch.batch_id,
                sequences=[e.sequence for e in request.batch.events],
                refusals=self.refuse(request.batch),
            )

    async def start(self) -> None:
        def unary(
            behaviour: Callable[..., Awaitable[Message]], request_type: type[Message]
        ) -> grpc.RpcMethodHandler[Any, Any]:
            return grpc.unary_unary_rpc_method_handler(
                behaviour,
                request_deserializer=request_type.FromString,
                response_serializer=lambda m: m.SerializeToString(),
            )

        handlers = {
            "GetSession": unary(self.get_session, service_pb2.GetSessionRequest),
            "DeleteSession": unary(self.delete_session, service_pb2.DeleteSessionRequest),
            "Record": grpc.stream_stream_rpc_method_handler(
                self.record,
                request_deserializer=service_pb2.RecordRequest.FromString,
                response_serializer=lambda m: m.SerializeToString(),
            ),
        }
        server = grpc.aio.server(
            options=[("grpc.max_receive_message_length", self.max_receive_bytes)]
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("agent_recorder.v1.RecorderService", handlers),)
        )
        server.add_insecure_port(self.target)
        await server.start()
        self.server = server

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(0)


@pytest.fixture
async def scripted(short_tmp: Path) -> AsyncIterator[ScriptedServer]:
    server = ScriptedServer(short_tmp / "scripted.sock")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


FAST_RETRY = RetryPolicy(attempts=5, initial_backoff=0.01, max_backoff=0.05)


async def test_idempotent_calls_are_retried_on_unavailable(scripted: ScriptedServer) -> None:
    scripted.unavailable_first = 2
    async with RecorderClient.connect(scripted.target, retry=FAST_RETRY) as client:
        session = await client.get_session("s9")
    assert session.session_id == "s9"
    assert scripted.calls == {"GetSession": 3}


async def test_retries_stop_at_the_attempt_limit(scripted: ScriptedServer) -> None:
    scripted.unavailable_first = 100
    async with RecorderClient.connect(scripted.target, retry=FAST_RETRY) as client:
        with pytest.raises(RecorderRpcError) as caught:
            await client.get_session("s9")
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert caught.value.message == "scripted outage"
    assert caught.value.reason == ""  # no ErrorInfo attached: decoded as plain status
    assert caught.value.metadata == {}
    assert scripted.calls == {"GetSession": 5}


async def test_calls_that_are_not_idempotent_are_never_retried(scripted: ScriptedServer) -> None:
    scripted.unavailable_first = 1
    async with RecorderClient.connect(scripted.target, retry=FAST_RETRY) as client:
        with pytest.raises(RecorderRpcError) as caught:
            await client.delete_session("s9")
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert scripted.calls == {"DeleteSession": 1}


async def test_retries_never_run_past_the_calls_deadline(scripted: ScriptedServer) -> None:
    scripted.unavailable_first = 10_000
    patient = RetryPolicy(attempts=10_000, initial_backoff=0.01, max_backoff=0.05)
    loop_time = asyncio.get_running_loop().time
    async with RecorderClient.connect(scripted.target, retry=patient) as client:
        started = loop_time()
        with pytest.raises(RecorderRpcError):
            await client.get_session("s9", timeout=0.4)
        elapsed = loop_time() - started
    assert elapsed < 1.5
    assert scripted.calls["GetSession"] > 2


async def test_the_bearer_token_comes_from_the_argument_or_the_environment(
    scripted: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    async with RecorderClient.connect(scripted.target) as client:
        await client.get_session("a")
    async with RecorderClient.connect(scripted.target, token="explicit") as client:
        await client.get_session("b")
    monkeypatch.delenv(TOKEN_ENV)
    async with RecorderClient.connect(scripted.target) as client:
        await client.get_session("c")
    assert [m.get("authorization") for m in scripted.metadata] == [
        "Bearer from-env",
        "Bearer explicit",
        None,
    ]


async def test_the_record_stream_carries_the_token_and_numbers_stored_deltas(
    scripted: ScriptedServer,
) -> None:
    """A server that stores streaming deltas gets MessageUpdates numbered like the rest."""
    async with RecorderClient.connect(scripted.target, token="t0k") as client:
        sender = client.sender(writer_id="writer-7", config=DeliveryConfig(linger=0))
        draft = assistant("hi")
        sender.emit(agent_start("d1", "d1.c.0"))
        sender.emit(message_update("d1.c.0", draft, "h"))
        sender.emit(message_update("d1.c.0", draft, "i"))
        sender.emit(agent_end("d1.c.0"))
        await sender.flush(10)
        stats = sender.stats()
    assert (stats.acknowledged, stats.skipped) == (4, 0)
    sent = [e for batch in scripted.batches for e in batch.events]
    assert [(e.sequence, e.event.WhichOneof("event")) for e in sent] == [
        (0, "agent_start"),
        (1, "message_update"),
        (2, "message_update"),
        (3, "agent_end"),
    ]
    assert scripted.metadata[0]["authorization"] == "Bearer t0k"
    assert scripted.calls == {"Record": 1}


async def test_an_unreachable_sidecar_fails_the_flush_not_the_agent(short_tmp: Path) -> None:
    async with RecorderClient.connect(f"unix://{short_tmp}/absent.sock") as client:
        sender = client.sender(
            config=DeliveryConfig(reconnect_deadline=0.3, initial_backoff=0.02, max_backoff=0.05)
        )
        sender.emit(agent_start("u1", "u1.c.0"))
        with pytest.raises(DeliveryError) as caught:
            await sender.flush(10)
        assert caught.value.failed == 1
        # close() has nothing left to report: the failure was raised once already.
        await sender.close()


def refuse_tool_starts(batch: service_pb2.EventBatch) -> list[service_pb2.EventRefusal]:
    """What the sidecar answers for a batch whose tool starts break a rule."""
    return [
        service_pb2.EventRefusal(
            index=i,
            code=grpc.StatusCode.INVALID_ARGUMENT.value[0],
            reason="INVALID_FIELD",
            message=f"batch.events[{i}].event.tool_execution_start.args: scripted refusal",
            metadata={"field": f"batch.events[{i}].event.tool_execution_start.args"},
            holds_slot=True,
        )
        for i, envelope in enumerate(batch.events)
        if envelope.event.HasField("tool_execution_start")
    ]


async def test_refused_events_are_counted_and_the_next_flush_names_them(
    scripted: ScriptedServer,
) -> None:
    """The rest of the batch counts as stored; flush names each refused event once."""
    scripted.refuse = refuse_tool_starts
    async with RecorderClient.connect(scripted.target) as client:
        sender = client.sender(config=DeliveryConfig(linger=3600))
        sender.emit(agent_start("r1", "r1.c.0"))
        for i in range(5):
            sender.emit(tool_start("r1.c.0", f"call-{i}", "grep", {"n": i}))
        sender.emit(agent_end("r1.c.0"))
        with pytest.raises(EventsRefused) as caught:
            await sender.flush(10)
        stats = sender.stats()
        await sender.flush(10)  # reported once
    error = caught.value
    assert (error.refused, error.unacknowledged, error.failed, error.rejections) == (5, 0, 0, ())
    assert [(r.loop_id, r.sequence, r.reason, r.holds_slot) for r in error.refusals] == [
        ("r1.c.0", i, "INVALID_FIELD", True) for i in range(1, 6)
    ]
    assert error.refusals[0].event.tool_execution_start.tool_call_id == "call-0"
    assert str(error) == (
        "5 event(s) refused by the sidecar:"
        " tool_execution_start at loop r1.c.0 sequence 1: INVALID_FIELD:"
        " batch.events[1].event.tool_execution_start.args: scripted refusal;"
        " tool_execution_start at loop r1.c.0 sequence 2: INVALID_FIELD:"
        " batch.events[2].event.tool_execution_start.args: scripted refusal;"
        " tool_execution_start at loop r1.c.0 sequence 3: INVALID_FIELD:"
        " batch.events[3].event.tool_execution_start.args: scripted refusal; and 2 more"
    )
    assert (stats.emitted, stats.acknowledged, stats.refused, stats.pending) == (7, 2, 5, 0)


async def test_emit_checks_against_the_limits_the_server_announced(
    scripted: ScriptedServer,
) -> None:
    scripted.ready = service_pb2.RecordReady(max_id_length=8, max_value_depth=2)
    async with RecorderClient.connect(scripted.target) as client:
        sender = client.sender(config=DeliveryConfig(linger=0))
        sender.emit(agent_start("s", "a.very.long.loop", metadata={"a": {"b": {"c": 1}}}))
        await sender.wait_ready(10)
        assert (sender.limits.max_id_length, sender.limits.max_value_depth) == (8, 2)
        assert sender.limits.max_request_bytes == 16 * 1024 * 1024  # not announced: default
        with pytest.raises(ValueError, match="loop_id: must be at most 8 characters, not 16"):
            sender.emit(turn_start("a.very.long.loop", 0))
        with pytest.raises(ValueError, match="args: must not nest deeper than 2 levels"):
            sender.emit(tool_start("s.c.0", "c", "t", {"a": {"b": {"c": 1}}}))
        sender.emit(agent_start("s", "s.c.0", metadata={"a": {"b": 1}}))
        await sender.flush(10)
        assert sender.stats().emitted == 2


async def test_an_event_too_large_for_the_announced_limit_is_never_sent(
    scripted: ScriptedServer,
) -> None:
    """Emitted before the limit was known, it is refused by the sender itself, alone."""
    scripted.ready = service_pb2.RecordReady(max_request_bytes=64 * 1024)
    async with RecorderClient.connect(scripted.target) as client:
        sender = client.sender(config=DeliveryConfig(linger=3600))
        sender.emit(agent_start("b1", "b1.c.0"))
        sender.emit(tool_start("b1.c.0", "c", "t", {"blob": "x" * 100_000}))
        sender.emit(agent_end("b1.c.0"))
        with pytest.raises(EventsRefused) as caught:
            await sender.flush(10)
        with pytest.raises(ValueError, match="larger than the sidecar's request limit of 65536"):
            sender.emit(tool_start("b1.c.0", "c", "t", {"blob": "x" * 100_000}))
        stats = sender.stats()
    [refused] = caught.value.refusals
    assert (refused.reason, refused.sequence, refused.holds_slot) == ("TOO_LARGE", None, False)
    assert refused.message.endswith("larger than the sidecar's request limit of 65536 bytes")
    sent = [e for batch in scripted.batches for e in batch.events]
    assert [(e.sequence, e.event.WhichOneof("event")) for e in sent] == [
        (0, "agent_start"),
        (1, "agent_end"),
    ]
    assert (stats.acknowledged, stats.refused, stats.pending) == (2, 1, 0)


async def test_a_request_the_server_finds_too_large_is_not_retried(
    scripted: ScriptedServer,
) -> None:
    """RESOURCE_EXHAUSTED for size is final: given up at once, not re-sent for a minute."""
    await scripted.stop()
    scripted.max_receive_bytes = 8 * 1024  # and not announced
    await scripted.start()
    async with RecorderClient.connect(scripted.target) as client:
        sender = client.sender(config=DeliveryConfig(linger=3600, reconnect_deadline=60))
        sender.emit(agent_start("z1", "z1.c.0"))
        sender.emit(tool_start("z1.c.0", "c", "t", {"blob": "x" * 20_000}))
        with pytest.raises(DeliveryError) as caught:
            await sender.flush(30)
    assert caught.value.failed == 2
    assert isinstance(caught.value.cause, RecorderRpcError)
    assert caught.value.cause.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert scripted.calls == {"Record": 1}


async def test_a_loop_the_server_cannot_place_fails_its_events_not_the_sender(
    scripted: ScriptedServer,
) -> None:
    """The scripted server has no GetLoop: asking where a loop stands fails for good."""
    async with RecorderClient.connect(scripted.target) as client:
        sender = client.sender(config=DeliveryConfig(linger=0))
        sender.emit(turn_start("q1.c.0", 3))  # a loop this sender did not start
        with pytest.raises(DeliveryError) as caught:
            await sender.flush(10)
        assert caught.value.failed == 1
        assert isinstance(caught.value.cause, RecorderRpcError)
        assert caught.value.cause.code == grpc.StatusCode.UNIMPLEMENTED
        sender.emit(agent_start("q2", "q2.c.0"))
        await sender.flush(10)
    sent = [e for batch in scripted.batches for e in batch.events]
    assert [(e.sequence, e.event.agent_start.loop_id) for e in sent] == [(0, "q2.c.0")]


async def test_a_batch_refused_as_a_whole_is_reported_as_rejected_not_refused(
    scripted: ScriptedServer,
) -> None:
    scripted.reject = service_pb2.BatchRejection(
        code=grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
        reason="STORAGE_FULL",
        message="database or disk is full",
    )
    async with RecorderClient.connect(scripted.target) as client:
        sender = client.sender(config=DeliveryConfig(linger=3600))
        sender.emit(agent_start("h1", "h1.c.0"))
        sender.emit(turn_start("h1.c.0", 0))
        with pytest.raises(DeliveryError) as caught:
            await sender.flush(10)
        stats = sender.stats()
        scripted.reject = None
    assert not isinstance(caught.value, EventsRefused)
    [rejection] = caught.value.rejections
    assert (rejection.reason, rejection.events, rejection.loop_ids) == (
        "STORAGE_FULL",
        2,
        ("h1.c.0",),
    )
    assert str(caught.value) == (
        "2 event(s) rejected: RESOURCE_EXHAUSTED STORAGE_FULL (loop h1.c.0):"
        " database or disk is full"
    )
    assert (stats.rejected, stats.refused, stats.acknowledged, stats.pending) == (2, 0, 0, 0)
