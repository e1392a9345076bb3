"""Places OTLP spans into loops whatever order they arrive in. No I/O.

A loop is keyed by a span: an agent span, or the trace's root when no agent span
is above a model call. Spans end (and are exported) before their parents, so a
model or tool span usually arrives before its loop's own span:

- a model or tool span whose parent has not arrived opens the loop of that
  parent at once (RUNNING), named from what the child says (its conversation and
  agent attributes, else the trace id and service.name); an open loop of the same
  trace with the same session and agent is joined instead, so the steps of one
  agent exported one by one stay one loop;
- a span that is neither agent, model nor tool passes its loop on to its parent;
- the loop completes when its own span arrives (or its key span ends up with no
  parent that continues it); an agent span with ERROR status ends it with the
  status message as the rejection;
- a loop whose span never arrives is closed by `expire` after a bounded wait;
- a span whose loop already ended gets a loop of its own (config segment
  `otlp-late`) under that loop, so nothing is dropped.

Every event is numbered here (the loop's next sequence), so a re-sent batch is
recognised by the writer exactly like a client's re-send.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from agent_recorder.v1 import events_pb2, types_pb2
from agent_recorder.v1 import recorder_service_pb2 as api

from recorder_server.errors import RecorderError
from recorder_server.otlp import mapping
from recorder_server.otlp.mapping import Refused, Role, SpanView
from recorder_server.validation import Limits, validate_events

# (loop id, sequence, event, the span it came from: "trace/span", or "" for a closing)
Envelope = tuple[str, int, events_pb2.AgentEvent, str]


@dataclass
class LoopState:
    loop_id: str
    trace_id: str
    session_id: str
    agent_id: str
    next_seq: int = 0
    turns: int = 0
    usage: types_pb2.Usage = field(default_factory=types_pb2.Usage)
    messages: list[types_pb2.AgentMessage] = field(default_factory=list)
    ended: bool = False
    touched_us: int = 0
    late: bool = False  # opened for one span that came after its loop ended
    last_ns: int = 0  # when the latest span placed in it ended


@dataclass
class SpanNode:
    """A span already placed: its parent, what it is, and the loop it went to."""

    parent_id: str
    role: Role
    loop_id: str = ""


@dataclass
class TraceState:
    trace_id: str
    spans: dict[str, SpanNode] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)  # span id -> loop id
    loops: dict[str, LoopState] = field(default_factory=dict)


@dataclass
class Changes:
    """What a plan changed, for the store and the writer."""

    envelopes: list[Envelope] = field(default_factory=list)
    spans: list[tuple[str, str, SpanNode]] = field(default_factory=list)
    keys: list[tuple[str, str, str]] = field(default_factory=list)
    loops: dict[str, LoopState] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)


class Assembler:
    """One export (or one expiry pass) applied to the state of its traces."""

    def __init__(self, traces: dict[str, TraceState], limits: Limits, now_us: int) -> None:
        self.traces = traces
        self.limits = limits
        self.now_us = now_us
        self.changes = Changes()
        self._arriving: dict[tuple[str, str], SpanView] = {}
        self._source = ""  # the span being placed, for the events it makes

    # -- entry points ---------------------------------------------------------

    def add(self, views: Sequence[SpanView]) -> Changes:
        """Place each new span; re-exported ones change nothing, bad ones are refused."""
        fresh = []
        # Children before parents: by end, a later start first when ends tie, an
        # agent span last when both tie.
        order = sorted(views, key=lambda v: (v.end_ns, -v.start_ns, v.role == Role.AGENT))
        for view in order:
            key = (view.trace_id, view.span_id)
            if key in self._arriving or view.span_id in self._trace(view.trace_id).spans:
                continue
            try:
                self._preview(view)
            except Refused as exc:
                self.changes.refused.append(str(exc))
                continue
            self._arriving[key] = view
            fresh.append(view)
        for view in fresh:
            self._place(view)
        return self.changes

    def expire(self, older_than_us: int, wait_s: float) -> Changes:
        """Close open loops whose own span has not arrived and that nothing touched lately."""
        for trace in self.traces.values():
            for loop in list(trace.loops.values()):
                if not loop.ended and loop.touched_us < older_than_us:
                    waiting = sorted(k for k, v in trace.keys.items() if v == loop.loop_id)
                    reason = (
                        f"otlp: the loop's own span ({', '.join(waiting)}) did not arrive "
                        f"within {wait_s:g} s; closed with what arrived"
                    )
                    self._end(loop, loop.last_ns or loop.touched_us * 1000, reason)
        return self.changes

    # -- checks ---------------------------------------------------------------

    def _preview(self, view: SpanView) -> None:
        """Build the span's events with stand-in ids and validate them: refuse early."""
        loop_id = "s.otlp.1"
        role = view.role
        if role == Role.MODEL:
            events = mapping.turn(view, loop_id, 0).events
        elif role == Role.TOOL:
            events = mapping.tool_events(view, loop_id, None)
        elif role == Role.AGENT:
            messages = mapping.agent_messages(view)
            events = [mapping.agent_end(loop_id, view.end_ns, types_pb2.Usage(), messages, None)]
        else:
            return
        request = api.AppendRequest(events=[api.EventEnvelope(event=e) for e in events])
        try:
            faults = validate_events(request, self.limits).faults
        except RecorderError as exc:
            raise Refused(f"{view.label}: {exc.message}") from None
        if faults:
            raise Refused(f"{view.label}: {faults[min(faults)].message}")

    # -- placing --------------------------------------------------------------

    def _trace(self, trace_id: str) -> TraceState:
        return self.traces.setdefault(trace_id, TraceState(trace_id))

    def _place(self, view: SpanView) -> None:
        trace = self._trace(view.trace_id)
        self._source = f"{view.trace_id}/{view.span_id}"
        role = view.role
        node = SpanNode(view.parent_id, role)
        if role == Role.AGENT:
            node.loop_id = self._agent(trace, view)
        else:
            self._pass_up(trace, view)
        if role in (Role.MODEL, Role.TOOL):
            loop = self._owner(trace, view)
            if role == Role.MODEL:
                self._turn(loop, view)
            else:
                child = self._spawned(trace, view)
                self._emit_all(loop, mapping.tool_events(view, loop.loop_id, child))
            loop.last_ns = max(loop.last_ns, view.end_ns)
            if loop.late:
                self._end(loop, view.end_ns, None)
            node.loop_id = loop.loop_id
        trace.spans[view.span_id] = node
        self.changes.spans.append((trace.trace_id, view.span_id, node))
        self._arriving.pop((view.trace_id, view.span_id), None)
        if role != Role.AGENT:
            self._settle(trace, view)

    def _pass_up(self, trace: TraceState, view: SpanView) -> None:
        """A loop keyed by this span continues in its parent, if the parent is still to come."""
        loop_id = trace.keys.get(view.span_id)
        parent = view.parent_id
        if loop_id is None or trace.loops[loop_id].ended or not parent:
            return
        if parent not in trace.keys and parent not in trace.spans:
            self._key(trace, parent, loop_id)

    def _settle(self, trace: TraceState, view: SpanView) -> None:
        """A loop keyed by this (non-agent) span ends unless its parent carries it on."""
        loop_id = trace.keys.get(view.span_id)
        if loop_id is None:
            return
        loop = trace.loops[loop_id]
        if not loop.ended and trace.keys.get(view.parent_id) != loop_id:
            self._end(loop, view.end_ns, None)

    def _arriving_view(self, trace: TraceState, span_id: str) -> SpanView | None:
        return self._arriving.get((trace.trace_id, span_id))

    def _owner(self, trace: TraceState, view: SpanView) -> LoopState:
        """The open loop a model or tool span belongs to (opened if need be)."""
        node, last, seen = view.parent_id, view.span_id, {view.span_id}
        while node and node not in seen:
            seen.add(node)
            if node in trace.keys:
                return self._open_or_late(trace, trace.keys[node], view)
            known = trace.spans.get(node)
            arriving = self._arriving_view(trace, node)
            if known is None and arriving is None:
                return self._provisional(trace, node, view)
            if arriving is not None and arriving.role == Role.AGENT:
                return self._loop_for(trace, node, arriving, view)
            if known is not None and known.role == Role.TOOL and known.loop_id:
                return self._open_or_late(trace, known.loop_id, view)
            last = node
            node = known.parent_id if known is not None else arriving.parent_id if arriving else ""
        root = view if last == view.span_id else self._arriving_view(trace, last)
        return self._loop_for(trace, last, root, view)

    def _open_or_late(self, trace: TraceState, loop_id: str, view: SpanView) -> LoopState:
        loop = trace.loops[loop_id]
        return self._late(trace, view, loop) if loop.ended else loop

    def _provisional(self, trace: TraceState, parent: str, child: SpanView) -> LoopState:
        """The parent has not arrived: join the trace's matching open loop, or open one."""
        session, agent, _, _ = self._names(trace, child, None, parent)
        for loop in trace.loops.values():
            if not loop.ended and (loop.session_id, loop.agent_id) == (session, agent):
                self._key(trace, parent, loop.loop_id)
                return loop
        return self._loop_for(trace, parent, None, child)

    def _loop_for(
        self, trace: TraceState, key: str, key_view: SpanView | None, opened_by: SpanView
    ) -> LoopState:
        """The loop keyed by `key`, opened now if it has none."""
        if key in trace.keys:
            return self._open_or_late(trace, trace.keys[key], opened_by)
        session, agent, parent, originals = self._names(trace, key_view or opened_by, key_view, key)
        loop = LoopState(mapping.loop_id_of(session, key), trace.trace_id, session, agent)
        self._key(trace, key, loop.loop_id)
        metadata = mapping.provenance(key, key_view, opened_by, originals)
        start_ns = (key_view or opened_by).start_ns
        return self._start(trace, loop, parent, start_ns, metadata)

    def _late(self, trace: TraceState, view: SpanView, ended: LoopState) -> LoopState:
        """A span whose loop already ended: a loop of its own under that one."""
        loop = LoopState(
            mapping.loop_id_of(ended.session_id, view.span_id, late=True),
            trace.trace_id,
            ended.session_id,
            ended.agent_id,
            late=True,
        )
        metadata = mapping.provenance(view.span_id, view, view, {}, late_for=ended.loop_id)
        return self._start(trace, loop, ended.loop_id, view.start_ns, metadata)

    def _start(
        self,
        trace: TraceState,
        loop: LoopState,
        parent_loop_id: str | None,
        start_ns: int,
        metadata: dict[str, object],
    ) -> LoopState:
        trace.loops[loop.loop_id] = loop
        event = mapping.agent_start(
            loop.loop_id, loop.session_id, loop.agent_id, parent_loop_id, start_ns, metadata
        )
        self._emit(loop, event)
        return loop

    def _names(
        self, trace: TraceState, source: SpanView, key_view: SpanView | None, key: str
    ) -> tuple[str, str, str | None, dict[str, str]]:
        """Session, agent, parent loop and the original ids the first two stand for."""
        limit = self.limits.max_id_length
        parent, via_tool = self._parent_link(trace, key_view) if key_view else (None, False)
        hint = mapping.session_hint(source)
        raw_session = hint or trace.trace_id
        if parent is not None and not via_tool:
            raw_session, session = parent.session_id, parent.session_id
        else:
            session = mapping.fit_id(raw_session, limit, dots=False)
            if parent is not None and (hint is None or session == parent.session_id):
                raw_session = mapping.derived_session(parent.session_id, key)
                session = mapping.fit_id(raw_session, limit, dots=False)
        raw_agent = mapping.agent_hint(source) or source.service_name
        agent = mapping.fit_id(raw_agent, limit, dots=True)
        originals = {
            name: raw
            for name, raw, used in (
                ("session_id", raw_session, session),
                ("agent_id", raw_agent, agent),
            )
            if raw != used
        }
        return session, agent, parent.loop_id if parent else None, originals

    def _parent_link(self, trace: TraceState, view: SpanView) -> tuple[LoopState | None, bool]:
        """The loop an agent span runs under, and whether a tool span is between them."""
        node, seen = view.parent_id, {view.span_id}
        while node and node not in seen:
            seen.add(node)
            if node in trace.keys:
                return trace.loops[trace.keys[node]], False
            known = trace.spans.get(node)
            arriving = self._arriving_view(trace, node)
            if known is None and arriving is None:
                return None, False
            if known is not None and known.role == Role.TOOL and known.loop_id:
                return trace.loops[known.loop_id], True
            if arriving is not None and arriving.role == Role.TOOL:
                return self._owner(trace, arriving), True
            if arriving is not None and arriving.role == Role.AGENT:
                return self._loop_for(trace, node, arriving, arriving), False
            node = known.parent_id if known is not None else arriving.parent_id if arriving else ""
        return None, False

    def _spawned(self, trace: TraceState, tool: SpanView) -> str | None:
        """The loop of an agent span directly under this tool span, if one is known."""
        for node in trace.spans.values():
            if node.parent_id == tool.span_id and node.role == Role.AGENT and node.loop_id:
                return node.loop_id
        for (trace_id, span_id), view in list(self._arriving.items()):
            same = trace_id == trace.trace_id and view.parent_id == tool.span_id
            if same and view.role == Role.AGENT:
                return self._loop_for(trace, span_id, view, view).loop_id
        return None

    def _agent(self, trace: TraceState, view: SpanView) -> str:
        """The agent span arrived: its loop completes (opened first if nothing did)."""
        loop_id = trace.keys.get(view.span_id)
        if loop_id is not None and trace.loops[loop_id].ended:
            loop = self._late(trace, view, trace.loops[loop_id])
        else:
            loop = self._loop_for(trace, view.span_id, view, view)
        usage = mapping.usage_of(view.attrs)
        messages = mapping.agent_messages(view) or None
        self._end(loop, view.end_ns, mapping.rejection_of(view), usage, messages)
        return loop.loop_id

    def _turn(self, loop: LoopState, view: SpanView) -> None:
        turn = mapping.turn(view, loop.loop_id, loop.turns)
        loop.turns += 1
        mapping.add_usage(loop.usage, turn.usage)
        loop.messages = turn.messages
        self._emit_all(loop, turn.events)

    def _end(
        self,
        loop: LoopState,
        end_ns: int,
        rejection: str | None,
        usage: types_pb2.Usage | None = None,
        messages: list[types_pb2.AgentMessage] | None = None,
    ) -> None:
        """AgentEnd: usage is the agent span's own, else the sum of the loop's turns."""
        event = mapping.agent_end(
            loop.loop_id,
            end_ns,
            usage if usage is not None else loop.usage,
            messages if messages is not None else loop.messages,
            rejection,
        )
        self._emit(loop, event)
        loop.ended = True
        loop.messages = []  # its AgentEnd holds them now: the saved state keeps no copy

    # -- recording changes ----------------------------------------------------

    def _key(self, trace: TraceState, span_id: str, loop_id: str) -> None:
        trace.keys[span_id] = loop_id
        self.changes.keys.append((trace.trace_id, span_id, loop_id))

    def _emit_all(self, loop: LoopState, events: Iterable[events_pb2.AgentEvent]) -> None:
        for event in events:
            self._emit(loop, event)

    def _emit(self, loop: LoopState, event: events_pb2.AgentEvent) -> None:
        self.changes.envelopes.append((loop.loop_id, loop.next_seq, event, self._source))
        loop.next_seq += 1
        loop.touched_us = self.now_us
        self.changes.loops[loop.loop_id] = loop
