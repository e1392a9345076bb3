"""Protobuf bytes of read answers, framed around stored bytes that are never decoded.

The store keeps sessions, loops, turns and events as serialized protobuf (see
storage.py), so a read can answer with those bytes wrapped in field headers.
Decoding a 316 MB session only for gRPC to encode it again cost most of a
GetSession; copying it at every nesting level cost most of the rest. `Pieces`
keeps a message as a list of byte strings plus its length, so nesting costs a
header of a few bytes and the answer is copied once, by `join`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeAlias

from agent_recorder.v1 import recorder_service_pb2 as api
from agent_recorder.v1 import session_pb2

from recorder_common.varint import varint

_LOOP_EVENT = session_pb2.LoopEvent.DESCRIPTOR.fields_by_name
_STREAMED = api.StreamedEvent.DESCRIPTOR.fields_by_name
_LENGTH_DELIMITED = 2


def _key(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


_SEQUENCE_KEY = _key(_LOOP_EVENT["sequence"].number, 0)
_EVENT_KEY = _key(_LOOP_EVENT["event"].number, _LENGTH_DELIMITED)
# A slot holding a refusal: its stored body is a RefusedEvent (storage.py).
_REFUSED_KEY = _key(_LOOP_EVENT["refused"].number, _LENGTH_DELIMITED)
_BODY_KEYS = (_EVENT_KEY, _REFUSED_KEY)
_LOOP_ID_KEY = _key(_STREAMED["loop_id"].number, _LENGTH_DELIMITED)
_STREAMED_EVENT_KEY = _key(_STREAMED["event"].number, _LENGTH_DELIMITED)
_CURSOR_KEY = _key(_STREAMED["cursor"].number, 0)
_PAGE_EVENTS_KEY = _key(
    api.StreamEventsResponse.DESCRIPTOR.fields_by_name["events"].number, _LENGTH_DELIMITED
)


class Pieces:
    """One message's bytes as pieces in order, and their total length."""

    __slots__ = ("parts", "size")

    def __init__(self, first: bytes = b"") -> None:
        self.parts: list[bytes] = [first]
        self.size = len(first)

    def add_field(self, number: int, payload: bytes) -> None:
        """A length-delimited field whose payload is already encoded."""
        head = _key(number, _LENGTH_DELIMITED) + varint(len(payload))
        self.parts += (head, payload)
        self.size += len(head) + len(payload)

    def add_message(self, number: int, message: Pieces) -> None:
        """A message field, without copying the message's pieces."""
        head = _key(number, _LENGTH_DELIMITED) + varint(message.size)
        self.parts.append(head)
        self.parts += message.parts
        self.size += len(head) + message.size

    def add_loop_event(self, number: int, sequence: int, refused: int, body: bytes) -> None:
        """A LoopEvent field around a stored event (or, when `refused`, a refusal)."""
        size = len(body)  # inlined: this runs once per event of a whole session
        inner = _SEQUENCE_KEY + varint(sequence) + _BODY_KEYS[refused] + varint(size)
        head = varint(number << 3 | _LENGTH_DELIMITED) + varint(len(inner) + size) + inner
        self.parts += (head, body)
        self.size += len(head) + size

    def join(self) -> bytes:
        return b"".join(self.parts)


def response_of(number: int, message: Pieces) -> bytes:
    """A response whose only field (`number`) is `message`."""
    response = Pieces()
    response.add_message(number, message)
    return response.join()


def field_of(number: int, payload: bytes) -> bytes:
    """A length-delimited field around already encoded bytes."""
    return _key(number, _LENGTH_DELIMITED) + varint(len(payload)) + payload


# A stored event as its row comes: (cursor, loop_id, sequence, refused (0 or 1), body).
StoredEvent: TypeAlias = tuple[int, str, int, int, bytes]


def event_pages(events: Iterable[StoredEvent], page_size: int, page_bytes: int) -> Iterator[bytes]:
    """StreamEventsResponse bytes of at most page_size events and page_bytes bytes each.

    An event larger than page_bytes makes a page of its own. Each event becomes a
    StreamedEvent{loop_id, event: LoopEvent{sequence, event or refused}, cursor} around
    its body.
    """
    prefixes: dict[str, bytes] = {}  # per loop: its loop_id field and the event's key
    parts: list[bytes] = []
    count = size = 0
    for cursor, loop_id, sequence, refused, body in events:  # inlined: runs once per event
        prefix = prefixes.get(loop_id)
        if prefix is None:
            name = loop_id.encode()
            prefix = _LOOP_ID_KEY + varint(len(name)) + name + _STREAMED_EVENT_KEY
            prefixes[loop_id] = prefix
        inner = _SEQUENCE_KEY + varint(sequence) + _BODY_KEYS[refused] + varint(len(body))
        head = prefix + varint(len(inner) + len(body)) + inner
        tail = _CURSOR_KEY + varint(cursor)
        entry = len(head) + len(body) + len(tail)
        head = _PAGE_EVENTS_KEY + varint(entry) + head
        added = len(head) + len(body) + len(tail)
        if count and (count == page_size or size + added > page_bytes):
            yield b"".join(parts)
            parts, count, size = [], 0, 0
        parts += (head, body, tail)
        count += 1
        size += added
    if count:
        yield b"".join(parts)
