"""`flush`, `delete` and `prune`: end, remove and expire recorded sessions."""

from __future__ import annotations

import argparse

from recorder_client.client import RecorderClient
from recorder_server.cli.common import Commands, add_command, add_target, parse_when


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
    delete = add_command(
        commands,
        "delete",
        "delete sessions with their loops, turns and events",
        "agent-recorder delete 5f0c2a9e 4e1b0f33",
        delete_sessions,
    )
    add_target(delete)
    delete.add_argument("session_ids", nargs="+", metavar="SESSION_ID")
    prune = add_command(
        commands,
        "prune",
        "delete finalized ephemeral sessions idle for longer than a retention period",
        "agent-recorder prune --older-than 30d --dry-run",
        prune_sessions,
    )
    add_target(prune)
    prune.add_argument(
        "--older-than",
        type=parse_when,
        required=True,
        metavar="WHEN",
        help="a duration like 30d or 12h, or an ISO date (last activity before it)",
    )
    prune.add_argument("--dry-run", action="store_true", help="only list what would go")


async def flush_sessions(args: argparse.Namespace) -> int:
    async with RecorderClient.connect(args.target) as client:
        done = await client.flush_sessions(args.session)
    print(
        f"aborted {len(done.aborted_loop_ids)} open loop(s), "
        f"finalized {len(done.finalized_session_ids)} session(s)"
    )
    for loop_id in done.aborted_loop_ids:
        print(f"  aborted {loop_id}")
    return 0


async def delete_sessions(args: argparse.Namespace) -> int:
    async with RecorderClient.connect(args.target) as client:
        for sid in args.session_ids:
            await client.delete_session(sid)
            print(f"deleted {sid}")
    return 0


async def prune_sessions(args: argparse.Namespace) -> int:
    async with RecorderClient.connect(args.target) as client:
        ids = await client.prune_sessions(args.older_than, dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    print(f"{verb} {len(ids)} session(s)")
    for sid in ids:
        print(f"  {sid}")
    return 0
