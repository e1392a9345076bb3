"""`refused`: the events the sidecar refused, with why (DESIGN.md §Refusals)."""

from __future__ import annotations

import argparse
import json

from agent_recorder.v1 import session_pb2
from google.protobuf import json_format
from rich.console import Console

from recorder_client.client import RecorderClient
from recorder_server.cli.common import Commands, add_command, add_target
from recorder_server.cli.lookup import NotResolved, resolve
from recorder_server.refused import sent_event
from recorder_server.tree_view import refusals_table

console = Console()


def register(commands: Commands) -> None:
    refused = add_command(
        commands,
        "refused",
        "list refused events (of one session, or all) with the reason and what was sent",
        "agent-recorder refused 5f0c2b1e9a7d --json",
        list_refused,
    )
    add_target(refused)
    refused.add_argument(
        "session_id",
        nargs="?",
        help="only this session's refusals (its id, a unique prefix, or one of its loop ids)",
    )
    refused.add_argument(
        "--json", action="store_true", help="one JSON object per refused event, per line"
    )


async def list_refused(args: argparse.Namespace) -> int:
    async with RecorderClient.connect(args.target) as client:
        session_id, refusals = await _refusals(client, args.session_id)
    if args.json:
        for refusal in refusals:
            print(json.dumps(refusal_json(refusal), ensure_ascii=False))
        return 0
    if not refusals:
        where = f"session {session_id}" if session_id else "any session"
        print(f"no refused events in {where}")
        return 0
    console.print(refusals_table(refusals))
    return 0


async def _refusals(
    client: RecorderClient, given: str | None
) -> tuple[str | None, list[session_pb2.RefusedEvent]]:
    """The session `given` names (None: all) and its refusals."""
    if given is None:
        return None, [r async for r in client.iter_refusals(None)]
    try:
        session_id = (await resolve(client, given)).session_id
    except NotResolved:
        # A refused AgentStart names a session that was never recorded: its refusals
        # are logged under that id all the same.
        logged = [r async for r in client.iter_refusals(given)]
        if not logged:
            raise
        return given, logged
    return session_id, [r async for r in client.iter_refusals(session_id)]


def refusal_json(refusal: session_pb2.RefusedEvent) -> dict[str, object]:
    """The refusal as protobuf JSON, with the event sent decoded as far as it goes."""
    data: dict[str, object] = json_format.MessageToDict(refusal)
    if (sent := sent_event(refusal)) is not None:
        data["event"] = sent
    return data
