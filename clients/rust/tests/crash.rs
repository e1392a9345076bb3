//! Crash: the sidecar is killed with SIGKILL and restarted twice on the same file
//! and socket while a Rust client streams 20,000 events over eight loops; every
//! loop is then read back and compared event by event with what was emitted:
//! nothing missing, nothing doubled, sequences gapless.

mod support;

use std::time::Duration;

use agent_recorder_client::proto::AgentEvent;
use agent_recorder_client::{DeliveryConfig, EventSender};
use support::*;
use tokio::time::Instant;

const LOOPS: usize = 8;
const PER_LOOP: usize = 2_500;
const TOTAL: usize = LOOPS * PER_LOOP;

/// The events of every loop, interleaved round-robin as concurrent agents emit them.
fn workload() -> (Vec<Vec<AgentEvent>>, Vec<AgentEvent>) {
    let loops: Vec<Vec<AgentEvent>> = (0..LOOPS)
        .map(|n| {
            let loop_id = format!("crash.default.{n}");
            let mut events = vec![agent_start("crash", &loop_id, 0)];
            events.extend((1..PER_LOOP - 1).map(|i| progress(&loop_id, &format!("{n}/{i}"))));
            events.push(agent_end(&loop_id, vec![], 10));
            events
        })
        .collect();
    let interleaved = (0..PER_LOOP)
        .flat_map(|i| loops.iter().map(move |events| events[i].clone()))
        .collect();
    (loops, interleaved)
}

async fn emit_all(sender: &EventSender, events: &[AgentEvent]) {
    for chunk in events.chunks(250) {
        for event in chunk {
            sender.emit(event).expect("room for every event");
        }
        tokio::task::yield_now().await;
    }
}

/// Waits (bounded) until the sidecar has acknowledged at least `count` events.
async fn acknowledged(sender: &EventSender, count: u64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while sender.stats().acknowledged < count {
        assert!(Instant::now() < deadline, "stuck at {:?}", sender.stats());
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_twice_mid_stream_loses_and_doubles_nothing() {
    let Some(mut sidecar) = Sidecar::start(&[]) else {
        return;
    };
    let client = sidecar.client();
    let sender = client
        .sender(DeliveryConfig {
            max_batch_events: 200,
            ..Default::default()
        })
        .unwrap();
    let (loops, events) = workload();
    assert_eq!(events.len(), TOTAL);
    let (first, rest) = events.split_at(8_000);
    let (second, third) = rest.split_at(7_000);

    emit_all(&sender, first).await;
    acknowledged(&sender, 2_000).await;
    let at_first_kill = sender.stats();
    tokio::task::block_in_place(|| sidecar.kill());
    emit_all(&sender, second).await; // the sidecar is down: these wait in the sender
    tokio::task::block_in_place(|| sidecar.restart());
    acknowledged(&sender, 10_000).await;
    let at_second_kill = sender.stats();
    tokio::task::block_in_place(|| sidecar.restart());
    emit_all(&sender, third).await;
    sender
        .flush(Some(Duration::from_secs(180)))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", sidecar.log()));

    // Both kills hit a stream with unacknowledged events in flight.
    assert!(at_first_kill.pending > 0, "{at_first_kill:?}");
    assert!(at_second_kill.pending > 0, "{at_second_kill:?}");
    let stats = sender.stats();
    assert_eq!(
        (stats.emitted, stats.acknowledged, stats.pending),
        (TOTAL as u64, TOTAL as u64, 0)
    );
    assert!(stats.resent > 0, "no batch was re-sent: {stats:?}");
    for (n, expected) in loops.iter().enumerate() {
        let stored = stored_events(&client, &format!("crash.default.{n}")).await;
        assert_eq!(stored.len(), PER_LOOP, "loop {n}");
        for (i, (ours, theirs)) in stored.iter().zip(expected).enumerate() {
            assert_eq!(ours, theirs, "loop {n}, sequence {i}");
        }
    }
}
