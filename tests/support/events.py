"""Builders of realistic agent_recorder.v1 events, and ways to send them (not a test).

Every builder returns an `AgentEvent`; timestamps are seconds after a fixed epoch
(`ts(1.5)`), so expected values are easy to write down in assertions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import grpc
from agent_recorder.v1 import events_pb2, types_pb2
from agent_recorder.v1 import recorder_service_pb2 as api
from agent_recorder.v1 import recorder_service_pb2_grpc as api_grpc
from google.protobuf import struct_pb2
from google.protobuf.timestamp_pb2 import Timestamp

if TYPE_CHECKING:
    Stub = api_grpc.RecorderServiceAsyncStub

EPOCH = 1_700_000_000
USER = types_pb2.TURN_TRIGGER_USER
ASSISTANT = types_pb2.MESSAGE_ROLE_ASSISTANT

Event = events_pb2.AgentEvent
# (sequence or None, event): what the recording rules and Append take.
Envelope = tuple[int | None, Event]


def ts(offset: float = 0.0) -> Timestamp:
    """EPOCH + offset seconds (microsecond precision, as the store keeps)."""
    micros = round(offset * 1_000_000)
    return Timestamp(seconds=EPOCH + micros // 1_000_000, nanos=(micros % 1_000_000) * 1000)


def usage(input: int = 0, output: int = 0, **more: int) -> types_pb2.Usage:
    total = more.pop("total_tokens", input + output + sum(more.values()))
    return types_pb2.Usage(input=input, output=output, total_tokens=total, **more)


def struct(values: Mapping[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(values)
    return out


def value(data: Any) -> struct_pb2.Value:
    out = struct_pb2.Value()
    if isinstance(data, Mapping):
        out.struct_value.update(data)
    elif isinstance(data, list):
        out.list_value.extend(data)
    elif isinstance(data, str):
        out.string_value = data
    elif isinstance(data, bool):
        out.bool_value = data
    else:
        out.number_value = float(data)
    return out


def continuation(kind: str = "initial", tag: str = "") -> types_pb2.ContinuationKind:
    out = types_pb2.ContinuationKind()
    if kind in ("rerun", "branch"):
        getattr(out, kind).tag = tag
    else:
        getattr(out, kind).SetInParent()
    return out


def config(
    model: str = "claude-sonnet-4", provider: str = "anthropic", config_id: str | None = "main"
) -> types_pb2.LoopConfigSnapshot:
    out = types_pb2.LoopConfigSnapshot(
        model=model,
        provider=provider,
        api=types_pb2.API_PROTOCOL_ANTHROPIC_MESSAGES,
        context_window=200_000,
        thinking_level=types_pb2.THINKING_LEVEL_MEDIUM,
    )
    if config_id is not None:
        out.config_id = config_id
    return out


# -- messages -------------------------------------------------------------------------


def user(text: str, at: float = 0.0) -> types_pb2.AgentMessage:
    msg = types_pb2.AgentMessage(role=types_pb2.MESSAGE_ROLE_USER)
    msg.content.add().text.text = text
    msg.timestamp.CopyFrom(ts(at))
    return msg


def assistant(
    text: str = "",
    *,
    model: str = "claude-sonnet-4",
    provider: str = "anthropic",
    use: types_pb2.Usage | None = None,
    tool_calls: Sequence[tuple[str, str, Mapping[str, Any]]] = (),
    at: float = 0.0,
) -> types_pb2.AgentMessage:
    msg = types_pb2.AgentMessage(
        role=ASSISTANT,
        model=model,
        provider=provider,
        stop_reason=types_pb2.STOP_REASON_TOOL_USE if tool_calls else types_pb2.STOP_REASON_STOP,
    )
    if text:
        msg.content.add().text.text = text
    for call_id, name, args in tool_calls:
        block = msg.content.add().tool_call
        block.id, block.name = call_id, name
        block.arguments.CopyFrom(value(dict(args)))
    if use is not None:
        msg.usage.CopyFrom(use)
    msg.timestamp.CopyFrom(ts(at))
    return msg


def tool_result(call_id: str, name: str, text: str, at: float = 0.0) -> types_pb2.AgentMessage:
    msg = types_pb2.AgentMessage(
        role=types_pb2.MESSAGE_ROLE_TOOL_RESULT, tool_call_id=call_id, tool_name=name
    )
    msg.content.add().text.text = text
    msg.timestamp.CopyFrom(ts(at))
    return msg


def texts(message: types_pb2.AgentMessage) -> list[str]:
    """The text blocks of a message, in order."""
    return [block.text.text for block in message.content if block.HasField("text")]


# -- events ---------------------------------------------------------------------------


def agent_start(
    session: str,
    loop: str,
    parent: str | None = None,
    *,
    agent: str = "agent-a",
    kind: types_pb2.ContinuationKind | None = None,
    config: types_pb2.LoopConfigSnapshot | None = None,
    metadata: Mapping[str, Any] | None = None,
    at: float = 0.0,
) -> Event:
    start = events_pb2.AgentStart(agent_id=agent, session_id=session, loop_id=loop)
    if parent is not None:
        start.parent_loop_id = parent
    start.continuation_kind.CopyFrom(kind if kind is not None else continuation())
    start.timestamp.CopyFrom(ts(at))
    if config is not None:
        start.config_snapshot.CopyFrom(config)
    if metadata is not None:
        start.metadata.CopyFrom(value(dict(metadata)))
    return Event(agent_start=start)


def agent_end(
    loop: str,
    messages: Iterable[types_pb2.AgentMessage] = (),
    *,
    use: types_pb2.Usage | None = None,
    rejection: str | None = None,
    at: float = 0.0,
) -> Event:
    end = events_pb2.AgentEnd(loop_id=loop, messages=list(messages))
    end.usage.CopyFrom(use if use is not None else usage())
    end.timestamp.CopyFrom(ts(at))
    if rejection is not None:
        end.rejection = rejection
    return Event(agent_end=end)


def turn_start(loop: str, index: int = 0, *, trigger: int = USER, at: float = 0.0) -> Event:
    start = events_pb2.TurnStart(loop_id=loop, turn_index=index, triggered_by=trigger)  # type: ignore[arg-type]
    start.timestamp.CopyFrom(ts(at))
    return Event(turn_start=start)


def turn_request(loop: str, index: int, payload: Mapping[str, Any], at: float = 0.0) -> Event:
    request = events_pb2.TurnRequest(loop_id=loop, turn_index=index, payload=struct(payload))
    request.timestamp.CopyFrom(ts(at))
    return Event(turn_request=request)


def turn_end(
    loop: str,
    message: types_pb2.AgentMessage,
    *,
    use: types_pb2.Usage | None = None,
    tool_results: Iterable[types_pb2.AgentMessage] = (),
    at: float = 0.0,
) -> Event:
    end = events_pb2.TurnEnd(loop_id=loop, message=message, tool_results=list(tool_results))
    end.usage.CopyFrom(use if use is not None else usage())
    end.timestamp.CopyFrom(ts(at))
    return Event(turn_end=end)


def message_start(loop: str, message: types_pb2.AgentMessage) -> Event:
    return Event(message_start=events_pb2.MessageStart(loop_id=loop, message=message))


def message_update(loop: str, message: types_pb2.AgentMessage, text: str) -> Event:
    update = events_pb2.MessageUpdate(loop_id=loop, message=message)
    update.delta.text = text
    return Event(message_update=update)


def message_end(loop: str, message: types_pb2.AgentMessage) -> Event:
    return Event(message_end=events_pb2.MessageEnd(loop_id=loop, message=message))


def tool_start(loop: str, call_id: str, name: str, args: Mapping[str, Any] | None = None) -> Event:
    start = events_pb2.ToolExecutionStart(loop_id=loop, tool_call_id=call_id, tool_name=name)
    start.args.CopyFrom(value(dict(args or {})))
    return Event(tool_execution_start=start)


def tool_end(
    loop: str,
    call_id: str,
    name: str,
    *,
    text: str = "done",
    child_loop_id: str | None = None,
    on_event: bool = False,
    is_error: bool = False,
) -> Event:
    """A finished tool call; `child_loop_id` goes on the result, or the event if `on_event`."""
    end = events_pb2.ToolExecutionEnd(
        loop_id=loop, tool_call_id=call_id, tool_name=name, is_error=is_error
    )
    end.result.content.add().text.text = text
    if child_loop_id is not None:
        if on_event:
            end.child_loop_id = child_loop_id
        else:
            end.result.child_loop_id = child_loop_id
    return Event(tool_execution_end=end)


def progress(loop: str, call_id: str, name: str, text: str) -> Event:
    return Event(
        progress_message=events_pb2.ProgressMessage(
            loop_id=loop, tool_call_id=call_id, tool_name=name, text=text
        )
    )


def input_rejected(loop: str, reason: str) -> Event:
    return Event(input_rejected=events_pb2.InputRejected(loop_id=loop, reason=reason))


def compaction_started(loop: str, tokens: int, count: int, at: float = 0.0) -> Event:
    started = events_pb2.CompactionStarted(
        loop_id=loop, estimated_tokens=tokens, message_count=count
    )
    started.timestamp.CopyFrom(ts(at))
    return Event(compaction_started=started)


def parallel_start(session: str, loop_ids: Sequence[str], at: float = 0.0) -> Event:
    start = events_pb2.ParallelLoopStart(session_id=session, loop_ids=list(loop_ids))
    start.timestamp.CopyFrom(ts(at))
    return Event(parallel_loop_start=start)


def parallel_end(
    session: str,
    selected: str,
    index: int,
    *,
    use: types_pb2.Usage | None = None,
    at: float = 0.0,
) -> Event:
    end = events_pb2.ParallelLoopEnd(
        session_id=session, selected_loop_id=selected, selected_config_index=index
    )
    end.evaluation_usage.CopyFrom(use if use is not None else usage())
    end.timestamp.CopyFrom(ts(at))
    return Event(parallel_loop_end=end)


# -- sending --------------------------------------------------------------------------


def envelopes(
    events: Iterable[Event | Envelope],
) -> list[api.EventEnvelope]:
    """Wire envelopes: a bare event is unnumbered, a (sequence, event) pair numbered."""
    out = []
    for item in events:
        sequence, event = item if isinstance(item, tuple) else (None, item)
        envelope = api.EventEnvelope(event=event)
        if sequence is not None:
            envelope.sequence = sequence
        out.append(envelope)
    return out


def aio(stub: api_grpc.RecorderServiceStub) -> Stub:
    """The fixture's stub is built on an aio channel: type it as the async stub it is."""
    return cast("Stub", stub)


async def append(
    stub: Stub,
    events: Iterable[Event | Envelope],
    writer_id: str = "test-writer",
    deadline: float = 10.0,
) -> list[int]:
    """One Append that must store every event; returns the sequence of each event."""
    response = await append_response(stub, events, writer_id, deadline)
    assert not response.refusals, list(response.refusals)
    return list(response.sequences)


async def append_response(
    stub: Stub,
    events: Iterable[Event | Envelope],
    writer_id: str = "test-writer",
    deadline: float = 10.0,
) -> api.AppendResponse:
    """One Append, answered with its refusals if any."""
    request = api.AppendRequest(writer_id=writer_id, events=envelopes(events))
    response: api.AppendResponse = await stub.Append(request, timeout=deadline)
    return response


class RecordStream:
    """One Record stream of one writer: `await stream.send([...])` → its RecordResponse."""

    def __init__(self, stub: Stub, writer_id: str, deadline: float = 10.0) -> None:
        self.writer_id = writer_id
        self.call = stub.Record(None, timeout=deadline)
        self._next_batch = 1
        self.ready: api.RecordReady | None = None

    async def hello(self) -> api.RecordReady:
        """Name the writer; the server answers with what it records."""
        if self.ready is None:
            hello = api.RecordRequest(hello=api.RecordHello(writer_id=self.writer_id))
            await self.call.write(hello)
            response = await self.call.read()
            assert isinstance(response, api.RecordResponse), response
            assert response.HasField("ready"), response
            self.ready = response.ready
        return self.ready

    async def send(self, events: Iterable[Event | Envelope]) -> api.RecordResponse:
        await self.hello()
        batch_id, self._next_batch = self._next_batch, self._next_batch + 1
        batch = api.EventBatch(batch_id=batch_id, events=envelopes(events))
        await self.call.write(api.RecordRequest(batch=batch))
        response = await self.call.read()
        assert isinstance(response, api.RecordResponse), response
        assert response.batch_id == batch_id
        return response

    async def close(self) -> grpc.StatusCode:
        """Half-close and wait until the server has ended the stream (its leases go)."""
        await self.call.done_writing()
        rest = await self.call.read()
        assert rest is grpc.aio.EOF, rest  # type: ignore[attr-defined]
        return await self.call.code()
