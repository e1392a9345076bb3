//! `RecordRequest` bytes built from events encoded once, at emit time.
//!
//! An `EventSender` keeps each event as the bytes of its `AgentEvent` and frames a
//! batch by concatenation, so a re-sent batch is the very same bytes and nothing is
//! encoded twice. Around each event's own bytes the framing is what prost writes
//! for `RecordRequest { batch: EventBatch { batch_id, events: [EventEnvelope {
//! sequence, event }] } }` (fields in number order), so the server decodes an
//! ordinary `RecordRequest`. The same layout as the Python client's framing.py.

use bytes::{BufMut, Bytes};
use prost::encoding::{encode_varint, encoded_len_varint};
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

use crate::proto::{record_request, RecordHello, RecordRequest, RecordResponse};

/// Field 1, varint: `EventBatch.batch_id`, `EventEnvelope.sequence`.
const VARINT_1: u8 = 0x08;
/// Field 2, length-delimited: `RecordRequest.batch`, `EventBatch.events`, `EventEnvelope.event`.
const BYTES_2: u8 = 0x12;

/// The most bytes a batch request adds around one event of under 4 GiB: the
/// envelope's tag and length, its sequence field, the event's tag and length.
pub(crate) const ENVELOPE_FRAMING_MAX: usize = 1 + 5 + 1 + 10 + 1 + 5;

/// The bytes of one envelope around an encoded event; `None` leaves the sequence
/// unset (the session-level Parallel* events), `Some(0)` sets it.
fn envelope_len(sequence: Option<u64>, event_len: usize) -> usize {
    let event_field = 1 + encoded_len_varint(event_len as u64) + event_len;
    let sequence_field = sequence.map_or(0, |s| 1 + encoded_len_varint(s));
    sequence_field + event_field
}

/// Builds one batch request from `(sequence, encoded event)` pairs, in order.
pub(crate) fn batch_request<'a>(
    batch_id: u64,
    events: impl Iterator<Item = (Option<u64>, &'a [u8])> + Clone,
) -> Bytes {
    let envelopes: usize = events
        .clone()
        .map(|(sequence, data)| {
            let len = envelope_len(sequence, data.len());
            1 + encoded_len_varint(len as u64) + len
        })
        .sum();
    let batch_len = 1 + encoded_len_varint(batch_id) + envelopes;
    let mut out = Vec::with_capacity(1 + encoded_len_varint(batch_len as u64) + batch_len);
    out.put_u8(BYTES_2);
    encode_varint(batch_len as u64, &mut out);
    out.put_u8(VARINT_1);
    encode_varint(batch_id, &mut out);
    for (sequence, data) in events {
        out.put_u8(BYTES_2);
        encode_varint(envelope_len(sequence, data.len()) as u64, &mut out);
        if let Some(sequence) = sequence {
            out.put_u8(VARINT_1);
            encode_varint(sequence, &mut out);
        }
        out.put_u8(BYTES_2);
        encode_varint(data.len() as u64, &mut out);
        out.put_slice(data);
    }
    Bytes::from(out)
}

pub(crate) fn hello_request(writer_id: &str) -> Bytes {
    RecordRequest {
        kind: Some(record_request::Kind::Hello(RecordHello {
            writer_id: writer_id.to_string(),
        })),
    }
    .encode_to_vec()
    .into()
}

/// The Record method's codec: requests go out as already encoded bytes,
/// responses are decoded by prost.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RawRecordCodec;

#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RawEncoder;

#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ResponseDecoder;

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for ResponseDecoder {
    type Item = RecordResponse;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<RecordResponse>, Status> {
        RecordResponse::decode(src)
            .map(Some)
            .map_err(|error| Status::internal(format!("undecodable RecordResponse: {error}")))
    }
}

impl Codec for RawRecordCodec {
    type Encode = Bytes;
    type Decode = RecordResponse;
    type Encoder = RawEncoder;
    type Decoder = ResponseDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> ResponseDecoder {
        ResponseDecoder
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{agent_event, AgentEvent, EventBatch, EventEnvelope, InputRejected};

    fn event(reason: &str) -> AgentEvent {
        AgentEvent {
            event: Some(agent_event::Event::InputRejected(InputRejected {
                loop_id: "l".into(),
                reason: reason.into(),
            })),
        }
    }

    #[test]
    fn a_framed_batch_is_what_prost_encodes() {
        let long = "x".repeat(300);
        let events = [event("a"), event(&long), event("")];
        let encoded: Vec<Vec<u8>> = events.iter().map(Message::encode_to_vec).collect();
        let sequences = [Some(0), None, Some(200_000)];
        let framed = batch_request(
            70_000,
            sequences
                .iter()
                .zip(&encoded)
                .map(|(s, e)| (*s, e.as_slice())),
        );
        let expected = RecordRequest {
            kind: Some(record_request::Kind::Batch(EventBatch {
                batch_id: 70_000,
                events: sequences
                    .iter()
                    .zip(&events)
                    .map(|(sequence, event)| EventEnvelope {
                        sequence: *sequence,
                        event: Some(event.clone()),
                    })
                    .collect(),
            })),
        };
        assert_eq!(framed.as_ref(), expected.encode_to_vec().as_slice());
    }
}
