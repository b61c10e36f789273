//! The job record and the values that travel with it.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Waiting for its time: scheduled for later, or a retry backing off. It becomes `queued`
    /// when due. Claims never look at these, however many there are.
    Scheduled,
    /// Due, and waiting to be claimed.
    Queued,
    /// Claimed by a worker that holds its lease.
    Leased,
    /// Finished successfully.
    Done,
    /// Finished unsuccessfully, with no attempts left (or cancelled while running).
    Failed,
    /// Cancelled before it ever started.
    Cancelled,
}

impl JobStatus {
    /// Every status, in life order.
    pub const ALL: [JobStatus; 6] = [
        JobStatus::Scheduled,
        JobStatus::Queued,
        JobStatus::Leased,
        JobStatus::Done,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ];

    /// The name stored in the database and used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Scheduled => "scheduled",
            JobStatus::Queued => "queued",
            JobStatus::Leased => "leased",
            JobStatus::Done => "done",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    /// Whether the job will never change again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Done | JobStatus::Failed | JobStatus::Cancelled
        )
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobStatus {
    type Err = String;

    /// Reads a status by its name; `running` is another name of `leased` (a claimed job is
    /// running on some host).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "running" {
            return Ok(JobStatus::Leased);
        }
        JobStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown job status {s:?} (expected scheduled, queued, running (or leased), \
                     done, failed or cancelled)"
                )
            })
    }
}

/// Whether an agent runs to completion or until it is told to stop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Lifecycle {
    /// Runs to completion and returns an output.
    #[default]
    Job,
    /// Loops until it is asked to stop; a requested stop that it honours is a success.
    LongLived,
}

impl Lifecycle {
    /// The name used in manifests and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Lifecycle::Job => "job",
            Lifecycle::LongLived => "long-lived",
        }
    }
}

/// A failure reason: a machine-readable tag (`Cancelled`, `LeaseExpired`, `OutOfFuel`, …) and a
/// message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// Machine-readable class of the failure.
    pub tag: String,
    /// Human-readable explanation.
    pub message: String,
}

impl ErrorInfo {
    /// Builds an error from a tag and a message.
    pub fn new(tag: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            tag: tag.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ErrorInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.tag, self.message)
    }
}

/// A job as stored in the queue.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    /// Unique id (caller-supplied or a UUID).
    pub id: String,
    /// The agent that runs it.
    pub agent_id: String,
    /// The agent's input (JSON).
    pub input: Arc<RawValue>,
    /// Free-form caller metadata (JSON), not interpreted by the host.
    pub meta: Option<Arc<RawValue>>,
    /// Higher is claimed first.
    pub priority: i64,
    /// Current status.
    pub status: JobStatus,
    /// Not claimed before this time (epoch ms).
    pub scheduled_for: i64,
    /// When it was enqueued (epoch ms).
    pub created_at: i64,
    /// When it last changed (epoch ms).
    pub updated_at: i64,
    /// Attempts used up by failures and expired leases.
    pub attempts: i64,
    /// Attempts allowed before the job fails for good.
    pub max_attempts: i64,
    /// How many times the job has been claimed; the fencing token of the current lease.
    pub lease_epoch: i64,
    /// The worker holding the lease, while leased.
    pub lease_owner: Option<String>,
    /// When the current lease runs out (epoch ms), while leased.
    pub lease_expires_at: Option<i64>,
    /// A cancel was requested while it ran.
    pub cancel_requested: bool,
    /// A graceful stop was requested while it ran.
    pub stop_requested: bool,
    /// The agent's lifecycle when the job was enqueued.
    pub lifecycle: Lifecycle,
    /// Restarts after a host died under a long-lived agent (these do not use up attempts).
    pub restarts: i64,
    /// Cap on such restarts (`None`: unlimited).
    pub max_restarts: Option<i64>,
    /// The run that decided the outcome.
    pub run_id: Option<String>,
    /// The status of that run (`success`, `error`, `cancelled`, …).
    pub result_status: Option<String>,
    /// Why the job failed or was cancelled.
    pub result_error: Option<ErrorInfo>,
    /// When it reached a terminal status (epoch ms).
    pub finished_at: Option<i64>,
    /// Its place in enqueue order (among jobs of equal priority, lower is claimed first).
    #[serde(skip)]
    pub seq: i64,
    /// The tenant it belongs to (see [`validate_tenant_id`]); `None`: no tenant, visible only
    /// to tokens of every tenant.
    pub tenant_id: Option<String>,
    /// The user it was started for, if the caller said.
    pub user_id: Option<String>,
    /// The job whose run spawned it (`None`: a root, enqueued by a producer).
    pub parent_job_id: Option<String>,
    /// The run of that job that spawned it.
    pub parent_run_id: Option<String>,
    /// The root of its tree: its own id for a root.
    pub root_job_id: String,
    /// How far below its root it is (0: a root).
    pub depth: i64,
}

/// Where a spawned job sits in its tree (see [`NewJob::child_of`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lineage {
    /// The job whose run spawns it.
    pub parent_job_id: String,
    /// That run.
    pub parent_run_id: String,
    /// The root of the tree.
    pub root_job_id: String,
    /// Its depth: the parent's plus one.
    pub depth: i64,
}

/// The proof of a claim. Heartbeats and outcomes are accepted only from the holder of the current
/// lease: the epoch changes with every claim, so a worker that lost its lease (even one that later
/// claimed the same job again) can never overwrite a later attempt.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Lease {
    /// The leased job.
    pub job_id: String,
    /// The claim number this lease belongs to.
    pub epoch: i64,
}

/// A job handed to a worker by [`crate::queue::Queue::claim`], with its lease.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    /// The job as it was claimed.
    pub job: Job,
    /// The lease to present with heartbeats and outcomes.
    pub lease: Lease,
}

/// A job to enqueue.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewJob {
    /// Caller-supplied id; enqueueing an existing id returns the existing job. Default: a UUID.
    #[serde(default)]
    pub id: Option<String>,
    /// The agent that runs it.
    pub agent_id: String,
    /// The agent's input (JSON). Default: `null`.
    #[serde(default = "null_json")]
    pub input: Arc<RawValue>,
    /// Caller metadata (JSON).
    #[serde(default)]
    pub meta: Option<Arc<RawValue>>,
    /// Higher is claimed first. Default 0.
    #[serde(default)]
    pub priority: i64,
    /// Not claimed before this time (epoch ms). Default: now.
    #[serde(default)]
    pub scheduled_for: Option<i64>,
    /// Attempts allowed. Default 1.
    #[serde(default)]
    pub max_attempts: Option<i64>,
    /// The agent's lifecycle (filled from the registry by the RunApi).
    #[serde(skip)]
    pub lifecycle: Lifecycle,
    /// Cap on host-death restarts of a long-lived agent (filled from the registry).
    #[serde(skip)]
    pub max_restarts: Option<i64>,
    /// The tenant the job belongs to (`tenantId`; see [`validate_tenant_id`]). A request made
    /// with a tenant's token gets that tenant whatever it says (and naming another is refused).
    /// Default: none.
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// The user the job is started for (`userId`, 1 to 256 bytes, no control characters).
    /// Default: none.
    #[serde(default)]
    pub user_id: Option<String>,
    /// Where it sits in a tree of jobs, if a run spawned it (set by the host, never by a
    /// producer).
    #[serde(skip)]
    pub lineage: Option<Lineage>,
}

/// Longest tenant id.
pub const MAX_TENANT_ID_LEN: usize = 64;
/// Longest user id.
pub const MAX_USER_ID_LEN: usize = 256;

/// Checks a tenant id: 1 to [`MAX_TENANT_ID_LEN`] ASCII letters, digits, `-`, `_` or `.`,
/// starting with a letter or digit (`*`, which stands for every tenant in API tokens, is not
/// one). The error says what is wrong.
pub fn validate_tenant_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_TENANT_ID_LEN {
        return Err(format!(
            "tenantId must be 1 to {MAX_TENANT_ID_LEN} characters long, got {}",
            id.len()
        ));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if !id.chars().all(allowed) || !id.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(format!(
            "tenantId {:?} may hold only ASCII letters, digits, '-', '_' and '.', and must start \
             with a letter or digit",
            id.chars().take(MAX_TENANT_ID_LEN).collect::<String>()
        ));
    }
    Ok(())
}

/// Checks a user id: 1 to [`MAX_USER_ID_LEN`] bytes without control characters.
pub fn validate_user_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_USER_ID_LEN {
        return Err(format!(
            "userId must be 1 to {MAX_USER_ID_LEN} bytes long, got {}",
            id.len()
        ));
    }
    if id.chars().any(char::is_control) {
        return Err("userId must not contain control characters".into());
    }
    Ok(())
}

fn null_json() -> Arc<RawValue> {
    raw_json("null")
}

/// Wraps a JSON text known to be valid (produced by serde_json) as a raw value.
pub(crate) fn raw_json(text: &str) -> Arc<RawValue> {
    RawValue::from_string(text.to_string())
        .map(Arc::from)
        .unwrap_or_else(|_| Arc::from(RawValue::NULL.to_owned()))
}

impl NewJob {
    /// A job for `agent_id` with `input`, and defaults for everything else.
    pub fn new(agent_id: impl Into<String>, input: &serde_json::Value) -> Self {
        Self {
            id: None,
            agent_id: agent_id.into(),
            input: raw_json(&input.to_string()),
            meta: None,
            priority: 0,
            scheduled_for: None,
            max_attempts: None,
            lifecycle: Lifecycle::Job,
            max_restarts: None,
            tenant_id: None,
            user_id: None,
            lineage: None,
        }
    }

    /// Makes the job a child in a tree of jobs.
    pub fn child_of(mut self, lineage: Lineage) -> Self {
        self.lineage = Some(lineage);
        self
    }

    /// Sets the tenant the job belongs to.
    pub fn tenant(mut self, tenant_id: impl Into<String>) -> Self {
        self.tenant_id = Some(tenant_id.into());
        self
    }

    /// Sets the user the job is started for.
    pub fn user(mut self, user_id: impl Into<String>) -> Self {
        self.user_id = Some(user_id.into());
        self
    }

    /// Sets the id.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Sets the priority (higher is claimed first).
    pub fn priority(mut self, priority: i64) -> Self {
        self.priority = priority;
        self
    }

    /// Sets how many attempts the job gets.
    pub fn max_attempts(mut self, max_attempts: i64) -> Self {
        self.max_attempts = Some(max_attempts);
        self
    }

    /// Schedules the job for a later time (epoch ms).
    pub fn scheduled_for(mut self, at_ms: i64) -> Self {
        self.scheduled_for = Some(at_ms);
        self
    }

    /// Attaches caller metadata.
    pub fn meta(mut self, meta: &serde_json::Value) -> Self {
        self.meta = Some(raw_json(&meta.to_string()));
        self
    }

    /// Sets the lifecycle (normally taken from the agent's spec).
    pub fn lifecycle(mut self, lifecycle: Lifecycle) -> Self {
        self.lifecycle = lifecycle;
        self
    }
}

/// The result of an enqueue: the job, and whether this call created it.
#[derive(Debug, Clone)]
pub struct Enqueued {
    /// The job (the existing one when the id was already taken).
    pub job: Job,
    /// `false` when a job with the same id already existed.
    pub created: bool,
}

/// Which jobs [`crate::queue::Queue::list`] returns (newest first).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobFilter {
    /// Only these statuses (empty: all).
    #[serde(default)]
    pub status: Vec<JobStatus>,
    /// Only this agent.
    #[serde(default)]
    pub agent_id: Option<String>,
    /// Only this tenant's jobs.
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// Only the jobs of this tree (its root among them).
    #[serde(default)]
    pub root_job_id: Option<String>,
    /// Only the children of this job.
    #[serde(default)]
    pub parent_job_id: Option<String>,
    /// At most this many (default 50, at most 1000).
    #[serde(default)]
    pub limit: Option<u32>,
    /// Skip this many.
    #[serde(default)]
    pub offset: Option<u32>,
}

/// How a worker finished with a leased job. Applied only if the lease is still current.
#[derive(Debug, Clone)]
pub struct Finish {
    /// The lease the worker holds.
    pub lease: Lease,
    /// What happened.
    pub kind: FinishKind,
    /// The run that produced this outcome.
    pub run_id: Option<String>,
    /// That run's status.
    pub result_status: Option<String>,
}

/// The outcome of a leased job.
#[derive(Debug, Clone)]
pub enum FinishKind {
    /// Success: the job is done.
    Complete,
    /// Failure: re-queued with backoff while `retry` and attempts remain, else failed.
    Fail {
        /// Why.
        error: ErrorInfo,
        /// Whether another attempt may be made.
        retry: bool,
    },
    /// Handed back untouched (the worker shut down): queued again, no attempt used.
    Release,
}

/// A job whose lease expired, as found by [`crate::queue::Queue::reclaim_stale`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reclaimed {
    /// The job.
    pub job_id: String,
    /// The epoch of the lease that expired (the attempt whose run was lost).
    pub epoch: i64,
    /// The status the job went to (`queued` again, or `failed`).
    pub status: JobStatus,
    /// Its agent.
    pub agent_id: String,
    /// When it was enqueued (epoch ms): with `job_id` and `epoch`, the run's identity.
    pub created_at: i64,
    /// When the expired lease was taken (epoch ms), if known.
    pub claimed_at: Option<i64>,
    /// Whether it is a long-lived agent's job.
    pub long_lived: bool,
    /// The run that spawned it.
    pub parent_run_id: Option<String>,
    /// Its tenant.
    pub tenant_id: Option<String>,
    /// Its user.
    pub user_id: Option<String>,
}

/// A cancel or stop request on a leased job, as seen by the pools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signal {
    /// The job.
    pub job_id: String,
    /// Abort at once.
    pub cancel: bool,
    /// Stop gracefully.
    pub stop: bool,
}
