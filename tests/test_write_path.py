"""The write path under the rules: pipelined group commits and background checkpoints."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import sys
import threading
from pathlib import Path

import grpc
import pytest
from agent_recorder.v1 import recorder_service_pb2 as api
from agent_recorder.v1 import session_pb2
from support.events import (
    RecordStream,
    agent_end,
    agent_start,
    aio,
    append,
    envelopes,
    progress,
    tool_end,
)
from support.recorder import RunningRecorder

from recorder_server import checkpoints
from recorder_server.checkpoints import Checkpointer
from recorder_server.recording import ChangeSet, LoopState, Needed, Snapshot
from recorder_server.storage import INLINE_WRITE_BYTES, WriteStore


def events_in_database_file(db: Path, scratch: Path) -> int:
    """Events in the main database file alone, as if its WAL were lost."""
    copy = scratch / "only-the-db-file.db"
    shutil.copyfile(db, copy)
    conn = sqlite3.connect(copy)
    try:
        tables = conn.execute("SELECT name FROM sqlite_master WHERE name = 'events'").fetchall()
        if not tables:  # not even the schema has been checkpointed yet
            return 0
        return int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])
    finally:
        conn.close()


def wal_salt(db: Path) -> bytes:
    """The WAL header's salt: SQLite draws a new one each time the log starts over."""
    with open(f"{db}-wal", "rb") as wal:
        return wal.read(24)[16:24]


# Events of event_rows (5 KB each) that make a group just large enough for the thread.
LARGE = INLINE_WRITE_BYTES // 5000 + 1


def event_rows(loop_id: str, first: int, count: int) -> ChangeSet:
    body = progress(loop_id, "c", "t", "x" * 5000).SerializeToString()
    rows = [(loop_id, n, "s", "progress_message", body) for n in range(first, first + count)]
    return ChangeSet(events=rows)


async def test_a_catch_up_lets_the_next_transaction_restart_the_wal(short_tmp: Path) -> None:
    store = await WriteStore.open(short_tmp / "w.db")
    try:
        await store.write(event_rows("s.main.0", 0, 10))[0]
        salt = wal_salt(short_tmp / "w.db")
        await store.write(event_rows("s.main.0", 10, 10))[0]
        assert wal_salt(short_tmp / "w.db") == salt  # appended: no checkpoint ran
        await store.catch_up()
        await store.write(event_rows("s.main.0", 20, 10))[0]
        assert wal_salt(short_tmp / "w.db") != salt  # started over from the beginning
    finally:
        await store.close()
    conn = sqlite3.connect(short_tmp / "w.db")
    assert conn.execute("SELECT COUNT(*), MAX(sequence) FROM events").fetchone() == (30, 29)
    conn.close()


def stored_sequences(db: Path) -> list[int]:
    conn = sqlite3.connect(db)
    try:
        return [row[0] for row in conn.execute("SELECT sequence FROM events ORDER BY cursor")]
    finally:
        conn.close()


async def test_small_writes_commit_at_once_and_large_ones_on_the_store_thread(
    short_tmp: Path,
) -> None:
    db = short_tmp / "w.db"
    store = await WriteStore.open(db)
    try:
        small = event_rows("s.main.0", 0, 2)  # 2 x 5 KB
        write, nbytes = store.write(small)
        assert nbytes < INLINE_WRITE_BYTES
        assert write.done() and write.exception() is None  # committed before returning
        assert stored_sequences(db) == [0, 1]

        big_write, nbytes = store.write(event_rows("s.main.0", 2, LARGE))
        assert nbytes >= INLINE_WRITE_BYTES
        # Behind a write still on the thread, a small one queues there too, in order.
        after, _ = store.write(event_rows("s.main.0", 2 + LARGE, 1))
        assert not big_write.done() and not after.done()
        await after
        assert big_write.done()
        assert stored_sequences(db) == list(range(3 + LARGE))

        # The thread is idle again: small writes are back to committing at once.
        again, _ = store.write(event_rows("s.main.0", 3 + LARGE, 1))
        assert again.done()
    finally:
        await store.close()
    assert stored_sequences(db) == list(range(4 + LARGE))


async def test_writes_wait_for_another_processs_lock_on_the_store_thread_only(
    short_tmp: Path,
) -> None:
    """Never on the event loop: waiting there for the lock would stop every call for 5 s."""
    db = short_tmp / "w.db"
    store = await WriteStore.open(db)
    outsider = sqlite3.connect(db, isolation_level=None)
    try:
        outsider.execute("BEGIN IMMEDIATE")
        waiting, _ = store.write(event_rows("s.main.0", 0, 1))
        # Handed to the thread, which waits for the lock; this returned at once.
        assert not waiting.done()
        assert stored_sequences(db) == []
        outsider.execute("COMMIT")
        await waiting
        again, _ = store.write(event_rows("s.main.0", 1, 1))
        assert again.done() and again.exception() is None  # the lock is free: at once

        # An explicit transaction (imports, deletes) waits on the thread too.
        outsider.execute("BEGIN IMMEDIATE")
        begun = asyncio.ensure_future(store.begin())
        await asyncio.sleep(0)  # hand it to the thread
        assert stored_sequences(db) == [0, 1] and not begun.done()
        outsider.execute("COMMIT")
        await begun
        await store.persist(event_rows("s.main.0", 2, 1))
        await store.commit()
    finally:
        outsider.close()
        await store.close()
    assert stored_sequences(db) == [0, 1, 2]


async def test_a_failed_small_write_fails_its_future_and_changes_nothing(short_tmp: Path) -> None:
    db = short_tmp / "w.db"
    store = await WriteStore.open(db)
    try:
        await store.write(event_rows("s.main.0", 0, 2))[0]
        rows = event_rows("s.main.0", 2, 2).events + event_rows("s.main.0", 1, 1).events
        clash, _ = store.write(ChangeSet(events=rows))
        assert clash.done()
        # (loop_id, sequence) is unique: sequence 1 is there already.
        assert isinstance(clash.exception(), sqlite3.IntegrityError)
        assert stored_sequences(db) == [0, 1]  # rolled back whole: not even 2 and 3
        await store.write(event_rows("s.main.0", 2, 1))[0]
    finally:
        await store.close()
    assert stored_sequences(db) == [0, 1, 2]


def loop_change(loop_id: str, status: int, model: str) -> ChangeSet:
    record = session_pb2.LoopRecord(loop_id=loop_id, session_id="s", status=status)  # type: ignore[arg-type]
    record.config.model = model
    return ChangeSet(loops={loop_id: LoopState(record)})


class LoopRowWrites:
    """Counts the loop rows SQLite inserts and updates, by a trigger in the database."""

    def __init__(self, db: Path) -> None:
        self.conn = sqlite3.connect(db, isolation_level=None)
        self.conn.executescript(
            """
            CREATE TABLE loop_row_writes (n INTEGER NOT NULL);
            INSERT INTO loop_row_writes VALUES (0);
            CREATE TRIGGER loop_inserted AFTER INSERT ON loops
                BEGIN UPDATE loop_row_writes SET n = n + 1; END;
            CREATE TRIGGER loop_updated AFTER UPDATE ON loops
                BEGIN UPDATE loop_row_writes SET n = n + 1; END;
            """
        )

    def count(self) -> int:
        return int(self.conn.execute("SELECT n FROM loop_row_writes").fetchone()[0])

    def model(self, loop_id: str) -> str | None:
        row = self.conn.execute("SELECT model FROM loops WHERE loop_id = ?", (loop_id,)).fetchone()
        return None if row is None else str(row[0])


async def test_an_unchanged_loop_row_is_not_written_again(short_tmp: Path) -> None:
    running, ended = session_pb2.LOOP_STATUS_RUNNING, session_pb2.LOOP_STATUS_COMPLETED
    store = await WriteStore.open(short_tmp / "w.db")
    writes = LoopRowWrites(short_tmp / "w.db")
    try:
        await store.write(loop_change("l", running, "a"))[0]
        await store.write(loop_change("l", running, "a"))[0]  # only events would change
        assert (writes.count(), writes.model("l")) == (1, "a")
        await store.write(loop_change("l", running, "b"))[0]
        await store.write(loop_change("l", running, "a"))[0]  # back to an earlier state
        assert (writes.count(), writes.model("l")) == (3, "a")

        # Behind an explicit transaction (an import, a delete) nothing is assumed.
        await store.begin()
        await store.delete_sessions(["s"])
        await store.commit()
        await store.write(loop_change("l", running, "a"))[0]
        assert (writes.count(), writes.model("l")) == (4, "a")

        # A failed write forgets what it meant to write.
        clash = loop_change("l", running, "c")
        clash.events = event_rows("l", 0, 1).events * 2  # the same (loop_id, sequence) twice
        failed, _ = store.write(clash)
        assert isinstance(failed.exception(), sqlite3.IntegrityError)
        await store.write(loop_change("l", running, "c"))[0]
        assert (writes.count(), writes.model("l")) == (5, "c")
        # The same for one large enough to commit on the store's thread.
        clash = loop_change("l", running, "d")
        clash.events = event_rows("l", 1, LARGE).events * 2
        failed, nbytes = store.write(clash)
        assert nbytes >= INLINE_WRITE_BYTES and not failed.done()
        with pytest.raises(sqlite3.IntegrityError):
            await failed
        await store.write(loop_change("l", running, "d"))[0]
        assert (writes.count(), writes.model("l")) == (6, "d")

        # An ended loop is no longer remembered: its row is final.
        await store.write(loop_change("l", ended, "d"))[0]
        assert writes.count() == 7
    finally:
        writes.conn.close()
        await store.close()


def checkpointer_of(recorder: RunningRecorder) -> Checkpointer:
    assert recorder.server is not None and recorder.server.writer is not None
    checkpointer = recorder.server.writer.checkpointer
    assert checkpointer is not None
    return checkpointer


def looked_up(store: WriteStore, loop_id: str) -> LoopState | None:
    """What the rules' lookup finds of a loop in the committed state."""
    snapshot = Snapshot()
    store.fetch_committed(snapshot, Needed(frozenset({loop_id}), frozenset(), frozenset()))
    return snapshot.loops[loop_id]


async def test_a_lookup_never_sees_an_open_transaction(short_tmp: Path) -> None:
    """The idle write connection serves lookups, but not while it holds uncommitted rows."""
    running = session_pb2.LOOP_STATUS_RUNNING
    store = await WriteStore.open(short_tmp / "w.db")
    try:
        await store.write(loop_change("a", running, "m"))[0]
        found = looked_up(store, "a")
        assert found is not None and found.record.config.model == "m"
        await store.begin()
        await store.persist(loop_change("b", running, "n"))
        assert looked_up(store, "b") is None
        await store.commit()
        found = looked_up(store, "b")
        assert found is not None and found.record.config.model == "n"
    finally:
        await store.close()


async def test_a_lookup_answers_while_the_store_thread_waits_for_the_lock(
    short_tmp: Path,
) -> None:
    """With a write on the thread, the lookup reads beside it instead of waiting for it.

    Another process holds SQLite's write lock, so the store's thread waits in its
    BEGIN; a lookup on the write connection would wait behind that, with the event
    loop blocked, until the lock went (here: never, since the lock is only
    released after the lookup answers, so the write would time out).
    """
    running = session_pb2.LOOP_STATUS_RUNNING
    db = short_tmp / "w.db"
    store = await WriteStore.open(db)
    outsider = sqlite3.connect(db, isolation_level=None)
    try:
        await store.write(loop_change("a", running, "m"))[0]
        outsider.execute("BEGIN IMMEDIATE")
        large = loop_change("b", running, "n")
        large.events = event_rows("b", 0, LARGE).events
        waiting, _ = store.write(large)
        found = looked_up(store, "a")
        assert found is not None and found.record.config.model == "m"
        assert looked_up(store, "b") is None and not waiting.done()
        outsider.execute("ROLLBACK")
        await waiting
        found = looked_up(store, "b")
        assert found is not None and found.record.config.model == "n"
    finally:
        outsider.close()
        await store.close()


async def test_commits_leave_pages_in_the_wal_until_the_background_checkpoint(
    recorder: RunningRecorder, short_tmp: Path
) -> None:
    checkpointer = checkpointer_of(recorder)
    checkpointer.every_bytes = 1 << 40
    stub = aio(recorder.stub())
    big = "x" * 50_000
    first = [agent_start("s", "s.main.0", at=1), progress("s.main.0", "c", "t", big)]
    assert await append(stub, first) == [0, 1]
    assert events_in_database_file(recorder.db_path, short_tmp) == 0
    assert checkpointer.checkpoints == 0

    checkpointer.every_bytes = 1
    checkpointer.catch_up_pages = 0  # however short the log, ask the writer to catch up
    checkpointer.completed.clear()
    assert await append(stub, [progress("s.main.0", "c", "t", big)]) == [2]
    await asyncio.wait_for(checkpointer.completed.wait(), 10)
    assert checkpointer.checkpoints == 1
    assert events_in_database_file(recorder.db_path, short_tmp) == 3
    assert checkpointer.catch_up  # asked of the writer, after its next commit
    checkpointer.every_bytes = 1 << 40
    assert await append(stub, [progress("s.main.0", "c", "t", "after")]) == [3]
    assert not checkpointer.catch_up


async def test_concurrent_batches_are_each_acknowledged_with_their_own_sequences(
    recorder: RunningRecorder,
) -> None:
    """Many batches in flight at once: grouped, pipelined, none lost or mixed up."""
    stub = aio(recorder.stub())
    loops = [f"s{n}.main.0" for n in range(24)]

    async def record(loop_id: str) -> list[list[int]]:
        session = loop_id.split(".")[0]
        acks = [await append(stub, [agent_start(session, loop_id, at=1)])]
        for chunk in range(4):
            batch = [progress(loop_id, "c", "t", f"{chunk}.{n}") for n in range(5)]
            acks.append(await append(stub, batch))
        return acks

    results = await asyncio.gather(*(record(loop_id) for loop_id in loops))
    expected = [[0], *[list(range(1 + 5 * c, 6 + 5 * c)) for c in range(4)]]
    assert results == [expected] * len(loops)
    for loop_id in loops:
        got = await stub.GetLoop(api.GetLoopRequest(loop_id=loop_id))
        texts = [e.event.progress_message.text for e in got.loop.events[1:]]
        assert [e.sequence for e in got.loop.events] == list(range(21))
        assert texts == [f"{c}.{n}" for c in range(4) for n in range(5)]


async def test_a_resend_racing_its_original_is_stored_once(recorder: RunningRecorder) -> None:
    """The same numbered batch twice at once: both acknowledged, stored once (the
    same-group case, where the second finds the first not yet written, is pinned
    down by test_recording_rules)."""
    stub = aio(recorder.stub())
    assert await append(stub, [(0, agent_start("s", "s.main.0", at=1))]) == [0]
    batch = [(n, progress("s.main.0", "c", "t", f"p{n}")) for n in range(1, 40)]
    for _ in range(5):
        pairs = await asyncio.gather(append(stub, batch), append(stub, batch))
        assert pairs[0] == pairs[1] == list(range(1, 40))
    got = await stub.GetLoop(api.GetLoopRequest(loop_id="s.main.0"))
    assert [e.sequence for e in got.loop.events] == list(range(40))


async def test_a_short_log_is_left_to_restart_by_itself(recorder: RunningRecorder) -> None:
    """The writer is asked to catch up only once the log is long (a catch-up syncs)."""
    checkpointer = checkpointer_of(recorder)
    checkpointer.every_bytes = 1
    checkpointer.catch_up_pages = 1 << 30
    checkpointer.completed.clear()
    stub = aio(recorder.stub())
    assert await append(stub, [agent_start("s", "s.main.0", at=1)]) == [0]
    await asyncio.wait_for(checkpointer.completed.wait(), 10)
    assert checkpointer.checkpoints == 1
    assert not checkpointer.catch_up


async def test_the_log_restarts_under_a_steady_stream_without_a_catch_up(
    recorder: RunningRecorder,
) -> None:
    """Background checkpoints alone let the writer's next transaction start the log
    over: no commit has to run a checkpoint (and sync) for it."""
    checkpointer = checkpointer_of(recorder)
    checkpointer.every_bytes = 1  # a checkpoint after every commit
    checkpointer.catch_up_pages = 1 << 30  # and never a catch-up by the writer
    stub = aio(recorder.stub())
    assert await append(stub, [agent_start("s", "s.main.0", at=1)]) == [0]
    salt = wal_salt(recorder.db_path)
    sequence = 1
    while wal_salt(recorder.db_path) == salt:
        assert sequence < 3000, "the log never started over"
        batch = [progress("s.main.0", "c", "t", "x" * 2000) for _ in range(3)]
        assert await append(stub, batch) == [sequence, sequence + 1, sequence + 2]
        sequence += 3
    assert not checkpointer.catch_up
    # Paged: on a busy machine the loop can outgrow one answer before the log restarts.
    request = api.StreamEventsRequest(loop_id="s.main.0")
    stored = [
        item.event.sequence async for page in stub.StreamEvents(request) for item in page.events
    ]
    assert stored == list(range(sequence))


@pytest.mark.skipif(sys.platform != "linux", reason="a nice value per thread is Linux's")
async def test_the_checkpoint_thread_alone_runs_at_the_lowest_priority(short_tmp: Path) -> None:
    def nice(tid: int) -> int:
        stat = Path(f"/proc/self/task/{tid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[16])  # field 19 of stat(5)

    sqlite3.connect(short_tmp / "c.db").close()
    before = nice(threading.get_native_id())
    checkpointer = Checkpointer(short_tmp / "c.db")
    others = set(threading.enumerate())
    await checkpointer.start()
    try:
        [thread] = [
            t
            for t in set(threading.enumerate()) - others
            if t.name.startswith("recorder-checkpoint")
        ]
        assert thread.native_id is not None
        assert nice(thread.native_id) == checkpoints.CHECKPOINT_NICE == 19
        assert nice(threading.get_native_id()) == before  # the event loop's thread keeps its own
    finally:
        await checkpointer.stop()


def test_checkpoint_passes_stop_at_a_pinned_reader_and_finish_once_it_lets_go(
    short_tmp: Path,
) -> None:
    """A reader on an old snapshot keeps frames from being copied: the follow-up
    passes give up (bounded) instead of spinning, and the next checkpoint after
    the reader is gone copies everything, so the log restarts."""
    db = short_tmp / "w.db"
    writer = sqlite3.connect(db, isolation_level=None)
    writer.execute("PRAGMA journal_mode = WAL")
    writer.execute("PRAGMA wal_autocheckpoint = 0")
    writer.execute("CREATE TABLE t (x BLOB)")
    writer.execute("INSERT INTO t VALUES (zeroblob(20000))")
    reader = sqlite3.connect(db, isolation_level=None)
    reader.execute("BEGIN")
    assert reader.execute("SELECT COUNT(*) FROM t").fetchone() == (1,)  # pinned here
    for _ in range(5):
        writer.execute("INSERT INTO t VALUES (zeroblob(20000))")
    checkpointer = sqlite3.connect(db, isolation_level=None)
    try:
        busy, log_pages, copied = checkpoints.run_checkpoint(checkpointer)
        assert busy == 0 and 0 < copied < log_pages  # what the reader sees is still needed
        reader.execute("COMMIT")
        salt = wal_salt(db)
        busy, log_pages, copied = checkpoints.run_checkpoint(checkpointer)
        assert busy == 0 and copied == log_pages
        writer.execute("INSERT INTO t VALUES (1)")
        assert wal_salt(db) != salt
        assert writer.execute("SELECT COUNT(*) FROM t").fetchone() == (7,)
    finally:
        for conn in (checkpointer, reader, writer):
            conn.close()


async def test_loops_let_go_by_the_snapshot_are_looked_up_right_while_groups_fly(
    recorder: RunningRecorder,
) -> None:
    """With a tiny snapshot, closed loops leave it at every group. Batches sent
    without waiting for acks then look them up again (a re-send, a spawned child,
    a continuation) as groups of many streams fly. Whether one lands inside its
    own predecessor's write window is up to timing; the re-send within it is
    pinned down by test_recording_rules (snapshot.unwritten)."""
    assert recorder.server is not None and recorder.server.writer is not None
    recorder.server.writer.cache_limit = 2
    stub = aio(recorder.stub())

    async def session(n: int) -> list[list[int]]:
        sid, root, child = f"p{n}", f"p{n}.main.0", f"c{n}.sub.0"
        done = [
            (0, agent_start(sid, root, at=1)),
            (1, tool_end(root, "t", "delegate", child_loop_id=child)),
            (2, agent_end(root, at=2)),
        ]
        batches = [
            done,
            done,  # re-sent: recognised, not stored again
            [(0, agent_start(f"c{n}", child, root, at=3))],
            [(0, agent_start(sid, f"p{n}.next.1", root, at=4))],
        ]
        stream = RecordStream(stub, f"writer-{n}")
        await stream.hello()
        for batch_id, events in enumerate(batches, start=1):
            batch = api.EventBatch(batch_id=batch_id, events=envelopes(events))
            await stream.call.write(api.RecordRequest(batch=batch))
        acks = []
        for _ in batches:
            response = await stream.call.read()
            assert isinstance(response, api.RecordResponse), response
            assert not response.HasField("rejection"), response.rejection
            acks.append(list(response.sequences))
        assert await stream.close() == grpc.StatusCode.OK
        return acks

    results = await asyncio.gather(*(session(n) for n in range(12)))
    assert results == [[[0, 1, 2], [0, 1, 2], [0], [0]]] * 12
    for n in range(12):
        root = (await stub.GetLoop(api.GetLoopRequest(loop_id=f"p{n}.main.0"))).loop
        assert [e.sequence for e in root.events] == [0, 1, 2]
        child = (await stub.GetLoop(api.GetLoopRequest(loop_id=f"c{n}.sub.0"))).loop
        assert child.parent_loop_id == f"p{n}.main.0"
        got = await stub.GetSession(api.GetSessionRequest(session_id=f"c{n}", skip_events=True))
        ref = got.session.parent_spawn_ref
        assert (ref.parent_session_id, ref.parent_loop_id, ref.tool_call_id) == (
            f"p{n}",
            f"p{n}.main.0",
            "t",
        )
