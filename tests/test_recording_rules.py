"""The recording rules of recording.py, pure: Snapshot + needed() + Batch, no server.

Each test plays what the writer does: ask `needed()` which ids are missing, load
them (as None: an empty store, or from the events kept by earlier batches), apply
a batch, merge it. Assertions are on the ChangeSet and the snapshot, field by field.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import pytest
from agent_recorder.v1 import session_pb2, types_pb2
from google.protobuf import struct_pb2
from support.events import (
    Envelope,
    Event,
    agent_end,
    agent_start,
    assistant,
    config,
    continuation,
    input_rejected,
    message_end,
    message_update,
    parallel_end,
    parallel_start,
    progress,
    tool_end,
    tool_result,
    tool_start,
    ts,
    turn_end,
    turn_request,
    turn_start,
    usage,
    user,
    value,
)

from recorder_server import recording
from recorder_server.errors import (
    AlreadyExists,
    InvalidArgument,
    LoopNotOpen,
    NotFound,
    RecorderError,
    SequenceConflict,
    SequenceGap,
)
from recorder_server.recording import (
    REFUSED,
    Batch,
    ChangeSet,
    LoopState,
    Needed,
    RecordingOptions,
    SessionState,
    Stored,
    checkpoint,
    combine,
    config_segment,
    flush,
    merge,
    needed,
    open_session,
    prepare,
    rotation_needed,
    session_of,
    sessions_touched,
)

PENDING = session_pb2.LOOP_STATUS_PENDING
RUNNING = session_pb2.LOOP_STATUS_RUNNING
COMPLETED = session_pb2.LOOP_STATUS_COMPLETED
REJECTED = session_pb2.LOOP_STATUS_REJECTED
ABORTED = session_pb2.LOOP_STATUS_ABORTED


class Rules(recording.Rules):
    """The recording rules as the writer uses them, with a dict for a store."""

    def __init__(self, options: RecordingOptions | None = None) -> None:
        super().__init__(options or RecordingOptions())
        self.stored: dict[tuple[str, int], Stored] = {}

    def load_now(self, envelopes: list[Envelope]) -> None:
        """Answer needed() as the store would: unknown ids load as None."""
        asyncio.run(self.load(self.prepare(envelopes), self._fetch))

    async def _fetch(self, missing: Needed) -> None:
        for loop_id in missing.loop_ids:
            self.snapshot.loops[loop_id] = None
        for session_id in missing.session_ids:
            self.snapshot.sessions[session_id] = None
            self.snapshot.pending_refs.setdefault(session_id, None)
        for key in missing.event_keys:
            if key in self.stored:
                self.snapshot.stored_events[key] = self.stored[key]

    def apply_events(self, events: Iterable[Event | Envelope]) -> ChangeSet:
        envelopes = [e if isinstance(e, tuple) else (None, e) for e in events]
        self.load_now(envelopes)
        batch = self.apply(self.prepare(envelopes))
        self.merge(batch)
        for loop_id, sequence, _session, kind, body in batch.changes.events:
            refused = kind == REFUSED
            self.stored[(loop_id, sequence)] = (
                session_pb2.RefusedEvent.FromString(body) if refused else body
            )
        self.snapshot.unwritten.clear()  # handed to the store, as the writer does
        return batch.changes

    def refused(
        self, events: Iterable[Event | Envelope], kind: type[RecorderError]
    ) -> RecorderError:
        """Apply events whose last must be refused alone: it changes nothing but,
        when it holds its loop's next slot, that loop's next sequence."""
        *fine, last = list(events)
        if fine:
            assert not self.apply_events(fine).refused
        events = [last]
        before = {k: _dump_loop(v) for k, v in self.snapshot.loops.items()}
        sessions = {k: _dump_session(v) for k, v in self.snapshot.sessions.items()}
        changes = self.apply_events(events)
        assert [r.index for r in changes.refused] == [len(events) - 1]
        refusal = changes.refused[0]
        assert isinstance(refusal.error, kind), refusal.error
        if refusal.slot is not None:
            (loop_id, slot, _, kind_stored, _), *_ = changes.events[-1:]
            assert kind_stored == REFUSED and slot == refusal.slot
            state = self.snapshot.loops[loop_id]
            assert state is not None and state.next_seq == slot + 1
            state.next_seq = slot  # the slot aside, nothing changed
        after = {k: _dump_loop(v) for k, v in self.snapshot.loops.items() if k in before}
        assert after == before
        heads = {k: _dump_session(v) for k, v in self.snapshot.sessions.items() if k in sessions}
        assert heads == sessions
        if refusal.slot is not None:
            state = self.snapshot.loops[loop_id]
            assert state is not None
            state.next_seq = refusal.slot + 1
        return refusal.error

    def loop(self, loop_id: str) -> LoopState:
        state = self.snapshot.loops[loop_id]
        assert state is not None
        return state

    def session(self, session_id: str) -> session_pb2.Session:
        state = self.snapshot.sessions[session_id]
        assert state is not None
        return state.session


def _dump_loop(state: LoopState | None) -> tuple[bytes, int, bytes | None] | None:
    if state is None:
        return None
    partial = None if state.partial is None else state.partial.SerializeToString()
    return state.record.SerializeToString(), state.next_seq, partial


def _dump_session(state: SessionState | None) -> bytes | None:
    return None if state is None else state.session.SerializeToString()


# -- rule 1: new session ---------------------------------------------------------------


def test_rule1_agent_start_opens_a_first_loop_session() -> None:
    rules = Rules()
    changes = rules.apply_events([agent_start("s1", "s1.main.0", agent="coder", at=5)])
    session = changes.sessions["s1"].session
    assert session.session_id == "s1"
    assert session.agent_id == "coder"
    assert session.created_at == ts(5)
    assert session.last_active_at == ts(5)
    assert session.formation.WhichOneof("kind") == "first_loop"
    assert session.formation.first_loop.timestamp == ts(5)
    assert session.scope == session_pb2.SESSION_SCOPE_EPHEMERAL
    assert not session.HasField("parent_spawn_ref")
    assert not session.HasField("finalized_at")
    assert changes.admitted == ["s1"]
    assert len(session.loops) == 0  # the head only; loops are separate rows


def test_rule1_every_agent_start_moves_last_active_only_forward() -> None:
    rules = Rules()
    rules.apply_events([agent_start("s1", "s1.main.0", at=5)])
    changes = rules.apply_events([agent_start("s1", "s1.main.1", "s1.main.0", at=9)])
    assert changes.admitted == []
    assert changes.sessions["s1"].session.created_at == ts(5)
    assert changes.sessions["s1"].session.last_active_at == ts(9)
    # An AgentStart stamped earlier does not move it back.
    rules.apply_events([agent_start("s1", "s1.main.2", "s1.main.0", at=7)])
    assert rules.session("s1").last_active_at == ts(9)
    assert rules.session("s1").formation.first_loop.timestamp == ts(5)


def test_rule1_a_finalized_session_is_admitted_again_by_a_new_loop() -> None:
    rules = Rules()
    rules.apply_events([agent_start("s1", "s1.main.0", at=1), agent_end("s1.main.0", at=2)])
    fin = checkpoint(rules.snapshot, ["s1"], ts(3))
    assert fin.changes.finalized == ["s1"]
    merge(rules.snapshot, fin)
    changes = rules.apply_events([agent_start("s1", "s1.main.1", at=4)])
    assert changes.admitted == ["s1"]
    assert not changes.sessions["s1"].session.HasField("finalized_at")
    assert changes.sessions["s1"].session.formation.first_loop.timestamp == ts(1)


# -- rule 2: sub-agent inbound link ------------------------------------------------------


def test_rule2_parent_in_another_session_sets_a_partial_spawn_ref() -> None:
    rules = Rules()
    rules.apply_events([agent_start("p", "p.main.0", agent="lead", at=1)])
    changes = rules.apply_events([agent_start("c", "c.main.0", "p.main.0", agent="helper", at=2)])
    ref = changes.sessions["c"].session.parent_spawn_ref
    assert changes.sessions["c"].session.HasField("parent_spawn_ref")
    assert ref.parent_session_id == "p"
    assert ref.parent_loop_id == "p.main.0"
    assert ref.tool_call_id == ""
    assert ref.tool_name == ""
    assert rules.loop("c.main.0").record.parent_loop_id == "p.main.0"


def test_rule2_parent_in_the_same_session_is_no_spawn() -> None:
    rules = Rules()
    rules.apply_events([agent_start("s", "s.main.0", at=1)])
    changes = rules.apply_events([agent_start("s", "s.main.1", "s.main.0", at=2)])
    assert not changes.sessions["s"].session.HasField("parent_spawn_ref")


def test_rule2_an_existing_spawn_ref_is_kept() -> None:
    rules = Rules()
    rules.apply_events([agent_start("p", "p.main.0", at=1), agent_start("q", "q.main.0", at=1)])
    rules.apply_events([agent_start("c", "c.main.0", "p.main.0", at=2)])
    rules.apply_events([agent_start("c", "c.main.1", "q.main.0", at=3)])
    assert rules.session("c").parent_spawn_ref.parent_loop_id == "p.main.0"
    assert rules.session("c").parent_spawn_ref.parent_session_id == "p"


# -- rule 3: loop start -------------------------------------------------------------------


def test_rule3_agent_start_creates_a_running_loop_at_sequence_0() -> None:
    rules = Rules()
    start = agent_start(
        "s",
        "s.fast.0",
        agent="coder",
        kind=continuation("rerun", "retry-1"),
        config=config("m1", "p1", "fast"),
        metadata={"task": "fix bug", "attempt": 2},
        at=3,
    )
    changes = rules.apply_events([start])
    assert changes.sequences == [0]
    assert changes.events == [
        ("s.fast.0", 0, "s", "agent_start", start.SerializeToString(deterministic=True))
    ]
    record = changes.loops["s.fast.0"].record
    assert record.loop_id == "s.fast.0"
    assert record.session_id == "s"
    assert record.agent_id == "coder"
    assert not record.HasField("parent_loop_id")
    assert record.status == RUNNING
    assert record.continuation_kind.rerun.tag == "retry-1"
    assert record.config == config("m1", "p1", "fast")
    assert record.metadata == value({"task": "fix bug", "attempt": 2})
    assert record.started_at == ts(3)
    assert not record.HasField("ended_at")
    assert len(record.events) == 0 and len(record.turns) == 0
    assert changes.loops["s.fast.0"].next_seq == 1


def test_rule3_a_started_loop_cannot_start_again() -> None:
    rules = Rules()
    rules.apply_events([agent_start("s", "s.main.0", at=1)])
    error = rules.refused([agent_start("s", "s.main.0", at=2)], AlreadyExists)
    assert error.metadata["loop_id"] == "s.main.0"


def test_rule3_agent_start_promotes_a_pending_loop() -> None:
    rules = Rules()
    rules.apply_events([agent_start("s", "s.main.0", agent="lead", at=1)])
    rules.apply_events([parallel_start("s", ["s.a.1", "s.b.1"], at=2)])
    assert rules.loop("s.a.1").record.status == PENDING
    changes = rules.apply_events(
        [agent_start("s", "s.a.1", "s.main.0", agent="lead", config=config(config_id="a"), at=3)]
    )
    record = changes.loops["s.a.1"].record
    assert record.status == RUNNING
    assert record.started_at == ts(3)
    assert record.parent_loop_id == "s.main.0"
    assert record.config.config_id == "a"
    assert changes.sequences == [0]


# -- rule 4: event stream -------------------------------------------------------------------


def test_rule4_events_get_gapless_sequences_per_loop() -> None:
    rules = Rules()
    changes = rules.apply_events(
        [
            agent_start("s", "s.main.0", at=1),
            agent_start("s", "s.main.1", "s.main.0", at=1),
            progress("s.main.0", "c1", "bash", "running"),
            input_rejected("s.main.1", "empty"),
            progress("s.main.0", "c1", "bash", "still running"),
        ]
    )
    assert changes.sequences == [0, 0, 1, 1, 2]
    assert [(e[0], e[1], e[3]) for e in changes.events] == [
        ("s.main.0", 0, "agent_start"),
        ("s.main.1", 0, "agent_start"),
        ("s.main.0", 1, "progress_message"),
        ("s.main.1", 1, "input_rejected"),
        ("s.main.0", 2, "progress_message"),
    ]
    assert rules.apply_events([progress("s.main.0", "c1", "bash", "x")]).sequences == [3]
    assert rules.loop("s.main.0").next_seq == 4


def test_rule4_an_event_for_a_loop_never_started_is_refused_naming_it() -> None:
    rules = Rules()
    rules.apply_events([agent_start("s", "s.main.0", at=1)])
    error = rules.refused(
        [progress("s.main.0", "c", "t", "ok"), progress("s.ghost.0", "c", "t", "lost")],
        LoopNotOpen,
    )
    assert error.metadata == {"loop_id": "s.ghost.0"}
    assert "s.ghost.0" in error.message and "never started" in error.message
    # The batch's other event was stored all the same.
    assert rules.loop("s.main.0").next_seq == 2


def test_one_refused_event_costs_no_other_event_of_its_batch() -> None:
    """DESIGN.md §Refusals: a batch of three loops with one invalid event in the middle."""
    rules = Rules()
    rules.apply_events([agent_start("s", f"s.main.{n}", at=1) for n in range(3)])
    batch: list[Envelope] = [(1, progress(f"s.main.{n}", "c", "t", "before")) for n in range(3)]
    batch.append((2, progress("s.main.1", "c", "t", "bad")))
    batch += [(2 + (n == 1), progress(f"s.main.{n}", "c", "t", "after")) for n in range(3)]
    fault = InvalidArgument("batch.events[3].event.progress_message.text", "is wrong")
    rules.load_now(batch)
    applied = Batch(rules.snapshot, rules.options)
    changes = applied.apply(prepare(batch), {3: fault}, "w1", ts(5))
    merge(rules.snapshot, applied)
    assert changes.sequences == [1, 1, 1, 2, 2, 3, 2]
    (refusal,) = changes.refused
    assert (refusal.index, refusal.error, refusal.slot) == (3, fault, 2)
    stored = [(loop_id, seq, kind) for loop_id, seq, _, kind, _ in changes.events]
    assert ("s.main.1", 2, REFUSED) in stored
    assert ("s.main.1", 3, "progress_message") in stored
    assert len(stored) == 7
    body = next(b for loop_id, seq, _, _, b in changes.events if (loop_id, seq) == ("s.main.1", 2))
    kept = session_pb2.RefusedEvent.FromString(body)
    assert kept.reason == "INVALID_FIELD" and kept.code == 3
    assert kept.message == "batch.events[3].event.progress_message.text: is wrong"
    assert kept.metadata["field"] == "batch.events[3].event.progress_message.text"
    assert kept.event == batch[3][1].SerializeToString(deterministic=True)
    assert (kept.loop_id, kept.session_id, kept.writer_id) == ("s.main.1", "s", "w1")
    assert (kept.refused_at, kept.sent_sequence, kept.slot) == (ts(5), 2, 2)
    assert not changes.refusal_log
    assert [rules.loop(f"s.main.{n}").next_seq for n in range(3)] == [3, 4, 3]


def test_a_refusal_without_a_slot_goes_to_the_refusal_log() -> None:
    rules = Rules()
    rules.apply_events([agent_start("s", "s.main.0", at=1), agent_end("s.main.0", at=2)])
    events: list[Envelope] = [(None, progress("s.main.0", "c", "t", "late"))]
    rules.load_now(events)
    applied = Batch(rules.snapshot, rules.options)
    changes = applied.apply(prepare(events), {}, "w1", ts(3))
    assert changes.sequences == [0] and not changes.events
    (refusal,) = changes.refused
    assert isinstance(refusal.error, LoopNotOpen) and refusal.slot is None
    ((session_id, loop_id, kept),) = changes.refusal_log
    assert (session_id, loop_id, kept.reason, kept.HasField("slot")) == (
        "s",
        "s.main.0",
        "LOOP_NOT_OPEN",
        False,
    )
    assert "has ended" in kept.message or "completed" in kept.message


def test_a_resent_refused_event_is_refused_again_in_its_slot() -> None:
    rules = Rules()
    rules.apply_events([(0, agent_start("s", "s.main.0", at=1))])
    bad: list[Envelope] = [(1, progress("s.main.0", "c", "t", "bad"))]
    fault = InvalidArgument("events[0].event.progress_message.text", "is wrong")
    for attempt in range(2):
        rules.load_now(bad)
        applied = Batch(rules.snapshot, rules.options)
        changes = applied.apply(prepare(bad), {0: fault} if attempt == 0 else {}, "w", ts(2))
        merge(rules.snapshot, applied)
        (refusal,) = changes.refused
        assert (refusal.slot, refusal.error.reason, refusal.error.code) == (1, "INVALID_FIELD", 3)
        assert changes.sequences == [1]
        assert len(changes.events) == (1 if attempt == 0 else 0)
    assert rules.apply_events([(2, progress("s.main.0", "c", "t", "next"))]).sequences == [2]


def test_rule4_an_event_for_an_ended_or_pending_loop_is_refused() -> None:
    rules = Rules()
    rules.apply_events([agent_start("s", "s.main.0", at=1), agent_end("s.main.0", at=2)])
    error = rules.refused([progress("s.main.0", "c", "t", "late")], LoopNotOpen)
    assert error.metadata["loop_id"] == "s.main.0"
    assert "completed" in error.message
    rules.apply_events([agent_start("s", "s.main.1", at=3), parallel_start("s", ["s.x.2"], at=3)])
    error = rules.refused([turn_start("s.x.2", 0, at=4)], LoopNotOpen)
    assert error.metadata["loop_id"] == "s.x.2"
    assert "pending" in error.message


def test_rule4_a_numbered_event_must_be_the_next_sequence() -> None:
    rules = Rules()
    rules.apply_events([(0, agent_start("s", "s.main.0", at=1))])
    error = rules.refused([(2, progress("s.main.0", "c", "t", "skipped"))], SequenceGap)
    assert error.metadata == {
        "loop_id": "s.main.0",
        "sequence": "2",
        "expected": "1",
    }
    assert rules.apply_events([(1, progress("s.main.0", "c", "t", "next"))]).sequences == [1]


# -- rule 5: streaming deltas -----------------------------------------------------------------


def test_rule5_message_updates_are_not_stored_by_default() -> None:
    rules = Rules()
    rules.apply_events([agent_start("s", "s.main.0", at=1)])
    changes = rules.apply_events(
        [message_update("s.main.0", assistant("He"), "He"), progress("s.main.0", "c", "t", "p")]
    )
    assert changes.sequences == [0, 1]
    assert [(e[1], e[3]) for e in changes.events] == [(1, "progress_message")]
    # Numbered deltas are a client error when the server does not keep them.
    error = rules.refused([(2, message_update("s.main.0", assistant("H"), "H"))], InvalidArgument)
    assert error.metadata["field"] == "sequence"


def test_rule5_an_unkept_message_update_for_a_loop_not_open_is_still_refused() -> None:
    """Rule 4 holds for deltas too: dropping them is not dropping the error."""
    rules = Rules()
    rules.apply_events([agent_start("s", "s.main.0", at=1), agent_end("s.main.0", at=2)])
    error = rules.refused([message_update("s.ghost.0", assistant("x"), "x")], LoopNotOpen)
    assert error.metadata == {"loop_id": "s.ghost.0"}
    error = rules.refused([message_update("s.main.0", assistant("x"), "x")], LoopNotOpen)
    assert error.metadata["loop_id"] == "s.main.0"
    assert "completed" in error.message


def test_rule5_message_updates_are_stored_when_configured() -> None:
    rules = Rules(RecordingOptions(include_streaming_events=True))
    rules.apply_events([agent_start("s", "s.main.0", at=1)])
    update = message_update("s.main.0", assistant("He"), "He")
    changes = rules.apply_events([update, (2, message_update("s.main.0", assistant("Hel"), "l"))])
    assert changes.sequences == [1, 2]
    assert [(e[1], e[3]) for e in changes.events] == [(1, "message_update"), (2, "message_update")]
    assert changes.events[0][4] == update.SerializeToString(deterministic=True)


# -- rule 6: turns -------------------------------------------------------------------------------


def _turn_events(loop: str, index: int = 0) -> list[Event]:
    answer = assistant(
        "let me look", use=usage(10, 5), tool_calls=[("c1", "read", {"path": "a.py"})], at=11
    )
    return [
        turn_start(loop, index, trigger=types_pb2.TURN_TRIGGER_CONTINUATION, at=10),
        message_end(loop, user("fix the bug", at=10)),
        turn_request(loop, index, {"model": "m", "max_tokens": 100}, at=10.5),
        message_end(loop, answer),
        tool_start(loop, "c1", "read", {"path": "a.py"}),
        tool_end(loop, "c1", "read", text="print(1)"),
        message_end(loop, tool_result("c1", "read", "print(1)", at=12)),
        turn_end(
            loop,
            answer,
            use=usage(10, 5),
            tool_results=[tool_result("c1", "read", "print(1)", at=12)],
            at=13,
        ),
    ]


def test_rule6_turn_end_materializes_the_partial_turn() -> None:
    rules = Rules()
    rules.apply_events([agent_start("s", "s.main.0", config=config(), at=1)])
    changes = rules.apply_events(_turn_events("s.main.0"))
    assert changes.sequences == list(range(1, 9))
    assert len(changes.turns) == 1
    loop_id, number, turn = changes.turns[0]
    assert (loop_id, number) == ("s.main.0", 0)
    assert turn.turn_id == types_pb2.TurnId(loop_id="s.main.0", turn_index=0)
    assert turn.triggered_by == types_pb2.TURN_TRIGGER_CONTINUATION
    assert turn.usage == usage(10, 5)
    # Input: every non-assistant MessageEnd while the turn was open.
    assert list(turn.input_messages) == [
        user("fix the bug", at=10),
        tool_result("c1", "read", "print(1)", at=12),
    ]
    assert turn.output_message.content[0].text.text == "let me look"
    assert turn.output_message.content[1].tool_call.name == "read"
    expected_result = tool_result("c1", "read", "print(1)", at=12)
    expected_result.turn_id.CopyFrom(turn.turn_id)
    assert list(turn.tool_results) == [expected_result]
    assert turn.started_at == ts(10)
    assert turn.ended_at == ts(13)
    assert not turn.HasField("request_payload")  # capture is off by default
    assert rules.loop("s.main.0").partial is None


def test_rule6_request_payload_is_kept_only_with_capture_on() -> None:
    rules = Rules(RecordingOptions(capture_turn_requests=True))
    rules.apply_events([agent_start("s", "s.main.0", at=1)])
    changes = rules.apply_events(_turn_events("s.main.0"))
    payload = changes.turns[0][2].request_payload
    expected = struct_pb2.Struct()
    expected.update({"model": "m", "max_tokens": 100})
    assert payload == expected
    # The TurnRequest event itself is appended either way.
    assert [e[3] for e in changes.events].count("turn_request") == 1


def test_rule6_partial_turn_is_kept_across_batches() -> None:
    rules = Rules()
    rules.apply_events([agent_start("s", "s.main.0", at=1), turn_start("s.main.0", 0, at=2)])
    partial = rules.loop("s.main.0").partial
    assert partial is not None and partial.turn_id.turn_index == 0
    rules.apply_events([message_end("s.main.0", user("hi", at=2))])
    changes = rules.apply_events([turn_end("s.main.0", assistant("hello"), at=3)])
    assert [m.content[0].text.text for m in changes.turns[0][2].input_messages] == ["hi"]


def test_rule6_turn_end_without_a_partial_turn_materializes_nothing() -> None:
    rules = Rules()
    rules.apply_events([agent_start("s", "s.main.0", config=config(), at=1)])
    changes = rules.apply_events([turn_end("s.main.0", assistant("orphan"), at=2)])
    assert changes.turns == []
    assert changes.sequences == [1]
    assert [e[3] for e in changes.events] == ["turn_end"]


def test_rule6_config_comes_from_turn_end_when_missing() -> None:
    rules = Rules()
    rules.apply_events(
        [agent_start("s", "s.fast-cfg.3", at=1), turn_start("s.fast-cfg.3", 0, at=2)]
    )
    assert not rules.loop("s.fast-cfg.3").record.HasField("config")
    rules.apply_events([turn_end("s.fast-cfg.3", assistant("x", model="gpt-5", provider="openai"))])
    expected = types_pb2.LoopConfigSnapshot(model="gpt-5", provider="openai", config_id="fast-cfg")
    assert rules.loop("s.fast-cfg.3").record.config == expected
    # A config, once there, is not replaced by later answers.
    rules.apply_events([turn_start("s.fast-cfg.3", 1), turn_end("s.fast-cfg.3", assistant("y"))])
    assert rules.loop("s.fast-cfg.3").record.config == expected


def test_rule6_config_id_is_absent_when_the_loop_id_has_no_config_segment() -> None:
    assert config_segment("s.a.b.7") == "a.b"
    assert config_segment("s.7") is None
    assert config_segment("plain") is None
    assert session_of("s.a.b.7") == "s"
    rules = Rules()
    rules.apply_events([agent_start("s", "s.7", at=1), turn_start("s.7", 0)])
    rules.apply_events([turn_end("s.7", assistant("x", model="m", provider="p"))])
    record = rules.loop("s.7").record
    assert record.config == types_pb2.LoopConfigSnapshot(model="m", provider="p")
    assert not record.config.HasField("config_id")


def test_rule6_a_user_turn_end_message_supplies_no_config() -> None:
    rules = Rules()
    rules.apply_events([agent_start("s", "s.main.0", at=1), turn_start("s.main.0", 0)])
    rules.apply_events([turn_end("s.main.0", user("not an answer"))])
    assert not rules.loop("s.main.0").record.HasField("config")


# -- rule 7: a tool spawned a sub-agent -----------------------------------------------------------


def test_rule7_child_in_an_open_session_gets_the_full_spawn_ref() -> None:
    rules = Rules()
    rules.apply_events(
        [agent_start("p", "p.main.0", at=1), tool_start("p.main.0", "call-1", "delegate")]
    )
    rules.apply_events([agent_start("c", "c.main.0", "p.main.0", agent="helper", at=2)])
    changes = rules.apply_events(
        [tool_end("p.main.0", "call-1", "delegate", child_loop_id="c.main.0")]
    )
    assert list(changes.loops["p.main.0"].record.child_loop_refs) == [
        session_pb2.ChildLoopRef(
            tool_call_id="call-1",
            tool_name="delegate",
            child_loop_id="c.main.0",
            child_session_id="c",
        )
    ]
    assert changes.sessions["c"].session.parent_spawn_ref == session_pb2.SpawnRef(
        parent_session_id="p",
        parent_loop_id="p.main.0",
        tool_call_id="call-1",
        tool_name="delegate",
    )


def test_rule7_child_loop_id_on_the_event_counts_too() -> None:
    rules = Rules()
    rules.apply_events(
        [agent_start("p", "p.main.0", at=1), agent_start("c", "c.main.0", "p.main.0")]
    )
    rules.apply_events([tool_end("p.main.0", "k", "task", child_loop_id="c.main.0", on_event=True)])
    assert rules.loop("p.main.0").record.child_loop_refs[0].child_loop_id == "c.main.0"
    assert rules.session("c").parent_spawn_ref.tool_call_id == "k"


def test_rule7_finalized_child_session_is_filled_too() -> None:
    rules = Rules()
    rules.apply_events([agent_start("p", "p.main.0", at=1)])
    rules.apply_events(
        [agent_start("c", "c.main.0", "p.main.0", at=2), agent_end("c.main.0", at=3)]
    )
    merge(rules.snapshot, checkpoint(rules.snapshot, ["c"], ts(4)))
    assert rules.session("c").HasField("finalized_at")
    rules.apply_events([tool_end("p.main.0", "call-9", "spawn", child_loop_id="c.main.0")])
    ref = rules.session("c").parent_spawn_ref
    assert (ref.tool_call_id, ref.tool_name) == ("call-9", "spawn")
    assert rules.session("c").HasField("finalized_at")  # filling it does not re-open it


def test_rule7_child_session_appearing_later_takes_the_recorded_ref() -> None:
    rules = Rules()
    rules.apply_events([agent_start("p", "p.main.0", at=1)])
    changes = rules.apply_events(
        [tool_end("p.main.0", "call-2", "delegate", child_loop_id="c.main.0")]
    )
    full = session_pb2.SpawnRef(
        parent_session_id="p",
        parent_loop_id="p.main.0",
        tool_call_id="call-2",
        tool_name="delegate",
    )
    assert changes.pending_refs == {"c": full}
    assert "c" not in changes.sessions
    changes = rules.apply_events([agent_start("c", "c.main.0", "p.main.0", at=5)])
    assert changes.sessions["c"].session.parent_spawn_ref == full
    assert changes.pending_refs == {"c": None}  # consumed


def test_rule7_a_complete_spawn_ref_is_not_overwritten() -> None:
    rules = Rules()
    rules.apply_events(
        [agent_start("p", "p.main.0", at=1), agent_start("c", "c.main.0", "p.main.0")]
    )
    rules.apply_events([tool_end("p.main.0", "first", "delegate", child_loop_id="c.main.0")])
    rules.apply_events([tool_end("p.main.0", "second", "delegate", child_loop_id="c.main.0")])
    assert rules.session("c").parent_spawn_ref.tool_call_id == "first"
    assert len(rules.loop("p.main.0").record.child_loop_refs) == 2


def test_rule7_same_session_child_gets_a_child_ref_but_no_spawn_ref() -> None:
    rules = Rules()
    rules.apply_events([agent_start("s", "s.main.0", at=1)])
    changes = rules.apply_events([tool_end("s.main.0", "c", "subtask", child_loop_id="s.sub.1")])
    ref = changes.loops["s.main.0"].record.child_loop_refs[0]
    assert ref.child_session_id == "s"
    assert changes.pending_refs == {}
    assert "s" not in changes.sessions
    assert not rules.session("s").HasField("parent_spawn_ref")


def test_rule7_tool_end_without_child_changes_no_refs() -> None:
    rules = Rules()
    rules.apply_events([agent_start("s", "s.main.0", at=1)])
    changes = rules.apply_events([tool_end("s.main.0", "c", "bash")])
    assert len(changes.loops["s.main.0"].record.child_loop_refs) == 0
    assert changes.pending_refs == {}


# -- rule 8: parallel evaluation ------------------------------------------------------------------


def test_rule8_parallel_start_registers_pending_loops_in_config_order() -> None:
    rules = Rules()
    rules.apply_events([agent_start("s", "s.main.0", agent="lead", at=1)])
    branches = ["s.cfg-b.1", "s.cfg-a.1", "s.cfg-c.1"]
    changes = rules.apply_events([parallel_start("s", branches, at=2)])
    assert changes.sequences == [0]
    assert changes.events == []
    assert list(changes.loops) == branches
    for loop_id in branches:
        record = changes.loops[loop_id].record
        assert record.loop_id == loop_id
        assert record.session_id == "s"
        assert record.agent_id == "lead"
        assert record.status == PENDING
        assert record.started_at == ts(2)
        assert changes.loops[loop_id].next_seq == 0
    [(session_id, group)] = changes.groups.values()
    assert session_id == "s"
    assert group.loop_ids == branches
    assert group.end is None


def test_rule8_parallel_end_marks_every_branch_open_or_ended() -> None:
    rules = Rules()
    rules.apply_events([agent_start("s", "s.main.0", at=1)])
    branches = ["s.a.1", "s.b.1", "s.c.1"]
    rules.apply_events([parallel_start("s", branches, at=2)])
    rules.apply_events([agent_start("s", loop, "s.main.0", at=3) for loop in branches])
    rules.apply_events([agent_end("s.a.1", at=4), agent_end("s.b.1", rejection="worse", at=4)])
    changes = rules.apply_events([parallel_end("s", "s.b.1", 1, use=usage(7, 3), at=5)])
    assert changes.sequences == [0]
    assert changes.events == []
    for loop_id in branches:
        group = rules.loop(loop_id).record.parallel_group
        assert list(group.all_loop_ids) == branches
        assert group.selected_loop_id == "s.b.1"
        assert group.selected_config_index == 1
        assert group.evaluation_usage == usage(7, 3)
        assert group.is_selected == (loop_id == "s.b.1")
    assert rules.loop("s.c.1").record.status == RUNNING
    [(_, group_state)] = changes.groups.values()
    assert group_state.end is not None and group_state.end.selected_loop_id == "s.b.1"


def test_rule8_parallel_end_reaches_branches_that_never_started() -> None:
    rules = Rules()
    rules.apply_events(
        [agent_start("s", "s.main.0", at=1), parallel_start("s", ["s.a.1", "s.b.1"])]
    )
    rules.apply_events([parallel_end("s", "s.a.1", 0)])
    assert rules.loop("s.b.1").record.status == PENDING
    assert rules.loop("s.b.1").record.parallel_group.is_selected is False
    assert rules.loop("s.a.1").record.parallel_group.is_selected is True


def test_rule8_a_parallel_start_may_open_its_session_for_the_first_branch_to_name() -> None:
    """The runtime's agent_loop_parallel announces the group before any loop starts."""
    rules = Rules()
    changes = rules.apply_events([parallel_start("p", ["p.a.1", "p.b.1"], at=2)])
    assert changes.admitted == ["p"]
    assert rules.loop("p.a.1").record.status == PENDING
    rules.apply_events(
        [agent_start("p", "p.b.1", agent="agent-p", at=3), agent_start("p", "p.a.1", at=4)]
    )
    head = rules.session("p")
    assert head.agent_id == "agent-p"
    assert head.created_at == head.formation.first_loop.timestamp == ts(3)
    assert head.last_active_at == ts(4)
    assert rules.loop("p.a.1").record.status == RUNNING


def test_rule8_a_parallel_end_needs_a_known_group() -> None:
    rules = Rules()
    rules.apply_events([agent_start("s", "s.main.0", at=1)])
    error = rules.refused([parallel_end("s", "s.zzz.1", 0)], NotFound)
    assert error.metadata["loop_id"] == "s.zzz.1"


def test_rule8_a_repeated_parallel_start_registers_nothing_new() -> None:
    rules = Rules()
    rules.apply_events(
        [agent_start("s", "s.main.0", at=1), parallel_start("s", ["s.a.1", "s.b.1"])]
    )
    changes = rules.apply_events([parallel_start("s", ["s.a.1", "s.b.1"])])
    assert changes.groups == {}
    assert set(changes.loops) == set()


# -- rule 9: loop end ----------------------------------------------------------------------------


def test_rule9_agent_end_completes_the_loop() -> None:
    rules = Rules()
    rules.apply_events([agent_start("s", "s.main.0", at=1), turn_start("s.main.0", 0, at=2)])
    messages = [user("hi", at=1), assistant("hello", model="m9", provider="p9", at=2)]
    changes = rules.apply_events([agent_end("s.main.0", messages, use=usage(100, 20), at=9)])
    record = changes.loops["s.main.0"].record
    assert record.status == COMPLETED
    assert not record.HasField("rejection")
    assert record.ended_at == ts(9)
    # The loop's messages are the AgentEnd's, stored once: in that event (sequence 2).
    assert list(record.messages) == []
    assert changes.loops["s.main.0"].end_event == 2
    assert changes.events[-1][1:4] == (2, "s", "agent_end")
    assert record.usage == usage(100, 20)
    assert changes.loops["s.main.0"].partial is None  # the open partial turn is discarded
    assert changes.turns == []
    assert changes.ended_loops == ["s.main.0"]
    # Config from the first assistant message, config_id from the loop id.
    assert record.config == types_pb2.LoopConfigSnapshot(
        model="m9", provider="p9", config_id="main"
    )


def test_rule9_rejection_makes_the_loop_rejected() -> None:
    rules = Rules()
    rules.apply_events([agent_start("s", "s.main.0", config=config(), at=1)])
    changes = rules.apply_events([agent_end("s.main.0", rejection="input too long", at=2)])
    record = changes.loops["s.main.0"].record
    assert record.status == REJECTED
    assert record.rejection == "input too long"
    assert record.config == config()  # present config is not replaced
    assert len(record.messages) == 0


def test_rule9_same_session_children_join_the_parent_once() -> None:
    rules = Rules()
    rules.apply_events(
        [
            agent_start("s", "s.main.0", at=1),
            agent_start("s", "s.main.1", "s.main.0", at=2),
            agent_start("s", "s.main.2", "s.main.0", at=2),
        ]
    )
    rules.apply_events([agent_end("s.main.0", at=3)])  # a parent may end before its children
    rules.apply_events([agent_end("s.main.2", at=4)])
    changes = rules.apply_events([agent_end("s.main.1", at=5)])
    assert list(changes.loops["s.main.0"].record.children_loop_ids) == ["s.main.2", "s.main.1"]
    assert changes.loops["s.main.0"].record.status == COMPLETED


def test_rule9_cross_session_children_do_not_join_children_loop_ids() -> None:
    rules = Rules()
    rules.apply_events(
        [agent_start("p", "p.main.0", at=1), agent_start("c", "c.main.0", "p.main.0")]
    )
    changes = rules.apply_events([agent_end("c.main.0", at=2)])
    assert "p.main.0" not in changes.loops
    assert len(rules.loop("p.main.0").record.children_loop_ids) == 0


def test_rule9_an_ended_loop_takes_no_second_end() -> None:
    rules = Rules()
    rules.apply_events([agent_start("s", "s.main.0", at=1), agent_end("s.main.0", at=2)])
    rules.refused([agent_end("s.main.0", rejection="again", at=3)], LoopNotOpen)
    assert rules.loop("s.main.0").record.status == COMPLETED


# -- rule 10: flush and checkpoint ---------------------------------------------------------------


def _three_sessions() -> Rules:
    rules = Rules()
    rules.apply_events(
        [
            agent_start("a", "a.main.0", at=1),
            turn_start("a.main.0", 0, at=2),
            agent_start("b", "b.main.0", at=1),
            agent_start("c", "c.main.0", at=1),
            agent_end("c.main.0", at=2),
            parallel_start("b", ["b.x.1", "b.y.1"], at=3),
        ]
    )
    return rules


def test_rule10_flush_of_one_session_aborts_and_finalizes_it_only() -> None:
    rules = _three_sessions()
    batch = flush(rules.snapshot, ["b"], "b", ts(50))
    changes = batch.changes
    assert sorted(changes.ended_loops) == ["b.main.0", "b.x.1", "b.y.1"]
    for loop_id in ("b.main.0", "b.x.1", "b.y.1"):
        assert changes.loops[loop_id].record.status == ABORTED
        assert changes.loops[loop_id].record.ended_at == ts(50)
    assert changes.finalized == ["b"]
    assert changes.sessions["b"].session.finalized_at == ts(50)
    assert "a.main.0" not in changes.loops
    merge(rules.snapshot, batch)
    assert rules.loop("a.main.0").record.status == RUNNING


def test_rule10_flush_of_all_aborts_every_open_loop_and_drops_partial_turns() -> None:
    rules = _three_sessions()
    batch = flush(rules.snapshot, ["a", "b", "c"], None, ts(60))
    assert sorted(batch.changes.ended_loops) == ["a.main.0", "b.main.0", "b.x.1", "b.y.1"]
    assert batch.changes.loops["a.main.0"].partial is None
    assert batch.changes.turns == []
    assert sorted(batch.changes.finalized) == ["a", "b", "c"]
    assert "c.main.0" not in batch.changes.loops  # an ended loop stays as it was


def test_rule10_checkpoint_finalizes_only_idle_sessions() -> None:
    rules = _three_sessions()
    batch = checkpoint(rules.snapshot, ["a", "b", "c"], ts(70))
    assert batch.changes.finalized == ["c"]
    assert batch.changes.ended_loops == []
    assert set(batch.changes.loops) == set()
    assert batch.changes.sessions["c"].session.finalized_at == ts(70)
    merge(rules.snapshot, batch)
    # A finalized session is not finalized twice.
    assert checkpoint(rules.snapshot, ["c"], ts(80)).changes.finalized == []


# -- rule 12 (pure half): formation on demand ------------------------------------------------------


def test_rule12_open_session_is_explicit_and_takes_a_pending_ref() -> None:
    rules = Rules()
    rules.apply_events([agent_start("p", "p.main.0", at=1)])
    rules.apply_events([tool_end("p.main.0", "call", "spawn", child_loop_id="c.main.0")])
    rules.snapshot.sessions["c"] = None
    formation = session_pb2.SessionFormation()
    formation.explicit.timestamp.CopyFrom(ts(3))
    batch = open_session(
        rules.snapshot, "c", "helper", session_pb2.SESSION_SCOPE_PERSISTENT, None, formation, ts(3)
    )
    session = batch.changes.sessions["c"].session
    assert session.agent_id == "helper"
    assert session.scope == session_pb2.SESSION_SCOPE_PERSISTENT
    assert session.formation == formation
    assert session.created_at == ts(3) and session.last_active_at == ts(3)
    assert session.parent_spawn_ref.tool_call_id == "call"
    assert batch.changes.admitted == ["c"]
    merge(rules.snapshot, batch)
    # The first loop keeps the explicit formation and agent of the opened session.
    changes = rules.apply_events([agent_start("c", "c.main.0", "p.main.0", agent="other", at=4)])
    assert changes.sessions["c"].session.formation == formation
    assert changes.sessions["c"].session.agent_id == "helper"
    assert changes.admitted == []
    with pytest.raises(AlreadyExists):
        open_session(
            rules.snapshot, "c", "x", session_pb2.SESSION_SCOPE_EPHEMERAL, None, formation, ts(5)
        )


def test_rule12_rotation_needed_after_the_threshold_only() -> None:
    latest = session_pb2.Session(session_id="s")
    latest.last_active_at.CopyFrom(ts(100))
    assert rotation_needed(None, 60, ts(0))
    assert not rotation_needed(latest, 60, ts(160))
    assert rotation_needed(latest, 60, ts(161))


# -- delivery: re-sent events ---------------------------------------------------------------------


def test_resend_with_same_content_is_acknowledged_without_storing_twice() -> None:
    rules = Rules()
    batch = [(0, agent_start("s", "s.main.0", at=1)), (1, progress("s.main.0", "c", "t", "p"))]
    rules.apply_events(batch)
    rules.snapshot.stored_events.clear()  # as after a restart: looked up in the store again
    resent = [*batch, (2, progress("s.main.0", "c", "t", "new"))]
    missing = needed(rules.snapshot, prepare(resent))
    assert missing.event_keys == {("s.main.0", 0), ("s.main.0", 1)}
    changes = rules.apply_events(resent)
    assert changes.sequences == [0, 1, 2]
    assert [(e[1], e[3]) for e in changes.events] == [(2, "progress_message")]
    assert changes.admitted == []
    assert rules.loop("s.main.0").next_seq == 3


def test_resend_of_events_not_yet_handed_to_the_store_needs_no_lookup() -> None:
    """A group's later batch re-sends an earlier one's events before either is written."""
    rules = Rules()
    batch: list[Envelope] = [
        (0, agent_start("s", "s.main.0", at=1)),
        (1, progress("s.main.0", "c", "t", "p")),
    ]
    rules.load_now(batch)
    first = Batch(rules.snapshot, rules.options)
    first.apply(prepare(batch))
    merge(rules.snapshot, first)
    assert set(rules.snapshot.unwritten) == {("s.main.0", 0), ("s.main.0", 1)}
    resent = [*batch, (2, progress("s.main.0", "c", "t", "new"))]
    assert not needed(rules.snapshot, prepare(resent))
    second = Batch(rules.snapshot, rules.options)
    changes = second.apply(prepare(resent))
    assert changes.sequences == [0, 1, 2]
    assert [(e[1], e[3]) for e in changes.events] == [(2, "progress_message")]
    conflicting = Batch(rules.snapshot, rules.options)
    changes = conflicting.apply(prepare([(1, progress("s.main.0", "c", "t", "other"))]))
    (refusal,) = changes.refused
    assert isinstance(refusal.error, SequenceConflict) and refusal.slot is None


def test_combine_keeps_the_last_state_and_every_append_in_order() -> None:
    rules = Rules()
    first = rules.apply_events(
        [agent_start("s", "s.main.0", at=1), progress("s.main.0", "c", "t", "a")]
    )
    second = rules.apply_events([progress("s.main.0", "c", "t", "b"), agent_end("s.main.0", at=2)])
    combined = combine([first, second])
    assert [(e[1], e[3]) for e in combined.events] == [
        (0, "agent_start"),
        (1, "progress_message"),
        (2, "progress_message"),
        (3, "agent_end"),
    ]
    assert combined.loops["s.main.0"] is second.loops["s.main.0"]
    assert combined.loops["s.main.0"].record.status == COMPLETED
    assert combined.sessions["s"] is first.sessions["s"]  # the second did not change it


def test_resend_of_an_ended_loops_events_is_still_acknowledged() -> None:
    rules = Rules()
    batch = [(0, agent_start("s", "s.main.0", at=1)), (1, agent_end("s.main.0", at=2))]
    rules.apply_events(batch)
    changes = rules.apply_events(batch)
    assert changes.sequences == [0, 1]
    assert changes.events == []
    assert changes.ended_loops == []


def test_resend_within_one_batch_is_recognised() -> None:
    rules = Rules()
    start = (0, agent_start("s", "s.main.0", at=1))
    changes = rules.apply_events([start, start])
    assert changes.sequences == [0, 0]
    assert len(changes.events) == 1


def test_resend_with_different_content_is_a_conflict_naming_loop_and_sequence() -> None:
    rules = Rules()
    rules.apply_events(
        [(0, agent_start("s", "s.main.0", at=1)), (1, progress("s.main.0", "c", "t", "a"))]
    )
    error = rules.refused([(1, progress("s.main.0", "c", "t", "b"))], SequenceConflict)
    assert error.metadata == {"loop_id": "s.main.0", "sequence": "1"}
    assert rules.loop("s.main.0").next_seq == 2


def test_sessions_touched_names_every_session_a_batch_writes() -> None:
    rules = Rules()
    rules.apply_events([agent_start("a", "a.main.0", at=1)])
    events = [
        progress("a.main.0", "c", "t", "x"),
        agent_start("b", "b.main.0"),
        parallel_start("c", ["c.x.0"]),
        progress("d.main.0", "c", "t", "unknown loop"),
    ]
    touched = sessions_touched(rules.snapshot, prepare([(None, e) for e in events]))
    assert touched == {"a", "b", "c", "d"}
