//! The client's failure kinds.
//!
//! A caller should not need gRPC internals to tell *why* something failed: the
//! server attaches a machine-readable reason (`google.rpc.ErrorInfo`) to every
//! refusal, and delivery failures say how many events are affected, because a
//! silent or vague failure is exactly what a recorder exists to avoid.

use std::collections::HashMap;
use std::fmt;

use prost::Message;
use tonic::Code;
use tonic_types::StatusExt;

use crate::checks::InvalidEvent;
use crate::proto::{AgentEvent, BatchRejection, EventEnvelope, RecordRequest};

/// A refused or failed RPC, with the server's `ErrorInfo` reason when it sent one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcError {
    /// The gRPC status code.
    pub code: Code,
    /// The server's message.
    pub message: String,
    /// `ErrorInfo.reason`, e.g. `LOOP_NOT_OPEN` or `INVALID_FIELD`; empty when none was sent.
    pub reason: String,
    /// `ErrorInfo.metadata`: the field, loop id, session id or sequence the reason is about.
    pub metadata: HashMap<String, String>,
}

impl RpcError {
    /// A status as the client reports it, decoding its `ErrorInfo` detail if present.
    pub fn from_status(status: &tonic::Status) -> Self {
        let (reason, metadata) = match status.get_details_error_info() {
            Some(info) => (info.reason, info.metadata),
            None => (String::new(), HashMap::new()),
        };
        RpcError {
            code: status.code(),
            message: status.message().to_string(),
            reason,
            metadata,
        }
    }

    /// An error of the client's own making (no server involved).
    pub fn local(code: Code, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
            reason: String::new(),
            metadata: HashMap::new(),
        }
    }
}

impl From<tonic::Status> for RpcError {
    fn from(status: tonic::Status) -> Self {
        RpcError::from_status(&status)
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)?;
        if !self.reason.is_empty() {
            write!(f, " [{}]", self.reason)?;
        }
        Ok(())
    }
}

impl std::error::Error for RpcError {}

/// Why `EventSender::emit` did not take an event. Nothing is ever dropped silently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmitError {
    /// The sender holds as many unacknowledged events or bytes as its
    /// `DeliveryConfig` allows; the caller decides what to lose.
    QueueFull {
        /// Events emitted and not yet resolved.
        pending_events: usize,
        /// Their encoded bytes.
        pending_bytes: usize,
        /// `DeliveryConfig::max_pending_events`.
        max_events: usize,
        /// `DeliveryConfig::max_pending_bytes`.
        max_bytes: usize,
    },
    /// The event has no variant set (an empty `AgentEvent`).
    NoEvent,
    /// The server would refuse the event (an id, its free-form JSON or its size, by
    /// the limits the server announced): nothing of it was numbered or queued.
    Invalid(InvalidEvent),
    /// The sender was closed, or its delivery task stopped (the text says which).
    Closed(String),
}

impl fmt::Display for EmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EmitError::QueueFull {
                pending_events,
                pending_bytes,
                max_events,
                max_bytes,
            } => write!(
                f,
                "event sender is full: {pending_events} events / {pending_bytes} bytes pending \
                 (limits {max_events} / {max_bytes})"
            ),
            EmitError::NoEvent => write!(f, "AgentEvent has no event set"),
            EmitError::Invalid(invalid) => write!(f, "{invalid}"),
            EmitError::Closed(why) => write!(f, "{why}"),
        }
    }
}

impl std::error::Error for EmitError {}

/// A batch the server refused as a whole; none of its events were stored.
#[derive(Debug, Clone, PartialEq)]
pub struct RejectedBatch {
    /// The refusal as the server reported it (code, message, reason, metadata).
    pub error: RpcError,
    /// How many events the batch held.
    pub events: usize,
    /// The loops the batch's events belong to, in first-seen order.
    pub loop_ids: Vec<String>,
    /// The event the server named as the cause (by `index` or field path), if it did.
    pub event: Option<AgentEvent>,
}

impl RejectedBatch {
    /// Describes a rejection of the batch whose encoded `RecordRequest` is `request`.
    pub(crate) fn new(rejection: &BatchRejection, request: &[u8]) -> Self {
        let envelopes = batch_envelopes(request);
        let mut loop_ids: Vec<String> = Vec::new();
        for envelope in &envelopes {
            if let Some(loop_id) = envelope.event.as_ref().and_then(crate::event_loop_id) {
                if !loop_ids.iter().any(|seen| seen == loop_id) {
                    loop_ids.push(loop_id.to_string());
                }
            }
        }
        let metadata: HashMap<String, String> = rejection.metadata.clone().into_iter().collect();
        let event = named_index(&metadata)
            .and_then(|i| envelopes.get(i))
            .and_then(|envelope| envelope.event.clone());
        RejectedBatch {
            error: RpcError {
                code: Code::from_i32(rejection.code),
                message: rejection.message.clone(),
                reason: rejection.reason.clone(),
                metadata,
            },
            events: envelopes.len(),
            loop_ids,
            event,
        }
    }
}

impl fmt::Display for RejectedBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let loops = match self.error.metadata.get("loop_id") {
            Some(loop_id) => loop_id.clone(),
            None if self.loop_ids.is_empty() => "-".to_string(),
            None => self.loop_ids.join(", "),
        };
        let reason = if self.error.reason.is_empty() {
            "-"
        } else {
            &self.error.reason
        };
        write!(
            f,
            "{} event(s) rejected: {:?} {reason} (loop {loops}): {}",
            self.events, self.error.code, self.error.message
        )
    }
}

/// The envelopes of an encoded batch request (decoded again only to describe a refusal).
fn batch_envelopes(request: &[u8]) -> Vec<EventEnvelope> {
    RecordRequest::decode(request)
        .ok()
        .and_then(|r| match r.kind {
            Some(crate::proto::record_request::Kind::Batch(batch)) => Some(batch.events),
            _ => None,
        })
        .unwrap_or_default()
}

/// The refused event: rules give its `index` in the batch, validation a field path
/// such as `batch.events[3].turn_start.loop_id`.
fn named_index(metadata: &HashMap<String, String>) -> Option<usize> {
    if let Some(index) = metadata.get("index") {
        return index.parse().ok();
    }
    let field = metadata.get("field")?;
    let rest = field.strip_prefix("batch.").unwrap_or(field);
    let digits = rest.strip_prefix("events[")?.split(']').next()?;
    digits.parse().ok()
}

/// One event the server refused alone; the other events of its batch were stored.
#[derive(Debug, Clone, PartialEq)]
pub struct RefusedEvent {
    /// The refusal as the server reported it (code, message, reason, metadata).
    pub error: RpcError,
    /// True when the refusal holds the event's slot in its loop (at `sequence`), so
    /// the loop's sequences stay gapless; false when it went to a refusal log.
    pub holds_slot: bool,
    /// The sequence the client gave the event (none for the session-level events).
    pub sequence: Option<u64>,
    /// The refused event, as sent.
    pub event: Option<AgentEvent>,
}

impl RefusedEvent {
    /// The refusals of one acknowledgement, matched with the events of the batch
    /// whose encoded `RecordRequest` is `request`.
    pub(crate) fn from_ack(refusals: &[crate::proto::EventRefusal], request: &[u8]) -> Vec<Self> {
        let envelopes = batch_envelopes(request);
        refusals
            .iter()
            .map(|refusal| {
                let envelope = envelopes.get(refusal.index as usize);
                RefusedEvent {
                    error: RpcError {
                        code: Code::from_i32(refusal.code),
                        message: refusal.message.clone(),
                        reason: refusal.reason.clone(),
                        metadata: refusal.metadata.clone().into_iter().collect(),
                    },
                    holds_slot: refusal.holds_slot,
                    sequence: envelope.and_then(|e| e.sequence),
                    event: envelope.and_then(|e| e.event.clone()),
                }
            })
            .collect()
    }

    /// The loop of the refused event, if it names one.
    pub fn loop_id(&self) -> Option<&str> {
        self.event.as_ref().and_then(crate::event_loop_id)
    }
}

impl fmt::Display for RefusedEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reason = if self.error.reason.is_empty() {
            "-"
        } else {
            &self.error.reason
        };
        let slot = if self.holds_slot {
            "holds its slot"
        } else {
            "in the refusal log"
        };
        write!(
            f,
            "event refused: {:?} {reason} (loop {}, sequence {}, {slot}): {}",
            self.error.code,
            self.loop_id().unwrap_or("-"),
            self.sequence
                .map_or_else(|| "-".to_string(), |s| s.to_string()),
            self.error.message
        )
    }
}

/// Events given to an `EventSender` were not all stored.
///
/// One error reports everything that went wrong since the previous flush: events
/// still unacknowledged at the deadline, batches the server rejected, and events
/// given up after the reconnect deadline (with the last connection error).
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryError {
    /// Events emitted before the flush and not acknowledged when its deadline passed.
    pub unacknowledged: usize,
    /// Batches the server refused whole since the previous flush, in the order it answered.
    pub rejections: Vec<RejectedBatch>,
    /// Events the server refused alone since the previous flush (their batches'
    /// other events were stored), in the order it answered.
    pub refusals: Vec<RefusedEvent>,
    /// Events given up undelivered (reconnect deadline passed, or a permanent stream error).
    pub failed: usize,
    /// Why the `failed` events were given up.
    pub cause: Option<RpcError>,
}

impl DeliveryError {
    /// The first rejected batch; later ones usually follow from it.
    pub fn rejection(&self) -> Option<&RejectedBatch> {
        self.rejections.first()
    }
}

impl fmt::Display for DeliveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        if self.unacknowledged > 0 {
            parts.push(format!(
                "{} event(s) still unacknowledged at the deadline",
                self.unacknowledged
            ));
        }
        parts.extend(self.rejections.iter().map(ToString::to_string));
        parts.extend(self.refusals.iter().map(ToString::to_string));
        if self.failed > 0 {
            let why = self
                .cause
                .as_ref()
                .map(|cause| format!(": {cause}"))
                .unwrap_or_default();
            parts.push(format!(
                "{} event(s) given up undelivered{why}",
                self.failed
            ));
        }
        if parts.is_empty() {
            write!(f, "delivery failed")
        } else {
            write!(f, "{}", parts.join("; "))
        }
    }
}

impl std::error::Error for DeliveryError {}

/// No Record stream came up for `EventSender::wait_ready`: the sidecar is not
/// reachable, refused the stream, or the sender gave up or was closed.
///
/// Reads as the Python client's `SidecarUnreachable`, e.g. `sidecar at unix:///…
/// unreachable: connection refused (no Record stream within 2 s)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarUnreachable {
    /// The sidecar's address, as the client was given it.
    pub target: String,
    /// Why the last attempt at a stream failed (`Unavailable` when nothing answers,
    /// `Unauthenticated` for a wrong token); `None` when no attempt had ended yet.
    pub cause: Option<RpcError>,
    /// Why waiting stopped: `no Record stream within 2 s`, `gave up` (a refusal no
    /// reconnect can change), or that the sender is closed or stopped.
    pub waited: String,
}

/// What gRPC's connection failures say, and how the cause reads.
const UNREACHABLE: [(&str, &str); 6] = [
    ("connection refused", "connection refused"),
    ("no such file or directory", "no socket at that path"),
    ("timed out", "connection timed out"),
    ("deadline exceeded", "connection timed out"),
    ("failed to connect", "cannot connect"),
    ("dns error", "unknown host"),
];

impl fmt::Display for SidecarUnreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let target = &self.target;
        match &self.cause {
            Some(cause) if cause.code == Code::Unavailable => {
                let text = cause.message.to_lowercase();
                match UNREACHABLE.iter().find(|(needle, _)| text.contains(needle)) {
                    Some((_, why)) => write!(f, "sidecar at {target} unreachable: {why}")?,
                    None => write!(f, "sidecar at {target} unreachable: {cause}")?,
                }
            }
            Some(cause) => write!(f, "sidecar at {target} refused the Record stream: {cause}")?,
            None => write!(f, "sidecar at {target} unreachable")?,
        }
        write!(f, " ({})", self.waited)
    }
}

impl std::error::Error for SidecarUnreachable {}

/// Failure to set up a client (bad target, unreadable token or TLS files).
#[derive(Debug)]
pub enum ConnectError {
    /// The target is not a valid address.
    Target(String),
    /// A token or TLS file named by an option or environment variable could not be read.
    File {
        /// The file.
        path: std::path::PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// The TLS settings contradict each other or were refused by the TLS library.
    Tls(String),
    /// A `DeliveryConfig` whose bounds contradict each other.
    Config(String),
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Target(why) => write!(f, "invalid target: {why}"),
            ConnectError::File { path, source } => {
                write!(f, "cannot read {}: {source}", path.display())
            }
            ConnectError::Tls(why) => write!(f, "TLS: {why}"),
            ConnectError::Config(why) => write!(f, "{why}"),
        }
    }
}

impl std::error::Error for ConnectError {}
