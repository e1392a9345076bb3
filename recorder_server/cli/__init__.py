"""The `agent-recorder` command: run the sidecar and look at what it recorded.

Each command group lives in its own module with a `register(commands)` function
that adds its subcommands; a subcommand stores its coroutine as `handler`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from recorder_client.errors import RecorderRpcError, describe_cause, why_unreachable
from recorder_common.defaults import default_target
from recorder_common.version import __version__
from recorder_server.cli import maintenance, refusals, serve, service, sessions, transfer, ui
from recorder_server.cli.common import EXIT_BROKEN_PIPE, EXIT_CODES, Handler
from recorder_server.cli.lookup import NotResolved

GROUPS = (serve, sessions, refusals, transfer, maintenance, ui, service)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agent-recorder",
        description="Record what AI agents do: a local gRPC sidecar and its tools.",
        epilog=EXIT_CODES,
    )
    parser.add_argument("--version", action="version", version=f"agent-recorder {__version__}")
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
    except (RecorderRpcError, NotResolved) as exc:
        if why_unreachable(exc) is None:
            print(f"agent-recorder {args.command}: {exc}", file=sys.stderr)
            return 2
        target = getattr(args, "target", None) or default_target()
        print(f"agent-recorder {args.command}: {describe_cause(exc, target)}", file=sys.stderr)
        return 1  # failed, not refused: nothing answered
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, as a killed writer would.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
