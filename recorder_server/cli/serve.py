"""`agent-recorder serve`: run the sidecar until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from recorder_common import defaults
from recorder_common.defaults import default_db_path, default_target
from recorder_server import tuning
from recorder_server.cli.common import Commands, add_command
from recorder_server.price_file import PRICES_ENV, PriceFileError
from recorder_server.recording import RecordingOptions
from recorder_server.security import SecurityConfigError, check_token
from recorder_server.validation import Limits

if TYPE_CHECKING:
    from recorder_server.server import ServerConfig


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
        "--create",
        action="store_true",
        help="make the --db directory if it does not exist (without it, only a directory "
        "under the default data directory is made)",
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
    serve.add_argument(
        "--otlp-http",
        metavar="HOST:PORT",
        help="also receive OTLP/HTTP spans (POST /v1/traces) on this address; "
        "OTLP/gRPC TraceService/Export is always served on --listen",
    )
    serve.add_argument(
        "--otlp-orphan-wait",
        type=_positive_float,
        default=60.0,
        metavar="SECONDS",
        help="close an OTLP loop whose own span has not arrived after this long "
        "without new spans (default %(default)s)",
    )
    serve.add_argument(
        "--abandon-after",
        metavar="SECONDS",
        type=_non_negative_int,
        default=300,
        help="abort a writer's open loops this long after its stream ended without it "
        "coming back (0: never; default %(default)s)",
    )
    serve.add_argument(
        "--prices",
        type=Path,
        metavar="FILE",
        help="YAML or TOML file of your own prices per provider and model; they win over "
        f"genai-prices' (default: ${PRICES_ENV} when set)",
    )
    _add_security_flags(serve)
    _add_limit_flags(serve)


def _add_security_flags(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("--tls-cert", type=Path, help="PEM certificate chain: serve TLS")
    serve.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    serve.add_argument(
        "--tls-client-ca", type=Path, help="PEM CA: require client certificates it signed (mTLS)"
    )
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="allow plaintext on a non-loopback address (refused without it)",
    )
    serve.add_argument(
        "--token-file",
        type=Path,
        help=f"file holding the bearer token every call must carry "
        f"(default: ${defaults.TOKEN_ENV}, else the file ${defaults.TOKEN_FILE_ENV} names)",
    )


def _add_limit_flags(serve: argparse.ArgumentParser) -> None:
    limits = Limits()
    for name, help_text in (
        ("max_request_bytes", "largest request message; larger ones get RESOURCE_EXHAUSTED"),
        ("max_events_per_batch", "events in one Record batch or Append"),
        ("max_id_length", "characters in a session, loop or agent id"),
        ("max_value_depth", "nesting of free-form JSON values"),
    ):
        serve.add_argument(
            f"--{name.replace('_', '-')}",
            type=_positive_int,
            default=getattr(limits, name),
            help=f"{help_text} (default %(default)s)",
        )


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, not {value}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def config_from(args: argparse.Namespace) -> ServerConfig:
    from recorder_server.server import ServerConfig  # the server stack: only for `serve`

    return ServerConfig(
        db_path=args.db or default_db_path(),
        listen=args.listen or default_target(),
        options=RecordingOptions(
            include_streaming_events=args.include_streaming_events,
            capture_turn_requests=args.capture_turn_requests,
        ),
        synchronous=args.synchronous.upper(),
        otlp_endpoint=args.otlp_endpoint,
        otlp_http=args.otlp_http,
        otlp_orphan_wait_s=args.otlp_orphan_wait,
        abandon_after_s=args.abandon_after,
        limits=Limits(
            max_request_bytes=args.max_request_bytes,
            max_events_per_batch=args.max_events_per_batch,
            max_id_length=args.max_id_length,
            max_value_depth=args.max_value_depth,
        ),
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        insecure=args.insecure,
        token=_token(args.token_file),
        prices=_prices_file(args.prices),
        create_db_dir=args.create,
    )


def _prices_file(flag: Path | None) -> Path | None:
    """--prices, else $AGENT_RECORDER_PRICES; the file is read and checked at start."""
    if flag is not None:
        return flag
    env = os.environ.get(PRICES_ENV, "").strip()
    return Path(env) if env else None


def _token(token_file: Path | None) -> str | None:
    """The --token-file, else what clients would read from their environment."""
    try:
        token = defaults.read_token_file(token_file) if token_file else defaults.default_token()
    except OSError as exc:
        raise SecurityConfigError(f"cannot read the token file: {exc}") from exc
    return None if token is None else check_token(token)


async def run(args: argparse.Namespace) -> int:
    from recorder_server.ownership import StartupError
    from recorder_server.server import RecorderServer

    tuning.before_start()
    # Everything this process creates is the owner's alone (the files it makes are
    # also chmod-ed explicitly; this covers the socket between bind and chmod).
    os.umask(0o077)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        config = config_from(args)
        async with RecorderServer(config) as server:
            tuning.after_start()
            print(
                f"agent-recorder listening on {server.address} (database {server.db_path})",
                flush=True,
            )
            failed = asyncio.create_task(server.failed.wait())
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait([failed, stopped], return_when=asyncio.FIRST_COMPLETED)
            failed.cancel()
            stopped.cancel()
            if server.failed.is_set():
                print(
                    "agent-recorder: the commit pipeline stopped; exiting so that a "
                    "supervisor restarts the sidecar",
                    file=sys.stderr,
                    flush=True,
                )
                return 1
            print("agent-recorder: stopping (draining writes)", flush=True)
    except (StartupError, SecurityConfigError, PriceFileError) as exc:
        print(f"agent-recorder: {exc}", file=sys.stderr)
        return 2
    return 0
