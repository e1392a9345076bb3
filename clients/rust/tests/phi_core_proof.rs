//! Proof against phi-core's own recorder: real phi-core agent loops (with phi-core's
//! MockProvider, no network) whose events go both into phi-core's SessionRecorder
//! (then `save_session`) and, through the bridge's tee, into a real sidecar. The
//! sidecar's `agent-recorder export --format phi-json` of each session must be
//! JSON-equal (up to key order) to the file phi-core saved.
#![cfg(feature = "phi-core")]

mod support;

use std::path::Path;
use std::sync::Arc;

use agent_recorder_client::phi::Bridge;
use agent_recorder_client::DeliveryConfig;
use phi_core::agent_loop::{agent_loop, agent_loop_continue, agent_loop_parallel, AgentLoopConfig};
use phi_core::provider::mock::{MockResponse, MockToolCall};
use phi_core::provider::{MockProvider, ModelConfig, StreamProvider};
use phi_core::session::{save_session, SessionRecorder, SessionRecorderConfig};
use phi_core::types::ParallelLoopOutcome;
use phi_core::{
    AgentContext, AgentEvent, AgentMessage, AgentTool, CacheConfig, ContinuationKind,
    EvaluationDecision, EvaluationStrategy, LlmMessage, Message, ThinkingLevel, ToolContext,
    ToolError, ToolExecutionStrategy, ToolResult, TurnTrigger, Usage,
};
use serde_json::{json, Value};
use support::Sidecar;
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use tokio_util::sync::CancellationToken;

fn loop_config(provider: Arc<dyn StreamProvider>, model: &str) -> AgentLoopConfig {
    AgentLoopConfig {
        model_config: ModelConfig::anthropic(model, model, "test"),
        provider_override: Some(provider),
        thinking_level: ThinkingLevel::Off,
        max_tokens: None,
        temperature: None,
        convert_to_llm: None,
        transform_context: None,
        get_steering_messages: None,
        get_follow_up_messages: None,
        context_config: None,
        execution_limits: None,
        cache_config: CacheConfig::default(),
        tool_execution: ToolExecutionStrategy::default(),
        tool_timeout: None,
        response_format: phi_core::provider::ResponseFormat::Text,
        retry_config: phi_core::RetryConfig::default(),
        before_turn: None,
        after_turn: None,
        on_error: None,
        before_loop: None,
        after_loop: None,
        before_tool_execution: None,
        after_tool_execution: None,
        before_tool_execution_update: None,
        after_tool_execution_update: None,
        before_compaction_start: None,
        after_compaction_end: None,
        input_filters: vec![],
        first_turn_trigger: TurnTrigger::User,
        config_id: None,
        context_translation: None,
        prun_pending: None,
        revert_pending: None,
        current_tool: None,
        revert_render_policy: phi_core::RevertRenderPolicy::default(),
    }
}

fn prompt(text: &str) -> AgentMessage {
    AgentMessage::Llm(LlmMessage::new(Message::user(text)))
}

fn tool_call(name: &str, arguments: Value) -> MockResponse {
    MockResponse::ToolCalls(vec![MockToolCall {
        name: name.into(),
        arguments,
    }])
}

/// Reads a file of a fixed little file system; its result carries structured details.
struct ReadFile;

#[async_trait::async_trait]
impl AgentTool for ReadFile {
    fn name(&self) -> &str {
        "read_file"
    }
    fn label(&self) -> &str {
        "Read file"
    }
    fn description(&self) -> &str {
        "Reads a file"
    }
    fn parameters_schema(&self) -> Value {
        json!({"type": "object", "properties": {"path": {"type": "string"}}})
    }
    async fn execute(&self, params: Value, _ctx: ToolContext) -> Result<ToolResult, ToolError> {
        let path = params["path"].as_str().unwrap_or("?").to_string();
        Ok(ToolResult {
            content: vec![phi_core::Content::Text {
                text: format!("# contents of {path}\nA recording sidecar. ✓"),
            }],
            details: json!({"path": path, "bytes": 42, "ratio": 0.5, "tags": ["a", null, true]}),
            child_loop_id: None,
        })
    }
}

/// Runs both recorders over the events the scenario's loops send on its channel.
struct Harness {
    sidecar: Sidecar,
    bridge: Bridge,
    sender: agent_recorder_client::EventSender,
    saved: tempfile::TempDir,
}

impl Harness {
    fn start() -> Option<Harness> {
        let sidecar = Sidecar::start(&[])?;
        let sender = sidecar.client().sender(DeliveryConfig::default()).unwrap();
        Some(Harness {
            bridge: Bridge::new(&sender),
            sender,
            sidecar,
            saved: tempfile::tempdir().unwrap(),
        })
    }

    /// Gives the scenario a channel, tees it into the sidecar, feeds phi-core's recorder
    /// from the tee's output and saves every session phi-core recorded; returns their ids.
    async fn record<F, Fut>(&self, scenario: F) -> Vec<String>
    where
        F: FnOnce(UnboundedSender<AgentEvent>) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let (tx, rx) = unbounded_channel();
        let mut teed = self.bridge.tee(rx);
        scenario(tx).await;
        let mut recorder = SessionRecorder::new(SessionRecorderConfig::default());
        while let Some(event) = teed.recv().await {
            recorder.on_event(event);
        }
        recorder.flush();
        self.sender
            .flush(None)
            .await
            .expect("every event committed");
        assert_eq!(self.bridge.take_failures(), vec![]);
        let mut ids = Vec::new();
        for session in recorder.sessions() {
            save_session(session, self.saved.path()).expect("save_session");
            ids.push(session.session_id.clone());
        }
        ids.sort();
        ids
    }

    /// phi-core's saved file and the sidecar's export of each session are JSON-equal.
    fn assert_exports_equal(&self, session_ids: &[String]) {
        let exported = self.sidecar.dir().join("exported");
        let mut args = vec!["export", "--format", "phi-json", "--out"];
        let out = exported.to_str().unwrap().to_string();
        args.push(&out);
        args.extend(session_ids.iter().map(String::as_str));
        self.sidecar.cli(&args);
        for session_id in session_ids {
            let ours = read_json(&exported.join(format!("{session_id}.json")));
            let theirs = read_json(&self.saved.path().join(format!("{session_id}.json")));
            let differences = diff(&theirs, &ours, "");
            assert!(
                differences.is_empty(),
                "session {session_id}: the export differs from phi-core's file \
                 (phi-core's value, then ours):\n{}",
                differences.join("\n")
            );
        }
    }
}

impl Harness {
    /// The session file phi-core saved (after `record`).
    fn saved(&self, session_id: &str) -> Value {
        read_json(&self.saved.path().join(format!("{session_id}.json")))
    }
}

fn loop_count(session: &Value) -> usize {
    session["loops"].as_array().map_or(0, Vec::len)
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// Every path where the two documents differ (object key order does not count).
fn diff(expected: &Value, actual: &Value, path: &str) -> Vec<String> {
    match (expected, actual) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter()
                .flat_map(|key| {
                    let here = format!("{path}.{key}");
                    match (a.get(key), b.get(key)) {
                        (Some(x), Some(y)) => diff(x, y, &here),
                        (x, y) => vec![format!("{here}: {x:?} vs {y:?}")],
                    }
                })
                .collect()
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .flat_map(|(i, (x, y))| diff(x, y, &format!("{path}[{i}]")))
            .collect(),
        (a, b) if a == b => vec![],
        (a, b) => vec![format!("{path}: {a} vs {b}")],
    }
}

fn context(agent: &str, session: &str, tools: Vec<Arc<dyn AgentTool>>) -> AgentContext {
    AgentContext {
        system_prompt: "You are helpful.".into(),
        agent_id: Some(agent.into()),
        session_id: Some(session.into()),
        tools,
        ..Default::default()
    }
}

#[tokio::test]
async fn a_loop_with_two_turns_and_a_tool_call() {
    let Some(harness) = Harness::start() else {
        return;
    };
    let ids = harness
        .record(|tx| async move {
            let provider = Arc::new(MockProvider::new(vec![
                tool_call("read_file", json!({"path": "README.md", "max_lines": 20})),
                MockResponse::Text("It describes a recording sidecar.".into()),
            ]));
            let config = loop_config(provider, "mock-model");
            let mut ctx = context("agent-a", "session-a", vec![Arc::new(ReadFile)]);
            agent_loop(
                vec![prompt("What does the README say?")],
                &mut ctx,
                &config,
                tx,
                CancellationToken::new(),
            )
            .await;
        })
        .await;
    assert_eq!(ids, vec!["session-a".to_string()]);
    let saved = harness.saved("session-a");
    assert_eq!(saved["loops"][0]["turns"].as_array().map(Vec::len), Some(2));
    let kinds: Vec<&Value> = saved["loops"][0]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["event"]["type"])
        .collect();
    assert!(kinds.contains(&&json!("ToolExecutionEnd")), "{kinds:?}");
    harness.assert_exports_equal(&ids);
}

#[tokio::test]
async fn a_continuation_and_a_rerun_in_one_session() {
    let Some(harness) = Harness::start() else {
        return;
    };
    let ids = harness
        .record(|tx| async move {
            let provider = Arc::new(MockProvider::new(vec![
                MockResponse::Text("Paris.".into()),
                tool_call("read_file", json!({"path": "notes/france.md"})),
                MockResponse::Text("About 2.1 million people.".into()),
                MockResponse::Text("Roughly two million.".into()),
            ]));
            let config = loop_config(provider, "mock-model");
            let mut ctx = context("agent-b", "session-b", vec![Arc::new(ReadFile)]);
            // Loop ids begin with their session id, as phi-core's agents make them (its
            // SessionRecorder reads a parent's session from that prefix: see the README).
            ctx.loop_id = Some("session-b.mock.1".into());
            agent_loop(
                vec![prompt("What is the capital of France?")],
                &mut ctx,
                &config,
                tx.clone(),
                CancellationToken::new(),
            )
            .await;
            let origin = ctx.loop_id.clone().unwrap();

            let mut follow_up = ctx.clone();
            follow_up.loop_id = Some("session-b.mock.2".into());
            follow_up.parent_loop_id = Some(origin.clone());
            follow_up.continuation_kind = Some(ContinuationKind::Default);
            follow_up
                .messages
                .push(prompt("How many people live there?"));
            let before_rerun = follow_up.clone();
            agent_loop_continue(
                &mut follow_up,
                &config,
                tx.clone(),
                CancellationToken::new(),
            )
            .await;

            let mut rerun = before_rerun;
            rerun.loop_id = Some("session-b.mock.3".into());
            rerun.parent_loop_id = Some(origin);
            rerun.continuation_kind = Some(ContinuationKind::Rerun {
                tag: "2026-12-03T10:00:00Z".into(),
            });
            agent_loop_continue(&mut rerun, &config, tx, CancellationToken::new()).await;
        })
        .await;
    assert_eq!(ids, vec!["session-b".to_string()]);
    let saved = harness.saved("session-b");
    assert_eq!(loop_count(&saved), 3);
    assert_eq!(
        saved["loops"][2]["continuation_kind"],
        json!({"Rerun": {"tag": "2026-12-03T10:00:00Z"}})
    );
    harness.assert_exports_equal(&ids);
}

/// Delegates a task to a sub-agent: a child loop in a session of its own, whose
/// events go to the same channel as the parent's (so both recorders see them).
struct Delegate {
    events: UnboundedSender<AgentEvent>,
    parent_loop_id: String,
}

#[async_trait::async_trait]
impl AgentTool for Delegate {
    fn name(&self) -> &str {
        "delegate"
    }
    fn label(&self) -> &str {
        "Delegate"
    }
    fn description(&self) -> &str {
        "Hands a task to a research sub-agent"
    }
    fn parameters_schema(&self) -> Value {
        json!({"type": "object", "properties": {"task": {"type": "string"}}})
    }
    async fn execute(&self, params: Value, ctx: ToolContext) -> Result<ToolResult, ToolError> {
        let task = params["task"].as_str().unwrap_or_default().to_string();
        let provider = Arc::new(MockProvider::new(vec![
            tool_call("read_file", json!({"path": "src/lib.rs"})),
            MockResponse::Text("The crate records agent events.".into()),
        ]));
        let mut config = loop_config(provider, "mock-small");
        config.first_turn_trigger = TurnTrigger::SubAgent;
        let mut child = context("sub-agent-c", "session-c-child", vec![Arc::new(ReadFile)]);
        child.loop_id = Some("session-c-child.sub.1".into());
        child.parent_loop_id = Some(self.parent_loop_id.clone());
        let messages = agent_loop(
            vec![prompt(&task)],
            &mut child,
            &config,
            self.events.clone(),
            ctx.cancel,
        )
        .await;
        Ok(ToolResult {
            content: vec![phi_core::Content::Text {
                text: format!("sub-agent finished with {} messages", messages.len()),
            }],
            details: json!({"sub_agent": "researcher", "turns": messages.len()}),
            child_loop_id: child.loop_id,
        })
    }
}

#[tokio::test]
async fn a_tool_that_spawns_a_sub_agent() {
    let Some(harness) = Harness::start() else {
        return;
    };
    let ids = harness
        .record(|tx| async move {
            let provider = Arc::new(MockProvider::new(vec![
                tool_call("delegate", json!({"task": "Find out what src/lib.rs does"})),
                MockResponse::Text("The sub-agent says: it records agent events.".into()),
            ]));
            let config = loop_config(provider, "mock-model");
            let parent_loop_id = "session-c.mock.1".to_string();
            let delegate = Delegate {
                events: tx.clone(),
                parent_loop_id: parent_loop_id.clone(),
            };
            let mut ctx = context("agent-c", "session-c", vec![Arc::new(delegate)]);
            ctx.loop_id = Some(parent_loop_id);
            agent_loop(
                vec![prompt("What does src/lib.rs do? Ask a sub-agent.")],
                &mut ctx,
                &config,
                tx,
                CancellationToken::new(),
            )
            .await;
            // The Delegate tool (and its channel handle) lives in ctx until here.
            drop(ctx);
        })
        .await;
    assert_eq!(
        ids,
        vec!["session-c".to_string(), "session-c-child".to_string()]
    );
    let child = harness.saved("session-c-child");
    assert_eq!(child["parent_spawn_ref"]["tool_name"], "delegate");
    assert_eq!(
        harness.saved("session-c")["loops"][0]["child_loop_refs"][0]["child_loop_id"],
        "session-c-child.sub.1"
    );
    harness.assert_exports_equal(&ids);
}

/// Selects the second branch and reports what the judging cost.
struct PickSecond;

#[async_trait::async_trait]
impl EvaluationStrategy for PickSecond {
    async fn evaluate(
        &self,
        _prompts: &[AgentMessage],
        outcomes: &[ParallelLoopOutcome],
        _tx: &UnboundedSender<AgentEvent>,
        _cancel: CancellationToken,
    ) -> (EvaluationDecision, Usage) {
        assert_eq!(outcomes.len(), 3);
        let usage = Usage {
            input: 120,
            output: 7,
            total_tokens: 127,
            ..Default::default()
        };
        (EvaluationDecision::Select(1), usage)
    }
}

#[tokio::test]
async fn agent_loop_parallel_over_three_configurations_with_a_winner() {
    let Some(harness) = Harness::start() else {
        return;
    };
    let ids = harness
        .record(|tx| async move {
            let answers = [
                "Short answer.",
                "A longer, better answer.",
                "Another answer.",
            ];
            let configs = answers
                .iter()
                .enumerate()
                .map(|(i, answer)| {
                    let provider = Arc::new(MockProvider::text(*answer));
                    let mut config = loop_config(provider, &format!("model-{i}"));
                    if i == 2 {
                        config.temperature = Some(0.7);
                        config.max_tokens = Some(1024);
                        config.thinking_level = ThinkingLevel::High;
                    }
                    config
                })
                .collect();
            let base = context("agent-d", "session-d", vec![]);
            agent_loop_parallel(
                vec![prompt("Explain recording sidecars in one line.")],
                base,
                configs,
                Arc::new(PickSecond),
                tx,
                CancellationToken::new(),
            )
            .await;
        })
        .await;
    assert_eq!(ids, vec!["session-d".to_string()]);
    let saved = harness.saved("session-d");
    assert_eq!(loop_count(&saved), 3);
    let winners: Vec<&Value> = saved["loops"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["parallel_group"]["is_selected"] == json!(true))
        .collect();
    assert_eq!(winners.len(), 1);
    assert_eq!(winners[0]["parallel_group"]["selected_config_index"], 1);
    assert_eq!(
        winners[0]["parallel_group"]["evaluation_usage"]["input"],
        120
    );
    harness.assert_exports_equal(&ids);
}
