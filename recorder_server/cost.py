"""What recorded usage cost: prices from `genai-prices` (or the user's overrides), at read time.

Nothing here is stored: a call is priced whenever it is read, so upgrading
`genai-prices` or editing the override file reprices history. Money is an exact
`Decimal` in `CURRENCY`; floats never appear.

The usage mapping (the one place it is defined)
-----------------------------------------------
`genai-prices` counts `input_tokens` as *all* input tokens, with
`cache_read_tokens` and `cache_write_tokens` as parts of it, and `output_tokens`
as all output, with `output_reasoning_tokens` a part of it; it prices each part
at its own rate and the rest at the plain rate. The seed runtime records what the
provider's API reported, which differs per API family (`Family`):

- `CACHE_BESIDE_INPUT` (Anthropic Messages, Bedrock Converse): the API's
  `input_tokens` leaves cached tokens out; `cache_read` and `cache_write` come
  beside it. Library input = input + cache_read + cache_write.
- `CACHE_INSIDE_INPUT` (OpenAI-compatible chat completions and responses,
  Google): the API's `prompt_tokens` already holds the cached tokens; `cache_read`
  (and `cache_write`, where such an API reports one) is a part of it. Library
  input = input.

In both, library output = output and reasoning is a part of it (the runtime
always counts reasoning inside `output`). So every token is billed once, at the
rate of the one part it belongs to. A loop's API comes from its config; a config
without one falls back on the provider's name (`family_of`).

A model (or provider) the library does not know is *unpriced*: no amount, a
reason, never $0. Overrides (`Override`, loaded by price_file.py) win over the
library when their provider and model equal the call's (case-insensitively).
"""

from __future__ import annotations

import enum
import functools
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal

import genai_prices
from agent_recorder.v1 import recorder_service_pb2 as api
from agent_recorder.v1 import session_pb2, types_pb2
from genai_prices.types import ModelPrice
from google.protobuf.timestamp_pb2 import Timestamp

CURRENCY = "USD"
LIBRARY_SOURCE = f"genai-prices {genai_prices.__version__}"

# The per-million-token prices an override may set (genai-prices' price keys).
OVERRIDE_PRICE_KEYS = (
    "input_mtok",
    "output_mtok",
    "cache_read_mtok",
    "cache_write_mtok",
    "output_reasoning_mtok",
)


class Family(enum.Enum):
    """How an API family counts cached input tokens (see the module's docstring)."""

    CACHE_BESIDE_INPUT = "cache beside input"
    CACHE_INSIDE_INPUT = "cache inside input"


_BESIDE_APIS = {
    types_pb2.API_PROTOCOL_ANTHROPIC_MESSAGES,
    types_pb2.API_PROTOCOL_BEDROCK_CONVERSE_STREAM,
}
_BESIDE_PROVIDERS = {"anthropic", "bedrock", "amazon-bedrock", "aws", "aws-bedrock"}


def family_of(api: int, provider: str) -> Family:
    """The API's family; without an API, by the provider's name (Anthropic's or Bedrock's)."""
    if api in _BESIDE_APIS:
        return Family.CACHE_BESIDE_INPUT
    if api == types_pb2.API_PROTOCOL_UNSPECIFIED and provider.lower() in _BESIDE_PROVIDERS:
        return Family.CACHE_BESIDE_INPUT
    return Family.CACHE_INSIDE_INPUT


def library_usage(usage: types_pb2.Usage, family: Family) -> genai_prices.Usage:
    """Recorded usage in genai-prices' terms: the mapping of the module's docstring."""
    cached = usage.cache_read + usage.cache_write
    total_input = usage.input + cached if family is Family.CACHE_BESIDE_INPUT else usage.input
    return genai_prices.Usage(
        input_tokens=total_input,
        cache_read_tokens=usage.cache_read,
        cache_write_tokens=usage.cache_write,
        output_tokens=usage.output,
        output_reasoning_tokens=usage.reasoning,
    )


def has_tokens(usage: types_pb2.Usage) -> bool:
    return bool(
        usage.input or usage.output or usage.reasoning or usage.cache_read or usage.cache_write
    )


@dataclass(frozen=True)
class Call:
    """One model call as recorded: what to price."""

    usage: types_pb2.Usage
    model: str
    provider: str
    api: int
    at: datetime


@dataclass(frozen=True)
class Override:
    """The user's price for a provider's model (USD per million tokens), from `since` on."""

    provider: str
    model: str
    prices: Mapping[str, Decimal]
    origin: str  # "FILE:LINE", shown as the price's source
    since: date | None = None

    def applies(self, call: Call) -> bool:
        return (
            self.provider.lower() == call.provider.lower()
            and self.model.lower() == call.model.lower()
            and (self.since is None or call.at.astimezone(UTC).date() >= self.since)
        )


@dataclass(frozen=True)
class Total:
    """A sum of calls' costs: the priced part exactly, and how many calls had no price."""

    amount: Decimal = Decimal(0)
    priced_calls: int = 0
    unpriced_calls: int = 0
    sources: frozenset[str] = field(default_factory=frozenset)
    reason: str = ""

    def __add__(self, other: Total) -> Total:
        return Total(
            amount=self.amount + other.amount,
            priced_calls=self.priced_calls + other.priced_calls,
            unpriced_calls=self.unpriced_calls + other.unpriced_calls,
            sources=self.sources | other.sources,
            reason=self.reason or other.reason,
        )

    @property
    def priced(self) -> bool:
        return self.unpriced_calls == 0

    def to_proto(self) -> types_pb2.Cost:
        nothing_priced = self.unpriced_calls > 0 and self.priced_calls == 0
        return types_pb2.Cost(
            amount="" if nothing_priced else format_amount(self.amount),
            currency=CURRENCY,
            priced=self.priced,
            source=", ".join(sorted(self.sources)),
            unpriced_reason=self.reason,
            priced_calls=self.priced_calls,
            unpriced_calls=self.unpriced_calls,
        )


NOTHING = Total()


def total_of(totals: Iterable[Total]) -> Total:
    result = NOTHING
    for total in totals:
        result = result + total
    return result


def format_amount(amount: Decimal) -> str:
    """Plain decimal notation without trailing zeros ("0.0123", "12", "0")."""
    text = format(amount.normalize(), "f")
    return text if text != "-0" else "0"


def unpriced(reason: str) -> Total:
    return Total(unpriced_calls=1, reason=reason)


# Calls remembered per PriceBook: the library takes ~0.3 ms a call, and a page that
# follows a live session reads the same turns again at every commit.
REMEMBERED_CALLS = 1 << 16


class PriceBook:
    """Prices calls: the user's overrides first, then genai-prices' prices at the call's time.

    Prices are fixed for the life of a book (the library's bundled data and the
    overrides), so a call's cost is remembered by what it is made of.
    """

    def __init__(self, overrides: Sequence[Override] = ()) -> None:
        # The latest-starting override that applies wins; file order breaks ties.
        self.overrides = sorted(overrides, key=lambda o: o.since or date.min, reverse=True)
        self._remembered = functools.lru_cache(maxsize=REMEMBERED_CALLS)(self._price)

    def price(self, call: Call) -> Total:
        """One call's cost; a call without tokens costs nothing and needs no price."""
        if not has_tokens(call.usage):
            return NOTHING
        u = call.usage
        tokens = (u.input, u.output, u.reasoning, u.cache_read, u.cache_write)
        return self._remembered(tokens, call.model, call.provider, call.api, call.at)

    def _price(
        self, tokens: tuple[int, ...], model: str, provider: str, api: int, at: datetime
    ) -> Total:
        input, output, reasoning, cache_read, cache_write = tokens
        recorded = types_pb2.Usage(
            input=input,
            output=output,
            reasoning=reasoning,
            cache_read=cache_read,
            cache_write=cache_write,
        )
        call = Call(recorded, model, provider, api, at)
        usage = library_usage(call.usage, family_of(call.api, call.provider))
        override = next((o for o in self.overrides if o.applies(call)), None)
        try:
            if override is not None:
                amount = ModelPrice(**override.prices).calc_price(usage)["total_price"]
                return Total(amount=amount, priced_calls=1, sources=frozenset({override.origin}))
            if not call.model:
                return unpriced("no model recorded")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the library's notes on data it has not seen
                result = genai_prices.calc_price(
                    usage,
                    call.model,
                    provider_id=call.provider or None,
                    genai_request_timestamp=call.at,
                )
        except LookupError as exc:
            if str(exc).startswith("Unable to find provider"):
                return unpriced(f"unknown provider {call.provider!r} (not in {LIBRARY_SOURCE})")
            where = f" of provider {call.provider!r}" if call.provider else ""
            return unpriced(f"unknown model {call.model!r}{where} (not in {LIBRARY_SOURCE})")
        except ValueError as exc:  # usage the price cannot apply to, e.g. cache > input
            return unpriced(f"usage not priceable: {exc}")
        except Exception as exc:  # a price the library cannot compute must not fail a read
            return unpriced(f"cannot price: {type(exc).__name__}: {exc}")
        return Total(amount=result.total_price, priced_calls=1, sources=frozenset({LIBRARY_SOURCE}))


def at_time(*stamps: Timestamp) -> datetime:
    """The first set timestamp as an aware UTC datetime (the epoch when none is set)."""
    for stamp in stamps:
        if stamp.seconds or stamp.nanos:
            return stamp.ToDatetime(tzinfo=UTC)
    return datetime.fromtimestamp(0, tz=UTC)


def price_loop(
    book: PriceBook,
    loop: session_pb2.LoopPricingView,
    turns: Sequence[session_pb2.TurnPricingView],
) -> tuple[api.LoopCost, Total]:
    """A loop's cost: each turn at its own usage, model, provider and time. A loop
    whose turns carry no tokens (none recorded, or a runtime that reports usage
    only at the end) is priced from its own usage, its config's model and its start."""
    config = loop.config
    costs = api.LoopCost(loop_id=loop.loop_id)
    totals = []
    for turn in turns:
        message = turn.output_message
        call = Call(
            usage=turn.usage if has_tokens(turn.usage) else message.usage,
            model=message.model or config.model,
            provider=message.provider or config.provider,
            api=config.api,
            at=at_time(turn.started_at, message.timestamp, turn.ended_at, loop.started_at),
        )
        total = book.price(call)
        totals.append(total)
        costs.turns.add(
            turn_index=turn.turn_id.turn_index,
            model=call.model,
            provider=call.provider,
            cost=total.to_proto(),
        )
    total = total_of(totals)
    if total.priced_calls + total.unpriced_calls == 0:
        at = at_time(loop.started_at)
        total = book.price(Call(loop.usage, config.model, config.provider, config.api, at))
    costs.cost.CopyFrom(total.to_proto())
    return costs, total
