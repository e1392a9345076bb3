"""The sidecar as a process: health, reflection, socket permissions, clean stops.

A second server on the same database is tested with rule 14 (test_server_rules.py).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from agent_recorder.v1 import events_pb2
from agent_recorder.v1 import recorder_service_pb2 as api
from agent_recorder.v1 import recorder_service_pb2_grpc as api_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from support.recorder import RunningRecorder
from support.serving import serving

from recorder_client import events as ev
from recorder_server.server import RecorderServer, ServerConfig


async def test_health_reports_serving_for_the_service(recorder: RunningRecorder) -> None:
    async with grpc.aio.insecure_channel(recorder.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "agent_recorder.v1.RecorderService"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_and_describes_the_service(recorder: RunningRecorder) -> None:
    async with grpc.aio.insecure_channel(recorder.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)

        async def ask() -> list[reflection_pb2.ServerReflectionResponse]:
            requests = [
                reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(
                    file_containing_symbol="agent_recorder.v1.RecorderService"
                ),
            ]
            return [reply async for reply in stub.ServerReflectionInfo(iter(requests))]

        listed, described = await ask()
    names = {s.name for s in listed.list_services_response.service}
    assert {"agent_recorder.v1.RecorderService", "grpc.health.v1.Health"} <= names
    assert described.file_descriptor_response.file_descriptor_proto


def test_socket_is_private_to_the_owner(recorder: RunningRecorder) -> None:
    mode = stat.S_IMODE(os.stat(recorder.socket_path).st_mode)
    assert mode == 0o600


def _serve(db: Path, listen: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "recorder_server.cli", "serve", "--db", str(db), "--listen", listen],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_listening(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    line = process.stdout.readline()
    assert "listening on" in line, line
    return line.split("listening on ", 1)[1].split(" ", 1)[0]


@pytest.mark.slow
@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
async def test_serve_stops_cleanly_and_keeps_what_it_acknowledged(
    short_tmp: Path, stop_signal: signal.Signals
) -> None:
    """Private socket directory, acknowledged writes survive, exit code 0."""
    socket = short_tmp / "run" / "r.sock"
    process = _serve(short_tmp / "r.db", f"unix://{socket}")
    try:
        target = await asyncio.to_thread(_wait_listening, process)
        assert stat.S_IMODE(os.stat(socket.parent).st_mode) == 0o700
        start = ev.agent_start(agent_id="a", session_id="s", loop_id="s.c.0")
        async with grpc.aio.insecure_channel(target) as channel:
            stub = api_grpc.RecorderServiceStub(channel)
            reply = await stub.Append(api.AppendRequest(events=[api.EventEnvelope(event=start)]))
        assert list(reply.sequences) == [0]
    finally:
        process.send_signal(stop_signal)
        out, err = await asyncio.to_thread(process.communicate, timeout=30)
    assert process.returncode == 0, err
    assert "stopping" in out
    restarted = _serve(short_tmp / "r.db", f"unix://{socket}")
    try:
        target = await asyncio.to_thread(_wait_listening, restarted)
        async with grpc.aio.insecure_channel(target) as channel:
            stub = api_grpc.RecorderServiceStub(channel)
            got = await stub.GetLoop(api.GetLoopRequest(loop_id="s.c.0"))
        assert got.loop.session_id == "s"
        assert [e.sequence for e in got.loop.events] == [0]
    finally:
        restarted.send_signal(signal.SIGTERM)
        await asyncio.to_thread(restarted.communicate, timeout=30)


def _batch(batch_id: int, *events: events_pb2.AgentEvent) -> api.RecordRequest:
    envelopes = [api.EventEnvelope(event=event) for event in events]
    return api.RecordRequest(batch=api.EventBatch(batch_id=batch_id, events=envelopes))


async def _busy_requests() -> AsyncIterator[api.RecordRequest]:
    """A writer that never stops sending: a loop start, then tool calls."""
    yield api.RecordRequest(hello=api.RecordHello(writer_id="busy"))
    yield _batch(1, ev.agent_start(agent_id="a", session_id="s", loop_id="s.c.0"))
    batch_id = 1
    while True:
        batch_id += 1
        call = f"call-{batch_id}"
        yield _batch(
            batch_id,
            ev.tool_start("s.c.0", call, "t", {"n": batch_id}),
            ev.tool_end("s.c.0", call, "t", "x" * 200),
        )
        await asyncio.sleep(0)


async def test_sigint_during_a_busy_record_stream_stops_quietly(short_tmp: Path) -> None:
    """No 'Task exception was never retrieved' traceback, and what was acknowledged is kept."""
    db = short_tmp / "r.db"
    with serving("--db", str(db), "--listen", f"unix://{short_tmp / 'r.sock'}") as served:
        acknowledged, signalled = 0, False
        async with grpc.aio.insecure_channel(served.address) as channel:
            call = api_grpc.RecorderServiceStub(channel).Record(_busy_requests())
            # The stream ends with an error (UNAVAILABLE from the server, unless this
            # client's own next send loses the race: then gRPC reports INTERNAL).
            with pytest.raises(grpc.aio.AioRpcError):
                async for response in call:
                    assert not response.HasField("rejection") and not response.refusals, response
                    acknowledged += len(response.sequences)
                    if acknowledged >= 400 and not signalled:
                        served.process.send_signal(signal.SIGINT)  # once: Ctrl-C
                        signalled = True
        assert await asyncio.to_thread(served.wait) == 0
    assert "Traceback" not in served.err and "never retrieved" not in served.err, served.err
    assert served.err == ""
    assert served.out == "agent-recorder: stopping (draining writes)\n"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        stored = conn.execute("SELECT count(*) FROM events WHERE loop_id = 's.c.0'").fetchone()
    assert stored[0] >= acknowledged


async def test_stopping_ends_open_streams_instead_of_waiting_out_the_grace(
    short_tmp: Path,
) -> None:
    """Record streams and live tails end with UNAVAILABLE; the grace period is not waited."""
    config = ServerConfig(
        db_path=short_tmp / "r.db",
        listen=f"unix://{short_tmp / 'r.sock'}",
        shutdown_grace_s=300,
    )
    server = RecorderServer(config)
    await server.__aenter__()
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = api_grpc.RecorderServiceStub(channel)
            requests: asyncio.Queue[api.RecordRequest] = asyncio.Queue()

            async def record_requests() -> AsyncIterator[api.RecordRequest]:
                while True:
                    yield await requests.get()

            record = stub.Record(record_requests())
            requests.put_nowait(api.RecordRequest(hello=api.RecordHello(writer_id="w")))
            ready = await record.read()
            assert isinstance(ready, api.RecordResponse) and ready.HasField("ready")
            start = ev.agent_start(agent_id="a", session_id="s", loop_id="s.c.0")
            requests.put_nowait(_batch(1, start))
            ack = await record.read()
            assert isinstance(ack, api.RecordResponse) and list(ack.sequences) == [0]
            tail = stub.StreamEvents(api.StreamEventsRequest(loop_id="s.c.0", follow=True))
            page = await tail.read()
            assert isinstance(page, api.StreamEventsResponse)
            assert [e.event.sequence for e in page.events] == [0]
            # Far less than the 300 s grace: the open streams do not hold the stop.
            await asyncio.wait_for(server.__aexit__(None, None, None), 60)
            for call in (record, tail):
                with pytest.raises(grpc.aio.AioRpcError) as ended:
                    await call.read()
                assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
                assert ended.value.details() == "the server is stopping"
    finally:
        await server.__aexit__(None, None, None)
