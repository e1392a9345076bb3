//! Shared by the integration tests: a real sidecar process on a Unix socket in a
//! temp dir with a real SQLite file, and builders of realistic events.
//!
//! The sidecar is the repository's `agent-recorder serve`, found as
//! `$AGENT_RECORDER_BIN`, else `../../.venv/bin/agent-recorder` (what `make setup`
//! installs), else on `PATH`. Without it a test skips with a message, unless
//! `AGENT_RECORDER_REQUIRE_SIDECAR=1` (set by `make test`) makes that a failure.
#![allow(dead_code)] // each test binary uses its own part of this module

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agent_recorder_client::proto::{
    self, agent_event::Event, content_block::Block, AgentEvent, AgentMessage, ContentBlock,
};
use agent_recorder_client::{ConnectOptions, RecorderClient};
use prost_types::Timestamp;

const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The `agent-recorder` command, or `None` (after saying why) when the test must skip.
pub fn sidecar_binary() -> Option<PathBuf> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let candidates = std::env::var_os("AGENT_RECORDER_BIN")
        .map(PathBuf::from)
        .into_iter()
        .chain([manifest.join("../../.venv/bin/agent-recorder")])
        .chain(std::env::var_os("PATH").into_iter().flat_map(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("agent-recorder"))
                .collect::<Vec<_>>()
        }));
    for candidate in candidates {
        if candidate.is_file() {
            return Some(candidate);
        }
    }
    let message = "no agent-recorder sidecar found ($AGENT_RECORDER_BIN, ../../.venv/bin, PATH): \
                   run `make setup` in the repository root";
    if std::env::var_os("AGENT_RECORDER_REQUIRE_SIDECAR").is_some() {
        panic!("{message}");
    }
    eprintln!("SKIPPED: {message}");
    None
}

/// Bytes as lowercase hex, the way the Python scripts read them (`bytes.fromhex`).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs `script` with the sidecar's Python (the repository's venv) on `input` as
/// its stdin and returns its stdout lines, or `None` (after saying why) when the
/// test must skip; a failing script fails the test.
pub fn python_lines(script: &str, input: String) -> Option<Vec<String>> {
    let python = sidecar_binary()?.with_file_name("python");
    let mut child = Command::new(python)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python");
    let mut stdin = child.stdin.take().expect("piped stdin");
    // Written from a thread: a script that answers as it reads could fill its stdout.
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let output = child.wait_with_output().expect("python ran");
    writer
        .join()
        .expect("writer thread")
        .expect("stdin written");
    assert!(output.status.success(), "the Python script failed");
    let text = String::from_utf8(output.stdout).expect("UTF-8 output");
    Some(text.lines().map(str::to_owned).collect())
}

/// A sidecar process that a test can kill (SIGKILL) and restart on the same file and socket.
pub struct Sidecar {
    binary: PathBuf,
    dir: tempfile::TempDir,
    /// `host:port` when listening on TCP; the Unix socket in `dir` otherwise.
    tcp: Option<String>,
    args: Vec<String>,
    child: Option<Child>,
    starts: u32,
}

impl Sidecar {
    /// Starts `agent-recorder serve` with extra `args`; `None` when the test must skip.
    pub fn start(args: &[&str]) -> Option<Sidecar> {
        Self::start_on(None, args)
    }

    /// Like `start`, listening on a free loopback TCP port instead of a socket.
    pub fn start_tcp(args: &[&str]) -> Option<Sidecar> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        Self::start_on(Some(format!("127.0.0.1:{port}")), args)
    }

    fn start_on(tcp: Option<String>, args: &[&str]) -> Option<Sidecar> {
        let binary = sidecar_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("ar-rs-")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let mut sidecar = Sidecar {
            binary,
            dir,
            tcp,
            args: args.iter().map(|a| a.to_string()).collect(),
            child: None,
            starts: 0,
        };
        sidecar.spawn();
        Some(sidecar)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("r.sock")
    }

    pub fn db(&self) -> PathBuf {
        self.dir.path().join("recorder.db")
    }

    pub fn target(&self) -> String {
        match &self.tcp {
            Some(address) => address.clone(),
            None => format!("unix://{}", self.socket().display()),
        }
    }

    pub fn binary(&self) -> &Path {
        &self.binary
    }

    pub fn client(&self) -> RecorderClient {
        RecorderClient::connect(ConnectOptions {
            target: Some(self.target()),
            ..Default::default()
        })
        .expect("client")
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "already running");
        let _ = std::fs::remove_file(self.socket());
        self.starts += 1;
        let log = std::fs::File::create(self.dir.path().join(format!("serve-{}.log", self.starts)))
            .expect("log file");
        let child = Command::new(&self.binary)
            .arg("serve")
            .arg("--db")
            .arg(self.db())
            .arg("--listen")
            .arg(self.target())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn agent-recorder serve");
        self.child = Some(child);
        self.wait_until_serving();
    }

    /// The socket accepts connections (the server binds it only once it is ready).
    fn wait_until_serving(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("sidecar exited with {status}: {}", self.log());
            }
            let up = match &self.tcp {
                Some(address) => std::net::TcpStream::connect(address).is_ok(),
                None => std::os::unix::net::UnixStream::connect(self.socket()).is_ok(),
            };
            if up {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("sidecar did not start in {START_TIMEOUT:?}: {}", self.log());
    }

    /// Everything the sidecar printed so far (for failure messages).
    pub fn log(&self) -> String {
        (1..=self.starts)
            .map(|n| {
                std::fs::read_to_string(self.dir.path().join(format!("serve-{n}.log")))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n--- restart ---\n")
    }

    /// SIGKILL, as a crash: nothing is flushed or closed.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL");
            child.wait().expect("reap");
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Runs another `agent-recorder` subcommand against this sidecar; returns stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let output = Command::new(&self.binary)
            .args(args)
            .env("AGENT_RECORDER_TARGET", self.target())
            .output()
            .expect("run agent-recorder");
        assert!(
            output.status.success(),
            "agent-recorder {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("utf-8 output")
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.kill();
    }
}

// -- event builders -------------------------------------------------------------------

pub const EPOCH: i64 = 1_700_000_000;

/// EPOCH + offset milliseconds.
pub fn ts(offset_ms: i64) -> Timestamp {
    Timestamp {
        seconds: EPOCH + offset_ms.div_euclid(1000),
        nanos: (offset_ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

pub fn event(event: Event) -> AgentEvent {
    AgentEvent { event: Some(event) }
}

pub fn text(text: &str) -> ContentBlock {
    ContentBlock {
        block: Some(Block::Text(proto::TextContent { text: text.into() })),
        extra: None,
    }
}

pub fn user(words: &str, at: i64) -> AgentMessage {
    AgentMessage {
        role: proto::MessageRole::User as i32,
        content: vec![text(words)],
        timestamp: Some(ts(at)),
        ..Default::default()
    }
}

pub fn assistant(words: &str, at: i64) -> AgentMessage {
    AgentMessage {
        role: proto::MessageRole::Assistant as i32,
        content: vec![text(words)],
        timestamp: Some(ts(at)),
        model: "claude-sonnet-4".into(),
        provider: "anthropic".into(),
        usage: Some(usage(10, 2)),
        stop_reason: proto::StopReason::Stop as i32,
        ..Default::default()
    }
}

pub fn usage(input: u64, output: u64) -> proto::Usage {
    proto::Usage {
        input,
        output,
        total_tokens: input + output,
        ..Default::default()
    }
}

pub fn agent_start(session: &str, loop_id: &str, at: i64) -> AgentEvent {
    event(Event::AgentStart(proto::AgentStart {
        agent_id: "agent-rs".into(),
        session_id: session.into(),
        loop_id: loop_id.into(),
        continuation_kind: Some(proto::ContinuationKind {
            kind: Some(proto::continuation_kind::Kind::Initial(
                proto::InitialContinuation {},
            )),
        }),
        timestamp: Some(ts(at)),
        ..Default::default()
    }))
}

pub fn turn_start(loop_id: &str, index: u32, at: i64) -> AgentEvent {
    let trigger = if index == 0 {
        proto::TurnTrigger::User
    } else {
        proto::TurnTrigger::Continuation
    };
    event(Event::TurnStart(proto::TurnStart {
        loop_id: loop_id.into(),
        turn_index: index,
        timestamp: Some(ts(at)),
        triggered_by: trigger as i32,
    }))
}

pub fn message_end(loop_id: &str, message: AgentMessage) -> AgentEvent {
    event(Event::MessageEnd(proto::MessageEnd {
        loop_id: loop_id.into(),
        message: Some(message),
    }))
}

pub fn message_update(loop_id: &str, message: AgentMessage, delta: &str) -> AgentEvent {
    event(Event::MessageUpdate(proto::MessageUpdate {
        loop_id: loop_id.into(),
        message: Some(message),
        delta: Some(proto::MessageDelta {
            delta: Some(proto::message_delta::Delta::Text(delta.into())),
        }),
    }))
}

pub fn turn_end(loop_id: &str, message: AgentMessage, at: i64) -> AgentEvent {
    event(Event::TurnEnd(proto::TurnEnd {
        loop_id: loop_id.into(),
        message: Some(message),
        usage: Some(usage(10, 2)),
        timestamp: Some(ts(at)),
        tool_results: vec![],
    }))
}

pub fn tool_start(loop_id: &str) -> AgentEvent {
    event(Event::ToolExecutionStart(proto::ToolExecutionStart {
        loop_id: loop_id.into(),
        tool_call_id: "call-1".into(),
        tool_name: "bash".into(),
        args: Some(prost_types::Value {
            kind: Some(prost_types::value::Kind::StringValue("ls".into())),
        }),
    }))
}

pub fn progress(loop_id: &str, words: &str) -> AgentEvent {
    event(Event::ProgressMessage(proto::ProgressMessage {
        loop_id: loop_id.into(),
        tool_call_id: "call-1".into(),
        tool_name: "bash".into(),
        text: words.into(),
    }))
}

pub fn agent_end(loop_id: &str, messages: Vec<AgentMessage>, at: i64) -> AgentEvent {
    event(Event::AgentEnd(proto::AgentEnd {
        loop_id: loop_id.into(),
        messages,
        usage: Some(usage(10, 2)),
        timestamp: Some(ts(at)),
        rejection: None,
    }))
}

/// A loop of `1 + 3 * turns + progress + 1` events: start, per turn a TurnStart,
/// MessageEnd and TurnEnd, `progress` ProgressMessages in the first turn, then AgentEnd.
pub fn loop_events(
    session: &str,
    loop_id: &str,
    turns: u32,
    progress_count: u32,
) -> Vec<AgentEvent> {
    let mut events = vec![agent_start(session, loop_id, 0)];
    let mut messages = Vec::new();
    for turn in 0..turns {
        let at = i64::from(turn) * 10;
        events.push(turn_start(loop_id, turn, at + 1));
        let question = user(&format!("{loop_id} question {turn}"), at + 2);
        events.push(message_end(loop_id, question.clone()));
        if turn == 0 {
            for n in 0..progress_count {
                events.push(progress(loop_id, &format!("step {n}")));
            }
        }
        let answer = assistant(&format!("{loop_id} answer {turn}"), at + 3);
        events.push(turn_end(loop_id, answer.clone(), at + 4));
        messages.extend([question, answer]);
    }
    events.push(agent_end(loop_id, messages, i64::from(turns) * 10 + 5));
    events
}

/// The stored events of a loop, in sequence order, checked to be numbered 0..n.
pub async fn stored_events(client: &RecorderClient, loop_id: &str) -> Vec<AgentEvent> {
    let record = client.get_loop(loop_id).await.expect("GetLoop");
    let sequences: Vec<u64> = record.events.iter().map(|e| e.sequence).collect();
    let expected: Vec<u64> = (0..sequences.len() as u64).collect();
    assert_eq!(
        sequences, expected,
        "loop {loop_id}: stored sequences are not 0..n"
    );
    record
        .events
        .into_iter()
        .map(|e| e.event.expect("stored event"))
        .collect()
}
