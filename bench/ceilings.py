"""The three ceilings the sidecar's ingest is judged against, from the same run.

- Storage: the very events the clients send (same generator, same seeds),
  serialized as the server stores them, inserted straight into a database made
  by the project's own WriteStore (schema and writer pragmas), in transactions
  of one client batch each: what SQLite alone allows, with no gRPC, no rules and
  no asyncio in the way.
- Raw storage: the same event bytes appended to a plain SQLite table, one row
  per event (an integer key and the bytes), in transactions of one client batch
  each, WAL and synchronous NORMAL, nothing else: no indexes, no loop or session
  rows, the physical limit of this machine's disk and SQLite.
- Transport: the same clients and client library against bench/sink.py, which
  acknowledges every batch at once: what gRPC and protobuf alone allow.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

from bench import ingest, sidecar
from bench.ingest import Stream, Throughput
from bench.workload import Event
from recorder_server.storage import (
    COMMON_PRAGMAS,
    INSERT_EVENTS,
    WRITER_PRAGMAS,
    WriteStore,
    insert_statements,
)


def _rows(events: Iterable[Event]) -> list[tuple[str, int, str, str, bytes]]:
    """Event rows as the server writes them: per-loop sequence, deterministic bytes."""
    rows: list[tuple[str, int, str, str, bytes]] = []
    next_sequence: dict[str, int] = {}
    for event in events:
        kind = event.WhichOneof("event")
        assert kind is not None
        loop_id: str = getattr(event, kind).loop_id
        sequence = next_sequence.get(loop_id, 0)
        next_sequence[loop_id] = sequence + 1
        body = event.SerializeToString(deterministic=True)
        rows.append((loop_id, sequence, loop_id.split(".", 1)[0], kind, body))
    return rows


async def _create(path: Path) -> None:
    store = await WriteStore.open(path)
    await store.close()


RAW_SCHEMA = "CREATE TABLE raw (id INTEGER PRIMARY KEY, body BLOB)"
RAW_INSERT = "INSERT INTO raw (body) VALUES (?)"
RAW_PRAGMAS = ("PRAGMA journal_mode = WAL", "PRAGMA synchronous = NORMAL")


def _all_rows(stream: Stream, clients: int) -> list[tuple[str, int, str, str, bytes]]:
    return [row for index in range(clients) for row in _rows(stream.events(stream.seed + index))]


def storage(workdir: Path, stream: Stream, clients: int, batch: int) -> Throughput:
    """Insert every client's events in batched transactions; time only the inserts."""
    rows = _all_rows(stream, clients)
    path = workdir / "ceiling.db"
    asyncio.run(_create(path))
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for pragma in (*COMMON_PRAGMAS, *WRITER_PRAGMAS):
            conn.execute(pragma.format(synchronous="NORMAL"))
        started = time.perf_counter()
        for first in range(0, len(rows), batch):
            conn.execute("BEGIN IMMEDIATE")
            # The statements WriteStore writes events with (multi-row INSERTs).
            for sql, params in insert_statements(INSERT_EVENTS, rows[first : first + batch]):
                conn.executemany(sql, params)
            conn.execute("COMMIT")
        seconds = time.perf_counter() - started
    finally:
        conn.close()
    return Throughput(len(rows), sum(len(row[4]) for row in rows), seconds, 0.0, 0.0)


def raw_storage(workdir: Path, stream: Stream, clients: int, batch: int) -> Throughput:
    """Append every client's event bytes to a plain table; time only the inserts."""
    bodies = [(row[4],) for row in _all_rows(stream, clients)]
    conn = sqlite3.connect(workdir / "raw-ceiling.db", isolation_level=None)
    try:
        for pragma in RAW_PRAGMAS:
            conn.execute(pragma)
        conn.execute(RAW_SCHEMA)
        started = time.perf_counter()
        for first in range(0, len(bodies), batch):
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(RAW_INSERT, bodies[first : first + batch])
            conn.execute("COMMIT")
        seconds = time.perf_counter() - started
    finally:
        conn.close()
    return Throughput(len(bodies), sum(len(body) for (body,) in bodies), seconds, 0.0, 0.0)


def transport(workdir: Path, stream: Stream, clients: int, timeout: float) -> Throughput:
    """The same clients and events against the discarding sink."""
    with sidecar.sink(workdir, "sink") as sink:
        return ingest.throughput(sink, clients, stream, timeout)
