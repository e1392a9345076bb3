"""The OTLP endpoints: TraceService/Export on the gRPC server, POST /v1/traces over HTTP.

Both are thin: decode the request, hand its ResourceSpans to OtlpIngest, answer
with partial success naming what was refused. The gRPC service sits behind the
server's interceptors (bearer token, decoding guard) like RecorderService; the
HTTP endpoint checks the same token and serves the same TLS identity.
"""

from __future__ import annotations

import base64
import hmac
import json
import ssl
from typing import Any, Final

import grpc
from aiohttp import web
from google.protobuf import json_format
from google.rpc import code_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as otlp_grpc

from recorder_server.errors import StorageFull, StorageUnavailable
from recorder_server.otlp.ingest import OtlpIngest
from recorder_server.status import unary

SERVICE_NAME: Final = otlp.DESCRIPTOR.services_by_name["TraceService"].full_name
PROTOBUF: Final = "application/x-protobuf"
JSON: Final = "application/json"
# OTLP/JSON spells these ids in hex where protobuf's JSON mapping expects base64.
_HEX_IDS: Final = frozenset(
    {"traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"}
)


def _response(rejected: int, message: str) -> otlp.ExportTraceServiceResponse:
    response = otlp.ExportTraceServiceResponse()
    if rejected or message:
        response.partial_success.rejected_spans = rejected
        response.partial_success.error_message = message
    return response


class TraceServicer(otlp_grpc.TraceServiceServicer):
    def __init__(self, ingest: OtlpIngest) -> None:
        self.ingest = ingest

    @unary
    async def Export(
        self, request: otlp.ExportTraceServiceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> otlp.ExportTraceServiceResponse:
        rejected, message = await self.ingest.export(request.resource_spans)
        return _response(rejected, message)


def add_to_server(servicer: TraceServicer, server: grpc.aio.Server) -> None:
    # The package's generated gRPC module has no type annotations.
    otlp_grpc.add_TraceServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]


# -- OTLP/HTTP ----------------------------------------------------------------


def _hex_to_base64(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: _b64(v) if k in _HEX_IDS and isinstance(v, str) else _hex_to_base64(v)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_hex_to_base64(v) for v in node]
    return node


def _b64(hex_text: str) -> str:
    try:
        return base64.b64encode(bytes.fromhex(hex_text)).decode()
    except ValueError:
        raise ValueError(f"{hex_text!r} is not a hex id") from None


def decode_http(body: bytes, content_type: str) -> otlp.ExportTraceServiceRequest:
    """An OTLP/HTTP request body, protobuf or JSON; ValueError names what is wrong."""
    request = otlp.ExportTraceServiceRequest()
    if content_type == PROTOBUF:
        try:
            request.ParseFromString(body)
        except Exception as exc:  # DecodeError and friends
            raise ValueError(f"not an ExportTraceServiceRequest: {exc}") from None
        return request
    try:
        json_format.ParseDict(_hex_to_base64(json.loads(body)), request, ignore_unknown_fields=True)
    except (ValueError, json_format.ParseError) as exc:
        raise ValueError(f"not OTLP/JSON: {exc}") from None
    return request


def _http_error(status: int, code: int, message: str, content_type: str) -> web.Response:
    detail = status_pb2.Status(code=code, message=message)
    if content_type == JSON:
        return web.json_response(json_format.MessageToDict(detail), status=status)
    return web.Response(status=status, body=detail.SerializeToString(), content_type=PROTOBUF)


def http_app(ingest: OtlpIngest, token: str | None, max_bytes: int) -> web.Application:
    """POST /v1/traces, as OTLP/HTTP exporters send it (protobuf or JSON, gzip or not)."""
    expected = None if token is None else f"Bearer {token}".encode()

    async def traces(request: web.Request) -> web.Response:
        kind = request.content_type
        if kind not in (PROTOBUF, JSON):
            return _http_error(
                415,
                code_pb2.INVALID_ARGUMENT,
                f"Content-Type must be {PROTOBUF} or {JSON}",
                PROTOBUF,
            )
        given = request.headers.get("Authorization", "").encode()
        if expected is not None and not hmac.compare_digest(given, expected):
            return _http_error(
                401, code_pb2.UNAUTHENTICATED, "missing or invalid bearer token", kind
            )
        # aiohttp inflates a gzip or deflate body itself, within client_max_size.
        body = await request.read()
        try:
            export = decode_http(body, kind)
        except ValueError as exc:
            return _http_error(400, code_pb2.INVALID_ARGUMENT, str(exc), kind)
        try:
            rejected, message = await ingest.export(export.resource_spans)
        except (StorageFull, StorageUnavailable) as exc:
            return _http_error(503, code_pb2.UNAVAILABLE, exc.message, kind)
        answer = _response(rejected, message)
        if kind == JSON:
            return web.json_response(json_format.MessageToDict(answer))
        return web.Response(body=answer.SerializeToString(), content_type=PROTOBUF)

    app = web.Application(client_max_size=max_bytes)
    app.router.add_post("/v1/traces", traces)
    return app


def ssl_context(cert: str, key: str, client_ca: str | None) -> ssl.SSLContext:
    """The gRPC listener's TLS identity for the HTTP endpoint (client CA: mTLS)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    if client_ca is not None:
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context
