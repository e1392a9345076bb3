"""OpenTelemetry out, end to end: a real recorder exports to a real OTLP receiver.

The receiver is opentelemetry-proto's TraceService on a loopback port; the test
waits for the spans it expects (an asyncio.Event set by the receiver, bounded by
a timeout) and checks names, attributes, times and parent links field by field.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from agent_recorder.v1 import events_pb2, types_pb2
from agent_recorder.v1 import recorder_service_pb2 as api
from agent_recorder.v1 import recorder_service_pb2_grpc as api_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as trace_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from recorder_client import events as ev
from recorder_server.cost import LIBRARY_SOURCE
from recorder_server.otel import loop_span_id, tool_span_id, trace_id_of
from recorder_server.server import RecorderServer, ServerConfig

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
WAIT_S = 15.0
OK = trace_pb2.Status.STATUS_CODE_UNSET
ERROR = trace_pb2.Status.STATUS_CODE_ERROR


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def ns(seconds: int) -> int:
    return (int(T0.timestamp()) + seconds) * 1_000_000_000


class Collector(trace_grpc.TraceServiceServicer):
    """An OTLP trace receiver that signals when a given number of spans arrived."""

    def __init__(self) -> None:
        self.spans: list[trace_pb2.Span] = []
        self.service_names: set[str] = set()
        self.scopes: set[str] = set()
        self.expected = 0
        self.arrived = asyncio.Event()
        self.export_started = asyncio.Event()
        self.gate: asyncio.Event | None = None

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: object
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.export_started.set()
        if self.gate is not None:
            await self.gate.wait()
        for resource_spans in request.resource_spans:
            self.service_names.update(
                a.value.string_value
                for a in resource_spans.resource.attributes
                if a.key == "service.name"
            )
            for scope_spans in resource_spans.scope_spans:
                self.scopes.add(scope_spans.scope.name)
                self.spans.extend(scope_spans.spans)
        if self.expected and len(self.spans) >= self.expected:
            self.arrived.set()
        return trace_service_pb2.ExportTraceServiceResponse()

    async def wait_for(self, count: int) -> list[trace_pb2.Span]:
        self.expected = count
        if len(self.spans) >= count:
            self.arrived.set()
        async with asyncio.timeout(WAIT_S):
            await self.arrived.wait()
        return self.spans


@pytest.fixture
async def collector() -> AsyncIterator[tuple[Collector, int]]:
    servicer = Collector()
    server = grpc.aio.server()
    trace_grpc.add_TraceServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield servicer, port
    finally:
        if servicer.gate is not None:
            servicer.gate.set()
        await server.stop(0)


@pytest.fixture
async def exporting_recorder(
    short_tmp: Path, collector: tuple[Collector, int], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[api_grpc.RecorderServiceAsyncStub]:
    """A recorder exporting to the collector, batching spans every 20 ms."""
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "20")
    _, port = collector
    config = ServerConfig(
        db_path=short_tmp / "recorder.db",
        listen=f"unix://{short_tmp / 'r.sock'}",
        shutdown_grace_s=1.0,
        otlp_endpoint=f"127.0.0.1:{port}",
    )
    async with RecorderServer(config) as server:
        channel = grpc.aio.insecure_channel(server.address)
        try:
            yield api_grpc.RecorderServiceStub(channel)
        finally:
            await channel.close(None)


async def append(stub: api_grpc.RecorderServiceAsyncStub, *events: events_pb2.AgentEvent) -> None:
    envelopes = [api.EventEnvelope(event=e) for e in events]
    await stub.Append(api.AppendRequest(writer_id="otel-test", events=envelopes), timeout=10)


def attributes(span: trace_pb2.Span) -> dict[str, Any]:
    return {a.key: _value(a.value) for a in span.attributes}


def _value(value: common_pb2.AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind is not None else None


def by_name(spans: Sequence[trace_pb2.Span]) -> dict[str, list[trace_pb2.Span]]:
    named: dict[str, list[trace_pb2.Span]] = {}
    for span in spans:
        named.setdefault(span.name, []).append(span)
    return named


def span_id(value: int) -> bytes:
    return value.to_bytes(8, "big")


SONNET, GPT = "claude-sonnet-4", "gpt-5-mini"


def cost_attributes(amount: str) -> dict[str, Any]:
    return {
        "agent_recorder.cost.amount": amount,
        "agent_recorder.cost.currency": "USD",
        "agent_recorder.cost.priced": True,
        "agent_recorder.cost.source": LIBRARY_SOURCE,
    }


async def test_multi_agent_run_is_one_trace_with_genai_spans(
    exporting_recorder: api_grpc.RecorderServiceAsyncStub, collector: tuple[Collector, int]
) -> None:
    stub, (receiver, _) = exporting_recorder, collector
    parent, child = "sa.main.0", "sb.main.0"
    ask = ev.assistant_message(
        "let me ask a researcher",
        model=SONNET,
        provider="anthropic",
        tool_calls=[("call-1", "spawn_researcher", {"topic": "otters"})],
        tokens=ev.usage(100, 20, cache_read=50),
        at=at(2),
    )
    result = ev.tool_result_message("call-1", "spawn_researcher", "otters hold hands", at=at(7))
    await append(
        stub,
        ev.agent_start(
            agent_id="planner",
            session_id="sa",
            loop_id=parent,
            model=SONNET,
            provider="anthropic",
            at=at(0),
        ),
        ev.turn_start(parent, 0, at=at(1)),
        ev.message_end(parent, ev.user_message("tell me about otters", at=at(1))),
        ev.message_end(parent, ask),
        ev.tool_start(parent, "call-1", "spawn_researcher", {"topic": "otters"}),
    )
    # The sub-agent runs (and ends) inside the tool call, before the parent knows
    # which loop it spawned: its span must still land under the tool's span.
    answer = ev.assistant_message(
        "they hold hands", model=GPT, provider="openai", tokens=ev.usage(30, 10), at=at(4)
    )
    await append(
        stub,
        ev.agent_start(
            agent_id="researcher",
            session_id="sb",
            loop_id=child,
            parent_loop_id=parent,
            model=GPT,
            provider="openai",
            at=at(3),
        ),
        ev.turn_start(child, 0, types_pb2.TURN_TRIGGER_SUB_AGENT, at=at(3)),
        ev.message_end(child, answer),
        ev.turn_end(child, answer, tokens=ev.usage(30, 10), at=at(5)),
        ev.agent_end(child, messages=[answer], tokens=ev.usage(30, 10), at=at(6)),
    )
    done = ev.assistant_message(
        "otters hold hands", model=SONNET, provider="anthropic", tokens=ev.usage(200, 30), at=at(8)
    )
    await append(
        stub,
        ev.tool_end(parent, "call-1", "spawn_researcher", "otters hold hands", child_loop_id=child),
        ev.message_end(parent, result),
        ev.turn_end(
            parent, ask, tool_results=[result], tokens=ev.usage(100, 20, cache_read=50), at=at(8)
        ),
        ev.turn_start(parent, 1, types_pb2.TURN_TRIGGER_CONTINUATION, at=at(8)),
        ev.turn_end(parent, done, tokens=ev.usage(200, 30), at=at(9)),
        ev.agent_end(parent, messages=[ask, result, done], tokens=ev.usage(300, 50, 50), at=at(10)),
    )

    spans = by_name(await receiver.wait_for(6))
    assert sorted((name, len(found)) for name, found in spans.items()) == [
        (f"chat {SONNET}", 2),
        (f"chat {GPT}", 1),
        ("execute_tool spawn_researcher", 1),
        ("invoke_agent planner", 1),
        ("invoke_agent researcher", 1),
    ]
    assert receiver.service_names == {"agent-recorder"}
    assert receiver.scopes == {"agent_recorder"}
    (planner,) = spans["invoke_agent planner"]
    (researcher,) = spans["invoke_agent researcher"]
    (tool,) = spans["execute_tool spawn_researcher"]
    turn0, turn1 = sorted(spans[f"chat {SONNET}"], key=lambda s: s.start_time_unix_nano)
    (child_turn,) = spans[f"chat {GPT}"]

    trace_id = trace_id_of("sa").to_bytes(16, "big")
    for found in spans.values():
        for span in found:
            assert span.trace_id == trace_id, span.name

    # The tree: planner → chat(turn 0) → execute_tool → researcher → chat.
    assert planner.parent_span_id == b""
    assert planner.span_id == span_id(loop_span_id(parent))
    assert turn0.parent_span_id == planner.span_id
    assert turn1.parent_span_id == planner.span_id
    assert tool.parent_span_id == turn0.span_id
    assert tool.span_id == span_id(tool_span_id(parent, "call-1"))
    assert researcher.parent_span_id == tool.span_id
    assert child_turn.parent_span_id == researcher.span_id

    # Recorded times; the tool spans from the assistant's request to its result.
    assert (planner.start_time_unix_nano, planner.end_time_unix_nano) == (ns(0), ns(10))
    assert (turn0.start_time_unix_nano, turn0.end_time_unix_nano) == (ns(1), ns(8))
    assert (turn1.start_time_unix_nano, turn1.end_time_unix_nano) == (ns(8), ns(9))
    assert (tool.start_time_unix_nano, tool.end_time_unix_nano) == (ns(2), ns(7))
    assert (researcher.start_time_unix_nano, researcher.end_time_unix_nano) == (ns(3), ns(6))
    assert (child_turn.start_time_unix_nano, child_turn.end_time_unix_nano) == (ns(3), ns(5))

    assert planner.kind == trace_pb2.Span.SPAN_KIND_INTERNAL
    assert turn0.kind == trace_pb2.Span.SPAN_KIND_CLIENT
    assert tool.kind == trace_pb2.Span.SPAN_KIND_INTERNAL
    for span in (planner, researcher, turn0, turn1, child_turn, tool):
        assert span.status.code == OK, span.name

    assert attributes(planner) == {
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.agent.id": "planner",
        "gen_ai.agent.name": "planner",
        "gen_ai.conversation.id": "sa",
        "gen_ai.provider.name": "anthropic",
        "gen_ai.request.model": SONNET,
        "gen_ai.usage.input_tokens": 300,
        "gen_ai.usage.output_tokens": 50,
        "gen_ai.usage.cache_read.input_tokens": 50,
        "gen_ai.usage.cache_creation.input_tokens": 0,
        "gen_ai.usage.reasoning.output_tokens": 0,
        "agent_recorder.usage.total_tokens": 350,
        "agent_recorder.loop_id": parent,
        "agent_recorder.session_id": "sa",
        "agent_recorder.status": "completed",
        "agent_recorder.continuation_kind": "initial",
        "agent_recorder.turn_count": 2,
        # Its two turns at claude-sonnet-4-0's $3 in / $0.30 cache read / $15 out per
        # MTok: (100·3 + 50·0.3 + 20·15 + 200·3 + 30·15) / 1e6.
        **cost_attributes("0.001665"),
    }
    assert attributes(researcher) == {
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.agent.id": "researcher",
        "gen_ai.agent.name": "researcher",
        "gen_ai.conversation.id": "sb",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": GPT,
        "gen_ai.usage.input_tokens": 30,
        "gen_ai.usage.output_tokens": 10,
        "gen_ai.usage.cache_read.input_tokens": 0,
        "gen_ai.usage.cache_creation.input_tokens": 0,
        "gen_ai.usage.reasoning.output_tokens": 0,
        "agent_recorder.usage.total_tokens": 40,
        "agent_recorder.loop_id": child,
        "agent_recorder.session_id": "sb",
        "agent_recorder.parent_loop_id": parent,
        "agent_recorder.status": "completed",
        "agent_recorder.continuation_kind": "initial",
        "agent_recorder.turn_count": 1,
        # gpt-5-mini: $0.25 in / $2 out per MTok: (30·0.25 + 10·2) / 1e6.
        **cost_attributes("0.0000275"),
    }
    assert attributes(turn0) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.agent.name": "planner",
        "gen_ai.conversation.id": "sa",
        "gen_ai.provider.name": "anthropic",
        "gen_ai.request.model": SONNET,
        "gen_ai.response.model": SONNET,
        "gen_ai.response.finish_reasons": ["tool_use"],
        "gen_ai.usage.input_tokens": 100,
        "gen_ai.usage.output_tokens": 20,
        "gen_ai.usage.cache_read.input_tokens": 50,
        "gen_ai.usage.cache_creation.input_tokens": 0,
        "gen_ai.usage.reasoning.output_tokens": 0,
        "agent_recorder.usage.total_tokens": 120,
        "agent_recorder.loop_id": parent,
        "agent_recorder.turn_index": 0,
        "agent_recorder.turn_trigger": "user",
        "agent_recorder.tool_result_count": 1,
        **cost_attributes("0.000615"),
    }
    assert attributes(turn1)["agent_recorder.cost.amount"] == "0.00105"
    assert attributes(turn1)["agent_recorder.turn_trigger"] == "continuation"
    assert attributes(turn1)["gen_ai.response.finish_reasons"] == ["stop"]
    assert attributes(child_turn)["agent_recorder.turn_trigger"] == "sub_agent"
    assert attributes(child_turn)["gen_ai.usage.input_tokens"] == 30
    assert attributes(tool) == {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.agent.name": "planner",
        "gen_ai.conversation.id": "sa",
        "gen_ai.tool.name": "spawn_researcher",
        "gen_ai.tool.call.id": "call-1",
        "agent_recorder.loop_id": parent,
        "agent_recorder.child_loop_id": child,
        "agent_recorder.child_session_id": "sb",
    }


async def test_rejected_aborted_and_parallel_loops(
    exporting_recorder: api_grpc.RecorderServiceAsyncStub, collector: tuple[Collector, int]
) -> None:
    stub, (receiver, _) = exporting_recorder, collector
    first, second = "sc.main.0", "sc.main.1"
    branch_a, branch_b = "sc.fast.0", "sc.deep.0"
    await append(
        stub,
        ev.agent_start(agent_id="coder", session_id="sc", loop_id=first, at=at(0)),
        ev.agent_end(first, rejection="input not allowed", at=at(1)),
        ev.agent_start(
            agent_id="coder",
            session_id="sc",
            loop_id=second,
            parent_loop_id=first,
            continuation=ev.continuation_kind("rerun", "retry-1"),
            at=at(2),
        ),
        ev.tool_start(second, "call-9", "bash", {"cmd": "sleep 100"}),
        ev.parallel_start("sc", [branch_a, branch_b], at=at(3)),
    )
    for index, branch in enumerate((branch_a, branch_b)):
        await append(
            stub,
            ev.agent_start(
                agent_id="coder",
                session_id="sc",
                loop_id=branch,
                parent_loop_id=second,
                continuation=ev.continuation_kind("branch", f"cfg-{index}"),
                at=at(3 + index),
            ),
            ev.agent_end(branch, tokens=ev.usage(10 * (index + 1), 1), at=at(5 + index)),
        )
    # The branches ended before the outcome is known: they are exported with it.
    await append(stub, ev.parallel_end("sc", branch_b, 1, tokens=ev.usage(5, 5), at=at(7)))
    await stub.Flush(api.FlushRequest(session_id="sc"), timeout=10)

    spans = by_name(await receiver.wait_for(5))
    rejected, aborted = sorted(spans["invoke_agent coder"], key=lambda s: s.start_time_unix_nano)[
        :2
    ]
    assert attributes(rejected)["agent_recorder.loop_id"] == first
    assert rejected.status.code == ERROR
    assert rejected.status.message == "input not allowed"
    assert attributes(rejected)["agent_recorder.status"] == "rejected"
    assert attributes(rejected)["agent_recorder.rejection"] == "input not allowed"
    assert attributes(rejected)["error.type"] == "rejected"
    assert (rejected.start_time_unix_nano, rejected.end_time_unix_nano) == (ns(0), ns(1))
    # No model call, nothing to price: zero, and priced.
    assert attributes(rejected)["agent_recorder.cost.amount"] == "0"
    assert attributes(rejected)["agent_recorder.cost.priced"] is True

    assert attributes(aborted)["agent_recorder.loop_id"] == second
    assert aborted.status.code == ERROR
    assert attributes(aborted)["agent_recorder.status"] == "aborted"
    assert attributes(aborted)["error.type"] == "aborted"
    assert attributes(aborted)["agent_recorder.continuation_kind"] == "rerun"
    assert attributes(aborted)["agent_recorder.continuation_tag"] == "retry-1"
    # A continuation in the same session nests under the loop it continues.
    assert aborted.parent_span_id == span_id(loop_span_id(first))
    assert rejected.trace_id == aborted.trace_id == trace_id_of("sc").to_bytes(16, "big")

    (bash,) = spans["execute_tool bash"]
    assert bash.parent_span_id == aborted.span_id
    assert bash.status.code == ERROR
    assert attributes(bash)["error.type"] == "unfinished"
    assert bash.start_time_unix_nano == ns(2)
    assert bash.end_time_unix_nano == aborted.end_time_unix_nano

    branches = {
        attributes(s)["agent_recorder.loop_id"]: s
        for s in spans["invoke_agent coder"]
        if attributes(s)["agent_recorder.loop_id"] in (branch_a, branch_b)
    }
    # Tokens without a model: unpriced, never an amount of 0.
    for branch_span in branches.values():
        said = attributes(branch_span)
        assert "agent_recorder.cost.amount" not in said
        assert said["agent_recorder.cost.priced"] is False
        assert said["agent_recorder.cost.unpriced_reason"] == "no model recorded"
    for loop_id, span in branches.items():
        found = attributes(span)
        assert span.parent_span_id == aborted.span_id
        assert span.status.code == OK
        assert found["agent_recorder.continuation_kind"] == "branch"
        assert found["agent_recorder.parallel.loop_ids"] == [branch_a, branch_b]
        assert found["agent_recorder.parallel.selected_loop_id"] == branch_b
        assert found["agent_recorder.parallel.selected_config_index"] == 1
        assert found["agent_recorder.parallel.is_selected"] == (loop_id == branch_b)
    assert attributes(branches[branch_a])["agent_recorder.continuation_tag"] == "cfg-0"


async def test_recording_does_not_wait_for_a_stuck_collector(
    exporting_recorder: api_grpc.RecorderServiceAsyncStub, collector: tuple[Collector, int]
) -> None:
    stub, (receiver, _) = exporting_recorder, collector
    receiver.gate = asyncio.Event()
    await append(
        stub,
        ev.agent_start(agent_id="a", session_id="sd", loop_id="sd.x.0", at=at(0)),
        ev.agent_end("sd.x.0", at=at(1)),
    )
    async with asyncio.timeout(WAIT_S):
        await receiver.export_started.wait()
    # The collector holds the first export; recording goes on regardless.
    for n in range(1, 21):
        loop_id = f"sd.x.{n}"
        async with asyncio.timeout(WAIT_S):
            await append(
                stub,
                ev.agent_start(agent_id="a", session_id="sd", loop_id=loop_id, at=at(n)),
                ev.agent_end(loop_id, at=at(n + 0.5)),
            )
    assert receiver.spans == []
    receiver.gate.set()
    spans = await receiver.wait_for(21)
    assert sorted(attributes(s)["agent_recorder.loop_id"] for s in spans) == sorted(
        f"sd.x.{n}" for n in range(21)
    )
