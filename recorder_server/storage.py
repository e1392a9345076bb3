"""SQLite persistence of the recording model: schema, writes of a ChangeSet, reads.

Storage knows SQL and protobuf bytes, not gRPC and not the rules. Loops, sessions
and turns are stored as protobuf blobs next to the columns queries filter on;
events are appended once each, never rewritten. Reads assemble a Session by
concatenating stored bytes (protobuf allows repeated fields to be appended), so a
large session is decoded once, in C, instead of event by event in Python.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path

import aiosqlite
from agent_recorder.v1 import events_pb2, session_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from recorder_server.recording import (
    ChangeSet,
    LoopState,
    Needed,
    ParallelGroup,
    SessionState,
    Snapshot,
)

SCHEMA_VERSION = 2

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
}

# Steps a migration needs beyond SQL, run inside the same transaction after it.
Backfill = Callable[[aiosqlite.Connection], Awaitable[None]]

LOOP_COLUMNS = (
    "loop_id, session_id, position, status, usage_input, usage_output, usage_reasoning, "
    "usage_cache_read, usage_cache_write, usage_total, record, partial_turn, model, "
    "started_us, ended_us"
)

# Pragmas of every connection.
COMMON_PRAGMAS = (
    # Readers and the writer wait up to 5 s on a locked file instead of failing.
    "PRAGMA busy_timeout = 5000",
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
    # A 64 MiB page cache keeps hot index pages of the append path in memory.
    "PRAGMA cache_size = -65536",
    # Checkpoint the WAL into the database after ~16 MiB of pages, not 4 MiB,
    # so steady ingest does fewer, larger checkpoints.
    "PRAGMA wal_autocheckpoint = 4000",
    # Foreign keys are not used; integrity is kept by the writer.
    "PRAGMA foreign_keys = OFF",
)


def ts_us(ts: Timestamp) -> int:
    return ts.seconds * 1_000_000 + ts.nanos // 1000


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field, ready to append to a message's bytes."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def loop_event_bytes(sequence: int, body: bytes) -> bytes:
    """LoopEvent{sequence, event} encoded without decoding the stored event."""
    return b"\x08" + _varint(sequence) + _field(2, body)


LOOP_TURNS_FIELD = session_pb2.LoopRecord.DESCRIPTOR.fields_by_name["turns"].number
LOOP_EVENTS_FIELD = session_pb2.LoopRecord.DESCRIPTOR.fields_by_name["events"].number
SESSION_LOOPS_FIELD = session_pb2.Session.DESCRIPTOR.fields_by_name["loops"].number


async def configure(conn: aiosqlite.Connection, pragmas: Iterable[str]) -> None:
    for pragma in pragmas:
        await conn.execute(pragma)


async def migrate(conn: aiosqlite.Connection) -> None:
    """Bring the schema to SCHEMA_VERSION, one transaction per step."""
    async with conn.execute("PRAGMA user_version") as cur:
        row = await cur.fetchone()
    version = int(row[0]) if row else 0
    if version > SCHEMA_VERSION:
        raise RuntimeError(
            f"database schema version {version} is newer than this server ({SCHEMA_VERSION})"
        )
    for step in range(version + 1, SCHEMA_VERSION + 1):
        await conn.executescript(f"BEGIN; {MIGRATIONS[step]};")
        try:
            backfill = BACKFILLS.get(step)
            if backfill is not None:
                await backfill(conn)
            await conn.execute(f"PRAGMA user_version = {step}")
            await conn.execute("COMMIT")
        except BaseException:
            await conn.execute("ROLLBACK")
            raise


async def _backfill_v2(conn: aiosqlite.Connection) -> None:
    """Model and times of loops stored before v2, decoded from their records."""
    rows = await conn.execute_fetchall("SELECT record FROM loops")
    updates = []
    for (blob,) in rows:
        record = session_pb2.LoopRecord.FromString(blob)
        model, started, ended = _loop_facts(record)
        updates.append((model, started, ended, record.loop_id))
    await conn.executemany(
        "UPDATE loops SET model = ?, started_us = ?, ended_us = ? WHERE loop_id = ?", updates
    )


BACKFILLS: dict[int, Backfill] = {2: _backfill_v2}


class WriteStore:
    """The write side: owned by the writer task alone."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.conn = conn
        self._position = 0

    @classmethod
    async def open(cls, path: Path, synchronous: str = "NORMAL") -> WriteStore:
        conn = await aiosqlite.connect(path, isolation_level=None)
        await configure(conn, COMMON_PRAGMAS)
        await configure(conn, (p.format(synchronous=synchronous) for p in WRITER_PRAGMAS))
        await migrate(conn)
        store = cls(conn)
        async with conn.execute("SELECT COALESCE(MAX(position), 0) FROM loops") as cur:
            row = await cur.fetchone()
        store._position = int(row[0]) if row else 0
        return store

    async def close(self) -> None:
        await self.conn.close()

    async def begin(self) -> None:
        await self.conn.execute("BEGIN IMMEDIATE")

    async def commit(self) -> None:
        await self.conn.execute("COMMIT")

    async def rollback(self) -> None:
        if self.conn.in_transaction:
            await self.conn.execute("ROLLBACK")

    # -- loading state for the rules ------------------------------------------

    async def load_open(self) -> Snapshot:
        """Every open loop and its session: the state the rules always need."""
        snapshot = Snapshot()
        rows = await self.conn.execute_fetchall("SELECT loop_id FROM loops WHERE status IN (1, 2)")
        await self.fetch(snapshot, Needed(frozenset(r[0] for r in rows), frozenset(), frozenset()))
        sessions = {s.record.session_id for s in snapshot.loops.values() if s is not None}
        await self.fetch(snapshot, Needed(frozenset(), frozenset(sessions), frozenset()))
        async with self.conn.execute(
            "SELECT COALESCE(MAX(group_id), 0) FROM parallel_groups"
        ) as cur:
            row = await cur.fetchone()
        snapshot.next_group_id = (int(row[0]) if row else 0) + 1
        return snapshot

    async def fetch(self, snapshot: Snapshot, needed: Needed) -> None:
        """Load what `needed` names into the snapshot (None where it does not exist)."""
        for chunk in _chunks(sorted(needed.loop_ids)):
            await self._fetch_loops(snapshot, chunk)
        for chunk in _chunks(sorted(needed.session_ids)):
            await self._fetch_sessions(snapshot, chunk)
        for loop_id, sequence in needed.event_keys:
            async with self.conn.execute(
                "SELECT body FROM events WHERE loop_id = ? AND sequence = ?", (loop_id, sequence)
            ) as cur:
                row = await cur.fetchone()
            if row is not None:
                snapshot.stored_events[(loop_id, sequence)] = bytes(row[0])

    async def _fetch_loops(self, snapshot: Snapshot, loop_ids: Sequence[str]) -> None:
        marks = ",".join("?" * len(loop_ids))
        rows = await self.conn.execute_fetchall(
            f"SELECT l.loop_id, l.record, l.partial_turn, "
            f"(SELECT MAX(sequence) FROM events e WHERE e.loop_id = l.loop_id) "
            f"FROM loops l WHERE l.loop_id IN ({marks})",
            loop_ids,
        )
        found = set()
        for loop_id, record, partial, last in rows:
            state = LoopState(session_pb2.LoopRecord.FromString(record))
            state.next_seq = 0 if last is None else int(last) + 1
            if partial is not None:
                state.partial = session_pb2.Turn.FromString(partial)
            snapshot.loops[loop_id] = state
            found.add(loop_id)
        for loop_id in loop_ids:
            if loop_id not in found:
                snapshot.loops[loop_id] = None

    async def _fetch_sessions(self, snapshot: Snapshot, session_ids: Sequence[str]) -> None:
        marks = ",".join("?" * len(session_ids))
        rows = await self.conn.execute_fetchall(
            f"SELECT session_id, head FROM sessions WHERE session_id IN ({marks})", session_ids
        )
        states = {sid: SessionState(session_pb2.Session.FromString(head)) for sid, head in rows}
        groups = await self.conn.execute_fetchall(
            f"SELECT group_id, session_id, loop_ids, start_event, end_event FROM parallel_groups "
            f"WHERE session_id IN ({marks}) ORDER BY group_id",
            session_ids,
        )
        for group_id, sid, loop_ids, start, end in groups:
            states[sid].groups.append(
                ParallelGroup(
                    group_id,
                    json.loads(loop_ids),
                    events_pb2.ParallelLoopStart.FromString(start),
                    None if end is None else events_pb2.ParallelLoopEnd.FromString(end),
                )
            )
        refs = await self.conn.execute_fetchall(
            f"SELECT child_session_id, ref FROM pending_spawn_refs "
            f"WHERE child_session_id IN ({marks})",
            session_ids,
        )
        pending = {sid: session_pb2.SpawnRef.FromString(ref) for sid, ref in refs}
        for sid in session_ids:
            snapshot.sessions[sid] = states.get(sid)
            snapshot.pending_refs[sid] = pending.get(sid)

    # -- persisting -----------------------------------------------------------

    async def persist(self, changes: ChangeSet) -> None:
        """Write one ChangeSet inside the open transaction."""
        conn = self.conn
        if changes.sessions:
            await conn.executemany(
                "INSERT INTO sessions (session_id, agent_id, created_us, last_active_us, scope, "
                "finalized_us, head) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (session_id) DO "
                "UPDATE SET last_active_us = excluded.last_active_us, scope = excluded.scope, "
                "finalized_us = excluded.finalized_us, head = excluded.head",
                [_session_row(s.session) for s in changes.sessions.values()],
            )
        if changes.loops:
            rows = []
            for state in changes.loops.values():
                self._position += 1
                rows.append(_loop_row(state, self._position))
            await conn.executemany(
                f"INSERT INTO loops ({LOOP_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (loop_id) DO UPDATE SET status = excluded.status, "
                "usage_input = excluded.usage_input, usage_output = excluded.usage_output, "
                "usage_reasoning = excluded.usage_reasoning, "
                "usage_cache_read = excluded.usage_cache_read, "
                "usage_cache_write = excluded.usage_cache_write, "
                "usage_total = excluded.usage_total, record = excluded.record, "
                "partial_turn = excluded.partial_turn, model = excluded.model, "
                "started_us = excluded.started_us, ended_us = excluded.ended_us",
                rows,
            )
        if changes.events:
            await conn.executemany(
                "INSERT INTO events (loop_id, sequence, session_id, kind, body) "
                "VALUES (?, ?, ?, ?, ?)",
                changes.events,
            )
        if changes.turns:
            await conn.executemany(
                "INSERT INTO turns (loop_id, turn_no, body) VALUES (?, "
                "(SELECT COUNT(*) FROM turns WHERE loop_id = ?), ?)",
                [(lid, lid, t.SerializeToString()) for lid, t in changes.turns],
            )
        await self._persist_groups_and_refs(changes)

    async def _persist_groups_and_refs(self, changes: ChangeSet) -> None:
        if changes.groups:
            await self.conn.executemany(
                "INSERT INTO parallel_groups VALUES (?, ?, ?, ?, ?) ON CONFLICT (group_id) "
                "DO UPDATE SET end_event = excluded.end_event",
                [
                    (
                        gid,
                        sid,
                        json.dumps(g.loop_ids),
                        g.start.SerializeToString(),
                        None if g.end is None else g.end.SerializeToString(),
                    )
                    for gid, (sid, g) in changes.groups.items()
                ],
            )
        for sid, ref in changes.pending_refs.items():
            if ref is None:
                await self.conn.execute(
                    "DELETE FROM pending_spawn_refs WHERE child_session_id = ?", (sid,)
                )
            else:
                await self.conn.execute(
                    "INSERT OR REPLACE INTO pending_spawn_refs VALUES (?, ?)",
                    (sid, ref.SerializeToString()),
                )

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
        await self.persist(ChangeSet(sessions={session.session_id: SessionState(head)}))
        loops: dict[str, LoopState] = {}
        turns: list[tuple[str, int, bytes]] = []
        events: list[tuple[str, int, str, str, bytes]] = []
        for loop in session.loops:
            record = session_pb2.LoopRecord()
            record.CopyFrom(loop)
            del record.events[:]
            del record.turns[:]
            loops[loop.loop_id] = LoopState(record)
            turns += [(loop.loop_id, n, t.SerializeToString()) for n, t in enumerate(loop.turns)]
            for item in loop.events:
                kind = item.event.WhichOneof("event") or ""
                body = item.event.SerializeToString(deterministic=True)
                events.append((loop.loop_id, item.sequence, session.session_id, kind, body))
        await self.persist(ChangeSet(loops=loops, events=events))
        await self.conn.executemany(
            "INSERT INTO turns (loop_id, turn_no, body) VALUES (?, ?, ?)", turns
        )
        return len(events)

    async def loops_elsewhere(self, session_id: str, loop_ids: Sequence[str]) -> list[str]:
        """Which of these loop ids are stored under another session."""
        found: list[str] = []
        for chunk in _chunks(sorted(loop_ids)):
            marks = ",".join("?" * len(chunk))
            rows = await self.conn.execute_fetchall(
                f"SELECT loop_id FROM loops WHERE loop_id IN ({marks}) AND session_id != ?",
                [*chunk, session_id],
            )
            found += [str(r[0]) for r in rows]
        return found

    # -- control queries ------------------------------------------------------

    async def unfinalized_sessions(self, session_id: str | None) -> list[str]:
        if session_id is not None:
            sql = "SELECT session_id FROM sessions WHERE finalized_us IS NULL AND session_id = ?"
            rows = await self.conn.execute_fetchall(sql, (session_id,))
        else:
            sql = "SELECT session_id FROM sessions WHERE finalized_us IS NULL"
            rows = await self.conn.execute_fetchall(sql)
        return [r[0] for r in rows]

    async def session_exists(self, session_id: str) -> bool:
        async with self.conn.execute(
            "SELECT 1 FROM sessions WHERE session_id = ?", (session_id,)
        ) as cur:
            return await cur.fetchone() is not None

    async def latest_session_id(self, agent_id: str) -> str | None:
        async with self.conn.execute(
            "SELECT session_id FROM sessions WHERE agent_id = ? "
            "ORDER BY created_us DESC, session_id DESC LIMIT 1",
            (agent_id,),
        ) as cur:
            row = await cur.fetchone()
        return None if row is None else str(row[0])

    async def delete_sessions(self, session_ids: Sequence[str]) -> None:
        for sid in session_ids:
            for sql in (
                "DELETE FROM events WHERE session_id = ?",
                "DELETE FROM turns WHERE loop_id IN "
                "(SELECT loop_id FROM loops WHERE session_id = ?)",
                "DELETE FROM loops WHERE session_id = ?",
                "DELETE FROM parallel_groups WHERE session_id = ?",
                "DELETE FROM pending_spawn_refs WHERE child_session_id = ?",
                "DELETE FROM sessions WHERE session_id = ?",
            ):
                await self.conn.execute(sql, (sid,))

    async def prunable(self, older_than_us: int) -> list[str]:
        """Finalized ephemeral sessions idle since before the cut-off with no open loop."""
        rows = await self.conn.execute_fetchall(
            "SELECT s.session_id FROM sessions s WHERE s.scope = ? AND s.last_active_us < ? "
            "AND s.finalized_us IS NOT NULL AND NOT EXISTS (SELECT 1 FROM loops l "
            "WHERE l.session_id = s.session_id AND l.status IN (1, 2))",
            (session_pb2.SESSION_SCOPE_EPHEMERAL, older_than_us),
        )
        return [r[0] for r in rows]


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


def _loop_row(state: LoopState, position: int) -> tuple[object, ...]:
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
        record.SerializeToString(),
        None if state.partial is None else state.partial.SerializeToString(),
        *_loop_facts(record),
    )


def _loop_facts(record: session_pb2.LoopRecord) -> tuple[str, int, int | None]:
    """The loop columns usage queries filter and group on: model, started, ended."""
    ended = ts_us(record.ended_at) if record.HasField("ended_at") else None
    return record.config.model, ts_us(record.started_at), ended
