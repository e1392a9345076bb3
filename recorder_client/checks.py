"""The checks an EventSender applies at emit(), so its own bad events never reach a batch.

The server checks every event again (recorder_server/validation.py) and refuses
a bad one alone; checking here as well means the agent hears of its mistake at
the line that made it, as a ValueError naming the field, before the event is
numbered or queued. Only what the server's limits (announced in RecordReady)
decide is checked: ids (non-empty, at most `max_id_length` characters, no
control characters), free-form JSON (nesting at most `max_value_depth`, no NaN
or Infinity, which JSON cannot carry) and the event's size (`max_request_bytes`).

Free-form JSON is settled from the event's bytes, which emit() has anyway, when
they prove it valid; only an event they cannot clear is walked (`_walk`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import Final

from agent_recorder.v1 import events_pb2
from google.protobuf import struct_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from recorder_client import defaults

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


def check_event(event: events_pb2.AgentEvent, data: bytes, kind: str, limits: EventLimits) -> None:
    """Raise ValueError naming the field if the server would refuse the event's shape."""
    body = getattr(event, kind)
    if len(data) > limits.largest_event():
        raise ValueError(
            f"event.{kind}: {len(data)} bytes, larger than the sidecar's request limit"
            f" of {limits.max_request_bytes} bytes{_loop_of(body)}"
        )
    for path, value in _ids(kind, body):
        _check_id(value, f"event.{kind}.{path}", limits.max_id_length)
    if not _json_cleared(data, limits.max_value_depth):
        _walk(body, f"event.{kind}", limits.max_value_depth)


def _loop_of(body: Message) -> str:
    loop_id = getattr(body, "loop_id", "")
    return f" (loop {loop_id})" if isinstance(loop_id, str) and loop_id else ""


def _ids(kind: str, body: Message) -> Iterator[tuple[str, str]]:
    """The ids of an event (path below its kind, value), as the server checks them."""
    if kind == "parallel_loop_start":
        yield "session_id", body.session_id  # type: ignore[attr-defined]
        for j, loop_id in enumerate(body.loop_ids):  # type: ignore[attr-defined]
            yield f"loop_ids[{j}]", loop_id
        return
    if kind == "parallel_loop_end":
        yield "session_id", body.session_id  # type: ignore[attr-defined]
        yield "selected_loop_id", body.selected_loop_id  # type: ignore[attr-defined]
        return
    if kind == "agent_start":
        yield "agent_id", body.agent_id  # type: ignore[attr-defined]
        yield "session_id", body.session_id  # type: ignore[attr-defined]
    yield "loop_id", body.loop_id  # type: ignore[attr-defined]
    for name in ("parent_loop_id", "child_loop_id"):
        if name in body.DESCRIPTOR.fields_by_name and body.HasField(name):
            yield name, getattr(body, name)
    for name in ("result", "partial_result"):
        if name in body.DESCRIPTOR.fields_by_name:
            result = getattr(body, name)
            if result.HasField("child_loop_id"):
                yield f"{name}.child_loop_id", result.child_loop_id


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
    """Whether the bytes alone prove every JSON value in them valid (as the server's scan).

    Each nesting level costs at least 4 bytes and one 0x2A or 0x32 tag byte, so a
    short message, or one with few such bytes, nests no deeper than `limit`; a
    non-finite double has all exponent bits set, so its bytes hold 0x7F or 0xFF.
    The bounds over-count, never under-count: False means "walk to find out".
    """
    if b"\x7f" in data or b"\xff" in data:
        return False
    return len(data) <= 4 * limit - 4 or data.count(b"*") + data.count(b"2") < limit


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
