"""Server processes for the benchmark: the real sidecar, or the discarding sink.

Each runs as its own OS process on a Unix socket in the run's private temp dir,
as an agent would meet it, so client and server never share a GIL. Startup waits
for the socket to answer; teardown sends SIGTERM (the sidecar drains and
commits), then SIGKILL if it is still there after a grace period.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it if the benchmark itself dies."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class ServerFailed(RuntimeError):
    """A server process did not come up, or died; carries the tail of its log."""


@dataclass
class ServerProcess:
    proc: subprocess.Popen[bytes]
    socket: Path
    log: Path

    @property
    def target(self) -> str:
        return f"unix://{self.socket}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu_seconds(self) -> float:
        """User plus system CPU time the process has used so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise ServerFailed(f"server exited with {self.proc.returncode}: {self.tail()}")

    def tail(self, lines: int = 20) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.socket.exists():
            self.check_alive()
            if time.monotonic() > deadline:
                raise ServerFailed(f"no socket after {START_TIMEOUT_S} s: {self.tail()}")
            time.sleep(0.02)
        with grpc.insecure_channel(self.target) as channel:
            try:
                grpc.channel_ready_future(channel).result(timeout=START_TIMEOUT_S)
            except grpc.FutureTimeoutError:
                raise ServerFailed(f"socket does not answer: {self.tail()}") from None

    def _stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextmanager
def _run(argv: list[str], workdir: Path, name: str) -> Iterator[ServerProcess]:
    socket = workdir / f"{name}.sock"
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*argv, "--listen", f"unix://{socket}"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            preexec_fn=_die_with_parent,
        )
    server = ServerProcess(proc, socket, log)
    try:
        server._wait_ready()
        yield server
    finally:
        server._stop()


@contextmanager
def recorder(workdir: Path, name: str) -> Iterator[ServerProcess]:
    """`agent-recorder serve` on a fresh database in workdir."""
    db = workdir / f"{name}.db"
    argv = [sys.executable, "-m", "recorder_server.cli", "serve", "--db", str(db)]
    with _run(argv, workdir, name) as server:
        yield server


@contextmanager
def sink(workdir: Path, name: str) -> Iterator[ServerProcess]:
    """The discarding Record sink of bench/sink.py (the transport ceiling)."""
    with _run([sys.executable, "-m", "bench.sink"], workdir, name) as server:
        yield server
