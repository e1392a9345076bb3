"""The servicer's shape: thin handlers that cannot forget to validate."""

from __future__ import annotations

from typing import Any

from agent_recorder.v1 import recorder_service_pb2 as api

from recorder_server.service import RecorderServicer


def _validates(handler: Any) -> bool:
    while handler is not None:
        if getattr(handler, "validates", False):
            return True
        handler = getattr(handler, "__wrapped__", None)
    return False


def test_every_handler_but_the_event_carrying_ones_validates_its_request() -> None:
    """No handler can forget validation: `rpc`/`stream_rpc` do it; Record and Append
    check event by event instead (one bad event is refused alone)."""
    methods = api.DESCRIPTOR.services_by_name["RecorderService"].methods
    unvalidated = {m.name for m in methods if not _validates(getattr(RecorderServicer, m.name))}
    assert unvalidated == {"Record", "Append"}
