//! Waiting-run admission: a run-to-completion job that waits on I/O (inside
//! [`RunContext::waiting`](crate::sandbox::RunContext::waiting)) lends its CPU slot back to the
//! pool for the wait, holding one of the pool's waiting permits instead.
//!
//! So `concurrency` bounds the runs that compute at once, and `max_waiting_runs` the runs that
//! wait at once besides: at most `concurrency + max_waiting_runs` runs are under way. A run
//! holds its waiting permit until it has its slot again, and a run that holds a slot never
//! blocks on a waiting permit (it waits holding its slot instead, and trades it when a permit
//! frees up), so neither side can hold up the other.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::PoolStats;
use super::slots::Slots;
use crate::sandbox::WaitAdmission;

/// One run's slot, lent out and taken back as the run waits.
pub(super) struct RunSlot {
    inner: Arc<Inner>,
}

struct Inner {
    lane: Arc<Slots>,
    permits: Arc<Semaphore>,
    stats: Arc<PoolStats>,
    /// Cancelled when the run is over: a slot being taken back is not wanted any more.
    done: CancellationToken,
    state: Mutex<State>,
}

struct State {
    /// The run's CPU slot, while it holds it.
    slot: Option<OwnedSemaphorePermit>,
    /// The waiting permit, while the run waits without its slot.
    permit: Option<OwnedSemaphorePermit>,
    /// Waiting sections open.
    open: usize,
    /// A section's close is taking the slot back.
    reacquiring: bool,
    /// The run is over.
    closed: bool,
    /// Time the run held its slot, apart from since `held_since`.
    held: Duration,
    /// Since when the run holds its slot (`None` while it waits without it).
    held_since: Option<Instant>,
}

impl RunSlot {
    /// A run holding `slot` of `lane`, able to wait under one of `permits`.
    pub(super) fn new(
        slot: OwnedSemaphorePermit,
        lane: Arc<Slots>,
        permits: Arc<Semaphore>,
        stats: Arc<PoolStats>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                lane,
                permits,
                stats,
                done: CancellationToken::new(),
                state: Mutex::new(State {
                    slot: Some(slot),
                    permit: None,
                    open: 0,
                    reacquiring: false,
                    closed: false,
                    held: Duration::ZERO,
                    held_since: Some(Instant::now()),
                }),
            }),
        }
    }

    /// What the run's context uses to wait.
    pub(super) fn admission(&self) -> Arc<dyn WaitAdmission> {
        Arc::new(Self {
            inner: Arc::clone(&self.inner),
        })
    }

    /// Ends the run: returns its slot (if it holds it; `None` if it ended while waiting) and
    /// how long it held it in all. Any waiting permit goes back.
    pub(super) fn close(&self) -> (Option<OwnedSemaphorePermit>, Duration) {
        let mut state = self.inner.state();
        state.closed = true;
        self.inner.done.cancel();
        if let Some(since) = state.held_since.take() {
            state.held += since.elapsed();
        }
        if state.permit.take().is_some() {
            self.inner.stats.run_resumed();
        }
        (state.slot.take(), state.held)
    }
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the run holds its slot inside an open section, and so should trade it.
    fn should_trade(state: &State) -> bool {
        state.open > 0 && !state.closed && state.slot.is_some() && state.permit.is_none()
    }

    /// Takes the slot back for a run whose last section closed.
    async fn reacquire(self: Arc<Self>) {
        /// Clears the flag if the wait is given up (the future dropped).
        struct Reacquiring<'a>(Option<&'a Inner>);
        impl Drop for Reacquiring<'_> {
            fn drop(&mut self) {
                if let Some(inner) = self.0 {
                    inner.state().reacquiring = false;
                }
            }
        }
        let mut flag = Reacquiring(Some(&self));
        let slot = tokio::select! {
            slot = self.lane.reacquire() => slot,
            () = self.done.cancelled() => None,
        };
        let mut state = self.state();
        // Cleared under the same lock as the decision, so that a section closing after this
        // takes the slot back itself.
        state.reacquiring = false;
        flag.0 = None;
        if state.closed || state.open > 0 {
            // The run is over, or a new section opened meanwhile and the run waits on.
            drop(state);
            if let Some(slot) = slot {
                self.lane.lend(slot);
            }
            return;
        }
        state.slot = slot;
        state.held_since = Some(Instant::now());
        if state.permit.take().is_some() {
            self.stats.run_resumed();
        }
    }
}

impl WaitAdmission for RunSlot {
    fn enter(&self) {
        self.inner.state().open += 1;
    }

    fn trade(&self) -> BoxFuture<'_, ()> {
        async move {
            if !Inner::should_trade(&self.inner.state()) {
                return;
            }
            let permit = tokio::select! {
                permit = Arc::clone(&self.inner.permits).acquire_owned() => permit.ok(),
                () = self.inner.done.cancelled() => None,
            };
            let Some(permit) = permit else {
                return;
            };
            let mut state = self.inner.state();
            if !Inner::should_trade(&state) {
                return;
            }
            state.permit = Some(permit);
            if let Some(since) = state.held_since.take() {
                state.held += since.elapsed();
            }
            let slot = state.slot.take();
            drop(state);
            self.inner.stats.run_waiting();
            if let Some(slot) = slot {
                self.inner.lane.lend(slot);
            }
        }
        .boxed()
    }

    fn leave(&self) -> BoxFuture<'static, ()> {
        let mut state = self.inner.state();
        state.open = state.open.saturating_sub(1);
        let reacquire =
            state.open == 0 && state.permit.is_some() && !state.closed && !state.reacquiring;
        if !reacquire {
            return futures::future::ready(()).boxed();
        }
        state.reacquiring = true;
        drop(state);
        Arc::clone(&self.inner).reacquire().boxed()
    }
}
