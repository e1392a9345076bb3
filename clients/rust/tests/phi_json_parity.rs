//! The Rust phi-json reader agrees with the Python codec (the one the sidecar's
//! ingest and export use) on every event line of the repository's fixture, which
//! holds every AgentEvent variant, every message role and content block kind,
//! extra keys, and the edge cases of times and numbers; and bad input is refused
//! with the path of the offending value.

mod support;

use agent_recorder_client::phi_json::event_from_json;
use agent_recorder_client::proto::AgentEvent;
use prost::Message;
use serde_json::{json, Value};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/data/phi_events.jsonl"
);

/// Each line as the Python codec encodes it (hex of the AgentEvent bytes, one per line).
fn python_encodings(lines: &[&str]) -> Option<Vec<AgentEvent>> {
    let script = "import sys, json\n\
                  from recorder_client.phi_json_events import event_from_json\n\
                  for line in sys.stdin:\n\
                  \x20   print(event_from_json(json.loads(line)).SerializeToString().hex())\n";
    let output = support::python_lines(script, lines.join("\n"))?;
    Some(
        output
            .iter()
            .map(|hex| {
                let bytes: Vec<u8> = (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                    .collect();
                AgentEvent::decode(bytes.as_slice()).unwrap()
            })
            .collect(),
    )
}

#[test]
fn every_fixture_line_reads_as_the_python_codec_reads_it() {
    let text = std::fs::read_to_string(FIXTURE).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let Some(expected) = python_encodings(&lines) else {
        return;
    };
    assert_eq!(expected.len(), lines.len());
    let mut kinds = std::collections::BTreeSet::new();
    for (line, python) in lines.iter().zip(expected) {
        let json: Value = serde_json::from_str(line).unwrap();
        kinds.insert(json["type"].as_str().unwrap().to_string());
        let ours = event_from_json(&json).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(ours, python, "{line}");
    }
    assert_eq!(
        kinds.len(),
        19,
        "the fixture covers every variant: {kinds:?}"
    );
}

#[test]
fn bad_input_names_the_offending_path() {
    let cases = [
        (json!({"type": "Nope"}), "type", "unknown event type"),
        (
            json!({"type": "TurnStart", "loop_id": "l", "turn_index": -1,
                   "timestamp": "2026-01-01T00:00:00Z", "triggered_by": "User"}),
            "turn_index",
            "outside",
        ),
        (
            json!({"type": "TurnStart", "loop_id": "l", "turn_index": 0,
                   "timestamp": "yesterday", "triggered_by": "User"}),
            "timestamp",
            "RFC 3339",
        ),
        (
            json!({"type": "MessageEnd", "loop_id": "l",
                   "message": {"role": "user", "timestamp": 1,
                               "content": [{"type": "text", "text": "a"}, {"type": "video"}]}}),
            "message.content[1].type",
            "expected one of",
        ),
        (
            json!({"type": "InputRejected", "loop_id": "l"}),
            "reason",
            "missing",
        ),
    ];
    for (json, path, problem) in cases {
        let error = event_from_json(&json).unwrap_err();
        assert_eq!(error.path, path, "{error}");
        assert!(error.problem.contains(problem), "{error}");
    }
}
