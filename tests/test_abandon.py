"""Writers that vanish (DESIGN.md): a crashed agent's open loops get an end state.

A real `serve` process with a short --abandon-after, a real agent process that
records the start of a loop and is killed with SIGKILL, and a test that watches
what the sidecar does with the loop: aborted with the reason after the window,
or left running when the same writer comes back in time. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from agent_recorder.v1 import recorder_service_pb2 as api
from agent_recorder.v1 import recorder_service_pb2_grpc as api_grpc
from agent_recorder.v1 import session_pb2
from support.events import RecordStream, agent_end, aio, progress
from support.fault_harness import ServerProcess, worker_env

if TYPE_CHECKING:
    from support.events import Stub

# Real processes and real waits for the abandonment window.
pytestmark = pytest.mark.slow
DEADLINE = 10.0
ABORTED = session_pb2.LOOP_STATUS_ABORTED
RUNNING = session_pb2.LOOP_STATUS_RUNNING
COMPLETED = session_pb2.LOOP_STATUS_COMPLETED


@contextlib.asynccontextmanager
async def sidecar(tmp: Path, abandon_after: int) -> AsyncIterator[tuple[ServerProcess, Stub]]:
    server = ServerProcess(
        tmp / "r.db", tmp / "r.sock", tmp / "serve.log", "--abandon-after", str(abandon_after)
    )
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.target) as channel:
            yield server, aio(api_grpc.RecorderServiceStub(channel))
    finally:
        await server.kill()


async def killed_agent(target: str, writer_id: str, loop_id: str) -> None:
    """Run the agent until it has recorded its loop's start, then SIGKILL it."""
    agent = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "support.vanishing_agent",
        target,
        writer_id,
        loop_id,
        stdout=asyncio.subprocess.PIPE,
        env=worker_env(),
    )
    try:
        assert agent.stdout is not None
        line = await asyncio.wait_for(agent.stdout.readline(), timeout=30)
        assert line == b"recorded\n", line
    finally:
        agent.send_signal(signal.SIGKILL)
        await agent.wait()


async def loop_until(stub: Stub, loop_id: str, status: int) -> session_pb2.LoopRecord:
    async with asyncio.timeout(30):
        while True:
            request = api.GetLoopRequest(loop_id=loop_id)
            loop = (await stub.GetLoop(request, timeout=DEADLINE)).loop
            if loop.status == status:
                return loop
            await asyncio.sleep(0.1)


async def test_a_killed_agents_loop_is_aborted_and_its_session_finalized(short_tmp: Path) -> None:
    async with sidecar(short_tmp, abandon_after=1) as (server, stub):
        watch = stub.WatchSessions(api.WatchSessionsRequest(), timeout=60)
        await killed_agent(server.target, "agent-7", "crash.main.0")
        loop = await loop_until(stub, "crash.main.0", ABORTED)
        assert loop.rejection.startswith("writer disconnected: writer agent-7 last seen at ")
        assert loop.HasField("ended_at")
        # The partial turn is gone; what was recorded of it stays as events.
        assert len(loop.turns) == 0
        kinds = [e.event.WhichOneof("event") for e in loop.events]
        assert kinds == ["agent_start", "turn_start", "progress_message"]
        session = (
            await stub.GetSession(api.GetSessionRequest(session_id="crash"), timeout=DEADLINE)
        ).session
        assert session.HasField("finalized_at")
        seen: list[tuple[int, str]] = []
        async with asyncio.timeout(DEADLINE):
            while (api.SESSION_LIFECYCLE_FINALIZED, "crash") not in seen:
                message = await watch.read()
                assert isinstance(message, api.WatchSessionsResponse)
                seen.append((message.lifecycle, message.session_id))
        watch.cancel()
        # The abandoned loop is closed: a late event is refused, naming it.
        late = await stub.Append(
            api.AppendRequest(
                writer_id="agent-7",
                events=[api.EventEnvelope(event=progress("crash.main.0", "c", "t", "late"))],
            ),
            timeout=DEADLINE,
        )
        assert [r.message for r in late.refusals] == ["loop 'crash.main.0' has ended (aborted)"]


async def test_a_writer_that_comes_back_in_time_continues_as_if_nothing_happened(
    short_tmp: Path,
) -> None:
    async with sidecar(short_tmp, abandon_after=2) as (server, stub):
        await killed_agent(server.target, "agent-8", "back.main.0")
        stream = RecordStream(stub, "agent-8", deadline=60)
        ack = await stream.send([(3, progress("back.main.0", "c", "t", "resumed"))])
        assert list(ack.sequences) == [3] and not ack.refusals
        await asyncio.sleep(3)  # past the window: nothing may happen to the loop
        assert (await loop_until(stub, "back.main.0", RUNNING)).status == RUNNING
        done = await stream.send([(4, agent_end("back.main.0", at=5))])
        assert list(done.sequences) == [4]
        assert await stream.close() == grpc.StatusCode.OK
        loop = await loop_until(stub, "back.main.0", COMPLETED)
        assert not loop.HasField("rejection")


async def test_loops_left_open_by_a_crashed_sidecar_are_abandoned_after_a_restart(
    short_tmp: Path,
) -> None:
    async with sidecar(short_tmp, abandon_after=0) as (server, stub):
        await killed_agent(server.target, "agent-9", "left.main.0")
        await server.kill()
    async with sidecar(short_tmp, abandon_after=1) as (_, stub):
        loop = await loop_until(stub, "left.main.0", ABORTED)
        assert loop.rejection.startswith(
            "writer disconnected: writer (before the restart) last seen at "
        )


async def test_another_writer_continuing_the_loop_in_time_keeps_it_open(
    short_tmp: Path,
) -> None:
    """An agent restarted under a new writer id picks its loop up again: not abandoned."""
    async with sidecar(short_tmp, abandon_after=2) as (server, stub):
        await killed_agent(server.target, "agent-10", "other.main.0")
        stream = RecordStream(stub, "agent-10-restarted", deadline=60)
        ack = await stream.send([(3, progress("other.main.0", "c", "t", "resumed"))])
        assert list(ack.sequences) == [3] and not ack.refusals
        await asyncio.sleep(3)  # past the window
        assert (await loop_until(stub, "other.main.0", RUNNING)).status == RUNNING
        await stream.send([(4, agent_end("other.main.0", at=5))])
        assert await stream.close() == grpc.StatusCode.OK
        assert not (await loop_until(stub, "other.main.0", COMPLETED)).HasField("rejection")
