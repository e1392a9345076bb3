"""Fire-and-forget event delivery over one Record stream, with proof of delivery.

`EventSender.emit` only encodes the event (its defensive copy) and queues the
bytes, so an agent never waits on the recorder. A background task frames the
queue into batches on one bidirectional Record stream and keeps every event until
the server acknowledges its batch (the server acknowledges only after commit).
When the stream breaks, the task reconnects with jittered backoff and re-sends
everything unacknowledged in order; the server recognises re-sent events by
(loop_id, sequence), so nothing is stored twice. `flush` is the proof: it returns
only once every earlier event is stored, and otherwise raises DeliveryError
saying how many are not.

Events are numbered per loop, in emit order, when they first go into a batch:
only then is the server's RecordReady known, and a server that does not store
streaming deltas (MessageUpdate) must not be sent numbered ones (the gap would be
refused), so those are skipped rather than numbered. A loop this sender did not
start (an agent that restarted, a log piped in chunks) is numbered from where the
server says it stands (GetLoop's next_sequence), asked before its first event
goes out; a loop that ended keeps its numbering for a while (`ENDED_LOOPS_KEPT`),
so a late event of it is refused as sent to an ended loop, not as a re-send.

The server stores every event of a batch but the ones it refuses alone; those
are counted, and the next `flush` raises EventsRefused naming them. `emit`
refuses what the server's announced limits would (checks.py) with a ValueError,
so an agent's own bad event never reaches a batch.

The sender never crashes its agent: `close` (what leaving a client's `async with`
does) gives pending events up once the sidecar has been unreachable for
`exit_grace` seconds, and the client then logs one warning instead of raising.

Everything here runs on one asyncio event loop; only `_Budget` is shared with
other threads (the sync facade reserves room from the caller's thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, Literal, cast

import grpc
from agent_recorder.v1 import events_pb2
from agent_recorder.v1 import recorder_service_pb2 as service_pb2
from grpc import aio
from tenacity import AsyncRetrying, retry_if_exception, stop_before_delay, wait_random_exponential

from recorder_client.checks import EventLimits, check_event
from recorder_client.errors import (
    DeliveryError,
    EventsRefused,
    QueueFull,
    RecorderRpcError,
    RefusedEvent,
    RejectedBatch,
    SidecarUnreachable,
    describe_cause,
)
from recorder_client.framing import batch_envelopes, batch_request, envelope_head, hello_request
from recorder_client.queries import event_kind_and_loop_id

# The Record stream carrying encoded RecordRequests (RecorderClient.record_encoded).
RecordCall = aio.StreamStreamCall[bytes, service_pb2.RecordResponse]
# Opens a Record stream (RecorderClient.record_encoded).
OpenStream = Callable[[], RecordCall]
# Where a loop stands on the server: the sequence its next event takes (0 for a
# loop the server does not know). RecorderClient.next_sequence.
FindLoop = Callable[[str], Awaitable[int]]

OnFull = Literal["raise", "block"]
# An event as the sender keeps it: its AgentEvent bytes, its loop id (None for the
# session-level Parallel* events) and its oneof kind.
Encoded = tuple[bytes, str | None, str]

_EOF: Final[object] = aio.EOF  # type: ignore[attr-defined]
# A batch refused with this code (storage busy, server shutting down) is re-sent.
_UNAVAILABLE: Final = grpc.StatusCode.UNAVAILABLE.value[0]

# Loops whose AgentEnd was sent and whose numbering is still kept; an event of a
# loop ended longer ago is numbered from what GetLoop says, to the same effect.
ENDED_LOOPS_KEPT: Final = 10_000
# Refused events kept for the next flush's error (all are counted).
REFUSALS_KEPT: Final = 100

# Codes after which re-sending the same bytes cannot succeed; anything else (the
# server restarting, shedding load, a dropped connection) is worth a reconnect.
# RESOURCE_EXHAUSTED ends a stream whose request exceeded the server's limit.
_PERMANENT_STREAM_CODES: Final = frozenset(
    {
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
    }
)


@dataclass(frozen=True)
class DeliveryConfig:
    """Batching, memory bounds and patience of an EventSender."""

    # A batch is sent when it reaches either size, when `linger` seconds have passed
    # since its first event, or at once when someone flushes. Bytes here and below
    # are those of the encoded AgentEvents.
    max_batch_events: int = 500
    max_batch_bytes: int = 1024 * 1024
    linger: float = 0.005
    # Everything not yet acknowledged (queued, in flight, awaiting a reconnect) counts.
    max_pending_events: int = 100_000
    max_pending_bytes: int = 64 * 1024 * 1024
    # When full: "raise" QueueFull at once, or "block" up to block_timeout then raise.
    # EventSender.emit runs on the event loop and so always raises; the policy applies
    # to EventSender.emit_wait and to the sync facade's emit.
    on_full: OnFull = "raise"
    block_timeout: float = 5.0
    # How long the sender keeps reconnecting without getting an acknowledgement
    # before it gives the pending events up (the next flush reports them).
    reconnect_deadline: float = 60.0
    initial_backoff: float = 0.05
    max_backoff: float = 2.0
    flush_timeout: float = 30.0
    # close() (leaving a client's `async with`) gives pending events up once the
    # sidecar has been unreachable this long, rather than waiting flush_timeout.
    exit_grace: float = 5.0

    def __post_init__(self) -> None:
        for name in ("max_batch_events", "max_batch_bytes", "max_pending_events"):
            if getattr(self, name) < 1:
                raise ValueError(f"DeliveryConfig.{name} must be at least 1")
        if self.max_pending_bytes < self.max_batch_bytes:
            raise ValueError("DeliveryConfig.max_pending_bytes must be >= max_batch_bytes")
        if self.on_full not in ("raise", "block"):
            raise ValueError(
                f"DeliveryConfig.on_full must be 'raise' or 'block', not {self.on_full!r}"
            )


@dataclass(frozen=True)
class SenderStats:
    """Event counts since the sender was made; pending = not yet resolved either way."""

    emitted: int
    # Stored.
    acknowledged: int
    # Refused one by one (kept by the server with the reason, or too large to send).
    refused: int
    # In batches the server refused as a whole.
    rejected: int
    failed: int
    # MessageUpdates not sent because the server said it does not store them.
    skipped: int
    pending: int
    # Events sent again on a new stream because their batch was not acknowledged.
    resent: int
    # Batches sent (a re-sent batch counts once).
    batches: int


class _Budget:
    """The pending-events and pending-bytes bound, safe to use from any thread.

    One event is always admitted into an empty budget, so an event larger than
    max_pending_bytes is still sent rather than refused forever.
    """

    def __init__(self, max_events: int, max_bytes: int) -> None:
        # try_take (every emit) holds the bare lock: entering the Condition made over
        # it costs two more Python-level calls; only waiting needs the Condition.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._max_events = max_events
        self._max_bytes = max_bytes
        self.events = 0
        self.bytes = 0

    def _fits(self, nbytes: int) -> bool:
        return self.events == 0 or (
            self.events < self._max_events and self.bytes + nbytes <= self._max_bytes
        )

    def try_take(self, nbytes: int) -> bool:
        with self._lock:
            if not self._fits(nbytes):
                return False
            self.events += 1
            self.bytes += nbytes
            return True

    def take_blocking(self, nbytes: int, timeout: float) -> bool:
        """Wait (in a thread other than the event loop's) for room, at most timeout seconds."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._fits(nbytes), timeout):
                return False
            self.events += 1
            self.bytes += nbytes
            return True

    def give_back(self, events: int, nbytes: int) -> None:
        with self._cond:
            self.events -= events
            self.bytes -= nbytes
            self._cond.notify_all()

    def describe(self) -> str:
        return (
            f"{self.events} events / {self.bytes} bytes pending"
            f" (limits {self._max_events} / {self._max_bytes})"
        )


@dataclass
class _Batch:
    """Events sent together, taken from ordinals first..first+span-1 in emit order.

    count < span when MessageUpdates the server does not store were skipped.
    request is the encoded RecordRequest, kept as sent so a re-send is the same bytes.
    """

    batch_id: int
    request: bytes
    first: int
    span: int
    count: int
    nbytes: int


def encode_event(event: events_pb2.AgentEvent) -> Encoded:
    """The caller's event encoded, so the caller may reuse it; raises if it has no kind.

    Encoding is the cheapest copy (about half of CopyFrom into an envelope plus its
    ByteSize), gives the size the byte bounds count, and is what a batch is framed
    from (framing.py), so nothing is encoded twice.
    """
    kind, loop_id = event_kind_and_loop_id(event)
    return event.SerializeToString(), loop_id, kind


class EventSender:
    """Delivers AgentEvents to the recorder; see the module docstring.

    Make one with `RecorderClient.sender()` inside a running event loop; close it
    (or the client) to flush and stop it. `open_stream` opens a Record stream,
    `find_loop` says where a loop stands on the server (without it, loops this
    sender did not start are numbered from 0); `target` only names the sidecar in
    errors.
    """

    def __init__(
        self,
        open_stream: OpenStream,
        *,
        find_loop: FindLoop | None = None,
        writer_id: str | None = None,
        config: DeliveryConfig | None = None,
        target: str = "",
    ) -> None:
        self._open_stream = open_stream
        self._find_loop = find_loop
        self.writer_id = writer_id or uuid.uuid4().hex
        self.target = target
        self._config = config or DeliveryConfig()
        self._budget = _Budget(self._config.max_pending_events, self._config.max_pending_bytes)
        # The limits emit checks against: the server's defaults until its RecordReady.
        self.limits = EventLimits()
        self._next_sequence: dict[str, int] = {}
        self._ended: OrderedDict[str, int] = OrderedDict()
        # A loop whose next event waits until the server said where the loop stands.
        self._unplaced: str | None = None
        self._queue: deque[Encoded] = deque()
        self._queued_bytes = 0
        # Sent (or about to be re-sent) and not yet answered, in send order.
        self._inflight: dict[int, _Batch] = {}
        self._next_batch_id = 1
        # Every event has an ordinal (its position in emit order); queued events hold
        # ordinals [_batched, _emitted), in-flight batches the ranges below.
        self._emitted = 0
        self._batched = 0
        self._acknowledged = 0
        self._refused = 0
        self._rejected = 0
        self._failed = 0
        self._skipped = 0
        self._resent = 0
        # Reported (then forgotten) by the next flush.
        self._rejections: list[RejectedBatch] = []
        self._refusals: list[RefusedEvent] = []
        self._unreported_refused = 0
        self._unreported_failed = 0
        self._last_cause: BaseException | None = None
        # Why the last stream attempt failed, and since when no stream is up.
        self._connection_error: RecorderRpcError | None = None
        loop = asyncio.get_running_loop()
        self._down_since: float | None = loop.time()
        self._want_stream = False
        # Set when delivery stopped trying (the pending events were given up).
        self._gave_up = asyncio.Event()
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._refusal: str | None = None
        self._closed = False
        self._acked_on_stream = False
        # What the current stream's server records (its RecordReady).
        self._ready = asyncio.Event()
        self._stores_streaming = False
        self._task = loop.create_task(self._run(), name=f"agent-recorder sender {self.writer_id}")
        self._task.add_done_callback(self._on_task_done)

    # -- the caller's side ---------------------------------------------------------------

    def emit(self, event: events_pb2.AgentEvent) -> None:
        """Queue an event for delivery and return at once; raises QueueFull when full.

        The event is encoded here, so the caller may change or reuse it afterwards.
        Events are numbered per loop in the order of these calls (AgentStart is 0 of
        its loop). Raises ValueError naming the field when the server's limits
        would refuse the event (see checks.py); nothing of it is then queued.
        """
        self.admit(self.reserve(event, wait=False))

    async def emit_wait(
        self,
        event: events_pb2.AgentEvent,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> None:
        """Like emit, but under the "block" policy waits for room (block_timeout by default)."""
        encoded = self._checked(event)
        nbytes = len(encoded[0])
        if not self._budget.try_take(nbytes):
            if self._config.on_full == "raise":
                raise QueueFull(f"event sender is full: {self._budget.describe()}")
            try:
                async with asyncio.timeout(
                    self._config.block_timeout if timeout is None else timeout
                ):
                    while not self._budget.try_take(nbytes):
                        self._room.clear()
                        await self._room.wait()
            except TimeoutError:
                raise QueueFull(f"event sender stayed full: {self._budget.describe()}") from None
            if self._refusal is not None:
                self._budget.give_back(1, nbytes)
                raise RuntimeError(self._refusal)
        self.admit(encoded)

    def reserve(self, event: events_pb2.AgentEvent, *, wait: bool) -> Encoded:
        """Check and encode an event and take its room; safe from any thread.

        With wait (from a thread other than the event loop's, under the "block"
        policy) waits up to block_timeout for room. Hand the result to `admit` on
        the event loop; this is how the sync facade emits from its callers' threads.
        """
        encoded = self._checked(event)
        nbytes = len(encoded[0])
        budget = self._budget
        if not budget.try_take(nbytes) and (
            not wait
            or self._config.on_full == "raise"
            or not budget.take_blocking(nbytes, self._config.block_timeout)
        ):
            raise QueueFull(f"event sender is full: {budget.describe()}")
        return encoded

    def admit(self, encoded: Encoded) -> None:
        """Queue an event `reserve` made room for; on the event loop."""
        queue = self._queue
        queue.append(encoded)
        self._queued_bytes += len(encoded[0])
        self._emitted += 1
        config = self._config
        if (
            len(queue) == 1
            or len(queue) >= config.max_batch_events
            or self._queued_bytes >= config.max_batch_bytes
        ):
            self._wake.set()

    def _checked(self, event: events_pb2.AgentEvent) -> Encoded:
        if self._refusal is not None:
            raise RuntimeError(self._refusal)
        encoded = encode_event(event)
        check_event(event, encoded[0], encoded[2], encoded[1], self.limits)
        return encoded

    async def wait_ready(self, timeout: float) -> None:  # noqa: ASYNC109
        """Connect now and wait for the server's RecordReady (its limits then apply).

        Raises SidecarUnreachable naming the cause when no stream is up within timeout,
        or at once when the sender gave up (a refusal no reconnect can change, such as
        a wrong token).
        """
        if self._ready.is_set():
            return
        self._gave_up.clear()
        self._want_stream = True
        self._wake.set()
        ready = asyncio.ensure_future(self._ready.wait())
        gave_up = asyncio.ensure_future(self._gave_up.wait())
        try:
            await asyncio.wait(
                [ready, gave_up], timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            ready.cancel()
            gave_up.cancel()
        if not self._ready.is_set():
            cause = self._connection_error
            why = describe_cause(cause, self.target) if cause else "no answer"
            when = "gave up" if self._gave_up.is_set() else f"no Record stream within {timeout:g} s"
            raise SidecarUnreachable(f"{why} ({when})") from cause

    async def flush(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Return once every event emitted before this call is stored or refused.

        Raises DeliveryError when the deadline (flush_timeout by default) passes first,
        naming how many events are still unacknowledged and why (the last connection
        error), and also when any batch was rejected or events were given up since
        the previous flush; EventsRefused when the only problem is events the server
        refused one by one.
        """
        target = self._emitted
        if self._watermark() < target:
            waiter = self._waiter(target)
            try:
                async with asyncio.timeout(
                    self._config.flush_timeout if timeout is None else timeout
                ):
                    await waiter
            except TimeoutError:
                raise self._error(self._unresolved_before(target)) from None
            finally:
                self._forget(target, waiter)
        self._raise_unreported()

    async def close(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Flush, then stop. Later emits raise RuntimeError; a second close does nothing.

        Unlike flush, gives pending events up once no stream has been up for
        exit_grace seconds (the sidecar is unreachable), and raises DeliveryError
        naming the cause.
        """
        if self._closed:
            return
        self._closed = True
        self._refusal = self._refusal or "event sender is closed"
        try:
            await self._drain(self._config.flush_timeout if timeout is None else timeout)
            self._raise_unreported()
        finally:
            self._task.cancel()
            await asyncio.wait([self._task])

    def stats(self) -> SenderStats:
        return SenderStats(
            emitted=self._emitted,
            acknowledged=self._acknowledged,
            refused=self._refused,
            rejected=self._rejected,
            failed=self._failed,
            skipped=self._skipped,
            pending=self._emitted
            - self._acknowledged
            - self._refused
            - self._rejected
            - self._failed
            - self._skipped,
            resent=self._resent,
            batches=self._next_batch_id - 1,
        )

    # -- bookkeeping ---------------------------------------------------------------------

    def _waiter(self, target: int) -> asyncio.Future[None]:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((target, waiter))
        self._wake.set()  # skip the linger: someone is waiting
        return waiter

    def _forget(self, target: int, waiter: asyncio.Future[None]) -> None:
        waiter.cancel()
        with contextlib.suppress(ValueError):
            self._waiters.remove((target, waiter))

    async def _drain(self, timeout: float) -> None:  # noqa: ASYNC109
        """Wait for everything emitted, but not past timeout nor exit_grace without a stream.

        What is still pending then is given up (failed), with the cause.
        """
        target = self._emitted
        if self._watermark() >= target:
            return
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + timeout
        waiter = self._waiter(target)
        try:
            while not waiter.done() and loop.time() < deadline:
                # Without a stream since before the close, the grace counts from the close.
                down = self._down_since
                if down is not None and loop.time() - max(down, started) >= self._config.exit_grace:
                    break
                await asyncio.wait([waiter], timeout=min(0.05, max(deadline - loop.time(), 0)))
        finally:
            self._forget(target, waiter)
        if self._watermark() < target:
            cause = self._connection_error or RecorderRpcError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"not acknowledged within {timeout:g} s while closing",
            )
            self._fail_pending(cause)

    def _watermark(self) -> int:
        """The ordinal of the oldest event not yet resolved (all before it are)."""
        oldest = next(iter(self._inflight.values()), None)
        return oldest.first if oldest is not None else self._batched

    def _unresolved_before(self, target: int) -> int:
        """Events before ordinal target not yet resolved (exact unless a batch straddles it)."""
        inflight = sum(
            min(b.count, target - b.first) for b in self._inflight.values() if b.first < target
        )
        return inflight + max(0, target - self._batched)

    def _raise_unreported(self) -> None:
        if self._rejections or self._unreported_failed or self._unreported_refused:
            raise self._error(0)

    def _error(self, unacknowledged: int) -> DeliveryError:
        """Everything to report, which is then forgotten (each problem is raised once)."""
        cause: BaseException | None = None
        if self._unreported_failed:
            cause = self._last_cause
        elif unacknowledged:
            cause = self._connection_error
        only_refused = not (unacknowledged or self._rejections or self._unreported_failed)
        kind = EventsRefused if only_refused else DeliveryError
        error = kind(
            unacknowledged=unacknowledged,
            rejections=self._rejections,
            failed=self._unreported_failed,
            cause=cause,
            refused=self._unreported_refused,
            refusals=self._refusals,
            target=self.target,
        )
        self._rejections = []
        self._refusals = []
        self._unreported_refused = 0
        self._unreported_failed = 0
        return error

    def _resolved(self, events: int, nbytes: int) -> None:
        """Events left the pending set: free their room and wake satisfied flushes."""
        self._budget.give_back(events, nbytes)
        self._room.set()
        watermark = self._watermark()
        while self._waiters and self._waiters[0][0] <= watermark:
            _, waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def _on_ack(self, response: service_pb2.RecordResponse) -> None:
        batch = self._inflight.pop(response.batch_id, None)
        if batch is None:
            return  # a re-sent batch answered twice
        self._acked_on_stream = True
        if response.HasField("rejection"):
            self._rejected += batch.count
            self._rejections.append(
                RejectedBatch.from_rejection(response.rejection, batch_envelopes(batch.request))
            )
        else:
            refused = len(response.refusals)
            if refused:
                envelopes = batch_envelopes(batch.request)
                room = max(REFUSALS_KEPT - len(self._refusals), 0)
                self._refusals += [
                    RefusedEvent.from_refusal(refusal, envelopes[refusal.index])
                    for refusal in response.refusals[:room]
                    if refusal.index < len(envelopes)
                ]
                self._refused += refused
                self._unreported_refused += refused
            self._acknowledged += batch.count - refused
        self._resolved(batch.count, batch.nbytes)

    def _refuse_locally(self, data: bytes, size: int) -> None:
        """An event larger than the server takes (its limit came after emit): not sent."""
        limit = self.limits.max_request_bytes
        message = f"{size} bytes, larger than the sidecar's request limit of {limit} bytes"
        self._refused += 1
        self._unreported_refused += 1
        if len(self._refusals) < REFUSALS_KEPT:
            self._refusals.append(
                RefusedEvent(
                    code=grpc.StatusCode.RESOURCE_EXHAUSTED,
                    reason="TOO_LARGE",
                    message=message,
                    metadata={},
                    event=events_pb2.AgentEvent.FromString(data),
                    sequence=None,
                    holds_slot=False,
                )
            )

    def _fail_pending(self, cause: BaseException) -> None:
        """Give up everything unacknowledged; the next flush reports it with the cause."""
        count = len(self._queue) + sum(b.count for b in self._inflight.values())
        nbytes = self._queued_bytes + sum(b.nbytes for b in self._inflight.values())
        self._batched += len(self._queue)
        self._queue.clear()
        self._queued_bytes = 0
        self._inflight.clear()
        self._failed += count
        self._unreported_failed += count
        self._last_cause = cause
        self._resolved(count, nbytes)

    def _sequence_for(self, loop_id: str, kind: str) -> int | None:
        """The next sequence of the loop, or None when the server must be asked first.

        `_take_batch` inlines the common case (an open loop's event other than AgentEnd).
        """
        sequence = self._next_sequence.get(loop_id)
        if sequence is None:
            sequence = self._ended.pop(loop_id, None)
            if sequence is not None:  # an ended loop: numbered on, so the server says so
                self._remember_ended(loop_id, sequence + 1)
                return sequence
            if kind != "agent_start" and self._find_loop is not None:
                return None
            sequence = 0
        if kind == "agent_end":
            self._next_sequence.pop(loop_id, None)
            self._remember_ended(loop_id, sequence + 1)
        else:
            self._next_sequence[loop_id] = sequence + 1
        return sequence

    def _remember_ended(self, loop_id: str, next_sequence: int) -> None:
        self._ended[loop_id] = next_sequence
        if len(self._ended) > ENDED_LOOPS_KEPT:
            self._ended.popitem(last=False)

    def _take_batch(self) -> _Batch | None:
        """Number the next events and frame them as a batch (None if none went in).

        Stops before an event of a loop the server must place first (`_unplaced`).
        """
        config = self._config
        queue = self._queue
        next_sequence = self._next_sequence
        skip_updates = not self._stores_streaming
        largest = self.limits.largest_event()
        max_bytes = min(config.max_batch_bytes, largest)
        # Each event's envelope framing, then its bytes (see framing.py).
        pieces: list[bytes] = []
        span = count = nbytes = dropped = dropped_bytes = 0
        while queue and count < config.max_batch_events:
            data, loop_id, kind = queue[0]
            size = len(data)
            if count and nbytes + size > max_bytes:
                break
            too_large = size > largest
            skip = skip_updates and kind == "message_update"
            sequence = None
            if loop_id is not None and not (too_large or skip):
                sequence = next_sequence.get(loop_id)
                if sequence is not None and kind != "agent_end":
                    next_sequence[loop_id] = sequence + 1
                elif (sequence := self._sequence_for(loop_id, kind)) is None:
                    self._unplaced = loop_id
                    break
            queue.popleft()
            span += 1
            if too_large or skip:
                if too_large:
                    self._refuse_locally(data, size)
                else:
                    self._skipped += 1
                dropped += 1
                dropped_bytes += size
                continue
            pieces.append(envelope_head(sequence, size))
            pieces.append(data)
            count += 1
            nbytes += size
        self._queued_bytes -= nbytes + dropped_bytes
        first = self._batched
        self._batched += span
        batch = None
        if count:
            batch_id = self._next_batch_id
            self._next_batch_id += 1
            request = batch_request(batch_id, pieces)
            batch = _Batch(batch_id, request, first, span, count, nbytes)
            self._inflight[batch_id] = batch
        if dropped:
            self._resolved(dropped, dropped_bytes)
        return batch

    def _batch_is_due(self) -> bool:
        """Full, or holding an event a flush waits for.

        Events emitted after the last flush linger as usual even while that flush
        waits for its acknowledgement: sent at once, one batch each, they had
        nearly doubled the batches a paced agent sent (1,000 events/s, a flush
        every 10th) and so the server's work per event.
        """
        return (
            len(self._queue) >= self._config.max_batch_events
            or self._queued_bytes >= self._config.max_batch_bytes
            or (bool(self._waiters) and self._waiters[-1][0] > self._batched)
        )

    # -- the background task -------------------------------------------------------------

    def _has_work(self) -> bool:
        return bool(self._queue or self._inflight or self._want_stream)

    async def _run(self) -> None:
        while True:
            while not self._has_work():
                self._wake.clear()
                await self._wake.wait()
            try:
                await self._deliver()
            except RecorderRpcError as error:
                self._fail_pending(error)
                self._want_stream = False
                self._gave_up.set()

    async def _deliver(self) -> None:
        """Keep a stream up while there is anything to deliver.

        The reconnect deadline restarts whenever a stream got an acknowledgement, so
        only a sender that makes no progress for that long gives up.
        """
        config = self._config
        while self._has_work():
            retrying = AsyncRetrying(
                retry=retry_if_exception(_worth_reconnecting),
                wait=wait_random_exponential(
                    multiplier=config.initial_backoff, max=config.max_backoff
                ),
                stop=stop_before_delay(config.reconnect_deadline),
                reraise=True,
            )
            await retrying(self._stream_once)

    async def _stream_once(self) -> None:
        """Run one Record stream until it breaks; raise unless it made progress.

        The reader and the writer run side by side; whichever fails first ends the
        stream (a writer that only found the call over waits for the reader's status).
        """
        call = self._open_stream()
        self._acked_on_stream = False
        self._ready.clear()
        loop = asyncio.get_running_loop()
        reader = loop.create_task(self._read_acks(call))
        writer = loop.create_task(self._write(call))
        try:
            await asyncio.wait([reader, writer], return_when=asyncio.FIRST_COMPLETED)
            if not reader.done() and writer.exception() is None:
                await asyncio.wait([reader])
        finally:
            call.cancel()
            reader.cancel()
            writer.cancel()
            await asyncio.wait([reader, writer])
            if self._down_since is None:
                self._down_since = loop.time()
        if not writer.cancelled() and (error := writer.exception()) is not None:
            if isinstance(error, RecorderRpcError):
                self._connection_error = error
            raise error
        failure = reader.result()
        self._connection_error = failure
        if not self._acked_on_stream:
            raise failure

    async def _read_acks(self, call: RecordCall) -> RecorderRpcError:
        """Apply acknowledgements until the stream ends; return why it ended."""
        try:
            while (response := await call.read()) is not _EOF:
                response = cast(service_pb2.RecordResponse, response)
                if response.HasField("ready"):
                    self._on_ready(response.ready)
                elif response.rejection.code == _UNAVAILABLE:
                    # Nothing of the batch was stored and later batches may be refused
                    # only because of it (a sequence gap), so their answers are not
                    # trusted: everything from this batch on goes again on a new stream.
                    rejection = response.rejection
                    return RecorderRpcError(
                        grpc.StatusCode.UNAVAILABLE,
                        rejection.message,
                        reason=rejection.reason,
                        metadata=rejection.metadata,
                    )
                else:
                    self._on_ack(response)
        except aio.AioRpcError as error:
            return RecorderRpcError.from_rpc_error(error)
        return RecorderRpcError(grpc.StatusCode.UNAVAILABLE, "the server ended the Record stream")

    def _on_ready(self, ready: service_pb2.RecordReady) -> None:
        self._stores_streaming = ready.include_streaming_events
        defaults = EventLimits()
        self.limits = EventLimits(
            max_id_length=ready.max_id_length or defaults.max_id_length,
            max_value_depth=ready.max_value_depth or defaults.max_value_depth,
            max_request_bytes=ready.max_request_bytes or defaults.max_request_bytes,
        )
        self._down_since = None
        self._connection_error = None
        self._want_stream = False
        self._ready.set()

    async def _write(self, call: RecordCall) -> None:
        """Say hello, re-send what is unacknowledged, then send new batches as they form.

        Nothing is numbered before the server's RecordReady says what it stores. A
        loop the sender did not start is placed (GetLoop) before its first event
        goes out; a failure to ask ends the stream like a broken one.
        """
        try:
            await call.write(hello_request(self.writer_id))
            await self._ready.wait()
            for unacknowledged in list(self._inflight.values()):
                self._resent += unacknowledged.count
                await call.write(unacknowledged.request)
            while True:
                await self._batch_formed()
                if (batch := self._take_batch()) is not None:
                    await call.write(batch.request)
                if self._unplaced is not None:
                    await self._place(self._unplaced)
        except (aio.AioRpcError, asyncio.InvalidStateError):
            return  # the call is over; the reader reports its status

    async def _place(self, loop_id: str) -> None:
        """Number the loop on from where the server says it stands."""
        assert self._find_loop is not None
        self._next_sequence[loop_id] = await self._find_loop(loop_id)
        self._unplaced = None

    async def _batch_formed(self) -> None:
        """Wait for queued events, then up to `linger` for a full batch (or a flush)."""
        while not self._queue:
            self._wake.clear()
            await self._wake.wait()
        if self._config.linger <= 0 or self._batch_is_due():
            return
        try:
            async with asyncio.timeout(self._config.linger):
                while not self._batch_is_due():
                    self._wake.clear()
                    await self._wake.wait()
        except TimeoutError:
            pass

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        """A crashed delivery task must not leave flush waiting for its deadline."""
        if task.cancelled() or (error := task.exception()) is None:
            return
        self._refusal = f"event sender stopped: {error!r}"
        self._fail_pending(error)


def _worth_reconnecting(error: BaseException) -> bool:
    return isinstance(error, RecorderRpcError) and error.code not in _PERMANENT_STREAM_CODES
