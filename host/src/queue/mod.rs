//! The durable job queue: producers enqueue, workers claim jobs under fenced leases, and outcomes
//! are recorded only for the current holder of a lease.
//!
//! Jobs live in a libsql database (an embedded file, or a remote server shared by several hosts).
//! Workers coordinate through atomic `UPDATE … RETURNING` statements; a worker whose lease expired
//! can never overwrite the outcome of a later attempt, because every claim bumps the job's
//! `lease_epoch` and every write checks it.

mod fair;
mod hub;
mod job;
mod schema;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use libsql::Value;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::db::{Bulk, Db, DbError, RowExt, query_all, text_at, transaction_batch};
use crate::time::now_ms;

pub use fair::{FairShare, KeyExpr, MAX_KEY_LEN};
pub(crate) use hub::Hub;
pub use job::{
    ClaimedJob, Enqueued, ErrorInfo, Finish, FinishKind, Job, JobFilter, JobStatus, Lease,
    Lifecycle, Lineage, MAX_TENANT_ID_LEN, MAX_USER_ID_LEN, NewJob, Reclaimed, Signal,
    validate_tenant_id, validate_user_id,
};

/// Errors from queue operations.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// A job or request was malformed.
    #[error("invalid job: {0}")]
    Invalid(String),
    /// The caller no longer holds the lease it presented.
    #[error("lease on job {job_id} (epoch {epoch}) is no longer held")]
    LeaseLost {
        /// The job.
        job_id: String,
        /// The epoch presented.
        epoch: i64,
    },
}

/// Tunables of a [`Queue`].
#[derive(Debug, Clone)]
pub struct QueueOptions {
    /// Delay before the first retry of a failed job; doubles with every attempt.
    pub backoff_base: Duration,
    /// Upper bound on the retry delay.
    pub backoff_max: Duration,
    /// A long-lived agent whose host died is restarted after the retry delay of its number of
    /// restarts in a row that each followed a life shorter than this; a longer life starts the
    /// count again.
    pub stable_life: Duration,
    /// Most restarts in a row after short lives before a long-lived agent is failed for good
    /// (an agent that takes its host down with it must not crash-loop the fleet), whatever its
    /// own `maxRestarts`.
    pub max_restart_streak: u32,
    /// Fair shares across concurrency keys (`None`: claims in priority order alone). Every host
    /// on one database should have the same.
    pub fair_share: Option<FairShare>,
}

impl Default for QueueOptions {
    fn default() -> Self {
        Self {
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            stable_life: Duration::from_secs(600),
            max_restart_streak: 10,
            fair_share: None,
        }
    }
}

/// Longest accepted job id.
const MAX_ID_LEN: usize = 256;
/// Most jobs one claim with fair shares leases.
const MAX_FAIR_BATCH: usize = 1 << 20;
/// Most jobs a list call returns.
const MAX_LIST_LIMIT: u32 = 1000;

/// The job queue. Cheap to clone; clones share the database and in-process notifications.
#[derive(Clone)]
pub struct Queue {
    db: Db,
    hub: Arc<Hub>,
    sql: Arc<Statements>,
    options: QueueOptions,
}

/// SQL text assembled once at open.
struct Statements {
    insert: String,
    claim: String,
    claim_lane: String,
    /// With fair shares, the claim's caps by key and the cap of the other keys.
    claim_caps: Vec<Value>,
    promote: String,
    reclaim: String,
    release_orphans: String,
    cancel: String,
    stop: String,
    cancel_below: String,
    stop_below: String,
    select_by_ids: String,
    /// Shared, so that each lookup hands the database a reference rather than a copy.
    get: Arc<str>,
}

/// Marks the jobs of `?1` (a JSON array of ids) as having spawned children.
const MARK_PARENTS: &str = "UPDATE jobs SET has_children = 1
    WHERE id IN (SELECT value FROM json_each(?1)) AND has_children = 0";

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").field("db", &self.db).finish()
    }
}

impl Queue {
    /// Opens the queue at `url` (`file:…`, `:memory:`, `libsql://…`), creating and migrating its
    /// tables as needed.
    pub async fn open(url: &str, auth_token: Option<&str>) -> Result<Self, QueueError> {
        let db = Db::open(url, auth_token).await?;
        Self::with_db(db, QueueOptions::default()).await
    }

    /// Builds a queue on an open database.
    pub async fn with_db(db: Db, options: QueueOptions) -> Result<Self, QueueError> {
        db.migrate("queue", schema::MIGRATIONS).await?;
        let fair = options.fair_share.is_some();
        if let Some(fair_share) = &options.fair_share {
            fair_share.validate().map_err(QueueError::Invalid)?;
            // Jobs enqueued without fair shares join the key "" (claims with fair shares read
            // only keyed jobs).
            db.write(|conn| async move {
                for sql in schema::key_unkeyed() {
                    conn.execute(&sql, ()).await?;
                }
                Ok(())
            })
            .await?;
        }
        let caps = options
            .fair_share
            .as_ref()
            .map_or(schema::FairCaps::None, FairShare::caps);
        let sql = Statements {
            insert: schema::insert_jobs(fair),
            claim: if fair {
                schema::claim_fair(false, caps)
            } else {
                schema::claim(false)
            },
            claim_lane: if fair {
                schema::claim_fair(true, caps)
            } else {
                schema::claim(true)
            },
            claim_caps: options
                .fair_share
                .as_ref()
                .map(FairShare::claim_params)
                .unwrap_or_default(),
            promote: schema::promote(fair),
            reclaim: schema::reclaim(),
            release_orphans: schema::release_orphans(),
            cancel: schema::cancel(),
            stop: schema::stop(),
            cancel_below: schema::cancel_below(),
            stop_below: schema::stop_below(),
            select_by_ids: format!(
                "SELECT {} FROM jobs WHERE id IN (SELECT value FROM json_each(?1))",
                schema::JOB_COLUMNS
            ),
            get: format!("SELECT {} FROM jobs WHERE id = ?1", schema::JOB_COLUMNS).into(),
        };
        Ok(Self {
            db,
            hub: Arc::new(Hub::new()),
            sql: Arc::new(sql),
            options,
        })
    }

    /// The database behind the queue.
    pub fn db(&self) -> &Db {
        &self.db
    }

    pub(crate) fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Enqueues one job. An id that already exists returns the existing job (`created: false`).
    pub async fn enqueue(&self, job: NewJob) -> Result<Enqueued, QueueError> {
        let mut out = self.enqueue_batch(vec![job]).await?;
        out.pop()
            .ok_or_else(|| QueueError::Invalid("enqueue returned no job".into()))
    }

    /// Enqueues many jobs in one statement (one transaction), returning them in request order.
    pub async fn enqueue_batch(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>, QueueError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_ms();
        let mut ids = Vec::with_capacity(jobs.len());
        let mut rows = Vec::with_capacity(jobs.len());
        for job in &jobs {
            validate(job)?;
            let id = job
                .id
                .clone()
                .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
            ids.push(id);
        }
        for (job, id) in jobs.iter().zip(&ids) {
            let concurrency_key = match &self.options.fair_share {
                Some(fair) => Some(fair.key.key_of(job).map_err(QueueError::Invalid)?),
                None => None,
            };
            rows.push(InsertRow {
                id,
                agent_id: &job.agent_id,
                input: job.input.get(),
                meta: job.meta.as_deref().map(RawValue::get),
                priority: job.priority,
                scheduled_for: job.scheduled_for,
                max_attempts: job.max_attempts.unwrap_or(1),
                long_lived: job.lifecycle == Lifecycle::LongLived,
                max_restarts: job.max_restarts,
                tenant_id: job.tenant_id.as_deref(),
                user_id: job.user_id.as_deref(),
                parent_job_id: job.lineage.as_ref().map(|l| l.parent_job_id.as_str()),
                parent_run_id: job.lineage.as_ref().map(|l| l.parent_run_id.as_str()),
                root_job_id: job.lineage.as_ref().map(|l| l.root_job_id.as_str()),
                depth: job.lineage.as_ref().map_or(0, |l| l.depth),
                concurrency_key,
            });
        }
        let mut parents: Vec<&str> = rows.iter().filter_map(|r| r.parent_job_id).collect();
        parents.sort_unstable();
        parents.dedup();
        let parents = (!parents.is_empty())
            .then(|| to_json(&parents))
            .transpose()?;
        let batch = to_json(&rows)?;
        let ids_json = to_json(&ids)?;
        let wanted = ids.len();
        let sql = Arc::clone(&self.sql);
        // Idempotent by id (a job that exists is found, not made again), so a passing failure
        // of a remote database is tried again.
        let (created, existing) = self
            .db
            .write_or_shed_idempotent(move |conn| {
                let (sql, parents, batch, ids_json) = (
                    Arc::clone(&sql),
                    parents.clone(),
                    batch.clone(),
                    ids_json.clone(),
                );
                async move {
                    // Parents first: a child is never in the table unseen by its parent's end.
                    if let Some(parents) = parents {
                        conn.execute(MARK_PARENTS, [parents]).await?;
                    }
                    let created = query_all(&conn, &sql.insert, (batch, now), decode_job).await?;
                    let existing = if created.len() < wanted {
                        query_all(&conn, &sql.select_by_ids, [ids_json], decode_job).await?
                    } else {
                        Vec::new()
                    };
                    Ok((created, existing))
                }
            })
            .await?;
        let created_ids: HashSet<String> = created.iter().map(|j| j.id.clone()).collect();
        let mut by_id: HashMap<String, Job> = existing
            .into_iter()
            .chain(created)
            .map(|j| (j.id.clone(), j))
            .collect();
        let mut seen = HashSet::new();
        let mut out = Vec::with_capacity(jobs.len());
        for id in rows.iter().map(|r| r.id) {
            let job = by_id
                .get(id)
                .cloned()
                .ok_or_else(|| QueueError::Invalid(format!("job {id} vanished while enqueued")))?;
            // The first occurrence of an id in the batch created it; any repeat found it.
            let created = created_ids.contains(id) && seen.insert(id.to_string());
            out.push(Enqueued { job, created });
        }
        by_id.clear();
        if !created_ids.is_empty() {
            self.hub.notify_enqueued();
        }
        Ok(out)
    }

    /// Leases up to `max` due jobs (highest priority, then oldest) to `worker_id` for `lease`,
    /// whatever their lifecycle. It orders every due job to find them; a pool claims per
    /// lifecycle instead ([`Queue::claim_lifecycle`]), reading only what it takes.
    ///
    /// With fair shares ([`QueueOptions::fair_share`]) the jobs are taken from the concurrency
    /// keys round-robin, highest priority then oldest within a key, and none of a key whose cap
    /// of leased jobs (across every host on the database) is reached.
    pub async fn claim(
        &self,
        worker_id: &str,
        lease: Duration,
        max: usize,
    ) -> Result<Vec<ClaimedJob>, QueueError> {
        self.claim_lifecycle(worker_id, lease, max, None).await
    }

    /// Like [`Queue::claim`], restricted to the jobs of agents with `lifecycle` (a pool keeps
    /// separate slots for long-lived agents, which hold theirs until stopped).
    pub async fn claim_lifecycle(
        &self,
        worker_id: &str,
        lease: Duration,
        max: usize,
        lifecycle: Option<Lifecycle>,
    ) -> Result<Vec<ClaimedJob>, QueueError> {
        self.claim_for(worker_id, lease, max, lifecycle, None).await
    }

    /// Like [`Queue::claim_lifecycle`], restricted to the jobs of the agents in `agents` (none:
    /// any agent): a host claims only jobs it can run, and leaves the others to hosts that have
    /// their agents.
    pub async fn claim_for(
        &self,
        worker_id: &str,
        lease: Duration,
        max: usize,
        lifecycle: Option<Lifecycle>,
        agents: Option<&[&str]>,
    ) -> Result<Vec<ClaimedJob>, QueueError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let long_lived = lifecycle.map(|l| i64::from(l == Lifecycle::LongLived));
        let agents = match agents {
            Some([]) => return Ok(Vec::new()),
            Some(agents) => Value::Text(to_json(agents)?),
            None => Value::Null,
        };
        let lease = duration_ms(lease);
        let worker = worker_id.to_string();
        // A fair claim does arithmetic on its batch size; no batch is anywhere near this.
        let max = if self.options.fair_share.is_some() {
            max.min(MAX_FAIR_BATCH)
        } else {
            max
        };
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        let sql = Arc::clone(&self.sql);
        let multi_row = self.db.sends_multi_row_statements();
        let jobs = self
            .db
            .write_relaxed(move |conn| async move {
                // Scheduled jobs that are due join the queue first (an index probe when none
                // are), in the same transaction as the claim.
                let claim = if long_lived.is_some() {
                    &sql.claim_lane
                } else {
                    &sql.claim
                };
                let mut params = vec![
                    Value::Text(worker),
                    Value::Integer(lease),
                    Value::Integer(max),
                    long_lived.map_or(Value::Null, Value::Integer),
                    agents,
                ];
                params.extend(sql.claim_caps.iter().cloned());
                if multi_row {
                    // One request to a remote server: the promotion and the claim together.
                    let mut rows = transaction_batch(
                        &conn,
                        &[(sql.promote.as_str(), &[]), (claim.as_str(), &params)],
                    )
                    .await?;
                    let claimed = rows.pop().unwrap_or_default();
                    return claimed.iter().map(decode_job).collect();
                }
                conn.execute("BEGIN IMMEDIATE", ()).await?;
                let claimed = async {
                    let promote = conn.prepare_cached(&sql.promote).await?;
                    promote.execute(()).await?;
                    conn.keep(&sql.promote, promote);
                    query_all(
                        &conn,
                        claim,
                        libsql::params::Params::Positional(params),
                        decode_job,
                    )
                    .await
                }
                .await;
                let end = if claimed.is_ok() {
                    "COMMIT"
                } else {
                    "ROLLBACK"
                };
                conn.execute(end, ()).await?;
                claimed
            })
            .await?;
        let mut claimed: Vec<ClaimedJob> = jobs
            .into_iter()
            .map(|job| ClaimedJob {
                lease: Lease {
                    job_id: job.id.clone(),
                    epoch: job.lease_epoch,
                },
                job,
            })
            .collect();
        // RETURNING does not keep the claim order; restore it for the caller.
        claimed.sort_by(|a, b| {
            b.job
                .priority
                .cmp(&a.job.priority)
                .then(a.job.seq.cmp(&b.job.seq))
        });
        Ok(claimed)
    }

    /// Extends one lease; fails with [`QueueError::LeaseLost`] if it is no longer held.
    pub async fn heartbeat(&self, lease: &Lease, duration: Duration) -> Result<(), QueueError> {
        let held = self.renew(std::slice::from_ref(lease), duration).await?;
        if held.contains(&lease.job_id) {
            Ok(())
        } else {
            Err(QueueError::LeaseLost {
                job_id: lease.job_id.clone(),
                epoch: lease.epoch,
            })
        }
    }

    /// Extends many leases in one statement; returns the ids whose lease is still held.
    pub async fn renew(
        &self,
        leases: &[Lease],
        duration: Duration,
    ) -> Result<HashSet<String>, QueueError> {
        let mut values = Vec::with_capacity(leases.len() * schema::RENEW_COLUMNS);
        for lease in leases {
            values.push(Value::Text(lease.job_id.clone()));
            values.push(Value::Integer(lease.epoch));
        }
        let mut returned = self
            .db
            .bulk_relaxed(vec![Bulk {
                sql: schema::renew,
                fixed: vec![Value::Integer(duration_ms(duration))],
                cols: schema::RENEW_COLUMNS,
                values,
            }])
            .await?;
        let held = returned
            .pop()
            .unwrap_or_default()
            .iter()
            .map(|row| text_at(row, 0))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(held.into_iter().collect())
    }

    /// Marks a leased job done. Returns `false` (and changes nothing) if the lease is not current.
    pub async fn complete(
        &self,
        lease: &Lease,
        run_id: &str,
        result_status: &str,
    ) -> Result<bool, QueueError> {
        self.finish_one(Finish {
            lease: lease.clone(),
            kind: FinishKind::Complete,
            run_id: Some(run_id.to_string()),
            result_status: Some(result_status.to_string()),
        })
        .await
    }

    /// Records a failure. While `retry` and attempts remain the job is queued again after an
    /// exponential backoff; otherwise it fails. Returns `false` if the lease is not current.
    pub async fn fail(
        &self,
        lease: &Lease,
        error: ErrorInfo,
        retry: bool,
        run_id: Option<&str>,
    ) -> Result<bool, QueueError> {
        self.finish_one(Finish {
            lease: lease.clone(),
            kind: FinishKind::Fail { error, retry },
            run_id: run_id.map(str::to_string),
            result_status: None,
        })
        .await
    }

    /// Hands a leased job back to the queue untouched (no attempt used), e.g. at shutdown.
    pub async fn release(&self, lease: &Lease) -> Result<bool, QueueError> {
        self.finish_one(Finish {
            lease: lease.clone(),
            kind: FinishKind::Release,
            run_id: None,
            result_status: None,
        })
        .await
    }

    async fn finish_one(&self, finish: Finish) -> Result<bool, QueueError> {
        let id = finish.lease.job_id.clone();
        let applied = self.finish(&[finish]).await?;
        Ok(applied.iter().any(|(applied_id, _)| *applied_id == id))
    }

    /// Applies a batch of outcomes (see [`Db::bulk`]). Outcomes whose lease is not current are
    /// ignored; the returned list holds the jobs that changed, with their new status.
    pub async fn finish(
        &self,
        outcomes: &[Finish],
    ) -> Result<Vec<(String, JobStatus)>, QueueError> {
        let now = now_ms();
        let base = duration_ms(self.options.backoff_base);
        let cap = duration_ms(self.options.backoff_max);
        let (completes, others): (Vec<&Finish>, Vec<&Finish>) = outcomes
            .iter()
            .partition(|f| matches!(f.kind, FinishKind::Complete));
        let mut complete_values = Vec::with_capacity(completes.len() * schema::COMPLETE_COLUMNS);
        completes
            .iter()
            .for_each(|finish| complete_params(finish, &mut complete_values));
        let mut values = Vec::with_capacity(others.len() * schema::FINISH_COLUMNS);
        others
            .iter()
            .for_each(|finish| finish_params(finish, &mut values));
        let returned = self
            .db
            .bulk(vec![
                Bulk {
                    sql: schema::complete,
                    fixed: vec![Value::Integer(now)],
                    cols: schema::COMPLETE_COLUMNS,
                    values: complete_values,
                },
                Bulk {
                    sql: schema::finish,
                    fixed: vec![
                        Value::Integer(now),
                        Value::Integer(base),
                        Value::Integer(cap),
                    ],
                    cols: schema::FINISH_COLUMNS,
                    values,
                },
            ])
            .await?;
        let mut parents = Vec::new();
        let changed = returned
            .iter()
            .flatten()
            .map(|row| {
                let id = text_at(row, 0)?;
                if matches!(row.get(2), Some(Value::Integer(1))) {
                    parents.push(id.clone());
                }
                Ok((id, parse_status(&text_at(row, 1)?)?))
            })
            .collect::<Result<Vec<_>, DbError>>()?;
        // A run that ended takes its children with it.
        self.end_children(&parents).await;
        self.hub.notify_terminal(
            changed
                .iter()
                .filter(|(_, status)| status.is_terminal())
                .map(|(id, _)| id.as_str()),
        );
        if changed.iter().any(|(_, s)| *s == JobStatus::Queued) {
            self.hub.notify_enqueued();
        }
        Ok(changed)
    }

    /// Of these `(job id, run id)` pairs, the jobs whose recorded outcome is that run's. Tells an
    /// outcome that an earlier, interrupted write already applied from one whose lease was lost.
    pub async fn recorded_runs(
        &self,
        pairs: &[(String, String)],
    ) -> Result<HashSet<String>, QueueError> {
        if pairs.is_empty() {
            return Ok(HashSet::new());
        }
        let pairs = to_json(pairs)?;
        let ids = self
            .db
            .query(schema::RECORDED_RUNS, [pairs], |row| row.text(0))
            .await?;
        Ok(ids.into_iter().collect())
    }

    /// Cancels a job. A queued job is cancelled at once; a running one is flagged and its worker
    /// aborts it (it then fails with tag `Cancelled`, never retried). Finished jobs are returned
    /// unchanged. `None` if there is no such job.
    pub async fn cancel(&self, job_id: &str) -> Result<Option<Job>, QueueError> {
        self.request(job_id, true).await
    }

    /// Asks a job to stop gracefully. A queued job (never started) is cancelled; a running one is
    /// flagged, and its agent is told to finish up. `None` if there is no such job.
    pub async fn stop(&self, job_id: &str) -> Result<Option<Job>, QueueError> {
        self.request(job_id, false).await
    }

    async fn request(&self, job_id: &str, cancel: bool) -> Result<Option<Job>, QueueError> {
        let id = job_id.to_string();
        let sql = Arc::clone(&self.sql);
        let now = now_ms();
        // Idempotent: a request applied twice flags the same job, and one applied before its
        // response was lost finds the job already changed.
        let changed = self
            .db
            .write_idempotent(move |conn| {
                let (sql, id) = (Arc::clone(&sql), id.clone());
                async move {
                    let statement = if cancel { &sql.cancel } else { &sql.stop };
                    let mut changed =
                        query_all(&conn, statement, (id.clone(), now), decode_job).await?;
                    if changed.is_empty() {
                        changed = query_all(&conn, &sql.get, [id], decode_job).await?;
                        return Ok((changed.pop(), false, Vec::new()));
                    }
                    // The request goes down the whole tree below the job.
                    let below = if cancel {
                        &sql.cancel_below
                    } else {
                        &sql.stop_below
                    };
                    let ids = serde_json::json!([id]).to_string();
                    let below = query_all(&conn, below, (ids, now), decode_job).await?;
                    Ok((changed.pop(), true, below))
                }
            })
            .await?;
        let (job, changed, below) = changed;
        self.signal(&below, cancel);
        if let Some(job) = &job {
            // Terminal (now, or by an earlier try of this request whose response was lost):
            // waiters are woken either way.
            if job.status.is_terminal() {
                self.hub.notify_terminal([job.id.as_str()]);
            } else if changed {
                self.hub.send_signal(Signal {
                    job_id: job.id.clone(),
                    cancel,
                    stop: !cancel,
                });
            }
        }
        Ok(job)
    }

    /// Tells the pools of the jobs a request changed: those it finished are terminal, the
    /// others (leased) are signalled.
    fn signal(&self, jobs: &[Job], cancel: bool) {
        self.hub.notify_terminal(
            jobs.iter()
                .filter(|j| j.status.is_terminal())
                .map(|j| j.id.as_str()),
        );
        for job in jobs.iter().filter(|j| !j.status.is_terminal()) {
            self.hub.send_signal(Signal {
                job_id: job.id.clone(),
                cancel,
                stop: !cancel,
            });
        }
    }

    /// Asks every unfinished job below the jobs of `parents` to stop (a queued one is
    /// cancelled), on whatever host it runs. Returns the jobs it changed.
    pub async fn stop_below(&self, parents: &[String]) -> Result<Vec<Job>, QueueError> {
        if parents.is_empty() {
            return Ok(Vec::new());
        }
        let ids = to_json(parents)?;
        let sql = Arc::clone(&self.sql);
        let now = now_ms();
        let below = self
            .db
            .write_idempotent(move |conn| {
                let (sql, ids) = (Arc::clone(&sql), ids.clone());
                async move { query_all(&conn, &sql.stop_below, (ids, now), decode_job).await }
            })
            .await?;
        self.signal(&below, false);
        Ok(below)
    }

    /// The children of runs that ended are stopped (see [`crate::children`]); a failure is
    /// logged, as the outcome that ended the run is already recorded.
    async fn end_children(&self, parents: &[String]) {
        match self.stop_below(parents).await {
            Ok(below) if !below.is_empty() => {
                tracing::info!(
                    jobs = below.len(),
                    "asked the children of runs that ended to stop"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot stop the children of runs that ended"),
        }
    }

    /// Whether a cancel was requested for a job.
    pub async fn cancel_requested(&self, job_id: &str) -> Result<bool, QueueError> {
        Ok(self.get(job_id).await?.is_some_and(|j| j.cancel_requested))
    }

    /// Cancel and stop requests on the jobs leased by `worker_id`.
    pub async fn signals(&self, worker_id: &str) -> Result<Vec<Signal>, QueueError> {
        let worker = worker_id.to_string();
        Ok(self
            .db
            .query(schema::SIGNALS, [worker], |row| {
                Ok(Signal {
                    job_id: row.text(0)?,
                    cancel: row.int(1)? != 0,
                    stop: row.int(2)? != 0,
                })
            })
            .await?)
    }

    /// Recovers the leases that expired before `now_ms` (by the database's clock: a time in
    /// the future recovers live leases too): each job goes back to the queue (using up an
    /// attempt, except for long-lived agents) or fails with `LeaseExpired`.
    pub async fn reclaim_stale(&self, now_ms: i64) -> Result<Vec<Reclaimed>, QueueError> {
        self.reclaim(Value::Integer(now_ms), Value::Null, Vec::new())
            .await
    }

    /// Recovers the leases that have expired by the database's clock, except those that worker
    /// `worker_id` holds on the jobs in `running` (it is running them, and fences itself).
    pub async fn reclaim_expired(
        &self,
        worker_id: &str,
        running: &[String],
    ) -> Result<Vec<Reclaimed>, QueueError> {
        self.reclaim(
            Value::Null,
            Value::Text(worker_id.to_string()),
            running.to_vec(),
        )
        .await
    }

    async fn reclaim(
        &self,
        before: Value,
        worker: Value,
        running: Vec<String>,
    ) -> Result<Vec<Reclaimed>, QueueError> {
        let params = vec![
            before,
            worker,
            Value::Text(to_json(&running)?),
            Value::Integer(duration_ms(self.options.backoff_base)),
            Value::Integer(duration_ms(self.options.backoff_max)),
            Value::Integer(duration_ms(self.options.stable_life)),
            Value::Integer(i64::from(self.options.max_restart_streak)),
        ];
        let sql = Arc::clone(&self.sql);
        let reclaimed = self
            .db
            .write_relaxed(move |conn| async move {
                query_all(&conn, &sql.reclaim, params, |row| {
                    Ok((
                        Reclaimed {
                            job_id: row.text(0)?,
                            epoch: row.int(1)?,
                            status: parse_status(&row.text(2)?)?,
                            agent_id: row.text(4)?,
                            created_at: row.int(5)?,
                            claimed_at: row.opt_int(6)?,
                            long_lived: row.int(7)? != 0,
                            parent_run_id: row.opt_text(8)?,
                            tenant_id: row.opt_text(9)?,
                            user_id: row.opt_text(10)?,
                        },
                        row.int(3)? != 0,
                    ))
                })
                .await
            })
            .await?;
        // The runs whose host died take their children with them.
        let parents: Vec<String> = reclaimed
            .iter()
            .filter(|(_, parent)| *parent)
            .map(|(r, _)| r.job_id.clone())
            .collect();
        self.end_children(&parents).await;
        let reclaimed: Vec<Reclaimed> = reclaimed.into_iter().map(|(r, _)| r).collect();
        self.hub.notify_terminal(
            reclaimed
                .iter()
                .filter(|r| r.status.is_terminal())
                .map(|r| r.job_id.as_str()),
        );
        if reclaimed.iter().any(|r| r.status == JobStatus::Queued) {
            self.hub.notify_enqueued();
        }
        Ok(reclaimed)
    }

    /// Hands back, without using an attempt, the jobs leased to `worker_id` that it is not
    /// running (not in `running`) and that it claimed or renewed at least `min_age` ago: jobs
    /// from a claim whose answer never arrived, or that was abandoned. Returns how many.
    pub async fn release_orphans(
        &self,
        worker_id: &str,
        running: &[String],
        min_age: Duration,
    ) -> Result<usize, QueueError> {
        let params = vec![
            Value::Text(worker_id.to_string()),
            Value::Text(to_json(running)?),
            Value::Integer(duration_ms(min_age)),
        ];
        let sql = Arc::clone(&self.sql);
        let released = self
            .db
            .write_relaxed(move |conn| async move {
                query_all(&conn, &sql.release_orphans, params, |row| row.text(0)).await
            })
            .await?;
        if !released.is_empty() {
            self.hub.notify_enqueued();
        }
        Ok(released.len())
    }

    /// One job by id.
    pub async fn get(&self, job_id: &str) -> Result<Option<Job>, QueueError> {
        let id = job_id.to_string();
        let mut jobs = self
            .db
            .query(Arc::clone(&self.sql.get), [id], decode_job)
            .await?;
        Ok(jobs.pop())
    }

    /// Jobs matching `filter`, newest first.
    pub async fn list(&self, filter: &JobFilter) -> Result<Vec<Job>, QueueError> {
        let mut sql = format!("SELECT {} FROM jobs WHERE 1 = 1", schema::JOB_COLUMNS);
        let mut params: Vec<Value> = Vec::new();
        if !filter.status.is_empty() {
            let statuses: Vec<&str> = filter.status.iter().map(|s| s.as_str()).collect();
            params.push(Value::Text(to_json(&statuses)?));
            sql.push_str(&format!(
                " AND status IN (SELECT value FROM json_each(?{}))",
                params.len()
            ));
        }
        if let Some(agent) = &filter.agent_id {
            params.push(Value::Text(agent.clone()));
            sql.push_str(&format!(" AND agent_id = ?{}", params.len()));
        }
        if let Some(tenant) = &filter.tenant_id {
            params.push(Value::Text(tenant.clone()));
            sql.push_str(&format!(" AND tenant_id = ?{}", params.len()));
        }
        if let Some(root) = &filter.root_job_id {
            params.push(Value::Text(root.clone()));
            let n = params.len();
            sql.push_str(&format!(" AND (root_job_id = ?{n} OR id = ?{n})"));
        }
        if let Some(parent) = &filter.parent_job_id {
            params.push(Value::Text(parent.clone()));
            sql.push_str(&format!(" AND parent_job_id = ?{}", params.len()));
        }
        let limit = filter.limit.unwrap_or(50).min(MAX_LIST_LIMIT);
        params.push(Value::Integer(i64::from(limit)));
        params.push(Value::Integer(i64::from(filter.offset.unwrap_or(0))));
        sql.push_str(&format!(
            " ORDER BY seq DESC LIMIT ?{} OFFSET ?{}",
            params.len() - 1,
            params.len()
        ));
        Ok(self.db.query(sql, params, decode_job).await?)
    }

    /// How many unfinished (scheduled, queued or leased) children job `parent_job_id` has.
    pub async fn live_children(&self, parent_job_id: &str) -> Result<i64, QueueError> {
        let id = parent_job_id.to_string();
        self.count(
            "SELECT count(*) FROM jobs WHERE parent_job_id = ?1
             AND status IN ('scheduled', 'queued', 'leased')",
            id,
        )
        .await
    }

    /// How many jobs are below root `root_job_id` in its tree, finished or not.
    pub async fn tree_size(&self, root_job_id: &str) -> Result<i64, QueueError> {
        let id = root_job_id.to_string();
        self.count("SELECT count(*) FROM jobs WHERE root_job_id = ?1", id)
            .await
    }

    async fn count(&self, sql: &'static str, id: String) -> Result<i64, QueueError> {
        let rows = self.db.query(sql, [id], |row| row.int(0)).await?;
        Ok(rows.into_iter().next().unwrap_or(0))
    }

    /// How many jobs are in each status.
    pub async fn counts(&self) -> Result<HashMap<JobStatus, i64>, QueueError> {
        let rows = self
            .db
            .query(schema::COUNTS, (), |row| {
                Ok((parse_status(&row.text(0)?)?, row.int(1)?))
            })
            .await?;
        Ok(rows.into_iter().collect())
    }

    /// When the earliest queued job becomes due (epoch ms), if any job is queued.
    pub async fn next_due(&self) -> Result<Option<i64>, QueueError> {
        let rows = self
            .db
            .query(schema::NEXT_DUE, (), |row| row.opt_int(0))
            .await?;
        Ok(rows.into_iter().next().flatten())
    }
}

fn validate(job: &NewJob) -> Result<(), QueueError> {
    if job.agent_id.trim().is_empty() {
        return Err(QueueError::Invalid("agentId must not be empty".into()));
    }
    if let Some(id) = &job.id {
        if id.is_empty() || id.len() > MAX_ID_LEN {
            return Err(QueueError::Invalid(format!(
                "id must be 1 to {MAX_ID_LEN} bytes long"
            )));
        }
        if id.chars().any(char::is_control) {
            return Err(QueueError::Invalid(
                "id must not contain control characters".into(),
            ));
        }
    }
    if let Some(tenant) = &job.tenant_id {
        validate_tenant_id(tenant).map_err(QueueError::Invalid)?;
    }
    if let Some(user) = &job.user_id {
        validate_user_id(user).map_err(QueueError::Invalid)?;
    }
    if let Some(max) = job.max_attempts
        && !(1..=1000).contains(&max)
    {
        return Err(QueueError::Invalid(format!(
            "maxAttempts must be between 1 and 1000, got {max}"
        )));
    }
    if let Some(max) = job.max_restarts
        && max < 0
    {
        return Err(QueueError::Invalid(format!(
            "maxRestarts must not be negative, got {max}"
        )));
    }
    Ok(())
}

fn to_json<T: Serialize + ?Sized>(value: &T) -> Result<String, QueueError> {
    serde_json::to_string(value).map_err(|e| QueueError::Invalid(e.to_string()))
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn parse_status(s: &str) -> Result<JobStatus, DbError> {
    s.parse().map_err(DbError::Decode)
}

fn parse_raw(text: String) -> Result<Arc<RawValue>, DbError> {
    RawValue::from_string(text)
        .map(Arc::from)
        .map_err(|e| DbError::Decode(format!("stored JSON is invalid: {e}")))
}

/// Decodes a row of [`schema::JOB_COLUMNS`].
fn decode_job(row: &libsql::Row) -> Result<Job, DbError> {
    let error_tag = row.opt_text(21)?;
    let error_message = row.opt_text(22)?;
    Ok(Job {
        id: row.text(0)?,
        agent_id: row.text(1)?,
        input: parse_raw(row.text(2)?)?,
        meta: row.opt_text(3)?.map(parse_raw).transpose()?,
        priority: row.int(4)?,
        status: parse_status(&row.text(5)?)?,
        scheduled_for: row.int(6)?,
        created_at: row.int(7)?,
        updated_at: row.int(8)?,
        attempts: row.int(9)?,
        max_attempts: row.int(10)?,
        lease_epoch: row.int(11)?,
        lease_owner: row.opt_text(12)?,
        lease_expires_at: row.opt_int(13)?,
        cancel_requested: row.int(14)? != 0,
        stop_requested: row.int(15)? != 0,
        lifecycle: if row.int(16)? != 0 {
            Lifecycle::LongLived
        } else {
            Lifecycle::Job
        },
        restarts: row.int(17)?,
        max_restarts: row.opt_int(18)?,
        run_id: row.opt_text(19)?,
        result_status: row.opt_text(20)?,
        result_error: error_tag.map(|tag| ErrorInfo {
            tag,
            message: error_message.unwrap_or_default(),
        }),
        finished_at: row.opt_int(23)?,
        seq: row.int(24)?,
        tenant_id: row.opt_text(25)?,
        user_id: row.opt_text(26)?,
        parent_job_id: row.opt_text(27)?,
        parent_run_id: row.opt_text(28)?,
        root_job_id: match row.opt_text(29)? {
            Some(root) => root,
            None => row.text(0)?,
        },
        depth: row.int(30)?,
    })
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct InsertRow<'a> {
    id: &'a str,
    agent_id: &'a str,
    input: &'a str,
    meta: Option<&'a str>,
    priority: i64,
    /// None: now, by the database's clock.
    scheduled_for: Option<i64>,
    max_attempts: i64,
    long_lived: bool,
    max_restarts: Option<i64>,
    tenant_id: Option<&'a str>,
    user_id: Option<&'a str>,
    parent_job_id: Option<&'a str>,
    parent_run_id: Option<&'a str>,
    root_job_id: Option<&'a str>,
    depth: i64,
    /// With fair shares only.
    #[serde(skip_serializing_if = "Option::is_none")]
    concurrency_key: Option<String>,
}

/// Appends the values of one outcome in the order of [`schema::finish`].
fn complete_params(f: &Finish, params: &mut Vec<Value>) {
    let text = |s: Option<&str>| s.map_or(Value::Null, |s| Value::Text(s.to_string()));
    params.extend([
        Value::Text(f.lease.job_id.clone()),
        Value::Integer(f.lease.epoch),
        text(f.run_id.as_deref()),
        text(f.result_status.as_deref()),
    ]);
}

fn finish_params(f: &Finish, params: &mut Vec<Value>) {
    let (kind, error, retry) = match &f.kind {
        FinishKind::Complete => ("complete", None, false),
        FinishKind::Fail { error, retry } => ("fail", Some(error), *retry),
        FinishKind::Release => ("release", None, false),
    };
    let text = |s: Option<&str>| s.map_or(Value::Null, |s| Value::Text(s.to_string()));
    params.extend([
        Value::Text(f.lease.job_id.clone()),
        Value::Integer(f.lease.epoch),
        Value::Text(kind.to_string()),
        text(f.run_id.as_deref()),
        text(f.result_status.as_deref()),
        text(error.map(|e| e.tag.as_str())),
        text(error.map(|e| e.message.as_str())),
        Value::Integer(i64::from(retry)),
    ]);
}

#[cfg(test)]
mod query_plans {
    //! The hot statements must find their rows through an index, never by scanning the jobs
    //! table: a million jobs scheduled for tomorrow, or finished long ago, must cost a claim
    //! nothing. (The plans are SQLite's, on an embedded database; a remote server runs the
    //! same engine.)

    use super::*;
    use crate::db::Rows;
    use crate::queue::schema::FairCaps;

    /// SQLite's plan for `sql`, one line per step.
    async fn plan(queue: &Queue, sql: String, params: Vec<Value>) -> Vec<String> {
        queue
            .db
            .query(format!("EXPLAIN QUERY PLAN {sql}"), params, |row| {
                row.text(3)
            })
            .await
            .expect("plan")
    }

    fn assert_no_scan_of_jobs(what: &str, plan: &[String]) {
        assert!(
            !plan.iter().any(|step| {
                let table = step.strip_prefix("SCAN ").and_then(|s| s.split(' ').next());
                // Reading a lane's index is the point of a claim: it holds only due jobs, and a
                // claim stops after its batch. The leased jobs are as many as the fleet's slots.
                let bounded = ["jobs_lane", "jobs_lease", "jobs_fair"]
                    .iter()
                    .any(|index| step.ends_with(&format!("INDEX {index}")));
                matches!(table, Some("jobs" | "j")) && !bounded
            }),
            "{what} scans the jobs table: {plan:#?}"
        );
    }

    #[tokio::test]
    async fn hot_statements_use_indexes() {
        let queue = Queue::open(":memory:", None).await.expect("queue");
        let text = |s: &str| Value::Text(s.to_string());
        let none = || Value::Null;
        let claim = plan(
            &queue,
            schema::claim(true),
            vec![
                text("w"),
                Value::Integer(1000),
                Value::Integer(64),
                Value::Integer(0),
                text("[\"echo\"]"),
            ],
        )
        .await;
        assert_no_scan_of_jobs("a lane's claim", &claim);
        assert!(
            claim.iter().any(|step| step.contains("jobs_lane")),
            "a lane's claim reads its own index range: {claim:#?}"
        );
        // With fair shares: the fair index in claim order, and the leased jobs' index (for the
        // caps), never the table.
        for lane in [true, false] {
            for caps in [FairCaps::None, FairCaps::One, FairCaps::PerKey] {
                let mut params = vec![
                    text("w"),
                    Value::Integer(1000),
                    Value::Integer(64),
                    if lane { Value::Integer(0) } else { none() },
                    text("[\"echo\"]"),
                ];
                match caps {
                    FairCaps::None => {}
                    FairCaps::One => params.push(Value::Integer(3)),
                    FairCaps::PerKey => {
                        params.extend([text("{\"acme\": 5}"), Value::Integer(3)]);
                    }
                }
                let fair = plan(&queue, schema::claim_fair(lane, caps), params).await;
                assert_no_scan_of_jobs("a fair claim", &fair);
                let mut indexes = vec!["jobs_fair"];
                if caps != FairCaps::None {
                    indexes.push("jobs_lease");
                }
                for index in indexes {
                    assert!(
                        fair.iter()
                            .any(|step| step.contains(&format!("INDEX {index}"))),
                        "a fair claim ({caps:?}) reads {index}: {fair:#?}"
                    );
                }
            }
        }
        for sql in schema::key_unkeyed() {
            let unkeyed = plan(&queue, sql, Vec::new()).await;
            assert_no_scan_of_jobs("keying unkeyed jobs", &unkeyed);
        }
        for fair in [false, true] {
            let promote = plan(&queue, schema::promote(fair), Vec::new()).await;
            assert_no_scan_of_jobs("promoting due jobs", &promote);
            assert!(
                promote.iter().any(|step| step.contains("jobs_due")),
                "{promote:#?}"
            );
        }
        let insert = plan(
            &queue,
            schema::insert_jobs(true),
            vec![text("[]"), Value::Integer(0)],
        )
        .await;
        assert_no_scan_of_jobs("a fair enqueue", &insert);
        let reclaim = plan(
            &queue,
            schema::reclaim(),
            vec![
                none(),
                text("w"),
                text("[]"),
                Value::Integer(1),
                Value::Integer(2),
                Value::Integer(3),
                Value::Integer(4),
            ],
        )
        .await;
        assert_no_scan_of_jobs("reclaiming", &reclaim);
        // Releasing orphans reads the leased jobs (as many as the fleet has slots), not the
        // table.
        let orphans = plan(
            &queue,
            schema::release_orphans(),
            vec![text("w"), text("[]"), Value::Integer(0)],
        )
        .await;
        assert_no_scan_of_jobs("releasing orphans", &orphans);
        let renew = plan(
            &queue,
            schema::renew(Rows::Json),
            vec![Value::Integer(1000), text(r#"[["a",1],["b",1]]"#)],
        )
        .await;
        assert_no_scan_of_jobs("renewing", &renew);
        let complete_many = plan(
            &queue,
            schema::complete(Rows::Json),
            vec![
                Value::Integer(0),
                text(r#"[["a",1,null,null],["b",1,null,null]]"#),
            ],
        )
        .await;
        assert_no_scan_of_jobs("completing jobs", &complete_many);
        let complete = plan(
            &queue,
            schema::complete(Rows::One),
            vec![
                Value::Integer(0),
                text("a"),
                Value::Integer(1),
                none(),
                none(),
            ],
        )
        .await;
        assert_no_scan_of_jobs("completing one job", &complete);
        let mut finish_params = vec![Value::Integer(0), Value::Integer(1), Value::Integer(2)];
        finish_params.extend([
            text("a"),
            Value::Integer(1),
            text("fail"),
            none(),
            none(),
            text("T"),
            text("m"),
            Value::Integer(1),
        ]);
        let finish = plan(&queue, schema::finish(Rows::One), finish_params).await;
        assert_no_scan_of_jobs("finishing", &finish);
        let finish_many = plan(
            &queue,
            schema::finish(Rows::Json),
            vec![
                Value::Integer(0),
                Value::Integer(1),
                Value::Integer(2),
                text(r#"[["a",1,"fail",null,null,"T","m",1],["b",1,"release",null,null,null,null,0]]"#),
            ],
        )
        .await;
        assert_no_scan_of_jobs("finishing jobs", &finish_many);
        let signals = plan(&queue, schema::SIGNALS.to_string(), vec![text("w")]).await;
        assert_no_scan_of_jobs("polling signals", &signals);
    }
}

#[cfg(test)]
mod lineage {
    use super::*;

    #[tokio::test]
    async fn a_child_knows_its_parent_and_root_and_a_tree_lists_together() {
        let queue = Queue::open(":memory:", None).await.expect("queue");
        let root = queue
            .enqueue(NewJob::new("a", &serde_json::json!(1)).tenant("acme"))
            .await
            .expect("root")
            .job;
        assert_eq!(
            (
                root.parent_job_id.as_deref(),
                root.root_job_id.as_str(),
                root.depth
            ),
            (None, root.id.as_str(), 0)
        );
        let child = queue
            .enqueue(
                NewJob::new("b", &serde_json::json!(2))
                    .tenant("acme")
                    .child_of(Lineage {
                        parent_job_id: root.id.clone(),
                        parent_run_id: "run-1".into(),
                        root_job_id: root.id.clone(),
                        depth: 1,
                    }),
            )
            .await
            .expect("child")
            .job;
        assert_eq!(child.parent_job_id.as_deref(), Some(root.id.as_str()));
        assert_eq!(child.parent_run_id.as_deref(), Some("run-1"));
        assert_eq!(
            (child.root_job_id.as_str(), child.depth),
            (root.id.as_str(), 1)
        );
        queue
            .enqueue(NewJob::new("a", &serde_json::json!(3)))
            .await
            .expect("another root");

        let tree = queue
            .list(&JobFilter {
                root_job_id: Some(root.id.clone()),
                ..JobFilter::default()
            })
            .await
            .expect("tree");
        let ids: Vec<&str> = tree.iter().map(|j| j.id.as_str()).collect();
        assert_eq!(ids, [child.id.as_str(), root.id.as_str()]);
        let children = queue
            .list(&JobFilter {
                parent_job_id: Some(root.id.clone()),
                ..JobFilter::default()
            })
            .await
            .expect("children");
        assert_eq!(children.len(), 1);
        assert_eq!(children[0].id, child.id);
        let flagged: Vec<String> = queue
            .db
            .query("SELECT id FROM jobs WHERE has_children = 1", (), |row| {
                row.text(0)
            })
            .await
            .expect("flags");
        assert_eq!(flagged, std::slice::from_ref(&root.id));
    }

    #[tokio::test]
    async fn walking_a_tree_reads_the_parent_index_not_the_table() {
        let queue = Queue::open(":memory:", None).await.expect("queue");
        for sql in [schema::stop_below(), schema::cancel_below()] {
            let plan = queue
                .db
                .query(
                    format!("EXPLAIN QUERY PLAN {sql}"),
                    (String::from("[\"a\"]"), 0),
                    |row| row.text(3),
                )
                .await
                .expect("plan");
            assert!(
                !plan.iter().any(|step| step.starts_with("SCAN jobs")
                    || step.starts_with("SCAN j ")
                    || step == "SCAN j"),
                "{plan:#?}"
            );
            assert!(
                plan.iter().any(|step| step.contains("jobs_parent")),
                "{plan:#?}"
            );
        }
    }
}
