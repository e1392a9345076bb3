"""`agent-recorder serve` as a real child process: started, read, stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import grpc
from agent_recorder.v1 import recorder_service_pb2 as api
from agent_recorder.v1 import recorder_service_pb2_grpc as api_grpc

from recorder_client import events as ev


def serve_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "recorder_server.cli", "serve", *args]


def run_serve(
    *args: str,
    env: Mapping[str, str] | None = None,
    preexec_fn: Callable[[], object] | None = None,
) -> subprocess.CompletedProcess[str]:
    """A serve expected to refuse: it exits by itself (bounded: 60 s)."""
    return subprocess.run(
        serve_command(*args),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=None if env is None else {**os.environ, **env},
        preexec_fn=preexec_fn,
    )


@dataclass
class Served:
    process: subprocess.Popen[str]
    address: str
    first_line: str
    out: str = ""
    err: str = ""

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        """Signal it, wait (bounded: 60 s) and keep what it printed."""
        if self.process.returncode is None:
            self.process.send_signal(sig)
        return self.wait()

    def wait(self) -> int:
        """Wait for it to exit (bounded: 60 s) and keep what it printed."""
        self.out, self.err = self.process.communicate(timeout=60)
        return self.process.returncode


@contextmanager
def serving(
    *args: str,
    env: Mapping[str, str] | None = None,
    preexec_fn: Callable[[], object] | None = None,
) -> Iterator[Served]:
    """A running serve, its address read from its "listening on" line; stopped at exit."""
    process = subprocess.Popen(
        serve_command(*args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=None if env is None else {**os.environ, **env},
        preexec_fn=preexec_fn,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if "listening on" not in line:
        process.kill()
        _, err = process.communicate(timeout=60)
        raise AssertionError(f"serve did not start: {line!r} {err!r}")
    served = Served(process, line.split("listening on ", 1)[1].split(" ", 1)[0], line)
    try:
        yield served
    finally:
        if process.returncode is None:
            served.stop()


def refusal(result: subprocess.CompletedProcess[str]) -> str:
    """The one line a refused serve prints; it exits 2."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert result.stdout == ""
    return lines[0]


async def append_one(target: str, session: str) -> list[int]:
    start = ev.agent_start(agent_id="a", session_id=session, loop_id=f"{session}.c.0")
    async with grpc.aio.insecure_channel(target) as channel:
        stub = api_grpc.RecorderServiceStub(channel)
        reply = await stub.Append(api.AppendRequest(events=[api.EventEnvelope(event=start)]))
    return list(reply.sequences)
