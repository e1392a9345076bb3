"""The schema: its migrations, in order, and what the stored blobs hold.

Loops, sessions and turns are stored as protobuf blobs next to the columns
queries filter on; events are appended once each, never rewritten. A database is
brought to SCHEMA_VERSION one transaction per step (`migrate`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from agent_recorder.v1 import session_pb2

from recorder_server.storage.rows import loop_facts

SCHEMA_VERSION = 6


MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE sessions (
        session_id TEXT PRIMARY KEY,
        agent_id TEXT NOT NULL,
        created_us INTEGER NOT NULL,
        last_active_us INTEGER NOT NULL,
        scope INTEGER NOT NULL,
        finalized_us INTEGER,
        head BLOB NOT NULL                -- Session without loops
    ) WITHOUT ROWID;
    CREATE INDEX sessions_by_created ON sessions (created_us DESC, session_id DESC);
    CREATE INDEX sessions_by_agent ON sessions (agent_id, created_us DESC, session_id DESC);
    CREATE INDEX sessions_unfinalized ON sessions (session_id) WHERE finalized_us IS NULL;

    CREATE TABLE loops (
        loop_id TEXT PRIMARY KEY,
        session_id TEXT NOT NULL,
        position INTEGER NOT NULL,        -- registration order across the store
        status INTEGER NOT NULL,
        usage_input INTEGER NOT NULL,
        usage_output INTEGER NOT NULL,
        usage_reasoning INTEGER NOT NULL,
        usage_cache_read INTEGER NOT NULL,
        usage_cache_write INTEGER NOT NULL,
        usage_total INTEGER NOT NULL,
        record BLOB NOT NULL,             -- LoopRecord without events and turns
        partial_turn BLOB                 -- the open partial turn, if any
    ) WITHOUT ROWID;
    CREATE INDEX loops_by_session ON loops (session_id, position);
    CREATE INDEX loops_open ON loops (status) WHERE status IN (1, 2);

    CREATE TABLE events (
        cursor INTEGER PRIMARY KEY,       -- global commit order
        loop_id TEXT NOT NULL,
        sequence INTEGER NOT NULL,
        session_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        body BLOB NOT NULL                -- AgentEvent, deterministic encoding
    );
    CREATE UNIQUE INDEX events_by_loop ON events (loop_id, sequence);
    CREATE INDEX events_by_session ON events (session_id, cursor);

    CREATE TABLE turns (
        loop_id TEXT NOT NULL,
        turn_no INTEGER NOT NULL,
        body BLOB NOT NULL,
        PRIMARY KEY (loop_id, turn_no)
    ) WITHOUT ROWID;

    CREATE TABLE parallel_groups (
        group_id INTEGER PRIMARY KEY,
        session_id TEXT NOT NULL,
        loop_ids TEXT NOT NULL,           -- JSON array, config order
        start_event BLOB NOT NULL,
        end_event BLOB
    );
    CREATE INDEX parallel_groups_by_session ON parallel_groups (session_id);

    CREATE TABLE pending_spawn_refs (
        child_session_id TEXT PRIMARY KEY,
        ref BLOB NOT NULL
    ) WITHOUT ROWID;
    """,
    # Usage per model and time range: the model lives inside the record blob, so
    # it gets a column (filled by persist; existing rows by _backfill_v2).
    2: """
    ALTER TABLE loops ADD COLUMN model TEXT NOT NULL DEFAULT '';
    ALTER TABLE loops ADD COLUMN started_us INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE loops ADD COLUMN ended_us INTEGER;
    CREATE INDEX loops_by_started ON loops (started_us);
    """,
    # A loop's messages are stored once, in its AgentEnd event: end_event is that
    # event's sequence, and reads put its messages into the record (see
    # recording.LoopState.end_event). NULL: the record holds its own (rows written
    # before this, imported loops).
    3: """
    ALTER TABLE loops ADD COLUMN end_event INTEGER;
    """,
    # Refused events that hold no loop slot (DESIGN.md §Refusals); those that do
    # are rows of `events` of kind 'refused' whose body is the RefusedEvent.
    4: """
    CREATE TABLE refusals (
        id INTEGER PRIMARY KEY,
        session_id TEXT NOT NULL,         -- '' when the event named no session
        loop_id TEXT NOT NULL,
        refused_us INTEGER NOT NULL,
        body BLOB NOT NULL                -- RefusedEvent
    );
    CREATE INDEX refusals_by_session ON refusals (session_id, id);
    CREATE INDEX events_refused ON events (session_id, cursor) WHERE kind = 'refused';
    """,
    # OTLP ingest's own state (recorder_server/otlp/store.py): spans already placed,
    # the span each loop stands for, loops still assembling, events not yet committed.
    5: """
    CREATE TABLE otlp_spans (
        trace_id TEXT NOT NULL,
        span_id TEXT NOT NULL,
        parent_id TEXT NOT NULL,
        role TEXT NOT NULL,
        loop_id TEXT NOT NULL,
        PRIMARY KEY (trace_id, span_id)
    ) WITHOUT ROWID;
    CREATE TABLE otlp_keys (
        trace_id TEXT NOT NULL,
        span_id TEXT NOT NULL,
        loop_id TEXT NOT NULL,
        PRIMARY KEY (trace_id, span_id)
    ) WITHOUT ROWID;
    CREATE TABLE otlp_loops (
        loop_id TEXT PRIMARY KEY,
        trace_id TEXT NOT NULL,
        session_id TEXT NOT NULL,
        agent_id TEXT NOT NULL,
        next_seq INTEGER NOT NULL,
        turns INTEGER NOT NULL,
        usage BLOB NOT NULL,
        messages BLOB NOT NULL,
        ended INTEGER NOT NULL,
        touched_us INTEGER NOT NULL,
        late INTEGER NOT NULL,
        last_ns INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX otlp_loops_by_trace ON otlp_loops (trace_id);
    CREATE INDEX otlp_loops_open ON otlp_loops (touched_us) WHERE ended = 0;
    CREATE TABLE otlp_outbox (
        id INTEGER PRIMARY KEY,
        loop_id TEXT NOT NULL,
        sequence INTEGER NOT NULL,
        event BLOB NOT NULL,
        span TEXT NOT NULL                -- "trace/span" it came from; '' for a closing
    );
    """,
    # Deleting or pruning a session removes its OTLP state by loop (rows.DELETE_SESSION).
    6: """
    CREATE INDEX otlp_spans_by_loop ON otlp_spans (loop_id);
    CREATE INDEX otlp_keys_by_loop ON otlp_keys (loop_id);
    CREATE INDEX otlp_loops_by_session ON otlp_loops (session_id);
    CREATE INDEX otlp_outbox_by_loop ON otlp_outbox (loop_id);
    """,
}


# Steps a migration needs beyond SQL, run inside the same transaction after it.
Backfill = Callable[[sqlite3.Connection], None]


def migrate(conn: sqlite3.Connection) -> None:
    """Bring the schema to SCHEMA_VERSION, one transaction per step."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise RuntimeError(
            f"database schema version {version} is newer than this server ({SCHEMA_VERSION})"
        )
    for step in range(version + 1, SCHEMA_VERSION + 1):
        conn.executescript(f"BEGIN; {MIGRATIONS[step]};")
        try:
            backfill = BACKFILLS.get(step)
            if backfill is not None:
                backfill(conn)
            conn.execute(f"PRAGMA user_version = {step}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


def _backfill_v2(conn: sqlite3.Connection) -> None:
    """Model and times of loops stored before v2, decoded from their records."""
    updates = []
    for (blob,) in conn.execute("SELECT record FROM loops").fetchall():
        record = session_pb2.LoopRecord.FromString(blob)
        model, started, ended = loop_facts(record)
        updates.append((model, started, ended, record.loop_id))
    conn.executemany(
        "UPDATE loops SET model = ?, started_us = ?, ended_us = ? WHERE loop_id = ?", updates
    )


BACKFILLS: dict[int, Backfill] = {2: _backfill_v2}


# Field numbers of the repeated fields reads append stored bytes to (framing.py).
LOOP_TURNS_FIELD = session_pb2.LoopRecord.DESCRIPTOR.fields_by_name["turns"].number


LOOP_MESSAGES_FIELD = session_pb2.LoopRecord.DESCRIPTOR.fields_by_name["messages"].number


LOOP_EVENTS_FIELD = session_pb2.LoopRecord.DESCRIPTOR.fields_by_name["events"].number


SESSION_LOOPS_FIELD = session_pb2.Session.DESCRIPTOR.fields_by_name["loops"].number
