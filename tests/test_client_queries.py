"""The seed's Session/LoopRecord/Turn helpers over the protobufs (pure, no server)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from agent_recorder.v1 import events_pb2, session_pb2, types_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from recorder_client import (
    all_messages,
    children_of,
    event_loop_id,
    get_loop,
    get_turn,
    has_tool_calls,
    loop_chain_to,
    parallel_siblings,
    root_loops,
    sum_usage,
    total_usage,
    turn_count,
    turn_duration,
    turn_index,
)


def _loop(
    loop_id: str,
    parent: str | None = None,
    *,
    children: tuple[str, ...] = (),
    group: tuple[str, ...] = (),
    usage: types_pb2.Usage | None = None,
) -> session_pb2.LoopRecord:
    record = session_pb2.LoopRecord(
        loop_id=loop_id,
        session_id="s",
        agent_id="agent",
        parent_loop_id=parent,
        children_loop_ids=children,
        usage=usage,
    )
    if group:
        record.parallel_group.all_loop_ids.extend(group)
        record.parallel_group.selected_loop_id = group[0]
    return record


@pytest.fixture
def session() -> session_pb2.Session:
    """root s.c.0 → children s.c.1 and the parallel pair s.p.0/s.p.1; s.c.2's parent is
    in another session; children_loop_ids lists s.p.1 before s.c.1 on purpose."""
    return session_pb2.Session(
        session_id="s",
        agent_id="agent",
        loops=[
            _loop(
                "s.c.0",
                children=("s.p.1", "s.c.1", "s.gone.9"),
                usage=types_pb2.Usage(
                    input=10, output=5, reasoning=1, cache_read=2, cache_write=3, total_tokens=15
                ),
            ),
            _loop(
                "s.c.1",
                "s.c.0",
                usage=types_pb2.Usage(
                    input=100,
                    output=50,
                    reasoning=10,
                    cache_read=20,
                    cache_write=30,
                    total_tokens=150,
                ),
            ),
            _loop("s.c.2", "other.c.0"),
            _loop("s.p.0", "s.c.0", group=("s.p.0", "s.p.1")),
            _loop(
                "s.p.1",
                "s.c.0",
                group=("s.p.0", "s.p.1"),
                usage=types_pb2.Usage(input=1, output=1, total_tokens=2),
            ),
        ],
    )


def _ids(loops: list[session_pb2.LoopRecord]) -> list[str]:
    return [loop.loop_id for loop in loops]


def test_root_loops_are_those_without_a_parent_in_the_session(
    session: session_pb2.Session,
) -> None:
    assert _ids(root_loops(session)) == ["s.c.0", "s.c.2"]
    assert root_loops(session_pb2.Session()) == []


def test_children_of_lists_recorded_children_present_in_session_order(
    session: session_pb2.Session,
) -> None:
    assert _ids(children_of(session, "s.c.0")) == ["s.c.1", "s.p.1"]
    assert children_of(session, "s.c.1") == []
    assert children_of(session, "no.such.loop") == []


def test_parallel_siblings_include_the_loop_itself(session: session_pb2.Session) -> None:
    assert _ids(parallel_siblings(session, "s.p.0")) == ["s.p.0", "s.p.1"]
    assert _ids(parallel_siblings(session, "s.p.1")) == ["s.p.0", "s.p.1"]
    assert parallel_siblings(session, "s.c.0") == []
    assert parallel_siblings(session, "no.such.loop") == []


def test_get_loop(session: session_pb2.Session) -> None:
    found = get_loop(session, "s.c.1")
    assert found is not None
    assert found.loop_id == "s.c.1"
    assert found.parent_loop_id == "s.c.0"
    assert get_loop(session, "s.c.9") is None


def test_loop_chain_to_runs_from_the_root(session: session_pb2.Session) -> None:
    assert loop_chain_to(session, "s.p.1") == ["s.c.0", "s.p.1"]
    assert loop_chain_to(session, "s.c.0") == ["s.c.0"]
    # As in the seed: a parent outside the session ends the chain but is listed,
    # and an unknown target is a chain of itself.
    assert loop_chain_to(session, "s.c.2") == ["other.c.0", "s.c.2"]
    assert loop_chain_to(session, "x.y.1") == ["x.y.1"]


def test_loop_chain_to_stops_on_a_parent_cycle() -> None:
    cyclic = session_pb2.Session(loops=[_loop("s.a.0", "s.a.1"), _loop("s.a.1", "s.a.0")])
    assert loop_chain_to(cyclic, "s.a.0") == ["s.a.1", "s.a.0"]


def test_total_usage_sums_every_field_of_every_loop(session: session_pb2.Session) -> None:
    total = total_usage(session)
    assert total.input == 111
    assert total.output == 56
    assert total.reasoning == 11
    assert total.cache_read == 22
    assert total.cache_write == 33
    assert total.total_tokens == 167
    assert total_usage(session_pb2.Session()) == types_pb2.Usage()


def test_sum_usage_leaves_its_inputs_alone() -> None:
    a = types_pb2.Usage(input=1, total_tokens=1)
    b = types_pb2.Usage(output=2, total_tokens=2)
    total = sum_usage([a, b])
    assert (total.input, total.output, total.total_tokens) == (1, 2, 3)
    assert (a.input, a.output, a.total_tokens) == (1, 0, 1)


def _message(text: str, role: types_pb2.MessageRole.ValueType) -> types_pb2.AgentMessage:
    return types_pb2.AgentMessage(
        role=role, content=[types_pb2.ContentBlock(text=types_pb2.TextContent(text=text))]
    )


def _turn(index: int, *, tools: int = 0) -> session_pb2.Turn:
    return session_pb2.Turn(
        turn_id=types_pb2.TurnId(loop_id="s.c.0", turn_index=index),
        input_messages=[
            _message("question", types_pb2.MESSAGE_ROLE_USER),
            _message("context", types_pb2.MESSAGE_ROLE_USER),
        ],
        output_message=_message("answer", types_pb2.MESSAGE_ROLE_ASSISTANT),
        tool_results=[
            _message(f"result {i}", types_pb2.MESSAGE_ROLE_TOOL_RESULT) for i in range(tools)
        ],
        started_at=Timestamp(seconds=100, nanos=250_000_000),
        ended_at=Timestamp(seconds=102, nanos=500),
    )


def test_get_turn_indexes_by_position_as_the_seed_does() -> None:
    record = session_pb2.LoopRecord(loop_id="s.c.0", turns=[_turn(5), _turn(7)])
    first = get_turn(record, 0)
    second = get_turn(record, 1)
    assert first is not None and turn_index(first) == 5
    assert second is not None and turn_index(second) == 7
    assert get_turn(record, 2) is None
    assert get_turn(record, -1) is None
    assert turn_count(record) == 2
    assert turn_count(session_pb2.LoopRecord()) == 0


def test_turn_duration_is_ended_minus_started_to_the_microsecond() -> None:
    assert turn_duration(_turn(0)) == timedelta(seconds=1, microseconds=750_000)
    assert turn_duration(session_pb2.Turn()) == timedelta(0)


def test_has_tool_calls_means_tool_results_exist() -> None:
    assert has_tool_calls(_turn(0, tools=1)) is True
    assert has_tool_calls(_turn(0)) is False


def test_all_messages_orders_inputs_output_then_tool_results() -> None:
    texts = [m.content[0].text.text for m in all_messages(_turn(0, tools=2))]
    assert texts == ["question", "context", "answer", "result 0", "result 1"]
    roles = [m.role for m in all_messages(_turn(0, tools=1))]
    assert roles == [
        types_pb2.MESSAGE_ROLE_USER,
        types_pb2.MESSAGE_ROLE_USER,
        types_pb2.MESSAGE_ROLE_ASSISTANT,
        types_pb2.MESSAGE_ROLE_TOOL_RESULT,
    ]
    # The seed always includes the output message, even an empty one.
    assert all_messages(session_pb2.Turn()) == [types_pb2.AgentMessage()]


def test_event_loop_id() -> None:
    end = events_pb2.AgentEvent(agent_end=events_pb2.AgentEnd(loop_id="s.c.0"))
    tool = events_pb2.AgentEvent(
        tool_execution_end=events_pb2.ToolExecutionEnd(loop_id="s.c.1", tool_call_id="t")
    )
    parallel = events_pb2.AgentEvent(
        parallel_loop_start=events_pb2.ParallelLoopStart(session_id="s", loop_ids=["s.p.0"])
    )
    assert event_loop_id(end) == "s.c.0"
    assert event_loop_id(tool) == "s.c.1"
    assert event_loop_id(parallel) is None
    with pytest.raises(ValueError, match="no event set"):
        event_loop_id(events_pb2.AgentEvent())
