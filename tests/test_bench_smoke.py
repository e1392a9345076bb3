"""The benchmark harness keeps working: `python -m bench.run --smoke` runs every
phase at a tiny size and ends with the issue's JSON line. No timing is asserted;
a smoke run's numbers mean nothing."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

# The bench smoke run is slow: not in `make test-fast`.
pytestmark = pytest.mark.slow
# The keys issue #6 fixes for the last line of `make bench`.
KEYS = {
    "ingest_eps_1",
    "ingest_eps_4",
    "sqlite_ceiling_eps",
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
