"""Load through the real server: many Record streams and many unary calls at once.

Bounded in count (100 streams × 3 batches, 1,000 unary calls) and in time (one
overall timeout). Every acknowledged event must be stored, health must stay
SERVING throughout (watched, not polled), and no call may fail.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc
import pytest
from agent_recorder.v1 import recorder_service_pb2 as api
from agent_recorder.v1 import recorder_service_pb2_grpc as api_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.events import (
    RecordStream,
    agent_end,
    agent_start,
    aio,
    append,
    assistant,
    message_end,
    turn_end,
    turn_start,
    user,
)
from support.recorder import RunningRecorder

from recorder_server.server import SERVICE_NAME

if TYPE_CHECKING:
    from support.events import Stub

# Load runs are slow: not in `make test-fast`.
pytestmark = pytest.mark.slow
STREAMS = 100
UNARY_CALLS = 1000
CHANNELS = 4
LIMIT_S = 120.0
SERVING = health_pb2.HealthCheckResponse.SERVING

# (loop_id, sequence) of every event the server acknowledged.
Acked = set[tuple[str, int]]


@pytest.fixture
async def stubs(recorder: RunningRecorder) -> AsyncIterator[list[Stub]]:
    """A few channels, so the load is not one HTTP/2 connection's stream limit."""
    channels = [grpc.aio.insecure_channel(recorder.target) for _ in range(CHANNELS)]
    yield [aio(api_grpc.RecorderServiceStub(channel)) for channel in channels]
    for channel in channels:
        await channel.close(None)


async def watch_health(target: str, seen: list[int], watching: asyncio.Event) -> None:
    """Every status the server reports for the service until cancelled."""
    async with grpc.aio.insecure_channel(target) as channel:
        call = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=SERVICE_NAME)
        )
        async for reply in call:
            seen.append(reply.status)
            watching.set()


async def one_writer(stub: Stub, n: int, all_open: asyncio.Barrier) -> Acked:
    """hello, then (once every stream is open) a loop in three acknowledged batches."""
    session, loop = f"stream-{n}", f"stream-{n}.cfg.0"
    batches = [
        [agent_start(session, loop, at=0), turn_start(loop, 0, at=1), message_end(loop, user("q"))],
        [turn_end(loop, assistant(f"answer {n}", at=2), at=2)],
        [agent_end(loop, at=3)],
    ]
    stream = RecordStream(stub, f"writer-{n}", deadline=LIMIT_S)
    await stream.hello()
    await all_open.wait()
    acked: Acked = set()
    for batch in batches:
        response = await stream.send(batch)
        assert not response.HasField("rejection"), response.rejection
        acked.update((loop, sequence) for sequence in response.sequences)
    assert await stream.close() == grpc.StatusCode.OK
    return acked


async def stored(stub: Stub, session: str) -> Acked:
    request = api.StreamEventsRequest(session_id=session)
    return {
        (item.loop_id, item.event.sequence)
        async for reply in stub.StreamEvents(request, timeout=LIMIT_S)
        for item in reply.events
    }


async def assert_serving(target: str) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
    assert reply.status == SERVING


async def test_concurrent_streams_and_unary_calls_store_everything_acknowledged(
    recorder: RunningRecorder, stubs: list[Stub]
) -> None:
    seen: list[int] = []
    watching = asyncio.Event()
    watcher = asyncio.create_task(watch_health(recorder.target, seen, watching))
    await watching.wait()
    async with asyncio.timeout(LIMIT_S):
        # 100 Record streams at once
        all_open = asyncio.Barrier(STREAMS)
        writers = (one_writer(stubs[n % CHANNELS], n, all_open) for n in range(STREAMS))
        acks = await asyncio.gather(*writers)
        for n, acked in enumerate(acks):
            assert len(acked) == 5, n  # start, turn start, message, turn end, end
            assert await stored(stubs[0], f"stream-{n}") == acked, n
        await assert_serving(recorder.target)

        # 1,000 unary calls at once: half write a session each, half read
        async def write(n: int) -> list[int]:
            loop = f"unary-{n}.cfg.0"
            events = [agent_start(f"unary-{n}", loop), agent_end(loop, at=1)]
            return await append(stubs[n % CHANNELS], events, writer_id=f"u{n}", deadline=LIMIT_S)

        async def read(n: int) -> int:
            stub = stubs[n % CHANNELS]
            if n % 2:
                reply = await stub.GetSession(
                    api.GetSessionRequest(session_id=f"stream-{n % STREAMS}", skip_events=True),
                    timeout=LIMIT_S,
                )
                return len(reply.session.loops)
            page = await stub.ListSessions(api.ListSessionsRequest(page_size=10), timeout=LIMIT_S)
            return len(page.sessions)

        half = UNARY_CALLS // 2
        results = await asyncio.gather(
            *(write(n) for n in range(half)), *(read(n) for n in range(half))
        )
        writes, reads = results[:half], results[half:]
        assert all(sequences == [0, 1] for sequences in writes)
        assert all(isinstance(count, int) and count >= 1 for count in reads)
        for n in range(half):
            loop = f"unary-{n}.cfg.0"
            assert await stored(stubs[n % CHANNELS], f"unary-{n}") == {(loop, 0), (loop, 1)}
        await assert_serving(recorder.target)
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher
    assert seen and set(seen) == {SERVING}
