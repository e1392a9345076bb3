"""`python -m bench.run`: every measurement of issue #6 in one run on this machine.

Prints a table (with each target and whether it is met) and ends with exactly one
line of JSON holding the headline numbers. `--smoke` runs every phase at a tiny
size in seconds (tests use it so the harness keeps working; its timings mean
nothing); `--scale` multiplies the event counts of a full run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench import baseline, ceilings, ingest, profile, reads, rss, rust, sidecar
from bench.ingest import Emits, Paced, Stream
from bench.workload import mix_stream, one_big_session

KEYS = (
    "ingest_eps_1",
    "ingest_eps_4",
    "sqlite_ceiling_eps",
    "raw_storage_ceiling_eps",
    "share_of_raw_storage_ceiling",
    "grpc_ceiling_eps",
    "ack_p50_ms",
    "ack_p99_ms",
    "emit_us",
    "get_session_ms",
    "list_sessions_ms",
    "stream_events_eps",
    "peak_rss_mb",
    "json_rewrite_eps_10k",
)
# Added to the JSON line when the Rust client was measured (see bench/rust.py).
RUST_KEYS = ("rust_ingest_eps_1", "rust_emit_us")


@dataclass(frozen=True)
class Sizes:
    """What each phase does; the defaults are the issue's full run."""

    ingest_1: int = 100_000  # events from one client
    ingest_4: int = 50_000  # events from each of `clients` clients
    clients: int = 4
    batch: int = 500  # events per transaction of the storage ceilings (the client's batch)
    ack_rate: float = 1000.0
    ack_seconds: float = 10.0
    ack_warmup: int = 500
    probe_every: int = 10  # every 10th event's emit -> flush latency is a sample
    emits: int = 20_000
    roots: int = 125  # 125 roots x (1 + 7 sub-agents) = 1,000 loops ...
    children: int = 7
    loop_events: int = 100  # ... of 100 events: 100,000 events in one session
    get_repeats: int = 2
    list_sessions: int = 100_000  # one-loop sessions ...
    list_loop_events: int = 10  # ... of 10 events: the 1,000,000-event run
    list_repeats: int = 50
    json_size: int = 10_000
    json_timed: int = 10

    def scaled(self, factor: float) -> Sizes:
        """Event counts times `factor`; shapes (loop sizes, rates) unchanged."""

        def scale(n: int) -> int:
            return max(1, math.ceil(n * factor))

        return replace(
            self,
            ingest_1=scale(self.ingest_1),
            ingest_4=scale(self.ingest_4),
            emits=scale(self.emits),
            roots=scale(self.roots),
            list_sessions=scale(self.list_sessions),
        )


SMOKE = Sizes(
    ingest_1=1_000,
    ingest_4=300,
    clients=2,
    ack_seconds=0.3,
    ack_warmup=20,
    emits=300,
    roots=2,
    children=1,
    loop_events=20,
    get_repeats=1,
    list_sessions=40,
    list_repeats=3,
    json_size=200,
    json_timed=2,
)


def _timeout(events: int) -> float:
    """Generous but finite: a run slower than 1,000 events/s is a failure anyway."""
    return 120.0 + events / 1000


class Bench:
    def __init__(self, sizes: Sizes, seed: int, workdir: Path, profile_dir: Path | None) -> None:
        self.sizes = sizes
        self.seed = seed
        self.workdir = workdir
        self.profile_dir = profile_dir
        self.results: dict[str, float] = {}
        self.notes: list[str] = []
        self.console = Console(stderr=True)

    def phase(self, name: str, run: Callable[[], None]) -> None:
        # What earlier phases wrote is written back to disk first, so that the
        # kernel's writeback of hundreds of MB does not land in this phase's timings.
        os.sync()
        began = time.monotonic()
        self.console.log(f"{name} ...")
        run()
        self.console.log(f"{name}: {time.monotonic() - began:.1f} s")

    def run(self) -> None:
        s = self.sizes
        self.phase("ingest, 1 client", self.ingest_one)
        self.phase(f"ingest, {s.clients} clients", self.ingest_many)
        self.phase("storage ceiling", self.storage_ceiling)
        self.phase("raw storage ceiling", self.raw_storage_ceiling)
        self.phase("transport ceiling", self.transport_ceiling)
        self.phase("ack latency and emit cost", self.latency)
        self.phase("Rust client: ingest and emit cost", self.rust_client)
        self.phase("GetSession and StreamEvents", self.session_reads)
        self.phase("long run: peak RSS, then ListSessions", self.long_run)
        self.phase("JSON re-write baseline", self.json_baseline)

    # -- phases ---------------------------------------------------------------------

    def _mix(self) -> Stream:
        return Stream(partial(mix_stream, total=self.sizes.ingest_4), self.seed)

    def ingest_one(self) -> None:
        stream = Stream(partial(mix_stream, total=self.sizes.ingest_1), self.seed)
        with sidecar.recorder(self.workdir, "ingest1") as server:
            done = ingest.throughput(server, 1, stream, _timeout(self.sizes.ingest_1))
        self.results["ingest_eps_1"] = done.eps
        self.notes.append(
            f"ingest, 1 client: {done.events:,} events ({done.nbytes / done.events:,.0f} B "
            f"mean) in {done.seconds:.1f} s, {done.mb_per_s:.1f} MB/s; {done.cpu_note()}"
        )

    def ingest_many(self) -> None:
        s = self.sizes
        raw = None if self.profile_dir is None else self.profile_dir / "server-ingest.txt"
        with (
            sidecar.recorder(self.workdir, "ingest4") as server,
            contextlib.nullcontext() if raw is None else profile.spy(server.pid, raw),
        ):
            done = ingest.throughput(
                server, s.clients, self._mix(), _timeout(s.clients * s.ingest_4)
            )
        if raw is not None:
            raw.with_name("server-ingest-summary.txt").write_text(profile.summarize(raw))
        self.results["ingest_eps_4"] = done.eps
        self.notes.append(
            f"ingest, {s.clients} clients: {done.events:,} events in {done.seconds:.1f} s, "
            f"{done.mb_per_s:.1f} MB/s; {done.cpu_note()}"
        )

    def storage_ceiling(self) -> None:
        s = self.sizes
        done = ceilings.storage(self.workdir, self._mix(), s.clients, s.batch)
        self.results["sqlite_ceiling_eps"] = done.eps
        self.notes.append(
            f"storage ceiling: the same {done.events:,} events, {s.batch} per transaction, "
            f"{done.mb_per_s:.1f} MB/s"
        )

    def raw_storage_ceiling(self) -> None:
        """After the ingest phase: the share is of its 4-client figure."""
        s = self.sizes
        done = ceilings.raw_storage(self.workdir, self._mix(), s.clients, s.batch)
        self.results["raw_storage_ceiling_eps"] = done.eps
        self.results["share_of_raw_storage_ceiling"] = self.results["ingest_eps_4"] / done.eps
        self.notes.append(
            f"raw storage ceiling: the same {done.events:,} events' bytes appended to a plain "
            f"table (id, body), {s.batch} per transaction, WAL, synchronous NORMAL, "
            f"{done.mb_per_s:.1f} MB/s"
        )

    def transport_ceiling(self) -> None:
        s = self.sizes
        done = ceilings.transport(
            self.workdir, self._mix(), s.clients, _timeout(s.clients * s.ingest_4)
        )
        self.results["grpc_ceiling_eps"] = done.eps
        self.notes.append(
            f"transport ceiling: {s.clients} clients to a discarding sink, {done.mb_per_s:.1f} "
            f"MB/s; {done.cpu_note()}"
        )

    def latency(self) -> None:
        s = self.sizes
        paced = Paced(s.ack_rate, s.ack_seconds, s.ack_warmup, self.seed, s.probe_every)
        bound = _timeout(0) + s.ack_seconds
        with sidecar.recorder(self.workdir, "latency") as server:
            p50, p99 = ingest.ack_latency(server.target, paced, bound)
            emit_us = ingest.emit_cost(server.target, Emits(s.emits, self.seed), _timeout(s.emits))
        with sidecar.recorder(self.workdir, "latency1") as server:
            each50, each99 = ingest.ack_latency(server.target, replace(paced, probe_every=1), bound)
        self.results.update(ack_p50_ms=p50, ack_p99_ms=p99, emit_us=emit_us)
        self.notes.append(
            f"ack latency: {int(s.ack_rate * s.ack_seconds):,} events at {s.ack_rate:,.0f}/s "
            f"with default batching, every {s.probe_every}th emit() timed until its flush() "
            f"returns. Flushing after every event instead (so {s.ack_rate:,.0f} one-event "
            f"batches/s): p50 {each50:.1f} ms, p99 {each99:.1f} ms. emit cost: median of "
            f"{s.emits:,} emit() calls"
        )

    def rust_client(self) -> None:
        """The Rust client beside the Python one: the events of the 1-client ingest."""
        program = rust.binary()
        if program is None:
            self.notes.append(
                f"Rust client: not measured (${rust.BINARY_ENV} names no built binary; "
                "`make bench` builds it)"
            )
            return
        s = self.sizes
        done = rust.measure(program, self.workdir, self.seed, s.ingest_1, _timeout(2 * s.ingest_1))
        self.results.update(rust_ingest_eps_1=done.ingest_eps, rust_emit_us=done.emit_us)
        self.notes.append(
            f"Rust client (clients/rust, release): {done.events:,} events of the same mix from "
            f"one client, emit() until flush() returned; emit cost: median of {done.events:,} "
            "emit() calls on another stream"
        )

    def session_reads(self) -> None:
        s = self.sizes
        loops = s.roots * (1 + s.children)
        stream = Stream(
            partial(
                one_big_session, roots=s.roots, children=s.children, events_per_loop=s.loop_events
            ),
            self.seed,
        )
        with sidecar.recorder(self.workdir, "reads") as server:
            filled = ingest.throughput(server, 1, stream, _timeout(loops * s.loop_events))
            got = reads.session_reads(server.target, s.get_repeats)
            ui_open = reads.ui_open_seconds(server.target)
        self.results.update(
            get_session_ms=got.get_session_ms, stream_events_eps=got.stream_events_eps
        )
        self.notes.append(
            "web view (issue #7, target < 2 s): the same session opened in headless Chromium "
            + (f"in {ui_open:.2f} s" if ui_open is not None else "not measured: no chromium")
        )
        self.notes.append(
            f"GetSession: {got.loops:,} loops, {got.events:,} events, {got.response_mb:,.0f} MB "
            f"response, median of {s.get_repeats}; StreamEvents over the same events "
            f"(filled at {filled.eps:,.0f} events/s)"
        )

    def long_run(self) -> None:
        s = self.sizes
        events = s.list_sessions * s.list_loop_events
        done = rss.long_run(
            self.workdir,
            s.list_sessions,
            s.list_loop_events,
            s.clients,
            self.seed,
            _timeout(events),
            s.list_repeats,
        )
        self.results.update(peak_rss_mb=done.peak_rss_mb, list_sessions_ms=done.list_sessions_ms)
        rss_mb, file_mb = done.after_reads_mb
        timeline = ", ".join(
            f"{mb:.0f}" for _, mb in done.rss_timeline[:: max(1, len(done.rss_timeline) // 12)]
        )
        self.notes.append(
            f"long run: {done.ingest.events:,} events in {s.list_sessions:,} sessions from "
            f"{s.clients} clients at {done.ingest.eps:,.0f} events/s; server VmRSS MB over "
            f"time: {timeline}; ListSessions: first page, median of {s.list_repeats}; after "
            f"those reads VmRSS {rss_mb:.0f} MB, of it {file_mb:.0f} MB the database's pages "
            "mapped by the readers"
        )

    def json_baseline(self) -> None:
        s = self.sizes
        eps = baseline.json_rewrite_eps(self.workdir, s.json_size, s.json_timed, self.seed)
        self.results["json_rewrite_eps_10k"] = eps
        self.notes.append(
            f"JSON re-write baseline: one file per session re-written per event, at "
            f"{s.json_size:,} events"
        )


# -- the report -----------------------------------------------------------------------


def _targets(r: dict[str, float], s: Sizes) -> list[tuple[str, str, str, str, bool]]:
    """(measure, result, target, json key, met) rows of the table."""
    share = r["ingest_eps_4"] / r["sqlite_ceiling_eps"]
    over_json = r["ingest_eps_4"] / r["json_rewrite_eps_10k"]
    events = s.roots * (1 + s.children) * s.loop_events
    long_run = s.list_sessions * s.list_loop_events
    return [
        ("ingest, 1 client", f"{r['ingest_eps_1']:,.0f} ev/s", "", "ingest_eps_1", True),
        (
            f"ingest, {s.clients} clients",
            f"{r['ingest_eps_4']:,.0f} ev/s",
            ">= 100,000 ev/s",
            "ingest_eps_4",
            r["ingest_eps_4"] >= 100_000,
        ),
        ("  share of storage ceiling", f"{100 * share:.0f}%", ">= 50%", "", share >= 0.5),
        (
            "  share of raw storage ceiling",
            f"{100 * r['share_of_raw_storage_ceiling']:.0f}%",
            "",
            "share_of_raw_storage_ceiling",
            True,
        ),
        ("  over JSON re-write baseline", f"{over_json:,.0f}x", ">= 100x", "", over_json >= 100),
        (
            "storage ceiling (SQLite)",
            f"{r['sqlite_ceiling_eps']:,.0f} ev/s",
            "",
            "sqlite_ceiling_eps",
            True,
        ),
        (
            "raw storage ceiling (plain table)",
            f"{r['raw_storage_ceiling_eps']:,.0f} ev/s",
            "",
            "raw_storage_ceiling_eps",
            True,
        ),
        (
            "transport ceiling (gRPC)",
            f"{r['grpc_ceiling_eps']:,.0f} ev/s",
            "",
            "grpc_ceiling_eps",
            True,
        ),
        (
            f"ack latency p50 @ {s.ack_rate:,.0f} ev/s",
            f"{r['ack_p50_ms']:.2f} ms",
            "",
            "ack_p50_ms",
            True,
        ),
        (
            f"ack latency p99 @ {s.ack_rate:,.0f} ev/s",
            f"{r['ack_p99_ms']:.2f} ms",
            "<= 5 ms",
            "ack_p99_ms",
            r["ack_p99_ms"] <= 5,
        ),
        ("emit() median", f"{r['emit_us']:.1f} us", "<= 10 us", "emit_us", r["emit_us"] <= 10),
        *_rust_rows(r),
        (
            f"GetSession, {events:,} events",
            f"{r['get_session_ms']:,.0f} ms",
            "<= 1,000 ms",
            "get_session_ms",
            r["get_session_ms"] <= 1000,
        ),
        (
            "StreamEvents",
            f"{r['stream_events_eps']:,.0f} ev/s",
            ">= 200,000 ev/s",
            "stream_events_eps",
            r["stream_events_eps"] >= 200_000,
        ),
        (
            f"ListSessions page 1 of {s.list_sessions:,}",
            f"{r['list_sessions_ms']:.1f} ms",
            "<= 20 ms",
            "list_sessions_ms",
            r["list_sessions_ms"] <= 20,
        ),
        (
            f"peak server RSS, {long_run:,} events",
            f"{r['peak_rss_mb']:,.0f} MB",
            "<= 200 MB",
            "peak_rss_mb",
            r["peak_rss_mb"] <= 200,
        ),
        (
            f"JSON re-write @ {s.json_size:,} events",
            f"{r['json_rewrite_eps_10k']:,.1f} ev/s",
            "",
            "json_rewrite_eps_10k",
            True,
        ),
    ]


def _rust_rows(r: dict[str, float]) -> list[tuple[str, str, str, str, bool]]:
    if "rust_emit_us" not in r:
        return []
    return [
        ("ingest, 1 Rust client", f"{r['rust_ingest_eps_1']:,.0f} ev/s", "", RUST_KEYS[0], True),
        ("Rust emit() median", f"{r['rust_emit_us']:.2f} us", "", RUST_KEYS[1], True),
    ]


def report(bench: Bench, args: argparse.Namespace, started_load: float) -> None:
    out = Console(width=110, highlight=False)
    table = Table(
        title="agent-recorder benchmark" + (" (smoke: timings mean nothing)" if args.smoke else "")
    )
    for column in ("measure", "result", "target", "met", "json key"):
        table.add_column(column)
    for measure, result, target, key, met in _targets(bench.results, bench.sizes):
        table.add_row(measure, result, target, ("yes" if met else "NO") if target else "", key)
    out.print(table)
    out.print(
        f"machine: {os.cpu_count()} cores; load average {started_load:.2f} at start, "
        f"{os.getloadavg()[0]:.2f} at end (above ~0.5, something else competed for CPU)"
    )
    for note in bench.notes:
        out.print(f"- {note}")
    out.print(
        f"command: {' '.join(['python -m bench.run', *sys.argv[1:]])}; sizes: {asdict(bench.sizes)}"
    )
    sys.stdout.flush()
    keys = KEYS + tuple(key for key in RUST_KEYS if key in bench.results)
    print(json.dumps({key: round(bench.results[key], 3) for key in keys}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="every phase, tiny, in seconds")
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply the full run's event counts"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the event generator")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="py-spy the server during the multi-client ingest into DIR",
    )
    args = parser.parse_args(argv)
    sizes = (SMOKE if args.smoke else Sizes()).scaled(args.scale)
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    started_load = os.getloadavg()[0]
    # A short path: Unix socket paths are limited to ~100 bytes.
    with tempfile.TemporaryDirectory(prefix="arbench-", dir="/tmp") as tmp:
        bench = Bench(sizes, args.seed, Path(tmp), args.profile)
        bench.run()
        report(bench, args, started_load)
    return 0


if __name__ == "__main__":
    sys.exit(main())
