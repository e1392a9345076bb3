"""recorder_server.validation, pure: the per-kind rules of every event.

A realistic run with every event kind passes untouched; each rule (ids, timestamps,
enums, integers that must fit the store) refuses with the exact field path; random,
often broken, events may be refused, never crash the validator.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pytest
from agent_recorder.v1 import events_pb2, types_pb2
from agent_recorder.v1 import recorder_service_pb2 as api
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.random_messages import (
    fill,
)
from support.shapes import (
    EVENT_KINDS,
    LIMITS,
    LOOP,
    SESSION,
    Event,
    agent_end,
    agent_start,
    assert_invalid,
    assistant,
    compaction_started,
    config,
    envelopes,
    event,
    full_loop,
    input_rejected,
    message_end,
    message_start,
    message_update,
    parallel_end,
    parallel_start,
    progress,
    refusal,
    tool_end,
    tool_start,
    ts,
    turn_end,
    turn_request,
    turn_start,
    usage,
    user,
)

from recorder_server.errors import InvalidArgument, TooLarge
from recorder_server.validation import (
    INT64_MAX,
    TIMESTAMP_MAX_SECONDS,
    TIMESTAMP_MIN_SECONDS,
    Limits,
    validate_envelopes,
    validate_request,
)


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


@pytest.mark.slow
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
