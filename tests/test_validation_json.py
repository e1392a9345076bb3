"""recorder_server.validation, pure: free-form JSON (depth bound, finite numbers) at every
site an event can carry it, and a property test against a reference definition.
"""

from __future__ import annotations

import math

import pytest
from agent_recorder.v1 import recorder_service_pb2 as api
from hypothesis import given, settings
from hypothesis import strategies as st
from support.random_messages import (
    JSON,
    depth_of,
    finite,
    to_value,
)
from support.shapes import (
    LIMITS,
    LOOP,
    assert_invalid,
    assert_too_large,
    envelopes,
    json_holding,
    json_sites,
    message_end,
    message_with,
    nested,
    refusal,
    tool_start,
    value,
    wraps,
)

from recorder_server.errors import InvalidArgument, TooLarge
from recorder_server.validation import (
    Limits,
    validate_envelopes,
)


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


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_json_numbers_must_be_finite(number: float) -> None:
    for event, path in json_sites(json_holding(number)):
        assert_invalid(refusal(event), f"events[0].event.{path}", "contains NaN or Infinity")


def test_extreme_finite_numbers_pass() -> None:
    json = value([1.7976931348623157e308, -1.7976931348623157e308, 5e-324, -0.0, 2.0**63])
    validate_envelopes(envelopes([event for event, _ in json_sites(json)]), LIMITS)


@pytest.mark.slow
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
