"""One OTLP span read as the recording model: what it is, its ids, its events. No I/O.

Three conventions are read: the GenAI semantic conventions (latest names and the
names of 1.36 and before), OpenInference and OpenLLMetry. The README's "Record any
OpenTelemetry-instrumented agent" section is the table of what maps to what.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from agent_recorder.v1 import events_pb2, session_pb2, types_pb2
from google.protobuf import json_format, struct_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

Attrs = Mapping[str, Any]
# The config segment of every loop id made from OTLP ({session}.otlp.{N}); a span
# that arrives after its loop ended gets a loop of its own under otlp-late.
CONFIG_SEGMENT = "otlp"
LATE_SEGMENT = "otlp-late"
# Room a loop id needs beyond its session part: the segment and a 64-bit number.
_LOOP_ID_OVERHEAD = len(LATE_SEGMENT) + 2 + 20
_BAD_ID_CHAR = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_INDEXED = re.compile(r"(\d+)\.(.+)")


class Role(StrEnum):
    AGENT = "agent"
    MODEL = "model"
    TOOL = "tool"
    OTHER = "other"


class Refused(ValueError):
    """A span that cannot be recorded; the message names the span and the field."""


@dataclass(frozen=True)
class SpanView:
    """One span with its resource and scope, attributes as plain Python values."""

    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits
    parent_id: str  # 16 hex digits, or "" for a root
    name: str
    attrs: Attrs
    service_name: str
    scope_name: str
    scope_version: str
    start_ns: int
    end_ns: int
    is_error: bool
    status_message: str
    events: tuple[tuple[str, Attrs], ...]

    @property
    def role(self) -> Role:
        return role_of(self.attrs)

    @property
    def label(self) -> str:
        return f"span {self.span_id} of trace {self.trace_id} ({self.name!r})"


# -- decoding -----------------------------------------------------------------


def any_value(value: common_pb2.AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in value.kvlist_value.values}
    if kind == "bytes_value":
        return value.bytes_value.hex()
    return getattr(value, kind) if kind else None


def attributes(pairs: Iterable[common_pb2.KeyValue]) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in pairs}


def span_views(
    request_spans: Sequence[Any],
) -> tuple[list[SpanView], list[str]]:
    """Every span of an export's ResourceSpans, and what was refused (one line each)."""
    views: list[SpanView] = []
    refused: list[str] = []
    for resource_spans in request_spans:
        resource = attributes(resource_spans.resource.attributes)
        service = str(resource.get("service.name") or "unknown_service")
        for scope_spans in resource_spans.scope_spans:
            scope = scope_spans.scope
            for span in scope_spans.spans:
                try:
                    views.append(_view(span, service, scope.name, scope.version))
                except Refused as exc:
                    refused.append(str(exc))
    return views, refused


def _view(span: trace_pb2.Span, service: str, scope: str, version: str) -> SpanView:
    where = f"span {span.span_id.hex() or '(empty)'} ({span.name!r})"
    if len(span.trace_id) != 16 or not any(span.trace_id):
        raise Refused(f"{where}: trace_id must be 16 bytes, not all zero")
    if len(span.span_id) != 8 or not any(span.span_id):
        raise Refused(f"{where}: span_id must be 8 bytes, not all zero")
    if span.parent_span_id and len(span.parent_span_id) != 8:
        raise Refused(f"{where}: parent_span_id must be empty or 8 bytes")
    if span.end_time_unix_nano < span.start_time_unix_nano:
        raise Refused(f"{where}: end_time_unix_nano is before start_time_unix_nano")
    if span.start_time_unix_nano == 0:
        raise Refused(f"{where}: start_time_unix_nano is missing")
    parent = span.parent_span_id.hex() if any(span.parent_span_id) else ""
    return SpanView(
        trace_id=span.trace_id.hex(),
        span_id=span.span_id.hex(),
        parent_id=parent,
        name=span.name,
        attrs=attributes(span.attributes),
        service_name=service,
        scope_name=scope,
        scope_version=version,
        start_ns=span.start_time_unix_nano,
        end_ns=span.end_time_unix_nano,
        is_error=span.status.code == trace_pb2.Status.STATUS_CODE_ERROR,
        status_message=span.status.message,
        events=tuple((e.name, attributes(e.attributes)) for e in span.events),
    )


# -- what a span is -----------------------------------------------------------

_MODEL_OPERATIONS = frozenset({"chat", "text_completion", "generate_content"})


def role_of(attrs: Attrs) -> Role:
    operation = attrs.get("gen_ai.operation.name")
    if operation == "invoke_agent":
        return Role.AGENT
    if operation in _MODEL_OPERATIONS:
        return Role.MODEL
    if operation == "execute_tool":
        return Role.TOOL
    kind = str(attrs.get("openinference.span.kind") or attrs.get("traceloop.span.kind") or "")
    kind = kind.lower()
    if kind in ("agent", "tool"):
        return Role(kind)
    if kind == "llm" or attrs.get("llm.request.type") in ("chat", "completion"):
        return Role.MODEL
    return Role.OTHER


def convention_of(attrs: Attrs) -> str:
    if "gen_ai.operation.name" in attrs:
        return "genai"
    if "openinference.span.kind" in attrs:
        return "openinference"
    if any(k.startswith(("traceloop.", "llm.request.type")) for k in attrs):
        return "openllmetry"
    return "genai" if any(k.startswith("gen_ai.") for k in attrs) else "none"


def _first(attrs: Attrs, *keys: str) -> Any:
    for key in keys:
        value = attrs.get(key)
        if value is not None and value != "":
            return value
    return None


def session_hint(view: SpanView) -> str | None:
    """The conversation this span names, if it names one (not the trace id)."""
    value = _first(
        view.attrs,
        "gen_ai.conversation.id",
        "session.id",
        "traceloop.association.properties.session_id",
    )
    return None if value is None else str(value)


def agent_hint(view: SpanView) -> str | None:
    value = _first(view.attrs, "gen_ai.agent.id", "gen_ai.agent.name", "agent.name")
    if value is None and view.attrs.get("traceloop.span.kind") == "agent":
        value = _first(view.attrs, "traceloop.entity.name")
    return None if value is None else str(value)


def fit_id(raw: str, limit: int, *, dots: bool) -> str:
    """`raw` if it is a usable id, else a deterministic stand-in that keeps its start.

    A session id must hold no dot (the loop-id grammar is {session}.{config}.{N})
    and leave room for the rest of a loop id within the id length limit.
    """
    room = limit - (0 if dots else _LOOP_ID_OVERHEAD)
    fits = raw and len(raw) <= room and not _BAD_ID_CHAR.search(raw)
    if fits and (dots or "." not in raw):
        return raw
    digest = hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    clean = _BAD_ID_CHAR.sub("_", raw if dots else raw.replace(".", "_"))
    return f"{clean[: max(room - 17, 0)]}-{digest}"


def loop_id_of(session_id: str, span_id: str, *, late: bool = False) -> str:
    segment = LATE_SEGMENT if late else CONFIG_SEGMENT
    return f"{session_id}.{segment}.{int(span_id, 16)}"


def derived_session(parent_session: str, span_id: str) -> str:
    """A sub-agent's session when it names none of its own."""
    return f"{parent_session}-sub-{span_id}"


def provenance(
    key: str,
    key_view: SpanView | None,
    opened_by: SpanView,
    originals: Mapping[str, str],
    late_for: str | None = None,
) -> dict[str, Any]:
    """Where a loop came from, for its AgentStart metadata.

    `key` is the span the loop stands for; `key_view` that span when it had arrived
    when the loop opened, else the loop was opened by `opened_by`, one of its spans.
    """
    source = key_view or opened_by
    found: dict[str, Any] = {
        "source": "otlp",
        "convention": convention_of(source.attrs),
        "trace_id": opened_by.trace_id,
        "span_id": key,
        "span_name": key_view.name if key_view else None,
        "parent_span_id": (key_view.parent_id or None) if key_view else None,
        "opened_by_span_id": opened_by.span_id,
        "scope": {"name": source.scope_name, "version": source.scope_version},
        "service_name": source.service_name,
        "original_ids": dict(originals),
        "late_for_loop_id": late_for,
    }
    return {k: v for k, v in found.items() if v is not None}


# -- usage and messages -------------------------------------------------------

_USAGE_KEYS = {
    "input": ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.token_count.prompt"),
    "output": (
        "gen_ai.usage.output_tokens",
        "gen_ai.usage.completion_tokens",
        "llm.token_count.completion",
    ),
    "cache_read": (
        "gen_ai.usage.cache_read.input_tokens",
        "gen_ai.usage.cache_read_input_tokens",
        "llm.token_count.prompt_details.cache_read",
    ),
    "cache_write": (
        "gen_ai.usage.cache_creation.input_tokens",
        "gen_ai.usage.cache_creation_input_tokens",
        "llm.token_count.prompt_details.cache_write",
    ),
    "reasoning": (
        "gen_ai.usage.reasoning.output_tokens",
        "gen_ai.usage.reasoning_tokens",
        "llm.token_count.completion_details.reasoning",
    ),
    "total_tokens": (
        "llm.token_count.total",
        "llm.usage.total_tokens",
        "gen_ai.usage.total_tokens",
    ),
}


def usage_of(attrs: Attrs) -> types_pb2.Usage | None:
    """The span's own token counts, or None when it carries none."""
    found = {field: _first(attrs, *keys) for field, keys in _USAGE_KEYS.items()}
    if all(value is None for value in found.values()):
        return None
    usage = types_pb2.Usage()
    for field, value in found.items():
        if value is not None:
            setattr(usage, field, max(int(value), 0))
    if not usage.total_tokens:
        usage.total_tokens = usage.input + usage.output
    return usage


def add_usage(total: types_pb2.Usage, more: types_pb2.Usage) -> None:
    for field in ("input", "output", "reasoning", "cache_read", "cache_write", "total_tokens"):
        setattr(total, field, getattr(total, field) + getattr(more, field))


def model_of(attrs: Attrs) -> str:
    return str(
        _first(
            attrs,
            "gen_ai.response.model",
            "gen_ai.request.model",
            "llm.response.model_name",
            "llm.model_name",
            "llm.request.model_name",
        )
        or ""
    )


def provider_of(attrs: Attrs) -> str:
    return str(
        _first(attrs, "gen_ai.provider.name", "gen_ai.system", "llm.provider", "llm.system") or ""
    )


# A message in one shape whatever convention it came in.
@dataclass
class _Message:
    role: str
    texts: list[str]
    tool_calls: list[tuple[str, str, Any]]  # (id, name, arguments)
    reasoning: list[str]
    tool_call_id: str = ""
    tool_name: str = ""
    finish_reason: str = ""


def _loads(text: Any, where: str) -> Any:
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except ValueError as exc:
        raise Refused(f"{where}: not JSON ({exc})") from None


def _maybe_json(text: Any) -> Any:
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _genai_messages(value: Any, where: str) -> list[_Message]:
    """gen_ai.input.messages / gen_ai.output.messages (parts-based, latest names)."""
    items = _loads(value, where)
    if not isinstance(items, list):
        raise Refused(f"{where}: must be a JSON array of messages")
    out: list[_Message] = []
    for n, item in enumerate(items):
        if not isinstance(item, dict):
            raise Refused(f"{where}[{n}]: must be an object")
        parts = item.get("parts") or []
        if not isinstance(parts, list):
            raise Refused(f"{where}[{n}].parts: must be an array")
        out += _split_parts(
            str(item.get("role") or ""), parts, str(item.get("finish_reason") or "")
        )
    return out


def _split_parts(role: str, parts: list[Any], finish: str) -> list[_Message]:
    """One message, or one per tool response plus one for the rest."""
    main = _Message(role, [], [], [], finish_reason=finish)
    results: list[_Message] = []
    for part in parts:
        part = part if isinstance(part, dict) else {"type": "text", "content": part}
        kind = part.get("type")
        if kind == "text":
            main.texts.append(_as_text(part.get("content")))
        elif kind == "reasoning":
            main.reasoning.append(_as_text(part.get("content")))
        elif kind == "tool_call":
            main.tool_calls.append(
                (str(part.get("id") or ""), str(part.get("name") or ""), part.get("arguments"))
            )
        elif kind == "tool_call_response":
            response = part.get("response", part.get("result"))
            results.append(
                _Message(
                    "tool",
                    [_as_text(response)],
                    [],
                    [],
                    str(part.get("id") or ""),
                    str(part.get("name") or ""),
                )
            )
        else:
            main.texts.append(_as_text(part))
    keep = main.texts or main.tool_calls or main.reasoning or not results
    return ([main] if keep else []) + results


def _unflatten(attrs: Attrs, prefix: str) -> list[dict[str, Any]]:
    """`prefix.0.a.b = v` attributes as [{"a.b": v}, ...] in index order."""
    rows: dict[int, dict[str, Any]] = {}
    for key, value in attrs.items():
        if key.startswith(prefix):
            match = _INDEXED.fullmatch(key[len(prefix) :])
            if match:
                rows.setdefault(int(match.group(1)), {})[match.group(2)] = value
    return [rows[i] for i in sorted(rows)]


def _openinference_messages(attrs: Attrs, prefix: str) -> list[_Message]:
    out = []
    for row in _unflatten(attrs, prefix):
        texts = [str(row["message.content"])] if row.get("message.content") else []
        for part in _unflatten(row, "message.contents."):
            if part.get("message_content.text"):
                texts.append(str(part["message_content.text"]))
        calls = [
            (
                str(call.get("tool_call.id") or ""),
                str(call.get("tool_call.function.name") or ""),
                _maybe_json(call.get("tool_call.function.arguments")),
            )
            for call in _unflatten(row, "message.tool_calls.")
        ]
        out.append(
            _Message(
                str(row.get("message.role") or ""),
                texts,
                calls,
                [],
                str(row.get("message.tool_call_id") or ""),
                str(row.get("message.name") or ""),
            )
        )
    return out


def _openllmetry_messages(attrs: Attrs, prefix: str) -> list[_Message]:
    out = []
    for row in _unflatten(attrs, prefix):
        calls = [
            (str(c.get("id") or ""), str(c.get("name") or ""), _maybe_json(c.get("arguments")))
            for c in _unflatten(row, "tool_calls.")
        ]
        texts = [_as_text(row["content"])] if row.get("content") else []
        out.append(
            _Message(
                str(row.get("role") or ""),
                texts,
                calls,
                [],
                str(row.get("tool_call_id") or ""),
                finish_reason=str(row.get("finish_reason") or ""),
            )
        )
    return out


def _legacy_message(role: str, body: Mapping[str, Any]) -> _Message:
    calls = []
    for call in _maybe_json(body.get("tool_calls")) or []:
        if isinstance(call, dict):
            function = call.get("function") or {}
            calls.append(
                (
                    str(call.get("id") or ""),
                    str(function.get("name") or ""),
                    _maybe_json(function.get("arguments")),
                )
            )
    content = body.get("content")
    texts = [_as_text(_maybe_json(content) if not isinstance(content, str) else content)]
    return _Message(
        str(body.get("role") or role),
        [t for t in texts if t],
        calls,
        [],
        str(body.get("id") or body.get("tool_call_id") or ""),
        finish_reason=str(body.get("finish_reason") or ""),
    )


def _event_messages(view: SpanView) -> tuple[list[_Message], list[_Message]]:
    """GenAI ≤ 1.36: messages as span events (gen_ai.*.message, gen_ai.choice, content.*)."""
    inputs: list[_Message] = []
    outputs: list[_Message] = []
    for name, attrs in view.events:
        role = name.removeprefix("gen_ai.").removesuffix(".message")
        if name in (
            "gen_ai.system.message",
            "gen_ai.user.message",
            "gen_ai.assistant.message",
            "gen_ai.tool.message",
        ):
            inputs.append(_legacy_message(role, attrs))
        elif name == "gen_ai.choice":
            body = _maybe_json(attrs.get("message"))
            body = dict(body) if isinstance(body, dict) else {"content": attrs.get("content")}
            body.setdefault("finish_reason", attrs.get("finish_reason"))
            outputs.append(_legacy_message("assistant", body))
        elif name in ("gen_ai.content.prompt", "gen_ai.content.completion"):
            key = "gen_ai.prompt" if name.endswith("prompt") else "gen_ai.completion"
            items = _loads(attrs.get(key, "[]"), f"{view.label}: event {name}.{key}")
            target = inputs if key == "gen_ai.prompt" else outputs
            for item in items if isinstance(items, list) else []:
                if isinstance(item, dict):
                    target.append(
                        _legacy_message("assistant" if target is outputs else "user", item)
                    )
    return inputs, outputs


def _messages(view: SpanView) -> tuple[list[_Message], list[_Message]]:
    attrs = view.attrs
    inputs: list[_Message] = []
    outputs: list[_Message] = []
    if "gen_ai.input.messages" in attrs:
        inputs = _genai_messages(
            attrs["gen_ai.input.messages"], f"{view.label}: gen_ai.input.messages"
        )
    if "gen_ai.output.messages" in attrs:
        outputs = _genai_messages(
            attrs["gen_ai.output.messages"], f"{view.label}: gen_ai.output.messages"
        )
    if not inputs and not outputs:
        inputs = _openinference_messages(attrs, "llm.input_messages.")
        outputs = _openinference_messages(attrs, "llm.output_messages.")
    if not inputs and not outputs:
        inputs = _openllmetry_messages(attrs, "gen_ai.prompt.")
        outputs = _openllmetry_messages(attrs, "gen_ai.completion.")
    if not inputs and not outputs:
        inputs, outputs = _event_messages(view)
    if "gen_ai.system_instructions" in attrs:
        where = f"{view.label}: gen_ai.system_instructions"
        parts = _loads(attrs["gen_ai.system_instructions"], where)
        inputs = [
            *_split_parts("system", parts if isinstance(parts, list) else [parts], ""),
            *inputs,
        ]
    return inputs, outputs


_ROLES = {
    "user": types_pb2.MESSAGE_ROLE_USER,
    "human": types_pb2.MESSAGE_ROLE_USER,
    "assistant": types_pb2.MESSAGE_ROLE_ASSISTANT,
    "ai": types_pb2.MESSAGE_ROLE_ASSISTANT,
    "model": types_pb2.MESSAGE_ROLE_ASSISTANT,
    "tool": types_pb2.MESSAGE_ROLE_TOOL_RESULT,
    "tool-response": types_pb2.MESSAGE_ROLE_TOOL_RESULT,
    "function": types_pb2.MESSAGE_ROLE_TOOL_RESULT,
}
_FINISH = {
    "stop": types_pb2.STOP_REASON_STOP,
    "end_turn": types_pb2.STOP_REASON_STOP,
    "length": types_pb2.STOP_REASON_LENGTH,
    "max_tokens": types_pb2.STOP_REASON_LENGTH,
    "tool_calls": types_pb2.STOP_REASON_TOOL_USE,
    "tool_call": types_pb2.STOP_REASON_TOOL_USE,
    "tool_use": types_pb2.STOP_REASON_TOOL_USE,
    "function_call": types_pb2.STOP_REASON_TOOL_USE,
    "content_filter": types_pb2.STOP_REASON_GUARD_RAIL,
    "error": types_pb2.STOP_REASON_ERROR,
}


def _value(data: Any) -> struct_pb2.Value:
    value = struct_pb2.Value()
    json_format.ParseDict(data, value)
    return value


def _agent_message(message: _Message, at: Timestamp) -> types_pb2.AgentMessage:
    role = _ROLES.get(message.role.lower(), types_pb2.MESSAGE_ROLE_EXTENSION)
    out = types_pb2.AgentMessage(role=role, tool_call_id=message.tool_call_id)
    out.timestamp.CopyFrom(at)
    if role == types_pb2.MESSAGE_ROLE_EXTENSION:
        out.extension_kind = message.role or "unknown"
    if role == types_pb2.MESSAGE_ROLE_TOOL_RESULT:
        out.tool_name = message.tool_name
    for thinking in message.reasoning:
        out.content.add().thinking.thinking = thinking
    for text in message.texts:
        out.content.add().text.text = text
    for call_id, name, arguments in message.tool_calls:
        block = out.content.add().tool_call
        block.id, block.name = call_id, name
        block.arguments.CopyFrom(_value(arguments if arguments is not None else {}))
    if message.finish_reason:
        out.stop_reason = _FINISH.get(message.finish_reason.lower(), types_pb2.STOP_REASON_STOP)
    return out


def timestamp(ns: int) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(ns)
    return ts


# -- events -------------------------------------------------------------------


def _event(**payload: Any) -> events_pb2.AgentEvent:
    return events_pb2.AgentEvent(**payload)


def agent_start(
    loop_id: str,
    session_id: str,
    agent_id: str,
    parent_loop_id: str | None,
    start_ns: int,
    metadata: Any,
) -> events_pb2.AgentEvent:
    """Continuation kind left unset: OTLP does not say how a loop continued."""
    start = events_pb2.AgentStart(loop_id=loop_id, session_id=session_id, agent_id=agent_id)
    if parent_loop_id is not None:
        start.parent_loop_id = parent_loop_id
    start.timestamp.CopyFrom(timestamp(start_ns))
    start.metadata.CopyFrom(_value(metadata))
    return _event(agent_start=start)


def agent_end(
    loop_id: str,
    end_ns: int,
    usage: types_pb2.Usage,
    messages: Sequence[types_pb2.AgentMessage],
    rejection: str | None,
) -> events_pb2.AgentEvent:
    end = events_pb2.AgentEnd(loop_id=loop_id, messages=messages, usage=usage)
    end.timestamp.CopyFrom(timestamp(end_ns))
    if rejection is not None:
        end.rejection = rejection
    return _event(agent_end=end)


def rejection_of(view: SpanView) -> str | None:
    if not view.is_error:
        return None
    return view.status_message or "the agent span's status is ERROR"


def agent_messages(view: SpanView) -> list[types_pb2.AgentMessage]:
    """An agent span's own message list (input then output), if it carries one."""
    inputs, outputs = _messages(view)
    at = timestamp(view.end_ns)
    return [_agent_message(m, at) for m in (*inputs, *outputs)]


@dataclass
class Turn:
    """A model-call span's events and what its loop keeps of it."""

    events: list[events_pb2.AgentEvent]
    usage: types_pb2.Usage
    messages: list[types_pb2.AgentMessage]  # the conversation as of this turn


def turn(view: SpanView, loop_id: str, turn_index: int) -> Turn:
    """TurnStart, a MessageEnd per new input message, TurnEnd (rule 6)."""
    inputs, outputs = _messages(view)
    started, ended = timestamp(view.start_ns), timestamp(view.end_ns)
    start = events_pb2.TurnStart(loop_id=loop_id, turn_index=turn_index)
    start.timestamp.CopyFrom(started)
    events = [_event(turn_start=start)]
    history = [_agent_message(m, started) for m in inputs]
    last_assistant = max(
        (i for i, m in enumerate(history) if m.role == types_pb2.MESSAGE_ROLE_ASSISTANT),
        default=-1,
    )
    for message in history[last_assistant + 1 :]:
        events.append(_event(message_end=events_pb2.MessageEnd(loop_id=loop_id, message=message)))
    usage = usage_of(view.attrs) or types_pb2.Usage()
    answer = _answer(view, outputs, usage, ended)
    end = events_pb2.TurnEnd(loop_id=loop_id, message=answer, usage=usage)
    end.timestamp.CopyFrom(ended)
    events.append(_event(turn_end=end))
    return Turn(events, usage, [*history, answer])


def _answer(
    view: SpanView, outputs: list[_Message], usage: types_pb2.Usage, at: Timestamp
) -> types_pb2.AgentMessage:
    answer = types_pb2.AgentMessage(role=types_pb2.MESSAGE_ROLE_ASSISTANT)
    for message in outputs:
        answer.MergeFrom(_agent_message(message, at))
    answer.role = types_pb2.MESSAGE_ROLE_ASSISTANT
    answer.ClearField("extension_kind")
    answer.timestamp.CopyFrom(at)
    answer.model = model_of(view.attrs)
    answer.provider = provider_of(view.attrs)
    answer.usage.CopyFrom(usage)
    reasons = view.attrs.get("gen_ai.response.finish_reasons")
    if isinstance(reasons, list) and reasons and not answer.stop_reason:
        answer.stop_reason = _FINISH.get(str(reasons[0]).lower(), types_pb2.STOP_REASON_STOP)
    if view.is_error:
        answer.stop_reason = types_pb2.STOP_REASON_ERROR
        answer.error_message = view.status_message or "the model call's status is ERROR"
    return answer


def tool_call_id(view: SpanView) -> str:
    found = _first(view.attrs, "gen_ai.tool.call.id", "tool_call.id")
    return str(found) if found is not None else f"otlp-span-{view.span_id}"


def tool_name(view: SpanView) -> str:
    return str(
        _first(view.attrs, "gen_ai.tool.name", "tool.name", "traceloop.entity.name") or view.name
    )


def tool_events(
    view: SpanView, loop_id: str, child_loop_id: str | None
) -> list[events_pb2.AgentEvent]:
    """ToolExecutionStart and ToolExecutionEnd; is_error from the span's status."""
    call_id, name = tool_call_id(view), tool_name(view)
    arguments = _first(
        view.attrs,
        "gen_ai.tool.call.arguments",
        "tool_call.function.arguments",
        "input.value",
        "traceloop.entity.input",
    )
    start = events_pb2.ToolExecutionStart(loop_id=loop_id, tool_call_id=call_id, tool_name=name)
    if arguments is not None:
        start.args.CopyFrom(_value(_maybe_json(arguments)))
    result = _first(
        view.attrs, "gen_ai.tool.call.result", "output.value", "traceloop.entity.output"
    )
    end = events_pb2.ToolExecutionEnd(
        loop_id=loop_id, tool_call_id=call_id, tool_name=name, is_error=view.is_error
    )
    text = (
        _as_text(result) if result is not None else (view.status_message if view.is_error else "")
    )
    if text:
        end.result.content.add().text.text = text
    if child_loop_id is not None:
        end.child_loop_id = child_loop_id
    return [_event(tool_execution_start=start), _event(tool_execution_end=end)]


def continuation_unknown(loop: session_pb2.LoopRecord) -> bool:
    """A loop recorded from OTLP that was never told how it continued (OTLP cannot say).

    Readers show "unknown" for it instead of the proto's default, "initial".
    """
    if loop.continuation_kind.WhichOneof("kind") is not None:
        return False
    metadata = loop.metadata
    if metadata.WhichOneof("kind") != "struct_value":
        return False
    source = metadata.struct_value.fields.get("source")
    return source is not None and source.string_value == "otlp"
