//! What a running agent can reach: its events, heartbeats and logs, the clock, and the stop
//! signal. The same context serves native agents and the wasm sandbox's host functions.
//!
//! A run that waits on I/O (a model, a tool, any slow call) does so inside
//! [`RunContext::waiting`], which hands the run's CPU slot back to its pool for the wait.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::Poll;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::Notify;

use crate::queue::ErrorInfo;
use crate::registry::{ByteRate, Limits, MIN_EVENT_CHARGE};
use crate::store::recording::{Record, RecorderHandle};
use crate::store::{EventRecord, RunStatus};
use crate::time::now_ms;

/// Why the host cut a run short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortReason {
    /// A cancel request.
    Cancelled,
    /// The run's wall-clock limit passed.
    Timeout,
    /// A long-lived agent ignored a stop request for longer than its grace period.
    StopTimeout,
    /// The worker lost the job's lease; the result would be dropped anyway.
    LeaseLost,
    /// The host is shutting down and the grace period for in-flight jobs ran out.
    Shutdown,
    /// The run's log output went past its event byte budget or byte rate.
    EventLimit,
}

impl AbortReason {
    /// The run status and error recorded for a run aborted for this reason.
    pub fn failure(self) -> super::Failure {
        let (status, tag, message) = match self {
            AbortReason::Cancelled => (RunStatus::Cancelled, "Cancelled", "cancelled by request"),
            AbortReason::Timeout => (
                RunStatus::Timeout,
                "Timeout",
                "the run exceeded its wall-clock limit",
            ),
            AbortReason::StopTimeout => (
                RunStatus::Interrupted,
                "StopTimeout",
                "the agent did not stop within its grace period after a stop request",
            ),
            AbortReason::LeaseLost => (
                RunStatus::Lost,
                "LeaseLost",
                "the worker lost the job's lease; the result was dropped",
            ),
            AbortReason::Shutdown => (
                RunStatus::Interrupted,
                "Shutdown",
                "the host shut down before the run finished; the job was handed back",
            ),
            AbortReason::EventLimit => (
                RunStatus::Error,
                "EventLimit",
                "the run's log output went past its event byte budget (max-event-total-bytes) \
                 or byte rate (max-event-bytes-per-second, event-byte-burst)",
            ),
        };
        super::Failure {
            status,
            error: ErrorInfo::new(tag, message),
            // Retrying is the queue's business for timeouts only; the others are decided by the
            // pool (a cancel is final, a lost lease or shutdown hands the job to someone else).
            retry: self == AbortReason::Timeout,
        }
    }
}

/// Stop and abort flags of one run, shared by the pool and the sandbox.
#[derive(Debug, Default)]
pub struct Control {
    stop: AtomicBool,
    abort: OnceLock<AbortReason>,
    changed: Notify,
}

impl Control {
    /// New flags, all clear.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Asks the agent to stop gracefully.
    pub fn request_stop(&self) {
        if !self.stop.swap(true, Ordering::SeqCst) {
            self.changed.notify_waiters();
        }
    }

    /// Whether a graceful stop was requested.
    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Cuts the run short. The first reason wins.
    pub fn abort(&self, reason: AbortReason) {
        if self.abort.set(reason).is_ok() {
            self.changed.notify_waiters();
        }
    }

    /// Why the run was cut short, if it was.
    pub fn aborted(&self) -> Option<AbortReason> {
        self.abort.get().copied()
    }

    /// Resolves once a stop was requested. (An abort is not a stop: an aborted run is cut off,
    /// not asked to wind down.)
    pub async fn stopped(&self) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.stop_requested() {
                return;
            }
            changed.await;
        }
    }

    /// Resolves with the reason once the run is aborted.
    pub async fn abort_requested(&self) -> AbortReason {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(reason) = self.aborted() {
                return reason;
            }
            changed.await;
        }
    }
}

/// The pool's side of [`RunContext::waiting`]: how a run trades its CPU slot for a waiting
/// permit and back. Implemented by the pool for each run it starts.
pub trait WaitAdmission: Send + Sync + 'static {
    /// A waiting section of the run opens.
    fn enter(&self);
    /// Resolves once the run has given its CPU slot back and holds a waiting permit instead (at
    /// once if it already has, or has no slot to give). Pending for as long as no waiting permit
    /// is free, which may be forever; dropping the future gives up trying.
    fn trade(&self) -> BoxFuture<'_, ()>;
    /// A waiting section closes, at the call. Once the last open one has closed, the returned
    /// future takes a CPU slot back (and then gives the waiting permit up); dropping it leaves
    /// the run without a slot.
    fn leave(&self) -> BoxFuture<'static, ()>;
}

/// The handle an agent uses to talk to the host during one run. Cheap to clone.
#[derive(Clone)]
pub struct RunContext {
    inner: Arc<Inner>,
}

struct Inner {
    run_id: Arc<str>,
    job_id: String,
    agent_id: String,
    attempt: i64,
    tenant_id: Option<String>,
    user_id: Option<String>,
    root_job_id: Option<String>,
    control: Arc<Control>,
    recorder: RecorderHandle,
    next_seq: AtomicU64,
    budget: EventBudget,
    emitted: AtomicU64,
    logged: AtomicU64,
    bytes: Mutex<ByteMeter>,
    admission: Option<Arc<dyn WaitAdmission>>,
}

/// The limits on a run's events that its context enforces: the part of [`Limits`] about
/// event counts and bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventBudget {
    /// Most events the agent may emit (`log` events aside). `None`: unlimited.
    pub max_events: Option<u64>,
    /// Most bytes of events (agent and `log` events, each charged at least
    /// [`MIN_EVENT_CHARGE`]). `None`: unlimited.
    pub max_bytes: Option<u64>,
    /// How fast event bytes may be written. `None`: unlimited.
    pub byte_rate: Option<ByteRate>,
    /// Most `log` events. `None`: unlimited.
    pub max_log_events: Option<u64>,
}

/// The least share of `max_log_bytes` one `log` event stands for: a run gets at most one log
/// event per this many bytes of its log budget, so a budget of empty lines cannot turn into as
/// many rows as it has bytes.
pub const MIN_LOG_EVENT_BYTES: u64 = 8;

impl EventBudget {
    /// The budget of a run held to `limits`.
    pub fn of(limits: &Limits) -> Self {
        Self {
            max_events: limits.max_events,
            max_bytes: limits.max_event_total_bytes,
            byte_rate: limits.event_byte_rate,
            max_log_events: Some((limits.max_log_bytes / MIN_LOG_EVENT_BYTES).max(1)),
        }
    }
}

/// An open waiting section; closed in the background if dropped before it is closed.
struct Section(Option<Arc<dyn WaitAdmission>>);

impl Drop for Section {
    fn drop(&mut self) {
        if let Some(admission) = self.0.take() {
            let reacquire = admission.leave();
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(reacquire);
            }
        }
    }
}

/// Event bytes charged so far, and the byte rate's token bucket.
#[derive(Debug)]
struct ByteMeter {
    spent: u64,
    tokens: f64,
    refilled: Instant,
}

impl std::fmt::Debug for RunContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunContext")
            .field("run_id", &self.inner.run_id)
            .field("job_id", &self.inner.job_id)
            .finish()
    }
}

/// Identifies the run a context belongs to.
#[derive(Debug, Clone)]
pub struct RunIdentity {
    /// The run.
    pub run_id: Arc<str>,
    /// Its job.
    pub job_id: String,
    /// The agent.
    pub agent_id: String,
    /// Claim number of the job.
    pub attempt: i64,
    /// The tenant the job belongs to, if any.
    pub tenant_id: Option<String>,
    /// The user the job was started for, if any.
    pub user_id: Option<String>,
    /// The root of the job's tree, if the job is a child (spawned by another job's run).
    pub root_job_id: Option<String>,
}

impl RunContext {
    /// A context whose events go to `recorder`. `first_seq` is the sequence number of the next
    /// event (the pool has already written `run_start` as 1).
    pub(crate) fn new(
        identity: RunIdentity,
        control: Arc<Control>,
        recorder: RecorderHandle,
        first_seq: u64,
        limits: Option<&Limits>,
        admission: Option<Arc<dyn WaitAdmission>>,
    ) -> Self {
        let budget = limits.map(EventBudget::of).unwrap_or_default();
        Self {
            inner: Arc::new(Inner {
                run_id: identity.run_id,
                job_id: identity.job_id,
                agent_id: identity.agent_id,
                attempt: identity.attempt,
                tenant_id: identity.tenant_id,
                user_id: identity.user_id,
                root_job_id: identity.root_job_id,
                control,
                recorder,
                next_seq: AtomicU64::new(first_seq),
                budget,
                emitted: AtomicU64::new(0),
                logged: AtomicU64::new(0),
                bytes: Mutex::new(ByteMeter {
                    spent: 0,
                    tokens: budget.byte_rate.map_or(0.0, |rate| rate.burst as f64),
                    refilled: Instant::now(),
                }),
                admission,
            }),
        }
    }

    /// A context for running an agent outside a pool (embedding, benchmarks): its events,
    /// heartbeats and logs are discarded. `limits` (none: no limits) bound its events.
    pub fn detached(identity: RunIdentity, limits: Option<&Limits>) -> Self {
        Self::new(
            identity,
            Control::new(),
            RecorderHandle::discarding(),
            1,
            limits,
            None,
        )
    }

    /// The run id.
    pub fn run_id(&self) -> &str {
        &self.inner.run_id
    }

    /// The job id.
    pub fn job_id(&self) -> &str {
        &self.inner.job_id
    }

    /// The agent id.
    pub fn agent_id(&self) -> &str {
        &self.inner.agent_id
    }

    /// The tenant the run's job belongs to, if any.
    pub fn tenant_id(&self) -> Option<&str> {
        self.inner.tenant_id.as_deref()
    }

    /// The user the run's job was started for, if any.
    pub fn user_id(&self) -> Option<&str> {
        self.inner.user_id.as_deref()
    }

    /// The root of the job's tree, if the job is a child of another.
    pub fn root_job_id(&self) -> Option<&str> {
        self.inner.root_job_id.as_deref()
    }

    /// Which claim of the job this run is (1 for the first).
    pub fn attempt(&self) -> i64 {
        self.inner.attempt
    }

    /// The run's stop and abort flags.
    pub fn control(&self) -> &Arc<Control> {
        &self.inner.control
    }

    /// Emits an event with a JSON payload. Fails with `EventLimit` once the agent's event budget
    /// (a count, a total of bytes, or a byte rate) is spent.
    pub async fn emit(&self, kind: &str, payload: &impl Serialize) -> Result<(), ErrorInfo> {
        let text = serde_json::to_string(payload)
            .map_err(|e| ErrorInfo::new("InvalidEvent", format!("payload is not JSON: {e}")))?;
        self.emit_raw(kind, text).await
    }

    /// Emits an event whose payload is JSON text (validated here).
    pub async fn emit_raw(&self, kind: &str, payload: String) -> Result<(), ErrorInfo> {
        let payload = RawValue::from_string(payload)
            .map_err(|e| ErrorInfo::new("InvalidEvent", format!("payload is not JSON: {e}")))?;
        self.emit_value(kind, Arc::from(payload)).await
    }

    /// Emits an event with an already-parsed payload.
    pub async fn emit_value(&self, kind: &str, payload: Arc<RawValue>) -> Result<(), ErrorInfo> {
        if kind.is_empty() || kind.len() > 64 {
            return Err(ErrorInfo::new(
                "InvalidEvent",
                "event kind must be 1 to 64 bytes long",
            ));
        }
        let emitted = self.inner.emitted.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(max) = self.inner.budget.max_events
            && emitted > max
        {
            return Err(ErrorInfo::new(
                "EventLimit",
                format!("the run emitted more than its limit of {max} events"),
            ));
        }
        self.charge(payload.get().len())?;
        self.record_event(kind, payload).await;
        Ok(())
    }

    /// Charges an event with a payload of `len` bytes to the run's byte budget and byte rate
    /// (at least [`MIN_EVENT_CHARGE`]); nothing is charged when it does not fit.
    fn charge(&self, len: usize) -> Result<(), ErrorInfo> {
        let budget = &self.inner.budget;
        if budget.max_bytes.is_none() && budget.byte_rate.is_none() {
            return Ok(());
        }
        let charge = u64::try_from(len).unwrap_or(u64::MAX).max(MIN_EVENT_CHARGE);
        let mut meter = self
            .inner
            .bytes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let spent = meter.spent.saturating_add(charge);
        if let Some(max) = budget.max_bytes
            && spent > max
        {
            return Err(ErrorInfo::new(
                "EventLimit",
                format!(
                    "the run's events came to more than its limit of {max} bytes \
                     (max-event-total-bytes; each event counts at least {MIN_EVENT_CHARGE})"
                ),
            ));
        }
        if let Some(rate) = budget.byte_rate {
            let now = Instant::now();
            let elapsed = now.saturating_duration_since(meter.refilled).as_secs_f64();
            meter.refilled = now;
            meter.tokens = (meter.tokens + elapsed * rate.per_second as f64).min(rate.burst as f64);
            if meter.tokens < charge as f64 {
                return Err(ErrorInfo::new(
                    "EventLimit",
                    format!(
                        "the run wrote events faster than its limit of {} bytes per second \
                         (bursts of {}; max-event-bytes-per-second, event-byte-burst)",
                        rate.per_second, rate.burst
                    ),
                ));
            }
            meter.tokens -= charge as f64;
        }
        meter.spent = spent;
        Ok(())
    }

    /// Writes a `log` event of the guest's output, waiting for the recorder. See
    /// [`RunContext::record_log_now`] for what a log event is held to.
    pub(crate) async fn record_log(&self, payload: Arc<RawValue>) {
        if self.admit_log(&payload) {
            self.record_event("log", payload).await;
        }
    }

    /// Writes a `log` event of the guest's output without waiting; returns whether it was
    /// kept. Log events are not counted against `max_events`, but each counts against the
    /// run's event byte budget and byte rate (a run that goes past them is aborted with
    /// `EventLimit`), and a run gets at most one per [`MIN_LOG_EVENT_BYTES`] of its log budget;
    /// past that they are dropped, with one notice.
    pub(crate) fn record_log_now(&self, payload: Arc<RawValue>) -> bool {
        self.admit_log(&payload) && self.record_event_now("log", payload)
    }

    fn admit_log(&self, payload: &RawValue) -> bool {
        let logged = self.inner.logged.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(max) = self.inner.budget.max_log_events
            && logged > max
        {
            if logged == max + 1 {
                let notice = serde_json::json!({
                    "level": "warn",
                    "message": format!(
                        "log output truncated: the run wrote more than {max} log lines \
                         (one per {MIN_LOG_EVENT_BYTES} bytes of max-log-bytes)"
                    ),
                });
                if let Ok(notice) = serde_json::value::to_raw_value(&notice) {
                    self.record_event_now("log", Arc::from(notice));
                }
            }
            return false;
        }
        if let Err(error) = self.charge(payload.get().len()) {
            tracing::debug!(run_id = %self.inner.run_id, %error, "log output over the event budget");
            self.inner.control.abort(AbortReason::EventLimit);
            return false;
        }
        true
    }

    /// Writes an event without counting it against the agent's budget (host events).
    pub(crate) async fn record_event(&self, kind: &str, payload: Arc<RawValue>) {
        self.inner
            .recorder
            .send(self.next_event(kind, payload))
            .await;
    }

    /// Writes a host event without waiting; returns `false` if the recorder is too far behind
    /// (the event is then dropped). For callers that cannot wait, such as a guest's stdout.
    pub(crate) fn record_event_now(&self, kind: &str, payload: Arc<RawValue>) -> bool {
        self.inner.recorder.try_send(self.next_event(kind, payload))
    }

    /// The next event of this run's timeline.
    fn next_event(&self, kind: &str, payload: Arc<RawValue>) -> Record {
        let seq = self.inner.next_seq.fetch_add(1, Ordering::Relaxed);
        Record::Event(EventRecord {
            run_id: Arc::clone(&self.inner.run_id),
            seq: i64::try_from(seq).unwrap_or(i64::MAX),
            ts: now_ms(),
            kind: kind.to_string(),
            payload,
        })
    }

    /// Records that the agent is alive.
    pub async fn heartbeat(&self) {
        self.inner
            .recorder
            .send(Record::Heartbeat(Arc::clone(&self.inner.run_id), now_ms()))
            .await;
    }

    /// Emits a `log` event.
    pub async fn log(&self, level: &str, message: &str) -> Result<(), ErrorInfo> {
        self.emit(
            "log",
            &serde_json::json!({ "level": level, "message": message }),
        )
        .await
    }

    /// Whether the agent has been asked to stop.
    pub fn stop_requested(&self) -> bool {
        self.inner.control.stop_requested()
    }

    /// Runs `f`, an I/O-bound wait (a model call, a tool call, a slow request), without holding
    /// one of the pool's CPU slots: the run gives its slot back while `f` runs, holding one of
    /// the pool's waiting permits instead (`max-waiting-runs`), so that the pool can start other
    /// jobs meanwhile; it takes a slot again before this returns, waiting for one if need be.
    ///
    /// If no waiting permit is free, the run keeps its slot and runs `f` at once anyway, and
    /// trades the slot as soon as a permit frees up: a pool whose waiting permits are all taken
    /// runs like one without them, never slower. Sections may nest or overlap within one run
    /// (parallel tool calls): the slot goes back when the first opens and is taken again when
    /// the last closes. Outside a pool ([`RunContext::detached`]), and for long-lived agents
    /// (whose slots are not CPU slots), this just runs `f`. Native agents may call it too.
    ///
    /// Dropping the returned future mid-wait is safe: the run takes its slot back in the
    /// background.
    pub async fn waiting<F: Future>(&self, f: F) -> F::Output {
        let Some(admission) = self.inner.admission.as_ref() else {
            return f.await;
        };
        admission.enter();
        let mut section = Section(Some(Arc::clone(admission)));
        let output = {
            // Both dropped before the section closes: a trade still queued for a permit must
            // not hold its place in the queue.
            let mut f = pin!(f);
            let mut trade = pin!(admission.trade());
            let mut traded = false;
            std::future::poll_fn(|cx| {
                if let Poll::Ready(output) = f.as_mut().poll(cx) {
                    return Poll::Ready(output);
                }
                if !traded && trade.as_mut().poll(cx).is_ready() {
                    traded = true;
                }
                Poll::Pending
            })
            .await
        };
        if let Some(admission) = section.0.take() {
            admission.leave().await;
        }
        output
    }

    /// Sleeps for `duration`, returning early with `true` when a stop is requested.
    pub async fn sleep(&self, duration: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(duration) => self.stop_requested(),
            _ = self.inner.control.stopped() => true,
        }
    }
}
