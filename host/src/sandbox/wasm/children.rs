//! The `drover:agent/agents` import: a guest's spawns, waits, stops and lists of its children,
//! handed to the run's [`RunChildren`] (see [`crate::children`]) and converted between the WIT
//! records and the host's types. A spawn, refused or not, is an event of the run
//! (`child_spawned {childJobId, agentId}`, `child_refused {agentId, tag, message}`), counted
//! against its event limits; a wait gives the run's CPU slot back for as long as it waits.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::bindings::drover::agent::{agents, types};
use super::state::HostState;
use crate::children::{RunChildren, SpawnOptions};
use crate::queue::{ErrorInfo, Job, JobStatus, Lifecycle};

fn wit_failure(error: ErrorInfo) -> types::Failure {
    types::Failure {
        retryable: error.tag == "Unavailable",
        tag: error.tag,
        message: error.message,
    }
}

fn status(status: JobStatus) -> agents::ChildStatus {
    match status {
        JobStatus::Scheduled => agents::ChildStatus::Scheduled,
        JobStatus::Queued => agents::ChildStatus::Queued,
        JobStatus::Leased => agents::ChildStatus::Running,
        JobStatus::Done => agents::ChildStatus::Done,
        JobStatus::Failed => agents::ChildStatus::Failed,
        JobStatus::Cancelled => agents::ChildStatus::Cancelled,
    }
}

fn info(job: Job) -> agents::ChildInfo {
    agents::ChildInfo {
        status: status(job.status),
        id: job.id,
        agent_id: job.agent_id,
    }
}

impl HostState {
    /// The run's children, or the failure a guest hears on a host without them.
    fn children(&self) -> Result<RunChildren, types::Failure> {
        self.children.clone().ok_or_else(|| types::Failure {
            tag: "ChildrenUnavailable".into(),
            message: "this host does not let agents spawn children".into(),
            retryable: false,
        })
    }
}

impl agents::Host for HostState {
    async fn spawn(
        &mut self,
        agent_id: String,
        input: String,
        options: agents::SpawnOptions,
    ) -> wasmtime::Result<Result<String, types::Failure>> {
        self.work.add(agent_id.len() + input.len());
        let ctx = self.run_ctx()?.clone();
        let children = match self.children() {
            Ok(children) => children,
            Err(failure) => return Ok(Err(failure)),
        };
        let options = SpawnOptions {
            priority: options.priority,
            max_attempts: options.max_attempts,
            lifecycle: options.lifecycle.map(|l| match l {
                types::Lifecycle::Job => Lifecycle::Job,
                types::Lifecycle::LongLived => Lifecycle::LongLived,
            }),
        };
        let spawned = children.spawn(&agent_id, input, options).await;
        let (kind, payload) = match &spawned {
            Ok(job) => (
                "child_spawned",
                json!({ "childJobId": job.id, "agentId": agent_id }),
            ),
            Err(error) => (
                "child_refused",
                json!({ "agentId": agent_id, "tag": error.tag, "message": error.message }),
            ),
        };
        if let Err(error) = ctx.emit(kind, &payload).await {
            return Err(self.fail(error));
        }
        Ok(spawned.map(|job| job.id).map_err(wit_failure))
    }

    async fn wait(
        &mut self,
        child_id: String,
        timeout_ms: u64,
    ) -> wasmtime::Result<Result<agents::ChildOutcome, types::Failure>> {
        let ctx = self.run_ctx()?.clone();
        let children = match self.children() {
            Ok(children) => children,
            Err(failure) => return Ok(Err(failure)),
        };
        let control = Arc::clone(ctx.control());
        let stopped = async move { control.stopped().await };
        let outcome = ctx
            .waiting(children.wait(&child_id, Duration::from_millis(timeout_ms), stopped))
            .await;
        Ok(outcome
            .map(|outcome| agents::ChildOutcome {
                status: status(outcome.status),
                output: outcome.output.map(|o| o.get().to_string()),
                error: outcome.error.map(wit_failure),
            })
            .map_err(wit_failure))
    }

    async fn stop(&mut self, child_id: String) -> wasmtime::Result<Result<(), types::Failure>> {
        self.run_ctx()?;
        let children = match self.children() {
            Ok(children) => children,
            Err(failure) => return Ok(Err(failure)),
        };
        Ok(children.stop(&child_id).await.map_err(wit_failure))
    }

    async fn list_children(&mut self) -> wasmtime::Result<Vec<agents::ChildInfo>> {
        self.run_ctx()?;
        let Ok(children) = self.children() else {
            return Ok(Vec::new());
        };
        match children.list().await {
            Ok(jobs) => Ok(jobs.into_iter().map(info).collect()),
            Err(error) => Err(self.fail(error)),
        }
    }
}
