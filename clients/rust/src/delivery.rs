//! Fire-and-forget event delivery over one Record stream, with proof of delivery.
//!
//! [`EventSender::emit`] only checks and encodes the event and queues its bytes,
//! so an agent never waits on the recorder; an event the server would refuse
//! ([`crate::checks`], by the limits of its `RecordReady`) fails there, naming
//! the field. A background task frames the queue into batches on one
//! bidirectional Record stream and keeps every event until the server
//! acknowledges its batch (the server acknowledges only after commit). When the
//! stream breaks, the task reconnects with jittered backoff and re-sends
//! everything unacknowledged, in order and as the same bytes; the server
//! recognises re-sent events by `(loop_id, sequence)`, so nothing is stored twice.
//! [`EventSender::flush`] is the proof: it returns only once every earlier event
//! is stored, and otherwise fails with a [`DeliveryError`] saying how many are not.
//!
//! Events are numbered per loop, in emit order, when they first go into a batch:
//! only then is the server's `RecordReady` known, and a server that does not store
//! streaming deltas (`MessageUpdate`) must not be sent numbered ones (the gap
//! would be refused), so those are skipped (counted in [`SenderStats::skipped`]).
//!
//! The same protocol and guarantee as the Python client's `EventSender`
//! (`recorder_client/delivery.py`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::{Code, Request, Streaming};

use crate::checks::{check_event, EventLimits};
use crate::client::RecorderClient;
use crate::error::{
    DeliveryError, EmitError, RefusedEvent, RejectedBatch, RpcError, SidecarUnreachable,
};
use crate::framing::{batch_request, hello_request, RawRecordCodec, ENVELOPE_FRAMING_MAX};
use crate::proto::{agent_event, AgentEvent, RecordReady, RecordResponse};

const RECORD_PATH: &str = "/agent_recorder.v1.RecorderService/Record";

/// Codes after which re-sending the same bytes cannot succeed; anything else (the
/// server restarting, shedding load, a dropped connection) is worth a reconnect.
const PERMANENT_STREAM_CODES: [Code; 8] = [
    Code::InvalidArgument,
    Code::FailedPrecondition,
    Code::OutOfRange,
    Code::Unauthenticated,
    Code::PermissionDenied,
    Code::Unimplemented,
    Code::NotFound,
    Code::AlreadyExists,
];

/// Batching, memory bounds and patience of an [`EventSender`].
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// A batch is sent when it holds this many events, ...
    pub max_batch_events: usize,
    /// ... or this many bytes of encoded `AgentEvent`s, ...
    pub max_batch_bytes: usize,
    /// ... or when this long has passed since its first event, or at once on a flush.
    pub linger: Duration,
    /// Everything not yet acknowledged (queued, in flight, awaiting a reconnect) counts
    /// against these bounds; `emit` fails with [`EmitError::QueueFull`] beyond them.
    pub max_pending_events: usize,
    /// The bound on pending encoded bytes (one event is always admitted when none is pending).
    pub max_pending_bytes: usize,
    /// How long the sender keeps reconnecting without getting an acknowledgement
    /// before it gives the pending events up (the next flush reports them).
    pub reconnect_deadline: Duration,
    /// First reconnect backoff; doubled after each failed attempt, with jitter.
    pub initial_backoff: Duration,
    /// Largest reconnect backoff.
    pub max_backoff: Duration,
    /// Deadline of [`EventSender::flush`] when it is given none.
    pub flush_timeout: Duration,
    /// Identifies the writer for session leases; random when `None`.
    pub writer_id: Option<String>,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            max_batch_events: 500,
            max_batch_bytes: 1024 * 1024,
            linger: Duration::from_millis(5),
            max_pending_events: 100_000,
            max_pending_bytes: 64 * 1024 * 1024,
            reconnect_deadline: Duration::from_secs(60),
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            flush_timeout: Duration::from_secs(30),
            writer_id: None,
        }
    }
}

impl DeliveryConfig {
    /// Checks the bounds; `RecorderClient::sender` refuses a config that fails this.
    pub fn validate(&self) -> Result<(), String> {
        for (name, value) in [
            ("max_batch_events", self.max_batch_events),
            ("max_batch_bytes", self.max_batch_bytes),
            ("max_pending_events", self.max_pending_events),
        ] {
            if value < 1 {
                return Err(format!("DeliveryConfig.{name} must be at least 1"));
            }
        }
        if self.max_pending_bytes < self.max_batch_bytes {
            return Err("DeliveryConfig.max_pending_bytes must be >= max_batch_bytes".into());
        }
        Ok(())
    }
}

/// Event counts since the sender was made; `pending` = not yet resolved either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SenderStats {
    /// Taken by `emit` (and `emit_wait`).
    pub emitted: u64,
    /// Stored (acknowledged and not refused).
    pub acknowledged: u64,
    /// In batches the server refused whole.
    pub rejected: u64,
    /// Refused alone by the server (validation or a rule); reported by the next flush.
    pub refused: u64,
    /// Given up undelivered (reconnect deadline, permanent stream error).
    pub failed: u64,
    /// MessageUpdates not sent because the server said it does not store them.
    pub skipped: u64,
    /// Not yet resolved either way: queued, in flight or awaiting a reconnect.
    pub pending: u64,
    /// Events sent again on a new stream because their batch was not acknowledged.
    pub resent: u64,
    /// Batches sent (a re-sent batch counts once).
    pub batches: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Update,
    End,
    Other,
}

/// An event as the sender keeps it: its encoded bytes, its loop (none for the
/// session-level Parallel* events) and what the numbering needs to know of its kind.
struct Queued {
    data: Vec<u8>,
    loop_id: Option<String>,
    kind: Kind,
}

/// Events sent together, taken from ordinals `first..first + span` in emit order;
/// `count < span` when MessageUpdates the server does not store were skipped.
struct Batch {
    request: Bytes,
    first: u64,
    count: u64,
    nbytes: usize,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Queued>,
    queued_bytes: usize,
    pending_events: usize,
    pending_bytes: usize,
    next_sequence: HashMap<String, u64>,
    /// Sent (or about to be re-sent) and not yet answered, by batch id = send order.
    inflight: BTreeMap<u64, Batch>,
    next_batch_id: u64,
    /// Every event has an ordinal (its position in emit order): queued events hold
    /// `[batched, emitted)`, in-flight batches the ranges below.
    emitted: u64,
    batched: u64,
    acknowledged: u64,
    rejected: u64,
    refused: u64,
    failed: u64,
    skipped: u64,
    resent: u64,
    /// Reported, then forgotten, by the next flush.
    rejections: Vec<RejectedBatch>,
    refusals: Vec<RefusedEvent>,
    unreported_failed: usize,
    last_cause: Option<RpcError>,
    /// The largest ordinal a running flush waits for: its events are sent without lingering.
    flush_wanted: u64,
    stores_streaming: bool,
    refusal: Option<String>,
    /// A `wait_ready` asked for a stream even with nothing to deliver (until the
    /// sender next gives up).
    want_stream: bool,
    /// The current stream has had its `RecordReady`.
    ready: bool,
    /// Why the last stream ended or could not be opened.
    stream_error: Option<RpcError>,
    /// How often the delivery task gave up (reconnect deadline, permanent refusal).
    give_ups: u64,
}

impl State {
    fn has_pending(&self) -> bool {
        !self.queue.is_empty() || !self.inflight.is_empty()
    }

    fn wants_stream(&self) -> bool {
        self.want_stream || self.has_pending()
    }

    /// The delivery task gave up: pending events fail with `cause`, and a stream is
    /// no longer wanted for its own sake.
    fn give_up(&mut self, cause: RpcError) {
        self.stream_error = Some(cause.clone());
        self.want_stream = false;
        self.give_ups += 1;
        self.fail_pending(cause);
    }

    fn fits(&self, nbytes: usize, config: &DeliveryConfig) -> bool {
        self.pending_events == 0
            || (self.pending_events < config.max_pending_events
                && self.pending_bytes + nbytes <= config.max_pending_bytes)
    }

    /// The ordinal of the oldest event not yet resolved (all before it are).
    fn watermark(&self) -> u64 {
        self.inflight
            .values()
            .next()
            .map_or(self.batched, |batch| batch.first)
    }

    /// Events before ordinal `target` not yet resolved (exact unless a batch straddles it).
    fn unresolved_before(&self, target: u64) -> usize {
        let inflight: u64 = self
            .inflight
            .values()
            .filter(|batch| batch.first < target)
            .map(|batch| batch.count.min(target - batch.first))
            .sum();
        (inflight + target.saturating_sub(self.batched)) as usize
    }

    /// Everything to report, which is then forgotten (each problem is reported once).
    fn error(&mut self, unacknowledged: usize) -> DeliveryError {
        let failed = std::mem::take(&mut self.unreported_failed);
        DeliveryError {
            unacknowledged,
            rejections: std::mem::take(&mut self.rejections),
            refusals: std::mem::take(&mut self.refusals),
            failed,
            cause: if failed > 0 {
                self.last_cause.clone()
            } else {
                None
            },
        }
    }

    fn resolve(&mut self, events: u64, nbytes: usize) {
        self.pending_events -= events as usize;
        self.pending_bytes -= nbytes;
    }

    fn batch_is_due(&self, config: &DeliveryConfig) -> bool {
        self.queue.len() >= config.max_batch_events
            || self.queued_bytes >= config.max_batch_bytes
            || self.flush_wanted > self.batched
    }

    /// Numbers the next events and frames them as a batch (`None` if none went in)
    /// within `config`'s bounds and, framing included, the server's request limit.
    fn take_batch(&mut self, config: &DeliveryConfig, limits: &EventLimits) -> Option<Bytes> {
        let largest = limits.largest_event();
        let mut taken: Vec<(Option<u64>, Queued)> = Vec::new();
        let (mut span, mut nbytes, mut skipped, mut skipped_bytes) = (0u64, 0usize, 0u64, 0usize);
        while taken.len() < config.max_batch_events {
            let Some(next) = self.queue.front() else {
                break;
            };
            let size = next.data.len();
            let framed = nbytes + (taken.len() + 1) * ENVELOPE_FRAMING_MAX + size;
            if !taken.is_empty() && (nbytes + size > config.max_batch_bytes || framed > largest) {
                break;
            }
            let queued = self.queue.pop_front().expect("front exists");
            span += 1;
            if size > largest {
                self.queued_bytes -= size;
                self.refuse_unsendable(&queued.data, limits.max_request_bytes);
                continue;
            }
            if queued.kind == Kind::Update && !self.stores_streaming {
                skipped += 1;
                skipped_bytes += size;
                continue;
            }
            let sequence = self.number(&queued);
            nbytes += size;
            taken.push((sequence, queued));
        }
        self.queued_bytes -= nbytes + skipped_bytes;
        let first = self.batched;
        self.batched += span;
        self.skipped += skipped;
        self.resolve(skipped, skipped_bytes);
        if taken.is_empty() {
            return None;
        }
        self.next_batch_id += 1;
        let batch_id = self.next_batch_id;
        let request = batch_request(
            batch_id,
            taken
                .iter()
                .map(|(sequence, queued)| (*sequence, queued.data.as_slice())),
        );
        self.inflight.insert(
            batch_id,
            Batch {
                request: request.clone(),
                first,
                count: taken.len() as u64,
                nbytes,
            },
        );
        Some(request)
    }

    /// The next sequence of the event's loop (none for the session-level events).
    fn number(&mut self, queued: &Queued) -> Option<u64> {
        let loop_id = queued.loop_id.as_ref()?;
        let next = self.next_sequence.get(loop_id).copied().unwrap_or(0);
        if queued.kind == Kind::End {
            // Nothing may follow AgentEnd: the counter need not outlive the loop.
            self.next_sequence.remove(loop_id);
        } else {
            self.next_sequence.insert(loop_id.clone(), next + 1);
        }
        Some(next)
    }

    /// An event larger than the server takes (its limit came after the event was
    /// emitted, checked by the defaults): refused here, never sent or numbered,
    /// and reported by the next flush as the Python client reports it.
    fn refuse_unsendable(&mut self, data: &[u8], limit: usize) {
        let message = format!(
            "{} bytes, larger than the sidecar's request limit of {limit} bytes",
            data.len()
        );
        self.refusals.push(RefusedEvent {
            error: RpcError {
                code: Code::ResourceExhausted,
                message,
                reason: "TOO_LARGE".into(),
                metadata: HashMap::new(),
            },
            holds_slot: false,
            sequence: None,
            event: AgentEvent::decode(data).ok(),
        });
        self.refused += 1;
        self.resolve(1, data.len());
    }

    /// Applies an acknowledgement; false for an answer to a batch already answered.
    fn on_ack(&mut self, response: &RecordResponse) -> bool {
        let Some(batch) = self.inflight.remove(&response.batch_id) else {
            return false;
        };
        match &response.rejection {
            Some(rejection) => {
                self.rejected += batch.count;
                self.rejections
                    .push(RejectedBatch::new(rejection, &batch.request));
            }
            None => {
                let refused = response.refusals.len() as u64;
                if refused > 0 {
                    self.refusals
                        .extend(RefusedEvent::from_ack(&response.refusals, &batch.request));
                }
                self.refused += refused;
                self.acknowledged += batch.count - refused;
            }
        }
        self.resolve(batch.count, batch.nbytes);
        true
    }

    /// Gives up everything unacknowledged; the next flush reports it with the cause.
    fn fail_pending(&mut self, cause: RpcError) {
        let queued = self.queue.len() as u64;
        let count = queued + self.inflight.values().map(|b| b.count).sum::<u64>();
        let nbytes = self.queued_bytes + self.inflight.values().map(|b| b.nbytes).sum::<usize>();
        self.batched += queued;
        self.queue.clear();
        self.queued_bytes = 0;
        self.inflight.clear();
        self.failed += count;
        self.unreported_failed += count as usize;
        self.last_cause = Some(cause);
        self.resolve(count, nbytes);
    }
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the delivery task: events queued, a batch filled, a flush waiting.
    wake: Notify,
    /// Wakes flushes and blocked emits: events were resolved.
    progress: Notify,
    config: DeliveryConfig,
    limits: AnnouncedLimits,
}

/// The limits emit checks events by: the server's defaults until a `RecordReady`
/// announces others. Read without the state's lock, so emit never waits on the
/// delivery task for them.
struct AnnouncedLimits {
    max_id_length: AtomicUsize,
    max_value_depth: AtomicUsize,
    max_request_bytes: AtomicUsize,
}

impl AnnouncedLimits {
    fn new() -> Self {
        let defaults = EventLimits::default();
        AnnouncedLimits {
            max_id_length: AtomicUsize::new(defaults.max_id_length),
            max_value_depth: AtomicUsize::new(defaults.max_value_depth),
            max_request_bytes: AtomicUsize::new(defaults.max_request_bytes),
        }
    }

    fn get(&self) -> EventLimits {
        EventLimits {
            max_id_length: self.max_id_length.load(Ordering::Relaxed),
            max_value_depth: self.max_value_depth.load(Ordering::Relaxed),
            max_request_bytes: self.max_request_bytes.load(Ordering::Relaxed),
        }
    }

    /// Takes the limits a server announced; one it leaves at 0 keeps the default.
    fn announce(&self, ready: &RecordReady) {
        let defaults = EventLimits::default();
        let or_default = |value: u64, default: usize| match usize::try_from(value) {
            Ok(0) => default,
            Ok(value) => value,
            Err(_) => usize::MAX,
        };
        let id_length = or_default(ready.max_id_length.into(), defaults.max_id_length);
        let value_depth = or_default(ready.max_value_depth.into(), defaults.max_value_depth);
        let request_bytes = or_default(ready.max_request_bytes, defaults.max_request_bytes);
        self.max_id_length.store(id_length, Ordering::Relaxed);
        self.max_value_depth.store(value_depth, Ordering::Relaxed);
        self.max_request_bytes
            .store(request_bytes, Ordering::Relaxed);
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves counters that are still consistent
        // enough to report; never poison the agent's emit path.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// What a server's `RecordReady` says: whether it stores streaming deltas, and
    /// the limits emit checks events by from now on.
    fn on_ready(&self, ready: &RecordReady) {
        self.limits.announce(ready);
        let mut state = self.lock();
        state.stores_streaming = ready.include_streaming_events;
        state.ready = true;
        drop(state);
        self.progress.notify_waiters(); // a wait_ready may be waiting
    }

    /// Waits on `notify` until `ready` holds for the state.
    async fn wait_until(&self, notify: &Notify, ready: impl Fn(&State) -> bool) {
        loop {
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if ready(&self.lock()) {
                return;
            }
            notified.await;
        }
    }
}

/// Aborts the delivery task when the last handle of a sender goes away.
struct Tasks {
    run: tokio::task::AbortHandle,
    watch: JoinHandle<()>,
}

impl Drop for Tasks {
    fn drop(&mut self) {
        self.run.abort();
        self.watch.abort();
    }
}

/// Delivers [`AgentEvent`]s to the recorder; see the module docs. Cheap to clone:
/// clones share one queue and one stream.
///
/// Make one with [`RecorderClient::sender`] inside a Tokio runtime; call
/// [`close`](Self::close) (or at least [`flush`](Self::flush)) before dropping the
/// last handle, since unacknowledged events live only in this process.
#[derive(Clone)]
pub struct EventSender {
    shared: Arc<Shared>,
    target: Arc<str>,
    writer_id: Arc<str>,
    _tasks: Arc<Tasks>,
}

impl std::fmt::Debug for EventSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSender")
            .field("writer_id", &self.writer_id)
            .field("stats", &self.stats())
            .finish()
    }
}

impl EventSender {
    pub(crate) fn new(client: RecorderClient, config: DeliveryConfig) -> Self {
        let writer_id: Arc<str> = config
            .writer_id
            .clone()
            .unwrap_or_else(random_writer_id)
            .into();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            progress: Notify::new(),
            config,
            limits: AnnouncedLimits::new(),
        });
        let run = tokio::spawn(run(shared.clone(), client.clone(), writer_id.clone()));
        let run_abort = run.abort_handle();
        let watched = shared.clone();
        // A crashed delivery task must not leave flush waiting for its deadline.
        let watch = tokio::spawn(async move {
            let Err(error) = run.await else { return };
            if error.is_cancelled() {
                return;
            }
            let mut state = watched.lock();
            state.refusal = Some(format!("event sender stopped: {error}"));
            state.give_up(RpcError::local(Code::Internal, error.to_string()));
            drop(state);
            watched.progress.notify_waiters();
        });
        EventSender {
            shared,
            target: client.target().into(),
            writer_id,
            _tasks: Arc::new(Tasks {
                run: run_abort,
                watch,
            }),
        }
    }

    /// The writer id the sender says hello with.
    pub fn writer_id(&self) -> &str {
        &self.writer_id
    }

    /// Queues an event for delivery and returns at once; never waits on the network.
    ///
    /// The event is encoded here, so the caller keeps it. Events are numbered per
    /// loop in the order of these calls (AgentStart is 0 of its loop). Fails with
    /// [`EmitError::Invalid`] naming the field when the server would refuse the
    /// event (see [`crate::checks`]; by the limits of the server's `RecordReady`
    /// once a stream has had one, its defaults before), and with
    /// [`EmitError::QueueFull`] when the pending bounds are reached: nothing of a
    /// refused event is queued, nothing is dropped silently.
    pub fn emit(&self, event: &AgentEvent) -> Result<(), EmitError> {
        let queued = encode(event, &self.shared.limits.get())?;
        let mut state = self.shared.lock();
        self.admit(&mut state, queued).map_err(|(error, _)| error)
    }

    /// Like [`emit`](Self::emit), but when the sender is full waits up to `timeout`
    /// for room before failing with [`EmitError::QueueFull`].
    pub async fn emit_wait(&self, event: &AgentEvent, timeout: Duration) -> Result<(), EmitError> {
        let mut queued = encode(event, &self.shared.limits.get())?;
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.shared.progress.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.admit(&mut self.shared.lock(), queued) {
                Ok(()) => return Ok(()),
                Err((EmitError::QueueFull { .. }, back)) => queued = back,
                Err((error, _)) => return Err(error),
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let mut state = self.shared.lock();
                return self.admit(&mut state, queued).map_err(|(error, _)| error);
            }
        }
    }

    fn admit(&self, state: &mut State, queued: Queued) -> Result<(), (EmitError, Queued)> {
        let config = &self.shared.config;
        if let Some(refusal) = &state.refusal {
            return Err((EmitError::Closed(refusal.clone()), queued));
        }
        let nbytes = queued.data.len();
        if !state.fits(nbytes, config) {
            let full = EmitError::QueueFull {
                pending_events: state.pending_events,
                pending_bytes: state.pending_bytes,
                max_events: config.max_pending_events,
                max_bytes: config.max_pending_bytes,
            };
            return Err((full, queued));
        }
        state.pending_events += 1;
        state.pending_bytes += nbytes;
        state.queue.push_back(queued);
        state.queued_bytes += nbytes;
        state.emitted += 1;
        let len = state.queue.len();
        if len == 1
            || len >= config.max_batch_events
            || state.queued_bytes >= config.max_batch_bytes
        {
            self.shared.wake.notify_one();
        }
        Ok(())
    }

    /// Returns once every event emitted before this call is stored.
    ///
    /// Fails when the deadline (`flush_timeout` when `None`) passes first, naming
    /// how many events are still unacknowledged, and also when, since the previous
    /// flush, any batch was rejected, any event refused, or events were given up.
    pub async fn flush(&self, timeout: Option<Duration>) -> Result<(), DeliveryError> {
        let deadline = Instant::now() + timeout.unwrap_or(self.shared.config.flush_timeout);
        let target = {
            let mut state = self.shared.lock();
            state.flush_wanted = state.flush_wanted.max(state.emitted);
            state.emitted
        };
        self.shared.wake.notify_one(); // skip the linger: someone is waiting
        let waited = tokio::time::timeout_at(
            deadline,
            self.shared
                .wait_until(&self.shared.progress, |state| state.watermark() >= target),
        )
        .await;
        let mut state = self.shared.lock();
        if waited.is_err() && state.watermark() < target {
            let unresolved = state.unresolved_before(target);
            return Err(state.error(unresolved));
        }
        if !state.rejections.is_empty() || !state.refusals.is_empty() || state.unreported_failed > 0
        {
            return Err(state.error(0));
        }
        Ok(())
    }

    /// Flushes, then stops delivering. Later emits fail with [`EmitError::Closed`].
    pub async fn close(&self, timeout: Option<Duration>) -> Result<(), DeliveryError> {
        self.shared
            .lock()
            .refusal
            .get_or_insert_with(|| "event sender is closed".into());
        self.shared.progress.notify_waiters(); // a wait_ready fails at once
        let flushed = self.flush(timeout).await;
        self._tasks.run.abort();
        flushed
    }

    /// Connects now and returns once the current Record stream has had the server's
    /// `RecordReady` (at once if it already has), so that the limits the server
    /// announces ([`limits`](Self::limits)) apply to the next [`emit`](Self::emit).
    ///
    /// A stream is then kept up even with nothing to deliver. Fails with
    /// [`SidecarUnreachable`] naming the last connection error when no stream is
    /// up within `timeout`, and at once when the sender gives up (a refusal no
    /// reconnect can change, such as a wrong token) or is closed.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), SidecarUnreachable> {
        let deadline = Instant::now() + timeout;
        let give_ups = {
            let mut state = self.shared.lock();
            if state.refusal.is_none() && state.ready {
                return Ok(());
            }
            state.want_stream = true;
            state.give_ups
        };
        self.shared.wake.notify_one();
        let done =
            |state: &State| state.refusal.is_some() || state.ready || state.give_ups > give_ups;
        let waiting = self.shared.wait_until(&self.shared.progress, done);
        let _ = tokio::time::timeout_at(deadline, waiting).await;
        let state = self.shared.lock();
        let waited = match &state.refusal {
            None if state.ready => return Ok(()),
            Some(refusal) => refusal.clone(),
            None if state.give_ups > give_ups => "gave up".to_string(),
            None => format!("no Record stream within {} s", timeout.as_secs_f64()),
        };
        Err(SidecarUnreachable {
            target: self.target.to_string(),
            cause: state.stream_error.clone(),
            waited,
        })
    }

    /// The limits `emit` checks events by: the server's defaults until a Record
    /// stream's `RecordReady` announced the server's own.
    pub fn limits(&self) -> EventLimits {
        self.shared.limits.get()
    }

    /// Counts of what happened to the events emitted so far.
    pub fn stats(&self) -> SenderStats {
        let state = self.shared.lock();
        SenderStats {
            emitted: state.emitted,
            acknowledged: state.acknowledged,
            rejected: state.rejected,
            refused: state.refused,
            failed: state.failed,
            skipped: state.skipped,
            pending: state.emitted
                - state.acknowledged
                - state.rejected
                - state.refused
                - state.failed
                - state.skipped,
            resent: state.resent,
            batches: state.next_batch_id,
        }
    }
}

fn encode(event: &AgentEvent, limits: &EventLimits) -> Result<Queued, EmitError> {
    let kind = match &event.event {
        None => return Err(EmitError::NoEvent),
        Some(agent_event::Event::MessageUpdate(_)) => Kind::Update,
        Some(agent_event::Event::AgentEnd(_)) => Kind::End,
        Some(_) => Kind::Other,
    };
    let data = event.encode_to_vec();
    check_event(event, data.len(), limits).map_err(EmitError::Invalid)?;
    Ok(Queued {
        data,
        loop_id: crate::event_loop_id(event).map(str::to_string),
        kind,
    })
}

fn random_writer_id() -> String {
    format!("{:016x}{:016x}", random_u64(), random_u64())
}

/// Per-process random keys of std's hasher, mixed with the clock: enough for ids and jitter.
fn random_u64() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    hasher.finish()
}

// -- the background task ----------------------------------------------------------------

async fn run(shared: Arc<Shared>, client: RecorderClient, writer_id: Arc<str>) {
    loop {
        shared.wait_until(&shared.wake, State::wants_stream).await;
        if let Err(cause) = deliver(&shared, &client, &writer_id).await {
            shared.lock().give_up(cause);
            shared.progress.notify_waiters();
        }
    }
}

/// Keeps a stream up while there is anything to deliver or a `wait_ready` asked for one.
///
/// The reconnect deadline restarts whenever a stream got an acknowledgement (or,
/// with nothing to deliver, its `RecordReady`), so only a sender that makes no
/// progress for that long gives up.
async fn deliver(
    shared: &Arc<Shared>,
    client: &RecorderClient,
    writer_id: &str,
) -> Result<(), RpcError> {
    let config = &shared.config;
    let mut deadline = Instant::now() + config.reconnect_deadline;
    let mut backoff = config.initial_backoff;
    while shared.lock().wants_stream() {
        let (progress, error) = stream_once(shared, client, writer_id).await;
        let idle_was_ready = {
            let mut state = shared.lock();
            state.stream_error = Some(error.clone());
            std::mem::take(&mut state.ready) && !state.has_pending()
        };
        if progress || idle_was_ready {
            deadline = Instant::now() + config.reconnect_deadline;
            backoff = config.initial_backoff;
        }
        if PERMANENT_STREAM_CODES.contains(&error.code) {
            return Err(error);
        }
        let pause = backoff.mul_f64((random_u64() % 1000) as f64 / 1000.0);
        if Instant::now() + pause >= deadline {
            return Err(error);
        }
        tokio::time::sleep(pause).await;
        backoff = (backoff * 2).min(config.max_backoff);
    }
    Ok(())
}

/// Runs one Record stream until it breaks; says whether it made progress and why it ended.
async fn stream_once(
    shared: &Arc<Shared>,
    client: &RecorderClient,
    writer_id: &str,
) -> (bool, RpcError) {
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    tx.try_send(hello_request(writer_id))
        .expect("a fresh channel has room for hello");
    let mut grpc = tonic::client::Grpc::new(client.channel().clone());
    if let Err(error) = grpc.ready().await {
        return (false, RpcError::local(Code::Unavailable, error.to_string()));
    }
    let mut request = Request::new(ReceiverStream::new(rx));
    client.auth().apply(&mut request);
    let path = PathAndQuery::from_static(RECORD_PATH);
    let mut stream = match grpc.streaming(request, path, RawRecordCodec).await {
        Ok(response) => response.into_inner(),
        Err(status) => return (false, status.into()),
    };
    // Nothing is numbered before the server's RecordReady says what it stores.
    match stream.message().await {
        Ok(Some(RecordResponse {
            ready: Some(ready), ..
        })) => shared.on_ready(&ready),
        Ok(Some(_)) => {
            let error = "the server answered hello without RecordReady";
            return (false, RpcError::local(Code::Internal, error));
        }
        Ok(None) => return (false, ended()),
        Err(status) => return (false, status.into()),
    }
    let writer = tokio::spawn(write(shared.clone(), tx));
    let outcome = read_acks(shared, &mut stream).await;
    writer.abort();
    outcome
}

fn ended() -> RpcError {
    RpcError::local(Code::Unavailable, "the server ended the Record stream")
}

async fn read_acks(shared: &Shared, stream: &mut Streaming<RecordResponse>) -> (bool, RpcError) {
    let mut progress = false;
    loop {
        let response = match stream.message().await {
            Ok(Some(response)) => response,
            Ok(None) => return (progress, ended()),
            Err(status) => return (progress, status.into()),
        };
        if let Some(ready) = &response.ready {
            shared.on_ready(ready);
            continue;
        }
        if let Some(rejection) = &response.rejection {
            if rejection.code == Code::Unavailable as i32 {
                // Nothing of the batch was stored and later batches may be refused only
                // because of it (a sequence gap), so their answers are not trusted:
                // everything from this batch on goes again on a new stream.
                let error = RpcError {
                    code: Code::Unavailable,
                    message: rejection.message.clone(),
                    reason: rejection.reason.clone(),
                    metadata: rejection.metadata.clone().into_iter().collect(),
                };
                return (progress, error);
            }
        }
        if shared.lock().on_ack(&response) {
            progress = true;
            shared.progress.notify_waiters();
        }
    }
}

/// Re-sends what is unacknowledged, then sends new batches as they form.
async fn write(shared: Arc<Shared>, tx: mpsc::Sender<Bytes>) {
    let resend: Vec<Bytes> = {
        let mut state = shared.lock();
        let requests: Vec<Bytes> = state.inflight.values().map(|b| b.request.clone()).collect();
        state.resent += state.inflight.values().map(|b| b.count).sum::<u64>();
        requests
    };
    for request in resend {
        if tx.send(request).await.is_err() {
            return; // the call is over; the reader reports its status
        }
    }
    loop {
        batch_formed(&shared).await;
        let limits = shared.limits.get();
        let request = shared.lock().take_batch(&shared.config, &limits);
        shared.progress.notify_waiters(); // skipped updates may satisfy a flush
        if let Some(request) = request {
            if tx.send(request).await.is_err() {
                return;
            }
        }
    }
}

/// Waits for queued events, then up to `linger` for a full batch (or a flush).
async fn batch_formed(shared: &Shared) {
    shared
        .wait_until(&shared.wake, |state| !state.queue.is_empty())
        .await;
    let config = &shared.config;
    if config.linger.is_zero() || shared.lock().batch_is_due(config) {
        return;
    }
    let due = shared.wait_until(&shared.wake, |state| state.batch_is_due(config));
    let _ = tokio::time::timeout(config.linger, due).await;
}
