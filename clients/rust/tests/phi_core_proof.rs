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
    harness.assert_exports_equal(&ids);
}
