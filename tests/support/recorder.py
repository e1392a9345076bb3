"""A real sidecar in the test's own process, on a temp Unix socket and SQLite file (not a test)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import grpc
from agent_recorder.v1 import recorder_service_pb2_grpc as api_grpc

from recorder_server.recording import RecordingOptions
from recorder_server.server import RecorderServer, ServerConfig


@dataclass
class RunningRecorder:
    """An in-process server that a test can stop and start on the same file and socket."""

    db_path: Path
    socket_path: Path
    options: RecordingOptions = field(default_factory=RecordingOptions)
    server: RecorderServer | None = None
    _channels: list[grpc.aio.Channel] = field(default_factory=list)

    @property
    def target(self) -> str:
        return f"unix://{self.socket_path}"

    def config(self) -> ServerConfig:
        return ServerConfig(
            db_path=self.db_path, listen=self.target, options=self.options, shutdown_grace_s=1.0
        )

    async def start(self) -> None:
        assert self.server is None, "already running"
        server = RecorderServer(self.config())
        await server.__aenter__()
        self.server = server

    async def stop(self) -> None:
        if self.server is not None:
            server, self.server = self.server, None
            await server.__aexit__(None, None, None)

    def stub(self) -> api_grpc.RecorderServiceStub:
        """A raw generated stub on a fresh channel, closed at teardown."""
        channel = grpc.aio.insecure_channel(self.target)
        self._channels.append(channel)
        return api_grpc.RecorderServiceStub(channel)

    async def close_channels(self) -> None:
        for channel in self._channels:
            await channel.close(grace=None)
        self._channels.clear()
