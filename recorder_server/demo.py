"""`make demo`: start the sidecar, record a realistic agent run, print the stored tree.

The run exercises what agent-recorder is for: an origin loop whose tool spawns a
sub-agent in its own session, a continuation, a rerun, a parallel evaluation of
three configurations with a winner, a rejected loop and one left open that Flush
aborts. Everything goes through the client library, as an agent would send it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from agent_recorder.v1 import types_pb2
from rich.console import Console

from recorder_client import events as ev
from recorder_client.client import RecorderClient
from recorder_client.defaults import default_target
from recorder_client.delivery import EventSender
from recorder_server.cli.sessions import sub_sessions
from recorder_server.tree_view import session_tree

AGENT = "research-agent"
MODEL, PROVIDER = "claude-sonnet-4", "anthropic"
SUB_MODEL = "gpt-4o-mini"


class Clock:
    """Event times one second apart, so the stored timeline reads like a real run."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC) - timedelta(minutes=5)

    def tick(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


@contextmanager
def sidecar() -> Iterator[str]:
    """Run `agent-recorder serve` with its defaults; reuse one that already runs."""
    process = subprocess.Popen(
        [sys.executable, "-m", "recorder_server.cli", "serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stderr is not None
    line = process.stdout.readline()
    if "listening on" not in line:
        error = process.stderr.read()
        process.wait()
        if "in use by another agent-recorder server" in error or "is served by pid" in error:
            print("a sidecar already serves the default address; recording through it")
            yield default_target()
            return
        raise SystemExit(f"the sidecar did not start:\n{line}{error}")
    print(line.strip())
    try:
        yield line.split("listening on ", 1)[1].split(" ", 1)[0]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        print(f"sidecar stopped (exit code {process.returncode})")


def run_turn(
    sender: EventSender,
    clock: Clock,
    loop_id: str,
    index: int,
    prompt: str,
    answer: str,
    tools: list[tuple[str, str, dict[str, object], str]] = [],  # noqa: B006 - never mutated
) -> None:
    """One turn: the prompt, the answer with its tool calls, the tools' results."""
    sender.emit(ev.turn_start(loop_id, index, at=clock.tick()))
    sender.emit(ev.message_end(loop_id, ev.user_message(prompt, at=clock.tick())))
    calls = [(call_id, name, args) for call_id, name, args, _ in tools]
    tokens = ev.usage(input=120 + 40 * index, output=60, cache_read=30 * index)
    answer_message = ev.assistant_message(
        answer, model=MODEL, provider=PROVIDER, tool_calls=calls, tokens=tokens, at=clock.tick()
    )
    results = []
    for call_id, name, args, output in tools:
        sender.emit(ev.tool_start(loop_id, call_id, name, args))
        sender.emit(ev.tool_end(loop_id, call_id, name, output))
        results.append(ev.tool_result_message(call_id, name, output, at=clock.tick()))
    sender.emit(
        ev.turn_end(loop_id, answer_message, tool_results=results, tokens=tokens, at=clock.tick())
    )


def start_loop(
    sender: EventSender,
    clock: Clock,
    session: str,
    loop_id: str,
    parent: str,
    kind: str = "default",
    tag: str = "",
) -> None:
    """AgentStart of a loop that continues `parent` in the same session."""
    sender.emit(
        ev.agent_start(
            agent_id=AGENT,
            session_id=session,
            loop_id=loop_id,
            parent_loop_id=parent,
            continuation=ev.continuation_kind(kind, tag),
            model=MODEL,
            provider=PROVIDER,
            at=clock.tick(),
        )
    )


def simple_loop(
    sender: EventSender,
    clock: Clock,
    session: str,
    loop_id: str,
    parent: str,
    kind: str,
    tag: str = "",
    prompt: str = "go on",
) -> None:
    start_loop(sender, clock, session, loop_id, parent, kind, tag)
    run_turn(sender, clock, loop_id, 0, prompt, f"done with {loop_id.rsplit('.', 1)[1]}")
    sender.emit(ev.agent_end(loop_id, tokens=ev.usage(input=200, output=80), at=clock.tick()))


def record_origin(sender: EventSender, clock: Clock, session: str, sub_session: str) -> str:
    """The first loop: a search tool, then a tool that delegates to a sub-agent."""
    loop = f"{session}.{PROVIDER}-{MODEL}.0"
    sender.emit(
        ev.agent_start(
            agent_id=AGENT,
            session_id=session,
            loop_id=loop,
            model=MODEL,
            provider=PROVIDER,
            metadata={"task": "survey SQLite WAL tuning"},
            at=clock.tick(),
        )
    )
    run_turn(
        sender,
        clock,
        loop,
        0,
        "Survey WAL tuning advice.",
        "Searching first.",
        [
            ("call-1", "web_search", {"query": "sqlite wal synchronous normal"}, "3 results"),
        ],
    )
    sender.emit(ev.turn_start(loop, 1, at=clock.tick()))
    sender.emit(ev.tool_start(loop, "call-2", "delegate", {"task": "summarize results"}))
    sub_loop = f"{sub_session}.openai-{SUB_MODEL}.0"
    sender.emit(
        ev.agent_start(
            agent_id="summarizer",
            session_id=sub_session,
            loop_id=sub_loop,
            parent_loop_id=loop,
            model=SUB_MODEL,
            provider="openai",
            at=clock.tick(),
        )
    )
    sender.emit(ev.turn_start(sub_loop, 0, types_pb2.TURN_TRIGGER_SUB_AGENT, at=clock.tick()))
    summary = ev.assistant_message(
        "WAL + NORMAL is the usual choice.", model=SUB_MODEL, provider="openai"
    )
    sender.emit(
        ev.turn_end(sub_loop, summary, tokens=ev.usage(input=300, output=50), at=clock.tick())
    )
    sender.emit(
        ev.agent_end(sub_loop, messages=[summary], tokens=ev.usage(300, 50), at=clock.tick())
    )
    sender.emit(ev.tool_end(loop, "call-2", "delegate", "summary ready", child_loop_id=sub_loop))
    answer = ev.assistant_message(
        "Use WAL with synchronous=NORMAL.",
        model=MODEL,
        provider=PROVIDER,
        tool_calls=[("call-2", "delegate", {"task": "summarize results"})],
    )
    sender.emit(ev.turn_end(loop, answer, tokens=ev.usage(400, 90), at=clock.tick()))
    sender.emit(ev.agent_end(loop, messages=[answer], tokens=ev.usage(900, 260), at=clock.tick()))
    return loop


def record_parallel(sender: EventSender, clock: Clock, session: str, parent: str) -> str:
    """Three configurations race on the same prompt; the second wins."""
    branches = [
        f"{session}.{cfg}.{n}" for n, cfg in ((3, "cfg-fast"), (4, "cfg-deep"), (5, "cfg-cheap"))
    ]
    sender.emit(ev.parallel_start(session, branches, at=clock.tick()))
    for branch in branches:
        simple_loop(sender, clock, session, branch, parent, "branch", branch.split(".")[1])
    sender.emit(ev.parallel_end(session, branches[1], 1, tokens=ev.usage(50, 10), at=clock.tick()))
    return branches[1]


async def record(target: str) -> tuple[str, str]:
    session, sub_session = uuid.uuid4().hex[:12], uuid.uuid4().hex[:12]
    clock = Clock()
    async with RecorderClient.connect(target) as client:
        sender = client.sender()
        origin = record_origin(sender, clock, session, sub_session)
        simple_loop(sender, clock, session, f"{session}.{PROVIDER}-{MODEL}.1", origin, "default")
        rerun = f"{session}.{PROVIDER}-{MODEL}.2"
        simple_loop(sender, clock, session, rerun, origin, "rerun", "retry-1")
        winner = record_parallel(sender, clock, session, rerun)
        rejected = f"{session}.{PROVIDER}-{MODEL}.6"
        start_loop(sender, clock, session, rejected, winner)
        sender.emit(ev.input_rejected(rejected, "prompt asks for credentials"))
        sender.emit(ev.agent_end(rejected, rejection="input rejected by policy", at=clock.tick()))
        open_loop = f"{session}.{PROVIDER}-{MODEL}.7"
        start_loop(sender, clock, session, open_loop, winner)
        sender.emit(ev.turn_start(open_loop, 0, at=clock.tick()))
        await sender.flush(timeout=30)
        flushed = await client.flush_sessions(session_id=session)
        await client.checkpoint(session_id=sub_session)
        print(f"Flush aborted {list(flushed.aborted_loop_ids)}")
        await sender.close()
    return session, sub_session


async def show(target: str, session_id: str) -> None:
    async with RecorderClient.connect(target) as client:
        priced = await client.get_session_and_cost(session_id, skip_events=True)
        children = await sub_sessions(client, priced[0])
    Console().print(session_tree(priced, children.get))


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    with sidecar() as target:
        session, _ = asyncio.run(record(target))
        asyncio.run(show(target, session))
        print(f"\nsee it again with: .venv/bin/agent-recorder show {session}")


if __name__ == "__main__":
    main()
