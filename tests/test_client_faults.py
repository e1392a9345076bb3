"""The client's promises with real processes on real sockets, each bounded in time.

An agent process whose sidecar is down exits normally with one warning; `ingest`
to nothing listening says so; a loop is continued by a second `ingest` process.
Every process is waited for at most PROCESS_TIMEOUT seconds: a hang fails the test.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import textwrap
from pathlib import Path

import pytest
from agent_recorder.v1 import events_pb2, session_pb2
from support.events import agent_end, agent_start, turn_start
from support.recorder import RunningRecorder

from recorder_client import RecorderClient
from recorder_client.phi_json import event_to_json

pytestmark = pytest.mark.timeout(120)

PROCESS_TIMEOUT = 60.0
TESTS = Path(__file__).parent


def closed_port() -> str:
    """An address on 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"127.0.0.1:{port}"


async def run(
    *args: str, stdin: bytes = b"", env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """Run a Python process to its end; (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(TESTS), **(env or {})},
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), PROCESS_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def jsonl(events: list[events_pb2.AgentEvent]) -> bytes:
    return "".join(json.dumps(event_to_json(e)) + "\n" for e in events).encode()


ASYNC_AGENT = textwrap.dedent(
    """
    import asyncio, logging, sys
    from support.events import agent_start, turn_start
    from recorder_client import RecorderClient

    async def main() -> None:
        async with RecorderClient.connect(sys.argv[1]) as client:
            sender = client.sender()
            sender.emit(agent_start("a1", "a1.c.0"))
            for i in range(4):
                sender.emit(turn_start("a1.c.0", i))
        print("agent finished")

    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    asyncio.run(main())
    """
)

SYNC_AGENT = textwrap.dedent(
    """
    import logging, sys
    from support.events import agent_start
    from recorder_client import SyncRecorder

    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    with SyncRecorder(sys.argv[1]) as recording:
        recording.emit(agent_start("a2", "a2.c.0"))
    print("agent finished")
    """
)


@pytest.mark.parametrize(
    ("agent", "events"), [(ASYNC_AGENT, 5), (SYNC_AGENT, 1)], ids=["async", "sync"]
)
async def test_an_agent_whose_sidecar_is_down_finishes_with_one_warning(
    agent: str, events: int
) -> None:
    target = closed_port()
    code, out, err = await run("-c", agent, target)
    assert (code, out) == (0, "agent finished\n")
    assert err.splitlines() == [
        f"WARNING recorder_client: agent-recorder: not every event was stored:"
        f" {events} event(s) given up undelivered:"
        f" sidecar at {target} unreachable: connection refused"
    ]


async def test_ingest_to_nothing_listening_says_so() -> None:
    target = closed_port()
    lines = jsonl([agent_start("i1", "i1.c.0"), turn_start("i1.c.0", 0)])
    code, out, err = await run(
        "-m", "recorder_server.cli", "ingest", "--target", target, "-", stdin=lines
    )
    assert (code, out) == (1, "")
    assert err == (
        f"agent-recorder ingest: sidecar at {target} unreachable: connection refused"
        " (no Record stream within 5 s)\n"
    )


async def test_ingest_to_a_missing_socket_says_so(short_tmp: Path) -> None:
    target = f"unix://{short_tmp}/absent.sock"
    code, out, err = await run(
        "-m",
        "recorder_server.cli",
        "ingest",
        "--target",
        target,
        "-",
        stdin=jsonl([agent_start("i2", "i2.c.0")]),
    )
    assert (code, out) == (1, "")
    assert err == (
        f"agent-recorder ingest: sidecar at {target} unreachable: no socket at that path"
        " (no Record stream within 5 s)\n"
    )


@pytest.mark.parametrize(
    "command",
    [["ls"], ["show", "abcd1234"], ["refused"], ["usage"], ["export", "abcd1234"], ["checkpoint"]],
    ids=lambda command: command[0],
)
async def test_every_command_says_when_nothing_answers(command: list[str], short_tmp: Path) -> None:
    """Not a raw gRPC status, and exit 1 (failed), not 2 (refused by the sidecar)."""
    for target, why in [
        (closed_port(), "connection refused"),
        (f"unix://{short_tmp}/absent.sock", "no socket at that path"),
    ]:
        code, out, err = await run(
            "-m", "recorder_server.cli", *command, env={"AGENT_RECORDER_TARGET": target}
        )
        assert (code, out) == (1, "")
        assert err == f"agent-recorder {command[0]}: sidecar at {target} unreachable: {why}\n"


async def test_a_loop_is_continued_by_a_later_ingest_process(recorder: RunningRecorder) -> None:
    """A log piped in two chunks: the second process numbers on from where the loop stands."""
    loop = "p1.c.0"
    first = [agent_start("p1", loop)] + [turn_start(loop, i) for i in range(3)]
    second = [turn_start(loop, i) for i in range(3, 5)] + [agent_end(loop)]
    ingest = ("-m", "recorder_server.cli", "ingest", "--target", recorder.target, "-")
    assert await run(*ingest, stdin=jsonl(first)) == (
        0,
        "ingested 4 events (0 streaming deltas not stored)\n",
        "",
    )
    assert await run(*ingest, stdin=jsonl(second)) == (
        0,
        "ingested 3 events (0 streaming deltas not stored)\n",
        "",
    )
    async with RecorderClient.connect(recorder.target) as client:
        stored = await client.get_loop(loop)
    assert [e.sequence for e in stored.events] == list(range(7))
    assert [e.event for e in stored.events] == first + second
    assert stored.status == session_pb2.LOOP_STATUS_COMPLETED
