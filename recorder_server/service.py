"""The RecorderService servicer: validate, convert, call the core. No rules here."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from operator import itemgetter
from typing import Any

import grpc
from agent_recorder.v1 import recorder_service_pb2 as api
from agent_recorder.v1 import recorder_service_pb2_grpc as api_grpc

from recorder_common.version import __version__
from recorder_server.decoding import Received, wants_wire
from recorder_server.errors import FellBehind, InvalidArgument, NotFound, RecorderError
from recorder_server.framing import event_pages, field_of, response_of
from recorder_server.reads import Reads
from recorder_server.recording import OPEN_STATUSES, Refusal
from recorder_server.status import (
    internal_rejection,
    streaming,
    to_event_refusal,
    to_rejection,
    unary,
)
from recorder_server.validation import Limits, validate_events, validate_request
from recorder_server.writer import Recorded, Writer

Context = grpc.aio.ServicerContext[Any, Any]
# Events read per query, and the most a StreamEvents page holds.
EVENTS_PAGE = 1000
# A page's bytes stay well under every client's default receive limit (4 MiB).
PAGE_BYTES = 1024 * 1024
# Refusals per ListRefusals page unless asked otherwise.
REFUSALS_PAGE = 100
SESSION_FIELD = api.GetSessionResponse.DESCRIPTOR.fields_by_name["session"].number
COST_FIELD = api.GetSessionResponse.DESCRIPTOR.fields_by_name["cost"].number

STOPPING = "the server is stopping"


Handler = Callable[[Any, Any, Context], Awaitable[Any]]
StreamHandler = Callable[[Any, Any, Context], AsyncIterator[Any]]


def rpc(handler: Handler) -> Handler:
    """A unary handler: its request is validated first, every failure leaves as a status."""

    @functools.wraps(handler)
    async def validated(self: RecorderServicer, request: Any, context: Context) -> Any:
        validate_request(request, self.limits)
        return await handler(self, request, context)

    validated.validates = True  # type: ignore[attr-defined]
    return unary(validated)


def stream_rpc(handler: StreamHandler) -> StreamHandler:
    """`rpc` for a response-streaming handler."""

    @functools.wraps(handler)
    async def validated(
        self: RecorderServicer, request: Any, context: Context
    ) -> AsyncIterator[Any]:
        validate_request(request, self.limits)
        async for item in handler(self, request, context):
            yield item

    validated.validates = True  # type: ignore[attr-defined]
    return streaming(validated)


class RecorderServicer(api_grpc.RecorderServiceServicer):
    def __init__(self, writer: Writer, reads: Reads, limits: Limits) -> None:
        self.writer = writer
        self.reads = reads
        self.limits = limits
        # The request readers of open Record streams, stopped when the server stops.
        self._readers: set[asyncio.Task[None]] = set()
        self._stopping = False

    async def stop_streams(self) -> None:
        """End the open-ended streams with UNAVAILABLE "the server is stopping".

        A Record stream ends once the batches it already read are acknowledged (a
        client re-sends the rest when it reconnects); live tails and watchers end at
        once. So the server need not wait out its grace period for calls that would
        never end by themselves.
        """
        self._stopping = True
        for reader in list(self._readers):
            reader.cancel()
        self.writer.release_readers()

    # -- writing ----------------------------------------------------------------

    @wants_wire
    async def Record(  # type: ignore[override]  # DecodeGuard hands it Received pairs
        self, request_iterator: AsyncIterator[Received], context: Context
    ) -> AsyncIterator[api.RecordResponse]:
        """Pipelined: batches are queued as they arrive, acknowledged in order.

        Each request comes with its wire bytes, which let validation settle a batch's
        free-form JSON in one pass over them.
        """
        try:
            first: api.RecordRequest = (await anext(aiter(request_iterator))).request
        except StopAsyncIteration:
            return
        if first.WhichOneof("kind") != "hello":
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "hello: first request must be hello"
            )
        try:
            validate_request(first, self.limits)
        except RecorderError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, exc.message)
        writer_id = first.hello.writer_id
        acks: asyncio.Queue[tuple[int, asyncio.Future[Recorded] | RecorderError] | None]
        acks = asyncio.Queue()
        options = self.writer.options
        yield api.RecordResponse(
            ready=api.RecordReady(
                include_streaming_events=options.include_streaming_events,
                capture_turn_requests=options.capture_turn_requests,
                max_id_length=self.limits.max_id_length,
                max_value_depth=self.limits.max_value_depth,
                max_request_bytes=self.limits.max_request_bytes,
                abandon_after_secs=self.writer.abandon_after_s,
                server_version=__version__,
            )
        )
        self.writer.attach(writer_id)
        reader = asyncio.create_task(self._read_batches(writer_id, request_iterator, acks))
        self._readers.add(reader)
        try:
            while (item := await acks.get()) is not None:
                yield await self._ack(*item)
            await asyncio.wait([reader])
            if reader.cancelled():
                await context.abort(grpc.StatusCode.UNAVAILABLE, STOPPING)
            if (error := reader.exception()) is not None:
                raise error
        finally:
            self._readers.discard(reader)
            reader.cancel()
            # Retrieved even when the stream is closed under it (the server stopping):
            # the reader may have failed with the closed call's error by then.
            await asyncio.gather(reader, return_exceptions=True)
            self.writer.detach(writer_id)

    async def _read_batches(
        self,
        writer_id: str,
        requests: AsyncIterator[Received],
        acks: asyncio.Queue[tuple[int, asyncio.Future[Recorded] | RecorderError] | None],
    ) -> None:
        try:
            async for received in requests:
                request: api.RecordRequest = received.request
                batch_id = request.batch.batch_id
                try:
                    if request.WhichOneof("kind") != "batch":
                        raise InvalidArgument("kind", "only the first request may be hello")
                    events = validate_events(request, self.limits, received.wire)
                    future = await self.writer.enqueue_record(writer_id, events)
                except RecorderError as exc:
                    acks.put_nowait((batch_id, exc))
                    continue
                acks.put_nowait((batch_id, future))
        finally:
            acks.put_nowait(None)

    @staticmethod
    async def _ack(
        batch_id: int, outcome: asyncio.Future[Recorded] | RecorderError
    ) -> api.RecordResponse:
        if isinstance(outcome, RecorderError):
            return api.RecordResponse(batch_id=batch_id, rejection=to_rejection(outcome))
        try:
            sequences, refused = await outcome
        except RecorderError as exc:
            return api.RecordResponse(batch_id=batch_id, rejection=to_rejection(exc))
        except Exception as exc:  # an answer, not a dead stream, for every batch
            return api.RecordResponse(batch_id=batch_id, rejection=internal_rejection(exc))
        return api.RecordResponse(
            batch_id=batch_id, sequences=sequences, refusals=_event_refusals(refused)
        )

    @unary  # validated event by event: one bad event is refused alone
    async def Append(self, request: api.AppendRequest, context: Context) -> api.AppendResponse:
        events = validate_events(request, self.limits)
        sequences, refused = await self.writer.record(request.writer_id, events)
        return api.AppendResponse(sequences=sequences, refusals=_event_refusals(refused))

    @rpc
    async def OpenSession(
        self, request: api.OpenSessionRequest, context: Context
    ) -> api.OpenSessionResponse:
        return api.OpenSessionResponse(session=await self.writer.open_session(request))

    @rpc
    async def RotateSession(
        self, request: api.RotateSessionRequest, context: Context
    ) -> api.RotateSessionResponse:
        return await self.writer.rotate_session(request)

    @rpc
    async def Flush(self, request: api.FlushRequest, context: Context) -> api.FlushResponse:
        sid = request.session_id if request.HasField("session_id") else None
        return await self.writer.flush(sid)

    @rpc
    async def Checkpoint(
        self, request: api.CheckpointRequest, context: Context
    ) -> api.CheckpointResponse:
        sid = request.session_id if request.HasField("session_id") else None
        return await self.writer.checkpoint(sid)

    @rpc
    async def DeleteSession(
        self, request: api.DeleteSessionRequest, context: Context
    ) -> api.DeleteSessionResponse:
        await self.writer.delete_sessions([request.session_id])
        return api.DeleteSessionResponse()

    @rpc
    async def PruneSessions(
        self, request: api.PruneSessionsRequest, context: Context
    ) -> api.PruneSessionsResponse:
        ids = await self.writer.prune(request.older_than, request.dry_run)
        return api.PruneSessionsResponse(session_ids=ids)

    @rpc
    async def ImportSession(
        self, request: api.ImportSessionRequest, context: Context
    ) -> api.ImportSessionResponse:
        return await self.writer.import_session(request.session, request.replace)

    # -- reading ----------------------------------------------------------------

    @rpc
    async def GetSession(  # answers bytes: see add_to_server
        self, request: api.GetSessionRequest, context: Context
    ) -> bytes:
        """GetSessionResponse bytes framed around the stored session, never decoded,
        and the session's cost (priced at read time) beside it."""
        session = await self.reads.session_bytes(
            request.session_id, request.skip_events, request.skip_messages
        )
        if request.skip_cost:
            return response_of(SESSION_FIELD, session)
        cost = await self.reads.session_cost(request.session_id)
        return response_of(SESSION_FIELD, session) + field_of(COST_FIELD, cost.SerializeToString())

    @rpc
    async def GetLoop(self, request: api.GetLoopRequest, context: Context) -> api.GetLoopResponse:
        loop = await self.reads.get_loop(request.loop_id, request.skip_events)
        next_sequence = await self.reads.next_sequence(request.loop_id)
        cost = await self.reads.loop_cost(request.loop_id)
        return api.GetLoopResponse(loop=loop, next_sequence=next_sequence, cost=cost)

    @rpc
    async def ListSessions(
        self, request: api.ListSessionsRequest, context: Context
    ) -> api.ListSessionsResponse:
        sessions, token = await self.reads.list_sessions(request)
        return api.ListSessionsResponse(sessions=sessions, next_page_token=token)

    @rpc
    async def GetUsage(
        self, request: api.GetUsageRequest, context: Context
    ) -> api.GetUsageResponse:
        rows, total = await self.reads.usage(request)
        return api.GetUsageResponse(rows=rows, total_cost=total.to_proto())

    @rpc
    async def ListRefusals(
        self, request: api.ListRefusalsRequest, context: Context
    ) -> api.ListRefusalsResponse:
        sid = request.session_id if request.HasField("session_id") else None
        refusals, token = await self.reads.refusals(
            sid, request.page_size or REFUSALS_PAGE, request.page_token
        )
        return api.ListRefusalsResponse(refusals=refusals, next_page_token=token)

    @stream_rpc
    async def StreamEvents(  # answers bytes: see add_to_server
        self, request: api.StreamEventsRequest, context: Context
    ) -> AsyncIterator[bytes]:
        """StreamEventsResponse pages as bytes framed around the stored events.

        Each page goes out as soon as its events are read; with follow, the stream
        then waits for the next commit, until the loop ends or the session is done.
        """
        loop_id = request.loop_id if request.WhichOneof("target") == "loop_id" else None
        session_id = request.session_id if loop_id is None else None
        page_size = request.page_size or EVENTS_PAGE
        cursor = request.after_cursor
        while True:
            next_commit = self.writer.next_commit()
            finished = await self._finished(session_id, loop_id) or not request.follow
            stored = await self.reads.events_after(
                session_id=session_id, loop_id=loop_id, after_cursor=cursor, limit=EVENTS_PAGE
            )
            for page in event_pages(stored, page_size, PAGE_BYTES):
                yield page
            if stored:
                cursor = max(cursor, *map(itemgetter(0), stored))
            if len(stored) == EVENTS_PAGE:
                continue
            if finished:
                return
            await next_commit.wait()
            if self._stopping:
                await context.abort(grpc.StatusCode.UNAVAILABLE, STOPPING)

    async def _finished(self, session_id: str | None, loop_id: str | None) -> bool:
        """A followed loop ended, or a followed session was finalized or deleted."""
        if loop_id is not None:
            status = await self.reads.loop_status(loop_id)
            if status is None:
                raise NotFound(f"loop {loop_id!r} not found", loop_id=loop_id)
            return status not in OPEN_STATUSES
        exists, finalized = await self.reads.session_state(session_id or "")
        if not exists:
            raise NotFound(f"session {session_id!r} not found", session_id=session_id)
        return finalized

    @stream_rpc
    async def WatchSessions(
        self, request: api.WatchSessionsRequest, context: Context
    ) -> AsyncIterator[api.WatchSessionsResponse]:
        subscription = self.writer.watch()
        last: api.WatchSessionsResponse | None = None
        try:
            while (message := await subscription.queue.get()) is not None:
                if not request.agent_id or message.agent_id in ("", request.agent_id):
                    last = message
                    yield message
            if self._stopping:
                await context.abort(grpc.StatusCode.UNAVAILABLE, STOPPING)
        finally:
            self.writer.unwatch(subscription)
        if subscription.cut_off:
            raise FellBehind(subscription.limit, last.timestamp if last is not None else None)


def _event_refusals(refused: list[Refusal]) -> list[api.EventRefusal]:
    return [to_event_refusal(r.index, r.error, r.slot is not None) for r in refused]


def _as_is(response: bytes) -> bytes:
    return response


def add_to_server(servicer: RecorderServicer, server: grpc.aio.Server) -> None:
    """Register the service: the generated handlers, but GetSession and StreamEvents
    send the bytes their servicer methods assembled, instead of serializing a message.

    Registering a method again replaces its generated handler; tests/test_read_pages.py
    fails if it did not (the generated serializer cannot take bytes).
    """
    api_grpc.add_RecorderServiceServicer_to_server(servicer, server)
    service = api.DESCRIPTOR.services_by_name["RecorderService"].full_name
    server.add_registered_method_handlers(  # type: ignore[attr-defined]
        service,
        {
            "GetSession": grpc.unary_unary_rpc_method_handler(
                servicer.GetSession, api.GetSessionRequest.FromString, _as_is
            ),
            "StreamEvents": grpc.unary_stream_rpc_method_handler(
                servicer.StreamEvents, api.StreamEventsRequest.FromString, _as_is
            ),
        },
    )
