"""Request bytes the protobuf decoder refuses become INVALID_ARGUMENT, not UNKNOWN.

grpc.aio runs a method's request deserializer outside the handler (unary requests)
or inside the request iterator (streams), so a DecodeError there — corrupt wire
format, invalid UTF-8 in a string, messages nested past the decoder's depth cap of
100 — bypasses every handler's error mapping and leaves as UNKNOWN "Unexpected
<class DecodeError>". `DecodeGuard` swaps each deserializer for one that returns an
`_Undecodable` marker instead of raising, and wraps the behaviour so that a marker
aborts the call with INVALID_ARGUMENT carrying the decoder's reason.

A behaviour marked `@wants_wire` receives each request as `Received(request, wire)`,
the message together with the very bytes it was decoded from: validation can settle
facts about a whole batch from those in one C-speed pass (see `validate_events`),
instead of walking or re-encoding the decoded message.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import grpc
from google.protobuf.message import DecodeError

from recorder_server.interceptors import (
    Behaviour,
    WrapEachHandler,
    async_behaviour,
    rebuilt,
)

if TYPE_CHECKING:
    from recorder_server.interceptors import Context, Handler

_Behaviour = TypeVar("_Behaviour", bound="Callable[..., Any]")


class Received(NamedTuple):
    """A request as a `@wants_wire` behaviour gets it."""

    request: Any
    wire: bytes


def wants_wire(behaviour: _Behaviour) -> _Behaviour:
    """Mark a servicer method to receive `Received` pairs (served behind `DecodeGuard`)."""
    setattr(behaviour, "wants_wire", True)  # noqa: B010 (mypy refuses the attribute form)
    return behaviour


class _Undecodable:
    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _tolerant(deserializer: Callable[[bytes], Any], keep_wire: bool) -> Callable[[bytes], Any]:
    def decode(raw: bytes) -> Any:
        try:
            request = deserializer(raw)
        except DecodeError as exc:
            return _Undecodable(str(exc))
        return Received(request, raw) if keep_wire else request

    return decode


async def _refuse_if_undecodable(request: Any, context: Context) -> None:
    if isinstance(request, _Undecodable):
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT, f"request could not be decoded: {request.reason}"
        )


async def _checked(requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
    async for request in requests:
        await _refuse_if_undecodable(request, context)
        yield request


def _guard_behaviour(behaviour: Behaviour, request_streaming: bool) -> Behaviour:
    """The same kind of callable (coroutine or async generator) with the check in front."""
    if inspect.isasyncgenfunction(behaviour):

        async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
            if request_streaming:
                request = _checked(request, context)
            else:
                await _refuse_if_undecodable(request, context)
            async for response in behaviour(request, context):
                yield response

        return stream

    async def unary(request: Any, context: Context) -> Any:
        if request_streaming:
            request = _checked(request, context)
        else:
            await _refuse_if_undecodable(request, context)
        return await behaviour(request, context)

    return unary


def guard_handler(handler: Handler) -> Handler:
    """The handler with a tolerant deserializer, or itself when there is nothing to guard.

    Sync behaviours (none in this server) and raw-bytes handlers are left as they are.
    """
    behaviour = async_behaviour(handler)
    deserializer = handler.request_deserializer
    if deserializer is None or behaviour is None:
        return handler
    return rebuilt(
        handler,
        _guard_behaviour(behaviour, handler.request_streaming),
        _tolerant(deserializer, getattr(behaviour, "wants_wire", False)),
    )


class DecodeGuard(WrapEachHandler):
    """Apply `guard_handler` to every method, building each guarded handler once."""

    def wrap(self, handler: Handler) -> Handler:
        return guard_handler(handler)
