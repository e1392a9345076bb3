"""The recording rules (DESIGN.md §Recording semantics 1–10), with no I/O.

The writer keeps a `Snapshot` of the state these rules touch (open loops, their
sessions, anything a batch names) and asks `needed()` which ids are missing before
a batch; the rules then run against a `Batch` overlay that copies what it changes,
so a refused batch leaves the snapshot untouched. What a successful batch changed
comes out as a `ChangeSet` for the storage layer to persist.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

from agent_recorder.v1 import events_pb2, session_pb2, types_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from recorder_server.errors import (
    AlreadyExists,
    InvalidArgument,
    LoopNotOpen,
    NotFound,
    RecorderError,
    SequenceConflict,
    SequenceGap,
)
from recorder_server.vocabulary import SESSION_LEVEL

RUNNING = session_pb2.LOOP_STATUS_RUNNING
PENDING = session_pb2.LOOP_STATUS_PENDING
OPEN_STATUSES = frozenset({RUNNING, PENDING})
# The kind of a stored row whose slot holds a refused event (DESIGN.md §Refusals).
REFUSED = "refused"
# What the rules remember of a stored event for re-sends: its bytes, or the
# refusal its slot holds.
Stored = bytes | session_pb2.RefusedEvent


@dataclass(frozen=True)
class RecordingOptions:
    """Server switches that change what is kept (rules 5 and 6)."""

    include_streaming_events: bool = False
    capture_turn_requests: bool = False


@dataclass
class LoopState:
    """A loop as the rules see it; `record` never holds events or turns."""

    record: session_pb2.LoopRecord
    next_seq: int = 0
    partial: session_pb2.Turn | None = None
    turns: int = 0  # materialized so far: the next turn's number
    # The sequence of the AgentEnd event whose messages are the loop's (rule 9):
    # kept once, in that event (reads put them into the record), not written twice.
    end_event: int | None = None

    def copy(self) -> LoopState:
        record = session_pb2.LoopRecord()
        record.CopyFrom(self.record)
        partial = None
        if self.partial is not None:
            partial = session_pb2.Turn()
            partial.CopyFrom(self.partial)
        return LoopState(record, self.next_seq, partial, self.turns, self.end_event)

    @property
    def is_open(self) -> bool:
        return self.record.status in OPEN_STATUSES


@dataclass
class ParallelGroup:
    """One parallel evaluation of a session, as announced by ParallelLoopStart."""

    group_id: int
    loop_ids: list[str]
    start: events_pb2.ParallelLoopStart
    end: events_pb2.ParallelLoopEnd | None = None


@dataclass
class SessionState:
    """A session's head (no loops) and its parallel evaluations."""

    session: session_pb2.Session
    groups: list[ParallelGroup] = field(default_factory=list)

    def copy(self) -> SessionState:
        session = session_pb2.Session()
        session.CopyFrom(self.session)
        return SessionState(session, [replace(g) for g in self.groups])


@dataclass
class Snapshot:
    """What the writer knows. `None` values mean "looked up: does not exist"."""

    loops: dict[str, LoopState | None] = field(default_factory=dict)
    sessions: dict[str, SessionState | None] = field(default_factory=dict)
    pending_refs: dict[str, session_pb2.SpawnRef | None] = field(default_factory=dict)
    stored_events: dict[tuple[str, int], Stored] = field(default_factory=dict)
    # Events applied but not yet handed to the store: re-sends are checked here
    # until a read of the store would find them.
    unwritten: dict[tuple[str, int], Stored] = field(default_factory=dict)
    next_group_id: int = 1


@dataclass(frozen=True)
class Refusal:
    """An event of a batch that was refused: by index, why, and the slot it holds."""

    index: int
    error: RecorderError
    slot: int | None


@dataclass
class ChangeSet:
    """Everything one batch (or control call) changed, for storage to persist."""

    events: list[tuple[str, int, str, str, bytes]] = field(default_factory=list)
    loops: dict[str, LoopState] = field(default_factory=dict)
    sessions: dict[str, SessionState] = field(default_factory=dict)
    turns: list[tuple[str, int, session_pb2.Turn]] = field(default_factory=list)
    groups: dict[int, tuple[str, ParallelGroup]] = field(default_factory=dict)
    pending_refs: dict[str, session_pb2.SpawnRef | None] = field(default_factory=dict)
    sequences: list[int] = field(default_factory=list)
    admitted: list[str] = field(default_factory=list)
    finalized: list[str] = field(default_factory=list)
    ended_loops: list[str] = field(default_factory=list)
    # Refused events of a batch (for its acknowledgement), and those that hold no
    # slot, for the refusal log: (session_id, loop_id, refusal).
    refused: list[Refusal] = field(default_factory=list)
    refusal_log: list[tuple[str, str, session_pb2.RefusedEvent]] = field(default_factory=list)


@dataclass(frozen=True)
class Needed:
    """Ids a batch refers to that the snapshot has not loaded yet."""

    loop_ids: frozenset[str]
    session_ids: frozenset[str]
    event_keys: frozenset[tuple[str, int]]

    def __bool__(self) -> bool:
        return bool(self.loop_ids or self.session_ids or self.event_keys)


def session_of(loop_id: str) -> str:
    """The session part of a loop id: everything before the first dot."""
    return loop_id.split(".", 1)[0]


def config_segment(loop_id: str) -> str | None:
    """Everything between the first and the last dot, if there is such a part."""
    first, last = loop_id.find("."), loop_id.rfind(".")
    return loop_id[first + 1 : last] if 0 <= first < last else None


def _later(a: Timestamp, b: Timestamp) -> bool:
    return (a.seconds, a.nanos) > (b.seconds, b.nanos)


def _child_loop_id(end: events_pb2.ToolExecutionEnd) -> str | None:
    if end.result.HasField("child_loop_id") and end.result.child_loop_id:
        return end.result.child_loop_id
    return end.child_loop_id if end.HasField("child_loop_id") and end.child_loop_id else None


# One event of a batch taken apart once, for needed(), sessions_touched() and
# Batch.apply(): (sequence, event, kind, payload, loop_id). A session-level
# event has an empty loop_id.
Item = tuple[int | None, events_pb2.AgentEvent, str, Any, str]


def prepare(envelopes: Iterable[tuple[int | None, events_pb2.AgentEvent]]) -> list[Item]:
    items: list[Item] = []
    for sequence, event in envelopes:
        kind = event.WhichOneof("event") or ""
        payload = getattr(event, kind) if kind else None
        loop_id = "" if payload is None or kind in SESSION_LEVEL else payload.loop_id
        items.append((sequence, event, kind, payload, loop_id))
    return items


def needed(snapshot: Snapshot, items: Sequence[Item]) -> Needed:
    """The ids the rules will consult for these events that are not loaded yet.

    Called repeatedly until empty: a loaded loop can name a parent or session
    that then needs loading too.
    """
    loops: set[str] = set()
    sessions: set[str] = set()
    keys: set[tuple[str, int]] = set()
    seen: set[str] = set()

    def want_loop(loop_id: str) -> None:
        if loop_id not in snapshot.loops:
            loops.add(loop_id)
        else:
            state = snapshot.loops[loop_id]
            want_session(state.record.session_id if state else session_of(loop_id))

    def want_session(session_id: str) -> None:
        if session_id not in snapshot.sessions or (
            snapshot.sessions[session_id] is None and session_id not in snapshot.pending_refs
        ):
            sessions.add(session_id)

    for sequence, _, kind, payload, loop_id in items:
        if kind == "parallel_loop_start":
            want_session(payload.session_id)
            for branch in payload.loop_ids:
                want_loop(branch)
            continue
        if kind == "parallel_loop_end":
            _want_group_loops(snapshot, payload, want_session, want_loop)
            continue
        if loop_id not in seen:
            seen.add(loop_id)
            want_loop(loop_id)
        consulted = sequence is not None or kind == "agent_end"
        state = snapshot.loops.get(loop_id) if consulted else None
        # Only a loop already stored can hold a re-sent event. A loop not looked
        # up yet is fetched this round and its re-sends are known the next; one
        # that does not exist has none (this is not a query per new event).
        if sequence is not None and state is not None and sequence < state.next_seq:
            key = (loop_id, sequence)
            if key not in snapshot.stored_events and key not in snapshot.unwritten:
                keys.add(key)
        if kind == "agent_start":
            want_session(payload.session_id)
            if payload.HasField("parent_loop_id"):
                want_loop(payload.parent_loop_id)
        elif kind == "agent_end" and state is not None and state.record.HasField("parent_loop_id"):
            want_loop(state.record.parent_loop_id)
        elif kind == "tool_execution_end":
            child = _child_loop_id(payload)
            if child is not None:
                want_loop(child)
    return Needed(frozenset(loops), frozenset(sessions), frozenset(keys))


def _want_group_loops(
    snapshot: Snapshot,
    end: events_pb2.ParallelLoopEnd,
    want_session: Callable[[str], None],
    want_loop: Callable[[str], None],
) -> None:
    want_session(end.session_id)
    state = snapshot.sessions.get(end.session_id)
    if state is not None:
        for group in state.groups:
            if end.selected_loop_id in group.loop_ids:
                for loop_id in group.loop_ids:
                    want_loop(loop_id)


class _RefusedAgain(Exception):
    """A re-sent event whose slot already holds its refusal: refused again, as before."""

    def __init__(self, refusal: session_pb2.RefusedEvent) -> None:
        super().__init__(refusal.message)
        error = RecorderError(refusal.message, **dict(refusal.metadata))
        error.reason = refusal.reason
        error.code = refusal.code
        self.error = error
        self.slot = refusal.slot


class Batch:
    """The rules applied on top of a snapshot: working copies of what they change,
    so the snapshot is untouched until `merge`."""

    def __init__(self, snapshot: Snapshot, options: RecordingOptions) -> None:
        self.base = snapshot
        self.options = options
        self.changes = ChangeSet()
        self.next_group_id = snapshot.next_group_id
        self._new_events: dict[tuple[str, int], Stored] = {}

    # -- working copies -------------------------------------------------------

    def loop(self, loop_id: str) -> LoopState | None:
        """A working copy of a loop; changes to it are part of this batch."""
        if loop_id in self.changes.loops:
            return self.changes.loops[loop_id]
        state = self.base.loops[loop_id]
        if state is None:
            return None
        copy = state.copy()
        self.changes.loops[loop_id] = copy
        return copy

    def peek_loop(self, loop_id: str) -> LoopState | None:
        """A loop for reading only (no copy is made)."""
        if loop_id in self.changes.loops:
            return self.changes.loops[loop_id]
        return self.base.loops.get(loop_id)

    def session(self, session_id: str) -> SessionState | None:
        if session_id in self.changes.sessions:
            return self.changes.sessions[session_id]
        state = self.base.sessions[session_id]
        if state is None:
            return None
        copy = state.copy()
        self.changes.sessions[session_id] = copy
        return copy

    def session_id_of_loop(self, loop_id: str) -> str:
        """The recorded session of a loop, or the one its id names."""
        state = self.peek_loop(loop_id)
        return state.record.session_id if state is not None else session_of(loop_id)

    # -- events ---------------------------------------------------------------

    def apply(
        self,
        items: Iterable[Item],
        faults: Mapping[int, RecorderError] | None = None,
        writer_id: str = "",
        now: Timestamp | None = None,
    ) -> ChangeSet:
        """Apply each event; one that fails validation (`faults`) or a rule is kept
        as a refusal instead, and changes nothing else (DESIGN.md §Refusals)."""
        faults = faults or {}
        for index, item in enumerate(items):
            try:
                fault = faults.get(index)
                if fault is not None:
                    self._check_refused_before(item)
                    raise fault
                sequence = self._apply_one(*item)
            except _RefusedAgain as again:
                self.changes.refused.append(Refusal(index, again.error, again.slot))
                sequence = again.slot
            except RecorderError as error:
                sequence = self._refuse(index, item, error, writer_id, now or Timestamp())
            self.changes.sequences.append(sequence)
        return self.changes

    def _apply_one(
        self,
        sequence: int | None,
        event: events_pb2.AgentEvent,
        kind: str,
        payload: Any,
        loop_id: str,
    ) -> int:
        """One event, checked in full before anything changes, then applied."""
        if kind == "parallel_loop_start":
            self._parallel_start(payload)
            return 0
        if kind == "parallel_loop_end":
            self._parallel_end(payload)
            return 0
        if kind == "message_update" and not self.options.include_streaming_events:
            if sequence is not None:
                raise InvalidArgument(
                    "sequence",
                    "this server does not record streaming deltas; send MessageUpdate unnumbered",
                )
            # Rule 4 still holds: a delta for a loop that is not open is an error.
            self._check_open(loop_id)
            return 0
        assert kind
        body = event.SerializeToString(deterministic=True)
        if sequence is not None and self._is_resend(loop_id, sequence, body):
            return sequence
        if kind == "agent_start":
            self._check_startable(payload)
        else:
            self._check_open(loop_id)
        current = self.peek_loop(loop_id)
        seq = current.next_seq if current is not None else 0
        if sequence is not None and sequence != seq:
            raise SequenceGap(loop_id, sequence, seq)
        if kind == "agent_start":
            state = self._agent_start(payload)
        else:
            state = self._open_loop(loop_id)
            handler = _HANDLERS.get(kind)
            if handler is not None:
                handler(self, state, payload)
        state.next_seq = seq + 1
        self.changes.events.append((loop_id, seq, state.record.session_id, kind, body))
        self._new_events[(loop_id, seq)] = body
        return seq

    def _is_resend(self, loop_id: str, sequence: int, body: bytes) -> bool:
        """Rule of delivery: (loop_id, sequence) already stored → acknowledge again."""
        stored = self._stored(loop_id, sequence)
        if stored is None:
            return False
        if isinstance(stored, session_pb2.RefusedEvent):
            if stored.event != body:
                raise SequenceConflict(loop_id, sequence, "re-sent with different content")
            raise _RefusedAgain(stored)
        if stored != body:
            raise SequenceConflict(loop_id, sequence, "re-sent with different content")
        return True

    def _stored(self, loop_id: str, sequence: int) -> Stored | None:
        """What a slot below the loop's next sequence holds, if the rules know it."""
        state = self.peek_loop(loop_id)
        if state is not None and sequence >= state.next_seq:
            return None
        key = (loop_id, sequence)
        stored = self._new_events.get(key) or self.base.unwritten.get(key)
        return stored if stored is not None else self.base.stored_events.get(key)

    def _check_refused_before(self, item: Item) -> None:
        """An event that fails validation again, re-sent into the slot its first
        refusal holds, is refused again there (not logged a second time)."""
        sequence, event, _, _, loop_id = item
        if sequence is None or not loop_id:
            return
        stored = self._stored(loop_id, sequence)
        body = event.SerializeToString(deterministic=True)
        if isinstance(stored, session_pb2.RefusedEvent) and stored.event == body:
            raise _RefusedAgain(stored)

    # -- refusals ---------------------------------------------------------------

    def _refuse(
        self, index: int, item: Item, error: RecorderError, writer_id: str, now: Timestamp
    ) -> int:
        """Keep a refused event: in its loop's next slot when it can hold one, else in
        the refusal log. Returns the slot (0 for the log)."""
        sequence, event, kind, payload, loop_id = item
        refusal = session_pb2.RefusedEvent(
            reason=error.reason,
            message=error.message,
            code=error.code,
            metadata=error.metadata,
            event=event.SerializeToString(deterministic=True),
            loop_id=loop_id,
            session_id=self._session_named(kind, payload, loop_id),
            writer_id=writer_id,
        )
        refusal.refused_at.CopyFrom(now)
        if sequence is not None:
            refusal.sent_sequence = sequence
        slot = self._slot_for(sequence, kind, loop_id, error)
        self.changes.refused.append(Refusal(index, error, slot))
        if slot is None:
            self.changes.refusal_log.append((refusal.session_id, loop_id, refusal))
            return 0
        refusal.slot = slot
        state = self.loop(loop_id)
        assert state is not None
        state.next_seq = slot + 1
        body = refusal.SerializeToString(deterministic=True)
        self.changes.events.append((loop_id, slot, state.record.session_id, REFUSED, body))
        self._new_events[(loop_id, slot)] = refusal
        return slot

    def _slot_for(
        self, sequence: int | None, kind: str, loop_id: str, error: RecorderError
    ) -> int | None:
        """The slot a refused event holds: the next one of its open loop, when the
        sender meant that slot; None when it belongs in the refusal log."""
        if not loop_id or kind in SESSION_LEVEL or kind == "agent_start":
            return None
        if isinstance(error, SequenceConflict | SequenceGap):
            return None
        if kind == "message_update" and not self.options.include_streaming_events:
            return None
        state = self.peek_loop(loop_id)
        if state is None or state.record.status != RUNNING:
            return None
        if sequence is not None and sequence != state.next_seq:
            return None
        return state.next_seq

    def _session_named(self, kind: str, payload: Any, loop_id: str) -> str:
        if kind == "agent_start" or kind in SESSION_LEVEL:
            return str(payload.session_id)
        return self.session_id_of_loop(loop_id) if loop_id else ""

    def _check_open(self, loop_id: str) -> None:
        state = self.peek_loop(loop_id)
        if state is None:
            raise LoopNotOpen(loop_id, "never started")
        if state.record.status != RUNNING:
            name = session_pb2.LoopStatus.Name(state.record.status)
            raise LoopNotOpen(loop_id, name.removeprefix("LOOP_STATUS_").lower())

    def _open_loop(self, loop_id: str) -> LoopState:
        self._check_open(loop_id)
        working = self.loop(loop_id)
        assert working is not None
        return working

    def _check_startable(self, start: events_pb2.AgentStart) -> None:
        existing = self.peek_loop(start.loop_id)
        if existing is not None and existing.record.status != PENDING:
            raise AlreadyExists(
                f"loop {start.loop_id!r} has already started", loop_id=start.loop_id
            )

    def _agent_start(self, start: events_pb2.AgentStart) -> LoopState:
        session = self._admit(start)
        existing = self.loop(start.loop_id)
        state = existing or LoopState(session_pb2.LoopRecord())
        record = state.record
        record.loop_id = start.loop_id
        record.session_id = start.session_id
        record.agent_id = start.agent_id
        if start.HasField("parent_loop_id"):
            record.parent_loop_id = start.parent_loop_id
        record.continuation_kind.CopyFrom(start.continuation_kind)
        record.started_at.CopyFrom(start.timestamp)
        record.status = RUNNING
        if start.HasField("config_snapshot"):
            record.config.CopyFrom(start.config_snapshot)
        if start.HasField("metadata"):
            record.metadata.CopyFrom(start.metadata)
        self.changes.loops[start.loop_id] = state
        if start.HasField("parent_loop_id"):
            self._link_inbound(session, start.parent_loop_id)
        return state

    def _admit(self, start: events_pb2.AgentStart) -> SessionState:
        """Rules 1 and 2: open (or re-admit) the session and move last_active_at."""
        session = self.session(start.session_id)
        if session is None:
            session = self._open_head(start.session_id, start.timestamp)
        if not session.session.agent_id:
            # The session's first AgentStart (after a ParallelLoopStart opened its head,
            # as the runtime's agent_loop_parallel does): rule 1 applies now.
            head = session.session
            head.agent_id = start.agent_id
            head.created_at.CopyFrom(start.timestamp)
            head.last_active_at.CopyFrom(start.timestamp)
            head.formation.first_loop.timestamp.CopyFrom(start.timestamp)
        elif session.session.HasField("finalized_at"):
            session.session.ClearField("finalized_at")
            self.changes.admitted.append(start.session_id)
        if _later(start.timestamp, session.session.last_active_at):
            session.session.last_active_at.CopyFrom(start.timestamp)
        return session

    def _open_head(self, session_id: str, timestamp: Timestamp) -> SessionState:
        """A new session (rule 1); its agent is named by its first AgentStart."""
        head = session_pb2.Session(session_id=session_id, scope=session_pb2.SESSION_SCOPE_EPHEMERAL)
        head.created_at.CopyFrom(timestamp)
        head.last_active_at.CopyFrom(timestamp)
        head.formation.first_loop.timestamp.CopyFrom(timestamp)
        session = SessionState(head)
        self.changes.sessions[session_id] = session
        self._take_pending_ref(session)
        self.changes.admitted.append(session_id)
        return session

    def _take_pending_ref(self, session: SessionState) -> None:
        """Rule 7, late half: a spawn ref recorded before the child session existed."""
        sid = session.session.session_id
        if sid in self.changes.pending_refs:
            ref = self.changes.pending_refs[sid]
        else:
            ref = self.base.pending_refs.get(sid)
        if ref is not None:
            session.session.parent_spawn_ref.CopyFrom(ref)
            self.changes.pending_refs[sid] = None

    def _link_inbound(self, session: SessionState, parent_loop_id: str) -> None:
        """Rule 2: a parent loop in another session makes this a sub-agent session."""
        parent_session = self.session_id_of_loop(parent_loop_id)
        if parent_session == session.session.session_id:
            return
        if not session.session.HasField("parent_spawn_ref"):
            ref = session.session.parent_spawn_ref
            ref.parent_session_id = parent_session
            ref.parent_loop_id = parent_loop_id

    def _on_agent_end(self, state: LoopState, end: events_pb2.AgentEnd) -> None:
        """Rule 9."""
        record = state.record
        state.partial = None
        record.ended_at.CopyFrom(end.timestamp)
        if end.HasField("rejection"):
            record.status = session_pb2.LOOP_STATUS_REJECTED
            record.rejection = end.rejection
        else:
            record.status = session_pb2.LOOP_STATUS_COMPLETED
        # The record's messages are this event's, which is stored under the next
        # sequence (see LoopState.end_event).
        del record.messages[:]
        state.end_event = state.next_seq
        record.usage.CopyFrom(end.usage)
        if not record.HasField("config"):
            first = next(
                (m for m in end.messages if m.role == types_pb2.MESSAGE_ROLE_ASSISTANT), None
            )
            if first is not None:
                _config_from_message(record, first)
        self.changes.ended_loops.append(record.loop_id)
        if record.HasField("parent_loop_id"):
            parent = self.peek_loop(record.parent_loop_id)
            if parent is not None and parent.record.session_id == record.session_id:
                working = self.loop(record.parent_loop_id)
                assert working is not None
                if record.loop_id not in working.record.children_loop_ids:
                    working.record.children_loop_ids.append(record.loop_id)

    def _on_turn_start(self, state: LoopState, start: events_pb2.TurnStart) -> None:
        """Rule 6: a partial turn opens."""
        turn = session_pb2.Turn(triggered_by=start.triggered_by)
        turn.turn_id.loop_id = start.loop_id
        turn.turn_id.turn_index = start.turn_index
        turn.started_at.CopyFrom(start.timestamp)
        state.partial = turn

    def _on_message_end(self, state: LoopState, end: events_pb2.MessageEnd) -> None:
        if state.partial is not None and end.message.role != types_pb2.MESSAGE_ROLE_ASSISTANT:
            state.partial.input_messages.append(end.message)

    def _on_turn_request(self, state: LoopState, request: events_pb2.TurnRequest) -> None:
        if state.partial is not None and self.options.capture_turn_requests:
            state.partial.request_payload.CopyFrom(request.payload)

    def _on_turn_end(self, state: LoopState, end: events_pb2.TurnEnd) -> None:
        """Rule 6: TurnEnd materializes the open partial turn, if any."""
        if (
            not state.record.HasField("config")
            and end.message.role == types_pb2.MESSAGE_ROLE_ASSISTANT
        ):
            _config_from_message(state.record, end.message)
        turn = state.partial
        if turn is None:
            return
        state.partial = None
        turn.usage.CopyFrom(end.usage)
        turn.output_message.CopyFrom(end.message)
        for result in end.tool_results:
            stamped = turn.tool_results.add()
            stamped.CopyFrom(result)
            stamped.turn_id.CopyFrom(turn.turn_id)
        turn.ended_at.CopyFrom(end.timestamp)
        self.changes.turns.append((state.record.loop_id, state.turns, turn))
        state.turns += 1

    def _on_tool_execution_end(self, state: LoopState, end: events_pb2.ToolExecutionEnd) -> None:
        """Rule 7: a tool that spawned a sub-agent links both ways."""
        child_loop = _child_loop_id(end)
        if child_loop is None:
            return
        child_session = self.session_id_of_loop(child_loop)
        state.record.child_loop_refs.add(
            tool_call_id=end.tool_call_id,
            tool_name=end.tool_name,
            child_loop_id=child_loop,
            child_session_id=child_session,
        )
        if child_session == state.record.session_id:
            return
        ref = session_pb2.SpawnRef(
            parent_session_id=state.record.session_id,
            parent_loop_id=state.record.loop_id,
            tool_call_id=end.tool_call_id,
            tool_name=end.tool_name,
        )
        child = self.session(child_session)
        if child is None:
            known = self.changes.pending_refs.get(child_session)
            if known is None and self.base.pending_refs.get(child_session) is None:
                self.changes.pending_refs[child_session] = ref
            return
        current = child.session.parent_spawn_ref
        if not child.session.HasField("parent_spawn_ref") or not current.tool_call_id:
            current.CopyFrom(ref)

    def _parallel_start(self, start: events_pb2.ParallelLoopStart) -> None:
        """Rule 8: the branches exist, PENDING, in config order, at once.

        The runtime's agent_loop_parallel announces the group before any branch
        starts, so it may open its session (whose agent the first AgentStart names).
        """
        session = self.session(start.session_id)
        if session is None:
            session = self._open_head(start.session_id, start.timestamp)
        if any(list(g.loop_ids) == list(start.loop_ids) for g in session.groups):
            return
        group = ParallelGroup(self.next_group_id, list(start.loop_ids), start)
        self.next_group_id += 1
        session.groups.append(group)
        self.changes.groups[group.group_id] = (start.session_id, group)
        for loop_id in start.loop_ids:
            if self.peek_loop(loop_id) is not None:
                continue
            record = session_pb2.LoopRecord(
                loop_id=loop_id,
                session_id=start.session_id,
                agent_id=session.session.agent_id,
                status=PENDING,
            )
            record.started_at.CopyFrom(start.timestamp)
            self.changes.loops[loop_id] = LoopState(record)

    def _parallel_end(self, end: events_pb2.ParallelLoopEnd) -> None:
        """Rule 8: every branch learns the outcome, open or ended."""
        session = self.session(end.session_id)
        group = None
        if session is not None:
            group = next(
                (g for g in reversed(session.groups) if end.selected_loop_id in g.loop_ids), None
            )
        if session is None or group is None:
            raise NotFound(
                f"no parallel evaluation in session {end.session_id!r} includes loop "
                f"{end.selected_loop_id!r}",
                session_id=end.session_id,
                loop_id=end.selected_loop_id,
            )
        group.end = end
        self.changes.groups[group.group_id] = (end.session_id, group)
        for loop_id in group.loop_ids:
            state = self.loop(loop_id)
            if state is None:
                continue
            pg = state.record.parallel_group
            del pg.all_loop_ids[:]
            pg.all_loop_ids.extend(group.loop_ids)
            pg.selected_loop_id = end.selected_loop_id
            pg.selected_config_index = end.selected_config_index
            pg.evaluation_usage.CopyFrom(end.evaluation_usage)
            pg.is_selected = loop_id == end.selected_loop_id


# How many rounds of lookups a batch may need: a loop names its session and its
# parent, the parent its session, and re-sends their stored events; never more.
LOOKUP_ROUNDS: Final = 4


class Rules:
    """The recording rules over one snapshot, as the writer and the tests use them:
    prepare a batch, load what it needs, apply it, merge what it changed."""

    def __init__(self, options: RecordingOptions, snapshot: Snapshot | None = None) -> None:
        self.options = options
        self.snapshot = snapshot or Snapshot()

    @staticmethod
    def prepare(envelopes: Iterable[tuple[int | None, events_pb2.AgentEvent]]) -> list[Item]:
        return prepare(envelopes)

    def needed(self, items: Sequence[Item]) -> Needed:
        return needed(self.snapshot, items)

    async def load(self, items: Sequence[Item], fetch: Callable[[Needed], Awaitable[None]]) -> None:
        """Fetch what the batch consults until nothing is missing."""
        for _ in range(LOOKUP_ROUNDS):
            missing = self.needed(items)
            if not missing:
                return
            await fetch(missing)

    def sessions_touched(self, items: Iterable[Item]) -> set[str]:
        return sessions_touched(self.snapshot, items)

    def apply(
        self,
        items: Iterable[Item],
        faults: Mapping[int, RecorderError] | None = None,
        writer_id: str = "",
        now: Timestamp | None = None,
    ) -> Batch:
        """Apply a batch on top of the snapshot (which is unchanged until `merge`)."""
        batch = Batch(self.snapshot, self.options)
        batch.apply(items, faults, writer_id, now)
        return batch

    def merge(self, batch: Batch) -> None:
        merge(self.snapshot, batch)


def sessions_touched(snapshot: Snapshot, items: Iterable[Item]) -> set[str]:
    """The sessions a batch writes to (for the writer lease of rule 14)."""
    touched = set()
    seen: set[str] = set()
    for _, _, kind, payload, loop_id in items:
        if kind == "agent_start" or kind in SESSION_LEVEL:
            touched.add(payload.session_id)
        elif kind and loop_id not in seen:
            seen.add(loop_id)
            state = snapshot.loops.get(loop_id)
            touched.add(state.record.session_id if state is not None else session_of(loop_id))
    return touched


def open_sessions(snapshot: Snapshot) -> set[str]:
    """Sessions with an open loop (the snapshot always holds every open loop)."""
    return {s.record.session_id for s in snapshot.loops.values() if s is not None and s.is_open}


def evict(snapshot: Snapshot) -> None:
    """Drop what the rules can look up again; open loops and their sessions stay."""
    loops = {k: v for k, v in snapshot.loops.items() if v is not None and v.is_open}
    live = {state.record.session_id for state in loops.values()}
    snapshot.loops = dict(loops)
    snapshot.sessions = {k: v for k, v in snapshot.sessions.items() if k in live}
    snapshot.pending_refs.clear()
    snapshot.stored_events.clear()


def forget_session(snapshot: Snapshot, session_id: str) -> None:
    """A deleted session leaves the snapshot with everything it held."""
    snapshot.sessions.pop(session_id, None)
    snapshot.loops = {
        k: v for k, v in snapshot.loops.items() if v is None or v.record.session_id != session_id
    }


def merge(snapshot: Snapshot, batch: Batch) -> None:
    """Fold a successful batch into the writer's snapshot."""
    changes = batch.changes
    snapshot.loops.update(changes.loops)
    snapshot.sessions.update(changes.sessions)
    snapshot.pending_refs.update(changes.pending_refs)
    snapshot.unwritten.update(batch._new_events)
    snapshot.next_group_id = batch.next_group_id


def combine(changesets: Sequence[ChangeSet]) -> ChangeSet:
    """One ChangeSet with the final state of everything a group of them changed.

    Each one was made on top of the ones before it, so a later state of a loop,
    session, group or spawn ref replaces an earlier one; appends are kept in order.
    """
    combined = ChangeSet()
    for changes in changesets:
        combined.events += changes.events
        combined.turns += changes.turns
        combined.refusal_log += changes.refusal_log
        combined.loops.update(changes.loops)
        combined.sessions.update(changes.sessions)
        combined.groups.update(changes.groups)
        combined.pending_refs.update(changes.pending_refs)
    return combined


# What each kind of loop event changes beyond being appended (the others change
# nothing else).
_HANDLERS: dict[str, Callable[[Batch, LoopState, Any], None]] = {
    "agent_end": Batch._on_agent_end,
    "turn_start": Batch._on_turn_start,
    "message_end": Batch._on_message_end,
    "turn_request": Batch._on_turn_request,
    "turn_end": Batch._on_turn_end,
    "tool_execution_end": Batch._on_tool_execution_end,
}


def _config_from_message(record: session_pb2.LoopRecord, message: types_pb2.AgentMessage) -> None:
    """Rules 6 and 9: a loop without a config takes it from its first answer."""
    config = record.config
    config.model = message.model
    config.provider = message.provider
    segment = config_segment(record.loop_id)
    if segment is not None:
        config.config_id = segment


# -- control operations (rules 10 and 12) -------------------------------------


def flush(
    snapshot: Snapshot, session_ids: Iterable[str], session_id: str | None, now: Timestamp
) -> Batch:
    """Rule 10: abort open loops (of one session, or all), finalize the sessions.

    `session_ids` are the unfinalized sessions in scope, loaded into the snapshot.
    """
    batch = Batch(snapshot, RecordingOptions())
    _abort_open(batch, lambda sid: session_id is None or sid == session_id, None, now)
    _finalize(batch, session_ids, now)
    return batch


def _abort_open(
    batch: Batch, in_scope: Callable[[str], bool], rejection: str | None, now: Timestamp
) -> None:
    """Every open loop of the sessions in scope becomes ABORTED; partial turns go."""
    for loop_id, state in list(batch.base.loops.items()):
        if state is None or not state.is_open or not in_scope(state.record.session_id):
            continue
        working = batch.loop(loop_id)
        assert working is not None
        working.record.status = session_pb2.LOOP_STATUS_ABORTED
        if rejection is not None:
            working.record.rejection = rejection
        working.record.ended_at.CopyFrom(now)
        working.partial = None
        batch.changes.ended_loops.append(loop_id)


def abandon(
    snapshot: Snapshot, session_ids: Iterable[str], rejection: str, now: Timestamp
) -> Batch:
    """Writers that vanish: abort the open loops of these sessions with `rejection`
    (their partial turns dropped, their events kept) and finalize the sessions."""
    wanted = set(session_ids)
    batch = Batch(snapshot, RecordingOptions())
    _abort_open(batch, wanted.__contains__, rejection, now)
    _finalize(batch, sorted(wanted), now)
    return batch


def checkpoint(snapshot: Snapshot, session_ids: Iterable[str], now: Timestamp) -> Batch:
    """Rule 10: finalize the sessions in scope that have no open loop."""
    busy = open_sessions(snapshot)
    batch = Batch(snapshot, RecordingOptions())
    _finalize(batch, [sid for sid in session_ids if sid not in busy], now)
    return batch


def _finalize(batch: Batch, session_ids: Iterable[str], now: Timestamp) -> None:
    for sid in session_ids:
        session = batch.session(sid)
        if session is not None and not session.session.HasField("finalized_at"):
            session.session.finalized_at.CopyFrom(now)
            batch.changes.finalized.append(sid)


def open_session(
    snapshot: Snapshot,
    session_id: str,
    agent_id: str,
    scope: session_pb2.SessionScope.ValueType,
    parent_spawn_ref: session_pb2.SpawnRef | None,
    formation: session_pb2.SessionFormation,
    now: Timestamp,
) -> Batch:
    """Rule 12: a session formed on demand, before its first loop."""
    batch = Batch(snapshot, RecordingOptions())
    if batch.session(session_id) is not None:
        raise AlreadyExists(f"session {session_id!r} already exists", session_id=session_id)
    head = session_pb2.Session(session_id=session_id, agent_id=agent_id, scope=scope)
    head.created_at.CopyFrom(now)
    head.last_active_at.CopyFrom(now)
    head.formation.CopyFrom(formation)
    state = SessionState(head)
    batch.changes.sessions[session_id] = state
    if parent_spawn_ref is not None:
        head.parent_spawn_ref.CopyFrom(parent_spawn_ref)
    else:
        batch._take_pending_ref(state)
    batch.changes.admitted.append(session_id)
    return batch


def rotation_needed(
    latest: session_pb2.Session | None, threshold_secs: int, now: Timestamp
) -> bool:
    """Rule 12: the agent's latest session has been idle longer than the threshold."""
    if latest is None:
        return True
    return now.seconds - latest.last_active_at.seconds > threshold_secs
