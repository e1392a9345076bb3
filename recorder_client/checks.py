"""The checks an EventSender applies at emit(), so its own bad events never reach a batch.

The server checks every event again (recorder_server/validation.py) and refuses
a bad one alone; checking here as well means the agent hears of its mistake at
the line that made it, as a ValueError naming the field, before the event is
numbered or queued. Only what the server's limits (announced in RecordReady)
decide is checked: ids (non-empty, at most `max_id_length` characters, no
control characters), free-form JSON (nesting at most `max_value_depth`, no NaN
or Infinity, which JSON cannot carry) and the event's size (`max_request_bytes`).
One more bound is protobuf's own: a request nesting more than 100 messages cannot
be decoded at all (some 30 JSON levels inside an event), and the server would
refuse it with the whole batch, so such an event is refused here too.

Free-form JSON is settled from the event's bytes, which emit() has anyway, when
they prove it valid; only an event they cannot clear is walked (`_walk`) and
decoded as the server would (`_check_decodable`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any, Final

from agent_recorder.v1 import events_pb2
from agent_recorder.v1 import recorder_service_pb2 as service_pb2
from google.protobuf import struct_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message

from recorder_client import defaults
from recorder_client.framing import batch_request, envelope_head
from recorder_common.finite import finite_on_wire

# C0 controls, DEL, C1 controls, and lone surrogates: as the server refuses them.
_BAD_ID_CHAR: Final = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_JSON_TYPES: Final = frozenset(
    d.full_name
    for d in (
        struct_pb2.Value.DESCRIPTOR,
        struct_pb2.Struct.DESCRIPTOR,
        struct_pb2.ListValue.DESCRIPTOR,
    )
)
# Field keys and lengths around an event in a request: a generous bound.
_FRAMING_BYTES: Final = 64


@dataclass(frozen=True)
class EventLimits:
    """What an event must fit; the server's defaults until its RecordReady says otherwise."""

    max_id_length: int = defaults.MAX_ID_LENGTH
    max_value_depth: int = defaults.MAX_VALUE_DEPTH
    max_request_bytes: int = defaults.MAX_REQUEST_BYTES

    def largest_event(self) -> int:
        """The largest event bytes that fit a request alone."""
        return self.max_request_bytes - _FRAMING_BYTES


def check_event(
    event: events_pb2.AgentEvent,
    data: bytes,
    kind: str,
    loop_id: str | None,
    limits: EventLimits,
) -> None:
    """Raise ValueError naming the field if the server would refuse the event's shape.

    `data`, `kind` and `loop_id` are what `encode_event` made of it (loop_id None for
    the session-level Parallel* events). On emit's path: the common event costs a
    few C-level string and byte scans.
    """
    if len(data) > limits.max_request_bytes - _FRAMING_BYTES:
        where = f" (loop {loop_id})" if loop_id else ""
        raise ValueError(
            f"event.{kind}: {len(data)} bytes, larger than the sidecar's request limit"
            f" of {limits.max_request_bytes} bytes{where}"
        )
    max_length = limits.max_id_length
    if loop_id is not None and not (
        0 < len(loop_id) <= max_length and loop_id.isascii() and loop_id.isprintable()
    ):
        _check_id(loop_id, f"event.{kind}.loop_id", max_length)
    more = _MORE_IDS.get(kind)
    if more is not None:
        for path, value in more(getattr(event, kind)):
            _check_id(value, f"event.{kind}.{path}", max_length)
    if kind in _HOLDS_JSON and not _json_cleared(
        data, min(limits.max_value_depth, _DECODABLE_DEPTH)
    ):
        _walk(getattr(event, kind), f"event.{kind}", limits.max_value_depth)
        _check_decodable(data, kind)


def _agent_start_ids(e: Any) -> Iterator[tuple[str, str]]:
    yield "agent_id", e.agent_id
    yield "session_id", e.session_id
    if e.HasField("parent_loop_id"):
        yield "parent_loop_id", e.parent_loop_id


def _parallel_start_ids(e: Any) -> Iterator[tuple[str, str]]:
    yield "session_id", e.session_id
    for j, loop_id in enumerate(e.loop_ids):
        yield f"loop_ids[{j}]", loop_id


def _parallel_end_ids(e: Any) -> Iterator[tuple[str, str]]:
    yield "session_id", e.session_id
    yield "selected_loop_id", e.selected_loop_id


def _tool_end_ids(e: Any) -> Iterator[tuple[str, str]]:
    if e.HasField("child_loop_id"):
        yield "child_loop_id", e.child_loop_id
    if e.result.HasField("child_loop_id"):
        yield "result.child_loop_id", e.result.child_loop_id


def _tool_update_ids(e: Any) -> Iterator[tuple[str, str]]:
    if e.partial_result.HasField("child_loop_id"):
        yield "partial_result.child_loop_id", e.partial_result.child_loop_id


# The ids an event holds besides its loop_id (path below its kind, value), by kind.
_MORE_IDS: Final[dict[str, Callable[[Any], Iterator[tuple[str, str]]]]] = {
    "agent_start": _agent_start_ids,
    "parallel_loop_start": _parallel_start_ids,
    "parallel_loop_end": _parallel_end_ids,
    "tool_execution_end": _tool_end_ids,
    "tool_execution_update": _tool_update_ids,
}


def _check_id(value: str, path: str, max_length: int) -> None:
    if not value:
        raise ValueError(f"{path}: must not be empty")
    if len(value) > max_length:
        raise ValueError(f"{path}: must be at most {max_length} characters, not {len(value)}")
    if not (value.isascii() and value.isprintable()) and (bad := _BAD_ID_CHAR.search(value)):
        raise ValueError(
            f"{path}: must not contain control characters or lone surrogates"
            f" (U+{ord(bad.group()):04X} at index {bad.start()})"
        )


def _json_cleared(data: bytes, limit: int) -> bool:
    """Whether the bytes alone prove every JSON value in them valid.

    A JSON number is a Value's number_value: tag 0x11 and 8 little-endian bytes,
    which for NaN or Infinity end in an exponent of all ones (`finite_on_wire`). Each level
    of nesting is a Value's struct_value or list_value (tag 0x2A or 0x32, a length)
    holding a container whose first field's tag is 0x0A, so it costs at least 4
    bytes and one 0x0A byte (`_NESTING`). These tests over-count (text can hold the
    same bytes), never under-count: False means "walk to find out", not "invalid".
    Each runs only when the cheaper one before it (a byte count) could not decide.
    """
    if not finite_on_wire(data):
        return False
    return (
        len(data) <= 4 * limit - 4
        or data.count(b"\x0a") < limit
        or len(_NESTING.findall(data[::-1])) < limit
    )


# One nesting level read backwards: the container's first tag 0x0A, the last byte of
# the length, up to 4 more length bytes, the tag of struct_value / list_value.
# Backwards because a pattern that starts with one literal byte scans ~3x faster.
_NESTING: Final = re.compile(rb"\x0a[\x00-\x7f][\x80-\xff]{0,4}[\x2a\x32]")


# JSON levels that always decode: each costs 2-3 nested messages (Value, Struct,
# its map entry), under at most 9 levels of request and event around the deepest
# JSON field, within protobuf's 100.
_DECODABLE_DEPTH: Final = 25


def _check_decodable(data: bytes, kind: str) -> None:
    """Refuse an event nested too deeply for the server to decode, as it would arrive."""
    request = batch_request(0, [envelope_head(0, len(data)), data])
    try:
        service_pb2.RecordRequest.FromString(request)
    except DecodeError:
        raise ValueError(
            f"event.{kind}: nested too deeply to be decoded (protobuf decodes at most"
            " 100 nested messages, some 30 levels of JSON)"
        ) from None


def _walk(message: Message, path: str, limit: int) -> None:
    """Find the JSON value that is too deep or not finite, and name its field."""
    for name, child in _children(message):
        child_path = f"{path}.{name}"
        if child.DESCRIPTOR.full_name in _JSON_TYPES:
            _check_json(child, child_path, limit)
        else:
            _walk(child, child_path, limit)


def _children(message: Message) -> Iterator[tuple[str, Message]]:
    """The set submessages of `message` that may hold JSON, with their field paths."""
    for field in _json_fields(message.DESCRIPTOR):
        if field.is_repeated:
            for j, item in enumerate(getattr(message, field.name)):
                yield f"{field.name}[{j}]", item
        elif message.HasField(field.name):
            yield field.name, getattr(message, field.name)


@cache
def _json_fields(descriptor: Descriptor) -> tuple[FieldDescriptor, ...]:
    """The message fields of a type through which a JSON value can be reached."""
    return tuple(
        f
        for f in descriptor.fields
        if f.message_type is not None and _reaches_json(f.message_type, frozenset())
    )


def _reaches_json(descriptor: Descriptor, seen: frozenset[str]) -> bool:
    if descriptor.full_name in _JSON_TYPES:
        return True
    if descriptor.full_name in seen:
        return False
    inner = seen | {descriptor.full_name}
    return any(
        f.message_type is not None and _reaches_json(f.message_type, inner)
        for f in descriptor.fields
    )


def _check_json(root: Message, path: str, limit: int) -> None:
    """Nesting and finiteness of one JSON value, iteratively (depth costs no recursion)."""
    pending: list[tuple[list[struct_pb2.Value], int]]
    if isinstance(root, struct_pb2.Value):
        pending = [([root], 0)]
    elif isinstance(root, struct_pb2.Struct):
        pending = [(list(root.fields.values()), 1)]
    else:
        assert isinstance(root, struct_pb2.ListValue)
        pending = [(list(root.values), 1)]
    while pending:
        values, depth = pending.pop()
        for value in values:
            kind = value.WhichOneof("kind")
            if kind == "number_value" and not math.isfinite(value.number_value):
                raise ValueError(f"{path}: contains {value.number_value}, which JSON cannot carry")
            if kind not in ("struct_value", "list_value"):
                continue
            if depth >= limit:
                raise ValueError(f"{path}: must not nest deeper than {limit} levels")
            children = (
                value.struct_value.fields.values()
                if kind == "struct_value"
                else value.list_value.values
            )
            pending.append((list(children), depth + 1))


# The event kinds that can hold free-form JSON at all (TurnStart, for one, cannot).
_HOLDS_JSON: Final = frozenset(
    field.name
    for field in events_pb2.AgentEvent.DESCRIPTOR.oneofs_by_name["event"].fields
    if field.message_type is not None and _reaches_json(field.message_type, frozenset())
)
