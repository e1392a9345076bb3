"""Client processes that prepare alone, start together, and report back.

An agent is its own process, so each simulated client is one: it builds its
events and connects first, then waits at a barrier with the others (and the
parent), so the clock starts for all at once and covers only delivery. Every wait
is bounded; on a timeout or a failure the remaining processes are terminated.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import queue
import threading
import time
import traceback
from collections.abc import Callable, Coroutine
from multiprocessing.synchronize import Barrier
from typing import Any, TypeVar

A = TypeVar("A")
R = TypeVar("R")
PREPARE_TIMEOUT_S = 300.0
_CONTEXT = multiprocessing.get_context("spawn")


class ClientFailed(RuntimeError):
    """A client process raised, died or overran its time."""


class Start:
    """Awaited by a client when it is ready; returns when every client is."""

    def __init__(self, barrier: Barrier) -> None:
        self._barrier = barrier

    async def __call__(self) -> None:
        await asyncio.to_thread(self._barrier.wait, PREPARE_TIMEOUT_S)


# A client's work, `await job(target, index, arg, start)` in a fresh process; a
# module-level function, so that the spawned process can import it by name.
Job = Callable[[str, int, A, Start], Coroutine[Any, Any, R]]


def _entry(
    job: Job[A, R],
    target: str,
    index: int,
    arg: A,
    barrier: Barrier,
    results: multiprocessing.Queue[tuple[int, bool, Any]],
) -> None:
    try:
        result: R = asyncio.run(job(target, index, arg, Start(barrier)))
    except BaseException:
        barrier.abort()
        results.put((index, False, traceback.format_exc()))
    else:
        results.put((index, True, result))


def run_clients(job: Job[A, R], target: str, count: int, arg: A, timeout: float) -> list[R]:
    """Run `count` clients; `timeout` bounds the part after the common start."""
    barrier = _CONTEXT.Barrier(count + 1)
    results: multiprocessing.Queue[tuple[int, bool, Any]] = _CONTEXT.Queue()
    procs = [
        _CONTEXT.Process(target=_entry, args=(job, target, i, arg, barrier, results), daemon=True)
        for i in range(count)
    ]
    for proc in procs:
        proc.start()
    collected: dict[int, R] = {}
    try:
        # A client that failed while preparing broke the barrier; its report says why.
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(PREPARE_TIMEOUT_S)
        deadline = time.monotonic() + timeout
        while len(collected) < count:
            try:
                index, ok, value = results.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise ClientFailed(f"clients still running after {timeout:.0f} s") from None
            if not ok:
                raise ClientFailed(f"client {index} failed:\n{value}")
            collected[index] = value
    finally:
        for proc in procs:
            proc.join(5.0)
            if proc.is_alive():
                proc.terminate()
                proc.join(5.0)
    return [collected[i] for i in range(count)]
