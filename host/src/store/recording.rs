//! What runs produce on its way to the store: the [`Record`]s a run's context sends, and the
//! [`RecorderHandle`] it sends them with. The worker pool's recorder receives them and writes
//! them in batches (group commit); everything below the pool (a sandbox, a run's context) only
//! ever sees this side of it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{mpsc, oneshot};

use super::{EventRecord, RunRecord};
use crate::queue::Finish;

/// Capacity of the recorder's inbox; a full inbox makes emitters wait (back-pressure).
pub(crate) const INBOX: usize = 16_384;

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
        /// Told once the run and the outcome are durable (or known to be moot: the lease was
        /// lost). Dropped unsent only when the recorder gives up at shutdown.
        durable: oneshot::Sender<()>,
    },
    /// Write everything received so far, then acknowledge.
    Flush(oneshot::Sender<()>),
}

/// Whether the recorder's writes are going through.
#[derive(Debug, Default)]
pub(crate) struct Health {
    failing: AtomicBool,
}

impl Health {
    /// Whether the last write attempt failed (and is being retried).
    pub(crate) fn failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }

    /// Records whether the last write attempt failed.
    pub(crate) fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::Release);
    }
}

/// Sends records to a recorder. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct RecorderHandle {
    tx: mpsc::Sender<Record>,
    health: Arc<Health>,
}

impl RecorderHandle {
    /// A handle sending to `tx`, whose receiver reports on `health`.
    pub(crate) fn new(tx: mpsc::Sender<Record>, health: Arc<Health>) -> Self {
        Self { tx, health }
    }

    /// A handle whose records go nowhere (nothing receives them).
    pub(crate) fn discarding() -> Self {
        Self {
            tx: mpsc::channel(1).0,
            health: Arc::default(),
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

    /// Whether writes are failing right now (the pool claims nothing new meanwhile).
    pub(crate) fn failing(&self) -> bool {
        self.health.failing()
    }
}
