"""RecordRequest bytes built from events encoded once, at emit time.

`EventSender` keeps each event as the bytes of its `AgentEvent` and frames a
batch by concatenation. Building the batch from messages instead (a copy into an
envelope, another into the batch, then serialization) was about half of the
client's CPU per event, on the cores it shares with the server (see
docs/performance.md). Around each event's own bytes, the framing is what
`RecordRequest.SerializeToString()` writes (fields in number order), so the
server decodes an ordinary RecordRequest.

Wire format (protos/agent_recorder/v1/recorder_service.proto):
RecordRequest{hello = 1, batch = 2}, EventBatch{batch_id = 1, events = 2},
EventEnvelope{optional sequence = 1, event = 2}.
"""

from __future__ import annotations

from typing import Final

from agent_recorder.v1 import recorder_service_pb2 as service_pb2

from recorder_common.varint import varint

# A field's tag byte: field number << 3 | wire type (0 varint, 2 length-delimited).
_VARINT_1: Final = b"\x08"  # field 1, varint: EventBatch.batch_id, EventEnvelope.sequence
_BYTES_2: Final = b"\x12"  # field 2, length-delimited: .batch, .events, .event


def envelope_head(sequence: int | None, event_size: int) -> bytes:
    """What precedes an encoded event in EventBatch.events: the envelope's framing.

    None leaves the sequence unset (the session-level Parallel* events); 0 is set.
    """
    event_field = _BYTES_2 + varint(event_size)
    if sequence is None:
        envelope_size = len(event_field) + event_size
        return _BYTES_2 + varint(envelope_size) + event_field
    sequence_field = _VARINT_1 + varint(sequence)
    envelope_size = len(sequence_field) + len(event_field) + event_size
    return _BYTES_2 + varint(envelope_size) + sequence_field + event_field


def batch_request(batch_id: int, pieces: list[bytes]) -> bytes:
    """RecordRequest{batch{batch_id, events}} from envelope heads and events, in order."""
    batch_id_field = _VARINT_1 + varint(batch_id)
    batch_size = len(batch_id_field) + sum(map(len, pieces))
    return b"".join((_BYTES_2, varint(batch_size), batch_id_field, *pieces))


def hello_request(writer_id: str) -> bytes:
    return service_pb2.RecordRequest(
        hello=service_pb2.RecordHello(writer_id=writer_id)
    ).SerializeToString()


def batch_envelopes(request: bytes) -> list[service_pb2.EventEnvelope]:
    """The envelopes of a batch request, decoded again (only to describe a rejection)."""
    return list(service_pb2.RecordRequest.FromString(request).batch.events)
