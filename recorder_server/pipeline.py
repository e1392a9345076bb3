"""The one commit pipeline: every change to the store is a job given to `submit`.

Contract: `submit(job)` returns a future that resolves with the job's result once
what it changed is committed, or fails with a `RecorderError`; it never hangs.

Inside, one task takes the jobs in order. Record batches (pipelined jobs) that
have accumulated form a group: their rules run, their ChangeSets are combined and
handed to the store as one transaction (on the store's thread, or inline when
small: `WriteStore.write` decides), and the task goes on with the next group while
that one commits. Every other job runs alone, in a transaction of its own. After
each commit the checkpointer learns how much was written.

The pipeline supervises itself:
- a job that raises anything unexpected fails alone with `Internal` (its traceback
  logged once, its label in the message), the state is reloaded from the store,
  and the next job runs;
- if the task itself ends (a bug in the loop, or it is cancelled), every queued
  and in-flight future fails at once, `submit` refuses new work with
  `StorageUnavailable`, and `died` is set so the server can turn NOT_SERVING and
  exit non-zero.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from recorder_server import recording
from recorder_server.checkpoints import Checkpointer
from recorder_server.errors import Internal, RecorderError, StorageFull, StorageUnavailable
from recorder_server.recording import ChangeSet, Needed
from recorder_server.storage import WriteStore

log = logging.getLogger(__name__)

Run = Callable[[], Awaitable[tuple[Any, ChangeSet]]]
_STOP: Final = object()


@dataclass
class Job:
    """A unit of work: `run` applies the rules and says what it changed."""

    run: Run
    # What the job is about, for error messages and the log (ids, writer).
    label: str
    # Record batches are pipelined: their rules run while the previous group
    # commits. Every other job runs alone, in a transaction of its own.
    pipelined: bool = False
    future: asyncio.Future[Any] = field(init=False)


Applied = tuple[Job, Any, ChangeSet]


@dataclass
class _Flight:
    """A group whose write is under way; its jobs resolve when it lands."""

    jobs: list[Applied]
    write: asyncio.Future[None]
    nbytes: int
    # What the write changes: until it lands, the committed state of these is stale.
    loop_ids: frozenset[str]
    session_ids: frozenset[str]
    event_keys: list[tuple[str, int]]

    @classmethod
    def of(cls, jobs: list[Applied], changes: ChangeSet, store: WriteStore) -> _Flight:
        write, nbytes = store.write(changes)
        sessions = {*changes.sessions, *changes.pending_refs}
        sessions.update(sid for sid, _ in changes.groups.values())
        keys = [(row[0], row[1]) for row in changes.events]
        return cls(jobs, write, nbytes, frozenset(changes.loops), frozenset(sessions), keys)

    def touches(self, needed: Needed) -> bool:
        return not (
            self.loop_ids.isdisjoint(needed.loop_ids)
            and self.session_ids.isdisjoint(needed.session_ids)
        )


def storage_error(exc: BaseException) -> RecorderError:
    """What a failed write means for the client: the disk is full, or try again."""
    full = isinstance(exc, sqlite3.OperationalError) and "full" in str(exc).lower()
    if full:
        return StorageFull(f"database disk is full: {exc}")
    return StorageUnavailable(f"database write failed: {exc}")


def _log_failure(future: asyncio.Future[None]) -> None:
    exc = future.exception()
    if exc is not None:
        log.warning("checkpoint on the write connection failed: %s", exc)


class Pipeline:
    """The queue, the group in flight and the store's write connection, supervised."""

    def __init__(
        self,
        store: WriteStore,
        *,
        committed: Callable[[list[Applied], list[tuple[str, int]]], None],
        reload: Callable[[], Awaitable[None]],
        handed_off: Callable[[], None] = lambda: None,
        # Jobs accepted but not applied: deeper holds memory, not throughput; when
        # full, Record streams stop reading and HTTP/2 flow control pushes back.
        max_queue: int = 2,
        max_group: int = 512,
    ) -> None:
        self.store = store
        self.checkpointer: Checkpointer | None = None
        # Set when the pipeline's task ended without being asked to.
        self.died = asyncio.Event()
        self._committed = committed
        self._reload = reload
        self._handed_off = handed_off
        self._queue: asyncio.Queue[Job | object] = asyncio.Queue(maxsize=max_queue)
        self._max_group = max_group
        self._task: asyncio.Task[None] | None = None
        self._flight: _Flight | None = None
        # The jobs the task holds between the queue and the flight.
        self._working: list[Job] = []
        self._stopping = False

    # -- the contract ----------------------------------------------------------

    async def submit(self, job: Job) -> asyncio.Future[Any]:
        """Queue a job (waiting while the queue is full); its future resolves once committed."""
        self._refuse_if_stopped()
        job.future = asyncio.get_running_loop().create_future()
        await self._queue.put(job)
        if self.died.is_set():
            self._fail_queued()
        return job.future

    async def run(self, job: Job) -> Any:
        """Submit a job and wait for its result."""
        return await (await self.submit(job))

    async def settled(self, needed: Needed) -> None:
        """Wait for the write in flight if it changes anything `needed` names."""
        flight = self._flight
        if flight is not None and flight.touches(needed):
            await asyncio.wait([flight.write])

    @property
    def alive(self) -> bool:
        return self._task is not None and not self.died.is_set()

    def _refuse_if_stopped(self) -> None:
        if self.died.is_set():
            raise StorageUnavailable("the recorder's commit pipeline has stopped; restart it")
        if self._task is None or self._stopping:
            raise StorageUnavailable("the recorder is shutting down")

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="recorder-pipeline")
        self._task.add_done_callback(self._ended)

    async def stop(self) -> None:
        """Drain: every job queued before this is committed, then the task ends."""
        task = self._task
        if task is None or self._stopping:
            return
        self._stopping = True
        if not task.done():
            await self._queue.put(_STOP)
            await asyncio.wait([task])

    def _ended(self, task: asyncio.Task[None]) -> None:
        """The task is over: unless asked to stop, that is a death, and nothing may hang."""
        if self._stopping and not task.cancelled() and task.exception() is None:
            return
        if task.cancelled():
            log.error("the commit pipeline was cancelled")
        elif (exc := task.exception()) is not None:
            log.error("the commit pipeline died", exc_info=exc)
        self.died.set()
        error = StorageUnavailable("the recorder's commit pipeline has stopped; restart it")
        flight, self._flight = self._flight, None
        if flight is not None:
            self._fail(flight.jobs, error)
        for job in self._working:
            if not job.future.done():
                job.future.set_exception(error)
        self._fail_queued()

    def _fail_queued(self) -> None:
        error = StorageUnavailable("the recorder's commit pipeline has stopped; restart it")
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if isinstance(item, Job) and not item.future.done():
                item.future.set_exception(error)

    # -- the loop ------------------------------------------------------------------

    async def _run(self) -> None:
        """Group, apply, hand the group to the store, and go on with the next.

        At most one group is in flight: the rules of group N+1 run while group N
        commits, which is why a failed write also fails the group built on it.
        """
        held: Job | object | None = None
        while True:
            item = held if held is not None else await self._queue.get()
            held = None
            self._working = [item] if isinstance(item, Job) else []
            if self._flight is not None and self._flight.write.done():
                await self._land()
            if item is _STOP:
                break
            assert isinstance(item, Job)
            if not item.pipelined:
                await self._land()
                await self._commit_alone(item)
                continue
            group, held = self._take_group(item)
            self._working = [*group, *([held] if isinstance(held, Job) else [])]
            applied = await self._apply(group)
            if not await self._land():
                self._fail(applied, StorageUnavailable("an earlier write of this group failed"))
                applied = []
            await self._take_off(applied)
        await self._land()

    def _take_group(self, first: Job) -> tuple[list[Job], Job | object | None]:
        """Pipelined jobs already queued behind `first`, and the item that ended the run."""
        group = [first]
        while len(group) < self._max_group and not self._queue.empty():
            item = self._queue.get_nowait()
            if not isinstance(item, Job) or not item.pipelined:
                return group, item
            group.append(item)
        return group, None

    async def _apply(self, group: list[Job]) -> list[Applied]:
        """Run each job's rules; a job that fails fails alone and costs no other job."""
        applied: list[Applied] = []
        for job in group:
            try:
                result, changes = await job.run()
            except RecorderError as exc:
                job.future.set_exception(exc)  # refused before anything changed
                continue
            except Exception as exc:
                job.future.set_exception(self._unexpected(job, exc))
                applied = await self._start_over(applied)
                continue
            applied.append((job, result, changes))
        return applied

    def _unexpected(self, job: Job, exc: Exception) -> RecorderError:
        """A job that failed other than by a refusal: the store's fault, or a bug."""
        if isinstance(exc, sqlite3.Error):
            return storage_error(exc)
        log.error("unexpected error in %s", job.label, exc_info=exc)
        return Internal(f"internal error in {job.label}: {type(exc).__name__}: {exc}")

    async def _start_over(self, applied: list[Applied]) -> list[Applied]:
        """After a job failed halfway (the snapshot may be half-changed): commit the
        jobs applied before it, then reload the snapshot from the store, which then
        holds them. Nothing is left to apply on top of."""
        if not await self._land():  # a failed write reloads by itself
            self._fail(applied, StorageUnavailable("an earlier write of this group failed"))
            return []
        if await self._take_off(applied) and await self._land():
            await self._reload()
        return []

    async def _take_off(self, applied: list[Applied]) -> bool:
        """Hand the group's changes to the store; its jobs resolve when it commits.
        False when the write could not even be built (the state is then reloaded)."""
        if not applied:
            return True
        changes = recording.combine([changes for _, _, changes in applied])
        try:
            flight = _Flight.of(applied, changes, self.store)
        except Exception as exc:
            log.error("building the write of a group failed", exc_info=exc)
            labels = "; ".join(job.label for job, _, _ in applied)
            self._fail(applied, Internal(f"internal error writing {labels}: {exc}"))
            await self._reload()
            return False
        flight.write.add_done_callback(lambda _: self._landed(flight))
        self._flight = flight
        self._handed_off()
        return True

    def _landed(self, flight: _Flight) -> None:
        """Acknowledge a committed group at once (a callback: the loop may be busy)."""
        if flight.write.cancelled():
            self._fail(flight.jobs, StorageUnavailable("the write was cancelled"))
            return
        exc = flight.write.exception()
        if exc is not None:
            log.error("write transaction failed: %s", exc)
            self._fail(flight.jobs, storage_error(exc))
            return
        for job, result, _ in flight.jobs:
            if not job.future.done():
                job.future.set_result(result)
        self._committed(flight.jobs, flight.event_keys)
        self._wrote(flight.nbytes)

    def _wrote(self, nbytes: int) -> None:
        checkpointer = self.checkpointer
        if checkpointer is None:
            return
        checkpointer.wrote(nbytes)
        if checkpointer.catch_up:
            # Queued before the next group's write, so its transaction restarts
            # the WAL from the beginning (see checkpoints.py).
            checkpointer.catch_up = False
            self.store.catch_up().add_done_callback(_log_failure)

    async def _land(self) -> bool:
        """Wait for the group in flight, if any; after a failure, rebuild the snapshot."""
        flight, self._flight = self._flight, None
        if flight is None:
            return True
        try:
            await flight.write
            return True
        except Exception:
            await self._reload()
            return False

    async def _commit_alone(self, job: Job) -> None:
        try:
            await self.store.begin()
            try:
                result, changes = await job.run()
            except Exception:
                await self.store.rollback()
                raise
            await self.store.commit()
        except RecorderError as exc:
            job.future.set_exception(exc)  # refused; its transaction rolled back
            return
        except Exception as exc:
            await self._safe_rollback()
            job.future.set_exception(self._unexpected(job, exc))
            await self._reload()
            return
        job.future.set_result(result)
        self._committed([(job, result, changes)], [])

    async def _safe_rollback(self) -> None:
        try:
            await self.store.rollback()
        except sqlite3.Error as exc:
            log.error("rollback after a failed job: %s", exc)

    @staticmethod
    def _fail(jobs: Sequence[Applied], error: RecorderError) -> None:
        for job, _, _ in jobs:
            if not job.future.done():
                job.future.set_exception(error)
