"""Connections and threads: the one write connection on its own thread, and pragmas.

The writer's WriteStore runs every call on the store's thread, in order; small
writes commit inline on the event loop when SQLite's write lock is free at once.
Which connection, thread and busy timeout each operation uses is the table in
storage/__init__.py.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final, TypeVar

import aiosqlite
from agent_recorder.v1 import session_pb2

from recorder_server.recording import REFUSED, ChangeSet, LoopState, Needed, SessionState, Snapshot
from recorder_server.storage.lookups import (
    column,
    fetch_needed,
    load_open_state,
    loops_elsewhere,
    merge_found,
)
from recorder_server.storage.rows import (
    DELETE_SESSION,
    Statements,
    changeset_statements,
    loop_row,
)
from recorder_server.storage.schema import migrate

T = TypeVar("T")


# Readers and the writer wait up to 5 s on a locked file instead of failing.
BUSY_TIMEOUT = "PRAGMA busy_timeout = 5000"


# ...except the write connection outside the store thread's transactions: a commit
# on the event loop must never wait for another process's lock (_begin_at_once).
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
    # The append path's hot index pages; more only costs memory.
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


# Smaller groups commit inline when the store's thread is idle (WriteStore.write):
# above a long loop's AgentEnd, below the batches of a client catching up.
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
        return await self._run(load_open_state, self._conn)

    async def fetch(self, snapshot: Snapshot, needed: Needed) -> None:
        """Load what `needed` names into the snapshot (None where it does not exist).

        Read on the write connection, after every write requested before it.
        """
        merge_found(snapshot, await self._run(fetch_needed, self._conn, needed))

    def fetch_committed(self, snapshot: Snapshot, needed: Needed) -> None:
        """Like fetch, from the committed state, at once, on the caller's thread.

        For the writer's pipeline: it asks only for what no uncommitted write
        touches, so committed is current. A few indexed reads here cost far less
        than a hop to the busy store's thread and back.

        With nothing on the store's thread and no transaction open, the write
        connection itself holds exactly the committed state, with a warm page
        cache (SQLite drops a reader's cache whenever another connection commits).
        """
        conn = self._lookup
        if not self._on_thread and not self._conn.in_transaction:
            # Reads in WAL mode never wait for a writer's lock: NO_WAIT is harmless.
            conn = self._conn
        assert conn is not None
        merge_found(snapshot, fetch_needed(conn, needed))

    # -- persisting -----------------------------------------------------------

    def write(self, changes: ChangeSet) -> tuple[asyncio.Future[None], int]:
        """Persist a ChangeSet in a transaction of its own (resolves once committed).

        Also returns the bytes of the events written (most of what a group writes),
        for the background checkpointer.

        A small group, with nothing else on the store's thread, commits right here
        instead: its transaction is shorter than the hop to the thread and back.
        Large groups still go to the thread, so the rules of the next group run
        while they commit; so does a small one when SQLite's write lock is not free
        at once, since waiting for it here would stop the loop.
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
        loop_rows = self._loop_rows(changes) if changes.loops else []
        return changeset_statements(changes, loop_rows)

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
            rows.append(loop_row(state, record, partial, self._position))
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
        return await self._run(loops_elsewhere, self._conn, session_id, loop_ids)

    # -- control queries ------------------------------------------------------

    async def unfinalized_sessions(self, session_id: str | None) -> list[str]:
        sql = "SELECT session_id FROM sessions WHERE finalized_us IS NULL"
        if session_id is None:
            return await self._run(column, self._conn, sql, ())
        return await self._run(column, self._conn, sql + " AND session_id = ?", (session_id,))

    async def session_exists(self, session_id: str) -> bool:
        sql = "SELECT 1 FROM sessions WHERE session_id = ?"
        return bool(await self._run(column, self._conn, sql, (session_id,)))

    async def latest_session_id(self, agent_id: str) -> str | None:
        sql = (
            "SELECT session_id FROM sessions WHERE agent_id = ? "
            "ORDER BY created_us DESC, session_id DESC LIMIT 1"
        )
        ids = await self._run(column, self._conn, sql, (agent_id,))
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
        return await self._run(column, self._conn, sql, (scope, older_than_us))


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
