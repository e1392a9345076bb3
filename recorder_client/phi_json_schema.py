"""Tables that map serde structs onto protobuf messages, and the two loops that apply them.

Most phi-json structs differ from the protobuf messages only in key spelling and
in how absence is written, so each struct is described as a table of `Field`s and
`read_fields`/`write_fields` apply serde's presence rules (`Mode`) uniformly. The
tables are checked against the real `.proto` by the round-trip tests rather than
by mypy: a table is data, and the tests exercise every row.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

from google.protobuf import struct_pb2, timestamp_pb2
from google.protobuf.message import Message

from recorder_client.phi_json_core import (
    PhiJsonError,
    at,
    decode_bool,
    decode_f32,
    decode_i64,
    decode_str,
    decode_u32,
    decode_u64,
    encode_f32,
    expect_array,
    expect_object,
    fill_extra,
    fill_list,
    fill_struct,
    fill_value,
    identity,
    index,
    list_to_json,
    merge_extra,
    millis_to_timestamp,
    not_utf8,
    rfc3339_to_timestamp,
    struct_to_json,
    timestamp_to_millis,
    timestamp_to_rfc3339,
    value_to_json,
)


class Mode(Enum):
    """How serde treats a field's absence, which decides both reading and writing."""

    REQUIRED = "required"  # plain field: missing is an error, always written
    NULLABLE = "nullable"  # Option<T>: missing or null reads as unset; unset writes null
    OMITTABLE = "omittable"  # Option<T> skipped when None: unset is left out
    DEFAULTED = "defaulted"  # #[serde(default)]: missing reads as the default
    NULL_DEFAULT = "null_default"  # deserialize_null_default: missing or null -> default


class MessageCodec(Protocol):
    """Converts between a JSON value and the contents of one protobuf message."""

    def fill(self, value: Any, path: str, target: Any) -> None: ...

    def dump(self, msg: Any, path: str) -> Any: ...


class Codec(ABC):
    """Reads a JSON value into one field of a message and writes it back."""

    @abstractmethod
    def read(self, msg: Message, attr: str, value: Any, path: str) -> None: ...

    @abstractmethod
    def write(self, msg: Message, attr: str, path: str) -> Any: ...


@dataclass(frozen=True)
class Scalar(Codec):
    decode: Callable[[Any, str], Any]
    encode: Callable[[Any, str], Any] = identity

    def read(self, msg: Message, attr: str, value: Any, path: str) -> None:
        try:
            setattr(msg, attr, self.decode(value, path))
        except UnicodeEncodeError:
            raise not_utf8(path) from None

    def write(self, msg: Message, attr: str, path: str) -> Any:
        return self.encode(getattr(msg, attr), path)


@dataclass(frozen=True)
class Sub(Codec):
    """A message-typed field. `must_be_set`: unset has no honest phi-json (a time, a role)."""

    codec: MessageCodec
    must_be_set: bool = False

    def read(self, msg: Message, attr: str, value: Any, path: str) -> None:
        target = getattr(msg, attr)
        target.SetInParent()
        self.codec.fill(value, path, target)

    def write(self, msg: Message, attr: str, path: str) -> Any:
        if self.must_be_set and not msg.HasField(attr):
            raise PhiJsonError(path, "not set")
        return self.codec.dump(getattr(msg, attr), path)


@dataclass(frozen=True)
class ScalarList(Codec):
    decode: Callable[[Any, str], Any]
    encode: Callable[[Any, str], Any] = identity

    def read(self, msg: Message, attr: str, value: Any, path: str) -> None:
        container = getattr(msg, attr)
        for i, item in enumerate(expect_array(value, path)):
            try:
                container.append(self.decode(item, index(path, i)))
            except UnicodeEncodeError:
                raise not_utf8(index(path, i)) from None

    def write(self, msg: Message, attr: str, path: str) -> Any:
        return [self.encode(item, index(path, i)) for i, item in enumerate(getattr(msg, attr))]


@dataclass(frozen=True)
class SubList(Codec):
    codec: MessageCodec

    def read(self, msg: Message, attr: str, value: Any, path: str) -> None:
        container = getattr(msg, attr)
        for i, item in enumerate(expect_array(value, path)):
            self.codec.fill(item, index(path, i), container.add())

    def write(self, msg: Message, attr: str, path: str) -> Any:
        return [self.codec.dump(item, index(path, i)) for i, item in enumerate(getattr(msg, attr))]


@dataclass(frozen=True)
class Field:
    key: str
    attr: str
    codec: Codec
    mode: Mode = Mode.REQUIRED


def field(key: str, codec: Codec, mode: Mode = Mode.REQUIRED, attr: str | None = None) -> Field:
    return Field(key, attr or key, codec, mode)


def _is_set(msg: Message, attr: str) -> bool:
    """Presence where the proto tracks it; otherwise (enums like `api`) non-zero means set."""
    if msg.DESCRIPTOR.fields_by_name[attr].has_presence:
        return msg.HasField(attr)
    return bool(getattr(msg, attr))


def read_fields(obj: Mapping[str, Any], path: str, msg: Message, fields: Iterable[Field]) -> None:
    for f in fields:
        here = at(path, f.key)
        value = obj.get(f.key)
        if value is None:
            if f.mode is Mode.NULL_DEFAULT:
                f.codec.read(msg, f.attr, None, here)
                continue
            if f.key not in obj:
                if f.mode is Mode.REQUIRED:
                    raise PhiJsonError(here, "missing")
                continue
            if f.mode in (Mode.NULLABLE, Mode.OMITTABLE):
                continue
        f.codec.read(msg, f.attr, value, here)


def write_fields(msg: Message, path: str, fields: Iterable[Field], out: dict[str, Any]) -> None:
    for f in fields:
        if f.mode in (Mode.NULLABLE, Mode.OMITTABLE) and not _is_set(msg, f.attr):
            if f.mode is Mode.NULLABLE:
                out[f.key] = None
            continue
        out[f.key] = f.codec.write(msg, f.attr, at(path, f.key))


@dataclass(frozen=True)
class Record:
    """A serde struct: a JSON object whose keys map one-to-one onto message fields.

    Keys it does not name are ignored, as serde ignores them; only messages and
    content blocks, which have an `extra` Struct, keep them.
    """

    fields: tuple[Field, ...]

    @property
    def keys(self) -> frozenset[str]:
        return frozenset(f.key for f in self.fields)

    def fill(self, value: Any, path: str, target: Any) -> None:
        read_fields(expect_object(value, path), path, target, self.fields)

    def dump(self, msg: Any, path: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        write_fields(msg, path, self.fields, out)
        return out


@dataclass(frozen=True)
class Funcs:
    """A MessageCodec from a pair of functions."""

    fill: Callable[[Any, str, Any], None]
    dump: Callable[[Any, str], Any]


def _fill_rfc3339(value: Any, path: str, target: timestamp_pb2.Timestamp) -> None:
    target.CopyFrom(rfc3339_to_timestamp(decode_str(value, path), path))


def _fill_millis(value: Any, path: str, target: timestamp_pb2.Timestamp) -> None:
    target.CopyFrom(millis_to_timestamp(value, path))


def _fill_struct(value: Any, path: str, target: struct_pb2.Struct) -> None:
    fill_struct(target, expect_object(value, path), path)


def _fill_list(value: Any, path: str, target: struct_pb2.ListValue) -> None:
    fill_list(target, expect_array(value, path), path)


RFC3339 = Funcs(_fill_rfc3339, timestamp_to_rfc3339)
MILLIS = Funcs(_fill_millis, timestamp_to_millis)
VALUE = Funcs(lambda value, path, target: fill_value(target, value, path), value_to_json)
STRUCT = Funcs(_fill_struct, struct_to_json)
LIST_VALUE = Funcs(_fill_list, list_to_json)

STR = Scalar(decode_str)
BOOL = Scalar(decode_bool)
U32 = Scalar(decode_u32)
U64 = Scalar(decode_u64)
I64 = Scalar(decode_i64)
F32 = Scalar(decode_f32, encode_f32)
TIME = Sub(RFC3339, must_be_set=True)


def single_key(value: Any, path: str, variants: Iterable[str]) -> tuple[str, Any]:
    """Unpack a serde externally tagged struct variant, `{"Variant": {...}}`."""
    names = tuple(variants)
    choices = ", ".join(names)
    if not isinstance(value, Mapping) or len(value) != 1:
        raise PhiJsonError(path, f"expected an object with one key of {choices}")
    ((name, inner),) = value.items()
    if name not in names:
        raise PhiJsonError(path, f"expected one of {choices}, got {name!r}")
    return name, inner


def tag_of(obj: Mapping[str, Any], path: str, key: str, variants: Mapping[str, object]) -> str:
    """The variant name under `key`, checked against the names phi-json knows."""
    here = at(path, key)
    if key not in obj:
        raise PhiJsonError(here, "missing")
    name = decode_str(obj[key], here)
    if name not in variants:
        choices = ", ".join(f'"{variant}"' for variant in variants)
        raise PhiJsonError(here, f"expected one of {choices}, got {name!r}")
    return name


class InternallyTagged:
    """serde `#[serde(tag = "...")]` onto a oneof: the tag names the variant, fields sit beside it.

    With `keep_extra`, keys the variant does not name go to the parent's `extra`
    Struct and come back out (content blocks); otherwise they are ignored (events).
    """

    def __init__(
        self,
        tag: str,
        oneof: str,
        variants: Mapping[str, tuple[str, Record]],
        *,
        keep_extra: bool = False,
    ) -> None:
        self._tag = tag
        self._oneof = oneof
        self._variants = variants
        self._names = {attr: name for name, (attr, _) in variants.items()}
        self._known = (
            {name: record.keys | {tag} for name, (_, record) in variants.items()}
            if keep_extra
            else None
        )

    def fill(self, value: Any, path: str, target: Any) -> None:
        obj = expect_object(value, path)
        name = tag_of(obj, path, self._tag, self._variants)
        attr, record = self._variants[name]
        variant = getattr(target, attr)
        variant.SetInParent()
        read_fields(obj, path, variant, record.fields)
        if self._known is not None:
            fill_extra(obj, path, self._known[name], target.extra)

    def dump(self, msg: Any, path: str) -> dict[str, Any]:
        attr = msg.WhichOneof(self._oneof)
        if attr is None:
            raise PhiJsonError(path, f"no {self._oneof} set")
        name = self._names[attr]
        record = self._variants[name][1]
        out: dict[str, Any] = {self._tag: name}
        write_fields(getattr(msg, attr), path, record.fields, out)
        if self._known is not None:
            merge_extra(msg.extra, path, self._known[name], out)
        return out


class ExternallyTagged:
    """serde's default enum form for struct variants onto a oneof: `{"Variant": {...}}`."""

    def __init__(self, oneof: str, variants: Mapping[str, tuple[str, Record]]) -> None:
        self._oneof = oneof
        self._variants = variants
        self._names = {attr: name for name, (attr, _) in variants.items()}

    def fill(self, value: Any, path: str, target: Any) -> None:
        name, inner = single_key(value, path, self._variants)
        attr, record = self._variants[name]
        variant = getattr(target, attr)
        variant.SetInParent()
        record.fill(inner, at(path, name), variant)

    def dump(self, msg: Any, path: str) -> dict[str, Any]:
        attr = msg.WhichOneof(self._oneof)
        if attr is None:
            raise PhiJsonError(path, f"no {self._oneof} set")
        name = self._names[attr]
        return {name: self._variants[name][1].dump(getattr(msg, attr), at(path, name))}
