//! The recorder: one task per pool that writes everything its runs produce (run rows, events,
//! heartbeats, and the jobs' outcomes) in batches.
//!
//! Messages queue up while a batch is being written, so the next batch takes all of them at
//! once (group commit): one job per statement when the pool is quiet, hundreds when it is busy.
//! A short run's start and end usually land in the same batch and become one row. The run store
//! is written before the queue, so a job is never `done` while its run is missing; outcomes whose
//! lease was lost meanwhile are dropped by the queue's fencing and their runs marked `lost`.
//!
//! A finished outcome is never given up while the pool runs. Each job stays in flight (its
//! lease renewed) until the recorder says its outcome is durable, and writes that fail for a
//! passing reason (a held lock, a full disk, an unreachable server) are retried with capped
//! backoff for as long as it takes; meanwhile the pool claims nothing new. A write the database
//! refuses outright (a value too big, a constraint) is split in halves until the one record at
//! fault is found: that record alone is replaced by a short error (its job fails with
//! `RecordRejected`), and the rest of its batch is written as usual. Only at shutdown, once the
//! grace period is over, are outcomes still unwritten abandoned; their leases then expire and
//! the jobs are run again elsewhere.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::stats::PoolStats;
use crate::db::Retry;
use crate::queue::{ErrorInfo, Finish, FinishKind, Queue, QueueError};
use crate::store::recording::{Health, INBOX, Record, RecorderHandle};
use crate::store::{RunRecord, RunStatus, RunStore, StoreError, WriteBatch};
use crate::time::now_ms;

/// Most messages written in one batch.
const MAX_BATCH: usize = 4096;
/// Most job outcomes applied in one statement (fewer than a remote database takes in one).
const FINISH_CHUNK: usize = 1024;
/// First and longest pause between attempts at a write that failed for a passing reason.
const BACKOFF_START: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// The tag of a record the database refused, and of its job's failure.
pub(crate) const RECORD_REJECTED: &str = "RecordRejected";

/// Starts a recorder task; it ends when every handle is dropped. Once `give_up` is cancelled,
/// writes that keep failing are abandoned instead of retried.
pub(crate) fn spawn(
    queue: Queue,
    store: RunStore,
    stats: Arc<PoolStats>,
    give_up: CancellationToken,
) -> (RecorderHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(INBOX);
    let health = Arc::new(Health::default());
    let recorder = Recorder {
        rx,
        queue,
        store,
        stats,
        health: Arc::clone(&health),
        give_up,
    };
    (
        RecorderHandle::new(tx, health),
        tokio::spawn(recorder.run()),
    )
}

struct Recorder {
    rx: mpsc::Receiver<Record>,
    queue: Queue,
    store: RunStore,
    stats: Arc<PoolStats>,
    health: Arc<Health>,
    give_up: CancellationToken,
}

/// A job outcome waiting to be applied.
struct Outcome {
    finish: Finish,
    run_id: String,
    /// Already replaced once after the database refused it.
    replaced: bool,
}

/// What to do about a failed write.
enum Next {
    /// Try the same write again after a pause.
    Retry,
    /// Split it (or, for one record, isolate that record).
    Split,
    /// Stop trying (shutdown).
    Abandon,
}

impl Recorder {
    async fn run(mut self) {
        let mut inbox = Vec::with_capacity(MAX_BATCH);
        while self.rx.recv_many(&mut inbox, MAX_BATCH).await > 0 {
            self.write(&mut inbox).await;
        }
    }

    async fn write(&self, inbox: &mut Vec<Record>) {
        let mut batch = WriteBatch::default();
        let mut runs: HashMap<String, RunRecord> = HashMap::new();
        let mut outcomes: Vec<Outcome> = Vec::new();
        let mut durable = Vec::new();
        let mut acks = Vec::new();
        for record in inbox.drain(..) {
            match record {
                Record::Started(run) => {
                    runs.entry(run.id.clone()).or_insert(run);
                }
                Record::Event(event) => batch.events.push(event),
                Record::Heartbeat(run_id, ts) => {
                    let entry = batch.heartbeats.entry(run_id).or_insert(ts);
                    *entry = (*entry).max(ts);
                }
                Record::Finished {
                    run,
                    finish,
                    durable: done,
                } => {
                    if let Some(finish) = finish {
                        outcomes.push(Outcome {
                            finish,
                            run_id: run.id.clone(),
                            replaced: false,
                        });
                    }
                    runs.insert(run.id.clone(), run);
                    durable.push(done);
                }
                Record::Flush(ack) => acks.push(ack),
            }
        }
        batch.runs = runs.into_values().collect();
        self.stats.outcomes_pending(durable.len() as i64);

        let mut rejected = HashSet::new();
        let stored = self.write_store(batch, &mut rejected).await;
        if stored {
            for outcome in outcomes.iter_mut().filter(|o| rejected.contains(&o.run_id)) {
                reject_outcome(outcome);
            }
            let mut parts: Vec<Vec<Outcome>> = Vec::new();
            while outcomes.len() > FINISH_CHUNK {
                parts.push(outcomes.split_off(outcomes.len() - FINISH_CHUNK));
            }
            parts.push(outcomes);
            self.apply_outcomes(parts).await;
        } else if !outcomes.is_empty() {
            // A job must never be finished without its run on record. Its lease expires
            // instead, and the job is reclaimed and run again.
            tracing::error!(
                jobs = outcomes.len(),
                "shutting down with runs that could not be recorded; their jobs will be reclaimed"
            );
        }
        self.stats.outcomes_pending(-(durable.len() as i64));
        if stored {
            for done in durable {
                let _ = done.send(());
            }
        }
        for ack in acks {
            let _ = ack.send(());
        }
    }

    /// What to do after a write failed with `retry`, and the pause before retrying.
    async fn after_failure(
        &self,
        what: &str,
        error: &(dyn std::fmt::Display + Sync),
        retry: Retry,
        backoff: &mut Duration,
    ) -> Next {
        self.stats.record_write_failure();
        if retry == Retry::Permanent {
            tracing::warn!(%error, "the {what} refused a write; isolating the record at fault");
            return Next::Split;
        }
        self.health.set_failing(true);
        if self.give_up.is_cancelled() {
            tracing::error!(%error, "writing to the {what} failed at shutdown; giving up");
            return Next::Abandon;
        }
        tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "writing to the {what} failed; retrying");
        tokio::select! {
            () = tokio::time::sleep(*backoff) => {}
            () = self.give_up.cancelled() => {}
        }
        *backoff = (*backoff * 2).min(BACKOFF_MAX);
        Next::Retry
    }

    fn wrote(&self) {
        self.health.set_failing(false);
    }

    /// Writes `batch` to the run store until it is durable, isolating records the database
    /// refuses (their runs are replaced by a short error and named in `rejected`). Returns
    /// `false` only when it gave up at shutdown.
    async fn write_store(&self, batch: WriteBatch, rejected: &mut HashSet<String>) -> bool {
        if batch.is_empty() {
            return true;
        }
        let mut parts = vec![batch];
        let mut backoff = BACKOFF_START;
        while let Some(part) = parts.pop() {
            let error = match self.store.write(&part).await {
                Ok(()) => {
                    self.wrote();
                    backoff = BACKOFF_START;
                    self.stats.record_events(part.events.len());
                    continue;
                }
                Err(e) => e,
            };
            match self
                .after_failure("run store", &error, store_retry(&error), &mut backoff)
                .await
            {
                Next::Retry => parts.push(part),
                Next::Abandon => return false,
                Next::Split if records(&part) > 1 => {
                    let (a, b) = split_batch(part);
                    parts.push(b);
                    parts.push(a);
                }
                Next::Split => {
                    self.stats.record_rejected();
                    if let Some(replacement) = reject_record(part, &error, rejected) {
                        parts.push(replacement);
                    }
                }
            }
        }
        true
    }

    /// Applies job outcomes under their leases and marks the runs whose lease was lost.
    async fn apply_outcomes(&self, mut parts: Vec<Vec<Outcome>>) {
        let mut backoff = BACKOFF_START;
        while let Some(mut part) = parts.pop() {
            if part.is_empty() {
                continue;
            }
            let finishes: Vec<Finish> = part.iter().map(|o| o.finish.clone()).collect();
            let started = std::time::Instant::now();
            let error = match self.queue.finish(&finishes).await {
                Ok(applied) => {
                    self.wrote();
                    backoff = BACKOFF_START;
                    self.stats.record_finish_latency(started.elapsed());
                    self.settle(&part, applied.into_iter().map(|(id, _)| id).collect())
                        .await;
                    continue;
                }
                Err(e) => e,
            };
            match self
                .after_failure("queue", &error, queue_retry(&error), &mut backoff)
                .await
            {
                Next::Retry => parts.push(part),
                Next::Abandon => return,
                Next::Split if part.len() > 1 => {
                    let rest = part.split_off(part.len() / 2);
                    parts.push(rest);
                    parts.push(part);
                }
                Next::Split => {
                    self.stats.record_rejected();
                    let mut outcome = part.remove(0);
                    if outcome.replaced {
                        tracing::error!(
                            job_id = %outcome.finish.lease.job_id,
                            %error,
                            "the queue refused this job's outcome twice; its lease will expire"
                        );
                    } else {
                        reject_outcome(&mut outcome);
                        parts.push(vec![outcome]);
                    }
                }
            }
        }
    }

    /// After outcomes were applied: those the queue did not take (`applied` lacks them) either
    /// landed in an earlier, interrupted attempt, or lost their lease; the latter's runs are
    /// marked lost.
    async fn settle(&self, part: &[Outcome], mut applied: HashSet<String>) {
        let unapplied: Vec<(String, String)> = part
            .iter()
            .filter(|o| !applied.contains(&o.finish.lease.job_id))
            .map(|o| (o.finish.lease.job_id.clone(), o.run_id.clone()))
            .collect();
        if unapplied.is_empty() {
            return;
        }
        // A write that failed part-way (a remote database applies each statement on its own)
        // and was retried finds its own earlier outcomes no longer leased: they landed.
        let recorded = self
            .until_done(
                "queue",
                || self.queue.recorded_runs(&unapplied),
                queue_retry,
            )
            .await;
        match recorded {
            Some(recorded) => applied.extend(recorded),
            None => return,
        }
        let lost: Vec<String> = part
            .iter()
            .filter(|o| !applied.contains(&o.finish.lease.job_id))
            .map(|o| {
                tracing::warn!(
                    job_id = %o.finish.lease.job_id,
                    run_id = %o.run_id,
                    epoch = o.finish.lease.epoch,
                    "lease lost before the outcome was recorded; result dropped"
                );
                o.run_id.clone()
            })
            .collect();
        if lost.is_empty() {
            return;
        }
        self.stats.record_lost_outcomes(lost.len());
        let error = ErrorInfo::new(
            "LeaseLost",
            "the worker lost the job's lease before recording the outcome; the result was dropped",
        );
        self.until_done(
            "run store",
            || self.store.mark_runs_lost(&lost, &error, now_ms()),
            store_retry,
        )
        .await;
    }

    /// Runs an idempotent `op` until it succeeds, retrying passing failures; `None` if it was
    /// refused outright or abandoned at shutdown.
    async fn until_done<T, E, F, Fut>(
        &self,
        what: &str,
        mut op: F,
        classify: fn(&E) -> Retry,
    ) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
        E: std::fmt::Display + Sync,
    {
        let mut backoff = BACKOFF_START;
        loop {
            match op().await {
                Ok(value) => {
                    self.wrote();
                    return Some(value);
                }
                Err(e) => match self
                    .after_failure(what, &e, classify(&e), &mut backoff)
                    .await
                {
                    Next::Retry => {}
                    Next::Abandon | Next::Split => return None,
                },
            }
        }
    }
}

fn store_retry(error: &StoreError) -> Retry {
    match error {
        StoreError::Db(e) => e.retry(),
        StoreError::Encode(_) => Retry::Permanent,
    }
}

fn queue_retry(error: &QueueError) -> Retry {
    match error {
        QueueError::Db(e) => e.retry(),
        QueueError::Invalid(_) | QueueError::LeaseLost { .. } => Retry::Permanent,
    }
}

/// Records in a batch (runs, events and heartbeats).
fn records(batch: &WriteBatch) -> usize {
    batch.runs.len() + batch.events.len() + batch.heartbeats.len()
}

/// Splits a batch of two or more records into two non-empty halves.
fn split_batch(mut batch: WriteBatch) -> (WriteBatch, WriteBatch) {
    let mut other = WriteBatch::default();
    let half = records(&batch) / 2;
    while records(&other) < half {
        if let Some(run) = batch.runs.pop() {
            other.runs.push(run);
        } else if let Some(event) = batch.events.pop() {
            other.events.push(event);
        } else if let Some(key) = batch.heartbeats.keys().next().cloned() {
            if let Some(ts) = batch.heartbeats.remove(&key) {
                other.heartbeats.insert(key, ts);
            }
        } else {
            break;
        }
    }
    (batch, other)
}

/// Isolates the one record of `batch` that the database refused. An event or a heartbeat is
/// dropped; a run is replaced, once, by its bare facts and an error saying why (and named in
/// `rejected`, so that its job fails too).
fn reject_record(
    mut batch: WriteBatch,
    error: &StoreError,
    rejected: &mut HashSet<String>,
) -> Option<WriteBatch> {
    if let Some(event) = batch.events.pop() {
        tracing::error!(run_id = %event.run_id, seq = event.seq, kind = %event.kind, %error, "the run store refused an event; dropped");
        return None;
    }
    if let Some(run_id) = batch.heartbeats.keys().next() {
        tracing::error!(%run_id, %error, "the run store refused a heartbeat; dropped");
        return None;
    }
    let mut run = batch.runs.pop()?;
    if !rejected.insert(run.id.clone()) {
        tracing::error!(run_id = %run.id, %error, "the run store refused this run twice; it is not recorded");
        return None;
    }
    tracing::error!(run_id = %run.id, %error, "the run store refused this run's record; recording its failure instead");
    run.input = None;
    run.output = None;
    run.status = RunStatus::Error;
    run.error_tag = Some(RECORD_REJECTED.to_string());
    run.error_message = Some(rejection_message());
    Some(WriteBatch {
        runs: vec![run],
        ..WriteBatch::default()
    })
}

/// Turns an outcome the database refused (or whose run it refused) into a plain failure.
fn reject_outcome(outcome: &mut Outcome) {
    outcome.replaced = true;
    outcome.finish.kind = FinishKind::Fail {
        error: ErrorInfo::new(RECORD_REJECTED, rejection_message()),
        retry: false,
    };
    outcome.finish.result_status = Some(RunStatus::Error.as_str().to_string());
}

fn rejection_message() -> String {
    "the database refused to store this run's record (too large, or otherwise invalid); \
     see the host's log"
        .to_string()
}
