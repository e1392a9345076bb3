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
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent_recorder.v1 import recorder_service_pb2 as api
from agent_recorder.v1 import session_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from recorder_server import recording
from recorder_server.checkpoints import Checkpointer
from recorder_server.errors import AlreadyExists, NotFound, RecorderError
from recorder_server.leases import Leases
from recorder_server.pipeline import Applied, Job, Pipeline, Run
from recorder_server.recording import Batch, ChangeSet, Needed, RecordingOptions, Refusal
from recorder_server.storage import WriteStore, ts_us
from recorder_server.validation import CheckedBatch

log = logging.getLogger(__name__)

# What a Record batch came to: the sequence of each event, and those refused.
Recorded = tuple[list[int], list[Refusal]]


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


class Subscription:
    """One WatchSessions subscriber's backlog; `cut_off` once it fell too far behind."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.cut_off = False
        # Unbounded, but never holds more than `limit` messages and the end marker.
        self.queue: asyncio.Queue[api.WatchSessionsResponse | None] = asyncio.Queue()

    def offer(self, message: api.WatchSessionsResponse) -> bool:
        """Queue a message; False (and the end marker queued) when over the limit."""
        if self.queue.qsize() >= self.limit:
            self.cut_off = True
            self.queue.put_nowait(None)
            return False
        self.queue.put_nowait(message)
        return True


class Broadcast:
    """Session lifecycle events fanned out to WatchSessions subscribers."""

    def __init__(self, backlog: int = 10_000) -> None:
        self.backlog = backlog
        self._subscribers: set[Subscription] = set()

    def subscribe(self) -> Subscription:
        subscription = Subscription(self.backlog)
        self._subscribers.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscribers.discard(subscription)

    def publish(self, message: api.WatchSessionsResponse) -> None:
        for subscription in list(self._subscribers):
            # A subscriber that stopped reading is cut off (it learns so) rather
            # than letting its backlog grow without bound.
            if not subscription.offer(message):
                self._subscribers.discard(subscription)

    def close(self) -> None:
        for subscription in self._subscribers:
            subscription.queue.put_nowait(None)
        self._subscribers.clear()


def now_timestamp() -> Timestamp:
    """Now, from one clock read (every Record batch takes one: GetCurrentTime costs
    ten times as much)."""
    ns = time.time_ns()
    return Timestamp(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000)


@dataclass
class _Vanished:
    """A session whose writer's stream ended with loops open, and when it was seen."""

    writer_id: str
    seen: Timestamp
    timer: asyncio.TimerHandle


class Writer:
    """The recording core's write side: the rules' snapshot, leases, and the jobs
    that change the store, each submitted to the one commit pipeline."""

    def __init__(
        self,
        store: WriteStore,
        options: RecordingOptions,
        *,
        max_queue: int = 2,
        max_group: int = 512,
        abandon_after_s: int = 300,
    ) -> None:
        self.store = store
        self.options = options
        # Writers that vanish (DESIGN.md): their open loops are aborted this long
        # after their last stream ended, unless they come back (0: never).
        self.abandon_after_s = abandon_after_s
        self._vanished: dict[str, _Vanished] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.leases = Leases()
        self.commits = CommitSignal()
        self.lifecycle = Broadcast()
        self.listeners: list[Callable[[ChangeSet], None]] = []
        self.pipeline = Pipeline(
            store,
            committed=self._committed,
            reload=self._reload,
            handed_off=self._maybe_evict,
            max_queue=max_queue,
            max_group=max_group,
        )
        self.rules = recording.Rules(options)
        # Loops and sessions the snapshot keeps before letting closed ones go.
        self.cache_limit = 4096

    @property
    def checkpointer(self) -> Checkpointer | None:
        return self.pipeline.checkpointer

    @checkpointer.setter
    def checkpointer(self, checkpointer: Checkpointer | None) -> None:
        self.pipeline.checkpointer = checkpointer

    async def start(self) -> None:
        self.rules.snapshot = await self.store.load_open()
        self.pipeline.start()
        # Loops left open by a previous run had writers that are gone now.
        self._expect(recording.open_sessions(self.rules.snapshot), "(before the restart)")

    async def stop(self) -> None:
        """Drain: every job queued before this is committed, then the pipeline ends."""
        for vanished in self._vanished.values():
            vanished.timer.cancel()
        self._vanished.clear()
        await self.pipeline.stop()
        self.release_readers()

    # -- writers that come and go ------------------------------------------------

    def attach(self, writer_id: str) -> None:
        """A Record stream of this writer opened: it holds its sessions again."""
        self.leases.attach(writer_id)
        for sid in [sid for sid, v in self._vanished.items() if v.writer_id == writer_id]:
            self._vanished.pop(sid).timer.cancel()

    def detach(self, writer_id: str) -> None:
        """A Record stream ended; if it was the writer's last, its open loops wait
        `abandon_after_s` for it to come back."""
        released = self.leases.detach(writer_id)
        self._expect(released & recording.open_sessions(self.rules.snapshot), writer_id)

    def _expect(self, session_ids: set[str], writer_id: str) -> None:
        if self.abandon_after_s <= 0 or not session_ids:
            return
        seen = now_timestamp()
        loop = asyncio.get_running_loop()
        for sid in session_ids:
            timer = loop.call_later(self.abandon_after_s, self._abandon_later, sid)
            previous = self._vanished.get(sid)
            if previous is not None:
                previous.timer.cancel()
            self._vanished[sid] = _Vanished(writer_id, seen, timer)

    def _came_back(self, session_ids: set[str]) -> None:
        """A batch writes to these sessions: whoever writes them, they are not abandoned."""
        for sid in session_ids & self._vanished.keys():
            self._vanished.pop(sid).timer.cancel()

    def _abandon_later(self, session_id: str) -> None:
        vanished = self._vanished.pop(session_id, None)
        if vanished is None or self.leases.holder(session_id) is not None:
            return
        task = asyncio.get_running_loop().create_task(self._abandon(session_id, vanished))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _abandon(self, session_id: str, vanished: _Vanished) -> None:
        seen = vanished.seen.ToJsonString()
        rejection = f"writer disconnected: writer {vanished.writer_id} last seen at {seen}"

        async def run() -> tuple[None, ChangeSet]:
            await self._fetch_sessions([session_id])
            batch = recording.abandon(self.rules.snapshot, [session_id], rejection, now_timestamp())
            return None, await self._persist(batch)

        try:
            await self._submit(f"abandonment of session {session_id!r}", run)
        except RecorderError as exc:
            log.error("could not abandon the loops of session %r: %s", session_id, exc.message)
        else:
            log.warning("session %r: open loops aborted (%s)", session_id, rejection)

    # -- what readers wait on -------------------------------------------------------

    def next_commit(self) -> asyncio.Event:
        """The event the next commit sets; take it before reading to miss nothing."""
        return self.commits.next()

    def watch(self) -> Subscription:
        """Session admissions and finalizations from now on (WatchSessions)."""
        return self.lifecycle.subscribe()

    def unwatch(self, subscription: Subscription) -> None:
        self.lifecycle.unsubscribe(subscription)

    def release_readers(self) -> None:
        """End every WatchSessions subscription and wake every waiting tail (stopping)."""
        self.lifecycle.close()
        self.commits.fire()

    # -- what the pipeline calls back --------------------------------------------

    def _committed(self, jobs: Sequence[Applied], event_keys: Sequence[tuple[str, int]]) -> None:
        for key in event_keys:
            self.rules.snapshot.unwritten.pop(key, None)
        changesets = [changes for _, _, changes in jobs]
        self._release_ended(changesets)
        self._after_commit(changesets)

    def _maybe_evict(self) -> None:
        """Lookups of what may leave the snapshot wait for the write in flight when it
        touches them (see _fetch_committed), so closed loops can be let go once handed off."""
        limit = self.cache_limit
        if len(self.rules.snapshot.loops) > limit or len(self.rules.snapshot.sessions) > limit:
            recording.evict(self.rules.snapshot)

    async def _reload(self) -> None:
        """Nothing of a failed write is kept: the rules start again from the store."""
        try:
            self.rules.snapshot = await self.store.load_open()
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
            self.leases.release(ended - recording.open_sessions(self.rules.snapshot))

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

    async def _submit(self, label: str, run: Run) -> Any:
        return await self.pipeline.run(Job(run, label))

    # -- jobs -----------------------------------------------------------------

    async def _fetch_committed(self, missing: Needed) -> None:
        """Load what the rules will consult: from the committed state, beside the
        write in flight, unless that write changes something asked for (then after
        it lands)."""
        await self.pipeline.settled(missing)
        self.store.fetch_committed(self.rules.snapshot, missing)

    async def _persist(self, batch: Batch) -> ChangeSet:
        await self.store.persist(batch.changes)
        recording.merge(self.rules.snapshot, batch)
        return batch.changes

    async def record(self, writer_id: str, checked: CheckedBatch) -> Recorded:
        """Apply one batch of events: the sequence of each, and those refused."""
        result: Recorded = await (await self.enqueue_record(writer_id, checked))
        return result

    async def enqueue_record(
        self, writer_id: str, checked: CheckedBatch
    ) -> asyncio.Future[Recorded]:
        """Queue a batch in arrival order; the future resolves once it is committed.

        Every event that passes is stored; one that failed validation (`checked.faults`)
        or fails a rule is kept as a refusal and costs nothing else.
        """
        rules = self.rules
        items = rules.prepare(checked.events)

        async def run() -> tuple[Recorded, ChangeSet]:
            await rules.load(items, self._fetch_committed)
            touched = rules.sessions_touched(items)
            self.leases.claim(writer_id, touched)
            if self._vanished:
                self._came_back(touched)
            batch = rules.apply(items, checked.faults, writer_id, now_timestamp())
            rules.merge(batch)
            changes = batch.changes
            return (changes.sequences, changes.refused), changes

        label = f"batch of writer {writer_id!r} ({_ids_of(items)})"
        return await self.pipeline.submit(Job(run, label, pipelined=True))

    async def flush(self, session_id: str | None) -> api.FlushResponse:
        async def run() -> tuple[api.FlushResponse, ChangeSet]:
            sids = await self._scope(session_id)
            batch = recording.flush(self.rules.snapshot, sids, session_id, now_timestamp())
            changes = await self._persist(batch)
            response = api.FlushResponse(
                aborted_loop_ids=changes.ended_loops, finalized_session_ids=changes.finalized
            )
            return response, changes

        response: api.FlushResponse = await self._submit(
            f"flush of {session_id or 'all sessions'}", run
        )
        return response

    async def checkpoint(self, session_id: str | None) -> api.CheckpointResponse:
        async def run() -> tuple[api.CheckpointResponse, ChangeSet]:
            sids = await self._scope(session_id)
            batch = recording.checkpoint(self.rules.snapshot, sids, now_timestamp())
            changes = await self._persist(batch)
            return api.CheckpointResponse(finalized_session_ids=changes.finalized), changes

        response: api.CheckpointResponse = await self._submit(
            f"checkpoint of {session_id or 'all sessions'}", run
        )
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
            self.rules.snapshot, Needed(frozenset(), frozenset(session_ids), frozenset())
        )

    async def open_session(self, request: api.OpenSessionRequest) -> session_pb2.Session:
        async def run() -> tuple[session_pb2.Session, ChangeSet]:
            sid = request.session_id or uuid.uuid4().hex
            now = request.timestamp if request.HasField("timestamp") else now_timestamp()
            formation = session_pb2.SessionFormation()
            formation.explicit.timestamp.CopyFrom(now)
            ref = request.parent_spawn_ref if request.HasField("parent_spawn_ref") else None
            return await self._open(sid, request.agent_id, request.scope, ref, formation, now)

        session: session_pb2.Session = await self._submit(
            f"open session {request.session_id!r}", run
        )
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
        batch = recording.open_session(
            self.rules.snapshot, sid, agent_id, scope, ref, formation, now
        )
        changes = await self._persist(batch)
        return changes.sessions[sid].session, changes

    async def rotate_session(self, request: api.RotateSessionRequest) -> api.RotateSessionResponse:
        async def run() -> tuple[api.RotateSessionResponse, ChangeSet]:
            now = request.timestamp if request.HasField("timestamp") else now_timestamp()
            latest_id = await self.store.latest_session_id(request.agent_id)
            latest = None
            if latest_id is not None:
                await self._fetch_sessions([latest_id])
                state = self.rules.snapshot.sessions.get(latest_id)
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

        response: api.RotateSessionResponse = await self._submit(
            f"rotate session of agent {request.agent_id!r}", run
        )
        return response

    async def delete_sessions(self, session_ids: Sequence[str]) -> None:
        async def run() -> tuple[None, ChangeSet]:
            for sid in session_ids:
                if not await self.store.session_exists(sid):
                    raise NotFound(f"session {sid!r} not found", session_id=sid)
            await self.store.delete_sessions(session_ids)
            for sid in session_ids:
                recording.forget_session(self.rules.snapshot, sid)
                self.leases.forget(sid)
            return None, ChangeSet()

        await self._submit(f"delete of {list(session_ids)}", run)
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
                    recording.forget_session(self.rules.snapshot, sid)
            return ids, ChangeSet()

        ids: list[str] = await self._submit("prune", run)
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
            recording.forget_session(self.rules.snapshot, sid)
            loop_ids = {loop.loop_id for loop in session.loops}
            for loop_id in loop_ids:
                self.rules.snapshot.loops.pop(loop_id, None)
            for key in [k for k in self.rules.snapshot.stored_events if k[0] in loop_ids]:
                del self.rules.snapshot.stored_events[key]
            open_ids = frozenset(
                loop.loop_id for loop in session.loops if loop.status in recording.OPEN_STATUSES
            )
            await self.store.fetch(
                self.rules.snapshot, Needed(open_ids, frozenset([sid]), frozenset())
            )
            response = api.ImportSessionResponse(
                session_id=sid, loops=len(session.loops), events=events, replaced=existed
            )
            return response, ChangeSet()

        response: api.ImportSessionResponse = await self._submit(
            f"import of session {session.session_id!r}", run
        )
        return response


def _ids_of(items: Sequence[recording.Item], most: int = 5) -> str:
    """The loops (or sessions) a batch names, for error messages: at most a few."""
    named = (loop_id or getattr(payload, "session_id", "") for _, _, _, payload, loop_id in items)
    ids = [name for name in dict.fromkeys(named) if name]
    shown = ", ".join(ids[:most])
    return f"{shown}, … {len(ids) - most} more" if len(ids) > most else shown
