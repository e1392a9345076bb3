"""The session page's outline: what the tree and the timeline draw, and nothing more.

A session of a thousand loops carries every message of every turn; turning all of
it into protobuf JSON would cost seconds and megabytes the page never shows at
once. The outline keeps ids, statuses, kinds, times and usage, and derives the
tool executions from the turns (a call starts when the answer asking for it was
written and ends when its result was); the details of one loop are fetched when
it is clicked.
"""

from __future__ import annotations

from typing import Any

from agent_recorder.v1 import recorder_service_pb2 as api
from agent_recorder.v1 import session_pb2, types_pb2
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from recorder_client.queries import total_usage
from recorder_server.otlp.mapping import continuation_unknown
from recorder_server.refused import sent_event

JsonDict = dict[str, Any]

_STATUS = {
    session_pb2.LOOP_STATUS_PENDING: "pending",
    session_pb2.LOOP_STATUS_RUNNING: "running",
    session_pb2.LOOP_STATUS_COMPLETED: "completed",
    session_pb2.LOOP_STATUS_REJECTED: "rejected",
    session_pb2.LOOP_STATUS_ABORTED: "aborted",
}


def millis(stamp: Timestamp) -> int | None:
    """Milliseconds since the epoch, or None for an unset time (the JS time axis unit)."""
    if not stamp.seconds and not stamp.nanos:
        return None
    return stamp.seconds * 1000 + stamp.nanos // 1_000_000


def usage_dict(usage: types_pb2.Usage) -> JsonDict:
    """Token counts; a total the runtime left at zero reads as the sum of the parts."""
    return {
        "input": usage.input,
        "output": usage.output,
        "reasoning": usage.reasoning,
        "cacheRead": usage.cache_read,
        "cacheWrite": usage.cache_write,
        "total": usage.total_tokens
        or usage.input + usage.output + usage.cache_read + usage.cache_write,
    }


def cost_dict(cost: types_pb2.Cost | None) -> JsonDict | None:
    """A cost for the page: amount is None when nothing in it had a price (never 0)."""
    if cost is None:
        return None
    return {
        "amount": cost.amount or None,
        "currency": cost.currency,
        "priced": cost.priced,
        "source": cost.source,
        "unpricedReason": cost.unpriced_reason,
        "pricedCalls": cost.priced_calls,
        "unpricedCalls": cost.unpriced_calls,
    }


def continuation(kind: types_pb2.ContinuationKind) -> JsonDict:
    """The kind's name ("initial" when unset, as the proto says) and its tag if any."""
    name = kind.WhichOneof("kind") or "initial"
    tag = getattr(kind, name).tag if name in ("rerun", "branch") else ""
    return {"name": name, "tag": tag}


_TRIGGER = {
    value: name.removeprefix("TURN_TRIGGER_").lower()
    for name, value in types_pb2.TurnTrigger.items()
}


def tools_of(turn: session_pb2.Turn, began: int | None, ended: int | None) -> list[JsonDict]:
    """The tool calls of a turn's answer, each with the time span of its execution."""
    calls = [
        block.tool_call for block in turn.output_message.content if block.HasField("tool_call")
    ]
    if not calls:
        return []
    results = {m.tool_call_id: m for m in turn.tool_results}
    asked = millis(turn.output_message.timestamp) or began
    if (
        asked is not None
        and began is not None
        and ended is not None
        and not began <= asked <= ended
    ):
        asked = began  # an answer stamped outside its own turn: trust the turn
    tools = []
    for call in calls:
        result = results.get(call.id)
        tools.append(
            {
                "id": call.id,
                "name": call.name,
                "start": asked,
                "end": (millis(result.timestamp) if result is not None else None) or ended,
                "isError": result is not None and result.is_error,
            }
        )
    return tools


def turn_outline(turn: session_pb2.Turn, cost: api.TurnCost | None = None) -> JsonDict:
    """A turn's bar: its span, trigger, token total and cost (the details come with its loop)."""
    began, ended = millis(turn.started_at), millis(turn.ended_at)
    return {
        "index": turn.turn_id.turn_index,
        "trigger": _TRIGGER.get(turn.triggered_by, "unspecified"),
        "start": began,
        "end": ended,
        "tokens": usage_dict(turn.usage)["total"],
        "model": cost.model if cost else turn.output_message.model,
        "cost": cost_dict(cost.cost) if cost else None,
        "tools": tools_of(turn, began, ended),
    }


def loop_outline(
    loop: session_pb2.LoopRecord, cost: api.LoopCost | None = None, *, with_turns: bool = True
) -> JsonDict:
    """A loop's node and bar; without turns, only their count (the page asks when expanded)."""
    group = loop.parallel_group if loop.HasField("parallel_group") else None
    turn_costs = {c.turn_index: c for c in cost.turns} if cost else {}
    turns = [turn_outline(t, turn_costs.get(t.turn_id.turn_index)) for t in loop.turns]
    return {
        "id": loop.loop_id,
        "parent": loop.parent_loop_id if loop.HasField("parent_loop_id") else None,
        "status": _STATUS.get(loop.status, "unspecified"),
        "kind": {"name": "unknown", "tag": ""}
        if continuation_unknown(loop)
        else continuation(loop.continuation_kind),
        "start": millis(loop.started_at),
        "end": millis(loop.ended_at),
        "model": loop.config.model,
        "usage": usage_dict(loop.usage),
        "rejection": loop.rejection if loop.HasField("rejection") else None,
        "turnCount": len(loop.turns),
        "cost": cost_dict(cost.cost) if cost else None,
        "turns": turns if with_turns else None,
        "childRefs": [json_format.MessageToDict(ref) for ref in loop.child_loop_refs],
        "parallel": None
        if group is None
        else {
            "loops": list(group.all_loop_ids),
            "selected": group.selected_loop_id,
            "isSelected": group.is_selected,
        },
    }


# A session with more loops than this opens with its loops alone.
TURNS_UP_TO = 200


def session_outline(
    session: session_pb2.Session,
    cost: api.SessionCost | None = None,
    *,
    turns_up_to: int = TURNS_UP_TO,
) -> JsonDict:
    """The session's header, its loops in recorded order, its total usage and its cost
    (its own, its sub-agent tree's and each spawned session's).

    Turns are included when the session has at most turns_up_to loops: a big
    session opens with its loops alone.
    """
    with_turns = len(session.loops) <= turns_up_to
    header = json_format.MessageToDict(
        session_pb2.Session(
            session_id=session.session_id,
            agent_id=session.agent_id,
            created_at=session.created_at,
            last_active_at=session.last_active_at,
            formation=session.formation,
            parent_spawn_ref=session.parent_spawn_ref
            if session.HasField("parent_spawn_ref")
            else None,
            scope=session.scope,
            finalized_at=session.finalized_at if session.HasField("finalized_at") else None,
        )
    )
    loop_costs = {c.loop_id: c for c in cost.loops} if cost else {}
    return {
        "session": header,
        "finalized": session.HasField("finalized_at"),
        "usage": usage_dict(total_usage(session)),
        "cost": cost_dict(cost.session) if cost else None,
        "treeCost": cost_dict(cost.tree) if cost else None,
        "spawned": [
            {
                "sessionId": s.session_id,
                "agentId": s.agent_id,
                "parentSessionId": s.parent_session_id,
                "cost": cost_dict(s.cost),
                "treeCost": cost_dict(s.tree),
            }
            for s in (cost.spawned if cost else ())
        ],
        "loops": [
            loop_outline(loop, loop_costs.get(loop.loop_id), with_turns=with_turns)
            for loop in session.loops
        ],
    }


def refusal_json(refusal: session_pb2.RefusedEvent) -> JsonDict:
    """A refused event as the page shows it: where, why, and what was sent."""
    return {
        "loopId": refusal.loop_id,
        "slot": refusal.slot if refusal.HasField("slot") else None,
        "reason": refusal.reason,
        "message": refusal.message,
        "refusedAt": millis(refusal.refused_at),
        "writerId": refusal.writer_id,
        "sent": sent_event(refusal),
    }
