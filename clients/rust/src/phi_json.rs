//! The seed runtime's JSON (phi-core's serde format, `shared/phi-json.md`) into
//! protobuf: event lines and messages.
//!
//! The same reading rules as the Python codec (`recorder_client/phi_json_*.py`),
//! so an event recorded from Rust and one ingested as a JSON line are stored alike
//! and export back to the same JSON:
//!
//! * a plain field that is missing is an error; an `Option` that is missing or
//!   `null` stays unset; keys a variant does not name are ignored, as serde does,
//!   except on messages and content blocks, which keep them in their `extra`
//!   Struct so that a runtime newer than this codec loses nothing;
//! * free-form JSON (tool arguments, details, metadata, payloads) becomes
//!   `google.protobuf.Value`, whose numbers are doubles (exact up to 2^53);
//! * times are RFC 3339 strings, message timestamps milliseconds since the epoch.
//!
//! Errors name the JSON path of the offending value, e.g. `message.content[1].type`.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use prost_types::{value::Kind as ValueKind, ListValue, Struct, Timestamp, Value};
use serde_json::{Map, Value as Json};

use crate::proto::{
    self, agent_event::Event, content_block::Block, continuation_kind::Kind as Continuation,
    message_delta::Delta, AgentEvent, AgentMessage, ContentBlock, ContinuationKind,
    LoopConfigSnapshot, ToolResult, Usage,
};

/// JSON this codec cannot accept, with the path of the offending value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhiJsonError {
    /// Keys and indices from the root, e.g. `messages[2].content[0].text`.
    pub path: String,
    /// What is wrong with the value there.
    pub problem: String,
}

impl fmt::Display for PhiJsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() {
            "<root>"
        } else {
            &self.path
        };
        write!(f, "{path}: {}", self.problem)
    }
}

impl std::error::Error for PhiJsonError {}

type Result<T> = std::result::Result<T, PhiJsonError>;

fn error(path: &str, problem: impl Into<String>) -> PhiJsonError {
    PhiJsonError {
        path: path.to_string(),
        problem: problem.into(),
    }
}

fn at(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn kind_of(value: &Json) -> &'static str {
    match value {
        Json::Null => "null",
        Json::Bool(_) => "boolean",
        Json::Number(n) if n.is_f64() => "number",
        Json::Number(_) => "integer",
        Json::String(_) => "string",
        Json::Array(_) => "array",
        Json::Object(_) => "object",
    }
}

fn expected(path: &str, what: &str, value: &Json) -> PhiJsonError {
    error(path, format!("expected {what}, got {}", kind_of(value)))
}

/// A JSON object being read, with its path for errors.
struct Obj<'a> {
    map: &'a Map<String, Json>,
    path: String,
}

impl<'a> Obj<'a> {
    fn new(value: &'a Json, path: &str) -> Result<Self> {
        match value {
            Json::Object(map) => Ok(Obj {
                map,
                path: path.to_string(),
            }),
            other => Err(expected(path, "object", other)),
        }
    }

    fn here(&self, key: &str) -> String {
        at(&self.path, key)
    }

    /// A plain field: missing is an error.
    fn req(&self, key: &str) -> Result<&'a Json> {
        self.map
            .get(key)
            .ok_or_else(|| error(&self.here(key), "missing"))
    }

    /// An `Option` field: missing or null is `None`.
    fn opt(&self, key: &str) -> Option<&'a Json> {
        self.map.get(key).filter(|value| !value.is_null())
    }

    fn str(&self, key: &str) -> Result<String> {
        string(self.req(key)?, &self.here(key))
    }

    fn opt_str(&self, key: &str) -> Result<Option<String>> {
        self.opt(key)
            .map(|value| string(value, &self.here(key)))
            .transpose()
    }

    fn u64(&self, key: &str) -> Result<u64> {
        unsigned(self.req(key)?, &self.here(key), u64::MAX)
    }

    fn u32(&self, key: &str) -> Result<u32> {
        unsigned(self.req(key)?, &self.here(key), u32::MAX.into()).map(|n| n as u32)
    }

    fn bool(&self, key: &str) -> Result<bool> {
        let here = self.here(key);
        match self.req(key)? {
            Json::Bool(b) => Ok(*b),
            other => Err(expected(&here, "boolean", other)),
        }
    }

    fn time(&self, key: &str) -> Result<Timestamp> {
        rfc3339(self.req(key)?, &self.here(key))
    }

    fn millis(&self, key: &str) -> Result<Timestamp> {
        millis(self.req(key)?, &self.here(key))
    }

    fn value(&self, key: &str) -> Result<Value> {
        value(self.req(key)?, &self.here(key))
    }

    fn opt_value(&self, key: &str) -> Result<Option<Value>> {
        self.opt(key).map(|v| value(v, &self.here(key))).transpose()
    }

    fn usage(&self, key: &str) -> Result<Usage> {
        usage(self.req(key)?, &self.here(key))
    }

    fn messages(&self, key: &str) -> Result<Vec<AgentMessage>> {
        let here = self.here(key);
        array(self.req(key)?, &here)?
            .iter()
            .enumerate()
            .map(|(i, item)| message(item, &format!("{here}[{i}]")))
            .collect()
    }

    fn message(&self, key: &str) -> Result<AgentMessage> {
        message(self.req(key)?, &self.here(key))
    }

    fn tool_result(&self, key: &str) -> Result<ToolResult> {
        tool_result(self.req(key)?, &self.here(key))
    }

    /// The keys this object has beyond `known`, kept as a Struct (`None` when there are none).
    fn extra(&self, known: &[&str]) -> Result<Option<Struct>> {
        let mut fields = BTreeMap::new();
        for (key, item) in self.map {
            if !known.contains(&key.as_str()) {
                fields.insert(key.clone(), value(item, &self.here(key))?);
            }
        }
        Ok((!fields.is_empty()).then_some(Struct { fields }))
    }
}

fn string(value: &Json, path: &str) -> Result<String> {
    match value {
        Json::String(s) => Ok(s.clone()),
        other => Err(expected(path, "string", other)),
    }
}

fn array<'a>(value: &'a Json, path: &str) -> Result<&'a Vec<Json>> {
    match value {
        Json::Array(items) => Ok(items),
        other => Err(expected(path, "array", other)),
    }
}

fn unsigned(value: &Json, path: &str, max: u64) -> Result<u64> {
    match value.as_u64() {
        Some(n) if n <= max => Ok(n),
        Some(n) => Err(error(path, format!("integer {n} outside [0, {max}]"))),
        None if value.is_i64() => Err(error(path, format!("integer {value} outside [0, {max}]"))),
        None => Err(expected(path, "integer", value)),
    }
}

fn signed(value: &Json, path: &str) -> Result<i64> {
    value
        .as_i64()
        .ok_or_else(|| expected(path, "integer within i64", value))
}

/// Any RFC 3339 time (offsets, no fraction, up to nanoseconds).
fn rfc3339(value: &Json, path: &str) -> Result<Timestamp> {
    let text = string(value, path)?;
    Timestamp::from_str(&text)
        .map_err(|_| error(path, format!("expected an RFC 3339 time, got {text:?}")))
}

/// Milliseconds since the epoch, as message timestamps are written.
fn millis(value: &Json, path: &str) -> Result<Timestamp> {
    // The largest Timestamp: 9999-12-31T23:59:59.999Z.
    let ms = unsigned(value, path, 253_402_300_799_999)?;
    Ok(Timestamp {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    })
}

/// Free-form JSON as `google.protobuf.Value`.
pub fn value(json: &Json, path: &str) -> Result<Value> {
    let kind = match json {
        Json::Null => ValueKind::NullValue(0),
        Json::Bool(b) => ValueKind::BoolValue(*b),
        Json::Number(n) => {
            let number = n
                .as_f64()
                .filter(|f| f.is_finite())
                .ok_or_else(|| error(path, "expected a finite number"))?;
            ValueKind::NumberValue(number)
        }
        Json::String(s) => ValueKind::StringValue(s.clone()),
        Json::Array(items) => ValueKind::ListValue(list(items, path)?),
        Json::Object(map) => ValueKind::StructValue(structure(map, path)?),
    };
    Ok(Value { kind: Some(kind) })
}

fn list(items: &[Json], path: &str) -> Result<ListValue> {
    let values = items
        .iter()
        .enumerate()
        .map(|(i, item)| value(item, &format!("{path}[{i}]")))
        .collect::<Result<_>>()?;
    Ok(ListValue { values })
}

fn structure(map: &Map<String, Json>, path: &str) -> Result<Struct> {
    let fields = map
        .iter()
        .map(|(key, item)| Ok((key.clone(), value(item, &at(path, key))?)))
        .collect::<Result<_>>()?;
    Ok(Struct { fields })
}

fn object_struct(json: &Json, path: &str) -> Result<Struct> {
    match json {
        Json::Object(map) => structure(map, path),
        other => Err(expected(path, "object", other)),
    }
}

fn usage(json: &Json, path: &str) -> Result<Usage> {
    let obj = Obj::new(json, path)?;
    let defaulted = |key: &str| match obj.opt(key) {
        Some(v) => unsigned(v, &obj.here(key), u64::MAX),
        None if obj.map.contains_key(key) => Err(expected(&obj.here(key), "integer", &Json::Null)),
        None => Ok(0),
    };
    Ok(Usage {
        input: obj.u64("input")?,
        output: obj.u64("output")?,
        reasoning: defaulted("reasoning")?,
        cache_read: defaulted("cache_read")?,
        cache_write: defaulted("cache_write")?,
        total_tokens: defaulted("total_tokens")?,
    })
}

/// One of `names` (a serde unit variant), as its protobuf enum number.
fn enum_value(json: &Json, path: &str, names: &[(&str, i32)]) -> Result<i32> {
    let choices = || {
        names
            .iter()
            .map(|(name, _)| format!("\"{name}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Json::String(text) = json else {
        return Err(expected(path, &format!("one of {}", choices()), json));
    };
    names
        .iter()
        .find(|(name, _)| name == text)
        .map(|(_, number)| *number)
        .ok_or_else(|| error(path, format!("expected one of {}, got {text:?}", choices())))
}

fn content_block(json: &Json, path: &str) -> Result<ContentBlock> {
    let obj = Obj::new(json, path)?;
    let tag = obj.str("type")?;
    let (block, known): (Block, &[&str]) = match tag.as_str() {
        "text" => (
            Block::Text(proto::TextContent {
                text: obj.str("text")?,
            }),
            &["type", "text"],
        ),
        "image" => (
            Block::Image(proto::ImageContent {
                data: obj.str("data")?,
                mime_type: obj.str("mimeType")?,
            }),
            &["type", "data", "mimeType"],
        ),
        "thinking" => (
            Block::Thinking(proto::ThinkingContent {
                thinking: obj.str("thinking")?,
                signature: obj.opt_str("signature")?,
            }),
            &["type", "thinking", "signature"],
        ),
        "toolCall" => (
            Block::ToolCall(proto::ToolCallContent {
                id: obj.str("id")?,
                name: obj.str("name")?,
                arguments: Some(obj.value("arguments")?),
            }),
            &["type", "id", "name", "arguments"],
        ),
        other => {
            let problem = format!(
                "expected one of \"text\", \"image\", \"thinking\", \"toolCall\", got {other:?}"
            );
            return Err(error(&obj.here("type"), problem));
        }
    };
    Ok(ContentBlock {
        block: Some(block),
        extra: obj.extra(known)?,
    })
}

fn content(obj: &Obj<'_>) -> Result<Vec<ContentBlock>> {
    let here = obj.here("content");
    array(obj.req("content")?, &here)?
        .iter()
        .enumerate()
        .map(|(i, item)| content_block(item, &format!("{here}[{i}]")))
        .collect()
}

const STOP_REASONS: [(&str, i32); 11] = [
    ("stop", proto::StopReason::Stop as i32),
    ("length", proto::StopReason::Length as i32),
    ("toolUse", proto::StopReason::ToolUse as i32),
    ("error", proto::StopReason::Error as i32),
    ("aborted", proto::StopReason::Aborted as i32),
    ("maxTurns", proto::StopReason::MaxTurns as i32),
    ("userStop", proto::StopReason::UserStop as i32),
    ("handoff", proto::StopReason::Handoff as i32),
    ("guardRail", proto::StopReason::GuardRail as i32),
    (
        "contextCompacted",
        proto::StopReason::ContextCompacted as i32,
    ),
    ("paused", proto::StopReason::Paused as i32),
];

const ANNOTATIONS: [&str; 5] = ["turnId", "nodeId", "parentId", "tags", "provenanceHint"];

/// The optional annotations every LLM message may carry (each omitted when empty).
fn annotate(obj: &Obj<'_>, msg: &mut AgentMessage) -> Result<()> {
    if let Some(turn) = obj.opt("turnId") {
        let turn = Obj::new(turn, &obj.here("turnId"))?;
        msg.turn_id = Some(proto::TurnId {
            loop_id: turn.str("loopId")?,
            turn_index: turn.u32("turnIndex")?,
        });
    }
    if let Some(node) = obj.opt("nodeId") {
        msg.node_id = Some(signed(node, &obj.here("nodeId"))?);
    }
    if let Some(parent) = obj.opt("parentId") {
        msg.parent_id = Some(signed(parent, &obj.here("parentId"))?);
    }
    if let Some(tags) = obj.opt("tags") {
        msg.tags = Some(list(array(tags, &obj.here("tags"))?, &obj.here("tags"))?);
    }
    if let Some(hint) = obj.opt("provenanceHint") {
        msg.provenance_hint = Some(object_struct(hint, &obj.here("provenanceHint"))?);
    }
    Ok(())
}

/// One message (serde-untagged in the runtime: `role` picks the shape).
pub fn message(json: &Json, path: &str) -> Result<AgentMessage> {
    let obj = Obj::new(json, path)?;
    let role = obj.str("role")?;
    let mut msg = AgentMessage::default();
    let known: &[&str] = match role.as_str() {
        "user" => {
            msg.role = proto::MessageRole::User as i32;
            msg.content = content(&obj)?;
            msg.timestamp = Some(obj.millis("timestamp")?);
            &["role", "content", "timestamp"]
        }
        "assistant" => {
            msg.role = proto::MessageRole::Assistant as i32;
            msg.content = content(&obj)?;
            msg.stop_reason = enum_value(
                obj.req("stopReason")?,
                &obj.here("stopReason"),
                &STOP_REASONS,
            )?;
            msg.model = obj.str("model")?;
            msg.provider = obj.str("provider")?;
            msg.usage = Some(obj.usage("usage")?);
            msg.timestamp = Some(obj.millis("timestamp")?);
            msg.error_message = obj.opt_str("error_message")?;
            &[
                "role",
                "content",
                "stopReason",
                "model",
                "provider",
                "usage",
                "timestamp",
                "error_message",
            ]
        }
        "toolResult" => {
            msg.role = proto::MessageRole::ToolResult as i32;
            msg.tool_call_id = obj.str("toolCallId")?;
            msg.tool_name = obj.str("toolName")?;
            msg.content = content(&obj)?;
            msg.is_error = obj.bool("isError")?;
            msg.timestamp = Some(obj.millis("timestamp")?);
            &[
                "role",
                "toolCallId",
                "toolName",
                "content",
                "isError",
                "timestamp",
            ]
        }
        "extension" => {
            msg.role = proto::MessageRole::Extension as i32;
            msg.extension_kind = obj.str("kind")?;
            msg.extension_data = Some(obj.value("data")?);
            msg.extra = obj.extra(&["role", "kind", "data"])?;
            return Ok(msg);
        }
        other => {
            let problem = format!(
                "expected one of \"user\", \"assistant\", \"toolResult\", \"extension\", got {other:?}"
            );
            return Err(error(&obj.here("role"), problem));
        }
    };
    annotate(&obj, &mut msg)?;
    let known: Vec<&str> = known.iter().chain(ANNOTATIONS.iter()).copied().collect();
    msg.extra = obj.extra(&known)?;
    Ok(msg)
}

fn tool_result(json: &Json, path: &str) -> Result<ToolResult> {
    let obj = Obj::new(json, path)?;
    Ok(ToolResult {
        content: content(&obj)?,
        details: Some(obj.value("details")?),
        child_loop_id: obj.opt_str("child_loop_id")?,
    })
}

const APIS: [(&str, i32); 7] = [
    (
        "anthropic_messages",
        proto::ApiProtocol::AnthropicMessages as i32,
    ),
    (
        "open_ai_completions",
        proto::ApiProtocol::OpenAiCompletions as i32,
    ),
    (
        "open_ai_responses",
        proto::ApiProtocol::OpenAiResponses as i32,
    ),
    (
        "azure_open_ai_responses",
        proto::ApiProtocol::AzureOpenAiResponses as i32,
    ),
    (
        "google_generative_ai",
        proto::ApiProtocol::GoogleGenerativeAi as i32,
    ),
    ("google_vertex", proto::ApiProtocol::GoogleVertex as i32),
    (
        "bedrock_converse_stream",
        proto::ApiProtocol::BedrockConverseStream as i32,
    ),
];

const THINKING_LEVELS: [(&str, i32); 5] = [
    ("off", proto::ThinkingLevel::Off as i32),
    ("minimal", proto::ThinkingLevel::Minimal as i32),
    ("low", proto::ThinkingLevel::Low as i32),
    ("medium", proto::ThinkingLevel::Medium as i32),
    ("high", proto::ThinkingLevel::High as i32),
];

fn config(json: &Json, path: &str) -> Result<LoopConfigSnapshot> {
    let obj = Obj::new(json, path)?;
    let opt_u32 = |key: &str| {
        obj.opt(key)
            .map(|v| unsigned(v, &obj.here(key), u32::MAX.into()).map(|n| n as u32))
            .transpose()
    };
    let opt_enum = |key: &str, names: &[(&str, i32)]| {
        obj.opt(key)
            .map(|v| enum_value(v, &obj.here(key), names))
            .transpose()
            .map(Option::unwrap_or_default)
    };
    let reasoning = match obj.opt("reasoning") {
        Some(Json::Bool(b)) => Some(*b),
        Some(other) => return Err(expected(&obj.here("reasoning"), "boolean", other)),
        None => None,
    };
    let temperature = match obj.opt("temperature") {
        Some(v) => Some(f32_of(v, &obj.here("temperature"))?),
        None => None,
    };
    Ok(LoopConfigSnapshot {
        model: obj.str("model")?,
        provider: obj.str("provider")?,
        config_id: obj.opt_str("config_id")?,
        name: obj.opt_str("name")?,
        api: opt_enum("api", &APIS)?,
        base_url: obj.opt_str("base_url")?,
        reasoning,
        context_window: opt_u32("context_window")?,
        max_tokens: opt_u32("max_tokens")?,
        thinking_level: opt_enum("thinking_level", &THINKING_LEVELS)?,
        temperature,
    })
}

fn f32_of(json: &Json, path: &str) -> Result<f32> {
    let number = json
        .as_f64()
        .ok_or_else(|| expected(path, "number", json))?;
    let narrowed = number as f32;
    if !narrowed.is_finite() {
        return Err(error(path, format!("{number} does not fit a 32-bit float")));
    }
    Ok(narrowed)
}

/// `"Initial"`, `"Default"`, `"Compaction"`, `{"Rerun": {"tag"}}`, `{"Branch": {"tag"}}`;
/// missing or null reads as Initial.
fn continuation(json: Option<&Json>, path: &str) -> Result<ContinuationKind> {
    let kind = match json {
        None => Continuation::Initial(proto::InitialContinuation {}),
        Some(Json::String(name)) => match name.as_str() {
            "Initial" => Continuation::Initial(proto::InitialContinuation {}),
            "Default" => Continuation::Default(proto::DefaultContinuation {}),
            "Compaction" => Continuation::Compaction(proto::CompactionContinuation {}),
            other => {
                let problem = format!(
                    "expected \"Initial\", \"Default\", \"Compaction\" or a Rerun/Branch object, got {other:?}"
                );
                return Err(error(path, problem));
            }
        },
        Some(other) => {
            let (name, inner) = single_key(other, path)?;
            let here = at(path, name);
            let tag = Obj::new(inner, &here)?.str("tag")?;
            match name {
                "Rerun" => Continuation::Rerun(proto::RerunContinuation { tag }),
                "Branch" => Continuation::Branch(proto::BranchContinuation { tag }),
                _ => {
                    let problem = format!("expected \"Rerun\" or \"Branch\", got {name:?}");
                    return Err(error(path, problem));
                }
            }
        }
    };
    Ok(ContinuationKind { kind: Some(kind) })
}

/// An externally tagged variant: an object with exactly one key.
fn single_key<'a>(json: &'a Json, path: &str) -> Result<(&'a str, &'a Json)> {
    let obj = Obj::new(json, path)?;
    let mut entries = obj.map.iter();
    match (entries.next(), entries.next()) {
        (Some((key, inner)), None) => Ok((key.as_str(), inner)),
        _ => Err(error(
            path,
            format!(
                "expected an object with one key, got {} keys",
                obj.map.len()
            ),
        )),
    }
}

const TRIGGERS: [(&str, i32); 5] = [
    ("User", proto::TurnTrigger::User as i32),
    ("SubAgent", proto::TurnTrigger::SubAgent as i32),
    ("Continuation", proto::TurnTrigger::Continuation as i32),
    ("Branch", proto::TurnTrigger::Branch as i32),
    ("FollowUp", proto::TurnTrigger::Continuation as i32),
];

fn delta(json: &Json, path: &str) -> Result<Delta> {
    let (name, inner) = single_key(json, path)?;
    let here = at(path, name);
    let text = Obj::new(inner, &here)?.str("delta")?;
    match name {
        "Text" => Ok(Delta::Text(text)),
        "Thinking" => Ok(Delta::Thinking(text)),
        "ToolCallDelta" => Ok(Delta::ToolCallDelta(text)),
        other => Err(error(
            path,
            format!("expected one of \"Text\", \"Thinking\", \"ToolCallDelta\", got {other:?}"),
        )),
    }
}

const REVERT_CATEGORIES: [&str; 4] = ["failure", "tangent", "completion", "step-summary"];

fn revert_category(obj: &Obj<'_>) -> Result<String> {
    let category = obj.str("category")?;
    if !REVERT_CATEGORIES.contains(&category.as_str()) {
        let problem = format!(
            "expected one of \"failure\", \"tangent\", \"completion\", \"step-summary\", got {category:?}"
        );
        return Err(error(&obj.here("category"), problem));
    }
    Ok(category)
}

/// One event line of the runtime (internally tagged by `type`).
pub fn event_from_json(json: &Json) -> Result<AgentEvent> {
    let obj = Obj::new(json, "")?;
    let tag = obj.str("type")?;
    let event = match tag.as_str() {
        "AgentStart" => Event::AgentStart(proto::AgentStart {
            agent_id: obj.str("agent_id")?,
            session_id: obj.str("session_id")?,
            loop_id: obj.str("loop_id")?,
            parent_loop_id: obj.opt_str("parent_loop_id")?,
            continuation_kind: Some(continuation(
                obj.opt("continuation_kind"),
                &obj.here("continuation_kind"),
            )?),
            timestamp: Some(obj.time("timestamp")?),
            metadata: obj.opt_value("metadata")?,
            config_snapshot: obj
                .opt("config_snapshot")
                .map(|c| config(c, &obj.here("config_snapshot")))
                .transpose()?,
        }),
        "AgentEnd" => Event::AgentEnd(proto::AgentEnd {
            loop_id: obj.str("loop_id")?,
            messages: obj.messages("messages")?,
            usage: Some(obj.usage("usage")?),
            timestamp: Some(obj.time("timestamp")?),
            rejection: obj.opt_str("rejection")?,
        }),
        "TurnStart" => Event::TurnStart(proto::TurnStart {
            loop_id: obj.str("loop_id")?,
            turn_index: obj.u32("turn_index")?,
            timestamp: Some(obj.time("timestamp")?),
            triggered_by: enum_value(
                obj.req("triggered_by")?,
                &obj.here("triggered_by"),
                &TRIGGERS,
            )?,
        }),
        "TurnRequest" => Event::TurnRequest(proto::TurnRequest {
            loop_id: obj.str("loop_id")?,
            turn_index: obj.u32("turn_index")?,
            payload: Some(object_struct(obj.req("payload")?, &obj.here("payload"))?),
            timestamp: Some(obj.time("timestamp")?),
        }),
        "TurnEnd" => Event::TurnEnd(proto::TurnEnd {
            loop_id: obj.str("loop_id")?,
            message: Some(obj.message("message")?),
            usage: Some(obj.usage("usage")?),
            timestamp: Some(obj.time("timestamp")?),
            tool_results: obj.messages("tool_results")?,
        }),
        "MessageStart" => Event::MessageStart(proto::MessageStart {
            loop_id: obj.str("loop_id")?,
            message: Some(obj.message("message")?),
        }),
        "MessageUpdate" => Event::MessageUpdate(proto::MessageUpdate {
            loop_id: obj.str("loop_id")?,
            message: Some(obj.message("message")?),
            delta: Some(proto::MessageDelta {
                delta: Some(delta(obj.req("delta")?, &obj.here("delta"))?),
            }),
        }),
        "MessageEnd" => Event::MessageEnd(proto::MessageEnd {
            loop_id: obj.str("loop_id")?,
            message: Some(obj.message("message")?),
        }),
        "ToolExecutionStart" => Event::ToolExecutionStart(proto::ToolExecutionStart {
            loop_id: obj.str("loop_id")?,
            tool_call_id: obj.str("tool_call_id")?,
            tool_name: obj.str("tool_name")?,
            args: Some(obj.value("args")?),
        }),
        "ToolExecutionUpdate" => Event::ToolExecutionUpdate(proto::ToolExecutionUpdate {
            loop_id: obj.str("loop_id")?,
            tool_call_id: obj.str("tool_call_id")?,
            tool_name: obj.str("tool_name")?,
            partial_result: Some(obj.tool_result("partial_result")?),
        }),
        "ToolExecutionEnd" => Event::ToolExecutionEnd(proto::ToolExecutionEnd {
            loop_id: obj.str("loop_id")?,
            tool_call_id: obj.str("tool_call_id")?,
            tool_name: obj.str("tool_name")?,
            result: Some(obj.tool_result("result")?),
            is_error: obj.bool("is_error")?,
            child_loop_id: obj.opt_str("child_loop_id")?,
        }),
        "ProgressMessage" => Event::ProgressMessage(proto::ProgressMessage {
            loop_id: obj.str("loop_id")?,
            tool_call_id: obj.str("tool_call_id")?,
            tool_name: obj.str("tool_name")?,
            text: obj.str("text")?,
        }),
        "InputRejected" => Event::InputRejected(proto::InputRejected {
            loop_id: obj.str("loop_id")?,
            reason: obj.str("reason")?,
        }),
        _ => return session_or_context_event(&obj, &tag),
    };
    Ok(AgentEvent { event: Some(event) })
}

/// The Parallel*, compaction, prun and revert events.
fn session_or_context_event(obj: &Obj<'_>, tag: &str) -> Result<AgentEvent> {
    let event = match tag {
        "ParallelLoopStart" => {
            let here = obj.here("loop_ids");
            let loop_ids = array(obj.req("loop_ids")?, &here)?
                .iter()
                .enumerate()
                .map(|(i, id)| string(id, &format!("{here}[{i}]")))
                .collect::<Result<_>>()?;
            Event::ParallelLoopStart(proto::ParallelLoopStart {
                session_id: obj.str("session_id")?,
                loop_ids,
                timestamp: Some(obj.time("timestamp")?),
            })
        }
        "ParallelLoopEnd" => Event::ParallelLoopEnd(proto::ParallelLoopEnd {
            session_id: obj.str("session_id")?,
            selected_loop_id: obj.str("selected_loop_id")?,
            selected_config_index: obj.u64("selected_config_index")?,
            evaluation_usage: Some(obj.usage("evaluation_usage")?),
            timestamp: Some(obj.time("timestamp")?),
        }),
        "CompactionStarted" => Event::CompactionStarted(proto::CompactionStarted {
            loop_id: obj.str("loop_id")?,
            estimated_tokens: obj.u64("estimated_tokens")?,
            message_count: obj.u64("message_count")?,
            timestamp: Some(obj.time("timestamp")?),
        }),
        "CompactionEnded" => Event::CompactionEnded(proto::CompactionEnded {
            loop_id: obj.str("loop_id")?,
            messages_before: obj.u64("messages_before")?,
            messages_after: obj.u64("messages_after")?,
            estimated_tokens_before: obj.u64("estimated_tokens_before")?,
            estimated_tokens_after: obj.u64("estimated_tokens_after")?,
            loops_compacted: obj.u64("loops_compacted")?,
            timestamp: Some(obj.time("timestamp")?),
        }),
        "PrunApplied" => {
            let here = obj.here("pruned_timestamps");
            let pruned_timestamps = array(obj.req("pruned_timestamps")?, &here)?
                .iter()
                .enumerate()
                .map(|(i, ms)| millis(ms, &format!("{here}[{i}]")))
                .collect::<Result<_>>()?;
            Event::PrunApplied(proto::PrunApplied {
                loop_id: obj.str("loop_id")?,
                tokens_removed: obj.u64("tokens_removed")?,
                messages_removed: obj.u64("messages_removed")?,
                memo: obj.opt_str("memo")?,
                pruned_timestamps,
                timestamp: Some(obj.time("timestamp")?),
            })
        }
        "RevertApplied" => {
            let here = obj.here("abandoned_node_ids");
            let abandoned_node_ids = array(obj.req("abandoned_node_ids")?, &here)?
                .iter()
                .enumerate()
                .map(|(i, id)| signed(id, &format!("{here}[{i}]")))
                .collect::<Result<_>>()?;
            Event::RevertApplied(proto::RevertApplied {
                loop_id: obj.str("loop_id")?,
                category: revert_category(obj)?,
                target: obj
                    .opt("target")
                    .map(|t| signed(t, &obj.here("target")))
                    .transpose()?,
                abandoned_node_ids,
                summary: obj.opt_str("summary")?,
                applied: obj.bool("applied")?,
                reason: obj.opt_str("reason")?,
                timestamp: Some(obj.time("timestamp")?),
            })
        }
        other => {
            return Err(error(
                &obj.here("type"),
                format!("unknown event type {other:?}"),
            ))
        }
    };
    Ok(AgentEvent { event: Some(event) })
}
