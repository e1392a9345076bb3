"""An agent process that starts a loop, records a turn's first events and then
waits to be killed (SIGKILL) mid-loop; not a test (see test_abandon.py).

Prints "recorded" once the server acknowledged everything it emitted.
"""

from __future__ import annotations

import argparse
import asyncio

from recorder_client import RecorderClient
from support.events import agent_start, progress, turn_start


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("target")
    parser.add_argument("writer_id")
    parser.add_argument("loop_id")
    args = parser.parse_args()
    session_id = args.loop_id.split(".", 1)[0]
    async with RecorderClient.connect(args.target) as client:
        sender = client.sender(writer_id=args.writer_id)
        sender.emit(agent_start(session_id, args.loop_id, at=1))
        sender.emit(turn_start(args.loop_id, 0, at=2))
        sender.emit(progress(args.loop_id, "call-1", "bash", "working"))
        await sender.flush(10.0)
        print("recorded", flush=True)
        await asyncio.sleep(120)


if __name__ == "__main__":
    asyncio.run(main())
