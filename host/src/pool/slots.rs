//! Run slots, and how far ahead of them a pool claims.
//!
//! A claim is a database round trip. Were a pool to claim only once a slot is free, every short
//! run would be followed by a wait on the database, and the slots would sit idle while claims
//! are on their way. So while runs are short, a pool claims ahead: more jobs than it has free
//! slots, each of which starts the moment a slot frees. How far ahead depends on how long recent
//! runs took, so that a job claimed ahead waits no longer than the pool's prefetch horizon for
//! its slot (long runs: nothing is claimed ahead, and idle hosts can take the work instead), and
//! never past [`MAX_AHEAD`] jobs (or the slot count, if that is more), nor past what recent
//! jobs' inputs say would bring [`MAX_AHEAD_BYTES`] of input into memory.
//!
//! Claiming ahead is what makes claims big. A claim, the outcomes of its jobs and their runs are
//! each one write whatever their size, so on a database server the cost of a job falls with the
//! size of the claim that brought it: on one local `sqld`, a host with 32 slots draining short
//! jobs made claims of 32 jobs (3,800 jobs/s) when it claimed at most one slot count ahead, and
//! of about 500 (8,800 jobs/s, with 40% of the server's CPU per job) under [`MAX_AHEAD`].
//!
//! A run that waits on I/O lends its slot back for the wait ([`super::waiting`]); what counts
//! as its run time here is only the time it held a slot, since that is what a job claimed
//! ahead waits for.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// Not yet known: nothing is claimed ahead before a run has ended.
const UNKNOWN: u64 = u64::MAX;
/// Most jobs claimed ahead of free slots (unless there are more slots than this): a bound on
/// what one claim brings into memory, and on the size of its request and its outcomes' write.
pub(super) const MAX_AHEAD: usize = 1024;
/// Most input, in bytes, that jobs claimed ahead should hold together (judged by the mean input
/// of recent claims): jobs with big inputs are claimed fewer at a time.
pub(super) const MAX_AHEAD_BYTES: u64 = 64 << 20;

/// The slots of one lane (run-to-completion jobs, or long-lived agents).
pub(super) struct Slots {
    semaphore: Arc<Semaphore>,
    capacity: usize,
    /// Claimed jobs whose tasks wait for a slot, and runs back from a wait that want theirs
    /// again.
    waiting: AtomicUsize,
    /// Mean duration of recent runs, in microseconds (an exponential moving average).
    mean_run_us: AtomicU64,
    /// Mean input size of recently claimed jobs, in bytes (an exponential moving average).
    mean_input_bytes: AtomicU64,
    /// Longest a job claimed ahead should wait for its slot; zero never claims ahead.
    horizon: Duration,
    /// Woken whenever there may be room for more claims.
    changed: Notify,
}

impl Slots {
    /// `capacity` slots, claiming ahead within `horizon`.
    pub(super) fn new(capacity: usize, horizon: Duration) -> Arc<Self> {
        Arc::new(Self {
            semaphore: Arc::new(Semaphore::new(capacity)),
            capacity,
            waiting: AtomicUsize::new(0),
            mean_run_us: AtomicU64::new(UNKNOWN),
            mean_input_bytes: AtomicU64::new(UNKNOWN),
            horizon,
            changed: Notify::new(),
        })
    }

    /// How many more jobs to claim now: the free slots, plus as many claimed ahead as recent run
    /// times allow, minus the claimed jobs already waiting.
    pub(super) fn room(&self) -> usize {
        let free = self.semaphore.available_permits();
        (free + self.ahead()).saturating_sub(self.waiting.load(Ordering::Acquire))
    }

    /// Jobs that may be claimed ahead of free slots.
    fn ahead(&self) -> usize {
        let mean = self.mean_run_us.load(Ordering::Relaxed);
        if mean == UNKNOWN || self.horizon.is_zero() {
            return 0;
        }
        // With every slot busy, the k-th job claimed ahead waits about k / capacity runs.
        let horizon = u64::try_from(self.horizon.as_micros()).unwrap_or(u64::MAX);
        let ahead = horizon.saturating_mul(self.capacity as u64) / mean.max(1);
        let input = self.mean_input_bytes.load(Ordering::Relaxed);
        let by_bytes = if input == UNKNOWN {
            u64::MAX
        } else {
            MAX_AHEAD_BYTES / input.max(1)
        };
        let most = MAX_AHEAD.max(self.capacity);
        usize::try_from(ahead.min(by_bytes)).map_or(most, |a| a.min(most))
    }

    /// Counts newly claimed jobs whose tasks are about to wait for a slot, and the bytes of
    /// their inputs together.
    pub(super) fn claimed(&self, jobs: usize, input_bytes: usize) {
        self.waiting.fetch_add(jobs, Ordering::AcqRel);
        if let Some(per_job) = input_bytes.checked_div(jobs) {
            average_in(&self.mean_input_bytes, per_job as u64);
        }
    }

    /// A slot for a claimed job: a free one at once, or the next to free up; `None` if `stop`
    /// fires while it waits (the pool is shutting down, and the job is to be handed back
    /// without running).
    pub(super) async fn acquire(&self, stop: &CancellationToken) -> Option<OwnedSemaphorePermit> {
        let permit = match Arc::clone(&self.semaphore).try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => tokio::select! {
                biased;
                () = stop.cancelled() => None,
                permit = Arc::clone(&self.semaphore).acquire_owned() => permit.ok(),
            },
        };
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        self.changed.notify_one();
        permit
    }

    /// A slot for a run that lent its own for a wait: the next to free up (in turn with the
    /// claimed jobs waiting for one). `None` only if the slots are closed, which they never are.
    pub(super) async fn reacquire(&self) -> Option<OwnedSemaphorePermit> {
        /// Uncounts the run when it has its slot, or gives up waiting for one.
        struct Waiting<'a>(&'a Slots);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.waiting.fetch_sub(1, Ordering::AcqRel);
                self.0.changed.notify_one();
            }
        }
        self.waiting.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(self);
        Arc::clone(&self.semaphore).acquire_owned().await.ok()
    }

    /// Takes a slot back from a run for the time it waits on I/O (another job may run in it).
    pub(super) fn lend(&self, permit: OwnedSemaphorePermit) {
        drop(permit);
        self.changed.notify_one();
    }

    /// Gives a slot back (if the run still holds one) after a run that held a slot for `took`.
    pub(super) fn release(&self, permit: Option<OwnedSemaphorePermit>, took: Duration) {
        drop(permit);
        average_in(
            &self.mean_run_us,
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
        );
        self.changed.notify_one();
    }

    /// Resolves when there may be room again (a run ended, or a claimed job got its slot).
    pub(super) async fn changed(&self) {
        self.changed.notified().await;
    }
}

/// Folds `sample` into the exponential moving average `mean` (each sample weighs an eighth);
/// the first sample replaces [`UNKNOWN`].
fn average_in(mean: &AtomicU64, sample: u64) {
    let sample = sample.min(UNKNOWN - 1);
    let old = mean.load(Ordering::Relaxed);
    let next = if old == UNKNOWN {
        sample
    } else {
        old - old / 8 + sample / 8
    };
    mean.store(next, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn claims_ahead_only_as_far_as_run_times_allow() {
        let slots = Slots::new(4, Duration::from_millis(20));
        assert_eq!(slots.room(), 4, "nothing ahead before a run has ended");
        let stop = CancellationToken::new();
        slots.claimed(4, 0);
        assert_eq!(slots.room(), 0);
        let mut permits = Vec::new();
        for _ in 0..4 {
            permits.push(slots.acquire(&stop).await.expect("permit"));
        }
        // Runs of 1 ms: 80 jobs ahead (the k-th waits about k/4 ms, the last 20 ms).
        for permit in permits.drain(..) {
            slots.release(Some(permit), Duration::from_millis(1));
        }
        assert_eq!(slots.room(), 4 + 80);
        // Runs of 10 µs: ahead as far as MAX_AHEAD, not the 8,000 the horizon would allow.
        let slots = Slots::new(4, Duration::from_millis(20));
        slots.claimed(1, 0);
        let permit = slots.acquire(&stop).await.expect("permit");
        slots.release(Some(permit), Duration::from_micros(10));
        assert_eq!(slots.room(), 4 + MAX_AHEAD);
        // Jobs of 1 MiB inputs: only as many ahead as make MAX_AHEAD_BYTES (64 MiB).
        let slots = Slots::new(4, Duration::from_millis(20));
        slots.claimed(1, 1 << 20);
        let permit = slots.acquire(&stop).await.expect("permit");
        slots.release(Some(permit), Duration::from_micros(10));
        assert_eq!(slots.room(), 4 + 64);
        // Runs of 40 ms: two jobs ahead would each wait 10–20 ms; more would wait longer.
        let slots = Slots::new(4, Duration::from_millis(20));
        slots.claimed(1, 0);
        let permit = slots.acquire(&stop).await.expect("permit");
        slots.release(Some(permit), Duration::from_millis(40));
        assert_eq!(slots.room(), 4 + 2);
        // Runs far longer than the horizon: nothing ahead.
        let slots = Slots::new(4, Duration::from_millis(20));
        slots.claimed(1, 0);
        let permit = slots.acquire(&stop).await.expect("permit");
        slots.release(Some(permit), Duration::from_secs(10));
        assert_eq!(slots.room(), 4);
    }

    #[tokio::test]
    async fn a_stopped_pool_hands_waiting_jobs_back() {
        let slots = Slots::new(1, Duration::ZERO);
        let stop = CancellationToken::new();
        slots.claimed(2, 0);
        let held = slots.acquire(&stop).await.expect("the free slot");
        stop.cancel();
        assert!(slots.acquire(&stop).await.is_none());
        assert_eq!(slots.room(), 0, "one slot, held");
        slots.release(Some(held), Duration::from_millis(1));
        assert_eq!(slots.room(), 1, "no horizon: never ahead");
    }

    #[tokio::test]
    async fn a_lent_slot_makes_room_and_a_run_back_from_waiting_takes_it_in_turn() {
        let slots = Slots::new(1, Duration::ZERO);
        let stop = CancellationToken::new();
        slots.claimed(1, 0);
        let permit = slots.acquire(&stop).await.expect("slot");
        assert_eq!(slots.room(), 0);
        slots.lend(permit);
        assert_eq!(slots.room(), 1, "the slot is free while its run waits");
        slots.claimed(1, 0);
        let other = slots.acquire(&stop).await.expect("the lent slot");
        // The waiting run wants its slot back: it counts against the room, and gets the slot
        // once it frees.
        let back = {
            let slots = Arc::clone(&slots);
            tokio::spawn(async move { slots.reacquire().await })
        };
        while slots.waiting.load(Ordering::Acquire) == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(slots.room(), 0);
        slots.release(Some(other), Duration::from_millis(1));
        let permit = back.await.expect("task").expect("slot");
        assert_eq!(slots.room(), 0);
        slots.release(Some(permit), Duration::from_millis(1));
        assert_eq!(slots.room(), 1);
    }
}
