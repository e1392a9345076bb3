"""A real gRPC server that answers every call UNIMPLEMENTED and keeps each call's
User-Agent: how a test sees what a client (Python or Node) says it is (not a test)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc


class _Catcher(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    def __init__(self, seen: list[str]) -> None:
        self.seen = seen

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        metadata = handler_call_details.invocation_metadata or ()
        self.seen += [str(value) for key, value in metadata if key == "user-agent"]

        async def refuse(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "user-agent catcher")

        return grpc.stream_stream_rpc_method_handler(refuse)


@asynccontextmanager
async def catching_user_agents(socket: Path) -> AsyncIterator[list[str]]:
    """Serve on `socket`; the list fills with the User-Agent of each call as it arrives."""
    seen: list[str] = []
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_Catcher(seen),))
    server.add_insecure_port(f"unix://{socket}")
    await server.start()
    try:
        yield seen
    finally:
        await server.stop(None)


async def user_agents_of(command: list[str], tmp: Path) -> list[str]:
    """Run `command` (a client that finds its sidecar through $AGENT_RECORDER_TARGET)
    against the catcher; what it sent as User-Agent, whatever became of its calls."""
    socket = tmp / "ua.sock"
    async with catching_user_agents(socket) as seen:
        env = {**os.environ, "AGENT_RECORDER_TARGET": f"unix://{socket}"}
        process = await asyncio.create_subprocess_exec(
            *command,
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            async with asyncio.timeout(60):
                await process.wait()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert seen, f"{command} made no call"
    return seen
