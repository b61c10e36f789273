//! The queue's tables and the SQL that moves jobs between statuses.
//!
//! Every operation is a single statement: batches travel as one JSON array parameter read with
//! `json_each`, and fencing (`lease_epoch`) is part of each `WHERE` clause. No interactive
//! transaction is ever held, so a remote libsql server sees one round trip per operation.

use crate::db::Migration;

/// The queue's schema, oldest first.
pub(crate) const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "jobs",
    sql: r#"
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    agent_id TEXT NOT NULL,
    input TEXT NOT NULL,
    meta TEXT,
    priority INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL DEFAULT 'queued',
    scheduled_for INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL DEFAULT 1,
    lease_epoch INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_expires_at INTEGER,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    stop_requested INTEGER NOT NULL DEFAULT 0,
    long_lived INTEGER NOT NULL DEFAULT 0,
    restarts INTEGER NOT NULL DEFAULT 0,
    max_restarts INTEGER,
    run_id TEXT,
    result_status TEXT,
    error_tag TEXT,
    error_message TEXT,
    finished_at INTEGER
);
-- Claim order: highest priority, then oldest. Only queued jobs are in this index.
CREATE INDEX IF NOT EXISTS jobs_ready ON jobs (priority DESC, seq) WHERE status = 'queued';
-- Expired-lease scans.
CREATE INDEX IF NOT EXISTS jobs_lease ON jobs (lease_expires_at) WHERE status = 'leased';
-- Cancel and stop requests on running jobs, polled by every pool. Tiny: only flagged leases.
CREATE INDEX IF NOT EXISTS jobs_signals ON jobs (lease_owner)
    WHERE status = 'leased' AND (cancel_requested = 1 OR stop_requested = 1);
CREATE INDEX IF NOT EXISTS jobs_agent ON jobs (agent_id, seq);
"#,
}];

/// The columns of a job, in the order [`super::decode_job`] reads them.
pub(crate) const JOB_COLUMNS: &str = "id, agent_id, input, meta, priority, status, scheduled_for, \
    created_at, updated_at, attempts, max_attempts, lease_epoch, lease_owner, lease_expires_at, \
    cancel_requested, stop_requested, long_lived, restarts, max_restarts, run_id, result_status, \
    error_tag, error_message, finished_at";

/// Inserts a batch of jobs (`?1`: JSON array), skipping ids that exist; returns the new rows.
pub(crate) fn insert_jobs() -> String {
    format!(
        "INSERT INTO jobs (id, agent_id, input, meta, priority, status, scheduled_for, created_at,
                           updated_at, max_attempts, long_lived, max_restarts)
         SELECT value->>'id', value->>'agentId', value->>'input', value->>'meta',
                value->>'priority', 'queued', value->>'scheduledFor', ?2, ?2,
                value->>'maxAttempts', value->>'longLived', value->>'maxRestarts'
         FROM json_each(?1) WHERE true
         ON CONFLICT (id) DO NOTHING
         RETURNING {JOB_COLUMNS}"
    )
}

/// Leases up to `?4` due jobs to worker `?1` until `?2`; `?3` is now; `?5` restricts the claim
/// to long-lived (1) or run-to-completion (0) agents' jobs, or takes both (null).
pub(crate) fn claim() -> String {
    format!(
        "UPDATE jobs SET status = 'leased', lease_owner = ?1, lease_epoch = lease_epoch + 1,
                         lease_expires_at = ?2, updated_at = ?3
         WHERE seq IN (SELECT seq FROM jobs
                       WHERE status = 'queued' AND scheduled_for <= ?3
                         AND (?5 IS NULL OR long_lived = ?5)
                       ORDER BY priority DESC, seq LIMIT ?4)
         RETURNING {JOB_COLUMNS}"
    )
}

/// Extends the leases listed in `?1` (`[{id, epoch}]`) to `?2`; `?3` is now. Returns the ids
/// whose lease is still held.
pub(crate) const RENEW: &str = "
    UPDATE jobs SET lease_expires_at = ?2, updated_at = ?3
    FROM (SELECT value->>'id' AS id, value->>'epoch' AS epoch FROM json_each(?1)) AS l
    WHERE jobs.id = l.id AND jobs.lease_epoch = l.epoch AND jobs.status = 'leased'
    RETURNING jobs.id";

/// Applies a batch of outcomes (`?1`: `[{id, epoch, kind, runId, resultStatus, tag, message,
/// retry}]`) to the jobs whose lease is still current. `?2` is now, `?3` the backoff base (ms),
/// `?4` the backoff cap (ms). Returns the ids and new statuses of the jobs it changed.
pub(crate) const FINISH: &str = "
    UPDATE jobs SET
        status = o.next,
        attempts = jobs.attempts + (o.kind = 'fail'),
        scheduled_for = CASE
            WHEN o.kind = 'release' THEN ?2
            WHEN o.next = 'queued' THEN ?2 + min(?3 << min(jobs.attempts, 30), ?4)
            ELSE jobs.scheduled_for END,
        run_id = coalesce(o.run_id, jobs.run_id),
        result_status = coalesce(o.result_status, jobs.result_status),
        error_tag = CASE WHEN o.kind = 'complete' THEN NULL ELSE coalesce(o.tag, jobs.error_tag) END,
        error_message = CASE WHEN o.kind = 'complete' THEN NULL
                             ELSE coalesce(o.message, jobs.error_message) END,
        lease_owner = NULL,
        lease_expires_at = NULL,
        updated_at = ?2,
        finished_at = CASE WHEN o.next IN ('done', 'failed', 'cancelled') THEN ?2 ELSE NULL END
    FROM (SELECT j.seq, n.value->>'kind' AS kind, n.value->>'runId' AS run_id,
                 n.value->>'resultStatus' AS result_status, n.value->>'tag' AS tag,
                 n.value->>'message' AS message,
                 CASE n.value->>'kind'
                     WHEN 'complete' THEN 'done'
                     WHEN 'release' THEN 'queued'
                     WHEN 'cancel' THEN 'cancelled'
                     ELSE CASE WHEN n.value->>'retry' AND j.attempts + 1 < j.max_attempts
                               THEN 'queued' ELSE 'failed' END
                 END AS next
          FROM json_each(?1) AS n
          JOIN jobs AS j ON j.id = n.value->>'id' AND j.lease_epoch = n.value->>'epoch'
          WHERE j.status = 'leased') AS o
    WHERE jobs.seq = o.seq
    RETURNING jobs.id, jobs.status";

/// Cancels job `?1` at `?2`: a queued job becomes `cancelled` at once, a leased one is flagged
/// for its worker. Terminal jobs are left alone (no row returned).
pub(crate) fn cancel() -> String {
    format!(
        "UPDATE jobs SET
            status = CASE WHEN status = 'queued' THEN 'cancelled' ELSE status END,
            cancel_requested = CASE WHEN status = 'leased' THEN 1 ELSE cancel_requested END,
            error_tag = CASE WHEN status = 'queued' THEN 'Cancelled' ELSE error_tag END,
            error_message = CASE WHEN status = 'queued' THEN 'cancelled before it started'
                                 ELSE error_message END,
            finished_at = CASE WHEN status = 'queued' THEN ?2 ELSE finished_at END,
            updated_at = ?2
         WHERE id = ?1 AND status IN ('queued', 'leased')
         RETURNING {JOB_COLUMNS}"
    )
}

/// Asks job `?1` to stop gracefully at `?2`: a queued job (never started) is cancelled, a leased
/// one is flagged for its worker.
pub(crate) fn stop() -> String {
    format!(
        "UPDATE jobs SET
            status = CASE WHEN status = 'queued' THEN 'cancelled' ELSE status END,
            stop_requested = CASE WHEN status = 'leased' THEN 1 ELSE stop_requested END,
            error_tag = CASE WHEN status = 'queued' THEN 'Stopped' ELSE error_tag END,
            error_message = CASE WHEN status = 'queued' THEN 'stopped before it started'
                                 ELSE error_message END,
            finished_at = CASE WHEN status = 'queued' THEN ?2 ELSE finished_at END,
            updated_at = ?2
         WHERE id = ?1 AND status IN ('queued', 'leased')
         RETURNING {JOB_COLUMNS}"
    )
}

/// Recovers every lease that expired before `?1`. A job goes back to the queue with an attempt
/// used up, or fails with `LeaseExpired` once none are left. A long-lived agent's job is restarted
/// without using an attempt (a host's death is not the agent's failure), up to `max_restarts`.
/// Cancel and stop requests made while the host was gone are honoured.
pub(crate) const RECLAIM: &str = "
    UPDATE jobs SET
        status = r.next,
        attempts = jobs.attempts + (1 - jobs.long_lived),
        restarts = jobs.restarts + jobs.long_lived,
        error_tag = CASE r.next WHEN 'queued' THEN jobs.error_tag
                                WHEN 'cancelled' THEN 'Stopped'
                                ELSE r.tag END,
        error_message = CASE r.next WHEN 'queued' THEN jobs.error_message
                                    WHEN 'cancelled' THEN 'stopped while its host was gone'
                                    ELSE r.message END,
        result_status = CASE WHEN r.next = 'queued' THEN jobs.result_status ELSE 'lost' END,
        lease_owner = NULL,
        lease_expires_at = NULL,
        updated_at = ?1,
        finished_at = CASE WHEN r.next = 'queued' THEN NULL ELSE ?1 END
    FROM (SELECT seq,
                 CASE
                     WHEN cancel_requested = 1 THEN 'failed'
                     WHEN stop_requested = 1 THEN 'cancelled'
                     WHEN long_lived = 1 THEN
                         CASE WHEN max_restarts IS NULL OR restarts < max_restarts
                              THEN 'queued' ELSE 'failed' END
                     WHEN attempts + 1 < max_attempts THEN 'queued'
                     ELSE 'failed'
                 END AS next,
                 CASE WHEN cancel_requested = 1 THEN 'Cancelled' ELSE 'LeaseExpired' END AS tag,
                 CASE WHEN cancel_requested = 1 THEN 'cancelled; its worker stopped responding'
                      WHEN long_lived = 1 THEN 'its host stopped responding and no restarts are left'
                      ELSE 'its worker stopped responding and no attempts are left' END AS message
          FROM jobs WHERE status = 'leased' AND lease_expires_at < ?1) AS r
    WHERE jobs.seq = r.seq
    RETURNING jobs.id, jobs.lease_epoch, jobs.status";

/// Cancel and stop requests on jobs leased by worker `?1`.
pub(crate) const SIGNALS: &str = "
    SELECT id, cancel_requested, stop_requested FROM jobs
    WHERE status = 'leased' AND (cancel_requested = 1 OR stop_requested = 1) AND lease_owner = ?1";

/// Counts by status.
pub(crate) const COUNTS: &str = "SELECT status, count(*) FROM jobs GROUP BY status";

/// The earliest time a queued job becomes due.
pub(crate) const NEXT_DUE: &str = "SELECT min(scheduled_for) FROM jobs WHERE status = 'queued'";
