"""phi-json for the types of types.proto: messages, content, usage, config, continuation.

See phi_json_core for the rules every part follows. A message is serde-untagged
in the runtime; its `role` key picks the shape. Each role names its own keys, and
whatever else a message or a content block carries goes to the `extra` Struct and
back out again, so that a runtime newer than this codec loses nothing on its way
through the recorder.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent_recorder.v1 import types_pb2

from recorder_client.phi_json_core import (
    PhiJsonError,
    at,
    enum_codec,
    expect_object,
    fill_extra,
    merge_extra,
)
from recorder_client.phi_json_schema import (
    BOOL,
    F32,
    I64,
    LIST_VALUE,
    MILLIS,
    STR,
    STRUCT,
    U32,
    U64,
    VALUE,
    ExternallyTagged,
    Field,
    InternallyTagged,
    Mode,
    Record,
    Scalar,
    Sub,
    SubList,
    field,
    read_fields,
    tag_of,
    write_fields,
)

USAGE = Record(
    (
        field("input", U64),
        field("output", U64),
        field("reasoning", U64, Mode.DEFAULTED),
        field("cache_read", U64, Mode.DEFAULTED),
        field("cache_write", U64, Mode.DEFAULTED),
        field("total_tokens", U64, Mode.DEFAULTED),
    )
)

TURN_ID = Record(
    (
        field("loopId", STR, attr="loop_id"),
        field("turnIndex", U32, attr="turn_index"),
    )
)


CONTENT = InternallyTagged(
    "type",
    "block",
    {
        "text": ("text", Record((field("text", STR),))),
        "image": ("image", Record((field("data", STR), field("mimeType", STR, attr="mime_type")))),
        "thinking": (
            "thinking",
            Record((field("thinking", STR), field("signature", STR, Mode.OMITTABLE))),
        ),
        "toolCall": (
            "tool_call",
            Record((field("id", STR), field("name", STR), field("arguments", Sub(VALUE)))),
        ),
    },
    keep_extra=True,
)
_STOP_REASON = Scalar(
    *enum_codec(
        {
            "stop": types_pb2.STOP_REASON_STOP,
            "length": types_pb2.STOP_REASON_LENGTH,
            "toolUse": types_pb2.STOP_REASON_TOOL_USE,
            "error": types_pb2.STOP_REASON_ERROR,
            "aborted": types_pb2.STOP_REASON_ABORTED,
            "maxTurns": types_pb2.STOP_REASON_MAX_TURNS,
            "userStop": types_pb2.STOP_REASON_USER_STOP,
            "handoff": types_pb2.STOP_REASON_HANDOFF,
            "guardRail": types_pb2.STOP_REASON_GUARD_RAIL,
            "contextCompacted": types_pb2.STOP_REASON_CONTEXT_COMPACTED,
            "paused": types_pb2.STOP_REASON_PAUSED,
        }
    )
)

_CONTENT = field("content", SubList(CONTENT))
_TIMESTAMP_MS = field("timestamp", Sub(MILLIS, must_be_set=True))
_ANNOTATIONS = (
    field("turnId", Sub(TURN_ID), Mode.OMITTABLE, attr="turn_id"),
    field("nodeId", I64, Mode.OMITTABLE, attr="node_id"),
    field("parentId", I64, Mode.OMITTABLE, attr="parent_id"),
    field("tags", Sub(LIST_VALUE), Mode.OMITTABLE),
    field("provenanceHint", Sub(STRUCT), Mode.OMITTABLE, attr="provenance_hint"),
)
_ROLES: Mapping[str, tuple[types_pb2.MessageRole.ValueType, tuple[Field, ...]]] = {
    "user": (types_pb2.MESSAGE_ROLE_USER, (_CONTENT, _TIMESTAMP_MS, *_ANNOTATIONS)),
    "assistant": (
        types_pb2.MESSAGE_ROLE_ASSISTANT,
        (
            _CONTENT,
            field("stopReason", _STOP_REASON, attr="stop_reason"),
            field("model", STR),
            field("provider", STR),
            field("usage", Sub(USAGE)),
            _TIMESTAMP_MS,
            field("error_message", STR, Mode.OMITTABLE),
            *_ANNOTATIONS,
        ),
    ),
    "toolResult": (
        types_pb2.MESSAGE_ROLE_TOOL_RESULT,
        (
            field("toolCallId", STR, attr="tool_call_id"),
            field("toolName", STR, attr="tool_name"),
            _CONTENT,
            field("isError", BOOL, attr="is_error"),
            _TIMESTAMP_MS,
            *_ANNOTATIONS,
        ),
    ),
    "extension": (
        types_pb2.MESSAGE_ROLE_EXTENSION,
        (
            field("kind", STR, attr="extension_kind"),
            field("data", Sub(VALUE), attr="extension_data"),
        ),
    ),
}
_ROLE_NAMES = {role: name for name, (role, _) in _ROLES.items()}
_ROLE_KEYS = {
    name: frozenset(f.key for f in fields) | {"role"} for name, (_, fields) in _ROLES.items()
}


class _MessageCodec:
    """AgentMessage is serde-untagged: `role` picks the shape, unknown keys go to `extra`.

    Only the LLM roles carry the optional annotations (turnId, nodeId, ...).
    """

    def fill(self, value: Any, path: str, target: types_pb2.AgentMessage) -> None:
        obj = expect_object(value, path)
        name = tag_of(obj, path, "role", _ROLES)
        role, fields = _ROLES[name]
        target.role = role
        read_fields(obj, path, target, fields)
        fill_extra(obj, path, _ROLE_KEYS[name], target.extra)

    def dump(self, msg: types_pb2.AgentMessage, path: str) -> dict[str, Any]:
        name = _ROLE_NAMES.get(msg.role)
        if name is None:
            raise PhiJsonError(at(path, "role"), "not set")
        out: dict[str, Any] = {"role": name}
        write_fields(msg, path, _ROLES[name][1], out)
        merge_extra(msg.extra, path, _ROLE_KEYS[name], out)
        return out


MESSAGE = _MessageCodec()

# The runtime's ToolResult skips child_loop_id when None (it is set only by tools that
# spawn a sub-agent), unlike ToolExecutionEnd's own child_loop_id, written as null.
TOOL_RESULT = Record(
    (
        field("content", SubList(CONTENT)),
        field("details", Sub(VALUE)),
        field("child_loop_id", STR, Mode.OMITTABLE),
    )
)

_API = Scalar(
    *enum_codec(
        {
            "anthropic_messages": types_pb2.API_PROTOCOL_ANTHROPIC_MESSAGES,
            "open_ai_completions": types_pb2.API_PROTOCOL_OPEN_AI_COMPLETIONS,
            "open_ai_responses": types_pb2.API_PROTOCOL_OPEN_AI_RESPONSES,
            "azure_open_ai_responses": types_pb2.API_PROTOCOL_AZURE_OPEN_AI_RESPONSES,
            "google_generative_ai": types_pb2.API_PROTOCOL_GOOGLE_GENERATIVE_AI,
            "google_vertex": types_pb2.API_PROTOCOL_GOOGLE_VERTEX,
            "bedrock_converse_stream": types_pb2.API_PROTOCOL_BEDROCK_CONVERSE_STREAM,
        }
    )
)
_THINKING_LEVEL = Scalar(
    *enum_codec(
        {
            "off": types_pb2.THINKING_LEVEL_OFF,
            "minimal": types_pb2.THINKING_LEVEL_MINIMAL,
            "low": types_pb2.THINKING_LEVEL_LOW,
            "medium": types_pb2.THINKING_LEVEL_MEDIUM,
            "high": types_pb2.THINKING_LEVEL_HIGH,
        }
    )
)
CONFIG = Record(
    (
        field("model", STR),
        field("provider", STR),
        field("config_id", STR, Mode.NULLABLE),
        field("name", STR, Mode.OMITTABLE),
        field("api", _API, Mode.OMITTABLE),
        field("base_url", STR, Mode.OMITTABLE),
        field("reasoning", BOOL, Mode.OMITTABLE),
        field("context_window", U32, Mode.OMITTABLE),
        field("max_tokens", U32, Mode.OMITTABLE),
        field("thinking_level", _THINKING_LEVEL, Mode.OMITTABLE),
        field("temperature", F32, Mode.OMITTABLE),
    )
)

TRIGGER = Scalar(
    *enum_codec(
        {
            "User": types_pb2.TURN_TRIGGER_USER,
            "SubAgent": types_pb2.TURN_TRIGGER_SUB_AGENT,
            "Continuation": types_pb2.TURN_TRIGGER_CONTINUATION,
            "Branch": types_pb2.TURN_TRIGGER_BRANCH,
        },
        aliases={"FollowUp": types_pb2.TURN_TRIGGER_CONTINUATION},
    )
)

_UNIT_CONTINUATIONS = {"Initial": "initial", "Default": "default", "Compaction": "compaction"}
_UNIT_CONTINUATION_NAMES = {attr: name for name, attr in _UNIT_CONTINUATIONS.items()}
_TAGGED_CONTINUATIONS = ExternallyTagged(
    "kind",
    {
        "Rerun": ("rerun", Record((field("tag", STR),))),
        "Branch": ("branch", Record((field("tag", STR),))),
    },
)


class _ContinuationCodec:
    """Unit variants are strings, Rerun/Branch externally tagged; null is Initial (the default)."""

    def fill(self, value: Any, path: str, target: types_pb2.ContinuationKind) -> None:
        if value is None:
            target.initial.SetInParent()
        elif isinstance(value, str):
            attr = _UNIT_CONTINUATIONS.get(value)
            if attr is None:
                expected = '"Initial", "Default", "Compaction" or a Rerun/Branch object'
                raise PhiJsonError(path, f"expected {expected}, got {value!r}")
            getattr(target, attr).SetInParent()
        else:
            _TAGGED_CONTINUATIONS.fill(value, path, target)

    def dump(self, msg: types_pb2.ContinuationKind, path: str) -> Any:
        """Unset reads as Initial, as the proto documents."""
        kind = msg.WhichOneof("kind") or "initial"
        if kind in _UNIT_CONTINUATION_NAMES:
            return _UNIT_CONTINUATION_NAMES[kind]
        return _TAGGED_CONTINUATIONS.dump(msg, path)


CONTINUATION = _ContinuationCodec()


def message_from_json(obj: Mapping[str, Any]) -> types_pb2.AgentMessage:
    """Raises PhiJsonError naming the JSON path of the first value it cannot accept."""
    msg = types_pb2.AgentMessage()
    MESSAGE.fill(obj, "", msg)
    return msg


def message_to_json(msg: types_pb2.AgentMessage) -> dict[str, Any]:
    return MESSAGE.dump(msg, "")


def usage_from_json(obj: Mapping[str, Any]) -> types_pb2.Usage:
    usage = types_pb2.Usage()
    USAGE.fill(obj, "", usage)
    return usage


def usage_to_json(usage: types_pb2.Usage) -> dict[str, Any]:
    return USAGE.dump(usage, "")
