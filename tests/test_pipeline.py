"""The commit pipeline supervises itself: a job that fails fails alone, a dead
pipeline fails everything at once and says so; no client call ever hangs.

Faults are injected into a real in-process server (real socket, real SQLite):
a rule that raises for one loop id, a storage call that raises, the pipeline's
task cancelled. Every wait is bounded by the calls' deadlines.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from agent_recorder.v1 import recorder_service_pb2 as api
from agent_recorder.v1 import recorder_service_pb2_grpc as api_grpc
from agent_recorder.v1 import session_pb2
from google.rpc import code_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.events import RecordStream, agent_start, aio, append, progress
from support.fault_harness import worker_env
from support.recorder import RunningRecorder

from recorder_server import recording
from recorder_server.errors import Internal
from recorder_server.storage import WriteStore
from recorder_server.validation import CheckedBatch

DEADLINE = 10.0
RUNNING = session_pb2.LOOP_STATUS_RUNNING


def raising_for(loop_id: str, original: Any) -> Any:
    """Batch.apply that raises an unexpected error for one loop id, as a bug would."""

    def apply(batch: recording.Batch, items: list[recording.Item], *args: Any) -> Any:
        if any(item[4] == loop_id for item in items):
            raise RuntimeError(f"a bug met {loop_id}")
        return original(batch, items, *args)

    return apply


async def test_an_unexpected_error_in_a_rule_fails_that_batch_alone(
    recorder: RunningRecorder, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    stub = aio(recorder.stub())
    await append(stub, [agent_start("s", "s.main.0", at=1), agent_start("s", "s.bad.0", at=1)])
    monkeypatch.setattr(recording.Batch, "apply", raising_for("s.bad.0", recording.Batch.apply))
    stream = RecordStream(stub, "w")
    bad = await stream.send([progress("s.bad.0", "c", "t", "x")])
    assert bad.rejection.code == code_pb2.INTERNAL
    assert bad.rejection.reason == "INTERNAL"
    assert "s.bad.0" in bad.rejection.message and "RuntimeError" in bad.rejection.message
    # The next batch of the same stream is applied and acknowledged: nothing hangs.
    good = await stream.send([progress("s.main.0", "c", "t", "y")])
    assert list(good.sequences) == [1] and not good.HasField("rejection")
    assert await stream.close() == grpc.StatusCode.OK
    logged = [r for r in caplog.records if "unexpected error in batch" in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None  # the traceback, once
    loop = (await stub.GetLoop(api.GetLoopRequest(loop_id="s.bad.0"), timeout=DEADLINE)).loop
    assert [e.sequence for e in loop.events] == [0] and loop.status == RUNNING


async def test_a_storage_call_that_raises_fails_its_group_and_the_next_one_commits(
    recorder: RunningRecorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    stub = aio(recorder.stub())
    await append(stub, [agent_start("s", "s.main.0", at=1)])
    original = WriteStore.write
    calls = 0

    def write_once_broken(store: WriteStore, changes: recording.ChangeSet) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("injected: the disk went away")
        return original(store, changes)

    monkeypatch.setattr(WriteStore, "write", write_once_broken)
    stream = RecordStream(stub, "w")
    failed = await stream.send([(1, progress("s.main.0", "c", "t", "lost"))])
    assert failed.rejection.code == code_pb2.INTERNAL
    assert "s.main.0" in failed.rejection.message and "disk went away" in failed.rejection.message
    # The state was reloaded: the same sequence is free again and is stored once.
    again = await stream.send([(1, progress("s.main.0", "c", "t", "kept"))])
    assert list(again.sequences) == [1] and not again.HasField("rejection")
    assert await stream.close() == grpc.StatusCode.OK
    loop = (await stub.GetLoop(api.GetLoopRequest(loop_id="s.main.0"), timeout=DEADLINE)).loop
    assert [e.event.progress_message.text for e in loop.events[1:]] == ["kept"]


async def health(recorder: RunningRecorder) -> int:
    async with grpc.aio.insecure_channel(recorder.target) as channel:
        probe = health_pb2_grpc.HealthStub(channel)
        answer = await probe.Check(health_pb2.HealthCheckRequest(service=""), timeout=DEADLINE)
        return int(answer.status)


async def test_a_dead_pipeline_fails_everything_at_once_and_turns_not_serving(
    recorder: RunningRecorder,
) -> None:
    stub = aio(recorder.stub())
    await append(stub, [agent_start("s", "s.main.0", at=1)])
    assert await health(recorder) == health_pb2.HealthCheckResponse.SERVING
    server = recorder.server
    assert server is not None and server.writer is not None
    pipeline = server.writer.pipeline
    task = pipeline._task
    assert task is not None
    task.cancel()
    async with asyncio.timeout(DEADLINE):
        await server.failed.wait()
    assert pipeline.died.is_set()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await append(stub, [progress("s.main.0", "c", "t", "after")])
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "commit pipeline has stopped" in (refused.value.details() or "")
    stream = RecordStream(stub, "w")
    ack = await stream.send([progress("s.main.0", "c", "t", "streamed")])
    assert ack.rejection.code == code_pb2.UNAVAILABLE
    assert await health(recorder) == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_jobs_queued_behind_a_dying_pipeline_fail_instead_of_hanging(
    recorder: RunningRecorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group that never lands: every queued future fails when the task ends."""
    stub = aio(recorder.stub())
    await append(stub, [agent_start("s", "s.main.0", at=1)])
    server = recorder.server
    assert server is not None and server.writer is not None
    pipeline = server.writer.pipeline
    stuck = asyncio.Event()

    async def never_lands(*_: Any) -> bool:
        stuck.set()
        await asyncio.Event().wait()
        return True

    monkeypatch.setattr(pipeline, "_land", never_lands)
    calls = [
        asyncio.create_task(append(stub, [(n, progress("s.main.0", "c", "t", str(n)))]))
        for n in (1, 2, 3)
    ]
    async with asyncio.timeout(DEADLINE):
        await stuck.wait()
    assert pipeline._task is not None
    pipeline._task.cancel()
    results = await asyncio.wait_for(
        asyncio.gather(*calls, return_exceptions=True), timeout=DEADLINE
    )
    codes = {r.code() for r in results if isinstance(r, grpc.aio.AioRpcError)}
    assert len(codes) == 1 and len(results) == 3
    assert codes == {grpc.StatusCode.UNAVAILABLE}


@pytest.mark.slow
async def test_serve_exits_non_zero_when_its_pipeline_dies(short_tmp: Path) -> None:
    """So that a supervisor restarts it: the batch fails, the process ends with 1."""
    socket = short_tmp / "r.sock"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "support.dying_serve",
        "serve",
        "--db",
        str(short_tmp / "r.db"),
        "--listen",
        f"unix://{socket}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=worker_env(),
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        async with asyncio.timeout(30):
            while b"listening on" not in await process.stdout.readline():
                pass
        async with grpc.aio.insecure_channel(f"unix://{socket}") as channel:
            stub = aio(api_grpc.RecorderServiceStub(channel))
            stream = RecordStream(stub, "w")
            ack = await stream.send([agent_start("s", "s.main.0", at=1)])
            assert ack.rejection.code == code_pb2.UNAVAILABLE
            assert "commit pipeline has stopped" in ack.rejection.message
        code = await asyncio.wait_for(process.wait(), timeout=30)
        stderr = (await process.stderr.read()).decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert code == 1
    assert "injected: a bug in the pipeline's loop" in stderr  # the traceback, logged
    assert "the commit pipeline stopped; exiting so that a supervisor restarts" in stderr


async def test_a_job_failing_inside_a_group_costs_the_jobs_before_and_after_it_nothing(
    recorder: RunningRecorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three batches queued at once form one group; the middle one meets a bug. The
    first is committed before the state is reloaded, so the third continues from it."""
    stub = aio(recorder.stub())
    await append(stub, [agent_start("s", "s.main.0", at=1), agent_start("s", "s.bad.0", at=1)])
    assert recorder.server is not None and recorder.server.writer is not None
    writer = recorder.server.writer
    monkeypatch.setattr(recording.Batch, "apply", raising_for("s.bad.0", recording.Batch.apply))

    def batch(sequence: int, event: Any) -> CheckedBatch:
        return CheckedBatch(events=[(sequence, event)])

    first = await writer.enqueue_record("w", batch(1, progress("s.main.0", "c", "t", "a")))
    middle = await writer.enqueue_record("w", batch(1, progress("s.bad.0", "c", "t", "b")))
    last = await writer.enqueue_record("w", batch(2, progress("s.main.0", "c", "t", "c")))
    assert (await asyncio.wait_for(first, DEADLINE)) == ([1], [])
    with pytest.raises(Internal):
        await asyncio.wait_for(middle, DEADLINE)
    assert (await asyncio.wait_for(last, DEADLINE)) == ([2], [])
    loop = (await stub.GetLoop(api.GetLoopRequest(loop_id="s.main.0"), timeout=DEADLINE)).loop
    assert [e.event.progress_message.text for e in loop.events[1:]] == ["a", "c"]
