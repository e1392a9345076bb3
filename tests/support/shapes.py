"""Valid-shaped events and requests, and refusal checks, for the pure validation tests.

Local builders (not support.events): these tests need only valid shapes, not the
recording rules; ids and timestamps are free-standing constants. `full_loop()` is one
run with every event kind; `json_sites(json)` puts a JSON value at every place an
event can carry one, with the field path a refusal must name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pytest
from agent_recorder.v1 import events_pb2, types_pb2
from agent_recorder.v1 import recorder_service_pb2 as api
from google.protobuf import json_format, struct_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from recorder_server.errors import InvalidArgument, RecorderError, TooLarge
from recorder_server.validation import (
    Limits,
    validate_envelopes,
)

LIMITS = Limits()


SESSION = "5f0c2a4e-1b7d-4c2e-9a51-0d6f3b8e2c17"


LOOP = f"{SESSION}.anthropic-claude-sonnet-4-medium.0"


CHILD = "9c1e7f30.sub.0"


EVENT_KINDS = [f.name for f in events_pb2.AgentEvent.DESCRIPTOR.oneofs_by_name["event"].fields]


Event = events_pb2.AgentEvent


def ts(offset: int = 0) -> Timestamp:
    return Timestamp(seconds=1_790_000_000 + offset, nanos=250_000_000)


def usage(input: int = 0, output: int = 0, **more: int) -> types_pb2.Usage:
    return types_pb2.Usage(input=input, output=output, **more)


def value(data: object) -> struct_pb2.Value:
    out = struct_pb2.Value()
    json_format.ParseDict(data, out)  # type: ignore[arg-type]  # any JSON, not only objects
    return out


def event(kind: str, **fields: Any) -> Event:
    """An AgentEvent whose `kind` member has `fields`, and a valid timestamp if it has one."""
    descriptor = Event.DESCRIPTOR.fields_by_name[kind].message_type
    assert descriptor is not None
    if "timestamp" in descriptor.fields_by_name:
        fields.setdefault("timestamp", ts())
    return Event(**{kind: getattr(events_pb2, descriptor.name)(**fields)})


def envelopes(items: Iterable[Event | tuple[int, Event]]) -> list[api.EventEnvelope]:
    """Wire envelopes: a bare event is unnumbered, a (sequence, event) pair numbered."""
    out = []
    for item in items:
        if isinstance(item, tuple):
            out.append(api.EventEnvelope(sequence=item[0], event=item[1]))
        else:
            out.append(api.EventEnvelope(event=item))
    return out


def config() -> types_pb2.LoopConfigSnapshot:
    return types_pb2.LoopConfigSnapshot(
        model="claude-sonnet-4",
        provider="anthropic",
        config_id="anthropic-claude-sonnet-4-medium",
        api=types_pb2.API_PROTOCOL_ANTHROPIC_MESSAGES,
        context_window=200_000,
        thinking_level=types_pb2.THINKING_LEVEL_MEDIUM,
    )


def user(text: str) -> types_pb2.AgentMessage:
    message = types_pb2.AgentMessage(role=types_pb2.MESSAGE_ROLE_USER, timestamp=ts())
    message.content.add().text.text = text
    return message


def assistant(
    text: str = "", tool_calls: Sequence[tuple[str, str, Mapping[str, Any]]] = ()
) -> types_pb2.AgentMessage:
    message = types_pb2.AgentMessage(
        role=types_pb2.MESSAGE_ROLE_ASSISTANT,
        model="claude-sonnet-4",
        provider="anthropic",
        usage=usage(1200, 300),
        stop_reason=types_pb2.STOP_REASON_TOOL_USE if tool_calls else types_pb2.STOP_REASON_STOP,
        timestamp=ts(),
    )
    if text:
        message.content.add().text.text = text
    for call_id, name, args in tool_calls:
        call = message.content.add().tool_call
        call.id, call.name = call_id, name
        call.arguments.CopyFrom(value(dict(args)))
    return message


def tool_result(call_id: str, name: str, text: str) -> types_pb2.AgentMessage:
    message = types_pb2.AgentMessage(
        role=types_pb2.MESSAGE_ROLE_TOOL_RESULT, tool_call_id=call_id, tool_name=name
    )
    message.content.add().text.text = text
    return message


def agent_start(
    session: str,
    loop: str,
    parent: str | None = None,
    *,
    config: types_pb2.LoopConfigSnapshot | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Event:
    start = event("agent_start", agent_id="agent-a", session_id=session, loop_id=loop)
    if parent is not None:
        start.agent_start.parent_loop_id = parent
    if config is not None:
        start.agent_start.config_snapshot.CopyFrom(config)
    if metadata is not None:
        start.agent_start.metadata.CopyFrom(value(dict(metadata)))
    return start


def agent_end(
    loop: str,
    messages: Iterable[types_pb2.AgentMessage] = (),
    *,
    use: types_pb2.Usage | None = None,
) -> Event:
    return event("agent_end", loop_id=loop, messages=list(messages), usage=use)


def turn_start(loop: str, index: int = 0, *, trigger: int = types_pb2.TURN_TRIGGER_USER) -> Event:
    return event("turn_start", loop_id=loop, turn_index=index, triggered_by=trigger)


def turn_request(loop: str, index: int, payload: Mapping[str, Any]) -> Event:
    request = event("turn_request", loop_id=loop, turn_index=index)
    request.turn_request.payload.update(payload)
    return request


def turn_end(
    loop: str,
    message: types_pb2.AgentMessage,
    *,
    use: types_pb2.Usage | None = None,
    tool_results: Iterable[types_pb2.AgentMessage] = (),
) -> Event:
    return event(
        "turn_end", loop_id=loop, message=message, usage=use, tool_results=list(tool_results)
    )


def message_start(loop: str, message: types_pb2.AgentMessage) -> Event:
    return event("message_start", loop_id=loop, message=message)


def message_update(loop: str, message: types_pb2.AgentMessage, text: str) -> Event:
    update = event("message_update", loop_id=loop, message=message)
    update.message_update.delta.text = text
    return update


def message_end(loop: str, message: types_pb2.AgentMessage) -> Event:
    return event("message_end", loop_id=loop, message=message)


def tool_start(loop: str, call_id: str, name: str, args: Mapping[str, Any] | None = None) -> Event:
    start = event("tool_execution_start", loop_id=loop, tool_call_id=call_id, tool_name=name)
    start.tool_execution_start.args.CopyFrom(value(dict(args or {})))
    return start


def tool_end(
    loop: str, call_id: str, name: str, *, child_loop_id: str | None = None, on_event: bool = False
) -> Event:
    """A finished tool call; `child_loop_id` goes on the result, or the event if `on_event`."""
    end = event("tool_execution_end", loop_id=loop, tool_call_id=call_id, tool_name=name)
    end.tool_execution_end.result.content.add().text.text = "done"
    if child_loop_id is not None:
        target = end.tool_execution_end if on_event else end.tool_execution_end.result
        target.child_loop_id = child_loop_id
    return end


def progress(loop: str, call_id: str, name: str, text: str) -> Event:
    return event("progress_message", loop_id=loop, tool_call_id=call_id, tool_name=name, text=text)


def input_rejected(loop: str, reason: str) -> Event:
    return event("input_rejected", loop_id=loop, reason=reason)


def compaction_started(loop: str, tokens: int, count: int) -> Event:
    return event("compaction_started", loop_id=loop, estimated_tokens=tokens, message_count=count)


def parallel_start(session: str, loop_ids: Sequence[str]) -> Event:
    return event("parallel_loop_start", session_id=session, loop_ids=list(loop_ids))


def parallel_end(
    session: str, selected: str, index: int, *, use: types_pb2.Usage | None = None
) -> Event:
    return event(
        "parallel_loop_end",
        session_id=session,
        selected_loop_id=selected,
        selected_config_index=index,
        evaluation_usage=use,
    )


def refusal(*events: Event, limits: Limits = LIMITS) -> RecorderError:
    with pytest.raises(RecorderError) as info:
        validate_envelopes(envelopes(events), limits)
    return info.value


def assert_invalid(error: RecorderError, field: str, problem: str = "") -> None:
    assert isinstance(error, InvalidArgument), error
    assert error.field == field
    assert error.metadata["field"] == field
    assert error.message.startswith(f"{field}: {problem}"), error.message


def assert_too_large(error: RecorderError, field: str, limit: int) -> None:
    assert isinstance(error, TooLarge), error
    assert error.metadata == {"field": field, "limit": str(limit)}
    assert error.message.startswith(f"{field}: ")


def nested(
    depth: int, *, lists: bool = True, into: struct_pb2.Value | None = None
) -> struct_pb2.Value:
    """A Value `depth` containers deep, built iteratively, in place `into` a field if given.

    In place because protobuf copies a message argument of a constructor by encoding
    and decoding it, and its decoder refuses ~100 levels (as it does on the wire).
    """
    root = struct_pb2.Value() if into is None else into
    current = root
    for _ in range(depth - 1):
        current = current.list_value.values.add() if lists else current.struct_value.fields["k"]
    if lists:
        current.list_value.SetInParent()
    else:
        current.struct_value.SetInParent()
    return root


def full_loop() -> list[Event]:
    """One of every event kind, shaped as a real agent run sends them."""
    ask = user("Fix the failing test in **tests/test_2.py** (2 * 2 == 4?)")
    call = assistant(
        "Reading it.", tool_calls=[("toolu_01", "read_file", {"path": "tests/test_2.py"})]
    )
    call.content[0].extra.update({"cache_control": {"type": "ephemeral"}})
    call.tags.extend(["plan", 2])
    call.provenance_hint.update({"source": "model"})
    call.node_id, call.parent_id = 7, -1
    result = tool_result("toolu_01", "read_file", "def test():\n    assert 2 * 2 == 4\n" * 300)
    ext = types_pb2.AgentMessage(role=types_pb2.MESSAGE_ROLE_EXTENSION, extension_kind="note")
    ext.extension_data.CopyFrom(value({"k": [1, 2.5, None, {"deep": True}]}))
    update = event("tool_execution_update", loop_id=LOOP, tool_call_id="toolu_01")
    update.tool_execution_update.partial_result.details.CopyFrom(value({"lines": 40}))
    return [
        agent_start(SESSION, LOOP, config=config(), metadata={"cwd": "/w", "n": 1.5}),
        turn_start(LOOP, 0),
        turn_request(LOOP, 0, {"model": "m", "messages": [{"role": "user"}]}),
        message_end(LOOP, ask),
        message_start(LOOP, assistant()),
        message_update(LOOP, call, "Read"),
        message_end(LOOP, call),
        tool_start(LOOP, "toolu_01", "read_file", {"path": "tests/test_2.py"}),
        update,
        progress(LOOP, "toolu_01", "read_file", "50%"),
        tool_end(LOOP, "toolu_01", "spawn", child_loop_id=CHILD),
        tool_end(LOOP, "toolu_02", "spawn", child_loop_id=CHILD, on_event=True),
        turn_end(LOOP, call, use=usage(1200, 300), tool_results=[result]),
        input_rejected(LOOP, "empty input"),
        parallel_start(SESSION, [f"{SESSION}.a.1", f"{SESSION}.b.1"]),
        parallel_end(SESSION, f"{SESSION}.b.1", 1, use=usage(10, 2)),
        compaction_started(LOOP, 150_000, 40),
        event("compaction_ended", loop_id=LOOP, messages_before=40, messages_after=8),
        event("prun_applied", loop_id=LOOP, memo="old reads", pruned_timestamps=[ts(1), ts(2)]),
        event(
            "revert_applied",
            loop_id=LOOP,
            category="tangent",
            target=-3,
            abandoned_node_ids=[5, 6],
            applied=True,
        ),
        message_end(LOOP, ext),
        agent_end(LOOP, [ask, call, result], use=usage(5000, 900)),
    ]


def message_with(where: str, json: struct_pb2.Value) -> types_pb2.AgentMessage:
    """A user message carrying `json` at `where` (a JSON field of messages or blocks)."""
    message = user("text")
    if where == "content[0].tool_call.arguments":
        message.content[0].tool_call.arguments.CopyFrom(json)
    elif where in ("content[0].extra", "extra", "provenance_hint"):
        target = (
            message.content[0].extra if where == "content[0].extra" else getattr(message, where)
        )
        target.fields["v"].CopyFrom(json)
    elif where == "tags":
        message.tags.values.add().CopyFrom(json)
    else:
        message.extension_data.CopyFrom(json)
    return message


MESSAGE_JSON = [
    "content[0].tool_call.arguments",
    "content[0].extra",
    "extension_data",
    "tags",
    "provenance_hint",
    "extra",
]


def json_sites(json: struct_pb2.Value) -> list[tuple[Event, str]]:
    """Every place an event can carry JSON, with `json` nested as deep as it goes there.

    A Struct or ListValue field (payload, tags, extra...) adds one level around it.
    """
    start = agent_start(SESSION, LOOP)
    start.agent_start.metadata.CopyFrom(json)
    request = turn_request(LOOP, 0, {})
    request.turn_request.payload.fields["v"].CopyFrom(json)
    tool = tool_start(LOOP, "c", "t")
    tool.tool_execution_start.args.CopyFrom(json)
    done = tool_end(LOOP, "c", "t")
    done.tool_execution_end.result.details.CopyFrom(json)
    block = tool_end(LOOP, "c", "t")
    block.tool_execution_end.result.content[0].extra.fields["v"].CopyFrom(json)
    partial = events_pb2.ToolExecutionUpdate(loop_id=LOOP)
    partial.partial_result.details.CopyFrom(json)
    sites = [
        (start, "agent_start.metadata"),
        (request, "turn_request.payload"),
        (tool, "tool_execution_start.args"),
        (done, "tool_execution_end.result.details"),
        (block, "tool_execution_end.result.content[0].extra"),
        (Event(tool_execution_update=partial), "tool_execution_update.partial_result.details"),
    ]
    for where in MESSAGE_JSON:
        sites.append((message_end(LOOP, message_with(where, json)), f"message_end.message.{where}"))
        sites.append(
            (
                turn_end(LOOP, assistant(), tool_results=[message_with(where, json)]),
                f"turn_end.tool_results[0].{where}",
            )
        )
    return sites


def wraps(path: str) -> bool:
    """Whether the field at `path` is a Struct/ListValue, one level around its content."""
    return path.rsplit(".", 1)[-1] in {"payload", "tags", "extra", "provenance_hint"}


def json_holding(number: float) -> struct_pb2.Value:
    """A JSON list holding a plain 1.0 and, one level down in an object, `number`."""
    json = struct_pb2.Value()
    json.list_value.values.add().number_value = 1.0
    json.list_value.values.add().struct_value.fields["x"].number_value = number
    return json
