"""WatchSessions never hangs: a subscriber that stops reading is cut off and told
from where to catch up (RESOURCE_EXHAUSTED), while the others go on."""

from __future__ import annotations

from typing import Any, cast

import grpc
import pytest
from agent_recorder.v1 import recorder_service_pb2 as api
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from support.events import aio, ts
from support.recorder import RunningRecorder

DEADLINE = 10.0


async def read(call: Any) -> api.WatchSessionsResponse:
    message = await call.read()
    assert isinstance(message, api.WatchSessionsResponse), message
    return message


def lifecycle(session_id: str) -> api.WatchSessionsResponse:
    message = api.WatchSessionsResponse(
        lifecycle=api.SESSION_LIFECYCLE_ADMITTED, session_id=session_id, agent_id="a"
    )
    message.timestamp.CopyFrom(ts(int(session_id.removeprefix("s"))))
    return message


async def test_a_subscriber_that_does_not_read_gets_an_end_that_says_so(
    recorder: RunningRecorder,
) -> None:
    assert recorder.server is not None and recorder.server.writer is not None
    broadcast = recorder.server.writer.lifecycle
    broadcast.backlog = 3
    stub = aio(recorder.stub())
    slow = stub.WatchSessions(api.WatchSessionsRequest(), timeout=DEADLINE)
    live = stub.WatchSessions(api.WatchSessionsRequest(), timeout=DEADLINE)
    await stub.OpenSession(api.OpenSessionRequest(session_id="s0", agent_id="a"), timeout=DEADLINE)
    assert (await read(slow)).session_id == "s0"  # both subscriptions are live
    assert (await read(live)).session_id == "s0"
    # Published without a pause, as a burst of commits would: nobody reads meanwhile.
    for n in range(1, 11):
        broadcast.publish(lifecycle(f"s{n}"))
    seen = [(await read(slow)).session_id for _ in range(3)]
    assert seen == ["s1", "s2", "s3"]
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await slow.read()
    assert ended.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = ended.value.details()
    assert details == (
        "subscriber fell 3 lifecycle events behind and was cut off; watch again and "
        f"catch up with ListSessions(since={ts(3).ToJsonString()})"
    )
    status = rpc_status.from_call(cast(grpc.Call, ended.value))
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.reason == "FELL_BEHIND"
    assert dict(info.metadata) == {"backlog": "3", "resume_since": ts(3).ToJsonString()}
    # The other subscriber was cut off too (it did not read either), and a new one works.
    assert [(await read(live)).session_id for _ in range(3)] == ["s1", "s2", "s3"]
    with pytest.raises(grpc.aio.AioRpcError) as also:
        await live.read()
    assert also.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    fresh = stub.WatchSessions(api.WatchSessionsRequest(), timeout=DEADLINE)
    await stub.OpenSession(api.OpenSessionRequest(session_id="s99", agent_id="a"), timeout=DEADLINE)
    assert (await read(fresh)).session_id == "s99"
    fresh.cancel()
