"""recorder_server.validation, pure: every rule refuses with the exact field path.

No server, no I/O. Each refusal is checked for its error type and the full path a
client would have to fix; valid realistic input must pass untouched. Property tests
throw random (often broken) messages at the validators: they may refuse, never crash.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import pytest
from agent_recorder.v1 import events_pb2, session_pb2, types_pb2
from agent_recorder.v1 import recorder_service_pb2 as api
from google.protobuf import json_format, struct_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recorder_client.phi_json import session_from_json
from recorder_server.errors import InvalidArgument, RecorderError, TooLarge
from recorder_server.validation import (
    INT64_MAX,
    MAX_PAGE_SIZE,
    TIMESTAMP_MAX_SECONDS,
    TIMESTAMP_MIN_SECONDS,
    Limits,
    validate_envelopes,
    validate_id,
    validate_request,
)

LIMITS = Limits()
SESSION = "5f0c2a4e-1b7d-4c2e-9a51-0d6f3b8e2c17"
LOOP = f"{SESSION}.anthropic-claude-sonnet-4-medium.0"
CHILD = "9c1e7f30.sub.0"
EVENT_KINDS = [f.name for f in events_pb2.AgentEvent.DESCRIPTOR.oneofs_by_name["event"].fields]

Event = events_pb2.AgentEvent

# -- builders (local: this file needs only valid shapes, not the recording rules) --


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


# -- realistic input passes --------------------------------------------------------


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


def test_a_realistic_run_with_every_event_kind_passes() -> None:
    events = full_loop()
    assert {e.WhichOneof("event") for e in events} == set(EVENT_KINDS)
    validate_envelopes(envelopes(events), LIMITS)
    numbered = envelopes([(i, e) for i, e in enumerate(events)])
    validate_envelopes(numbered, LIMITS)
    validate_request(api.AppendRequest(writer_id="w-1", events=numbered), LIMITS)


def test_the_wire_form_of_a_run_passes_too() -> None:
    batch = api.EventBatch(events=envelopes(full_loop()))
    decoded = api.EventBatch.FromString(batch.SerializeToString())
    validate_envelopes(decoded.events, LIMITS)


@pytest.mark.parametrize("loop_id", ["plain", "s", "a.b", "ünïcödé-loop", "with space", "x" * 256])
def test_loop_ids_need_no_dots_or_shape(loop_id: str) -> None:
    validate_envelopes(
        envelopes([agent_start(SESSION, loop_id), progress(loop_id, "c", "t", "")]), LIMITS
    )


# -- ids ---------------------------------------------------------------------------


def test_validate_id_accepts_printable_text_up_to_the_limit() -> None:
    for good in ("a", "x" * 256, "sess.cfg.0", "日本語", "emoji-🦀", "tab\u00a0nbsp"):
        validate_id(good, "session_id", LIMITS)


def test_validate_id_refuses_empty() -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_id("", "session_id", LIMITS)
    assert_invalid(info.value, "session_id", "must not be empty")


def test_validate_id_refuses_too_long_as_too_large() -> None:
    with pytest.raises(TooLarge) as info:
        validate_id("x" * 11, "hello.writer_id", Limits(max_id_length=10))
    assert_too_large(info.value, "hello.writer_id", 10)


@pytest.mark.parametrize(
    ("bad", "code", "index"),
    [
        ("\x00", "U+0000", 0),
        ("ab\ncd", "U+000A", 2),
        ("a\x1f", "U+001F", 1),
        ("del\x7f", "U+007F", 3),
        ("c1\x85x", "U+0085", 2),
        ("c1\x9f", "U+009F", 2),
        ("ü\ud800", "U+D800", 1),
        ("\udfff", "U+DFFF", 0),
    ],
)
def test_validate_id_refuses_control_characters_and_lone_surrogates(
    bad: str, code: str, index: int
) -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_id(bad, "loop_id", LIMITS)
    assert_invalid(info.value, "loop_id", "must not contain control characters")
    assert f"({code} at index {index})" in info.value.message


def test_limits_refuse_non_positive_bounds() -> None:
    with pytest.raises(ValueError, match="max_value_depth"):
        Limits(max_value_depth=0)


# -- batches -----------------------------------------------------------------------


def test_a_batch_over_the_event_limit_is_too_large() -> None:
    limits = Limits(max_events_per_batch=2)
    events = [progress(LOOP, "c", "t", "x")] * 3
    validate_envelopes(envelopes(events[:2]), limits)
    assert_too_large(refusal(*events, limits=limits), "events", 2)


def test_an_event_without_a_kind_is_refused_by_position() -> None:
    good = progress(LOOP, "c", "t", "x")
    assert_invalid(refusal(good, good, Event()), "events[2].event", "no event kind set")


def test_sequences_must_fit_the_store() -> None:
    event = progress(LOOP, "c", "t", "x")
    validate_envelopes(envelopes([(INT64_MAX, event)]), LIMITS)
    with pytest.raises(InvalidArgument) as info:
        validate_envelopes(envelopes([(0, event), (INT64_MAX + 1, event)]), LIMITS)
    assert_invalid(info.value, "events[1].sequence")


def test_field_prefix_names_where_the_list_sits() -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_envelopes(envelopes([progress("", "c", "t", "x")]), LIMITS, "batch.events")
    assert_invalid(info.value, "batch.events[0].event.progress_message.loop_id")


# -- per-kind rules ------------------------------------------------------------------

# A valid event of every kind that carries a loop id, built around `loop`.
WITH_LOOP: dict[str, Callable[[str], Event]] = {
    "agent_start": lambda loop: agent_start(SESSION, loop),
    "agent_end": lambda loop: agent_end(loop),
    "turn_start": lambda loop: turn_start(loop),
    "turn_request": lambda loop: turn_request(loop, 0, {}),
    "turn_end": lambda loop: turn_end(loop, assistant("ok")),
    "message_start": lambda loop: message_start(loop, assistant()),
    "message_update": lambda loop: message_update(loop, assistant(), "x"),
    "message_end": lambda loop: message_end(loop, user("hi")),
    "tool_execution_start": lambda loop: tool_start(loop, "c", "t"),
    "tool_execution_update": lambda loop: event("tool_execution_update", loop_id=loop),
    "tool_execution_end": lambda loop: tool_end(loop, "c", "t"),
    "progress_message": lambda loop: progress(loop, "c", "t", "x"),
    "input_rejected": lambda loop: input_rejected(loop, "why"),
    "compaction_started": lambda loop: compaction_started(loop, 1, 1),
    "compaction_ended": lambda loop: event("compaction_ended", loop_id=loop),
    "prun_applied": lambda loop: event("prun_applied", loop_id=loop),
    "revert_applied": lambda loop: event("revert_applied", loop_id=loop),
}
SESSION_LEVEL: dict[str, Callable[[], Event]] = {
    "parallel_loop_start": lambda: parallel_start(SESSION, ["a", "b"]),
    "parallel_loop_end": lambda: parallel_end(SESSION, "b", 1),
}
TIMED = [
    "agent_start",
    "agent_end",
    "turn_start",
    "turn_request",
    "turn_end",
    "compaction_started",
    "compaction_ended",
    "prun_applied",
    "revert_applied",
    "parallel_loop_start",
    "parallel_loop_end",
]


def valid_event(kind: str) -> Event:
    return WITH_LOOP[kind](LOOP) if kind in WITH_LOOP else SESSION_LEVEL[kind]()


def body(event: Event) -> Any:
    """The event's oneof member, untyped: tests reach for fields several kinds share."""
    kind = event.WhichOneof("event")
    assert kind is not None
    return getattr(event, kind)


def test_the_tables_cover_every_event_kind() -> None:
    assert sorted([*WITH_LOOP, *SESSION_LEVEL]) == sorted(EVENT_KINDS)
    validate_envelopes(envelopes([valid_event(kind) for kind in EVENT_KINDS]), LIMITS)


@pytest.mark.parametrize("kind", sorted(WITH_LOOP))
def test_every_loop_event_needs_its_loop_id(kind: str) -> None:
    error = refusal(progress(LOOP, "c", "t", "x"), WITH_LOOP[kind](""))
    assert_invalid(error, f"events[1].event.{kind}.loop_id", "must not be empty")


@pytest.mark.parametrize("kind", sorted(WITH_LOOP))
def test_every_loop_id_is_checked_as_an_id(kind: str) -> None:
    error = refusal(WITH_LOOP[kind]("s.c\x00.0"))
    assert_invalid(error, f"events[0].event.{kind}.loop_id", "must not contain control")


@pytest.mark.parametrize("field", ["agent_id", "session_id"])
def test_agent_start_needs_agent_and_session(field: str) -> None:
    event = agent_start(SESSION, LOOP)
    setattr(event.agent_start, field, "")
    assert_invalid(refusal(event), f"events[0].event.agent_start.{field}", "must not be empty")


@pytest.mark.parametrize("kind", TIMED)
def test_timestamps_are_required_where_the_rules_use_them(kind: str) -> None:
    event = valid_event(kind)
    body(event).ClearField("timestamp")
    assert_invalid(refusal(event), f"events[0].event.{kind}.timestamp", "must be set")


@pytest.mark.parametrize(
    ("seconds", "nanos", "part"),
    [
        (TIMESTAMP_MIN_SECONDS - 1, 0, "seconds"),
        (TIMESTAMP_MAX_SECONDS + 1, 0, "seconds"),
        (-(2**63), 0, "seconds"),
        (0, -1, "nanos"),
        (0, 1_000_000_000, "nanos"),
    ],
)
@pytest.mark.parametrize("kind", ["agent_start", "turn_start", "parallel_loop_end"])
def test_timestamps_stay_in_the_protobuf_range(
    kind: str, seconds: int, nanos: int, part: str
) -> None:
    event = valid_event(kind)
    stamp = body(event).timestamp
    stamp.seconds, stamp.nanos = seconds, nanos
    assert_invalid(refusal(event), f"events[0].event.{kind}.timestamp.{part}", "must be within")


def test_timestamp_range_bounds_are_inclusive() -> None:
    first, last = turn_start(LOOP), turn_start(LOOP)
    first.turn_start.timestamp.seconds = TIMESTAMP_MIN_SECONDS
    last.turn_start.timestamp.seconds = TIMESTAMP_MAX_SECONDS
    last.turn_start.timestamp.nanos = 999_999_999
    validate_envelopes(envelopes([first, last]), LIMITS)


def test_optional_timestamps_are_range_checked_when_present() -> None:
    message = user("hi")
    message.timestamp.nanos = -5
    assert_invalid(
        refusal(agent_end(LOOP, [user("a"), message])),
        "events[0].event.agent_end.messages[1].timestamp.nanos",
    )
    pruned = events_pb2.PrunApplied(loop_id=LOOP, timestamp=ts())
    pruned.pruned_timestamps.extend([ts(), ts()])
    pruned.pruned_timestamps[1].seconds = TIMESTAMP_MAX_SECONDS + 1
    assert_invalid(
        refusal(Event(prun_applied=pruned)),
        "events[0].event.prun_applied.pruned_timestamps[1].seconds",
    )


def test_parent_loop_id_is_optional_but_valid_when_set() -> None:
    validate_envelopes(envelopes([agent_start(SESSION, LOOP)]), LIMITS)
    assert_invalid(
        refusal(agent_start(SESSION, LOOP, parent="")),
        "events[0].event.agent_start.parent_loop_id",
        "must not be empty",
    )


def test_child_loop_ids_are_valid_when_set() -> None:
    assert_invalid(
        refusal(tool_end(LOOP, "c", "t", child_loop_id="")),
        "events[0].event.tool_execution_end.result.child_loop_id",
    )
    assert_invalid(
        refusal(tool_end(LOOP, "c", "t", child_loop_id="x\x1b", on_event=True)),
        "events[0].event.tool_execution_end.child_loop_id",
    )


def test_parallel_start_needs_session_and_distinct_loops() -> None:
    assert_invalid(
        refusal(parallel_start("", ["a"])), "events[0].event.parallel_loop_start.session_id"
    )
    assert_invalid(
        refusal(parallel_start(SESSION, [])),
        "events[0].event.parallel_loop_start.loop_ids",
        "must not be empty",
    )
    assert_invalid(
        refusal(parallel_start(SESSION, ["a", ""])),
        "events[0].event.parallel_loop_start.loop_ids[1]",
        "must not be empty",
    )
    error = refusal(parallel_start(SESSION, ["a", "b", "a"]))
    assert_invalid(error, "events[0].event.parallel_loop_start.loop_ids[2]", "repeats loop id")


@pytest.mark.parametrize("field", ["session_id", "selected_loop_id"])
def test_parallel_end_needs_session_and_winner(field: str) -> None:
    event = parallel_end(SESSION, "b", 1)
    setattr(event.parallel_loop_end, field, "")
    assert_invalid(refusal(event), f"events[0].event.parallel_loop_end.{field}")


def test_integers_kept_in_sqlite_columns_fit_int64() -> None:
    fine = parallel_end(SESSION, "b", INT64_MAX, use=usage(INT64_MAX, 0, total_tokens=INT64_MAX))
    validate_envelopes(envelopes([fine]), LIMITS)
    assert_invalid(
        refusal(parallel_end(SESSION, "b", INT64_MAX + 1)),
        "events[0].event.parallel_loop_end.selected_config_index",
    )
    assert_invalid(
        refusal(parallel_end(SESSION, "b", 0, use=usage(0, 0, total_tokens=2**64 - 1))),
        "events[0].event.parallel_loop_end.evaluation_usage.total_tokens",
    )
    assert_invalid(
        refusal(agent_end(LOOP, use=usage(0, 0, cache_read=2**63))),
        "events[0].event.agent_end.usage.cache_read",
    )
    assert_invalid(
        refusal(turn_end(LOOP, assistant(), use=usage(2**63))),
        "events[0].event.turn_end.usage.input",
    )


def test_known_enum_values_pass() -> None:
    events: list[Event] = []
    for role in types_pb2.MessageRole.values():
        for stop in types_pb2.StopReason.values():
            message = types_pb2.AgentMessage(role=role, stop_reason=stop)
            events.append(message_end(LOOP, message))
    for trigger in types_pb2.TurnTrigger.values():
        events.append(turn_start(LOOP, trigger=trigger))
    for api_value in types_pb2.ApiProtocol.values():
        for level in types_pb2.ThinkingLevel.values():
            snapshot = types_pb2.LoopConfigSnapshot(api=api_value, thinking_level=level)
            events.append(agent_start(SESSION, LOOP, config=snapshot))
    validate_envelopes(envelopes(events), LIMITS)


def test_unknown_enum_values_are_refused_by_field() -> None:
    assert_invalid(
        refusal(message_end(LOOP, types_pb2.AgentMessage(role=99))),  # type: ignore[arg-type]
        "events[0].event.message_end.message.role",
        "unknown enum value 99",
    )
    late = assistant("x")
    late.stop_reason = 12  # type: ignore[assignment]
    assert_invalid(
        refusal(agent_end(LOOP, [user("a"), late])),
        "events[0].event.agent_end.messages[1].stop_reason",
    )
    assert_invalid(
        refusal(turn_end(LOOP, assistant(), tool_results=[types_pb2.AgentMessage(role=-1)])),  # type: ignore[arg-type]
        "events[0].event.turn_end.tool_results[0].role",
    )
    assert_invalid(refusal(turn_start(LOOP, trigger=5)), "events[0].event.turn_start.triggered_by")
    for field in ("api", "thinking_level"):
        snapshot = config()
        setattr(snapshot, field, 42)
        assert_invalid(
            refusal(agent_start(SESSION, LOOP, config=snapshot)),
            f"events[0].event.agent_start.config_snapshot.{field}",
        )


# -- free-form JSON ----------------------------------------------------------------


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


@pytest.mark.parametrize("lists", [True, False])
def test_json_nesting_is_bounded_at_every_site(lists: bool) -> None:
    limits = Limits(max_value_depth=4)
    for event, path in json_sites(nested(4, lists=lists)):
        if wraps(path):
            assert_too_large(refusal(event, limits=limits), f"events[0].event.{path}", 4)
        else:
            validate_envelopes(envelopes([event]), limits)
    for event, path in json_sites(nested(5, lists=lists)):
        assert_too_large(refusal(event, limits=limits), f"events[0].event.{path}", 4)


def test_json_depth_is_judged_the_same_inside_large_text() -> None:
    """Large or '*'/'2'-heavy messages skip the fast path; the verdict must not change."""
    limits = Limits(max_value_depth=4)
    noisy = "**2** " * 2000 + "\x7f\u00ff"
    shallow = message_with("content[0].tool_call.arguments", nested(4))
    shallow.content.add().text.text = noisy
    validate_envelopes(envelopes([message_end(LOOP, shallow)]), limits)
    deep = message_with("content[0].tool_call.arguments", nested(5))
    deep.content.add().text.text = noisy
    assert_too_large(
        refusal(message_end(LOOP, deep), limits=limits),
        "events[0].event.message_end.message.content[0].tool_call.arguments",
        4,
    )


@pytest.mark.parametrize("lists", [True, False])
def test_hostile_depth_is_refused_without_recursion(lists: bool) -> None:
    envelope = api.EventEnvelope(event=tool_start(LOOP, "c", "t"))
    nested(10_000, lists=lists, into=envelope.event.tool_execution_start.args)
    with pytest.raises(TooLarge) as info:
        validate_envelopes([envelope], LIMITS)
    assert_too_large(info.value, "events[0].event.tool_execution_start.args", 64)


def json_holding(number: float) -> struct_pb2.Value:
    """A JSON list holding a plain 1.0 and, one level down in an object, `number`."""
    json = struct_pb2.Value()
    json.list_value.values.add().number_value = 1.0
    json.list_value.values.add().struct_value.fields["x"].number_value = number
    return json


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_json_numbers_must_be_finite(number: float) -> None:
    for event, path in json_sites(json_holding(number)):
        assert_invalid(refusal(event), f"events[0].event.{path}", "contains NaN or Infinity")


def test_extreme_finite_numbers_pass() -> None:
    json = value([1.7976931348623157e308, -1.7976931348623157e308, 5e-324, -0.0, 2.0**63])
    validate_envelopes(envelopes([event for event, _ in json_sites(json)]), LIMITS)


# -- requests ----------------------------------------------------------------------

SPAWN = session_pb2.SpawnRef(parent_session_id="p", parent_loop_id="p.c.0", tool_call_id="t")

# The phi-json fixture that uses every field: a whole session ImportSession accepts.
_FULL_SESSION = session_from_json(
    json.loads((Path(__file__).parent / "data" / "phi_session_full.json").read_text("utf-8"))
)

VALID_REQUESTS: list[Message] = [
    api.RecordRequest(hello=api.RecordHello(writer_id="writer-1")),
    api.RecordRequest(batch=api.EventBatch(batch_id=3, events=envelopes(full_loop()))),
    api.AppendRequest(events=envelopes([progress(LOOP, "c", "t", "x")])),
    api.GetSessionRequest(session_id=SESSION, skip_events=True),
    api.ListSessionsRequest(),
    api.ListSessionsRequest(
        agent_id="a",
        page_size=MAX_PAGE_SIZE,
        page_token="t" * 1024,
        scope=session_pb2.SESSION_SCOPE_PERSISTENT,
        since=ts(),
    ),
    api.GetLoopRequest(loop_id="no-dots"),
    api.StreamEventsRequest(session_id=SESSION, after_cursor=INT64_MAX, follow=True),
    api.StreamEventsRequest(loop_id=LOOP),
    api.OpenSessionRequest(agent_id="a"),
    api.OpenSessionRequest(
        session_id="s",
        agent_id="a",
        scope=session_pb2.SESSION_SCOPE_PERSISTENT,
        parent_spawn_ref=SPAWN,
        timestamp=ts(),
    ),
    api.RotateSessionRequest(agent_id="a", threshold_secs=1),
    api.RotateSessionRequest(agent_id="a", threshold_secs=1800, new_session_id="n", timestamp=ts()),
    api.FlushRequest(),
    api.FlushRequest(session_id=SESSION),
    api.CheckpointRequest(),
    api.CheckpointRequest(session_id=SESSION),
    api.DeleteSessionRequest(session_id=SESSION),
    api.PruneSessionsRequest(older_than=ts(), dry_run=True),
    api.WatchSessionsRequest(),
    api.WatchSessionsRequest(agent_id="a"),
    api.ImportSessionRequest(session=_FULL_SESSION, replace=True),
    api.GetUsageRequest(),
    api.GetUsageRequest(agent_id="a", since=ts(), until=ts()),
    api.ListRefusalsRequest(),
    api.ListRefusalsRequest(session_id="s", page_size=10),
]


@pytest.mark.parametrize("request_", VALID_REQUESTS, ids=lambda r: type(r).__name__)
def test_valid_requests_pass(request_: Message) -> None:
    validate_request(request_, LIMITS)


INVALID_REQUESTS: list[tuple[Message, str, str]] = [
    (api.RecordRequest(), "kind", "set hello or batch"),
    (api.RecordRequest(hello=api.RecordHello()), "hello.writer_id", "must not be empty"),
    (
        api.RecordRequest(batch=api.EventBatch(events=envelopes([turn_start("")]))),
        "batch.events[0].event.turn_start.loop_id",
        "must not be empty",
    ),
    (api.AppendRequest(writer_id="w\n"), "writer_id", "must not contain"),
    (
        api.AppendRequest(writer_id="w", events=envelopes([turn_start(LOOP), Event()])),
        "events[1].event",
        "no event kind set",
    ),
    (api.GetSessionRequest(), "session_id", "must not be empty"),
    (api.ListSessionsRequest(agent_id="\x00"), "agent_id", "must not contain"),
    (api.ListSessionsRequest(page_size=-1), "page_size", "must be within 0..1000"),
    (api.ListSessionsRequest(page_size=MAX_PAGE_SIZE + 1), "page_size", "must be within"),
    (api.ListSessionsRequest(scope=2), "scope", "unknown enum value 2"),  # type: ignore[arg-type]
    (
        api.ListSessionsRequest(since=Timestamp(seconds=TIMESTAMP_MIN_SECONDS - 1)),
        "since.seconds",
        "must be within",
    ),
    (api.GetLoopRequest(), "loop_id", "must not be empty"),
    (api.StreamEventsRequest(), "target", "set session_id or loop_id"),
    (api.StreamEventsRequest(session_id=""), "session_id", "must not be empty"),
    (api.StreamEventsRequest(loop_id="\x85"), "loop_id", "must not contain"),
    (
        api.StreamEventsRequest(loop_id=LOOP, after_cursor=INT64_MAX + 1),
        "after_cursor",
        "must be at most",
    ),
    (api.OpenSessionRequest(), "agent_id", "must not be empty"),
    (api.OpenSessionRequest(agent_id="a", session_id="s\x7f"), "session_id", "must not contain"),
    (api.OpenSessionRequest(agent_id="a", scope=9), "scope", "unknown enum"),  # type: ignore[arg-type]
    (
        api.OpenSessionRequest(agent_id="a", parent_spawn_ref=session_pb2.SpawnRef()),
        "parent_spawn_ref.parent_session_id",
        "must not be empty",
    ),
    (
        api.OpenSessionRequest(
            agent_id="a", parent_spawn_ref=session_pb2.SpawnRef(parent_session_id="p")
        ),
        "parent_spawn_ref.parent_loop_id",
        "must not be empty",
    ),
    (
        api.OpenSessionRequest(agent_id="a", timestamp=Timestamp(nanos=-1)),
        "timestamp.nanos",
        "must be within",
    ),
    (api.RotateSessionRequest(threshold_secs=1), "agent_id", "must not be empty"),
    (api.RotateSessionRequest(agent_id="a"), "threshold_secs", "must be within 1.."),
    (
        api.RotateSessionRequest(agent_id="a", threshold_secs=2**64 - 1),
        "threshold_secs",
        "must be within 1..",
    ),
    (
        api.RotateSessionRequest(agent_id="a", threshold_secs=1, new_session_id="\n"),
        "new_session_id",
        "must not contain",
    ),
    (api.RotateSessionRequest(agent_id="a", threshold_secs=1, scope=3), "scope", "unknown"),  # type: ignore[arg-type]
    (api.FlushRequest(session_id=""), "session_id", "must not be empty"),
    (api.CheckpointRequest(session_id=""), "session_id", "must not be empty"),
    (api.DeleteSessionRequest(), "session_id", "must not be empty"),
    (api.PruneSessionsRequest(), "older_than", "must be set"),
    (
        api.PruneSessionsRequest(older_than=Timestamp(seconds=TIMESTAMP_MAX_SECONDS + 1)),
        "older_than.seconds",
        "must be within",
    ),
    (api.WatchSessionsRequest(agent_id="\t"), "agent_id", "must not contain"),
    (api.ImportSessionRequest(), "session", "must be set"),
    (
        api.ImportSessionRequest(session=session_pb2.Session(session_id="s", agent_id="a")),
        "session.created_at",
        "must be set",
    ),
    (api.GetUsageRequest(agent_id="\n"), "agent_id", "must not contain"),
    (api.ListRefusalsRequest(session_id=""), "session_id", "must not be empty"),
    (api.ListRefusalsRequest(page_size=1001), "page_size", "must be within 0..1000"),
    (
        api.GetUsageRequest(until=Timestamp(seconds=TIMESTAMP_MAX_SECONDS + 1)),
        "until.seconds",
        "must be within",
    ),
]


@pytest.mark.parametrize(
    ("request_", "field", "problem"), INVALID_REQUESTS, ids=lambda x: getattr(x, "__name__", None)
)
def test_invalid_requests_name_the_field(request_: Message, field: str, problem: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_request(request_, LIMITS)
    assert_invalid(info.value, field, problem)


def test_request_limits_are_too_large() -> None:
    limits = Limits(max_page_token_length=8, max_events_per_batch=1, max_id_length=4)
    cases: list[tuple[Message, str, int]] = [
        (api.ListSessionsRequest(page_token="t" * 9), "page_token", 8),
        (
            api.RecordRequest(batch=api.EventBatch(events=envelopes([turn_start("l")] * 2))),
            "batch.events",
            1,
        ),
        (api.GetSessionRequest(session_id="s" * 5), "session_id", 4),
        (api.OpenSessionRequest(agent_id="a", session_id="s" * 5), "session_id", 4),
    ]
    for request, field, limit in cases:
        with pytest.raises(TooLarge) as info:
            validate_request(request, limits)
        assert_too_large(info.value, field, limit)


def test_every_rpc_request_type_has_a_validator() -> None:
    service = api.DESCRIPTOR.services_by_name["RecorderService"]
    for method in service.methods:
        request_type = getattr(api, method.input_type.name)
        assert any(type(r) is request_type for r in VALID_REQUESTS), method.name


def test_a_non_request_is_a_programming_error() -> None:
    with pytest.raises(TypeError, match="AgentEvent"):
        validate_request(Event(), LIMITS)


# -- properties --------------------------------------------------------------------

JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(alphabet=st.sampled_from("*2\x7fÿab"), max_size=12)
)
JSON = st.recursive(
    JSON_LEAVES,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=20,
)


def to_value(data: object) -> struct_pb2.Value:
    """Exact conversion, empty containers and NaN included (Struct.update drops neither,
    but spelling it out keeps the reference independent of the library under test)."""
    out = struct_pb2.Value()
    if data is None:
        out.null_value = struct_pb2.NULL_VALUE
    elif isinstance(data, bool):
        out.bool_value = data
    elif isinstance(data, float):
        out.number_value = data
    elif isinstance(data, str):
        out.string_value = data
    elif isinstance(data, list):
        out.list_value.SetInParent()
        for item in data:
            out.list_value.values.add().CopyFrom(to_value(item))
    else:
        assert isinstance(data, dict)
        out.struct_value.SetInParent()
        for key, item in data.items():
            out.struct_value.fields[key].CopyFrom(to_value(item))
    return out


def depth_of(data: object) -> int:
    if isinstance(data, list):
        return 1 + max((depth_of(item) for item in data), default=0)
    if isinstance(data, dict):
        return 1 + max((depth_of(item) for item in data.values()), default=0)
    return 0


def finite(data: object) -> bool:
    if isinstance(data, list):
        return all(finite(item) for item in data)
    if isinstance(data, dict):
        return all(finite(item) for item in data.values())
    return not isinstance(data, float) or math.isfinite(data)


@settings(max_examples=300, deadline=None)
@given(data=JSON, limit=st.integers(1, 6), padding=st.sampled_from([0, 300, 5000]))
def test_json_verdicts_match_a_reference(data: object, limit: int, padding: int) -> None:
    """The wire-form fast path and the walk together judge exactly as the definition."""
    message = message_with("content[0].tool_call.arguments", to_value(data))
    message.content.add().text.text = "2*" * padding
    tool = tool_start(LOOP, "c", "t")
    tool.tool_execution_start.args.CopyFrom(to_value(data))
    too_deep, bad_number = depth_of(data) > limit, not finite(data)
    for event in (tool, message_end(LOOP, message)):
        if not (too_deep or bad_number):
            validate_envelopes(envelopes([event]), Limits(max_value_depth=limit))
            continue
        error = refusal(event, limits=Limits(max_value_depth=limit))
        if not bad_number:
            assert isinstance(error, TooLarge)
        elif not too_deep:
            assert isinstance(error, InvalidArgument)


def integers_for(field: FieldDescriptor) -> st.SearchStrategy[int]:
    bits = 32 if field.type in _INT32_TYPES else 64
    if field.type in _UNSIGNED_TYPES:
        return st.integers(0, 2**bits - 1)
    if field.type == FieldDescriptor.TYPE_ENUM:
        return st.integers(-2, 14)
    return st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)


_INT32_TYPES = {
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_SINT32,
    FieldDescriptor.TYPE_SFIXED32,
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_FIXED32,
}
_UNSIGNED_TYPES = {
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_FIXED32,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_FIXED64,
}
IDS = st.sampled_from(["", "s", "s.c.0", LOOP, "x" * 300]) | st.text(max_size=6)


def scalar_for(field: FieldDescriptor) -> st.SearchStrategy[object]:
    if field.type == FieldDescriptor.TYPE_STRING:
        return IDS
    if field.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if field.type == FieldDescriptor.TYPE_DOUBLE:
        return st.floats(allow_nan=True, allow_infinity=True)
    if field.type == FieldDescriptor.TYPE_FLOAT:
        return st.floats(width=32, allow_nan=True, allow_infinity=True)
    if field.type == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=4)
    return integers_for(field)


def fill(message: Message, data: st.DataObject, depth: int) -> None:
    """Set a random subset of `message`'s fields to random, often invalid, values."""
    for field in cast("list[FieldDescriptor]", message.DESCRIPTOR.fields):
        if not data.draw(st.booleans()):
            continue
        target = getattr(message, field.name)
        if field.message_type is None:
            if field.is_repeated:
                target.extend(data.draw(st.lists(scalar_for(field), max_size=2)))
            else:
                setattr(message, field.name, data.draw(scalar_for(field)))
        elif depth <= 0:
            continue
        elif field.message_type.GetOptions().map_entry:
            scalar = field.message_type.fields_by_name["value"].message_type is None
            for key in data.draw(st.lists(st.text(max_size=2), max_size=2)):
                if scalar:
                    target[key] = data.draw(st.text(max_size=2))
                else:
                    fill(target[key], data, depth - 1)
        elif field.is_repeated:
            for _ in range(data.draw(st.integers(0, 2))):
                fill(target.add(), data, depth - 1)
        else:
            target.SetInParent()
            fill(target, data, depth - 1)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), kinds=st.lists(st.sampled_from(EVENT_KINDS), min_size=1, max_size=3))
def test_random_events_pass_or_are_refused_cleanly(data: st.DataObject, kinds: list[str]) -> None:
    batch = api.EventBatch()
    for kind in kinds:
        envelope = batch.events.add()
        if data.draw(st.booleans()):
            envelope.sequence = data.draw(st.integers(0, 2**64 - 1))
        event_body = getattr(envelope.event, kind)
        event_body.SetInParent()
        fill(event_body, data, depth=5)
    decoded = api.EventBatch.FromString(batch.SerializeToString())
    with contextlib.suppress(InvalidArgument, TooLarge):
        validate_envelopes(decoded.events, Limits(max_value_depth=3, max_id_length=64))


REQUEST_TYPES = [
    getattr(api, method.input_type.name)
    for method in api.DESCRIPTOR.services_by_name["RecorderService"].methods
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), request_type=st.sampled_from(REQUEST_TYPES))
def test_random_requests_pass_or_are_refused_cleanly(
    data: st.DataObject, request_type: type[Message]
) -> None:
    request = request_type()
    fill(request, data, depth=6)
    with contextlib.suppress(InvalidArgument, TooLarge):
        validate_request(request, Limits(max_value_depth=3))
