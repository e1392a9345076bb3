"""OTLP/HTTP ingest (`serve --otlp-http`): the SDK's HTTP exporter, OTLP/JSON, the token."""

from __future__ import annotations

import base64
import gzip
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from agent_recorder.v1 import recorder_service_pb2 as api
from agent_recorder.v1 import recorder_service_pb2_grpc as api_grpc
from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as otlp_grpc
from opentelemetry.proto.trace.v1 import trace_pb2
from support.otlp import get_session, list_sessions, request_of, run_instrumented, sidecar
from test_otlp_frameworks import run_pydantic_ai
from test_otlp_ingest import check_genai_run, genai_run
from test_security import make_ca, make_leaf

from recorder_server.cli import build_parser
from recorder_server.cli.serve import config_from
from recorder_server.security import SecurityConfigError
from recorder_server.server import RecorderServer
from recorder_server.validation import Limits

PROTOBUF = "application/x-protobuf"


def url(server: RecorderServer) -> str:
    return f"http://{server.otlp_http_address}/v1/traces"


def otlp_json(spans: list[trace_pb2.Span]) -> dict[str, Any]:
    """OTLP/JSON as exporters write it: camelCase, ids in hex (not protobuf's base64)."""
    body = json_format.MessageToDict(request_of(spans))
    for resource in body["resourceSpans"]:
        for scope in resource["scopeSpans"]:
            for span in scope["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = base64.b64decode(span[key]).hex()
    return body


async def test_sdk_http_exporter(short_tmp: Path) -> None:
    async with sidecar(short_tmp, otlp_http="127.0.0.1:0") as server:
        exporter = OTLPSpanExporter(endpoint=url(server), timeout=10)
        output, _ = await run_instrumented(run_pydantic_ai, exporter, "pai-http")
        assert output == '{"delegate":"helped"}'
        sessions = {s.agent_id: s.session_id for s in await list_sessions(server)}
        main = await get_session(server, sessions["main"])
    [loop] = main.loops
    assert (len(loop.turns), [r.tool_name for r in loop.child_loop_refs]) == (2, ["delegate"])
    assert loop.child_loop_refs[0].child_session_id == sessions["helper"]


async def test_otlp_json_with_a_bad_span(short_tmp: Path) -> None:
    bad = trace_pb2.Span(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name="no start")
    async with sidecar(short_tmp, otlp_http="127.0.0.1:0") as server:
        async with aiohttp.ClientSession() as http:
            async with http.post(url(server), json=otlp_json([*genai_run(), bad])) as response:
                assert (response.status, response.content_type) == (200, "application/json")
                answer = await response.json()
            # The same spans again, as gzipped protobuf: nothing changes, nothing refused.
            body = gzip.compress(request_of(genai_run()).SerializeToString())
            headers = {"Content-Type": PROTOBUF, "Content-Encoding": "gzip"}
            async with http.post(url(server), data=body, headers=headers) as response:
                assert response.status == 200
                again = otlp.ExportTraceServiceResponse.FromString(await response.read())
        session = await get_session(server, "conv-1")
    assert answer == {
        "partialSuccess": {
            "rejectedSpans": "1",
            "errorMessage": "span 0202020202020202 ('no start'): start_time_unix_nano is missing",
        }
    }
    assert not again.HasField("partial_success")
    check_genai_run(session)


async def test_http_refusals(short_tmp: Path) -> None:
    async with sidecar(short_tmp, otlp_http="127.0.0.1:0", token="s3cret") as server:
        body = request_of(genai_run()).SerializeToString()
        async with aiohttp.ClientSession() as http:

            async def post(data: bytes, **headers: str) -> tuple[int, str]:
                async with http.post(url(server), data=data, headers=headers) as response:
                    return response.status, (await response.read()).decode("latin-1")

            status, text = await post(body, **{"Content-Type": PROTOBUF})
            assert status == 401 and "missing or invalid bearer token" in text
            status, _ = await post(body, **{"Content-Type": "text/plain"})
            assert status == 415
            auth = {"Content-Type": PROTOBUF, "Authorization": "Bearer s3cret"}
            status, text = await post(b"\xff\xff not protobuf", **auth)
            assert status == 400 and "not an ExportTraceServiceRequest" in text
            status, _ = await post(body, **auth)
            assert status == 200
        assert [s.session_id for s in await list_sessions(server, token="s3cret")] == ["conv-1"]


def test_serve_flags() -> None:
    args = build_parser().parse_args(
        ["serve", "--otlp-http", "127.0.0.1:4318", "--otlp-orphan-wait", "2.5"]
    )
    config = config_from(args)
    assert (config.otlp_http, config.otlp_orphan_wait_s) == ("127.0.0.1:4318", 2.5)
    default = config_from(build_parser().parse_args(["serve"]))
    assert (default.otlp_http, default.otlp_orphan_wait_s) == (None, 60.0)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--otlp-orphan-wait", "0"])


async def test_plaintext_http_beyond_loopback_is_refused(short_tmp: Path) -> None:
    with pytest.raises(SecurityConfigError, match="requires TLS"):
        async with sidecar(short_tmp, otlp_http="0.0.0.0:0"):
            pass


async def test_both_endpoints_serve_the_sidecar_tls(short_tmp: Path) -> None:
    ca = make_ca(short_tmp, "ca")
    leaf = make_leaf(short_tmp, "server", ca, server=True)
    trust = ssl.create_default_context(cafile=str(ca[0].cert))
    body = request_of(genai_run()).SerializeToString()
    async with sidecar(
        short_tmp,
        listen="127.0.0.1:0",
        otlp_http="127.0.0.1:0",
        tls_cert=leaf.cert,
        tls_key=leaf.key,
    ) as server:
        https = f"https://{server.otlp_http_address}/v1/traces"
        async with aiohttp.ClientSession() as http:
            headers = {"Content-Type": PROTOBUF}
            async with http.post(https, data=body, headers=headers, ssl=trust) as response:
                assert response.status == 200
            with pytest.raises(aiohttp.ClientError):
                await http.post(url(server), data=body, headers=headers)
        credentials = grpc.ssl_channel_credentials(ca[0].cert.read_bytes())
        async with grpc.aio.secure_channel(server.address, credentials) as channel:
            stub = otlp_grpc.TraceServiceStub(channel)  # type: ignore[no-untyped-call]
            answer = await stub.Export(request_of(genai_run()[:1]))
            assert not answer.HasField("partial_success")
            reads = api_grpc.RecorderServiceStub(channel)
            got = await reads.GetSession(api.GetSessionRequest(session_id="conv-1"))
    check_genai_run(got.session)


async def test_a_body_that_inflates_past_the_limit_is_refused(short_tmp: Path) -> None:
    limits = Limits(max_request_bytes=64 * 1024)
    bomb = gzip.compress(b"\0" * (1024 * 1024))
    assert len(bomb) < limits.max_request_bytes
    headers = {"Content-Type": PROTOBUF, "Content-Encoding": "gzip"}
    async with sidecar(short_tmp, otlp_http="127.0.0.1:0", limits=limits) as server:
        async with (
            aiohttp.ClientSession() as http,
            http.post(url(server), data=bomb, headers=headers) as response,
        ):
            assert response.status == 413
        assert await list_sessions(server) == []
