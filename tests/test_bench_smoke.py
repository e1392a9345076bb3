"""The benchmark harness keeps working: `python -m bench.run --smoke` runs every
phase at a tiny size and ends with the issue's JSON line. No timing is asserted;
a smoke run's numbers mean nothing."""

from __future__ import annotations

import json
import math
import re
import sqlite3
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest

from bench import ceilings
from bench.ingest import Stream
from bench.workload import mix_stream

# The bench smoke run is slow: not in `make test-fast`.
pytestmark = pytest.mark.slow
# The keys issues #6 and #14 fix for the last line of `make bench`.
KEYS = {
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
}
ROOT = Path(__file__).resolve().parent.parent


def test_smoke_run_ends_with_one_json_line_of_the_issue_keys() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    last = done.stdout.rstrip("\n").splitlines()[-1]
    result = json.loads(last)
    assert set(result) == KEYS
    for key, value in result.items():
        assert isinstance(value, int | float) and not isinstance(value, bool), key
        assert math.isfinite(value) and value >= 0, key
    assert result["raw_storage_ceiling_eps"] > 0
    assert result["share_of_raw_storage_ceiling"] > 0
    # Memory after the long run's reads, split into the readers' mapped database pages.
    notes = " ".join(done.stdout.split())  # the report wraps its lines
    after_reads = re.search(
        r"after those reads VmRSS (\d+) MB, of it (\d+) MB the database's pages", notes
    )
    assert after_reads is not None, done.stdout[-4000:]
    assert 0 <= int(after_reads[2]) <= int(after_reads[1])


def test_raw_storage_ceiling_appends_each_event_s_bytes_once_in_a_plain_wal_table(
    tmp_path: Path,
) -> None:
    stream = Stream(partial(mix_stream, total=40), seed=3)
    sent = [
        event.SerializeToString(deterministic=True)
        for index in range(2)
        for event in stream.events(stream.seed + index)
    ]
    done = ceilings.raw_storage(tmp_path, stream, clients=2, batch=7)
    assert (done.events, done.nbytes) == (len(sent), sum(map(len, sent)))
    with sqlite3.connect(tmp_path / "raw-ceiling.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        tables = conn.execute("SELECT name FROM sqlite_master").fetchall()
        stored = [body for (body,) in conn.execute("SELECT body FROM raw ORDER BY id")]
    assert tables == [("raw",)]
    assert stored == sent
