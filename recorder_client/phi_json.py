"""Codec between the seed runtime's JSON ("phi-json") and the agent_recorder.v1 messages.

Why it exists: agents of the seed runtime emit `AgentEvent` values as JSON lines,
and the runtime keeps a session as one JSON file that its `load_session` reads.
The recorder ingests the former and must export the latter exactly, so this codec
follows serde's rules to the letter (see /work/shared/phi-json.md):

- Reading is as strict as serde: a missing required key, a wrong type or an
  out-of-range integer raises `PhiJsonError` naming the JSON path. Keys a struct
  does not name are ignored, as serde ignores them, except on messages and content
  blocks, where they are kept in `extra` and written back.
- Reading is as lenient as the spec asks: any RFC 3339 time, "FollowUp" for the
  Continuation trigger, a missing or null `continuation_kind` as Initial, missing
  usage counters other than input/output as 0, a missing `scope` as ephemeral.
- Writing produces what the runtime writes: `Option` as null, "omitted when empty"
  fields left out, unit variants as strings, struct variants externally tagged,
  times as UTC `Z` with 0/3/6/9 fractional digits, message times as integer ms.
  Proto fields phi-json has no place for (Session.finalized_at) are not exported.
  A message whose required parts are unset (a time, a role, a status) raises
  `PhiJsonError` rather than inventing a value.

Free-form JSON goes through google.protobuf.Struct/Value: integers are exact only
up to 2**53, and integral numbers are written back as integers (phi_json_core).

Round trips are exact except where the spec itself folds two spellings into one:
"FollowUp" comes back as "Continuation", a null `continuation_kind` as "Initial",
null for an "omitted when empty" key as no key, and `1.0` in free-form JSON as `1`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent_recorder.v1 import session_pb2

from recorder_client.phi_json_core import (
    PhiJsonError,
    decode_str,
    enum_codec,
    rfc3339_to_timestamp,
    timestamp_to_rfc3339,
)
from recorder_client.phi_json_events import EVENT, event_from_json, event_to_json
from recorder_client.phi_json_messages import (
    CONFIG,
    CONTINUATION,
    MESSAGE,
    TRIGGER,
    TURN_ID,
    USAGE,
    message_from_json,
    message_to_json,
    usage_from_json,
    usage_to_json,
)
from recorder_client.phi_json_schema import (
    BOOL,
    STR,
    STRUCT,
    TIME,
    U32,
    U64,
    VALUE,
    ExternallyTagged,
    Mode,
    Record,
    Scalar,
    ScalarList,
    Sub,
    SubList,
    field,
)

__all__ = [
    "PhiJsonError",
    "event_from_json",
    "event_to_json",
    "loop_record_from_json",
    "loop_record_to_json",
    "message_from_json",
    "message_to_json",
    "rfc3339_to_timestamp",
    "session_from_json",
    "session_to_json",
    "timestamp_to_rfc3339",
    "usage_from_json",
    "usage_to_json",
]

_STATUS = Scalar(
    *enum_codec(
        {
            "Pending": session_pb2.LOOP_STATUS_PENDING,
            "Running": session_pb2.LOOP_STATUS_RUNNING,
            "Completed": session_pb2.LOOP_STATUS_COMPLETED,
            "Rejected": session_pb2.LOOP_STATUS_REJECTED,
            "Aborted": session_pb2.LOOP_STATUS_ABORTED,
        }
    )
)
_SCOPE = Scalar(
    *enum_codec(
        {
            "ephemeral": session_pb2.SESSION_SCOPE_EPHEMERAL,
            "persistent": session_pb2.SESSION_SCOPE_PERSISTENT,
        }
    )
)
_TOOL_CALL = (field("tool_call_id", STR), field("tool_name", STR))
_TIMESTAMP = field("timestamp", TIME)

_TURN_RANGE = Record(
    (field("startTurn", U32, attr="start_turn"), field("endTurn", U32, attr="end_turn"))
)
_COMPACTION_BLOCK = Record(
    (
        field("keep_first", Sub(_TURN_RANGE), Mode.OMITTABLE),
        field(
            "keep_recent",
            Sub(Record((field("range", Sub(_TURN_RANGE)), field("messages", SubList(MESSAGE))))),
            Mode.OMITTABLE,
        ),
        field("keep_compacted", Sub(STRUCT), Mode.OMITTABLE),
        field("createdAt", TIME, attr="created_at"),
    )
)
_TURN = Record(
    (
        field("turn_id", Sub(TURN_ID)),
        field("triggered_by", TRIGGER),
        field("usage", Sub(USAGE)),
        field("input_messages", SubList(MESSAGE)),
        field("output_message", Sub(MESSAGE, must_be_set=True)),
        field("tool_results", SubList(MESSAGE)),
        field("started_at", TIME),
        field("ended_at", TIME),
        field("request_payload", Sub(STRUCT), Mode.OMITTABLE),
    )
)
_PARALLEL_GROUP = Record(
    (
        field("all_loop_ids", ScalarList(decode_str)),
        field("selected_loop_id", STR),
        field("selected_config_index", U64),
        field("evaluation_usage", Sub(USAGE)),
        field("is_selected", BOOL),
    )
)
LOOP_RECORD = Record(
    (
        field("loop_id", STR),
        field("session_id", STR),
        field("agent_id", STR),
        field("parent_loop_id", STR, Mode.NULLABLE),
        field("continuation_kind", Sub(CONTINUATION), Mode.NULL_DEFAULT),
        field("started_at", TIME),
        field("ended_at", TIME, Mode.NULLABLE),
        field("status", _STATUS),
        field("rejection", STR, Mode.NULLABLE),
        field("config", Sub(CONFIG), Mode.NULLABLE),
        field("messages", SubList(MESSAGE)),
        field("turns", SubList(_TURN), Mode.DEFAULTED),
        field("usage", Sub(USAGE)),
        field("metadata", Sub(VALUE), Mode.NULLABLE),
        field("events", SubList(Record((field("sequence", U64), field("event", Sub(EVENT)))))),
        field("children_loop_ids", ScalarList(decode_str)),
        field(
            "child_loop_refs",
            SubList(
                Record(
                    (
                        *_TOOL_CALL,
                        field("child_loop_id", STR),
                        field("child_session_id", STR),
                    )
                )
            ),
        ),
        field("parallel_group", Sub(_PARALLEL_GROUP), Mode.NULLABLE),
        field("compaction_block", Sub(_COMPACTION_BLOCK), Mode.OMITTABLE),
    )
)


_FORMATION = ExternallyTagged(
    "kind",
    {
        "Explicit": ("explicit", Record((_TIMESTAMP,))),
        "FirstLoop": ("first_loop", Record((_TIMESTAMP,))),
        "InactivityTimeout": (
            "inactivity_timeout",
            Record(
                (
                    field("threshold_secs", U64),
                    field("previous_session_id", STR, Mode.NULLABLE),
                    _TIMESTAMP,
                )
            ),
        ),
    },
)

SESSION = Record(
    (
        field("session_id", STR),
        field("agent_id", STR),
        field("created_at", TIME),
        field("last_active_at", TIME),
        field("formation", Sub(_FORMATION, must_be_set=True)),
        field(
            "parent_spawn_ref",
            Sub(
                Record(
                    (
                        field("parent_session_id", STR),
                        field("parent_loop_id", STR),
                        *_TOOL_CALL,
                    )
                )
            ),
            Mode.NULLABLE,
        ),
        field("scope", _SCOPE, Mode.DEFAULTED),
        field("loops", SubList(LOOP_RECORD)),
    )
)


def loop_record_from_json(obj: Mapping[str, Any]) -> session_pb2.LoopRecord:
    record = session_pb2.LoopRecord()
    LOOP_RECORD.fill(obj, "", record)
    return record


def loop_record_to_json(record: session_pb2.LoopRecord) -> dict[str, Any]:
    return LOOP_RECORD.dump(record, "")


def session_from_json(obj: Mapping[str, Any]) -> session_pb2.Session:
    """A session file as the runtime's save_session writes it."""
    session = session_pb2.Session()
    SESSION.fill(obj, "", session)
    return session


def session_to_json(session: session_pb2.Session) -> dict[str, Any]:
    """The JSON the runtime's load_session reads (`json.dump` it to `{session_id}.json`)."""
    return SESSION.dump(session, "")
