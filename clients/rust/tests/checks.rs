//! The checks an EventSender applies at emit, as a pure function (src/checks.rs).
//!
//! Each case builds the event a careless agent would and asserts the error names
//! the field the server's validation names, with the Python client's message;
//! valid events of every kind pass. The parity test runs the same events through
//! the Python client's check and the server's validation (this checkout's venv).

mod support;

use agent_recorder_client::checks::{check_event, kind_name, EventLimits, InvalidEvent};
use agent_recorder_client::proto::{self, agent_event::Event, content_block::Block};
use agent_recorder_client::proto::{AgentEvent, AgentMessage, ContentBlock, ToolResult};
use prost::Message;
use prost_types::{value::Kind, ListValue, Struct, Value};
use support::{agent_end, agent_start, assistant, event, text, ts, turn_end, turn_start, user};

const LOOP: &str = "s1.c.0";

fn check(event: &AgentEvent, limits: &EventLimits) -> Result<(), InvalidEvent> {
    check_event(event, event.encoded_len(), limits)
}

fn refusal(event: &AgentEvent, limits: &EventLimits) -> String {
    match check(event, limits) {
        Ok(()) => panic!("not refused: {event:?}"),
        Err(invalid) => {
            assert_eq!(
                invalid.to_string(),
                format!("{}: {}", invalid.field, invalid.message)
            );
            invalid.to_string()
        }
    }
}

fn depth(max_value_depth: usize) -> EventLimits {
    EventLimits {
        max_value_depth,
        ..EventLimits::default()
    }
}

// -- JSON --------------------------------------------------------------------------------

fn value(kind: Kind) -> Value {
    Value { kind: Some(kind) }
}

fn num(number: f64) -> Value {
    value(Kind::NumberValue(number))
}

fn obj(pairs: Vec<(&str, Value)>) -> Value {
    let fields = pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    value(Kind::StructValue(Struct { fields }))
}

fn list(values: Vec<Value>) -> Value {
    value(Kind::ListValue(ListValue { values }))
}

/// `levels` Structs, each the "next" of the one before: `{"next": ... {"leaf": 1}}`.
fn nested(levels: usize) -> Value {
    (1..levels).fold(obj(vec![("leaf", num(1.0))]), |inner, _| {
        obj(vec![("next", inner)])
    })
}

/// `levels` lists, each holding the next: `[[...[1]...]]`.
fn nested_list(levels: usize) -> Value {
    (1..levels).fold(list(vec![num(1.0)]), |inner, _| list(vec![inner]))
}

/// A Struct field's JSON: the Struct `json` is, else `{"k": json}` (one level more).
fn as_struct(json: Value) -> Struct {
    match json.kind {
        Some(Kind::StructValue(fields)) => fields,
        kind => Struct {
            fields: [("k".to_string(), Value { kind })].into(),
        },
    }
}

/// A ListValue field's JSON: the list `json` is, else `[json]` (one level more).
fn as_list(json: Value) -> ListValue {
    match json.kind {
        Some(Kind::ListValue(items)) => items,
        kind => ListValue {
            values: vec![Value { kind }],
        },
    }
}

// -- events ------------------------------------------------------------------------------

fn tool_call(arguments: Value) -> ContentBlock {
    ContentBlock {
        block: Some(Block::ToolCall(proto::ToolCallContent {
            id: "call-1".into(),
            name: "grep".into(),
            arguments: Some(arguments),
        })),
        extra: None,
    }
}

fn with_extra(block: ContentBlock, extra: Value) -> ContentBlock {
    ContentBlock {
        extra: Some(as_struct(extra)),
        ..block
    }
}

fn message(content: Vec<ContentBlock>) -> AgentMessage {
    AgentMessage {
        content,
        ..assistant("", 3)
    }
}

fn tool_result(content: Vec<ContentBlock>, details: Option<Value>) -> ToolResult {
    ToolResult {
        content,
        details,
        child_loop_id: None,
    }
}

fn turn_request(loop_id: &str, payload: Value) -> AgentEvent {
    event(Event::TurnRequest(proto::TurnRequest {
        loop_id: loop_id.into(),
        turn_index: 0,
        payload: Some(as_struct(payload)),
        timestamp: Some(ts(2)),
    }))
}

fn tool_start(loop_id: &str, args: Value) -> AgentEvent {
    event(Event::ToolExecutionStart(proto::ToolExecutionStart {
        loop_id: loop_id.into(),
        tool_call_id: "call-1".into(),
        tool_name: "grep".into(),
        args: Some(args),
    }))
}

fn tool_update(loop_id: &str, partial: ToolResult) -> AgentEvent {
    event(Event::ToolExecutionUpdate(proto::ToolExecutionUpdate {
        loop_id: loop_id.into(),
        tool_call_id: "call-1".into(),
        tool_name: "grep".into(),
        partial_result: Some(partial),
    }))
}

fn tool_end(loop_id: &str, result: ToolResult) -> AgentEvent {
    event(Event::ToolExecutionEnd(proto::ToolExecutionEnd {
        loop_id: loop_id.into(),
        tool_call_id: "call-1".into(),
        tool_name: "grep".into(),
        result: Some(result),
        is_error: false,
        child_loop_id: None,
    }))
}

fn with_metadata(mut start: AgentEvent, metadata: Value) -> AgentEvent {
    if let Some(Event::AgentStart(e)) = &mut start.event {
        e.metadata = Some(metadata);
    }
    start
}

fn turn_end_with(loop_id: &str, answer: AgentMessage, results: Vec<AgentMessage>) -> AgentEvent {
    let mut end = turn_end(loop_id, answer, 4);
    if let Some(Event::TurnEnd(e)) = &mut end.event {
        e.tool_results = results;
    }
    end
}

/// One event of every kind for `loop_id`, free-form JSON (valid) in every place
/// that can hold it; the Parallel* events name the loop among theirs.
fn every_kind(loop_id: &str) -> Vec<AgentEvent> {
    let args = obj(vec![
        ("pattern", value(Kind::StringValue("x".repeat(500)))),
        ("n", num(1.5)),
        ("deep", nested(20)),
        ("none", value(Kind::NullValue(0))),
    ]);
    let rich = AgentMessage {
        extension_data: Some(obj(vec![("kind", num(2.0))])),
        tags: Some(as_list(list(vec![value(Kind::BoolValue(true))]))),
        provenance_hint: Some(as_struct(obj(vec![("from", nested(3))]))),
        extra: Some(as_struct(obj(vec![("x", list(vec![]))]))),
        ..message(vec![
            text("hi"),
            with_extra(tool_call(args.clone()), obj(vec![])),
        ])
    };
    let result = tool_result(vec![tool_call(args.clone())], Some(args.clone()));
    let mut start = with_metadata(agent_start("s1", loop_id, 0), args.clone());
    if let Some(Event::AgentStart(e)) = &mut start.event {
        e.parent_loop_id = Some("s1.c.parent".into());
    }
    let mut end = tool_end(loop_id, result.clone());
    if let Some(Event::ToolExecutionEnd(e)) = &mut end.event {
        e.child_loop_id = Some("s1.c.1".into());
    }
    let loop_only = |make: fn(String) -> Event| event(make(loop_id.to_string()));
    vec![
        start,
        turn_start(loop_id, 0, 1),
        turn_request(loop_id, args.clone()),
        event(Event::MessageStart(proto::MessageStart {
            loop_id: loop_id.into(),
            message: Some(rich.clone()),
        })),
        event(Event::MessageUpdate(proto::MessageUpdate {
            loop_id: loop_id.into(),
            message: Some(rich.clone()),
            delta: None,
        })),
        event(Event::MessageEnd(proto::MessageEnd {
            loop_id: loop_id.into(),
            message: Some(rich.clone()),
        })),
        tool_start(loop_id, args.clone()),
        tool_update(loop_id, result.clone()),
        end,
        loop_only(|loop_id| {
            Event::ProgressMessage(proto::ProgressMessage {
                loop_id,
                text: "step".into(),
                ..Default::default()
            })
        }),
        loop_only(|loop_id| {
            Event::InputRejected(proto::InputRejected {
                loop_id,
                reason: "PII".into(),
            })
        }),
        turn_end_with(loop_id, rich.clone(), vec![rich.clone()]),
        loop_only(|loop_id| {
            Event::CompactionStarted(proto::CompactionStarted {
                loop_id,
                timestamp: Some(ts(5)),
                ..Default::default()
            })
        }),
        loop_only(|loop_id| {
            Event::CompactionEnded(proto::CompactionEnded {
                loop_id,
                timestamp: Some(ts(6)),
                ..Default::default()
            })
        }),
        loop_only(|loop_id| {
            Event::PrunApplied(proto::PrunApplied {
                loop_id,
                timestamp: Some(ts(7)),
                ..Default::default()
            })
        }),
        loop_only(|loop_id| {
            Event::RevertApplied(proto::RevertApplied {
                loop_id,
                category: "failure".into(),
                timestamp: Some(ts(8)),
                ..Default::default()
            })
        }),
        agent_end(loop_id, vec![user("q", 2), rich], 9),
        event(Event::ParallelLoopStart(proto::ParallelLoopStart {
            session_id: "s1".into(),
            loop_ids: vec![loop_id.into(), "s1.c.9".into()],
            timestamp: Some(ts(10)),
        })),
        event(Event::ParallelLoopEnd(proto::ParallelLoopEnd {
            session_id: "s1".into(),
            selected_loop_id: loop_id.into(),
            timestamp: Some(ts(11)),
            ..Default::default()
        })),
    ]
}

/// A place an event can hold free-form JSON: its field path, and the event holding
/// the given JSON there.
type Place = (&'static str, Box<dyn Fn(Value) -> AgentEvent>);

/// Every place an event can hold free-form JSON. A Struct place takes the JSON's
/// Struct, a ListValue place its list (else they wrap it, one level more).
fn json_places() -> Vec<Place> {
    let args = |json: Value| message(vec![text("x"), tool_call(json)]);
    vec![
        (
            "event.agent_start.metadata",
            Box::new(|json| with_metadata(agent_start("s1", LOOP, 0), json)),
        ),
        (
            "event.turn_request.payload",
            Box::new(|json| turn_request(LOOP, json)),
        ),
        (
            "event.tool_execution_start.args",
            Box::new(|json| tool_start(LOOP, json)),
        ),
        (
            "event.turn_end.message.content[1].tool_call.arguments",
            Box::new(move |json| turn_end(LOOP, args(json), 4)),
        ),
        (
            "event.turn_end.message.content[0].extra",
            Box::new(|json| turn_end(LOOP, message(vec![with_extra(text("x"), json)]), 4)),
        ),
        (
            "event.turn_end.message.extension_data",
            Box::new(|json| {
                let m = AgentMessage {
                    extension_data: Some(json),
                    ..message(vec![])
                };
                turn_end(LOOP, m, 4)
            }),
        ),
        (
            "event.turn_end.tool_results[1].tags",
            Box::new(|json| {
                let tagged = AgentMessage {
                    tags: Some(as_list(json)),
                    ..user("r", 3)
                };
                turn_end_with(LOOP, message(vec![]), vec![user("r", 3), tagged])
            }),
        ),
        (
            "event.message_start.message.provenance_hint",
            Box::new(|json| {
                let m = AgentMessage {
                    provenance_hint: Some(as_struct(json)),
                    ..message(vec![])
                };
                event(Event::MessageStart(proto::MessageStart {
                    loop_id: LOOP.into(),
                    message: Some(m),
                }))
            }),
        ),
        (
            "event.message_update.message.extra",
            Box::new(|json| {
                let m = AgentMessage {
                    extra: Some(as_struct(json)),
                    ..message(vec![])
                };
                event(Event::MessageUpdate(proto::MessageUpdate {
                    loop_id: LOOP.into(),
                    message: Some(m),
                    delta: None,
                }))
            }),
        ),
        (
            "event.message_end.message.content[0].tool_call.arguments",
            Box::new(|json| {
                event(Event::MessageEnd(proto::MessageEnd {
                    loop_id: LOOP.into(),
                    message: Some(message(vec![tool_call(json)])),
                }))
            }),
        ),
        (
            "event.agent_end.messages[1].content[1].tool_call.arguments",
            Box::new(move |json| agent_end(LOOP, vec![user("q", 2), args(json)], 9)),
        ),
        (
            "event.tool_execution_update.partial_result.details",
            Box::new(|json| tool_update(LOOP, tool_result(vec![], Some(json)))),
        ),
        (
            "event.tool_execution_update.partial_result.content[0].extra",
            Box::new(|json| {
                tool_update(LOOP, tool_result(vec![with_extra(text("x"), json)], None))
            }),
        ),
        (
            "event.tool_execution_end.result.details",
            Box::new(|json| tool_end(LOOP, tool_result(vec![], Some(json)))),
        ),
        (
            "event.tool_execution_end.result.content[0].tool_call.arguments",
            Box::new(|json| tool_end(LOOP, tool_result(vec![tool_call(json)], None))),
        ),
    ]
}

/// JSON `levels` deep that a place can hold exactly (lists for a ListValue place).
fn deep_json(path: &str, levels: usize) -> Value {
    if path.ends_with(".tags") {
        nested_list(levels)
    } else {
        nested(levels)
    }
}

/// The events that set an id other than the loop id to `id`, with the path they name.
fn other_ids(id: &str) -> Vec<(&'static str, AgentEvent)> {
    let start = |set: fn(&mut proto::AgentStart, String)| {
        let mut start = agent_start("s1", LOOP, 0);
        if let Some(Event::AgentStart(e)) = &mut start.event {
            set(e, id.to_string());
        }
        start
    };
    let mut child = tool_end(LOOP, tool_result(vec![], None));
    if let Some(Event::ToolExecutionEnd(e)) = &mut child.event {
        e.child_loop_id = Some(id.into());
    }
    let result_child = ToolResult {
        child_loop_id: Some(id.into()),
        ..tool_result(vec![], None)
    };
    vec![
        ("event.agent_start.agent_id", start(|e, id| e.agent_id = id)),
        (
            "event.agent_start.session_id",
            start(|e, id| e.session_id = id),
        ),
        (
            "event.agent_start.parent_loop_id",
            start(|e, id| e.parent_loop_id = Some(id)),
        ),
        (
            "event.parallel_loop_start.session_id",
            event(Event::ParallelLoopStart(proto::ParallelLoopStart {
                session_id: id.into(),
                loop_ids: vec![LOOP.into()],
                timestamp: Some(ts(1)),
            })),
        ),
        (
            "event.parallel_loop_start.loop_ids[1]",
            event(Event::ParallelLoopStart(proto::ParallelLoopStart {
                session_id: "s1".into(),
                loop_ids: vec![LOOP.into(), id.into()],
                timestamp: Some(ts(1)),
            })),
        ),
        (
            "event.parallel_loop_end.session_id",
            event(Event::ParallelLoopEnd(proto::ParallelLoopEnd {
                session_id: id.into(),
                selected_loop_id: LOOP.into(),
                timestamp: Some(ts(1)),
                ..Default::default()
            })),
        ),
        ("event.tool_execution_end.child_loop_id", child),
        (
            "event.tool_execution_end.result.child_loop_id",
            tool_end(LOOP, result_child.clone()),
        ),
        (
            "event.tool_execution_update.partial_result.child_loop_id",
            tool_update(LOOP, result_child),
        ),
    ]
}

// -- the cases ---------------------------------------------------------------------------

#[test]
fn the_defaults_are_the_servers_documented_ones() {
    let limits = EventLimits::default();
    assert_eq!(
        (
            limits.max_id_length,
            limits.max_value_depth,
            limits.max_request_bytes
        ),
        (256, 64, 16 * 1024 * 1024)
    );
    assert_eq!(limits.largest_event(), 16 * 1024 * 1024 - 64);
}

#[test]
fn valid_events_of_every_kind_pass() {
    let events = every_kind(LOOP);
    let kinds: std::collections::BTreeSet<&str> = events
        .iter()
        .map(|e| kind_name(e.event.as_ref().unwrap()))
        .collect();
    assert_eq!(kinds.len(), 19, "every kind: {kinds:?}");
    for event in &events {
        check(event, &EventLimits::default()).unwrap_or_else(|e| panic!("{e}"));
    }
    // An id of 256 two-byte characters is 256 characters; printable non-ASCII is fine.
    let long = "é".repeat(256);
    check(&turn_start(&long, 0, 1), &EventLimits::default()).unwrap();
    check(&turn_start("s1.ü\u{2028}.0", 0, 1), &EventLimits::default()).unwrap();
    // An empty AgentEvent has nothing to check (emit refuses it as NoEvent).
    check(&AgentEvent { event: None }, &EventLimits::default()).unwrap();
}

#[test]
fn every_loop_id_must_be_non_empty_short_and_free_of_control_characters() {
    let limits = EventLimits::default();
    for event in every_kind("") {
        let kind = kind_name(event.event.as_ref().unwrap());
        let field = match kind {
            "parallel_loop_start" => "loop_ids[0]",
            "parallel_loop_end" => "selected_loop_id",
            _ => "loop_id",
        };
        assert_eq!(
            refusal(&event, &limits),
            format!("event.{kind}.{field}: must not be empty")
        );
    }
    for event in every_kind("s1\nc") {
        let message = refusal(&event, &limits);
        assert!(
            message.ends_with(
                ": must not contain control characters or lone surrogates (U+000A at index 2)"
            ),
            "{message}"
        );
    }
    let short = EventLimits {
        max_id_length: 10,
        ..limits
    };
    assert_eq!(
        refusal(&turn_start("s1.c.0.long", 0, 1), &short),
        "event.turn_start.loop_id: must be at most 10 characters, not 11"
    );
    assert_eq!(
        refusal(&turn_start(&"é".repeat(257), 0, 1), &limits),
        "event.turn_start.loop_id: must be at most 256 characters, not 257"
    );
    // DEL and a C1 control, at their character (not byte) index.
    assert_eq!(
        refusal(&turn_start("ab\u{7f}", 0, 1), &limits),
        "event.turn_start.loop_id: must not contain control characters or lone surrogates \
         (U+007F at index 2)"
    );
    assert_eq!(
        refusal(&turn_start("éé\u{85}x", 0, 1), &limits),
        "event.turn_start.loop_id: must not contain control characters or lone surrogates \
         (U+0085 at index 2)"
    );
}

#[test]
fn every_other_id_is_checked_the_same_way() {
    let limits = EventLimits::default();
    for (path, event) in other_ids("") {
        assert_eq!(
            refusal(&event, &limits),
            format!("{path}: must not be empty")
        );
    }
    for (path, event) in other_ids(&"x".repeat(257)) {
        let expected = format!("{path}: must be at most 256 characters, not 257");
        assert_eq!(refusal(&event, &limits), expected);
    }
    for (path, event) in other_ids("a\tb") {
        let expected = format!(
            "{path}: must not contain control characters or lone surrogates (U+0009 at index 1)"
        );
        assert_eq!(refusal(&event, &limits), expected);
    }
}

#[test]
fn nan_and_infinity_are_refused_naming_every_json_field() {
    let limits = EventLimits::default();
    for (path, place) in json_places() {
        let json = obj(vec![
            ("ok", num(1.0)),
            ("x", list(vec![num(2.0), num(f64::NAN)])),
        ]);
        let expected = format!("{path}: contains nan, which JSON cannot carry");
        assert_eq!(refusal(&place(json), &limits), expected);
        let json = obj(vec![("y", nested_list(3)), ("z", num(f64::INFINITY))]);
        let expected = format!("{path}: contains inf, which JSON cannot carry");
        assert_eq!(refusal(&place(json), &limits), expected);
        let json = obj(vec![("z", num(f64::NEG_INFINITY))]);
        let expected = format!("{path}: contains -inf, which JSON cannot carry");
        assert_eq!(refusal(&place(json), &limits), expected);
    }
}

#[test]
fn json_may_nest_as_deep_as_the_limit_and_not_one_level_more() {
    let shallow = depth(8);
    for (path, place) in json_places() {
        check(&place(deep_json(path, 8)), &shallow).unwrap_or_else(|e| panic!("{e}"));
        let expected = format!("{path}: must not nest deeper than 8 levels");
        assert_eq!(refusal(&place(deep_json(path, 9)), &shallow), expected);
    }
    // Lists and Structs alike, mixed: each is one level.
    let mixed = obj(vec![("a", list(vec![obj(vec![("b", nested_list(5))])]))]);
    check(&tool_start(LOOP, mixed.clone()), &shallow).unwrap();
    let deeper = list(vec![mixed]);
    assert_eq!(
        refusal(&tool_start(LOOP, deeper), &shallow),
        "event.tool_execution_start.args: must not nest deeper than 8 levels"
    );
}

#[test]
fn an_event_larger_than_the_request_limit_is_refused_naming_the_limit() {
    let small = EventLimits {
        max_request_bytes: 4096,
        ..EventLimits::default()
    };
    let blob = |n: usize| {
        tool_start(
            LOOP,
            obj(vec![("blob", value(Kind::StringValue("x".repeat(n))))]),
        )
    };
    check(&blob(3000), &small).unwrap();
    let message = refusal(&blob(5000), &small);
    assert!(
        message.starts_with("event.tool_execution_start: "),
        "{message}"
    );
    assert!(
        message.ends_with("larger than the sidecar's request limit of 4096 bytes (loop s1.c.0)"),
        "{message}"
    );
    // The bound is the request limit less the framing around one event.
    let event = blob(10);
    check_event(&event, 4032, &small).unwrap();
    assert_eq!(
        check_event(&event, 4033, &small).unwrap_err().to_string(),
        "event.tool_execution_start: 4033 bytes, larger than the sidecar's request limit of \
         4096 bytes (loop s1.c.0)"
    );
    // A session-level event names no loop.
    let parallel = every_kind(LOOP).pop().unwrap();
    assert_eq!(
        check_event(&parallel, 5000, &small)
            .unwrap_err()
            .to_string(),
        "event.parallel_loop_end: 5000 bytes, larger than the sidecar's request limit of \
         4096 bytes"
    );
}

/// The deepest JSON the server's decoder takes at two places, and one level more
/// (measured against Python's protobuf; the parity test checks it again).
#[test]
fn json_too_deep_for_protobuf_to_decode_is_refused_below_the_depth_limit() {
    let limits = EventLimits::default();
    let undecodable = |kind: &str| {
        format!(
            "event.{kind}: nested too deeply to be decoded (protobuf decodes at most 100 nested \
             messages, some 30 levels of JSON)"
        )
    };
    let args = |json: Value| tool_start(LOOP, json);
    let call = |json: Value| turn_end(LOOP, message(vec![tool_call(json)]), 4);
    for (make, kind, structs, lists) in [
        (
            &args as &dyn Fn(Value) -> AgentEvent,
            "tool_execution_start",
            31,
            47,
        ),
        (&call, "turn_end", 30, 46),
    ] {
        check(&make(nested(structs)), &limits).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            refusal(&make(nested(structs + 1)), &limits),
            undecodable(kind)
        );
        check(&make(nested_list(lists)), &limits).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            refusal(&make(nested_list(lists + 1)), &limits),
            undecodable(kind)
        );
    }
    // The depth limit is checked first when both apply.
    assert_eq!(
        refusal(&args(nested(40)), &depth(32)),
        "event.tool_execution_start.args: must not nest deeper than 32 levels"
    );
}

#[test]
fn the_first_fault_is_named_in_the_python_clients_order() {
    let limits = EventLimits::default();
    // The loop id before the other ids, ids before JSON.
    let mut start = with_metadata(agent_start("", "", 0), num(f64::NAN));
    assert_eq!(
        refusal(&start, &limits),
        "event.agent_start.loop_id: must not be empty"
    );
    if let Some(Event::AgentStart(e)) = &mut start.event {
        e.loop_id = LOOP.into();
    }
    assert_eq!(
        refusal(&start, &limits),
        "event.agent_start.session_id: must not be empty"
    );
}

// -- parity with the Python client and the server ------------------------------------------

/// Every case above, once more: (event, limits).
fn parity_cases() -> Vec<(AgentEvent, EventLimits)> {
    let limits = EventLimits::default();
    let short = EventLimits {
        max_id_length: 10,
        ..limits
    };
    let mut cases: Vec<(AgentEvent, EventLimits)> = Vec::new();
    for loop_id in [LOOP, "", "s1\nc", "é\u{85}", "s1.c.0.long"] {
        cases.extend(every_kind(loop_id).into_iter().map(|e| (e, short)));
    }
    for id in ["", "a\tb", &"x".repeat(11)] {
        cases.extend(other_ids(id).into_iter().map(|(_, e)| (e, short)));
    }
    for (path, place) in json_places() {
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            cases.push((place(obj(vec![("x", list(vec![num(bad)]))])), limits));
        }
        cases.push((place(deep_json(path, 8)), depth(8)));
        cases.push((place(deep_json(path, 9)), depth(8)));
        for levels in 29..=33 {
            cases.push((place(nested(levels)), limits));
        }
        for levels in 45..=49 {
            cases.push((place(nested_list(levels)), limits));
        }
    }
    let blob = |n: usize| tool_start(LOOP, value(Kind::StringValue("x".repeat(n))));
    let small = EventLimits {
        max_request_bytes: 4096,
        ..limits
    };
    cases.extend([(blob(4000), small), (blob(4100), small)]);
    cases
}

/// Each case through the Python client's check and the server's validation:
/// (the client's message or "ok", the field the server names or "ok"), or
/// "undecodable" twice when Python's protobuf cannot even read the event alone.
fn python_verdicts(cases: &[(AgentEvent, EventLimits)]) -> Option<Vec<(String, String)>> {
    let script = "import sys, json\n\
        from agent_recorder.v1 import events_pb2\n\
        from agent_recorder.v1.recorder_service_pb2 import EventEnvelope\n\
        from google.protobuf.message import DecodeError\n\
        from recorder_client.checks import EventLimits, check_event\n\
        from recorder_client.delivery import encode_event\n\
        from recorder_server.errors import RecorderError\n\
        from recorder_server.validation import Limits, validate_envelopes\n\
        for line in sys.stdin:\n\
        \x20   ids, depth, size, data = line.split()\n\
        \x20   limits = dict(max_id_length=int(ids), max_value_depth=int(depth), max_request_bytes=int(size))\n\
        \x20   try:\n\
        \x20       event = events_pb2.AgentEvent.FromString(bytes.fromhex(data))\n\
        \x20   except DecodeError:\n\
        \x20       print(json.dumps(['undecodable', 'undecodable']))\n\
        \x20       continue\n\
        \x20   encoded, loop_id, kind = encode_event(event)\n\
        \x20   try:\n\
        \x20       check_event(event, encoded, kind, loop_id, EventLimits(**limits))\n\
        \x20       client = 'ok'\n\
        \x20   except ValueError as error:\n\
        \x20       client = str(error)\n\
        \x20   try:\n\
        \x20       validate_envelopes([EventEnvelope(event=event)], Limits(**limits))\n\
        \x20       server = 'ok'\n\
        \x20   except RecorderError as error:\n\
        \x20       server = error.metadata['field'].removeprefix('events[0].')\n\
        \x20   print(json.dumps([client, server]))\n";
    let mut input = String::new();
    for (event, limits) in cases {
        input += &format!(
            "{} {} {} {}\n",
            limits.max_id_length,
            limits.max_value_depth,
            limits.max_request_bytes,
            support::hex(&event.encode_to_vec())
        );
    }
    let output = support::python_lines(script, input)?;
    Some(
        output
            .iter()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect(),
    )
}

#[test]
fn the_rust_check_says_what_the_python_client_says_and_names_the_servers_field() {
    let cases = parity_cases();
    let Some(verdicts) = python_verdicts(&cases) else {
        return;
    };
    assert_eq!(verdicts.len(), cases.len());
    let mut refused = 0;
    for (i, ((event, limits), (client, server))) in cases.iter().zip(verdicts).enumerate() {
        let case = format!("case {i}: {}", kind_name(event.event.as_ref().unwrap()));
        if client == "undecodable" {
            let refused = check(event, limits).expect_err("undecodable").to_string();
            assert!(
                refused.contains("nested too deeply to be decoded"),
                "{refused}"
            );
            continue;
        }
        let ours = match check(event, limits) {
            Ok(()) => "ok".to_string(),
            Err(invalid) => {
                refused += 1;
                // The server does not check sizes or decodability (its transport does):
                // for the rest it names the same field.
                let whole_event = invalid.field.matches('.').count() == 1;
                if !whole_event {
                    assert_eq!(invalid.field, server, "{case}: {invalid}");
                }
                invalid.to_string()
            }
        };
        assert_eq!(ours, client, "{case}");
    }
    assert!(
        refused > cases.len() / 2,
        "{refused} of {} refused",
        cases.len()
    );
}
