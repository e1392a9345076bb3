"""OTLP in, OTLP out: what an instrumented agent sent comes out of --otlp-endpoint
with the same shape (span names, parent links, gen_ai attributes).

pydantic-ai exports into the sidecar over OTLP/gRPC; the sidecar exports the
recorded loops to an in-process collector on 127.0.0.1 (tests/test_otel.py's).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as trace_grpc
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.trace import ReadableSpan
from support.otlp import grpc_exporter, run_instrumented, sidecar
from test_otel import Collector, attributes
from test_otlp_frameworks import run_pydantic_ai

# The attributes compared: those both sides speak (the sidecar adds its own).
SHARED = (
    "gen_ai.operation.name",
    "gen_ai.agent.name",
    "gen_ai.conversation.id",
    "gen_ai.request.model",
    "gen_ai.response.model",
    "gen_ai.provider.name",
    "gen_ai.tool.name",
    "gen_ai.tool.call.id",
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens",
)
Shape = list[tuple[str, str, tuple[tuple[str, Any], ...]]]


def shape_in(spans: Sequence[ReadableSpan]) -> Shape:
    """(name, parent's name, shared attributes) of each span that maps to the model."""
    names = {s.context.span_id: s.name for s in spans if s.context is not None}
    out = []
    for span in spans:
        attrs = dict(span.attributes or {})
        parent = names.get(span.parent.span_id, "") if span.parent else ""
        out.append((span.name, parent, tuple((k, attrs[k]) for k in SHARED if k in attrs)))
    return sorted(out)


def shape_out(spans: Sequence[trace_pb2.Span], keys: dict[str, set[str]]) -> Shape:
    """The same, keeping only the attributes the incoming span of that name had."""
    names = {s.span_id: s.name for s in spans}
    out = []
    for span in spans:
        attrs = attributes(span)
        wanted = keys[span.name]
        parent = names.get(span.parent_span_id, "")
        out.append((span.name, parent, tuple((k, attrs[k]) for k in SHARED if k in wanted)))
    return sorted(out)


@asynccontextmanager
async def collecting() -> AsyncIterator[tuple[Collector, int]]:
    """test_otel's OTLP receiver on a loopback port."""
    received = Collector()
    server = grpc.aio.server()
    trace_grpc.add_TraceServiceServicer_to_server(received, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield received, port
    finally:
        await server.stop(0)


async def test_pydantic_ai_round_trip(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "20")
    async with (
        collecting() as (received, port),
        sidecar(short_tmp, otlp_endpoint=f"127.0.0.1:{port}") as server,
    ):
        _, spans = await run_instrumented(run_pydantic_ai, grpc_exporter(server), "pai-app")
        sent = await received.wait_for(len(spans))
    assert len(sent) == len(spans) == 6
    keys = {s.name: {k for k in SHARED if k in (s.attributes or {})} for s in spans}
    expected = shape_in(spans)
    assert shape_out(sent, keys) == expected
    # The tree itself, spelled out: one trace, the sub-agent under the tool call.
    assert [(name, parent) for name, parent, _ in expected] == [
        ("chat test", "invoke_agent helper"),
        ("chat test", "invoke_agent main"),
        ("chat test", "invoke_agent main"),
        ("execute_tool delegate", "invoke_agent main"),
        ("invoke_agent helper", "execute_tool delegate"),
        ("invoke_agent main", ""),
    ]
    assert len({s.trace_id for s in sent}) == 1
    # OTLP never said how the loops continued: the export claims nothing either.
    for span in sent:
        assert "agent_recorder.continuation_kind" not in attributes(span), span.name
