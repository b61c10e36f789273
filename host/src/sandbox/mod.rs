//! Sandboxes run one agent for one job. The [`SandboxFor`] hook picks one per job:
//!
//! * the **none sandbox** ([`NoneSandbox`]) runs trusted code in-process with no isolation and no
//!   limits: native Rust agents, or WebAssembly agents you trust;
//! * the **wasm sandbox** ([`wasm::WasmSandbox`]) runs a WebAssembly component in a fresh
//!   instance, deny-by-default, held to the agent's fuel, memory, time, output and event limits.

mod context;
mod none;
pub mod wasm;

use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::value::RawValue;

use crate::queue::{ErrorInfo, Job};
use crate::registry::AgentSpec;
use crate::store::RunStatus;

pub use context::{
    AbortReason, Control, EventBudget, MIN_LOG_EVENT_BYTES, RunContext, RunIdentity,
};
pub use none::NoneSandbox;

/// Runs agents.
pub trait Sandbox: Send + Sync + 'static {
    /// Short name recorded on runs (`none`, `wasm`).
    fn name(&self) -> &'static str;

    /// Whether runs here are held to the agent's limits (the host's side of them too: event
    /// counts and bytes). The none sandbox, for trusted code, holds them to none.
    fn holds_to_limits(&self) -> bool {
        true
    }

    /// Runs `spec` on `input`. Must return (not panic) whatever the agent does; an abort
    /// requested through `ctx.control()` should end the run promptly.
    fn run<'a>(
        &'a self,
        spec: &'a AgentSpec,
        input: Arc<RawValue>,
        ctx: RunContext,
    ) -> BoxFuture<'a, RunOutcome>;
}

/// Chooses the sandbox for a job.
pub type SandboxFor = Arc<dyn Fn(&Job, &AgentSpec) -> Arc<dyn Sandbox> + Send + Sync>;

/// What a run produced.
#[derive(Debug)]
pub struct RunOutcome {
    /// The output, or why there is none.
    pub result: Result<Arc<RawValue>, Failure>,
    /// Fuel consumed, where metered.
    pub fuel_used: Option<u64>,
    /// Peak linear memory in bytes, where measured.
    pub peak_memory: Option<u64>,
}

impl RunOutcome {
    /// An outcome with no resource figures.
    pub fn from_result(result: Result<Arc<RawValue>, Failure>) -> Self {
        Self {
            result,
            fuel_used: None,
            peak_memory: None,
        }
    }
}

/// Why a run produced no output.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The run status to record (`error`, `quota`, `timeout`, …).
    pub status: RunStatus,
    /// What happened.
    pub error: ErrorInfo,
    /// Whether the job may be tried again (attempts permitting).
    pub retry: bool,
}

impl Failure {
    /// An ordinary, retryable error.
    pub fn error(tag: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status: RunStatus::Error,
            error: ErrorInfo::new(tag, message),
            retry: true,
        }
    }

    /// An error that another attempt would only repeat (bad input, a limit the agent hit).
    pub fn permanent(tag: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            retry: false,
            ..Self::error(tag, message)
        }
    }

    /// Sets the run status.
    pub fn with_status(mut self, status: RunStatus) -> Self {
        self.status = status;
        self
    }
}
