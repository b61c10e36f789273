//! The queue's tables and the SQL that moves jobs between statuses.
//!
//! Every operation is a single statement, and fencing (`lease_epoch`) is part of each `WHERE`
//! clause. Batches of new jobs, outcomes and lease renewals each travel as one JSON array
//! parameter read with `json_each` (an embedded database steps an outcome or renewal statement
//! once per row instead; see [`Rows`]), so that any number of them is one statement (one
//! transaction). No interactive transaction is ever held, so a remote libsql server sees one
//! round trip per operation.

use crate::db::{Migration, Rows};

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
-- enqueued without one), and its turn: the keys' jobs are numbered turn by turn (a key's
-- first job waiting takes the turn being served, its next one the turn after, and so on), so
-- that reading the keyed jobs in turn order takes from the keys round-robin. Jobs without a
-- key are in no index of this migration, so that a queue without fair shares pays nothing.
ALTER TABLE jobs ADD COLUMN concurrency_key TEXT;
ALTER TABLE jobs ADD COLUMN fair_turn INTEGER;
-- Claim order with fair shares: priority, then turn. A claim reads it as a plain claim reads
-- jobs_lane: one range, and the jobs it leases are side by side in it.
CREATE INDEX IF NOT EXISTS jobs_fair ON jobs
    (long_lived, priority DESC, fair_turn, seq, concurrency_key, agent_id)
    WHERE status = 'queued' AND concurrency_key IS NOT NULL;
-- The leased jobs, with what caps and turns need (their key; their lane, priority and turn),
-- for expired-lease scans and for counting each key's running jobs without reading the table.
DROP INDEX IF EXISTS jobs_lease;
CREATE INDEX IF NOT EXISTS jobs_lease ON jobs
    (lease_expires_at, long_lived, priority, concurrency_key, fair_turn)
    WHERE status = 'leased';
-- The last turn given to each key's jobs, lane by lane.
CREATE TABLE IF NOT EXISTS fair_keys (
    long_lived INTEGER NOT NULL,
    key TEXT NOT NULL,
    last_turn INTEGER NOT NULL,
    PRIMARY KEY (long_lived, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS fair_keys_last ON fair_keys (long_lived, last_turn);
CREATE TRIGGER IF NOT EXISTS fair_turn_given AFTER INSERT ON jobs
    WHEN NEW.fair_turn IS NOT NULL
BEGIN
    INSERT INTO fair_keys (long_lived, key, last_turn)
    VALUES (NEW.long_lived, NEW.concurrency_key, NEW.fair_turn)
    ON CONFLICT (long_lived, key) DO UPDATE SET last_turn = max(last_turn, excluded.last_turn);
END;
CREATE TRIGGER IF NOT EXISTS fair_turn_moved AFTER UPDATE OF fair_turn ON jobs
    WHEN NEW.fair_turn IS NOT NULL
BEGIN
    INSERT INTO fair_keys (long_lived, key, last_turn)
    VALUES (NEW.long_lived, NEW.concurrency_key, NEW.fair_turn)
    ON CONFLICT (long_lived, key) DO UPDATE SET last_turn = max(last_turn, excluded.last_turn);
END;
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

/// The columns a new job is inserted with, and the values read for them from its JSON object
/// `v`, as [`insert_jobs`] writes them.
const NEW_JOB_COLUMNS: &str = "id, agent_id, input, meta, priority, status, scheduled_for, \
    created_at, updated_at, max_attempts, long_lived, max_restarts, tenant_id, user_id, \
    parent_job_id, parent_run_id, root_job_id, depth";

fn new_job_values(v: &str) -> String {
    format!(
        "{v}->>'id', {v}->>'agentId', {v}->>'input', {v}->>'meta', {v}->>'priority',
         CASE WHEN {v}->>'scheduledFor' > {DB_NOW} THEN 'scheduled' ELSE 'queued' END,
         coalesce({v}->>'scheduledFor', {DB_NOW}), ?2, ?2,
         {v}->>'maxAttempts', {v}->>'longLived', {v}->>'maxRestarts',
         {v}->>'tenantId', {v}->>'userId', {v}->>'parentJobId', {v}->>'parentRunId',
         {v}->>'rootJobId', coalesce({v}->>'depth', 0)"
    )
}

/// The turn being served in each lane and priority of `levels` (a query of columns `l` and
/// `p`): the latest turn leased there; with none leased, the first turn waiting there; with
/// none waiting, the last turn given in the lane. A key with no job waiting starts again from
/// it, so a key that was idle neither jumps ahead of the keys that waited nor falls behind them.
fn turn_clocks(levels: &str) -> String {
    format!(
        "SELECT l, p, coalesce(
             (SELECT max(fair_turn) FROM jobs
              WHERE status = 'leased' AND lease_expires_at > -9223372036854775807
                AND long_lived = levels.l AND priority = levels.p),
             (SELECT fair_turn FROM jobs
              WHERE status = 'queued' AND concurrency_key IS NOT NULL
                AND long_lived = levels.l AND priority = levels.p
              ORDER BY fair_turn LIMIT 1),
             (SELECT max(last_turn) FROM fair_keys WHERE long_lived = levels.l),
             0) AS now_turn
         FROM ({levels}) AS levels"
    )
}

/// Turns for the jobs of `jobs` (a query of columns `id`, `l` (the lane), `p` (the priority),
/// `k` (the key) and `o`: the jobs of a key get their turns in `o`, then `id`, order): each
/// key's jobs take the turns after the key's last one, or from the turn being served at their
/// priority on if that is later. Columns: `id`, `turn`.
fn next_turns(jobs: &str) -> String {
    format!(
        "WITH todo AS MATERIALIZED ({jobs}),
              clocks(l, p, now_turn) AS MATERIALIZED ({clocks})
         SELECT todo.id,
                max(coalesce(f.last_turn, 0), clocks.now_turn - 1)
                    + row_number() OVER (PARTITION BY todo.l, todo.k ORDER BY todo.o, todo.id) AS turn
         FROM todo JOIN clocks ON clocks.l = todo.l AND clocks.p = todo.p
              LEFT JOIN fair_keys AS f ON f.long_lived = todo.l AND f.key = todo.k",
        clocks = turn_clocks("SELECT DISTINCT l, p FROM todo")
    )
}

/// Inserts a batch of jobs (`?1`: JSON array), skipping ids that exist; returns the new rows.
/// With `fair`, each job's concurrency key is stored too (`concurrencyKey`), and a job due now
/// gets its key's next turn (one due later gets it when it is promoted).
pub(crate) fn insert_jobs(fair: bool) -> String {
    if !fair {
        return format!(
            "INSERT INTO jobs ({NEW_JOB_COLUMNS})
             SELECT {} FROM json_each(?1) WHERE true
             ON CONFLICT (id) DO NOTHING
             RETURNING {JOB_COLUMNS}",
            new_job_values("value")
        );
    }
    format!(
        "WITH batch AS MATERIALIZED (
             SELECT key AS pos, value AS v FROM json_each(?1)),
           turns(pos, turn) AS MATERIALIZED ({turns})
         INSERT INTO jobs ({NEW_JOB_COLUMNS}, concurrency_key, fair_turn)
         SELECT {values}, batch.v->>'concurrencyKey', turns.turn
         FROM batch LEFT JOIN turns ON turns.pos = batch.pos
         WHERE true ORDER BY batch.pos
         ON CONFLICT (id) DO NOTHING
         RETURNING {JOB_COLUMNS}",
        turns = next_turns(&format!(
            "SELECT pos AS id, v->>'longLived' AS l, v->>'priority' AS p,
                    v->>'concurrencyKey' AS k, pos AS o
             FROM batch WHERE NOT coalesce(v->>'scheduledFor' > {DB_NOW}, 0)"
        )),
        values = new_job_values("batch.v"),
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

/// How the claims of a queue with fair shares cap the keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FairCaps {
    /// No caps: round-robin only.
    None,
    /// One cap for every key (`?6`).
    One,
    /// Caps by key (`?6`: a JSON object of caps by key) and a cap for the other keys (`?7`, or
    /// null for none).
    PerKey,
}

/// Leases up to `?3` due jobs to worker `?1` for `?2` ms, as [`claim`] does, with fair shares:
/// in priority order, and within a priority in turn order, so that the keys take turns (each
/// key's first job waiting, then each key's second, …) and a key's jobs run in the order they
/// came. With `caps`, no more of a key's jobs are leased than leave it at its cap, counting its
/// leased jobs on every host: a key at its cap is passed over, and a key near it gets only the
/// jobs it has room for (a claim may then lease fewer jobs than it could; the next one goes on).
/// `?4` and `?5` are the lane and the agents, as for [`claim`].
///
/// It reads the fair index in claim order, as [`claim`] reads a lane's, and the jobs it leases
/// lie side by side there. With caps it also counts the leased jobs by key (as many as the
/// fleet runs), and reads past the waiting jobs of the keys at their caps.
pub(crate) fn claim_fair(lane: bool, caps: FairCaps) -> String {
    let cap_of = |key: &str| match caps {
        FairCaps::None => "NULL".to_string(),
        FairCaps::One => "?6".to_string(),
        FairCaps::PerKey => {
            format!("coalesce((SELECT value FROM json_each(?6) WHERE key = {key}), ?7)")
        }
    };
    let passed_over = match caps {
        FairCaps::None => "",
        _ => " AND concurrency_key NOT IN (SELECT k FROM full)",
    };
    let lane_jobs = |lane: &str| {
        format!(
            "SELECT seq, concurrency_key AS k, priority, fair_turn AS t FROM jobs
             WHERE status = 'queued' AND concurrency_key IS NOT NULL AND long_lived = {lane}
               AND (?5 IS NULL OR agent_id IN (SELECT value FROM json_each(?5))){passed_over}
             ORDER BY priority DESC, fair_turn, seq LIMIT ?3"
        )
    };
    let candidates = if lane {
        lane_jobs("?4")
    } else {
        // Both lanes, each read in its own order, merged.
        format!(
            "SELECT * FROM ({}) UNION ALL SELECT * FROM ({})
             ORDER BY priority DESC, t, seq LIMIT ?3",
            lane_jobs("0 AND ?4 IS NULL"),
            lane_jobs("1 AND ?4 IS NULL")
        )
    };
    let update = format!(
        "UPDATE jobs SET status = 'leased', lease_owner = ?1, lease_epoch = lease_epoch + 1,
                         lease_expires_at = {DB_NOW} + ?2, updated_at = {DB_NOW},
                         claimed_at = {DB_NOW}"
    );
    if caps == FairCaps::None {
        return format!(
            "{update}
             WHERE seq IN (SELECT seq FROM ({candidates}))
             RETURNING {JOB_COLUMNS}"
        );
    }
    format!(
        "WITH leased(k, running) AS MATERIALIZED (
             SELECT concurrency_key, count(*) FROM jobs
             WHERE status = 'leased' AND lease_expires_at > -9223372036854775807
               AND concurrency_key IS NOT NULL
             GROUP BY concurrency_key),
           -- The keys at their caps.
           full(k) AS MATERIALIZED (SELECT k FROM leased WHERE running >= {leased_cap}),
           candidates AS MATERIALIZED ({candidates}),
           -- How many more of each candidate key's jobs may be leased (null: any number).
           room(k, n) AS MATERIALIZED (
             SELECT c.k, {candidate_cap} - coalesce(leased.running, 0)
             FROM (SELECT DISTINCT k FROM candidates) AS c LEFT JOIN leased ON leased.k = c.k),
           ranked(seq, nth, n) AS (
             SELECT seq, row_number() OVER (PARTITION BY candidates.k ORDER BY priority DESC, t, seq),
                    room.n
             FROM candidates JOIN room ON room.k = candidates.k)
         {update}
         WHERE seq IN (SELECT seq FROM ranked WHERE n IS NULL OR nth <= n)
         RETURNING {JOB_COLUMNS}",
        leased_cap = cap_of("leased.k"),
        candidate_cap = cap_of("c.k"),
    )
}

/// Gives the key `""` to the jobs waiting or running without a key (enqueued by a host without
/// fair shares), so that claims with fair shares see them and count them: the queued (which
/// take the key's next turns, oldest first), the scheduled (which get theirs when promoted) and
/// the leased jobs. Run once when a queue with fair shares opens.
pub(crate) fn key_unkeyed() -> [String; 3] {
    [
        format!(
            "WITH turns(seq, turn) AS MATERIALIZED ({})
             UPDATE jobs SET concurrency_key = '', fair_turn = turns.turn
             FROM turns WHERE jobs.seq = turns.seq",
            next_turns(
                "SELECT seq AS id, long_lived AS l, priority AS p, '' AS k, seq AS o FROM jobs
                 WHERE status = 'queued' AND long_lived IN (0, 1) AND concurrency_key IS NULL"
            )
        ),
        "UPDATE jobs SET concurrency_key = ''
         WHERE status = 'scheduled' AND scheduled_for > -9223372036854775807
           AND concurrency_key IS NULL"
            .to_string(),
        "UPDATE jobs SET concurrency_key = ''
         WHERE status = 'leased' AND lease_expires_at > -9223372036854775807
           AND concurrency_key IS NULL"
            .to_string(),
    ]
}

/// Makes the scheduled jobs that are due claimable. With `fair`, each keyed job gets its key's
/// next turn as it becomes due (a retried job waits its key's turn again).
pub(crate) fn promote(fair: bool) -> String {
    let due = "status = 'scheduled' AND scheduled_for <= ";
    if !fair {
        return format!(
            "UPDATE jobs SET status = 'queued', updated_at = {DB_NOW}
             WHERE {due}{DB_NOW}"
        );
    }
    format!(
        "WITH due AS MATERIALIZED (
             SELECT seq, long_lived, priority, concurrency_key, scheduled_for FROM jobs
             WHERE {due}{DB_NOW}),
           turns(seq, turn) AS MATERIALIZED ({turns})
         UPDATE jobs SET status = 'queued', updated_at = {DB_NOW}, fair_turn = turns.turn
         FROM due LEFT JOIN turns ON turns.seq = due.seq
         WHERE jobs.seq = due.seq",
        turns = next_turns(
            "SELECT seq AS id, long_lived AS l, priority AS p, concurrency_key AS k,
                    scheduled_for AS o FROM due
             WHERE concurrency_key IS NOT NULL"
        )
    )
}

/// Extends `rows` leases to `?1` ms from now (by the database's clock); then `(id, epoch)`
/// pairs from `?2`. Returns the ids whose lease is still held.
pub(crate) fn renew(rows: Rows) -> String {
    format!(
        "WITH l(id, epoch) AS ({})
         UPDATE jobs SET lease_expires_at = {DB_NOW} + ?1, updated_at = {DB_NOW}
         FROM l
         WHERE jobs.id = l.id AND jobs.lease_epoch = l.epoch AND jobs.status = 'leased'
         RETURNING jobs.id",
        rows.source(RENEW_COLUMNS, 2)
    )
}

/// Values per lease in [`renew`].
pub(crate) const RENEW_COLUMNS: usize = 2;

/// Completes `rows` jobs `(id, epoch, run_id, result_status)`, from `?2`, whose lease is still
/// current; `?1` is now. The common outcome, so it has a statement of its own, far cheaper than
/// the general [`finish`]. Returns the ids and new statuses of the jobs it changed.
pub(crate) fn complete(rows: Rows) -> String {
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
    if rows == Rows::One {
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
        "WITH n(id, epoch, run_id, result_status) AS ({})
         UPDATE jobs SET {}
         FROM n
         WHERE jobs.id = n.id AND jobs.lease_epoch = n.epoch AND jobs.status = 'leased'
         RETURNING jobs.id, jobs.status, jobs.has_children",
        rows.source(COMPLETE_COLUMNS, 2),
        set("n.run_id", "n.result_status")
    )
}

/// Values per job in [`complete`].
pub(crate) const COMPLETE_COLUMNS: usize = 4;

/// Applies `rows` outcomes `(id, epoch, kind, run_id, result_status, tag, message, retry)`,
/// from `?4`, to the jobs whose lease is still current. `?1` is now, `?2` the backoff base (ms),
/// `?3` the backoff cap (ms); due times follow the database's clock. A job whose cancel was
/// requested is not retried. Returns the ids and new statuses of the jobs it changed.
pub(crate) fn finish(rows: Rows) -> String {
    format!(
        "WITH n(id, epoch, kind, run_id, result_status, tag, message, retry) AS ({})
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
        rows.source(FINISH_COLUMNS, 4)
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
    RETURNING jobs.id, jobs.lease_epoch, jobs.status, jobs.has_children, jobs.agent_id,
              jobs.created_at, jobs.claimed_at, jobs.long_lived, jobs.parent_run_id,
              jobs.tenant_id, jobs.user_id"
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
