//! Other agents this agent drives: spawn a child job, wait for it, stop it, list them.
//!
//! ```no_run
//! use drover_sdk::agents::{self, SpawnOptions, Status};
//! use drover_sdk::json;
//!
//! # fn main() -> Result<(), drover_sdk::Error> {
//! let child = agents::spawn("echo", &json!({"n": 1}), SpawnOptions::default())?;
//! let outcome = agents::wait(&child, std::time::Duration::from_secs(30))?;
//! if outcome.status == Status::Done {
//!     let output: serde_json::Value = outcome.output()?.unwrap_or_default();
//!     drover_sdk::emit("child_done", &output)?;
//! }
//! # Ok(())
//! # }
//! ```
//!
//! The agent's manifest says what it may spawn (`[children]`: `allowed`, `max-depth`,
//! `max-fan-out`, `max-total`); the host refuses the rest with `ChildNotAllowed`, `MaxDepth`,
//! `MaxFanOut` or `MaxTotal`. A child lives no longer than the run that spawned it: when the run
//! ends, the host asks its unfinished children to stop.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::__private::drover::agent::agents as wit;
use crate::__private::drover::agent::types;
use crate::{Error, Lifecycle};

fn error(failure: types::Failure) -> Error {
    Error {
        tag: failure.tag,
        message: failure.message,
        retryable: failure.retryable,
    }
}

/// How to enqueue a child.
#[derive(Debug, Clone, Copy, Default)]
pub struct SpawnOptions {
    /// Higher is claimed first (default 0).
    pub priority: Option<i32>,
    /// Attempts the child gets (default 1).
    pub max_attempts: Option<u32>,
    /// The lifecycle expected of the agent (a spawn of an agent with another is refused).
    pub lifecycle: Option<Lifecycle>,
}

/// Where a child is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Waiting for its due time.
    Scheduled,
    /// Waiting to be claimed.
    Queued,
    /// Running.
    Running,
    /// Finished successfully.
    Done,
    /// Finished unsuccessfully.
    Failed,
    /// Cancelled, or stopped, before it started.
    Cancelled,
}

impl Status {
    /// Whether the child has finished.
    pub fn is_finished(self) -> bool {
        matches!(self, Status::Done | Status::Failed | Status::Cancelled)
    }
}

impl From<wit::ChildStatus> for Status {
    fn from(status: wit::ChildStatus) -> Self {
        match status {
            wit::ChildStatus::Scheduled => Status::Scheduled,
            wit::ChildStatus::Queued => Status::Queued,
            wit::ChildStatus::Running => Status::Running,
            wit::ChildStatus::Done => Status::Done,
            wit::ChildStatus::Failed => Status::Failed,
            wit::ChildStatus::Cancelled => Status::Cancelled,
        }
    }
}

/// A child as [`wait`] found it.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Its status (unfinished when the wait returned first).
    pub status: Status,
    /// Its output (JSON text), once done.
    pub output: Option<String>,
    /// Why it failed or was cancelled.
    pub error: Option<Error>,
}

impl Outcome {
    /// The output, decoded.
    pub fn output<T: DeserializeOwned>(&self) -> Result<Option<T>, Error> {
        self.output
            .as_deref()
            .map(serde_json::from_str)
            .transpose()
            .map_err(Error::from)
    }
}

/// One child of this run.
#[derive(Debug, Clone)]
pub struct Child {
    /// Its job id.
    pub id: String,
    /// The agent it runs.
    pub agent_id: String,
    /// Its status.
    pub status: Status,
}

/// Enqueues a job of `agent_id` with `input` as a child of this run; returns its job id.
pub fn spawn(
    agent_id: &str,
    input: &impl Serialize,
    options: SpawnOptions,
) -> Result<String, Error> {
    let input = serde_json::to_string(input)?;
    let options = wit::SpawnOptions {
        priority: options.priority,
        max_attempts: options.max_attempts,
        lifecycle: options.lifecycle.map(|l| match l {
            Lifecycle::Job => types::Lifecycle::Job,
            Lifecycle::LongLived => types::Lifecycle::LongLived,
        }),
    };
    wit::spawn(agent_id, &input, options).map_err(error)
}

/// Waits up to `timeout` for child `child_id` to finish (returns earlier, unfinished, when
/// this run is asked to stop). This run holds no CPU slot of its host while it waits.
pub fn wait(child_id: &str, timeout: Duration) -> Result<Outcome, Error> {
    let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    let outcome = wit::wait(child_id, ms).map_err(error)?;
    Ok(Outcome {
        status: outcome.status.into(),
        output: outcome.output,
        error: outcome.error.map(error),
    })
}

/// Asks child `child_id` (and its children) to stop.
pub fn stop(child_id: &str) -> Result<(), Error> {
    wit::stop(child_id).map_err(error)
}

/// The children this run has spawned, oldest first.
pub fn list() -> Vec<Child> {
    wit::list_children()
        .into_iter()
        .map(|c| Child {
            id: c.id,
            agent_id: c.agent_id,
            status: c.status.into(),
        })
        .collect()
}
