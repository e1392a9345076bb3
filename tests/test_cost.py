"""Pricing rules (recorder_server/cost.py) and the override file (price_file.py).

Every expected amount is computed by hand from genai-prices' published prices
(USD per million tokens), quoted beside it.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from agent_recorder.v1 import session_pb2, types_pb2
from support.priced import tokens

from recorder_server.cost import (
    LIBRARY_SOURCE,
    Call,
    Family,
    Override,
    PriceBook,
    Total,
    family_of,
    price_loop,
    total_of,
)
from recorder_server.price_file import PriceFileError, load_overrides

WHEN = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
ANTHROPIC = types_pb2.API_PROTOCOL_ANTHROPIC_MESSAGES
OPENAI = types_pb2.API_PROTOCOL_OPEN_AI_COMPLETIONS
RESPONSES = types_pb2.API_PROTOCOL_OPEN_AI_RESPONSES


def use(
    input: int = 0, output: int = 0, cache_read: int = 0, cache_write: int = 0, reasoning: int = 0
) -> types_pb2.Usage:
    return tokens(input, output, cache_read, cache_write, reasoning)


def price(
    usage: types_pb2.Usage,
    model: str,
    provider: str,
    api: int = types_pb2.API_PROTOCOL_UNSPECIFIED,
    at: datetime = WHEN,
    book: PriceBook | None = None,
) -> Total:
    return (book or PriceBook()).price(Call(usage, model, provider, api, at))


def priced(total: Total, amount: str, source: str = LIBRARY_SOURCE) -> None:
    assert total.amount == Decimal(amount)
    assert (total.priced_calls, total.unpriced_calls, total.reason) == (1, 0, "")
    assert total.sources == {source}
    cost = total.to_proto()
    assert (cost.amount, cost.currency, cost.priced, cost.source) == (amount, "USD", True, source)


# -- the usage mapping, per API family ------------------------------------------


def test_anthropic_cache_read_and_write_are_billed_beside_input() -> None:
    # claude-sonnet-4-0: $3 input, $0.30 cache read, $3.75 cache write, $15 output.
    # Anthropic's input_tokens leaves the cached tokens out: each at its own rate once.
    total = price(use(1000, 500, cache_read=2000, cache_write=3000), "claude-sonnet-4", "anthropic")
    priced(total, "0.02235")  # (1000·3 + 2000·0.3 + 3000·3.75 + 500·15) / 1e6


def test_anthropic_family_by_api_or_by_provider() -> None:
    usage = use(1000, 500, cache_read=2000, cache_write=3000)
    by_api = price(usage, "claude-sonnet-4", "anthropic", ANTHROPIC)
    by_name = price(usage, "claude-sonnet-4", "anthropic")
    assert by_api.amount == by_name.amount == Decimal("0.02235")
    assert family_of(types_pb2.API_PROTOCOL_BEDROCK_CONVERSE_STREAM, "amazon") is (
        Family.CACHE_BESIDE_INPUT
    )
    assert family_of(OPENAI, "anthropic") is Family.CACHE_INSIDE_INPUT
    assert family_of(types_pb2.API_PROTOCOL_UNSPECIFIED, "openai") is Family.CACHE_INSIDE_INPUT


def test_openai_cached_tokens_are_part_of_input() -> None:
    # gpt-4o: $2.50 input, $1.25 cached input, $10 output. prompt_tokens (1000)
    # already holds the 400 cached: 600 at 2.50, 400 at 1.25, never 1400 tokens.
    total = price(use(1000, 500, cache_read=400), "gpt-4o", "openai", OPENAI)
    priced(total, "0.007")  # (600·2.5 + 400·1.25 + 500·10) / 1e6


def test_openai_usage_with_more_cached_than_input_is_unpriced_not_guessed() -> None:
    total = price(use(100, 10, cache_read=400), "gpt-4o", "openai", OPENAI)
    assert (total.priced_calls, total.unpriced_calls) == (0, 1)
    assert "cache_read_tokens (400) cannot exceed input_tokens (100)" in total.reason
    assert total.to_proto().amount == ""


def test_reasoning_is_part_of_output_at_the_output_rate() -> None:
    # o4-mini: $1.10 input, $4.40 output; its 800 reasoning tokens are among the 1000 out.
    total = price(use(1000, 1000, reasoning=800), "o4-mini", "openai", RESPONSES)
    priced(total, "0.0055")  # (1000·1.1 + 1000·4.4) / 1e6, not 1800 output tokens


def test_reasoning_with_its_own_price_is_taken_out_of_output_once() -> None:
    # perplexity sonar-deep-research: $2 input, $8 output, $3 reasoning.
    total = price(use(1000, 1000, reasoning=600), "sonar-deep-research", "perplexity", OPENAI)
    priced(total, "0.007")  # (1000·2 + 400·8 + 600·3) / 1e6, not 1000·8 + 600·3


def test_long_context_tier_applies_to_every_token_above_the_threshold() -> None:
    # claude-sonnet-4-5: $3 / $0.30 cache read / $15, and $6 / $0.60 / $22.50 for
    # all tokens once the prompt (input + cached) passes 200,000.
    below = price(use(150_000, 1000, cache_read=40_000), "claude-sonnet-4-5", "anthropic")
    priced(below, "0.477")  # (150000·3 + 40000·0.3 + 1000·15) / 1e6
    above = price(use(150_000, 1000, cache_read=60_000), "claude-sonnet-4-5", "anthropic")
    priced(above, "0.9585")  # (150000·6 + 60000·0.6 + 1000·22.5) / 1e6


def test_price_in_force_at_the_calls_time_on_both_sides_of_a_change() -> None:
    # o3 was $10 / $40 until 2025-06-09 and $2 / $8 from 2025-06-10 (UTC).
    usage = use(1000, 1000)
    before = price(usage, "o3", "openai", at=datetime(2025, 6, 9, 23, 59, tzinfo=UTC))
    priced(before, "0.05")  # (1000·10 + 1000·40) / 1e6
    after = price(usage, "o3", "openai", at=datetime(2025, 6, 10, 0, 0, tzinfo=UTC))
    priced(after, "0.01")  # (1000·2 + 1000·8) / 1e6


# -- unpriced, never $0 ----------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "provider", "reason"),
    [
        ("my-finetune", "openai", "unknown model 'my-finetune' of provider 'openai'"),
        ("gpt-4o", "my-vllm", "unknown provider 'my-vllm'"),
        ("gpt-4o-mini-but-not-really", "", "unknown model 'gpt-4o-mini-but-not-really'"),
        ("", "openai", "no model recorded"),
    ],
)
def test_a_model_the_library_does_not_know_is_unpriced(
    model: str, provider: str, reason: str
) -> None:
    total = price(use(100, 10), model, provider)
    assert (total.amount, total.priced_calls, total.unpriced_calls) == (Decimal(0), 0, 1)
    assert total.reason.startswith(reason)
    cost = total.to_proto()
    assert (cost.amount, cost.priced, cost.unpriced_calls) == ("", False, 1)


def test_a_call_without_tokens_costs_nothing_and_needs_no_price() -> None:
    total = price(use(), "my-finetune", "nobody")
    assert total == Total()
    cost = total.to_proto()
    assert (cost.amount, cost.priced, cost.priced_calls, cost.unpriced_calls) == ("0", True, 0, 0)


def test_a_sum_with_unpriced_calls_keeps_the_priced_part_and_says_so() -> None:
    known = price(use(1000, 500, cache_read=400), "gpt-4o", "openai", OPENAI)
    unknown = price(use(100, 10), "my-finetune", "openai")
    cost = total_of([known, unknown, known]).to_proto()
    assert (cost.amount, cost.priced, cost.priced_calls, cost.unpriced_calls) == (
        "0.014",
        False,
        2,
        1,
    )
    assert cost.unpriced_reason.startswith("unknown model 'my-finetune'")


# -- loops ----------------------------------------------------------------------


def test_a_loop_is_its_turns_each_at_its_own_model_and_time() -> None:
    loop = session_pb2.LoopPricingView(loop_id="l")
    loop.config.model, loop.config.provider = "o3", "openai"
    loop.usage.CopyFrom(use(999_999, 999_999))  # ignored: the loop has turns
    loop.started_at.FromDatetime(datetime(2025, 6, 9, 23, 0))
    early = session_pb2.TurnPricingView(usage=use(1000, 1000))
    early.turn_id.turn_index = 0
    early.started_at.FromDatetime(datetime(2025, 6, 9, 23, 30))
    late = session_pb2.TurnPricingView(usage=use(1000, 1000))
    late.turn_id.turn_index = 1
    late.started_at.FromDatetime(datetime(2025, 6, 10, 0, 30))
    other = session_pb2.TurnPricingView()
    other.turn_id.turn_index = 2
    other.output_message.model, other.output_message.provider = "gpt-4o", "openai"
    other.output_message.usage.CopyFrom(use(1000, 0))  # no turn usage: the answer's
    costs, total = price_loop(PriceBook(), loop, [early, late, other])
    assert [(t.turn_index, t.model, t.cost.amount) for t in costs.turns] == [
        (0, "o3", "0.05"),  # (1000·10 + 1000·40) / 1e6, before the change
        (1, "o3", "0.01"),  # (1000·2 + 1000·8) / 1e6, after it
        (2, "gpt-4o", "0.0025"),  # 1000·2.5 / 1e6
    ]
    assert (costs.cost.amount, costs.cost.priced_calls, total.amount) == (
        "0.0625",
        3,
        Decimal("0.0625"),
    )


def test_a_loop_without_turns_is_priced_from_its_usage_and_config() -> None:
    loop = session_pb2.LoopPricingView(loop_id="l", usage=use(1000, 1000))
    loop.config.model, loop.config.provider = "o3", "openai"
    loop.started_at.FromDatetime(datetime(2025, 6, 1))
    costs, _ = price_loop(PriceBook(), loop, [])
    # (1000·10 + 1000·40) / 1e6 at o3's price before 2025-06-10
    assert (costs.loop_id, costs.cost.amount, list(costs.turns)) == ("l", "0.05", [])
    # Turns without tokens (usage reported only at the loop's end): the loop's usage.
    silent = session_pb2.TurnPricingView()
    silent.output_message.model = "o3"
    costs, total = price_loop(PriceBook(), loop, [silent])
    assert (costs.cost.amount, total.priced_calls) == ("0.05", 1)
    assert [(t.turn_index, t.cost.amount, t.cost.priced_calls) for t in costs.turns] == [
        (0, "0", 0)
    ]


# -- overrides -------------------------------------------------------------------


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


YAML_PRICES = """\
# negotiated and self-hosted prices
prices:
  - provider: openai
    model: my-finetune
    input_mtok: 0.5
    output_mtok: 1.5
  - provider: OpenAI
    model: gpt-4o
    input_mtok: "2"
    cache_read_mtok: 0.25
    output_mtok: 8
  - provider: openai
    model: gpt-4o
    since: 2026-02-01
    input_mtok: 1
    output_mtok: 4
"""

TOML_PRICES = """\
[[prices]]
provider = "openai"
model = "my-finetune"
input_mtok = 0.5
output_mtok = 1.5

[[prices]]
provider = "OpenAI"
model = "gpt-4o"
input_mtok = "2"
cache_read_mtok = 0.25
output_mtok = 8

[[prices]]
provider = "openai"
model = "gpt-4o"
since = 2026-02-01
input_mtok = 1
output_mtok = 4
"""


@pytest.mark.parametrize(("name", "text"), [("p.yaml", YAML_PRICES), ("p.toml", TOML_PRICES)])
def test_override_file_prices_unknown_models_and_wins_over_the_library(
    tmp_path: Path, name: str, text: str
) -> None:
    overrides = load_overrides(write(tmp_path, name, text))
    first_line = 3 if name.endswith("yaml") else 1
    assert overrides[0] == Override(
        provider="openai",
        model="my-finetune",
        prices={"input_mtok": Decimal("0.5"), "output_mtok": Decimal("1.5")},
        origin=f"override {name}:{first_line}",
    )
    assert overrides[2].since == date(2026, 2, 1)
    book = PriceBook(overrides)
    # my-finetune: (1000·0.5 + 100·1.5) / 1e6
    priced(
        price(use(1000, 100), "my-finetune", "openai", book=book), "0.00065", overrides[0].origin
    )
    # gpt-4o at the negotiated $2 / $0.25 cached / $8, not the library's 2.50 / 1.25 / 10:
    # (600·2 + 400·0.25 + 500·8) / 1e6
    usage = use(1000, 500, cache_read=400)
    priced(price(usage, "gpt-4o", "openai", OPENAI, book=book), "0.0053", overrides[1].origin)
    # From 2026-02-01 the later rate; cache reads without a price of their own are
    # input: (1000·1 + 500·4) / 1e6.
    later = datetime(2026, 2, 1, tzinfo=UTC)
    priced(price(usage, "gpt-4o", "openai", OPENAI, later, book), "0.003", overrides[2].origin)
    # Models the file does not name keep the library's price.
    priced(price(use(1000, 1000), "o3", "openai", book=book), "0.01")


ENTRY = "prices:\n  - provider: a\n    model: b\n"


@pytest.mark.parametrize(
    ("name", "text", "error"),
    [
        ("p.yaml", f"{ENTRY}    input_mtok: 1\n    outptu_mtok: 2\n",
         "p.yaml:5: unknown key 'outptu_mtok'"),
        ("p.yaml", "prices:\n  - provider: a\n    model: b\n  - provider: c\n    model: d\n"
         "    input_mtok: -1\n", "p.yaml:2: an entry sets at least one of input_mtok"),
        ("p.yaml", "prices:\n  - provider: a\n    model: b\n    input_mtok: -1\n",
         "p.yaml:4: a price must be a non-negative number"),
        ("p.yaml", "prices:\n  - model: b\n    input_mtok: 1\n",
         "p.yaml:2: provider must be a non-empty string"),
        ("p.yaml", f"{ENTRY}    input_mtok: 1\n    since: soon\n",
         "p.yaml:5: since must be a date"),
        ("p.yaml", f"{ENTRY}    input_mtok: 1\n    currency: EUR\n",
         "p.yaml:5: currency must be USD"),
        ("p.yaml", "prices: [\n", "p.yaml:2: not valid YAML"),
        ("p.yaml", "pricing:\n  - provider: a\n", "p.yaml:1: unknown key 'pricing'"),
        ("p.toml", '[[prices]]\nprovider = "a"\nmodel = "b"\ninput_mtok = 1\n\n[[prices]]\n'
         'provider = "c"\nmodel = "d"\noutput_mtok = "x"\n',
         "p.toml:9: a price must be a non-negative number"),
        ("p.toml", '[[prices]]\nprovider = "a"\nmodel = "b"\ninput = 1\n',
         "p.toml:4: unknown key 'input'"),
        ("p.toml", "[[prices]\n", "p.toml:1: not valid TOML"),
        ("p.json", "{}", "p.json: a prices file ends in .yaml, .yml or .toml"),
    ],
)  # fmt: skip
def test_override_file_errors_name_the_line(
    tmp_path: Path, name: str, text: str, error: str
) -> None:
    with pytest.raises(PriceFileError) as raised:
        load_overrides(write(tmp_path, name, text))
    assert str(raised.value).startswith(
        f"{tmp_path / error.split(':', 1)[0]}:{error.split(':', 1)[1]}"
    )
