"""Rich renderings of stored sessions for the terminal (`ls`, `show`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import TypeAlias

from agent_recorder.v1 import events_pb2, session_pb2, types_pb2
from agent_recorder.v1 import recorder_service_pb2 as api
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from recorder_client.queries import root_loops
from recorder_server.otlp.mapping import continuation_unknown

STATUS_STYLE = {
    session_pb2.LOOP_STATUS_PENDING: ("pending", "dim"),
    session_pb2.LOOP_STATUS_RUNNING: ("running", "bold yellow"),
    session_pb2.LOOP_STATUS_COMPLETED: ("completed", "green"),
    session_pb2.LOOP_STATUS_REJECTED: ("rejected", "red"),
    session_pb2.LOOP_STATUS_ABORTED: ("aborted", "magenta"),
}


def when(ts: Timestamp) -> str:
    if not ts.seconds and not ts.nanos:
        return "-"
    moment = datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, tz=UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def continuation(kind: types_pb2.ContinuationKind) -> str:
    which = kind.WhichOneof("kind") or "initial"
    if which in ("rerun", "branch"):
        return f"{which}:{getattr(kind, which).tag}"
    return which


def usage_text(usage: types_pb2.Usage) -> str:
    text = f"in {usage.input} / out {usage.output}"
    if usage.cache_read:
        text += f" / cache {usage.cache_read}"
    return text


def money(cost: types_pb2.Cost, sep: str = " ") -> str:
    """A cost as people read it: "$0.0123"; "unpriced"; "$0.01 + 2 unpriced" when partly."""
    if cost.unpriced_calls and not cost.priced_calls:
        return "unpriced"
    amount = Decimal(cost.amount or "0")
    text = f"${amount:.2f}" if amount == amount.quantize(Decimal("0.01")) else f"${amount}"
    if cost.currency and cost.currency != "USD":
        text = f"{amount} {cost.currency}"
    if cost.unpriced_calls:
        text += f"{sep}+ {cost.unpriced_calls} unpriced"
    return text


def cost_text(
    cost: types_pb2.Cost, style: str = "green", why: bool = False, sep: str = " "
) -> Text:
    """`money`, marked when something had no price (and why, if asked)."""
    text = Text(money(cost, sep), style=style if cost.priced else "bold red")
    if why and not cost.priced and cost.unpriced_reason:
        text.append(f" ({cost.unpriced_reason})", style="red")
    return text


SESSION_COLUMNS = ("session", "agent", "created", "scope", "loops", "tokens", "cost")


def session_row(s: api.SessionSummary) -> tuple[str, ...]:
    """One `ls` line, the same whether drawn as a table or written as tab-separated text."""
    loops = s.loops
    counts = ", ".join(
        f"{n} {name}"
        for name, n in (
            ("running", loops.running),
            ("pending", loops.pending),
            ("completed", loops.completed),
            ("rejected", loops.rejected),
            ("aborted", loops.aborted),
        )
        if n
    )
    scope = session_pb2.SessionScope.Name(s.scope).removeprefix("SESSION_SCOPE_").lower()
    return (
        s.session_id,
        s.agent_id,
        when(s.created_at),
        scope,
        counts or "-",
        str(s.usage.total_tokens or s.usage.input + s.usage.output),
        money(s.cost) + (f" +subs {money(s.tree_cost)}" if s.tree_cost != s.cost else ""),
    )


def sessions_table(sessions: Sequence[api.SessionSummary]) -> Table:
    table = Table(title="sessions (newest first)")
    for column in SESSION_COLUMNS:
        # Ids are what people copy: never cut or wrapped, whatever the width.
        table.add_column(column, no_wrap=column == "session", overflow="fold")
    for s in sessions:
        table.add_row(*session_row(s)[:-1], _session_cost(s))
    return table


def _session_cost(summary: api.SessionSummary) -> Text:
    """The session's cost and, when it spawned sub-agents, its tree's ("+ subs")."""
    text = Text(money(summary.cost, "\n"), style="" if summary.cost.priced else "bold red")
    if summary.tree_cost != summary.cost:
        tree = summary.tree_cost
        text.append(f"\n+subs {money(tree, chr(10))}", style="dim" if tree.priced else "bold red")
    return text


def loop_label(loop: session_pb2.LoopRecord, cost: api.LoopCost | None = None) -> Text:
    name, style = STATUS_STYLE.get(loop.status, ("?", ""))
    label = Text(loop.loop_id, style="bold")
    label.append(f"  [{name}]", style=style)
    kind = "unknown" if continuation_unknown(loop) else continuation(loop.continuation_kind)
    label.append(f"  {kind}", style="cyan")
    if loop.HasField("config") and loop.config.model:
        label.append(f"  {loop.config.provider}/{loop.config.model}", style="blue")
    if loop.HasField("parallel_group"):
        mark = "  ★ winner" if loop.parallel_group.is_selected else "  parallel branch"
        label.append(mark, style="bold green" if loop.parallel_group.is_selected else "dim")
    label.append(f"  {usage_text(loop.usage)}", style="dim")
    if cost is not None:
        label.append("  ")
        label.append_text(cost_text(cost.cost))
    if loop.HasField("rejection"):
        label.append(f"  rejected: {loop.rejection}", style="red")
    return label


def turn_label(turn: session_pb2.Turn, cost: api.TurnCost | None = None) -> Text:
    trigger = types_pb2.TurnTrigger.Name(turn.triggered_by).removeprefix("TURN_TRIGGER_").lower()
    text = Text(f"turn {turn.turn_id.turn_index} ({trigger})")
    calls = [b.tool_call.name for b in turn.output_message.content if b.HasField("tool_call")]
    if calls:
        text.append(f"  tools: {', '.join(calls)}", style="yellow")
    said = " ".join(b.text.text for b in turn.output_message.content if b.HasField("text"))
    if said:
        text.append(f"  “{said[:60]}”", style="italic")
    text.append(f"  {usage_text(turn.usage)}", style="dim")
    if cost is not None:
        text.append("  ")
        text.append_text(cost_text(cost.cost, why=True))
    return text


Priced: TypeAlias = tuple[session_pb2.Session, api.SessionCost]


def session_tree(
    priced: Priced,
    fetch_child: Callable[[str], Priced | None],
    depth: int = 0,
) -> Tree:
    """The loop tree with costs; sub-agent sessions (via ChildLoopRef) are nested in place."""
    session, cost = priced
    head = Text(f"session {session.session_id}", style="bold underline")
    head.append(f"  agent {session.agent_id}  created {when(session.created_at)}")
    formation = session.formation.WhichOneof("kind") or "?"
    head.append(f"  formed {formation}", style="dim")
    head.append("  cost ")
    head.append_text(cost_text(cost.session, "bold green"))
    if cost.spawned:
        head.append("  with sub-agents ")
        head.append_text(cost_text(cost.tree, "bold green"))
    tree = Tree(head)
    loop_costs = {c.loop_id: c for c in cost.loops}
    children: dict[str, list[session_pb2.LoopRecord]] = {}
    for loop in session.loops:
        if loop.HasField("parent_loop_id"):
            children.setdefault(loop.parent_loop_id, []).append(loop)

    def add(node: Tree, loop: session_pb2.LoopRecord) -> None:
        loop_cost = loop_costs.get(loop.loop_id)
        branch = node.add(loop_label(loop, loop_cost))
        turn_costs = {c.turn_index: c for c in loop_cost.turns} if loop_cost else {}
        for turn in loop.turns:
            branch.add(turn_label(turn, turn_costs.get(turn.turn_id.turn_index)))
        for ref in loop.child_loop_refs:
            sub = branch.add(
                Text(f"↳ {ref.tool_name} ({ref.tool_call_id}) spawned {ref.child_loop_id}")
            )
            child = fetch_child(ref.child_session_id) if depth < 5 else None
            if child is not None and child[0].session_id != session.session_id:
                sub.add(session_tree(child, fetch_child, depth + 1))
        for child_loop in children.get(loop.loop_id, []):
            add(branch, child_loop)

    for loop in root_loops(session):
        add(tree, loop)
    return tree


def event_time(event: events_pb2.AgentEvent) -> Timestamp | None:
    """When the event says it happened: its own timestamp, else its message's."""
    kind = event.WhichOneof("event")
    payload = getattr(event, kind) if kind else None
    candidates = (payload, getattr(payload, "message", None))
    owners: list[Message] = [o for o in candidates if o is not None]
    for owner in owners:
        if "timestamp" in owner.DESCRIPTOR.fields_by_name and owner.HasField("timestamp"):
            stamp: Timestamp = getattr(owner, "timestamp")  # noqa: B009 (any message kind)
            return stamp
    return None


def clock(ts: Timestamp | None) -> str:
    """HH:MM:SS.mmm in UTC, or a dash of the same width."""
    if ts is None:
        return "-" + " " * 11
    moment = datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, tz=UTC)
    return moment.strftime("%H:%M:%S.%f")[:12]


def event_line(loop_id: str, item: session_pb2.LoopEvent) -> Text:
    """One stored event as a `tail` line: time, loop, sequence, kind and what it says."""
    stamp = item.refused.refused_at if item.HasField("refused") else event_time(item.event)
    line = Text(clock(stamp) + " ")
    line.append(f"{loop_id}", style="dim")
    line.append(f" #{item.sequence:<4} ", style="dim")
    if item.HasField("refused"):
        line.append("REFUSED", style="bold red")
        line.append(f"  {item.refused.reason}: {item.refused.message}")
        return line
    event = item.event
    kind = event.WhichOneof("event") or "?"
    line.append(kind, style="bold cyan" if kind in ("agent_start", "agent_end") else "cyan")
    payload = getattr(event, kind) if kind != "?" else None
    detail = _event_detail(kind, payload)
    if detail:
        line.append(f"  {detail}")
    return line


def _event_detail(kind: str, payload: object) -> str:
    if isinstance(payload, events_pb2.ToolExecutionStart | events_pb2.ToolExecutionEnd):
        return f"{payload.tool_name} ({payload.tool_call_id})"
    if isinstance(payload, events_pb2.TurnStart):
        return f"turn {payload.turn_index}"
    if isinstance(payload, events_pb2.TurnEnd):
        return usage_text(payload.usage)
    if isinstance(payload, events_pb2.MessageStart | events_pb2.MessageEnd):
        role = types_pb2.MessageRole.Name(payload.message.role).removeprefix("MESSAGE_ROLE_")
        said = " ".join(b.text.text for b in payload.message.content if b.HasField("text"))
        return f"{role.lower()}: {said[:80]}"
    return ""


def shown_total(usage: types_pb2.Usage) -> int:
    """The total a usage table shows (and `usage --json` prints): input + output when
    the agent reported no total_tokens."""
    return usage.total_tokens or usage.input + usage.output


def with_totals(rows: Sequence[api.UsageRow]) -> list[api.UsageRow]:
    """Copies of the rows whose total_tokens is the total the table shows."""
    out = []
    for row in rows:
        copy = api.UsageRow()
        copy.CopyFrom(row)
        copy.usage.total_tokens = shown_total(row.usage)
        out.append(copy)
    return out


# (header, Usage field) of the usage table; reasoning and cache writes only when used.
_USAGE_COLUMNS = (
    ("in", "input"),
    ("out", "output"),
    ("reasoning", "reasoning"),
    ("c.read", "cache_read"),
    ("c.write", "cache_write"),
)
_OPTIONAL = ("reasoning", "cache_write")


def usage_table(
    rows: Sequence[api.UsageRow],
    total_cost: types_pb2.Cost,
    title: str,
    grouping: Sequence[str] = ("agent", "model"),
) -> Table:
    """One row per group (the grouping's key columns only) and a totals row."""
    table = Table(title=title)
    keys = [
        (name, attr)
        for name, attr in (("agent", "agent_id"), ("model", "model"), ("day", "day"))
        if name in grouping
    ]
    for name, _ in keys:
        table.add_column(name, overflow="fold", min_width=6)
    totals = api.UsageRow(loops=sum(row.loops for row in rows), cost=total_cost)
    for row in rows:
        totals.usage.CopyFrom(_summed(totals.usage, row.usage))
    fields = [
        (header, field)
        for header, field in _USAGE_COLUMNS
        if field not in _OPTIONAL or getattr(totals.usage, field)
    ]
    for column in ("loops", *(header for header, _ in fields), "total"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("cost", justify="right", no_wrap=True)
    for row in rows:
        table.add_row(*(getattr(row, attr) or "-" for _, attr in keys), *_cells(row, fields))
    table.add_section()
    table.add_row(*(["total"] + [""] * (len(keys) - 1)), *_cells(totals, fields), style="bold")
    return table


def _cells(row: api.UsageRow, fields: Sequence[tuple[str, str]]) -> list[str | Text]:
    u = row.usage
    return [
        str(row.loops),
        *(str(getattr(u, field)) for _, field in fields),
        str(shown_total(u)),
        cost_text(row.cost, "", sep="\n"),
    ]


def _summed(a: types_pb2.Usage, b: types_pb2.Usage) -> types_pb2.Usage:
    return types_pb2.Usage(
        input=a.input + b.input,
        output=a.output + b.output,
        reasoning=a.reasoning + b.reasoning,
        cache_read=a.cache_read + b.cache_read,
        cache_write=a.cache_write + b.cache_write,
        total_tokens=shown_total(a) + shown_total(b),
    )


def refusals_table(refusals: Sequence[session_pb2.RefusedEvent]) -> Table:
    """Refused events: when, where (loop and slot, or the refusal log), and why."""
    table = Table(title=f"refused events ({len(refusals)})", title_style="bold red")
    for column in ("refused", "loop", "slot", "reason", "message"):
        table.add_column(column, overflow="fold")
    for refusal in refusals:
        slot = str(refusal.slot) if refusal.HasField("slot") else "log"
        table.add_row(
            when(refusal.refused_at),
            refusal.loop_id or refusal.session_id or "-",
            slot,
            Text(refusal.reason, style="red"),
            refusal.message,
        )
    return table
