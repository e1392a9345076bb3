"""`ls`, `show`, `tail` and `usage`: look at recorded sessions."""

from __future__ import annotations

import argparse
import asyncio
import shlex

import grpc
from agent_recorder.v1 import recorder_service_pb2 as api
from agent_recorder.v1 import session_pb2
from google.protobuf import json_format
from rich.console import Console

from recorder_client.client import RecorderClient
from recorder_client.errors import RecorderRpcError
from recorder_server.cli.common import Commands, add_command, add_target, parse_when
from recorder_server.cli.lookup import Found, NotResolved, resolve
from recorder_server.tree_view import (
    SESSION_COLUMNS,
    Priced,
    event_line,
    refusals_table,
    session_row,
    session_tree,
    sessions_table,
    usage_table,
    with_totals,
)

console = Console()
GROUPINGS = {
    "agent": api.USAGE_GROUPING_AGENT,
    "model": api.USAGE_GROUPING_MODEL,
    "day": api.USAGE_GROUPING_DAY,
}
if not console.is_terminal:  # a pipe or file: lines as long as they are, never wrapped
    console = Console(width=100_000)
err = Console(stderr=True)
# How often tail looks again for a session not started yet, or a sidecar restarting.
RESUME_POLL_S = 0.5
SCOPES = {
    "ephemeral": session_pb2.SESSION_SCOPE_EPHEMERAL,
    "persistent": session_pb2.SESSION_SCOPE_PERSISTENT,
}


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
    ls.add_argument(
        "--since", type=parse_when, metavar="WHEN", help="active since: 7d, 12h or an ISO date"
    )
    ls.add_argument("--scope", choices=tuple(SCOPES), help="only sessions of this scope")
    ls.add_argument("--limit", type=int, default=50, help="sessions per page (at most 1000)")
    ls.add_argument("--page", default="", metavar="TOKEN", help="the page a previous ls named")
    ls.add_argument("--all", action="store_true", help="every page, not just the first")
    ls.add_argument(
        "--json", action="store_true", help="print a ListSessionsResponse as protobuf JSON"
    )
    show = add_command(
        commands,
        "show",
        "show a session's loop tree with turns and usage",
        "agent-recorder show 5f0c2b1e   (a session id, a unique prefix of one, or a loop id)",
        show_session,
    )
    add_target(show)
    show.add_argument("session_id", metavar="ID", help="session id, unique prefix, or loop id")
    show.add_argument("--json", action="store_true", help="print the session as protobuf JSON")
    tail = add_command(
        commands,
        "tail",
        "print a session's (or loop's) events as they are stored, like tail -f (Ctrl-C to "
        "stop); waits for a session not started yet and resumes after a sidecar restart",
        "agent-recorder tail 5f0c2a9e   (--no-follow: print what is stored and exit)",
        tail_session,
    )
    add_target(tail)
    tail.add_argument("session_id", metavar="ID", help="session id, unique prefix, or loop id")
    tail.add_argument(
        "--no-follow", dest="follow", action="store_false", help="stop after the stored events"
    )
    usage = add_command(
        commands,
        "usage",
        "tokens and cost by agent and model (or --by agent|model|day) over a time range",
        "agent-recorder usage --since 7d --by day",
        show_usage,
    )
    add_target(usage)
    usage.add_argument("--agent", default="", help="only this agent")
    usage.add_argument("--since", type=parse_when, metavar="WHEN", help="7d, 12h or an ISO date")
    usage.add_argument("--until", type=parse_when, metavar="WHEN", help="7d, 12h or an ISO date")
    usage.add_argument(
        "--by",
        choices=tuple(GROUPINGS),
        help="one row per agent, per model or per UTC day (default: per agent and model)",
    )
    usage.add_argument(
        "--json",
        action="store_true",
        help="print the rows as protobuf JSON (the table's totals)",
    )


async def list_sessions(args: argparse.Namespace) -> int:
    scope = SCOPES[args.scope] if args.scope else None
    async with RecorderClient.connect(args.target) as client:
        if args.all:
            page = api.ListSessionsResponse()
            async for s in client.iter_sessions(
                agent_id=args.agent, page_size=args.limit, scope=scope, since=args.since
            ):
                page.sessions.append(s)
        else:
            page = await client.list_sessions(
                agent_id=args.agent,
                page_size=args.limit,
                page_token=args.page,
                scope=scope,
                since=args.since,
            )
    if args.json:
        print(json_format.MessageToJson(page, always_print_fields_with_no_presence=True))
    elif not page.sessions:
        err.print("no sessions" + (" match these filters" if _filtered(args) else " recorded yet"))
    elif console.is_terminal:
        console.print(sessions_table(page.sessions))
    else:  # a pipe or file: whole ids, one tab-separated line each, nothing cut
        print("\t".join(SESSION_COLUMNS))
        for summary in page.sessions:
            print("\t".join(session_row(summary)))
    if page.next_page_token and not args.json:
        hint = f"more: {next_page_command(args, page.next_page_token)}"
        err.print(hint, style="dim", soft_wrap=True, markup=False)
    return 0


def _filtered(args: argparse.Namespace) -> bool:
    return bool(args.agent or args.scope or args.since or args.page)


def next_page_command(args: argparse.Namespace, token: str) -> str:
    """The ls that shows the next page: a token only continues the same filters."""
    words = ["agent-recorder", "ls"]
    if args.target:
        words += ["--target", args.target]
    if args.agent:
        words += ["--agent", args.agent]
    if args.scope:
        words += ["--scope", args.scope]
    if args.since:
        words += ["--since", args.since.isoformat()]
    words += ["--limit", str(args.limit), "--page", token]
    return shlex.join(words)


async def tail_session(args: argparse.Namespace) -> int:
    async with RecorderClient.connect(args.target) as client:
        found = await _wait_for(client, args.session_id, args.follow)
        session_id = None if found.loop_id else found.session_id
        cursor, gone = 0, False
        while True:
            try:
                async for item in client.stream_events(
                    session_id=session_id,
                    loop_id=found.loop_id,
                    after_cursor=cursor,
                    follow=args.follow,
                ):
                    console.print(event_line(item.loop_id, item.event), soft_wrap=True)
                    cursor, gone = item.cursor, False
                return 0
            except RecorderRpcError as exc:
                if not args.follow or exc.code != grpc.StatusCode.UNAVAILABLE:
                    raise
                if not gone:
                    err.print(
                        f"tail: the sidecar is gone ({exc.message}); resuming after "
                        f"cursor {cursor} when it is back",
                        style="dim",
                        markup=False,
                    )
                gone = True
                await asyncio.sleep(RESUME_POLL_S)


async def _wait_for(client: RecorderClient, given: str, follow: bool) -> Found:
    """What `given` names; with follow, waits for it to appear (or the sidecar to start)."""
    waiting = False
    while True:
        try:
            return await resolve(client, given)
        except NotResolved:
            if not follow:
                raise
        except RecorderRpcError as exc:
            if not follow or exc.code != grpc.StatusCode.UNAVAILABLE:
                raise
        if not waiting:
            err.print(f"tail: waiting for {given} to start (Ctrl-C to stop)", style="dim")
            waiting = True
        await asyncio.sleep(RESUME_POLL_S)


async def show_usage(args: argparse.Namespace) -> int:
    grouping = GROUPINGS[args.by] if args.by else api.USAGE_GROUPING_UNSPECIFIED
    async with RecorderClient.connect(args.target) as client:
        report = await client.get_usage_report(
            agent_id=args.agent, since=args.since, until=args.until, group_by=grouping
        )
    if args.json:
        answer = api.GetUsageResponse()
        answer.CopyFrom(report)
        del answer.rows[:]
        answer.rows.extend(with_totals(report.rows))
        print(json_format.MessageToJson(answer, always_print_fields_with_no_presence=True))
        return 0
    if not report.rows:
        err.print("no usage: no loop ended in this range")
        return 0
    span = f"{args.since:%Y-%m-%d %H:%M} .. " if args.since else "all time .. "
    span += f"{args.until:%Y-%m-%d %H:%M}" if args.until else "now"
    keys = (args.by,) if args.by else ("agent", "model")
    title = f"token usage and cost ({span}, UTC)"
    console.print(usage_table(report.rows, report.total_cost, title, keys))
    if not report.total_cost.priced:
        console.print(
            f"{report.total_cost.unpriced_calls} model call(s) have no price "
            f"({report.total_cost.unpriced_reason}); the amounts leave them out. "
            "Add them with `serve --prices FILE`.",
            style="red",
        )
    return 0


async def sub_sessions(
    client: RecorderClient, session: session_pb2.Session
) -> dict[str, Priced | None]:
    """Every sub-agent session reachable through ChildLoopRefs, with its cost, fetched once each."""
    found: dict[str, Priced | None] = {}
    pending = [r.child_session_id for loop in session.loops for r in loop.child_loop_refs]
    while pending:
        sid = pending.pop()
        if sid in found:
            continue
        try:
            child: Priced | None = await client.get_session_and_cost(sid, skip_events=True)
        except RecorderRpcError:
            child = None
        found[sid] = child
        if child is not None:
            pending += [r.child_session_id for loop in child[0].loops for r in loop.child_loop_refs]
    return found


async def show_session(args: argparse.Namespace) -> int:
    async with RecorderClient.connect(args.target) as client:
        found = await resolve(client, args.session_id)
        if found.loop_id is not None and args.json:
            print(json_format.MessageToJson(await client.get_loop(found.loop_id)))
            return 0
        session, cost = await client.get_session_and_cost(
            found.session_id, skip_events=not args.json
        )
        if args.json:
            print(json_format.MessageToJson(session))
            return 0
        if found.loop_id is not None:
            session = subtree(session, found.loop_id)
        children = await sub_sessions(client, session)
        refusals = [r async for r in client.iter_refusals(session.session_id)]
    console.print(session_tree((session, cost), children.get))
    if refusals:
        console.print(refusals_table(refusals))
    return 0


def subtree(session: session_pb2.Session, loop_id: str) -> session_pb2.Session:
    """The session with only `loop_id` and the loops descending from it."""
    kept = {loop_id}
    for loop in session.loops:  # a parent is stored before its children
        if loop.HasField("parent_loop_id") and loop.parent_loop_id in kept:
            kept.add(loop.loop_id)
    part = session_pb2.Session()
    part.CopyFrom(session)
    del part.loops[:]
    part.loops.extend(loop for loop in session.loops if loop.loop_id in kept)
    return part
