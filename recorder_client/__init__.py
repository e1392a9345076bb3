"""The client library agents import to record into the agent-recorder sidecar.

`RecorderClient` reads and manages sessions; `RecorderClient.sender()` makes an
`EventSender` that delivers events fire-and-forget with proof on `flush()`;
`SyncRecorder` is the same for code without asyncio; `loop`/`sync_loop` record a
block as one agent loop. The query helpers are the seed's Session/LoopRecord/Turn
methods over the protobufs.
"""

from recorder_client.client import RecorderClient, RetryPolicy
from recorder_client.delivery import DeliveryConfig, EventSender, SenderStats
from recorder_client.errors import (
    DeliveryError,
    EventsRefused,
    QueueFull,
    RecorderRpcError,
    RefusedEvent,
    RejectedBatch,
    SidecarUnreachable,
)
from recorder_client.loops import EventSink, LoopRun, loop, sync_loop
from recorder_client.queries import (
    all_messages,
    children_of,
    event_loop_id,
    get_loop,
    get_turn,
    has_tool_calls,
    loop_chain_to,
    parallel_siblings,
    root_loops,
    sum_usage,
    total_usage,
    turn_count,
    turn_duration,
    turn_index,
)
from recorder_client.sync import SyncRecorder

__all__ = [
    "DeliveryConfig",
    "DeliveryError",
    "EventSender",
    "EventSink",
    "EventsRefused",
    "LoopRun",
    "QueueFull",
    "RecorderClient",
    "RecorderRpcError",
    "RefusedEvent",
    "RejectedBatch",
    "RetryPolicy",
    "SenderStats",
    "SidecarUnreachable",
    "SyncRecorder",
    "all_messages",
    "children_of",
    "event_loop_id",
    "get_loop",
    "get_turn",
    "has_tool_calls",
    "loop",
    "loop_chain_to",
    "parallel_siblings",
    "root_loops",
    "sum_usage",
    "sync_loop",
    "total_usage",
    "turn_count",
    "turn_duration",
    "turn_index",
]
