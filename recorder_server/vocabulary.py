"""The event vocabulary: every AgentEvent kind and what the recorder must know of it.

Read from the proto (the one source of truth) into one table, so the rules, the
exporter and validation never spell the kinds out again. A kind is named by its
field in the AgentEvent oneof, as `WhichOneof("event")` returns it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from agent_recorder.v1 import events_pb2
from google.protobuf.descriptor import FieldDescriptor


@dataclass(frozen=True)
class EventKind:
    name: str
    # Names a session, not a loop (no loop_id): it has no place in a loop's events.
    session_level: bool
    # Carries the time it happened.
    timestamped: bool
    # Carries an AgentMessage (its time is the message's).
    with_message: bool


def _kind(field: FieldDescriptor) -> EventKind:
    assert field.message_type is not None  # every kind is a message
    fields = field.message_type.fields_by_name
    return EventKind(
        name=field.name,
        session_level="loop_id" not in fields,
        timestamped="timestamp" in fields,
        with_message="message" in fields,
    )


KINDS: Final[dict[str, EventKind]] = {
    field.name: _kind(field)
    for field in events_pb2.AgentEvent.DESCRIPTOR.oneofs_by_name["event"].fields
}
SESSION_LEVEL: Final = frozenset(name for name, kind in KINDS.items() if kind.session_level)
TIMESTAMPED: Final = frozenset(name for name, kind in KINDS.items() if kind.timestamped)
WITH_MESSAGE: Final = frozenset(name for name, kind in KINDS.items() if kind.with_message)
