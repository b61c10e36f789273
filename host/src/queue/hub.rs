//! In-process notifications between the users of one [`super::Queue`]: a producer wakes idle
//! pools, a canceller reaches the worker running the job, and a finished job wakes its waiters,
//! all without waiting for the next poll. Other processes see the same changes by polling.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, broadcast};

use super::Signal;

pub(crate) struct Hub {
    enqueued: Notify,
    signals: broadcast::Sender<Signal>,
    waiters: Mutex<HashMap<String, (Arc<Notify>, usize)>>,
    waiter_count: AtomicUsize,
}

impl Hub {
    pub(crate) fn new() -> Self {
        Self {
            enqueued: Notify::new(),
            signals: broadcast::channel(1024).0,
            waiters: Mutex::new(HashMap::new()),
            waiter_count: AtomicUsize::new(0),
        }
    }

    /// Wakes the pools waiting for work.
    pub(crate) fn notify_enqueued(&self) {
        self.enqueued.notify_waiters();
    }

    /// Resolves when something was enqueued after this call.
    pub(crate) fn enqueued(&self) -> tokio::sync::futures::Notified<'_> {
        self.enqueued.notified()
    }

    /// Tells the in-process pools about a cancel or stop request.
    pub(crate) fn send_signal(&self, signal: Signal) {
        // No receivers simply means no pool runs in this process.
        let _ = self.signals.send(signal);
    }

    /// Cancel and stop requests made through this queue.
    pub(crate) fn subscribe_signals(&self) -> broadcast::Receiver<Signal> {
        self.signals.subscribe()
    }

    /// Registers interest in `job_id` reaching a terminal status.
    pub(crate) fn watch(self: &Arc<Self>, job_id: &str) -> Watch {
        let mut waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        let entry = waiters
            .entry(job_id.to_string())
            .or_insert_with(|| (Arc::new(Notify::new()), 0));
        entry.1 += 1;
        self.waiter_count.fetch_add(1, Ordering::Relaxed);
        Watch {
            hub: Arc::clone(self),
            job_id: job_id.to_string(),
            notify: Arc::clone(&entry.0),
        }
    }

    /// Wakes the waiters of jobs that reached a terminal status.
    pub(crate) fn notify_terminal<'a>(&self, job_ids: impl IntoIterator<Item = &'a str>) {
        if self.waiter_count.load(Ordering::Relaxed) == 0 {
            return;
        }
        let waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        for id in job_ids {
            if let Some((notify, _)) = waiters.get(id) {
                notify.notify_waiters();
            }
        }
    }
}

/// Interest in one job, dropped when the waiter is done.
pub(crate) struct Watch {
    hub: Arc<Hub>,
    job_id: String,
    notify: Arc<Notify>,
}

impl Watch {
    /// The notification to await (create it, enable it, then check the job, then await it).
    pub(crate) fn notify(&self) -> &Notify {
        &self.notify
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut waiters = self.hub.waiters.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = waiters.get_mut(&self.job_id) {
            entry.1 -= 1;
            if entry.1 == 0 {
                waiters.remove(&self.job_id);
            }
        }
        self.hub.waiter_count.fetch_sub(1, Ordering::Relaxed);
    }
}
