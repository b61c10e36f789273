//! `/metrics`: the host's Prometheus metrics. Queue and run counts are read from the databases
//! at scrape time; the pool's counters and latency histograms are kept as it works; the model
//! gateway's calls, failures, tokens and cost per agent and alias, and the tool calls per agent
//! and tool, are read at scrape time.

use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{ApiError, RunApi};
use crate::model::{ModelGateway, ModelMetrics};
use crate::pool::{PoolStats, StatusLabel};
use crate::queue::JobStatus;
use crate::sandbox::caps::{Capabilities, ToolMetrics};
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

    /// Adds the model gateway's counters: `drover_model_calls_total`,
    /// `drover_model_failures_total`, `drover_model_input_tokens_total`,
    /// `drover_model_output_tokens_total` and `drover_model_cost_usd_total`, labelled by
    /// `agent` and `alias`.
    pub fn register_models(&self, models: ModelGateway) {
        self.registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .register_collector(Box::new(ModelCollector(models)));
    }

    /// Exports the tool calls of `caps` (read at each scrape): `drover_tool_calls_total` and
    /// `drover_tool_failures_total`, by agent and tool.
    pub fn register_tools(&self, caps: Arc<Capabilities>) {
        self.registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .register_collector(Box::new(ToolCollector(caps)));
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

/// Labels of the model gateway's counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    agent: String,
    alias: String,
}

/// A counter of [`ModelMetrics`]: name, help, and how to read it.
type ModelCounter = (&'static str, &'static str, fn(&ModelMetrics) -> u64);

/// Reads the model gateway's per-(agent, alias) counters at each scrape.
#[derive(Debug)]
struct ModelCollector(ModelGateway);

impl Collector for ModelCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let metrics = self.0.metrics();
        let labels: Vec<ModelLabels> = metrics
            .iter()
            .map(|m| ModelLabels {
                agent: m.agent_id.clone(),
                alias: m.alias.clone(),
            })
            .collect();
        let counters: [ModelCounter; 4] = [
            (
                "drover_model_calls",
                "Model calls, by agent and alias",
                |m| m.calls,
            ),
            (
                "drover_model_failures",
                "Model calls that failed, by agent and alias",
                |m| m.failures,
            ),
            (
                "drover_model_input_tokens",
                "Input tokens of model calls, by agent and alias",
                |m| m.input_tokens,
            ),
            (
                "drover_model_output_tokens",
                "Output tokens of model calls, by agent and alias",
                |m| m.output_tokens,
            ),
        ];
        for (name, help, value) in counters {
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                ConstCounter::new(0u64).metric_type(),
            )?;
            for (m, labels) in metrics.iter().zip(&labels) {
                ConstCounter::new(value(m)).encode(family.encode_family(labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "drover_model_cost_usd",
            "Cost of model calls in US dollars, by agent and alias",
            None,
            ConstCounter::new(0.0f64).metric_type(),
        )?;
        for (m, labels) in metrics.iter().zip(&labels) {
            ConstCounter::new(m.cost_usd).encode(family.encode_family(labels)?)?;
        }
        Ok(())
    }
}

/// Labels of the tool-call counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ToolLabels {
    agent: String,
    tool: String,
}

/// A counter of [`ToolMetrics`]: name, help, and how to read it.
type ToolCounter = (&'static str, &'static str, fn(&ToolMetrics) -> u64);

/// Reads the host's per-(agent, tool) tool-call counters at each scrape.
#[derive(Debug)]
struct ToolCollector(Arc<Capabilities>);

impl Collector for ToolCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let metrics = self.0.tool_metrics();
        let counters: [ToolCounter; 2] = [
            ("drover_tool_calls", "Tool calls, by agent and tool", |m| {
                m.calls
            }),
            (
                "drover_tool_failures",
                "Tool calls that failed, by agent and tool",
                |m| m.failures,
            ),
        ];
        for (name, help, value) in counters {
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                ConstCounter::new(0u64).metric_type(),
            )?;
            for m in &metrics {
                let labels = ToolLabels {
                    agent: m.agent_id.clone(),
                    tool: m.tool.clone(),
                };
                ConstCounter::new(value(m)).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
