"""`flush`, `checkpoint`, `delete` and `prune`: end, finalize, remove and expire sessions.

Housekeeping that leaves live agents alone: `checkpoint` finalizes only sessions
with no open loop, and `prune --idle-for` takes idle, never-finalized ephemeral
sessions by checkpointing them first (so one with an open loop is never taken).
Only `flush` aborts open loops.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime

from agent_recorder.v1 import session_pb2
from google.protobuf import json_format

from recorder_client.client import RecorderClient
from recorder_server.cli.common import Commands, add_command, add_target, parse_when

EPHEMERAL = session_pb2.SESSION_SCOPE_EPHEMERAL


def register(commands: Commands) -> None:
    flush = add_command(
        commands,
        "flush",
        "abort every open loop (of one session, or all) and finalize the sessions",
        "agent-recorder flush --session 5f0c2a9e",
        flush_sessions,
    )
    add_target(flush)
    flush.add_argument("--session", default=None, help="only this session (default: all)")
    flush.add_argument("--json", action="store_true", help="print the FlushResponse as JSON")
    checkpoint = add_command(
        commands,
        "checkpoint",
        "finalize sessions that have no open loop (aborts nothing: live agents go on)",
        "agent-recorder checkpoint   (or: agent-recorder checkpoint --session 5f0c2a9e)",
        checkpoint_sessions,
    )
    add_target(checkpoint)
    checkpoint.add_argument("--session", default=None, help="only this session (default: all)")
    checkpoint.add_argument("--json", action="store_true", help="print the finalized ids as JSON")
    delete = add_command(
        commands,
        "delete",
        "delete sessions with their loops, turns and events",
        "agent-recorder delete 5f0c2a9e 4e1b0f33",
        delete_sessions,
    )
    add_target(delete)
    delete.add_argument("session_ids", nargs="+", metavar="SESSION_ID")
    _register_prune(commands)


def _register_prune(commands: Commands) -> None:
    prune = add_command(
        commands,
        "prune",
        "delete ephemeral sessions: finalized ones idle since --older-than, and with "
        "--idle-for also never-finalized ones idle that long (never one with an open loop)",
        "agent-recorder prune --older-than 30d --idle-for 7d --dry-run",
        prune_sessions,
    )
    add_target(prune)
    prune.add_argument(
        "--older-than",
        type=parse_when,
        metavar="WHEN",
        help="finalized sessions last active before this: a duration like 30d or 12h, "
        "or an ISO date",
    )
    prune.add_argument(
        "--idle-for",
        type=parse_when,
        metavar="DURATION",
        help="also sessions idle this long (e.g. 7d), finalized or not: those without an "
        "open loop are checkpointed, then deleted",
    )
    prune.add_argument("--dry-run", action="store_true", help="only list what would go")
    prune.add_argument("--json", action="store_true", help="print the session ids as JSON")


async def flush_sessions(args: argparse.Namespace) -> int:
    async with RecorderClient.connect(args.target) as client:
        done = await client.flush_sessions(args.session)
    if args.json:
        print(json_format.MessageToJson(done, always_print_fields_with_no_presence=True))
        return 0
    print(
        f"aborted {len(done.aborted_loop_ids)} open loop(s), "
        f"finalized {len(done.finalized_session_ids)} session(s)"
    )
    for loop_id in done.aborted_loop_ids:
        print(f"  aborted {loop_id}")
    return 0


async def checkpoint_sessions(args: argparse.Namespace) -> int:
    async with RecorderClient.connect(args.target) as client:
        finalized = await client.checkpoint(args.session)
    if args.json:
        print(json.dumps({"finalized_session_ids": finalized}, indent=2))
        return 0
    print(f"finalized {len(finalized)} session(s)")
    for sid in finalized:
        print(f"  {sid}")
    return 0


async def delete_sessions(args: argparse.Namespace) -> int:
    async with RecorderClient.connect(args.target) as client:
        for sid in args.session_ids:
            await client.delete_session(sid)
            print(f"deleted {sid}")
    return 0


async def idle_unfinalized(client: RecorderClient, cutoff: datetime) -> list[str]:
    """Ephemeral sessions never finalized, last active before `cutoff`, no loop open."""
    found = []
    async for s in client.iter_sessions(scope=EPHEMERAL):
        last = s.last_active_at.ToDatetime(tzinfo=UTC)
        open_loops = s.loops.running + s.loops.pending
        if not s.HasField("finalized_at") and last < cutoff and not open_loops:
            found.append(s.session_id)
    return found


async def prune_sessions(args: argparse.Namespace) -> int:
    if args.older_than is None and args.idle_for is None:
        print("agent-recorder prune: give --older-than, --idle-for, or both", file=sys.stderr)
        return 2
    ids: list[str] = []
    async with RecorderClient.connect(args.target) as client:
        if args.older_than is not None:
            ids += await client.prune_sessions(args.older_than, dry_run=args.dry_run)
        if args.idle_for is not None:
            idle = await idle_unfinalized(client, args.idle_for)
            if args.dry_run:
                ids += idle
            else:
                for sid in idle:  # the server finalizes it only if still no loop is open
                    await client.checkpoint(sid)
            ids += await client.prune_sessions(args.idle_for, dry_run=args.dry_run)
    ids = sorted(set(ids))
    if args.json:
        print(json.dumps({"session_ids": ids, "dry_run": args.dry_run}, indent=2))
        return 0
    verb = "would delete" if args.dry_run else "deleted"
    print(f"{verb} {len(ids)} session(s)")
    for sid in ids:
        print(f"  {sid}")
    return 0
