//! Counters and histograms a pool keeps about its work, exported as Prometheus metrics.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::store::RunStatus;

/// Label set for runs by final status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    /// The run status.
    pub status: String,
}

/// What a pool has done since it started.
#[derive(Debug)]
pub struct PoolStats {
    claimed: Counter,
    claims: Counter,
    runs: Family<StatusLabel, Counter>,
    in_flight: Gauge,
    waiting: Gauge,
    events: Counter,
    fuel: Counter,
    claim_seconds: Histogram,
    finish_seconds: Histogram,
    run_seconds: Histogram,
    write_failures: Counter,
    records_rejected: Counter,
    outcomes_lost: Counter,
    outcomes_pending: Gauge,
    fenced: Counter,
}

impl Default for PoolStats {
    fn default() -> Self {
        // 50 µs … ~26 s.
        let buckets = || exponential_buckets(0.000_05, 2.0, 20);
        Self {
            claimed: Counter::default(),
            claims: Counter::default(),
            runs: Family::default(),
            in_flight: Gauge::default(),
            waiting: Gauge::default(),
            events: Counter::default(),
            fuel: Counter::default(),
            claim_seconds: Histogram::new(buckets()),
            finish_seconds: Histogram::new(buckets()),
            run_seconds: Histogram::new(buckets()),
            write_failures: Counter::default(),
            records_rejected: Counter::default(),
            outcomes_lost: Counter::default(),
            outcomes_pending: Gauge::default(),
            fenced: Counter::default(),
        }
    }
}

impl PoolStats {
    pub(crate) fn record_claim(&self, jobs: usize, took: Duration) {
        self.claimed.inc_by(jobs as u64);
        self.claims.inc();
        self.claim_seconds.observe(took.as_secs_f64());
    }

    pub(crate) fn run_started(&self) {
        self.in_flight.inc();
    }

    pub(crate) fn run_ended(&self, status: RunStatus, took: Duration, fuel: Option<u64>) {
        self.in_flight.dec();
        self.runs
            .get_or_create(&StatusLabel {
                status: status.as_str().to_string(),
            })
            .inc();
        self.run_seconds.observe(took.as_secs_f64());
        if let Some(fuel) = fuel {
            self.fuel.inc_by(fuel);
        }
    }

    pub(crate) fn run_waiting(&self) {
        self.waiting.inc();
    }

    pub(crate) fn run_resumed(&self) {
        self.waiting.dec();
    }

    pub(crate) fn record_events(&self, n: usize) {
        self.events.inc_by(n as u64);
    }

    pub(crate) fn record_finish_latency(&self, took: Duration) {
        self.finish_seconds.observe(took.as_secs_f64());
    }

    pub(crate) fn record_write_failure(&self) {
        self.write_failures.inc();
    }

    pub(crate) fn record_rejected(&self) {
        self.records_rejected.inc();
    }

    pub(crate) fn record_lost_outcomes(&self, n: usize) {
        self.outcomes_lost.inc_by(n as u64);
    }

    pub(crate) fn outcomes_pending(&self, delta: i64) {
        self.outcomes_pending.inc_by(delta);
    }

    pub(crate) fn record_fenced(&self) {
        self.fenced.inc();
    }

    /// Failed attempts at writing runs, events or outcomes (each is retried, or isolated).
    pub fn write_failures(&self) -> u64 {
        self.write_failures.get()
    }

    /// Records the database refused outright (each replaced by a short error, or dropped).
    pub fn records_rejected(&self) -> u64 {
        self.records_rejected.get()
    }

    /// Runs stopped because their lease may have expired without a confirmed renewal.
    pub fn fenced(&self) -> u64 {
        self.fenced.get()
    }

    /// Jobs claimed so far.
    pub fn claimed(&self) -> u64 {
        self.claimed.get()
    }

    /// Claims that returned jobs.
    pub fn claims(&self) -> u64 {
        self.claims.get()
    }

    /// Runs currently executing.
    pub fn in_flight(&self) -> i64 {
        self.in_flight.get()
    }

    /// Runs currently waiting on I/O without a CPU slot (each holding a waiting permit).
    pub fn waiting(&self) -> i64 {
        self.waiting.get()
    }

    /// Runs that ended with `status`.
    pub fn runs_with_status(&self, status: RunStatus) -> u64 {
        self.runs
            .get_or_create(&StatusLabel {
                status: status.as_str().to_string(),
            })
            .get()
    }

    /// Adds the pool's metrics to a Prometheus registry.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "drover_jobs_claimed",
            "Jobs claimed by this host",
            self.claimed.clone(),
        );
        registry.register(
            "drover_runs_finished",
            "Runs finished by this host, by status",
            self.runs.clone(),
        );
        registry.register(
            "drover_runs_in_flight",
            "Runs executing on this host",
            self.in_flight.clone(),
        );
        registry.register(
            "drover_runs_waiting",
            "Runs on this host waiting on I/O without a CPU slot",
            self.waiting.clone(),
        );
        registry.register(
            "drover_events_written",
            "Run events written by this host",
            self.events.clone(),
        );
        registry.register(
            "drover_fuel_consumed",
            "WebAssembly fuel consumed by runs on this host",
            self.fuel.clone(),
        );
        registry.register(
            "drover_claim_seconds",
            "Time to claim a batch of jobs",
            self.claim_seconds.clone(),
        );
        registry.register(
            "drover_complete_seconds",
            "Time to record a batch of job outcomes",
            self.finish_seconds.clone(),
        );
        registry.register(
            "drover_run_seconds",
            "Run durations",
            self.run_seconds.clone(),
        );
        registry.register(
            "drover_record_write_failures",
            "Failed attempts at writing runs, events or job outcomes (each retried or isolated)",
            self.write_failures.clone(),
        );
        registry.register(
            "drover_records_rejected",
            "Records the database refused outright, replaced by a short error or dropped",
            self.records_rejected.clone(),
        );
        registry.register(
            "drover_outcomes_lost",
            "Finished runs whose lease was lost before their outcome was recorded",
            self.outcomes_lost.clone(),
        );
        registry.register(
            "drover_outcomes_pending",
            "Finished runs whose outcome is not yet durable",
            self.outcomes_pending.clone(),
        );
        registry.register(
            "drover_runs_fenced",
            "Runs stopped because their lease may have expired without a confirmed renewal",
            self.fenced.clone(),
        );
    }
}
