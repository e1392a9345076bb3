"""Leaves of the phi-json codec: errors and paths, scalars, times, free-form JSON.

phi-json is the JSON the seed runtime writes (serde defaults, see
/work/shared/phi-json.md).

Free-form JSON (tool arguments, details, metadata, payloads, unknown keys) lives
in google.protobuf.Struct/Value, whose numbers are doubles. Integers therefore
survive exactly only up to 2**53 in magnitude; beyond that they are rounded on
the way in (as protobuf's own JSON mapping does). On the way out a number that is
integral and within 2**53 is written as a JSON integer, because integers are what
such fields overwhelmingly hold (ids, counts, token budgets) and a reader like
serde_json's `as_u64()` rejects `2.0`; the price is that an input `1.0` comes back
as `1` — the same JSON number, spelled differently. Larger integral values stay
floats, since their exact integer is already lost.

Everything here is pure: no I/O, no clocks, no globals that change.
"""

from __future__ import annotations

import calendar
import math
import re
import struct
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2


class PhiJsonError(ValueError):
    """phi-json that the codec cannot accept, or a message that phi-json cannot express.

    The path uses the JSON's own keys and indices (`loops[2].turns[0].turn_id.turnIndex`)
    so that whoever produced the document can find the offending value.
    """

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path or '<root>'}: {problem}")
        self.path = path
        self.problem = problem


def at(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def index(path: str, i: int) -> str:
    return f"{path}[{i}]"


def json_kind(value: Any) -> str:
    """The JSON type name of a decoded value, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def not_utf8(path: str) -> PhiJsonError:
    """JSON escapes can spell lone surrogates; protobuf strings (and serde) refuse them."""
    return PhiJsonError(path, "string is not valid Unicode (lone surrogate)")


def _expected(path: str, what: str, value: Any) -> PhiJsonError:
    return PhiJsonError(path, f"expected {what}, got {json_kind(value)}")


def expect_object(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _expected(path, "object", value)
    return value


def expect_array(value: Any, path: str) -> list[Any] | tuple[Any, ...]:
    if not isinstance(value, list | tuple):
        raise _expected(path, "array", value)
    return value


def decode_str(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise _expected(path, "string", value)
    return value


def decode_bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise _expected(path, "boolean", value)
    return value


def int_decoder(lo: int, hi: int) -> Callable[[Any, str], int]:
    """An integer reader with the range of the Rust type, so overflow fails here, not in C."""

    def decode(value: Any, path: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _expected(path, "integer", value)
        if not lo <= value <= hi:
            raise PhiJsonError(path, f"integer {value} outside [{lo}, {hi}]")
        return value

    return decode


decode_u32 = int_decoder(0, 2**32 - 1)
decode_u64 = int_decoder(0, 2**64 - 1)
decode_i64 = int_decoder(-(2**63), 2**63 - 1)


def decode_f32(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _expected(path, "number", value)
    number = float(value)
    try:
        struct.pack("<f", number)
    except OverflowError:
        raise PhiJsonError(path, f"{value} does not fit a 32-bit float") from None
    if not math.isfinite(number):
        raise PhiJsonError(path, "expected a finite number")
    return number


def encode_f32(value: float, path: str) -> float:
    """The shortest decimal that reads back as the same f32, as serde_json writes an f32.

    Without this a stored 0.7 would come back as 0.699999988079071.
    """
    if not math.isfinite(value):
        raise PhiJsonError(path, "not a finite number")
    for digits in range(1, 10):
        candidate = float(f"{value:.{digits}g}")
        if struct.unpack("<f", struct.pack("<f", candidate))[0] == value:
            return candidate
    return value


def identity(value: Any, path: str) -> Any:
    return value


def enum_codec(
    names: Mapping[str, int], aliases: Mapping[str, int] | None = None
) -> tuple[Callable[[Any, str], int], Callable[[int, str], str]]:
    """Reader and writer between a serde unit-variant string and a protobuf enum number."""
    accepted = {**names, **(aliases or {})}
    reverse = {number: name for name, number in names.items()}
    choices = ", ".join(f'"{name}"' for name in names)

    def decode(value: Any, path: str) -> int:
        if not isinstance(value, str):
            raise _expected(path, f"one of {choices}", value)
        try:
            return accepted[value]
        except KeyError:
            raise PhiJsonError(path, f"expected one of {choices}, got {value!r}") from None

    def encode(value: int, path: str) -> str:
        try:
            return reverse[value]
        except KeyError:
            problem = "not set" if value == 0 else f"enum value {value} has no phi-json name"
            raise PhiJsonError(path, problem) from None

    return decode, encode


# --- times ------------------------------------------------------------------------

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?"
    r"(?:[Zz]|([+-])(\d{2}):(\d{2}))",
    re.ASCII,
)
# The range google.protobuf.Timestamp allows: 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59Z.
_MIN_SECONDS = -62_135_596_800
_MAX_SECONDS = 253_402_300_799
_MAX_MILLIS = _MAX_SECONDS * 1000 + 999
_EPOCH = datetime(1970, 1, 1)


def rfc3339_to_timestamp(text: str, path: str = "") -> timestamp_pb2.Timestamp:
    """Any RFC 3339 time (offsets, no fraction, up to nanoseconds) as a Timestamp.

    Digits beyond nanoseconds are truncated, the precision both chrono and protobuf
    keep. A leap second (`:60`) is refused like any invalid time: a Timestamp cannot
    name it.
    """
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise PhiJsonError(path, f"expected an RFC 3339 time, got {text!r}")
    year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
    fraction, sign, offset_hours, offset_minutes = match.group(7, 8, 9, 10)
    try:
        datetime(year, month, day, hour, minute, second)
    except ValueError as exc:
        raise PhiJsonError(path, f"invalid time {text!r}: {exc}") from None
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    if sign is not None:
        if int(offset_hours) > 23 or int(offset_minutes) > 59:
            raise PhiJsonError(path, f"invalid UTC offset in {text!r}")
        offset = int(offset_hours) * 3600 + int(offset_minutes) * 60
        seconds -= offset if sign == "+" else -offset
    if not _MIN_SECONDS <= seconds <= _MAX_SECONDS:
        raise PhiJsonError(path, f"{text!r} is outside years 1..9999")
    nanos = int((fraction or "0")[:9].ljust(9, "0"))
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


def _check_timestamp(ts: timestamp_pb2.Timestamp, path: str) -> None:
    if not (_MIN_SECONDS <= ts.seconds <= _MAX_SECONDS and 0 <= ts.nanos < 1_000_000_000):
        raise PhiJsonError(path, f"invalid timestamp seconds={ts.seconds} nanos={ts.nanos}")


def timestamp_to_rfc3339(ts: timestamp_pb2.Timestamp, path: str = "") -> str:
    """UTC with `Z`; fractional seconds only when non-zero, in 3, 6 or 9 digits.

    That is chrono's serde format: the shortest of milli/micro/nano that is exact.
    """
    _check_timestamp(ts, path)
    t = _EPOCH + timedelta(seconds=ts.seconds)
    text = f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}"
    nanos = ts.nanos
    if nanos == 0:
        return text + "Z"
    if nanos % 1_000_000 == 0:
        return f"{text}.{nanos // 1_000_000:03d}Z"
    if nanos % 1000 == 0:
        return f"{text}.{nanos // 1000:06d}Z"
    return f"{text}.{nanos:09d}Z"


def millis_to_timestamp(value: Any, path: str) -> timestamp_pb2.Timestamp:
    millis = int_decoder(0, _MAX_MILLIS)(value, path)
    seconds, rest = divmod(millis, 1000)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=rest * 1_000_000)


def timestamp_to_millis(ts: timestamp_pb2.Timestamp, path: str) -> int:
    """Milliseconds since the epoch; sub-millisecond nanos (never set from phi-json) drop."""
    _check_timestamp(ts, path)
    if ts.seconds < 0:
        raise PhiJsonError(path, "message timestamps before 1970 cannot be written")
    return ts.seconds * 1000 + ts.nanos // 1_000_000


# --- free-form JSON ---------------------------------------------------------------

_EXACT_INT = 2**53


def fill_value(target: struct_pb2.Value, value: Any, path: str) -> None:
    if value is None:
        target.null_value = struct_pb2.NULL_VALUE
    elif isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:
            raise PhiJsonError(path, "integer too large for a JSON number") from None
        if not math.isfinite(number):
            raise PhiJsonError(path, "expected a finite number")
        target.number_value = number
    elif isinstance(value, str):
        try:
            target.string_value = value
        except UnicodeEncodeError:
            raise not_utf8(path) from None
    elif isinstance(value, list | tuple):
        target.list_value.SetInParent()
        fill_list(target.list_value, value, path)
    elif isinstance(value, Mapping):
        target.struct_value.SetInParent()
        fill_struct(target.struct_value, value, path)
    else:
        raise PhiJsonError(path, f"not JSON: {type(value).__name__}")


def fill_struct(target: struct_pb2.Struct, obj: Mapping[Any, Any], path: str) -> None:
    for key, item in obj.items():
        if not isinstance(key, str):
            raise PhiJsonError(path, f"object key {key!r} is not a string")
        fill_value(_slot(target, key, path), item, at(path, key))


def _slot(obj: struct_pb2.Struct, key: str, path: str) -> struct_pb2.Value:
    try:
        return obj.fields[key]
    except UnicodeEncodeError:
        raise not_utf8(at(path, ascii(key))) from None


def fill_list(target: struct_pb2.ListValue, items: Iterable[Any], path: str) -> None:
    for i, item in enumerate(items):
        fill_value(target.values.add(), item, index(path, i))


def value_to_json(value: struct_pb2.Value, path: str) -> Any:
    """An unset Value reads as null, like an absent serde_json::Value::Null."""
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        number = value.number_value
        if not math.isfinite(number):
            raise PhiJsonError(path, "non-finite number cannot be written as JSON")
        if number.is_integer() and abs(number) <= _EXACT_INT:
            return int(number)
        return number
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return struct_to_json(value.struct_value, path)
    if kind == "list_value":
        return list_to_json(value.list_value, path)
    return None


def struct_to_json(obj: struct_pb2.Struct, path: str) -> dict[str, Any]:
    return {key: value_to_json(item, at(path, key)) for key, item in obj.fields.items()}


def list_to_json(items: struct_pb2.ListValue, path: str) -> list[Any]:
    return [value_to_json(item, index(path, i)) for i, item in enumerate(items.values)]


def fill_extra(
    obj: Mapping[str, Any], path: str, known: frozenset[str], extra: struct_pb2.Struct
) -> None:
    """Keep the keys this schema does not name, so that they come back out on export."""
    for key, item in obj.items():
        if key not in known:
            fill_value(_slot(extra, key, path), item, at(path, key))


def merge_extra(
    extra: struct_pb2.Struct, path: str, known: frozenset[str], out: dict[str, Any]
) -> None:
    for key, item in extra.fields.items():
        if key in known:
            raise PhiJsonError(at(path, key), "extra key shadows a phi-json field")
        out[key] = value_to_json(item, at(path, key))
