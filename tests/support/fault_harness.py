"""The kill -9 scenario, shared by tests/test_faults.py and scripts/soak.py (not a test).

A real sidecar process (`python -m recorder_server.cli serve`) takes the streams of
several client processes (support/fault_worker.py); at seeded random points of their
progress it is killed with SIGKILL and restarted on the same file and socket. The
clients reconnect and re-send what was not acknowledged. Afterwards the database
file is opened read-only and compared with what the clients emitted, event by
event: what the plan below says each client emits is deterministic, so the check
needs nothing from the clients but their word that flush() succeeded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sqlite3
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from agent_recorder.v1 import events_pb2, types_pb2

from support.events import (
    agent_end,
    agent_start,
    assistant,
    config,
    continuation,
    message_end,
    message_start,
    message_update,
    progress,
    tool_end,
    tool_result,
    tool_start,
    turn_end,
    turn_start,
    usage,
    user,
)

# The worker runs as `python -m support.fault_worker` with tests/ on its path.
TESTS_DIR = Path(__file__).resolve().parents[1]
TOOLS = ("read_file", "bash", "edit_file", "grep")
STARTUP_TIMEOUT_S = 30.0
KINDS: dict[Callable[..., events_pb2.AgentEvent], str] = {
    agent_start: "agent_start",
    agent_end: "agent_end",
    turn_start: "turn_start",
    turn_end: "turn_end",
    message_start: "message_start",
    message_update: "message_update",
    message_end: "message_end",
    tool_start: "tool_execution_start",
    tool_end: "tool_execution_end",
    progress: "progress_message",
}


@dataclass(frozen=True)
class Planned:
    """One event a client emits: what the store must hold, and how to build it."""

    loop_id: str
    kind: str
    make: partial[events_pb2.AgentEvent]


class _Planner:
    """Deterministic loops shaped like a coding agent's, until `count` events exist."""

    def __init__(self, client: int, count: int, seed: int) -> None:
        self.rng = random.Random(f"{seed}/{client}")
        self.seed = seed
        self.client = client
        self.count = count
        self.out: list[Planned] = []
        self.clock = 0.0

    def add(self, loop_id: str, make: partial[events_pb2.AgentEvent]) -> None:
        """The kind comes from the builder, so planning builds no event."""
        self.out.append(Planned(loop_id, KINDS[make.func], make))

    def at(self) -> float:
        self.clock += self.rng.uniform(0.001, 0.5)
        return self.clock

    def text(self, words: int) -> str:
        return " ".join(self.rng.choice(TOOLS) for _ in range(words))

    def plan(self) -> list[Planned]:
        session_no = 0
        while len(self.out) < self.count:
            session = f"{self.seed}-c{self.client}-s{session_no}"
            for loop_no in range(self.rng.randint(1, 3)):
                kind = continuation("initial" if loop_no == 0 else "default")
                self.loop(session, f"{session}.main.{loop_no}", None, kind, turns=(1, 6))
            session_no += 1
        return self.out

    def loop(
        self,
        session: str,
        loop_id: str,
        parent: str | None,
        kind: types_pb2.ContinuationKind,
        turns: tuple[int, int],
    ) -> None:
        at = self.at()
        meta = {"client": self.client, "task": self.text(3)}
        self.add(
            loop_id,
            partial(
                agent_start,
                session,
                loop_id,
                parent,
                kind=kind,
                config=config(),
                metadata=meta,
                at=at,
            ),
        )
        messages: list[types_pb2.AgentMessage] = []
        prompt = user(self.text(12), at=at)
        messages.append(prompt)
        for index in range(self.rng.randint(*turns)):
            self.turn(session, loop_id, index, prompt if index == 0 else None, messages)
        spent = usage(len(messages) * 100, len(messages) * 20)
        end_at = self.at()
        self.add(loop_id, partial(agent_end, loop_id, messages, use=spent, at=end_at))

    def turn(
        self,
        session: str,
        loop_id: str,
        index: int,
        prompt: types_pb2.AgentMessage | None,
        messages: list[types_pb2.AgentMessage],
    ) -> None:
        at = self.at()
        self.add(loop_id, partial(turn_start, loop_id, index, at=at))
        if prompt is not None:
            self.add(loop_id, partial(message_end, loop_id, prompt))
        calls = [
            (f"{loop_id}/t{index}/c{n}", self.rng.choice(TOOLS), {"path": self.text(2)})
            for n in range(self.rng.choice((0, 1, 1, 2, 3)))
        ]
        answer = assistant(self.text(40), use=usage(900, 120), tool_calls=calls, at=self.at())
        self.add(loop_id, partial(message_start, loop_id, assistant(at=at)))
        for _ in range(self.rng.randint(0, 4)):
            delta = self.text(5)
            self.add(loop_id, partial(message_update, loop_id, answer, delta))
        self.add(loop_id, partial(message_end, loop_id, answer))
        messages.append(answer)
        results = [self.tool(session, loop_id, *call) for call in calls]
        messages.extend(results)
        spent = usage(900, 120)
        self.add(
            loop_id, partial(turn_end, loop_id, answer, use=spent, tool_results=results, at=at)
        )

    def tool(
        self, session: str, loop_id: str, call_id: str, name: str, args: dict[str, str]
    ) -> types_pb2.AgentMessage:
        self.add(loop_id, partial(tool_start, loop_id, call_id, name, args))
        for step in range(self.rng.randint(0, 3)):
            line = f"{step}: {self.text(8)}"
            self.add(loop_id, partial(progress, loop_id, call_id, name, line))
        child: str | None = None
        if self.rng.random() < 0.1:
            # A sub-agent: in the caller's session, or in a session of its own.
            own = self.rng.random() < 0.4
            child_session = f"{call_id.replace('/', '.')}.sub" if own else session
            child = f"{call_id.replace('/', '.')}.sub.0"
            self.loop(child_session, child, loop_id, continuation(), turns=(1, 2))
        output = self.text(30)
        self.add(
            loop_id, partial(tool_end, loop_id, call_id, name, text=output, child_loop_id=child)
        )
        result = tool_result(call_id, name, output, at=self.at())
        self.add(loop_id, partial(message_end, loop_id, result))
        return result


def plan(client: int, count: int, seed: int) -> list[Planned]:
    """What client number `client` emits: whole loops, at least `count` events."""
    return _Planner(client, count, seed).plan()


def expected_store(clients: int, count: int, seed: int) -> dict[str, list[str]]:
    """Per loop, the kinds of its events in sequence order, for every client."""
    loops: dict[str, list[str]] = {}
    for client in range(clients):
        for item in plan(client, count, seed):
            loops.setdefault(item.loop_id, []).append(item.kind)
    return loops


# -- checking the file ---------------------------------------------------------------------


@dataclass
class Verdict:
    emitted: int
    stored: int
    missing: int
    doubled: int
    integrity: str
    # Loops whose stored events differ from the plan other than by missing/extra ones.
    wrong: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.doubled or self.wrong) and self.integrity == "ok"

    def line(self) -> str:
        return (
            f"emitted {self.emitted} stored {self.stored} missing {self.missing}"
            f" doubled {self.doubled} integrity {self.integrity} wrong loops {len(self.wrong)}"
        )


def check_store(db_path: Path, expected: dict[str, list[str]]) -> Verdict:
    """Compare the file, opened read-only, with the plan: loop by loop, sequence by sequence."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        integrity = "; ".join(row[0] for row in conn.execute("PRAGMA integrity_check"))
        stored: dict[str, dict[int, str]] = {}
        rows = 0
        for loop_id, sequence, kind in conn.execute("SELECT loop_id, sequence, kind FROM events"):
            stored.setdefault(loop_id, {})[sequence] = kind
            rows += 1
    finally:
        conn.close()
    # Rows sharing a (loop_id, sequence), should the unique index ever fail.
    doubled = rows - sum(len(have) for have in stored.values())
    missing = 0
    wrong = []
    for loop_id in expected.keys() | stored.keys():
        want = expected.get(loop_id, [])
        have = stored.get(loop_id, {})
        missing += sum(1 for seq in range(len(want)) if seq not in have)
        # Otherwise an event stored twice sits under a later sequence, past the plan's end.
        doubled += sum(1 for seq in have if not 0 <= seq < len(want))
        if any(have[seq] != kind for seq, kind in enumerate(want) if seq in have):
            wrong.append(loop_id)
    emitted = sum(len(kinds) for kinds in expected.values())
    return Verdict(emitted, rows, missing, doubled, integrity, sorted(wrong))


# -- processes -------------------------------------------------------------------------------


def worker_env() -> dict[str, str]:
    """This environment with tests/ first on PYTHONPATH, so `support` imports in the worker."""
    paths = [str(TESTS_DIR), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


class ServerProcess:
    """`agent-recorder serve` as a child process that can be killed and restarted."""

    def __init__(self, db_path: Path, socket_path: Path, log_path: Path, *flags: str) -> None:
        self.db_path = db_path
        self.socket_path = socket_path
        self.log_path = log_path
        self.flags = flags
        self.process: asyncio.subprocess.Process | None = None
        self.starts = 0

    @property
    def target(self) -> str:
        return f"unix://{self.socket_path}"

    async def start(self) -> None:
        """Start and wait for its "listening on" line."""
        assert self.process is None, "already running"
        with self.log_path.open("ab") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "recorder_server.cli",
                "serve",
                "--db",
                str(self.db_path),
                "--listen",
                self.target,
                "--include-streaming-events",
                *self.flags,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
            )
        self.process = process
        assert process.stdout is not None
        async with asyncio.timeout(STARTUP_TIMEOUT_S):
            while b"listening on" not in (line := await process.stdout.readline()):
                if not line:
                    raise RuntimeError(f"server exited at start; see {self.log_path}")
        self.starts += 1

    async def kill(self) -> None:
        """SIGKILL: no drain, no checkpoint, no unlock but the kernel's."""
        if self.process is not None:
            process, self.process = self.process, None
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGKILL)
            await process.wait()


@dataclass
class ClientReport:
    """What a worker says on its last stdout line."""

    client: int
    emitted: int
    acknowledged: int
    resent: int
    loops: dict[str, int]


@dataclass
class Run:
    reports: list[ClientReport]
    # The acknowledged-event total each kill -9 came at.
    kill_points: list[int]
    # What the run's clients emitted, for check_store.
    expected: dict[str, list[str]]
    db_path: Path


class _Workers:
    """The client processes and the sum of the acknowledgements they report."""

    def __init__(self) -> None:
        self.acked: Counter[int] = Counter()
        self.changed = asyncio.Event()
        self.processes: list[asyncio.subprocess.Process] = []
        self.readers: list[asyncio.Task[ClientReport]] = []

    async def start(self, target: str, clients: int, count: int, seed: int) -> None:
        for client in range(clients):
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "support.fault_worker",
                "--target",
                target,
                "--client",
                str(client),
                "--events",
                str(count),
                "--seed",
                str(seed),
                stdout=asyncio.subprocess.PIPE,
                env=worker_env(),
            )
            self.processes.append(process)
            self.readers.append(asyncio.create_task(self._read(client, process)))

    async def _read(self, client: int, process: asyncio.subprocess.Process) -> ClientReport:
        assert process.stdout is not None
        last = b""
        while line := await process.stdout.readline():
            if line.startswith(b"acknowledged "):
                self.acked[client] = int(line.split()[1])
                self.changed.set()
            else:
                last = line
        code = await process.wait()
        if code != 0:
            raise RuntimeError(f"client {client} exited with {code}")
        data = json.loads(last)
        return ClientReport(
            client, data["emitted"], data["acknowledged"], data["resent"], data["loops"]
        )

    async def until_acknowledged(self, total: int) -> None:
        """Wait for reports (a real signal), failing fast if a client died first."""
        while sum(self.acked.values()) < total:
            self.changed.clear()
            waiter = asyncio.create_task(self.changed.wait())
            await asyncio.wait([waiter, *self.readers], return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            for reader in self.readers:
                if reader.done() and reader.exception() is not None:
                    raise RuntimeError("a client failed") from reader.exception()
            if all(reader.done() for reader in self.readers):
                return

    async def finish(self) -> list[ClientReport]:
        return list(await asyncio.gather(*self.readers))

    async def kill(self) -> None:
        for process in self.processes:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        for reader in self.readers:
            reader.cancel()
        await asyncio.gather(*self.readers, return_exceptions=True)


def kill_points(total: int, kills: int, seed: int) -> list[int]:
    """Acknowledged-event totals at which the server dies, spread over the run."""
    rng = random.Random(f"kills/{seed}")
    return sorted(int(total * rng.uniform(0.05, 0.85)) for _ in range(kills))


async def run_scenario(
    workdir: Path,
    *,
    clients: int,
    events: int,
    kills: int,
    seed: int,
    timeout: float = 600.0,  # noqa: ASYNC109
    say: Callable[[str], None] = lambda _: None,
) -> Run:
    """Stream, kill -9 at each kill point and restart, finish, then kill once more.

    The file is workdir/recorder.db; a file left by an earlier run (another seed)
    is reused, so a soak grows one database.
    """
    server = ServerProcess(workdir / "recorder.db", workdir / "r.sock", workdir / "server.log")
    expected = expected_store(clients, events, seed)
    total = sum(len(kinds) for kinds in expected.values())
    workers = _Workers()
    killed: list[int] = []
    try:
        async with asyncio.timeout(timeout):
            await server.start()
            await workers.start(server.target, clients, events, seed)
            for point in kill_points(total, kills, seed):
                await workers.until_acknowledged(point)
                await server.kill()
                killed.append(sum(workers.acked.values()))
                say(f"kill -9 #{len(killed)} at {killed[-1]} of {total} events acknowledged")
                await server.start()
            reports = await workers.finish()
            # Everything was flushed: a last kill must not lose any of it.
            await server.kill()
    finally:
        await workers.kill()
        await server.kill()
    return Run(reports, killed, expected, server.db_path)


def events_per_client(default: int) -> int:
    """Events per client of the suite's kill -9 test; AGENT_RECORDER_FAULT_EVENTS overrides."""
    return int(os.environ.get("AGENT_RECORDER_FAULT_EVENTS", default))


def plan_counts(client: int, count: int, seed: int) -> dict[str, int]:
    """Events per loop that client number `client` emits."""
    return dict(Counter(item.loop_id for item in plan(client, count, seed)))
