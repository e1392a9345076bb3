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
refused), so those are skipped rather than numbered.

Everything here runs on one asyncio event loop; only `_Budget` is shared with
other threads (the sync facade reserves room from the caller's thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal, cast

import grpc
from agent_recorder.v1 import events_pb2
from agent_recorder.v1 import recorder_service_pb2 as service_pb2
from grpc import aio
from tenacity import AsyncRetrying, retry_if_exception, stop_before_delay, wait_random_exponential

from recorder_client.errors import DeliveryError, QueueFull, RecorderRpcError, RejectedBatch
from recorder_client.framing import batch_envelopes, batch_request, envelope_head, hello_request
from recorder_client.queries import event_kind_and_loop_id

if TYPE_CHECKING:
    from recorder_client.client import RecorderClient

    # The Record stream carrying encoded RecordRequests (RecorderClient.record_encoded).
    RecordCall = aio.StreamStreamCall[bytes, service_pb2.RecordResponse]

OnFull = Literal["raise", "block"]
# An event as the sender keeps it: its AgentEvent bytes, its loop id (None for the
# session-level Parallel* events) and its oneof kind.
Encoded = tuple[bytes, str | None, str]

_EOF: Final[object] = aio.EOF  # type: ignore[attr-defined]
# A batch refused with this code (storage busy, server shutting down) is re-sent.
_UNAVAILABLE: Final = grpc.StatusCode.UNAVAILABLE.value[0]

# Codes after which re-sending the same bytes cannot succeed; anything else (the
# server restarting, shedding load, a dropped connection) is worth a reconnect.
_PERMANENT_STREAM_CODES: Final = frozenset(
    {
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
    acknowledged: int
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
    (or the client) to flush and stop it.
    """

    def __init__(
        self,
        client: RecorderClient,
        *,
        writer_id: str | None = None,
        config: DeliveryConfig | None = None,
    ) -> None:
        self._client = client
        self.writer_id = writer_id or uuid.uuid4().hex
        self._config = config or DeliveryConfig()
        self._budget = _Budget(self._config.max_pending_events, self._config.max_pending_bytes)
        self._next_sequence: dict[str, int] = {}
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
        self._rejected = 0
        self._failed = 0
        self._skipped = 0
        self._resent = 0
        # Reported (then forgotten) by the next flush.
        self._rejections: list[RejectedBatch] = []
        self._unreported_failed = 0
        self._last_cause: BaseException | None = None
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._refusal: str | None = None
        self._closed = False
        self._acked_on_stream = False
        # What the current stream's server records (its RecordReady).
        self._ready = asyncio.Event()
        self._stores_streaming = False
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"agent-recorder sender {self.writer_id}"
        )
        self._task.add_done_callback(self._on_task_done)

    # -- the caller's side ---------------------------------------------------------------

    def emit(self, event: events_pb2.AgentEvent) -> None:
        """Queue an event for delivery and return at once; raises QueueFull when full.

        The event is encoded here, so the caller may change or reuse it afterwards.
        Events are numbered per loop in the order of these calls (AgentStart is 0 of
        its loop).
        """
        if self._refusal is not None:
            raise RuntimeError(self._refusal)
        encoded = encode_event(event)
        if not self._budget.try_take(len(encoded[0])):
            raise QueueFull(f"event sender is full: {self._budget.describe()}")
        self._admit(encoded)

    async def emit_wait(
        self,
        event: events_pb2.AgentEvent,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> None:
        """Like emit, but under the "block" policy waits for room (block_timeout by default)."""
        if self._refusal is not None:
            raise RuntimeError(self._refusal)
        encoded = encode_event(event)
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
        self._admit(encoded)

    def _admit(self, encoded: Encoded) -> None:
        """Queue an event whose room in the budget is already taken.

        Also the sync facade's entry point, called on the loop thread.
        """
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

    async def flush(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Return once every event emitted before this call is stored.

        Raises DeliveryError when the deadline (flush_timeout by default) passes first,
        naming how many events are still unacknowledged, and also when any batch was
        rejected or events were given up since the previous flush.
        """
        target = self._emitted
        if self._watermark() < target:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append((target, waiter))
            self._wake.set()  # skip the linger: someone is waiting
            try:
                async with asyncio.timeout(
                    self._config.flush_timeout if timeout is None else timeout
                ):
                    await waiter
            except TimeoutError:
                raise self._error(self._unresolved_before(target)) from None
            finally:
                waiter.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove((target, waiter))
        if self._rejections or self._unreported_failed:
            raise self._error(0)

    async def close(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Flush, then stop. Later emits raise RuntimeError; a second close does nothing."""
        if self._closed:
            return
        self._closed = True
        self._refusal = self._refusal or "event sender is closed"
        try:
            await self.flush(timeout)
        finally:
            self._task.cancel()
            await asyncio.wait([self._task])

    def stats(self) -> SenderStats:
        return SenderStats(
            emitted=self._emitted,
            acknowledged=self._acknowledged,
            rejected=self._rejected,
            failed=self._failed,
            skipped=self._skipped,
            pending=self._emitted
            - self._acknowledged
            - self._rejected
            - self._failed
            - self._skipped,
            resent=self._resent,
            batches=self._next_batch_id - 1,
        )

    # -- bookkeeping ---------------------------------------------------------------------

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

    def _error(self, unacknowledged: int) -> DeliveryError:
        """Everything to report, which is then forgotten (each problem is raised once)."""
        error = DeliveryError(
            unacknowledged=unacknowledged,
            rejections=self._rejections,
            failed=self._unreported_failed,
            cause=self._last_cause if self._unreported_failed else None,
        )
        self._rejections = []
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
            self._acknowledged += batch.count
        self._resolved(batch.count, batch.nbytes)

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

    def _take_batch(self) -> _Batch | None:
        """Number the next events and frame them as a batch (None if all were skipped)."""
        config = self._config
        queue = self._queue
        next_sequence = self._next_sequence
        skip_updates = not self._stores_streaming
        # Each event's envelope framing, then its bytes (see framing.py).
        pieces: list[bytes] = []
        span = count = nbytes = skipped = skipped_bytes = 0
        while queue and count < config.max_batch_events:
            data, loop_id, kind = queue[0]
            size = len(data)
            if count and nbytes + size > config.max_batch_bytes:
                break
            queue.popleft()
            span += 1
            sequence = None
            if loop_id is not None:
                if skip_updates and kind == "message_update":
                    skipped += 1
                    skipped_bytes += size
                    continue
                sequence = next_sequence.get(loop_id, 0)
                if kind == "agent_end":
                    # Nothing may follow AgentEnd: the counter need not outlive the loop.
                    next_sequence.pop(loop_id, None)
                else:
                    next_sequence[loop_id] = sequence + 1
            pieces.append(envelope_head(sequence, size))
            pieces.append(data)
            count += 1
            nbytes += size
        self._queued_bytes -= nbytes + skipped_bytes
        first = self._batched
        self._batched += span
        self._skipped += skipped
        batch = None
        if count:
            batch_id = self._next_batch_id
            self._next_batch_id += 1
            request = batch_request(batch_id, pieces)
            batch = _Batch(batch_id, request, first, span, count, nbytes)
            self._inflight[batch_id] = batch
        if skipped:
            self._resolved(skipped, skipped_bytes)
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

    async def _run(self) -> None:
        while True:
            while not (self._queue or self._inflight):
                self._wake.clear()
                await self._wake.wait()
            try:
                await self._deliver()
            except RecorderRpcError as error:
                self._fail_pending(error)

    async def _deliver(self) -> None:
        """Keep a stream up while there is anything to deliver.

        The reconnect deadline restarts whenever a stream got an acknowledgement, so
        only a sender that makes no progress for that long gives up.
        """
        config = self._config
        while self._queue or self._inflight:
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
        """Run one Record stream until it breaks; raise unless it made progress."""
        call = self._client.record_encoded()
        self._acked_on_stream = False
        self._ready.clear()
        writer = asyncio.get_running_loop().create_task(self._write(call))
        try:
            failure = await self._read_acks(call)
        finally:
            call.cancel()
            writer.cancel()
            await asyncio.wait([writer])
        if not writer.cancelled() and (bug := writer.exception()) is not None:
            raise bug
        if not self._acked_on_stream:
            raise failure

    async def _read_acks(self, call: RecordCall) -> RecorderRpcError:
        """Apply acknowledgements until the stream ends; return why it ended."""
        try:
            while (response := await call.read()) is not _EOF:
                response = cast(service_pb2.RecordResponse, response)
                if response.HasField("ready"):
                    self._stores_streaming = response.ready.include_streaming_events
                    self._ready.set()
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

    async def _write(self, call: RecordCall) -> None:
        """Say hello, re-send what is unacknowledged, then send new batches as they form.

        Nothing is numbered before the server's RecordReady says what it stores.
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
        except (aio.AioRpcError, asyncio.InvalidStateError):
            return  # the call is over; the reader reports its status
        except BaseException:
            call.cancel()  # unblock the reader, whatever went wrong here
            raise

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
