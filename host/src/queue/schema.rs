//! The queue's tables and the SQL that moves jobs between statuses.
//!
//! Every operation is a single statement, and fencing (`lease_epoch`) is part of each `WHERE`
//! clause. Batches of outcomes and lease renewals travel as multi-row `VALUES` lists of bound
//! parameters; a batch of new jobs as one JSON array parameter read with `json_each`, so that
//! any number of jobs is one statement (one transaction). No interactive transaction is ever
//! held, so a remote libsql server sees one round trip per operation.

use crate::db::{Migration, values_list};

/// The database's clock, in Unix epoch milliseconds. Lease deadlines, due times and reclaims
/// are computed with it, never with a host's own clock: hosts sharing a database then agree on
/// time even when their clocks do not (a clock stepped on one host expires nobody's lease).
/// SQLite evaluates it once per statement.
pub(crate) const DB_NOW: &str = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)";

/// The queue's schema, oldest first.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
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
    },
    Migration {
        version: 2,
        name: "restart streaks",
        sql: r#"
-- When the current lease was taken, and how many times in a row a long-lived agent was
-- restarted after a short life: the restart backoff and the default restart cap.
ALTER TABLE jobs ADD COLUMN claimed_at INTEGER;
ALTER TABLE jobs ADD COLUMN crash_streak INTEGER NOT NULL DEFAULT 0;
"#,
    },
    Migration {
        version: 3,
        name: "scheduled jobs apart",
        sql: r#"
-- Jobs not yet due wait as 'scheduled', in an index of their own by due time, so that claims
-- (which read only 'queued' jobs) never scan past them; they are promoted when due.
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (scheduled_for) WHERE status = 'scheduled';
-- Each lane of a pool (jobs, long-lived agents) claims in priority order from its own range;
-- this replaces the one claim-order index of both lanes, so that a job is still entered in
-- only one index while it waits.
CREATE INDEX IF NOT EXISTS jobs_lane ON jobs (long_lived, priority DESC, seq) WHERE status = 'queued';
DROP INDEX IF EXISTS jobs_ready;
UPDATE jobs SET status = 'scheduled'
    WHERE status = 'queued'
      AND scheduled_for > CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER);
"#,
    },
    Migration {
        version: 4,
        name: "tenants",
        sql: r#"
-- The tenant a job belongs to and the user it was started for (both optional). Nullable
-- columns added in place: existing jobs belong to no tenant, and no row is rewritten.
ALTER TABLE jobs ADD COLUMN tenant_id TEXT;
ALTER TABLE jobs ADD COLUMN user_id TEXT;
-- Listing a tenant's jobs, newest first.
CREATE INDEX IF NOT EXISTS jobs_tenant ON jobs (tenant_id, seq) WHERE tenant_id IS NOT NULL;
"#,
    },
    Migration {
        version: 5,
        name: "fair shares",
        sql: r#"
-- The concurrency key a job was given at enqueue by a host with a [fair-share] section (NULL:
-- enqueued without one). Claims with fair shares read the queued jobs key by key, in priority
-- order within a key, and count each key's leased jobs; jobs without a key are in neither
-- index, so that a queue without fair shares pays nothing for them.
ALTER TABLE jobs ADD COLUMN concurrency_key TEXT;
CREATE INDEX IF NOT EXISTS jobs_fair ON jobs (long_lived, concurrency_key, priority DESC, seq, agent_id)
    WHERE status = 'queued' AND concurrency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_fair_leased ON jobs (concurrency_key)
    WHERE status = 'leased' AND concurrency_key IS NOT NULL;
"#,
    },
    Migration {
        version: 6,
        name: "lineage",
        sql: r#"
-- The job (and the run of it) that spawned a job, the root of its tree (NULL for a root, which
-- is its own), and how deep in the tree it is (0: a root). has_children is set once a job
-- spawns, so that ending a run looks for children only where there can be some. Nullable or
-- defaulted columns added in place: existing jobs are roots, and no row is rewritten.
ALTER TABLE jobs ADD COLUMN parent_job_id TEXT;
ALTER TABLE jobs ADD COLUMN parent_run_id TEXT;
ALTER TABLE jobs ADD COLUMN root_job_id TEXT;
ALTER TABLE jobs ADD COLUMN depth INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN has_children INTEGER NOT NULL DEFAULT 0;
-- A job's children (and, walked down, its descendants); a tree's jobs. Roots are in neither.
CREATE INDEX IF NOT EXISTS jobs_parent ON jobs (parent_job_id, seq) WHERE parent_job_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_root ON jobs (root_job_id, seq) WHERE root_job_id IS NOT NULL;
"#,
    },
];

/// The columns of a job, in the order [`super::decode_job`] reads them.
pub(crate) const JOB_COLUMNS: &str = "id, agent_id, input, meta, priority, status, scheduled_for, \
    created_at, updated_at, attempts, max_attempts, lease_epoch, lease_owner, lease_expires_at, \
    cancel_requested, stop_requested, long_lived, restarts, max_restarts, run_id, result_status, \
    error_tag, error_message, finished_at, seq, tenant_id, user_id, parent_job_id, parent_run_id, \
    root_job_id, depth";

/// Inserts a batch of jobs (`?1`: JSON array), skipping ids that exist; returns the new rows.
/// With `fair`, each job's concurrency key is stored too (`concurrencyKey`).
pub(crate) fn insert_jobs(fair: bool) -> String {
    let (key_column, key_value) = if fair {
        (", concurrency_key", ", value->>'concurrencyKey'")
    } else {
        ("", "")
    };
    format!(
        "INSERT INTO jobs (id, agent_id, input, meta, priority, status, scheduled_for, created_at,
                           updated_at, max_attempts, long_lived, max_restarts, tenant_id,
                           user_id, parent_job_id, parent_run_id, root_job_id,
                           depth{key_column})
         SELECT value->>'id', value->>'agentId', value->>'input', value->>'meta',
                value->>'priority',
                CASE WHEN value->>'scheduledFor' > {DB_NOW} THEN 'scheduled' ELSE 'queued' END,
                coalesce(value->>'scheduledFor', {DB_NOW}), ?2, ?2,
                value->>'maxAttempts', value->>'longLived', value->>'maxRestarts',
                value->>'tenantId', value->>'userId', value->>'parentJobId',
                value->>'parentRunId', value->>'rootJobId', value->>'depth'{key_value}
         FROM json_each(?1) WHERE true
         ON CONFLICT (id) DO NOTHING
         RETURNING {JOB_COLUMNS}"
    )
}

/// Leases up to `?3` due (`queued`) jobs to worker `?1` for `?2` ms. With a `lane`, `?4`
/// restricts the claim to long-lived (1) or run-to-completion (0) agents' jobs (without, it is
/// null); `?5` (a JSON
/// array, or null for any) to the agents this host has, so that a host never takes a job it
/// cannot run (a rolling deploy, a fleet whose hosts have different agents).
pub(crate) fn claim(lane: bool) -> String {
    // With a lane, the lane's own index range is read in claim order; without, every due job.
    let lane = if lane {
        "AND long_lived = ?4"
    } else {
        "AND ?4 IS NULL"
    };
    format!(
        "UPDATE jobs SET status = 'leased', lease_owner = ?1, lease_epoch = lease_epoch + 1,
                         lease_expires_at = {DB_NOW} + ?2, updated_at = {DB_NOW},
                         claimed_at = {DB_NOW}
         WHERE seq IN (SELECT seq FROM jobs
                       WHERE status = 'queued' {lane}
                         AND (?5 IS NULL OR agent_id IN (SELECT value FROM json_each(?5)))
                       ORDER BY priority DESC, seq LIMIT ?3)
         RETURNING {JOB_COLUMNS}"
    )
}

/// Leases up to `?3` due jobs to worker `?1` for `?2` ms, as [`claim`] does, with fair shares:
/// the jobs are taken from the concurrency keys round-robin (every key's best job, then every
/// key's second best, …), in priority order within a key, and never more of a key's jobs than
/// leave it at most its cap leased (`?6`: a JSON object of caps by key; `?7`: the cap of the
/// other keys, or null for none). Within a round, keys with fewer jobs leased go first, then
/// higher priority, then the keys in their order from a random one on (so that claims of one
/// job each still take turns). `?4` and `?5` are the lane and the agents, as for [`claim`].
///
/// It reads, for each key with queued jobs, a few index entries: the next key, its leased
/// jobs, and its best queued jobs, at most as many as a round-robin batch can take from one key
/// (one, when there are as many keys as the batch has jobs). Jobs without a key (enqueued
/// without fair shares) are not seen; [`KEY_UNKEYED`] gives them one.
pub(crate) fn claim_fair(lane: bool) -> String {
    let lanes = if lane {
        "VALUES (?4)"
    } else {
        "SELECT 0 WHERE ?4 IS NULL UNION ALL SELECT 1 WHERE ?4 IS NULL"
    };
    let queued = "status = 'queued' AND concurrency_key IS NOT NULL";
    format!(
        "WITH RECURSIVE
           lanes(l) AS ({lanes}),
           -- The keys with queued jobs, lane by lane: one index seek per key.
           keys(l, k) AS (
             SELECT l, (SELECT concurrency_key FROM jobs
                        WHERE {queued} AND long_lived = lanes.l
                        ORDER BY concurrency_key LIMIT 1)
             FROM lanes
             UNION ALL
             SELECT l, (SELECT concurrency_key FROM jobs
                        WHERE {queued} AND long_lived = keys.l AND concurrency_key > keys.k
                        ORDER BY concurrency_key LIMIT 1)
             FROM keys WHERE k IS NOT NULL),
           counted(l, k, cap, running) AS (
             SELECT l, k, coalesce((SELECT value FROM json_each(?6) WHERE key = keys.k), ?7),
                    (SELECT count(*) FROM jobs
                     WHERE status = 'leased' AND concurrency_key = keys.k)
             FROM keys WHERE k IS NOT NULL),
           -- The keys below their cap with a queued job this host can run, and how many more
           -- of their jobs may be leased.
           room(l, k, n, running) AS MATERIALIZED (
             SELECT l, k, CASE WHEN cap IS NULL THEN ?3 ELSE min(?3, cap - running) END, running
             FROM counted
             WHERE (cap IS NULL OR cap > running)
               AND EXISTS (SELECT 1 FROM jobs
                           WHERE {queued} AND long_lived = counted.l
                             AND concurrency_key = counted.k
                             AND (?5 IS NULL OR agent_id IN (SELECT value FROM json_each(?5))))),
           pivot(k) AS MATERIALIZED (SELECT k FROM room ORDER BY random() LIMIT 1),
           -- Each key's best jobs: in a round-robin batch of ?3 jobs from E keys, no key gets
           -- more than ?3 - E + 1.
           picked(seq, k, priority, n, running) AS (
             SELECT j.seq, room.k, j.priority, room.n, room.running
             FROM room JOIN jobs AS j ON j.seq IN (
               SELECT seq FROM jobs
               WHERE {queued} AND long_lived = room.l AND concurrency_key = room.k
                 AND (?5 IS NULL OR agent_id IN (SELECT value FROM json_each(?5)))
               ORDER BY priority DESC, seq
               LIMIT max(1, ?3 + 1 - (SELECT count(DISTINCT k) FROM room)))),
           ranked(seq, k, priority, n, running, round) AS (
             SELECT seq, k, priority, n, running,
                    row_number() OVER (PARTITION BY k ORDER BY priority DESC, seq)
             FROM picked)
         UPDATE jobs SET status = 'leased', lease_owner = ?1, lease_epoch = lease_epoch + 1,
                         lease_expires_at = {DB_NOW} + ?2, updated_at = {DB_NOW},
                         claimed_at = {DB_NOW}
         WHERE seq IN (SELECT seq FROM ranked WHERE round <= n
                       ORDER BY round, running, priority DESC,
                                k < (SELECT k FROM pivot), k, seq
                       LIMIT ?3)
         RETURNING {JOB_COLUMNS}"
    )
}

/// Gives the key `""` to the jobs waiting or running without a key (enqueued by a host without
/// fair shares), so that claims with fair shares see them and count them: the queued, the
/// scheduled and the leased jobs, each through its own index. Run once when a queue with fair
/// shares opens.
pub(crate) const KEY_UNKEYED: [&str; 3] = [
    "UPDATE jobs SET concurrency_key = ''
     WHERE status = 'queued' AND long_lived IN (0, 1) AND concurrency_key IS NULL",
    "UPDATE jobs SET concurrency_key = ''
     WHERE status = 'scheduled' AND scheduled_for > -9223372036854775807
       AND concurrency_key IS NULL",
    "UPDATE jobs SET concurrency_key = ''
     WHERE status = 'leased' AND lease_expires_at > -9223372036854775807
       AND concurrency_key IS NULL",
];

/// Makes the scheduled jobs that are due claimable.
pub(crate) fn promote() -> String {
    format!(
        "UPDATE jobs SET status = 'queued', updated_at = {DB_NOW}
         WHERE status = 'scheduled' AND scheduled_for <= {DB_NOW}"
    )
}

/// Extends `rows` leases to `?1` ms from now (by the database's clock); then `(id, epoch)`
/// pairs from `?2`. Returns the ids whose lease is still held.
pub(crate) fn renew(rows: usize) -> String {
    format!(
        "WITH l(id, epoch) AS (VALUES {})
         UPDATE jobs SET lease_expires_at = {DB_NOW} + ?1, updated_at = {DB_NOW}
         FROM l
         WHERE jobs.id = l.id AND jobs.lease_epoch = l.epoch AND jobs.status = 'leased'
         RETURNING jobs.id",
        values_list(rows, RENEW_COLUMNS, 2)
    )
}

/// Values per lease in [`renew`].
pub(crate) const RENEW_COLUMNS: usize = 2;

/// Completes `rows` jobs `(id, epoch, run_id, result_status)`, from `?2`, whose lease is still
/// current; `?1` is now. The common outcome, so it has a statement of its own, far cheaper than
/// the general [`finish`]. Returns the ids and new statuses of the jobs it changed.
pub(crate) fn complete(rows: usize) -> String {
    let set = |run_id: &str, result_status: &str| {
        format!(
            "status = 'done',
             run_id = coalesce({run_id}, jobs.run_id),
             result_status = coalesce({result_status}, jobs.result_status),
             error_tag = NULL,
             error_message = NULL,
             lease_owner = NULL,
             lease_expires_at = NULL,
             updated_at = ?1,
             finished_at = ?1"
        )
    };
    if rows == 1 {
        // The same for one job (an embedded database steps it once per job), as a plain update
        // by id, which SQLite runs faster than a join with a one-row VALUES list.
        return format!(
            "UPDATE jobs SET {}
             WHERE id = ?2 AND lease_epoch = ?3 AND status = 'leased'
             RETURNING id, status, has_children",
            set("?4", "?5")
        );
    }
    format!(
        "WITH n(id, epoch, run_id, result_status) AS (VALUES {})
         UPDATE jobs SET {}
         FROM n
         WHERE jobs.id = n.id AND jobs.lease_epoch = n.epoch AND jobs.status = 'leased'
         RETURNING jobs.id, jobs.status, jobs.has_children",
        values_list(rows, COMPLETE_COLUMNS, 2),
        set("n.run_id", "n.result_status")
    )
}

/// Values per job in [`complete`].
pub(crate) const COMPLETE_COLUMNS: usize = 4;

/// Applies `rows` outcomes `(id, epoch, kind, run_id, result_status, tag, message, retry)`,
/// from `?4`, to the jobs whose lease is still current. `?1` is now, `?2` the backoff base (ms),
/// `?3` the backoff cap (ms); due times follow the database's clock. A job whose cancel was
/// requested is not retried. Returns the ids and new statuses of the jobs it changed.
pub(crate) fn finish(rows: usize) -> String {
    format!(
        "WITH n(id, epoch, kind, run_id, result_status, tag, message, retry) AS (VALUES {})
         UPDATE jobs SET
            status = CASE WHEN o.next = 'queued' AND o.delay > 0 THEN 'scheduled' ELSE o.next END,
            attempts = jobs.attempts + (o.kind = 'fail'),
            scheduled_for = CASE WHEN o.next = 'queued' THEN {DB_NOW} + o.delay
                                 ELSE jobs.scheduled_for END,
            run_id = coalesce(o.run_id, jobs.run_id),
            result_status = coalesce(o.result_status, jobs.result_status),
            error_tag = CASE WHEN o.kind = 'complete' THEN NULL
                             ELSE coalesce(o.tag, jobs.error_tag) END,
            error_message = CASE WHEN o.kind = 'complete' THEN NULL
                                 ELSE coalesce(o.message, jobs.error_message) END,
            lease_owner = NULL,
            lease_expires_at = NULL,
            updated_at = ?1,
            finished_at = CASE WHEN o.next IN ('done', 'failed') THEN ?1 ELSE NULL END
         FROM (SELECT j.seq, n.kind, n.run_id, n.result_status, n.tag, n.message,
                      CASE n.kind
                          WHEN 'complete' THEN 'done'
                          WHEN 'release' THEN 'queued'
                          ELSE CASE WHEN n.retry AND j.attempts + 1 < j.max_attempts
                                         AND j.cancel_requested = 0
                                    THEN 'queued' ELSE 'failed' END
                      END AS next,
                      CASE WHEN n.kind = 'fail' THEN min(?2 << min(j.attempts, 30), ?3)
                           ELSE 0 END AS delay
               FROM n JOIN jobs AS j ON j.id = n.id AND j.lease_epoch = n.epoch
               WHERE j.status = 'leased') AS o
         WHERE jobs.seq = o.seq
         RETURNING jobs.id, jobs.status, jobs.has_children",
        values_list(rows, FINISH_COLUMNS, 4)
    )
}

/// Values per outcome in [`finish`].
pub(crate) const FINISH_COLUMNS: usize = 8;

/// Cancels job `?1` at `?2`: a queued job becomes `cancelled` at once, a leased one is flagged
/// for its worker. Terminal jobs are left alone (no row returned).
pub(crate) fn cancel() -> String {
    cancel_where("id = ?1", "", "cancelled before it started")
}

/// The jobs below those of `?1` (a JSON array of ids) in their trees: their children, and
/// theirs, down to the leaves, each found through the parent index.
const BELOW: &str = "WITH RECURSIVE below(id) AS (
         SELECT id FROM jobs WHERE parent_job_id IN (SELECT value FROM json_each(?1))
         UNION
         SELECT j.id FROM jobs AS j JOIN below ON j.parent_job_id = below.id)";

/// Cancels, at `?2`, every unfinished job below those of `?1` (a JSON array of ids), as
/// [`cancel`] cancels one.
pub(crate) fn cancel_below() -> String {
    cancel_where(
        "id IN below",
        BELOW,
        "cancelled before it started: a job above it was cancelled",
    )
}

/// Asks every unfinished job below those of `?1` (a JSON array of ids) to stop at `?2`, as
/// [`stop`] asks one.
pub(crate) fn stop_below() -> String {
    stop_where(
        "id IN below",
        BELOW,
        "stopped before it started: the run above it ended or was stopped",
    )
}

fn cancel_where(target: &str, with: &str, message: &str) -> String {
    format!(
        "{with} UPDATE jobs SET
            status = CASE WHEN status IN ('queued', 'scheduled') THEN 'cancelled' ELSE status END,
            cancel_requested = CASE WHEN status = 'leased' THEN 1 ELSE cancel_requested END,
            error_tag = CASE WHEN status IN ('queued', 'scheduled') THEN 'Cancelled'
                             ELSE error_tag END,
            error_message = CASE WHEN status IN ('queued', 'scheduled')
                                 THEN '{message}' ELSE error_message END,
            finished_at = CASE WHEN status IN ('queued', 'scheduled') THEN ?2 ELSE finished_at END,
            updated_at = ?2
         WHERE {target} AND status IN ('scheduled', 'queued', 'leased')
         RETURNING {JOB_COLUMNS}"
    )
}

/// Asks job `?1` to stop gracefully at `?2`: a queued job (never started) is cancelled, a leased
/// one is flagged for its worker.
pub(crate) fn stop() -> String {
    stop_where("id = ?1", "", "stopped before it started")
}

fn stop_where(target: &str, with: &str, message: &str) -> String {
    format!(
        "{with} UPDATE jobs SET
            status = CASE WHEN status IN ('queued', 'scheduled') THEN 'cancelled' ELSE status END,
            stop_requested = CASE WHEN status = 'leased' THEN 1 ELSE stop_requested END,
            error_tag = CASE WHEN status IN ('queued', 'scheduled') THEN 'Stopped'
                             ELSE error_tag END,
            error_message = CASE WHEN status IN ('queued', 'scheduled')
                                 THEN '{message}' ELSE error_message END,
            finished_at = CASE WHEN status IN ('queued', 'scheduled') THEN ?2 ELSE finished_at END,
            updated_at = ?2
         WHERE {target} AND status IN ('scheduled', 'queued', 'leased')
         RETURNING {JOB_COLUMNS}"
    )
}

/// Recovers every lease that expired before `?1` (null: now, by the database's clock), except
/// the leases of worker `?2` on the jobs of `?3` (a JSON array): those it is still running, and
/// fences itself. A job goes back to the queue after a backoff (`?4` ms, doubling per attempt
/// used, at most `?5` ms) with an attempt used up, or fails with `LeaseExpired` once none are
/// left. A long-lived agent's job is restarted without using an attempt (a host's death is not
/// the agent's failure), after the same backoff per restart in a row that followed a life
/// shorter than `?6` ms; it fails once `max_restarts` are used up or after more than `?7` such
/// restarts in a row (an agent that keeps taking its host down with it). Cancel and stop
/// requests made while the host was gone are honoured.
pub(crate) fn reclaim() -> String {
    format!(
        "UPDATE jobs SET
        status = CASE WHEN r.next = 'queued' AND min(?4 << min(r.backoff, 30), ?5) > 0
                      THEN 'scheduled' ELSE r.next END,
        attempts = jobs.attempts + (1 - jobs.long_lived),
        restarts = jobs.restarts + jobs.long_lived,
        crash_streak = r.streak,
        scheduled_for = CASE WHEN r.next = 'queued'
                             THEN {DB_NOW} + min(?4 << min(r.backoff, 30), ?5)
                             ELSE jobs.scheduled_for END,
        error_tag = CASE r.next WHEN 'queued' THEN jobs.error_tag
                                WHEN 'cancelled' THEN 'Stopped'
                                ELSE r.tag END,
        error_message = CASE r.next WHEN 'queued' THEN jobs.error_message
                                    WHEN 'cancelled' THEN 'stopped while its host was gone'
                                    ELSE r.message END,
        result_status = CASE WHEN r.next = 'queued' THEN jobs.result_status ELSE 'lost' END,
        lease_owner = NULL,
        lease_expires_at = NULL,
        updated_at = {DB_NOW},
        finished_at = CASE WHEN r.next = 'queued' THEN NULL ELSE {DB_NOW} END
    FROM (SELECT seq, streak,
                 CASE WHEN long_lived = 1 THEN streak - 1 ELSE attempts END AS backoff,
                 CASE
                     WHEN cancel_requested = 1 THEN 'failed'
                     WHEN stop_requested = 1 THEN 'cancelled'
                     WHEN long_lived = 1 THEN
                         CASE WHEN (max_restarts IS NULL OR restarts < max_restarts)
                                   AND streak <= ?7
                              THEN 'queued' ELSE 'failed' END
                     WHEN attempts + 1 < max_attempts THEN 'queued'
                     ELSE 'failed'
                 END AS next,
                 CASE WHEN cancel_requested = 1 THEN 'Cancelled' ELSE 'LeaseExpired' END AS tag,
                 CASE WHEN cancel_requested = 1 THEN 'cancelled; its worker stopped responding'
                      WHEN long_lived = 1 AND streak > ?7
                          THEN 'its host stopped responding after every one of ' || (streak - 1)
                               || ' restarts in a row; it is not restarted again'
                      WHEN long_lived = 1 THEN 'its host stopped responding and no restarts are left'
                      ELSE 'its worker stopped responding and no attempts are left' END AS message
          FROM (SELECT seq, long_lived, attempts, max_attempts, restarts, max_restarts,
                       cancel_requested, stop_requested,
                       CASE WHEN claimed_at IS NOT NULL AND {DB_NOW} - claimed_at >= ?6
                            THEN 1 ELSE crash_streak + 1 END AS streak
                FROM jobs
                WHERE status = 'leased' AND lease_expires_at < coalesce(?1, {DB_NOW})
                  AND NOT (lease_owner IS ?2
                           AND id IN (SELECT value FROM json_each(coalesce(?3, '[]')))))) AS r
    WHERE jobs.seq = r.seq
    RETURNING jobs.id, jobs.lease_epoch, jobs.status, jobs.has_children"
    )
}

/// Hands back, unused, the jobs leased to worker `?1` that are not among `?2` (a JSON array:
/// the jobs it runs) and were claimed or renewed more than `?3` ms ago: a claim whose answer
/// was lost, or one abandoned at shutdown. They were never started, so no attempt is used.
pub(crate) fn release_orphans() -> String {
    format!(
        "UPDATE jobs SET status = 'queued', lease_owner = NULL, lease_expires_at = NULL,
                         updated_at = {DB_NOW}
         WHERE status = 'leased' AND lease_owner = ?1
           AND id NOT IN (SELECT value FROM json_each(?2))
           AND updated_at <= {DB_NOW} - ?3
         RETURNING id"
    )
}

/// The jobs among `?1` (a JSON array of `[job id, run id]` pairs) whose recorded run is the
/// paired one.
pub(crate) const RECORDED_RUNS: &str = "
    SELECT j.id FROM json_each(?1) AS p
    JOIN jobs AS j ON j.id = p.value->>0 AND j.run_id = p.value->>1";

/// Cancel and stop requests on jobs leased by worker `?1`.
pub(crate) const SIGNALS: &str = "
    SELECT id, cancel_requested, stop_requested FROM jobs
    WHERE status = 'leased' AND (cancel_requested = 1 OR stop_requested = 1) AND lease_owner = ?1";

/// Counts by status.
pub(crate) const COUNTS: &str = "SELECT status, count(*) FROM jobs GROUP BY status";

/// The earliest time a queued job becomes due.
pub(crate) const NEXT_DUE: &str =
    "SELECT min(scheduled_for) FROM jobs WHERE status IN ('queued', 'scheduled')";
