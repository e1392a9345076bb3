"""Hostile input through the real server: every answer is a status, never a crash.

Random bytes go to every method of RecorderService (taken from the descriptor, so
new RPCs are covered) through a raw channel; hypothesis mutates valid runs (missing
fields, merged oneofs, huge strings, invalid UTF-8, deep nesting, repeated ids,
sequences out of order, flipped and cut bytes). After all of it the server still
reports SERVING, a session stored before is byte-identical, and the process's
memory has not grown past a generous bound. Bounded in count and per-call deadline.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from agent_recorder.v1 import recorder_service_pb2 as api
from agent_recorder.v1 import session_pb2
from google.protobuf.descriptor import MethodDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.events import (
    Event,
    agent_end,
    agent_start,
    assistant,
    envelopes,
    message_end,
    tool_end,
    tool_start,
    turn_end,
    turn_start,
    user,
    value,
)
from support.recorder import RunningRecorder

from recorder_server.server import RecorderServer, ServerConfig
from recorder_server.validation import Limits

# Fuzzing a live server is slow: not in `make test-fast`.
pytestmark = pytest.mark.slow
SERVICE = api.DESCRIPTOR.services_by_name["RecorderService"]
DEADLINE = 3.0
# Codes that mean "the server failed", not "the request was refused".
CRASH_CODES = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
KEEPER = "fuzz-keeper-session-7f3a"
MiB = 1024 * 1024

T = TypeVar("T")


def rss_bytes() -> int:
    """Resident memory of this process, where the in-process server runs."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def run_of(session: str, text: str = "hello") -> list[Event]:
    """A small valid loop: a turn with a tool call, then the end."""
    loop = f"{session}.cfg.0"
    call = assistant("", tool_calls=[("c1", "read", {"path": "/x"})], at=2)
    return [
        agent_start(session, loop, metadata={"k": [1, {"n": None}]}, at=0),
        turn_start(loop, 0, at=1),
        message_end(loop, user(text, at=1)),
        tool_start(loop, "c1", "read", {"path": "/x"}),
        tool_end(loop, "c1", "read", text="contents"),
        turn_end(loop, call, at=3),
        agent_end(loop, at=4),
    ]


async def call_raw(
    channel: grpc.aio.Channel, method: MethodDescriptor, payloads: Sequence[bytes]
) -> grpc.StatusCode:
    """Send raw request bytes to a method of any arity; its final status."""
    path = f"/{SERVICE.full_name}/{method.name}"
    factories: dict[tuple[bool, bool], Any] = {
        (False, False): channel.unary_unary,
        (False, True): channel.unary_stream,
        (True, False): channel.stream_unary,
        (True, True): channel.stream_stream,
    }
    factory = factories[(method.client_streaming, method.server_streaming)]
    request = iter(payloads) if method.client_streaming else payloads[0]
    call = factory(path, None, None)(request, timeout=DEADLINE)
    try:
        if method.server_streaming:
            async for _ in call:
                pass
        else:
            await call
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def random_payloads(rng: random.Random) -> list[bytes]:
    """Random bytes, plus shapes that stress a decoder: empty, cut varints, overruns."""
    special = [
        b"",
        b"\x00",
        b"\x80",
        b"\x0a\xff\xff\xff\xff\x0f",
        b"\x0a\x05abc",
        b"\xff" * 64,
        b"\x0a\x02\xc3\x28",  # a string field holding invalid UTF-8
        b"\x0a\x80\x01" * 120,  # length prefixes that overrun what follows
    ]
    noise = [rng.randbytes(rng.randrange(1, 300)) for _ in range(20)]
    return special + noise


def nested(depth: int) -> Any:
    """A JSON value `depth` lists deep, a number at the bottom."""
    inner = value(1)
    for _ in range(depth):
        outer = value([])
        outer.list_value.values.add().CopyFrom(inner)
        inner = outer
    return inner


# -- the property: hostile requests get statuses --------------------------------------

MUTATIONS = (
    "drop_field",
    "merge_oneofs",
    "huge_string",
    "invalid_utf8",
    "deep_nesting",
    "repeated_ids",
    "out_of_order",
    "flip_bytes",
    "truncate",
)


def deepen(request: api.AppendRequest, depth: int) -> None:
    """Nest the first event's metadata in place: a copy would be re-parsed past the cap."""
    request.events[0].event.agent_start.metadata.CopyFrom(nested(depth))


@st.composite
def mutated_requests(draw: st.DrawFn, counter: list[int]) -> tuple[str, bytes]:
    """The events of an AppendRequest (field 2 only) of a valid run, one mutation applied.

    Without field 1 the same bytes frame an Append (writer_id prepended) and a Record
    batch (batch_id prepended): EventBatch carries its envelopes as field 2 too.
    """
    counter[0] += 1
    session = f"fz{counter[0]:06d}"  # fixed width: every replay draws from equal lengths
    events = run_of(session, text="MARKER-TEXT")
    mutation = draw(st.sampled_from(MUTATIONS))
    numbered: list[Event | tuple[int, Event]] = list(events)
    index = draw(st.integers(0, len(events) - 1))
    event = events[index]
    inner = getattr(event, event.WhichOneof("event") or "")
    if mutation == "drop_field":
        fields = inner.ListFields()
        inner.ClearField(fields[draw(st.integers(0, len(fields) - 1))][0].name)
    elif mutation == "merge_oneofs":
        other = events[draw(st.integers(0, len(events) - 1))]
        event.MergeFromString(other.SerializeToString())
    elif mutation == "huge_string":
        size = draw(st.sampled_from([257, 4096, 300_000, 2 * MiB]))
        if draw(st.booleans()):
            inner.loop_id = "x" * size
        else:
            events[2].message_end.message.content[0].text.text = "y" * size
    elif mutation == "deep_nesting":
        depth = draw(st.sampled_from([65, 99, 100, 101, 150, 400]))
    elif mutation == "repeated_ids":
        numbered = [*events, events[0]] if draw(st.booleans()) else [*events, *events]
    elif mutation == "out_of_order":
        sequences = list(range(len(events)))
        draw(st.randoms()).shuffle(sequences)
        numbered = list(zip(sequences, events, strict=True))
    request = api.AppendRequest(events=envelopes(numbered))
    if mutation == "deep_nesting":
        deepen(request, depth)
    data = request.SerializeToString()
    if mutation == "invalid_utf8":
        data = data.replace(b"MARKER-TEXT", b"MARKER\xc3\x28\xff\xfeXT")
    elif mutation == "flip_bytes":
        mutable = bytearray(data)
        for position in draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=8)):
            mutable[position] ^= draw(st.integers(1, 255))
        data = bytes(mutable)
    elif mutation == "truncate":
        data = data[: draw(st.integers(0, len(data) - 1))]
    return mutation, data


def as_append(events: bytes) -> bytes:
    return api.AppendRequest(writer_id="fuzz").SerializeToString() + events


async def record_raw(channel: grpc.aio.Channel, events: bytes) -> list[grpc.StatusCode]:
    """hello, then the events as one batch of a Record stream; the batch's and stream's codes."""
    hello = api.RecordRequest(hello=api.RecordHello(writer_id="fuzz-rec")).SerializeToString()
    body = api.EventBatch(batch_id=1).SerializeToString() + events
    framed = b"\x12" + encode_varint(len(body)) + body  # RecordRequest.batch = 2
    call = channel.stream_stream(f"/{SERVICE.full_name}/Record", None, None)(
        iter([hello, framed]), timeout=DEADLINE
    )
    codes = []
    try:
        async for raw in call:
            assert isinstance(raw, bytes)
            response = api.RecordResponse.FromString(raw)
            if response.HasField("rejection"):
                codes.append(status_code(response.rejection.code))
    except grpc.aio.AioRpcError as error:
        codes.append(error.code())
    return codes


def status_code(number: int) -> grpc.StatusCode:
    return next(code for code in grpc.StatusCode if code.value[0] == number)


def encode_varint(number: int) -> bytes:
    out = bytearray()
    while True:
        byte, number = number & 0x7F, number >> 7
        out.append(byte | (0x80 if number else 0))
        if not number:
            return bytes(out)


async def keeper_snapshot(channel: grpc.aio.Channel) -> bytes:
    stub = channel.unary_unary(f"/{SERVICE.full_name}/GetSession", None, None)
    raw = await stub(api.GetSessionRequest(session_id=KEEPER).SerializeToString(), timeout=10)
    assert isinstance(raw, bytes)
    return raw


async def store_keeper(channel: grpc.aio.Channel) -> bytes:
    """A persistent, finalized session (Flush and Prune with any arguments leave it)."""
    open_session = channel.unary_unary(f"/{SERVICE.full_name}/OpenSession", None, None)
    request = api.OpenSessionRequest(
        session_id=KEEPER, agent_id="fuzz-keeper-agent", scope=session_pb2.SESSION_SCOPE_PERSISTENT
    )
    await open_session(request.SerializeToString(), timeout=10)
    append = channel.unary_unary(f"/{SERVICE.full_name}/Append", None, None)
    events = run_of(KEEPER)
    for event in events:
        if event.HasField("agent_start"):
            event.agent_start.agent_id = "fuzz-keeper-agent"
    await append(
        api.AppendRequest(writer_id="keeper", events=envelopes(events)).SerializeToString(),
        timeout=10,
    )
    flush = channel.unary_unary(f"/{SERVICE.full_name}/Flush", None, None)
    await flush(api.FlushRequest(session_id=KEEPER).SerializeToString(), timeout=10)
    return await keeper_snapshot(channel)


async def assert_serving(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE.full_name):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_hostile_requests_get_statuses_and_leave_the_server_whole(
    recorder: RunningRecorder,
) -> None:
    loop = asyncio.get_running_loop()
    options = [("grpc.max_send_message_length", 64 * MiB)]
    async with grpc.aio.insecure_channel(recorder.target, options=options) as channel:
        before = await store_keeper(channel)
        rss_before = rss_bytes()

        # 1. random bytes to every method, all at once so hanging streams cost one deadline
        rng = random.Random(20261125)
        payloads = random_payloads(rng)
        jobs = [
            call_raw(
                channel, method, [payload, *payloads[:2]] if method.client_streaming else [payload]
            )
            for method in SERVICE.methods
            for payload in payloads
        ]
        codes = await asyncio.gather(*jobs)
        crashes = [
            (method.name, payload)
            for (method, payload), code in zip(
                [(m, p) for m in SERVICE.methods for p in payloads], codes, strict=True
            )
            if code in CRASH_CODES
        ]
        assert crashes == []

        # 2. mutations of valid runs, through Append and through Record
        def call(coro: Coroutine[Any, Any, T]) -> T:
            return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=30)

        append = channel.unary_unary(f"/{SERVICE.full_name}/Append", None, None)

        async def append_code(data: bytes) -> list[grpc.StatusCode]:
            try:
                await append(as_append(data), timeout=DEADLINE * 3)
            except grpc.aio.AioRpcError as error:
                return [error.code()]
            return [grpc.StatusCode.OK]

        counter = [0]

        @settings(
            max_examples=80,
            deadline=None,
            derandomize=True,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(case=mutated_requests(counter), via_record=st.booleans())
        def check(case: tuple[str, bytes], via_record: bool) -> None:
            mutation, data = case
            send = record_raw(channel, data) if via_record else append_code(data)
            outcomes = call(send)
            assert not CRASH_CODES & set(outcomes), (mutation, outcomes)

        await asyncio.to_thread(check)

        await assert_serving(channel)
        assert await keeper_snapshot(channel) == before
    growth = rss_bytes() - rss_before
    assert growth < 200 * MiB, f"RSS grew by {growth / MiB:.0f} MiB"  # ~16 MiB seen


# -- sizes ----------------------------------------------------------------------------


async def test_a_10_mb_payload_is_stored_and_one_over_the_limit_exhausted(
    recorder: RunningRecorder,
) -> None:
    """The default max_request_bytes (16 MiB) passes 10 MB; the transport refuses more."""
    options = [
        ("grpc.max_send_message_length", 64 * MiB),
        ("grpc.max_receive_message_length", 64 * MiB),
    ]
    async with grpc.aio.insecure_channel(recorder.target, options=options) as channel:
        append = channel.unary_unary(f"/{SERVICE.full_name}/Append", None, None)
        big = run_of("big", text="z" * (10 * MiB))
        request = api.AppendRequest(writer_id="w", events=envelopes(big))
        await append(request.SerializeToString(), timeout=30)
        get = channel.unary_unary(f"/{SERVICE.full_name}/GetSession", None, None)
        raw = await get(api.GetSessionRequest(session_id="big").SerializeToString(), timeout=30)
        assert isinstance(raw, bytes)
        assert b"z" * (10 * MiB) in raw  # stored whole
        too_big = run_of("too-big", text="z" * (Limits().max_request_bytes + 1))
        request = api.AppendRequest(writer_id="w", events=envelopes(too_big))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await append(request.SerializeToString(), timeout=30)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        await assert_serving(channel)


async def test_max_request_bytes_bounds_unary_calls_and_stream_messages(short_tmp: Path) -> None:
    limits = Limits(max_request_bytes=64 * 1024)
    config = ServerConfig(
        db_path=short_tmp / "r.db", listen=f"unix://{short_tmp}/r.sock", limits=limits
    )
    async with (
        RecorderServer(config) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        append = channel.unary_unary(f"/{SERVICE.full_name}/Append", None, None)
        fits = api.AppendRequest(events=envelopes(run_of("s1", "a" * 60_000)))
        await append(as_append(fits.SerializeToString()), timeout=10)
        over = api.AppendRequest(events=envelopes(run_of("s2", "a" * 70_000))).SerializeToString()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await append(as_append(over), timeout=10)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert await record_raw(channel, over) == [grpc.StatusCode.RESOURCE_EXHAUSTED]
        await assert_serving(channel)


async def test_nesting_the_decoder_refuses_is_invalid_argument(recorder: RunningRecorder) -> None:
    """Past protobuf's 100-level cap the request cannot be decoded: INVALID_ARGUMENT."""
    async with grpc.aio.insecure_channel(recorder.target) as channel:
        append = channel.unary_unary(f"/{SERVICE.full_name}/Append", None, None)
        request = api.AppendRequest(events=envelopes(run_of("deep")))
        deepen(request, 150)
        events = request.SerializeToString()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await append(as_append(events), timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (refused.value.details() or "").startswith("request could not be decoded: ")
        assert await record_raw(channel, events) == [grpc.StatusCode.INVALID_ARGUMENT]
