"""Shared fixtures only: a real sidecar on a temp Unix socket with a real SQLite file.

Helpers that tests import live in the `support` package (tests/support/), never here.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from agent_recorder.v1 import recorder_service_pb2_grpc as api_grpc
from support.recorder import RunningRecorder

from recorder_server.server import RecorderServer, ServerConfig


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temp dir with a short path: Unix socket paths are limited to ~100 bytes."""
    path = Path(tempfile.mkdtemp(prefix="ar-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def recorder(short_tmp: Path) -> AsyncIterator[RunningRecorder]:
    running = RunningRecorder(db_path=short_tmp / "recorder.db", socket_path=short_tmp / "r.sock")
    await running.start()
    try:
        yield running
    finally:
        await running.close_channels()
        await running.stop()


@pytest.fixture(params=["unix", "tcp"])
async def server(request: pytest.FixtureRequest, short_tmp: Path) -> AsyncIterator[RecorderServer]:
    """A sidecar in this process on a Unix socket, then on 127.0.0.1 (a free port)."""
    listen = f"unix://{short_tmp / 'r.sock'}" if request.param == "unix" else "127.0.0.1:0"
    config = ServerConfig(db_path=short_tmp / "recorder.db", listen=listen, shutdown_grace_s=1.0)
    async with RecorderServer(config) as running:
        yield running


@pytest.fixture
async def stub(recorder: RunningRecorder) -> api_grpc.RecorderServiceStub:
    return recorder.stub()
