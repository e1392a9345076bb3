"""The one writer: a task that owns the write connection and group-commits.

Everything that changes the store becomes a job on one queue. The writer takes
every job that has accumulated, runs them in one transaction (each job all or
nothing: the rules refuse before anything is written), commits once, and only
then resolves the jobs' futures, so an acknowledgement always means "committed".
Shutdown puts a sentinel on the queue: what was queued before it is still done.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from agent_recorder.v1 import events_pb2, session_pb2
from agent_recorder.v1 import recorder_service_pb2 as api
from google.protobuf.timestamp_pb2 import Timestamp

from recorder_server import recording
from recorder_server.checkpoints import Checkpointer
from recorder_server.errors import (
    AlreadyExists,
    NotFound,
    RecorderError,
    StorageFull,
    StorageUnavailable,
)
from recorder_server.leases import Leases
from recorder_server.recording import Batch, ChangeSet, Needed, RecordingOptions
from recorder_server.storage import WriteStore, ts_us

log = logging.getLogger(__name__)

Envelope = tuple[int | None, events_pb2.AgentEvent]
_STOP: Final = object()


@dataclass
class _Job:
    run: Callable[[], Awaitable[tuple[Any, ChangeSet]]]
    future: asyncio.Future[Any]
    # Record batches are pipelined: their rules run while the previous group
    # commits. Every other job runs alone, in a transaction of its own.
    pipelined: bool = False


@dataclass
class _Flight:
    """A group whose write is on the store's thread; its jobs resolve when it lands."""

    jobs: list[tuple[_Job, Any, ChangeSet]]
    write: asyncio.Future[None]
    nbytes: int
    # What the write changes: until it lands, the committed state of these is stale.
    loop_ids: frozenset[str]
    session_ids: frozenset[str]
    event_keys: list[tuple[str, int]]

    @classmethod
    def of(
        cls, jobs: list[tuple[_Job, Any, ChangeSet]], changes: ChangeSet, store: WriteStore
    ) -> _Flight:
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


@dataclass
class CommitSignal:
    """Wakes everyone waiting for the next commit (live tails), without polling."""

    _event: asyncio.Event = field(default_factory=asyncio.Event)

    def next(self) -> asyncio.Event:
        """The event the next commit sets; take it before reading to miss nothing."""
        return self._event

    def fire(self) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()


class Broadcast:
    """Session lifecycle events fanned out to WatchSessions subscribers."""

    def __init__(self) -> None:
        self._subscribers: set[asyncio.Queue[api.WatchSessionsResponse | None]] = set()

    def subscribe(self) -> asyncio.Queue[api.WatchSessionsResponse | None]:
        queue: asyncio.Queue[api.WatchSessionsResponse | None] = asyncio.Queue(maxsize=10_000)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[api.WatchSessionsResponse | None]) -> None:
        self._subscribers.discard(queue)

    def publish(self, message: api.WatchSessionsResponse) -> None:
        for queue in list(self._subscribers):
            if queue.full():
                # A subscriber that stopped reading is cut off rather than
                # letting its backlog grow without bound.
                self._subscribers.discard(queue)
                queue.put_nowait(None) if not queue.full() else None
                continue
            queue.put_nowait(message)

    def close(self) -> None:
        for queue in list(self._subscribers):
            if not queue.full():
                queue.put_nowait(None)
        self._subscribers.clear()


def _storage_error(exc: BaseException) -> RecorderError:
    full = isinstance(exc, sqlite3.OperationalError) and "full" in str(exc).lower()
    if full:
        return StorageFull(f"database disk is full: {exc}")
    return StorageUnavailable(f"database write failed: {exc}")


def _log_failure(future: asyncio.Future[None]) -> None:
    exc = future.exception()
    if exc is not None:
        log.warning("checkpoint on the write connection failed: %s", exc)


def now_timestamp() -> Timestamp:
    ts = Timestamp()
    ts.GetCurrentTime()
    return ts


class Writer:
    """Owns the WriteStore, the rules' snapshot and the writer leases."""

    def __init__(
        self,
        store: WriteStore,
        options: RecordingOptions,
        *,
        # Jobs accepted but not applied, each holding a parsed batch (~1 MB on the
        # wire from a client library, several MB parsed). A deeper queue does not
        # feed group commit (one group is applied while the previous commits) but
        # holds memory: peak RSS over 1,000,000 events was 203 MB with 4 and 173 MB
        # with 2, at the same ingest rate (16 held ~80 MB more). When full, Record
        # streams stop reading and HTTP/2 flow control pushes back on the clients.
        max_queue: int = 2,
        max_group: int = 512,
    ) -> None:
        self.store = store
        self.options = options
        self.leases = Leases()
        self.commits = CommitSignal()
        self.lifecycle = Broadcast()
        self.listeners: list[Callable[[ChangeSet], None]] = []
        self._queue: asyncio.Queue[_Job | object] = asyncio.Queue(maxsize=max_queue)
        self._max_group = max_group
        self._snapshot = recording.Snapshot()
        self._task: asyncio.Task[None] | None = None
        self.checkpointer: Checkpointer | None = None
        # Loops and sessions the snapshot keeps before letting closed ones go.
        self.cache_limit = 4096
        self._flight: _Flight | None = None

    async def start(self) -> None:
        self._snapshot = await self.store.load_open()
        self._task = asyncio.create_task(self._run(), name="recorder-writer")

    async def stop(self) -> None:
        """Drain: every job queued before this is committed, then the task ends."""
        if self._task is None:
            return
        await self._queue.put(_STOP)
        await self._task
        self._task = None
        self.lifecycle.close()
        self.commits.fire()

    # -- the loop -------------------------------------------------------------

    async def _run(self) -> None:
        """Group, apply, hand the group to the store's thread, and go on with the next.

        At most one group is in flight: the rules of group N+1 run while group N
        commits, which is why a failed write also fails the group built on it.
        """
        held: _Job | object | None = None
        while True:
            item = held if held is not None else await self._queue.get()
            held = None
            if self._flight is not None and self._flight.write.done():
                await self._land()
            if item is _STOP:
                break
            assert isinstance(item, _Job)
            if not item.pipelined:
                await self._land()
                await self._commit_alone(item)
                continue
            group, held = self._take_group(item)
            applied = await self._apply(group)
            if not await self._land():
                self._fail(applied, StorageUnavailable("an earlier write of this group failed"))
                applied = []
            self._take_off(applied)
        await self._land()

    def _take_group(self, first: _Job) -> tuple[list[_Job], _Job | object | None]:
        """Pipelined jobs already queued behind `first`, and the item that ended the run."""
        group = [first]
        while len(group) < self._max_group and not self._queue.empty():
            item = self._queue.get_nowait()
            if item is _STOP or not isinstance(item, _Job) or not item.pipelined:
                return group, item
            group.append(item)
        return group, None

    async def _apply(self, group: list[_Job]) -> list[tuple[_Job, Any, ChangeSet]]:
        """Run each job's rules; a refused job fails alone and changes nothing."""
        applied: list[tuple[_Job, Any, ChangeSet]] = []
        for job in group:
            try:
                result, changes = await job.run()
            except RecorderError as exc:
                job.future.set_exception(exc)
                continue
            except sqlite3.Error as exc:
                job.future.set_exception(_storage_error(exc))
                continue
            applied.append((job, result, changes))
        return applied

    def _take_off(self, applied: list[tuple[_Job, Any, ChangeSet]]) -> None:
        """Hand the group's changes to the store; its jobs resolve when it commits."""
        if not applied:
            return
        changes = recording.combine([changes for _, _, changes in applied])
        flight = _Flight.of(applied, changes, self.store)
        flight.write.add_done_callback(lambda _: self._landed(flight))
        self._flight = flight
        # Lookups of what may leave the snapshot now wait for this write when
        # it touches them (see _lookup), so closed loops can be let go.
        limit = self.cache_limit
        if len(self._snapshot.loops) > limit or len(self._snapshot.sessions) > limit:
            recording.evict(self._snapshot)

    def _landed(self, flight: _Flight) -> None:
        """Acknowledge a committed group at once (a callback: the loop may be busy)."""
        exc = flight.write.exception()
        if exc is not None:
            log.error("write transaction failed: %s", exc)
            error = _storage_error(exc)
            self._fail(flight.jobs, error)
            return
        for job, result, _ in flight.jobs:
            if not job.future.done():
                job.future.set_result(result)
        for key in flight.event_keys:
            self._snapshot.unwritten.pop(key, None)
        self._release_ended([changes for _, _, changes in flight.jobs])
        self._after_commit([changes for _, _, changes in flight.jobs])
        if self.checkpointer is not None:
            self.checkpointer.wrote(flight.nbytes)
            if self.checkpointer.catch_up:
                # Queued before the next group's write, so its transaction
                # restarts the WAL from the beginning (see checkpoints.py).
                self.checkpointer.catch_up = False
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

    async def _commit_alone(self, job: _Job) -> None:
        try:
            await self.store.begin()
            try:
                result, changes = await job.run()
            except RecorderError as exc:
                await self.store.rollback()
                job.future.set_exception(exc)
                return
            await self.store.commit()
        except sqlite3.Error as exc:
            log.error("write transaction failed: %s", exc)
            await self.store.rollback()
            await self._reload()
            job.future.set_exception(_storage_error(exc))
            return
        job.future.set_result(result)
        self._release_ended([changes])
        self._after_commit([changes])

    @staticmethod
    def _fail(jobs: Sequence[tuple[_Job, Any, ChangeSet]], error: RecorderError) -> None:
        for job, _, _ in jobs:
            if not job.future.done():
                job.future.set_exception(error)

    async def _reload(self) -> None:
        """Nothing of a failed write is kept: the rules start again from the store."""
        try:
            self._snapshot = await self.store.load_open()
        except sqlite3.Error as exc:
            log.error("reloading state after a failed write: %s", exc)

    def _release_ended(self, changesets: Sequence[ChangeSet]) -> None:
        """Leases of sessions whose last open loop ended (one pass per group)."""
        ended = {
            changes.loops[loop_id].record.session_id
            for changes in changesets
            for loop_id in changes.ended_loops
            if loop_id in changes.loops
        }
        if ended:
            self.leases.release(ended - recording.open_sessions(self._snapshot))

    def _after_commit(self, changesets: Sequence[ChangeSet]) -> None:
        self.commits.fire()
        for changes in changesets:
            for lifecycle, ids in (
                (api.SESSION_LIFECYCLE_ADMITTED, changes.admitted),
                (api.SESSION_LIFECYCLE_FINALIZED, changes.finalized),
            ):
                for sid in ids:
                    self._publish(lifecycle, sid, changes)
            for listener in self.listeners:
                listener(changes)

    def _publish(self, lifecycle: int, session_id: str, changes: ChangeSet) -> None:
        state = changes.sessions.get(session_id)
        agent = state.session.agent_id if state is not None else ""
        message = api.WatchSessionsResponse(
            lifecycle=lifecycle,  # type: ignore[arg-type]
            session_id=session_id,
            agent_id=agent,
        )
        message.timestamp.CopyFrom(now_timestamp())
        self.lifecycle.publish(message)

    async def _enqueue(
        self, run: Callable[[], Awaitable[tuple[Any, ChangeSet]]], pipelined: bool = False
    ) -> asyncio.Future[Any]:
        """Queue a job (waiting while the queue is full) and return its future."""
        if self._task is None:
            raise StorageUnavailable("the recorder is shutting down")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(run, future, pipelined))
        return future

    async def _submit(self, run: Callable[[], Awaitable[tuple[Any, ChangeSet]]]) -> Any:
        return await (await self._enqueue(run))

    # -- jobs -----------------------------------------------------------------

    async def _lookup(self, needed: Callable[[], Needed]) -> None:
        """Load what the rules will consult, until nothing is missing.

        From the committed state, beside the write in flight, unless that write
        changes something asked for (then after it lands).
        """
        for _ in range(4):
            missing = needed()
            if not missing:
                return
            flight = self._flight
            if flight is not None and flight.touches(missing):
                await asyncio.wait([flight.write])
            self.store.fetch_committed(self._snapshot, missing)

    async def _persist(self, batch: Batch) -> ChangeSet:
        await self.store.persist(batch.changes)
        recording.merge(self._snapshot, batch)
        return batch.changes

    async def record(self, writer_id: str, envelopes: Sequence[Envelope]) -> list[int]:
        """Apply one batch of events; returns the sequence of each event."""
        result: list[int] = await (await self.enqueue_record(writer_id, envelopes))
        return result

    async def enqueue_record(
        self, writer_id: str, envelopes: Sequence[Envelope]
    ) -> asyncio.Future[list[int]]:
        """Queue a batch in arrival order; the future resolves once it is committed."""

        items = recording.prepare(envelopes)

        async def run() -> tuple[list[int], ChangeSet]:
            await self._lookup(lambda: recording.needed(self._snapshot, items))
            self.leases.claim(writer_id, recording.sessions_touched(self._snapshot, items))
            batch = Batch(self._snapshot, self.options)
            batch.apply(items)
            recording.merge(self._snapshot, batch)
            return batch.changes.sequences, batch.changes

        return await self._enqueue(run, pipelined=True)

    async def flush(self, session_id: str | None) -> api.FlushResponse:
        async def run() -> tuple[api.FlushResponse, ChangeSet]:
            sids = await self._scope(session_id)
            batch = recording.flush(self._snapshot, sids, session_id, now_timestamp())
            changes = await self._persist(batch)
            response = api.FlushResponse(
                aborted_loop_ids=changes.ended_loops, finalized_session_ids=changes.finalized
            )
            return response, changes

        response: api.FlushResponse = await self._submit(run)
        return response

    async def checkpoint(self, session_id: str | None) -> api.CheckpointResponse:
        async def run() -> tuple[api.CheckpointResponse, ChangeSet]:
            sids = await self._scope(session_id)
            batch = recording.checkpoint(self._snapshot, sids, now_timestamp())
            changes = await self._persist(batch)
            return api.CheckpointResponse(finalized_session_ids=changes.finalized), changes

        response: api.CheckpointResponse = await self._submit(run)
        return response

    async def _scope(self, session_id: str | None) -> list[str]:
        """The unfinalized sessions a Flush/Checkpoint covers, loaded."""
        sids = await self.store.unfinalized_sessions(session_id)
        if session_id is not None and not sids and not await self.store.session_exists(session_id):
            raise NotFound(f"session {session_id!r} not found", session_id=session_id)
        await self._fetch_sessions(sids)
        return sids

    async def _fetch_sessions(self, session_ids: Sequence[str]) -> None:
        await self.store.fetch(
            self._snapshot, Needed(frozenset(), frozenset(session_ids), frozenset())
        )

    async def open_session(self, request: api.OpenSessionRequest) -> session_pb2.Session:
        async def run() -> tuple[session_pb2.Session, ChangeSet]:
            sid = request.session_id or uuid.uuid4().hex
            now = request.timestamp if request.HasField("timestamp") else now_timestamp()
            formation = session_pb2.SessionFormation()
            formation.explicit.timestamp.CopyFrom(now)
            ref = request.parent_spawn_ref if request.HasField("parent_spawn_ref") else None
            return await self._open(sid, request.agent_id, request.scope, ref, formation, now)

        session: session_pb2.Session = await self._submit(run)
        return session

    async def _open(
        self,
        sid: str,
        agent_id: str,
        scope: session_pb2.SessionScope.ValueType,
        ref: session_pb2.SpawnRef | None,
        formation: session_pb2.SessionFormation,
        now: Timestamp,
    ) -> tuple[session_pb2.Session, ChangeSet]:
        await self._fetch_sessions([sid])
        batch = recording.open_session(self._snapshot, sid, agent_id, scope, ref, formation, now)
        changes = await self._persist(batch)
        return changes.sessions[sid].session, changes

    async def rotate_session(self, request: api.RotateSessionRequest) -> api.RotateSessionResponse:
        async def run() -> tuple[api.RotateSessionResponse, ChangeSet]:
            now = request.timestamp if request.HasField("timestamp") else now_timestamp()
            latest_id = await self.store.latest_session_id(request.agent_id)
            latest = None
            if latest_id is not None:
                await self._fetch_sessions([latest_id])
                state = self._snapshot.sessions.get(latest_id)
                latest = state.session if state is not None else None
            if latest is not None and not recording.rotation_needed(
                latest, request.threshold_secs, now
            ):
                return api.RotateSessionResponse(session=latest, rotated=False), ChangeSet()
            formation = session_pb2.SessionFormation()
            timeout = formation.inactivity_timeout
            timeout.threshold_secs = request.threshold_secs
            if latest_id is not None:
                timeout.previous_session_id = latest_id
            timeout.timestamp.CopyFrom(now)
            sid = request.new_session_id or uuid.uuid4().hex
            session, changes = await self._open(
                sid, request.agent_id, request.scope, None, formation, now
            )
            return api.RotateSessionResponse(session=session, rotated=True), changes

        response: api.RotateSessionResponse = await self._submit(run)
        return response

    async def delete_sessions(self, session_ids: Sequence[str]) -> None:
        async def run() -> tuple[None, ChangeSet]:
            for sid in session_ids:
                if not await self.store.session_exists(sid):
                    raise NotFound(f"session {sid!r} not found", session_id=sid)
            await self.store.delete_sessions(session_ids)
            for sid in session_ids:
                recording.forget_session(self._snapshot, sid)
                self.leases.forget(sid)
            return None, ChangeSet()

        await self._submit(run)
        for sid in session_ids:
            message = api.WatchSessionsResponse(
                lifecycle=api.SESSION_LIFECYCLE_DELETED, session_id=sid
            )
            message.timestamp.CopyFrom(now_timestamp())
            self.lifecycle.publish(message)

    async def prune(self, older_than: Timestamp, dry_run: bool) -> list[str]:
        async def run() -> tuple[list[str], ChangeSet]:
            ids = await self.store.prunable(ts_us(older_than))
            if not dry_run:
                await self.store.delete_sessions(ids)
                for sid in ids:
                    recording.forget_session(self._snapshot, sid)
            return ids, ChangeSet()

        ids: list[str] = await self._submit(run)
        return ids

    async def import_session(
        self, session: session_pb2.Session, replace: bool
    ) -> api.ImportSessionResponse:
        """Store a validated session as given, in one transaction of its own job.

        The snapshot forgets the session (a replaced one's cached loops would be
        stale) and then loads its open loops: those stay open for the rules, as
        after a restart.
        """

        async def run() -> tuple[api.ImportSessionResponse, ChangeSet]:
            sid = session.session_id
            existed = await self.store.session_exists(sid)
            if existed and not replace:
                raise AlreadyExists(f"session {sid!r} already exists", session_id=sid)
            taken = await self.store.loops_elsewhere(sid, [loop.loop_id for loop in session.loops])
            if taken:
                raise AlreadyExists(
                    f"loop {taken[0]!r} is stored in another session", loop_id=taken[0]
                )
            if existed:
                await self.store.delete_sessions([sid])
            events = await self.store.insert_session(session)
            recording.forget_session(self._snapshot, sid)
            loop_ids = {loop.loop_id for loop in session.loops}
            for loop_id in loop_ids:
                self._snapshot.loops.pop(loop_id, None)
            for key in [k for k in self._snapshot.stored_events if k[0] in loop_ids]:
                del self._snapshot.stored_events[key]
            open_ids = frozenset(
                loop.loop_id for loop in session.loops if loop.status in recording.OPEN_STATUSES
            )
            await self.store.fetch(self._snapshot, Needed(open_ids, frozenset([sid]), frozenset()))
            response = api.ImportSessionResponse(
                session_id=sid, loops=len(session.loops), events=events, replaced=existed
            )
            return response, ChangeSet()

        response: api.ImportSessionResponse = await self._submit(run)
        return response
