"""The async client of the recording sidecar: one method per RPC of RecorderService.

How each RPC is called is declared once, in `RPCS` (whether a repeat is harmless,
whether it is open-ended), and every unary and server-streaming call goes through
`RecorderClient._call`, so the deadline, the bearer token, retries and error
translation are decided in one place and cannot drift between methods. Only calls
that are safe to repeat are retried, and only on UNAVAILABLE (the request most
likely never reached the server). The Record stream is the exception:
`EventSender` owns its reconnects and re-sends.
"""

from __future__ import annotations

import asyncio
import logging
import os
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Final, TypeVar, cast

import grpc
from agent_recorder.v1 import recorder_service_pb2 as service_pb2
from agent_recorder.v1 import recorder_service_pb2_grpc as service_grpc
from agent_recorder.v1 import session_pb2
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from grpc import aio
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_random_exponential,
)
from tenacity.stop import stop_base

from recorder_client import defaults
from recorder_client.autostart import ensure_sidecar
from recorder_client.delivery import DeliveryConfig, EventSender
from recorder_client.errors import DeliveryError, EventsRefused, RecorderRpcError, RefusedEvent
from recorder_common.version import USER_AGENT

T = TypeVar("T")
Metadata = tuple[tuple[str, str], ...]

log = logging.getLogger("recorder_client")

DEFAULT_TIMEOUT: Final = 30.0

_EOF: Final[object] = aio.EOF  # type: ignore[attr-defined]

_RECORD_METHOD: Final = (
    f"/{service_pb2.DESCRIPTOR.services_by_name['RecorderService'].full_name}/Record"
)

# gRPC's own reconnect backoff starts at 1 s and grows to 120 s; a sidecar restart
# should be noticed within a couple of seconds. Whole sessions can exceed gRPC's
# 4 MiB default message limit, so reads take as much as the server sends.
_CHANNEL_OPTIONS: Final[tuple[tuple[str, int | str], ...]] = (
    ("grpc.primary_user_agent", USER_AGENT),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.max_receive_message_length", defaults.MAX_RESPONSE_BYTES),
)


@dataclass(frozen=True)
class Rpc:
    """How one RPC of RecorderService is called."""

    name: str
    # Whether repeating it is harmless, so it may be retried on UNAVAILABLE; a
    # function of the request when that depends on it.
    idempotent: bool | Callable[[Any], bool]
    # A stream that lasts as long as its reader: no deadline unless one is given.
    open_ended: bool = False

    def is_idempotent(self, request: Message) -> bool:
        return self.idempotent if isinstance(self.idempotent, bool) else self.idempotent(request)


# Every RPC but Record (EventSender's), by name.
RPCS: Final = {
    rpc.name: rpc
    for rpc in (
        Rpc("Append", idempotent=False),
        Rpc("GetSession", idempotent=True),
        Rpc("ListSessions", idempotent=True),
        Rpc("GetLoop", idempotent=True),
        Rpc("StreamEvents", idempotent=True, open_ended=True),
        Rpc("WatchSessions", idempotent=True, open_ended=True),
        Rpc("OpenSession", idempotent=False),
        Rpc("RotateSession", idempotent=False),
        Rpc("Flush", idempotent=False),
        Rpc("Checkpoint", idempotent=True),
        # A retry after a lost reply would answer NOT_FOUND for a success.
        Rpc("DeleteSession", idempotent=False),
        Rpc("PruneSessions", idempotent=False),
        # Without replace, a retry after a lost reply would answer ALREADY_EXISTS.
        Rpc("ImportSession", idempotent=lambda request: bool(request.replace)),
        Rpc("GetUsage", idempotent=True),
        Rpc("ListRefusals", idempotent=True),
    )
}


@dataclass(frozen=True)
class RetryPolicy:
    """Jittered exponential backoff for idempotent calls, always within their deadline."""

    attempts: int = 5
    initial_backoff: float = 0.05
    max_backoff: float = 2.0


class RecorderClient:
    """Async access to a recording sidecar over one gRPC channel."""

    def __init__(
        self,
        channel: aio.Channel,
        *,
        token: str | None = None,
        default_timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        target: str = "",
    ) -> None:
        self._channel = channel
        # The address dialled, to name the sidecar in errors.
        self.target = target
        self._stub = service_grpc.RecorderServiceStub(channel)
        # Record as the stub has it, except that requests are written as the bytes of a
        # RecordRequest (no serializer): EventSender frames them from encoded events.
        self._record_encoded = channel.stream_stream(
            _RECORD_METHOD,
            request_serializer=None,
            response_deserializer=service_pb2.RecordResponse.FromString,
        )
        self._metadata: Metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._default_timeout = default_timeout
        self._retry = retry or RetryPolicy()
        # Senders hold unacknowledged events; closing the client closes (flushes) them
        # first so events are never lost silently with the channel.
        self._senders: weakref.WeakSet[EventSender] = weakref.WeakSet()

    @classmethod
    def connect(
        cls,
        target: str | None = None,
        *,
        token: str | None = None,
        default_timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        channel_options: Sequence[tuple[str, int | str]] = (),
        tls: bool | None = None,
        tls_ca: Path | None = None,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        autostart: bool = False,
    ) -> RecorderClient:
        """Dial the sidecar lazily: nothing fails here if it is not up yet.

        autostart=True starts the sidecar first when nothing answers the default
        socket, and waits for it (recorder_client.autostart).

        target defaults to $AGENT_RECORDER_TARGET or the default Unix socket; token to
        $AGENT_RECORDER_TOKEN (or the file $AGENT_RECORDER_TOKEN_FILE names). TLS is
        used when tls is True or any TLS file is given: tls_ca (the CA that signed the
        server; the system's roots when absent), tls_cert and tls_key (mTLS), each
        defaulting to $AGENT_RECORDER_TLS_CA/_CERT/_KEY. Call it in the event loop that
        will use the client (gRPC's asyncio channels belong to one loop).
        """
        address = defaults.normalize_target(target or defaults.default_target())
        if autostart:
            ensure_sidecar(address)
        options = [*_CHANNEL_OPTIONS, *channel_options]
        credentials = _tls_credentials(tls, tls_ca, tls_cert, tls_key)
        if credentials is None:
            channel = aio.insecure_channel(address, options=options)
        else:
            channel = aio.secure_channel(address, credentials, options=options)
        if token is None:
            token = defaults.default_token()
        return cls(
            channel, token=token, default_timeout=default_timeout, retry=retry, target=address
        )

    async def __aenter__(self) -> RecorderClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close; events that could not be stored are logged (one warning), never raised.

        The recorder must not crash its agent on the way out, e.g. when the sidecar
        is down; call `close()` (or a sender's `flush()`) for an error instead.
        """
        errors = await self._close()
        if errors:
            log.warning(
                "agent-recorder: not every event was stored: %s",
                "; ".join(str(error) for error in errors),
            )

    async def close(self) -> None:
        """Close every sender made by this client (each flushes), then the channel.

        Raises the first sender's DeliveryError, after everything is closed.
        """
        errors = await self._close()
        if errors:
            raise errors[0]

    async def _close(self) -> list[DeliveryError]:
        errors: list[DeliveryError] = []
        for sender in list(self._senders):
            try:
                await sender.close()
            except DeliveryError as error:
                errors.append(error)
        await self._channel.close(None)
        return errors

    # -- delivery ---------------------------------------------------------------

    def sender(
        self, *, writer_id: str | None = None, config: DeliveryConfig | None = None
    ) -> EventSender:
        """A fire-and-forget event sender over one Record stream of this channel."""
        sender = EventSender(
            self.record_encoded,
            find_loop=self.next_sequence,
            writer_id=writer_id,
            config=config,
            target=self.target,
        )
        self._senders.add(sender)
        return sender

    def record(self) -> aio.StreamStreamCall[service_pb2.RecordRequest, service_pb2.RecordResponse]:
        """Open the raw Record stream with this client's credentials.

        It is not retried or given a deadline: the stream lives as long as its writer,
        and `EventSender` owns reconnecting and re-sending. Most callers want `sender()`.
        """
        return self._stub.Record(None, metadata=self._metadata)

    def record_encoded(self) -> aio.StreamStreamCall[bytes, service_pb2.RecordResponse]:
        """`record()`, but each request written is an already encoded RecordRequest.

        What EventSender uses (see recorder_client.framing); the server cannot tell
        the two apart.
        """
        return self._record_encoded(None, metadata=self._metadata)

    async def append(
        self,
        events: Iterable[service_pb2.EventEnvelope],
        *,
        writer_id: str = "",
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> list[int]:
        """Store one batch; returns the sequence of each event.

        Raises EventsRefused naming the events the server refused one by one (the
        others were stored; `error.sequences` has every event's sequence).
        """
        request = service_pb2.AppendRequest(writer_id=writer_id, events=events)
        response: service_pb2.AppendResponse = await self._unary("Append", request, timeout)
        if response.refusals:
            error = EventsRefused(
                refused=len(response.refusals),
                refusals=[
                    RefusedEvent.from_refusal(refusal, request.events[refusal.index])
                    for refusal in response.refusals
                ],
                target=self.target,
            )
            error.sequences = list(response.sequences)
            raise error
        return list(response.sequences)

    # -- reads ----------------------------------------------------------------------

    async def get_session(
        self,
        session_id: str,
        *,
        skip_events: bool = False,
        skip_messages: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> session_pb2.Session:
        """The stored session (without its cost: see `get_session_and_cost`)."""
        request = service_pb2.GetSessionRequest(
            session_id=session_id,
            skip_events=skip_events,
            skip_messages=skip_messages,
            skip_cost=True,
        )
        response: service_pb2.GetSessionResponse = await self._unary("GetSession", request, timeout)
        return response.session

    async def get_session_and_cost(
        self,
        session_id: str,
        *,
        skip_events: bool = False,
        skip_messages: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> tuple[session_pb2.Session, service_pb2.SessionCost]:
        """The session and what it, its loops and turns and its sub-agent tree cost."""
        request = service_pb2.GetSessionRequest(
            session_id=session_id, skip_events=skip_events, skip_messages=skip_messages
        )
        response: service_pb2.GetSessionResponse = await self._unary("GetSession", request, timeout)
        return response.session, response.cost

    async def list_sessions(
        self,
        *,
        agent_id: str = "",
        page_size: int = 0,
        page_token: str = "",
        scope: session_pb2.SessionScope.ValueType | None = None,
        since: datetime | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> service_pb2.ListSessionsResponse:
        """One page of sessions, newest first; see `iter_sessions` for all of them."""
        request = service_pb2.ListSessionsRequest(
            agent_id=agent_id,
            page_size=page_size,
            page_token=page_token,
            scope=scope,
            since=_timestamp(since),
        )
        response: service_pb2.ListSessionsResponse = await self._unary(
            "ListSessions", request, timeout
        )
        return response

    async def iter_sessions(
        self,
        *,
        agent_id: str = "",
        page_size: int = 0,
        scope: session_pb2.SessionScope.ValueType | None = None,
        since: datetime | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> AsyncIterator[service_pb2.SessionSummary]:
        """Every matching session across all pages; timeout applies to each page."""
        page_token = ""
        while True:
            page = await self.list_sessions(
                agent_id=agent_id,
                page_size=page_size,
                page_token=page_token,
                scope=scope,
                since=since,
                timeout=timeout,
            )
            for summary in page.sessions:
                yield summary
            page_token = page.next_page_token
            if not page_token:
                return

    async def list_refusals(
        self,
        session_id: str | None = None,
        *,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> service_pb2.ListRefusalsResponse:
        """One page of refused events (of one session, or all), oldest first."""
        request = service_pb2.ListRefusalsRequest(
            session_id=session_id, page_size=page_size, page_token=page_token
        )
        response: service_pb2.ListRefusalsResponse = await self._unary(
            "ListRefusals", request, timeout
        )
        return response

    async def iter_refusals(
        self,
        session_id: str | None = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> AsyncIterator[session_pb2.RefusedEvent]:
        """Every refused event (of one session, or all) across all pages."""
        page_token = ""
        while True:
            page = await self.list_refusals(session_id, page_token=page_token, timeout=timeout)
            for refusal in page.refusals:
                yield refusal
            page_token = page.next_page_token
            if not page_token:
                return

    async def get_loop(
        self,
        loop_id: str,
        *,
        skip_events: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> session_pb2.LoopRecord:
        return (await self.get_loop_and_cost(loop_id, skip_events=skip_events, timeout=timeout))[0]

    async def get_loop_and_cost(
        self,
        loop_id: str,
        *,
        skip_events: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> tuple[session_pb2.LoopRecord, service_pb2.LoopCost]:
        """The loop and what it and each of its turns cost."""
        request = service_pb2.GetLoopRequest(loop_id=loop_id, skip_events=skip_events)
        response: service_pb2.GetLoopResponse = await self._unary("GetLoop", request, timeout)
        return response.loop, response.cost

    async def next_sequence(
        self,
        loop_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> int:
        """The sequence the loop's next event takes; 0 for a loop the server does not know.

        How an EventSender continues a loop it did not start.
        """
        request = service_pb2.GetLoopRequest(loop_id=loop_id, skip_events=True)
        try:
            response: service_pb2.GetLoopResponse = await self._unary("GetLoop", request, timeout)
        except RecorderRpcError as error:
            if error.code == grpc.StatusCode.NOT_FOUND:
                return 0
            raise
        return response.next_sequence

    def stream_events(
        self,
        *,
        session_id: str | None = None,
        loop_id: str | None = None,
        after_cursor: int = 0,
        follow: bool = False,
        page_size: int = 0,
        timeout: float | None = None,
    ) -> AsyncGenerator[service_pb2.StreamedEvent, None]:
        """Stored events of one session or loop in commit order; with follow, a live tail.

        One event at a time (loop_id, event, cursor), read from the server's pages
        (see `stream_event_pages`). No deadline unless timeout is given, since a
        followed stream is open-ended; `aclose()` the generator to end it early.
        """
        pages = self.stream_event_pages(
            session_id=session_id,
            loop_id=loop_id,
            after_cursor=after_cursor,
            follow=follow,
            page_size=page_size,
            timeout=timeout,
        )
        return _events_of(pages)

    def stream_event_pages(
        self,
        *,
        session_id: str | None = None,
        loop_id: str | None = None,
        after_cursor: int = 0,
        follow: bool = False,
        page_size: int = 0,
        timeout: float | None = None,
    ) -> AsyncGenerator[service_pb2.StreamEventsResponse, None]:
        """`stream_events` as the server sends it: pages of events (`page.events`).

        A page holds at most page_size events (0: the server's default, 1000) and
        about 1 MiB; it is sent as soon as there are events, never held back to fill.
        """
        if (session_id is None) == (loop_id is None):
            raise ValueError("stream_events needs exactly one of session_id or loop_id")
        request = service_pb2.StreamEventsRequest(
            after_cursor=after_cursor, follow=follow, page_size=page_size
        )
        if session_id is not None:
            request.session_id = session_id
        else:
            request.loop_id = cast(str, loop_id)
        return self._stream("StreamEvents", request, timeout)

    def watch_sessions(
        self, *, agent_id: str = "", timeout: float | None = None
    ) -> AsyncGenerator[service_pb2.WatchSessionsResponse, None]:
        """Session admissions, finalizations and deletions as they happen.

        No deadline unless timeout is given, since the watch is open-ended;
        `aclose()` the generator to end it.
        """
        request = service_pb2.WatchSessionsRequest(agent_id=agent_id)
        return self._stream("WatchSessions", request, timeout)

    # -- session lifecycle ---------------------------------------------------------

    async def open_session(
        self,
        *,
        agent_id: str,
        session_id: str = "",
        scope: session_pb2.SessionScope.ValueType = session_pb2.SESSION_SCOPE_EPHEMERAL,
        parent_spawn_ref: session_pb2.SpawnRef | None = None,
        timestamp: datetime | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> session_pb2.Session:
        request = service_pb2.OpenSessionRequest(
            session_id=session_id,
            agent_id=agent_id,
            scope=scope,
            parent_spawn_ref=parent_spawn_ref,
            timestamp=_timestamp(timestamp),
        )
        response: service_pb2.OpenSessionResponse = await self._unary(
            "OpenSession", request, timeout
        )
        return response.session

    async def rotate_session(
        self,
        *,
        agent_id: str,
        threshold_secs: int,
        new_session_id: str = "",
        scope: session_pb2.SessionScope.ValueType = session_pb2.SESSION_SCOPE_EPHEMERAL,
        timestamp: datetime | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> service_pb2.RotateSessionResponse:
        request = service_pb2.RotateSessionRequest(
            agent_id=agent_id,
            threshold_secs=threshold_secs,
            new_session_id=new_session_id,
            scope=scope,
            timestamp=_timestamp(timestamp),
        )
        response: service_pb2.RotateSessionResponse = await self._unary(
            "RotateSession", request, timeout
        )
        return response

    async def flush_sessions(
        self,
        session_id: str | None = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> service_pb2.FlushResponse:
        """The Flush RPC: abort open loops and finalize (named apart from EventSender.flush)."""
        request = service_pb2.FlushRequest(session_id=session_id)
        response: service_pb2.FlushResponse = await self._unary("Flush", request, timeout)
        return response

    async def checkpoint(
        self,
        session_id: str | None = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> list[str]:
        """Finalize sessions with no open loop; returns the finalized session ids."""
        request = service_pb2.CheckpointRequest(session_id=session_id)
        response: service_pb2.CheckpointResponse = await self._unary("Checkpoint", request, timeout)
        return list(response.finalized_session_ids)

    async def delete_session(
        self,
        session_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> None:
        # Not retried: a retry after a lost reply would answer NOT_FOUND for a success.
        request = service_pb2.DeleteSessionRequest(session_id=session_id)
        await self._unary("DeleteSession", request, timeout)

    async def prune_sessions(
        self,
        older_than: datetime,
        *,
        dry_run: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> list[str]:
        """Delete finalized EPHEMERAL sessions idle since before older_than; returns their ids."""
        request = service_pb2.PruneSessionsRequest(
            older_than=_timestamp(older_than), dry_run=dry_run
        )
        response: service_pb2.PruneSessionsResponse = await self._unary(
            "PruneSessions", request, timeout
        )
        return list(response.session_ids)

    async def import_session(
        self,
        session: session_pb2.Session,
        *,
        replace: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> service_pb2.ImportSessionResponse:
        """Store a whole session as given; ALREADY_EXISTS when it exists and not replace.

        Retried only with replace: a retry after a lost reply would otherwise be
        refused as ALREADY_EXISTS for what was a success.
        """
        request = service_pb2.ImportSessionRequest(session=session, replace=replace)
        response: service_pb2.ImportSessionResponse = await self._unary(
            "ImportSession", request, timeout
        )
        return response

    async def get_usage(
        self,
        *,
        agent_id: str = "",
        since: datetime | None = None,
        until: datetime | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> list[service_pb2.UsageRow]:
        """Token usage and cost per agent and model over loops started in [since, until)."""
        report = await self.get_usage_report(
            agent_id=agent_id, since=since, until=until, timeout=timeout
        )
        return list(report.rows)

    async def get_usage_report(
        self,
        *,
        agent_id: str = "",
        since: datetime | None = None,
        until: datetime | None = None,
        group_by: service_pb2.UsageGrouping.ValueType = service_pb2.USAGE_GROUPING_UNSPECIFIED,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> service_pb2.GetUsageResponse:
        """Usage and cost per group (agent and model by default) and their total cost."""
        request = service_pb2.GetUsageRequest(
            agent_id=agent_id, since=_timestamp(since), until=_timestamp(until), group_by=group_by
        )
        response: service_pb2.GetUsageResponse = await self._unary("GetUsage", request, timeout)
        return response

    # -- the one road every call takes ------------------------------------------------

    def _deadline(self, timeout: float | None) -> float:
        return self._default_timeout if timeout is None else timeout

    async def _call(
        self,
        start: Callable[[float | None, Metadata], Awaitable[T]],
        *,
        idempotent: bool,
        timeout: float | None,  # noqa: ASYNC109
    ) -> T:
        """Run one call with the deadline, the token, retries and error translation.

        The deadline covers all attempts together: each attempt gets what is left,
        and no retry starts once its backoff would end past the deadline.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        stop: stop_base = stop_after_attempt(self._retry.attempts if idempotent else 1)
        if timeout is not None:
            stop = stop | stop_before_delay(timeout)

        async def attempt() -> T:
            remaining = None if deadline is None else max(deadline - loop.time(), 0.0)
            try:
                return await start(remaining, self._metadata)
            except aio.AioRpcError as error:
                raise RecorderRpcError.from_rpc_error(error) from error

        retrying = AsyncRetrying(
            retry=retry_if_exception(_is_unavailable),
            wait=wait_random_exponential(
                multiplier=self._retry.initial_backoff, max=self._retry.max_backoff
            ),
            stop=stop,
            reraise=True,
        )
        return cast(T, await retrying(attempt))

    async def _unary(
        self,
        name: str,
        request: Message,
        timeout: float | None,  # noqa: ASYNC109
    ) -> Any:
        """The RPC `name` of `RPCS`, through `_call`, within timeout or the default deadline."""
        rpc = RPCS[name]
        method = getattr(self._stub, name)
        return await self._call(
            lambda t, md: method(request, timeout=t, metadata=md),
            idempotent=rpc.is_idempotent(request),
            timeout=self._deadline(timeout),
        )

    async def _stream(
        self,
        name: str,
        request: Message,
        timeout: float | None,  # noqa: ASYNC109
    ) -> AsyncGenerator[Any, None]:
        """A server stream whose start (up to its first message) goes through `_call`.

        Only the start is retried: once a message was yielded, repeating the call
        would repeat it. An open-ended stream has no deadline unless timeout is given.
        """
        rpc = RPCS[name]
        method = getattr(self._stub, name)

        async def open_and_read_first(t: float | None, md: Metadata) -> tuple[Any, object]:
            call = method(request, timeout=t, metadata=md)
            try:
                return call, await call.read()
            except BaseException:
                call.cancel()
                raise

        call, message = await self._call(
            open_and_read_first,
            idempotent=rpc.is_idempotent(request),
            timeout=timeout if rpc.open_ended else self._deadline(timeout),
        )
        try:
            while message is not _EOF:
                yield message
                try:
                    message = await call.read()
                except aio.AioRpcError as error:
                    raise RecorderRpcError.from_rpc_error(error) from error
        finally:
            call.cancel()


async def _events_of(
    pages: AsyncGenerator[service_pb2.StreamEventsResponse, None],
) -> AsyncGenerator[service_pb2.StreamedEvent, None]:
    async with aclosing(pages):
        async for page in pages:
            for event in page.events:
                yield event


def _tls_credentials(
    tls: bool | None, ca: Path | None, cert: Path | None, key: Path | None
) -> grpc.ChannelCredentials | None:
    """Channel credentials from arguments, else the environment; None for plaintext."""
    ca = ca or _env_path(defaults.TLS_CA_ENV)
    cert = cert or _env_path(defaults.TLS_CERT_ENV)
    key = key or _env_path(defaults.TLS_KEY_ENV)
    if (cert is None) != (key is None):
        raise ValueError("tls_cert and tls_key go together (mTLS needs both)")
    files_given = ca is not None or cert is not None
    if tls is False and files_given:
        raise ValueError("tls=False contradicts the TLS files given")
    if not (tls or files_given):
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes() if ca is not None else None,
        private_key=key.read_bytes() if key is not None else None,
        certificate_chain=cert.read_bytes() if cert is not None else None,
    )


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def _is_unavailable(error: BaseException) -> bool:
    return isinstance(error, RecorderRpcError) and error.code == grpc.StatusCode.UNAVAILABLE


def _timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    timestamp = Timestamp()
    timestamp.FromDatetime(value)
    return timestamp
