"""What every command shares: how a subcommand is declared and finds the sidecar."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeAlias

from recorder_client.defaults import default_target

Handler: TypeAlias = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]
if TYPE_CHECKING:
    Commands: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]
else:  # not subscriptable at run time on Python 3.11
    Commands = argparse._SubParsersAction


def add_command(
    commands: Commands, name: str, help_text: str, example: str, handler: Handler
) -> argparse.ArgumentParser:
    """A subcommand whose --help ends with an example."""
    parser: argparse.ArgumentParser = commands.add_parser(
        name,
        help=help_text,
        description=help_text,
        epilog=f"example: {example}",
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
