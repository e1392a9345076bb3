"""A ChangeSet as SQL statements and rows, checked without a database (storage/rows.py)."""

from __future__ import annotations

from agent_recorder.v1 import session_pb2
from support.events import agent_start, progress, ts

from recorder_server.errors import InvalidArgument
from recorder_server.recording import REFUSED, ChangeSet, RecordingOptions, Rules
from recorder_server.storage.rows import (
    INSERT_EVENTS,
    INSERT_REFUSALS,
    INSERT_SESSIONS,
    ROWS_PER_INSERT,
    changeset_statements,
    insert_statements,
    ts_us,
)


def applied(events: list[tuple[int | None, object]]) -> ChangeSet:
    rules = Rules(RecordingOptions())
    items = rules.prepare(events)  # type: ignore[arg-type]
    for loop_id in {item[4] for item in items}:
        rules.snapshot.loops.setdefault(loop_id, None)
    rules.snapshot.sessions.setdefault("s", None)
    rules.snapshot.pending_refs.setdefault("s", None)
    return rules.apply(items, writer_id="w", now=ts(9)).changes


def test_multi_row_inserts_hold_at_most_rows_per_insert_rows() -> None:
    rows = [(n, f"r{n}") for n in range(ROWS_PER_INSERT + 3)]
    (first, first_args), (second, second_args) = insert_statements("INSERT INTO t VALUES ", rows)
    assert first == "INSERT INTO t VALUES " + ", ".join(["(?, ?)"] * ROWS_PER_INSERT)
    assert first_args == [tuple(v for row in rows[:ROWS_PER_INSERT] for v in row)]
    assert second == "INSERT INTO t VALUES (?, ?), (?, ?), (?, ?)"
    assert second_args == [(500, "r500", 501, "r501", 502, "r502")]


def test_a_batch_becomes_session_event_and_refusal_rows() -> None:
    changes = applied(
        [(None, agent_start("s", "s.main.0", at=1)), (None, progress("s.ghost.0", "c", "t", "x"))]
    )
    statements = dict(changeset_statements(changes, []))
    (session_args,) = statements[next(s for s in statements if s.startswith(INSERT_SESSIONS))]
    head = session_pb2.Session(session_id="s", agent_id="agent-a")
    assert session_args[:6] == ("s", "agent-a", ts_us(ts(1)), ts_us(ts(1)), 0, None)
    assert isinstance(session_args[6], bytes)
    assert session_pb2.Session.FromString(session_args[6]).session_id == head.session_id
    (event_args,) = statements[next(s for s in statements if s.startswith(INSERT_EVENTS))]
    assert event_args[:4] == ("s.main.0", 0, "s", "agent_start")
    (refusal_args,) = statements[next(s for s in statements if s.startswith(INSERT_REFUSALS))]
    session_id, loop_id, refused_us, body = refusal_args
    assert (session_id, loop_id, refused_us) == ("s", "s.ghost.0", ts_us(ts(9)))
    assert isinstance(body, bytes)
    assert session_pb2.RefusedEvent.FromString(body).reason == "LOOP_NOT_OPEN"


def test_a_refused_slot_is_an_event_row_of_its_own_kind() -> None:
    rules = Rules(RecordingOptions())
    items = rules.prepare(
        [(None, agent_start("s", "s.main.0", at=1)), (None, progress("s.main.0", "c", "t", "x"))]
    )
    rules.snapshot.loops["s.main.0"] = None
    rules.snapshot.sessions["s"] = None
    rules.snapshot.pending_refs["s"] = None
    fault = InvalidArgument("events[1].event.progress_message.text", "is wrong")
    changes = rules.apply(items, {1: fault}, "w", ts(9)).changes
    statements = dict(changeset_statements(changes, []))
    (event_args,) = statements[next(s for s in statements if s.startswith(INSERT_EVENTS))]
    assert event_args[:4] == ("s.main.0", 0, "s", "agent_start")
    assert event_args[5:9] == ("s.main.0", 1, "s", REFUSED)
    body = event_args[9]
    assert isinstance(body, bytes)
    refusal = session_pb2.RefusedEvent.FromString(body)
    assert (refusal.slot, refusal.reason, refusal.writer_id) == (1, "INVALID_FIELD", "w")
    assert not any(s.startswith(INSERT_REFUSALS) for s in statements)
