"""validate_events' wire fast path for Record: the same verdict as the walk, always.

Given the bytes a RecordRequest was decoded from, validation may settle every JSON
value of the batch from them (the decoder's nesting cap, a scan for non-finite
doubles) instead of walking. Each test decodes real bytes and compares
`validate_events(request, limits, wire)` with `validate_request(request, limits)`:
both pass (and the events come back as sent), or both raise the same error type,
message and metadata.
"""

from __future__ import annotations

import math
import struct

import grpc
import pytest
from agent_recorder.v1 import recorder_service_pb2 as api
from agent_recorder.v1 import types_pb2
from google.protobuf import struct_pb2
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.random_messages import JSON, fill, to_value
from support.recorder import RunningRecorder
from support.shapes import (
    EVENT_KINDS,
    LIMITS,
    LOOP,
    SESSION,
    Event,
    agent_start,
    envelopes,
    full_loop,
    json_holding,
    json_sites,
    message_end,
    message_with,
    nested,
    user,
    wraps,
)

from recorder_common.finite import finite_on_wire
from recorder_common.varint import varint
from recorder_server.errors import RecorderError
from recorder_server.validation import (
    DECODED_JSON_DEPTH_MAX,
    Limits,
    _json_plan,
    validate_events,
    validate_request,
)

Verdict = tuple[type, str, dict[str, str]] | None


def verdict(request: api.RecordRequest, limits: Limits, wire: bytes | None = None) -> Verdict:
    """The walk's verdict (validate_request), or the fast path's with `wire`."""
    try:
        if wire is None:
            validate_request(request, limits)
        else:
            checked = validate_events(request, limits, wire)
            if checked.faults:
                raise checked.faults[min(checked.faults)]
            events = checked.events
            sent = request.batch.events
            assert [event for _, event in events] == [envelope.event for envelope in sent]
            assert [sequence for sequence, _ in events] == [
                e.sequence if e.HasField("sequence") else None for e in sent
            ]
    except RecorderError as error:
        return type(error), error.message, dict(error.metadata)
    return None


def record_of(events: list[Event]) -> bytes:
    """In place: a constructor would copy by decoding, which refuses deep nesting."""
    request = api.RecordRequest()
    request.batch.batch_id = 1
    for event in events:
        request.batch.events.add().event.CopyFrom(event)
    return request.SerializeToString()


def same_verdict(wire: bytes, limits: Limits = LIMITS) -> Verdict:
    """The verdict on `wire`, asserted equal with and without the fast path."""
    request = api.RecordRequest.FromString(wire)
    walked = verdict(request, limits)
    assert verdict(request, limits, wire) == walked
    return walked


def test_realistic_batches_take_the_fast_path_and_pass() -> None:
    wire = record_of(full_loop())
    assert _json_plan(wire, LIMITS) is False
    assert same_verdict(wire) is None


def test_events_come_back_with_their_sequences() -> None:
    """0 is a sequence, unset is None: the pair the writer needs, read in the same pass."""
    first, second, third = full_loop()[:3]
    request = api.RecordRequest(batch=api.EventBatch(events=envelopes([(0, first), second])))
    request.batch.events.add(sequence=7).event.CopyFrom(third)
    wire = request.SerializeToString()
    decoded = api.RecordRequest.FromString(wire)
    assert validate_events(decoded, LIMITS, wire).events == [(0, first), (None, second), (7, third)]
    append = api.AppendRequest(events=decoded.batch.events)
    assert validate_events(append, LIMITS).events == [(0, first), (None, second), (7, third)]
    hello = api.RecordRequest(hello=api.RecordHello(writer_id="w"))
    assert validate_events(hello, LIMITS, hello.SerializeToString()).events == []


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_are_refused_at_every_site(number: float) -> None:
    for event, path in json_sites(json_holding(number)):
        wire = record_of([event])
        assert _json_plan(wire, LIMITS) is None
        walked = same_verdict(wire)
        assert walked is not None
        assert walked[1].startswith(f"batch.events[0].event.{path}: contains NaN or Infinity")


def look_alike() -> types_pb2.AgentMessage:
    """Finite everywhere, but its bytes hold what a non-finite double's could look like:
    provider's last byte 0x00, then Usage's tag, length, input's tag and a varint
    ending 0xF0 0x7F, eight bytes after that 0x00."""
    message = user("fine")
    message.provider = "p\x00"
    message.usage.input = 0x7F << 28 | 0x70 << 21
    return message


def test_a_suspect_batch_checks_only_its_suspect_events() -> None:
    """When the batch's bytes cannot rule out NaN, each event's own bytes decide."""
    fine = full_loop()
    wire = record_of([*fine, message_end(LOOP, look_alike())])
    assert _json_plan(wire, LIMITS) is None
    assert same_verdict(wire) is None
    bad = struct_pb2.Value()
    bad.list_value.values.add().number_value = math.nan
    for event, path in json_sites(bad):
        wire = record_of([*fine, message_end(LOOP, look_alike()), event, *fine])
        assert _json_plan(wire, LIMITS) is None
        walked = same_verdict(wire)
        assert walked is not None
        index = len(fine) + 1
        assert walked[1].startswith(f"batch.events[{index}].event.{path}: contains NaN")


def frame(field: int, payload: bytes) -> bytes:
    """A length-delimited field, built by hand so an odd encoding inside survives."""
    return bytes([field << 3 | 2]) + varint(len(payload)) + payload


# Value.number_value's tag 0x11 in every form the decoder accepts: overlong varints
# of up to 5 bytes end in 0x00 instead.
NUMBER_TAGS = [b"\x11", b"\x91\x00", b"\x91\x80\x00", b"\x91\x80\x80\x00", b"\x91\x80\x80\x80\x00"]


@pytest.mark.parametrize("tag", NUMBER_TAGS)
@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_behind_overlong_tags_are_refused(tag: bytes, number: float) -> None:
    start = agent_start(SESSION, LOOP).agent_start.SerializeToString()
    metadata = frame(7, tag + struct.pack("<d", number))  # AgentStart.metadata = 7
    event = frame(1, start + metadata)  # AgentEvent.agent_start = 1
    envelope = frame(2, event)  # EventEnvelope.event = 2
    wire = frame(2, frame(2, envelope))  # RecordRequest.batch = 2, EventBatch.events = 2
    decoded = api.RecordRequest.FromString(wire)
    assert math.isnan(number) or decoded.batch.events[0].event.agent_start.metadata.number_value
    assert _json_plan(wire, LIMITS) is None
    walked = same_verdict(wire)
    assert walked is not None
    assert walked[1].startswith("batch.events[0].event.agent_start.metadata: contains NaN")


@pytest.mark.parametrize("lists", [True, False])
def test_the_decoder_refuses_json_deeper_than_the_bound(lists: bool) -> None:
    """DECODED_JSON_DEPTH_MAX holds at every site: the fast path may skip depth.

    Lists are the cheapest nesting (two messages a level; a Struct level is three).
    """
    for event, path in json_sites(nested(DECODED_JSON_DEPTH_MAX)):
        if wraps(path):  # one level more than the bound: must not decode
            with pytest.raises(DecodeError):
                api.RecordRequest.FromString(record_of([event]))
    # The shallowest sites (a Value straight in the event kind), one past the bound.
    for site in ("agent_start.metadata", "tool_execution_start.args"):
        request = api.RecordRequest()
        kind, field = site.split(".")
        body = getattr(request.batch.events.add().event, kind)
        nested(DECODED_JSON_DEPTH_MAX + 1, lists=lists, into=getattr(body, field))
        with pytest.raises(DecodeError):
            api.RecordRequest.FromString(request.SerializeToString())
    deepest = api.RecordRequest()
    nested(DECODED_JSON_DEPTH_MAX, into=deepest.batch.events.add().event.agent_start.metadata)
    api.RecordRequest.FromString(deepest.SerializeToString())  # the bound is tight


@pytest.mark.parametrize("lists", [True, False])
def test_limits_below_the_bound_walk_and_judge_the_same(lists: bool) -> None:
    limits = Limits(max_value_depth=4)
    assert _json_plan(record_of(full_loop()), limits) is True
    for depth in (4, 5):
        for event, _ in json_sites(nested(depth, lists=lists)):
            same_verdict(record_of([event]), limits)
    at_bound = Limits(max_value_depth=DECODED_JSON_DEPTH_MAX)
    assert _json_plan(record_of(full_loop()), at_bound) is False
    for event, _ in json_sites(nested(20, lists=lists)):
        assert same_verdict(record_of([event]), at_bound) is None


def test_the_scan_gives_up_on_many_high_bytes() -> None:
    """Many 0x7F/0xFF bytes (here huge sequences) cost bounded work: "scan each event"."""
    numbered = [(2**64 - 1, agent_start(SESSION, LOOP)) for _ in range(600)]
    wire = api.RecordRequest(batch=api.EventBatch(events=envelopes(numbered))).SerializeToString()
    assert not finite_on_wire(wire)
    assert _json_plan(wire, LIMITS) is None
    walked = same_verdict(wire)
    assert walked is not None
    assert walked[1].startswith("batch.events[0].sequence: must be at most")


@settings(max_examples=200, deadline=None)
@given(data=JSON, padding=st.sampled_from(["", "2*" * 3000, "\x7f\u00ff" * 50]))
def test_random_json_is_judged_the_same(data: object, padding: str) -> None:
    message = message_with("content[0].tool_call.arguments", to_value(data))
    message.content.add().text.text = padding
    start = agent_start(SESSION, LOOP)
    start.agent_start.metadata.CopyFrom(to_value(data))
    same_verdict(record_of([message_end(LOOP, message), start]))


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    kinds=st.lists(st.sampled_from(EVENT_KINDS), min_size=1, max_size=3),
    depth=st.sampled_from([3, DECODED_JSON_DEPTH_MAX, 64]),
)
def test_random_events_are_judged_the_same(
    data: st.DataObject, kinds: list[str], depth: int
) -> None:
    request = api.RecordRequest()
    for kind in kinds:
        envelope = request.batch.events.add()
        if data.draw(st.booleans()):
            envelope.sequence = data.draw(st.integers(0, 2**64 - 1))
        body = getattr(envelope.event, kind)
        body.SetInParent()
        fill(body, data, depth=5)
    same_verdict(request.SerializeToString(), Limits(max_value_depth=depth, max_id_length=64))


async def test_a_record_stream_refuses_a_hidden_nan_with_the_field(
    recorder: RunningRecorder,
) -> None:
    """Through the real server: a NaN behind an overlong tag is still named."""
    start = agent_start(SESSION, LOOP).agent_start.SerializeToString()
    event = frame(1, start + frame(7, b"\x91\x80\x00" + struct.pack("<d", math.nan)))
    batch = b"\x08\x05" + frame(2, frame(2, event))  # batch_id = 5, one envelope
    hello = api.RecordRequest(hello=api.RecordHello(writer_id="wire-test")).SerializeToString()
    async with grpc.aio.insecure_channel(recorder.target) as channel:
        call = channel.stream_stream(
            f"/{api.DESCRIPTOR.services_by_name['RecorderService'].full_name}/Record", None, None
        )(iter([hello, frame(2, batch)]), timeout=10)
        responses = [api.RecordResponse.FromString(raw) async for raw in call]
    assert responses[0].HasField("ready")
    (rejection,) = responses[1].refusals
    assert (responses[1].batch_id, list(responses[1].sequences)) == (5, [0])
    assert rejection.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert rejection.message.startswith(
        "batch.events[0].event.agent_start.metadata: contains NaN or Infinity"
    )
    assert rejection.metadata["field"] == "batch.events[0].event.agent_start.metadata"
