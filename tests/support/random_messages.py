"""Hypothesis strategies for the validators: random JSON values and random, often invalid,
protobuf messages (every field type, nested to a given depth).
"""

from __future__ import annotations

import math
from typing import cast

from google.protobuf import struct_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

from support.shapes import (
    LOOP,
)

JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(alphabet=st.sampled_from("*2\x7fÿab"), max_size=12)
)


JSON = st.recursive(
    JSON_LEAVES,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=20,
)


def to_value(data: object) -> struct_pb2.Value:
    """Exact conversion, empty containers and NaN included (Struct.update drops neither,
    but spelling it out keeps the reference independent of the library under test)."""
    out = struct_pb2.Value()
    if data is None:
        out.null_value = struct_pb2.NULL_VALUE
    elif isinstance(data, bool):
        out.bool_value = data
    elif isinstance(data, float):
        out.number_value = data
    elif isinstance(data, str):
        out.string_value = data
    elif isinstance(data, list):
        out.list_value.SetInParent()
        for item in data:
            out.list_value.values.add().CopyFrom(to_value(item))
    else:
        assert isinstance(data, dict)
        out.struct_value.SetInParent()
        for key, item in data.items():
            out.struct_value.fields[key].CopyFrom(to_value(item))
    return out


def depth_of(data: object) -> int:
    if isinstance(data, list):
        return 1 + max((depth_of(item) for item in data), default=0)
    if isinstance(data, dict):
        return 1 + max((depth_of(item) for item in data.values()), default=0)
    return 0


def finite(data: object) -> bool:
    if isinstance(data, list):
        return all(finite(item) for item in data)
    if isinstance(data, dict):
        return all(finite(item) for item in data.values())
    return not isinstance(data, float) or math.isfinite(data)


def integers_for(field: FieldDescriptor) -> st.SearchStrategy[int]:
    bits = 32 if field.type in _INT32_TYPES else 64
    if field.type in _UNSIGNED_TYPES:
        return st.integers(0, 2**bits - 1)
    if field.type == FieldDescriptor.TYPE_ENUM:
        return st.integers(-2, 14)
    return st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)


_INT32_TYPES = {
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_SINT32,
    FieldDescriptor.TYPE_SFIXED32,
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_FIXED32,
}


_UNSIGNED_TYPES = {
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_FIXED32,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_FIXED64,
}


IDS = st.sampled_from(["", "s", "s.c.0", LOOP, "x" * 300]) | st.text(max_size=6)


def scalar_for(field: FieldDescriptor) -> st.SearchStrategy[object]:
    if field.type == FieldDescriptor.TYPE_STRING:
        return IDS
    if field.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if field.type == FieldDescriptor.TYPE_DOUBLE:
        return st.floats(allow_nan=True, allow_infinity=True)
    if field.type == FieldDescriptor.TYPE_FLOAT:
        return st.floats(width=32, allow_nan=True, allow_infinity=True)
    if field.type == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=4)
    return integers_for(field)


def fill(message: Message, data: st.DataObject, depth: int) -> None:
    """Set a random subset of `message`'s fields to random, often invalid, values."""
    for field in cast("list[FieldDescriptor]", message.DESCRIPTOR.fields):
        if not data.draw(st.booleans()):
            continue
        target = getattr(message, field.name)
        if field.message_type is None:
            if field.is_repeated:
                target.extend(data.draw(st.lists(scalar_for(field), max_size=2)))
            else:
                setattr(message, field.name, data.draw(scalar_for(field)))
        elif depth <= 0:
            continue
        elif field.message_type.GetOptions().map_entry:
            scalar = field.message_type.fields_by_name["value"].message_type is None
            for key in data.draw(st.lists(st.text(max_size=2), max_size=2)):
                if scalar:
                    target[key] = data.draw(st.text(max_size=2))
                else:
                    fill(target[key], data, depth - 1)
        elif field.is_repeated:
            for _ in range(data.draw(st.integers(0, 2))):
                fill(target.add(), data, depth - 1)
        else:
            target.SetInParent()
            fill(target, data, depth - 1)
