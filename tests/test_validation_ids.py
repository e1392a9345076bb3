"""recorder_server.validation, pure: ids and the limits of a batch of events.

Each refusal is checked for its error type and the full field path a client would
have to fix.
"""

from __future__ import annotations

import pytest
from support.shapes import (
    LIMITS,
    LOOP,
    Event,
    assert_invalid,
    assert_too_large,
    envelopes,
    progress,
    refusal,
)

from recorder_server.errors import InvalidArgument, TooLarge
from recorder_server.validation import (
    INT64_MAX,
    Limits,
    validate_envelopes,
    validate_id,
)


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
