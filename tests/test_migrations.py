"""Schema migrations: a database written by an older server opens in a newer one."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from agent_recorder.v1 import session_pb2
from support.events import agent_start, assistant, config, ts, user

from recorder_server.reads import ReadPool, Reads
from recorder_server.storage import MIGRATIONS, SCHEMA_VERSION, WriteStore


def v1_database(path: Path, records: list[session_pb2.LoopRecord]) -> None:
    """A file as the v1 server left it: its schema and rows, user_version 1."""
    conn = sqlite3.connect(path)
    conn.executescript(MIGRATIONS[1])
    for position, record in enumerate(records, 1):
        conn.execute(
            "INSERT INTO loops VALUES (?, ?, ?, ?, 0, 0, 0, 0, 0, 0, ?, NULL)",
            (
                record.loop_id,
                record.session_id,
                position,
                record.status,
                record.SerializeToString(),
            ),
        )
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()


def loop(
    loop_id: str, model: str | None, started: float, ended: float | None
) -> session_pb2.LoopRecord:
    start = agent_start("s1", loop_id, at=started).agent_start
    record = session_pb2.LoopRecord(
        loop_id=loop_id, session_id="s1", agent_id="agent-a", status=session_pb2.LOOP_STATUS_RUNNING
    )
    record.started_at.CopyFrom(start.timestamp)
    if model is not None:
        record.config.CopyFrom(config(model=model))
    if ended is not None:
        record.ended_at.CopyFrom(ts(ended))
        record.status = session_pb2.LOOP_STATUS_COMPLETED
    return record


async def test_a_v1_database_migrates_and_backfills_model_and_times(short_tmp: Path) -> None:
    path = short_tmp / "v1.db"
    v1_database(path, [loop("s1.c.0", "m1", 0, 5.5), loop("s1.c.1", None, 10, None)])
    store = await WriteStore.open(path)
    await store.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    rows = conn.execute(
        "SELECT loop_id, model, started_us, ended_us FROM loops ORDER BY loop_id"
    ).fetchall()
    conn.close()
    base = ts(0).seconds * 1_000_000
    assert rows == [
        ("s1.c.0", "m1", base, base + 5_500_000),
        ("s1.c.1", "", base + 10_000_000, None),
    ]


async def test_a_loop_ended_before_v3_keeps_the_messages_its_record_holds(
    short_tmp: Path,
) -> None:
    """Rows from before v3 have no end_event: their messages are read from the record."""
    path = short_tmp / "v1.db"
    ended = loop("s1.c.0", "m1", 0, 5.5)
    ended.messages.extend([user("hi", at=1), assistant("hello", at=2)])
    v1_database(path, [ended])
    store = await WriteStore.open(path)
    await store.close()
    pool = ReadPool(path, size=1)
    await pool.open()
    try:
        read = await Reads(pool).get_loop("s1.c.0", skip_events=False)
    finally:
        await pool.close()
    assert read == ended


async def test_a_current_database_is_left_as_it_is(short_tmp: Path) -> None:
    path = short_tmp / "now.db"
    store = await WriteStore.open(path)
    await store.close()
    store = await WriteStore.open(path)
    await store.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    columns = [row[1] for row in conn.execute("PRAGMA table_info(loops)")]
    conn.close()
    assert columns[-4:] == ["model", "started_us", "ended_us", "end_event"]
