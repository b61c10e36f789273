//! The worker pool: claims jobs under leases, runs each in the sandbox that `sandbox_for` picks,
//! and records the outcome, for as long as it holds the lease.
//!
//! Background loops keep the pool honest: leases of in-flight jobs are renewed together in one
//! statement, cancel and stop requests reach running jobs (at once from this process, by polling
//! from others), and expired leases of crashed hosts are reclaimed.

mod job;
mod recorder;
mod slots;
mod stats;
mod waiting;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::queue::{ErrorInfo, Lease, Lifecycle, Queue, Signal};
use crate::registry::Registry;
use crate::sandbox::{AbortReason, Control, SandboxFor};
use crate::store::recording::RecorderHandle;
use crate::store::{RunRecord, RunStore};
use crate::time::now_ms;

use slots::Slots;
pub use stats::{PoolStats, StatusLabel};

/// How a pool behaves.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Run-to-completion jobs run at once: the pool's CPU slots.
    pub concurrency: usize,
    /// Runs that may wait on I/O at once without holding a CPU slot (see
    /// [`RunContext::waiting`](crate::sandbox::RunContext::waiting)): at most `concurrency` runs
    /// compute and `max_waiting_runs` more wait. A run that wants to wait when none is free keeps
    /// its slot while it waits. Zero: runs keep their slot while they wait.
    pub max_waiting_runs: usize,
    /// Long-lived agents run at once. They hold their slot until stopped, so they have slots of
    /// their own and never starve ordinary jobs.
    pub max_agents: usize,
    /// How long a claim holds a job before another host may take it over.
    pub lease_duration: Duration,
    /// How often in-flight leases are renewed (default: a third of the lease).
    pub heartbeat_interval: Option<Duration>,
    /// How often expired leases (of crashed hosts) are looked for.
    pub reclaim_interval: Duration,
    /// How often cancel and stop requests made by other processes are looked for.
    pub signal_poll_interval: Duration,
    /// Longest pause between claims while the queue is empty.
    pub idle_poll_max: Duration,
    /// How long in-flight jobs may take to finish when the pool shuts down.
    pub shutdown_grace: Duration,
    /// While runs are short, the pool claims jobs ahead of free slots so that a slot that
    /// frees starts its next job at once, without a wait on the database. This is the longest
    /// a job claimed ahead should expect to wait for its slot; the pool claims ahead only as far
    /// as its recent run times allow, and not at all for runs longer than this. Zero: never.
    pub prefetch_horizon: Duration,
    /// This pool's worker id (default: host name, process id and a random suffix).
    pub worker_id: Option<String>,
    /// Threads of the pool's own runtime that runs agents, apart from the runtime the pool
    /// was started on (which keeps the API, lease renewals and the recorder), so that guests
    /// computing flat out cannot delay those. Zero: agents run on the pool's runtime.
    pub guest_threads: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            concurrency: 4,
            max_waiting_runs: DEFAULT_MAX_WAITING_RUNS,
            max_agents: 1024,
            lease_duration: Duration::from_secs(30),
            heartbeat_interval: None,
            reclaim_interval: Duration::from_secs(5),
            signal_poll_interval: Duration::from_millis(250),
            idle_poll_max: Duration::from_millis(500),
            shutdown_grace: Duration::from_secs(30),
            prefetch_horizon: Duration::from_millis(20),
            worker_id: None,
            guest_threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
        }
    }
}

/// Default for [`PoolConfig::max_waiting_runs`].
pub const DEFAULT_MAX_WAITING_RUNS: usize = 4096;

/// What a pool works with.
#[derive(Clone)]
pub struct PoolDeps {
    /// Where jobs come from.
    pub queue: Queue,
    /// Where runs and events go.
    pub store: RunStore,
    /// Which agents exist.
    pub registry: Arc<dyn Registry>,
    /// Which sandbox runs each job.
    pub sandbox_for: SandboxFor,
}

/// A pool, configured but not started.
pub struct WorkerPool {
    deps: PoolDeps,
    config: PoolConfig,
}

/// A running job, as the pool's background loops see it.
struct InFlight {
    lease: Lease,
    control: Arc<Control>,
    lifecycle: Lifecycle,
    /// When the last renewal the database confirmed was sent (at first: the claim). The lease
    /// holds until at least this plus the lease duration, by this host's monotonic clock.
    renewed: Instant,
    /// The run is over; its outcome is on its way to the database.
    finished: bool,
}

/// State shared by the pool's tasks.
struct Shared {
    deps: PoolDeps,
    config: PoolConfig,
    worker_id: Arc<str>,
    recorder: RecorderHandle,
    stats: Arc<PoolStats>,
    in_flight: Mutex<HashMap<String, InFlight>>,
    /// Slots for run-to-completion jobs.
    job_slots: Arc<Slots>,
    /// Slots for long-lived agents (never claimed ahead: they keep their slot until stopped).
    agent_slots: Arc<Slots>,
    /// Permits for jobs waiting on I/O without their slot.
    waiting_permits: Arc<tokio::sync::Semaphore>,
    /// Stops claiming.
    stop_claiming: CancellationToken,
    /// Stops the background loops.
    stop_loops: CancellationToken,
    /// Tells the recorder to stop retrying writes (the shutdown grace period is over).
    give_up_writes: CancellationToken,
    /// Long-lived agents asked to stop because this host is shutting down (not because anyone
    /// wants them stopped): however they end, they are handed back, to go on elsewhere.
    handing_back: Mutex<std::collections::HashSet<String>>,
    /// The runtime agents run on (see [`PoolConfig::guest_threads`]).
    guests: Option<GuestRuntime>,
}

/// A runtime of the pool's own for its agents; shut down without waiting when dropped (runs
/// still on it are aborted by then).
struct GuestRuntime(Option<tokio::runtime::Runtime>);

impl Drop for GuestRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

impl Shared {
    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashMap<String, InFlight>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where agents run, if the pool has guest threads of its own.
    fn guests(&self) -> Option<&tokio::runtime::Handle> {
        self.guests
            .as_ref()
            .and_then(|g| g.0.as_ref())
            .map(tokio::runtime::Runtime::handle)
    }

    /// The ids of the jobs in flight.
    fn running_ids(&self) -> Vec<String> {
        self.in_flight().keys().cloned().collect()
    }

    /// Whether a long-lived agent's job was asked to stop only because this host shuts down.
    fn handing_back(&self, job_id: &str) -> bool {
        self.handing_back
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(job_id)
    }

    fn apply(&self, signal: &Signal) {
        if signal.stop {
            // Someone wants it stopped for good, shutdown or not.
            self.handing_back
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&signal.job_id);
        }
        if let Some(job) = self.in_flight().get(&signal.job_id) {
            if signal.cancel {
                job.control.abort(AbortReason::Cancelled);
            }
            if signal.stop {
                job.control.request_stop();
            }
        }
    }
}

impl WorkerPool {
    /// A pool over `deps`.
    pub fn new(deps: PoolDeps, config: PoolConfig) -> Self {
        Self { deps, config }
    }

    /// Starts claiming and running jobs on the current tokio runtime.
    pub fn start(self) -> PoolHandle {
        let mut config = self.config;
        config.concurrency = config.concurrency.max(1);
        config.max_agents = config.max_agents.max(1);
        config.reclaim_interval = config.reclaim_interval.max(MIN_LOOP_PERIOD);
        config.signal_poll_interval = config.signal_poll_interval.max(MIN_LOOP_PERIOD);
        let worker_id: Arc<str> = config
            .worker_id
            .clone()
            .unwrap_or_else(default_worker_id)
            .into();
        let stats = Arc::new(PoolStats::default());
        let give_up_writes = CancellationToken::new();
        let (recorder, recorder_task) = recorder::spawn(
            self.deps.queue.clone(),
            self.deps.store.clone(),
            Arc::clone(&stats),
            give_up_writes.clone(),
        );
        let guests = (config.guest_threads > 0)
            .then(|| {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(config.guest_threads)
                    .thread_name("drover-guest")
                    .enable_all()
                    .build()
                    .map_err(|e| {
                        tracing::warn!(error = %e, "cannot start guest threads; agents run beside the pool");
                    })
                    .ok()
            })
            .flatten()
            .map(|runtime| GuestRuntime(Some(runtime)));
        let shared = Arc::new(Shared {
            guests,
            job_slots: Slots::new(config.concurrency, config.prefetch_horizon),
            agent_slots: Slots::new(config.max_agents, Duration::ZERO),
            waiting_permits: Arc::new(tokio::sync::Semaphore::new(
                config
                    .max_waiting_runs
                    .min(tokio::sync::Semaphore::MAX_PERMITS),
            )),
            deps: self.deps,
            config,
            worker_id: Arc::clone(&worker_id),
            recorder,
            stats: Arc::clone(&stats),
            in_flight: Mutex::new(HashMap::new()),
            stop_claiming: CancellationToken::new(),
            stop_loops: CancellationToken::new(),
            give_up_writes,
            handing_back: Mutex::default(),
        });
        let jobs = TaskTracker::new();
        let claimer = tokio::spawn(claim_loop(Arc::clone(&shared), jobs.clone()));
        let loops = vec![
            tokio::spawn(heartbeat_loop(Arc::clone(&shared))),
            tokio::spawn(fence_loop(Arc::clone(&shared))),
            tokio::spawn(signal_loop(Arc::clone(&shared))),
            tokio::spawn(reclaim_loop(Arc::clone(&shared))),
        ];
        tracing::info!(
            worker_id = %worker_id,
            concurrency = shared.config.concurrency,
            max_waiting_runs = shared.config.max_waiting_runs,
            max_agents = shared.config.max_agents,
            lease_ms = shared.config.lease_duration.as_millis() as u64,
            "worker pool started"
        );
        PoolHandle {
            shared,
            jobs,
            claimer,
            loops,
            recorder_task,
            worker_id,
            stats,
        }
    }
}

/// A running pool.
pub struct PoolHandle {
    shared: Arc<Shared>,
    jobs: TaskTracker,
    claimer: tokio::task::JoinHandle<()>,
    loops: Vec<tokio::task::JoinHandle<()>>,
    recorder_task: tokio::task::JoinHandle<()>,
    worker_id: Arc<str>,
    stats: Arc<PoolStats>,
}

impl PoolHandle {
    /// The id this pool claims jobs under.
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// Counters about the pool's work.
    pub fn stats(&self) -> &Arc<PoolStats> {
        &self.stats
    }

    /// Waits until everything recorded so far is written.
    pub async fn flush(&self) {
        self.shared.recorder.flush().await;
    }

    /// Stops gracefully: no new claims; jobs in flight get the shutdown grace period to finish,
    /// then are aborted and handed back to the queue (not failed) for another host. Long-lived
    /// agents, which would not finish, are asked to stop at once (they finish the item at hand)
    /// and handed back however they end, to carry on elsewhere: a host shutting down is no
    /// reason to stop them for good.
    pub async fn shutdown(self) {
        let shared = &self.shared;
        let grace = shared.config.shutdown_grace;
        let deadline = tokio::time::Instant::now() + grace;
        shared.stop_claiming.cancel();
        // A claim already on its way to the database still starts its jobs; wait for it, so
        // every job this pool holds is in flight (and handled below) before looking. A claim
        // that hangs (an unreachable remote database) is abandoned; whatever it leased is
        // handed back below, or expires and is reclaimed.
        let mut claimer = self.claimer;
        if tokio::time::timeout_at(deadline, &mut claimer)
            .await
            .is_err()
        {
            tracing::warn!("a claim did not return within the shutdown grace period");
            claimer.abort();
        }
        self.jobs.close();
        let (mut jobs, mut agents) = (0, 0);
        for (job_id, job) in shared.in_flight().iter() {
            if job.lifecycle == Lifecycle::LongLived {
                agents += 1;
                if !job.control.stop_requested() {
                    shared
                        .handing_back
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(job_id.clone());
                    job.control.request_stop();
                }
            } else {
                jobs += 1;
            }
        }
        if jobs + agents > 0 {
            tracing::info!(
                jobs,
                long_lived_agents = agents,
                grace_ms = deadline
                    .saturating_duration_since(tokio::time::Instant::now())
                    .as_millis() as u64,
                "waiting for in-flight jobs to finish and long-lived agents to stop"
            );
        }
        if !wait_saying_what_for(shared, &self.jobs, deadline).await {
            let remaining: Vec<Arc<Control>> = shared
                .in_flight()
                .values()
                .map(|j| Arc::clone(&j.control))
                .collect();
            tracing::warn!(
                remaining = remaining.len(),
                "shutdown grace period over; handing the remaining jobs back"
            );
            for control in remaining {
                control.abort(AbortReason::Shutdown);
            }
            // Outcomes that still cannot be written are abandoned: their leases expire and the
            // jobs are reclaimed.
            if tokio::time::timeout(grace, self.jobs.wait()).await.is_err() {
                tracing::warn!("outcomes are still not written; abandoning them");
                shared.give_up_writes.cancel();
                self.jobs.wait().await;
            }
        }
        // Jobs this pool claimed but never started (a claim abandoned above) go back unused.
        release_orphans(shared, Duration::ZERO).await;
        shared.stop_loops.cancel();
        for task in self.loops {
            let _ = task.await;
        }
        shared.give_up_writes.cancel();
        shared.recorder.flush().await;
        drop(self.shared);
        self.recorder_task.abort();
        tracing::info!(worker_id = %self.worker_id, "worker pool stopped");
    }
}

/// How often a shutdown says what it is still waiting for.
const SHUTDOWN_PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Waits until the pool's jobs have all ended, or `deadline`; every
/// [`SHUTDOWN_PROGRESS_EVERY`] it logs which are still running and how much grace is left.
/// Returns whether they ended.
async fn wait_saying_what_for(
    shared: &Shared,
    jobs: &TaskTracker,
    deadline: tokio::time::Instant,
) -> bool {
    let ended = jobs.wait();
    tokio::pin!(ended);
    loop {
        let next = (tokio::time::Instant::now() + SHUTDOWN_PROGRESS_EVERY).min(deadline);
        tokio::select! {
            () = &mut ended => return true,
            () = tokio::time::sleep_until(next) => {}
        }
        if next >= deadline {
            return false;
        }
        let (count, ids) = {
            let in_flight = shared.in_flight();
            let mut ids: Vec<&str> = in_flight.keys().map(String::as_str).collect();
            ids.sort_unstable();
            let shown = ids.iter().take(5).copied().collect::<Vec<_>>().join(", ");
            (in_flight.len(), shown)
        };
        tracing::info!(
            in_flight = count,
            jobs = %ids,
            grace_left_ms = deadline
                .saturating_duration_since(tokio::time::Instant::now())
                .as_millis() as u64,
            "still waiting for in-flight work to end"
        );
    }
}

fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_string());
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}-{}", std::process::id(), &suffix[..6])
}

/// Shortest period of the background loops (renewals, signal polls, reclaims).
const MIN_LOOP_PERIOD: Duration = Duration::from_millis(10);

/// Shortest pause between claims while the queue is empty.
const IDLE_POLL_MIN: Duration = Duration::from_millis(5);

/// One kind of slot: jobs, or long-lived agents. Each lane claims only its own kind of job and
/// backs off on its own when there is nothing for it.
struct Lane {
    lifecycle: Lifecycle,
    slots: Arc<Slots>,
    idle: Duration,
    next_claim: Instant,
}

impl Lane {
    fn new(lifecycle: Lifecycle, slots: &Arc<Slots>) -> Self {
        Self {
            lifecycle,
            slots: Arc::clone(slots),
            idle: IDLE_POLL_MIN,
            next_claim: Instant::now(),
        }
    }

    /// How many jobs this lane would take now.
    fn room(&self) -> usize {
        self.slots.room()
    }

    /// Claims again at once.
    fn wake(&mut self, now: Instant) {
        self.idle = IDLE_POLL_MIN;
        self.next_claim = now;
    }

    /// Found less than it asked for: wait longer before the next look.
    fn back_off(&mut self, now: Instant, max: Duration) {
        self.next_claim = now + self.idle;
        self.idle = (self.idle * 2).min(max);
    }
}

async fn claim_loop(shared: Arc<Shared>, jobs: TaskTracker) {
    let queue = shared.deps.queue.clone();
    let max_idle = shared.config.idle_poll_max;
    let mut lanes = [
        Lane::new(Lifecycle::Job, &shared.job_slots),
        Lane::new(Lifecycle::LongLived, &shared.agent_slots),
    ];
    while !shared.stop_claiming.is_cancelled() {
        // Listen for in-process enqueues before looking, so none slips between the two.
        let enqueued = queue.hub().enqueued();
        tokio::pin!(enqueued);
        enqueued.as_mut().enable();

        let now = Instant::now();
        let mut claimed_any = false;
        // While outcomes cannot be written, new work would only add to what is at risk.
        let writes_failing = shared.recorder.failing();
        for lane in &mut lanes {
            let room = lane.room();
            if room == 0
                || now < lane.next_claim
                || writes_failing
                || shared.stop_claiming.is_cancelled()
            {
                continue;
            }
            // Only jobs of the agents this host has: the others are left for hosts that have
            // them (a rolling deploy, a fleet of different hosts, an agent being replaced).
            let specs = shared.deps.registry.list();
            let agents: Vec<&str> = specs
                .iter()
                .filter(|s| s.lifecycle == lane.lifecycle)
                .map(|s| s.id.as_str())
                .collect();
            let started = Instant::now();
            match queue
                .claim_for(
                    &shared.worker_id,
                    shared.config.lease_duration,
                    room,
                    Some(lane.lifecycle),
                    Some(&agents),
                )
                .await
            {
                Ok(claimed) => {
                    let got = claimed.len();
                    if got > 0 {
                        shared.stats.record_claim(got, started.elapsed());
                        claimed_any = true;
                    }
                    // Each job is in flight from now on (renewed, reachable by signals), and its
                    // task waits for a slot of the lane.
                    let input_bytes = claimed.iter().map(|job| job.job.input.get().len()).sum();
                    lane.slots.claimed(got, input_bytes);
                    for job in claimed {
                        let admitted = job::admit(&shared, job, started);
                        jobs.spawn(job::run(
                            Arc::clone(&shared),
                            admitted,
                            Arc::clone(&lane.slots),
                        ));
                    }
                    if got < room {
                        lane.back_off(now, max_idle);
                    } else {
                        lane.wake(now);
                    }
                }
                Err(e) => {
                    // The claim may have applied without its answer arriving (a remote
                    // database): whatever it leased is handed back by the reclaim loop, unused.
                    tracing::warn!(error = %e, "claiming jobs failed; retrying");
                    lane.next_claim = now + max_idle;
                }
            }
        }
        if claimed_any {
            continue;
        }

        // Nothing to do now: sleep until a lane may look again, a full lane makes room, a job
        // is enqueued in this process, or the pool stops.
        let next = if writes_failing {
            now + IDLE_POLL_MIN * 20
        } else {
            lanes
                .iter()
                .filter(|l| l.room() > 0)
                .map(|l| l.next_claim)
                .min()
                .unwrap_or(now + max_idle)
        };
        let [jobs_lane, agents_lane] = &lanes;
        let woke_by_enqueue = tokio::select! {
            () = &mut enqueued => true,
            () = tokio::time::sleep_until(next.into()) => false,
            () = jobs_lane.slots.changed(), if jobs_lane.room() == 0 => false,
            () = agents_lane.slots.changed(), if agents_lane.room() == 0 => false,
            () = shared.stop_claiming.cancelled() => break,
        };
        if woke_by_enqueue {
            let now = Instant::now();
            lanes.iter_mut().for_each(|lane| lane.wake(now));
        }
    }
}

async fn heartbeat_loop(shared: Arc<Shared>) {
    let period = shared
        .config
        .heartbeat_interval
        .unwrap_or(shared.config.lease_duration / 3)
        .max(MIN_LOOP_PERIOD);
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shared.stop_loops.cancelled() => break,
        }
        let leases: Vec<Lease> = shared
            .in_flight()
            .values()
            .map(|j| j.lease.clone())
            .collect();
        if leases.is_empty() {
            continue;
        }
        let sent = Instant::now();
        match shared
            .deps
            .queue
            .renew(&leases, shared.config.lease_duration)
            .await
        {
            Ok(held) => {
                let mut in_flight = shared.in_flight();
                for lease in &leases {
                    let Some(job) = in_flight.get_mut(&lease.job_id) else {
                        continue;
                    };
                    if job.lease != *lease {
                        continue;
                    }
                    if held.contains(&lease.job_id) {
                        job.renewed = job.renewed.max(sent);
                    } else if !job.finished {
                        tracing::warn!(job_id = %lease.job_id, "lease lost; aborting the run");
                        job.control.abort(AbortReason::LeaseLost);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "renewing leases failed"),
        }
    }
}

/// Stops every run whose lease may have expired: no renewal confirmed for the lease duration
/// less a margin, by this host's monotonic clock. A host cut off from the database (or paused)
/// cannot know whether another host has taken its jobs over; past that point it must assume
/// so, or two copies of a job would run at once.
async fn fence_loop(shared: Arc<Shared>) {
    let lease = shared.config.lease_duration;
    let margin = lease / 5;
    let period = (lease / 10).clamp(MIN_LOOP_PERIOD, Duration::from_secs(1));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shared.stop_loops.cancelled() => break,
        }
        let now = Instant::now();
        for (job_id, job) in shared.in_flight().iter() {
            if job.finished || job.control.aborted().is_some() {
                continue;
            }
            if now.saturating_duration_since(job.renewed) + margin >= lease {
                tracing::warn!(
                    %job_id,
                    unconfirmed_ms = now.saturating_duration_since(job.renewed).as_millis() as u64,
                    "no lease renewal confirmed in time; stopping the run, as another host may own the job now"
                );
                shared.stats.record_fenced();
                job.control.abort(AbortReason::LeaseLost);
            }
        }
    }
}

async fn signal_loop(shared: Arc<Shared>) {
    let mut local = shared.deps.queue.hub().subscribe_signals();
    let mut ticker = tokio::time::interval(shared.config.signal_poll_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            signal = local.recv() => match signal {
                Ok(signal) => shared.apply(&signal),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    local = shared.deps.queue.hub().subscribe_signals();
                }
            },
            _ = ticker.tick() => {
                if shared.in_flight().is_empty() {
                    continue;
                }
                match shared.deps.queue.signals(&shared.worker_id).await {
                    Ok(signals) => signals.iter().for_each(|s| shared.apply(s)),
                    Err(e) => tracing::warn!(error = %e, "polling cancel requests failed"),
                }
            }
            () = shared.stop_loops.cancelled() => break,
        }
    }
}

async fn reclaim_loop(shared: Arc<Shared>) {
    let mut ticker = tokio::time::interval(shared.config.reclaim_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shared.stop_loops.cancelled() => break,
        }
        // Jobs this host leased but is not running (a claim whose answer was lost) go back
        // unused; expired leases of other hosts are recovered. Its own running jobs are never
        // reclaimed here, however late their renewals are (a paused host fences itself).
        release_orphans(&shared, shared.config.lease_duration / 2).await;
        let running = shared.running_ids();
        let reclaimed = match shared
            .deps
            .queue
            .reclaim_expired(&shared.worker_id, &running)
            .await
        {
            Ok(reclaimed) => reclaimed,
            Err(e) => {
                tracing::warn!(error = %e, "reclaiming expired leases failed");
                continue;
            }
        };
        if reclaimed.is_empty() {
            continue;
        }
        tracing::info!(jobs = reclaimed.len(), "reclaimed expired leases");
        let error = ErrorInfo::new(
            "LeaseExpired",
            "the worker running this attempt stopped renewing its lease",
        );
        let now = now_ms();
        let lost: Vec<RunRecord> = reclaimed
            .iter()
            .map(|r| RunRecord::lost_attempt(r, &error, now))
            .collect();
        if let Err(e) = shared.deps.store.mark_attempts_lost(&lost).await {
            tracing::warn!(error = %e, "marking lost runs failed");
        }
    }
}

/// Hands back the jobs leased to this pool that it is not running and that were claimed at
/// least `min_age` ago, without using an attempt.
async fn release_orphans(shared: &Shared, min_age: Duration) {
    let running = shared.running_ids();
    match shared
        .deps
        .queue
        .release_orphans(&shared.worker_id, &running, min_age)
        .await
    {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            jobs = n,
            "handed back jobs this host claimed but never started"
        ),
        Err(e) => tracing::warn!(error = %e, "handing back unstarted jobs failed"),
    }
}
