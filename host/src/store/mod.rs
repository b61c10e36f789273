//! The run store: every run of every agent, its outcome and resource figures, and the ordered
//! events it emitted.
//!
//! Writes arrive in batches ([`WriteBatch`]) from the worker pool's recorder, which coalesces a
//! short run's start and end into one row; a batch is a few multi-row statements of bound
//! values.

pub(crate) mod recording;
pub mod retention;
mod run;

use std::collections::HashMap;
use std::sync::Arc;

use libsql::Value;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::db::{Bulk, Db, DbError, Migration, RowExt, Rows};
use crate::queue::{ErrorInfo, Lifecycle, Reclaimed};

pub use run::{Event, Run, RunFilter, RunStatus, Usage};

/// Errors from the run store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// A value could not be encoded.
    #[error("cannot encode: {0}")]
    Encode(String),
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "runs and events",
        sql: r#"
CREATE TABLE IF NOT EXISTS runs (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    job_id TEXT,
    agent_id TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 1,
    parent_run_id TEXT,
    status TEXT NOT NULL,
    sandbox TEXT,
    long_lived INTEGER NOT NULL DEFAULT 0,
    input TEXT,
    output TEXT,
    error_tag TEXT,
    error_message TEXT,
    started_at INTEGER NOT NULL,
    ended_at INTEGER,
    heartbeat_at INTEGER,
    fuel_used INTEGER,
    peak_memory INTEGER,
    worker_id TEXT
);
CREATE INDEX IF NOT EXISTS runs_job ON runs (job_id, attempt);
CREATE INDEX IF NOT EXISTS runs_agent ON runs (agent_id, seq);
CREATE INDEX IF NOT EXISTS runs_running ON runs (seq) WHERE status = 'running';
CREATE TABLE IF NOT EXISTS events (
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
"#,
    },
    // Counting runs by status (`/v1/stats`, `/metrics`) reads this index, not the wide rows.
    Migration {
        version: 2,
        name: "runs by status",
        sql: "CREATE INDEX runs_status ON runs (status);",
    },
    // What a run's model and tool calls used. Nullable columns added in place: existing rows
    // read back as runs without usage, and no row is rewritten.
    Migration {
        version: 3,
        name: "usage on runs",
        sql: "ALTER TABLE runs ADD COLUMN turns INTEGER;
ALTER TABLE runs ADD COLUMN input_tokens INTEGER;
ALTER TABLE runs ADD COLUMN output_tokens INTEGER;
ALTER TABLE runs ADD COLUMN cost_usd REAL;
ALTER TABLE runs ADD COLUMN tool_calls INTEGER;",
    },
    // The tenant and user of a run's job, copied when the run starts, so that a tenant's runs
    // are listed (and hidden from other tenants) without reading the queue.
    Migration {
        version: 4,
        name: "tenants on runs",
        sql: "ALTER TABLE runs ADD COLUMN tenant_id TEXT;
ALTER TABLE runs ADD COLUMN user_id TEXT;
CREATE INDEX runs_tenant ON runs (tenant_id, seq) WHERE tenant_id IS NOT NULL;",
    },
];

const RUN_COLUMNS: &str = "id, job_id, agent_id, attempt, parent_run_id, status, sandbox, \
    long_lived, input, output, error_tag, error_message, started_at, ended_at, heartbeat_at, \
    fuel_used, peak_memory, worker_id, turns, input_tokens, output_tokens, cost_usd, tool_calls, \
    tenant_id, user_id";

/// Inserts or updates `rows` runs (the values of [`run_params`], from `?1`). A run's identity,
/// input and start never change; its outcome fields are overwritten, and its heartbeat only
/// moves forward. A run found lost stays lost: its attempt was reclaimed, so no outcome of it
/// can reach the queue any more, whatever its host later reports.
fn upsert_runs(rows: Rows) -> String {
    format!(
        "INSERT INTO runs ({RUN_COLUMNS})
         {}
         ON CONFLICT (id) DO UPDATE SET
            status = iif(runs.status = 'lost', runs.status, excluded.status),
            output = excluded.output,
            error_tag = iif(runs.status = 'lost', runs.error_tag, excluded.error_tag),
            error_message = iif(runs.status = 'lost', runs.error_message,
                                excluded.error_message),
            ended_at = excluded.ended_at,
            heartbeat_at = max(coalesce(runs.heartbeat_at, 0),
                               coalesce(excluded.heartbeat_at, 0)),
            fuel_used = excluded.fuel_used,
            peak_memory = excluded.peak_memory,
            turns = excluded.turns,
            input_tokens = excluded.input_tokens,
            output_tokens = excluded.output_tokens,
            cost_usd = excluded.cost_usd,
            tool_calls = excluded.tool_calls",
        rows.source(RUN_VALUES, 1)
    )
}

/// Values per run in [`upsert_runs`].
const RUN_VALUES: usize = 25;

/// Appends `rows` events `(run_id, seq, ts, kind, payload)`.
fn insert_events(rows: Rows) -> String {
    format!(
        "INSERT OR IGNORE INTO events (run_id, seq, ts, kind, payload) {}",
        rows.source(EVENT_VALUES, 1)
    )
}

/// Values per event in [`insert_events`].
const EVENT_VALUES: usize = 5;

/// Moves the heartbeat of `rows` runs `(id, ts)` forward.
fn heartbeats(rows: Rows) -> String {
    format!(
        "WITH h(id, ts) AS ({})
         UPDATE runs SET heartbeat_at = max(coalesce(runs.heartbeat_at, 0), h.ts)
         FROM h WHERE runs.id = h.id",
        rows.source(2, 1)
    )
}

/// Marks `rows` runs, by id, as lost with error `?1`/`?2` at `?3`: those still running, and
/// those recorded as a success whose outcome never reached the queue. A run that failed keeps
/// its own error.
fn mark_runs_lost(rows: Rows) -> String {
    format!(
        "WITH l(id) AS ({})
         UPDATE runs SET status = 'lost', error_tag = ?1, error_message = ?2,
                         ended_at = coalesce(runs.ended_at, ?3)
         FROM l WHERE runs.id = l.id AND runs.status IN ('running', 'success')",
        rows.source(1, 4)
    )
}

/// Marks the runs of `rows` job attempts as lost, under the same rule as [`mark_runs_lost`].
/// Each row is a whole run ([`run_params`]) of which the job, attempt, error and end are read.
fn mark_attempts_lost(rows: Rows) -> String {
    format!(
        "WITH l({RUN_COLUMNS}) AS ({})
         UPDATE runs SET status = 'lost', error_tag = l.error_tag,
                         error_message = l.error_message,
                         ended_at = coalesce(runs.ended_at, l.ended_at)
         FROM l WHERE runs.job_id = l.job_id AND runs.attempt = l.attempt
                  AND runs.status IN ('running', 'success')",
        rows.source(RUN_VALUES, 1)
    )
}

/// Inserts `rows` lost runs ([`run_params`]) for the job attempts that have no run yet: a
/// host that died between claiming a job and recording its run.
fn insert_lost_attempts(rows: Rows) -> String {
    format!(
        "WITH l({RUN_COLUMNS}) AS ({})
         INSERT INTO runs ({RUN_COLUMNS})
         SELECT * FROM l WHERE NOT EXISTS (
             SELECT 1 FROM runs WHERE runs.job_id = l.job_id AND runs.attempt = l.attempt)
         ON CONFLICT (id) DO NOTHING",
        rows.source(RUN_VALUES, 1)
    )
}

/// A run as written by the recorder: the full current state of the row.
#[derive(Debug, Clone)]
pub struct RunRecord {
    /// Run id.
    pub id: String,
    /// Job id.
    pub job_id: Option<String>,
    /// Agent id.
    pub agent_id: String,
    /// Claim number of the job.
    pub attempt: i64,
    /// Parent run.
    pub parent_run_id: Option<String>,
    /// Status.
    pub status: RunStatus,
    /// Sandbox name.
    pub sandbox: Option<&'static str>,
    /// Whether the agent is long-lived.
    pub long_lived: bool,
    /// Input JSON text. Stored only for a run without a job; a job's runs are read back
    /// without it (their job has it).
    pub input: Option<Arc<RawValue>>,
    /// Output JSON text.
    pub output: Option<Arc<RawValue>>,
    /// Error tag.
    pub error_tag: Option<String>,
    /// Error message.
    pub error_message: Option<String>,
    /// Start (epoch ms).
    pub started_at: i64,
    /// End (epoch ms).
    pub ended_at: Option<i64>,
    /// Last heartbeat (epoch ms).
    pub heartbeat_at: Option<i64>,
    /// Fuel used.
    pub fuel_used: Option<i64>,
    /// Peak linear memory (bytes).
    pub peak_memory: Option<i64>,
    /// Worker id.
    pub worker_id: Option<Arc<str>>,
    /// What the run's model and tool calls used (none: it made none).
    pub usage: Option<Usage>,
    /// The tenant of its job.
    pub tenant_id: Option<String>,
    /// The user of its job.
    pub user_id: Option<String>,
}

impl RunRecord {
    /// The run of a job attempt whose host stopped responding, as the reclaim loop records it
    /// when the host never recorded the run itself: status `lost` with `error`, from the
    /// claim (or `now_ms` if its time is unknown) to `now_ms`. Its id is the attempt's
    /// ([`attempt_run_id`]), so the host's own record of the run, should it arrive late,
    /// lands on this row.
    pub fn lost_attempt(reclaimed: &Reclaimed, error: &ErrorInfo, now_ms: i64) -> Self {
        let r = reclaimed;
        Self {
            id: attempt_run_id(&r.job_id, r.created_at, r.epoch),
            job_id: Some(r.job_id.clone()),
            agent_id: r.agent_id.clone(),
            attempt: r.epoch,
            parent_run_id: r.parent_run_id.clone(),
            status: RunStatus::Lost,
            sandbox: None,
            long_lived: r.long_lived,
            input: None,
            output: None,
            error_tag: Some(error.tag.clone()),
            error_message: Some(error.message.clone()),
            started_at: r.claimed_at.unwrap_or(now_ms).min(now_ms),
            ended_at: Some(now_ms),
            heartbeat_at: None,
            fuel_used: None,
            peak_memory: None,
            worker_id: None,
            usage: None,
            tenant_id: r.tenant_id.clone(),
            user_id: r.user_id.clone(),
        }
    }
}

/// The id of the run of attempt `attempt` (the lease epoch) of the job `job_id` enqueued at
/// `created_at`: a name-based UUID (version 5), so that the host running the attempt and a
/// host recovering it after its death name the same run. The enqueue time tells apart two
/// jobs given the same id one after the other.
pub fn attempt_run_id(job_id: &str, created_at: i64, attempt: i64) -> String {
    /// The namespace of run ids.
    const RUNS: uuid::Uuid = uuid::Uuid::from_u128(0x6472_6f76_6572_4000_8000_0072_756e_7331);
    let name = format!("{job_id}\n{created_at}\n{attempt}");
    uuid::Uuid::new_v5(&RUNS, name.as_bytes()).to_string()
}

/// An event as written by the recorder.
#[derive(Debug, Clone)]
pub struct EventRecord {
    /// Run id.
    pub run_id: Arc<str>,
    /// Position in the run's timeline.
    pub seq: i64,
    /// When (epoch ms).
    pub ts: i64,
    /// Kind.
    pub kind: String,
    /// Payload JSON text.
    pub payload: Arc<RawValue>,
}

/// Everything one recorder flush writes.
#[derive(Debug, Default)]
pub struct WriteBatch {
    /// Runs to insert or update.
    pub runs: Vec<RunRecord>,
    /// Events to append.
    pub events: Vec<EventRecord>,
    /// Heartbeats: run id → time (epoch ms).
    pub heartbeats: HashMap<Arc<str>, i64>,
}

impl WriteBatch {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty() && self.events.is_empty() && self.heartbeats.is_empty()
    }
}

/// The run store. Cheap to clone.
#[derive(Clone, Debug)]
pub struct RunStore {
    db: Db,
}

/// Most rows a list call returns.
const MAX_LIST_LIMIT: u32 = 1000;

impl RunStore {
    /// Opens the store at `url`, creating and migrating its tables as needed.
    pub async fn open(url: &str, auth_token: Option<&str>) -> Result<Self, StoreError> {
        Self::with_db(Db::open(url, auth_token).await?).await
    }

    /// Builds a store on an open database (which may also hold the queue).
    pub async fn with_db(db: Db) -> Result<Self, StoreError> {
        db.migrate("store", MIGRATIONS).await?;
        Ok(Self { db })
    }

    /// The database behind the store.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Writes a batch: runs, then events, then heartbeats (see [`Db::bulk`]: one transaction
    /// on an embedded database).
    pub async fn write(&self, batch: &WriteBatch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut runs = Vec::with_capacity(batch.runs.len() * RUN_VALUES);
        batch.runs.iter().for_each(|run| run_params(run, &mut runs));
        let mut events = Vec::with_capacity(batch.events.len() * EVENT_VALUES);
        for e in &batch.events {
            events.extend([
                Value::Text(e.run_id.to_string()),
                Value::Integer(e.seq),
                Value::Integer(e.ts),
                Value::Text(e.kind.clone()),
                Value::Text(e.payload.get().to_string()),
            ]);
        }
        let mut beats = Vec::with_capacity(batch.heartbeats.len() * 2);
        for (id, ts) in &batch.heartbeats {
            beats.extend([Value::Text(id.to_string()), Value::Integer(*ts)]);
        }
        let bulk = |sql: fn(Rows) -> String, cols, values| Bulk {
            sql,
            fixed: Vec::new(),
            cols,
            values,
        };
        self.db
            .bulk(vec![
                bulk(upsert_runs, RUN_VALUES, runs),
                bulk(insert_events, EVENT_VALUES, events),
                bulk(heartbeats, 2, beats),
            ])
            .await?;
        Ok(())
    }

    /// Marks the given runs lost (their worker lost its lease, so their outcome was dropped).
    pub async fn mark_runs_lost(
        &self,
        run_ids: &[String],
        error: &ErrorInfo,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.db
            .bulk(vec![Bulk {
                sql: mark_runs_lost,
                fixed: vec![
                    Value::Text(error.tag.clone()),
                    Value::Text(error.message.clone()),
                    Value::Integer(now_ms),
                ],
                cols: 1,
                values: run_ids.iter().map(|id| Value::Text(id.clone())).collect(),
            }])
            .await?;
        Ok(())
    }

    /// Records the runs of the given job attempts as lost (their host stopped responding):
    /// each attempt's run is marked lost as [`RunStore::mark_runs_lost`] would, and an attempt
    /// with no run at all (its host died between the claim and the run's first record) gets
    /// one, as `lost` (see [`RunRecord::lost_attempt`]). Both in one write.
    pub async fn mark_attempts_lost(&self, lost: &[RunRecord]) -> Result<(), StoreError> {
        if lost.is_empty() {
            return Ok(());
        }
        let mut values = Vec::with_capacity(lost.len() * RUN_VALUES);
        lost.iter().for_each(|run| run_params(run, &mut values));
        let bulk = |sql: fn(Rows) -> String, values| Bulk {
            sql,
            fixed: Vec::new(),
            cols: RUN_VALUES,
            values,
        };
        self.db
            .bulk(vec![
                bulk(mark_attempts_lost, values.clone()),
                bulk(insert_lost_attempts, values),
            ])
            .await?;
        Ok(())
    }

    /// One run by id.
    pub async fn get_run(&self, run_id: &str) -> Result<Option<Run>, StoreError> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1");
        let id = run_id.to_string();
        let mut runs = self.db.query(sql, [id], decode_run).await?;
        Ok(runs.pop())
    }

    /// The latest run of a job.
    pub async fn latest_run_for_job(&self, job_id: &str) -> Result<Option<Run>, StoreError> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE job_id = ?1 ORDER BY attempt DESC, seq DESC LIMIT 1"
        );
        let id = job_id.to_string();
        let mut runs = self.db.query(sql, [id], decode_run).await?;
        Ok(runs.pop())
    }

    /// The runs with these ids (in no particular order; unknown ids are skipped).
    pub async fn runs_by_id(&self, run_ids: &[String]) -> Result<Vec<Run>, StoreError> {
        if run_ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids = encode(run_ids)?;
        let sql =
            format!("SELECT {RUN_COLUMNS} FROM runs WHERE id IN (SELECT value FROM json_each(?1))");
        Ok(self.db.query(sql, [ids], decode_run).await?)
    }

    /// The latest run of each of these jobs (jobs without runs are skipped), as
    /// [`RunStore::latest_run_for_job`] finds it, in one statement.
    pub async fn latest_runs_for_jobs(&self, job_ids: &[String]) -> Result<Vec<Run>, StoreError> {
        if job_ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids = encode(job_ids)?;
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM (
                 SELECT *, row_number() OVER (
                     PARTITION BY job_id ORDER BY attempt DESC, seq DESC) AS latest
                 FROM runs WHERE job_id IN (SELECT value FROM json_each(?1)))
             WHERE latest = 1"
        );
        Ok(self.db.query(sql, [ids], decode_run).await?)
    }

    /// Runs matching `filter`, newest first.
    pub async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<Run>, StoreError> {
        let mut sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE 1 = 1");
        let mut params: Vec<Value> = Vec::new();
        if !filter.status.is_empty() {
            let statuses: Vec<&str> = filter.status.iter().map(|s| s.as_str()).collect();
            params.push(Value::Text(encode(&statuses)?));
            sql.push_str(&format!(
                " AND status IN (SELECT value FROM json_each(?{}))",
                params.len()
            ));
        }
        if let Some(agent) = &filter.agent_id {
            params.push(Value::Text(agent.clone()));
            sql.push_str(&format!(" AND agent_id = ?{}", params.len()));
        }
        if let Some(job) = &filter.job_id {
            params.push(Value::Text(job.clone()));
            sql.push_str(&format!(" AND job_id = ?{}", params.len()));
        }
        if let Some(tenant) = &filter.tenant_id {
            params.push(Value::Text(tenant.clone()));
            sql.push_str(&format!(" AND tenant_id = ?{}", params.len()));
        }
        if let Some(lifecycle) = filter.lifecycle {
            params.push(Value::Integer(i64::from(lifecycle == Lifecycle::LongLived)));
            sql.push_str(&format!(" AND long_lived = ?{}", params.len()));
        }
        params.push(Value::Integer(i64::from(
            filter.limit.unwrap_or(50).min(MAX_LIST_LIMIT),
        )));
        params.push(Value::Integer(i64::from(filter.offset.unwrap_or(0))));
        sql.push_str(&format!(
            " ORDER BY seq DESC LIMIT ?{} OFFSET ?{}",
            params.len() - 1,
            params.len()
        ));
        Ok(self.db.query(sql, params, decode_run).await?)
    }

    /// Up to `limit` events of a run with `seq > after`, in order.
    pub async fn events(
        &self,
        run_id: &str,
        after: i64,
        limit: u32,
    ) -> Result<Vec<Event>, StoreError> {
        let id = run_id.to_string();
        let limit = i64::from(limit.clamp(1, 10_000));
        Ok(self
            .db
            .query(
                "SELECT run_id, seq, ts, kind, payload FROM events
                     WHERE run_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
                (id, after, limit),
                |row| {
                    Ok(Event {
                        run_id: row.text(0)?,
                        seq: row.int(1)?,
                        ts: row.int(2)?,
                        kind: row.text(3)?,
                        payload: parse_raw(row.text(4)?)?,
                    })
                },
            )
            .await?)
    }

    /// How many runs are in each status.
    pub async fn counts(&self) -> Result<HashMap<RunStatus, i64>, StoreError> {
        let rows = self
            .db
            .query(
                "SELECT status, count(*) FROM runs GROUP BY status",
                (),
                |row| Ok((parse_status(&row.text(0)?)?, row.int(1)?)),
            )
            .await?;
        Ok(rows.into_iter().collect())
    }
}

/// Appends the values of one run in the order of [`upsert_runs`]. The input of a run that
/// belongs to a job is not stored: the job holds it, once for all its attempts (see
/// [`RunRecord::input`]).
fn run_params(r: &RunRecord, params: &mut Vec<Value>) {
    let text = |s: Option<&str>| s.map_or(Value::Null, |s| Value::Text(s.to_string()));
    let json = |v: &Option<Arc<RawValue>>| text(v.as_deref().map(RawValue::get));
    let int = |n: Option<i64>| n.map_or(Value::Null, Value::Integer);
    params.extend([
        Value::Text(r.id.clone()),
        text(r.job_id.as_deref()),
        Value::Text(r.agent_id.clone()),
        Value::Integer(r.attempt),
        text(r.parent_run_id.as_deref()),
        Value::Text(r.status.as_str().to_string()),
        text(r.sandbox),
        Value::Integer(i64::from(r.long_lived)),
        if r.job_id.is_some() {
            Value::Null
        } else {
            json(&r.input)
        },
        json(&r.output),
        text(r.error_tag.as_deref()),
        text(r.error_message.as_deref()),
        Value::Integer(r.started_at),
        int(r.ended_at),
        int(r.heartbeat_at),
        int(r.fuel_used),
        int(r.peak_memory),
        text(r.worker_id.as_deref()),
    ]);
    match r.usage {
        Some(u) => params.extend([
            Value::Integer(i64::from(u.turns)),
            Value::Integer(i64::try_from(u.input_tokens).unwrap_or(i64::MAX)),
            Value::Integer(i64::try_from(u.output_tokens).unwrap_or(i64::MAX)),
            Value::Real(u.cost_usd),
            Value::Integer(i64::from(u.tool_calls)),
        ]),
        None => params.extend(std::iter::repeat_n(Value::Null, 5)),
    }
    params.extend([text(r.tenant_id.as_deref()), text(r.user_id.as_deref())]);
}

fn encode<T: Serialize + ?Sized>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Encode(e.to_string()))
}

fn parse_status(s: &str) -> Result<RunStatus, DbError> {
    s.parse().map_err(DbError::Decode)
}

fn parse_raw(text: String) -> Result<Arc<RawValue>, DbError> {
    RawValue::from_string(text)
        .map(Arc::from)
        .map_err(|e| DbError::Decode(format!("stored JSON is invalid: {e}")))
}

fn decode_run(row: &libsql::Row) -> Result<Run, DbError> {
    let error_tag = row.opt_text(10)?;
    let error_message = row.opt_text(11)?;
    Ok(Run {
        id: row.text(0)?,
        job_id: row.opt_text(1)?,
        agent_id: row.text(2)?,
        attempt: row.int(3)?,
        parent_run_id: row.opt_text(4)?,
        status: parse_status(&row.text(5)?)?,
        sandbox: row.opt_text(6)?,
        lifecycle: if row.int(7)? != 0 {
            Lifecycle::LongLived
        } else {
            Lifecycle::Job
        },
        input: row.opt_text(8)?.map(parse_raw).transpose()?,
        output: row.opt_text(9)?.map(parse_raw).transpose()?,
        error: error_tag.map(|tag| ErrorInfo {
            tag,
            message: error_message.unwrap_or_default(),
        }),
        started_at: row.int(12)?,
        ended_at: row.opt_int(13)?,
        heartbeat_at: row.opt_int(14)?,
        fuel_used: row.opt_int(15)?,
        peak_memory: row.opt_int(16)?,
        worker_id: row.opt_text(17)?,
        usage: decode_usage(row, 18)?,
        tenant_id: row.opt_text(23)?,
        user_id: row.opt_text(24)?,
    })
}

/// The usage columns from `first` on: none when the run recorded none (`turns` is null).
fn decode_usage(row: &libsql::Row, first: i32) -> Result<Option<Usage>, DbError> {
    let Some(turns) = row.opt_int(first)? else {
        return Ok(None);
    };
    let count = |n: Option<i64>| n.map_or(0, |n| u64::try_from(n).unwrap_or(0));
    let small = |n: Option<i64>| n.map_or(0, |n| u32::try_from(n.max(0)).unwrap_or(u32::MAX));
    let cost_usd = match row.get_value(first + 3)? {
        Value::Null => 0.0,
        Value::Real(v) => v,
        // The column has REAL affinity, so it holds reals; an integer is taken as one too.
        Value::Integer(v) => v as f64,
        other => {
            return Err(DbError::Decode(format!(
                "column {}: expected a number or null, found {other:?}",
                first + 3
            )));
        }
    };
    Ok(Some(Usage {
        turns: small(Some(turns)),
        input_tokens: count(row.opt_int(first + 1)?),
        output_tokens: count(row.opt_int(first + 2)?),
        cost_usd,
        tool_calls: small(row.opt_int(first + 4)?),
    }))
}
