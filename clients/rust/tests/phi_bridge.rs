//! The bridge is lossless on every AgentEvent variant: each line of the
//! repository's phi-json fixture (every variant, every message role and content
//! block kind) is read by phi-core's own serde into a `phi_core::AgentEvent`; the
//! bridge converts it to protobuf, the sidecar's Python codec writes that back as
//! phi-json, and the result must equal the JSON phi-core itself writes for the event.
#![cfg(feature = "phi-core")]

mod support;

use agent_recorder_client::phi::to_proto;
use prost::Message;
use serde_json::Value;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/data/phi_events.jsonl"
);

/// Each encoded AgentEvent written back as phi-json by the Python codec.
fn python_exports(events: &[Vec<u8>]) -> Option<Vec<Value>> {
    let script = "import sys, json\n\
                  from agent_recorder.v1 import events_pb2\n\
                  from recorder_client.phi_json_events import event_to_json\n\
                  for line in sys.stdin:\n\
                  \x20   event = events_pb2.AgentEvent.FromString(bytes.fromhex(line.strip()))\n\
                  \x20   print(json.dumps(event_to_json(event)))\n";
    let input: Vec<String> = events.iter().map(|bytes| support::hex(bytes)).collect();
    let output = support::python_lines(script, input.join("\n"))?;
    Some(
        output
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect(),
    )
}

#[test]
fn every_variant_goes_through_the_bridge_and_back_to_phi_cores_json() {
    let text = std::fs::read_to_string(FIXTURE).unwrap();
    let mut phi_json = Vec::new();
    let mut encoded = Vec::new();
    let mut kinds = std::collections::BTreeSet::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let json: Value = serde_json::from_str(line).unwrap();
        // The fixture's TurnRequest payload is opaque JSON, not phi-core's typed
        // payload; real TurnRequests go through the bridge in phi_core_proof.rs.
        let Ok(event) = serde_json::from_value::<phi_core::AgentEvent>(json.clone()) else {
            assert_eq!(json["type"], "TurnRequest", "phi-core refuses {line}");
            continue;
        };
        kinds.insert(json["type"].as_str().unwrap().to_string());
        let converted = to_proto(&event).unwrap_or_else(|e| panic!("{e}: {line}"));
        encoded.push(converted.encode_to_vec());
        phi_json
            .push(serde_json::from_str::<Value>(&serde_json::to_string(&event).unwrap()).unwrap());
    }
    assert_eq!(kinds.len(), 18, "every variant but TurnRequest: {kinds:?}");
    let Some(exported) = python_exports(&encoded) else {
        return;
    };
    assert_eq!(exported.len(), phi_json.len());
    for (ours, theirs) in exported.iter().zip(&phi_json) {
        assert_eq!(ours, theirs);
    }
}
