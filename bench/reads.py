"""Read latency and throughput through the client library, on databases the
sidecar itself filled (bench/workload.py's exact-size fixtures).

- GetSession: one session of many loops with every event, timed end to end
  (request, server assembly, transfer, decoding in the client); the median of
  a few calls (the database was just written, so its pages are in the OS cache).
- StreamEvents: every event of that session, in commit order, per second, as the
  client library yields them one by one from the server's pages.
- ListSessions: the first page (the server's default size) over many sessions;
  the median of many calls.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass

from bench.fleet import Start, run_clients
from bench.ingest import connect

READ_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class SessionReads:
    get_session_ms: float
    loops: int
    events: int
    response_mb: float
    stream_events_eps: float


@dataclass(frozen=True)
class Repeats:
    count: int


async def _session_reads(target: str, index: int, repeats: Repeats, start: Start) -> SessionReads:
    client = await connect(target)
    async with client:
        [summary] = (await client.list_sessions(page_size=1)).sessions
        sid = summary.session_id
        await start()
        timings = []
        session = None
        for _ in range(repeats.count):
            began = time.perf_counter()
            session = await client.get_session(sid, timeout=READ_TIMEOUT_S)
            timings.append(time.perf_counter() - began)
        began = time.perf_counter()
        streamed = 0
        async for _ in client.stream_events(session_id=sid, timeout=READ_TIMEOUT_S):
            streamed += 1
        stream_s = time.perf_counter() - began
    assert session is not None, "at least one GetSession"
    return SessionReads(
        get_session_ms=statistics.median(timings) * 1e3,
        loops=len(session.loops),
        events=sum(len(loop.events) for loop in session.loops),
        response_mb=session.ByteSize() / 1e6,
        stream_events_eps=streamed / stream_s,
    )


def ui_open_seconds(target: str) -> float | None:
    """Seconds until the web view has drawn the database's only session (tree and
    timeline), in headless Chromium; None where Debian's chromium is not installed."""
    from recorder_server.ui.measure import CHROMIUM, measure_ui_open

    if not CHROMIUM.exists():
        return None

    async def measure() -> float:
        client = await connect(target)
        async with client:
            [summary] = (await client.list_sessions(page_size=1)).sessions
        return await measure_ui_open(target, summary.session_id, timeout_s=READ_TIMEOUT_S)

    return asyncio.run(measure())


def session_reads(target: str, repeats: int) -> SessionReads:
    """GetSession and StreamEvents of the database's only session."""
    [result] = run_clients(_session_reads, target, 1, Repeats(repeats), READ_TIMEOUT_S)
    return result


async def _first_page(target: str, index: int, repeats: Repeats, start: Start) -> list[float]:
    client = await connect(target)
    async with client:
        await client.list_sessions()
        await start()
        timings = []
        for _ in range(repeats.count):
            began = time.perf_counter()
            await client.list_sessions()
            timings.append(time.perf_counter() - began)
    return timings


def first_page_ms(target: str, repeats: int) -> float:
    """Median time of the first ListSessions page."""
    [timings] = run_clients(_first_page, target, 1, Repeats(repeats), READ_TIMEOUT_S)
    return statistics.median(timings) * 1e3
