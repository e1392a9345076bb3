"""Property: the server stores exactly what a small reference model of the rules says.

The model below is written from DESIGN.md's recording semantics the way the seed
keeps state: one `Session` per session, loops appended to it, everything mutated
in memory. It shares no code with recorder_server. A strategy generates random
*valid* runs — several sessions, continuations, turns, tool calls that spawn
sub-agents (child started before, after or never relative to the tool's end),
parallel groups, rejections, flushes, checkpoints and re-sent batches — which go
to the real server in Append batches and to the model; every session read back
with GetSession must equal the model's.

All examples share one server; each uses its own id prefix. Wall-clock values
(finalized_at, and ended_at of loops aborted by Flush) are compared by presence.
"""

from __future__ import annotations

import asyncio
import difflib
import itertools
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
from agent_recorder.v1 import events_pb2, session_pb2, types_pb2
from agent_recorder.v1 import recorder_service_pb2 as api
from google.protobuf import text_format
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from support.events import (
    Envelope,
    Event,
    agent_end,
    agent_start,
    aio,
    append,
    assistant,
    compaction_started,
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
    turn_end,
    turn_request,
    turn_start,
    usage,
    user,
)
from support.recorder import RunningRecorder

if TYPE_CHECKING:
    from support.events import Stub

# The model-based run is slow: not in `make test-fast`.
pytestmark = pytest.mark.slow
PENDING = session_pb2.LOOP_STATUS_PENDING
RUNNING = session_pb2.LOOP_STATUS_RUNNING
OPEN = (PENDING, RUNNING)
WALL_CLOCK = Timestamp(seconds=1)  # stands in for server-chosen times
DEADLINE = 10.0

# =====================================================================================
# The reference model
# =====================================================================================


def _segment(loop_id: str) -> str | None:
    parts = loop_id.split(".")
    return ".".join(parts[1:-1]) if len(parts) >= 3 else None


def _after(a: Timestamp, b: Timestamp) -> bool:
    return (a.seconds, a.nanos) > (b.seconds, b.nanos)


@dataclass
class Model:
    sessions: dict[str, session_pb2.Session] = field(default_factory=dict)
    loops: dict[str, session_pb2.LoopRecord] = field(default_factory=dict)
    partial: dict[str, session_pb2.Turn] = field(default_factory=dict)
    groups: dict[str, list[tuple[list[str], bool]]] = field(default_factory=dict)
    waiting_refs: dict[str, session_pb2.SpawnRef] = field(default_factory=dict)

    # -- events -----------------------------------------------------------------------

    def apply(self, batch: list[Event]) -> list[int]:
        return [self._one(event) for event in batch]

    def _one(self, event: Event) -> int:
        kind = event.WhichOneof("event")
        if kind == "parallel_loop_start":
            self._parallel_start(event.parallel_loop_start)
            return 0
        if kind == "parallel_loop_end":
            self._parallel_end(event.parallel_loop_end)
            return 0
        if kind == "message_update":  # not kept: the server is not configured for deltas
            return 0
        if kind == "agent_start":
            loop = self._agent_start(event.agent_start)
        else:
            assert kind is not None
            loop = self.loops[getattr(event, kind).loop_id]
            assert loop.status == RUNNING
            handler = getattr(self, f"_{kind}", None)
            if handler is not None:
                handler(loop, getattr(event, kind))
        sequence = len(loop.events)
        loop.events.add(sequence=sequence, event=event)
        return sequence

    def _session_of(self, loop_id: str) -> str:
        loop = self.loops.get(loop_id)
        return loop.session_id if loop is not None else loop_id.split(".")[0]

    def _agent_start(self, start: events_pb2.AgentStart) -> session_pb2.LoopRecord:
        session = self.sessions.get(start.session_id)
        if session is None:
            session = session_pb2.Session(session_id=start.session_id, agent_id=start.agent_id)
            session.created_at.CopyFrom(start.timestamp)
            session.last_active_at.CopyFrom(start.timestamp)
            session.formation.first_loop.timestamp.CopyFrom(start.timestamp)
            waiting = self.waiting_refs.pop(start.session_id, None)
            if waiting is not None:
                session.parent_spawn_ref.CopyFrom(waiting)
            self.sessions[start.session_id] = session
        else:
            session.ClearField("finalized_at")
            if _after(start.timestamp, session.last_active_at):
                session.last_active_at.CopyFrom(start.timestamp)
        loop = self.loops.get(start.loop_id)
        if loop is None:
            loop = session.loops.add()
            self.loops[start.loop_id] = loop
        assert loop.status in (PENDING, session_pb2.LOOP_STATUS_UNSPECIFIED)
        loop.loop_id = start.loop_id
        loop.session_id = start.session_id
        loop.agent_id = start.agent_id
        if start.HasField("parent_loop_id"):
            loop.parent_loop_id = start.parent_loop_id
        loop.continuation_kind.CopyFrom(start.continuation_kind)
        loop.started_at.CopyFrom(start.timestamp)
        loop.status = RUNNING
        if start.HasField("config_snapshot"):
            loop.config.CopyFrom(start.config_snapshot)
        if start.HasField("metadata"):
            loop.metadata.CopyFrom(start.metadata)
        if start.HasField("parent_loop_id"):
            parent_session = self._session_of(start.parent_loop_id)
            if parent_session != start.session_id and not session.HasField("parent_spawn_ref"):
                session.parent_spawn_ref.parent_session_id = parent_session
                session.parent_spawn_ref.parent_loop_id = start.parent_loop_id
        return loop

    def _agent_end(self, loop: session_pb2.LoopRecord, end: events_pb2.AgentEnd) -> None:
        self.partial.pop(loop.loop_id, None)
        loop.ended_at.CopyFrom(end.timestamp)
        if end.HasField("rejection"):
            loop.status = session_pb2.LOOP_STATUS_REJECTED
            loop.rejection = end.rejection
        else:
            loop.status = session_pb2.LOOP_STATUS_COMPLETED
        loop.ClearField("messages")
        loop.messages.extend(end.messages)
        loop.usage.CopyFrom(end.usage)
        if not loop.HasField("config"):
            for message in end.messages:
                if message.role == types_pb2.MESSAGE_ROLE_ASSISTANT:
                    self._config_from(loop, message)
                    break
        if loop.HasField("parent_loop_id"):
            parent = self.loops.get(loop.parent_loop_id)
            if (
                parent is not None
                and parent.session_id == loop.session_id
                and loop.loop_id not in parent.children_loop_ids
            ):
                parent.children_loop_ids.append(loop.loop_id)

    @staticmethod
    def _config_from(loop: session_pb2.LoopRecord, message: types_pb2.AgentMessage) -> None:
        loop.config.model = message.model
        loop.config.provider = message.provider
        segment = _segment(loop.loop_id)
        if segment is not None:
            loop.config.config_id = segment

    def _turn_start(self, loop: session_pb2.LoopRecord, start: events_pb2.TurnStart) -> None:
        turn = session_pb2.Turn(triggered_by=start.triggered_by)
        turn.turn_id.loop_id = start.loop_id
        turn.turn_id.turn_index = start.turn_index
        turn.started_at.CopyFrom(start.timestamp)
        self.partial[loop.loop_id] = turn

    def _message_end(self, loop: session_pb2.LoopRecord, end: events_pb2.MessageEnd) -> None:
        turn = self.partial.get(loop.loop_id)
        if turn is not None and end.message.role != types_pb2.MESSAGE_ROLE_ASSISTANT:
            turn.input_messages.append(end.message)

    def _turn_end(self, loop: session_pb2.LoopRecord, end: events_pb2.TurnEnd) -> None:
        if not loop.HasField("config") and end.message.role == types_pb2.MESSAGE_ROLE_ASSISTANT:
            self._config_from(loop, end.message)
        turn = self.partial.pop(loop.loop_id, None)
        if turn is None:
            return
        turn.usage.CopyFrom(end.usage)
        turn.output_message.CopyFrom(end.message)
        for result in end.tool_results:
            stamped = turn.tool_results.add()
            stamped.CopyFrom(result)
            stamped.turn_id.CopyFrom(turn.turn_id)
        turn.ended_at.CopyFrom(end.timestamp)
        loop.turns.append(turn)

    def _tool_execution_end(
        self, loop: session_pb2.LoopRecord, end: events_pb2.ToolExecutionEnd
    ) -> None:
        child = end.result.child_loop_id or end.child_loop_id
        if not child:
            return
        child_session = self._session_of(child)
        loop.child_loop_refs.add(
            tool_call_id=end.tool_call_id,
            tool_name=end.tool_name,
            child_loop_id=child,
            child_session_id=child_session,
        )
        if child_session == loop.session_id:
            return
        ref = session_pb2.SpawnRef(
            parent_session_id=loop.session_id,
            parent_loop_id=loop.loop_id,
            tool_call_id=end.tool_call_id,
            tool_name=end.tool_name,
        )
        session = self.sessions.get(child_session)
        if session is None:
            self.waiting_refs.setdefault(child_session, ref)
        elif not session.parent_spawn_ref.tool_call_id:
            session.parent_spawn_ref.CopyFrom(ref)

    def _parallel_start(self, start: events_pb2.ParallelLoopStart) -> None:
        session = self.sessions[start.session_id]
        groups = self.groups.setdefault(start.session_id, [])
        if any(ids == list(start.loop_ids) for ids, _ in groups):
            return
        groups.append((list(start.loop_ids), False))
        for loop_id in start.loop_ids:
            if loop_id in self.loops:
                continue
            loop = session.loops.add(
                loop_id=loop_id,
                session_id=start.session_id,
                agent_id=session.agent_id,
                status=PENDING,
            )
            loop.started_at.CopyFrom(start.timestamp)
            self.loops[loop_id] = loop

    def _parallel_end(self, end: events_pb2.ParallelLoopEnd) -> None:
        ids = next(
            ids for ids, _ in reversed(self.groups[end.session_id]) if end.selected_loop_id in ids
        )
        for loop_id in ids:
            loop = self.loops.get(loop_id)
            if loop is None:
                continue
            group = loop.parallel_group
            group.Clear()
            group.all_loop_ids.extend(ids)
            group.selected_loop_id = end.selected_loop_id
            group.selected_config_index = end.selected_config_index
            group.evaluation_usage.CopyFrom(end.evaluation_usage)
            group.is_selected = loop_id == end.selected_loop_id

    # -- control ----------------------------------------------------------------------

    def flush(self, session_id: str | None) -> None:
        for sid, session in self.sessions.items():
            if session_id not in (None, sid):
                continue
            for loop in session.loops:
                if loop.status in OPEN:
                    loop.status = session_pb2.LOOP_STATUS_ABORTED
                    loop.ended_at.CopyFrom(WALL_CLOCK)
                    self.partial.pop(loop.loop_id, None)
            if not session.HasField("finalized_at"):
                session.finalized_at.CopyFrom(WALL_CLOCK)

    def checkpoint(self, session_id: str | None) -> None:
        for sid, session in self.sessions.items():
            if session_id not in (None, sid) or session.HasField("finalized_at"):
                continue
            if all(loop.status not in OPEN for loop in session.loops):
                session.finalized_at.CopyFrom(WALL_CLOCK)


# =====================================================================================
# Random valid runs
# =====================================================================================


def describe(event: Event) -> str:
    kind = str(event.WhichOneof("event"))
    body = getattr(event, kind)
    target = body.session_id if kind.startswith("parallel") else body.loop_id
    return f"{kind}({target})"


class Send:
    """One Append batch. Not a dataclass: hypothesis would print every protobuf in full."""

    def __init__(self, events: list[Event], numbered: bool) -> None:
        self.events = events
        self.numbered = numbered

    def __repr__(self) -> str:  # what hypothesis prints for a falsifying run
        events = ", ".join(describe(e) for e in self.events)
        return f"Send(numbered={self.numbered}, [{events}])"


@dataclass
class Resend:
    of: int  # index of an earlier numbered Send among the steps


@dataclass
class Control:
    op: str  # "flush" or "checkpoint"
    session_id: str | None


Step = Send | Resend | Control

_examples = itertools.count()
TEXTS = ("ok", "look at a.py", "fixed", "hmm")
MODELS = (("claude-sonnet-4", "anthropic"), ("gpt-5", "openai"))


@dataclass
class _LoopState:
    session: str
    status: str = "running"  # running | pending | closed
    turn_index: int = 0
    calls: int = 0


class _Run:
    """Draws one valid run, tracking just enough state to keep every event legal."""

    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw
        self.prefix = f"x{next(_examples)}"
        self.clock = 0.0
        self.session_count = 0
        self.sessions: list[str] = []
        self.agents: dict[str, str] = {}
        self.counters: dict[str, int] = {}
        self.loops: dict[str, _LoopState] = {}
        self.spawns: list[dict[str, Any]] = []
        self.groups: list[dict[str, Any]] = []
        self.steps: list[Step] = []
        self.batch: list[Event] = []

    # -- helpers --------------------------------------------------------------------

    def tick(self) -> float:
        self.clock += self.draw(st.sampled_from([0.0, 0.5, 1.0, 3.0]))
        return self.clock

    def pick(self, items: list[str]) -> str:
        return self.draw(st.sampled_from(sorted(items)))

    def running(self) -> list[str]:
        return [lid for lid, s in self.loops.items() if s.status == "running"]

    def new_loop_id(self, session: str, segment: str | None = None) -> str:
        n = self.counters.get(session, 0)
        self.counters[session] = n + 1
        segment = segment or self.draw(st.sampled_from(["main", "fast", "alt-cfg"]))
        return f"{session}.{segment}.{n}"

    def new_session(self) -> str:
        self.session_count += 1
        return f"{self.prefix}s{self.session_count}"

    def emit(self, event: Event) -> None:
        self.batch.append(event)

    def cut(self) -> None:
        if self.batch:
            self.steps.append(Send(self.batch, self.draw(st.booleans())))
            self.batch = []

    def message(self) -> types_pb2.AgentMessage:
        role = self.draw(st.sampled_from(["user", "assistant", "tool"]))
        text = self.draw(st.sampled_from(TEXTS))
        if role == "user":
            return user(text, at=self.clock)
        if role == "tool":
            return tool_result("c", "read", text, at=self.clock)
        model, provider = self.draw(st.sampled_from(MODELS))
        return assistant(text, model=model, provider=provider, use=usage(3, 1), at=self.clock)

    def start(self, session: str, loop_id: str, parent: str | None) -> None:
        if session not in self.agents:
            self.agents[session] = self.pick([f"{self.prefix}a0", f"{self.prefix}a1"])
            self.sessions.append(session)
        at = self.tick() - self.draw(st.sampled_from([0.0, 0.0, 2.0]))  # sometimes older
        kind = self.draw(st.sampled_from(["initial", "default", "rerun", "compaction"]))
        snapshot = None
        if self.draw(st.booleans()):
            model, provider = self.draw(st.sampled_from(MODELS))
            snapshot = config(model, provider, loop_id.split(".")[1])
        metadata = {"step": len(self.steps)} if self.draw(st.booleans()) else None
        self.emit(
            agent_start(
                session,
                loop_id,
                parent,
                agent=self.agents[session],
                kind=continuation(kind, "t" if kind == "rerun" else ""),
                config=snapshot,
                metadata=metadata,
                at=at,
            )
        )
        state = self.loops.get(loop_id)
        if state is None:
            self.loops[loop_id] = _LoopState(session)
        else:
            state.status = "running"

    # -- actions --------------------------------------------------------------------

    def actions(self) -> list[Callable[[], None]]:
        out: list[Callable[[], None]] = [self.a_new_session]
        if self.sessions:
            out += [self.a_continue, self.a_parallel_start, self.a_control]
        if self.running():
            out += [self.a_turn] * 8 + [self.a_misc] * 3 + [self.a_end] * 2 + [self.a_spawn]
            out += [self.a_tool_same_session, self.a_tool_foreign_child]
        if any(not s["started"] for s in self.spawns):
            out.append(self.a_start_spawned)
        if any(
            not s["tool_ended"] and self.loops[s["parent"]].status == "running" for s in self.spawns
        ):
            out.append(self.a_finish_spawn)
        if any(self.loops[b].status == "pending" for g in self.groups for b in g["branches"]):
            out.append(self.a_start_branch)
        if any(not g["ended"] for g in self.groups):
            out.append(self.a_parallel_end)
        if any(isinstance(s, Send) and s.numbered for s in self.steps):
            out.append(self.a_resend)
        return out

    def a_new_session(self) -> None:
        sid = self.new_session()
        self.start(sid, self.new_loop_id(sid), None)

    def a_continue(self) -> None:
        sid = self.pick(self.sessions)
        mine = [lid for lid, s in self.loops.items() if s.session == sid]
        with_parent = self.draw(st.booleans())
        self.start(sid, self.new_loop_id(sid), self.pick(mine) if mine and with_parent else None)

    def a_turn(self) -> None:
        """Part of a turn: start, an input, a request, or the end (with or without start)."""
        loop_id = self.pick(self.running())
        state = self.loops[loop_id]
        what = self.draw(st.sampled_from(["start", "input", "input", "request", "end", "end"]))
        if what == "start":
            trigger = self.draw(st.sampled_from([1, 2, 3, 4]))
            self.emit(turn_start(loop_id, state.turn_index, trigger=trigger, at=self.tick()))
            state.turn_index += 1
        elif what == "input":
            self.emit(message_end(loop_id, self.message()))
        elif what == "request":
            self.emit(turn_request(loop_id, state.turn_index, {"n": state.turn_index}, self.clock))
        else:
            answer = self.message()
            results = [tool_result("c", "read", "r", at=self.clock)] * self.draw(st.integers(0, 2))
            use = usage(self.draw(st.integers(0, 50)), self.draw(st.integers(0, 9)))
            self.emit(turn_end(loop_id, answer, use=use, tool_results=results, at=self.tick()))

    def a_misc(self) -> None:
        loop_id = self.pick(self.running())
        state = self.loops[loop_id]
        what = self.draw(st.sampled_from(["tool", "progress", "rejected", "delta", "compaction"]))
        if what == "tool":
            state.calls += 1
            call = f"k{state.calls}"
            self.emit(tool_start(loop_id, call, "bash", {"cmd": "ls"}))
            self.emit(tool_end(loop_id, call, "bash", is_error=self.draw(st.booleans())))
        elif what == "progress":
            self.emit(progress(loop_id, "k", "bash", self.draw(st.sampled_from(TEXTS))))
        elif what == "rejected":
            self.emit(input_rejected(loop_id, "empty input"))
        elif what == "delta":
            self.emit(message_update(loop_id, assistant("par"), "par"))
        else:
            self.emit(compaction_started(loop_id, 1000, 12, at=self.clock))

    def a_end(self) -> None:
        loop_id = self.pick(self.running())
        messages = [self.message() for _ in range(self.draw(st.integers(0, 3)))]
        rejection = self.draw(st.sampled_from([None, None, "policy"]))
        use = usage(self.draw(st.integers(0, 500)), self.draw(st.integers(0, 50)), reasoning=1)
        self.emit(agent_end(loop_id, messages, use=use, rejection=rejection, at=self.tick()))
        self.loops[loop_id].status = "closed"

    def a_spawn(self) -> None:
        parent = self.pick(self.running())
        state = self.loops[parent]
        state.calls += 1
        call = f"k{state.calls}"
        child_session = self.new_session()
        self.spawns.append(
            {
                "parent": parent,
                "call": call,
                "child": f"{child_session}.sub.0",
                "session": child_session,
                "started": False,
                "tool_ended": False,
                "on_event": self.draw(st.booleans()),
            }
        )
        self.emit(tool_start(parent, call, "delegate", {"task": "help"}))

    def a_start_spawned(self) -> None:
        spawn = self.draw(st.sampled_from([s for s in self.spawns if not s["started"]]))
        spawn["started"] = True
        self.counters[spawn["session"]] = 1
        self.start(spawn["session"], spawn["child"], spawn["parent"])

    def a_finish_spawn(self) -> None:
        ready = [
            s
            for s in self.spawns
            if not s["tool_ended"] and self.loops[s["parent"]].status == "running"
        ]
        spawn = self.draw(st.sampled_from(ready))
        spawn["tool_ended"] = True
        self.emit(
            tool_end(
                spawn["parent"],
                spawn["call"],
                "delegate",
                child_loop_id=spawn["child"],
                on_event=spawn["on_event"],
            )
        )

    def a_tool_same_session(self) -> None:
        parent = self.pick(self.running())
        state = self.loops[parent]
        mine = [lid for lid, s in self.loops.items() if s.session == state.session]
        state.calls += 1
        self.emit(tool_end(parent, f"k{state.calls}", "subtask", child_loop_id=self.pick(mine)))

    def a_tool_foreign_child(self) -> None:
        """A tool naming a loop of another session (spawned or not) as its child."""
        parent = self.pick(self.running())
        state = self.loops[parent]
        others = [lid for lid, s in self.loops.items() if s.session != state.session]
        others += [s["child"] for s in self.spawns if not s["started"]]  # not there yet
        if not others:
            return
        state.calls += 1
        self.emit(tool_end(parent, f"k{state.calls}", "handoff", child_loop_id=self.pick(others)))

    def a_parallel_start(self) -> None:
        sid = self.pick(self.sessions)
        n = self.counters.get(sid, 0)
        self.counters[sid] = n + 1
        count = self.draw(st.integers(2, 3))
        branches = [f"{sid}.b{j}.{n}" for j in range(count)]
        self.emit(parallel_start(sid, branches, at=self.tick()))
        for branch in branches:
            self.loops[branch] = _LoopState(sid, status="pending")
        self.groups.append({"session": sid, "branches": branches, "ended": False})

    def a_start_branch(self) -> None:
        pending = [
            b for g in self.groups for b in g["branches"] if self.loops[b].status == "pending"
        ]
        branch = self.pick(pending)
        sid = self.loops[branch].session
        mine = [lid for lid, s in self.loops.items() if s.session == sid and lid != branch]
        self.start(sid, branch, self.pick(mine) if mine else None)

    def a_parallel_end(self) -> None:
        group = self.draw(st.sampled_from([g for g in self.groups if not g["ended"]]))
        group["ended"] = True
        index = self.draw(st.integers(0, len(group["branches"]) - 1))
        use = usage(self.draw(st.integers(0, 99)), 1)
        self.emit(
            parallel_end(group["session"], group["branches"][index], index, use=use, at=self.tick())
        )

    def a_control(self) -> None:
        self.cut()
        op = self.draw(st.sampled_from(["flush", "checkpoint", "checkpoint"]))
        sid = self.draw(st.sampled_from([None, *sorted(self.sessions)]))
        self.steps.append(Control(op, sid))
        if op == "flush":
            for state in self.loops.values():
                if sid in (None, state.session) and state.status != "closed":
                    state.status = "closed"

    def a_resend(self) -> None:
        self.cut()
        numbered = [i for i, s in enumerate(self.steps) if isinstance(s, Send) and s.numbered]
        self.steps.append(Resend(self.draw(st.sampled_from(numbered))))

    def run(self) -> tuple[str, list[Step]]:
        for _ in range(self.draw(st.integers(1, 60))):
            self.draw(st.sampled_from(self.actions()))()
            if self.draw(st.integers(0, 2)) == 0:
                self.cut()
        self.cut()
        return self.prefix, self.steps


@st.composite
def runs(draw: st.DrawFn) -> tuple[str, list[Step]]:
    return _Run(draw).run()


# =====================================================================================
# The property
# =====================================================================================

T = TypeVar("T")


def numbered(events: list[Event], sequences: list[int]) -> list[Event | Envelope]:
    """Envelopes as a numbering client sends them: deltas and session-level events bare."""
    out: list[Event | Envelope] = []
    for event, sequence in zip(events, sequences, strict=True):
        kind = event.WhichOneof("event")
        bare = kind in ("message_update", "parallel_loop_start", "parallel_loop_end")
        out.append(event if bare else (sequence, event))
    return out


def normalized(session: session_pb2.Session) -> session_pb2.Session:
    out = session_pb2.Session()
    out.CopyFrom(session)
    if out.HasField("finalized_at"):
        out.finalized_at.CopyFrom(WALL_CLOCK)
    for loop in out.loops:
        if loop.status == session_pb2.LOOP_STATUS_ABORTED and loop.HasField("ended_at"):
            loop.ended_at.CopyFrom(WALL_CLOCK)
    return out


def explain(expected: session_pb2.Session, actual: session_pb2.Session) -> str:
    diff = difflib.unified_diff(
        text_format.MessageToString(expected).splitlines(),
        text_format.MessageToString(actual).splitlines(),
        "model",
        "server",
        lineterm="",
        n=6,
    )
    return "\n".join(diff)


async def test_server_matches_the_reference_model(recorder: RunningRecorder) -> None:
    loop = asyncio.get_running_loop()
    stub: Stub = aio(recorder.stub())

    def call(coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=30)

    async def get(session_id: str) -> session_pb2.Session:
        request = api.GetSessionRequest(session_id=session_id)
        return (await stub.GetSession(request, timeout=DEADLINE)).session

    async def control(step: Control) -> None:
        if step.op == "flush":
            await stub.Flush(api.FlushRequest(session_id=step.session_id), timeout=DEADLINE)
        else:
            request = api.CheckpointRequest(session_id=step.session_id)
            await stub.Checkpoint(request, timeout=DEADLINE)

    @settings(
        max_examples=50,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        # No shrinking: every shrink step replays a whole run against the server, so
        # a failure would take minutes to report. The diff below says what differs
        # and the printed run (compact reprs) what led there.
        phases=[Phase.explicit, Phase.reuse, Phase.generate],
    )
    @given(run=runs())
    def check(run: tuple[str, list[Step]]) -> None:
        _prefix, steps = run
        model = Model()
        acked: dict[int, list[int]] = {}
        for index, step in enumerate(steps):
            if isinstance(step, Send):
                expected = model.apply(step.events)
                sent: list[Event | Envelope] = (
                    numbered(step.events, expected) if step.numbered else list(step.events)
                )
                assert call(append(stub, sent)) == expected, f"step {index}"
                acked[index] = expected
            elif isinstance(step, Resend):
                original = steps[step.of]
                assert isinstance(original, Send)
                again = [
                    e for e in numbered(original.events, acked[step.of]) if isinstance(e, tuple)
                ]
                if again:
                    assert call(append(stub, again)) == [s for s, _ in again], f"step {index}"
            else:
                call(control(step))
                getattr(model, step.op)(step.session_id)
        for session_id, expected_session in model.sessions.items():
            actual = normalized(call(get(session_id)))
            wanted = normalized(expected_session)
            assert actual == wanted, explain(wanted, actual)

    await asyncio.to_thread(check)
