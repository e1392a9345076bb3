"""Queries over the store on read-only connections that never wait for the writer.

WAL mode lets each read see the last committed state while the writer appends.
Sessions and loops are assembled from stored bytes (see storage.py and
framing.py); a whole session is answered without ever being decoded, except for
each ended loop's AgentEnd event, whose messages are the record's (rule 9).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import aiosqlite
from agent_recorder.v1 import events_pb2, session_pb2, types_pb2
from agent_recorder.v1 import recorder_service_pb2 as api

from recorder_server.cost import PriceBook, Total, total_of
from recorder_server.cost_reads import CostReader
from recorder_server.errors import InvalidArgument, NotFound
from recorder_server.framing import Pieces, StoredEvent
from recorder_server.recording import REFUSED
from recorder_server.storage import (
    COMMON_PRAGMAS,
    LOOP_EVENTS_FIELD,
    LOOP_MESSAGES_FIELD,
    LOOP_TURNS_FIELD,
    READ_ONLY_PRAGMAS,
    SESSION_LOOPS_FIELD,
    configure,
    ts_us,
)

READER_PRAGMAS = (
    *READ_ONLY_PRAGMAS,
    # 16 MiB page cache per reader for repeated reads of the same session.
    "PRAGMA cache_size = -16384",
    # A memory map reads a session's event bodies (overflow pages) faster than read().
    "PRAGMA mmap_size = 1073741824",
)

# 1 for a row whose slot holds a refusal (its body is a RefusedEvent), else 0.
IS_REFUSED = f"kind = '{REFUSED}'"
SESSION_REFUSALS_FIELD = session_pb2.Session.DESCRIPTOR.fields_by_name["refusals"].number

STATUS_FIELDS = {
    session_pb2.LOOP_STATUS_PENDING: "pending",
    session_pb2.LOOP_STATUS_RUNNING: "running",
    session_pb2.LOOP_STATUS_COMPLETED: "completed",
    session_pb2.LOOP_STATUS_REJECTED: "rejected",
    session_pb2.LOOP_STATUS_ABORTED: "aborted",
}


class ReadPool:
    """A few read-only connections, handed out one request at a time."""

    def __init__(self, path: Path, size: int = 4) -> None:
        self.path = path
        self.size = size
        self._idle: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()
        self._all: list[aiosqlite.Connection] = []

    async def open(self) -> None:
        for _ in range(self.size):
            conn = await aiosqlite.connect(f"file:{self.path}?mode=ro", uri=True)
            await configure(conn, COMMON_PRAGMAS)
            await configure(conn, READER_PRAGMAS)
            self._all.append(conn)
            self._idle.put_nowait(conn)

    async def close(self) -> None:
        for conn in self._all:
            await conn.close()
        self._all.clear()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[aiosqlite.Connection]:
        conn = await self._idle.get()
        try:
            yield conn
        finally:
            self._idle.put_nowait(conn)


class Reads:
    """The read queries of the service (rule 11 and the listing/streaming RPCs)."""

    def __init__(self, pool: ReadPool, prices: PriceBook | None = None) -> None:
        self.pool = pool
        self.prices = prices or PriceBook()

    async def session_head(self, session_id: str) -> session_pb2.Session | None:
        """A session without its loops: one small read (spawn-ref walks, summaries)."""
        async with self.pool.connection() as conn:
            rows = list(
                await conn.execute_fetchall(
                    "SELECT head FROM sessions WHERE session_id = ?", (session_id,)
                )
            )
        return session_pb2.Session.FromString(bytes(rows[0][0])) if rows else None

    async def session_bytes(
        self, session_id: str, skip_events: bool, skip_messages: bool = False
    ) -> Pieces:
        """The Session's bytes, assembled from stored bytes without decoding them."""
        async with self.pool.connection() as conn:
            rows = await conn.execute_fetchall(
                "SELECT head FROM sessions WHERE session_id = ?", (session_id,)
            )
            if not rows:
                raise NotFound(f"session {session_id!r} not found", session_id=session_id)
            head = bytes(next(iter(rows))[0])
            loops = await conn.execute_fetchall(
                "SELECT loop_id, record FROM loops WHERE session_id = ? ORDER BY position",
                (session_id,),
            )
            turns: Iterable[tuple[str, bytes]] = ()
            ends: Iterable[tuple[str, bytes]] = ()
            if not skip_messages:
                ends = await conn.execute_fetchall(  # type: ignore[assignment]
                    "SELECT e.loop_id, e.body FROM loops l JOIN events e "
                    "ON e.loop_id = l.loop_id AND e.sequence = l.end_event "
                    "WHERE l.session_id = ?",
                    (session_id,),
                )
                # In the primary key's order: each loop's turns in order, no sort.
                turns = await conn.execute_fetchall(  # type: ignore[assignment]
                    "SELECT loop_id, body FROM turns WHERE loop_id IN "
                    "(SELECT loop_id FROM loops WHERE session_id = ?) ORDER BY loop_id, turn_no",
                    (session_id,),
                )
            events: Iterable[tuple[str, int, int, bytes]] = ()
            if not skip_events:
                events = await conn.execute_fetchall(  # type: ignore[assignment]
                    f"SELECT loop_id, sequence, {IS_REFUSED}, body FROM events "
                    "WHERE session_id = ? ORDER BY cursor",
                    (session_id,),
                )
            refusals = await conn.execute_fetchall(
                "SELECT body FROM refusals WHERE session_id = ? ORDER BY id", (session_id,)
            )
        records = {
            loop_id: Pieces(_without_messages(record) if skip_messages else record)
            for loop_id, record in loops
        }
        for loop_id, body in ends:
            if (record := records.get(loop_id)) is not None:
                _add_end_messages(record, body)
        for loop_id, body in turns:
            if (record := records.get(loop_id)) is not None:
                record.add_field(LOOP_TURNS_FIELD, body)
        for loop_id, sequence, refused, body in events:
            if (record := records.get(loop_id)) is not None:
                record.add_loop_event(LOOP_EVENTS_FIELD, sequence, refused, body)
        session = Pieces(head)
        for loop in records.values():
            session.add_message(SESSION_LOOPS_FIELD, loop)
        for (body,) in refusals:
            session.add_field(SESSION_REFUSALS_FIELD, body)
        return session

    async def get_loop(self, loop_id: str, skip_events: bool) -> session_pb2.LoopRecord:
        async with self.pool.connection() as conn:
            rows = await conn.execute_fetchall(
                "SELECT record, end_event FROM loops WHERE loop_id = ?", (loop_id,)
            )
            if not rows:
                raise NotFound(f"loop {loop_id!r} not found", loop_id=loop_id)
            blob, end_event = next(iter(rows))
            record = Pieces(bytes(blob))
            if end_event is not None:
                for (body,) in await conn.execute_fetchall(
                    "SELECT body FROM events WHERE loop_id = ? AND sequence = ?",
                    (loop_id, end_event),
                ):
                    _add_end_messages(record, body)
            for (body,) in await conn.execute_fetchall(
                "SELECT body FROM turns WHERE loop_id = ? ORDER BY turn_no", (loop_id,)
            ):
                record.add_field(LOOP_TURNS_FIELD, body)
            if not skip_events:
                for sequence, refused, body in await conn.execute_fetchall(
                    f"SELECT sequence, {IS_REFUSED}, body FROM events WHERE loop_id = ? "
                    "ORDER BY sequence",
                    (loop_id,),
                ):
                    record.add_loop_event(LOOP_EVENTS_FIELD, sequence, refused, body)
        return session_pb2.LoopRecord.FromString(record.join())

    async def session_cost(self, session_id: str) -> api.SessionCost:
        """What a session, its loops and turns, and its sub-agent tree cost (cost.py)."""
        async with self.pool.connection() as conn:
            return await CostReader(conn, self.prices).session_cost(session_id)

    async def loop_cost(self, loop_id: str) -> api.LoopCost:
        async with self.pool.connection() as conn:
            rows = await conn.execute_fetchall(
                "SELECT loop_id, record FROM loops WHERE loop_id = ?", (loop_id,)
            )
            priced = await CostReader(conn, self.prices).loops(list(rows))  # type: ignore[arg-type]
        if not priced:
            raise NotFound(f"loop {loop_id!r} not found", loop_id=loop_id)
        return priced[0][1]

    async def list_sessions(
        self, request: api.ListSessionsRequest
    ) -> tuple[list[api.SessionSummary], str]:
        """Newest first by creation, keyset-paged on (created, session_id)."""
        page_size = request.page_size or 50
        where: list[str] = []
        args: list[object] = []
        if request.agent_id:
            where.append("agent_id = ?")
            args.append(request.agent_id)
        if request.HasField("scope"):
            where.append("scope = ?")
            args.append(int(request.scope))
        if request.HasField("since"):
            where.append("last_active_us >= ?")
            args.append(ts_us(request.since))
        if request.page_token:
            created, sid = _decode_token(request.page_token)
            where.append("(created_us < ? OR (created_us = ? AND session_id < ?))")
            args.extend([created, created, sid])
        sql = "SELECT session_id, created_us, head FROM sessions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_us DESC, session_id DESC LIMIT ?"
        args.append(page_size + 1)
        async with self.pool.connection() as conn:
            rows = list(await conn.execute_fetchall(sql, args))
            more = len(rows) > page_size
            rows = rows[:page_size]
            summaries = [_summary(bytes(head)) for _, _, head in rows]
            await self._fill_loop_stats(conn, summaries)
            await self._fill_costs(conn, summaries)
        token = _encode_token(int(rows[-1][1]), str(rows[-1][0])) if more else ""
        return summaries, token

    async def _fill_loop_stats(
        self, conn: aiosqlite.Connection, summaries: list[api.SessionSummary]
    ) -> None:
        if not summaries:
            return
        by_id = {s.session_id: s for s in summaries}
        marks = ",".join("?" * len(by_id))
        rows = await conn.execute_fetchall(
            "SELECT session_id, status, COUNT(*), SUM(usage_input), SUM(usage_output), "
            "SUM(usage_reasoning), SUM(usage_cache_read), SUM(usage_cache_write), "
            f"SUM(usage_total) FROM loops WHERE session_id IN ({marks}) "
            "GROUP BY session_id, status",
            list(by_id),
        )
        for sid, status, count, *usage in rows:
            summary = by_id[sid]
            name = STATUS_FIELDS.get(status)
            if name is not None:
                setattr(summary.loops, name, getattr(summary.loops, name) + count)
            u = summary.usage
            u.input += usage[0]
            u.output += usage[1]
            u.reasoning += usage[2]
            u.cache_read += usage[3]
            u.cache_write += usage[4]
            u.total_tokens += usage[5]

    async def _fill_costs(
        self, conn: aiosqlite.Connection, summaries: list[api.SessionSummary]
    ) -> None:
        """Each session's own cost and its sub-agent tree's."""
        costs = CostReader(conn, self.prices)
        await costs.load_sessions(s.session_id for s in summaries)
        for summary in summaries:
            summary.cost.CopyFrom(costs.session_total(summary.session_id).to_proto())
            tree, _ = await costs.tree(summary.session_id)
            summary.tree_cost.CopyFrom(tree.to_proto())

    async def usage(self, request: api.GetUsageRequest) -> tuple[list[api.UsageRow], Total]:
        """Usage and cost summed per group (UsageGrouping) over loops started in
        [since, until), and the cost of them all."""
        where: list[str] = []
        args: list[object] = []
        if request.agent_id:
            where.append("s.agent_id = ?")
            args.append(request.agent_id)
        if request.HasField("since"):
            where.append("l.started_us >= ?")
            args.append(ts_us(request.since))
        if request.HasField("until"):
            where.append("l.started_us < ?")
            args.append(ts_us(request.until))
        sql = (
            "SELECT s.agent_id, l.model, l.started_us, l.usage_input, l.usage_output, "
            "l.usage_reasoning, l.usage_cache_read, l.usage_cache_write, l.usage_total, "
            "l.loop_id, l.record FROM loops l JOIN sessions s ON s.session_id = l.session_id"
        )
        if where:
            sql += " WHERE " + " AND ".join(where)
        async with self.pool.connection() as conn:
            rows = list(await conn.execute_fetchall(sql, args))
            priced = await CostReader(conn, self.prices).loops([(r[9], r[10]) for r in rows])
        groups: dict[tuple[str, str, str], tuple[api.UsageRow, list[Total]]] = {}
        for row, (_, _, total) in zip(rows, priced, strict=True):
            agent, model, started_us, *tokens = row[:9]
            key = _usage_key(request.group_by, agent, model, started_us)
            if key not in groups:
                groups[key] = (api.UsageRow(agent_id=key[0], model=key[1], day=key[2]), [])
            usage_row, totals = groups[key]
            usage_row.loops += 1
            _add_usage(usage_row.usage, tokens)
            totals.append(total)
        result = []
        for key in sorted(groups):
            usage_row, totals = groups[key]
            usage_row.cost.CopyFrom(total_of(totals).to_proto())
            result.append(usage_row)
        return result, total_of(total for _, _, total in priced)

    async def events_after(
        self, *, session_id: str | None, loop_id: str | None, after_cursor: int, limit: int
    ) -> list[StoredEvent]:
        """A page of stored events in commit order, after a cursor."""
        if loop_id is not None:
            sql = (
                f"SELECT cursor, loop_id, sequence, {IS_REFUSED}, body FROM events "
                "WHERE loop_id = ? AND cursor > ? ORDER BY sequence LIMIT ?"
            )
            key = loop_id
        else:
            sql = (
                f"SELECT cursor, loop_id, sequence, {IS_REFUSED}, body FROM events "
                "WHERE session_id = ? AND cursor > ? ORDER BY cursor LIMIT ?"
            )
            key = session_id or ""
        async with self.pool.connection() as conn:
            rows = await conn.execute_fetchall(sql, (key, after_cursor, limit))
        return list(rows)  # type: ignore[arg-type]

    async def next_sequence(self, loop_id: str) -> int:
        """One past the loop's last slot (0 for a loop with none)."""
        async with self.pool.connection() as conn:
            rows = list(
                await conn.execute_fetchall(
                    "SELECT MAX(sequence) FROM events WHERE loop_id = ?", (loop_id,)
                )
            )
        last = rows[0][0] if rows else None
        return 0 if last is None else int(last) + 1

    async def refusals(
        self, session_id: str | None, page_size: int, page_token: str
    ) -> tuple[list[session_pb2.RefusedEvent], str]:
        """Refused events (loop slots and refusal logs) in the order they were refused."""
        offset = _decode_offset(page_token)
        limit = offset + page_size
        where, args = ("AND session_id = ?", [session_id]) if session_id is not None else ("", [])
        async with self.pool.connection() as conn:
            slots = await conn.execute_fetchall(
                f"SELECT body FROM events WHERE {IS_REFUSED} {where} ORDER BY cursor LIMIT ?",
                (*args, limit),
            )
            logged = await conn.execute_fetchall(
                f"SELECT body FROM refusals WHERE 1 {where} ORDER BY id LIMIT ?", (*args, limit)
            )
        found = [session_pb2.RefusedEvent.FromString(body) for (body,) in (*slots, *logged)]
        found.sort(key=lambda r: (r.refused_at.seconds, r.refused_at.nanos))
        more = len(found) > limit
        return found[offset:limit], _encode_offset(limit) if more else ""

    async def loop_status(self, loop_id: str) -> int | None:
        async with self.pool.connection() as conn:
            rows = list(
                await conn.execute_fetchall(
                    "SELECT status FROM loops WHERE loop_id = ?", (loop_id,)
                )
            )
        return None if not rows else int(rows[0][0])

    async def session_state(self, session_id: str) -> tuple[bool, bool]:
        """(exists, finalized) of a session."""
        async with self.pool.connection() as conn:
            rows = list(
                await conn.execute_fetchall(
                    "SELECT finalized_us FROM sessions WHERE session_id = ?", (session_id,)
                )
            )
        return (bool(rows), bool(rows) and rows[0][0] is not None)


def _usage_key(grouping: int, agent: str, model: str, started_us: int) -> tuple[str, str, str]:
    """(agent, model, day) of a usage row; the parts the grouping leaves out are empty."""
    if grouping == api.USAGE_GROUPING_AGENT:
        return agent, "", ""
    if grouping == api.USAGE_GROUPING_MODEL:
        return "", model, ""
    if grouping == api.USAGE_GROUPING_DAY:
        day = datetime.fromtimestamp(started_us / 1_000_000, tz=UTC).date().isoformat()
        return "", "", day
    return agent, model, ""


def _add_usage(usage: types_pb2.Usage, tokens: list[int]) -> None:
    usage.input += tokens[0]
    usage.output += tokens[1]
    usage.reasoning += tokens[2]
    usage.cache_read += tokens[3]
    usage.cache_write += tokens[4]
    usage.total_tokens += tokens[5]


def _add_end_messages(record: Pieces, end_event: bytes) -> None:
    """The messages of a loop's AgentEnd event, as the record's own (storage.py, v3)."""
    for message in events_pb2.AgentEvent.FromString(end_event).agent_end.messages:
        record.add_field(LOOP_MESSAGES_FIELD, message.SerializeToString())


def _without_messages(record: bytes) -> bytes:
    loop = session_pb2.LoopRecord.FromString(record)
    loop.ClearField("messages")
    return loop.SerializeToString()


def _summary(head: bytes) -> api.SessionSummary:
    session = session_pb2.Session.FromString(head)
    summary = api.SessionSummary(
        session_id=session.session_id, agent_id=session.agent_id, scope=session.scope
    )
    summary.created_at.CopyFrom(session.created_at)
    summary.last_active_at.CopyFrom(session.last_active_at)
    summary.formation.CopyFrom(session.formation)
    if session.HasField("parent_spawn_ref"):
        summary.parent_spawn_ref.CopyFrom(session.parent_spawn_ref)
    if session.HasField("finalized_at"):
        summary.finalized_at.CopyFrom(session.finalized_at)
    return summary


def _encode_token(created_us: int, session_id: str) -> str:
    return base64.urlsafe_b64encode(f"{created_us}:{session_id}".encode()).decode()


def _encode_offset(offset: int) -> str:
    return base64.urlsafe_b64encode(f"refusals:{offset}".encode()).decode()


def _decode_offset(token: str) -> int:
    if not token:
        return 0
    try:
        name, offset = base64.urlsafe_b64decode(token.encode()).decode().split(":", 1)
        if name != "refusals" or int(offset) < 0:
            raise ValueError(token)
        return int(offset)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument("page_token", "not a token this server issued") from exc


def _decode_token(token: str) -> tuple[int, str]:
    try:
        created, sid = base64.urlsafe_b64decode(token.encode()).decode().split(":", 1)
        return int(created), sid
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument("page_token", "not a token this server issued") from exc
