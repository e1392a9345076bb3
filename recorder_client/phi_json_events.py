"""phi-json for events.proto: the runtime's AgentEvent vocabulary (see phi_json_core).

An event line is internally tagged by `type`; the other keys are the variant's
fields. Keys a variant does not name are ignored, as serde ignores them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent_recorder.v1 import events_pb2

from recorder_client.phi_json_core import (
    PhiJsonError,
    at,
    decode_i64,
    decode_str,
    expect_object,
    not_utf8,
)
from recorder_client.phi_json_messages import (
    CONFIG,
    CONTINUATION,
    MESSAGE,
    TOOL_RESULT,
    TRIGGER,
    USAGE,
)
from recorder_client.phi_json_schema import (
    BOOL,
    I64,
    MILLIS,
    STR,
    STRUCT,
    TIME,
    U32,
    U64,
    VALUE,
    InternallyTagged,
    Mode,
    Record,
    Scalar,
    ScalarList,
    Sub,
    SubList,
    field,
    single_key,
)

_REVERT_CATEGORIES = ("failure", "tangent", "completion", "step-summary")


def _revert_category(value: Any, path: str) -> str:
    """The proto keeps a plain string; phi-json only knows these four kebab-case names."""
    category = decode_str(value, path)
    if category not in _REVERT_CATEGORIES:
        choices = ", ".join(f'"{name}"' for name in _REVERT_CATEGORIES)
        raise PhiJsonError(path, f"expected one of {choices}, got {category!r}")
    return category


_CATEGORY = Scalar(_revert_category, _revert_category)


_DELTAS = {"Text": "text", "Thinking": "thinking", "ToolCallDelta": "tool_call_delta"}
_DELTA_NAMES = {attr: name for name, attr in _DELTAS.items()}


class _DeltaCodec:
    """StreamDelta `{"Text": {"delta": "..."}}`; the proto's oneof holds the bare strings."""

    def fill(self, value: Any, path: str, target: events_pb2.MessageDelta) -> None:
        name, inner = single_key(value, path, _DELTAS)
        here = at(at(path, name), "delta")
        obj = expect_object(inner, at(path, name))
        if "delta" not in obj:
            raise PhiJsonError(here, "missing")
        try:
            setattr(target, _DELTAS[name], decode_str(obj["delta"], here))
        except UnicodeEncodeError:
            raise not_utf8(here) from None

    def dump(self, msg: events_pb2.MessageDelta, path: str) -> dict[str, Any]:
        attr = msg.WhichOneof("delta")
        if attr is None:
            raise PhiJsonError(path, "no delta set")
        return {_DELTA_NAMES[attr]: {"delta": getattr(msg, attr)}}


_LOOP_ID = field("loop_id", STR)
_SESSION_ID = field("session_id", STR)
_TIMESTAMP = field("timestamp", TIME)
_TOOL_CALL = (field("tool_call_id", STR), field("tool_name", STR))
_MESSAGE = field("message", Sub(MESSAGE, must_be_set=True))

_EVENTS: dict[str, tuple[str, Record]] = {
    "AgentStart": (
        "agent_start",
        Record(
            (
                field("agent_id", STR),
                _SESSION_ID,
                _LOOP_ID,
                field("parent_loop_id", STR, Mode.NULLABLE),
                field("continuation_kind", Sub(CONTINUATION), Mode.NULL_DEFAULT),
                _TIMESTAMP,
                field("metadata", Sub(VALUE), Mode.NULLABLE),
                # serde skip_serializing_if = "Option::is_none" in the runtime.
                field("config_snapshot", Sub(CONFIG), Mode.OMITTABLE),
            )
        ),
    ),
    "AgentEnd": (
        "agent_end",
        Record(
            (
                _LOOP_ID,
                field("messages", SubList(MESSAGE)),
                field("usage", Sub(USAGE)),
                _TIMESTAMP,
                field("rejection", STR, Mode.NULLABLE),
            )
        ),
    ),
    "TurnStart": (
        "turn_start",
        Record((_LOOP_ID, field("turn_index", U32), _TIMESTAMP, field("triggered_by", TRIGGER))),
    ),
    "TurnRequest": (
        "turn_request",
        Record((_LOOP_ID, field("turn_index", U32), field("payload", Sub(STRUCT)), _TIMESTAMP)),
    ),
    "TurnEnd": (
        "turn_end",
        Record(
            (
                _LOOP_ID,
                _MESSAGE,
                field("usage", Sub(USAGE)),
                _TIMESTAMP,
                field("tool_results", SubList(MESSAGE)),
            )
        ),
    ),
    "MessageStart": ("message_start", Record((_LOOP_ID, _MESSAGE))),
    "MessageUpdate": (
        "message_update",
        Record((_LOOP_ID, _MESSAGE, field("delta", Sub(_DeltaCodec(), must_be_set=True)))),
    ),
    "MessageEnd": ("message_end", Record((_LOOP_ID, _MESSAGE))),
    "ToolExecutionStart": (
        "tool_execution_start",
        Record((_LOOP_ID, *_TOOL_CALL, field("args", Sub(VALUE)))),
    ),
    "ToolExecutionUpdate": (
        "tool_execution_update",
        Record((_LOOP_ID, *_TOOL_CALL, field("partial_result", Sub(TOOL_RESULT)))),
    ),
    "ToolExecutionEnd": (
        "tool_execution_end",
        Record(
            (
                _LOOP_ID,
                *_TOOL_CALL,
                field("result", Sub(TOOL_RESULT)),
                field("is_error", BOOL),
                field("child_loop_id", STR, Mode.NULLABLE),
            )
        ),
    ),
    "ProgressMessage": ("progress_message", Record((_LOOP_ID, *_TOOL_CALL, field("text", STR)))),
    "InputRejected": ("input_rejected", Record((_LOOP_ID, field("reason", STR)))),
    "ParallelLoopStart": (
        "parallel_loop_start",
        Record((_SESSION_ID, field("loop_ids", ScalarList(decode_str)), _TIMESTAMP)),
    ),
    "ParallelLoopEnd": (
        "parallel_loop_end",
        Record(
            (
                _SESSION_ID,
                field("selected_loop_id", STR),
                field("selected_config_index", U64),
                field("evaluation_usage", Sub(USAGE)),
                _TIMESTAMP,
            )
        ),
    ),
    "CompactionStarted": (
        "compaction_started",
        Record((_LOOP_ID, field("estimated_tokens", U64), field("message_count", U64), _TIMESTAMP)),
    ),
    "CompactionEnded": (
        "compaction_ended",
        Record(
            (
                _LOOP_ID,
                field("messages_before", U64),
                field("messages_after", U64),
                field("estimated_tokens_before", U64),
                field("estimated_tokens_after", U64),
                field("loops_compacted", U64),
                _TIMESTAMP,
            )
        ),
    ),
    "PrunApplied": (
        "prun_applied",
        Record(
            (
                _LOOP_ID,
                field("tokens_removed", U64),
                field("messages_removed", U64),
                field("memo", STR, Mode.NULLABLE),
                # The runtime's Vec<u64>: message timestamps in ms, the keys of the pruned messages.
                field("pruned_timestamps", SubList(MILLIS)),
                _TIMESTAMP,
            )
        ),
    ),
    "RevertApplied": (
        "revert_applied",
        Record(
            (
                _LOOP_ID,
                field("category", _CATEGORY),
                field("target", I64, Mode.NULLABLE),
                field("abandoned_node_ids", ScalarList(decode_i64)),
                field("summary", STR, Mode.NULLABLE),
                field("applied", BOOL),
                field("reason", STR, Mode.NULLABLE),
                _TIMESTAMP,
            )
        ),
    ),
}


EVENT = InternallyTagged("type", "event", _EVENTS)


def event_from_json(obj: Mapping[str, Any]) -> events_pb2.AgentEvent:
    """One event line of the runtime. Raises PhiJsonError naming the offending JSON path."""
    event = events_pb2.AgentEvent()
    EVENT.fill(obj, "", event)
    return event


def event_to_json(event: events_pb2.AgentEvent) -> dict[str, Any]:
    return EVENT.dump(event, "")
