"""Every response names the server's version in its initial metadata (`server-version`).

Generic tools see it on any call, the open ones included (a health check, a
reflection listing: `grpcurl -v ... grpc.health.v1.Health/Check`), as do clients in
any language; the Record stream also says it in `RecordReady.server_version`.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from recorder_common.version import SERVER_VERSION_HEADER, __version__
from recorder_server.interceptors import Behaviour, WrapEachHandler, async_behaviour, rebuilt

if TYPE_CHECKING:
    from recorder_server.interceptors import Context, Handler


def _announcing(behaviour: Behaviour, metadata: tuple[tuple[str, str], ...]) -> Behaviour:
    """The same kind of callable (coroutine or async generator), sending `metadata` first."""
    if inspect.isasyncgenfunction(behaviour):

        async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
            await context.send_initial_metadata(metadata)
            async for response in behaviour(request, context):
                yield response

        return stream

    async def unary(request: Any, context: Context) -> Any:
        await context.send_initial_metadata(metadata)
        return await behaviour(request, context)

    return unary


def announcing_handler(handler: Handler, metadata: tuple[tuple[str, str], ...]) -> Handler:
    """The handler sending `metadata` before anything else; sync behaviours left as they are."""
    behaviour = async_behaviour(handler)
    if behaviour is None:
        return handler
    return rebuilt(handler, _announcing(behaviour, metadata), handler.request_deserializer)


class ServerVersionHeader(WrapEachHandler):
    """Apply `announcing_handler` to every method, building each wrapped handler once."""

    def __init__(self, version: str = __version__) -> None:
        super().__init__()
        self._metadata = ((SERVER_VERSION_HEADER, version),)

    def wrap(self, handler: Handler) -> Handler:
        return announcing_handler(handler, self._metadata)
