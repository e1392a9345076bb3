"""A small multi-agent run whose cost is computed by hand from genai-prices' published prices.

Recorded on 2026-01-05 (flat prices for both models then):

- session `lead` (agent `lead`), loop `lead.0`, claude-sonnet-4 on anthropic, which
  genai-prices prices as claude-sonnet-4-0: $3 input, $0.30 cache read, $3.75 cache
  write, $15 output per million tokens. Anthropic's `input` leaves cached tokens out.
  - turn 0: 1000 in, 4000 cache read, 2000 cache write, 200 out
    = (1000·3 + 4000·0.3 + 2000·3.75 + 200·15) / 1e6 = 0.0147; it spawns `helper`.
  - turn 1: 500 in, 100 out = (500·3 + 100·15) / 1e6 = 0.003.
  The loop and the session: 0.0177.
- session `helper` (agent `helper`), spawned by lead.0's call-1:
  - loop `helper.0`, gpt-4o on openai ($2.50 input, $1.25 cached input, $10 output):
    one turn of 2000 in of which 1000 cache read, 300 out (OpenAI's `input` holds the
    cached tokens) = (1000·2.5 + 1000·1.25 + 300·10) / 1e6 = 0.00675.
  - loop `helper.1`, model `my-finetune` (unknown to genai-prices): one turn, unpriced.
  The session: 0.00675 and one unpriced call.
- the tree of `lead`: 0.0177 + 0.00675 = 0.02445 and one unpriced call.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from agent_recorder.v1 import events_pb2, types_pb2
from agent_recorder.v1 import recorder_service_pb2 as api

from recorder_client import events as ev
from recorder_client.client import RecorderClient

DAY = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
LEAD_TURNS = ("0.0147", "0.003")
LEAD = "0.0177"
HELPER = "0.00675"
TREE = "0.02445"
UNKNOWN_MODEL = "my-finetune"
SONNET = "claude-sonnet-4"


def at(seconds: float) -> datetime:
    return DAY + timedelta(seconds=seconds)


def tokens(
    input: int, output: int, cache_read: int = 0, cache_write: int = 0, reasoning: int = 0
) -> types_pb2.Usage:
    return types_pb2.Usage(
        input=input,
        output=output,
        cache_read=cache_read,
        cache_write=cache_write,
        reasoning=reasoning,
        total_tokens=input + output + cache_read + cache_write,
    )


def one_turn_loop(
    session: str, loop: str, agent: str, model: str, provider: str, use: types_pb2.Usage, t: float
) -> list[events_pb2.AgentEvent]:
    """A whole loop of one turn, started at DAY + t."""
    answer = ev.assistant_message("done", model=model, provider=provider, tokens=use, at=at(t + 1))
    return [
        ev.agent_start(
            agent_id=agent,
            session_id=session,
            loop_id=loop,
            model=model,
            provider=provider,
            at=at(t),
        ),
        ev.turn_start(loop, 0, at=at(t)),
        ev.turn_end(loop, answer, tokens=use, at=at(t + 2)),
        ev.agent_end(loop, messages=[answer], tokens=use, at=at(t + 3)),
    ]


async def record_priced_tree(target: str) -> None:
    """Records the run described in the module's docstring."""
    start = ev.agent_start(
        agent_id="lead",
        session_id="lead",
        loop_id="lead.0",
        at=at(0),
        model=SONNET,
        provider="anthropic",
    )
    first, second = tokens(1000, 200, cache_read=4000, cache_write=2000), tokens(500, 100)
    calls: list[tuple[str, str, dict[str, object]]] = [("call-1", "delegate", {})]
    ask = ev.assistant_message(
        "asking a helper",
        tool_calls=calls,
        tokens=first,
        at=at(2),
        model=SONNET,
        provider="anthropic",
    )
    done = ev.assistant_message(
        "done", tokens=second, at=at(20), model=SONNET, provider="anthropic"
    )
    gpt = tokens(2000, 300, cache_read=1000)
    helped = ev.assistant_message("helped", model="gpt-4o", provider="openai", tokens=gpt, at=at(5))
    events = [
        start,
        ev.turn_start("lead.0", 0, at=at(1)),
        ev.message_end("lead.0", ask),
        ev.tool_start("lead.0", "call-1", "delegate", {}),
        ev.agent_start(
            agent_id="helper",
            session_id="helper",
            loop_id="helper.0",
            parent_loop_id="lead.0",
            model="gpt-4o",
            provider="openai",
            at=at(3),
        ),
        ev.turn_start("helper.0", 0, types_pb2.TURN_TRIGGER_SUB_AGENT, at=at(4)),
        ev.turn_end("helper.0", helped, tokens=gpt, at=at(6)),
        ev.agent_end("helper.0", messages=[helped], tokens=gpt, at=at(7)),
        ev.tool_end("lead.0", "call-1", "delegate", "helped", child_loop_id="helper.0"),
        *one_turn_loop(
            "helper", "helper.1", "helper", UNKNOWN_MODEL, "openai", tokens(100, 10), 12
        ),
        ev.turn_end("lead.0", ask, tokens=first, at=at(18)),
        ev.turn_start("lead.0", 1, types_pb2.TURN_TRIGGER_CONTINUATION, at=at(19)),
        ev.turn_end("lead.0", done, tokens=second, at=at(21)),
        ev.agent_end(
            "lead.0", messages=[ask, done], tokens=tokens(1500, 300, 4000, 2000), at=at(22)
        ),
    ]
    async with RecorderClient.connect(target) as client:
        await client.append([api.EventEnvelope(event=e) for e in events])
