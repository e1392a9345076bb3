//! The checks an [`EventSender`](crate::EventSender) applies at emit, so its own
//! bad events never reach a batch.
//!
//! The server checks every event again (`recorder_server/validation.py`) and
//! refuses a bad one alone; checking here as well means the agent hears of its
//! mistake at the call that made it, as an [`InvalidEvent`] naming the field,
//! before the event is numbered or queued. Only what the server's limits (announced
//! in `RecordReady`) decide is checked, with the messages of the Python client
//! (`recorder_client/checks.py`): ids (non-empty, at most `max_id_length`
//! characters, no C0, DEL or C1 control characters), free-form JSON (nesting at
//! most `max_value_depth`, no NaN or Infinity, which JSON cannot carry) and the
//! event's encoded size (`max_request_bytes`). One more bound is protobuf's own: the
//! server cannot decode a request nesting messages more than 100 deep (some 30
//! levels of JSON inside an event) and would refuse it with its whole batch, so
//! such an event is refused here too.
//!
//! A direct walk of the prost structs: ids and JSON are where the proto files put
//! them, and a path string is built only for an event that fails.

use std::fmt;

use prost_types::{value::Kind, ListValue, Struct, Value};

use crate::proto::{agent_event::Event, AgentEvent, AgentMessage, ContentBlock, ToolResult};

/// The server's default `max_id_length` (`recorder_server.validation.Limits`).
pub const DEFAULT_MAX_ID_LENGTH: usize = 256;
/// The server's default `max_value_depth`.
pub const DEFAULT_MAX_VALUE_DEPTH: usize = 64;
/// The server's default `max_request_bytes`.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;
/// Field keys and lengths around an event in a request: a generous bound.
const FRAMING_BYTES: usize = 64;
/// How deep protobuf's decoder (the server's) nests messages below the request.
const DECODABLE_DEPTH: usize = 100;
/// Messages from the `RecordRequest` down to an event's kind (batch, envelope,
/// `AgentEvent`, then the kind: `AgentStart`, ...).
const KIND_DEPTH: usize = 4;

/// What an event must fit: the server's defaults until its `RecordReady` says otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventLimits {
    /// Characters of an id (session, loop, agent).
    pub max_id_length: usize,
    /// Nesting of `Struct` / `ListValue` containers in free-form JSON.
    pub max_value_depth: usize,
    /// The largest request, so the largest event alone.
    pub max_request_bytes: usize,
}

impl Default for EventLimits {
    fn default() -> Self {
        EventLimits {
            max_id_length: DEFAULT_MAX_ID_LENGTH,
            max_value_depth: DEFAULT_MAX_VALUE_DEPTH,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
        }
    }
}

impl EventLimits {
    /// The largest encoded event that fits a request alone.
    pub fn largest_event(&self) -> usize {
        self.max_request_bytes.saturating_sub(FRAMING_BYTES)
    }
}

/// An event the server would refuse: the field path as the server names it
/// (`event.agent_start.session_id`) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidEvent {
    /// The field path, from `event.` down.
    pub field: String,
    /// What is wrong (`must not be empty`, ...).
    pub message: String,
}

impl fmt::Display for InvalidEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for InvalidEvent {}

/// Checks `event`, whose encoding is `encoded_len` bytes long, against `limits`.
///
/// In the order of the Python client: the size, the loop id, the event's other
/// ids, then its free-form JSON (each value's nesting and numbers, then whether
/// the server could decode it at all). An empty event has nothing to check.
pub fn check_event(
    event: &AgentEvent,
    encoded_len: usize,
    limits: &EventLimits,
) -> Result<(), InvalidEvent> {
    let Some(kind) = &event.event else {
        return Ok(());
    };
    let name = kind_name(kind);
    let loop_id = crate::event_loop_id(event);
    if encoded_len > limits.largest_event() {
        let at = loop_id
            .filter(|id| !id.is_empty())
            .map(|id| format!(" (loop {id})"))
            .unwrap_or_default();
        return Err(invalid(
            format!("event.{name}"),
            format!(
                "{encoded_len} bytes, larger than the sidecar's request limit of {} bytes{at}",
                limits.max_request_bytes
            ),
        ));
    }
    let under_kind = |fault: Fault| invalid(format!("event.{name}.{}", fault.path), fault.problem);
    if let Some(loop_id) = loop_id {
        check_id(loop_id, "loop_id", limits.max_id_length).map_err(under_kind)?;
    }
    check_more_ids(kind, limits.max_id_length).map_err(under_kind)?;
    let mut walk = Walk::new(limits.max_value_depth);
    walk.event(kind).map_err(under_kind)?;
    if walk.deepest > DECODABLE_DEPTH {
        return Err(invalid(
            format!("event.{name}"),
            "nested too deeply to be decoded (protobuf decodes at most 100 nested messages, \
             some 30 levels of JSON)"
                .into(),
        ));
    }
    Ok(())
}

/// The event's oneof field name, as the proto and the server's field paths spell it.
pub fn kind_name(kind: &Event) -> &'static str {
    match kind {
        Event::AgentStart(_) => "agent_start",
        Event::AgentEnd(_) => "agent_end",
        Event::TurnStart(_) => "turn_start",
        Event::TurnRequest(_) => "turn_request",
        Event::TurnEnd(_) => "turn_end",
        Event::MessageStart(_) => "message_start",
        Event::MessageUpdate(_) => "message_update",
        Event::MessageEnd(_) => "message_end",
        Event::ToolExecutionStart(_) => "tool_execution_start",
        Event::ToolExecutionUpdate(_) => "tool_execution_update",
        Event::ToolExecutionEnd(_) => "tool_execution_end",
        Event::ProgressMessage(_) => "progress_message",
        Event::InputRejected(_) => "input_rejected",
        Event::ParallelLoopStart(_) => "parallel_loop_start",
        Event::ParallelLoopEnd(_) => "parallel_loop_end",
        Event::CompactionStarted(_) => "compaction_started",
        Event::CompactionEnded(_) => "compaction_ended",
        Event::PrunApplied(_) => "prun_applied",
        Event::RevertApplied(_) => "revert_applied",
    }
}

fn invalid(field: String, message: String) -> InvalidEvent {
    InvalidEvent { field, message }
}

/// A problem at a path below the event's kind; each enclosing level prefixes its
/// part on the way out, so the happy path builds no strings.
struct Fault {
    path: String,
    problem: String,
}

impl Fault {
    fn at(path: &str, problem: String) -> Self {
        Fault {
            path: path.to_string(),
            problem,
        }
    }

    fn under(mut self, prefix: &str) -> Self {
        self.path = format!("{prefix}.{}", self.path);
        self
    }
}

// -- ids --------------------------------------------------------------------------------

/// The ids an event holds besides its loop id, in the Python client's order.
fn check_more_ids(kind: &Event, max_length: usize) -> Result<(), Fault> {
    let id = |value: &str, path: &str| check_id(value, path, max_length);
    match kind {
        Event::AgentStart(e) => {
            id(&e.agent_id, "agent_id")?;
            id(&e.session_id, "session_id")?;
            if let Some(parent) = &e.parent_loop_id {
                id(parent, "parent_loop_id")?;
            }
        }
        Event::ParallelLoopStart(e) => {
            id(&e.session_id, "session_id")?;
            for (j, loop_id) in e.loop_ids.iter().enumerate() {
                check_id(loop_id, &format!("loop_ids[{j}]"), max_length)?;
            }
        }
        Event::ParallelLoopEnd(e) => {
            id(&e.session_id, "session_id")?;
            id(&e.selected_loop_id, "selected_loop_id")?;
        }
        Event::ToolExecutionEnd(e) => {
            if let Some(child) = &e.child_loop_id {
                id(child, "child_loop_id")?;
            }
            if let Some(child) = e.result.as_ref().and_then(|r| r.child_loop_id.as_ref()) {
                id(child, "result.child_loop_id")?;
            }
        }
        Event::ToolExecutionUpdate(e) => {
            let partial = e.partial_result.as_ref();
            if let Some(child) = partial.and_then(|r| r.child_loop_id.as_ref()) {
                id(child, "partial_result.child_loop_id")?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Non-empty, at most `max_length` characters, no C0, DEL or C1 control character.
/// The message names lone surrogates too, word for word the Python client's,
/// though a Rust string cannot hold one.
fn check_id(value: &str, path: &str, max_length: usize) -> Result<(), Fault> {
    // The common id: printable ASCII, its bytes its characters.
    if !value.is_empty()
        && value.len() <= max_length
        && value.bytes().all(|b| (0x20..0x7f).contains(&b))
    {
        return Ok(());
    }
    if value.is_empty() {
        return Err(Fault::at(path, "must not be empty".into()));
    }
    let length = value.chars().count();
    if length > max_length {
        let problem = format!("must be at most {max_length} characters, not {length}");
        return Err(Fault::at(path, problem));
    }
    let control = |c: &char| matches!(u32::from(*c), 0..=0x1f | 0x7f..=0x9f);
    if let Some((index, bad)) = value.chars().enumerate().find(|(_, c)| control(c)) {
        let problem = format!(
            "must not contain control characters or lone surrogates (U+{:04X} at index {index})",
            u32::from(bad)
        );
        return Err(Fault::at(path, problem));
    }
    Ok(())
}

// -- free-form JSON ---------------------------------------------------------------------

/// One JSON root: a field of type `Value`, `Struct` or `ListValue`.
#[derive(Clone, Copy)]
enum Json<'a> {
    Value(&'a Value),
    Struct(&'a Struct),
    List(&'a ListValue),
}

/// The values of one container, as the walk visits them.
enum Values<'a> {
    One(std::iter::Once<&'a Value>),
    Fields(std::collections::btree_map::Values<'a, String, Value>),
    List(std::slice::Iter<'a, Value>),
}

impl<'a> Iterator for Values<'a> {
    type Item = &'a Value;

    fn next(&mut self) -> Option<&'a Value> {
        match self {
            Values::One(one) => one.next(),
            Values::Fields(fields) => fields.next(),
            Values::List(items) => items.next(),
        }
    }
}

/// Values waiting to be visited: their nesting level, the message depth at which
/// they sit in a request (below the `RecordRequest`), and whether they are map
/// values (an unset one is then not encoded at all).
struct Pending<'a> {
    values: Values<'a>,
    level: usize,
    depth: usize,
    in_map: bool,
}

/// Walks an event's JSON roots, in the order of their fields in the proto files,
/// and records the deepest message any of them puts in a request.
struct Walk<'a> {
    limit: usize,
    deepest: usize,
    pending: Vec<Pending<'a>>,
}

impl<'a> Walk<'a> {
    fn new(limit: usize) -> Self {
        Walk {
            limit,
            deepest: 0,
            pending: Vec::new(),
        }
    }

    /// The JSON of one event kind (whose message sits at `KIND_DEPTH`).
    fn event(&mut self, kind: &'a Event) -> Result<(), Fault> {
        let below = KIND_DEPTH + 1;
        match kind {
            Event::AgentStart(e) => {
                self.optional(e.metadata.as_ref().map(Json::Value), "metadata", below)
            }
            Event::TurnRequest(e) => {
                self.optional(e.payload.as_ref().map(Json::Struct), "payload", below)
            }
            Event::ToolExecutionStart(e) => {
                self.optional(e.args.as_ref().map(Json::Value), "args", below)
            }
            Event::AgentEnd(e) => self.messages(&e.messages, "messages", below),
            Event::TurnEnd(e) => {
                self.message(e.message.as_ref(), "message", below)?;
                self.messages(&e.tool_results, "tool_results", below)
            }
            Event::MessageStart(e) => self.message(e.message.as_ref(), "message", below),
            Event::MessageUpdate(e) => self.message(e.message.as_ref(), "message", below),
            Event::MessageEnd(e) => self.message(e.message.as_ref(), "message", below),
            Event::ToolExecutionUpdate(e) => {
                self.tool_result(e.partial_result.as_ref(), "partial_result", below)
            }
            Event::ToolExecutionEnd(e) => self.tool_result(e.result.as_ref(), "result", below),
            _ => Ok(()),
        }
    }

    fn messages(
        &mut self,
        messages: &'a [AgentMessage],
        path: &str,
        depth: usize,
    ) -> Result<(), Fault> {
        for (j, message) in messages.iter().enumerate() {
            self.message_json(message, depth)
                .map_err(|fault| fault.under(&format!("{path}[{j}]")))?;
        }
        Ok(())
    }

    fn message(
        &mut self,
        message: Option<&'a AgentMessage>,
        path: &str,
        depth: usize,
    ) -> Result<(), Fault> {
        match message {
            Some(message) => self
                .message_json(message, depth)
                .map_err(|fault| fault.under(path)),
            None => Ok(()),
        }
    }

    /// An `AgentMessage` at message depth `depth`.
    fn message_json(&mut self, m: &'a AgentMessage, depth: usize) -> Result<(), Fault> {
        let below = depth + 1;
        self.blocks(&m.content, below)?;
        self.optional(
            m.extension_data.as_ref().map(Json::Value),
            "extension_data",
            below,
        )?;
        self.optional(m.tags.as_ref().map(Json::List), "tags", below)?;
        self.optional(
            m.provenance_hint.as_ref().map(Json::Struct),
            "provenance_hint",
            below,
        )?;
        self.optional(m.extra.as_ref().map(Json::Struct), "extra", below)
    }

    fn tool_result(
        &mut self,
        result: Option<&'a ToolResult>,
        path: &str,
        depth: usize,
    ) -> Result<(), Fault> {
        let Some(result) = result else {
            return Ok(());
        };
        self.blocks(&result.content, depth + 1)
            .and_then(|()| {
                self.optional(
                    result.details.as_ref().map(Json::Value),
                    "details",
                    depth + 1,
                )
            })
            .map_err(|fault| fault.under(path))
    }

    /// Content blocks, each at message depth `depth`.
    fn blocks(&mut self, blocks: &'a [ContentBlock], depth: usize) -> Result<(), Fault> {
        use crate::proto::content_block::Block;
        for (j, block) in blocks.iter().enumerate() {
            let arguments = match &block.block {
                Some(Block::ToolCall(call)) => call.arguments.as_ref(),
                _ => None,
            };
            self.optional(arguments.map(Json::Value), "tool_call.arguments", depth + 2)
                .and_then(|()| {
                    self.optional(block.extra.as_ref().map(Json::Struct), "extra", depth + 1)
                })
                .map_err(|fault| fault.under(&format!("content[{j}]")))?;
        }
        Ok(())
    }

    fn optional(&mut self, root: Option<Json<'a>>, path: &str, depth: usize) -> Result<(), Fault> {
        match root {
            Some(root) => self
                .json(root, depth)
                .map_err(|problem| Fault::at(path, problem)),
            None => Ok(()),
        }
    }

    /// Nesting and finiteness of one JSON value at message depth `depth`, iteratively
    /// (depth costs no recursion), visiting values in the Python client's order.
    fn json(&mut self, root: Json<'a>, depth: usize) -> Result<(), String> {
        let first = match root {
            Json::Value(value) => Pending {
                values: Values::One(std::iter::once(value)),
                level: 0,
                depth,
                in_map: false,
            },
            Json::Struct(fields) => self.fields(fields, 1, depth),
            Json::List(list) => self.items(list, 1, depth),
        };
        self.pending.push(first);
        while let Some(Pending {
            values,
            level,
            depth,
            in_map,
        }) = self.pending.pop()
        {
            for value in values {
                if in_map && value.kind.is_none() {
                    continue; // an unset map value is not encoded
                }
                self.deepest = self.deepest.max(depth);
                let next = match &value.kind {
                    Some(Kind::NumberValue(number)) if !number.is_finite() => {
                        let number = python_float(*number);
                        return Err(format!("contains {number}, which JSON cannot carry"));
                    }
                    Some(Kind::StructValue(fields)) => self.fields(fields, level + 1, depth + 1),
                    Some(Kind::ListValue(list)) => self.items(list, level + 1, depth + 1),
                    _ => continue,
                };
                if level >= self.limit {
                    return Err(format!("must not nest deeper than {} levels", self.limit));
                }
                self.pending.push(next);
            }
        }
        Ok(())
    }

    /// The values of a `Struct` (nesting level `level`) at message depth `depth`:
    /// each in a map entry one message deeper, so two messages below it.
    fn fields(&mut self, fields: &'a Struct, level: usize, depth: usize) -> Pending<'a> {
        let entries = if fields.fields.is_empty() { 0 } else { 1 };
        self.deepest = self.deepest.max(depth + entries);
        Pending {
            values: Values::Fields(fields.fields.values()),
            level,
            depth: depth + 2,
            in_map: true,
        }
    }

    /// The values of a `ListValue` (nesting level `level`) at message depth `depth`.
    fn items(&mut self, list: &'a ListValue, level: usize, depth: usize) -> Pending<'a> {
        self.deepest = self.deepest.max(depth);
        Pending {
            values: Values::List(list.values.iter()),
            level,
            depth: depth + 1,
            in_map: false,
        }
    }
}

/// A non-finite number as Python writes it (`nan`, `inf`, `-inf`), as the Python
/// client's messages do.
fn python_float(number: f64) -> &'static str {
    if number.is_nan() {
        "nan"
    } else if number > 0.0 {
        "inf"
    } else {
        "-inf"
    }
}
