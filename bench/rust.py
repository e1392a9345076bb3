"""The Rust client's emit() cost and sustained ingest, beside the Python client's.

`make bench` builds clients/rust's `bench` example (release) and names it in
$AGENT_RECORDER_RUST_BENCH; this phase writes the same realistic mix the Python
phases send (two seeds: one stream for ingest, one for emit cost) as
length-prefixed AgentEvents and runs the binary against a fresh sidecar. Without
the binary (e.g. `--smoke` runs from the tests) the phase is skipped and says so.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench import sidecar
from bench.workload import mix_stream

BINARY_ENV = "AGENT_RECORDER_RUST_BENCH"


@dataclass(frozen=True)
class RustNumbers:
    events: int
    ingest_eps: float
    emit_us: float


def binary() -> Path | None:
    """The built bench example, if `make bench` built one."""
    path = os.environ.get(BINARY_ENV)
    return Path(path) if path and Path(path).is_file() else None


def _write_events(path: Path, seed: int, count: int) -> None:
    with path.open("wb") as out:
        for event in mix_stream(seed, count):
            data = event.SerializeToString()
            out.write(struct.pack("<I", len(data)))
            out.write(data)


def measure(program: Path, workdir: Path, seed: int, events: int, timeout: float) -> RustNumbers:
    """One Rust client against a fresh sidecar: ingest of `events`, then emit() cost."""
    ingest_file, emit_file = workdir / "rust-ingest.bin", workdir / "rust-emit.bin"
    _write_events(ingest_file, seed, events)
    _write_events(emit_file, seed + 1, events)
    with sidecar.recorder(workdir, "rust") as server:
        done = subprocess.run(
            [str(program), server.target, str(ingest_file), str(emit_file)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    if done.returncode != 0:
        raise RuntimeError(f"the Rust bench failed: {done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return RustNumbers(int(result["events"]), float(result["ingest_eps"]), float(result["emit_us"]))
