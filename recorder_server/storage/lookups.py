"""Reading the state the rules consult: open loops at start, and what a batch names.

Run on the write connection (on the store's thread, after every write requested
before) or on the lookup connection (committed state, on the event loop); see
the table in storage/__init__.py.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence

from agent_recorder.v1 import events_pb2, session_pb2

from recorder_server.recording import (
    REFUSED,
    LoopState,
    Needed,
    ParallelGroup,
    SessionState,
    Snapshot,
    Stored,
)


def column(conn: sqlite3.Connection, sql: str, args: Sequence[object]) -> list[str]:
    return [row[0] for row in conn.execute(sql, args).fetchall()]


def loops_elsewhere(
    conn: sqlite3.Connection, session_id: str, loop_ids: Sequence[str]
) -> list[str]:
    found: list[str] = []
    for chunk in _chunks(sorted(loop_ids)):
        marks = ",".join("?" * len(chunk))
        sql = f"SELECT loop_id FROM loops WHERE loop_id IN ({marks}) AND session_id != ?"
        found += column(conn, sql, [*chunk, session_id])
    return found


def load_open_state(conn: sqlite3.Connection) -> Snapshot:
    snapshot = Snapshot()
    open_ids = column(conn, "SELECT loop_id FROM loops WHERE status IN (1, 2)", ())
    loops = fetch_needed(conn, Needed(frozenset(open_ids), frozenset(), frozenset())).loops
    sessions = {s.record.session_id for s in loops.values() if s is not None}
    found = fetch_needed(conn, Needed(frozenset(), frozenset(sessions), frozenset()))
    snapshot.loops.update(loops)
    snapshot.sessions.update(found.sessions)
    snapshot.pending_refs.update(found.pending_refs)
    row = conn.execute("SELECT COALESCE(MAX(group_id), 0) FROM parallel_groups").fetchone()
    snapshot.next_group_id = int(row[0]) + 1
    return snapshot


def fetch_needed(conn: sqlite3.Connection, needed: Needed) -> Snapshot:
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
            found.stored_events[(loop_id, sequence)] = stored_of(row[0], bytes(row[1]))
    return found


def stored_of(kind: str, body: bytes) -> Stored:
    """What the rules compare a re-sent event with: its bytes, or its slot's refusal."""
    return session_pb2.RefusedEvent.FromString(body) if kind == REFUSED else body


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


def merge_found(snapshot: Snapshot, found: Snapshot) -> None:
    snapshot.loops.update(found.loops)
    snapshot.sessions.update(found.sessions)
    snapshot.pending_refs.update(found.pending_refs)
    snapshot.stored_events.update(found.stored_events)
