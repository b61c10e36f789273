//! Agents that drive agents: a run spawns child jobs, waits for them, stops them and lists
//! them (the `drover:agent/agents` interface; its linker glue is `sandbox/wasm/children.rs`).
//!
//! Shaped like the host's other capabilities:
//!
//! * **the host's part** ([`Children`]): the queue children are enqueued in, the run store their
//!   outputs are read from, and the registry that says which agents exist;
//! * **the agent's policy**: its manifest's `[children]` ([`ChildrenPolicy`]: the agents it may
//!   spawn, `max-depth`, `max-fan-out`, `max-total`), checked at load (an allowed agent that is
//!   not loaded is a load problem) and enforced here at every spawn;
//! * **the run's state** ([`RunChildren`]): which run is calling, and its policy; everything
//!   else lives in the queue's database (each child's `parent_job_id`, `parent_run_id`,
//!   `root_job_id` and `depth`), so that every host sharing the database sees the same tree.
//!
//! A child belongs to the run that spawned it: only that run may wait for it or stop it
//! (another run's job is `NotFound`, exactly like no job). A child inherits its parent job's
//! tenant and user.
//!
//! # No orphans
//!
//! A child lives no longer than the run that spawned it. When a run ends — it returns, fails,
//! is cancelled or stopped, or its host dies and another host reclaims its expired lease —
//! every unfinished job below its job is asked to stop (a queued one is cancelled). Stopping a
//! job (`DELETE /v1/agents/{id}`, `POST /v1/jobs/{id}/stop`, `agents.stop`) asks its whole tree
//! below to stop with the same grace semantics (a long-lived child that stops when asked is
//! completed); cancelling a job cancels its tree below. All of it is flags in the database
//! (see [`Queue::stop`], [`Queue::cancel`] and [`Queue::finish`]), so it reaches children
//! running on any host.

mod budget;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::value::RawValue;

use crate::db::DbError;
use crate::queue::{
    ErrorInfo, Job, JobFilter, JobStatus, Lifecycle, Lineage, NewJob, Queue, QueueError,
};
use crate::registry::{ChildrenPolicy, Quota, Registry};
use crate::store::RunStore;

pub use budget::{Exceeded, TreeBudget, TreeBudgetError};

/// Longest a single `wait` may wait (a run's own time limit still applies).
pub const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);
/// Most children `list` returns.
pub const MAX_LISTED: u32 = 1000;
/// Longest pause between polls of a child another host runs.
const POLL_MAX: Duration = Duration::from_millis(250);

/// The host's part: where children are enqueued and looked up.
#[derive(Clone)]
pub struct Children {
    queue: Queue,
    store: RunStore,
    registry: Arc<dyn Registry>,
}

impl std::fmt::Debug for Children {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Children")
            .field("queue", &self.queue)
            .finish()
    }
}

/// The run that calls: whose children it spawns and may touch.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Its agent.
    pub agent_id: String,
    /// Its job.
    pub job_id: String,
    /// The run.
    pub run_id: String,
}

/// How to enqueue a child.
#[derive(Debug, Clone, Copy, Default)]
pub struct SpawnOptions {
    /// Higher is claimed first (default 0).
    pub priority: Option<i32>,
    /// Attempts the child gets (default 1).
    pub max_attempts: Option<u32>,
    /// The lifecycle the caller expects the agent to have.
    pub lifecycle: Option<Lifecycle>,
}

/// A child as a wait found it.
#[derive(Debug, Clone)]
pub struct ChildOutcome {
    /// Its status (unfinished if the wait returned before it finished).
    pub status: JobStatus,
    /// Its output, once done.
    pub output: Option<Arc<RawValue>>,
    /// Why it failed or was cancelled.
    pub error: Option<ErrorInfo>,
}

/// One run's children: the caller and its policy.
#[derive(Debug, Clone)]
pub struct RunChildren {
    host: Children,
    policy: ChildrenPolicy,
    caller: Caller,
    /// The caller's own `[quota]`: when it is a root, what its tree is given.
    quota: Quota,
}

impl Children {
    /// Children enqueued in `queue`, their outputs read from `store`, of the agents in
    /// `registry`; creates (or migrates) the ledger of tree budgets in `queue`'s database.
    pub async fn open(
        queue: Queue,
        store: RunStore,
        registry: Arc<dyn Registry>,
    ) -> Result<Self, DbError> {
        queue.db().migrate("children", budget::MIGRATIONS).await?;
        Ok(Self {
            queue,
            store,
            registry,
        })
    }

    /// The children of one run of an agent with `policy` and `quota`.
    pub fn for_run(&self, policy: ChildrenPolicy, quota: Quota, caller: Caller) -> RunChildren {
        RunChildren {
            host: self.clone(),
            policy,
            caller,
            quota,
        }
    }

    /// The account of the tree a run is in, if its runs share one: a child's (`root_job_id`:
    /// its root), charged if its root keeps one; or a root's, if its agent may spawn (`policy`)
    /// and has a `quota`. See [`budget`](self::budget).
    pub fn tree_budget(
        &self,
        policy: &ChildrenPolicy,
        quota: Quota,
        caller: &Caller,
        root_job_id: Option<&str>,
    ) -> Option<TreeBudget> {
        let db = self.queue.db().clone();
        match root_job_id {
            Some(root) => Some(TreeBudget::member(db, root.to_string())),
            None if policy.allowed.is_empty() || quota.is_unlimited() => None,
            None => Some(TreeBudget::root(
                db,
                caller.job_id.clone(),
                caller.run_id.clone(),
                quota,
            )),
        }
    }
}

/// Deletes the tree budgets of roots that are gone from `queue` (pruned by retention), at most
/// `batch` per statement, creating their table first if no host has yet; returns how many went.
pub async fn prune_budgets(queue: &Queue, batch: usize) -> Result<u64, DbError> {
    queue.db().migrate("children", budget::MIGRATIONS).await?;
    budget::prune_orphans(queue.db(), batch).await
}

fn failure(tag: &str, message: impl Into<String>) -> ErrorInfo {
    ErrorInfo::new(tag, message)
}

/// A database failure, as a run hears of it.
fn unavailable(e: QueueError) -> ErrorInfo {
    tracing::warn!(error = %e, "a child operation failed");
    failure(
        "Unavailable",
        "the host could not reach its queue; try again",
    )
}

impl RunChildren {
    /// The calling run.
    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    /// Enqueues a job of `agent_id` with JSON `input` as a child of the caller's job, if its
    /// policy allows it. Fails with `ChildNotAllowed`, `UnknownAgent`, `InvalidInput`,
    /// `MaxDepth`, `MaxFanOut`, `MaxTotal`, or `Unavailable` (the database failed; nothing is
    /// enqueued then either).
    pub async fn spawn(
        &self,
        agent_id: &str,
        input: String,
        options: SpawnOptions,
    ) -> Result<Job, ErrorInfo> {
        let policy = &self.policy;
        if !policy.allowed.iter().any(|a| a == agent_id) {
            return Err(failure(
                "ChildNotAllowed",
                format!(
                    "agent {:?} may not spawn agent {agent_id:?} (its manifest's [children] \
                     allowed: {})",
                    self.caller.agent_id,
                    if policy.allowed.is_empty() {
                        "none".to_string()
                    } else {
                        policy.allowed.join(", ")
                    }
                ),
            ));
        }
        let spec = self.host.registry.get(agent_id).ok_or_else(|| {
            failure(
                "UnknownAgent",
                format!("no agent with id {agent_id:?} is loaded on this host"),
            )
        })?;
        if let Some(expected) = options.lifecycle
            && expected != spec.lifecycle
        {
            return Err(failure(
                "InvalidInput",
                format!(
                    "agent {agent_id:?} is {}, not {}",
                    spec.lifecycle.as_str(),
                    expected.as_str()
                ),
            ));
        }
        let input = RawValue::from_string(input)
            .map_err(|e| failure("InvalidInput", format!("the input is not JSON: {e}")))?;
        if let Some(schema) = &spec.input_schema {
            let value: serde_json::Value = serde_json::from_str(input.get())
                .map_err(|e| failure("InvalidInput", format!("the input is not JSON: {e}")))?;
            schema.validate(&value).map_err(|problems| {
                failure(
                    "InvalidInput",
                    format!(
                        "the input does not match the schema of agent {agent_id:?}: {problems}"
                    ),
                )
            })?;
        }
        let queue = &self.host.queue;
        let parent = queue
            .get(&self.caller.job_id)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| failure("NotFound", "this run has no job to be the parent"))?;
        let depth = parent.depth + 1;
        if depth > i64::from(policy.max_depth) {
            return Err(failure(
                "MaxDepth",
                format!(
                    "a child of this job would be at depth {depth}; agent {:?} may spawn down to \
                     depth {} ([children] max-depth)",
                    self.caller.agent_id, policy.max_depth
                ),
            ));
        }
        let live = queue.live_children(&parent.id).await.map_err(unavailable)?;
        if live >= i64::from(policy.max_fan_out) {
            return Err(failure(
                "MaxFanOut",
                format!(
                    "this job has {live} unfinished children; agent {:?} may have {} at once \
                     ([children] max-fan-out)",
                    self.caller.agent_id, policy.max_fan_out
                ),
            ));
        }
        let total = queue
            .tree_size(&parent.root_job_id)
            .await
            .map_err(unavailable)?;
        if total >= i64::from(policy.max_total) {
            return Err(failure(
                "MaxTotal",
                format!(
                    "the tree of job {} has {total} jobs below its root; agent {:?} may grow it \
                     to {} ([children] max-total)",
                    parent.root_job_id, self.caller.agent_id, policy.max_total
                ),
            ));
        }
        if parent.parent_job_id.is_none()
            && let Some(tree) = self
                .host
                .tree_budget(&self.policy, self.quota, &self.caller, None)
        {
            // A root's tree is given its quota before its first child can use any of it.
            tree.open()
                .await
                .map_err(|e| unavailable(QueueError::from(e)))?;
        }
        let mut job = NewJob {
            input: Arc::from(input),
            priority: options.priority.map_or(0, i64::from),
            max_attempts: options.max_attempts.map(i64::from),
            lifecycle: spec.lifecycle,
            max_restarts: spec.max_restarts,
            tenant_id: parent.tenant_id.clone(),
            user_id: parent.user_id.clone(),
            ..NewJob::new(agent_id, &serde_json::Value::Null)
        };
        job = job.child_of(Lineage {
            parent_job_id: parent.id.clone(),
            parent_run_id: self.caller.run_id.clone(),
            root_job_id: parent.root_job_id.clone(),
            depth,
        });
        match queue.enqueue(job).await {
            Ok(enqueued) => Ok(enqueued.job),
            Err(QueueError::Invalid(message)) => Err(failure("InvalidInput", message)),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Child `child_id` of this run, or `NotFound` (for a job that is another's as for none).
    async fn own(&self, child_id: &str) -> Result<Job, ErrorInfo> {
        self.host
            .queue
            .get(child_id)
            .await
            .map_err(unavailable)?
            .filter(|job| job.parent_run_id.as_deref() == Some(self.caller.run_id.as_str()))
            .ok_or_else(|| {
                failure(
                    "NotFound",
                    format!("job {child_id:?} is not a child of this run"),
                )
            })
    }

    /// Waits up to `timeout` (at most [`MAX_WAIT`]) for child `child_id` to finish, or until
    /// `stop` resolves, and says how it is then. Woken at once when a pool in this process
    /// finishes it; polls when another host runs it.
    pub async fn wait(
        &self,
        child_id: &str,
        timeout: Duration,
        stop: impl Future<Output = ()>,
    ) -> Result<ChildOutcome, ErrorInfo> {
        let mut job = self.own(child_id).await?;
        let deadline = Instant::now() + timeout.min(MAX_WAIT);
        let watch = self.host.queue.hub().watch(child_id);
        let mut poll = Duration::from_millis(10);
        tokio::pin!(stop);
        while !job.status.is_terminal() {
            let notified = watch.notify().notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            job = self.own(child_id).await?;
            let now = Instant::now();
            if job.status.is_terminal() || now >= deadline {
                break;
            }
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep(poll.min(deadline - now)) => {}
                () = &mut stop => break,
            }
            poll = (poll * 2).min(POLL_MAX);
        }
        let output = match (&job.run_id, job.status) {
            (Some(run_id), JobStatus::Done) => self
                .host
                .store
                .get_run(run_id)
                .await
                .map_err(|e| {
                    tracing::warn!(error = %e, "reading a child's run failed");
                    failure("Unavailable", "the host could not read the child's run")
                })?
                .and_then(|run| run.output),
            _ => None,
        };
        Ok(ChildOutcome {
            status: job.status,
            output,
            error: job.result_error,
        })
    }

    /// Asks child `child_id` and its tree below to stop (see [`Queue::stop`]).
    pub async fn stop(&self, child_id: &str) -> Result<(), ErrorInfo> {
        let child = self.own(child_id).await?;
        if child.status.is_terminal() {
            return Ok(());
        }
        self.host.queue.stop(child_id).await.map_err(unavailable)?;
        Ok(())
    }

    /// The children this run spawned, oldest first (at most [`MAX_LISTED`]).
    pub async fn list(&self) -> Result<Vec<Job>, ErrorInfo> {
        let mut jobs = self
            .host
            .queue
            .list(&JobFilter {
                parent_job_id: Some(self.caller.job_id.clone()),
                limit: Some(MAX_LISTED),
                ..JobFilter::default()
            })
            .await
            .map_err(unavailable)?;
        jobs.retain(|job| job.parent_run_id.as_deref() == Some(self.caller.run_id.as_str()));
        jobs.reverse();
        Ok(jobs)
    }
}
