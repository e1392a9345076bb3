"""The `serve --prices FILE` override file (YAML or TOML), read and validated at start.

Both formats hold a list `prices` of entries; each entry names a provider and a
model exactly as they are recorded, and sets one or more prices in USD per
million tokens (genai-prices' keys, `cost.OVERRIDE_PRICE_KEYS`), optionally from
a date on (`since`, UTC). For example, in YAML:

    prices:
      - provider: my-vllm
        model: llama-3-70b-ft
        input_mtok: 0.50
        output_mtok: 1.50
      - provider: anthropic           # a negotiated rate, from a date on
        model: claude-sonnet-4-5
        since: 2026-06-01
        input_mtok: 2.40
        output_mtok: 12

Every mistake is an error naming the file and line (`PriceFileError`).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path

import yaml

from recorder_server.cost import CURRENCY, OVERRIDE_PRICE_KEYS, Override

PRICES_ENV = "AGENT_RECORDER_PRICES"
_ALLOWED_KEYS = {"provider", "model", "since", "currency", *OVERRIDE_PRICE_KEYS}


class PriceFileError(ValueError):
    """An override file that cannot be used, with the line at fault."""


_Fail = Callable[[int, str], PriceFileError]


@dataclass(frozen=True)
class _Value:
    value: object
    line: int


@dataclass(frozen=True)
class _Entry:
    line: int
    fields: dict[str, _Value]


def load_overrides(path: Path) -> list[Override]:
    """The overrides of a .yaml/.yml or .toml file; PriceFileError names the line at fault."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PriceFileError(f"{path}: cannot read the prices file: {exc}") from exc
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        entries = _yaml_entries(path, text)
    elif suffix == ".toml":
        entries = _toml_entries(path, text)
    else:
        raise PriceFileError(f"{path}: a prices file ends in .yaml, .yml or .toml")
    return [_override(path, entry) for entry in entries]


def _override(path: Path, entry: _Entry) -> Override:
    def fail(line: int, message: str) -> PriceFileError:
        return PriceFileError(f"{path}:{line}: {message}")

    for key, item in entry.fields.items():
        if key not in _ALLOWED_KEYS:
            allowed = ", ".join(sorted(_ALLOWED_KEYS))
            raise fail(item.line, f"unknown key {key!r} (allowed: {allowed})")
    names: dict[str, str] = {}
    for key in ("provider", "model"):
        name = entry.fields.get(key)
        if name is None or not isinstance(name.value, str) or not name.value.strip():
            raise fail(name.line if name else entry.line, f"{key} must be a non-empty string")
        names[key] = name.value.strip()
    currency = entry.fields.get("currency")
    if currency is not None and currency.value != CURRENCY:
        raise fail(
            currency.line, f"currency must be {CURRENCY} (prices are compared to the library's)"
        )
    prices = {
        key: _price(item, fail) for key, item in entry.fields.items() if key in OVERRIDE_PRICE_KEYS
    }
    if not prices:
        raise fail(entry.line, f"an entry sets at least one of {', '.join(OVERRIDE_PRICE_KEYS)}")
    since = entry.fields.get("since")
    return Override(
        provider=names["provider"],
        model=names["model"],
        prices=prices,
        origin=f"override {path.name}:{entry.line}",
        since=None if since is None else _date(since, fail),
    )


def _price(item: _Value, fail: _Fail) -> Decimal:
    value = item.value
    try:
        price = Decimal(value) if isinstance(value, str | int | Decimal) else None
    except InvalidOperation:
        price = None
    if isinstance(value, bool) or price is None or not price.is_finite() or price < 0:
        raise fail(
            item.line,
            f"a price must be a non-negative number (USD per million tokens), not {value!r}",
        )
    return price


def _date(item: _Value, fail: _Fail) -> date:
    value = item.value
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise fail(item.line, f"since must be a date (YYYY-MM-DD), not {value!r}") from None


# -- YAML ----------------------------------------------------------------------


def _yaml_entries(path: Path, text: str) -> list[_Entry]:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        raise PriceFileError(f"{path}:{line}: not valid YAML: {exc}") from None
    prices = _top_level_prices(path, root)
    entries = []
    for node in prices.value:
        if not isinstance(node, yaml.MappingNode):
            raise PriceFileError(f"{path}:{_line(node)}: each price entry must be a mapping")
        fields = {
            str(key.value): _Value(_yaml_scalar(path, value), _line(key))
            for key, value in node.value
        }
        entries.append(_Entry(_line(node), fields))
    return entries


def _top_level_prices(path: Path, root: yaml.Node | None) -> yaml.SequenceNode:
    if not isinstance(root, yaml.MappingNode):
        raise PriceFileError(f"{path}:1: the file must be a mapping with a list `prices`")
    found: yaml.SequenceNode | None = None
    for key, value in root.value:
        if key.value != "prices":
            raise PriceFileError(f"{path}:{_line(key)}: unknown key {key.value!r} (only `prices`)")
        if not isinstance(value, yaml.SequenceNode):
            raise PriceFileError(f"{path}:{_line(value)}: `prices` must be a list of entries")
        found = value
    if found is None:
        raise PriceFileError(f"{path}:1: the file has no list `prices`")
    return found


def _yaml_scalar(path: Path, node: yaml.Node) -> object:
    """A scalar as it was written: numbers as Decimal (never float), dates as date."""
    if not isinstance(node, yaml.ScalarNode):
        raise PriceFileError(f"{path}:{_line(node)}: expected a single value")
    kind = node.tag.rsplit(":", 1)[-1]
    text = str(node.value)
    if kind in ("int", "float"):
        try:
            return Decimal(text.replace("_", ""))
        except InvalidOperation:
            return text
    if kind == "timestamp":
        return text
    if kind == "bool":
        return text.lower() in ("true", "yes", "on")
    if kind == "null":
        return None
    return text


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


# -- TOML ----------------------------------------------------------------------

_TOML_LINE = re.compile(r"at line (\d+)")
_TABLE_HEADER = re.compile(r"^\s*\[\[\s*prices\s*\]\]")


def _toml_entries(path: Path, text: str) -> list[_Entry]:
    try:
        data = tomllib.loads(text, parse_float=Decimal)
    except tomllib.TOMLDecodeError as exc:
        found = _TOML_LINE.search(str(exc))
        line = found.group(1) if found else "1"
        raise PriceFileError(f"{path}:{line}: not valid TOML: {exc}") from None
    lines = text.splitlines()
    for key in data:
        if key != "prices":
            line = _key_line(lines, key, 0, len(lines))
            raise PriceFileError(f"{path}:{line}: unknown key {key!r} (only `prices`)")
    prices = data.get("prices")
    if not isinstance(prices, list):
        raise PriceFileError(f"{path}:1: the file needs a list `prices` ([[prices]] tables)")
    headers = [n for n, line in enumerate(lines) if _TABLE_HEADER.match(line)]
    entries = []
    for index, table in enumerate(prices):
        start = (
            headers[index]
            if index < len(headers)
            else _key_line(lines, "prices", 0, len(lines)) - 1
        )
        end = headers[index + 1] if index + 1 < len(headers) else len(lines)
        if not isinstance(table, dict):
            raise PriceFileError(f"{path}:{start + 1}: each price entry must be a table")
        fields = {
            key: _Value(value, _key_line(lines, key, start, end)) for key, value in table.items()
        }
        entries.append(_Entry(start + 1, fields))
    return entries


def _key_line(lines: list[str], key: str, start: int, end: int) -> int:
    """The 1-based line where `key = ...` is set between start and end (else start's)."""
    pattern = re.compile(rf"^\s*\"?{re.escape(key)}\"?\s*=")
    for number in range(start, end):
        if pattern.match(lines[number]):
            return number + 1
    return start + 1
