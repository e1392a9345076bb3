//! The phi-core bridge (cargo feature `phi-core`): records a phi-core agent into
//! the sidecar.
//!
//! A phi-core agent reports everything it does as [`phi_core::AgentEvent`]s on an
//! unbounded channel. [`tee`] sits on that channel: every event is converted
//! into the protobuf `AgentEvent`, emitted to an [`EventSender`], and handed on
//! unchanged to whoever reads the returned receiver (a UI, phi-core's own
//! `SessionRecorder`, ...). Recording an existing agent is one line:
//!
//! ```no_run
//! # async fn example(mut agent: phi_core::BasicAgent) -> Result<(), Box<dyn std::error::Error>> {
//! use agent_recorder_client::{phi, ConnectOptions, DeliveryConfig, RecorderClient};
//!
//! let sender = RecorderClient::connect(ConnectOptions::default())?
//!     .sender(DeliveryConfig::default())?;
//! let mut events = phi::tee(agent.prompt("What is in README.md?").await, &sender);
//! while let Some(event) = events.recv().await {
//!     // ... the agent's events, exactly as before
//! #   drop(event);
//! }
//! sender.flush(None).await?; // every event is now committed in the sidecar
//! # Ok(())
//! # }
//! ```
//!
//! The conversion goes through phi-core's own serde form (the JSON its
//! `save_session` writes), read by [`crate::phi_json`] with the rules of the
//! Python codec that exports sessions back to that JSON. So every variant,
//! message, content block, usage, config snapshot, continuation kind,
//! free-form JSON value and extension message is carried, and keys a newer
//! phi-core adds to messages or content blocks are kept in their `extra` Struct.

use std::fmt;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::delivery::EventSender;
use crate::error::EmitError;
use crate::phi_json::{self, PhiJsonError};
use crate::proto::AgentEvent;

/// Converts one phi-core event into the protobuf `AgentEvent`, losslessly.
pub fn to_proto(event: &phi_core::AgentEvent) -> Result<AgentEvent, BridgeError> {
    // Through the text phi-core writes, not `serde_json::to_value`: the latter widens
    // an f32 such as a temperature of 0.7 to 0.699999988079071, where the text (and
    // phi-core's saved session) has the shortest form, 0.7.
    let serialize_error = |error: serde_json::Error| BridgeError::Serialize(error.to_string());
    let text = serde_json::to_vec(event).map_err(serialize_error)?;
    let json: serde_json::Value = serde_json::from_slice(&text).map_err(serialize_error)?;
    phi_json::event_from_json(&json).map_err(BridgeError::Convert)
}

/// Why an event did not reach the sender. The agent is never stopped for it.
#[derive(Debug, Clone, PartialEq)]
pub enum BridgeError {
    /// phi-core's serde refused the event (does not happen with phi-core's own types).
    Serialize(String),
    /// The event's JSON did not convert (names the offending path).
    Convert(PhiJsonError),
    /// The sender refused the event (full or closed).
    Emit(EmitError),
}

impl fmt::Display for BridgeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BridgeError::Serialize(why) => write!(f, "cannot serialize the event: {why}"),
            BridgeError::Convert(error) => write!(f, "cannot convert the event: {error}"),
            BridgeError::Emit(error) => write!(f, "not recorded: {error}"),
        }
    }
}

impl std::error::Error for BridgeError {}

/// Records phi-core events into an [`EventSender`] and remembers what it could not
/// record; cheap to clone (clones share the failure list).
#[derive(Debug, Clone)]
pub struct Bridge {
    sender: EventSender,
    failures: Arc<Mutex<Vec<BridgeError>>>,
    /// Print failures on stderr instead of keeping them.
    report: bool,
}

impl Bridge {
    /// A bridge into `sender` (a clone of the handle: both feed one queue).
    pub fn new(sender: &EventSender) -> Self {
        Bridge {
            sender: sender.clone(),
            failures: Arc::default(),
            report: false,
        }
    }

    /// Converts and emits one event; never waits on the network.
    pub fn record(&self, event: &phi_core::AgentEvent) -> Result<(), BridgeError> {
        let converted = to_proto(event)?;
        self.sender.emit(&converted).map_err(BridgeError::Emit)
    }

    /// Forwards every event of `events` to the recorder and hands it on unchanged,
    /// in order, on the returned receiver. Events that could not be recorded are
    /// kept for [`take_failures`](Self::take_failures). Must run inside a Tokio runtime.
    ///
    /// The forwarding task ends when the agent closes its channel; it keeps
    /// recording even if the returned receiver is dropped.
    pub fn tee(
        &self,
        mut events: UnboundedReceiver<phi_core::AgentEvent>,
    ) -> UnboundedReceiver<phi_core::AgentEvent> {
        let (tx, rx) = unbounded_channel();
        let bridge = self.clone();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                if let Err(error) = bridge.record(&event) {
                    bridge.failed(error);
                }
                let _ = tx.send(event);
            }
        });
        rx
    }

    fn failed(&self, error: BridgeError) {
        if self.report {
            eprintln!("agent-recorder: {error}");
            return;
        }
        self.failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(error);
    }

    /// The events not recorded since the last call (and why), oldest first.
    pub fn take_failures(&self) -> Vec<BridgeError> {
        std::mem::take(
            &mut *self
                .failures
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }
}

/// [`Bridge::tee`] in one call; an event that cannot be recorded is reported on
/// stderr (and the agent goes on). Keep a [`Bridge`] to inspect failures instead.
pub fn tee(
    events: UnboundedReceiver<phi_core::AgentEvent>,
    sender: &EventSender,
) -> UnboundedReceiver<phi_core::AgentEvent> {
    let bridge = Bridge {
        report: true,
        ..Bridge::new(sender)
    };
    bridge.tee(events)
}
