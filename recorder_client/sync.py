"""A blocking facade for agents that do not run asyncio.

The async client runs on a private event loop in a daemon thread. `emit` stays
cheap from any thread: it reserves room in the sender's thread-safe budget in the
caller's thread (so the queue-full policy is applied where blocking is allowed),
appends to a deque and wakes the loop only when no wake-up is already pending.
Call `close()` (or use `with`): events still queued when the process exits
without it are lost. Leaving `with` never raises for delivery: what could not be
stored (the sidecar unreachable, events refused) is logged as one warning.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar

from agent_recorder.v1 import events_pb2, session_pb2
from agent_recorder.v1 import recorder_service_pb2 as service_pb2

from recorder_client.client import DEFAULT_TIMEOUT, RecorderClient
from recorder_client.delivery import DeliveryConfig, Encoded, EventSender, SenderStats
from recorder_client.errors import DeliveryError

T = TypeVar("T")
log = logging.getLogger("recorder_client")


class SyncRecorder:
    """Records events and reads sessions without asyncio; safe to share between threads."""

    def __init__(
        self,
        target: str | None = None,
        *,
        token: str | None = None,
        writer_id: str | None = None,
        config: DeliveryConfig | None = None,
        default_timeout: float = DEFAULT_TIMEOUT,
        autostart: bool = False,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="agent-recorder-client", daemon=True
        )
        self._thread.start()
        self._inbox: deque[Encoded] = deque()
        self._drain_scheduled = False
        self._closed = False

        async def open_client() -> tuple[RecorderClient, EventSender]:
            # grpc.aio objects belong to the loop they are made on: make them there.
            client = RecorderClient.connect(
                target, token=token, default_timeout=default_timeout, autostart=autostart
            )
            return client, client.sender(writer_id=writer_id, config=config)

        self._client, self._sender = self._run(open_client())

    def __enter__(self) -> SyncRecorder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close; events that could not be stored are logged (one warning), never raised."""
        try:
            self.close()
        except DeliveryError as error:
            log.warning("agent-recorder: not every event was stored: %s", error)

    @property
    def writer_id(self) -> str:
        return self._sender.writer_id

    def emit(self, event: events_pb2.AgentEvent) -> None:
        """Queue an event; when full, raise QueueFull or wait per DeliveryConfig.on_full.

        Raises ValueError naming the field when the sidecar's limits would refuse it.
        """
        if self._closed:
            raise RuntimeError("SyncRecorder is closed")
        self._inbox.append(self._sender.reserve(event, wait=True))
        # Appending before reading the flag, and the drain clearing it before it pops,
        # means an event is never left in the inbox without a drain to come.
        if not self._drain_scheduled:
            self._drain_scheduled = True
            self._loop.call_soon_threadsafe(self._drain)

    def flush(self, timeout: float | None = None) -> None:
        """Block until every event emitted before the call is stored (see EventSender.flush)."""
        self._run(self._flush(timeout))

    def close(self, timeout: float | None = None) -> None:
        """Flush, close the connection and stop the thread; raises DeliveryError if unflushed."""
        if self._closed:
            return
        self._closed = True
        try:
            self._run(self._shutdown(timeout))
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def stats(self) -> SenderStats:
        return self._run(self._stats())

    def get_session(
        self, session_id: str, *, skip_events: bool = False, timeout: float | None = None
    ) -> session_pb2.Session:
        return self._run(
            self._client.get_session(session_id, skip_events=skip_events, timeout=timeout)
        )

    def list_sessions(
        self,
        *,
        agent_id: str = "",
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> service_pb2.ListSessionsResponse:
        return self._run(
            self._client.list_sessions(
                agent_id=agent_id, page_size=page_size, page_token=page_token, timeout=timeout
            )
        )

    def get_loop(
        self, loop_id: str, *, skip_events: bool = False, timeout: float | None = None
    ) -> session_pb2.LoopRecord:
        return self._run(self._client.get_loop(loop_id, skip_events=skip_events, timeout=timeout))

    # -- on the loop thread -----------------------------------------------------------

    def _drain(self) -> None:
        self._drain_scheduled = False
        inbox = self._inbox
        admit = self._sender.admit
        while inbox:
            admit(inbox.popleft())

    async def _flush(self, flush_timeout: float | None) -> None:
        self._drain()
        await self._sender.flush(flush_timeout)

    async def _shutdown(self, flush_timeout: float | None) -> None:
        self._drain()
        try:
            await self._sender.close(flush_timeout)
        finally:
            await self._client.close()

    async def _stats(self) -> SenderStats:
        self._drain()
        return self._sender.stats()

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()
