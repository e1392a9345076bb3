"""What every command shares: how a subcommand is declared and finds the sidecar."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeAlias

from recorder_client.defaults import default_target

Handler: TypeAlias = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]
if TYPE_CHECKING:
    Commands: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]
else:  # not subscriptable at run time on Python 3.11
    Commands = argparse._SubParsersAction


# Every command's --help ends with these; a command whose codes mean more says so.
EXIT_CODES = (
    "exit status: 0 ok, 1 failed, 2 refused by the sidecar or bad usage "
    "(141: the reader of the output went away, as with `| head`)"
)
# 128 + SIGPIPE, what a shell reports for a writer killed by a closed pipe.
EXIT_BROKEN_PIPE = 141


def add_command(
    commands: Commands,
    name: str,
    help_text: str,
    example: str,
    handler: Handler,
    exit_codes: str = EXIT_CODES,
) -> argparse.ArgumentParser:
    """A subcommand whose --help ends with an example and its exit codes."""
    parser: argparse.ArgumentParser = commands.add_parser(
        name,
        help=help_text,
        description=help_text,
        epilog=f"example: {example}\n\n{exit_codes}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(handler=handler)
    return parser


def add_target(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target",
        default=None,
        help=f"sidecar address (default: $AGENT_RECORDER_TARGET or {default_target()})",
    )


_DURATION = re.compile(r"(\d+)([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_when(text: str) -> datetime:
    """An ISO date/time (UTC unless it says otherwise) or a duration ago like 7d, 12h, 1h30m.

    Used as an argparse `type`, so a bad value is reported as a usage error.
    """
    parts = _DURATION.findall(text)
    if parts and "".join(n + u for n, u in parts) == text:
        seconds = sum(int(n) * _UNIT_SECONDS[u] for n, u in parts)
        return datetime.now(UTC) - timedelta(seconds=seconds)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither an ISO date/time nor a duration like 7d or 12h"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
