"""The sidecar's lifecycle: lock, store, writer, readers, gRPC server.

Built from async context managers on one AsyncExitStack so teardown runs in the
reverse order: the gRPC server stops accepting first, then the writer drains
its queue and commits, then the store closes and the file lock is released.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import grpc
from agent_recorder.v1 import recorder_service_pb2 as api
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from recorder_client.defaults import (
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
from recorder_server.price_file import load_overrides
from recorder_server.reads import ReadPool, Reads
from recorder_server.recording import RecordingOptions
from recorder_server.security import (
    TlsFiles,
    TokenInterceptor,
    check_transport,
    server_credentials,
    tls_files,
)
from recorder_server.service import RecorderServicer, add_to_server
from recorder_server.storage import WriteStore
from recorder_server.validation import Limits
from recorder_server.writer import Writer

log = logging.getLogger(__name__)
SERVICE_NAME = api.DESCRIPTOR.services_by_name["RecorderService"].full_name
# Probes and generic tools reach these without the token: liveness and the public schema.
OPEN_SERVICES = (
    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
    reflection.SERVICE_NAME,
)


class DatabaseInUse(RuntimeError):
    """Another server process owns the database file (rule 14)."""


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
    # OTLP ingest: "host:port" for OTLP/HTTP POST /v1/traces (None: gRPC only), and
    # how long a loop whose own span has not arrived stays open (seconds).
    otlp_http: str | None = None
    otlp_orphan_wait_s: float = 60.0
    # Open loops of a writer gone this long are aborted (0: never).
    abandon_after_s: int = 300
    # The user's price overrides (price_file.py), read and checked at start.
    prices: Path | None = None


def _lock_database(db_path: Path) -> IO[str]:
    """Hold an exclusive lock beside the database for the life of the process."""
    lock_path = db_path.with_name(db_path.name + ".lock")
    handle = open(lock_path, "a+")  # noqa: SIM115 - held open until shutdown
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise DatabaseInUse(
            f"database {db_path} is in use by another agent-recorder server (pid {holder})"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def _prepare_unix_socket(address: str) -> Path:
    """The socket's directory is private to the owner; a stale socket is removed."""
    path = Path(address.removeprefix("unix://").removeprefix("unix:"))
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.exists():
        path.unlink()
    return path


class RecorderServer:
    """`async with RecorderServer(config) as server:` runs the sidecar."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.address = ""
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
        tls = tls_files(config.tls_cert, config.tls_key, config.tls_client_ca)
        check_transport(normalize_target(config.listen), tls, config.insecure)
        credentials = None if tls is None else server_credentials(tls)
        config.db_path.parent.mkdir(parents=True, exist_ok=True)
        lock = _lock_database(config.db_path)
        self._stack.callback(lock.close)
        store = await WriteStore.open(config.db_path, config.synchronous)
        self._stack.push_async_callback(store.close)
        checkpointer = Checkpointer(config.db_path)
        await checkpointer.start()
        self._stack.push_async_callback(checkpointer.stop)
        writer = Writer(store, config.options, abandon_after_s=config.abandon_after_s)
        writer.checkpointer = checkpointer
        await writer.start()
        self._stack.push_async_callback(writer.stop)
        self.writer = writer
        pool = ReadPool(config.db_path, config.read_connections)
        await pool.open()
        self._stack.push_async_callback(pool.close)
        if config.otlp_endpoint is not None:
            exporter = OtlpExporter(Reads(pool, book), config.otlp_endpoint)
            await exporter.start()
            self._stack.push_async_callback(exporter.stop)
            writer.listeners.append(exporter.on_commit)
            self._stack.callback(writer.listeners.remove, exporter.on_commit)
        ingest = OtlpIngest(writer, config.db_path, config.limits, config.otlp_orphan_wait_s)
        await ingest.start()
        self._stack.push_async_callback(ingest.stop)
        self.ingest = ingest
        await self._serve(RecorderServicer(writer, Reads(pool, book), config.limits), credentials)
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

    async def _serve(
        self, servicer: RecorderServicer, credentials: grpc.ServerCredentials | None
    ) -> None:
        config = self.config
        max_bytes = config.limits.max_request_bytes
        interceptors: list[grpc.aio.ServerInterceptor[Any, Any]] = [DecodeGuard()]
        if config.token is not None:
            interceptors.insert(0, TokenInterceptor(config.token, OPEN_SERVICES))
        server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", max_bytes),
                ("grpc.max_send_message_length", MAX_RESPONSE_BYTES),
            ],
        )
        add_to_server(servicer, server)
        assert self.ingest is not None
        receiver.add_to_server(receiver.TraceServicer(self.ingest), server)
        health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, receiver.SERVICE_NAME, *OPEN_SERVICES), server
        )
        listen = normalize_target(config.listen)
        socket_path = _prepare_unix_socket(listen) if listen.startswith("unix:") else None
        if credentials is None:
            port = server.add_insecure_port(listen)
        else:
            port = server.add_secure_port(listen, credentials)
        if socket_path is not None:
            self.address = f"unix://{socket_path}"
        else:
            self.address = f"{listen.rsplit(':', 1)[0]}:{port}"
        await server.start()
        if socket_path is not None:
            socket_path.chmod(0o600)
        for name in ("", SERVICE_NAME, receiver.SERVICE_NAME):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        assert self.writer is not None
        watch = asyncio.create_task(self._watch(self.writer.pipeline.died, health_servicer))
        self._stack.callback(watch.cancel)

        async def stop() -> None:
            await health_servicer.enter_graceful_shutdown()
            await server.stop(self.config.shutdown_grace_s)

        self._stack.push_async_callback(stop)
        log.info("agent-recorder listening on %s (database %s)", self.address, self.config.db_path)

    async def _watch(self, died: asyncio.Event, health_servicer: Any) -> None:
        """A dead commit pipeline makes the sidecar NOT_SERVING and `failed`."""
        await died.wait()
        for name in ("", SERVICE_NAME):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.failed.set()
