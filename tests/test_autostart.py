"""`RecorderClient.connect(autostart=True)`: a real sidecar started on demand on the
default socket, which outlives the client process that started it."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from agent_recorder.v1 import session_pb2
from support.processes import run_python

from recorder_client.autostart import socket_answers
from recorder_client.client import RecorderClient

pytestmark = pytest.mark.slow

AGENT = """
import asyncio
from recorder_client import events as ev
from recorder_client.client import RecorderClient

async def main() -> None:
    async with RecorderClient.connect(autostart=True) as client:
        sender = client.sender()
        sid = "SESSION_ID"
        sender.emit(ev.agent_start(agent_id="auto", session_id=sid, loop_id=sid + ".c.0"))
        sender.emit(ev.agent_end(sid + ".c.0"))
        await sender.flush(timeout=10)
    print("recorded")

asyncio.run(main())
"""
SYNC_AGENT = """
from recorder_client import SyncRecorder
from recorder_client import events as ev

with SyncRecorder(autostart=True) as recorder:
    sid = "SESSION_ID"
    recorder.emit(ev.agent_start(agent_id="auto", session_id=sid, loop_id=sid + ".c.0"))
    recorder.emit(ev.agent_end(sid + ".c.0"))
    recorder.flush(timeout=10)
print("recorded")
"""
STARTED = re.compile(
    r"nothing answered unix://(\S+), so started the sidecar there \(pid (\d+), .*its log: (\S+)"
)


@pytest.fixture
async def home(short_tmp: Path) -> AsyncIterator[dict[str, str]]:
    """An environment whose default socket and database are in a temp dir; a sidecar
    started there is stopped at the end (by the pid its database lock holds)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_RECORDER_")}
    env |= {"XDG_RUNTIME_DIR": str(short_tmp / "run"), "XDG_DATA_HOME": str(short_tmp / "data")}
    yield env
    lock = short_tmp / "data" / "agent-recorder" / "recorder.db.lock"
    pid = lock.read_text().strip() if lock.exists() else ""
    if pid and alive(int(pid)):
        await asyncio.to_thread(stop, int(pid))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def stop(pid: int) -> None:
    """SIGTERM, then wait (bounded) until the process is gone."""
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while alive(pid):
        assert time.monotonic() < deadline, f"sidecar {pid} did not stop"
        time.sleep(0.05)


async def run_agent(code: str, session_id: str, env: dict[str, str]) -> tuple[int, str, str]:
    return await run_python(code.replace("SESSION_ID", session_id), env)


async def test_autostart_starts_a_sidecar_that_outlives_the_client(
    home: dict[str, str], short_tmp: Path
) -> None:
    socket = short_tmp / "run" / "agent-recorder" / "recorder.sock"
    assert not socket_answers(socket)
    code, out, err = await run_agent(AGENT, "auto-1", home)
    assert (code, out) == (0, "recorded\n"), err
    match = STARTED.search(err)
    assert match is not None, err
    assert Path(match.group(1)) == socket
    assert Path(match.group(3)) == short_tmp / "data" / "agent-recorder" / "sidecar.log"
    pid = int(match.group(2))
    assert alive(pid) and socket_answers(socket)
    lock = short_tmp / "data" / "agent-recorder" / "recorder.db.lock"
    assert lock.read_text().strip() == str(pid)
    assert "listening on" in await asyncio.to_thread(Path(match.group(3)).read_text)

    code, out, err = await run_agent(AGENT, "auto-2", home)
    assert (code, out, STARTED.search(err)) == (0, "recorded\n", None), err
    async with RecorderClient.connect(f"unix://{socket}") as client:
        for sid in ("auto-1", "auto-2"):
            session = await client.get_session(sid)
            assert [loop.status for loop in session.loops] == [session_pb2.LOOP_STATUS_COMPLETED]
    await asyncio.to_thread(stop, pid)
    assert not socket_answers(socket)

    code, out, err = await run_agent(SYNC_AGENT, "auto-3", home)
    assert (code, out) == (0, "recorded\n"), err
    match = STARTED.search(err)
    assert match is not None and int(match.group(2)) != pid, err
    async with RecorderClient.connect(f"unix://{socket}") as client:
        assert (await client.get_session("auto-3")).loops[0].loop_id == "auto-3.c.0"
        assert (await client.get_session("auto-1")).session_id == "auto-1"  # same database


async def test_without_autostart_nothing_is_started(home: dict[str, str], short_tmp: Path) -> None:
    code, _, err = await run_agent(AGENT.replace("autostart=True", "autostart=False"), "x", home)
    assert code != 0
    assert STARTED.search(err) is None
    assert not (short_tmp / "data" / "agent-recorder" / "recorder.db.lock").exists()
