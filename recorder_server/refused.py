"""How a refused event reads back to a person: what was sent, as far as it goes.

The bytes are kept exactly as sent (DESIGN.md §Refusals), so they may not decode
as an event, or decode into one that JSON cannot hold (a NaN is the usual reason
for a refusal): then the protobuf text form, which can, stands in.
"""

from __future__ import annotations

from typing import Any

from agent_recorder.v1 import events_pb2, session_pb2
from google.protobuf import json_format, text_format
from google.protobuf.message import DecodeError


def sent_event(refusal: session_pb2.RefusedEvent) -> Any:
    """The event sent as protobuf JSON; its text form if JSON cannot hold it; None if
    the bytes are no event."""
    try:
        event = events_pb2.AgentEvent.FromString(refusal.event)
    except DecodeError:
        return None
    try:
        return json_format.MessageToDict(event)
    except json_format.Error:
        return {"text": text_format.MessageToString(event, as_one_line=True)}
