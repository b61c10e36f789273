//! Runs (one execution of an agent for a job) and the events they emit.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::queue::{ErrorInfo, Lifecycle};

/// How a run ended (or that it has not yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Still executing.
    Running,
    /// Returned an output (or, for a long-lived agent, stopped when asked).
    Success,
    /// Returned an error or trapped.
    Error,
    /// Aborted by a cancel request.
    Cancelled,
    /// Ran out of fuel.
    Quota,
    /// Ran past its wall-clock limit.
    Timeout,
    /// Cut off by the host: a stop it ignored past its grace period, or a host shutdown.
    Interrupted,
    /// Its worker lost the lease (or died); the outcome was not recorded on the job.
    Lost,
}

impl RunStatus {
    /// Every status.
    pub const ALL: [RunStatus; 8] = [
        RunStatus::Running,
        RunStatus::Success,
        RunStatus::Error,
        RunStatus::Cancelled,
        RunStatus::Quota,
        RunStatus::Timeout,
        RunStatus::Interrupted,
        RunStatus::Lost,
    ];

    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Success => "success",
            RunStatus::Error => "error",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Quota => "quota",
            RunStatus::Timeout => "timeout",
            RunStatus::Interrupted => "interrupted",
            RunStatus::Lost => "lost",
        }
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RunStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| format!("unknown run status {s:?}"))
    }
}

/// One execution of an agent.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Run {
    /// Unique id (a time-ordered UUID).
    pub id: String,
    /// The job it ran for.
    pub job_id: Option<String>,
    /// The agent.
    pub agent_id: String,
    /// Which claim of the job this was (1 for the first).
    pub attempt: i64,
    /// The run that started this one, if any.
    pub parent_run_id: Option<String>,
    /// Current status.
    pub status: RunStatus,
    /// Which sandbox ran it (`none` or `wasm`).
    pub sandbox: Option<String>,
    /// The agent's lifecycle.
    pub lifecycle: Lifecycle,
    /// The input it was given. The run store keeps it only for runs without a job; the
    /// producer API fills it in from the job when it serves a run (see
    /// [`crate::api::RunApi::run`]).
    pub input: Option<Arc<RawValue>>,
    /// Its output, on success.
    pub output: Option<Arc<RawValue>>,
    /// Why it failed.
    pub error: Option<ErrorInfo>,
    /// Start time (epoch ms).
    pub started_at: i64,
    /// End time (epoch ms).
    pub ended_at: Option<i64>,
    /// Last sign of life from the agent (epoch ms).
    pub heartbeat_at: Option<i64>,
    /// Fuel consumed (wasm sandbox).
    pub fuel_used: Option<i64>,
    /// Largest linear memory, in bytes (wasm sandbox).
    pub peak_memory: Option<i64>,
    /// The worker that ran it.
    pub worker_id: Option<String>,
    /// What its model and tool calls used; none if it made none.
    pub usage: Option<Usage>,
    /// The tenant of its job (none: no tenant).
    pub tenant_id: Option<String>,
    /// The user of its job.
    pub user_id: Option<String>,
}

/// What a run's model and tool calls used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    /// Model calls (turns of the conversation).
    pub turns: u32,
    /// Input (prompt) tokens over all model calls.
    pub input_tokens: u64,
    /// Output (completion) tokens over all model calls.
    pub output_tokens: u64,
    /// What the model calls cost, in US dollars, at the prices configured for their aliases.
    pub cost_usd: f64,
    /// Tool calls.
    pub tool_calls: u32,
}

/// Something a run reported, in order.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// The run.
    #[serde(skip)]
    pub run_id: String,
    /// Position in the run's timeline, from 1.
    pub seq: i64,
    /// When (epoch ms).
    pub ts: i64,
    /// What kind (`run_start`, `run_end`, `log`, `heartbeat`, or the agent's own).
    pub kind: String,
    /// Details (JSON).
    pub payload: Arc<RawValue>,
}

/// Which runs [`crate::store::RunStore::list_runs`] returns (newest first).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunFilter {
    /// Only these statuses (empty: all).
    #[serde(default)]
    pub status: Vec<RunStatus>,
    /// Only this agent.
    #[serde(default)]
    pub agent_id: Option<String>,
    /// Only this job.
    #[serde(default)]
    pub job_id: Option<String>,
    /// Only long-lived (or only job) agents.
    #[serde(default)]
    pub lifecycle: Option<Lifecycle>,
    /// Only this tenant's runs.
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// At most this many (default 50, at most 1000).
    #[serde(default)]
    pub limit: Option<u32>,
    /// Skip this many.
    #[serde(default)]
    pub offset: Option<u32>,
}
