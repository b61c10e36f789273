//! The recorder: one task per pool that writes everything its runs produce (run rows, events,
//! heartbeats, and the jobs' outcomes) in batches.
//!
//! Messages queue up while a batch is being written, so the next batch takes all of them at
//! once (group commit): one job per statement when the pool is quiet, hundreds when it is busy.
//! A short run's start and end usually land in the same batch and become one row. The run store
//! is written before the queue, so a job is never `done` while its run is missing; outcomes whose
//! lease was lost meanwhile are dropped by the queue's fencing and their runs marked `lost`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::stats::PoolStats;
use crate::queue::{ErrorInfo, Finish, Queue};
use crate::store::{EventRecord, RunRecord, RunStore, WriteBatch};
use crate::time::now_ms;

/// Most messages written in one batch.
const MAX_BATCH: usize = 4096;
/// Capacity of the recorder's inbox; a full inbox makes emitters wait (back-pressure).
const INBOX: usize = 16_384;
/// Most job outcomes applied in one statement (fewer than a remote database takes in one).
const FINISH_CHUNK: usize = 1024;
/// Attempts at writing one batch before it is given up (and the leases expire instead).
const WRITE_ATTEMPTS: u32 = 6;

/// Something to record.
#[derive(Debug)]
pub(crate) enum Record {
    /// A run started (written unless its end arrives in the same batch).
    Started(RunRecord),
    /// An event.
    Event(EventRecord),
    /// A sign of life from a run.
    Heartbeat(Arc<str>, i64),
    /// A run ended; `finish` is the job's outcome (none when the lease was lost).
    Finished {
        /// The final state of the run.
        run: RunRecord,
        /// The job outcome to apply under the lease.
        finish: Option<Finish>,
    },
    /// Write everything received so far, then acknowledge.
    Flush(oneshot::Sender<()>),
}

/// Sends records to a recorder. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct RecorderHandle {
    tx: mpsc::Sender<Record>,
}

impl RecorderHandle {
    /// A handle whose records go nowhere (nothing receives them).
    pub(crate) fn discarding() -> Self {
        Self {
            tx: mpsc::channel(1).0,
        }
    }

    /// Queues a record, waiting while the recorder is behind.
    pub(crate) async fn send(&self, record: Record) {
        // After shutdown there is nobody left to write; the record is dropped.
        let _ = self.tx.send(record).await;
    }

    /// Queues a record without waiting; returns `false` (dropping it) when the inbox is full.
    /// For callers that cannot wait, such as a guest's stdout.
    pub(crate) fn try_send(&self, record: Record) -> bool {
        self.tx.try_send(record).is_ok()
    }

    /// Resolves once everything sent before this call is written.
    pub(crate) async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Record::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// Starts a recorder task; it ends when every handle is dropped.
pub(crate) fn spawn(
    queue: Queue,
    store: RunStore,
    stats: Arc<PoolStats>,
) -> (RecorderHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(INBOX);
    let recorder = Recorder {
        rx,
        queue,
        store,
        stats,
    };
    (RecorderHandle { tx }, tokio::spawn(recorder.run()))
}

struct Recorder {
    rx: mpsc::Receiver<Record>,
    queue: Queue,
    store: RunStore,
    stats: Arc<PoolStats>,
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
        let mut finishes: Vec<(Finish, String)> = Vec::new();
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
                Record::Finished { run, finish } => {
                    if let Some(finish) = finish {
                        finishes.push((finish, run.id.clone()));
                    }
                    runs.insert(run.id.clone(), run);
                }
                Record::Flush(ack) => acks.push(ack),
            }
        }
        batch.runs = runs.into_values().collect();

        if !batch.is_empty() {
            let store = &self.store;
            let written = retry("run store", || store.write(&batch)).await;
            if written.is_some() {
                self.stats.record_events(batch.events.len());
            } else if !finishes.is_empty() {
                // A job must never be finished without its run on record. Its lease expires
                // instead, and the job is reclaimed and run again.
                tracing::error!(
                    jobs = finishes.len(),
                    "the runs of these jobs could not be recorded; leaving them to be reclaimed"
                );
                finishes.clear();
            }
        }
        for chunk in finishes.chunks(FINISH_CHUNK) {
            self.apply_outcomes(chunk).await;
        }
        for ack in acks {
            let _ = ack.send(());
        }
    }

    /// Applies job outcomes under their leases and marks the runs whose lease was lost.
    async fn apply_outcomes(&self, finishes: &[(Finish, String)]) {
        let outcomes: Vec<Finish> = finishes.iter().map(|(f, _)| f.clone()).collect();
        let started = std::time::Instant::now();
        let queue = &self.queue;
        let applied = retry("queue", || queue.finish(&outcomes)).await;
        self.stats.record_finish_latency(started.elapsed());
        let Some(applied) = applied else {
            return;
        };
        let mut applied: HashSet<String> = applied.into_iter().map(|(id, _)| id).collect();
        let unapplied: Vec<(String, String)> = finishes
            .iter()
            .filter(|(f, _)| !applied.contains(&f.lease.job_id))
            .map(|(f, run_id)| (f.lease.job_id.clone(), run_id.clone()))
            .collect();
        if !unapplied.is_empty() {
            // A write that failed part-way (a remote database applies each statement on its own)
            // and was retried finds its own earlier outcomes no longer leased: they landed.
            match retry("queue", || queue.recorded_runs(&unapplied)).await {
                Some(recorded) => applied.extend(recorded),
                None => return,
            }
        }
        let lost: Vec<String> = finishes
            .iter()
            .filter(|(f, _)| !applied.contains(&f.lease.job_id))
            .map(|(f, run_id)| {
                tracing::warn!(
                    job_id = %f.lease.job_id,
                    run_id = %run_id,
                    epoch = f.lease.epoch,
                    "lease lost before the outcome was recorded; result dropped"
                );
                run_id.clone()
            })
            .collect();
        if !lost.is_empty() {
            let error = ErrorInfo::new(
                "LeaseLost",
                "the worker lost the job's lease before recording the outcome; \
                 the result was dropped",
            );
            let store = &self.store;
            retry("run store", || {
                store.mark_runs_lost(&lost, &error, now_ms())
            })
            .await;
        }
    }
}

/// Runs `op` until it succeeds or the attempts run out, backing off in between.
async fn retry<T, F, Fut, E>(what: &str, mut op: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let mut delay = Duration::from_millis(50);
    for attempt in 1..=WRITE_ATTEMPTS {
        match op().await {
            Ok(value) => return Some(value),
            Err(e) if attempt < WRITE_ATTEMPTS => {
                tracing::warn!(error = %e, attempt, "writing to the {what} failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => {
                tracing::error!(error = %e, "writing to the {what} failed; giving up on this batch");
            }
        }
    }
    None
}
