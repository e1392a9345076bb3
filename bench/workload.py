"""A deterministic stream of AgentEvents shaped like a real agent loop.

Throughput depends on what is sent, so the mix follows what a coding agent of the
seed runtime emits per loop: AgentStart with config and metadata; per turn
TurnStart, TurnRequest, the assistant message (MessageStart/MessageEnd, sometimes
with thinking), its tool calls (ToolExecutionStart with arguments, sometimes
progress, ToolExecutionEnd with the output, the tool-result message) and TurnEnd
with usage and the turn's tool results; an occasional compaction; AgentEnd with
every message of the loop. Message texts are log-uniform between 200 B and 8 KB.
Some tool calls run a sub-agent, whose loop is nested in the parent's stream.

Everything comes from one `random.Random(seed)`, so two runs with the same seed
send byte-identical events; the ceilings in bench/ceilings.py use that to measure
the very events the sidecar stored.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

from agent_recorder.v1 import events_pb2, types_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from recorder_client.queries import sum_usage

Event = events_pb2.AgentEvent
# 2026-01-01T00:00:00Z: sessions start here plus a per-seed offset.
EPOCH_US = 1_767_225_600_000_000
MIN_TEXT, MAX_TEXT = 200, 8192
TOOLS = ("read_file", "bash", "edit_file", "grep", "list_dir")
_WORDS = (
    *("the", "agent", "reads", "file", "function", "returns", "value", "error", "test"),
    *("passes", "import", "module", "class", "self", "config", "session", "loop", "turn"),
    *("event", "usage", "token", "model", "tool", "result", "path", "update", "fix"),
    *("refactor", "async", "await", "query", "index", "commit", "stream", "batch"),
)


@dataclass
class Mix:
    """Proportions of the loop; the defaults are those of an interactive coding agent."""

    turns: tuple[int, int] = (2, 10)
    # Probability of 0, 1, 2 and 3 tool calls in a turn that is not the last.
    tool_calls: tuple[float, ...] = (0.15, 0.6, 0.18, 0.07)
    thinking: float = 0.3
    progress: float = 0.3
    compaction: float = 0.02
    # Share of tool calls that run a sub-agent in a session of its own.
    sub_agent: float = 0.03
    loops_per_session: tuple[int, int] = (1, 4)


@dataclass
class _Loop:
    """The loop being built: its id, clock, messages and usage so far."""

    loop_id: str
    # The loop's own events, then nested sub-agents' events where their tool ran.
    events: list[Event] = field(default_factory=list)
    own: int = 0
    messages: list[types_pb2.AgentMessage] = field(default_factory=list)
    usage: types_pb2.Usage = field(default_factory=types_pb2.Usage)


class Workload:
    """Builds loops and sessions; all randomness from one seeded generator."""

    def __init__(self, seed: int, mix: Mix | None = None, agent_id: str = "bench-agent") -> None:
        self.mix = mix or Mix()
        self.agent_id = agent_id
        self._rng = random.Random(seed)
        self._now_us = EPOCH_US + seed * 86_400_000_000
        self._corpus = " ".join(self._rng.choices(_WORDS, k=60_000))
        self._tool_calls = 0

    # -- public builders ----------------------------------------------------------

    def session_id(self) -> str:
        return f"{self._rng.getrandbits(128):032x}"

    def stream(self, total: int) -> list[Event]:
        """Whole sessions of the realistic mix until at least `total` events."""
        events: list[Event] = []
        while len(events) < total:
            sid = self.session_id()
            for number in range(self._rng.randint(*self.mix.loops_per_session)):
                kind = "initial" if number == 0 else "default"
                events += self.loop(sid, number, continuation=kind)
        return events

    def loop(
        self,
        session_id: str,
        number: int,
        *,
        parent_loop_id: str | None = None,
        continuation: str = "initial",
        exact: int | None = None,
        children: int = 0,
    ) -> list[Event]:
        """One loop's events, its sub-agents' loops nested where their tool ran.

        `exact` fixes the loop's own event count (sub-agents' events not counted;
        no compaction and no random sub-agents then), padding with progress
        messages; `children` loops run as sub-agents in the same session, one per
        tool call, each also `exact` events long.
        """
        loop = _Loop(f"{session_id}.main.{number}")
        event = Event()
        start = event.agent_start
        start.agent_id, start.session_id, start.loop_id = self.agent_id, session_id, loop.loop_id
        if parent_loop_id is not None:
            start.parent_loop_id = parent_loop_id
        getattr(start.continuation_kind, continuation).SetInParent()
        self._stamp(start.timestamp)
        start.metadata.struct_value.update({"cwd": "/home/dev/repo", "git_branch": "main"})
        config = start.config_snapshot
        config.model, config.provider, config.config_id = "claude-sonnet-4", "anthropic", "main"
        config.api = types_pb2.API_PROTOCOL_ANTHROPIC_MESSAGES
        config.max_tokens, config.context_window = 8192, 200_000
        loop.events.append(event)
        loop.own += 1
        turns = self._rng.randint(*self.mix.turns)
        spawned = [f"{session_id}.main.{(number + 1) * 1000 + c}" for c in range(children)]
        turn = 0
        while True:
            last = self._last_turn(loop, turn, turns, exact, bool(spawned))
            self._turn(loop, turn, last, spawned, exact)
            turn += 1
            if last:
                break
        while exact is not None and loop.own < exact - 1:
            self._progress(loop, "status", "checkpoint")
        event = Event()
        end = event.agent_end
        end.loop_id = loop.loop_id
        end.messages.extend(loop.messages)
        end.usage.CopyFrom(loop.usage)
        self._stamp(end.timestamp)
        loop.events.append(event)
        return loop.events

    # -- the loop's parts ------------------------------------------------------------

    def _last_turn(
        self, loop: _Loop, turn: int, turns: int, exact: int | None, spawning: bool
    ) -> bool:
        if exact is None:
            return turn + 1 >= turns and not spawning
        # Close now unless a turn with a tool call (at most 10 events, 12 with the
        # user's message), a closing turn (5) and AgentEnd still fit. A loop that
        # still has sub-agents to run keeps calling tools and may end up longer.
        tool_turn = 10 + (2 if turn == 0 else 0)
        return not spawning and loop.own + tool_turn + 5 + 1 > exact

    def _turn(
        self, loop: _Loop, turn: int, last: bool, spawned: list[str], exact: int | None
    ) -> None:
        start = self._append(loop).turn_start
        start.loop_id, start.turn_index = loop.loop_id, turn
        start.triggered_by = (
            types_pb2.TURN_TRIGGER_USER if turn == 0 else types_pb2.TURN_TRIGGER_CONTINUATION
        )
        self._stamp(start.timestamp)
        if turn == 0:
            self._message_pair(loop, self._user_message())
        request = self._append(loop).turn_request
        request.loop_id, request.turn_index = loop.loop_id, turn
        request.payload.update(
            {"model": "claude-sonnet-4", "max_tokens": 8192, "messages": len(loop.messages)}
        )
        self._stamp(request.timestamp)
        if exact is None and self._rng.random() < self.mix.compaction:
            self._compaction(loop)
        calls = 0 if last else max(1 if spawned else 0, self._tool_call_count(exact))
        assistant = self._assistant_message(calls)
        self._message_pair(loop, assistant)
        results = [
            self._tool_call(loop, block.tool_call, spawned, exact)
            for block in assistant.content
            if block.HasField("tool_call")
        ]
        end = self._append(loop).turn_end
        end.loop_id = loop.loop_id
        end.message.CopyFrom(assistant)
        end.usage.CopyFrom(assistant.usage)
        end.tool_results.extend(results)
        self._stamp(end.timestamp)
        loop.usage.CopyFrom(sum_usage([loop.usage, assistant.usage]))

    def _tool_call_count(self, exact: int | None) -> int:
        if exact is not None:
            return 1
        return self._rng.choices(range(len(self.mix.tool_calls)), self.mix.tool_calls)[0]

    def _tool_call(
        self,
        loop: _Loop,
        call: types_pb2.ToolCallContent,
        spawned: list[str],
        exact: int | None,
    ) -> types_pb2.AgentMessage:
        start = self._append(loop).tool_execution_start
        start.loop_id, start.tool_call_id, start.tool_name = loop.loop_id, call.id, call.name
        start.args.CopyFrom(call.arguments)
        if self._rng.random() < self.mix.progress:
            self._progress(loop, call.id, call.name)
        child: str | None = None
        if spawned:
            child = spawned.pop(0)
            session_id = loop.loop_id.split(".", 1)[0]
            number = int(child.rsplit(".", 1)[1])
            loop.events += self.loop(session_id, number, parent_loop_id=loop.loop_id, exact=exact)
        elif exact is None and self._rng.random() < self.mix.sub_agent:
            session_id = self.session_id()
            child = f"{session_id}.main.0"
            loop.events += self.loop(session_id, 0, parent_loop_id=loop.loop_id)
        end = self._append(loop).tool_execution_end
        end.loop_id, end.tool_call_id, end.tool_name = loop.loop_id, call.id, call.name
        end.result.content.add().text.text = self._text()
        end.result.details.struct_value.update({"exit_code": 0, "truncated": False})
        if child is not None:
            end.result.child_loop_id = child
        result = types_pb2.AgentMessage(
            role=types_pb2.MESSAGE_ROLE_TOOL_RESULT, tool_call_id=call.id, tool_name=call.name
        )
        result.content.extend(end.result.content)
        self._stamp(result.timestamp)
        self._message_pair(loop, result)
        return result

    def _progress(self, loop: _Loop, tool_call_id: str, tool_name: str) -> None:
        progress = self._append(loop).progress_message
        progress.loop_id, progress.tool_call_id, progress.tool_name = (
            loop.loop_id,
            tool_call_id,
            tool_name,
        )
        progress.text = self._text(60, 200)

    def _compaction(self, loop: _Loop) -> None:
        started = self._append(loop).compaction_started
        started.loop_id, started.estimated_tokens = loop.loop_id, 150_000
        started.message_count = len(loop.messages)
        self._stamp(started.timestamp)
        ended = self._append(loop).compaction_ended
        ended.loop_id, ended.messages_before = loop.loop_id, len(loop.messages)
        ended.messages_after, ended.estimated_tokens_before = 4, 150_000
        ended.estimated_tokens_after, ended.loops_compacted = 20_000, 1
        self._stamp(ended.timestamp)

    def _message_pair(self, loop: _Loop, message: types_pb2.AgentMessage) -> None:
        """MessageStart (the message without content yet) and MessageEnd (all of it)."""
        start = self._append(loop).message_start
        start.loop_id = loop.loop_id
        start.message.CopyFrom(message)
        del start.message.content[:]
        end = self._append(loop).message_end
        end.loop_id = loop.loop_id
        end.message.CopyFrom(message)
        loop.messages.append(message)

    # -- messages ----------------------------------------------------------------

    def _user_message(self) -> types_pb2.AgentMessage:
        message = types_pb2.AgentMessage(role=types_pb2.MESSAGE_ROLE_USER)
        message.content.add().text.text = self._text()
        self._stamp(message.timestamp)
        return message

    def _assistant_message(self, tool_calls: int) -> types_pb2.AgentMessage:
        stop = types_pb2.STOP_REASON_TOOL_USE if tool_calls else types_pb2.STOP_REASON_STOP
        message = types_pb2.AgentMessage(
            role=types_pb2.MESSAGE_ROLE_ASSISTANT,
            model="claude-sonnet-4",
            provider="anthropic",
            stop_reason=stop,
        )
        if self._rng.random() < self.mix.thinking:
            thinking = message.content.add().thinking
            thinking.thinking = self._text()
            thinking.signature = f"sig-{self._rng.getrandbits(64):016x}"
        message.content.add().text.text = self._text()
        for _ in range(tool_calls):
            call = message.content.add().tool_call
            self._tool_calls += 1
            call.id = f"toolu_{self._tool_calls:012d}"
            call.name = self._rng.choice(TOOLS)
            call.arguments.struct_value.update(self._arguments(call.name))
        usage = message.usage
        usage.input = self._rng.randint(2_000, 60_000)
        usage.output = self._rng.randint(50, 2_000)
        usage.cache_read = usage.input // 2
        usage.total_tokens = usage.input + usage.output
        self._stamp(message.timestamp)
        return message

    def _arguments(self, tool: str) -> dict[str, str | int]:
        path = f"src/pkg/module_{self._rng.randrange(200)}.py"
        if tool == "bash":
            return {"command": f"pytest -q tests/test_{self._rng.randrange(50)}.py", "timeout": 120}
        if tool == "edit_file":
            return {"path": path, "old": self._text(60, 600), "new": self._text(60, 600)}
        if tool == "grep":
            return {"pattern": self._rng.choice(_WORDS), "path": "src/"}
        return {"path": path}

    def _text(self, low: int = MIN_TEXT, high: int = MAX_TEXT) -> str:
        """A log-uniform length in [low, high] cut from the corpus."""
        size = int(math.exp(self._rng.uniform(math.log(low), math.log(high))))
        offset = self._rng.randrange(len(self._corpus) - size)
        return self._corpus[offset : offset + size]

    # -- helpers -------------------------------------------------------------------

    @staticmethod
    def _append(loop: _Loop) -> Event:
        """A new event at the end of the loop, filled in by the caller."""
        event = Event()
        loop.events.append(event)
        loop.own += 1
        return event

    def _stamp(self, ts: Timestamp) -> None:
        """The workload's clock: a few milliseconds to a few seconds per event."""
        self._now_us += self._rng.randint(2_000, 2_000_000)
        ts.seconds, ts.nanos = divmod(self._now_us, 1_000_000)
        ts.nanos *= 1000


def mix_stream(seed: int, total: int) -> list[Event]:
    """Whole sessions of the realistic mix, at least `total` events."""
    return Workload(seed).stream(total)


def one_big_session(seed: int, roots: int, children: int, events_per_loop: int) -> Iterator[Event]:
    """One session of roots x (1 + children) loops, each exactly events_per_loop long."""
    workload = Workload(seed)
    sid = workload.session_id()
    for root in range(roots):
        yield from workload.loop(sid, root, exact=events_per_loop, children=children)


def many_sessions(seed: int, sessions: int, events_per_loop: int) -> Iterator[Event]:
    """Sessions of one loop each, every loop exactly events_per_loop long."""
    workload = Workload(seed)
    for _ in range(sessions):
        yield from workload.loop(workload.session_id(), 0, exact=events_per_loop)
