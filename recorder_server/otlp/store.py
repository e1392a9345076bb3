"""SQLite state of OTLP ingest: placed spans, loop keys, open loops, events to deliver.

The tables (storage/schema.py, migration 5) live in the recorder's database file but are
written on a connection of their own, one short transaction per export. Events
are written to the outbox in the same transaction as the state that numbered
them, and leave it only once the writer has committed them: after a crash they
are sent again, and the writer recognises each by (loop_id, sequence).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from agent_recorder.v1 import events_pb2, types_pb2

from recorder_server.otlp.assembler import Changes, LoopState, SpanNode, TraceState
from recorder_server.otlp.mapping import Role
from recorder_server.storage import COMMON_PRAGMAS, connect

T = TypeVar("T")
# (outbox id, loop id, sequence, event, the span it came from or "")
Outgoing = tuple[int, str, int, events_pb2.AgentEvent, str]

_LOOP_COLUMNS = (
    "loop_id, trace_id, session_id, agent_id, next_seq, turns, usage, messages, ended, "
    "touched_us, late, last_ns"
)


class OtlpStore:
    """One connection on one thread; every method runs there in call order."""

    def __init__(self, conn: sqlite3.Connection, thread: ThreadPoolExecutor) -> None:
        self._conn = conn
        self._thread = thread

    @classmethod
    async def open(cls, path: Path) -> OtlpStore:
        """The database must already be migrated (the WriteStore opens it first)."""
        thread = ThreadPoolExecutor(1, thread_name_prefix="recorder-otlp")
        loop = asyncio.get_running_loop()
        conn = await loop.run_in_executor(
            thread,
            lambda: connect(path, COMMON_PRAGMAS, isolation_level=None, check_same_thread=False),
        )
        return cls(conn, thread)

    def _run(self, fn: Callable[..., T], *args: object) -> asyncio.Future[T]:
        return asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def close(self) -> None:
        await self._run(self._conn.close)
        self._thread.shutdown()

    async def load(self, trace_ids: Iterable[str]) -> dict[str, TraceState]:
        return await self._run(_load, self._conn, sorted(set(trace_ids)))

    async def stale_traces(self, touched_before_us: int) -> list[str]:
        """Traces with an open loop that nothing touched since then."""
        sql = "SELECT DISTINCT trace_id FROM otlp_loops WHERE ended = 0 AND touched_us < ?"
        rows = await self._run(_rows, self._conn, sql, (touched_before_us,))
        return [str(row[0]) for row in rows]

    async def has_open_loops(self) -> bool:
        sql = "SELECT 1 FROM otlp_loops WHERE ended = 0 LIMIT 1"
        return bool(await self._run(_rows, self._conn, sql, ()))

    async def save(self, changes: Changes) -> None:
        await self._run(_save, self._conn, changes)

    async def outbox(self) -> list[Outgoing]:
        sql = "SELECT id, loop_id, sequence, event, span FROM otlp_outbox ORDER BY id"
        rows = await self._run(_rows, self._conn, sql, ())
        return [
            (int(i), str(loop), int(seq), events_pb2.AgentEvent.FromString(body), str(span))
            for i, loop, seq, body, span in rows
        ]

    async def delivered(self, ids: Sequence[int]) -> None:
        await self._run(_delete_outbox, self._conn, list(ids))


def _rows(conn: sqlite3.Connection, sql: str, args: Sequence[object]) -> list[Any]:
    return conn.execute(sql, args).fetchall()


def _marks(items: Sequence[object]) -> str:
    return ",".join("?" * len(items))


def _load(conn: sqlite3.Connection, trace_ids: list[str]) -> dict[str, TraceState]:
    traces = {tid: TraceState(tid) for tid in trace_ids}
    for start in range(0, len(trace_ids), 500):
        chunk = trace_ids[start : start + 500]
        where = f"trace_id IN ({_marks(chunk)})"
        spans = "SELECT trace_id, span_id, parent_id, role, loop_id FROM otlp_spans WHERE "
        for tid, sid, parent, role, loop_id in conn.execute(spans + where, chunk):
            traces[tid].spans[sid] = SpanNode(parent, Role(role), loop_id)
        for tid, sid, loop_id in conn.execute(
            "SELECT trace_id, span_id, loop_id FROM otlp_keys WHERE " + where, chunk
        ):
            traces[tid].keys[sid] = loop_id
        for row in conn.execute(f"SELECT {_LOOP_COLUMNS} FROM otlp_loops WHERE " + where, chunk):
            loop = _loop(row)
            traces[loop.trace_id].loops[loop.loop_id] = loop
    return traces


def _loop(row: tuple[object, ...]) -> LoopState:
    (
        loop_id,
        trace_id,
        session,
        agent,
        next_seq,
        turns,
        usage,
        messages,
        ended,
        touched,
        late,
        last,
    ) = row
    assert isinstance(usage, bytes) and isinstance(messages, bytes)
    return LoopState(
        loop_id=str(loop_id),
        trace_id=str(trace_id),
        session_id=str(session),
        agent_id=str(agent),
        next_seq=int(str(next_seq)),
        turns=int(str(turns)),
        usage=types_pb2.Usage.FromString(usage),
        messages=list(events_pb2.AgentEnd.FromString(messages).messages),
        ended=bool(ended),
        touched_us=int(str(touched)),
        late=bool(late),
        last_ns=int(str(last)),
    )


def _loop_row(loop: LoopState) -> tuple[object, ...]:
    messages = events_pb2.AgentEnd(messages=loop.messages).SerializeToString()
    return (
        loop.loop_id,
        loop.trace_id,
        loop.session_id,
        loop.agent_id,
        loop.next_seq,
        loop.turns,
        loop.usage.SerializeToString(),
        messages,
        int(loop.ended),
        loop.touched_us,
        int(loop.late),
        loop.last_ns,
    )


def _save(conn: sqlite3.Connection, changes: Changes) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany(
            "INSERT OR IGNORE INTO otlp_spans (trace_id, span_id, parent_id, role, loop_id) "
            "VALUES (?, ?, ?, ?, ?)",
            [(t, s, n.parent_id, n.role.value, n.loop_id) for t, s, n in changes.spans],
        )
        conn.executemany(
            "INSERT OR REPLACE INTO otlp_keys (trace_id, span_id, loop_id) VALUES (?, ?, ?)",
            changes.keys,
        )
        conn.executemany(
            f"INSERT OR REPLACE INTO otlp_loops ({_LOOP_COLUMNS}) VALUES ({_marks([0] * 12)})",
            [_loop_row(loop) for loop in changes.loops.values()],
        )
        conn.executemany(
            "INSERT INTO otlp_outbox (loop_id, sequence, event, span) VALUES (?, ?, ?, ?)",
            [
                (lid, seq, e.SerializeToString(deterministic=True), span)
                for lid, seq, e, span in changes.envelopes
            ],
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _delete_outbox(conn: sqlite3.Connection, ids: list[int]) -> None:
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        conn.execute(f"DELETE FROM otlp_outbox WHERE id IN ({_marks(chunk)})", chunk)
