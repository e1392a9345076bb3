"""Constructors for the events an agent emits, so callers need not spell out protobufs.

Each returns an `AgentEvent` ready for `EventSender.emit`. Timestamps default to
now; pass `at` to record a known time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeAlias

from agent_recorder.v1 import events_pb2, types_pb2
from google.protobuf import json_format, struct_pb2
from google.protobuf.timestamp_pb2 import Timestamp

Role: TypeAlias = types_pb2.MessageRole.ValueType


def timestamp(at: datetime | None = None) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime((at or datetime.now(UTC)).astimezone(UTC))
    return ts


def value(data: Any) -> struct_pb2.Value:
    """Free-form JSON (tool arguments, details, metadata) as a protobuf Value."""
    result = struct_pb2.Value()
    json_format.ParseDict(data, result)
    return result


def usage(input: int = 0, output: int = 0, cache_read: int = 0) -> types_pb2.Usage:
    return types_pb2.Usage(
        input=input, output=output, cache_read=cache_read, total_tokens=input + output
    )


def text_message(
    role: Role, text: str, *, at: datetime | None = None, **fields: Any
) -> types_pb2.AgentMessage:
    message = types_pb2.AgentMessage(role=role, **fields)
    message.content.add().text.text = text
    message.timestamp.CopyFrom(timestamp(at))
    return message


def user_message(text: str, at: datetime | None = None) -> types_pb2.AgentMessage:
    return text_message(types_pb2.MESSAGE_ROLE_USER, text, at=at)


def assistant_message(
    text: str,
    *,
    model: str,
    provider: str,
    tool_calls: Sequence[tuple[str, str, Mapping[str, Any]]] = (),
    tokens: types_pb2.Usage | None = None,
    at: datetime | None = None,
) -> types_pb2.AgentMessage:
    """An assistant answer; tool_calls are (call id, tool name, arguments)."""
    stop = types_pb2.STOP_REASON_TOOL_USE if tool_calls else types_pb2.STOP_REASON_STOP
    message = text_message(
        types_pb2.MESSAGE_ROLE_ASSISTANT,
        text,
        at=at,
        model=model,
        provider=provider,
        stop_reason=stop,
    )
    for call_id, name, arguments in tool_calls:
        call = message.content.add().tool_call
        call.id, call.name = call_id, name
        call.arguments.CopyFrom(value(dict(arguments)))
    if tokens is not None:
        message.usage.CopyFrom(tokens)
    return message


def tool_result_message(
    call_id: str, tool_name: str, text: str, *, is_error: bool = False, at: datetime | None = None
) -> types_pb2.AgentMessage:
    return text_message(
        types_pb2.MESSAGE_ROLE_TOOL_RESULT,
        text,
        at=at,
        tool_call_id=call_id,
        tool_name=tool_name,
        is_error=is_error,
    )


def agent_start(
    *,
    agent_id: str,
    session_id: str,
    loop_id: str,
    parent_loop_id: str | None = None,
    continuation: types_pb2.ContinuationKind | None = None,
    model: str = "",
    provider: str = "",
    metadata: Mapping[str, Any] | None = None,
    at: datetime | None = None,
) -> events_pb2.AgentEvent:
    start = events_pb2.AgentStart(agent_id=agent_id, session_id=session_id, loop_id=loop_id)
    if parent_loop_id is not None:
        start.parent_loop_id = parent_loop_id
    if continuation is not None:
        start.continuation_kind.CopyFrom(continuation)
    if model or provider:
        start.config_snapshot.model, start.config_snapshot.provider = model, provider
    if metadata is not None:
        start.metadata.CopyFrom(value(dict(metadata)))
    start.timestamp.CopyFrom(timestamp(at))
    return events_pb2.AgentEvent(agent_start=start)


def continuation_kind(kind: str, tag: str = "") -> types_pb2.ContinuationKind:
    """ "initial", "default", "rerun", "branch" (the last two with a tag) or "compaction"."""
    result = types_pb2.ContinuationKind()
    getattr(result, kind).SetInParent()
    if kind in ("rerun", "branch"):
        getattr(result, kind).tag = tag
    return result


def agent_end(
    loop_id: str,
    *,
    messages: Iterable[types_pb2.AgentMessage] = (),
    tokens: types_pb2.Usage | None = None,
    rejection: str | None = None,
    at: datetime | None = None,
) -> events_pb2.AgentEvent:
    end = events_pb2.AgentEnd(loop_id=loop_id, messages=list(messages), rejection=rejection)
    if tokens is not None:
        end.usage.CopyFrom(tokens)
    end.timestamp.CopyFrom(timestamp(at))
    return events_pb2.AgentEvent(agent_end=end)


def turn_start(
    loop_id: str,
    turn_index: int,
    trigger: types_pb2.TurnTrigger.ValueType = types_pb2.TURN_TRIGGER_USER,
    at: datetime | None = None,
) -> events_pb2.AgentEvent:
    start = events_pb2.TurnStart(loop_id=loop_id, turn_index=turn_index, triggered_by=trigger)
    start.timestamp.CopyFrom(timestamp(at))
    return events_pb2.AgentEvent(turn_start=start)


def message_end(loop_id: str, message: types_pb2.AgentMessage) -> events_pb2.AgentEvent:
    return events_pb2.AgentEvent(
        message_end=events_pb2.MessageEnd(loop_id=loop_id, message=message)
    )


def turn_end(
    loop_id: str,
    message: types_pb2.AgentMessage,
    *,
    tool_results: Iterable[types_pb2.AgentMessage] = (),
    tokens: types_pb2.Usage | None = None,
    at: datetime | None = None,
) -> events_pb2.AgentEvent:
    end = events_pb2.TurnEnd(loop_id=loop_id, message=message, tool_results=list(tool_results))
    if tokens is not None:
        end.usage.CopyFrom(tokens)
    end.timestamp.CopyFrom(timestamp(at))
    return events_pb2.AgentEvent(turn_end=end)


def tool_start(
    loop_id: str, call_id: str, tool_name: str, args: Mapping[str, Any]
) -> events_pb2.AgentEvent:
    start = events_pb2.ToolExecutionStart(
        loop_id=loop_id, tool_call_id=call_id, tool_name=tool_name
    )
    start.args.CopyFrom(value(dict(args)))
    return events_pb2.AgentEvent(tool_execution_start=start)


def tool_end(
    loop_id: str,
    call_id: str,
    tool_name: str,
    text: str,
    *,
    child_loop_id: str | None = None,
    is_error: bool = False,
) -> events_pb2.AgentEvent:
    result = types_pb2.ToolResult(child_loop_id=child_loop_id)
    result.content.add().text.text = text
    end = events_pb2.ToolExecutionEnd(
        loop_id=loop_id,
        tool_call_id=call_id,
        tool_name=tool_name,
        result=result,
        is_error=is_error,
        child_loop_id=child_loop_id,
    )
    return events_pb2.AgentEvent(tool_execution_end=end)


def input_rejected(loop_id: str, reason: str) -> events_pb2.AgentEvent:
    return events_pb2.AgentEvent(
        input_rejected=events_pb2.InputRejected(loop_id=loop_id, reason=reason)
    )


def parallel_start(
    session_id: str, loop_ids: Sequence[str], at: datetime | None = None
) -> events_pb2.AgentEvent:
    start = events_pb2.ParallelLoopStart(session_id=session_id, loop_ids=list(loop_ids))
    start.timestamp.CopyFrom(timestamp(at))
    return events_pb2.AgentEvent(parallel_loop_start=start)


def parallel_end(
    session_id: str,
    selected_loop_id: str,
    selected_config_index: int,
    *,
    tokens: types_pb2.Usage | None = None,
    at: datetime | None = None,
) -> events_pb2.AgentEvent:
    end = events_pb2.ParallelLoopEnd(
        session_id=session_id,
        selected_loop_id=selected_loop_id,
        selected_config_index=selected_config_index,
    )
    if tokens is not None:
        end.evaluation_usage.CopyFrom(tokens)
    end.timestamp.CopyFrom(timestamp(at))
    return events_pb2.AgentEvent(parallel_loop_end=end)
