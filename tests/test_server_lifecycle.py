"""The sidecar as a process: health, reflection, socket permissions, clean stops.

A second server on the same database is tested with rule 14 (test_server_rules.py).
"""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from agent_recorder.v1 import recorder_service_pb2 as api
from agent_recorder.v1 import recorder_service_pb2_grpc as api_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from support.recorder import RunningRecorder

from recorder_client import events as ev


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
