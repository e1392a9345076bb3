"""Every response names the server's version in its initial metadata (`server-version`).

Generic tools see it on any call, the open ones included (a health check, a
reflection listing: `grpcurl -v ... grpc.health.v1.Health/Check`), as do clients in
any language; the Record stream also says it in `RecordReady.server_version`.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc

from recorder_common.version import SERVER_VERSION_HEADER, __version__
from recorder_server.decoding import Behaviour, Continuation

if TYPE_CHECKING:
    Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
    Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]
    Interceptor: TypeAlias = grpc.aio.ServerInterceptor[Any, Any]
else:  # grpc's classes are not subscriptable at run time
    Interceptor = grpc.aio.ServerInterceptor

_FACTORIES: dict[tuple[bool, bool], tuple[str, Callable[..., Any]]] = {
    (False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
    (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
    (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
    (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler),
}


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
    attribute, factory = _FACTORIES[(handler.request_streaming, handler.response_streaming)]
    behaviour = getattr(handler, attribute)
    if not (inspect.iscoroutinefunction(behaviour) or inspect.isasyncgenfunction(behaviour)):
        return handler
    announced: Handler = factory(
        _announcing(behaviour, metadata),
        handler.request_deserializer,
        handler.response_serializer,
    )
    return announced


class ServerVersionHeader(Interceptor):
    """Apply `announcing_handler` to every method, building each wrapped handler once."""

    def __init__(self, version: str = __version__) -> None:
        self._metadata = ((SERVER_VERSION_HEADER, version),)
        # Keyed by method path: bounded by the handlers the server has, as in DecodeGuard.
        self._cache: dict[str, tuple[Any, Any]] = {}

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method: str = handler_call_details.method
        cached = self._cache.get(method)
        if cached is None or cached[0] is not handler:
            cached = (handler, announcing_handler(handler, self._metadata))
            self._cache[method] = cached
        announced: Handler = cached[1]
        return announced
