//! The EventSender's delivery guarantee against a real sidecar process.

mod support;

use std::time::Duration;

use agent_recorder_client::proto::{agent_event::Event, AgentEvent};
use agent_recorder_client::{
    ConnectOptions, DeliveryConfig, EmitError, EventLimits, EventSender, InvalidEvent,
    RecorderClient, SenderStats,
};
use support::*;
use tonic::Code;

fn small_batches() -> DeliveryConfig {
    DeliveryConfig {
        max_batch_events: 7,
        ..Default::default()
    }
}

#[tokio::test]
async fn interleaved_loops_are_stored_once_each_in_emit_order() {
    let Some(sidecar) = Sidecar::start(&[]) else {
        return;
    };
    let client = sidecar.client();
    let sender = client.sender(small_batches()).unwrap();
    let loops: Vec<(String, Vec<_>)> = (0..3)
        .map(|n| {
            let loop_id = format!("s-inter.default.{n}");
            let events = loop_events("s-inter", &loop_id, 4, 20 + n);
            (loop_id, events)
        })
        .collect();
    let longest = loops.iter().map(|(_, e)| e.len()).max().unwrap();
    for i in 0..longest {
        for (_, events) in &loops {
            if let Some(event) = events.get(i) {
                sender.emit(event).unwrap();
            }
        }
    }
    sender.flush(Some(Duration::from_secs(60))).await.unwrap();

    let total: u64 = loops.iter().map(|(_, e)| e.len() as u64).sum();
    let stats = sender.stats();
    assert_eq!(
        stats,
        SenderStats {
            emitted: total,
            acknowledged: total,
            batches: stats.batches,
            ..Default::default()
        }
    );
    assert!(stats.batches >= total.div_ceil(7), "{stats:?}");
    for (loop_id, events) in &loops {
        assert_eq!(&stored_events(&client, loop_id).await, events, "{loop_id}");
    }
}

#[tokio::test]
async fn message_updates_are_skipped_when_the_server_does_not_store_them() {
    let Some(sidecar) = Sidecar::start(&[]) else {
        return;
    };
    let client = sidecar.client();
    let sender = client.sender(DeliveryConfig::default()).unwrap();
    let events = with_updates("s-skip", "s-skip.default.0");
    for event in &events {
        sender.emit(event).unwrap();
    }
    sender.flush(None).await.unwrap();
    let stats = sender.stats();
    assert_eq!(
        (stats.emitted, stats.skipped, stats.acknowledged),
        (8, 2, 6)
    );
    let without_updates: Vec<_> = events
        .into_iter()
        .filter(|e| !matches!(e.event, Some(Event::MessageUpdate(_))))
        .collect();
    assert_eq!(
        stored_events(&client, "s-skip.default.0").await,
        without_updates
    );
}

#[tokio::test]
async fn message_updates_are_numbered_and_stored_when_the_server_stores_them() {
    let Some(sidecar) = Sidecar::start(&["--include-streaming-events"]) else {
        return;
    };
    let client = sidecar.client();
    let sender = client.sender(DeliveryConfig::default()).unwrap();
    let events = with_updates("s-upd", "s-upd.default.0");
    for event in &events {
        sender.emit(event).unwrap();
    }
    sender.flush(None).await.unwrap();
    assert_eq!(sender.stats().skipped, 0);
    assert_eq!(stored_events(&client, "s-upd.default.0").await, events);
}

/// A one-turn loop with two MessageUpdates before its answer: 8 events.
fn with_updates(session: &str, loop_id: &str) -> Vec<agent_recorder_client::proto::AgentEvent> {
    let answer = assistant("Hello there", 3);
    let question = user("hi", 2);
    vec![
        agent_start(session, loop_id, 0),
        turn_start(loop_id, 0, 1),
        message_end(loop_id, question.clone()),
        message_update(loop_id, assistant("Hello", 3), "Hello"),
        message_update(loop_id, answer.clone(), " there"),
        message_end(loop_id, answer.clone()),
        turn_end(loop_id, answer.clone(), 4),
        agent_end(loop_id, vec![question, answer], 5),
    ]
}

#[tokio::test]
async fn refused_events_are_reported_as_the_server_reports_them() {
    let Some(sidecar) = Sidecar::start(&[]) else {
        return;
    };
    let client = sidecar.client();
    let sender = client.sender(DeliveryConfig::default()).unwrap();
    let loop_id = "s-ref.default.0";
    // A rule the client leaves to the server (emit checks ids, JSON and size only).
    let mut untimed = turn_start(loop_id, 0, 1);
    if let Some(Event::TurnStart(start)) = &mut untimed.event {
        start.timestamp = None;
    }
    let events = [
        agent_start("s-ref", loop_id, 0),
        untimed.clone(),
        turn_start(loop_id, 0, 1),
        // A turn of a loop that was never started.
        turn_start("s-ref.default.9", 0, 1),
    ];
    for event in &events {
        sender.emit(event).unwrap();
    }
    let error = sender.flush(None).await.unwrap_err();
    assert_eq!((error.unacknowledged, error.failed), (0, 0));
    assert!(error.rejections.is_empty(), "{error}");
    let [invalid, not_open] = error.refusals.as_slice() else {
        panic!("two refusals expected: {error}");
    };
    assert_eq!(invalid.error.code, Code::InvalidArgument, "{error}");
    assert_eq!(invalid.error.reason, "INVALID_FIELD", "{error}");
    assert!(invalid.holds_slot, "{error}");
    assert_eq!(
        (invalid.sequence, invalid.loop_id()),
        (Some(1), Some(loop_id))
    );
    assert_eq!(invalid.event.as_ref(), Some(&untimed));
    assert!(
        invalid
            .error
            .message
            .ends_with("event.turn_start.timestamp: must be set"),
        "{error}"
    );
    assert_eq!(not_open.error.code, Code::FailedPrecondition, "{error}");
    assert_eq!(not_open.error.reason, "LOOP_NOT_OPEN", "{error}");
    assert!(!not_open.holds_slot, "{error}");
    assert_eq!(not_open.loop_id(), Some("s-ref.default.9"));
    assert!(error.to_string().contains("LOOP_NOT_OPEN"), "{error}");
    let stats = sender.stats();
    assert_eq!(
        (stats.acknowledged, stats.refused, stats.pending),
        (2, 2, 0)
    );
    // The refusal holds its slot: the loop's later event is stored after it.
    let stored = client.get_loop(loop_id).await.unwrap().events;
    let slots: Vec<(u64, bool, bool)> = stored
        .iter()
        .map(|e| (e.sequence, e.event.is_some(), e.refused.is_some()))
        .collect();
    assert_eq!(
        slots,
        vec![(0, true, false), (1, false, true), (2, true, false)]
    );
    assert_eq!(stored[2].event.as_ref(), Some(&events[2]));
    // Reported once: the next flush has nothing to say.
    sender.flush(None).await.unwrap();
}

/// A ToolExecutionStart whose args are `levels` nested objects around `leaf`.
fn tool_start_with(loop_id: &str, levels: usize, leaf: f64) -> AgentEvent {
    use prost_types::{value::Kind, Struct, Value};
    let mut args = Value {
        kind: Some(Kind::NumberValue(leaf)),
    };
    for _ in 0..levels {
        let fields = [("next".to_string(), args)].into();
        args = Value {
            kind: Some(Kind::StructValue(Struct { fields })),
        };
    }
    let mut start = tool_start(loop_id);
    if let Some(Event::ToolExecutionStart(e)) = &mut start.event {
        e.args = Some(args);
    }
    start
}

fn invalid(result: Result<(), EmitError>) -> InvalidEvent {
    match result {
        Err(EmitError::Invalid(invalid)) => invalid,
        other => panic!("expected EmitError::Invalid, got {other:?}"),
    }
}

#[tokio::test]
async fn a_bad_event_is_refused_at_emit_and_the_good_ones_around_it_are_stored() {
    let Some(sidecar) = Sidecar::start(&[]) else {
        return;
    };
    let client = sidecar.client();
    let sender = client.sender(DeliveryConfig::default()).unwrap();
    let loop_id = "s-bad.default.0";
    let good = loop_events("s-bad", loop_id, 2, 1);
    let (head, tail) = good.split_at(3);
    for event in head {
        sender.emit(event).unwrap();
    }
    let nan = invalid(sender.emit(&tool_start_with(loop_id, 2, f64::NAN)));
    assert_eq!(nan.field, "event.tool_execution_start.args");
    assert_eq!(
        EmitError::Invalid(nan).to_string(),
        "event.tool_execution_start.args: contains nan, which JSON cannot carry"
    );
    let unnamed = invalid(sender.emit(&turn_start("", 1, 5)));
    assert_eq!(
        unnamed.to_string(),
        "event.turn_start.loop_id: must not be empty"
    );
    let patience = Duration::from_secs(5);
    let mut control = agent_start("s-bad", "s-bad.default.1", 0);
    if let Some(Event::AgentStart(e)) = &mut control.event {
        e.session_id = "s-bad\u{85}".into();
    }
    let waited = invalid(sender.emit_wait(&control, patience).await);
    assert_eq!(
        waited.to_string(),
        "event.agent_start.session_id: must not contain control characters or lone \
         surrogates (U+0085 at index 5)"
    );
    for event in tail {
        sender.emit_wait(event, patience).await.unwrap();
    }
    sender.flush(None).await.unwrap();
    let total = good.len() as u64;
    let stats = sender.stats();
    assert_eq!(
        (
            stats.emitted,
            stats.acknowledged,
            stats.refused,
            stats.pending
        ),
        (total, total, 0, 0)
    );
    // Nothing of the refused events was numbered: the loop is the good events, gapless.
    assert_eq!(stored_events(&client, loop_id).await, good);
    assert!(client.get_loop("s-bad.default.1").await.is_err());
}

/// What the sidecar of `with_small_limits` announces in its RecordReady.
const SMALL_LIMITS: EventLimits = EventLimits {
    max_id_length: 16,
    max_value_depth: 4,
    max_request_bytes: 65536,
};

/// A sidecar started with SMALL_LIMITS, its client, and a sender named `writer` (a
/// random writer id is longer than 16 characters) that still holds the defaults.
fn with_small_limits(writer: &str) -> Option<(Sidecar, RecorderClient, EventSender)> {
    let limits = SMALL_LIMITS;
    let (ids, depth, size) = (
        limits.max_id_length.to_string(),
        limits.max_value_depth.to_string(),
        limits.max_request_bytes.to_string(),
    );
    let args = [
        "--max-id-length",
        ids.as_str(),
        "--max-value-depth",
        depth.as_str(),
        "--max-request-bytes",
        size.as_str(),
    ];
    let sidecar = Sidecar::start(&args)?;
    let client = sidecar.client();
    let config = DeliveryConfig {
        writer_id: Some(writer.into()),
        ..Default::default()
    };
    let sender = client.sender(config).unwrap();
    assert_eq!(sender.limits(), EventLimits::default());
    Some((sidecar, client, sender))
}

#[tokio::test]
async fn a_server_with_smaller_limits_is_obeyed_once_its_record_ready_came() {
    let Some((_sidecar, client, sender)) = with_small_limits("writer-lim") else {
        return;
    };
    let loop_id = "s-lim.c.0";
    let mut sent = vec![agent_start("s-lim", loop_id, 0)];
    // Still the defaults at emit: an event larger than the server takes is refused
    // by the sender once it knows (never sent), one too deep by the server.
    let huge = progress(loop_id, &"x".repeat(70_000));
    let early = tool_start_with(loop_id, 5, 1.0);
    for event in [&sent[0], &huge, &early] {
        sender.emit(event).unwrap();
    }
    let error = sender.flush(None).await.unwrap_err();
    let [unsent, deep] = error.refusals.as_slice() else {
        panic!("two refusals expected: {error}");
    };
    assert_eq!(
        (unsent.error.code, unsent.error.reason.as_str()),
        (Code::ResourceExhausted, "TOO_LARGE")
    );
    assert!(
        unsent
            .error
            .message
            .ends_with("bytes, larger than the sidecar's request limit of 65536 bytes"),
        "{error}"
    );
    assert_eq!(
        (unsent.sequence, unsent.event.as_ref()),
        (None, Some(&huge))
    );
    let field = deep
        .error
        .metadata
        .get("field")
        .cloned()
        .unwrap_or_default();
    assert!(
        field.ends_with("].event.tool_execution_start.args"),
        "{error}"
    );
    assert_eq!(deep.sequence, Some(1));
    assert_eq!(sender.limits(), SMALL_LIMITS);
    // Now the announced limits apply at emit.
    assert_eq!(
        invalid(sender.emit(&early)).to_string(),
        "event.tool_execution_start.args: must not nest deeper than 4 levels"
    );
    assert_eq!(
        invalid(sender.emit(&turn_start("s-lim.c.0.too-long", 0, 1))).to_string(),
        "event.turn_start.loop_id: must be at most 16 characters, not 18"
    );
    let large = invalid(sender.emit(&progress(loop_id, &"x".repeat(70_000))));
    assert_eq!(large.field, "event.progress_message");
    assert!(
        large.message.ends_with(
            "bytes, larger than the sidecar's request limit of 65536 bytes (loop s-lim.c.0)"
        ),
        "{large}"
    );
    // Events that fit go in batches that fit the request limit too.
    let before = sender.stats().batches;
    sent.push(tool_start_with(loop_id, 4, 1.0));
    sent.extend((0..20).map(|n| progress(loop_id, &format!("{n:>10000}"))));
    for event in &sent[1..] {
        sender.emit(event).unwrap();
    }
    sender.flush(None).await.unwrap();
    let stats = sender.stats();
    assert!(stats.batches - before >= 4, "{stats:?}");
    assert_eq!((stats.refused, stats.pending), (2, 0));
    let stored = client.get_loop(loop_id).await.unwrap().events;
    assert_eq!(stored.len(), sent.len() + 1);
    assert!(stored[1].refused.is_some());
    let mut kept: Vec<AgentEvent> = stored.into_iter().filter_map(|e| e.event).collect();
    assert_eq!(kept.len(), sent.len());
    assert_eq!(kept.remove(0), sent[0]);
    assert_eq!(kept, sent[1..]);
}

#[tokio::test]
async fn a_full_sender_refuses_with_an_explicit_error_and_flush_counts_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let client = RecorderClient::connect(ConnectOptions {
        target: Some(format!("unix://{}/nobody.sock", dir.path().display())),
        ..Default::default()
    })
    .unwrap();
    let config = DeliveryConfig {
        max_pending_events: 5,
        ..Default::default()
    };
    let sender = client.sender(config).unwrap();
    let events = loop_events("s-full", "s-full.default.0", 2, 0);
    for event in &events[..5] {
        sender.emit(event).unwrap();
    }
    let full = sender.emit(&events[5]).unwrap_err();
    assert!(
        matches!(
            full,
            EmitError::QueueFull {
                pending_events: 5,
                max_events: 5,
                ..
            }
        ),
        "{full:?}"
    );
    let waited = sender
        .emit_wait(&events[5], Duration::from_millis(100))
        .await;
    assert!(
        matches!(waited, Err(EmitError::QueueFull { .. })),
        "{waited:?}"
    );
    let error = sender
        .flush(Some(Duration::from_millis(300)))
        .await
        .unwrap_err();
    assert_eq!(error.unacknowledged, 5, "{error}");
    assert!(
        error
            .to_string()
            .contains("5 event(s) still unacknowledged"),
        "{error}"
    );
    assert_eq!(sender.stats().pending, 5);
}

#[tokio::test]
async fn events_emitted_while_the_sidecar_is_down_are_delivered_once_it_is_back() {
    let Some(mut sidecar) = Sidecar::start(&[]) else {
        return;
    };
    let client = sidecar.client();
    let sender = client.sender(small_batches()).unwrap();
    let events = loop_events("s-down", "s-down.default.0", 6, 10);
    let (first, rest) = events.split_at(12);
    for event in first {
        sender.emit(event).unwrap();
    }
    sender.flush(None).await.unwrap();
    sidecar.kill();
    for event in rest {
        sender.emit(event).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    sidecar.restart();
    sender.flush(Some(Duration::from_secs(60))).await.unwrap();
    assert_eq!(stored_events(&client, "s-down.default.0").await, events);
    assert_eq!(sender.stats().acknowledged, events.len() as u64);
}

#[tokio::test]
async fn an_empty_event_and_emits_after_close_are_refused() {
    let Some(sidecar) = Sidecar::start(&[]) else {
        return;
    };
    let sender = sidecar.client().sender(DeliveryConfig::default()).unwrap();
    let empty = agent_recorder_client::proto::AgentEvent::default();
    assert_eq!(sender.emit(&empty), Err(EmitError::NoEvent));
    sender
        .emit(&agent_start("s-close", "s-close.default.0", 0))
        .unwrap();
    sender.close(None).await.unwrap();
    let refused = sender.emit(&turn_start("s-close.default.0", 0, 1));
    assert_eq!(
        refused,
        Err(EmitError::Closed("event sender is closed".into()))
    );
    assert_eq!(sender.stats().acknowledged, 1);
}

#[tokio::test]
async fn unary_errors_carry_the_grpc_code_and_the_error_info_reason() {
    let Some(sidecar) = Sidecar::start(&[]) else {
        return;
    };
    let error = sidecar
        .client()
        .get_session("no-such-session")
        .await
        .unwrap_err();
    assert_eq!(error.code, Code::NotFound, "{error}");
    assert_eq!(error.reason, "NOT_FOUND", "{error}");
    assert_eq!(
        error.metadata.get("session_id").map(String::as_str),
        Some("no-such-session")
    );
}

#[tokio::test]
async fn the_token_is_sent_and_its_absence_is_a_permanent_failure() {
    let token_dir = tempfile::tempdir().unwrap();
    let token_file = token_dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let Some(sidecar) = Sidecar::start(&["--token-file", token_file.to_str().unwrap()]) else {
        return;
    };
    let with_token = RecorderClient::connect(ConnectOptions {
        target: Some(sidecar.target()),
        token: Some("s3cret-token".into()),
        ..Default::default()
    })
    .unwrap();
    let sender = with_token.sender(DeliveryConfig::default()).unwrap();
    sender
        .emit(&agent_start("s-tok", "s-tok.default.0", 0))
        .unwrap();
    sender.flush(None).await.unwrap();
    assert_eq!(
        with_token.get_session("s-tok").await.unwrap().loops.len(),
        1
    );

    let without = RecorderClient::connect(ConnectOptions {
        target: Some(sidecar.target()),
        token: Some(String::new()),
        ..Default::default()
    })
    .unwrap();
    let refused = without.get_session("s-tok").await.unwrap_err();
    assert_eq!(refused.code, Code::Unauthenticated, "{refused}");
    let sender = without.sender(DeliveryConfig::default()).unwrap();
    sender
        .emit(&agent_start("s-tok2", "s-tok2.default.0", 0))
        .unwrap();
    let error = sender.flush(None).await.unwrap_err();
    assert_eq!(error.failed, 1, "{error}");
    assert_eq!(
        error.cause.as_ref().map(|c| c.code),
        Some(Code::Unauthenticated)
    );
}

/// Bounds a call the test expects to return on its own well before this.
async fn bounded<T>(call: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), call)
        .await
        .expect("returned within 60 s")
}

#[tokio::test]
async fn after_wait_ready_the_first_emit_is_checked_by_the_announced_limits() {
    let Some((_sidecar, client, sender)) = with_small_limits("writer-ready") else {
        return;
    };
    bounded(sender.wait_ready(Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(sender.limits(), SMALL_LIMITS);
    let loop_id = "s-rdy.c.0";
    assert_eq!(
        invalid(sender.emit(&tool_start_with(loop_id, 5, 1.0))).to_string(),
        "event.tool_execution_start.args: must not nest deeper than 4 levels"
    );
    // Ready already: returns at once, and what fits is stored.
    bounded(sender.wait_ready(Duration::from_secs(30)))
        .await
        .unwrap();
    let sent = [
        agent_start("s-rdy", loop_id, 0),
        tool_start_with(loop_id, 4, 1.0),
    ];
    for event in &sent {
        sender.emit(event).unwrap();
    }
    sender.flush(None).await.unwrap();
    assert_eq!(stored_events(&client, loop_id).await, sent);
    assert_eq!(
        sender.stats(),
        SenderStats {
            emitted: 2,
            acknowledged: 2,
            batches: 1,
            ..Default::default()
        }
    );
}

#[tokio::test]
async fn an_idle_sender_that_waited_is_ready_again_after_its_sidecar_was_killed_and_restarted() {
    let Some(mut sidecar) = Sidecar::start(&[]) else {
        return;
    };
    let client = sidecar.client();
    let sender = client.sender(DeliveryConfig::default()).unwrap();
    bounded(sender.wait_ready(Duration::from_secs(30)))
        .await
        .unwrap();
    sidecar.kill(); // SIGKILL while the idle sender holds its stream
    tokio::time::sleep(Duration::from_millis(300)).await;
    sidecar.restart();
    bounded(sender.wait_ready(Duration::from_secs(30)))
        .await
        .unwrap();
    let loop_id = "s-idle.default.0";
    let sent = [agent_start("s-idle", loop_id, 0), turn_start(loop_id, 0, 1)];
    for event in &sent {
        sender.emit(event).unwrap();
    }
    sender.flush(Some(Duration::from_secs(30))).await.unwrap();
    assert_eq!(stored_events(&client, loop_id).await, sent);
}

#[tokio::test]
async fn wait_ready_where_nobody_serves_names_the_cause_and_so_does_a_closed_sender() {
    let dir = tempfile::tempdir().unwrap();
    let target = format!("unix://{}/nobody.sock", dir.path().display());
    let client = RecorderClient::connect(ConnectOptions {
        target: Some(target.clone()),
        ..Default::default()
    })
    .unwrap();
    let sender = client.sender(DeliveryConfig::default()).unwrap();
    let error = bounded(sender.wait_ready(Duration::from_millis(500)))
        .await
        .unwrap_err();
    assert_eq!(error.target, target);
    assert_eq!(
        error.cause.as_ref().map(|cause| cause.code),
        Some(Code::Unavailable),
        "{error}"
    );
    assert_eq!(
        error.to_string(),
        format!("sidecar at {target} unreachable: no socket at that path (no Record stream within 0.5 s)")
    );
    assert_eq!(sender.limits(), EventLimits::default());

    // A socket file nobody listens on any more: the connection is refused.
    let path = dir.path().join("closed.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let refusing = format!("unix://{}", path.display());
    let other = RecorderClient::connect(ConnectOptions {
        target: Some(refusing.clone()),
        ..Default::default()
    })
    .unwrap();
    let refused = bounded(
        other
            .sender(DeliveryConfig::default())
            .unwrap()
            .wait_ready(Duration::from_millis(500)),
    )
    .await
    .unwrap_err();
    assert_eq!(
        refused.to_string(),
        format!(
            "sidecar at {refusing} unreachable: connection refused (no Record stream within 0.5 s)"
        )
    );

    sender.close(Some(Duration::from_secs(5))).await.unwrap();
    let closed = bounded(sender.wait_ready(Duration::from_secs(600)))
        .await
        .unwrap_err();
    assert_eq!(closed.waited, "event sender is closed", "{closed}");
}

#[tokio::test]
async fn wait_ready_with_a_wrong_token_gives_up_at_once_naming_the_refusal() {
    let token_dir = tempfile::tempdir().unwrap();
    let token_file = token_dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let Some(sidecar) = Sidecar::start(&["--token-file", token_file.to_str().unwrap()]) else {
        return;
    };
    let wrong = RecorderClient::connect(ConnectOptions {
        target: Some(sidecar.target()),
        token: Some("not-the-token".into()),
        ..Default::default()
    })
    .unwrap();
    let sender = wrong.sender(DeliveryConfig::default()).unwrap();
    // Far longer than the test's bound: only giving up can end the wait in time.
    let error = bounded(sender.wait_ready(Duration::from_secs(600)))
        .await
        .unwrap_err();
    let cause = error.cause.clone().expect("a cause");
    assert_eq!(cause.code, Code::Unauthenticated, "{error}");
    assert_eq!(error.waited, "gave up", "{error}");
    assert_eq!(
        error.to_string(),
        format!(
            "sidecar at {} refused the Record stream: {cause} (gave up)",
            sidecar.target()
        )
    );
    assert_eq!(sender.stats(), SenderStats::default());
}
