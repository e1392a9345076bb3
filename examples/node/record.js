#!/usr/bin/env node
// Records one agent loop into agent-recorder from Node.js, then reads it back.
//
//   node record.js [TARGET] [--session ID]
//
// TARGET is unix:///path/to/recorder.sock or host:port; without it the sidecar is
// found as every client finds it: $AGENT_RECORDER_TARGET, else the default socket
// ($XDG_RUNTIME_DIR/agent-recorder/recorder.sock, else
// ~/.local/share/agent-recorder/run/recorder.sock). The bearer token, if the
// sidecar wants one, comes from $AGENT_RECORDER_TOKEN or the file
// $AGENT_RECORDER_TOKEN_FILE names. The contract is loaded
// from ../../protos at run time (no generated code): proto-loader resolves the
// google/protobuf/*.proto imports from the well-known types protobufjs bundles.
// Exits 0 only when what GetSession returns matches what was sent.
"use strict";

const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");
const crypto = require("node:crypto");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTOS = path.resolve(__dirname, "..", "..", "protos");
const MODEL = "claude-sonnet-4";
const PROVIDER = "anthropic";
const AGENT = "node-example";
// Sent as the User-Agent (gRPC appends its own), with the version of the repo the
// example came with, read from its one place as the protos are.
const USER_AGENT = `agent-recorder-node-example/${repoVersion()}`;

function repoVersion() {
  const file = path.resolve(__dirname, "..", "..", "recorder_common", "version.py");
  const match = /^__version__: Final = "([^"]+)"/m.exec(fs.readFileSync(file, "utf8"));
  return match ? match[1] : "unknown";
}

function parseArgs(argv) {
  const args = { target: null, session: null };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--session") args.session = argv[++i];
    else if (!args.target) args.target = argv[i];
    else throw new Error(`unexpected argument ${argv[i]}`);
  }
  args.target = args.target || defaultTarget();
  return args;
}

// The same defaults as the Python client and `agent-recorder serve` (recorder_client/defaults.py).
function defaultTarget() {
  if (process.env.AGENT_RECORDER_TARGET) return process.env.AGENT_RECORDER_TARGET;
  const runtime = process.env.XDG_RUNTIME_DIR
    ? path.join(process.env.XDG_RUNTIME_DIR, "agent-recorder")
    : path.join(
        process.env.XDG_DATA_HOME || path.join(os.homedir(), ".local", "share"),
        "agent-recorder",
        "run",
      );
  return `unix://${path.join(runtime, "recorder.sock")}`;
}

// $AGENT_RECORDER_TOKEN, else the file $AGENT_RECORDER_TOKEN_FILE names (trimmed), else none.
function defaultToken() {
  if (process.env.AGENT_RECORDER_TOKEN) return process.env.AGENT_RECORDER_TOKEN;
  const file = process.env.AGENT_RECORDER_TOKEN_FILE;
  return file ? fs.readFileSync(file, "utf8").trim() : null;
}

function loadService() {
  const definition = protoLoader.loadSync("agent_recorder/v1/recorder_service.proto", {
    includeDirs: [PROTOS],
    keepCase: true, // field names exactly as in the .proto files
    longs: String, // uint64 token counts and sequences without precision loss
    enums: String,
    defaults: true,
    oneofs: true, // each oneof also reports which field is set
  });
  return grpc.loadPackageDefinition(definition).agent_recorder.v1.RecorderService;
}

// A google.protobuf.Timestamp at `ms` milliseconds since the epoch.
function timestamp(ms) {
  return { seconds: String(Math.floor(ms / 1000)), nanos: (ms % 1000) * 1e6 };
}

// Free-form JSON as a google.protobuf.Value (tool arguments, details). The
// well-known types come from protobufjs's bundled definitions, whose field names
// are camelCase whatever keepCase says: structValue, not struct_value.
function value(json) {
  if (json === null) return { nullValue: "NULL_VALUE" };
  if (Array.isArray(json)) return { listValue: { values: json.map(value) } };
  switch (typeof json) {
    case "string":
      return { stringValue: json };
    case "number":
      return { numberValue: json };
    case "boolean":
      return { boolValue: json };
    default:
      return {
        structValue: {
          fields: Object.fromEntries(Object.entries(json).map(([k, v]) => [k, value(v)])),
        },
      };
  }
}

// A google.protobuf.Value read back (oneofs: true names the set field in `kind`) as JSON.
function plain(v) {
  switch (v.kind) {
    case "structValue":
      return Object.fromEntries(Object.entries(v.structValue.fields).map(([k, x]) => [k, plain(x)]));
    case "listValue":
      return v.listValue.values.map(plain);
    case "nullValue":
      return null;
    default:
      return v[v.kind];
  }
}

function text(role, body, ms, extra = {}) {
  return { role, content: [{ text: { text: body } }], timestamp: timestamp(ms), ...extra };
}

function usage(input, output) {
  return { input, output, total_tokens: input + output };
}

// The events of one loop: a turn that calls a tool, then a turn that answers.
function loopEvents(sessionId, loopId, base) {
  const callId = "call-read-1";
  const args = { path: "README.md", max_lines: 20 };
  const user = text("MESSAGE_ROLE_USER", "What does the README say?", base + 1);
  const ask = text("MESSAGE_ROLE_ASSISTANT", "Reading it.", base + 2, {
    model: MODEL,
    provider: PROVIDER,
    stop_reason: "STOP_REASON_TOOL_USE",
    usage: usage(120, 15),
  });
  ask.content.push({ tool_call: { id: callId, name: "read_file", arguments: value(args) } });
  const result = text("MESSAGE_ROLE_TOOL_RESULT", "# agent-recorder ...", base + 4, {
    tool_call_id: callId,
    tool_name: "read_file",
  });
  const answer = text("MESSAGE_ROLE_ASSISTANT", "It describes a recording sidecar.", base + 6, {
    model: MODEL,
    provider: PROVIDER,
    stop_reason: "STOP_REASON_STOP",
    usage: usage(180, 25),
  });
  const loop = { loop_id: loopId };
  const tool = { ...loop, tool_call_id: callId, tool_name: "read_file" };
  const turns = [
    // Turn 0: the model asks for a tool; the tool runs; the turn ends with its result.
    [
      {
        agent_start: {
          agent_id: AGENT,
          session_id: sessionId,
          loop_id: loopId,
          continuation_kind: { initial: {} },
          timestamp: timestamp(base),
          config_snapshot: { model: MODEL, provider: PROVIDER },
        },
      },
      {
        turn_start: {
          ...loop,
          turn_index: 0,
          timestamp: timestamp(base + 1),
          triggered_by: "TURN_TRIGGER_USER",
        },
      },
      { message_end: { ...loop, message: user } },
      { message_end: { ...loop, message: ask } },
      { tool_execution_start: { ...tool, args: value(args) } },
      {
        tool_execution_end: {
          ...tool,
          result: { content: [{ text: { text: "# agent-recorder ..." } }] },
          is_error: false,
        },
      },
      { message_end: { ...loop, message: result } },
      {
        turn_end: {
          ...loop,
          message: ask,
          usage: usage(120, 15),
          timestamp: timestamp(base + 5),
          tool_results: [result],
        },
      },
    ],
    // Turn 1: the model answers; the loop ends.
    [
      {
        turn_start: {
          ...loop,
          turn_index: 1,
          timestamp: timestamp(base + 5),
          triggered_by: "TURN_TRIGGER_CONTINUATION",
        },
      },
      { message_end: { ...loop, message: answer } },
      {
        turn_end: { ...loop, message: answer, usage: usage(180, 25), timestamp: timestamp(base + 7) },
      },
      {
        agent_end: {
          ...loop,
          messages: [user, ask, result, answer],
          usage: usage(300, 40),
          timestamp: timestamp(base + 8),
        },
      },
    ],
  ];
  return { turns, callId, args };
}

function call(client, method, request, metadata) {
  const deadline = new Date(Date.now() + 10_000);
  return new Promise((resolve, reject) => {
    client[method](request, metadata, { deadline }, (err, response) =>
      err ? reject(err) : resolve(response),
    );
  });
}

function callMetadata(token) {
  const metadata = new grpc.Metadata();
  if (token) metadata.set("authorization", `Bearer ${token}`);
  return metadata;
}

// JSON with object keys sorted: a Struct's fields are a map and come back in any order.
function canonical(json) {
  return JSON.stringify(json, (_, v) =>
    v && typeof v === "object" && !Array.isArray(v)
      ? Object.fromEntries(Object.keys(v).sort().map((k) => [k, v[k]]))
      : v,
  );
}

// What GetSession returned, compared with what was sent; a list of mismatches.
function check(session, sent) {
  const problems = [];
  const expect = (what, actual, wanted) => {
    if (canonical(actual) !== canonical(wanted)) {
      problems.push(`${what}: got ${JSON.stringify(actual)}, sent ${JSON.stringify(wanted)}`);
    }
  };
  expect("session.agent_id", session.agent_id, AGENT);
  expect("loop count", session.loops.length, 1);
  const loop = session.loops[0] || { turns: [], events: [], usage: {}, config: {} };
  expect("loop.loop_id", loop.loop_id, sent.loopId);
  expect("loop.status", loop.status, "LOOP_STATUS_COMPLETED");
  expect("loop.config.model", loop.config && loop.config.model, MODEL);
  expect("loop.usage", [loop.usage.input, loop.usage.output], ["300", "40"]);
  expect("loop.messages", loop.messages.length, 4);
  expect("turn count", loop.turns.length, 2);
  const kinds = loop.events.map((e) => e.event.event);
  expect("event kinds", kinds, sent.events.map((e) => Object.keys(e)[0]));
  expect("event sequences", loop.events.map((e) => e.sequence), kinds.map((_, i) => String(i)));
  const turn0 = loop.turns[0] || { tool_results: [], output_message: { content: [] } };
  expect("turn 0 tool result", turn0.tool_results.map((m) => m.tool_call_id), [sent.callId]);
  const calls = turn0.output_message.content.filter((block) => block.tool_call);
  expect("tool call arguments", calls.map((b) => plain(b.tool_call.arguments)), [sent.args]);
  const starts = loop.events.filter((e) => e.event.tool_execution_start);
  expect("tool execution args", starts.map((e) => plain(e.event.tool_execution_start.args)), [
    sent.args,
  ]);
  return { loop, problems };
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const sessionId = args.session || crypto.randomUUID().replace(/-/g, "");
  const loopId = `${sessionId}.default.0`;
  const RecorderService = loadService();
  const client = new RecorderService(args.target, grpc.credentials.createInsecure(), {
    "grpc.primary_user_agent": USER_AGENT,
  });
  const metadata = callMetadata(defaultToken());
  try {
    const { turns, callId, args: toolArgs } = loopEvents(sessionId, loopId, Date.now());
    const events = turns.flat();
    // One Append per turn, as an agent would send them while it runs; each is
    // all or nothing and answered once committed.
    for (const turn of turns) {
      await call(
        client,
        "Append",
        { writer_id: `node-example-${process.pid}`, events: turn.map((event) => ({ event })) },
        metadata,
      );
    }
    const { session } = await call(client, "GetSession", { session_id: sessionId }, metadata);
    const { loop, problems } = check(session, { loopId, callId, events, args: toolArgs });
    const summary = {
      session_id: session.session_id,
      agent_id: session.agent_id,
      loop_id: loop.loop_id,
      status: loop.status,
      turns: loop.turns.length,
      events: loop.events.length,
      usage: { input: loop.usage.input, output: loop.usage.output },
      matches: problems.length === 0,
    };
    console.log(JSON.stringify(summary));
    for (const problem of problems) console.error(`mismatch: ${problem}`);
    return problems.length === 0 ? 0 : 1;
  } finally {
    client.close();
  }
}

main().then(
  (code) => process.exit(code),
  (err) => {
    console.error(`error: ${err.message || err}`);
    process.exit(2);
  },
);
