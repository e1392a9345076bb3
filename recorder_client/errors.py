"""The client's failure kinds.

Callers should not have to know gRPC internals to tell *why* a call failed: the
server attaches a machine-readable reason (google.rpc.ErrorInfo) to every refusal,
and delivery failures say how many events are affected, because a silent or vague
failure is exactly what the recorder exists to avoid.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import grpc
from agent_recorder.v1 import events_pb2
from agent_recorder.v1 import recorder_service_pb2 as service_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from recorder_client.queries import event_loop_id

ERROR_DOMAIN = "agent-recorder"


class RecorderRpcError(Exception):
    """A refused or failed RPC, with the server's reason when it sent one."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{code.name}: {message}" + (f" [{reason}]" if reason else ""))
        self.code = code
        self.message = message
        self.reason = reason
        self.metadata: dict[str, str] = dict(metadata or {})

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> RecorderRpcError:
        """Decode the status and its ErrorInfo detail, tolerating servers that send none."""
        code = error.code()
        message = error.details() or ""
        try:
            # grpc.aio.AioRpcError quacks like grpc.Call (code/details/trailing_metadata).
            status = rpc_status.from_call(cast(Any, error))
        except ValueError:
            # Rich status disagreeing with the plain one: trust the plain status.
            status = None
        if status is not None:
            for detail in status.details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    return cls(code, message, reason=info.reason, metadata=info.metadata)
        return cls(code, message)


class SidecarUnreachable(Exception):
    """No Record stream came up in time; the message names the cause."""


class QueueFull(Exception):
    """The sender holds as many unacknowledged events or bytes as it may.

    Raised instead of dropping the event, so the agent decides what to lose.
    """


@dataclass(frozen=True)
class RejectedBatch:
    """A batch the server refused as a whole; none of its events were stored."""

    code: grpc.StatusCode
    message: str
    reason: str
    metadata: Mapping[str, str]
    events: int
    loop_ids: tuple[str, ...]
    # The event the server named as the cause (by index or field path), if it did.
    event: events_pb2.AgentEvent | None = None

    @classmethod
    def from_rejection(
        cls, rejection: service_pb2.BatchRejection, envelopes: Sequence[service_pb2.EventEnvelope]
    ) -> RejectedBatch:
        loops = dict.fromkeys(
            loop_id for env in envelopes if (loop_id := event_loop_id(env.event)) is not None
        )
        return cls(
            code=_status_code(rejection.code),
            message=rejection.message,
            reason=rejection.reason,
            metadata=dict(rejection.metadata),
            events=len(envelopes),
            loop_ids=tuple(loops),
            event=_named_event(rejection.metadata, envelopes),
        )

    def describe(self) -> str:
        loop = self.metadata.get("loop_id") or ", ".join(self.loop_ids) or "-"
        return (
            f"{self.events} event(s) rejected: {self.code.name} {self.reason or '-'}"
            f" (loop {loop}): {self.message}"
        )


@dataclass(frozen=True)
class RefusedEvent:
    """One event the server refused alone (the rest of its batch was stored).

    The server keeps it with the reason: in its loop's slot when `holds_slot`
    (the loop goes on), else in a refusal log. An event too large for the server's
    request limit is refused by the sender itself (never sent, no sequence).
    """

    code: grpc.StatusCode
    reason: str
    message: str
    metadata: Mapping[str, str]
    event: events_pb2.AgentEvent
    # The sequence the sender gave it (None for the session-level Parallel* events
    # and for events refused before they were numbered).
    sequence: int | None
    holds_slot: bool

    @classmethod
    def from_refusal(
        cls, refusal: service_pb2.EventRefusal, envelope: service_pb2.EventEnvelope
    ) -> RefusedEvent:
        return cls(
            code=_status_code(refusal.code),
            reason=refusal.reason,
            message=refusal.message,
            metadata=dict(refusal.metadata),
            event=envelope.event,
            sequence=envelope.sequence if envelope.HasField("sequence") else None,
            holds_slot=refusal.holds_slot,
        )

    @property
    def loop_id(self) -> str | None:
        return event_loop_id(self.event)

    def describe(self) -> str:
        where = f"loop {self.loop_id or '-'}"
        if self.sequence is not None:
            where += f" sequence {self.sequence}"
        kind = self.event.WhichOneof("event") or "event"
        return f"{kind} at {where}: {self.reason or self.code.name}: {self.message}"


class DeliveryError(Exception):
    """Events emitted to an EventSender were not all stored.

    One error reports everything that went wrong since the previous flush: events
    still unacknowledged at the deadline, events refused one by one (`refused`,
    the first of them in `refusals`), batches the server rejected, and events given
    up after the reconnect deadline; `cause` is the last connection error, and the
    message names it (e.g. "sidecar at unix:///… unreachable: connection refused").
    """

    def __init__(
        self,
        *,
        unacknowledged: int = 0,
        rejections: Sequence[RejectedBatch] = (),
        failed: int = 0,
        cause: BaseException | None = None,
        refused: int = 0,
        refusals: Sequence[RefusedEvent] = (),
        target: str = "",
    ) -> None:
        self.unacknowledged = unacknowledged
        self.rejections = tuple(rejections)
        self.failed = failed
        self.cause = cause
        self.refused = refused
        self.refusals = tuple(refusals)
        self.target = target
        super().__init__(self._describe())

    @property
    def rejection(self) -> RejectedBatch | None:
        """The first rejected batch; later ones usually follow from it."""
        return self.rejections[0] if self.rejections else None

    def _describe(self) -> str:
        why = f": {describe_cause(self.cause, self.target)}" if self.cause is not None else ""
        parts: list[str] = []
        if self.unacknowledged:
            parts.append(
                f"{self.unacknowledged} event(s) still unacknowledged at the deadline{why}"
            )
        if self.refused:
            shown = "; ".join(r.describe() for r in self.refusals[:REFUSALS_SHOWN])
            more = self.refused - min(len(self.refusals), REFUSALS_SHOWN)
            tail = f"; and {more} more" if more > 0 else ""
            parts.append(f"{self.refused} event(s) refused by the sidecar: {shown}{tail}")
        parts.extend(r.describe() for r in self.rejections)
        if self.failed:
            parts.append(f"{self.failed} event(s) given up undelivered{why}")
        return "; ".join(parts) or "delivery failed"


class EventsRefused(DeliveryError):
    """The only problem since the previous flush: events the server refused one by one.

    Everything else emitted was stored; each refused event is kept by the server
    with its reason (`agent-recorder refused` lists them). Raised by Append too,
    with the sequence of every event of the batch in `sequences`.
    """

    sequences: list[int] | None = None


# How many refused events an error message spells out (all are counted).
REFUSALS_SHOWN = 3


def describe_cause(cause: BaseException, target: str = "") -> str:
    """A connection error as a person reads it: "sidecar at X unreachable: connection refused"."""
    why = why_unreachable(cause)
    if why is not None:
        return f"sidecar at {target or 'its address'} unreachable: {why}"
    return str(cause)


def why_unreachable(cause: BaseException) -> str | None:
    """Why no connection could be made ("connection refused"), or None for another error."""
    if isinstance(cause, RecorderRpcError) and cause.code == grpc.StatusCode.UNAVAILABLE:
        text = cause.message.lower()
        for needle, why in _UNREACHABLE:
            if needle in text:
                return why
    return None


# What gRPC's connection failures say, and how the cause reads.
_UNREACHABLE = (
    ("connection refused", "connection refused"),
    ("no such file or directory", "no socket at that path"),
    ("timed out", "connection timed out"),
    ("deadline exceeded", "connection timed out"),
    ("failed to connect", "cannot connect"),
    ("dns resolution failed", "unknown host"),
)


def _named_event(
    metadata: Mapping[str, str], envelopes: Sequence[service_pb2.EventEnvelope]
) -> events_pb2.AgentEvent | None:
    """The refused event: rules give its `index` in the batch, validation a field path."""
    index = metadata.get("index")
    if index is None:
        found = re.match(r"(?:batch\.)?events\[(\d+)\]", metadata.get("field", ""))
        index = found.group(1) if found else None
    if index is None or not index.isdigit() or int(index) >= len(envelopes):
        return None
    return envelopes[int(index)].event


def _status_code(value: int) -> grpc.StatusCode:
    for code in grpc.StatusCode:
        if code.value[0] == value:
            return code
    return grpc.StatusCode.UNKNOWN
