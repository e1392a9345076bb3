"""`agent-recorder ui`: serve the read-only web view of recorded sessions."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from recorder_client.client import RecorderClient
from recorder_server.cli.common import Commands, add_command, add_target
from recorder_server.security import is_loopback_host

DEFAULT_HTTP = "127.0.0.1:8765"


def register(commands: Commands) -> None:
    ui = add_command(
        commands,
        "ui",
        "serve a live, read-only web view of the recorded sessions (loopback only)",
        "agent-recorder ui --http 127.0.0.1:8765   (then open the printed URL)",
        run,
    )
    add_target(ui)
    ui.add_argument(
        "--http",
        default=DEFAULT_HTTP,
        help=f"HOST:PORT to serve on (default {DEFAULT_HTTP}; port 0 picks a free one)",
    )
    ui.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a non-loopback --http address (anyone who reaches it reads every session)",
    )


def split_http(address: str) -> tuple[str, int]:
    """HOST:PORT, or [IPv6]:PORT, into its parts."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--http {address!r} is not HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def client_factory(args: argparse.Namespace) -> RecorderClient:
    """The sidecar connection the view reads through; token and transport settings go here.

    RecorderClient.connect picks up $AGENT_RECORDER_TOKEN itself.
    """
    return RecorderClient.connect(args.target)


async def run(args: argparse.Namespace) -> int:
    try:
        host, port = split_http(args.http)
    except ValueError as exc:
        print(f"agent-recorder ui: {exc}", file=sys.stderr)
        return 2
    if not is_loopback_host(host) and not args.allow_remote:
        print(
            f"agent-recorder ui: {host} is not a loopback address; "
            "pass --allow-remote to serve the recordings beyond this machine",
            file=sys.stderr,
        )
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        from recorder_server.ui.app import start_ui  # aiohttp: loaded only for `ui`

        ui = await start_ui(
            lambda: client_factory(args), host, port, allow_remote=args.allow_remote
        )
    except OSError as exc:
        print(f"agent-recorder ui: cannot listen on {args.http}: {exc.strerror}", file=sys.stderr)
        return 1
    try:
        print(
            f"agent-recorder web view at {ui.url} (reading {args.target or 'the default sidecar'})",
            flush=True,
        )
        await stop.wait()
    finally:
        await ui.stop()
    return 0
