"""Soak: the kill -9 scenario of tests/test_faults.py, round after round, on one file.

Each round starts the sidecar on the same database, streams from --clients client
processes (--events each, the issue's 50000 by default), kills the server with
SIGKILL --kills times at seeded random points and restarts it, then checks the
whole file against everything every round emitted. Rounds go on until --duration
seconds have passed. The last line gives the totals; the exit status is 1 if any
event is missing or doubled, or the file fails PRAGMA integrity_check.

    .venv/bin/python scripts/soak.py --duration 600
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

# The scenario lives in the tests' support package (tests/ on the path, as under pytest).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.fault_harness import Verdict, check_store, run_scenario


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="kill -9 soak of agent-recorder")
    parser.add_argument("--duration", type=float, default=300.0, help="seconds to keep going")
    parser.add_argument("--clients", type=int, default=4, help="client processes per round")
    parser.add_argument("--events", type=int, default=50_000, help="events per client per round")
    parser.add_argument("--kills", type=int, default=5, help="kill -9 per round")
    parser.add_argument("--seed", type=int, default=1, help="seed of the first round")
    parser.add_argument("--dir", type=Path, default=None, help="work dir (default: a temp dir)")
    return parser.parse_args()


async def soak(args: argparse.Namespace, workdir: Path) -> Verdict:
    expected: dict[str, list[str]] = {}
    deadline = time.monotonic() + args.duration
    seed = args.seed
    while True:
        started = time.monotonic()
        run = await run_scenario(
            workdir,
            clients=args.clients,
            events=args.events,
            kills=args.kills,
            seed=seed,
            timeout=max(600.0, args.events * args.clients / 500),
            say=lambda line: print(f"  {line}", flush=True),
        )
        expected.update(run.expected)
        verdict = check_store(run.db_path, expected)
        resent = sum(report.resent for report in run.reports)
        print(
            f"round seed={seed} {time.monotonic() - started:.1f}s kills={len(run.kill_points)}"
            f" resent={resent}: {verdict.line()}",
            flush=True,
        )
        seed += 1
        if not verdict.ok or time.monotonic() >= deadline:
            return verdict


def main() -> int:
    args = parse()
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
        verdict = asyncio.run(soak(args, args.dir))
    else:
        # A short path: Unix socket paths are limited to ~100 bytes.
        with tempfile.TemporaryDirectory(prefix="ar-soak-", dir="/tmp") as workdir:
            verdict = asyncio.run(soak(args, Path(workdir)))
    print(
        f"emitted {verdict.emitted} stored {verdict.stored} missing {verdict.missing}"
        f" doubled {verdict.doubled} integrity {verdict.integrity}"
    )
    if verdict.wrong:
        print(f"loops stored with other events than emitted: {', '.join(verdict.wrong[:10])}")
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    sys.exit(main())
