"""OTLP ingest helpers: a sidecar taking spans, the real OTel SDK sending them, reads.

Spans travel the real way: an SDK TracerProvider, a span processor and the OTLP
exporter (gRPC on the sidecar's socket, or HTTP on its --otlp-http port).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import grpc
from agent_recorder.v1 import recorder_service_pb2 as api
from agent_recorder.v1 import recorder_service_pb2_grpc as api_grpc
from agent_recorder.v1 import session_pb2
from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as otlp_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from recorder_server.server import RecorderServer, ServerConfig

T = TypeVar("T")
T0_NS = 1_740_830_400 * 1_000_000_000  # 2025-03-01T12:00:00Z


@asynccontextmanager
async def sidecar(tmp: Path, **config: Any) -> AsyncIterator[RecorderServer]:
    """A real sidecar on a Unix socket and a SQLite file in `tmp`."""
    base = ServerConfig(
        db_path=tmp / "recorder.db", listen=f"unix://{tmp}/r.sock", shutdown_grace_s=1.0
    )
    async with RecorderServer(replace(base, **config)) as server:
        yield server


async def run_instrumented(
    agent: Callable[[TracerProvider], T],
    exporter: SpanExporter,
    service: str = "test-agent",
    *,
    batch: bool = True,
) -> tuple[T, list[ReadableSpan]]:
    """Run `agent` with a TracerProvider exporting through `exporter`, then flush it.

    Returns what the agent returned and the spans it made, in the order they ended
    (a copy kept in memory to check the recording against). On a thread of its own: the SDK
    exports synchronously, and the sidecar that receives runs on this event loop.
    """
    kept = InMemorySpanExporter()

    def run() -> T:
        provider = TracerProvider(resource=Resource.create({"service.name": service}))
        processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
        provider.add_span_processor(processor)
        provider.add_span_processor(SimpleSpanProcessor(kept))
        try:
            return agent(provider)
        finally:
            assert provider.force_flush(30_000), "the OTLP exporter did not flush"
            provider.shutdown()

    result = await asyncio.to_thread(run)
    return result, list(kept.get_finished_spans())


def named(spans: Sequence[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def one(spans: Sequence[ReadableSpan], name: str) -> ReadableSpan:
    [found] = named(spans, name)
    return found


def span_hex(span: ReadableSpan) -> str:
    assert span.context is not None
    return f"{span.context.span_id:016x}"


def trace_hex(span: ReadableSpan) -> str:
    assert span.context is not None
    return f"{span.context.trace_id:032x}"


def loop_id_for(session_id: str, span: ReadableSpan) -> str:
    assert span.context is not None
    return f"{session_id}.otlp.{span.context.span_id}"


def grpc_exporter(server: RecorderServer, token: str | None = None) -> OTLPSpanExporter:
    headers = {"authorization": f"Bearer {token}"} if token else None
    return OTLPSpanExporter(endpoint=server.address, insecure=True, headers=headers, timeout=10)


async def get_session(server: RecorderServer, session_id: str) -> session_pb2.Session:
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = api_grpc.RecorderServiceStub(channel)
        response = await stub.GetSession(api.GetSessionRequest(session_id=session_id))
    return response.session


async def list_sessions(
    server: RecorderServer, token: str | None = None
) -> list[api.SessionSummary]:
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = api_grpc.RecorderServiceStub(channel)
        request = api.ListSessionsRequest(page_size=1000)
        response = await stub.ListSessions(request, metadata=metadata)
    return list(response.sessions)


def request_of(
    spans: Sequence[trace_pb2.Span],
    service: str = "hand-made",
    scope: tuple[str, str] = ("hand.made", "1.0"),
) -> otlp.ExportTraceServiceRequest:
    """An export of these spans under one resource and scope."""
    request = otlp.ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.extend(attrs({"service.name": service}))
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.name, scope_spans.scope.version = scope
    scope_spans.spans.extend(spans)
    return request


async def export(
    server: RecorderServer,
    spans: Sequence[trace_pb2.Span],
    service: str = "hand-made",
    scope: tuple[str, str] = ("hand.made", "1.0"),
    token: str | None = None,
) -> otlp.ExportTraceServiceResponse:
    """One raw Export call with these spans under one resource and scope."""
    request = request_of(spans, service, scope)
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = otlp_grpc.TraceServiceStub(channel)  # type: ignore[no-untyped-call]
        metadata = (("authorization", f"Bearer {token}"),) if token else None
        response: otlp.ExportTraceServiceResponse = await stub.Export(request, metadata=metadata)
    return response


def attrs(values: dict[str, Any]) -> list[common_pb2.KeyValue]:
    out = []
    for key, value in values.items():
        kv = common_pb2.KeyValue(key=key)
        if isinstance(value, bool):
            kv.value.bool_value = value
        elif isinstance(value, int):
            kv.value.int_value = value
        elif isinstance(value, float):
            kv.value.double_value = value
        elif isinstance(value, list):
            kv.value.array_value.values.extend(common_pb2.AnyValue(string_value=v) for v in value)
        else:
            kv.value.string_value = str(value)
        out.append(kv)
    return out


def span(
    trace: int,
    span_id: int,
    parent: int | None,
    name: str,
    start_s: float,
    end_s: float,
    attributes: dict[str, Any],
    *,
    error: str | None = None,
    events: Iterable[tuple[str, dict[str, Any]]] = (),
) -> trace_pb2.Span:
    """A hand-made span: ids as ints, times in seconds after T0."""
    out = trace_pb2.Span(
        trace_id=trace.to_bytes(16, "big"),
        span_id=span_id.to_bytes(8, "big"),
        parent_span_id=parent.to_bytes(8, "big") if parent else b"",
        name=name,
        start_time_unix_nano=T0_NS + int(start_s * 1e9),
        end_time_unix_nano=T0_NS + int(end_s * 1e9),
        attributes=attrs(attributes),
    )
    for event_name, event_attrs in events:
        out.events.add(
            name=event_name, time_unix_nano=out.start_time_unix_nano, attributes=attrs(event_attrs)
        )
    if error is not None:
        out.status.code = trace_pb2.Status.STATUS_CODE_ERROR
        out.status.message = error
    return out


def as_dict(message: Any) -> Any:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def loop_by_span(session: session_pb2.Session, span_id: int) -> session_pb2.LoopRecord:
    """The loop whose id ends with this span id (loop ids are {session}.otlp.{span})."""
    found = [loop for loop in session.loops if loop.loop_id.endswith(f".otlp.{span_id}")]
    assert len(found) == 1, [loop.loop_id for loop in session.loops]
    return found[0]


def event_kinds(loop: session_pb2.LoopRecord) -> list[str]:
    return [str(e.event.WhichOneof("event")) for e in loop.events]


async def follow_loop(server: RecorderServer, loop_id: str) -> int:
    """Tail a loop's events until it ends (StreamEvents with follow); how many came."""
    count = 0
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = api_grpc.RecorderServiceStub(channel)
        async for page in stub.StreamEvents(api.StreamEventsRequest(loop_id=loop_id, follow=True)):
            count += len(page.events)
    return count
