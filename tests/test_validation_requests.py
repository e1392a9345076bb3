"""recorder_server.validation, pure: every RPC's request, valid and refused by field.

Random, often broken, requests of every RPC may be refused, never crash the validator.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from agent_recorder.v1 import recorder_service_pb2 as api
from agent_recorder.v1 import session_pb2
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.random_messages import (
    fill,
)
from support.shapes import (
    LIMITS,
    LOOP,
    SESSION,
    Event,
    assert_invalid,
    assert_too_large,
    envelopes,
    full_loop,
    progress,
    ts,
    turn_start,
)

from recorder_client.phi_json import session_from_json
from recorder_server.errors import InvalidArgument, TooLarge
from recorder_server.validation import (
    INT64_MAX,
    MAX_PAGE_SIZE,
    TIMESTAMP_MAX_SECONDS,
    TIMESTAMP_MIN_SECONDS,
    Limits,
    validate_request,
)

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


REQUEST_TYPES = [
    getattr(api, method.input_type.name)
    for method in api.DESCRIPTOR.services_by_name["RecorderService"].methods
]


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), request_type=st.sampled_from(REQUEST_TYPES))
def test_random_requests_pass_or_are_refused_cleanly(
    data: st.DataObject, request_type: type[Message]
) -> None:
    request = request_type()
    fill(request, data, depth=6)
    with contextlib.suppress(InvalidArgument, TooLarge):
        validate_request(request, Limits(max_value_depth=3))
