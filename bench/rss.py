"""Server memory over the long run: the kernel's own peak, and how it got there.

The peak is VmHWM from /proc (the resident high-water mark since the process
started, so no spike between samples is missed); a sampler thread also records
VmRSS every half second, which shows whether memory plateaus or grows with the
number of events stored.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import TracebackType

from bench import ingest, reads, sidecar
from bench.ingest import Stream, Throughput
from bench.workload import many_sessions

SAMPLE_EVERY_S = 0.5


def status_mb(pid: int, key: str) -> float:
    """A memory line of /proc/PID/status (VmRSS, VmHWM, ...) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    raise KeyError(f"{key} not in /proc/{pid}/status")


class RssSampler:
    """`with RssSampler(pid) as s:` samples VmRSS until the block ends."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        began = time.monotonic()
        while not self._stop.wait(SAMPLE_EVERY_S):
            self.samples.append((time.monotonic() - began, status_mb(self.pid, "VmRSS")))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class LongRun:
    ingest: Throughput
    peak_rss_mb: float  # while the events went in (the target's figure)
    list_sessions_ms: float
    # After the ListSessions pages read after them: resident, and of it the pages of
    # the database file that the readers' memory map holds (the kernel's to reclaim).
    after_reads_mb: tuple[float, float]
    rss_timeline: list[tuple[float, float]] = field(default_factory=list)


def long_run(
    workdir: Path,
    sessions: int,
    events_per_loop: int,
    clients: int,
    seed: int,
    timeout: float,
    list_repeats: int,
) -> LongRun:
    """Many one-loop sessions from several clients, built as they are sent (the
    clients hold no more than a loop each); then the ListSessions page over them."""
    stream = Stream(
        partial(many_sessions, sessions=sessions // clients, events_per_loop=events_per_loop),
        seed,
        pregenerate=False,
    )
    with sidecar.recorder(workdir, "long") as server, RssSampler(server.pid) as sampler:
        done = ingest.throughput(server, clients, stream, timeout)
        peak = status_mb(server.pid, "VmHWM")
        list_ms = reads.first_page_ms(server.target, list_repeats)
        after_reads = (status_mb(server.pid, "VmRSS"), status_mb(server.pid, "RssFile"))
    return LongRun(done, peak, list_ms, after_reads, sampler.samples)
