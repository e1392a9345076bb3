//! The Rust client's numbers for `make bench` (bench/rust.py drives it).
//!
//! `bench TARGET INGEST_EVENTS EMIT_EVENTS` reads two files of AgentEvents (each
//! a 4-byte little-endian length, then the encoded event: the Python bench's
//! realistic mix, two seeds) and prints one JSON line with
//! * `ingest_eps`: all events emitted as fast as the sender takes them (waiting
//!   for room when it is full), then flushed, over the time from the first emit
//!   until flush returned: sustained, durable ingest from one client;
//! * `emit_us`: the median wall time of one `emit()` call over the same events
//!   of the second file on a fresh stream (calls that found the sender full are
//!   not samples), as the Python bench measures its `emit()`.

use std::time::{Duration, Instant};

use agent_recorder_client::proto::AgentEvent;
use agent_recorder_client::{
    ConnectOptions, DeliveryConfig, EmitError, EventSender, RecorderClient,
};
use prost::Message;

const PATIENCE: Duration = Duration::from_secs(600);

fn read_events(path: &str) -> Vec<AgentEvent> {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut events = Vec::new();
    let mut rest = data.as_slice();
    while rest.len() >= 4 {
        let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
        events.push(AgentEvent::decode(&rest[4..4 + len]).expect("an encoded AgentEvent"));
        rest = &rest[4 + len..];
    }
    events
}

fn sender(client: &RecorderClient) -> EventSender {
    let config = DeliveryConfig {
        flush_timeout: PATIENCE,
        ..Default::default()
    };
    client.sender(config).expect("valid config")
}

/// Emits one event, waiting for room when the sender is full; true if it had to wait.
async fn emit(sender: &EventSender, event: &AgentEvent) -> bool {
    match sender.emit(event) {
        Ok(()) => false,
        Err(EmitError::QueueFull { .. }) => {
            sender.emit_wait(event, PATIENCE).await.expect("room");
            true
        }
        Err(error) => panic!("{error}"),
    }
}

async fn ingest(client: &RecorderClient, events: &[AgentEvent]) -> f64 {
    let sender = sender(client);
    let started = Instant::now();
    for (i, event) in events.iter().enumerate() {
        emit(&sender, event).await;
        if i % 100 == 99 {
            tokio::task::yield_now().await;
        }
    }
    sender.flush(None).await.expect("every event committed");
    let seconds = started.elapsed().as_secs_f64();
    sender.close(None).await.expect("closed");
    events.len() as f64 / seconds
}

async fn emit_cost(client: &RecorderClient, events: &[AgentEvent]) -> f64 {
    let sender = sender(client);
    let mut samples = Vec::with_capacity(events.len());
    for (i, event) in events.iter().enumerate() {
        let began = Instant::now();
        if !emit(&sender, event).await {
            samples.push(began.elapsed());
        }
        if i % 100 == 99 {
            tokio::task::yield_now().await;
        }
    }
    sender.close(None).await.expect("every event committed");
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1e6
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, target, ingest_path, emit_path] = args.as_slice() else {
        eprintln!("usage: bench TARGET INGEST_EVENTS EMIT_EVENTS");
        std::process::exit(2);
    };
    let events = read_events(ingest_path);
    let client = RecorderClient::connect(ConnectOptions {
        target: Some(target.clone()),
        ..Default::default()
    })
    .expect("client");
    let ingest_eps = ingest(&client, &events).await;
    // Other sessions (another seed): the same ones again would be re-sends.
    let emit_us = emit_cost(&client, &read_events(emit_path)).await;
    println!(
        "{{\"events\": {}, \"ingest_eps\": {ingest_eps:.1}, \"emit_us\": {emit_us:.3}}}",
        events.len()
    );
}
