"""`python -m bench.reads_phase DIR`: the GetSession/StreamEvents phase of bench.run alone.

The first run fills DIR/reads.db with bench.run's 1,000-loop, 100,000-event session
(one client, as bench.run does); later runs reuse it, so read changes can be timed
again and again against the same file. Each run starts a fresh `agent-recorder
serve` on it and prints one line of JSON: bench/reads.py's numbers and the server's
CPU seconds over the reads.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from functools import partial
from pathlib import Path

from bench import ingest, reads, sidecar
from bench.ingest import Stream
from bench.run import Sizes
from bench.workload import one_big_session

FILL_TIMEOUT_S = 600.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dir", type=Path, help="where reads.db is kept between runs")
    parser.add_argument("--repeats", type=int, default=Sizes().get_repeats)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    if not (args.dir / "reads.db").exists():
        s = Sizes()
        events = partial(
            one_big_session, roots=s.roots, children=s.children, events_per_loop=s.loop_events
        )
        with sidecar.recorder(args.dir, "reads") as server:
            filled = ingest.throughput(server, 1, Stream(events, args.seed), FILL_TIMEOUT_S)
        print(f"filled {filled.events:,} events", file=sys.stderr)
    with sidecar.recorder(args.dir, "reads") as server:
        cpu = server.cpu_seconds()
        got = reads.session_reads(server.target, args.repeats)
        server_cpu_s = server.cpu_seconds() - cpu
    print(json.dumps({**asdict(got), "server_cpu_s": server_cpu_s}))


if __name__ == "__main__":
    main()
