"""One client process of the kill -9 scenario (see fault_harness.py); not a test.

Emits its planned events through EventSender as an agent would (emit_wait, so a
sender whose server is down fills up and the agent waits), reports on stdout
"acknowledged N" as it goes, and ends with one JSON line of what it emitted. It
exits 0 only when flush() proved every event stored.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import Counter

from recorder_client import DeliveryConfig, DeliveryError, RecorderClient
from support.fault_harness import plan

# Patient enough to outlive every restart of the scenario; a small pending bound
# keeps the stream going throughout the run instead of queueing it all at once.
CONFIG = DeliveryConfig(
    max_batch_events=200,
    max_pending_events=500,
    on_full="block",
    block_timeout=120.0,
    reconnect_deadline=120.0,
    initial_backoff=0.02,
    max_backoff=0.5,
    flush_timeout=120.0,
)
REPORT_EVERY = 250


async def main(target: str, client_no: int, count: int, seed: int) -> int:
    emitted: Counter[str] = Counter()
    async with RecorderClient.connect(target) as client:
        sender = client.sender(writer_id=f"fault-client-{client_no}", config=CONFIG)
        for n, item in enumerate(plan(client_no, count, seed), 1):
            await sender.emit_wait(item.make())
            emitted[item.loop_id] += 1
            if n % REPORT_EVERY == 0:
                print(f"acknowledged {sender.stats().acknowledged}", flush=True)
                await asyncio.sleep(0)  # let the sender batch, as an agent's awaits would
        try:
            await sender.flush()
        except DeliveryError as error:
            print(f"client {client_no}: {error}", file=sys.stderr)
            return 1
        stats = sender.stats()
        print(f"acknowledged {stats.acknowledged}", flush=True)
        report = {
            "emitted": stats.emitted,
            "acknowledged": stats.acknowledged,
            "resent": stats.resent,
            "loops": dict(emitted),
        }
        print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", required=True)
    parser.add_argument("--client", type=int, required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.target, args.client, args.events, args.seed)))
