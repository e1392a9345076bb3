"""What a ChangeSet becomes in SQL: statements and their rows, pure (no database).

Everything here is built on the event loop from the rules' output; the store's
thread only runs it (connections.py). tests/test_storage_rows.py checks it
without opening a database.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from itertools import chain

from agent_recorder.v1 import session_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from recorder_server.recording import ChangeSet, LoopState, ParallelGroup


def ts_us(ts: Timestamp) -> int:
    return ts.seconds * 1_000_000 + ts.nanos // 1000


# SQL statements with their parameter rows, built on the event loop, run on the
# store's thread.
Statements = list[tuple[str, list[tuple[object, ...]]]]


LOOP_COLUMNS = (
    "loop_id, session_id, position, status, usage_input, usage_output, usage_reasoning, "
    "usage_cache_read, usage_cache_write, usage_total, record, partial_turn, model, "
    "started_us, ended_us, end_event"
)


INSERT_SESSIONS = (
    "INSERT INTO sessions (session_id, agent_id, created_us, last_active_us, scope, "
    "finalized_us, head) VALUES "
)


ON_SESSION_CONFLICT = (
    " ON CONFLICT (session_id) DO UPDATE SET last_active_us = excluded.last_active_us, "
    "scope = excluded.scope, finalized_us = excluded.finalized_us, head = excluded.head"
)


INSERT_LOOPS = f"INSERT INTO loops ({LOOP_COLUMNS}) VALUES "


ON_LOOP_CONFLICT = (
    " ON CONFLICT (loop_id) DO UPDATE SET status = excluded.status, "
    "usage_input = excluded.usage_input, usage_output = excluded.usage_output, "
    "usage_reasoning = excluded.usage_reasoning, "
    "usage_cache_read = excluded.usage_cache_read, "
    "usage_cache_write = excluded.usage_cache_write, "
    "usage_total = excluded.usage_total, record = excluded.record, "
    "partial_turn = excluded.partial_turn, model = excluded.model, "
    "started_us = excluded.started_us, ended_us = excluded.ended_us, "
    "end_event = excluded.end_event"
)


INSERT_EVENTS = "INSERT INTO events (loop_id, sequence, session_id, kind, body) VALUES "


INSERT_TURNS = "INSERT INTO turns (loop_id, turn_no, body) VALUES "


INSERT_REFUSALS = "INSERT INTO refusals (session_id, loop_id, refused_us, body) VALUES "


# Rows per multi-row INSERT: the store's thread waits for the GIL after every
# statement step, so one step per row (executemany) would wait per row.
ROWS_PER_INSERT = 500


def insert_statements(
    prefix: str, rows: Sequence[tuple[object, ...]], suffix: str = ""
) -> Statements:
    """Multi-row INSERTs of `rows`, ROWS_PER_INSERT at a time (see there)."""
    marks = "(" + ", ".join("?" * len(rows[0])) + ")"
    statements: Statements = []
    for first in range(0, len(rows), ROWS_PER_INSERT):
        chunk = rows[first : first + ROWS_PER_INSERT]
        sql = prefix + ", ".join([marks] * len(chunk)) + suffix
        statements.append((sql, [tuple(chain.from_iterable(chunk))]))
    return statements


UPSERT_GROUP = (
    "INSERT INTO parallel_groups VALUES (?, ?, ?, ?, ?) ON CONFLICT (group_id) "
    "DO UPDATE SET end_event = excluded.end_event"
)


UPSERT_REF = "INSERT OR REPLACE INTO pending_spawn_refs VALUES (?, ?)"


DELETE_REF = "DELETE FROM pending_spawn_refs WHERE child_session_id = ?"


# The loops of a session: those stored, and those OTLP ingest assembles (stored only
# once their first events leave its outbox).
_LOOPS_OF_SESSION = (
    "SELECT loop_id FROM loops WHERE session_id = ?1 "
    "UNION SELECT loop_id FROM otlp_loops WHERE session_id = ?1"
)


# A deleted or pruned session leaves nothing behind: not its OTLP ingest state either.
DELETE_SESSION = (
    f"DELETE FROM otlp_outbox WHERE loop_id IN ({_LOOPS_OF_SESSION})",
    f"DELETE FROM otlp_spans WHERE loop_id IN ({_LOOPS_OF_SESSION})",
    f"DELETE FROM otlp_keys WHERE loop_id IN ({_LOOPS_OF_SESSION})",
    "DELETE FROM otlp_loops WHERE session_id = ?",
    "DELETE FROM events WHERE session_id = ?",
    "DELETE FROM refusals WHERE session_id = ?",
    "DELETE FROM turns WHERE loop_id IN (SELECT loop_id FROM loops WHERE session_id = ?)",
    "DELETE FROM loops WHERE session_id = ?",
    "DELETE FROM parallel_groups WHERE session_id = ?",
    "DELETE FROM pending_spawn_refs WHERE child_session_id = ?",
    "DELETE FROM sessions WHERE session_id = ?",
)


def changeset_statements(changes: ChangeSet, loop_rows: list[tuple[object, ...]]) -> Statements:
    """The statements that persist a ChangeSet; `loop_rows` are the loops' rows that
    changed (the store decides which, see WriteStore._loop_rows)."""
    statements: Statements = []
    if changes.sessions:
        rows = [session_row(s.session) for s in changes.sessions.values()]
        statements += insert_statements(INSERT_SESSIONS, rows, ON_SESSION_CONFLICT)
    if loop_rows:
        statements += insert_statements(INSERT_LOOPS, loop_rows, ON_LOOP_CONFLICT)
    if changes.events:
        statements += insert_statements(INSERT_EVENTS, changes.events)
    if changes.turns:
        rows = [(lid, n, t.SerializeToString()) for lid, n, t in changes.turns]
        statements += insert_statements(INSERT_TURNS, rows)
    if changes.groups:
        rows = [group_row(gid, sid, g) for gid, (sid, g) in changes.groups.items()]
        statements.append((UPSERT_GROUP, rows))
    if changes.refusal_log:
        rows = [refusal_row(*entry) for entry in changes.refusal_log]
        statements += insert_statements(INSERT_REFUSALS, rows)
    for sid, ref in changes.pending_refs.items():
        if ref is None:
            statements.append((DELETE_REF, [(sid,)]))
        else:
            statements.append((UPSERT_REF, [(sid, ref.SerializeToString())]))
    return statements


def session_row(session: session_pb2.Session) -> tuple[object, ...]:
    return (
        session.session_id,
        session.agent_id,
        ts_us(session.created_at),
        ts_us(session.last_active_at),
        int(session.scope),
        ts_us(session.finalized_at) if session.HasField("finalized_at") else None,
        session.SerializeToString(),
    )


def group_row(group_id: int, session_id: str, group: ParallelGroup) -> tuple[object, ...]:
    end = None if group.end is None else group.end.SerializeToString()
    return (group_id, session_id, json.dumps(group.loop_ids), group.start.SerializeToString(), end)


def loop_row(
    state: LoopState, blob: bytes, partial: bytes | None, position: int
) -> tuple[object, ...]:
    record = state.record
    usage = record.usage
    return (
        record.loop_id,
        record.session_id,
        position,
        int(record.status),
        usage.input,
        usage.output,
        usage.reasoning,
        usage.cache_read,
        usage.cache_write,
        usage.total_tokens,
        blob,
        partial,
        *loop_facts(record),
        state.end_event,
    )


def loop_facts(record: session_pb2.LoopRecord) -> tuple[str, int, int | None]:
    """The loop columns usage queries filter and group on: model, started, ended."""
    ended = ts_us(record.ended_at) if record.HasField("ended_at") else None
    return record.config.model, ts_us(record.started_at), ended


def refusal_row(
    session_id: str, loop_id: str, refusal: session_pb2.RefusedEvent
) -> tuple[object, ...]:
    body = refusal.SerializeToString(deterministic=True)
    return (session_id, loop_id, ts_us(refusal.refused_at), body)
