"""SQLite persistence of the recording model: schema, writes of a ChangeSet, reads.

Storage knows SQL and protobuf bytes, not gRPC and not the rules. Loops, sessions
and turns are stored as protobuf blobs next to the columns queries filter on;
events are appended once each, never rewritten. Reads assemble a Session by
concatenating stored bytes (protobuf allows repeated fields to be appended), so a
large session is decoded once, in C, instead of event by event in Python.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import chain
from pathlib import Path
from typing import Any, Final, TypeVar

import aiosqlite
from agent_recorder.v1 import events_pb2, session_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from recorder_server.recording import (
    REFUSED,
    ChangeSet,
    LoopState,
    Needed,
    ParallelGroup,
    SessionState,
    Snapshot,
    Stored,
)

SCHEMA_VERSION = 5
T = TypeVar("T")

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
}

# Steps a migration needs beyond SQL, run inside the same transaction after it.
Backfill = Callable[[sqlite3.Connection], None]

LOOP_COLUMNS = (
    "loop_id, session_id, position, status, usage_input, usage_output, usage_reasoning, "
    "usage_cache_read, usage_cache_write, usage_total, record, partial_turn, model, "
    "started_us, ended_us, end_event"
)

# Readers and the writer wait up to 5 s on a locked file instead of failing.
BUSY_TIMEOUT = "PRAGMA busy_timeout = 5000"
# ...except the write connection outside its transactions on the store's thread:
# a small commit on the event loop must never wait for another process's write
# lock (see _begin_at_once). Switching costs ~7 us a pragma, so the store's
# thread pays it once per transaction (_begin_waiting), the event loop never.
NO_WAIT = "PRAGMA busy_timeout = 0"

# Pragmas of every connection.
COMMON_PRAGMAS = (
    BUSY_TIMEOUT,
    # Keep temporary b-trees (sorts, GROUP BY) in memory.
    "PRAGMA temp_store = MEMORY",
)

# Pragmas of the one write connection.
WRITER_PRAGMAS = (
    # WAL: readers never block the writer and the writer never blocks readers.
    "PRAGMA journal_mode = WAL",
    # NORMAL in WAL mode: a commit survives a crash of this process (the kill -9
    # case); FULL would also survive power loss at an fsync per commit.
    "PRAGMA synchronous = {synchronous}",
    # A 16 MiB page cache holds the hot index pages of the append path; events
    # are appended once and rarely read back by the writer, so more only costs
    # memory (64 MiB measured ~50 MB more peak RSS and no faster ingest).
    "PRAGMA cache_size = -16384",
    # The background Checkpointer (checkpoints.py) copies the WAL into the
    # database, so commits do not. A commit checkpoints itself only as a backstop,
    # past 256 MiB of WAL, should the background one fall that far behind.
    "PRAGMA wal_autocheckpoint = 65536",
    # A WAL that grew under a burst is cut back to 64 MiB when it restarts.
    "PRAGMA journal_size_limit = 67108864",
    # Foreign keys are not used; integrity is kept by the writer.
    "PRAGMA foreign_keys = OFF",
)


def ts_us(ts: Timestamp) -> int:
    return ts.seconds * 1_000_000 + ts.nanos // 1000


LOOP_TURNS_FIELD = session_pb2.LoopRecord.DESCRIPTOR.fields_by_name["turns"].number
LOOP_MESSAGES_FIELD = session_pb2.LoopRecord.DESCRIPTOR.fields_by_name["messages"].number
LOOP_EVENTS_FIELD = session_pb2.LoopRecord.DESCRIPTOR.fields_by_name["events"].number
SESSION_LOOPS_FIELD = session_pb2.Session.DESCRIPTOR.fields_by_name["loops"].number


# Pragmas of every read-only connection: the readers' pool and the rules' lookups.
READ_ONLY_PRAGMAS = (
    # A read connection must never write, whatever a query says.
    "PRAGMA query_only = ON",
)


def connect(target: str | Path, pragmas: Iterable[str], **options: Any) -> sqlite3.Connection:
    """A sqlite3 connection with its pragmas applied (closed again if one fails)."""
    conn: sqlite3.Connection = sqlite3.connect(target, **options)
    try:
        for pragma in pragmas:
            conn.execute(pragma)
    except BaseException:
        conn.close()
        raise
    return conn


async def configure(conn: aiosqlite.Connection, pragmas: Iterable[str]) -> None:
    for pragma in pragmas:
        await conn.execute(pragma)


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
        model, started, ended = _loop_facts(record)
        updates.append((model, started, ended, record.loop_id))
    conn.executemany(
        "UPDATE loops SET model = ?, started_us = ?, ended_us = ? WHERE loop_id = ?", updates
    )


BACKFILLS: dict[int, Backfill] = {2: _backfill_v2}


# SQL statements with their parameter rows, built on the event loop, run on the
# store's thread.
Statements = list[tuple[str, list[tuple[object, ...]]]]


# A group whose events are smaller than this commits on the caller's thread when
# the store's thread is idle (see WriteStore.write). Set above the AgentEnd of a
# long loop (it carries every message: 25-80 KB in the bench's mix), whose group
# took 1.3-2 ms on the thread against 0.2-0.6 ms here when the limit was 64 KiB;
# far below the ~1 MB batches of a client catching up, which keep the pipeline.
INLINE_WRITE_BYTES: Final = 256 * 1024


class WriteStore:
    """The write side: one connection on one thread of its own, used by the writer alone.

    Every call runs on that thread, in the order the calls were made, so a read sees
    every write requested before it (committed or not). The writer relies on this to
    apply the rules of the next group while the previous one commits. sqlite3 lets go
    of the GIL while SQLite works, so the event loop keeps running meanwhile. Small
    writes are the exception: they commit at once on the caller's thread.
    """

    def __init__(self, conn: sqlite3.Connection, thread: ThreadPoolExecutor, position: int) -> None:
        self._conn = conn
        self._thread = thread
        self._position = position
        # Calls handed to the thread whose results the event loop has not seen yet.
        self._on_thread = 0
        # The record and partial turn last written for each open loop (see _loop_rows).
        self._written: dict[str, tuple[bytes, bytes | None]] = {}
        # Committed state, read beside the writes (see fetch_committed).
        self._lookup: sqlite3.Connection | None = None

    @classmethod
    async def open(cls, path: Path, synchronous: str = "NORMAL") -> WriteStore:
        thread = ThreadPoolExecutor(1, thread_name_prefix="recorder-store")
        try:
            future = asyncio.get_running_loop().run_in_executor(thread, _connect, path, synchronous)
            conn, position = await future
        except BaseException:
            thread.shutdown()
            raise
        store = cls(conn, thread, position)
        store._lookup = connect(
            f"file:{path}?mode=ro", (*COMMON_PRAGMAS, *READ_ONLY_PRAGMAS), uri=True
        )
        return store

    def _run(self, fn: Callable[..., T], *args: object) -> asyncio.Future[T]:
        future = asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)
        self._on_thread += 1
        future.add_done_callback(self._returned)
        return future

    def _returned(self, _: object) -> None:
        self._on_thread -= 1

    async def close(self) -> None:
        if self._lookup is not None:
            self._lookup.close()
        await self._run(self._conn.close)
        self._thread.shutdown()

    async def begin(self) -> None:
        # What an explicit transaction writes (imports, deletes) is not tracked.
        self._written.clear()
        await self._run(_begin_waiting, self._conn)

    async def commit(self) -> None:
        await self._run(_execute, self._conn, "COMMIT")

    async def rollback(self) -> None:
        self._written.clear()
        await self._run(_rollback, self._conn)

    # -- loading state for the rules ------------------------------------------

    async def load_open(self) -> Snapshot:
        """Every open loop and its session: the state the rules always need."""
        return await self._run(_load_open, self._conn)

    async def fetch(self, snapshot: Snapshot, needed: Needed) -> None:
        """Load what `needed` names into the snapshot (None where it does not exist).

        Read on the write connection, after every write requested before it.
        """
        _merge_found(snapshot, await self._run(_fetch, self._conn, needed))

    def fetch_committed(self, snapshot: Snapshot, needed: Needed) -> None:
        """Like fetch, from the committed state, at once, on the caller's thread.

        For the writer's pipeline: it asks only for what no uncommitted write
        touches, so committed is current. A lookup is a few indexed reads of
        pages the OS has cached (a fraction of a millisecond), where a hop to
        another thread and back cost 10-15 ms of GIL hand-offs while the store's
        thread was writing.

        With nothing on the store's thread and no transaction open, the write
        connection itself holds exactly the committed state, and it reads with a
        warm page cache: SQLite drops a reader's cache whenever another connection
        commits, so the lookup connection starts cold after every write (a new
        loop's lookup in situ: ~350 us there, ~130 us here).
        """
        conn = self._lookup
        if not self._on_thread and not self._conn.in_transaction:
            # Reads in WAL mode never wait for a writer's lock: NO_WAIT is harmless.
            conn = self._conn
        assert conn is not None
        _merge_found(snapshot, _fetch(conn, needed))

    # -- persisting -----------------------------------------------------------

    def write(self, changes: ChangeSet) -> tuple[asyncio.Future[None], int]:
        """Persist a ChangeSet in a transaction of its own (resolves once committed).

        Also returns the bytes of the events written (most of what a group writes),
        for the background checkpointer.

        A small group, with nothing else on the store's thread, commits right here
        instead: its transaction takes ~0.3 ms, while the hop to the thread and back
        (several GIL hand-offs, each up to the switch interval while the event loop
        is busy) added ~1 ms to the median acknowledgement and ~5 ms to its p99 at
        1,000 events/s. Large groups still go to the thread, so the rules of the
        next group run while they commit; so does a small one when SQLite's write
        lock is not free at once, since waiting for it here would stop the loop.
        """
        statements = self._statements(changes)
        nbytes = sum(len(row[4]) for row in changes.events)
        inline = not self._on_thread and nbytes < INLINE_WRITE_BYTES
        if not (inline and _begin_at_once(self._conn)):
            write = self._run(_transaction, self._conn, statements)
            write.add_done_callback(self._forget_written_if_failed)
            return write, nbytes
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        try:
            _commit_begun(self._conn, statements)
        except Exception as exc:
            done.set_exception(exc)
        else:
            done.set_result(None)
        # At once, not as a callback: the next write's rows may be built before
        # the loop would run one.
        self._forget_written_if_failed(done)
        return done, nbytes

    def _forget_written_if_failed(self, write: asyncio.Future[None]) -> None:
        """A failed write may have left any remembered row unwritten: forget them all."""
        if write.cancelled() or write.exception() is not None:
            self._written.clear()

    def catch_up(self) -> asyncio.Future[None]:
        """Copy what the background checkpoint left in the WAL (see checkpoints.py)."""
        return self._run(_execute, self._conn, "PRAGMA wal_checkpoint(PASSIVE)")

    async def persist(self, changes: ChangeSet) -> None:
        """Write one ChangeSet inside the transaction the caller opened."""
        await self._run(_execute_all, self._conn, self._statements(changes))

    def _statements(self, changes: ChangeSet) -> Statements:
        """The rows of a ChangeSet, serialized here so the store thread only runs SQL."""
        statements: Statements = []
        if changes.sessions:
            rows = [_session_row(s.session) for s in changes.sessions.values()]
            statements += insert_statements(INSERT_SESSIONS, rows, ON_SESSION_CONFLICT)
        if changes.loops and (rows := self._loop_rows(changes)):
            statements += insert_statements(INSERT_LOOPS, rows, ON_LOOP_CONFLICT)
        if changes.events:
            statements += insert_statements(INSERT_EVENTS, changes.events)
        if changes.turns:
            rows = [(lid, n, t.SerializeToString()) for lid, n, t in changes.turns]
            statements += insert_statements(INSERT_TURNS, rows)
        if changes.groups:
            rows = [_group_row(gid, sid, g) for gid, (sid, g) in changes.groups.items()]
            statements.append((UPSERT_GROUP, rows))
        if changes.refusal_log:
            rows = [_refusal_row(*entry) for entry in changes.refusal_log]
            statements += insert_statements(INSERT_REFUSALS, rows)
        for sid, ref in changes.pending_refs.items():
            if ref is None:
                statements.append((DELETE_REF, [(sid,)]))
            else:
                statements.append((UPSERT_REF, [(sid, ref.SerializeToString())]))
        return statements

    def _loop_rows(self, changes: ChangeSet) -> list[tuple[object, ...]]:
        """Rows of the loops whose stored columns changed.

        Most batches only add events to a loop, and rewriting its unchanged row
        (its upsert touches three indexes too) was a third of a small commit's
        pages. What each open loop last wrote is remembered as requested: writes
        are requested in commit order, and a failed one forgets everything.
        """
        rows = []
        for loop_id, state in changes.loops.items():
            record = state.record.SerializeToString()
            partial = None if state.partial is None else state.partial.SerializeToString()
            if self._written.get(loop_id) == (record, partial):
                continue
            if state.is_open:
                self._written[loop_id] = (record, partial)
            else:
                self._written.pop(loop_id, None)
            self._position += 1
            rows.append(_loop_row(state, record, partial, self._position))
        return rows

    # -- importing ------------------------------------------------------------

    async def insert_session(self, session: session_pb2.Session) -> int:
        """Write a whole session as given (inside the open transaction); returns its events.

        Rows are the ones the rules would have written: the head without loops,
        each loop without events and turns, turns numbered in order, events under
        their own sequences in loop order (so reads see them in that order).
        """
        head = session_pb2.Session()
        head.CopyFrom(session)
        del head.loops[:]
        del head.refusals[:]
        loops: dict[str, LoopState] = {}
        turns: list[tuple[str, int, session_pb2.Turn]] = []
        events: list[tuple[str, int, str, str, bytes]] = []
        for loop in session.loops:
            record = session_pb2.LoopRecord()
            record.CopyFrom(loop)
            del record.events[:]
            del record.turns[:]
            loops[loop.loop_id] = LoopState(record, turns=len(loop.turns))
            turns += [(loop.loop_id, n, turn) for n, turn in enumerate(loop.turns)]
            for item in loop.events:
                stored = item.refused if item.HasField("refused") else item.event
                kind = REFUSED if item.HasField("refused") else item.event.WhichOneof("event")
                body = stored.SerializeToString(deterministic=True)
                events.append((loop.loop_id, item.sequence, session.session_id, kind or "", body))
        changes = ChangeSet(
            sessions={session.session_id: SessionState(head)},
            loops=loops,
            events=events,
            turns=turns,
            refusal_log=[(session.session_id, r.loop_id, r) for r in session.refusals],
        )
        await self._run(_execute_all, self._conn, self._statements(changes))
        return len(events)

    async def loops_elsewhere(self, session_id: str, loop_ids: Sequence[str]) -> list[str]:
        """Which of these loop ids are stored under another session."""
        return await self._run(_loops_elsewhere, self._conn, session_id, loop_ids)

    # -- control queries ------------------------------------------------------

    async def unfinalized_sessions(self, session_id: str | None) -> list[str]:
        sql = "SELECT session_id FROM sessions WHERE finalized_us IS NULL"
        if session_id is None:
            return await self._run(_column, self._conn, sql, ())
        return await self._run(_column, self._conn, sql + " AND session_id = ?", (session_id,))

    async def session_exists(self, session_id: str) -> bool:
        sql = "SELECT 1 FROM sessions WHERE session_id = ?"
        return bool(await self._run(_column, self._conn, sql, (session_id,)))

    async def latest_session_id(self, agent_id: str) -> str | None:
        sql = (
            "SELECT session_id FROM sessions WHERE agent_id = ? "
            "ORDER BY created_us DESC, session_id DESC LIMIT 1"
        )
        ids = await self._run(_column, self._conn, sql, (agent_id,))
        return str(ids[0]) if ids else None

    async def delete_sessions(self, session_ids: Sequence[str]) -> None:
        statements: Statements = [(sql, [(sid,) for sid in session_ids]) for sql in DELETE_SESSION]
        await self._run(_execute_all, self._conn, statements)

    async def prunable(self, older_than_us: int) -> list[str]:
        """Finalized ephemeral sessions idle since before the cut-off with no open loop."""
        sql = (
            "SELECT s.session_id FROM sessions s WHERE s.scope = ? AND s.last_active_us < ? "
            "AND s.finalized_us IS NOT NULL AND NOT EXISTS (SELECT 1 FROM loops l "
            "WHERE l.session_id = s.session_id AND l.status IN (1, 2))"
        )
        scope = session_pb2.SESSION_SCOPE_EPHEMERAL
        return await self._run(_column, self._conn, sql, (scope, older_than_us))


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
# Rows per multi-row INSERT. The store's thread takes the GIL back after every
# statement step, and while the event loop is busy each take is a wait: with a
# step per row (executemany), the thread spent about half of its time waiting.
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
DELETE_SESSION = (
    "DELETE FROM events WHERE session_id = ?",
    "DELETE FROM refusals WHERE session_id = ?",
    "DELETE FROM turns WHERE loop_id IN (SELECT loop_id FROM loops WHERE session_id = ?)",
    "DELETE FROM loops WHERE session_id = ?",
    "DELETE FROM parallel_groups WHERE session_id = ?",
    "DELETE FROM pending_spawn_refs WHERE child_session_id = ?",
    "DELETE FROM sessions WHERE session_id = ?",
)


# -- on the store's thread ----------------------------------------------------


def _merge_found(snapshot: Snapshot, found: Snapshot) -> None:
    snapshot.loops.update(found.loops)
    snapshot.sessions.update(found.sessions)
    snapshot.pending_refs.update(found.pending_refs)
    snapshot.stored_events.update(found.stored_events)


def _connect(path: Path, synchronous: str) -> tuple[sqlite3.Connection, int]:
    """The write connection, configured and migrated, and the last loop position."""
    pragmas = (p.format(synchronous=synchronous) for p in (*COMMON_PRAGMAS, *WRITER_PRAGMAS))
    conn = connect(path, pragmas, isolation_level=None, check_same_thread=False)
    try:
        migrate(conn)
        row = conn.execute("SELECT COALESCE(MAX(position), 0) FROM loops").fetchone()
        conn.execute(NO_WAIT)
    except BaseException:
        conn.close()
        raise
    return conn, int(row[0])


def _execute(conn: sqlite3.Connection, sql: str) -> None:
    conn.execute(sql)


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def _execute_all(conn: sqlite3.Connection, statements: Statements) -> None:
    for sql, rows in statements:
        conn.executemany(sql, rows)


def _transaction(conn: sqlite3.Connection, statements: Statements) -> None:
    """All of it or nothing: one thread hop for a whole group."""
    _begin_waiting(conn)
    _commit_begun(conn, statements)


def _begin_waiting(conn: sqlite3.Connection) -> None:
    """BEGIN IMMEDIATE on the store's thread, waiting up to the busy timeout for the lock."""
    conn.execute(BUSY_TIMEOUT)
    try:
        conn.execute("BEGIN IMMEDIATE")
    finally:
        conn.execute(NO_WAIT)


def _commit_begun(conn: sqlite3.Connection, statements: Statements) -> None:
    """The rest of a transaction already begun: all of it, or rolled back."""
    try:
        _execute_all(conn, statements)
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise


def _begin_at_once(conn: sqlite3.Connection) -> bool:
    """BEGIN IMMEDIATE if SQLite's write lock is free right now, never waiting for it.

    False when another process holds it (someone's sqlite3 shell in a
    transaction), or when BEGIN fails otherwise: the store's thread then waits
    for the lock, or reports the failure, in a transaction of its own. The
    write connection's busy timeout is 0 here (NO_WAIT).
    """
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.Error:
        return False
    return True


def _column(conn: sqlite3.Connection, sql: str, args: Sequence[object]) -> list[str]:
    return [row[0] for row in conn.execute(sql, args).fetchall()]


def _loops_elsewhere(
    conn: sqlite3.Connection, session_id: str, loop_ids: Sequence[str]
) -> list[str]:
    found: list[str] = []
    for chunk in _chunks(sorted(loop_ids)):
        marks = ",".join("?" * len(chunk))
        sql = f"SELECT loop_id FROM loops WHERE loop_id IN ({marks}) AND session_id != ?"
        found += _column(conn, sql, [*chunk, session_id])
    return found


def _load_open(conn: sqlite3.Connection) -> Snapshot:
    snapshot = Snapshot()
    open_ids = _column(conn, "SELECT loop_id FROM loops WHERE status IN (1, 2)", ())
    loops = _fetch(conn, Needed(frozenset(open_ids), frozenset(), frozenset())).loops
    sessions = {s.record.session_id for s in loops.values() if s is not None}
    found = _fetch(conn, Needed(frozenset(), frozenset(sessions), frozenset()))
    snapshot.loops.update(loops)
    snapshot.sessions.update(found.sessions)
    snapshot.pending_refs.update(found.pending_refs)
    row = conn.execute("SELECT COALESCE(MAX(group_id), 0) FROM parallel_groups").fetchone()
    snapshot.next_group_id = int(row[0]) + 1
    return snapshot


def _fetch(conn: sqlite3.Connection, needed: Needed) -> Snapshot:
    """What `needed` names, as a partial snapshot (None where it does not exist)."""
    found = Snapshot()
    for chunk in _chunks(sorted(needed.loop_ids)):
        _fetch_loops(conn, found, chunk)
    for chunk in _chunks(sorted(needed.session_ids)):
        _fetch_sessions(conn, found, chunk)
    for loop_id, sequence in needed.event_keys:
        row = conn.execute(
            "SELECT kind, body FROM events WHERE loop_id = ? AND sequence = ?", (loop_id, sequence)
        ).fetchone()
        if row is not None:
            found.stored_events[(loop_id, sequence)] = _stored(row[0], bytes(row[1]))
    return found


def _stored(kind: str, body: bytes) -> Stored:
    """What the rules compare a re-sent event with: its bytes, or its slot's refusal."""
    return session_pb2.RefusedEvent.FromString(body) if kind == REFUSED else body


def _refusal_row(
    session_id: str, loop_id: str, refusal: session_pb2.RefusedEvent
) -> tuple[object, ...]:
    body = refusal.SerializeToString(deterministic=True)
    return (session_id, loop_id, ts_us(refusal.refused_at), body)


def _fetch_loops(conn: sqlite3.Connection, found: Snapshot, loop_ids: Sequence[str]) -> None:
    marks = ",".join("?" * len(loop_ids))
    rows = conn.execute(
        f"SELECT l.loop_id, l.record, l.partial_turn, l.end_event, "
        f"(SELECT MAX(sequence) FROM events e WHERE e.loop_id = l.loop_id), "
        f"(SELECT COUNT(*) FROM turns t WHERE t.loop_id = l.loop_id) "
        f"FROM loops l WHERE l.loop_id IN ({marks})",
        loop_ids,
    ).fetchall()
    for loop_id in loop_ids:
        found.loops[loop_id] = None
    for loop_id, record, partial, end_event, last, turns in rows:
        loop = session_pb2.LoopRecord.FromString(record)
        state = LoopState(loop, turns=int(turns), end_event=end_event)
        state.next_seq = 0 if last is None else int(last) + 1
        if partial is not None:
            state.partial = session_pb2.Turn.FromString(partial)
        found.loops[loop_id] = state


def _fetch_sessions(conn: sqlite3.Connection, found: Snapshot, session_ids: Sequence[str]) -> None:
    marks = ",".join("?" * len(session_ids))
    rows = conn.execute(
        f"SELECT session_id, head FROM sessions WHERE session_id IN ({marks})", session_ids
    ).fetchall()
    states = {sid: SessionState(session_pb2.Session.FromString(head)) for sid, head in rows}
    groups = conn.execute(
        f"SELECT group_id, session_id, loop_ids, start_event, end_event FROM parallel_groups "
        f"WHERE session_id IN ({marks}) ORDER BY group_id",
        session_ids,
    ).fetchall()
    for group_id, sid, loop_ids, start, end in groups:
        states[sid].groups.append(
            ParallelGroup(
                group_id,
                json.loads(loop_ids),
                events_pb2.ParallelLoopStart.FromString(start),
                None if end is None else events_pb2.ParallelLoopEnd.FromString(end),
            )
        )
    refs = conn.execute(
        f"SELECT child_session_id, ref FROM pending_spawn_refs WHERE child_session_id IN ({marks})",
        session_ids,
    ).fetchall()
    pending = {sid: session_pb2.SpawnRef.FromString(ref) for sid, ref in refs}
    for sid in session_ids:
        found.sessions[sid] = states.get(sid)
        found.pending_refs[sid] = pending.get(sid)


def _chunks(items: Sequence[str], size: int = 500) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _session_row(session: session_pb2.Session) -> tuple[object, ...]:
    return (
        session.session_id,
        session.agent_id,
        ts_us(session.created_at),
        ts_us(session.last_active_at),
        int(session.scope),
        ts_us(session.finalized_at) if session.HasField("finalized_at") else None,
        session.SerializeToString(),
    )


def _group_row(group_id: int, session_id: str, group: ParallelGroup) -> tuple[object, ...]:
    end = None if group.end is None else group.end.SerializeToString()
    return (group_id, session_id, json.dumps(group.loop_ids), group.start.SerializeToString(), end)


def _loop_row(
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
        *_loop_facts(record),
        state.end_event,
    )


def _loop_facts(record: session_pb2.LoopRecord) -> tuple[str, int, int | None]:
    """The loop columns usage queries filter and group on: model, started, ended."""
    ended = ts_us(record.ended_at) if record.HasField("ended_at") else None
    return record.config.model, ts_us(record.started_at), ended
