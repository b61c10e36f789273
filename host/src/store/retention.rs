//! Retention: deleting finished jobs, runs and their events once they are older than a given
//! age, in small batches so that the database's writer is never held for long.
//!
//! Only finished work goes: jobs that are `done`, `failed` or `cancelled`, and runs that are no
//! longer `running` (with their events). A queued or leased job and a running run are never
//! touched, however old. The queue and the run store may be different databases; each is pruned
//! on its own, so a job and its runs may go in different passes.

use std::time::Duration;

use libsql::Value;
use serde::Serialize;

use super::{RunStore, StoreError};
use crate::db::{Db, DbError, RowExt};
use crate::queue::Queue;

/// Rows one statement deletes at most.
pub const PRUNE_BATCH: usize = 500;

/// Runs whose events one pass deletes before it deletes the runs themselves.
const RUNS_PER_PASS: usize = 100;

/// What a prune removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Pruned {
    /// Finished jobs deleted from the queue.
    pub jobs: u64,
    /// Finished runs deleted from the run store.
    pub runs: u64,
    /// Events of those runs.
    pub events: u64,
    /// Delete statements run.
    pub statements: u64,
    /// Most rows one statement deleted (at most the batch size).
    pub largest_batch: u64,
}

impl Pruned {
    fn count(&mut self, deleted: u64) {
        self.statements += 1;
        self.largest_batch = self.largest_batch.max(deleted);
    }
}

/// Deletes finished jobs (from `queue`) and finished runs with their events (from `store`)
/// that ended before `now_ms - older_than`, at most `batch` rows per statement (see
/// [`PRUNE_BATCH`]).
pub async fn prune(
    queue: &Queue,
    store: &RunStore,
    older_than: Duration,
    now_ms: i64,
    batch: usize,
) -> Result<Pruned, StoreError> {
    let cutoff = now_ms.saturating_sub(i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX));
    let batch = batch.max(1);
    let mut pruned = Pruned::default();
    prune_runs(store.db(), cutoff, batch, &mut pruned).await?;
    prune_jobs(queue.db(), cutoff, batch, &mut pruned).await?;
    Ok(pruned)
}

async fn prune_jobs(
    db: &Db,
    cutoff: i64,
    batch: usize,
    pruned: &mut Pruned,
) -> Result<(), StoreError> {
    loop {
        let deleted = delete(
            db,
            "DELETE FROM jobs WHERE seq IN (
                 SELECT seq FROM jobs
                 WHERE status IN ('done', 'failed', 'cancelled')
                   AND coalesce(finished_at, updated_at) < ?1
                 ORDER BY seq LIMIT ?2)",
            vec![Value::Integer(cutoff), limit(batch)],
        )
        .await?;
        pruned.count(deleted);
        pruned.jobs += deleted;
        if deleted < batch as u64 {
            return Ok(());
        }
    }
}

async fn prune_runs(
    db: &Db,
    cutoff: i64,
    batch: usize,
    pruned: &mut Pruned,
) -> Result<(), StoreError> {
    let per_pass = RUNS_PER_PASS.min(batch);
    loop {
        let ids = db
            .query(
                "SELECT id FROM runs
                     WHERE status <> 'running' AND coalesce(ended_at, started_at) < ?1
                     ORDER BY seq LIMIT ?2",
                vec![Value::Integer(cutoff), limit(per_pass)],
                |row| row.text(0),
            )
            .await?;
        if ids.is_empty() {
            return Ok(());
        }
        let ids = Value::Text(super::encode(&ids)?);
        // The events first, so that no event outlives its run if a pass is cut short.
        loop {
            let deleted = delete(
                db,
                "DELETE FROM events WHERE (run_id, seq) IN (
                     SELECT run_id, seq FROM events
                     WHERE run_id IN (SELECT value FROM json_each(?1)) LIMIT ?2)",
                vec![ids.clone(), limit(batch)],
            )
            .await?;
            pruned.count(deleted);
            pruned.events += deleted;
            if deleted < batch as u64 {
                break;
            }
        }
        let deleted = delete(
            db,
            "DELETE FROM runs WHERE id IN (SELECT value FROM json_each(?1)) AND status <> 'running'",
            vec![ids],
        )
        .await?;
        pruned.count(deleted);
        pruned.runs += deleted;
        if deleted == 0 {
            return Ok(());
        }
    }
}

fn limit(batch: usize) -> Value {
    Value::Integer(i64::try_from(batch).unwrap_or(i64::MAX))
}

/// Runs one delete statement through the writer; returns how many rows it deleted.
async fn delete(db: &Db, sql: &'static str, params: Vec<Value>) -> Result<u64, DbError> {
    db.write(move |conn| async move { Ok(conn.execute(sql, params).await?) })
        .await
}
