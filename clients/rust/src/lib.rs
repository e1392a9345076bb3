//! Client of the [agent-recorder](../../README.md) sidecar: records AI-agent
//! events over gRPC with the same delivery guarantee as the Python client.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use agent_recorder_client::{ConnectOptions, DeliveryConfig, RecorderClient};
//! use agent_recorder_client::proto::{agent_event, AgentEvent, InputRejected};
//!
//! // $AGENT_RECORDER_TARGET, or the default socket; token and TLS from the environment.
//! let client = RecorderClient::connect(ConnectOptions::default())?;
//! let sender = client.sender(DeliveryConfig::default())?;
//! let event = AgentEvent {
//!     event: Some(agent_event::Event::InputRejected(InputRejected {
//!         loop_id: "s1.default.0".into(),
//!         reason: "PII detected".into(),
//!     })),
//! };
//! sender.emit(&event)?; // never waits on the network
//! sender.flush(None).await?; // returns once everything emitted is committed
//! # Ok(())
//! # }
//! ```
//!
//! * [`EventSender`]: synchronous `emit` that refuses an event the server would
//!   refuse ([`checks`], naming the field), batching, acknowledgement after commit,
//!   re-sending after reconnects, bounded memory, `flush` as proof of delivery.
//! * [`RecorderClient`]: target discovery (`$AGENT_RECORDER_TARGET`, the default
//!   socket), bearer token and TLS from the same variables as the Python client,
//!   typed reads, and the generated stub for every other RPC ([`RecorderClient::raw`]).
//! * [`phi_json`]: the seed runtime's JSON (phi-core's serde format) into protobuf.
//! * `phi` (cargo feature `phi-core`): records a phi-core agent in one line.

#![warn(missing_docs)]

pub mod checks;
pub mod client;
pub mod delivery;
pub mod error;
mod framing;
pub mod phi_json;
pub mod target;

#[cfg(feature = "phi-core")]
pub mod phi;

/// The messages and the client stub generated at build time from the repository's
/// `protos/` (package `agent_recorder.v1`).
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("agent_recorder.v1");
}

pub use checks::{EventLimits, InvalidEvent};
pub use client::{ConnectOptions, RawClient, RecorderClient};
pub use delivery::{DeliveryConfig, EventSender, SenderStats};
pub use error::{
    ConnectError, DeliveryError, EmitError, RefusedEvent, RejectedBatch, RpcError,
    SidecarUnreachable,
};

use proto::agent_event::Event;

/// The loop an event belongs to; `None` for the session-level Parallel* events
/// (and an empty event).
pub fn event_loop_id(event: &proto::AgentEvent) -> Option<&str> {
    let loop_id = match event.event.as_ref()? {
        Event::AgentStart(e) => &e.loop_id,
        Event::AgentEnd(e) => &e.loop_id,
        Event::TurnStart(e) => &e.loop_id,
        Event::TurnRequest(e) => &e.loop_id,
        Event::TurnEnd(e) => &e.loop_id,
        Event::MessageStart(e) => &e.loop_id,
        Event::MessageUpdate(e) => &e.loop_id,
        Event::MessageEnd(e) => &e.loop_id,
        Event::ToolExecutionStart(e) => &e.loop_id,
        Event::ToolExecutionUpdate(e) => &e.loop_id,
        Event::ToolExecutionEnd(e) => &e.loop_id,
        Event::ProgressMessage(e) => &e.loop_id,
        Event::InputRejected(e) => &e.loop_id,
        Event::CompactionStarted(e) => &e.loop_id,
        Event::CompactionEnded(e) => &e.loop_id,
        Event::PrunApplied(e) => &e.loop_id,
        Event::RevertApplied(e) => &e.loop_id,
        Event::ParallelLoopStart(_) | Event::ParallelLoopEnd(_) => return None,
    };
    Some(loop_id)
}
