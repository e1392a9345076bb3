"""`ingest`, `export` and `import`: the seed runtime's JSON in and out of the sidecar.

The CLI is a client like any agent: ingest delivers through `EventSender` (so a
long ingest rides out sidecar restarts and is acknowledged only once stored), and
import sends whole session files through the ImportSession RPC.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import hashlib
import json
import os
import stat
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from agent_recorder.v1 import events_pb2, session_pb2
from google.protobuf import json_format
from rich.console import Console
from rich.progress import Progress

from recorder_client.client import RecorderClient
from recorder_client.delivery import DeliveryConfig, EventSender
from recorder_client.errors import (
    DeliveryError,
    RecorderRpcError,
    RejectedBatch,
    SidecarUnreachable,
)
from recorder_client.phi_json import (
    PhiJsonError,
    event_from_json,
    session_from_json,
    session_to_json,
)
from recorder_client.queries import event_loop_id
from recorder_server.cli.common import Commands, add_command, add_target
from recorder_server.cli.lookup import resolve

err = Console(stderr=True)
FORMATS = ("phi-json", "json")
# How long ingest waits for the sidecar to answer before saying it is unreachable.
READY_TIMEOUT = 5.0
IMPORT_FORMATS = ("auto", *FORMATS)


def register(commands: Commands) -> None:
    ingest = add_command(
        commands,
        "ingest",
        "record AgentEvent JSON lines (the seed runtime's format) through the sidecar",
        "agent-recorder ingest events.jsonl   (or: my-agent | agent-recorder ingest -)",
        ingest_events,
        "exit status: 0 every event stored; 1 a line could not be read or an event was "
        "refused; 2 bad usage; 130 interrupted (it says how many events were stored)",
    )
    add_target(ingest)
    ingest.add_argument(
        "file",
        type=argparse.FileType("r", encoding="utf-8"),
        help="a file of JSON lines, or - for standard input",
    )
    export = add_command(
        commands,
        "export",
        "print sessions as the seed runtime's session files (or protobuf JSON)",
        "agent-recorder export 5f0c2a9e --out ./sessions",
        export_sessions,
    )
    add_target(export)
    export.add_argument(
        "session_ids",
        nargs="+",
        metavar="SESSION_ID",
        help="a session id, a unique prefix of one, or one of its loop ids",
    )
    export.add_argument("--format", choices=FORMATS, default="phi-json", help="phi-json or json")
    export.add_argument("--out", type=Path, help="write {session_id}.json files into this dir")
    imp = add_command(
        commands,
        "import",
        "load session files (the seed runtime's format, or protobuf JSON) into the sidecar",
        "agent-recorder import ./sessions   (or: agent-recorder import a.json b.json)",
        import_sessions,
        "exit status: 0 every file imported; 1 a file could not be read or parsed; 2 the "
        "sidecar refused a session (e.g. one already stored, without --replace) or bad usage "
        "(141: the reader of the output went away)",
    )
    add_target(imp)
    imp.add_argument("paths", nargs="+", metavar="DIR|FILE", help="files, or dirs of *.json")
    imp.add_argument(
        "--format",
        choices=IMPORT_FORMATS,
        default="auto",
        help="auto (default: told apart by their keys and enum spellings), phi-json or json",
    )
    imp.add_argument("--replace", action="store_true", help="replace sessions already stored")


@contextmanager
def progress() -> Iterator[Progress]:
    """A progress bar on stderr, shown only on a terminal (pipes and logs stay clean)."""
    with Progress(console=err, transient=True, disable=not err.is_terminal) as bar:
        yield bar


# -- ingest -----------------------------------------------------------------------------


def _event_key(event: events_pb2.AgentEvent) -> tuple[str, bytes]:
    """Identifies an event by content, to find the line a refused event came from."""
    body = event.SerializeToString(deterministic=True)
    return event_loop_id(event) or "", hashlib.blake2b(body, digest_size=16).digest()


async def ingest_events(args: argparse.Namespace) -> int:
    source: IO[str] = args.file
    size = os.fstat(source.fileno())
    total = size.st_size if stat.S_ISREG(size.st_mode) else None
    lines: dict[tuple[str, bytes], int] = {}
    problems: list[str] = []
    sender: EventSender | None = None
    try:
        async with RecorderClient.connect(args.target) as client:
            sender = client.sender(config=DeliveryConfig(on_full="block", block_timeout=120.0))
            # Say at once when nothing answers, and learn the limits lines are checked by.
            await sender.wait_ready(READY_TIMEOUT)
            with progress() as bar:
                task = bar.add_task("ingesting", total=total)
                problems += await _emit_lines(sender, source, lines, lambda n: bar.advance(task, n))
            # Closing flushes: it returns only once every emitted event is stored.
            await sender.close(timeout=120.0)
            stats = sender.stats()
    except SidecarUnreachable as exc:
        problems.insert(0, str(exc))
    except asyncio.CancelledError:  # Ctrl-C
        stored = sender.stats().acknowledged if sender is not None else 0
        err.print(
            f"agent-recorder ingest: interrupted; {stored} event(s) were stored. To resume, run "
            "the same command again: events already stored are recognised and kept once.",
            markup=False,
            soft_wrap=True,
        )
        raise
    except DeliveryError as exc:
        problems[:0] = _refusals(exc, lines)
    finally:
        if source is not sys.stdin:
            source.close()
    for problem in problems:
        err.print(f"agent-recorder ingest: {problem}", markup=False, soft_wrap=True)
    if problems:
        return 1
    print(f"ingested {stats.acknowledged} events ({stats.skipped} streaming deltas not stored)")
    return 0


async def _read_lines(source: IO[str]) -> AsyncIterator[list[str]]:
    """Chunks of lines, read in a thread so that delivery goes on meanwhile.

    A regular file is read 64 KiB at a time; a pipe a line at a time, so each line
    is sent as soon as it arrives rather than when a chunk fills. The reader is a
    daemon thread: after Ctrl-C, a read blocked on a pipe that stays open does not
    keep the process from exiting.
    """
    regular = stat.S_ISREG(os.fstat(source.fileno()).st_mode)
    loop = asyncio.get_running_loop()
    chunks: asyncio.Queue[list[str]] = asyncio.Queue(maxsize=4)

    def read() -> list[str]:
        return source.readlines(1 << 16) if regular else [source.readline()]

    def pump() -> None:
        while True:
            chunk = [line for line in read() if line]
            try:
                asyncio.run_coroutine_threadsafe(chunks.put(chunk), loop).result()
            except (RuntimeError, concurrent.futures.CancelledError):  # the loop is gone
                return
            if not chunk:
                return

    threading.Thread(target=pump, name="ingest-reader", daemon=True).start()
    while chunk := await chunks.get():
        yield chunk


async def _emit_lines(
    sender: EventSender,
    source: IO[str],
    lines: dict[tuple[str, bytes], int],
    advance: Callable[[int], None],
) -> list[str]:
    """Emit each line's event, noting its line; stops at a line it cannot read.

    A line whose event the sidecar's limits refuse (checked at emit) is reported
    and skipped: the lines after it are still recorded.
    """
    lineno = 0
    problems: list[str] = []
    async for chunk in _read_lines(source):
        for text in chunk:
            lineno += 1
            if not text.strip():
                continue
            try:
                event = event_from_json(json.loads(text))
            except json.JSONDecodeError as exc:
                return [*problems, f"{source.name}:{lineno}:{exc.colno}: {exc.msg}"]
            except PhiJsonError as exc:
                return [*problems, f"{source.name}:{lineno}: {exc}"]
            lines.setdefault(_event_key(event), lineno)
            try:
                await sender.emit_wait(event)
            except ValueError as exc:
                problems.append(f"line {lineno}: not sent: {exc}")
        advance(sum(len(text.encode()) for text in chunk))
    return problems


def _refusals(error: DeliveryError, lines: dict[tuple[str, bytes], int]) -> list[str]:
    """Each refused event with its line, each refused batch, then what else went wrong."""
    problems = [
        f"{_line_of(refusal.event, lines)}refused: {refusal.describe()}"
        for refusal in error.refusals
    ]
    if error.refused > len(error.refusals):
        problems.append(f"and {error.refused - len(error.refusals)} more event(s) refused")
    problems += [_rejection(rejection, lines) for rejection in error.rejections]
    if error.failed or error.unacknowledged:
        problems.append(f"not every event was stored: {error}")
    return problems


def _line_of(event: events_pb2.AgentEvent, lines: dict[tuple[str, bytes], int]) -> str:
    line = lines.get(_event_key(event))
    return "" if line is None else f"line {line}: "


def _rejection(rejection: RejectedBatch, lines: dict[tuple[str, bytes], int]) -> str:
    """A refused batch as loop, line and reason."""
    if rejection.event is None:  # the server did not say which event: name the batch's loops
        loops = [loop for loop in rejection.loop_ids if loop]
        where = f"loop {rejection.metadata.get('loop_id') or ', '.join(loops) or '(none)'}"
    else:
        where = f"loop {event_loop_id(rejection.event) or '(none)'}"
        line = lines.get(_event_key(rejection.event))
        where += f", line {line}" if line is not None else ""
    return (
        f"batch of {rejection.events} refused at {where}:"
        f" {rejection.reason or rejection.code.name}: {rejection.message}"
    )


# -- export -----------------------------------------------------------------------------


def render(session: session_pb2.Session, fmt: str) -> str:
    if fmt == "json":
        return json_format.MessageToJson(session)
    left_out = without_refusals(session)
    if left_out:
        print(
            f"agent-recorder export: left out {left_out} refused event(s) of session "
            f"{session.session_id}, which phi-json has no place for "
            f"(agent-recorder refused {session.session_id} lists them)",
            file=sys.stderr,
        )
    return json.dumps(session_to_json(session), indent=2, ensure_ascii=False)


def without_refusals(session: session_pb2.Session) -> int:
    """Drop refused events (loop slots and the session's refusal log); how many."""
    count = len(session.refusals)
    del session.refusals[:]
    for loop in session.loops:
        kept = [item for item in loop.events if not item.HasField("refused")]
        if len(kept) != len(loop.events):
            count += len(loop.events) - len(kept)
            del loop.events[:]
            loop.events.extend(kept)
    return count


async def export_sessions(args: argparse.Namespace) -> int:
    async with RecorderClient.connect(args.target) as client:
        # Every id resolved before anything is written: a typo writes nothing.
        session_ids = [(await resolve(client, given)).session_id for given in args.session_ids]
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
        with progress() as bar:
            task = bar.add_task("exporting", total=len(session_ids))
            for sid in session_ids:
                text = render(await client.get_session(sid), args.format)
                if args.out is None:
                    print(text)
                else:
                    (args.out / f"{sid}.json").write_text(text + "\n", encoding="utf-8")
                bar.advance(task)
    if args.out is not None:
        print(f"exported {len(session_ids)} session(s) to {args.out}")
    return 0


# -- import -----------------------------------------------------------------------------


def session_files(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for name in paths:
        path = Path(name)
        files += sorted(path.glob("*.json")) if path.is_dir() else [path]
    return files


def detect_format(obj: Any) -> str:
    """ "json" for protobuf JSON (camelCase keys, or enum names such as SESSION_SCOPE_*),
    else "phi-json" (the runtime's snake_case keys and lower-case enum words)."""
    if not isinstance(obj, dict):
        return "phi-json"
    if any(key != key.lower() for key in obj):
        return "json"
    scope = obj.get("scope")
    return "json" if isinstance(scope, str) and scope.startswith("SESSION_SCOPE_") else "phi-json"


class SessionFileError(ValueError):
    """A session file that is not JSON, or not a session: says file, line and column."""


def parse_session(path: Path, fmt: str) -> session_pb2.Session:
    try:
        obj: Any = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SessionFileError(f"{path}:{exc.lineno}:{exc.colno}: {exc.msg}") from None
    if fmt == "auto":
        fmt = detect_format(obj)
    try:
        if fmt == "json":
            return json_format.ParseDict(obj, session_pb2.Session())
        return session_from_json(obj)
    except (json_format.ParseError, PhiJsonError) as exc:
        raise SessionFileError(f"{path}: not a {fmt} session: {exc}") from None


async def import_sessions(args: argparse.Namespace) -> int:
    files = session_files(args.paths)
    if not files:
        err.print(
            f"agent-recorder import: no *.json files in {' '.join(args.paths)}",
            markup=False,
            soft_wrap=True,
        )
        return 1
    failed = refused = 0
    async with RecorderClient.connect(args.target) as client:
        with progress() as bar:
            task = bar.add_task("importing", total=len(files))
            for path in files:
                try:
                    session = parse_session(path, args.format)
                    done = await client.import_session(session, replace=args.replace)
                except SessionFileError as exc:
                    failed += 1
                    err.print(f"agent-recorder import: {exc}", markup=False, soft_wrap=True)
                except (OSError, ValueError) as exc:
                    failed += 1
                    err.print(f"agent-recorder import: {path}: {exc}", markup=False, soft_wrap=True)
                except RecorderRpcError as exc:
                    refused += 1
                    err.print(f"agent-recorder import: {path}: {exc}", markup=False, soft_wrap=True)
                else:
                    verb = "replaced" if done.replaced else "imported"
                    print(f"{verb} {done.session_id}: {done.loops} loops, {done.events} events")
                bar.advance(task)
    return 1 if failed else 2 if refused else 0
