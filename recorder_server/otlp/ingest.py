"""Runs the assembler over each export and hands its events to the writer.

One export at a time (a lock), so two exports of one trace never plan against the
same state. The answer to an export is given after the writer committed its
events: spans that were refused, or whose events the writer refused, are named
in it; the rest of the export is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent_recorder.v1 import recorder_service_pb2 as api

from recorder_server.errors import RecorderError, StorageFull, StorageUnavailable
from recorder_server.otlp import mapping
from recorder_server.otlp.assembler import Assembler
from recorder_server.otlp.store import OtlpStore, Outgoing
from recorder_server.validation import Limits, validate_events
from recorder_server.writer import Writer

log = logging.getLogger(__name__)
# The writer id OTLP ingest records under (leases, logs).
WRITER_ID = "otlp"
# How many refusals an answer spells out before it only counts the rest.
MAX_NAMED = 10


class OtlpIngest:
    def __init__(self, writer: Writer, db_path: Path, limits: Limits, orphan_wait_s: float) -> None:
        self.writer = writer
        self.db_path = db_path
        self.limits = limits
        self.orphan_wait_s = orphan_wait_s
        self._store: OtlpStore | None = None
        self._lock = asyncio.Lock()
        self._expiry: asyncio.Task[None] | None = None
        # Nothing open and nothing to deliver: passes skip the database until the
        # next export (a sidecar that never receives OTLP never reads these tables).
        self._quiet = False

    async def start(self) -> None:
        """Open the state and send what a previous run planned but did not deliver."""
        self._store = await OtlpStore.open(self.db_path)
        try:
            async with self._lock:
                for _, refusal in await self._deliver():
                    log.warning("OTLP events refused: %s", refusal)
                self._quiet = not await self.store.has_open_loops()
        except (StorageFull, StorageUnavailable) as exc:
            log.warning("OTLP events not delivered yet: %s", exc.message)
        self._expiry = asyncio.create_task(self._expire_forever(), name="otlp-orphans")

    async def stop(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._expiry
        if self._store is not None:
            await self._store.close()

    @property
    def store(self) -> OtlpStore:
        assert self._store is not None, "OtlpIngest.start() was not called"
        return self._store

    async def export(self, resource_spans: Sequence[Any]) -> tuple[int, str]:
        """Record an export's spans; returns (spans refused, what was refused).

        Raises StorageFull/StorageUnavailable when the store cannot take the events
        now: they stay in the outbox, and the next export or pass delivers them.
        """
        views, refused = mapping.span_views(resource_spans)
        async with self._lock:
            self._quiet = False
            traces = await self.store.load(v.trace_id for v in views)
            changes = Assembler(traces, self.limits, _now_us()).add(views)
            refused += changes.refused
            await self.store.save(changes)
            delivered = await self._deliver()
        count = len(refused) + len({span for span, _ in delivered if span})
        refused += [message for _, message in delivered]
        if refused:
            log.warning("OTLP export: %d span(s) refused: %s", count, refused[0])
        return count, _summary(refused)

    async def expire(self) -> None:
        """Close loops whose own span did not arrive within the wait; deliver what waits."""
        older = _now_us() - int(self.orphan_wait_s * 1_000_000)
        async with self._lock:
            if self._quiet:
                return
            stale = await self.store.stale_traces(older)
            if stale:
                traces = await self.store.load(stale)
                assembler = Assembler(traces, self.limits, _now_us())
                await self.store.save(assembler.expire(older, self.orphan_wait_s))
            for _, refusal in await self._deliver():
                log.warning("OTLP events refused: %s", refusal)
            self._quiet = not await self.store.has_open_loops()

    async def _expire_forever(self) -> None:
        period = min(max(self.orphan_wait_s / 4, 0.05), 5.0)
        while True:
            await asyncio.sleep(period)
            try:
                await self.expire()
            except (StorageFull, StorageUnavailable) as exc:
                log.warning("OTLP orphan pass postponed: %s", exc.message)
            except Exception:  # a bug must not end the passes: the next one tries again
                log.exception("OTLP orphan pass failed")

    async def _deliver(self) -> list[tuple[str, str]]:
        """Send the outbox in order, in batches; what the writer refuses is named and dropped.

        Returns (the span an event came from, why it was refused) per refused event.
        """
        outgoing = await self.store.outbox()
        refused: list[tuple[str, str]] = []
        size = self.limits.max_events_per_batch
        for start in range(0, len(outgoing), size):
            batch = outgoing[start : start + size]
            envelopes = [api.EventEnvelope(sequence=row[2], event=row[3]) for row in batch]
            try:
                checked = validate_events(api.AppendRequest(events=envelopes), self.limits)
                _, refusals = await self.writer.record(WRITER_ID, checked)
            except (StorageFull, StorageUnavailable):
                raise  # kept in the outbox: delivered by a later pass
            except RecorderError as exc:
                refused += [_refusal(row, exc) for row in batch]
            else:
                refused += [_refusal(batch[r.index], r.error) for r in refusals]
            await self.store.delivered([row[0] for row in batch])
        return refused


def _refusal(row: Outgoing, error: RecorderError) -> tuple[str, str]:
    _, loop_id, sequence, event, span = row
    kind = event.WhichOneof("event")
    where = f"span {span}: " if span else ""
    return (
        span,
        f"{where}the recorder refused {kind} #{sequence} of loop {loop_id}: {error.message}",
    )


def _summary(refused: list[str]) -> str:
    text = "; ".join(refused[:MAX_NAMED])
    if len(refused) > MAX_NAMED:
        text += f"; and {len(refused) - MAX_NAMED} more"
    return text


def _now_us() -> int:
    return time.time_ns() // 1000
