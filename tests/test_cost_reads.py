"""Costs through the API of a real sidecar: sessions, loops, turns, sub-agent trees, usage.

The recorded run and its hand-computed costs are described in support/priced.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from agent_recorder.v1 import events_pb2, types_pb2
from agent_recorder.v1 import recorder_service_pb2 as api
from support.events import aio
from support.priced import (
    HELPER,
    LEAD,
    LEAD_TURNS,
    TREE,
    UNKNOWN_MODEL,
    at,
    one_turn_loop,
    record_priced_tree,
    tokens,
)
from support.recorder import RunningRecorder

from recorder_client import events as ev
from recorder_client.client import RecorderClient
from recorder_server.cost import LIBRARY_SOURCE
from recorder_server.price_file import PriceFileError
from recorder_server.server import RecorderServer, ServerConfig

UNKNOWN = f"unknown model '{UNKNOWN_MODEL}' of provider 'openai' (not in {LIBRARY_SOURCE})"


def cost(
    amount: str,
    priced: int,
    unpriced: int = 0,
    source: str = LIBRARY_SOURCE,
    reason: str = "",
) -> types_pb2.Cost:
    return types_pb2.Cost(
        amount=amount,
        currency="USD",
        priced=not unpriced,
        source=source,
        unpriced_reason=reason,
        priced_calls=priced,
        unpriced_calls=unpriced,
    )


UNPRICED = cost("", 0, 1, "", UNKNOWN)


@pytest.fixture
async def priced_tree(recorder: RunningRecorder) -> RunningRecorder:
    await record_priced_tree(recorder.target)
    return recorder


async def test_session_cost_per_turn_loop_session_and_sub_agent_tree(
    priced_tree: RunningRecorder,
) -> None:
    async with RecorderClient.connect(priced_tree.target) as client:
        session, costs = await client.get_session_and_cost("lead")
        helper, helper_costs = await client.get_session_and_cost("helper", skip_messages=True)
    assert [loop.loop_id for loop in session.loops] == ["lead.0"]
    (lead,) = costs.loops
    assert lead.loop_id == "lead.0" and lead.cost == cost(LEAD, 2)
    assert [(t.turn_index, t.model, t.provider, t.cost) for t in lead.turns] == [
        (0, "claude-sonnet-4", "anthropic", cost(LEAD_TURNS[0], 1)),
        (1, "claude-sonnet-4", "anthropic", cost(LEAD_TURNS[1], 1)),
    ]
    assert costs.session == cost(LEAD, 2)
    # The parent shows what its sub-agents cost, the unpriced call included as such.
    assert costs.tree == cost(TREE, 3, 1, reason=UNKNOWN)
    assert list(costs.spawned) == [
        api.SpawnedSessionCost(
            session_id="helper",
            agent_id="helper",
            parent_session_id="lead",
            cost=cost(HELPER, 1, 1, reason=UNKNOWN),
            tree=cost(HELPER, 1, 1, reason=UNKNOWN),
        )
    ]
    # The helper on its own (without messages its cost is the same).
    assert [c.loop_id for c in helper_costs.loops] == ["helper.0", "helper.1"]
    assert helper_costs.loops[0].cost == cost(HELPER, 1)
    assert helper_costs.loops[1].cost == UNPRICED
    assert helper_costs.loops[1].turns[0].model == UNKNOWN_MODEL
    assert helper_costs.session == helper_costs.tree == cost(HELPER, 1, 1, reason=UNKNOWN)
    assert not helper_costs.spawned and len(helper.loops) == 2


def chain_events() -> list[events_pb2.AgentEvent]:
    """Session a's loop spawns b's, which spawns c's; each makes one gpt-4o call of
    1000 in / 100 out: (1000·2.5 + 100·10) / 1e6 = 0.0035."""
    use = tokens(1000, 100)
    events: list[events_pb2.AgentEvent] = []
    for depth, name in enumerate("abc"):
        spawner = f"{'abc'[depth - 1]}.0" if depth else None
        events += [
            ev.agent_start(
                agent_id=name,
                session_id=name,
                loop_id=f"{name}.0",
                parent_loop_id=spawner,
                at=at(depth),
            ),
            ev.tool_start(f"{name}.0", f"call-{name}", "spawn", {}),
        ]
    for depth, name in reversed(list(enumerate("abc"))):
        answer = ev.assistant_message("ok", model="gpt-4o", provider="openai", tokens=use)
        events += [
            ev.turn_start(f"{name}.0", 0, at=at(10 - depth)),
            ev.turn_end(f"{name}.0", answer, tokens=use, at=at(10 - depth)),
            ev.agent_end(f"{name}.0", messages=[answer], tokens=use, at=at(10 - depth)),
        ]
        if depth:
            up = "abc"[depth - 1]
            events.append(
                ev.tool_end(f"{up}.0", f"call-{up}", "spawn", "ok", child_loop_id=f"{name}.0")
            )
    return events


async def test_a_sub_agent_tree_rolls_up_every_generation(recorder: RunningRecorder) -> None:
    async with RecorderClient.connect(recorder.target) as client:
        await client.append([api.EventEnvelope(event=e) for e in chain_events()])
        _, a = await client.get_session_and_cost("a", skip_messages=True)
        _, b = await client.get_session_and_cost("b", skip_messages=True)
        page = await client.list_sessions()
    assert (a.session, a.tree) == (cost("0.0035", 1), cost("0.0105", 3))
    assert [(s.session_id, s.parent_session_id, s.cost, s.tree) for s in a.spawned] == [
        ("b", "a", cost("0.0035", 1), cost("0.007", 2)),
        ("c", "b", cost("0.0035", 1), cost("0.0035", 1)),
    ]
    assert (b.session, b.tree, [s.session_id for s in b.spawned]) == (
        cost("0.0035", 1),
        cost("0.007", 2),
        ["c"],
    )
    trees = {s.session_id: s.tree_cost.amount for s in page.sessions}
    assert trees == {"a": "0.0105", "b": "0.007", "c": "0.0035"}


async def test_get_loop_and_skip_cost(priced_tree: RunningRecorder) -> None:
    async with RecorderClient.connect(priced_tree.target) as client:
        loop, loop_cost = await client.get_loop_and_cost("helper.0")
    request = api.GetSessionRequest(session_id="lead", skip_cost=True)
    plain = await aio(priced_tree.stub()).GetSession(request)
    assert loop.loop_id == loop_cost.loop_id == "helper.0"
    assert loop_cost.cost == cost(HELPER, 1)
    assert [(t.turn_index, t.model, t.cost) for t in loop_cost.turns] == [
        (0, "gpt-4o", cost(HELPER, 1))
    ]
    assert plain.session.session_id == "lead" and not plain.HasField("cost")


async def test_list_sessions_carries_each_sessions_cost_and_its_trees(
    priced_tree: RunningRecorder,
) -> None:
    async with RecorderClient.connect(priced_tree.target) as client:
        page = await client.list_sessions()
    by_id = {s.session_id: s for s in page.sessions}
    assert by_id["lead"].cost == cost(LEAD, 2)
    assert by_id["lead"].tree_cost == cost(TREE, 3, 1, reason=UNKNOWN)
    assert by_id["helper"].cost == by_id["helper"].tree_cost == cost(HELPER, 1, 1, reason=UNKNOWN)


async def test_usage_rows_carry_cost_grouped_by_agent_model_or_day(
    priced_tree: RunningRecorder,
) -> None:
    # One more loop on another day: gpt-4o, 1000 in / 100 out = (2500 + 1000) / 1e6.
    later = one_turn_loop(
        "other", "other.0", "helper", "gpt-4o", "openai", tokens(1000, 100), 86400
    )
    async with RecorderClient.connect(priced_tree.target) as client:
        await client.append([api.EventEnvelope(event=e) for e in later])
        by_pair = await client.get_usage_report()
        by_agent = await client.get_usage_report(group_by=api.USAGE_GROUPING_AGENT)
        by_model = await client.get_usage_report(group_by=api.USAGE_GROUPING_MODEL)
        by_day = await client.get_usage_report(group_by=api.USAGE_GROUPING_DAY)
        since = await client.get_usage_report(since=at(86000))
    total = cost("0.02795", 4, 1, reason=UNKNOWN)  # 0.02445 + 0.0035
    assert by_pair.total_cost == by_agent.total_cost == by_model.total_cost == total
    assert by_day.total_cost == total
    assert [(r.agent_id, r.model, r.loops, r.cost) for r in by_pair.rows] == [
        ("helper", "gpt-4o", 2, cost("0.01025", 2)),  # 0.00675 + 0.0035
        ("helper", UNKNOWN_MODEL, 1, UNPRICED),
        ("lead", "claude-sonnet-4", 1, cost(LEAD, 2)),
    ]
    assert [(r.agent_id, r.model, r.loops, r.cost) for r in by_agent.rows] == [
        ("helper", "", 3, cost("0.01025", 2, 1, reason=UNKNOWN)),
        ("lead", "", 1, cost(LEAD, 2)),
    ]
    assert [(r.model, r.usage.input, r.cost) for r in by_model.rows] == [
        ("claude-sonnet-4", 1500, cost(LEAD, 2)),
        ("gpt-4o", 3000, cost("0.01025", 2)),
        (UNKNOWN_MODEL, 100, UNPRICED),
    ]
    assert [(r.day, r.loops, r.cost) for r in by_day.rows] == [
        ("2026-01-05", 3, cost(TREE, 3, 1, reason=UNKNOWN)),
        ("2026-01-06", 1, cost("0.0035", 1)),
    ]
    assert since.total_cost == cost("0.0035", 1)


PRICES = """\
prices:
  - provider: openai
    model: my-finetune
    input_mtok: 10
    output_mtok: 100
  - provider: openai
    model: gpt-4o
    input_mtok: 1
    output_mtok: 2
"""


async def test_serve_prices_file_reprices_history_and_wins(
    short_tmp: Path,
) -> None:
    prices = short_tmp / "prices.yaml"
    prices.write_text(PRICES)
    config = ServerConfig(
        db_path=short_tmp / "r.db", listen=f"unix://{short_tmp}/r.sock", shutdown_grace_s=1.0
    )
    async with RecorderServer(config) as server:
        await record_priced_tree(server.address)
    config.prices = prices
    async with (
        RecorderServer(config) as server,
        RecorderClient.connect(server.address) as client,
    ):
        _, helper = await client.get_session_and_cost("helper")
    line_2, line_6 = f"override {prices.name}:2", f"override {prices.name}:6"
    # my-finetune: (100·10 + 10·100) / 1e6; gpt-4o's cached tokens are input at $1:
    # (2000·1 + 300·2) / 1e6.
    assert helper.loops[1].cost == cost("0.002", 1, source=line_2)
    assert helper.loops[0].cost == cost("0.0026", 1, source=line_6)
    assert helper.session == cost("0.0046", 2, source=f"{line_2}, {line_6}")


async def test_a_bad_prices_file_stops_the_server_at_start_naming_the_line(
    short_tmp: Path,
) -> None:
    prices = short_tmp / "prices.toml"
    prices.write_text('[[prices]]\nprovider = "openai"\nmodel = "x"\ninput_mtok = -2\n')
    config = ServerConfig(
        db_path=short_tmp / "r.db", listen=f"unix://{short_tmp}/r.sock", prices=prices
    )
    with pytest.raises(PriceFileError, match=r"prices.toml:4: a price must be a non-negative"):
        async with RecorderServer(config):
            pass
    assert not (short_tmp / "r.db").exists()
