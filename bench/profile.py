"""py-spy of the server process during a phase, and a plain-text summary of it.

Optional (`python -m bench.run --profile DIR`; py-spy is not a dependency): the
issue asks that time be attributed by profile rather than by guess, and this
keeps the evidence reproducible with the same command as the numbers.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

RATE_HZ = 100
_LINE = re.compile(r":\d+\)$")
# Frames where a thread waits rather than works (py-spy --idle is not used, but a
# thread blocked in C, such as gRPC's poller, is still sampled).
_WAITING = ("_poll_wrapper", "_connection_worker_thread (aiosqlite/core.py:59)")


@contextmanager
def spy(pid: int, out: Path) -> Iterator[None]:
    """Record the process (all threads, collapsed stacks) while the block runs."""
    exe = shutil.which("py-spy")
    if exe is None:
        raise RuntimeError("--profile needs py-spy: .venv/bin/pip install py-spy")
    argv = [exe, "record", "-p", str(pid), "-o", str(out), "-r", str(RATE_HZ)]
    proc = subprocess.Popen(
        [*argv, "--format", "raw", "--threads", "--nonblocking"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def summarize(raw: Path, top: int = 15) -> str:
    """Per thread: share of samples, the frames with the most self time, and the
    project's own functions with the most time including what they call."""
    threads: Counter[str] = Counter()
    leaves: dict[str, Counter[str]] = {}
    ours: dict[str, Counter[str]] = {}
    for line in raw.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if not stack or any(w in stack for w in _WAITING):
            continue
        count = int(samples)
        frames = stack.split(";")
        thread = frames[0].split(":", 1)[-1].strip()
        threads[thread] += count
        leaves.setdefault(thread, Counter())[frames[-1]] += count
        for function in {_LINE.sub(")", frame) for frame in frames}:
            if "recorder_server/" in function:
                ours.setdefault(thread, Counter())[function] += count
    total = sum(threads.values()) or 1
    out = [f"{total} busy samples at {RATE_HZ} Hz"]
    for thread, busy in threads.most_common():
        out.append(f"{thread}: {100 * busy / total:.0f}% of busy samples; top self time:")
        for frame, count in leaves[thread].most_common(top):
            out.append(f"  {100 * count / busy:5.1f}%  {frame}")
        if thread in ours:
            out.append("  recorder_server, inclusive:")
            for function, count in ours[thread].most_common(top):
                out.append(f"  {100 * count / busy:5.1f}%  {function}")
    return "\n".join(out)
