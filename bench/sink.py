"""A Record endpoint that acknowledges every batch at once and keeps nothing.

`python -m bench.sink --listen unix:///path` — the transport ceiling: the same
client library, the same Record stream and the same protobuf decoding on a grpc.aio
server as the sidecar's, with no validation, rules or storage behind it. Only
Record is served (a generic handler), since nothing else is called.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import AsyncIterator
from typing import Any

import grpc
from agent_recorder.v1 import recorder_service_pb2 as api

from recorder_server.validation import Limits

SERVICE = api.DESCRIPTOR.services_by_name["RecorderService"].full_name


async def record(
    requests: AsyncIterator[api.RecordRequest], context: grpc.aio.ServicerContext[Any, Any]
) -> AsyncIterator[api.RecordResponse]:
    """Answer hello like the sidecar, then echo each batch's sequences."""
    async for request in requests:
        if request.HasField("hello"):
            yield api.RecordResponse(ready=api.RecordReady())
            continue
        batch = request.batch
        yield api.RecordResponse(
            batch_id=batch.batch_id, sequences=[e.sequence for e in batch.events]
        )


async def serve(listen: str) -> None:
    server = grpc.aio.server(
        options=[("grpc.max_receive_message_length", Limits().max_request_bytes)]
    )
    handler = grpc.stream_stream_rpc_method_handler(
        record,
        request_deserializer=api.RecordRequest.FromString,
        response_serializer=api.RecordResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"Record": handler}),)
    )
    server.add_insecure_port(listen)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", required=True)
    asyncio.run(serve(parser.parse_args().listen))


if __name__ == "__main__":
    main()
