"""What an agent sees when it records: durable throughput, ack latency, emit cost.

All three go through the client library's EventSender, in client processes of
their own (bench/fleet.py), against a server process (bench/sidecar.py).

- Throughput: each client emits its events as fast as the sender takes them
  (yielding to the event loop once per batch, as an agent's own awaits would)
  and then flushes; the clock runs from the common start until the last flush
  returns, i.e. until every event is acknowledged as committed.
- Ack latency: one client emits at a steady rate with the library's default
  batching; every `probe_every`-th event is followed by a flush(), and its
  latency is from emit() until that flush returns (the proof it is committed).
  A pending flush makes the sender send at once instead of lingering, so this is
  the latency of a caller who asks for proof. With probe_every=1 every event is
  its own batch, which measures the server's cost per batch instead.
- Emit cost: the wall time of each emit() call, while the sender's background
  task delivers on the same event loop.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from grpc import aio

from bench.fleet import Start, run_clients
from bench.sidecar import ServerProcess
from bench.workload import Event, mix_stream
from recorder_client import DeliveryConfig, EventSender, QueueFull, RecorderClient

# The sender's default batch size: yield to the loop once per batch's worth.
YIELD_EVERY = 500
FLUSH_TIMEOUT_S = 600.0
# Whole sessions can exceed gRPC's default 4 MiB receive limit (reads use this too).
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 1024 * 1024 * 1024)]


async def connect(target: str) -> RecorderClient:
    """A client whose channel is already connected, so no timing includes the dial."""
    channel = aio.insecure_channel(target, options=CHANNEL_OPTIONS)
    await channel.channel_ready()
    return RecorderClient(channel)


async def emit(sender: EventSender, event: Event) -> None:
    """emit(), waiting for room when the sender's pending bound is reached."""
    try:
        sender.emit(event)
    except QueueFull:
        await sender.emit_wait(event)


def _sender(client: RecorderClient) -> EventSender:
    """The library's defaults, except that a full sender is waited on (within the
    phase's own time bound) instead of refusing: a benchmark client has nothing
    better to do than wait for the server."""
    return client.sender(
        config=DeliveryConfig(
            on_full="block", block_timeout=FLUSH_TIMEOUT_S, flush_timeout=FLUSH_TIMEOUT_S
        )
    )


# -- throughput -------------------------------------------------------------------


@dataclass(frozen=True)
class Stream:
    """What each client sends: `events(seed + index)`, built before the start or lazily."""

    events: Callable[[int], Iterable[Event]]
    seed: int
    pregenerate: bool = True


@dataclass(frozen=True)
class Delivered:
    events: int
    nbytes: int
    started: float
    finished: float
    cpu_seconds: float


@dataclass(frozen=True)
class Throughput:
    events: int
    nbytes: int
    seconds: float
    # CPU used while delivering: the server process, and all clients together.
    server_cpu_seconds: float
    client_cpu_seconds: float

    @property
    def eps(self) -> float:
        return self.events / self.seconds

    @property
    def mb_per_s(self) -> float:
        return self.nbytes / self.seconds / 1e6

    def cpu_note(self) -> str:
        """CPU per event on each side: on 2 cores, their sum bounds throughput."""
        server, clients = (
            1e6 * cpu / self.events for cpu in (self.server_cpu_seconds, self.client_cpu_seconds)
        )
        return f"CPU per event: server {server:.0f} us, clients {clients:.0f} us"


async def _deliver(target: str, index: int, stream: Stream, start: Start) -> Delivered:
    events = stream.events(stream.seed + index)
    count = nbytes = 0
    if stream.pregenerate:
        events = list(events)
        nbytes = sum(event.ByteSize() for event in events)
    client = await connect(target)
    async with client:
        sender = _sender(client)
        await start()
        started = time.monotonic()
        cpu_started = time.process_time()
        for event in events:
            await emit(sender, event)
            count += 1
            if not stream.pregenerate:
                nbytes += event.ByteSize()
            if count % YIELD_EVERY == 0:
                await asyncio.sleep(0)
        await sender.flush()
        finished = time.monotonic()
        cpu_seconds = time.process_time() - cpu_started
        await sender.close()
    return Delivered(count, nbytes, started, finished, cpu_seconds)


def throughput(server: ServerProcess, clients: int, stream: Stream, timeout: float) -> Throughput:
    """Events per second from the common start until every client's flush returned.

    The server's CPU is read around the whole client run (their preparation
    included, during which the server idles).
    """
    cpu_before = server.cpu_seconds()
    done = run_clients(_deliver, server.target, clients, stream, timeout)
    seconds = max(d.finished for d in done) - min(d.started for d in done)
    return Throughput(
        sum(d.events for d in done),
        sum(d.nbytes for d in done),
        seconds,
        server.cpu_seconds() - cpu_before,
        sum(d.cpu_seconds for d in done),
    )


# -- ack latency ------------------------------------------------------------------


@dataclass(frozen=True)
class Paced:
    rate: float
    seconds: float
    warmup: int
    seed: int
    probe_every: int


async def _paced(target: str, index: int, paced: Paced, start: Start) -> list[float]:
    events = mix_stream(paced.seed, int(paced.rate * paced.seconds) + paced.warmup)
    latencies: list[float] = []
    client = await connect(target)
    async with client:
        sender = _sender(client)

        async def confirm(emitted: float, keep: bool) -> None:
            await sender.flush()
            if keep:
                latencies.append(time.perf_counter() - emitted)

        await start()
        confirmations = []
        began = time.perf_counter()
        for i, event in enumerate(events):
            delay = began + i / paced.rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            emitted = time.perf_counter()
            sender.emit(event)
            if i % paced.probe_every == 0:
                confirmations.append(asyncio.create_task(confirm(emitted, i >= paced.warmup)))
        await asyncio.gather(*confirmations)
        await sender.close()
    return latencies


def ack_latency(target: str, paced: Paced, timeout: float) -> tuple[float, float]:
    """(p50, p99) in milliseconds."""
    [latencies] = run_clients(_paced, target, 1, paced, timeout)
    cuts = statistics.quantiles(latencies, n=100)
    return cuts[49] * 1e3, cuts[98] * 1e3


# -- emit cost --------------------------------------------------------------------


@dataclass(frozen=True)
class Emits:
    count: int
    seed: int


async def _emits(target: str, index: int, emits: Emits, start: Start) -> list[int]:
    events = mix_stream(emits.seed, emits.count)
    samples: list[int] = []
    client = await connect(target)
    async with client:
        sender = _sender(client)
        await start()
        for i, event in enumerate(events):
            began = time.perf_counter_ns()
            try:
                sender.emit(event)
            except QueueFull:
                await sender.emit_wait(event)  # not a sample: the agent waited for room
                continue
            samples.append(time.perf_counter_ns() - began)
            if i % 100 == 99:
                await asyncio.sleep(0)
        await sender.close()
    return samples


def emit_cost(target: str, emits: Emits, timeout: float) -> float:
    """Median wall time of one emit() call, in microseconds."""
    [samples] = run_clients(_emits, target, 1, emits, timeout)
    return statistics.median(samples) / 1e3
