//! What a running agent can reach: its events, heartbeats and logs, the clock, and the stop
//! signal. The same context serves native agents and the wasm sandbox's host functions.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::Notify;

use crate::pool::recorder::{Record, RecorderHandle};
use crate::queue::ErrorInfo;
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
    control: Arc<Control>,
    recorder: RecorderHandle,
    next_seq: AtomicU64,
    max_events: Option<u64>,
    emitted: AtomicU64,
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
}

impl RunContext {
    /// A context whose events go to `recorder`. `first_seq` is the sequence number of the next
    /// event (the pool has already written `run_start` as 1).
    pub(crate) fn new(
        identity: RunIdentity,
        control: Arc<Control>,
        recorder: RecorderHandle,
        first_seq: u64,
        max_events: Option<u64>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                run_id: identity.run_id,
                job_id: identity.job_id,
                agent_id: identity.agent_id,
                attempt: identity.attempt,
                control,
                recorder,
                next_seq: AtomicU64::new(first_seq),
                max_events,
                emitted: AtomicU64::new(0),
            }),
        }
    }

    /// A context for running an agent outside a pool (embedding, benchmarks): its events,
    /// heartbeats and logs are discarded.
    pub fn detached(identity: RunIdentity, max_events: Option<u64>) -> Self {
        Self::new(
            identity,
            Control::new(),
            RecorderHandle::discarding(),
            1,
            max_events,
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

    /// Which claim of the job this run is (1 for the first).
    pub fn attempt(&self) -> i64 {
        self.inner.attempt
    }

    /// The run's stop and abort flags.
    pub fn control(&self) -> &Arc<Control> {
        &self.inner.control
    }

    /// Emits an event with a JSON payload. Fails with `EventLimit` once the agent's event budget
    /// is spent.
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
        if let Some(max) = self.inner.max_events
            && emitted > max
        {
            return Err(ErrorInfo::new(
                "EventLimit",
                format!("the run emitted more than its limit of {max} events"),
            ));
        }
        self.record_event(kind, payload).await;
        Ok(())
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

    /// Sleeps for `duration`, returning early with `true` when a stop is requested.
    pub async fn sleep(&self, duration: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(duration) => self.stop_requested(),
            _ = self.inner.control.stopped() => true,
        }
    }
}
