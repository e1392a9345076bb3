"""`ls` and `show`: look at recorded sessions."""

from __future__ import annotations

import argparse

from agent_recorder.v1 import session_pb2
from google.protobuf import json_format
from rich.console import Console

from recorder_client.client import RecorderClient
from recorder_client.errors import RecorderRpcError
from recorder_server.cli.common import Commands, add_command, add_target
from recorder_server.tree_view import session_tree, sessions_table

console = Console()


def register(commands: Commands) -> None:
    ls = add_command(
        commands,
        "ls",
        "list sessions, newest first",
        "agent-recorder ls --agent my-agent --limit 20",
        list_sessions,
    )
    add_target(ls)
    ls.add_argument("--agent", default="", help="only this agent's sessions")
    ls.add_argument("--limit", type=int, default=50, help="at most this many")
    show = add_command(
        commands,
        "show",
        "show a session's loop tree with turns and usage",
        "agent-recorder show 5f0c2b1e9a7d  (add --json for the protobuf JSON)",
        show_session,
    )
    add_target(show)
    show.add_argument("session_id")
    show.add_argument("--json", action="store_true", help="print the session as protobuf JSON")


async def list_sessions(args: argparse.Namespace) -> int:
    async with RecorderClient.connect(args.target) as client:
        page = await client.list_sessions(agent_id=args.agent, page_size=args.limit)
    console.print(sessions_table(page.sessions))
    return 0


async def sub_sessions(
    client: RecorderClient, session: session_pb2.Session
) -> dict[str, session_pb2.Session | None]:
    """Every sub-agent session reachable through ChildLoopRefs, fetched once each."""
    found: dict[str, session_pb2.Session | None] = {}
    pending = [r.child_session_id for loop in session.loops for r in loop.child_loop_refs]
    while pending:
        sid = pending.pop()
        if sid in found:
            continue
        try:
            child: session_pb2.Session | None = await client.get_session(sid, skip_events=True)
        except RecorderRpcError:
            child = None
        found[sid] = child
        if child is not None:
            pending += [r.child_session_id for loop in child.loops for r in loop.child_loop_refs]
    return found


async def show_session(args: argparse.Namespace) -> int:
    async with RecorderClient.connect(args.target) as client:
        session = await client.get_session(args.session_id, skip_events=not args.json)
        if args.json:
            print(json_format.MessageToJson(session))
            return 0
        children = await sub_sessions(client, session)
    console.print(session_tree(session, children.get))
    return 0
