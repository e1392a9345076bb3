"""The `agent-recorder` command: run the sidecar and look at what it recorded."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any
from pathlib import Path

from agent_recorder.v1 import session_pb2
from rich.console import Console

from recorder_client.client import RecorderClient
from recorder_client.defaults import default_db_path, default_target
from recorder_client.errors import RecorderRpcError
from recorder_server.recording import RecordingOptions
from recorder_server.server import DatabaseInUse, RecorderServer, ServerConfig
from recorder_server.tree_view import session_tree, sessions_table

console = Console()

EXAMPLES = {
    "serve": "agent-recorder serve --db ./run.db --listen 127.0.0.1:50551",
    "ls": "agent-recorder ls --agent my-agent --limit 20",
    "show": "agent-recorder show 5f0c2b…  (add --json for the protobuf JSON)",
}


def _add_target(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target",
        default=None,
        help=f"sidecar address (default: $AGENT_RECORDER_TARGET or {default_target()})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agent-recorder", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name, help=help_text, description=help_text, epilog=f"example: {EXAMPLES[name]}"
        )

    serve = command("serve", "run the recording sidecar until Ctrl-C or SIGTERM")
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
    ls = command("ls", "list sessions, newest first")
    _add_target(ls)
    ls.add_argument("--agent", default="", help="only this agent's sessions")
    ls.add_argument("--limit", type=int, default=50, help="at most this many")
    show = command("show", "show a session's loop tree with turns and usage")
    _add_target(show)
    show.add_argument("session_id")
    show.add_argument("--json", action="store_true", help="print the session as protobuf JSON")
    return parser


async def _serve(args: argparse.Namespace) -> int:
    config = ServerConfig(
        db_path=args.db or default_db_path(),
        listen=args.listen or default_target(),
        options=RecordingOptions(
            include_streaming_events=args.include_streaming_events,
            capture_turn_requests=args.capture_turn_requests,
        ),
        synchronous=args.synchronous.upper(),
    )
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


async def _ls(args: argparse.Namespace) -> int:
    async with RecorderClient.connect(args.target) as client:
        page = await client.list_sessions(agent_id=args.agent, page_size=args.limit)
    console.print(sessions_table(page.sessions))
    return 0


async def _show(args: argparse.Namespace) -> int:
    async with RecorderClient.connect(args.target) as client:
        session = await client.get_session(args.session_id, skip_events=not args.json)
        if args.json:
            from google.protobuf import json_format

            print(json_format.MessageToJson(session))
            return 0
        children: dict[str, session_pb2.Session | None] = {}
        pending = [r.child_session_id for loop in session.loops for r in loop.child_loop_refs]
        while pending:
            sid = pending.pop()
            if sid in children:
                continue
            try:
                child = await client.get_session(sid, skip_events=True)
            except RecorderRpcError:
                child = None
            children[sid] = child
            if child is not None:
                pending += [
                    r.child_session_id for loop in child.loops for r in loop.child_loop_refs
                ]
    console.print(session_tree(session, children.get))
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, int]]] = {
    "serve": _serve,
    "ls": _ls,
    "show": _show,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return asyncio.run(COMMANDS[args.command](args))
    except RecorderRpcError as exc:
        print(f"agent-recorder {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
