"""The seed's Session, LoopRecord and Turn helpers, as pure functions over the protos.

The protobuf messages are the domain model (no parallel dataclasses), so the
helpers the Rust runtime had as methods live here as functions taking the message.
Each follows the seed's semantics exactly, including its quirks (e.g. `get_turn`
indexes by position, `all_messages` always includes the output message), so code
ported from the runtime behaves the same.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta

from agent_recorder.v1 import events_pb2, session_pb2, types_pb2
from google.protobuf.descriptor import FieldDescriptor


def _names_a_loop(kind: FieldDescriptor) -> bool:
    payload = kind.message_type
    return payload is not None and "loop_id" in payload.fields_by_name


# Kinds that name a session rather than a loop (no loop_id), read from the proto.
_SESSION_LEVEL_EVENTS = frozenset(
    kind.name
    for kind in events_pb2.AgentEvent.DESCRIPTOR.oneofs_by_name["event"].fields
    if not _names_a_loop(kind)
)


def root_loops(session: session_pb2.Session) -> list[session_pb2.LoopRecord]:
    """Loops with no parent inside this session (a cross-session parent still counts as root)."""
    loop_ids = {loop.loop_id for loop in session.loops}
    return [
        loop
        for loop in session.loops
        if not loop.HasField("parent_loop_id") or loop.parent_loop_id not in loop_ids
    ]


def children_of(session: session_pb2.Session, loop_id: str) -> list[session_pb2.LoopRecord]:
    """The loop's children as listed in its children_loop_ids, in session order."""
    record = get_loop(session, loop_id)
    ids = set(record.children_loop_ids) if record is not None else set()
    return [loop for loop in session.loops if loop.loop_id in ids]


def parallel_siblings(session: session_pb2.Session, loop_id: str) -> list[session_pb2.LoopRecord]:
    """Every branch of the loop's parallel group, the loop itself included."""
    record = get_loop(session, loop_id)
    if record is None or not record.HasField("parallel_group"):
        return []
    ids = set(record.parallel_group.all_loop_ids)
    return [loop for loop in session.loops if loop.loop_id in ids]


def get_loop(session: session_pb2.Session, loop_id: str) -> session_pb2.LoopRecord | None:
    return next((loop for loop in session.loops if loop.loop_id == loop_id), None)


def loop_chain_to(session: session_pb2.Session, target_loop_id: str) -> list[str]:
    """Loop ids from the root down to the target.

    As in the seed, a parent outside the session ends the chain but is included.
    Unlike the seed, a parent cycle (only possible in corrupt data) ends the chain
    instead of looping forever.
    """
    chain: list[str] = []
    current: str | None = target_loop_id
    while current is not None and current not in chain:
        chain.append(current)
        record = get_loop(session, current)
        current = (
            record.parent_loop_id
            if record is not None and record.HasField("parent_loop_id")
            else None
        )
    chain.reverse()
    return chain


def total_usage(session: session_pb2.Session) -> types_pb2.Usage:
    """The sum of every loop's usage."""
    return sum_usage(loop.usage for loop in session.loops)


def sum_usage(usages: Iterable[types_pb2.Usage]) -> types_pb2.Usage:
    total = types_pb2.Usage()
    for usage in usages:
        total.input += usage.input
        total.output += usage.output
        total.reasoning += usage.reasoning
        total.cache_read += usage.cache_read
        total.cache_write += usage.cache_write
        total.total_tokens += usage.total_tokens
    return total


def get_turn(loop: session_pb2.LoopRecord, turn_index: int) -> session_pb2.Turn | None:
    """The turn at this position of the loop's turn list (the seed indexes by position)."""
    if 0 <= turn_index < len(loop.turns):
        return loop.turns[turn_index]
    return None


def turn_count(loop: session_pb2.LoopRecord) -> int:
    return len(loop.turns)


def turn_index(turn: session_pb2.Turn) -> int:
    return turn.turn_id.turn_index


def turn_duration(turn: session_pb2.Turn) -> timedelta:
    """ended_at - started_at, to the microsecond (timedelta's precision)."""
    nanos = (turn.ended_at.seconds - turn.started_at.seconds) * 1_000_000_000 + (
        turn.ended_at.nanos - turn.started_at.nanos
    )
    return timedelta(microseconds=nanos // 1000)


def has_tool_calls(turn: session_pb2.Turn) -> bool:
    """Whether the turn has tool results (the seed's definition)."""
    return len(turn.tool_results) > 0


def all_messages(turn: session_pb2.Turn) -> list[types_pb2.AgentMessage]:
    """Inputs, then the output message (always, as in the seed), then tool results."""
    return [*turn.input_messages, turn.output_message, *turn.tool_results]


def event_loop_id(event: events_pb2.AgentEvent) -> str | None:
    """The loop an event belongs to; None for the session-level Parallel* events.

    Raises ValueError for an event with no kind set, which no server would accept.
    """
    return event_kind_and_loop_id(event)[1]


def event_kind_and_loop_id(event: events_pb2.AgentEvent) -> tuple[str, str | None]:
    """The event's oneof kind and its loop (as event_loop_id), from one oneof look-up."""
    kind = event.WhichOneof("event")
    if kind is None:
        raise ValueError("AgentEvent has no event set")
    if kind in _SESSION_LEVEL_EVENTS:
        return kind, None
    loop_id: str = getattr(event, kind).loop_id
    return kind, loop_id
