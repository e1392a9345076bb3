"""Whether protobuf bytes can hold a NaN or Infinity in a JSON number, from the bytes.

The server settles a batch's JSON from the bytes it arrived in
(recorder_server/validation.py); the client settles an event's at emit()
(recorder_client/checks.py). Both ask this one question of raw bytes.
"""

from __future__ import annotations

from typing import Final

# A non-finite double has its 11 exponent bits set, so the two most significant of
# its 8 little-endian bytes are 0xF0..0xFF then 0x7F or 0xFF. On the wire, a
# Value.number_value is the last byte of its tag (0x11, or 0x00 ending an overlong
# varint of up to 5 bytes, which the decoder also accepts) and those 8 bytes.
# Valid UTF-8 never holds such a pair; varints seldom do. Past this many 0x7F/0xFF
# bytes the scan gives up (False), so hostile input cannot make it slow.
WIRE_SCAN_MAX_HITS: Final = 4096


def finite_on_wire(wire: bytes) -> bool:
    """Whether no Value decoded from `wire` can hold NaN or Infinity (False: maybe)."""
    hits = 0
    for high in (b"\x7f", b"\xff"):
        at = wire.find(high, 8)
        while at != -1:
            if wire[at - 1] >= 0xF0 and wire[at - 8] in (0x11, 0x00):
                return False
            hits += 1
            if hits > WIRE_SCAN_MAX_HITS:
                return False
            at = wire.find(high, at + 1)
    return True
