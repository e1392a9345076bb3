"""The `agent-recorder` command: run the sidecar and look at what it recorded.

Each command group lives in its own module with a `register(commands)` function
that adds its subcommands; a subcommand stores its coroutine as `handler`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from recorder_client.errors import RecorderRpcError
from recorder_server.cli import maintenance, refusals, serve, sessions, transfer, ui
from recorder_server.cli.common import Handler

GROUPS = (serve, sessions, refusals, transfer, maintenance, ui)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agent-recorder",
        description="Record what AI agents do: a local gRPC sidecar and its tools.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    handler: Handler = args.handler
    try:
        return asyncio.run(handler(args))
    except RecorderRpcError as exc:
        print(f"agent-recorder {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
