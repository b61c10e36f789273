//! The producer API: enqueue jobs, observe them and their runs, wait for them, cancel and stop
//! them. [`RunApi`] is the Rust face; [`http`] serves the same operations as JSON over HTTP.

pub mod auth;
pub mod http;
pub mod metrics;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::inbox::{Inbox, InboxError, Message};
use crate::queue::{ErrorInfo, Job, JobFilter, JobStatus, Lifecycle, NewJob, Queue, QueueError};
use crate::registry::{AgentSpec, Registry};
use crate::store::{Event, Run, RunFilter, RunStore, StoreError};

/// Errors from the producer API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No such job or run.
    #[error("{0} not found")]
    NotFound(String),
    /// The request is malformed or names an agent that does not exist.
    #[error("{0}")]
    BadRequest(ErrorInfo),
    /// The request contradicts the state of a job: its id is taken by a different job, or it
    /// has already finished.
    #[error("{0}")]
    Conflict(ErrorInfo),
    /// The caller may not do this (a tenant's token naming another tenant).
    #[error("{0}")]
    Forbidden(ErrorInfo),
    /// The job did not finish in time; carries its current state.
    #[error("timed out waiting for job {}", .0.job.id)]
    WaitTimeout(Box<JobView>),
    /// The queue failed.
    #[error(transparent)]
    Queue(QueueError),
    /// The run store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An agent's inbox refused a message (too large, too many waiting) or failed.
    #[error(transparent)]
    Inbox(#[from] InboxError),
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        match e {
            QueueError::Invalid(message) => {
                ApiError::BadRequest(ErrorInfo::new("InvalidRequest", message))
            }
            other => ApiError::Queue(other),
        }
    }
}

/// A job and its latest run (`None` until one starts).
#[derive(Debug, Clone, Serialize)]
pub struct JobView {
    /// The job.
    pub job: Job,
    /// The run that decided a finished job; the latest run of one that is not finished.
    pub run: Option<Run>,
}

/// The producer-side API. Cheap to clone.
///
/// A `RunApi` may be scoped to a tenant ([`RunApi::for_tenant`]): it then sees only that
/// tenant's jobs, runs and events (another tenant's ids are not found, exactly like unknown
/// ones), lists only them, and enqueues only for it.
#[derive(Clone)]
pub struct RunApi {
    queue: Queue,
    store: RunStore,
    registry: Arc<dyn Registry>,
    tenant: Option<Arc<str>>,
    inbox: Option<Inbox>,
}

/// Most children [`RunApi::children`] lists.
pub const MAX_CHILDREN_LISTED: u32 = 1000;

/// Longest pause between polls while waiting for a job another process runs.
const WAIT_POLL_MAX: Duration = Duration::from_millis(250);

impl RunApi {
    /// An API over a queue, a run store and the agents that may be enqueued.
    pub fn new(queue: Queue, store: RunStore, registry: Arc<dyn Registry>) -> Self {
        Self {
            queue,
            store,
            registry,
            tenant: None,
            inbox: None,
        }
    }

    /// The same API, with messages to long-lived agents kept in `inbox`.
    pub fn with_inbox(mut self, inbox: Inbox) -> Self {
        self.inbox = Some(inbox);
        self
    }

    /// The same API, seeing only `tenant`'s work (`None`: every tenant's).
    pub fn for_tenant(&self, tenant: Option<Arc<str>>) -> Self {
        Self {
            tenant,
            ..self.clone()
        }
    }

    /// The tenant this API is scoped to, if it is.
    pub fn tenant(&self) -> Option<&str> {
        self.tenant.as_deref()
    }

    /// Whether a job or run of `tenant` is visible here.
    fn sees(&self, tenant: Option<&str>) -> bool {
        self.tenant
            .as_deref()
            .is_none_or(|scope| tenant == Some(scope))
    }

    /// The queue.
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// The run store.
    pub fn store(&self) -> &RunStore {
        &self.store
    }

    /// The agent registry.
    pub fn registry(&self) -> &Arc<dyn Registry> {
        &self.registry
    }

    /// Enqueues a job after checking that its agent exists and its input fits the agent's
    /// schema. The same id again with the same agent and input returns the existing job
    /// (`created: false`); with a different agent or input it is a [`ApiError::Conflict`].
    pub async fn enqueue(&self, job: NewJob) -> Result<crate::queue::Enqueued, ApiError> {
        let job = self.prepare(job)?;
        let (agent_id, input) = (job.agent_id.clone(), Arc::clone(&job.input));
        let tenant = job.tenant_id.clone();
        let enqueued = self.queue.enqueue(job).await?;
        if !enqueued.created {
            self.same_payload(&enqueued.job, &agent_id, &input, tenant.as_deref())?;
        }
        Ok(enqueued)
    }

    /// Enqueues many jobs in one transaction; nothing is written if any is invalid. An id that
    /// is taken by a job with a different agent or input is reported as a conflict (the other
    /// jobs of the batch are enqueued all the same).
    pub async fn enqueue_batch(
        &self,
        jobs: Vec<NewJob>,
    ) -> Result<Vec<crate::queue::Enqueued>, ApiError> {
        let jobs = jobs
            .into_iter()
            .map(|job| self.prepare(job))
            .collect::<Result<Vec<_>, _>>()?;
        let payloads: Vec<(String, Arc<serde_json::value::RawValue>, Option<String>)> = jobs
            .iter()
            .map(|job| {
                (
                    job.agent_id.clone(),
                    Arc::clone(&job.input),
                    job.tenant_id.clone(),
                )
            })
            .collect();
        let enqueued = self.queue.enqueue_batch(jobs).await?;
        for (done, (agent_id, input, tenant)) in enqueued.iter().zip(&payloads) {
            if !done.created {
                self.same_payload(&done.job, agent_id, input, tenant.as_deref())?;
            }
        }
        Ok(enqueued)
    }

    /// An existing job found for an id: it must be visible here and of the tenant asked for,
    /// if one was (another tenant's job is answered like one with another payload, and never
    /// shown), with the same payload.
    fn same_payload(
        &self,
        existing: &Job,
        agent_id: &str,
        input: &serde_json::value::RawValue,
        tenant: Option<&str>,
    ) -> Result<(), ApiError> {
        let other_tenant = tenant.is_some() && existing.tenant_id.as_deref() != tenant;
        if other_tenant || !self.sees(existing.tenant_id.as_deref()) {
            return Err(id_conflict(&existing.id));
        }
        same_payload(existing, agent_id, input)
    }

    fn prepare(&self, mut job: NewJob) -> Result<NewJob, ApiError> {
        if let Some(scope) = &self.tenant {
            match &job.tenant_id {
                Some(named) if **named != **scope => {
                    return Err(ApiError::Forbidden(ErrorInfo::new(
                        "Forbidden",
                        format!(
                            "this token acts for tenant {scope:?} and cannot enqueue for tenant \
                             {named:?}"
                        ),
                    )));
                }
                _ => job.tenant_id = Some(scope.to_string()),
            }
        }
        let spec = self.agent(&job.agent_id)?;
        if let Some(schema) = &spec.input_schema {
            let input: serde_json::Value = serde_json::from_str(job.input.get())
                .map_err(|e| bad("InvalidInput", format!("input is not JSON: {e}")))?;
            schema.validate(&input).map_err(|problems| {
                bad(
                    "InvalidInput",
                    format!(
                        "input does not match the schema of agent {:?}: {problems}",
                        spec.id
                    ),
                )
            })?;
        }
        job.lifecycle = spec.lifecycle;
        job.max_restarts = spec.max_restarts;
        Ok(job)
    }

    /// The agent with this id, or a `400 UnknownAgent` error.
    pub fn agent(&self, id: &str) -> Result<Arc<AgentSpec>, ApiError> {
        self.registry.get(id).ok_or_else(|| {
            let known: Vec<String> = self.registry.list().iter().map(|s| s.id.clone()).collect();
            bad(
                "UnknownAgent",
                format!(
                    "no agent with id {id:?} (known agents: {})",
                    known.join(", ")
                ),
            )
        })
    }

    /// A job and its latest run.
    pub async fn get(&self, job_id: &str) -> Result<JobView, ApiError> {
        let job = self.job(job_id).await?;
        self.view(job).await
    }

    /// A job visible here, or `NotFound` (the same for another tenant's job as for none).
    async fn job(&self, job_id: &str) -> Result<Job, ApiError> {
        self.queue
            .get(job_id)
            .await?
            .filter(|job| self.sees(job.tenant_id.as_deref()))
            .ok_or_else(|| ApiError::NotFound(format!("job {job_id}")))
    }

    async fn view(&self, job: Job) -> Result<JobView, ApiError> {
        let mut views = self.views(vec![job]).await?;
        views
            .pop()
            .ok_or_else(|| ApiError::NotFound("job view".into()))
    }

    /// The views of many jobs, in their order, with at most two reads of the run store however
    /// many jobs there are. A finished job shows the run that decided it; one still queued or
    /// running shows its latest run (the one going on, or the attempt before a retry or a
    /// restart).
    pub async fn views(&self, jobs: Vec<Job>) -> Result<Vec<JobView>, ApiError> {
        let deciding: Vec<String> = jobs
            .iter()
            .filter(|j| j.status.is_terminal())
            .filter_map(|j| j.run_id.clone())
            .collect();
        let mut by_id: HashMap<String, Run> = self
            .store
            .runs_by_id(&deciding)
            .await?
            .into_iter()
            .map(|run| (run.id.clone(), run))
            .collect();
        let mut views: Vec<JobView> = jobs
            .into_iter()
            .map(|job| {
                let run = match (&job.run_id, job.status.is_terminal()) {
                    (Some(run_id), true) => by_id.remove(run_id),
                    _ => None,
                };
                JobView { job, run }
            })
            .collect();
        let undecided: Vec<String> = views
            .iter()
            .filter(|v| v.run.is_none())
            .map(|v| v.job.id.clone())
            .collect();
        let mut latest: HashMap<String, Run> = self
            .store
            .latest_runs_for_jobs(&undecided)
            .await?
            .into_iter()
            .filter_map(|run| Some((run.job_id.clone()?, run)))
            .collect();
        for view in views.iter_mut().filter(|v| v.run.is_none()) {
            view.run = latest.remove(&view.job.id);
        }
        for view in &mut views {
            if let Some(run) = &mut view.run {
                run.input.get_or_insert_with(|| Arc::clone(&view.job.input));
            }
        }
        Ok(views)
    }

    /// Waits until the job is done, failed or cancelled, for at most `timeout`. Woken at once
    /// when a pool in this process finishes it; polls when another process runs it.
    pub async fn wait_for(&self, job_id: &str, timeout: Duration) -> Result<JobView, ApiError> {
        let deadline = Instant::now() + timeout;
        let watch = self.queue.hub().watch(job_id);
        let mut poll = Duration::from_millis(10);
        loop {
            let notified = watch.notify().notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let view = self.get(job_id).await?;
            if view.job.status.is_terminal() {
                return Ok(view);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ApiError::WaitTimeout(Box::new(view)));
            }
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep(poll.min(deadline - now)) => {}
            }
            poll = (poll * 2).min(WAIT_POLL_MAX);
        }
    }

    /// Cancels a job: at once if queued; a running job is aborted and fails with `Cancelled`.
    /// A job that has already finished is a [`ApiError::Conflict`].
    pub async fn cancel(&self, job_id: &str) -> Result<Job, ApiError> {
        self.unfinished(job_id).await?;
        let job = self
            .queue
            .cancel(job_id)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("job {job_id}")))?;
        requested_in_time(job)
    }

    /// Asks a job to stop gracefully (a long-lived agent finishes its item and is recorded as
    /// completed); a job that never started is cancelled. A job that has already finished is a
    /// [`ApiError::Conflict`].
    pub async fn stop(&self, job_id: &str) -> Result<Job, ApiError> {
        self.unfinished(job_id).await?;
        let job = self
            .queue
            .stop(job_id)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("job {job_id}")))?;
        requested_in_time(job)
    }

    /// Fails with `NotFound` or `Conflict` unless the job exists and has not finished.
    async fn unfinished(&self, job_id: &str) -> Result<(), ApiError> {
        let job = self.job(job_id).await?;
        if job.status.is_terminal() {
            return Err(already_finished(&job));
        }
        Ok(())
    }

    /// Jobs, newest first (of this API's tenant only, if it is scoped to one: a filter naming
    /// another tenant finds nothing).
    pub async fn list(&self, filter: &JobFilter) -> Result<Vec<Job>, ApiError> {
        let Some(filter) = self
            .scoped(filter.tenant_id.as_deref())
            .map(|tenant_id| JobFilter {
                tenant_id,
                ..filter.clone()
            })
        else {
            return Ok(Vec::new());
        };
        Ok(self.queue.list(&filter).await?)
    }

    /// The jobs that runs of `job_id` spawned, oldest first (`NotFound` for a job not visible
    /// here). At most [`MAX_CHILDREN_LISTED`].
    pub async fn children(&self, job_id: &str) -> Result<Vec<Job>, ApiError> {
        let parent = self.job(job_id).await?;
        let mut children = self
            .queue
            .list(&JobFilter {
                parent_job_id: Some(parent.id),
                tenant_id: self.tenant.as_deref().map(str::to_string),
                limit: Some(MAX_CHILDREN_LISTED),
                ..JobFilter::default()
            })
            .await?;
        children.reverse();
        Ok(children)
    }

    /// Runs, newest first (of this API's tenant only, as [`RunApi::list`]).
    pub async fn runs(&self, filter: &RunFilter) -> Result<Vec<Run>, ApiError> {
        let Some(filter) = self
            .scoped(filter.tenant_id.as_deref())
            .map(|tenant_id| RunFilter {
                tenant_id,
                ..filter.clone()
            })
        else {
            return Ok(Vec::new());
        };
        Ok(self.store.list_runs(&filter).await?)
    }

    /// The tenant a list asking for `asked` is to be filtered by; `None` if it can find
    /// nothing here (it asks for another tenant).
    fn scoped(&self, asked: Option<&str>) -> Option<Option<String>> {
        match (&self.tenant, asked) {
            (None, asked) => Some(asked.map(str::to_string)),
            (Some(scope), Some(asked)) if asked != &**scope => None,
            (Some(scope), _) => Some(Some(scope.to_string())),
        }
    }

    /// Asks every unfinished long-lived agent of `tenant` to stop gracefully (one that never
    /// started is cancelled), across every host on the queue. Returns the jobs it asked.
    pub async fn stop_tenant_agents(&self, tenant: &str) -> Result<Vec<String>, ApiError> {
        const PAGE: u32 = 1000;
        let long_lived: Vec<String> = self
            .registry
            .list()
            .iter()
            .filter(|s| s.lifecycle == crate::queue::Lifecycle::LongLived)
            .map(|s| s.id.clone())
            .collect();
        let mut stopped = Vec::new();
        for agent in long_lived {
            loop {
                let jobs = self
                    .queue
                    .list(&JobFilter {
                        status: vec![JobStatus::Scheduled, JobStatus::Queued, JobStatus::Leased],
                        agent_id: Some(agent.clone()),
                        tenant_id: Some(tenant.to_string()),
                        limit: Some(PAGE),
                        ..JobFilter::default()
                    })
                    .await?;
                let todo: Vec<&Job> = jobs.iter().filter(|j| !j.stop_requested).collect();
                for job in &todo {
                    if self.queue.stop(&job.id).await?.is_some() {
                        stopped.push(job.id.clone());
                    }
                }
                // Those asked are now cancelled or flagged, so the next page is new ones.
                if todo.is_empty() || jobs.len() < PAGE as usize {
                    break;
                }
            }
        }
        Ok(stopped)
    }

    /// The inbox, or a `400 InboxUnavailable` on a host without one.
    fn inbox(&self) -> Result<&Inbox, ApiError> {
        self.inbox.as_ref().ok_or_else(|| {
            bad(
                "InboxUnavailable",
                "this host keeps no inboxes for long-lived agents".into(),
            )
        })
    }

    /// Appends `body` to the inbox of the long-lived agent `job_id`. Another tenant's agent is
    /// not found, as an unknown one; a run-to-completion job is a `400 NotLongLived`, an agent
    /// that has ended a `409 AgentEnded`.
    pub async fn post_message(
        &self,
        job_id: &str,
        body: &serde_json::value::RawValue,
    ) -> Result<Message, ApiError> {
        let inbox = self.inbox()?;
        let job = self.job(job_id).await?;
        if job.lifecycle != Lifecycle::LongLived {
            return Err(bad(
                "NotLongLived",
                format!("job {job_id} runs to completion; only long-lived agents take messages"),
            ));
        }
        if job.status.is_terminal() {
            return Err(ApiError::Conflict(ErrorInfo::new(
                "AgentEnded",
                format!(
                    "agent {job_id} has ended ({}); it takes no more messages",
                    job.status
                ),
            )));
        }
        Ok(inbox.post(job_id, body).await?)
    }

    /// The latest `limit` messages of the agent `job_id` (visible here), oldest first, with
    /// their replies.
    pub async fn messages(&self, job_id: &str, limit: u32) -> Result<Vec<Message>, ApiError> {
        let inbox = self.inbox()?;
        self.job(job_id).await?;
        Ok(inbox.list(job_id, limit).await?)
    }

    /// Waits up to `timeout` for the reply to message `id` (of an agent visible here); returns
    /// the message as it is then.
    pub async fn wait_reply(&self, id: &str, timeout: Duration) -> Result<Message, ApiError> {
        let inbox = self.inbox()?;
        let not_found = || ApiError::NotFound(format!("message {id}"));
        // Another tenant's message is not found, and not waited for.
        let message = inbox.get(id).await?.ok_or_else(not_found)?;
        self.job(&message.job_id).await.map_err(|_| not_found())?;
        if message.reply.is_some() {
            return Ok(message);
        }
        inbox.wait_reply(id, timeout).await?.ok_or_else(not_found)
    }

    /// One run, with its input (which the run store keeps only for runs without a job: a job's
    /// run gets its job's, unless the job is gone).
    pub async fn run(&self, run_id: &str) -> Result<Run, ApiError> {
        let mut run = self
            .store
            .get_run(run_id)
            .await?
            .filter(|run| self.sees(run.tenant_id.as_deref()))
            .ok_or_else(|| ApiError::NotFound(format!("run {run_id}")))?;
        if run.input.is_none()
            && let Some(job_id) = &run.job_id
            && let Some(job) = self.queue.get(job_id).await?
        {
            run.input = Some(job.input);
        }
        Ok(run)
    }

    /// A run's events after `after`, in order. Scoped to a tenant, another tenant's run is
    /// not found.
    pub async fn events(
        &self,
        run_id: &str,
        after: i64,
        limit: u32,
    ) -> Result<Vec<Event>, ApiError> {
        if self.tenant.is_some() {
            let run = self.store.get_run(run_id).await?;
            if !run.is_some_and(|run| self.sees(run.tenant_id.as_deref())) {
                return Err(ApiError::NotFound(format!("run {run_id}")));
            }
        }
        Ok(self.store.events(run_id, after, limit).await?)
    }
}

/// The job a cancel or stop request returned: one that finished on its own while the request was
/// under way (anything terminal but `cancelled`) is a conflict too.
fn requested_in_time(job: Job) -> Result<Job, ApiError> {
    if job.status.is_terminal() && job.status != JobStatus::Cancelled {
        return Err(already_finished(&job));
    }
    Ok(job)
}

fn already_finished(job: &Job) -> ApiError {
    ApiError::Conflict(ErrorInfo::new(
        "AlreadyFinished",
        format!("job {} has already finished ({})", job.id, job.status),
    ))
}

/// Checks that an existing job has the agent and input a request for the same id asks for.
/// Inputs are compared as JSON values (whitespace and key order aside), or as text when they
/// are too deeply nested to parse.
fn same_payload(
    existing: &Job,
    agent_id: &str,
    input: &serde_json::value::RawValue,
) -> Result<(), ApiError> {
    let same_input = || {
        let parse = |raw: &serde_json::value::RawValue| {
            serde_json::from_str::<serde_json::Value>(raw.get()).ok()
        };
        match (parse(&existing.input), parse(input)) {
            (Some(a), Some(b)) => a == b,
            _ => existing.input.get() == input.get(),
        }
    };
    if existing.agent_id == agent_id && same_input() {
        return Ok(());
    }
    Err(id_conflict(&existing.id))
}

fn id_conflict(id: &str) -> ApiError {
    ApiError::Conflict(ErrorInfo::new(
        "JobIdConflict",
        format!("job {id} already exists with a different agent or input"),
    ))
}

fn bad(tag: &str, message: String) -> ApiError {
    ApiError::BadRequest(ErrorInfo::new(tag, message))
}
