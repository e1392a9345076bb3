"""OpenTelemetry out: every finished loop, its turns and tool executions as OTLP spans.

Spans follow the GenAI semantic conventions (DESIGN.md, "OpenTelemetry out"):
a loop is `invoke_agent {agent}`, a turn is `chat {model}` under it, a tool
execution is `execute_tool {tool}` under the turn it ran in (or under the loop
when it ran outside any recorded turn), and a sub-agent's loop sits under the
`execute_tool` span that spawned it, so a multi-agent run is one trace.

Recording must never wait for a collector. The writer's listener only puts the
ids of ended loops on a queue; a background task reads each loop back from the
store (the store, not the in-memory rules state, is what survives and what a
reader sees), turns it into spans with the recorded start and end times, and
hands them to a BatchSpanProcessor, whose own thread talks to the collector and
drops spans rather than grow without bound when the collector is slow.

Ids are derived, not random: the trace id hashes the root session id (followed
up the sessions' spawn refs), a loop's span id hashes its loop id, a turn's the
loop id and the turn's position, a tool execution's the loop id and tool call id.
So a span exported later still names the right parent: a sub-agent loop that
ends before its parent computes the very span id the parent's `execute_tool`
span will get.

Timing of tool executions: the runtime's tool events carry no timestamp, so a
tool span covers what the recorded clock allows: from the last timestamp recorded
in the loop before ToolExecutionStart (the assistant message that asked for the
tool, the turn start, ...) to the first one recorded after ToolExecutionEnd (the
tool result message, the turn end, or the loop end). It is an upper bound of the
tool's real duration, never outside its turn.

Some loops wait (in memory) before they are exported, because what their span
says is recorded after they end: a branch of a parallel evaluation waits for
ParallelLoopEnd (the outcome travels as agent_recorder.parallel.*), and a
sub-agent loop whose spawning tool call is not known yet waits for its parent
loop to end. At shutdown, whatever still waits is exported as it stands (a
sub-agent then under its parent loop's span).

Limits, by design: loops that ended before the server started (or while the
queue was full) are not exported, and neither is what waited across a restart;
a sub-agent linked only by the parent's ToolExecutionEnd (its AgentStart names
no parent_loop_id) and ending before that event is exported as a trace of its
own.
Standard OTEL_EXPORTER_OTLP_* (headers, timeout, certificates) and OTEL_BSP_*
(batching) environment variables apply.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from agent_recorder.v1 import recorder_service_pb2 as api
from agent_recorder.v1 import session_pb2, types_pb2
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from recorder_server.errors import NotFound
from recorder_server.otlp.mapping import continuation_unknown
from recorder_server.reads import Reads
from recorder_server.recording import OPEN_STATUSES, ChangeSet
from recorder_server.vocabulary import TIMESTAMPED, WITH_MESSAGE

log = logging.getLogger(__name__)

Attributes = dict[str, AttributeValue]

SCOPE: Final = "agent_recorder"
_MAX_SPAWN_DEPTH: Final = 64
_STATUS_NAMES: Final = {
    value: name.removeprefix("LOOP_STATUS_").lower()
    for name, value in session_pb2.LoopStatus.items()
}


def derived_id(bits: int, *parts: str) -> int:
    """Stable across restarts and export order, so a span exported later still finds its
    parent; never the all-zero id OTLP reads as "none"."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=bits // 8).digest()
    return int.from_bytes(digest, "big") or 1


def trace_id_of(root_session_id: str) -> int:
    return derived_id(128, "trace", root_session_id)


def loop_span_id(loop_id: str) -> int:
    return derived_id(64, "loop", loop_id)


def turn_span_id(loop_id: str, position: int) -> int:
    return derived_id(64, "turn", loop_id, str(position))


def tool_span_id(loop_id: str, tool_call_id: str) -> int:
    return derived_id(64, "tool", loop_id, tool_call_id)


def _ns(ts: Timestamp) -> int | None:
    value = ts.seconds * 1_000_000_000 + ts.nanos
    return value or None


def _otlp_target(endpoint: str) -> tuple[str, bool]:
    """(endpoint, insecure): a collector next to the sidecar speaks plaintext unless https."""
    if "://" not in endpoint:
        return endpoint, True
    return endpoint, not endpoint.startswith("https://")


class _ChosenIds(IdGenerator):
    """Gives the SDK the derived ids; set right before each span starts.

    Safe because spans are only started by the exporter's one task, with no
    await between choosing the ids and starting the span.
    """

    def __init__(self) -> None:
        self.trace_id = trace.INVALID_TRACE_ID
        self.span_id = trace.INVALID_SPAN_ID

    def generate_span_id(self) -> int:
        return self.span_id

    def generate_trace_id(self) -> int:
        return self.trace_id


@dataclass
class _ToolCall:
    call_id: str
    name: str
    start_ns: int
    end_ns: int | None = None
    ended: bool = False
    is_error: bool = False
    turn_position: int | None = None


@dataclass(frozen=True)
class _LoopEnded:
    loop_id: str


@dataclass(frozen=True)
class _GroupChanged:
    loop_ids: tuple[str, ...]
    ended: bool


@dataclass(frozen=True)
class _Placement:
    """Where a loop's span goes: its trace and parent span, or the loop to wait for."""

    trace_id: int
    parent_span_id: int | None
    wait_for: str | None = None


def _event_time(kind: str, body: Message) -> int | None:
    if kind in TIMESTAMPED and body.HasField("timestamp"):
        return _ns(getattr(body, "timestamp"))  # noqa: B009 - fields vary by event kind
    if kind in WITH_MESSAGE:
        message: types_pb2.AgentMessage = getattr(body, "message")  # noqa: B009
        if message.HasField("timestamp"):
            return _ns(message.timestamp)
    return None


def _tool_calls(loop: session_pb2.LoopRecord) -> list[_ToolCall]:
    """The loop's tool executions with bounding times and the turn each ran in."""
    turn_positions = {
        (turn.turn_id.turn_index, _ns(turn.ended_at)): position
        for position, turn in enumerate(loop.turns)
    }
    last = _ns(loop.started_at) or 0
    calls: list[_ToolCall] = []
    running: dict[str, _ToolCall] = {}
    awaiting_end: list[_ToolCall] = []
    partial: int | None = None
    in_partial: list[_ToolCall] = []
    for loop_event in loop.events:
        event = loop_event.event
        kind = event.WhichOneof("event")
        if kind is None:
            continue
        body: Message = getattr(event, kind)
        at = _event_time(kind, body)
        if at is not None:
            for call in awaiting_end:
                call.end_ns = max(at, call.start_ns)
            awaiting_end.clear()
            last = max(last, at)
        if kind == "turn_start":
            partial, in_partial = event.turn_start.turn_index, []
        elif kind in ("turn_end", "agent_end"):
            position = None
            if kind == "turn_end" and partial is not None:
                position = turn_positions.get((partial, at))
            for call in in_partial:
                call.turn_position = position
            partial, in_partial = None, []
        elif kind == "tool_execution_start":
            start = event.tool_execution_start
            call = _ToolCall(start.tool_call_id, start.tool_name, last)
            calls.append(call)
            running[start.tool_call_id] = call
            if partial is not None:
                in_partial.append(call)
        elif kind == "tool_execution_end":
            end = event.tool_execution_end
            found = running.pop(end.tool_call_id, None)
            if found is None:
                found = _ToolCall(end.tool_call_id, end.tool_name, last)
                calls.append(found)
                if partial is not None:
                    in_partial.append(found)
            found.ended, found.is_error = True, end.is_error
            awaiting_end.append(found)
    loop_end = _ns(loop.ended_at) or last
    for call in calls:
        if call.end_ns is None:
            call.end_ns = max(loop_end, call.start_ns)
    return calls


def _usage(usage: types_pb2.Usage) -> Attributes:
    return {
        "gen_ai.usage.input_tokens": usage.input,
        "gen_ai.usage.output_tokens": usage.output,
        "gen_ai.usage.cache_read.input_tokens": usage.cache_read,
        "gen_ai.usage.cache_creation.input_tokens": usage.cache_write,
        "gen_ai.usage.reasoning.output_tokens": usage.reasoning,
        "agent_recorder.usage.total_tokens": usage.total_tokens,
    }


def _cost(cost: types_pb2.Cost) -> Attributes:
    """What the span's model calls cost (recorder_server/cost.py); an exact decimal
    string, left out when nothing was priced (unpriced is never 0)."""
    return _present(
        {
            "agent_recorder.cost.amount": cost.amount,
            "agent_recorder.cost.currency": cost.currency,
            "agent_recorder.cost.priced": cost.priced,
            "agent_recorder.cost.source": cost.source,
            "agent_recorder.cost.unpriced_reason": cost.unpriced_reason,
        }
    )


def _present(attributes: Mapping[str, AttributeValue | None]) -> Attributes:
    """OTel rejects None and empty strings say nothing: both are left out."""
    return {k: v for k, v in attributes.items() if v is not None and v != ""}


def _loop_attributes(loop: session_pb2.LoopRecord) -> Attributes:
    config = loop.config
    kind: str | None = loop.continuation_kind.WhichOneof("kind") or "initial"
    if continuation_unknown(loop):
        kind = None  # an OTLP loop was never told: nothing is claimed
    tag = getattr(loop.continuation_kind, kind).tag if kind in ("rerun", "branch") else None
    attributes: dict[str, AttributeValue | None] = {
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.agent.id": loop.agent_id,
        "gen_ai.agent.name": loop.agent_id,
        "gen_ai.conversation.id": loop.session_id,
        "gen_ai.provider.name": config.provider,
        "gen_ai.request.model": config.model,
        "gen_ai.request.max_tokens": config.max_tokens if config.HasField("max_tokens") else None,
        "gen_ai.request.temperature": (
            config.temperature if config.HasField("temperature") else None
        ),
        "agent_recorder.loop_id": loop.loop_id,
        "agent_recorder.session_id": loop.session_id,
        "agent_recorder.parent_loop_id": (
            loop.parent_loop_id if loop.HasField("parent_loop_id") else None
        ),
        "agent_recorder.status": _STATUS_NAMES.get(loop.status, "unspecified"),
        "agent_recorder.rejection": loop.rejection if loop.HasField("rejection") else None,
        "agent_recorder.continuation_kind": kind,
        "agent_recorder.continuation_tag": tag,
        "agent_recorder.config_id": config.config_id if config.HasField("config_id") else None,
        "agent_recorder.turn_count": len(loop.turns),
        **_usage(loop.usage),
    }
    if loop.HasField("parallel_group"):
        group = loop.parallel_group
        attributes |= {
            "agent_recorder.parallel.loop_ids": list(group.all_loop_ids),
            "agent_recorder.parallel.selected_loop_id": group.selected_loop_id,
            "agent_recorder.parallel.selected_config_index": group.selected_config_index,
            "agent_recorder.parallel.is_selected": group.is_selected,
        }
    return _present(attributes)


def _turn_attributes(
    loop: session_pb2.LoopRecord, turn: session_pb2.Turn
) -> tuple[str, Attributes]:
    output = turn.output_message
    model = output.model or loop.config.model
    stop = output.stop_reason
    finish = types_pb2.StopReason.Name(stop).removeprefix("STOP_REASON_").lower() if stop else None
    attributes: dict[str, AttributeValue | None] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.agent.name": loop.agent_id,
        "gen_ai.conversation.id": loop.session_id,
        "gen_ai.provider.name": output.provider or loop.config.provider,
        "gen_ai.request.model": loop.config.model or model,
        "gen_ai.response.model": output.model,
        "gen_ai.response.finish_reasons": [finish] if finish else None,
        "agent_recorder.loop_id": loop.loop_id,
        "agent_recorder.turn_index": turn.turn_id.turn_index,
        "agent_recorder.turn_trigger": (
            types_pb2.TurnTrigger.Name(turn.triggered_by).removeprefix("TURN_TRIGGER_").lower()
            if turn.triggered_by
            else None
        ),
        "agent_recorder.tool_result_count": len(turn.tool_results),
        **_usage(turn.usage),
    }
    return (f"chat {model}" if model else "chat"), _present(attributes)


def _tool_attributes(
    loop: session_pb2.LoopRecord, call: _ToolCall, spawned: session_pb2.ChildLoopRef | None
) -> Attributes:
    return _present(
        {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.agent.name": loop.agent_id,
            "gen_ai.conversation.id": loop.session_id,
            "gen_ai.tool.name": call.name,
            "gen_ai.tool.call.id": call.call_id,
            "agent_recorder.loop_id": loop.loop_id,
            "agent_recorder.child_loop_id": spawned.child_loop_id if spawned else None,
            "agent_recorder.child_session_id": spawned.child_session_id if spawned else None,
        }
    )


class OtlpExporter:
    """Exports finished loops to an OTLP/gRPC collector without slowing recording."""

    def __init__(
        self,
        reads: Reads,
        endpoint: str,
        *,
        span_exporter: SpanExporter | None = None,
        max_pending: int = 100_000,
    ) -> None:
        if span_exporter is None:
            target, insecure = _otlp_target(endpoint)
            span_exporter = OTLPSpanExporter(endpoint=target, insecure=insecure)
        self.endpoint = endpoint
        self.dropped = 0
        self._reads = reads
        self._ids = _ChosenIds()
        self._provider = TracerProvider(
            resource=Resource.create({"service.name": "agent-recorder"}),
            id_generator=self._ids,
            sampler=ALWAYS_ON,
            shutdown_on_exit=False,
        )
        self._provider.add_span_processor(BatchSpanProcessor(span_exporter))
        self._tracer = self._provider.get_tracer(SCOPE)
        self._queue: asyncio.Queue[_LoopEnded | _GroupChanged | None] = asyncio.Queue(
            maxsize=max_pending
        )
        # Children whose spawning tool call is not known yet, by parent loop id.
        self._waiting: dict[str, list[str]] = {}
        # Branches of a parallel evaluation that has not ended, and those of them
        # that ended already: they learn the outcome (rule 8) only when it ends.
        self._in_open_group: set[str] = set()
        self._held: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    # -- lifecycle --------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="recorder-otlp-export")
        log.info("exporting finished loops as OTLP spans to %s", self.endpoint)

    async def stop(self) -> None:
        """Export what is queued, held or waiting (as it stands), then flush."""
        self._closed = True
        if self._task is not None:
            await self._queue.put(None)
            await self._task
            self._task = None
        held, self._held = sorted(self._held), set()
        for loop_id in held:
            await self._export_safely(loop_id, may_wait=False)
        waiting, self._waiting = self._waiting, {}
        for children in waiting.values():
            for loop_id in children:
                await self._export_safely(loop_id, may_wait=False)
        await asyncio.to_thread(self._provider.shutdown)

    def on_commit(self, changes: ChangeSet) -> None:
        """The Writer's listener: runs on the commit path, so it only enqueues ids."""
        if self._closed:
            return
        items: list[_LoopEnded | _GroupChanged] = [
            _GroupChanged(tuple(group.loop_ids), group.end is not None)
            for _, group in changes.groups.values()
        ]
        items.extend(_LoopEnded(loop_id) for loop_id in changes.ended_loops)
        for item in items:
            try:
                self._queue.put_nowait(item)
            except asyncio.QueueFull:
                self.dropped += 1
                if self.dropped % 1000 == 1:
                    log.warning("OTLP export is behind; %d updates not exported", self.dropped)

    # -- the worker -----------------------------------------------------------

    async def _run(self) -> None:
        while (item := await self._queue.get()) is not None:
            if isinstance(item, _GroupChanged):
                await self._group_changed(item)
            elif item.loop_id in self._in_open_group:
                self._held.add(item.loop_id)
            else:
                await self._export_safely(item.loop_id, may_wait=True)

    async def _group_changed(self, group: _GroupChanged) -> None:
        if not group.ended:
            self._in_open_group.update(group.loop_ids)
            return
        self._in_open_group.difference_update(group.loop_ids)
        for loop_id in group.loop_ids:
            if loop_id in self._held:
                self._held.discard(loop_id)
                await self._export_safely(loop_id, may_wait=True)

    async def _export_safely(self, loop_id: str, *, may_wait: bool) -> None:
        """Export is best effort: one loop that cannot be exported must not stop the rest."""
        try:
            await self._export(loop_id, may_wait)
        except NotFound:
            log.debug("loop %s was deleted before it could be exported", loop_id)
        except Exception:
            log.exception("exporting loop %s as OTLP spans failed", loop_id)

    async def _export(self, loop_id: str, may_wait: bool) -> None:
        loop = await self._reads.get_loop(loop_id, skip_events=False)
        placement = await self._place(loop, may_wait)
        if placement.wait_for is not None:
            log.debug("loop %s waits for %s to name the tool call", loop_id, placement.wait_for)
            self._waiting.setdefault(placement.wait_for, []).append(loop_id)
            return
        self._emit(loop, placement, await self._reads.loop_cost(loop_id))
        for child in self._waiting.pop(loop_id, []):
            await self._export_safely(child, may_wait=False)

    # -- where a loop goes ----------------------------------------------------

    async def _root_session(self, session_id: str) -> str:
        """Follow spawn refs up to the session that no tool call spawned."""
        seen = {session_id}
        current = session_id
        for _ in range(_MAX_SPAWN_DEPTH):
            head = await self._reads.session_head(current)
            if head is None or not head.HasField("parent_spawn_ref"):
                break
            parent = head.parent_spawn_ref.parent_session_id
            if not parent or parent in seen:
                break
            seen.add(parent)
            current = parent
        return current

    async def _get_loop_record(self, loop_id: str) -> session_pb2.LoopRecord | None:
        try:
            return await self._reads.get_loop(loop_id, skip_events=True)
        except NotFound:
            return None

    async def _place(self, loop: session_pb2.LoopRecord, may_wait: bool) -> _Placement:
        trace_id = trace_id_of(await self._root_session(loop.session_id))
        head = await self._reads.session_head(loop.session_id)
        spawn = head.parent_spawn_ref if head and head.HasField("parent_spawn_ref") else None
        parent_loop_id = loop.parent_loop_id if loop.HasField("parent_loop_id") else None
        if parent_loop_id is None and spawn is not None and spawn.parent_loop_id:
            # A loop of a spawned session that names no parent descends from the spawn.
            parent_loop_id = spawn.parent_loop_id
        if parent_loop_id is None:
            return _Placement(trace_id, None)
        parent = await self._get_loop_record(parent_loop_id)
        if parent is None or parent.session_id == loop.session_id:
            return _Placement(trace_id, loop_span_id(parent_loop_id))
        call_id = next(
            (r.tool_call_id for r in parent.child_loop_refs if r.child_loop_id == loop.loop_id),
            "",
        )
        if not call_id and spawn is not None and spawn.parent_loop_id == parent_loop_id:
            call_id = spawn.tool_call_id
        if call_id:
            return _Placement(trace_id, tool_span_id(parent_loop_id, call_id))
        if may_wait and parent.status in OPEN_STATUSES:
            return _Placement(trace_id, None, wait_for=parent_loop_id)
        return _Placement(trace_id, loop_span_id(parent_loop_id))

    # -- spans ----------------------------------------------------------------

    def _emit(
        self, loop: session_pb2.LoopRecord, placement: _Placement, cost: api.LoopCost
    ) -> None:
        trace_id = placement.trace_id
        loop_start = _ns(loop.started_at) or 0
        loop_end = max(_ns(loop.ended_at) or loop_start, loop_start)
        status = Status(StatusCode.UNSET)
        extra: Attributes = {}
        if loop.status == session_pb2.LOOP_STATUS_REJECTED:
            status = Status(StatusCode.ERROR, loop.rejection or "rejected")
            extra["error.type"] = "rejected"
        elif loop.status == session_pb2.LOOP_STATUS_ABORTED:
            status = Status(StatusCode.ERROR, "aborted: the loop never ended on its own")
            extra["error.type"] = "aborted"
        self._span(
            f"invoke_agent {loop.agent_id}",
            trace_id,
            loop_span_id(loop.loop_id),
            placement.parent_span_id,
            SpanKind.INTERNAL,
            loop_start,
            loop_end,
            _loop_attributes(loop) | _cost(cost.cost) | extra,
            status,
        )
        turn_costs = {c.turn_index: c.cost for c in cost.turns}
        for position, turn in enumerate(loop.turns):
            name, attributes = _turn_attributes(loop, turn)
            if (turn_cost := turn_costs.get(turn.turn_id.turn_index)) is not None:
                attributes |= _cost(turn_cost)
            start = _ns(turn.started_at) or loop_start
            turn_status = Status(StatusCode.UNSET)
            output = turn.output_message
            if output.stop_reason == types_pb2.STOP_REASON_ERROR or output.HasField(
                "error_message"
            ):
                turn_status = Status(StatusCode.ERROR, output.error_message or "model error")
                attributes["error.type"] = "model_error"
            self._span(
                name,
                trace_id,
                turn_span_id(loop.loop_id, position),
                loop_span_id(loop.loop_id),
                SpanKind.CLIENT,
                start,
                max(_ns(turn.ended_at) or start, start),
                attributes,
                turn_status,
            )
        spawned = {ref.tool_call_id: ref for ref in loop.child_loop_refs}
        for call in _tool_calls(loop):
            attributes = _tool_attributes(loop, call, spawned.get(call.call_id))
            tool_status = Status(StatusCode.UNSET)
            if not call.ended:
                tool_status = Status(StatusCode.ERROR, "the loop ended before the tool did")
                attributes["error.type"] = "unfinished"
            elif call.is_error:
                tool_status = Status(StatusCode.ERROR, "the tool reported an error")
                attributes["error.type"] = "tool_error"
            parent = (
                loop_span_id(loop.loop_id)
                if call.turn_position is None
                else turn_span_id(loop.loop_id, call.turn_position)
            )
            self._span(
                f"execute_tool {call.name}",
                trace_id,
                tool_span_id(loop.loop_id, call.call_id),
                parent,
                SpanKind.INTERNAL,
                call.start_ns,
                call.end_ns or call.start_ns,
                attributes,
                tool_status,
            )

    def _span(
        self,
        name: str,
        trace_id: int,
        span_id: int,
        parent_span_id: int | None,
        kind: SpanKind,
        start_ns: int,
        end_ns: int,
        attributes: Attributes,
        status: Status,
    ) -> None:
        context = Context()
        if parent_span_id is not None:
            parent = trace.SpanContext(
                trace_id,
                parent_span_id,
                is_remote=False,
                trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
            )
            context = trace.set_span_in_context(trace.NonRecordingSpan(parent), context)
        self._ids.trace_id, self._ids.span_id = trace_id, span_id
        span = self._tracer.start_span(
            name, context=context, kind=kind, attributes=attributes, start_time=start_ns
        )
        span.set_status(status)
        span.end(end_time=end_ns)
