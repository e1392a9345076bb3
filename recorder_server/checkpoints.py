"""Background WAL checkpoints, so that no commit (and no acknowledgement) waits for one.

In WAL mode every commit appends pages to the log; a checkpoint copies them into
the database file and syncs it. SQLite's automatic checkpoint runs inside the
commit that crosses the threshold, a long stall in the ack path of whoever sent
that batch. Here a connection of its own, on a thread of its
own, runs PASSIVE checkpoints (they never block the writer or readers) once
enough has been written since the last one. The writer reports what it wrote;
nothing polls.

The log only starts over from its beginning when a write transaction begins
with every frame already copied, which one checkpoint running beside a busy
writer rarely achieves: the frames committed during it are left. So each
checkpoint is followed by short passes over what was committed meanwhile, each
shorter than the one before, until one finds nothing new: then the writer's next
transaction restarts the log. A writer that never pauses (bulk ingest) keeps adding
frames; once the log is long anyway, the writer copies the few frames left
itself (`catch_up`), between two of its transactions, which stalls that one
commit for the sync but bounds the log.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Final, TypeVar

from recorder_server.storage import COMMON_PRAGMAS, connect

log = logging.getLogger(__name__)
T = TypeVar("T")

# Event bytes between checkpoints: each one syncs what came since the last, and
# commits wait meanwhile, so small and frequent keeps those stalls short.
DEFAULT_EVERY_BYTES: Final = 1024 * 1024
# WAL pages (of 4 KiB) past which the writer is asked to catch up, so the log
# starts over instead of growing (64 MiB).
DEFAULT_CATCH_UP_PAGES: Final = 16384
# Passes after a checkpoint, at most, that chase the frames committed during it.
FOLLOW_UP_PASSES: Final = 6
# The checkpoint thread's nice value (Linux): it takes the cores the event loop
# and the agents beside it leave over, which shortens the ack p99.
CHECKPOINT_NICE: Final = 19


class Checkpointer:
    """Runs a PASSIVE checkpoint each time `every_bytes` more have been committed."""

    def __init__(
        self,
        path: Path,
        every_bytes: int = DEFAULT_EVERY_BYTES,
        catch_up_pages: int = DEFAULT_CATCH_UP_PAGES,
    ) -> None:
        self.path = path
        self.every_bytes = every_bytes
        self.catch_up_pages = catch_up_pages
        self.checkpoints = 0
        # Set after each background checkpoint: the writer should catch up.
        self.catch_up = False
        # Set after each checkpoint, for whoever waits on one (a waiter clears it).
        self.completed = asyncio.Event()
        self._written = 0
        self._wanted = asyncio.Event()
        self._stopping = False
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="recorder-checkpoint")
        self._conn: sqlite3.Connection | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._call(_lower_priority)
        self._conn = await self._call(
            partial(connect, self.path, COMMON_PRAGMAS, isolation_level=None),
        )
        self._task = asyncio.create_task(self._run(), name="recorder-checkpointer")

    async def stop(self) -> None:
        """Ends after the checkpoint in progress, if any."""
        if self._task is not None:
            self._stopping = True
            self._wanted.set()
            await self._task
            self._task = None
        if self._conn is not None:
            await self._call(self._conn.close)
            self._conn = None
        self._thread.shutdown()

    def wrote(self, nbytes: int) -> None:
        """Called by the writer after each commit with (about) the bytes it wrote."""
        self._written += nbytes
        if self._written >= self.every_bytes:
            self._written = 0
            self._wanted.set()

    async def _run(self) -> None:
        while True:
            await self._wanted.wait()
            if self._stopping:
                return
            self._wanted.clear()
            assert self._conn is not None
            try:
                busy, log_pages, copied = await self._call(run_checkpoint, self._conn)
            except sqlite3.Error as exc:
                # The next commit's request retries; the backstop checkpoint of
                # the writer connection still bounds the WAL meanwhile.
                log.warning("background checkpoint failed: %s", exc)
                continue
            self.checkpoints += 1
            if log_pages >= self.catch_up_pages:
                self.catch_up = True
            self.completed.set()
            log.debug("checkpoint: busy=%s wal=%s pages copied=%s", busy, log_pages, copied)

    def _call(self, fn: Callable[..., T], *args: object) -> asyncio.Future[T]:
        return asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)


def _lower_priority() -> None:
    """Renice the calling thread alone (Linux keeps a nice value per thread)."""
    if sys.platform == "linux":
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), CHECKPOINT_NICE)


def run_checkpoint(conn: sqlite3.Connection) -> tuple[int, int, int]:
    """A checkpoint and its follow-up passes: (busy, log pages, pages copied) of the last.

    A pass that finds the log as long as the last one did and copies all of it
    means no commit came in between: the log restarts with the next one. A
    shorter log means it already has.
    """
    busy, log_pages, copied = _pass(conn)
    for _ in range(FOLLOW_UP_PASSES):
        if busy:
            break
        last = log_pages
        busy, log_pages, copied = _pass(conn)
        if log_pages < last or (log_pages == last and copied == log_pages):
            break
    return busy, log_pages, copied


def _pass(conn: sqlite3.Connection) -> tuple[int, int, int]:
    busy, log_pages, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return int(busy), int(log_pages), int(copied)
