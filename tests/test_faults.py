"""Faults: the sidecar killed mid-stream, not there yet, or out of disk.

The kill -9 scenario runs real processes (support/fault_harness.py): a sidecar killed with
SIGKILL five times at seeded random points while four client processes stream,
restarted each time on the same file and socket, then checked event by event in
the file opened read-only. Two servers on one file and two writers on one session
are covered by test_server_lifecycle.py and test_server_rules.py.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from agent_recorder.v1 import session_pb2
from support.events import agent_end, agent_start, progress
from support.fault_harness import check_store, events_per_client, plan_counts, run_scenario
from support.mounts import tmpfs
from support.recorder import RunningRecorder

from recorder_client import DeliveryConfig, DeliveryError, RecorderClient

# Fault runs (real processes killed and restarted) are slow: not in `make test-fast`.
pytestmark = pytest.mark.slow
SEED = 20261125
# The size: 50000 events per client (65-100 s on two shared cores, the
# suite's longest test); AGENT_RECORDER_FAULT_EVENTS=5000 makes a quick local run.
SUITE_EVENTS = 50_000


@pytest.mark.timeout(600)
async def test_kill_9_mid_stream_stores_every_event_once(short_tmp: Path) -> None:
    """4 clients x SUITE_EVENTS (AGENT_RECORDER_FAULT_EVENTS overrides), 5 kills, then 1 more."""
    events = events_per_client(SUITE_EVENTS)
    run = await run_scenario(short_tmp, clients=4, events=events, kills=5, seed=SEED)

    verdict = check_store(run.db_path, run.expected)
    assert len(run.kill_points) == 5
    assert all(acknowledged < verdict.emitted for acknowledged in run.kill_points)
    for report in run.reports:
        assert report.loops == plan_counts(report.client, events, SEED)
        assert report.acknowledged == report.emitted == sum(report.loops.values())
    assert sum(report.emitted for report in run.reports) == verdict.emitted
    assert verdict.integrity == "ok"
    assert (verdict.missing, verdict.doubled, verdict.wrong) == (0, 0, [])
    assert verdict.stored == verdict.emitted


async def test_events_wait_for_a_server_that_is_not_up_yet(short_tmp: Path) -> None:
    """Several seconds of nothing listening (no socket at all), with the default config."""
    recorder = RunningRecorder(db_path=short_tmp / "recorder.db", socket_path=short_tmp / "r.sock")
    try:
        async with RecorderClient.connect(recorder.target) as client:
            sender = client.sender()
            sender.emit(agent_start("u1", "u1.main.0"))
            for i in range(50):
                sender.emit(progress("u1.main.0", "c", "t", f"step {i}"))
            sender.emit(agent_end("u1.main.0"))
            with pytest.raises(DeliveryError) as caught:
                await sender.flush(3)
            assert (caught.value.unacknowledged, caught.value.failed) == (52, 0)
            assert sender.stats().pending == 52

            await recorder.start()
            await sender.flush(15)
            stats = sender.stats()
            assert (stats.acknowledged, stats.pending, stats.failed) == (52, 0, 0)
            record = await client.get_loop("u1.main.0")
    finally:
        await recorder.stop()
    assert [e.sequence for e in record.events] == list(range(52))
    assert [e.event.progress_message.text for e in record.events[1:-1]] == [
        f"step {i}" for i in range(50)
    ]
    assert record.status == session_pb2.LOOP_STATUS_COMPLETED


# -- a full disk --------------------------------------------------------------------------

DISK_BYTES = 4 * 1024 * 1024
FILLER_BYTES = 1024 * 1024
BATCH = 16
TEXT = "x" * 4000


@pytest.fixture
def small_disk(short_tmp: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs, mounted for the test and unmounted after it."""
    with tmpfs(short_tmp / "disk", f"size={DISK_BYTES // 1024}k,mode=0700") as mount:
        yield mount


async def fill_until_refused(client: RecorderClient) -> tuple[int, DeliveryError]:
    """Stream batches of one loop until one is refused; the events acknowledged before."""
    sender = client.sender(config=DeliveryConfig(max_batch_events=BATCH, linger=0.001))
    sender.emit(agent_start("d1", "d1.main.0"))
    await sender.flush(10)
    for n in range(DISK_BYTES // (BATCH * len(TEXT)) + 1):
        for i in range(BATCH):
            sender.emit(progress("d1.main.0", "c", "t", f"{n}.{i} {TEXT}"))
        try:
            await sender.flush(10)
        except DeliveryError as error:
            return sender.stats().acknowledged, error
    raise AssertionError("the disk never filled up")


@pytest.mark.timeout(60)
async def test_a_full_disk_refuses_writes_clearly_keeps_reads_and_recovers(
    small_disk: Path, short_tmp: Path
) -> None:
    filler = small_disk / "filler"
    filler.write_bytes(b"\1" * FILLER_BYTES)
    recorder = RunningRecorder(db_path=small_disk / "recorder.db", socket_path=short_tmp / "r.sock")
    await recorder.start()
    try:
        async with RecorderClient.connect(recorder.target) as client:
            acknowledged, error = await fill_until_refused(client)
            rejection = error.rejection
            assert rejection is not None
            assert rejection.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert rejection.reason == "STORAGE_FULL"
            assert "database disk is full" in rejection.message
            assert rejection.events == BATCH

            # Reads keep working, and every acknowledged event is there (no more).
            record = await client.get_loop("d1.main.0")
            assert [e.sequence for e in record.events] == list(range(acknowledged))
            session = await client.get_session("d1")
            assert [loop.loop_id for loop in session.loops] == ["d1.main.0"]
            listing = await client.list_sessions()
            assert [s.session_id for s in listing.sessions] == ["d1"]

            # A stop cannot checkpoint the WAL into a full disk; a start still works.
            await recorder.stop()
            await recorder.start()
            record = await client.get_loop("d1.main.0")
            assert [e.sequence for e in record.events] == list(range(acknowledged))

            filler.unlink()
            sender = client.sender(config=DeliveryConfig(linger=0.001))
            sender.emit(agent_start("d2", "d2.main.0"))
            for i in range(BATCH):
                sender.emit(progress("d2.main.0", "c", "t", f"{i} {TEXT}"))
            sender.emit(agent_end("d2.main.0"))
            await sender.flush(10)
            resumed = await client.get_loop("d2.main.0")
            assert [e.sequence for e in resumed.events] == list(range(BATCH + 2))
            assert resumed.status == session_pb2.LOOP_STATUS_COMPLETED
    finally:
        await recorder.stop()
    conn = sqlite3.connect(f"file:{recorder.db_path}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        counts = dict(conn.execute("SELECT loop_id, COUNT(*) FROM events GROUP BY loop_id"))
    finally:
        conn.close()
    assert counts == {"d1.main.0": acknowledged, "d2.main.0": BATCH + 2}
