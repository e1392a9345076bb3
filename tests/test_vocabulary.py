"""The event vocabulary is read from the proto once, and every part uses it."""

from __future__ import annotations

from agent_recorder.v1 import events_pb2

from recorder_server import validation, vocabulary


def test_the_table_reads_the_kinds_from_the_proto() -> None:
    oneof = events_pb2.AgentEvent.DESCRIPTOR.oneofs_by_name["event"]
    assert list(vocabulary.KINDS) == [field.name for field in oneof.fields]
    assert {"parallel_loop_start", "parallel_loop_end"} == vocabulary.SESSION_LEVEL
    assert {"message_start", "message_update", "message_end", "turn_end"} == vocabulary.WITH_MESSAGE
    assert "tool_execution_start" not in vocabulary.TIMESTAMPED
    assert {"agent_start", "agent_end", "turn_end", "revert_applied"} <= vocabulary.TIMESTAMPED


def test_validation_checks_every_kind_of_the_vocabulary() -> None:
    assert set(validation._EVENT_CHECKS) == set(vocabulary.KINDS)
