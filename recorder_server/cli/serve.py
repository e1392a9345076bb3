"""`agent-recorder serve`: run the sidecar until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from recorder_client.defaults import default_db_path, default_target
from recorder_server.cli.common import Commands, add_command
from recorder_server.recording import RecordingOptions
from recorder_server.server import DatabaseInUse, RecorderServer, ServerConfig


def register(commands: Commands) -> None:
    serve = add_command(
        commands,
        "serve",
        "run the recording sidecar until Ctrl-C or SIGTERM",
        "agent-recorder serve --db ./run.db --listen 127.0.0.1:50551",
        run,
    )
    serve.add_argument(
        "--db", type=Path, default=None, help=f"SQLite file (default {default_db_path()})"
    )
    serve.add_argument(
        "--listen",
        default=None,
        help="unix:///path/to.sock or host:port (default: the owner-only socket)",
    )
    serve.add_argument(
        "--include-streaming-events", action="store_true", help="store MessageUpdate deltas"
    )
    serve.add_argument(
        "--capture-turn-requests", action="store_true", help="keep TurnRequest payloads on turns"
    )
    serve.add_argument(
        "--synchronous",
        choices=("normal", "full"),
        default="normal",
        help="normal survives a crash of the process; full also survives power loss",
    )
    serve.add_argument(
        "--otlp-endpoint",
        metavar="ADDRESS",
        help="send finished loops as OTLP/gRPC spans to this collector (host:port is "
        "plaintext, https://host:port uses TLS; OTEL_EXPORTER_OTLP_* variables apply)",
    )


def config_from(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(
        db_path=args.db or default_db_path(),
        listen=args.listen or default_target(),
        options=RecordingOptions(
            include_streaming_events=args.include_streaming_events,
            capture_turn_requests=args.capture_turn_requests,
        ),
        synchronous=args.synchronous.upper(),
        otlp_endpoint=args.otlp_endpoint,
    )


async def run(args: argparse.Namespace) -> int:
    config = config_from(args)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with RecorderServer(config) as server:
            print(
                f"agent-recorder listening on {server.address} (database {config.db_path})",
                flush=True,
            )
            await stop.wait()
            print("agent-recorder: stopping (draining writes)", flush=True)
    except DatabaseInUse as exc:
        print(f"agent-recorder: {exc}", file=sys.stderr)
        return 1
    return 0
