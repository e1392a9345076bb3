"""`ingest`, `export` and `import`: the seed runtime's JSON in and out of the sidecar.

The CLI is a client like any agent: ingest delivers through `EventSender` (so a
long ingest rides out sidecar restarts and is acknowledged only once stored), and
import sends whole session files through the ImportSession RPC.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import stat
import sys
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
from recorder_client.errors import DeliveryError, RecorderRpcError
from recorder_client.phi_json import (
    PhiJsonError,
    event_from_json,
    session_from_json,
    session_to_json,
)
from recorder_client.queries import event_loop_id
from recorder_server.cli.common import Commands, add_command, add_target

err = Console(stderr=True)
FORMATS = ("phi-json", "json")


def register(commands: Commands) -> None:
    ingest = add_command(
        commands,
        "ingest",
        "record AgentEvent JSON lines (the seed runtime's format) through the sidecar",
        "agent-recorder ingest events.jsonl   (or: my-agent | agent-recorder ingest -)",
        ingest_events,
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
    export.add_argument("session_ids", nargs="+", metavar="SESSION_ID")
    export.add_argument("--format", choices=FORMATS, default="phi-json", help="phi-json or json")
    export.add_argument("--out", type=Path, help="write {session_id}.json files into this dir")
    imp = add_command(
        commands,
        "import",
        "load session files (the seed runtime's format, or protobuf JSON) into the sidecar",
        "agent-recorder import ./sessions   (or: agent-recorder import a.json b.json)",
        import_sessions,
    )
    add_target(imp)
    imp.add_argument("paths", nargs="+", metavar="DIR|FILE", help="files, or dirs of *.json")
    imp.add_argument("--format", choices=FORMATS, default="phi-json", help="phi-json or json")
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
    try:
        async with RecorderClient.connect(args.target) as client:
            sender = client.sender(config=DeliveryConfig(on_full="block", block_timeout=120.0))
            with progress() as bar:
                task = bar.add_task("ingesting", total=total)
                problems += await _emit_lines(sender, source, lines, lambda n: bar.advance(task, n))
            # Closing flushes: it returns only once every emitted event is stored.
            await sender.close(timeout=120.0)
            stats = sender.stats()
    except DeliveryError as exc:
        problems.insert(0, _refusal(exc, lines))
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
    is sent as soon as it arrives rather than when a chunk fills.
    """
    regular = stat.S_ISREG(os.fstat(source.fileno()).st_mode)

    def read() -> list[str]:
        return source.readlines(1 << 16) if regular else [source.readline()]

    while chunk := [line for line in await asyncio.to_thread(read) if line]:
        yield chunk


async def _emit_lines(
    sender: EventSender,
    source: IO[str],
    lines: dict[tuple[str, bytes], int],
    advance: Callable[[int], None],
) -> list[str]:
    """Emit each line's event, noting its line; stops at a line it cannot read."""
    lineno = 0
    async for chunk in _read_lines(source):
        for text in chunk:
            lineno += 1
            if not text.strip():
                continue
            try:
                event = event_from_json(json.loads(text))
            except (json.JSONDecodeError, PhiJsonError) as exc:
                return [f"line {lineno}: {exc}"]
            lines.setdefault(_event_key(event), lineno)
            await sender.emit_wait(event)
        advance(sum(len(text.encode()) for text in chunk))
    return []


def _refusal(error: DeliveryError, lines: dict[tuple[str, bytes], int]) -> str:
    """The first refusal as loop, line and reason; later ones usually follow from it."""
    rejection = error.rejection
    if rejection is None:
        return f"not every event was stored: {error}"
    if rejection.event is None:  # the server did not say which event: name the batch's loops
        loops = [loop for loop in rejection.loop_ids if loop]
        where = f"loop {rejection.metadata.get('loop_id') or ', '.join(loops) or '(none)'}"
    else:
        where = f"loop {event_loop_id(rejection.event) or '(none)'}"
        line = lines.get(_event_key(rejection.event))
        where += f", line {line}" if line is not None else ""
    more = len(error.rejections) - 1
    tail = f" (and {more} later batch(es) refused)" if more > 0 else ""
    return (
        f"refused at {where}: {rejection.reason or rejection.code.name}: {rejection.message}{tail}"
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
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    async with RecorderClient.connect(args.target) as client:
        with progress() as bar:
            task = bar.add_task("exporting", total=len(args.session_ids))
            for sid in args.session_ids:
                text = render(await client.get_session(sid), args.format)
                if args.out is None:
                    print(text)
                else:
                    (args.out / f"{sid}.json").write_text(text + "\n", encoding="utf-8")
                bar.advance(task)
    if args.out is not None:
        print(f"exported {len(args.session_ids)} session(s) to {args.out}")
    return 0


# -- import -----------------------------------------------------------------------------


def session_files(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for name in paths:
        path = Path(name)
        files += sorted(path.glob("*.json")) if path.is_dir() else [path]
    return files


def parse_session(path: Path, fmt: str) -> session_pb2.Session:
    obj: Any = json.loads(path.read_text(encoding="utf-8"))
    if fmt == "json":
        return json_format.ParseDict(obj, session_pb2.Session())
    return session_from_json(obj)


async def import_sessions(args: argparse.Namespace) -> int:
    files = session_files(args.paths)
    if not files:
        err.print(
            f"agent-recorder import: no *.json files in {' '.join(args.paths)}",
            markup=False,
            soft_wrap=True,
        )
        return 1
    failed = 0
    async with RecorderClient.connect(args.target) as client:
        with progress() as bar:
            task = bar.add_task("importing", total=len(files))
            for path in files:
                try:
                    session = parse_session(path, args.format)
                    done = await client.import_session(session, replace=args.replace)
                except (OSError, ValueError, json_format.ParseError, RecorderRpcError) as exc:
                    failed += 1
                    err.print(f"agent-recorder import: {path}: {exc}", markup=False, soft_wrap=True)
                else:
                    verb = "replaced" if done.replaced else "imported"
                    print(f"{verb} {done.session_id}: {done.loops} loops, {done.events} events")
                bar.advance(task)
    return 1 if failed else 0
