//! `/metrics`: the host's Prometheus metrics. Queue and run counts are read from the databases
//! at scrape time; the pool's counters and latency histograms are kept as it works.

use std::sync::Mutex;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{ApiError, RunApi};
use crate::pool::{PoolStats, StatusLabel};
use crate::queue::JobStatus;
use crate::store::RunStatus;

/// The metrics registry of one host.
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    jobs: Family<StatusLabel, Gauge>,
    runs: Family<StatusLabel, Gauge>,
}

impl Metrics {
    /// Metrics for a host; `pool` adds the counters of a pool running in this process.
    pub fn new(pool: Option<&PoolStats>) -> Self {
        let mut registry = Registry::default();
        let jobs = Family::<StatusLabel, Gauge>::default();
        let runs = Family::<StatusLabel, Gauge>::default();
        registry.register("drover_jobs", "Jobs in the queue, by status", jobs.clone());
        registry.register("drover_runs", "Runs in the store, by status", runs.clone());
        if let Some(pool) = pool {
            pool.register(&mut registry);
        }
        Self {
            registry: Mutex::new(registry),
            jobs,
            runs,
        }
    }

    /// Refreshes the database-derived gauges and renders everything as text.
    pub async fn render(&self, api: &RunApi) -> Result<String, ApiError> {
        let jobs = api.queue().counts().await?;
        let runs = api.store().counts().await?;
        for status in JobStatus::ALL {
            self.jobs
                .get_or_create(&StatusLabel {
                    status: status.as_str().to_string(),
                })
                .set(jobs.get(&status).copied().unwrap_or(0));
        }
        for status in RunStatus::ALL {
            self.runs
                .get_or_create(&StatusLabel {
                    status: status.as_str().to_string(),
                })
                .set(runs.get(&status).copied().unwrap_or(0));
        }
        let mut text = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        encode(&mut text, &registry).map_err(|e| {
            ApiError::BadRequest(crate::queue::ErrorInfo::new("Metrics", e.to_string()))
        })?;
        Ok(text)
    }
}
