"""The store the seed implies: the whole session re-written as one JSON file per
saved event (its runtime keeps `{dir}/{session_id}.json`, see phi-json.md).

The session is held as phi-json in memory, as the seed holds its Session, and
each saved event appends to it and re-writes the file. The rate is measured once
the session holds `size` events: the cost then is one whole-session encode and
write per event. The baseline is generous to the seed: compact JSON through
Python's C encoder (the runtime pretty-prints), no fsync, and only loop heads
and events in the file (the runtime's also repeats messages and turns).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from agent_recorder.v1 import session_pb2

from bench.workload import Event, Workload
from recorder_client.phi_json import event_to_json, loop_record_to_json, session_to_json


def _head(event: Event) -> session_pb2.Session:
    start = event.agent_start
    session = session_pb2.Session(session_id=start.session_id, agent_id=start.agent_id)
    session.created_at.CopyFrom(start.timestamp)
    session.last_active_at.CopyFrom(start.timestamp)
    session.formation.first_loop.timestamp.CopyFrom(start.timestamp)
    return session


def _loop(event: Event) -> dict[str, Any]:
    start = event.agent_start
    record = session_pb2.LoopRecord(
        loop_id=start.loop_id,
        session_id=start.session_id,
        agent_id=start.agent_id,
        status=session_pb2.LOOP_STATUS_RUNNING,
    )
    record.continuation_kind.CopyFrom(start.continuation_kind)
    record.started_at.CopyFrom(start.timestamp)
    return loop_record_to_json(record)


class _SessionFile:
    """One session as phi-json in memory, saved whole to its file."""

    def __init__(self, path: Path, first: Event) -> None:
        self.path = path
        self.session = session_to_json(_head(first))
        self.loops: dict[str, dict[str, Any]] = {}

    def add(self, event: Event) -> None:
        if event.HasField("agent_start"):
            self.loops[event.agent_start.loop_id] = loop = _loop(event)
            self.session["loops"].append(loop)
        kind = event.WhichOneof("event")
        assert kind is not None
        events = self.loops[getattr(event, kind).loop_id]["events"]
        events.append({"sequence": len(events), "event": event_to_json(event)})

    def save(self) -> None:
        self.path.write_text(json.dumps(self.session))


def json_rewrite_eps(workdir: Path, size: int, timed: int, seed: int) -> float:
    """Events per second saved into a session that already holds `size` events."""
    workload = Workload(seed)
    sid = workload.session_id()
    events: list[Event] = []
    while len(events) < size + timed:
        number = len({e.agent_start.loop_id for e in events if e.HasField("agent_start")})
        events += workload.loop(sid, number, continuation="default" if number else "initial")
    store = _SessionFile(workdir / f"{sid}.json", events[0])
    for event in events[:size]:
        store.add(event)  # the state at `size` events; saving each would cost O(size^2)
    began = time.perf_counter()
    for event in events[size : size + timed]:
        store.add(event)
        store.save()
    return timed / (time.perf_counter() - began)
