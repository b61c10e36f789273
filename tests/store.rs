//! The run store's rules, against a real libsql file database.

use std::sync::Arc;

use drover_host::db::{Db, RowExt, query_all};
use drover_host::queue::{ErrorInfo, JobStatus, Reclaimed};
use drover_host::store::{
    EventRecord, RunFilter, RunRecord, RunStatus, RunStore, Usage, WriteBatch, attempt_run_id,
};
use serde_json::value::RawValue;

async fn store() -> (RunStore, drover_test_support::DbDir) {
    let dbs = drover_test_support::DbDir::new();
    let db = drover_test_support::open_db(&dbs.url("runs.db")).await;
    (RunStore::with_db(db).await.expect("open store"), dbs)
}

fn run(id: &str, job_id: &str, status: RunStatus, error: Option<&str>) -> RunRecord {
    RunRecord {
        id: id.into(),
        job_id: Some(job_id.into()),
        agent_id: "echo".into(),
        attempt: 1,
        parent_run_id: None,
        status,
        sandbox: Some("wasm"),
        long_lived: false,
        input: None,
        output: None,
        error_tag: error.map(Into::into),
        error_message: error.map(|e| format!("{e} happened")),
        started_at: 1,
        ended_at: (status != RunStatus::Running).then_some(2),
        heartbeat_at: None,
        fuel_used: None,
        peak_memory: None,
        worker_id: None,
        usage: None,
        tenant_id: None,
        user_id: None,
    }
}

/// The lost run the reclaim loop records for attempt `epoch` of job `job_id` (enqueued at 5,
/// claimed at 7), at 10.
fn lost_attempt(job_id: &str, epoch: i64, error: &ErrorInfo) -> RunRecord {
    let reclaimed = Reclaimed {
        job_id: job_id.into(),
        epoch,
        status: JobStatus::Queued,
        agent_id: "echo".into(),
        created_at: 5,
        claimed_at: Some(7),
        long_lived: false,
        parent_run_id: None,
        tenant_id: Some("acme".into()),
        user_id: None,
    };
    RunRecord::lost_attempt(&reclaimed, error, 10)
}

async fn runs_of(store: &RunStore, job_id: &str) -> Vec<drover_host::store::Run> {
    let filter = RunFilter {
        job_id: Some(job_id.into()),
        ..RunFilter::default()
    };
    store.list_runs(&filter).await.expect("list")
}

async fn status_and_tag(store: &RunStore, id: &str) -> (RunStatus, Option<String>) {
    let run = store.get_run(id).await.expect("get").expect("run");
    (run.status, run.error.map(|e| e.tag))
}

/// A lost lease takes away a result that never reached the queue: runs still running or recorded
/// as a success become `lost`, but a run that failed keeps its own error.
#[tokio::test]
async fn lost_leases_mark_running_and_successful_runs_but_keep_failures() {
    let (store, _dir) = store().await;
    let batch = WriteBatch {
        runs: vec![
            run("r-running", "j-1", RunStatus::Running, None),
            run("r-success", "j-2", RunStatus::Success, None),
            run("r-error", "j-3", RunStatus::Error, Some("Trap")),
            run("r-other", "j-4", RunStatus::Running, None),
            run("r-unapplied", "j-5", RunStatus::Success, None),
        ],
        ..WriteBatch::default()
    };
    store.write(&batch).await.expect("write");
    let lost = ErrorInfo::new("LeaseLost", "lost");

    let ids: Vec<String> = ["r-running", "r-success", "r-error"]
        .map(String::from)
        .to_vec();
    store
        .mark_runs_lost(&ids, &lost, 10)
        .await
        .expect("mark by id");
    for id in ["r-running", "r-success"] {
        let got = status_and_tag(&store, id).await;
        assert_eq!(got, (RunStatus::Lost, Some("LeaseLost".into())), "{id}");
    }
    assert_eq!(
        status_and_tag(&store, "r-error").await,
        (RunStatus::Error, Some("Trap".into()))
    );

    // By attempt, as the reclaim loop does; another attempt of the job is left alone.
    store
        .mark_attempts_lost(&[lost_attempt("j-4", 2, &lost)])
        .await
        .expect("mark other attempt");
    assert_eq!(
        status_and_tag(&store, "r-other").await.0,
        RunStatus::Running
    );
    store
        .mark_attempts_lost(&[lost_attempt("j-4", 1, &lost), lost_attempt("j-5", 1, &lost)])
        .await
        .expect("mark by attempt");
    // Attempts that had a run (under whatever id) get no second one.
    assert_eq!(runs_of(&store, "j-5").await.len(), 1);
    assert_eq!(runs_of(&store, "j-4").await.len(), 2, "attempts 1 and 2");
    assert_eq!(status_and_tag(&store, "r-other").await.0, RunStatus::Lost);
    // A success whose outcome never reached the queue (its job was reclaimed) is lost too.
    assert_eq!(
        status_and_tag(&store, "r-unapplied").await.0,
        RunStatus::Lost
    );
}

/// A host that dies between claiming a job and recording its run leaves no run for that
/// attempt; the reclaim loop records one, `lost`, under the attempt's run id. If the host was
/// only paused and records the run late, that lands on the same row, which stays lost: one run
/// per attempt, and no success for an attempt whose outcome the queue refused.
#[tokio::test]
async fn an_attempt_without_a_run_is_recorded_lost_once_and_stays_lost() {
    let (store, _dir) = store().await;
    let lost = ErrorInfo::new("LeaseExpired", "its host stopped responding");
    store
        .mark_attempts_lost(&[lost_attempt("j-1", 3, &lost)])
        .await
        .expect("mark");
    let runs = runs_of(&store, "j-1").await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    let recorded = &runs[0];
    let id = attempt_run_id("j-1", 5, 3);
    assert_eq!(recorded.id, id);
    assert_eq!((recorded.status, recorded.attempt), (RunStatus::Lost, 3));
    let tag = recorded.error.as_ref().map(|e| e.tag.as_str());
    assert_eq!(tag, Some("LeaseExpired"));
    assert_eq!((recorded.started_at, recorded.ended_at), (7, Some(10)));
    assert_eq!(recorded.tenant_id.as_deref(), Some("acme"));

    // Recorded again (another host's reclaim, a retry): still one run.
    store
        .mark_attempts_lost(&[lost_attempt("j-1", 3, &lost)])
        .await
        .expect("mark again");
    assert_eq!(runs_of(&store, "j-1").await.len(), 1);

    // The paused host wakes and records the attempt's run as it saw it: a success.
    let mut late = run(&id, "j-1", RunStatus::Success, None);
    late.attempt = 3;
    late.output = Some(Arc::from(
        RawValue::from_string("{\"ok\":true}".into()).expect("json"),
    ));
    store
        .write(&WriteBatch {
            runs: vec![late],
            ..WriteBatch::default()
        })
        .await
        .expect("late write");
    let runs = runs_of(&store, "j-1").await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(
        status_and_tag(&store, &id).await,
        (RunStatus::Lost, Some("LeaseExpired".into()))
    );

    // The ids of attempts differ by job, by attempt and by enqueue time (a job id used again).
    assert_ne!(attempt_run_id("j-1", 5, 3), attempt_run_id("j-1", 5, 4));
    assert_ne!(attempt_run_id("j-1", 5, 3), attempt_run_id("j-2", 5, 3));
    assert_ne!(attempt_run_id("j-1", 5, 3), attempt_run_id("j-1", 6, 3));
}

fn event(run_id: &str, seq: i64, kind: &str, payload: &str) -> EventRecord {
    EventRecord {
        run_id: run_id.into(),
        seq,
        ts: 100 + seq,
        kind: kind.into(),
        payload: Arc::from(RawValue::from_string(payload.into()).expect("json")),
    }
}

/// A run's start and end may arrive in separate batches; its identity never changes, its
/// outcome is the latest written, and its heartbeat only moves forward.
#[tokio::test]
async fn runs_are_upserted_and_heartbeats_only_move_forward() {
    let (store, _dir) = store().await;
    let mut started = run("r-1", "j-1", RunStatus::Running, None);
    started.heartbeat_at = Some(50);
    store
        .write(&WriteBatch {
            runs: vec![started.clone()],
            ..WriteBatch::default()
        })
        .await
        .expect("start");
    let mut heartbeats = std::collections::HashMap::new();
    heartbeats.insert(Arc::<str>::from("r-1"), 40);
    store
        .write(&WriteBatch {
            heartbeats,
            ..WriteBatch::default()
        })
        .await
        .expect("an older heartbeat");
    assert_eq!(
        store
            .get_run("r-1")
            .await
            .expect("get")
            .expect("run")
            .heartbeat_at,
        Some(50)
    );
    let mut finished = run("r-1", "other-job", RunStatus::Success, None);
    finished.output = Some(Arc::from(
        RawValue::from_string(r#"{"ok":true}"#.into()).expect("json"),
    ));
    finished.fuel_used = Some(1234);
    store
        .write(&WriteBatch {
            runs: vec![finished],
            ..WriteBatch::default()
        })
        .await
        .expect("finish");
    let got = store.get_run("r-1").await.expect("get").expect("run");
    assert_eq!(got.status, RunStatus::Success);
    assert_eq!(got.job_id.as_deref(), Some("j-1"), "identity is kept");
    assert_eq!(
        got.output.map(|o| o.get().to_string()),
        Some(r#"{"ok":true}"#.into())
    );
    assert_eq!(got.fuel_used, Some(1234));
    assert_eq!(got.heartbeat_at, Some(50));
    let counts = store.counts().await.expect("counts");
    assert_eq!(counts.get(&RunStatus::Success), Some(&1));
}

/// Events come back in order, after a given position, at most `limit` at a time; a repeated
/// event (a retried batch) is stored once.
#[tokio::test]
async fn events_are_listed_in_order_after_a_position() {
    let (store, _dir) = store().await;
    let events: Vec<EventRecord> = (1..=5)
        .map(|seq| event("r-1", seq, "tick", &format!(r#"{{"n":{seq}}}"#)))
        .chain([event("r-2", 1, "other", "null")])
        .collect();
    let batch = WriteBatch {
        runs: vec![run("r-1", "j-1", RunStatus::Running, None)],
        events,
        ..WriteBatch::default()
    };
    store.write(&batch).await.expect("write");
    store.write(&batch).await.expect("written again");
    let all = store.events("r-1", 0, 100).await.expect("events");
    let seqs: Vec<i64> = all.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    assert_eq!(all[2].payload.get(), r#"{"n":3}"#);
    assert_eq!(all[2].ts, 103);
    let page = store.events("r-1", 2, 2).await.expect("page");
    let seqs: Vec<i64> = page.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [3, 4]);
    assert!(store.events("r-1", 5, 10).await.expect("none").is_empty());
}

/// File databases are in WAL mode, and migrations are recorded once, however often the
/// database is opened.
#[tokio::test]
async fn migrations_are_applied_once_and_files_use_wal() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("file:{}", dir.path().join("shared.db").display());
    for _ in 0..3 {
        let db = Db::open(&url, None).await.expect("open");
        RunStore::with_db(db.clone()).await.expect("store");
        drover_host::queue::Queue::with_db(db, Default::default())
            .await
            .expect("queue");
    }
    let db = Db::open(&url, None).await.expect("open");
    let (mode, migrations) = db
        .run(|conn| async move {
            let mode = query_all(&conn, "PRAGMA journal_mode", (), |row| row.text(0)).await?;
            let migrations = query_all(
                &conn,
                "SELECT component, version FROM drover_migrations ORDER BY component, version",
                (),
                |row| Ok((row.text(0)?, row.int(1)?)),
            )
            .await?;
            Ok((mode, migrations))
        })
        .await
        .expect("inspect");
    assert_eq!(mode, ["wal"]);
    assert_eq!(
        migrations,
        [
            ("queue".to_string(), 1),
            ("queue".to_string(), 2),
            ("queue".to_string(), 3),
            ("queue".to_string(), 4),
            ("queue".to_string(), 5),
            ("queue".to_string(), 6),
            ("store".to_string(), 1),
            ("store".to_string(), 2),
            ("store".to_string(), 3),
            ("store".to_string(), 4)
        ]
    );
}

#[test]
fn every_store_test_passes_on_multi_row_statements_and_sqld() {
    drover_test_support::rerun_on_other_databases(
        module_path!(),
        "every_store_test_passes_on_multi_row_statements_and_sqld",
    );
}

/// A finished job is shown with the run that decided it (even if a stale worker's run came
/// later); one that is not finished with its latest run; the batched views agree with `get`.
#[tokio::test]
async fn job_views_show_the_deciding_or_the_latest_run() {
    use drover_host::api::RunApi;
    use drover_host::queue::{NewJob, Queue};
    use drover_host::registry::StaticRegistry;
    use std::time::Duration;

    let dir = tempfile::tempdir().expect("temp dir");
    let queue = Queue::with_db(
        drover_test_support::open_db(&format!("file:{}", dir.path().join("q.db").display())).await,
        drover_host::queue::QueueOptions {
            backoff_base: Duration::ZERO,
            backoff_max: Duration::ZERO,
            ..Default::default()
        },
    )
    .await
    .expect("queue");
    let store = RunStore::with_db(
        drover_test_support::open_db(&format!("file:{}", dir.path().join("r.db").display())).await,
    )
    .await
    .expect("store");
    let api = RunApi::new(
        queue.clone(),
        store.clone(),
        Arc::new(StaticRegistry::new()),
    );
    let lease = std::time::Duration::from_secs(30);
    let write = |runs: Vec<RunRecord>| {
        let store = store.clone();
        async move {
            store
                .write(&WriteBatch {
                    runs,
                    ..WriteBatch::default()
                })
                .await
                .expect("write runs")
        }
    };
    let new = |id: &str| {
        NewJob::new("echo", &serde_json::json!(null))
            .id(id)
            .max_attempts(3)
    };
    queue
        .enqueue_batch(vec![new("done"), new("retried"), new("waiting")])
        .await
        .expect("enqueue");
    let claimed = queue.claim("w", lease, 2).await.expect("claim");
    let epoch_of = |id: &str| {
        claimed
            .iter()
            .find(|c| c.job.id == id)
            .map(|c| c.lease.clone())
            .expect("claimed")
    };
    // "done": decided by its first run; a stale worker's later run does not replace it.
    write(vec![run("done-1", "done", RunStatus::Success, None)]).await;
    assert!(
        queue
            .complete(&epoch_of("done"), "done-1", "success")
            .await
            .expect("complete")
    );
    let mut stale = run("done-2", "done", RunStatus::Lost, Some("LeaseLost"));
    stale.attempt = 2;
    write(vec![stale]).await;
    // "retried": failed once, and runs again now.
    write(vec![run(
        "retried-1",
        "retried",
        RunStatus::Error,
        Some("Flaky"),
    )])
    .await;
    assert!(
        queue
            .fail(
                &epoch_of("retried"),
                ErrorInfo::new("Flaky", "once"),
                true,
                Some("retried-1"),
            )
            .await
            .expect("fail")
    );
    let again = queue.claim("w", lease, 1).await.expect("claim again");
    assert_eq!(again[0].job.id, "retried");
    let mut second = run("retried-2", "retried", RunStatus::Running, None);
    second.attempt = 2;
    write(vec![second]).await;

    let expected = [
        ("done", Some("done-1")),
        ("retried", Some("retried-2")),
        ("waiting", None),
    ];
    let mut jobs = Vec::new();
    for (id, run_id) in expected {
        let view = api.get(id).await.expect("get");
        assert_eq!(view.run.as_ref().map(|r| r.id.as_str()), run_id, "{id}");
        jobs.push(view.job);
    }
    let views = api.views(jobs).await.expect("views");
    let got: Vec<(&str, Option<&str>)> = views
        .iter()
        .map(|v| (v.job.id.as_str(), v.run.as_ref().map(|r| r.id.as_str())))
        .collect();
    assert_eq!(got, expected);
}

const DAY_MS: i64 = 86_400_000;

fn ended(id: &str, job_id: &str, status: RunStatus, started_at: i64) -> RunRecord {
    let mut run = run(id, job_id, status, None);
    run.started_at = started_at;
    run.ended_at = (status != RunStatus::Running).then_some(started_at + 1000);
    run
}

async fn event_count(store: &RunStore, run_id: &str) -> usize {
    store.events(run_id, 0, 10_000).await.expect("events").len()
}

/// Finished jobs and runs (with their events) older than the cutoff go; recent ones, queued and
/// leased jobs and running runs stay, however old. The queue and the store are separate files.
#[tokio::test]
async fn retention_prunes_old_finished_work_only() {
    use drover_host::queue::{JobStatus, NewJob};
    use drover_host::store::retention::{PRUNE_BATCH, prune};
    use std::time::Duration;

    let db = drover_test_support::TestDb::new().await;
    let (queue, store) = (&db.queue, &db.store);
    let now = drover_host::time::now_ms();
    let runs = vec![
        ended("old-done", "j-old", RunStatus::Success, now - 40 * DAY_MS),
        ended("old-failed", "j-old", RunStatus::Error, now - 31 * DAY_MS),
        ended(
            "old-running",
            "j-live",
            RunStatus::Running,
            now - 40 * DAY_MS,
        ),
        ended("recent", "j-new", RunStatus::Success, now - DAY_MS),
    ];
    let events = runs
        .iter()
        .flat_map(|r| (1..=3).map(|seq| event(&r.id, seq, "tick", "{}")))
        .collect();
    store
        .write(&WriteBatch {
            runs,
            events,
            ..WriteBatch::default()
        })
        .await
        .expect("write");
    let new = |id: &str| NewJob::new("echo", &serde_json::json!(null)).id(id);
    queue
        .enqueue_batch(vec![
            new("done"),
            new("failed"),
            new("leased"),
            new("cancelled"),
        ])
        .await
        .expect("enqueue");
    let lease = Duration::from_secs(30);
    let claimed = queue.claim("w", lease, 3).await.expect("claim");
    let lease_of = |id: &str| {
        claimed
            .iter()
            .find(|c| c.job.id == id)
            .map(|c| c.lease.clone())
            .expect("claimed")
    };
    assert!(
        queue
            .complete(&lease_of("done"), "r", "success")
            .await
            .expect("complete")
    );
    assert!(
        queue
            .fail(&lease_of("failed"), ErrorInfo::new("X", "x"), false, None)
            .await
            .expect("fail")
    );
    queue.cancel("cancelled").await.expect("cancel");
    queue.enqueue(new("queued")).await.expect("enqueue");

    // Thirty days back from now: only the old finished runs qualify; every job is recent.
    let pruned = prune(
        queue,
        store,
        Duration::from_secs(30 * 86_400),
        now,
        PRUNE_BATCH,
    )
    .await
    .expect("prune");
    assert_eq!((pruned.jobs, pruned.runs, pruned.events), (0, 2, 6));
    for gone in ["old-done", "old-failed"] {
        assert!(store.get_run(gone).await.expect("get").is_none(), "{gone}");
        assert_eq!(event_count(store, gone).await, 0, "{gone}");
    }
    for kept in ["old-running", "recent"] {
        assert!(store.get_run(kept).await.expect("get").is_some(), "{kept}");
        assert_eq!(event_count(store, kept).await, 3, "{kept}");
    }

    // A day from now, with a day's retention: the finished jobs are old now, the others are not
    // finished; the running run stays whatever its age.
    let pruned = prune(
        queue,
        store,
        Duration::from_secs(86_400),
        now + 2 * DAY_MS,
        PRUNE_BATCH,
    )
    .await
    .expect("prune");
    assert_eq!((pruned.jobs, pruned.runs, pruned.events), (3, 1, 3));
    for gone in ["done", "failed", "cancelled"] {
        assert!(queue.get(gone).await.expect("get").is_none(), "{gone}");
    }
    assert_eq!(
        queue.get("leased").await.expect("get").map(|j| j.status),
        Some(JobStatus::Leased)
    );
    assert_eq!(
        queue.get("queued").await.expect("get").map(|j| j.status),
        Some(JobStatus::Queued)
    );
    assert!(store.get_run("old-running").await.expect("get").is_some());
    assert_eq!(event_count(store, "old-running").await, 3);
    assert!(store.get_run("recent").await.expect("get").is_none());
}

/// A large backlog goes in statements of at most the batch size each.
#[tokio::test]
async fn retention_deletes_in_bounded_batches() {
    use drover_host::queue::NewJob;
    use drover_host::store::retention::prune;
    use std::time::Duration;

    let db = drover_test_support::TestDb::new().await;
    let (queue, store) = (&db.queue, &db.store);
    let now = drover_host::time::now_ms();
    let runs: Vec<RunRecord> = (0..260)
        .map(|i| {
            ended(
                &format!("r-{i}"),
                "j",
                RunStatus::Success,
                now - 40 * DAY_MS,
            )
        })
        .collect();
    let events = runs
        .iter()
        .flat_map(|r| (1..=4).map(|seq| event(&r.id, seq, "tick", "{}")))
        .collect();
    store
        .write(&WriteBatch {
            runs,
            events,
            ..WriteBatch::default()
        })
        .await
        .expect("write");
    let jobs: Vec<NewJob> = (0..130)
        .map(|i| NewJob::new("echo", &serde_json::json!(null)).id(format!("j-{i}")))
        .collect();
    queue.enqueue_batch(jobs).await.expect("enqueue");
    for i in 0..130 {
        queue.cancel(&format!("j-{i}")).await.expect("cancel");
    }

    let pruned = prune(
        queue,
        store,
        Duration::from_secs(86_400),
        now + 2 * DAY_MS,
        50,
    )
    .await
    .expect("prune");
    assert_eq!((pruned.jobs, pruned.runs, pruned.events), (130, 260, 1040));
    assert!(pruned.largest_batch <= 50, "{pruned:?}");
    // 130 jobs: 3 statements; 260 runs: 6 passes of at most 50, each with its events (200 per
    // pass: 4 or 5 statements) and one delete of the runs.
    assert!(pruned.statements >= 3 + 6 * 5, "{pruned:?}");
    let left = store
        .db()
        .run(|conn| async move {
            query_all(
                &conn,
                "SELECT (SELECT count(*) FROM runs), (SELECT count(*) FROM events)",
                (),
                |row| Ok((row.int(0)?, row.int(1)?)),
            )
            .await
        })
        .await
        .expect("count");
    assert_eq!(left, [(0, 0)]);
}

/// A job's runs do not store its input again (the job has it); the producer API fills it in
/// from the job, so a run is served as before. A run without a job keeps its own input.
#[tokio::test]
async fn a_jobs_runs_are_stored_without_its_input_and_served_with_it() {
    use drover_host::api::RunApi;
    use drover_host::queue::NewJob;
    use drover_host::registry::StaticRegistry;

    let db = drover_test_support::TestDb::new().await;
    let input = serde_json::json!({ "n": 42, "text": "x".repeat(1000) });
    let job = db
        .queue
        .enqueue(NewJob::new("echo", &input).id("j-in"))
        .await
        .expect("enqueue")
        .job;
    let raw = |text: &str| Some(Arc::from(RawValue::from_string(text.into()).expect("json")));
    let mut of_job = run("r-job", "j-in", RunStatus::Running, None);
    of_job.input = Some(Arc::clone(&job.input));
    let mut alone = run("r-alone", "unused", RunStatus::Success, None);
    alone.job_id = None;
    alone.input = raw(r#"{"standalone":true}"#);
    db.store
        .write(&WriteBatch {
            runs: vec![of_job, alone],
            ..WriteBatch::default()
        })
        .await
        .expect("write");

    let stored = db
        .store
        .db()
        .run(|conn| async move {
            query_all(&conn, "SELECT id, input FROM runs ORDER BY id", (), |row| {
                Ok((row.text(0)?, row.opt_text(1)?))
            })
            .await
        })
        .await
        .expect("read");
    assert_eq!(
        stored,
        [
            (
                "r-alone".to_string(),
                Some(r#"{"standalone":true}"#.to_string())
            ),
            ("r-job".to_string(), None),
        ]
    );

    let api = RunApi::new(
        db.queue.clone(),
        db.store.clone(),
        Arc::new(StaticRegistry::new()),
    );
    let served = api.run("r-job").await.expect("run");
    let served_input: serde_json::Value =
        serde_json::from_str(served.input.expect("input").get()).expect("json");
    assert_eq!(served_input, input);
    let alone = api.run("r-alone").await.expect("run");
    assert_eq!(
        alone.input.map(|i| i.get().to_string()).as_deref(),
        Some(r#"{"standalone":true}"#)
    );
    let view = api.get("j-in").await.expect("view");
    assert_eq!(
        view.run.and_then(|r| r.input).map(|i| i.get().to_string()),
        Some(job.input.get().to_string())
    );
}

/// Database files are synced at every commit unless told otherwise; the setting holds for the
/// writer's connection and for readers' alike.
#[tokio::test]
async fn database_files_sync_every_commit_by_default() {
    use drover_host::db::{DbOptions, SyncMode};

    let dir = tempfile::tempdir().expect("temp dir");
    let synchronous = |db: Db| async move {
        let read = db
            .run(|conn| async move {
                query_all(&conn, "PRAGMA synchronous", (), |row| row.int(0)).await
            })
            .await
            .expect("reader");
        let written = db
            .write(|conn| async move {
                query_all(&conn, "PRAGMA synchronous", (), |row| row.int(0)).await
            })
            .await
            .expect("writer");
        (read, written)
    };
    let url = |name: &str| format!("file:{}", dir.path().join(name).display());
    // SQLite's values: 1 is NORMAL, 2 is FULL.
    let default = Db::open(&url("default.db"), None).await.expect("open");
    assert_eq!(synchronous(default).await, (vec![2], vec![2]));
    let normal = Db::open_with(
        &url("normal.db"),
        None,
        DbOptions {
            sync: SyncMode::Normal,
        },
    )
    .await
    .expect("open");
    assert_eq!(synchronous(normal).await, (vec![1], vec![1]));
    assert_eq!("FULL".parse::<SyncMode>(), Ok(SyncMode::Full));
    assert_eq!("normal".parse::<SyncMode>(), Ok(SyncMode::Normal));
    let error = "off".parse::<SyncMode>().expect_err("not a mode");
    assert!(error.contains("full or normal"), "{error}");
}

/// A schema whose second migration is not idempotent: applied twice, it would fail.
static GADGETS: &[drover_host::db::Migration] = &[
    drover_host::db::Migration {
        version: 1,
        name: "gadgets",
        sql: "CREATE TABLE gadgets (id INTEGER PRIMARY KEY);",
    },
    drover_host::db::Migration {
        version: 2,
        name: "gadget colours",
        sql: "ALTER TABLE gadgets ADD COLUMN colour TEXT;",
    },
];

async fn columns(db: &Db, table: &'static str) -> Vec<String> {
    db.run(move |conn| async move {
        query_all(
            &conn,
            &format!("SELECT name FROM pragma_table_info('{table}') ORDER BY cid"),
            (),
            |row| row.text(0),
        )
        .await
    })
    .await
    .expect("columns")
}

/// Processes starting at once on one file (separate handles, each with its own writer) all
/// end up migrated, though the migration is an `ALTER TABLE`: the loser of the race finds the
/// bookkeeping row taken and runs none of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_migrations_apply_an_alter_table_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    // The loser's view, made certain: its version was read before the winner committed.
    let url = format!("file:{}", dir.path().join("loser.db").display());
    let (winner, loser) = (
        Db::open(&url, None).await.expect("open"),
        Db::open(&url, None).await.expect("open"),
    );
    winner.migrate("gadgets", GADGETS).await.expect("migrate");
    let applied = loser
        .apply_migration("gadgets", &GADGETS[1])
        .await
        .expect("already applied is no error");
    assert!(!applied);
    assert_eq!(columns(&loser, "gadgets").await, ["id", "colour"]);

    // A real race: four processes read the version while a fifth holds the write lock, so
    // that all of them find the migrations unapplied and then queue up to apply them.
    let url = format!("file:{}", dir.path().join("race.db").display());
    let blocker = Db::open(&url, None).await.expect("open");
    blocker
        .migrate("other", &[])
        .await
        .expect("bookkeeping table");
    let mut handles = Vec::new();
    for _ in 0..4 {
        handles.push(Db::open(&url, None).await.expect("open"));
    }
    let hold = tokio::spawn({
        let blocker = blocker.clone();
        async move {
            blocker
                .write(|conn| async move {
                    conn.execute("BEGIN IMMEDIATE", ()).await?;
                    std::thread::sleep(std::time::Duration::from_millis(500));
                    conn.execute("COMMIT", ()).await?;
                    Ok(())
                })
                .await
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let results =
        futures::future::join_all(handles.iter().map(|db| db.migrate("gadgets", GADGETS))).await;
    hold.await.expect("join").expect("held the lock");
    for result in results {
        result.expect("every process ends up migrated");
    }
    assert_eq!(columns(&blocker, "gadgets").await, ["id", "colour"]);
    let versions = blocker
        .run(|conn| async move {
            query_all(
                &conn,
                "SELECT version FROM drover_migrations WHERE component = 'gadgets' ORDER BY version",
                (),
                |row| row.int(0),
            )
            .await
        })
        .await
        .expect("versions");
    assert_eq!(versions, [1, 2]);
}

/// A database migrated by a newer build is refused with a clear error, and left as it is.
#[tokio::test]
async fn a_database_newer_than_the_build_is_refused() {
    let (store, _dir) = store().await;
    store
        .write(&WriteBatch {
            runs: vec![run("r-1", "j-1", RunStatus::Success, None)],
            ..WriteBatch::default()
        })
        .await
        .expect("write");
    let db = store.db().clone();
    db.write(|conn| async move {
        conn.execute(
            "INSERT INTO drover_migrations (component, version, name, applied_at)
             VALUES ('store', 99, 'from the future', 0)",
            (),
        )
        .await?;
        Ok(())
    })
    .await
    .expect("a future version");
    let error = RunStore::with_db(db.clone())
        .await
        .expect_err("newer schema")
        .to_string();
    assert!(
        error.contains("the store schema of this database is at version 99, newer than this build knows (version 4)"),
        "{error}"
    );
    // The queue's schema is its own business, and the runs are still there.
    drover_host::queue::Queue::with_db(db, Default::default())
        .await
        .expect("queue");
    assert!(store.get_run("r-1").await.expect("get").is_some());
}

/// Counting runs by status reads the status index alone.
#[tokio::test]
async fn counting_runs_by_status_uses_the_status_index() {
    let (store, _dir) = store().await;
    let plan = store
        .db()
        .run(|conn| async move {
            query_all(
                &conn,
                "EXPLAIN QUERY PLAN SELECT status, count(*) FROM runs GROUP BY status",
                (),
                |row| row.text(3),
            )
            .await
        })
        .await
        .expect("plan");
    assert!(
        plan.iter()
            .any(|step| step.contains("COVERING INDEX runs_status")),
        "{plan:?}"
    );
}

/// A run's usage is written with its outcome and read back as written, by every way of reading
/// runs; a run that made no model or tool call has none, and a run that starts without usage
/// gets it when it ends.
#[tokio::test]
async fn usage_round_trips_with_the_run() {
    let (store, _dir) = store().await;
    let usage = Usage {
        turns: 3,
        input_tokens: 12_345_678_901,
        output_tokens: 456,
        cost_usd: 0.001_234_5,
        tool_calls: 2,
    };
    let started = run("r-model", "j-model", RunStatus::Running, None);
    store
        .write(&WriteBatch {
            runs: vec![
                started.clone(),
                run("r-plain", "j-plain", RunStatus::Success, None),
            ],
            ..WriteBatch::default()
        })
        .await
        .expect("write started");
    assert_eq!(
        store
            .get_run("r-model")
            .await
            .expect("get")
            .expect("run")
            .usage,
        None
    );

    let mut ended = started;
    ended.status = RunStatus::Quota;
    ended.ended_at = Some(2);
    ended.error_tag = Some("MaxTurns".into());
    ended.error_message = Some("the run used its 3 turns".into());
    ended.usage = Some(usage);
    store
        .write(&WriteBatch {
            runs: vec![ended],
            ..WriteBatch::default()
        })
        .await
        .expect("write ended");

    let got = store.get_run("r-model").await.expect("get").expect("run");
    assert_eq!(got.usage, Some(usage));
    assert_eq!(got.status, RunStatus::Quota);
    let plain = store.get_run("r-plain").await.expect("get").expect("run");
    assert_eq!(plain.usage, None);
    let listed = store.list_runs(&RunFilter::default()).await.expect("list");
    let by_id = |id: &str| listed.iter().find(|r| r.id == id).map(|r| r.usage);
    assert_eq!(by_id("r-model"), Some(Some(usage)));
    assert_eq!(by_id("r-plain"), Some(None));
    let latest = store
        .latest_runs_for_jobs(&["j-model".to_string()])
        .await
        .expect("latest");
    assert_eq!(latest[0].usage, Some(usage));
    let json = serde_json::to_value(&got).expect("json");
    assert_eq!(
        json["usage"],
        serde_json::json!({
            "turns": 3,
            "inputTokens": 12_345_678_901_u64,
            "outputTokens": 456,
            "costUsd": 0.001_234_5,
            "toolCalls": 2
        })
    );
}

/// The run store's schema as version 2 left it (the last version without usage), exactly as an
/// existing database holds it.
static STORE_V2: &[drover_host::db::Migration] = &[
    drover_host::db::Migration {
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
    drover_host::db::Migration {
        version: 2,
        name: "runs by status",
        sql: "CREATE INDEX runs_status ON runs (status);",
    },
];

/// A database made by the previous schema version, with runs and events in it, is migrated in
/// place when the store opens it: its runs read back unchanged and without usage, its events
/// stay, and new runs record usage. Opening it again changes nothing.
#[tokio::test]
async fn a_database_of_the_previous_version_gains_usage_and_keeps_its_runs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("file:{}", dir.path().join("runs.db").display());
    let old = Db::open(&url, None).await.expect("open");
    old.migrate("store", STORE_V2).await.expect("version 2");
    old.write(|conn| async move {
        conn.execute(
            "INSERT INTO runs (id, job_id, agent_id, attempt, status, sandbox, output,
                               started_at, ended_at, fuel_used, peak_memory)
             VALUES ('r-old', 'j-old', 'echo', 1, 'success', 'wasm', '{\"ok\":true}',
                     10, 20, 1234, 65536)",
            (),
        )
        .await?;
        conn.execute(
            "INSERT INTO events (run_id, seq, ts, kind, payload)
             VALUES ('r-old', 1, 10, 'run_start', '{}')",
            (),
        )
        .await?;
        Ok(())
    })
    .await
    .expect("an old run");
    drop(old);

    for _ in 0..2 {
        let store = RunStore::open(&url, None).await.expect("migrated");
        let got = store.get_run("r-old").await.expect("get").expect("old run");
        assert_eq!(got.status, RunStatus::Success);
        assert_eq!(
            got.output.as_deref().map(RawValue::get),
            Some(r#"{"ok":true}"#)
        );
        assert_eq!((got.fuel_used, got.peak_memory), (Some(1234), Some(65536)));
        assert_eq!(got.usage, None);
        assert_eq!((got.tenant_id, got.user_id), (None, None));
        assert_eq!(event_count(&store, "r-old").await, 1);
    }
    let store = RunStore::open(&url, None).await.expect("open");
    let cols = columns(store.db(), "runs").await;
    assert_eq!(
        cols[cols.len() - 7..],
        [
            "turns",
            "input_tokens",
            "output_tokens",
            "cost_usd",
            "tool_calls",
            "tenant_id",
            "user_id"
        ]
    );
    let usage = Usage {
        turns: 1,
        input_tokens: 20,
        output_tokens: 5,
        cost_usd: 0.25,
        tool_calls: 0,
    };
    let mut new = run("r-new", "j-new", RunStatus::Success, None);
    new.usage = Some(usage);
    new.tenant_id = Some("acme".into());
    new.user_id = Some("ann".into());
    store
        .write(&WriteBatch {
            runs: vec![new],
            ..WriteBatch::default()
        })
        .await
        .expect("write");
    let got = store.get_run("r-new").await.expect("get").expect("new run");
    assert_eq!(got.usage, Some(usage));
    assert_eq!(got.tenant_id.as_deref(), Some("acme"));
    assert_eq!(got.user_id.as_deref(), Some("ann"));
}
