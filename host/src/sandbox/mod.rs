//! Sandboxes run one agent for one job. The [`SandboxFor`] hook picks one per job:
//!
//! * the **none sandbox** ([`NoneSandbox`]) runs trusted code in-process with no isolation and no
//!   limits: native Rust agents, or WebAssembly agents you trust;
//! * the **wasm sandbox** ([`wasm::WasmSandbox`]) runs a WebAssembly component in a fresh
//!   instance, deny-by-default, held to the agent's fuel, memory, time, output and event limits.
//!
//! Both run declarative agents (a prompt, a model alias, tools and budgets; no code) with the
//! host's built-in agent loop, and both give a run the model and tool calls its manifest allows
//! ([`caps`]); tools always run in wasm sandboxes of their own.

pub mod caps;
mod context;
mod declarative;
pub mod native;
mod none;
pub mod wasm;

use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::value::RawValue;

use crate::queue::{ErrorInfo, Job};
use crate::registry::AgentSpec;
use crate::store::{RunStatus, Usage};

pub use context::{
    AbortReason, Control, EventBudget, MIN_LOG_EVENT_BYTES, RunContext, RunIdentity, WaitAdmission,
};
pub use native::{NativeAgent, native_agent};
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
    /// What the run's model and tool calls used; none if it made none.
    pub usage: Option<Usage>,
}

impl RunOutcome {
    /// An outcome with no resource figures and no usage.
    pub fn from_result(result: Result<Arc<RawValue>, Failure>) -> Self {
        Self {
            result,
            fuel_used: None,
            peak_memory: None,
            usage: None,
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

/// Longest failure tag kept, in bytes.
pub const MAX_ERROR_TAG_BYTES: usize = 64;
/// Longest failure message kept, in bytes (the truncation marker included).
pub const MAX_ERROR_MESSAGE_BYTES: usize = 8 << 10;

/// A failure's tag and message as they are recorded: a tag longer than [`MAX_ERROR_TAG_BYTES`]
/// is cut, a message longer than [`MAX_ERROR_MESSAGE_BYTES`] is cut and ends with a marker
/// saying how long it was (both on a character boundary). Applied to whatever an agent
/// reports, in any sandbox, before it is stored.
pub fn bounded_error(tag: impl Into<String>, message: impl Into<String>) -> ErrorInfo {
    let mut tag = tag.into();
    tag.truncate(floor_char_boundary(&tag, MAX_ERROR_TAG_BYTES));
    let mut message = message.into();
    if message.len() > MAX_ERROR_MESSAGE_BYTES {
        let marker = format!(" … [truncated; {} bytes in all]", message.len());
        let keep = MAX_ERROR_MESSAGE_BYTES.saturating_sub(marker.len());
        message.truncate(floor_char_boundary(&message, keep));
        message.push_str(&marker);
    }
    ErrorInfo { tag, message }
}

/// The largest index `<= at` that is a character boundary of `s`.
fn floor_char_boundary(s: &str, at: usize) -> usize {
    if at >= s.len() {
        return s.len();
    }
    (0..=at).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0)
}

impl Failure {
    /// An ordinary, retryable error (tag and message bounded as by [`bounded_error`]).
    pub fn error(tag: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status: RunStatus::Error,
            error: bounded_error(tag, message),
            retry: true,
        }
    }

    /// An error that another attempt would only repeat (bad input, a limit the agent hit); tag
    /// and message bounded as by [`bounded_error`].
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_tags_and_messages_are_cut_on_a_character_boundary() {
        let error = bounded_error("é".repeat(100), "ü".repeat(100_000));
        assert!(
            error.tag.len() <= MAX_ERROR_TAG_BYTES,
            "{}",
            error.tag.len()
        );
        assert_eq!(error.tag, "é".repeat(32));
        assert!(error.message.len() <= MAX_ERROR_MESSAGE_BYTES);
        assert!(
            error
                .message
                .ends_with(" … [truncated; 200000 bytes in all]"),
            "{}",
            &error.message[error.message.len() - 60..]
        );
        assert!(error.message.starts_with("üü"));

        let short = bounded_error("Tag", "a message");
        assert_eq!(short, ErrorInfo::new("Tag", "a message"));
    }
}
