"""The phi-json codec against fixtures that use every field and variant of the spec.

tests/data/phi_session_full.json is one session file as the seed runtime writes it;
tests/data/phi_events.jsonl has one event of every type per line. Both are in the
canonical form the runtime writes, so decoding and re-encoding must give them back.
The coverage tests below keep the fixtures honest: when the proto grows a field,
they fail until the fixture (and the codec) use it.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from agent_recorder.v1 import events_pb2, session_pb2, types_pb2
from google.protobuf import struct_pb2, timestamp_pb2
from google.protobuf.message import Message
from hypothesis import given
from hypothesis import strategies as st

from recorder_client.phi_json import (
    PhiJsonError,
    event_from_json,
    event_to_json,
    loop_record_from_json,
    loop_record_to_json,
    message_from_json,
    message_to_json,
    rfc3339_to_timestamp,
    session_from_json,
    session_to_json,
    timestamp_to_rfc3339,
    usage_from_json,
    usage_to_json,
)

DATA = Path(__file__).parent / "data"
SESSION_JSON: dict[str, Any] = json.loads(
    (DATA / "phi_session_full.json").read_text(encoding="utf-8")
)
EVENT_LINES: list[dict[str, Any]] = [
    json.loads(line)
    for line in (DATA / "phi_events.jsonl").read_text(encoding="utf-8").splitlines()
    if line.strip()
]


FORMATIONS: list[dict[str, Any]] = [
    {"Explicit": {"timestamp": "2026-11-01T10:00:00Z"}},
    {"FirstLoop": {"timestamp": "2026-11-01T10:00:00.001Z"}},
]
NULL_PREVIOUS = {
    "InactivityTimeout": {
        "threshold_secs": 0,
        "previous_session_id": None,
        "timestamp": "2026-11-01T10:00:00Z",
    }
}


def fresh_session() -> dict[str, Any]:
    return copy.deepcopy(SESSION_JSON)


def assert_json_equal(actual: Any, expected: Any, path: str = "") -> None:
    """Deep equality with key order ignored and floats compared with a tolerance.

    Booleans never equal numbers here (JSON tells them apart even if Python does not).
    """
    where = path or "<root>"
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{where}: expected object, got {actual!r}"
        assert actual.keys() == expected.keys(), (
            f"{where}: keys differ: extra {sorted(actual.keys() - expected.keys())}, "
            f"missing {sorted(expected.keys() - actual.keys())}"
        )
        for key in expected:
            assert_json_equal(actual[key], expected[key], f"{path}.{key}" if path else key)
    elif isinstance(expected, list):
        assert isinstance(actual, list), f"{where}: expected array, got {actual!r}"
        assert len(actual) == len(expected), f"{where}: length {len(actual)} != {len(expected)}"
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_json_equal(a, e, f"{path}[{i}]")
    elif isinstance(expected, bool) or isinstance(actual, bool):
        assert actual is expected, f"{where}: {actual!r} != {expected!r}"
    elif isinstance(expected, float) or isinstance(actual, float):
        assert isinstance(actual, int | float), f"{where}: {actual!r} is not a number"
        assert math.isclose(actual, expected, rel_tol=1e-9), f"{where}: {actual!r} != {expected!r}"
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"
        assert type(actual) is type(expected), f"{where}: {type(actual)} != {type(expected)}"


def walk(msg: Message) -> Iterator[Message]:
    """Every message nested in `msg`, itself included."""
    yield msg
    for descriptor, value in msg.ListFields():
        if descriptor.message_type is None:
            continue
        if descriptor.message_type.GetOptions().map_entry:
            for item in value.values():
                if isinstance(item, Message):
                    yield from walk(item)
        elif descriptor.is_repeated:
            for item in value:
                yield from walk(item)
        else:
            yield from walk(value)


def ts(text: str) -> timestamp_pb2.Timestamp:
    return rfc3339_to_timestamp(text)


# --- round trips ------------------------------------------------------------------


def test_session_file_round_trips_exactly() -> None:
    assert_json_equal(session_to_json(session_from_json(SESSION_JSON)), SESSION_JSON)


def test_session_survives_the_protobuf_wire() -> None:
    session = session_from_json(SESSION_JSON)
    received = session_pb2.Session.FromString(session.SerializeToString())
    assert received == session
    assert_json_equal(session_to_json(received), SESSION_JSON)


def test_re_encoding_is_a_fixed_point_on_the_protobuf_side() -> None:
    session = session_from_json(SESSION_JSON)
    assert session_from_json(session_to_json(session)) == session


@pytest.mark.parametrize(
    "line", EVENT_LINES, ids=[f"{i}-{line['type']}" for i, line in enumerate(EVENT_LINES)]
)
def test_every_event_line_round_trips(line: dict[str, Any]) -> None:
    event = event_from_json(line)
    assert_json_equal(event_to_json(event), line)
    assert events_pb2.AgentEvent.FromString(event.SerializeToString()) == event


@pytest.mark.parametrize("i", range(len(SESSION_JSON["loops"])))
def test_every_loop_record_round_trips(i: int) -> None:
    loop = SESSION_JSON["loops"][i]
    assert_json_equal(loop_record_to_json(loop_record_from_json(loop)), loop)


def test_every_message_of_the_fixture_round_trips() -> None:
    messages = [m for loop in SESSION_JSON["loops"] for m in loop["messages"]]
    assert len(messages) > 10
    for message in messages:
        assert_json_equal(message_to_json(message_from_json(message)), message)


# --- the fixtures use everything ----------------------------------------------------


def _oneof_members(descriptor: Any, oneof: str) -> set[str]:
    return {f.name for f in descriptor.oneofs_by_name[oneof].fields}


def test_event_lines_cover_every_event_type_and_delta_kind() -> None:
    events = [event_from_json(line) for line in EVENT_LINES]
    kinds = {e.WhichOneof("event") for e in events}
    assert kinds == _oneof_members(events_pb2.AgentEvent.DESCRIPTOR, "event")
    deltas = {
        e.message_update.delta.WhichOneof("delta") for e in events if e.HasField("message_update")
    }
    assert deltas == _oneof_members(events_pb2.MessageDelta.DESCRIPTOR, "delta")
    targets = {e.revert_applied.HasField("target") for e in events if e.HasField("revert_applied")}
    assert targets == {True, False}


def test_session_fixture_sets_every_field_of_every_message_type() -> None:
    """Each field of each agent_recorder message is set (non-default) somewhere.

    The exceptions have no place in phi-json: Session.finalized_at and the refused
    events the recorder keeps (LoopEvent.refused, Session.refusals; an export leaves
    them out). A session has one formation, so the other two kinds come from FORMATIONS.
    """
    sessions = []
    for formation in [SESSION_JSON["formation"], *FORMATIONS]:
        session = fresh_session()
        session["formation"] = formation
        sessions.append(session_from_json(session))
    seen: dict[str, set[str]] = {}
    for msg in (m for session in sessions for m in walk(session)):
        fields = seen.setdefault(msg.DESCRIPTOR.full_name, set())
        fields.update(descriptor.name for descriptor, _ in msg.ListFields())
    ours = {name: names for name, names in seen.items() if name.startswith("agent_recorder.")}
    unused = {
        f"{name}.{f.name}"
        for name in ours
        for f in session_pb2.DESCRIPTOR.pool.FindMessageTypeByName(name).fields
        if f.name not in ours[name]
    }
    assert unused == {
        "agent_recorder.v1.Session.finalized_at",
        "agent_recorder.v1.Session.refusals",
        "agent_recorder.v1.LoopEvent.refused",
    }
    reachable = {
        name
        for name in (d.full_name for d in _reachable(session_pb2.Session.DESCRIPTOR))
        if name.startswith("agent_recorder.")
    }
    refusals = {"agent_recorder.v1.RefusedEvent", "agent_recorder.v1.RefusedEvent.MetadataEntry"}
    assert reachable - refusals <= ours.keys()


def _reachable(descriptor: Any, seen: set[str] | None = None) -> Iterator[Any]:
    seen = set() if seen is None else seen
    if descriptor.full_name in seen:
        return
    seen.add(descriptor.full_name)
    yield descriptor
    for f in descriptor.fields:
        if f.message_type is not None:
            yield from _reachable(f.message_type, seen)


def test_session_fixture_uses_every_enum_value_and_variant() -> None:
    session = session_from_json(SESSION_JSON)
    nested = list(walk(session))

    def used(attr: str, of: type[Message]) -> set[int]:
        return {getattr(m, attr) for m in nested if isinstance(m, of)} - {0}

    def every(enum: Any) -> set[int]:
        return {v.number for v in enum.DESCRIPTOR.values} - {0}

    def kinds(of: type[Message], oneof: str) -> set[str]:
        return {m.WhichOneof(oneof) for m in nested if isinstance(m, of)}

    assert {loop.status for loop in session.loops} == every(session_pb2.LoopStatus)
    assert used("role", types_pb2.AgentMessage) == every(types_pb2.MessageRole)
    assert used("stop_reason", types_pb2.AgentMessage) == every(types_pb2.StopReason)
    assert used("triggered_by", session_pb2.Turn) == every(types_pb2.TurnTrigger)
    oneofs: list[tuple[type[Message], str]] = [
        (types_pb2.ContinuationKind, "kind"),
        (types_pb2.ContentBlock, "block"),
        (struct_pb2.Value, "kind"),
    ]
    for of, oneof in oneofs:
        assert kinds(of, oneof) == _oneof_members(of.DESCRIPTOR, oneof)
    stamps = [m for m in nested if isinstance(m, timestamp_pb2.Timestamp)]
    assert {m.nanos == 0 for m in stamps} == {True, False}
    assert {m.nanos % 1_000_000 for m in stamps if m.nanos} >= {0, 456_789, 1000}


# --- what the decoded protobuf holds --------------------------------------------------


def test_session_level_fields() -> None:
    session = session_from_json(SESSION_JSON)
    assert session.session_id == "5f0c2a9e"
    assert session.created_at == timestamp_pb2.Timestamp(seconds=1793527200)
    assert session.formation.WhichOneof("kind") == "inactivity_timeout"
    timeout = session.formation.inactivity_timeout
    assert (timeout.threshold_secs, timeout.previous_session_id) == (1800, "4e1b0f33")
    assert session.parent_spawn_ref.tool_call_id == "call_9"
    assert session.scope == session_pb2.SESSION_SCOPE_PERSISTENT
    assert not session.HasField("finalized_at")


def test_loop_fields() -> None:
    first, rejected, rerun, branch, compaction = session_from_json(SESSION_JSON).loops
    assert first.continuation_kind.HasField("initial")
    assert not first.HasField("parent_loop_id") and not first.HasField("rejection")
    assert first.metadata.struct_value.fields["user"].struct_value.fields["id"].number_value == 42
    assert first.children_loop_ids == [rejected.loop_id]
    assert first.child_loop_refs[0].child_session_id == "9a8b7c6d"
    assert [e.sequence for e in first.events] == list(range(len(first.events)))

    assert rejected.continuation_kind.HasField("default")
    assert (rejected.status, rejected.rejection) == (
        session_pb2.LOOP_STATUS_REJECTED,
        "PII detected",
    )
    assert not rejected.config.HasField("config_id") and not rejected.config.HasField("name")
    assert not rejected.HasField("metadata")

    assert rerun.continuation_kind.rerun.tag == "2026-11-01T10:03:00Z"
    assert not rerun.HasField("ended_at") and not rerun.HasField("config")
    assert rerun.metadata.string_value == "a plain string"
    assert rerun.parallel_group.is_selected and not branch.parallel_group.is_selected
    assert rerun.parallel_group.selected_config_index == 1

    assert branch.continuation_kind.branch.tag == "2026-11-01T10:03:00.000001Z"
    assert branch.metadata.list_value.values[2].WhichOneof("kind") == "null_value"
    assert compaction.continuation_kind.HasField("compaction")
    assert not compaction.compaction_block.HasField("keep_first")


def test_config_fields() -> None:
    config = session_from_json(SESSION_JSON).loops[0].config
    assert config.api == types_pb2.API_PROTOCOL_ANTHROPIC_MESSAGES
    assert config.thinking_level == types_pb2.THINKING_LEVEL_HIGH
    assert (config.context_window, config.max_tokens, config.reasoning) == (200000, 32000, True)
    assert config.temperature == pytest.approx(0.7)
    assert config.name == "Claude Opus (high)"
    bare = session_from_json(SESSION_JSON).loops[4].config
    assert bare.HasField("context_window") and bare.context_window == 0
    assert bare.HasField("reasoning") and not bare.reasoning
    assert bare.api == types_pb2.API_PROTOCOL_UNSPECIFIED


def test_turn_fields() -> None:
    loop = session_from_json(SESSION_JSON).loops[0]
    first, second = loop.turns
    assert (first.turn_id.loop_id, first.turn_id.turn_index) == (loop.loop_id, 0)
    assert second.turn_id.turn_index == 1
    assert first.triggered_by == types_pb2.TURN_TRIGGER_USER
    assert second.triggered_by == types_pb2.TURN_TRIGGER_CONTINUATION
    assert first.request_payload.fields["max_tokens"].number_value == 32000
    assert not second.HasField("request_payload")
    assert first.output_message.stop_reason == types_pb2.STOP_REASON_TOOL_USE
    assert [m.tool_call_id for m in first.tool_results] == ["call_1", "call_2"]
    assert first.started_at == timestamp_pb2.Timestamp(seconds=1793527200, nanos=250_000_000)
    assert first.ended_at == timestamp_pb2.Timestamp(seconds=1793527202, nanos=123_456_789)


def test_message_fields_and_unknown_keys() -> None:
    user, assistant, tool_result, failed, _, extension, bare_extension = (
        session_from_json(SESSION_JSON).loops[0].messages
    )
    assert user.role == types_pb2.MESSAGE_ROLE_USER
    assert user.timestamp == timestamp_pb2.Timestamp(seconds=1793527200, nanos=250_000_000)
    assert (user.turn_id.turn_index, user.node_id) == (0, 1)
    assert not user.HasField("parent_id")
    assert user.tags.values[0].string_value == "prompt"
    assert user.provenance_hint.fields["source"].string_value == "cli"
    assert user.extra.fields["x_client"].struct_value.fields["ip"].string_value == "127.0.0.1"
    assert [b.WhichOneof("block") for b in user.content] == ["text", "image"]
    assert user.content[1].image.mime_type == "image/png"
    assert user.content[1].extra.fields["detail"].string_value == "high"

    assert [b.WhichOneof("block") for b in assistant.content] == [
        "thinking",
        "thinking",
        "text",
        "tool_call",
        "tool_call",
    ]
    signed, unsigned = assistant.content[0].thinking, assistant.content[1].thinking
    assert signed.HasField("signature") and not unsigned.HasField("signature")
    assert assistant.content[0].extra.fields["redacted"].bool_value is False
    call = assistant.content[3].tool_call
    assert (call.id, call.name) == ("call_1", "list_files")
    assert call.arguments.struct_value.fields["depth"].number_value == 2
    assert assistant.content[3].extra.fields["thoughtSignature"].string_value == "gem-sig-1"
    assert (assistant.model, assistant.provider, assistant.usage.cache_read) == (
        "claude-opus",
        "anthropic",
        1000,
    )
    assert assistant.parent_id == 1
    assert assistant.extra.fields["responseId"].string_value == "msg_01XYZ"
    assert not assistant.HasField("error_message")

    assert tool_result.role == types_pb2.MESSAGE_ROLE_TOOL_RESULT
    assert (tool_result.tool_name, tool_result.is_error) == ("list_files", False)
    assert tool_result.extra.fields["details"].struct_value.fields["entries"].number_value == 3
    assert failed.is_error and not failed.HasField("turn_id") and not failed.HasField("extra")

    assert extension.role == types_pb2.MESSAGE_ROLE_EXTENSION
    assert extension.extension_kind == "ui_update"
    assert extension.extension_data.struct_value.fields["status"].string_value == "running"
    assert extension.extra.fields["display"].bool_value is False
    assert not extension.HasField("timestamp")
    assert bare_extension.extension_data.WhichOneof("kind") == "null_value"

    error = session_from_json(SESSION_JSON).loops[2].messages[0]
    assert error.error_message == "upstream 529: overloaded"


def test_compaction_block_fields() -> None:
    block = session_from_json(SESSION_JSON).loops[0].compaction_block
    assert (block.keep_first.start_turn, block.keep_first.end_turn) == (0, 0)
    assert block.keep_recent.range.start_turn == 1
    assert [m.role for m in block.keep_recent.messages] == [
        types_pb2.MESSAGE_ROLE_ASSISTANT,
        types_pb2.MESSAGE_ROLE_EXTENSION,
    ]
    assert "messages" in block.keep_compacted.fields
    assert block.created_at == timestamp_pb2.Timestamp(seconds=1793527471, nanos=1000)


def test_event_fields() -> None:
    by_type: dict[str, list[events_pb2.AgentEvent]] = {}
    for line in EVENT_LINES:
        by_type.setdefault(line["type"], []).append(event_from_json(line))
    start = by_type["AgentStart"][0].agent_start
    assert start.continuation_kind.HasField("initial")
    assert start.config_snapshot.thinking_level == types_pb2.THINKING_LEVEL_HIGH
    assert not start.HasField("parent_loop_id")
    rerun = by_type["AgentStart"][1].agent_start
    assert rerun.continuation_kind.rerun.tag == "2026-11-01T10:03:00Z"
    assert not rerun.HasField("metadata") and not rerun.HasField("config_snapshot")
    # config_snapshot is left out when unset (serde skip_serializing_if), as the
    # runtime writes it; metadata (a plain Option) is written as null.
    written = event_to_json(by_type["AgentStart"][1])
    assert "config_snapshot" not in written and written["metadata"] is None
    assert [e.message_update.delta.WhichOneof("delta") for e in by_type["MessageUpdate"]] == [
        "thinking",
        "text",
        "tool_call_delta",
    ]
    assert by_type["MessageUpdate"][1].message_update.delta.text == "Let me look."
    spawn = by_type["ToolExecutionEnd"][1].tool_execution_end
    assert (
        spawn.child_loop_id == spawn.result.child_loop_id == "9a8b7c6d.anthropic-claude-haiku-off.0"
    )
    assert spawn.result.details.string_value == "plain string details"
    assert not by_type["ToolExecutionEnd"][0].tool_execution_end.HasField("child_loop_id")
    # ToolResult.child_loop_id is left out when unset (serde skip_serializing_if), the
    # event's own child_loop_id is written as null: as phi-core writes them.
    plain = event_to_json(by_type["ToolExecutionEnd"][0])
    assert "child_loop_id" not in plain["result"] and plain["child_loop_id"] is None
    prun = by_type["PrunApplied"][0].prun_applied
    assert [t.ToMilliseconds() for t in prun.pruned_timestamps] == [1793527202000, 1793527203000]
    assert not by_type["PrunApplied"][1].prun_applied.HasField("memo")
    revert, rejected_revert = (e.revert_applied for e in by_type["RevertApplied"])
    assert (revert.target, list(revert.abandoned_node_ids), revert.category) == (
        7,
        [8, 9, 10],
        "tangent",
    )
    assert not rejected_revert.HasField("target") and not rejected_revert.HasField("summary")
    assert rejected_revert.reason == "no node to revert to"
    end = by_type["ParallelLoopEnd"][0].parallel_loop_end
    assert (end.selected_config_index, end.evaluation_usage.input) == (1, 300)
    assert by_type["TurnRequest"][0].turn_request.payload.fields["stream"].bool_value is True
    rejected_end = by_type["AgentEnd"][1].agent_end
    assert rejected_end.rejection == "PII detected" and not rejected_end.messages


# --- reading what the spec allows, writing what the runtime writes --------------------


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("2026-11-01T10:00:00Z", "2026-11-01T10:00:00Z"),
        ("2026-11-01T11:00:00+01:00", "2026-11-01T10:00:00Z"),
        ("2026-11-01T05:30:00-04:30", "2026-11-01T10:00:00Z"),
        ("2026-11-01T00:30:00+01:00", "2026-10-31T23:30:00Z"),
        ("2026-11-01T10:00:00-00:00", "2026-11-01T10:00:00Z"),
        ("2026-11-01t10:00:00z", "2026-11-01T10:00:00Z"),
        ("2026-11-01 10:00:00Z", "2026-11-01T10:00:00Z"),
        ("2026-11-01T10:00:00.5Z", "2026-11-01T10:00:00.500Z"),
        ("2026-11-01T10:00:00.000Z", "2026-11-01T10:00:00Z"),
        ("2026-11-01T10:00:00.120000Z", "2026-11-01T10:00:00.120Z"),
        ("2026-11-01T10:00:00.000001Z", "2026-11-01T10:00:00.000001Z"),
        ("2026-11-01T10:00:00.123456789Z", "2026-11-01T10:00:00.123456789Z"),
        ("2026-11-01T10:00:00.1234567891234Z", "2026-11-01T10:00:00.123456789Z"),
        ("1969-12-31T23:59:59.5Z", "1969-12-31T23:59:59.500Z"),
        ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00Z"),
        ("9999-12-31T23:59:59.999999999Z", "9999-12-31T23:59:59.999999999Z"),
    ],
)
def test_any_rfc3339_time_is_read_and_written_canonically(text: str, canonical: str) -> None:
    assert timestamp_to_rfc3339(rfc3339_to_timestamp(text)) == canonical
    line = {"type": "TurnStart", "loop_id": "l", "turn_index": 0, "timestamp": text}
    line["triggered_by"] = "User"
    assert event_to_json(event_from_json(line))["timestamp"] == canonical


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-01",
        "2026-11-01T10:00:00",
        "2026-13-01T00:00:00Z",
        "2026-02-30T00:00:00Z",
        "2026-11-01T24:00:00Z",
        "2026-11-01T10:00:60Z",
        "2026-11-01T10:00:00+24:00",
        "2026-11-01T10:00:00.Z",
        "0001-01-01T00:00:00+01:00",
        "\uff12\uff10\uff12\uff16-11-01T10:00:00Z",
        " 2026-11-01T10:00:00Z",
    ],
)
def test_invalid_times_are_refused_with_their_path(text: str) -> None:
    session = fresh_session()
    session["loops"][3]["turns"][0]["ended_at"] = text
    with pytest.raises(PhiJsonError, match=r"^loops\[3\]\.turns\[0\]\.ended_at: "):
        session_from_json(session)


@given(
    st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31)),
    st.integers(-(23 * 60 + 59), 23 * 60 + 59),
)
def test_times_with_offsets_read_as_the_same_instant(moment: datetime, offset: int) -> None:
    aware = moment.replace(tzinfo=timezone(timedelta(minutes=offset)))
    stamp = rfc3339_to_timestamp(aware.isoformat())
    assert stamp.ToDatetime(tzinfo=UTC) == aware
    assert rfc3339_to_timestamp(timestamp_to_rfc3339(stamp)) == stamp


@given(st.integers(-62_135_596_800, 253_402_300_799), st.integers(0, 999_999_999))
def test_timestamps_survive_formatting(seconds: int, nanos: int) -> None:
    stamp = timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)
    assert rfc3339_to_timestamp(timestamp_to_rfc3339(stamp)) == stamp


def test_follow_up_reads_as_continuation() -> None:
    line = {
        "type": "TurnStart",
        "loop_id": "l",
        "turn_index": 3,
        "timestamp": "2026-11-01T10:00:00Z",
    }
    event = event_from_json({**line, "triggered_by": "FollowUp"})
    assert event.turn_start.triggered_by == types_pb2.TURN_TRIGGER_CONTINUATION
    assert event_to_json(event)["triggered_by"] == "Continuation"
    session = fresh_session()
    session["loops"][0]["turns"][1]["triggered_by"] = "FollowUp"
    assert session_to_json(session_from_json(session)) == SESSION_JSON


@pytest.mark.parametrize("absent", ["missing", "null"])
def test_absent_continuation_kind_reads_as_initial(absent: str) -> None:
    session = fresh_session()
    loop = session["loops"][0]
    start = loop["events"][0]["event"]
    for obj in (loop, start):
        if absent == "missing":
            del obj["continuation_kind"]
        else:
            obj["continuation_kind"] = None
    decoded = session_from_json(session)
    assert decoded.loops[0].continuation_kind.HasField("initial")
    assert decoded.loops[0].events[0].event.agent_start.continuation_kind.HasField("initial")
    assert session_to_json(decoded) == SESSION_JSON


def test_unset_continuation_kind_is_written_as_initial() -> None:
    event = event_from_json(EVENT_LINES[0])
    event.agent_start.ClearField("continuation_kind")
    assert event_to_json(event)["continuation_kind"] == "Initial"


def test_serde_defaults_fill_in_missing_keys() -> None:
    session = fresh_session()
    del session["scope"]
    del session["loops"][1]["turns"]
    session["loops"][1]["usage"] = {"input": 5, "output": 6}
    decoded = session_from_json(session)
    assert decoded.scope == session_pb2.SESSION_SCOPE_EPHEMERAL
    assert not decoded.loops[1].turns
    written = session_to_json(decoded)
    assert written["scope"] == "ephemeral"
    assert written["loops"][1]["turns"] == []
    assert written["loops"][1]["usage"] == {
        "input": 5,
        "output": 6,
        "reasoning": 0,
        "cache_read": 0,
        "cache_write": 0,
        "total_tokens": 0,
    }
    assert usage_to_json(usage_from_json({"input": 1, "output": 2})) == {
        "input": 1,
        "output": 2,
        "reasoning": 0,
        "cache_read": 0,
        "cache_write": 0,
        "total_tokens": 0,
    }


def test_null_for_an_omittable_key_is_the_same_as_no_key() -> None:
    session = fresh_session()
    loop = session["loops"][1]
    loop["config"] |= {"name": None, "api": None, "temperature": None}
    loop["compaction_block"] = None
    user = session["loops"][0]["messages"][0]
    user |= {"parentId": None}
    session["loops"][0]["messages"][1]["error_message"] = None
    session["loops"][0]["messages"][1]["content"][1]["signature"] = None
    session["loops"][0]["turns"][1]["request_payload"] = None
    assert session_to_json(session_from_json(session)) == SESSION_JSON


def test_keys_a_struct_does_not_name_are_dropped_like_serde_drops_them() -> None:
    session = fresh_session()
    session["loops"][0]["usage"]["cost"] = {"total": 0.12}
    session["loops"][0]["config"]["api_key"] = "sk-never-exported"
    session["loops"][0]["events"][1]["event"]["note"] = "ignored"
    session["future_field"] = 1
    assert session_to_json(session_from_json(session)) == SESSION_JSON


def test_fields_without_a_phi_json_place_are_not_exported() -> None:
    session = session_from_json(SESSION_JSON)
    session.finalized_at.GetCurrentTime()
    assert "finalized_at" not in session_to_json(session)


API_NAMES = [
    "anthropic_messages",
    "open_ai_completions",
    "open_ai_responses",
    "azure_open_ai_responses",
    "google_generative_ai",
    "google_vertex",
    "bedrock_converse_stream",
]
THINKING_LEVELS = ["off", "minimal", "low", "medium", "high"]


def test_the_name_lists_cover_the_enums() -> None:
    assert {f"API_PROTOCOL_{n.upper()}" for n in API_NAMES} == set(types_pb2.ApiProtocol.keys()) - {
        "API_PROTOCOL_UNSPECIFIED"
    }
    assert {f"THINKING_LEVEL_{n.upper()}" for n in THINKING_LEVELS} == set(
        types_pb2.ThinkingLevel.keys()
    ) - {"THINKING_LEVEL_UNSPECIFIED"}


@pytest.mark.parametrize("name", API_NAMES)
def test_every_api_name_round_trips(name: str) -> None:
    start = copy.deepcopy(EVENT_LINES[0])
    start["config_snapshot"]["api"] = name
    config = event_from_json(start).agent_start.config_snapshot
    assert types_pb2.ApiProtocol.Name(config.api) == f"API_PROTOCOL_{name.upper()}"
    assert_json_equal(event_to_json(event_from_json(start)), start)


@pytest.mark.parametrize("name", THINKING_LEVELS)
def test_every_thinking_level_round_trips(name: str) -> None:
    start = copy.deepcopy(EVENT_LINES[0])
    start["config_snapshot"]["thinking_level"] = name
    config = event_from_json(start).agent_start.config_snapshot
    assert types_pb2.ThinkingLevel.Name(config.thinking_level) == f"THINKING_LEVEL_{name.upper()}"
    assert_json_equal(event_to_json(event_from_json(start)), start)


@pytest.mark.parametrize(
    "formation", [*FORMATIONS, NULL_PREVIOUS], ids=["Explicit", "FirstLoop", "null-previous"]
)
def test_every_formation_kind_round_trips(formation: dict[str, Any]) -> None:
    session = fresh_session()
    session["formation"] = formation
    session["parent_spawn_ref"] = None
    decoded = session_from_json(session)
    assert decoded.formation.WhichOneof("kind") is not None
    assert not decoded.HasField("parent_spawn_ref")
    assert session_to_json(decoded) == session


@pytest.mark.parametrize(
    ("given_", "written"), [(0.7, 0.7), (0.1, 0.1), (1, 1.0), (2.5e-5, 2.5e-5)]
)
def test_temperature_is_written_as_the_runtime_writes_an_f32(given_: float, written: float) -> None:
    start = copy.deepcopy(EVENT_LINES[0])
    start["config_snapshot"]["temperature"] = given_
    out = event_to_json(event_from_json(start))["config_snapshot"]["temperature"]
    assert out == written and isinstance(out, float)


# --- numbers in free-form JSON -----------------------------------------------------


def _args_round_trip(args: Any) -> Any:
    line = {"type": "ToolExecutionStart", "loop_id": "l", "tool_call_id": "c", "tool_name": "t"}
    return event_to_json(event_from_json({**line, "args": args}))["args"]


def test_integers_in_free_form_json_come_back_as_integers() -> None:
    out = _args_round_trip({"n": 3, "neg": -17, "max": 2**53, "min": -(2**53), "zero": 0})
    assert out == {"n": 3, "neg": -17, "max": 2**53, "min": -(2**53), "zero": 0}
    assert all(type(v) is int for v in out.values())


def test_the_documented_limits_of_free_form_numbers() -> None:
    out = _args_round_trip([1.0, 2**53 + 1, 1e300, 0.1, -2.5])
    assert out[0] == 1 and type(out[0]) is int  # the same JSON number, spelled as an integer
    assert out[1] == 2**53  # beyond 2**53 integers are rounded to a double
    assert out[2] == 1e300 and type(out[2]) is float  # too large to be an exact integer
    assert out[3:] == [0.1, -2.5]


# --- errors name the JSON path -------------------------------------------------------

Mutation = Callable[[dict[str, Any]], None]


def _set(path: list[str | int], value: Any) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        target: Any = doc
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = value

    return mutate


def _delete(path: list[str | int]) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        target: Any = doc
        for step in path[:-1]:
            target = target[step]
        del target[path[-1]]

    return mutate


ERROR_CASES: list[tuple[Mutation, str]] = [
    (
        _set(["loops", 2, "turns", 0, "turn_id", "turnIndex"], "0"),
        "loops[2].turns[0].turn_id.turnIndex: expected integer",
    ),
    (_delete(["loops", 0, "status"]), "loops[0].status: missing"),
    (_set(["loops", 1, "status"], "Done"), 'loops[1].status: expected one of "Pending"'),
    (_set(["loops", 1, "status"], None), "loops[1].status: expected one of"),
    (
        _set(["loops", 0, "messages", 1, "content", 3, "type"], "audio"),
        'loops[0].messages[1].content[3].type: expected one of "text"',
    ),
    (_delete(["loops", 0, "messages", 1, "content", 0, "type"]), "content[0].type: missing"),
    (_set(["loops", 0, "messages", 0, "role"], "system"), "loops[0].messages[0].role: expected"),
    (
        _set(["loops", 0, "events", 3, "event", "type"], "Nope"),
        "loops[0].events[3].event.type: expected one of",
    ),
    (_set(["created_at"], "yesterday"), "created_at: expected an RFC 3339 time"),
    (_set(["created_at"], 1793527200), "created_at: expected string, got integer"),
    (
        _set(["formation"], {"Explicit": {"timestamp": "2026-11-01T10:00:00Z"}, "FirstLoop": {}}),
        "formation: expected an object with one key",
    ),
    (_set(["formation"], {"Implicit": {}}), "formation: expected one of Explicit"),
    (
        _delete(["formation", "InactivityTimeout", "threshold_secs"]),
        "formation.InactivityTimeout.threshold_secs: missing",
    ),
    (_set(["loops", 0, "turns", 0, "usage", "input"], -1), "usage.input: integer -1 outside"),
    (
        _set(["loops", 0, "usage", "output"], True),
        "loops[0].usage.output: expected integer, got boolean",
    ),
    (
        _set(["loops", 0, "usage", "reasoning"], None),
        "loops[0].usage.reasoning: expected integer, got null",
    ),
    (_set(["loops", 2, "continuation_kind"], "Rerun"), "loops[2].continuation_kind: expected"),
    (
        _set(["loops", 2, "continuation_kind"], {"Rerun": {}}),
        "loops[2].continuation_kind.Rerun.tag: missing",
    ),
    (
        _set(["loops", 0, "events", 6, "event", "delta"], {"Audio": {"delta": "x"}}),
        "loops[0].events[6].event.delta: expected one of Text",
    ),
    (
        _set(["loops", 0, "events", 6, "event", "delta"], {"Text": {}}),
        "loops[0].events[6].event.delta.Text.delta: missing",
    ),
    (
        _set(["loops", 0, "messages", 0, "timestamp"], 1.5),
        "loops[0].messages[0].timestamp: expected integer, got number",
    ),
    (
        _set(["loops", 0, "messages", 1, "content", 3, "arguments", "x"], math.nan),
        "loops[0].messages[1].content[3].arguments.x: expected a finite number",
    ),
    (
        _set(["loops", 0, "messages", 1, "content", 3, "arguments", "x"], 10**400),
        "arguments.x: integer too large",
    ),
    (
        _set(["loops", 0, "config", "temperature"], "hot"),
        "loops[0].config.temperature: expected number",
    ),
    (_set(["loops", 0, "config", "temperature"], 1e39), "does not fit a 32-bit float"),
    (_set(["loops", 0, "config", "context_window"], 2**32), "config.context_window: integer"),
    (
        _set(["loops", 0, "config", "api"], "openai"),
        'config.api: expected one of "anthropic_messages"',
    ),
    (
        _set(["loops", 0, "turns", 0, "request_payload"], [1]),
        "loops[0].turns[0].request_payload: expected object, got array",
    ),
    (_set(["loops", 0, "messages", 0, "tags"], "x"), "messages[0].tags: expected array"),
    (_set(["loops", 0, "messages", 0, "nodeId"], 2**63), "messages[0].nodeId: integer"),
    (
        _set(["loops", 0, "events", 22, "event", "category"], "oops"),
        'loops[0].events[22].event.category: expected one of "failure"',
    ),
    (
        _set(["loops", 0, "events", 20, "event", "pruned_timestamps"], ["2026-11-01T10:00:00Z"]),
        "pruned_timestamps[0]: expected integer",
    ),
    (_set(["loops", 0, "messages"], {}), "loops[0].messages: expected array, got object"),
    (_set(["loops", 0, "loop_id"], "\ud800"), "loops[0].loop_id: string is not valid Unicode"),
    (_set(["loops", 0, "turns", 0, "turn_id"], None), "loops[0].turns[0].turn_id: expected object"),
    (
        _set(["loops", 0, "turns", 0, "triggered_by"], "Cron"),
        'triggered_by: expected one of "User"',
    ),
    (_set(["scope"], "Persistent"), 'scope: expected one of "ephemeral", "persistent"'),
]


@pytest.mark.parametrize(("mutate", "message"), ERROR_CASES, ids=[m for _, m in ERROR_CASES])
def test_invalid_input_names_the_json_path(mutate: Mutation, message: str) -> None:
    session = fresh_session()
    mutate(session)
    with pytest.raises(PhiJsonError) as caught:
        session_from_json(session)
    assert message in str(caught.value)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("field", "value", "path"),
    [
        ("args", {"\udc00": 1}, r"args\.'\\udc00'"),
        ("args", ["ok", "\ud800"], r"args\[1\]"),
        ("tool_name", "\ud800", "tool_name"),
    ],
)
def test_lone_surrogates_are_refused_with_their_path(field: str, value: Any, path: str) -> None:
    line = {"type": "ToolExecutionStart", "loop_id": "l", "tool_call_id": "c", "tool_name": "t"}
    with pytest.raises(PhiJsonError, match=rf"^{path}: string is not valid Unicode"):
        event_from_json({**line, "args": None, field: value})
    loop_ids = {"type": "ParallelLoopStart", "session_id": "s", "loop_ids": ["a", "\ud800"]}
    with pytest.raises(PhiJsonError, match=r"^loop_ids\[1\]: string is not valid Unicode"):
        event_from_json({**loop_ids, "timestamp": "2026-11-01T10:00:00Z"})


def test_error_cases_point_at_the_values_they_claim() -> None:
    """Guards the hard-coded indices above: they must still name these fixture entries."""
    loop = SESSION_JSON["loops"][0]
    assert loop["events"][6]["event"]["type"] == "MessageUpdate"
    assert loop["events"][20]["event"]["type"] == "PrunApplied"
    assert loop["events"][22]["event"]["type"] == "RevertApplied"
    assert loop["messages"][1]["content"][3]["type"] == "toolCall"


@pytest.mark.parametrize("bad", [[], "event", None, 3])
def test_a_document_that_is_not_an_object_is_refused(bad: Any) -> None:
    for decode in (event_from_json, session_from_json, message_from_json, loop_record_from_json):
        with pytest.raises(PhiJsonError, match=r"^<root>: expected object"):
            decode(bad)


def test_an_event_line_without_type_is_refused() -> None:
    with pytest.raises(PhiJsonError, match=r"^type: missing$"):
        event_from_json({"loop_id": "l", "reason": "r"})
    with pytest.raises(PhiJsonError, match=r"^reason: missing$"):
        event_from_json({"type": "InputRejected", "loop_id": "l"})


def test_messages_that_phi_json_cannot_express_are_refused_on_export() -> None:
    with pytest.raises(PhiJsonError, match=r"^created_at: not set$"):
        session_to_json(session_pb2.Session())
    with pytest.raises(PhiJsonError, match=r"^<root>: no event set$"):
        event_to_json(events_pb2.AgentEvent())
    with pytest.raises(PhiJsonError, match=r"^role: not set$"):
        message_to_json(types_pb2.AgentMessage())
    session = session_from_json(SESSION_JSON)
    session.loops[1].status = session_pb2.LOOP_STATUS_UNSPECIFIED
    with pytest.raises(PhiJsonError, match=r"^loops\[1\]\.status: not set$"):
        session_to_json(session)
    session = session_from_json(SESSION_JSON)
    session.loops[0].messages[0].ClearField("timestamp")
    with pytest.raises(PhiJsonError, match=r"^loops\[0\]\.messages\[0\]\.timestamp: not set$"):
        session_to_json(session)
    session = session_from_json(SESSION_JSON)
    session.loops[0].messages[0].extra.fields["content"].string_value = "shadow"
    with pytest.raises(PhiJsonError, match=r"messages\[0\]\.content: extra key shadows"):
        session_to_json(session)
    message = message_from_json(SESSION_JSON["loops"][0]["messages"][1])
    message.content[3].tool_call.arguments.number_value = math.inf
    with pytest.raises(PhiJsonError, match=r"^content\[3\]\.arguments: non-finite"):
        message_to_json(message)
    event = event_from_json(EVENT_LINES[1])
    event.turn_start.timestamp.nanos = -1
    with pytest.raises(PhiJsonError, match=r"^timestamp: invalid timestamp"):
        event_to_json(event)


# --- property: generated events round-trip ---------------------------------------------

_text = st.text(max_size=12)
_json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text
)
_json = st.recursive(
    _json_leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=12,
)
_times = st.builds(
    lambda s, n: timestamp_to_rfc3339(timestamp_pb2.Timestamp(seconds=s, nanos=n)),
    st.integers(-62_135_596_800, 253_402_300_799),
    st.integers(0, 999_999_999),
)
_u64 = st.integers(0, 2**64 - 1)
_usage = st.fixed_dictionaries(
    {k: _u64 for k in ("input", "output", "reasoning", "cache_read", "cache_write", "total_tokens")}
)
_MESSAGE_KEYS = {
    "role", "content", "timestamp", "stopReason", "model", "provider", "usage", "error_message",
    "toolCallId", "toolName", "isError", "kind", "data", "turnId", "nodeId", "parentId", "tags",
    "provenanceHint", "type", "text", "mimeType", "thinking", "signature", "id", "name",
    "arguments",
}  # fmt: skip
_extra = st.dictionaries(_text.filter(lambda k: k not in _MESSAGE_KEYS), _json, max_size=2)
_block = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": _text}),
    st.fixed_dictionaries({"type": st.just("image"), "data": _text, "mimeType": _text}),
    st.fixed_dictionaries(
        {"type": st.just("thinking"), "thinking": _text}, optional={"signature": _text}
    ),
    st.fixed_dictionaries(
        {"type": st.just("toolCall"), "id": _text, "name": _text, "arguments": _json}
    ),
).flatmap(lambda block: _extra.map(lambda extra: {**extra, **block}))
_annotations = {
    "turnId": st.fixed_dictionaries({"loopId": _text, "turnIndex": st.integers(0, 2**32 - 1)}),
    "nodeId": st.integers(-(2**63), 2**63 - 1),
    "parentId": st.integers(-(2**63), 2**63 - 1),
    "tags": st.lists(_json, max_size=2),
    "provenanceHint": st.dictionaries(_text, _json, max_size=2),
}
_millis = st.integers(0, 253_402_300_799_999)
_message = st.one_of(
    st.fixed_dictionaries(
        {
            "role": st.just("assistant"),
            "content": st.lists(_block, max_size=3),
            "stopReason": st.sampled_from(["stop", "toolUse", "maxTurns", "guardRail", "paused"]),
            "model": _text,
            "provider": _text,
            "usage": _usage,
            "timestamp": _millis,
        },
        optional={"error_message": _text, **_annotations},
    ),
    st.fixed_dictionaries(
        {"role": st.just("user"), "content": st.lists(_block, max_size=3), "timestamp": _millis},
        optional=_annotations,
    ),
    st.fixed_dictionaries(
        {
            "role": st.just("toolResult"),
            "toolCallId": _text,
            "toolName": _text,
            "content": st.lists(_block, max_size=2),
            "isError": st.booleans(),
            "timestamp": _millis,
        },
        optional=_annotations,
    ),
    st.fixed_dictionaries({"role": st.just("extension"), "kind": _text, "data": _json}),
).flatmap(lambda message: _extra.map(lambda extra: {**extra, **message}))
_optional_text = st.none() | _text
_event = st.one_of(
    st.fixed_dictionaries(
        {
            "type": st.just("AgentStart"),
            "agent_id": _text,
            "session_id": _text,
            "loop_id": _text,
            "parent_loop_id": _optional_text,
            "continuation_kind": st.sampled_from(["Initial", "Default", "Compaction"])
            | st.builds(lambda k, t: {k: {"tag": t}}, st.sampled_from(["Rerun", "Branch"]), _text),
            "timestamp": _times,
            "metadata": _json.filter(lambda v: v is not None),
        }
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("TurnRequest"),
            "loop_id": _text,
            "turn_index": st.integers(0, 2**32 - 1),
            "payload": st.dictionaries(_text, _json, max_size=3),
            "timestamp": _times,
        }
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("TurnEnd"),
            "loop_id": _text,
            "message": _message,
            "usage": _usage,
            "timestamp": _times,
            "tool_results": st.lists(_message, max_size=2),
        }
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("MessageUpdate"),
            "loop_id": _text,
            "message": _message,
            "delta": st.builds(
                lambda k, d: {k: {"delta": d}},
                st.sampled_from(["Text", "Thinking", "ToolCallDelta"]),
                _text,
            ),
        }
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("ToolExecutionEnd"),
            "loop_id": _text,
            "tool_call_id": _text,
            "tool_name": _text,
            "result": st.fixed_dictionaries(
                {"content": st.lists(_block, max_size=2), "details": _json},
                optional={"child_loop_id": _text},
            ),
            "is_error": st.booleans(),
            "child_loop_id": _optional_text,
        }
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("PrunApplied"),
            "loop_id": _text,
            "tokens_removed": _u64,
            "messages_removed": _u64,
            "memo": _optional_text,
            "pruned_timestamps": st.lists(_millis, max_size=3),
            "timestamp": _times,
        }
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("RevertApplied"),
            "loop_id": _text,
            "category": st.sampled_from(["failure", "tangent", "completion", "step-summary"]),
            "target": st.none() | st.integers(-(2**63), 2**63 - 1),
            "abandoned_node_ids": st.lists(st.integers(-(2**63), 2**63 - 1), max_size=3),
            "summary": _optional_text,
            "applied": st.booleans(),
            "reason": _optional_text,
            "timestamp": _times,
        }
    ),
)


@given(_event)
def test_generated_events_round_trip(line: dict[str, Any]) -> None:
    event = event_from_json(line)
    assert_json_equal(event_to_json(event), line)
    assert events_pb2.AgentEvent.FromString(event.SerializeToString()) == event
