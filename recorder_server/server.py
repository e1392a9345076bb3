"""The sidecar's lifecycle: address, lock, store, writer, readers, gRPC server.

Settings are checked and the address claimed before any database is touched
(ownership.py, startup.py). Built from async context managers on one
AsyncExitStack so teardown runs in the reverse order: the open streams end and
the gRPC server stops accepting first, then the writer drains its queue and
commits, then the store closes, the file lock is released and the socket removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from agent_recorder.v1 import recorder_service_pb2 as api
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from recorder_common.defaults import (
    MAX_RESPONSE_BYTES,
    default_db_path,
    default_target,
    normalize_target,
)
from recorder_server.checkpoints import Checkpointer
from recorder_server.cost import PriceBook
from recorder_server.decoding import DecodeGuard
from recorder_server.otel import OtlpExporter
from recorder_server.otlp import receiver
from recorder_server.otlp.ingest import OtlpIngest
from recorder_server.ownership import (
    DatabaseInUse,
    SocketClaim,
    StartupError,
    check_abstract_free,
    check_port_free,
    claim_database,
    claim_socket,
    loose_files,
    make_private_dirs,
)
from recorder_server.price_file import load_overrides
from recorder_server.reads import ReadPool, Reads
from recorder_server.recording import RecordingOptions
from recorder_server.security import (
    TlsFiles,
    TokenInterceptor,
    check_transport,
    open_listener_warning,
    server_credentials,
    tls_files,
)
from recorder_server.service import RecorderServicer, add_to_server
from recorder_server.startup import resolve_database, split_port
from recorder_server.storage import WriteStore
from recorder_server.validation import Limits
from recorder_server.version_header import ServerVersionHeader
from recorder_server.writer import Writer

log = logging.getLogger(__name__)
SERVICE_NAME = api.DESCRIPTOR.services_by_name["RecorderService"].full_name
# Probes and generic tools reach these without the token: liveness and the public schema.
OPEN_SERVICES = (
    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
    reflection.SERVICE_NAME,
)

__all__ = ["DatabaseInUse", "RecorderServer", "ServerConfig"]


@dataclass
class ServerConfig:
    db_path: Path = field(default_factory=default_db_path)
    listen: str = field(default_factory=default_target)
    options: RecordingOptions = field(default_factory=RecordingOptions)
    limits: Limits = field(default_factory=Limits)
    synchronous: str = "NORMAL"
    shutdown_grace_s: float = 5.0
    read_connections: int = 4
    # OTLP/gRPC collector for finished loops as spans ("host:port" is plaintext,
    # "https://host:port" TLS); no export when None.
    otlp_endpoint: str | None = None
    # TLS identity (PEM files); tls_client_ca also requires client certificates (mTLS).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    # Accept plaintext on a non-loopback address; without it such a listen is refused.
    insecure: bool = False
    # Bearer token every RecorderService call must carry; None leaves calls open.
    token: str | None = None
    # Make a missing database directory anywhere; without it only under the data dir.
    create_db_dir: bool = False
    # OTLP ingest: "host:port" for OTLP/HTTP POST /v1/traces (None: gRPC only), and
    # how long a loop whose own span has not arrived stays open (seconds).
    otlp_http: str | None = None
    otlp_orphan_wait_s: float = 60.0
    # Open loops of a writer gone this long are aborted (0: never).
    abandon_after_s: int = 300
    # The user's price overrides (price_file.py), read and checked at start.
    prices: Path | None = None


class RecorderServer:
    """`async with RecorderServer(config) as server:` runs the sidecar."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.address = ""
        self.db_path = config.db_path
        self.otlp_http_address = ""
        self.writer: Writer | None = None
        self.ingest: OtlpIngest | None = None
        # Set when the commit pipeline died: health is NOT_SERVING and the
        # process should exit non-zero so that a supervisor restarts it.
        self.failed = asyncio.Event()
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> RecorderServer:
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()

    async def _start(self) -> None:
        config = self.config
        book = PriceBook(load_overrides(config.prices) if config.prices else ())
        listen = normalize_target(config.listen)
        tls = tls_files(config.tls_cert, config.tls_key, config.tls_client_ca)
        check_transport(listen, tls, config.insecure)
        credentials = None if tls is None else server_credentials(tls)
        db_path = resolve_database(config.db_path, create=config.create_db_dir)
        # The address first: a second server is refused before it touches a database.
        socket_claim = self._claim_address(listen)
        if (warning := open_listener_warning(listen, tls, config.token)) is not None:
            log.warning("%s", warning)
        self._claim_database(db_path)
        store = await WriteStore.open(db_path, config.synchronous)
        self._stack.push_async_callback(store.close)
        checkpointer = Checkpointer(db_path)
        await checkpointer.start()
        self._stack.push_async_callback(checkpointer.stop)
        writer = Writer(store, config.options, abandon_after_s=config.abandon_after_s)
        writer.checkpointer = checkpointer
        await writer.start()
        self._stack.push_async_callback(writer.stop)
        self.writer = writer
        pool = ReadPool(db_path, config.read_connections)
        await pool.open()
        self._stack.push_async_callback(pool.close)
        if config.otlp_endpoint is not None:
            exporter = OtlpExporter(Reads(pool, book), config.otlp_endpoint)
            await exporter.start()
            self._stack.push_async_callback(exporter.stop)
            writer.listeners.append(exporter.on_commit)
            self._stack.callback(writer.listeners.remove, exporter.on_commit)
        ingest = OtlpIngest(writer, db_path, config.limits, config.otlp_orphan_wait_s)
        await ingest.start()
        self._stack.push_async_callback(ingest.stop)
        self.ingest = ingest
        servicer = RecorderServicer(writer, Reads(pool, book), config.limits)
        await self._serve(servicer, listen, socket_claim, credentials)
        if config.otlp_http is not None:
            await self._serve_otlp_http(ingest, tls)

    async def _serve_otlp_http(self, ingest: OtlpIngest, tls: TlsFiles | None) -> None:
        """OTLP/HTTP beside the gRPC listener: same token, same TLS identity."""
        assert self.config.otlp_http is not None
        check_transport(self.config.otlp_http, tls, self.config.insecure)
        host, _, port = self.config.otlp_http.rpartition(":")
        app = receiver.http_app(ingest, self.config.token, self.config.limits.max_request_bytes)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        self._stack.push_async_callback(runner.cleanup)
        context = None
        if tls is not None:
            ca = str(tls.client_ca) if tls.client_ca else None
            context = receiver.ssl_context(str(tls.cert), str(tls.key), ca)
        site = web.TCPSite(runner, host.strip("[]") or "127.0.0.1", int(port), ssl_context=context)
        await site.start()
        bound = runner.addresses[0]
        self.otlp_http_address = f"{host or '127.0.0.1'}:{bound[1]}"
        log.info("OTLP/HTTP traces on %s/v1/traces", self.otlp_http_address)

    def _claim_database(self, db_path: Path) -> None:
        """Its directory made (0700), the file locked (released last but the address)."""
        make_private_dirs(db_path.parent)
        claim = claim_database(db_path)
        self._stack.callback(claim.release)
        self.db_path = db_path
        if loose := loose_files(db_path):
            names = " ".join(str(path) for path in loose)
            log.warning("%s can be read by other users: chmod 600 %s", names, names)

    def _claim_address(self, listen: str) -> SocketClaim | None:
        """Hold a socket path (released last), or check that a port or abstract name is free."""
        if listen.startswith("unix:"):
            path = Path(listen.removeprefix("unix://").removeprefix("unix:"))
            socket_claim = claim_socket(path)
            self._stack.callback(socket_claim.release)
            return socket_claim
        if listen.startswith("unix-abstract:"):
            check_abstract_free(listen.removeprefix("unix-abstract:"), listen)
        else:
            check_port_free(*split_port(listen), listen)
        return None

    def _grpc_server(self) -> grpc.aio.Server:
        config = self.config
        interceptors: list[grpc.aio.ServerInterceptor[Any, Any]] = [DecodeGuard()]
        if config.token is not None:
            interceptors.insert(0, TokenInterceptor(config.token, OPEN_SERVICES))
        # First: refused calls name the version too.
        interceptors.insert(0, ServerVersionHeader())
        return grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", config.limits.max_request_bytes),
                ("grpc.max_send_message_length", MAX_RESPONSE_BYTES),
                # One owner per port: never share it with another process.
                ("grpc.so_reuseport", 0),
            ],
        )

    async def _serve(
        self,
        servicer: RecorderServicer,
        listen: str,
        socket_claim: SocketClaim | None,
        credentials: grpc.ServerCredentials | None,
    ) -> None:
        server = self._grpc_server()
        add_to_server(servicer, server)
        assert self.ingest is not None
        receiver.add_to_server(receiver.TraceServicer(self.ingest), server)
        health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, receiver.SERVICE_NAME, *OPEN_SERVICES), server
        )
        bind = listen if socket_claim is None else f"unix://{socket_claim.bind_path}"
        try:
            if credentials is None:
                port = server.add_insecure_port(bind)
            else:
                port = server.add_secure_port(bind, credentials)
        except RuntimeError:
            raise StartupError(f"cannot listen on {listen}") from None
        await server.start()

        async def stop() -> None:
            await health_servicer.enter_graceful_shutdown()
            await servicer.stop_streams()
            await server.stop(self.config.shutdown_grace_s)

        self._stack.push_async_callback(stop)
        if socket_claim is not None:
            socket_claim.publish()
            self.address = f"unix://{socket_claim.path}"
        elif listen.startswith("unix-abstract:"):
            self.address = listen
        else:
            self.address = f"{listen.rsplit(':', 1)[0]}:{port}"
        for name in ("", SERVICE_NAME, receiver.SERVICE_NAME):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        assert self.writer is not None
        watch = asyncio.create_task(self._watch(self.writer.pipeline.died, health_servicer))
        self._stack.callback(watch.cancel)
        log.debug("listening on %s (database %s)", self.address, self.db_path)

    async def _watch(self, died: asyncio.Event, health_servicer: Any) -> None:
        """A dead commit pipeline makes the sidecar NOT_SERVING and `failed`."""
        await died.wait()
        for name in ("", SERVICE_NAME):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.failed.set()
