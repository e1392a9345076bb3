"""Recording one agent loop as a `with` block.

The block emits AgentStart on entry and AgentEnd on exit, so a loop can never be
left open by an early return or an exception: when the body raises, AgentEnd
carries the exception as the loop's rejection (the loop is stored REJECTED) and
the exception propagates unchanged. The yielded `LoopRun` passes the body's
events on and collects what AgentEnd reports (messages, usage); the event
constructors are in `recorder_client.events`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Protocol

from agent_recorder.v1 import events_pb2, types_pb2
from google.protobuf.struct_pb2 import Value
from google.protobuf.timestamp_pb2 import Timestamp

from recorder_client.delivery import EventSender
from recorder_client.queries import sum_usage


class EventSink(Protocol):
    """Anything that takes events: an EventSender or a SyncRecorder."""

    def emit(self, event: events_pb2.AgentEvent) -> None: ...


def _now() -> Timestamp:
    timestamp = Timestamp()
    timestamp.GetCurrentTime()
    return timestamp


class LoopRun:
    """The open loop inside a `loop(...)` / `sync_loop(...)` block."""

    def __init__(self, sink: EventSink, *, session_id: str, agent_id: str, loop_id: str) -> None:
        self._sink = sink
        self.session_id = session_id
        self.agent_id = agent_id
        self.loop_id = loop_id
        self.messages: list[types_pb2.AgentMessage] = []
        self.usage = types_pb2.Usage()

    def emit(self, event: events_pb2.AgentEvent) -> None:
        self._sink.emit(event)

    def set_messages(self, messages: Iterable[types_pb2.AgentMessage]) -> None:
        """The loop's authoritative message list, reported by AgentEnd."""
        self.messages = list(messages)

    def add_usage(self, usage: types_pb2.Usage) -> None:
        self.usage = sum_usage((self.usage, usage))

    def _start_event(
        self,
        parent_loop_id: str | None,
        continuation_kind: types_pb2.ContinuationKind | None,
        config: types_pb2.LoopConfigSnapshot | None,
        metadata: Mapping[str, Any] | None,
    ) -> events_pb2.AgentEvent:
        start = events_pb2.AgentStart(
            agent_id=self.agent_id,
            session_id=self.session_id,
            loop_id=self.loop_id,
            parent_loop_id=parent_loop_id,
            continuation_kind=continuation_kind,
            config_snapshot=config,
            timestamp=_now(),
        )
        if metadata is not None:
            start.metadata.CopyFrom(_json_value(metadata))
        return events_pb2.AgentEvent(agent_start=start)

    def _end_event(self, error: BaseException | None) -> events_pb2.AgentEvent:
        end = events_pb2.AgentEnd(
            loop_id=self.loop_id, messages=self.messages, usage=self.usage, timestamp=_now()
        )
        if error is not None:
            end.rejection = describe_exception(error)
        return events_pb2.AgentEvent(agent_end=end)


def describe_exception(error: BaseException) -> str:
    """`module.Type: message` (builtins unqualified), as a loop's rejection reads."""
    kind = type(error)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    text = str(error)
    return f"{name}: {text}" if text else name


@asynccontextmanager
async def loop(
    sender: EventSender,
    *,
    session_id: str,
    agent_id: str,
    loop_id: str,
    parent_loop_id: str | None = None,
    continuation_kind: types_pb2.ContinuationKind | None = None,
    config: types_pb2.LoopConfigSnapshot | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> AsyncIterator[LoopRun]:
    """Record the block as one loop; AgentStart/AgentEnd wait for room per the sender's policy."""
    run = LoopRun(sender, session_id=session_id, agent_id=agent_id, loop_id=loop_id)
    await sender.emit_wait(run._start_event(parent_loop_id, continuation_kind, config, metadata))
    try:
        yield run
    except BaseException as error:
        await sender.emit_wait(run._end_event(error))
        raise
    await sender.emit_wait(run._end_event(None))


@contextmanager
def sync_loop(
    sink: EventSink,
    *,
    session_id: str,
    agent_id: str,
    loop_id: str,
    parent_loop_id: str | None = None,
    continuation_kind: types_pb2.ContinuationKind | None = None,
    config: types_pb2.LoopConfigSnapshot | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Iterator[LoopRun]:
    """Record the block as one loop, for a SyncRecorder (or any EventSink)."""
    run = LoopRun(sink, session_id=session_id, agent_id=agent_id, loop_id=loop_id)
    sink.emit(run._start_event(parent_loop_id, continuation_kind, config, metadata))
    try:
        yield run
    except BaseException as error:
        sink.emit(run._end_event(error))
        raise
    sink.emit(run._end_event(None))


def _json_value(data: Mapping[str, Any]) -> Value:
    value = Value()
    value.struct_value.update(data)
    return value
