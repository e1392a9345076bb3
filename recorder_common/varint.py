"""The protobuf base-128 varint, for code that frames raw protobuf bytes.

The client frames Record batches around encoded events and the server frames
read answers around stored bytes (recorder_client/framing.py,
recorder_server/framing.py); both write field keys and lengths with this.
"""

from __future__ import annotations

from typing import Final


def _encode(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# Every varint of up to two bytes, looked up: tags, sequences and most sizes.
_VARINTS: Final = tuple(_encode(value) for value in range(1 << 14))


def varint(value: int) -> bytes:
    """The base-128 varint of a non-negative int."""
    if value < 16384:
        return _VARINTS[value]
    if value < 2097152:  # cursors and event sizes of three bytes
        return bytes((value & 0x7F | 0x80, value >> 7 & 0x7F | 0x80, value >> 14))
    return _encode(value)
