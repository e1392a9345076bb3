"""The checks an EventSender applies at emit(), as a pure function (recorder_client/checks.py).

Each case builds the event a careless agent would, and asserts the ValueError names
the field the server's validation would name; valid events of every shape pass.
"""

from __future__ import annotations

import math

import pytest
from agent_recorder.v1 import events_pb2
from agent_recorder.v1.recorder_service_pb2 import EventEnvelope
from google.protobuf import struct_pb2
from hypothesis import given, settings
from hypothesis import strategies as st
from support.events import (
    agent_end,
    agent_start,
    assistant,
    parallel_start,
    tool_end,
    tool_start,
    turn_end,
    turn_start,
    user,
    value,
)

from recorder_client import defaults
from recorder_client.checks import EventLimits, check_event
from recorder_client.delivery import encode_event
from recorder_server.errors import RecorderError
from recorder_server.validation import Limits, validate_envelopes

LIMITS = EventLimits()


def check(event: events_pb2.AgentEvent, limits: EventLimits = LIMITS) -> None:
    data, loop_id, kind = encode_event(event)
    check_event(event, data, kind, loop_id, limits)


def refusal(event: events_pb2.AgentEvent, limits: EventLimits = LIMITS) -> str:
    with pytest.raises(ValueError) as caught:
        check(event, limits)
    return str(caught.value)


def nested(depth: int) -> dict[str, object]:
    inner: dict[str, object] = {"leaf": 1}
    for _ in range(depth - 1):
        inner = {"next": inner}
    return inner


def test_the_defaults_are_the_servers_documented_ones() -> None:
    assert (LIMITS.max_id_length, LIMITS.max_value_depth, LIMITS.max_request_bytes) == (
        defaults.MAX_ID_LENGTH,
        defaults.MAX_VALUE_DEPTH,
        defaults.MAX_REQUEST_BYTES,
    )
    assert (defaults.MAX_ID_LENGTH, defaults.MAX_VALUE_DEPTH) == (256, 64)
    assert defaults.MAX_REQUEST_BYTES == 16 * 1024 * 1024


def test_valid_events_of_every_shape_pass() -> None:
    big_args = {f"k{i}": [i, str(i) * 50, {"x": i / 3}] for i in range(200)}
    for event in (
        agent_start("s1", "s1.c.0", metadata={"run": 7, "tags": ["a", "b"]}),
        turn_start("s1.c.0", 0),
        tool_start("s1.c.0", "call-1", "grep", {"pattern": "x" * 5000, "n": 1.5}),
        tool_start("s1.c.0", "call-2", "big", big_args),
        tool_end("s1.c.0", "call-1", "grep", child_loop_id="s1.c.1"),
        turn_end("s1.c.0", assistant("hi", tool_calls=[("c", "t", nested(20))])),
        agent_end("s1.c.0", [user("q"), assistant("a")]),
        parallel_start("s1", ["s1.c.1", "s1.c.2"]),
    ):
        check(event)


def test_ids_must_be_non_empty_short_and_printable() -> None:
    assert refusal(turn_start("", 0)) == "event.turn_start.loop_id: must not be empty"
    assert refusal(agent_start("", "s1.c.0")) == "event.agent_start.session_id: must not be empty"
    long = "x" * 300
    assert refusal(agent_start("s1", long)) == (
        "event.agent_start.loop_id: must be at most 256 characters, not 300"
    )
    assert "at most 10 characters" in refusal(turn_start("s1.c.0.long", 0), EventLimits(10))
    assert refusal(turn_start("s1\nc", 0)) == (
        "event.turn_start.loop_id: must not contain control characters or lone surrogates"
        " (U+000A at index 2)"
    )
    assert refusal(parallel_start("s1", ["s1.c.1", ""])).startswith(
        "event.parallel_loop_start.loop_ids[1]: must not be empty"
    )
    child = tool_end("s1.c.0", "call-1", "grep", child_loop_id="")
    assert refusal(child) == ("event.tool_execution_end.result.child_loop_id: must not be empty")


def test_nan_and_infinity_are_refused_naming_the_json_field() -> None:
    args = tool_start("s1.c.0", "call-1", "calc", {"x": 1})
    args.tool_execution_start.args.struct_value.fields["x"].number_value = math.nan
    assert refusal(args) == (
        "event.tool_execution_start.args: contains nan, which JSON cannot carry"
    )
    call = assistant("", tool_calls=[("c1", "calc", {"y": [1, 2]})])
    call.content[0].tool_call.arguments.struct_value.fields["y"].list_value.values[
        1
    ].number_value = math.inf
    assert refusal(turn_end("s1.c.0", call)) == (
        "event.turn_end.message.content[0].tool_call.arguments: contains inf,"
        " which JSON cannot carry"
    )
    start = agent_start("s1", "s1.c.0", metadata={"score": 0})
    start.agent_start.metadata.struct_value.fields["score"].number_value = -math.inf
    assert "event.agent_start.metadata: contains -inf" in refusal(start)


def test_json_nested_deeper_than_the_limit_is_refused() -> None:
    """A Struct or list is one level; the server announces the limit (64 by default)."""
    shallow = EventLimits(max_value_depth=8)
    check(tool_start("s1.c.0", "c", "t", nested(8)), shallow)
    assert refusal(tool_start("s1.c.0", "c", "t", nested(9)), shallow) == (
        "event.tool_execution_start.args: must not nest deeper than 8 levels"
    )
    deep_list = tool_start("s1.c.0", "c", "t")
    deep_list.tool_execution_start.args.CopyFrom(value({"a": [[[[[[[["x"]]]]]]]]}))
    assert "nest deeper than 8 levels" in refusal(deep_list, shallow)
    call = assistant("", tool_calls=[("c1", "calc", nested(9))])
    assert refusal(turn_end("s1.c.0", call), shallow) == (
        "event.turn_end.message.content[0].tool_call.arguments: must not nest deeper than 8 levels"
    )


# Text made of the bytes the byte tests count (newlines, "*", "2", DEL, a 0x2A length).
_DECOY_TEXT = st.text(alphabet="\n*2\x7fa\u00ff", max_size=60)
_JSON = st.recursive(
    st.one_of(_DECOY_TEXT, st.floats(allow_nan=False, allow_infinity=False), st.booleans()),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(_DECOY_TEXT, inner, max_size=3)
    ),
    max_leaves=40,
)


@settings(max_examples=300, deadline=None)
@given(args=_JSON, text=_DECOY_TEXT, depth=st.integers(min_value=0, max_value=12))
def test_the_client_refuses_exactly_what_the_server_refuses(
    args: object, text: str, depth: int
) -> None:
    """Whatever the text around it holds, a value too deep is found (the byte tests
    that clear most events without a walk never under-count)."""
    message = assistant(text * 20, tool_calls=[("c", "t", {})])
    inner = message.content[-1].tool_call.arguments
    for _ in range(depth):  # each level a list holding the text, then the next level
        inner.list_value.values.add().string_value = text
        inner = inner.list_value.values.add()
    inner.CopyFrom(value(args))
    event = turn_end("s1.c.0", message)
    limits = EventLimits(max_value_depth=6)
    try:
        validate_envelopes([EventEnvelope(event=event)], Limits(max_value_depth=6))
        server_refuses = False
    except RecorderError:
        server_refuses = True
    try:
        check(event, limits)
        client_refuses = False
    except ValueError:
        client_refuses = True
    assert client_refuses == server_refuses


@pytest.mark.parametrize("depth", [7, 8, 9, 10])
def test_the_client_draws_the_depth_line_where_the_server_does(depth: int) -> None:
    event = tool_start("s1.c.0", "c", "t", nested(depth))
    server_refuses = client_refuses = False
    try:
        validate_envelopes([EventEnvelope(event=event)], Limits(max_value_depth=8))
    except RecorderError:
        server_refuses = True
    try:
        check(event, EventLimits(max_value_depth=8))
    except ValueError:
        client_refuses = True
    assert client_refuses == server_refuses == (depth > 8)


def test_an_event_larger_than_the_request_limit_is_refused_naming_the_limit() -> None:
    small = EventLimits(max_request_bytes=4096)
    check(tool_start("s1.c.0", "c", "t", {"blob": "x" * 3000}), small)
    message = refusal(tool_start("s1.c.0", "c", "t", {"blob": "x" * 5000}), small)
    assert message.startswith("event.tool_execution_start: ")
    assert message.endswith("larger than the sidecar's request limit of 4096 bytes (loop s1.c.0)")


def test_json_too_deep_for_protobuf_to_decode_is_refused_below_the_depth_limit() -> None:
    """Some 30 levels inside an event, the server could not decode the request at all
    (and would refuse the whole batch): the sender refuses that event alone instead.
    """
    deep = struct_pb2.Value()
    inner = deep
    for _ in range(40):
        inner = inner.struct_value.fields["next"]
    inner.number_value = 1
    event = tool_start("s1.c.0", "c", "t")
    event.tool_execution_start.args.CopyFrom(deep)
    assert refusal(event) == (
        "event.tool_execution_start: nested too deeply to be decoded (protobuf decodes at most"
        " 100 nested messages, some 30 levels of JSON)"
    )
    check(tool_start("s1.c.0", "c", "t", nested(28)))
