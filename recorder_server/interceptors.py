"""What the server's interceptors share: grpc's handler types, and wrapping every
method's handler once (`WrapEachHandler`).

`DecodeGuard` (decoding.py) and `ServerVersionHeader` (version_header.py) each
rebuild a method's handler around its behaviour; the bearer-token check
(security.py) decides per call and wraps nothing.
"""

from __future__ import annotations

import abc
import inspect
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc

if TYPE_CHECKING:
    Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
    Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]
    Interceptor: TypeAlias = grpc.aio.ServerInterceptor[Any, Any]
else:  # grpc's classes are not subscriptable at run time
    Interceptor = grpc.aio.ServerInterceptor
Behaviour: TypeAlias = "Callable[[Any, Context], Any]"
Continuation: TypeAlias = "Callable[[grpc.HandlerCallDetails], Awaitable[Handler]]"

# (request streaming, response streaming) -> the handler's behaviour attribute and
# the factory that builds a handler of that kind.
_FACTORIES: dict[tuple[bool, bool], tuple[str, Callable[..., Any]]] = {
    (False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
    (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
    (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
    (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler),
}


def async_behaviour(handler: Handler) -> Behaviour | None:
    """The handler's coroutine or async-generator behaviour; None for a sync one."""
    attribute, _ = _FACTORIES[(handler.request_streaming, handler.response_streaming)]
    behaviour: Behaviour = getattr(handler, attribute)
    if inspect.iscoroutinefunction(behaviour) or inspect.isasyncgenfunction(behaviour):
        return behaviour
    return None


def rebuilt(
    handler: Handler, behaviour: Behaviour, deserializer: Callable[[bytes], Any] | None
) -> Handler:
    """A handler of the same kind with this behaviour and request deserializer."""
    _, factory = _FACTORIES[(handler.request_streaming, handler.response_streaming)]
    made: Handler = factory(behaviour, deserializer, handler.response_serializer)
    return made


class WrapEachHandler(Interceptor):
    """Apply `wrap` to every method's handler, building each wrapped handler once."""

    def __init__(self) -> None:
        # Keyed by method path; only registered methods resolve to a handler, so the
        # cache is bounded by the server's method count, not by what clients send.
        self._cache: dict[str, tuple[Handler, Handler]] = {}

    @abc.abstractmethod
    def wrap(self, handler: Handler) -> Handler:
        """The handler the server runs instead of `handler`."""

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method: str = handler_call_details.method
        cached = self._cache.get(method)
        if cached is None or cached[0] is not handler:
            cached = (handler, self.wrap(handler))
            self._cache[method] = cached
        return cached[1]
