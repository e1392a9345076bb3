"""The one place where core errors become gRPC statuses.

Every refusal carries a google.rpc.ErrorInfo detail (reason + the ids it is
about), so clients in any language can branch on it without parsing text. An
unexpected exception becomes INTERNAL with a log entry: never UNKNOWN.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from agent_recorder.v1 import recorder_service_pb2 as api
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from recorder_server import errors

log = logging.getLogger(__name__)
DOMAIN = "agent-recorder"

# google.rpc.Code values (errors.py) as the gRPC library's codes.
_STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}


def code_of(error: errors.RecorderError) -> grpc.StatusCode:
    return _STATUS_CODES[error.code]


def to_event_refusal(index: int, error: errors.RecorderError, holds_slot: bool) -> api.EventRefusal:
    """One refused event of an acknowledged batch."""
    return api.EventRefusal(
        index=index,
        code=error.code,
        reason=error.reason,
        message=error.message,
        metadata=error.metadata,
        holds_slot=holds_slot,
    )


def to_status(error: errors.RecorderError) -> grpc.Status:
    code = code_of(error)
    detail = any_pb2.Any()
    detail.Pack(
        error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=error.metadata)
    )
    status = status_pb2.Status(code=code.value[0], message=error.message, details=[detail])
    return rpc_status.to_status(status)


def to_rejection(error: errors.RecorderError) -> api.BatchRejection:
    """The in-stream form of a refused Record batch."""
    return api.BatchRejection(
        code=code_of(error).value[0],
        message=error.message,
        reason=error.reason,
        metadata=error.metadata,
    )


def internal_rejection(exc: BaseException) -> api.BatchRejection:
    return api.BatchRejection(
        code=code_pb2.INTERNAL, message=f"internal error: {type(exc).__name__}", reason="INTERNAL"
    )


async def _abort(context: grpc.aio.ServicerContext[Any, Any], exc: Exception) -> None:
    if isinstance(exc, errors.RecorderError):
        await context.abort_with_status(to_status(exc))  # type: ignore[attr-defined]
    log.exception("unexpected error in an RPC handler")
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}")


R = TypeVar("R")
S = TypeVar("S")


def unary(
    handler: Callable[[S, Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[R]],
) -> Callable[[S, Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[R]]:
    """Wrap a unary handler so every failure leaves as a mapped status."""

    @functools.wraps(handler)
    async def wrapper(self: S, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> R:
        try:
            return await handler(self, request, context)
        except (errors.RecorderError, Exception) as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            await _abort(context, exc)
            raise AssertionError("unreachable: abort raises") from exc

    return wrapper


def streaming(
    handler: Callable[[S, Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[R]],
) -> Callable[[S, Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[R]]:
    """Wrap a response-streaming handler the same way."""

    @functools.wraps(handler)
    async def wrapper(
        self: S, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[R]:
        try:
            async for item in handler(self, request, context):
                yield item
        except (errors.RecorderError, Exception) as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            await _abort(context, exc)

    return wrapper
