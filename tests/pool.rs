//! The worker pool end to end with native agents in the none sandbox, on real libsql files.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use drover_host::api::RunApi;
use drover_host::pool::{PoolConfig, PoolDeps, PoolHandle, WorkerPool};
use drover_host::queue::{ErrorInfo, JobFilter, JobStatus, NewJob, Queue};
use drover_host::registry::{AgentSpec, Registry, Schema, StaticRegistry};
use drover_host::sandbox::native_agent;
use drover_host::sandbox::{NoneSandbox, Sandbox, SandboxFor};
use drover_host::store::{RunFilter, RunStatus, RunStore, attempt_run_id};
use drover_test_support::{TestDb, WAIT, wait_for, wait_for_run_status, wait_for_status};
use serde_json::{Value, json};

struct Env {
    db: TestDb,
    queue: Queue,
    store: RunStore,
    registry: Arc<dyn Registry>,
    api: RunApi,
}

impl Env {
    async fn new(registry: StaticRegistry) -> Self {
        let db = TestDb::new().await;
        let registry: Arc<dyn Registry> = Arc::new(registry);
        let api = RunApi::new(db.queue.clone(), db.store.clone(), Arc::clone(&registry));
        Self {
            queue: db.queue.clone(),
            store: db.store.clone(),
            db,
            registry,
            api,
        }
    }

    fn pool(&self, config: PoolConfig) -> PoolHandle {
        self.pool_with(Arc::clone(&self.registry), config)
    }

    /// A pool of a host with other agents, on the same databases.
    fn pool_with(&self, registry: Arc<dyn Registry>, config: PoolConfig) -> PoolHandle {
        let none: Arc<dyn Sandbox> = Arc::new(NoneSandbox::new());
        let sandbox_for: SandboxFor = Arc::new(move |_job, _spec| Arc::clone(&none));
        WorkerPool::new(
            PoolDeps {
                queue: self.queue.clone(),
                store: self.store.clone(),
                registry,
                sandbox_for,
            },
            config,
        )
        .start()
    }
}

fn fast() -> PoolConfig {
    PoolConfig {
        concurrency: 4,
        reclaim_interval: Duration::from_millis(100),
        signal_poll_interval: Duration::from_millis(50),
        shutdown_grace: Duration::from_secs(5),
        ..PoolConfig::default()
    }
}

fn echo() -> AgentSpec {
    AgentSpec::native(
        "echo",
        native_agent(|input: Value, _ctx| async move {
            Ok(json!({ "received": input["n"], "ok": true }))
        }),
    )
    .input_schema(
        Schema::new(json!({
            "type": "object",
            "properties": { "n": { "type": "integer" } },
            "required": ["n"]
        }))
        .expect("schema"),
    )
}

/// Sleeps for `input.ms` milliseconds, ignoring everything else.
fn sleeper() -> AgentSpec {
    AgentSpec::native(
        "sleeper",
        native_agent(|input: Value, _ctx| async move {
            let ms = input["ms"].as_u64().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(json!({ "slept": ms }))
        }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_flow_enqueue_wait_done() {
    let env = Env::new(StaticRegistry::new().with(echo())).await;
    let pool = env.pool(fast());
    let job = env
        .api
        .enqueue(
            NewJob::new("echo", &json!({ "n": 42 }))
                .id("seed-1")
                .priority(10)
                .max_attempts(3),
        )
        .await
        .expect("enqueue")
        .job;
    let done = env.api.wait_for(&job.id, WAIT).await.expect("wait");
    assert_eq!(done.job.status, JobStatus::Done);
    let run = done.run.expect("run");
    assert_eq!(run.status, RunStatus::Success);
    assert_eq!(
        serde_json::from_str::<Value>(run.output.expect("output").get()).expect("json"),
        json!({ "received": 42, "ok": true })
    );
    assert_eq!(done.job.run_id.as_deref(), Some(run.id.as_str()));
    assert_eq!(run.sandbox.as_deref(), Some("none"));
    let events = env.api.events(&run.id, 0, 100).await.expect("events");
    let kinds: Vec<_> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["run_start", "run_end"]);
    assert_eq!(events[0].seq, 1);
    pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_rejects_unknown_agents_and_invalid_input() {
    let env = Env::new(StaticRegistry::new().with(echo())).await;
    let unknown = env.api.enqueue(NewJob::new("nope", &json!({}))).await;
    assert!(
        matches!(unknown, Err(drover_host::api::ApiError::BadRequest(ref e)) if e.tag == "UnknownAgent"),
        "{unknown:?}"
    );
    let invalid = env
        .api
        .enqueue(NewJob::new("echo", &json!({ "n": "x" })))
        .await;
    assert!(
        matches!(invalid, Err(drover_host::api::ApiError::BadRequest(ref e)) if e.tag == "InvalidInput"),
        "{invalid:?}"
    );
    assert!(
        env.api
            .list(&JobFilter::default())
            .await
            .expect("list")
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_attempts_are_retried_until_one_succeeds() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let flaky = AgentSpec::native(
        "flaky",
        native_agent(move |_input, _ctx| {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                if n < 3 {
                    Err(ErrorInfo::new("Flaky", format!("attempt {n} fails")))
                } else {
                    Ok(json!({ "attempt": n }))
                }
            }
        }),
    );
    let env = Env::new(StaticRegistry::new().with(flaky)).await;
    let pool = env.pool(fast());
    let job = env
        .api
        .enqueue(NewJob::new("flaky", &json!(null)).max_attempts(3))
        .await
        .expect("enqueue")
        .job;
    let done = env.api.wait_for(&job.id, WAIT).await.expect("wait");
    assert_eq!(done.job.status, JobStatus::Done);
    assert_eq!(done.job.attempts, 2, "two failed attempts were used");
    assert_eq!(done.run.expect("run").attempt, 3);
    pool.flush().await;
    let runs = env
        .store
        .list_runs(&RunFilter {
            job_id: Some(job.id.clone()),
            ..Default::default()
        })
        .await
        .expect("runs");
    let mut statuses: Vec<_> = runs.iter().map(|r| (r.attempt, r.status)).collect();
    statuses.sort_by_key(|(a, _)| *a);
    assert_eq!(
        statuses,
        [
            (1, RunStatus::Error),
            (2, RunStatus::Error),
            (3, RunStatus::Success)
        ]
    );
    pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_attempts_fail_with_the_last_error() {
    let always = AgentSpec::native(
        "always-fails",
        native_agent(|_input, _ctx| async move { Err(ErrorInfo::new("Nope", "never works")) }),
    );
    let env = Env::new(StaticRegistry::new().with(always)).await;
    let pool = env.pool(fast());
    let job = env
        .api
        .enqueue(NewJob::new("always-fails", &json!(null)).max_attempts(2))
        .await
        .expect("enqueue")
        .job;
    let done = env.api.wait_for(&job.id, WAIT).await.expect("wait");
    assert_eq!(done.job.status, JobStatus::Failed);
    assert_eq!(done.job.attempts, 2);
    assert_eq!(
        done.job.result_error,
        Some(ErrorInfo::new("Nope", "never works"))
    );
    pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_input_fails_without_retry_and_unknown_agents_wait_for_a_host_that_has_them() {
    let env = Env::new(StaticRegistry::new().with(echo())).await;
    // Enqueued straight on the queue (as another producer might), bypassing the API's checks.
    env.queue
        .enqueue_batch(vec![
            NewJob::new("ghost", &json!({})).id("ghost").max_attempts(3),
            NewJob::new("echo", &json!({ "n": "not a number" }))
                .id("bad-input")
                .max_attempts(3),
        ])
        .await
        .expect("enqueue");
    let pool = env.pool(fast());
    let done = env.api.wait_for("bad-input", WAIT).await.expect("wait");
    assert_eq!(done.job.status, JobStatus::Failed);
    assert_eq!(done.job.attempts, 1, "bad input was not retried");
    let error = done.job.result_error.expect("error");
    assert_eq!(error.tag, "InvalidInput");
    assert!(!error.message.is_empty());
    // This host has no `ghost` agent: it leaves the job alone, however often it looks.
    for _ in 0..20 {
        pool.flush().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ghost = env.queue.get("ghost").await.expect("get").expect("job");
    assert_eq!(ghost.status, JobStatus::Queued);
    assert_eq!(ghost.attempts, 0);
    assert_eq!(ghost.lease_epoch, 0, "never claimed");
    // A host that has it runs it.
    let ghost_agent = AgentSpec::native(
        "ghost",
        native_agent(|_input: Value, _ctx| async move { Ok(json!({ "boo": true })) }),
    );
    let other_pool = env.pool_with(Arc::new(StaticRegistry::new().with(ghost_agent)), fast());
    let done = env.api.wait_for("ghost", WAIT).await.expect("wait");
    assert_eq!(done.job.status, JobStatus::Done);
    pool.shutdown().await;
    other_pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_agent_fails_its_job_and_the_pool_goes_on() {
    let panics = AgentSpec::native(
        "panics",
        native_agent(|_input, _ctx| async move {
            let v: Vec<u8> = Vec::new();
            Ok(json!(v[3]))
        }),
    );
    let env = Env::new(StaticRegistry::new().with(panics).with(echo())).await;
    let pool = env.pool(fast());
    let bad = env
        .api
        .enqueue(NewJob::new("panics", &json!(null)))
        .await
        .expect("enqueue");
    let done = env.api.wait_for(&bad.job.id, WAIT).await.expect("wait");
    assert_eq!(done.job.status, JobStatus::Failed);
    let error = done.job.result_error.expect("error");
    assert_eq!(error.tag, "Panic");
    assert!(
        error.message.contains("index out of bounds"),
        "{}",
        error.message
    );
    let good = env
        .api
        .enqueue(NewJob::new("echo", &json!({ "n": 1 })))
        .await
        .expect("enqueue");
    let done = env.api.wait_for(&good.job.id, WAIT).await.expect("wait");
    assert_eq!(done.job.status, JobStatus::Done);
    pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_bound_is_respected() {
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (r, p) = (Arc::clone(&running), Arc::clone(&peak));
    let tracked = AgentSpec::native(
        "tracked",
        native_agent(move |_input, _ctx| {
            let (r, p) = (Arc::clone(&r), Arc::clone(&p));
            async move {
                let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                p.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(30)).await;
                r.fetch_sub(1, Ordering::SeqCst);
                Ok(json!(null))
            }
        }),
    );
    let env = Env::new(StaticRegistry::new().with(tracked)).await;
    let jobs: Vec<_> = (0..15)
        .map(|_| NewJob::new("tracked", &json!(null)))
        .collect();
    let ids: Vec<String> = env
        .api
        .enqueue_batch(jobs)
        .await
        .expect("enqueue")
        .into_iter()
        .map(|e| e.job.id)
        .collect();
    let pool = env.pool(PoolConfig {
        concurrency: 3,
        ..fast()
    });
    for id in &ids {
        let done = env.api.wait_for(id, WAIT).await.expect("wait");
        assert_eq!(done.job.status, JobStatus::Done);
    }
    assert_eq!(peak.load(Ordering::SeqCst), 3, "ran exactly 3 at a time");
    pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_job_aborts_it_without_retry() {
    // This agent never looks at its context: the pool must abort it.
    let stubborn = AgentSpec::native(
        "stubborn",
        native_agent(|_input, _ctx| async move {
            loop {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }),
    );
    let env = Env::new(StaticRegistry::new().with(stubborn)).await;
    let pool = env.pool(fast());
    let job = env
        .api
        .enqueue(NewJob::new("stubborn", &json!(null)).max_attempts(5))
        .await
        .expect("enqueue")
        .job;
    wait_for_status(&env.queue, &job.id, JobStatus::Leased).await;
    env.api.cancel(&job.id).await.expect("cancel");
    let done = env.api.wait_for(&job.id, WAIT).await.expect("wait");
    assert_eq!(done.job.status, JobStatus::Failed);
    assert_eq!(
        done.job.result_error.map(|e| e.tag),
        Some("Cancelled".into())
    );
    assert_eq!(done.run.expect("run").status, RunStatus::Cancelled);
    // No retry happens later either.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let job = env.queue.get(&job.id).await.expect("get").expect("job");
    assert_eq!(job.status, JobStatus::Failed);
    pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_from_another_process_reaches_the_worker() {
    let stubborn = AgentSpec::native(
        "stubborn",
        native_agent(|_input, _ctx| async move {
            loop {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }),
    );
    let env = Env::new(StaticRegistry::new().with(stubborn)).await;
    let pool = env.pool(fast());
    let job = env
        .api
        .enqueue(NewJob::new("stubborn", &json!(null)))
        .await
        .expect("enqueue")
        .job;
    wait_for_status(&env.queue, &job.id, JobStatus::Leased).await;
    // A separate handle on the same file shares no in-process channel with the pool.
    let other = Queue::open(&env.db.queue_url(), None)
        .await
        .expect("other handle");
    other.cancel(&job.id).await.expect("cancel");
    let done = env.api.wait_for(&job.id, WAIT).await.expect("wait");
    assert_eq!(done.job.status, JobStatus::Failed);
    assert_eq!(
        done.job.result_error.map(|e| e.tag),
        Some("Cancelled".into())
    );
    pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_lost_its_lease_has_its_result_dropped() {
    let env = Env::new(StaticRegistry::new().with(sleeper())).await;
    // Pool A never renews its short lease and never reclaims; with one slot it cannot claim the
    // job again while its first run is still going.
    let a = env.pool(PoolConfig {
        worker_id: Some("worker-a".into()),
        concurrency: 1,
        heartbeat_interval: Some(Duration::from_secs(3600)),
        reclaim_interval: Duration::from_secs(3600),
        ..fast()
    });
    let job = env
        .api
        .enqueue(NewJob::new("sleeper", &json!({ "ms": 600 })).max_attempts(2))
        .await
        .expect("enqueue")
        .job;
    wait_for_status(&env.queue, &job.id, JobStatus::Leased).await;
    // As if A's lease had expired (without A noticing).
    let reclaimed = env.queue.reclaim_stale(i64::MAX).await.expect("reclaim");
    assert_eq!(reclaimed.len(), 1);
    // Pool B takes the job over and finishes it.
    let b = env.pool(PoolConfig {
        worker_id: Some("worker-b".into()),
        ..fast()
    });
    let done = env.api.wait_for(&job.id, WAIT).await.expect("wait");
    assert_eq!(done.job.status, JobStatus::Done);
    let winner = done.run.expect("run");
    assert_eq!(winner.worker_id.as_deref(), Some("worker-b"));
    // A finishes too, later; its outcome must not overwrite B's.
    tokio::time::sleep(Duration::from_millis(700)).await;
    a.flush().await;
    let job = env.queue.get(&job.id).await.expect("get").expect("job");
    assert_eq!(job.run_id.as_deref(), Some(winner.id.as_str()));
    let runs = env
        .store
        .list_runs(&RunFilter {
            job_id: Some(job.id.clone()),
            ..Default::default()
        })
        .await
        .expect("runs");
    let a_run = runs
        .iter()
        .find(|r| r.worker_id.as_deref() == Some("worker-a"))
        .expect("a's run");
    assert_eq!(a_run.status, RunStatus::Lost);
    assert_eq!(
        a_run.error.as_ref().map(|e| e.tag.as_str()),
        Some("LeaseLost")
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_aborts_runs_whose_lease_it_can_no_longer_renew() {
    let env = Env::new(StaticRegistry::new().with(sleeper())).await;
    // One slot, held by the job: the pool cannot claim it back before the other host does.
    let pool = env.pool(PoolConfig {
        worker_id: Some("renewer".into()),
        concurrency: 1,
        lease_duration: Duration::from_secs(30),
        heartbeat_interval: Some(Duration::from_millis(50)),
        reclaim_interval: Duration::from_secs(3600),
        ..fast()
    });
    let job = env
        .api
        .enqueue(NewJob::new("sleeper", &json!({ "ms": 60_000 })).max_attempts(2))
        .await
        .expect("enqueue")
        .job;
    wait_for_status(&env.queue, &job.id, JobStatus::Leased).await;
    // Another host takes the job (as if the lease had expired): the epoch moves on.
    let other = Queue::open(&env.db.queue_url(), None).await.expect("other");
    other.reclaim_stale(i64::MAX).await.expect("reclaim");
    // Claimable again once its reclaim backoff is over.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let thief = other
            .claim("thief", Duration::from_secs(30), 1)
            .await
            .expect("claim");
        if thief.len() == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never claimable again"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // The pool notices at its next renewal and aborts the run; the thief's lease stands.
    let run = wait_for_run_status(&env.store, &job.id, RunStatus::Lost).await;
    assert_eq!(run.error.map(|e| e.tag), Some("LeaseLost".into()));
    let job = env.queue.get(&job.id).await.expect("get").expect("job");
    assert_eq!(job.lease_owner.as_deref(), Some("thief"));
    pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_that_claims_a_job_again_stops_the_run_that_lost_it() {
    // The first attempt would run for a minute; the second finishes at once.
    let agent = AgentSpec::native(
        "second-wind",
        native_agent(|_input: Value, ctx| async move {
            if ctx.attempt() == 1 {
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
            Ok(json!({ "attempt": ctx.attempt() }))
        }),
    );
    let env = Env::new(StaticRegistry::new().with(agent)).await;
    // Free slots, and no renewal that could notice the lost lease first.
    let pool = env.pool(PoolConfig {
        worker_id: Some("same".into()),
        concurrency: 2,
        heartbeat_interval: Some(Duration::from_secs(3600)),
        reclaim_interval: Duration::from_secs(3600),
        ..fast()
    });
    let job = env
        .api
        .enqueue(NewJob::new("second-wind", &json!(null)).max_attempts(2))
        .await
        .expect("enqueue")
        .job;
    wait_for_run_status(&env.store, &job.id, RunStatus::Running).await;
    // The lease is taken away (as if it had expired), and the same pool claims the job again.
    assert_eq!(
        env.queue
            .reclaim_stale(i64::MAX)
            .await
            .expect("reclaim")
            .len(),
        1
    );
    let done = env.api.wait_for(&job.id, WAIT).await.expect("wait");
    assert_eq!(done.job.status, JobStatus::Done);
    let winner = done.run.expect("run");
    assert_eq!(winner.attempt, 2);
    assert_eq!(winner.status, RunStatus::Success);
    // The run that lost the lease is stopped, not left running beside the new one.
    let deadline = std::time::Instant::now() + WAIT;
    let first = loop {
        let runs = env
            .store
            .list_runs(&RunFilter {
                job_id: Some(job.id.clone()),
                ..Default::default()
            })
            .await
            .expect("runs");
        let first = runs
            .into_iter()
            .find(|r| r.attempt == 1)
            .expect("first run");
        if first.status != RunStatus::Running || std::time::Instant::now() > deadline {
            break first;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(first.status, RunStatus::Lost);
    assert_eq!(first.error.map(|e| e.tag), Some("LeaseLost".into()));
    pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_of_a_crashed_host_are_reclaimed_and_finished() {
    let env = Env::new(StaticRegistry::new().with(echo())).await;
    env.api
        .enqueue(
            NewJob::new("echo", &json!({ "n": 7 }))
                .id("orphan")
                .max_attempts(2),
        )
        .await
        .expect("enqueue");
    // A host claims the job and dies before doing anything.
    let claimed = env
        .queue
        .claim("crashed-host", Duration::from_millis(50), 1)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    let pool = env.pool(fast());
    let done = env.api.wait_for("orphan", WAIT).await.expect("wait");
    assert_eq!(done.job.status, JobStatus::Done);
    assert_eq!(done.job.attempts, 1, "the expired lease used up an attempt");
    let run = done.run.expect("run");
    assert_eq!(run.attempt, 2);
    let created_at = claimed[0].job.created_at;
    assert_eq!(run.id, attempt_run_id("orphan", created_at, 2));
    // The dead host recorded nothing of attempt 1; the pool that reclaimed it records its run,
    // lost, under the attempt's run id (the reclaim loop writes it just after the job went
    // back to the queue, so it may land after attempt 2 is done).
    let lost_id = attempt_run_id("orphan", created_at, 1);
    let lost = wait_for(|| async {
        let lost = env.store.get_run(&lost_id).await.expect("get");
        lost.filter(|r| r.status == RunStatus::Lost)
    })
    .await;
    assert_eq!(lost.attempt, 1);
    assert_eq!(lost.error.map(|e| e.tag).as_deref(), Some("LeaseExpired"));
    let filter = RunFilter {
        job_id: Some("orphan".into()),
        ..RunFilter::default()
    };
    let runs = env.store.list_runs(&filter).await.expect("list");
    assert_eq!(runs.len(), 2, "one run per attempt: {runs:?}");
    pool.shutdown().await;
}

/// A long-lived agent in the shape of seed 002's queue worker.
fn worker(ignores_stop: bool) -> AgentSpec {
    AgentSpec::native(
        if ignores_stop {
            "deaf-worker"
        } else {
            "worker"
        },
        native_agent(move |_input, ctx| async move {
            ctx.emit("worker_started", &json!({})).await?;
            let mut items = 0;
            loop {
                ctx.heartbeat().await;
                ctx.emit("heartbeat", &json!({ "status": "running" }))
                    .await?;
                items += 1;
                ctx.emit("item_processed", &json!({ "item": items }))
                    .await?;
                let stop = ctx.sleep(Duration::from_millis(20)).await;
                if stop && !ignores_stop {
                    break;
                }
            }
            ctx.emit("worker_stopping", &json!({ "reason": "stop requested" }))
                .await?;
            Ok(json!({ "items": items }))
        }),
    )
    .long_lived()
    .stop_grace(Duration::from_millis(200))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_long_lived_agent_is_recorded_as_completed() {
    let env = Env::new(StaticRegistry::new().with(worker(false))).await;
    let pool = env.pool(fast());
    let job = env
        .api
        .enqueue(NewJob::new("worker", &json!(null)))
        .await
        .expect("enqueue")
        .job;
    assert_eq!(job.lifecycle, drover_host::queue::Lifecycle::LongLived);
    wait_for_status(&env.queue, &job.id, JobStatus::Leased).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    pool.flush().await;
    let running = env.api.get(&job.id).await.expect("get");
    let run = running.run.expect("run");
    assert_eq!(run.status, RunStatus::Running);
    assert!(run.heartbeat_at.is_some(), "heartbeats are recorded");
    env.api.stop(&job.id).await.expect("stop");
    let done = env.api.wait_for(&job.id, WAIT).await.expect("wait");
    assert_eq!(done.job.status, JobStatus::Done);
    let run = done.run.expect("run");
    assert_eq!(run.status, RunStatus::Success);
    let events = env.api.events(&run.id, 0, 1000).await.expect("events");
    let kinds: Vec<_> = events.iter().map(|e| e.kind.as_str()).collect();
    assert!(
        kinds.iter().filter(|k| **k == "heartbeat").count() >= 2,
        "{kinds:?}"
    );
    assert_eq!(kinds[kinds.len() - 2..], ["worker_stopping", "run_end"]);
    pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_lived_agent_that_ignores_a_stop_is_interrupted() {
    let env = Env::new(StaticRegistry::new().with(worker(true))).await;
    let pool = env.pool(fast());
    let job = env
        .api
        .enqueue(NewJob::new("deaf-worker", &json!(null)))
        .await
        .expect("enqueue")
        .job;
    wait_for_status(&env.queue, &job.id, JobStatus::Leased).await;
    env.api.stop(&job.id).await.expect("stop");
    let done = env.api.wait_for(&job.id, WAIT).await.expect("wait");
    assert_eq!(done.job.status, JobStatus::Failed);
    assert_eq!(
        done.job.result_error.map(|e| e.tag),
        Some("StopTimeout".into())
    );
    assert_eq!(done.run.expect("run").status, RunStatus::Interrupted);
    pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_jobs_finish_within_the_grace_period() {
    let env = Env::new(StaticRegistry::new().with(sleeper())).await;
    let pool = env.pool(fast());
    let job = env
        .api
        .enqueue(NewJob::new("sleeper", &json!({ "ms": 300 })))
        .await
        .expect("enqueue")
        .job;
    wait_for_status(&env.queue, &job.id, JobStatus::Leased).await;
    pool.shutdown().await;
    let job = env.queue.get(&job.id).await.expect("get").expect("job");
    assert_eq!(job.status, JobStatus::Done);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_hands_unfinished_jobs_back_without_failing_them() {
    let env = Env::new(StaticRegistry::new().with(sleeper()).with(worker(false))).await;
    let pool = env.pool(PoolConfig {
        shutdown_grace: Duration::from_millis(100),
        ..fast()
    });
    let slow = env
        .api
        .enqueue(NewJob::new("sleeper", &json!({ "ms": 60_000 })))
        .await
        .expect("enqueue")
        .job;
    let agent = env
        .api
        .enqueue(NewJob::new("worker", &json!(null)))
        .await
        .expect("enqueue")
        .job;
    wait_for_status(&env.queue, &slow.id, JobStatus::Leased).await;
    wait_for_status(&env.queue, &agent.id, JobStatus::Leased).await;
    pool.shutdown().await;
    for id in [&slow.id, &agent.id] {
        let job = env.queue.get(id).await.expect("get").expect("job");
        assert_eq!(job.status, JobStatus::Queued, "{id} handed back");
        assert_eq!(job.attempts, 0, "no attempt used");
        let run = env
            .store
            .latest_run_for_job(id)
            .await
            .expect("run")
            .expect("run");
        assert_eq!(run.status, RunStatus::Interrupted);
        assert_eq!(run.error.map(|e| e.tag), Some("Shutdown".into()));
    }
    // Another pool picks the long-lived agent up again, as a new run of the same job.
    let pool = env.pool(fast());
    wait_for_status(&env.queue, &agent.id, JobStatus::Leased).await;
    env.api.stop(&agent.id).await.expect("stop");
    let done = env.api.wait_for(&agent.id, WAIT).await.expect("wait");
    assert_eq!(done.job.status, JobStatus::Done);
    assert_eq!(done.run.expect("run").attempt, 2);
    env.api.cancel(&slow.id).await.expect("cancel");
    pool.shutdown().await;
}

/// Environment variable that turns [`child_pool`] into a worker process of
/// [`two_processes_share_one_database`].
const CHILD_DIR: &str = "DROVER_TEST_CHILD_DIR";
/// The databases the children of [`two_processes_share_one_database`] share.
const CHILD_QUEUE_URL: &str = "DROVER_TEST_CHILD_QUEUE_URL";
const CHILD_STORE_URL: &str = "DROVER_TEST_CHILD_STORE_URL";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_one_database() {
    const JOBS: usize = 2000;
    let env = Env::new(StaticRegistry::new().with(echo())).await;
    let jobs: Vec<_> = (0..JOBS)
        .map(|n| NewJob::new("echo", &json!({ "n": n })).id(format!("job-{n}")))
        .collect();
    env.api.enqueue_batch(jobs).await.expect("enqueue");

    let exe = std::env::current_exe().expect("test binary");
    let children: Vec<_> = (0..2)
        .map(|i| {
            std::process::Command::new(&exe)
                .args(["--exact", "pool::child_pool", "--ignored", "--nocapture"])
                .env(CHILD_DIR, env.db.dir.path())
                .env(CHILD_QUEUE_URL, env.db.queue_url())
                .env(CHILD_STORE_URL, env.db.store_url())
                .env("DROVER_TEST_WORKER", format!("child-{i}"))
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("spawn child")
        })
        .collect();
    for mut child in children {
        let status = tokio::task::spawn_blocking(move || child.wait())
            .await
            .expect("join")
            .expect("wait");
        assert!(status.success(), "child failed: {status}");
    }

    let counts = env.queue.counts().await.expect("counts");
    assert_eq!(
        counts.get(&JobStatus::Done).copied(),
        Some(JOBS as i64),
        "{counts:?}"
    );
    let runs = env
        .store
        .list_runs(&RunFilter {
            limit: Some(1000),
            ..Default::default()
        })
        .await
        .expect("runs");
    assert!(!runs.is_empty());
    let run_counts = env.store.counts().await.expect("run counts");
    assert_eq!(
        run_counts.get(&RunStatus::Success).copied(),
        Some(JOBS as i64),
        "exactly one successful run per job: {run_counts:?}"
    );
    assert_eq!(
        run_counts.values().sum::<i64>(),
        JOBS as i64,
        "no other runs"
    );
    // Both processes did part of the work, and each job is decided by its own one run.
    let mut per_worker = std::collections::HashMap::new();
    let mut run_of_job = std::collections::HashMap::new();
    for offset in (0..JOBS).step_by(1000) {
        let page = env
            .store
            .list_runs(&RunFilter {
                limit: Some(1000),
                offset: Some(offset as u32),
                ..Default::default()
            })
            .await
            .expect("runs");
        for run in page {
            let job_id = run.job_id.clone().expect("a job's run");
            assert!(
                run_of_job.insert(job_id, run.id.clone()).is_none(),
                "one run per job"
            );
            let worker = run.worker_id.unwrap_or_default();
            let worker = worker.split(':').next().unwrap_or_default().to_string();
            *per_worker.entry(worker).or_insert(0) += 1;
        }
    }
    assert_eq!(per_worker.len(), 2, "{per_worker:?}");
    assert!(per_worker.values().all(|n| *n > 0), "{per_worker:?}");
    for offset in (0..JOBS).step_by(1000) {
        let page = env
            .queue
            .list(&JobFilter {
                limit: Some(1000),
                offset: Some(offset as u32),
                ..Default::default()
            })
            .await
            .expect("jobs");
        for job in page {
            assert_eq!(job.run_id.as_ref(), run_of_job.get(&job.id), "{}", job.id);
        }
    }
}

/// The worker process of [`two_processes_share_one_database`]: drains the shared queue, then
/// exits. Runs only when that test starts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "started as a child process by two_processes_share_one_database"]
async fn child_pool() {
    let dir = std::env::var(CHILD_DIR).expect("started by two_processes_share_one_database");
    let worker = std::env::var("DROVER_TEST_WORKER").expect("worker id");
    let dir = std::path::PathBuf::from(dir);
    let queue_url = std::env::var(CHILD_QUEUE_URL).expect("the queue's URL");
    let store_url = std::env::var(CHILD_STORE_URL).expect("the store's URL");
    let queue = Queue::with_db(
        drover_test_support::open_db(&queue_url).await,
        Default::default(),
    )
    .await
    .expect("queue");
    let store = RunStore::with_db(drover_test_support::open_db(&store_url).await)
        .await
        .expect("store");
    // Both processes start their pools together, so that both take part.
    std::fs::write(dir.join(format!("ready-{worker}")), b"").expect("ready file");
    let deadline = std::time::Instant::now() + WAIT;
    while std::fs::read_dir(&dir)
        .expect("dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("ready-"))
        .count()
        < 2
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the other process never came"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let none: Arc<dyn Sandbox> = Arc::new(NoneSandbox::new());
    let sandbox_for: SandboxFor = Arc::new(move |_job, _spec| Arc::clone(&none));
    let pool = WorkerPool::new(
        PoolDeps {
            queue: queue.clone(),
            store,
            registry: Arc::new(StaticRegistry::new().with(echo())),
            sandbox_for,
        },
        PoolConfig {
            worker_id: Some(worker),
            concurrency: 8,
            ..fast()
        },
    )
    .start();
    loop {
        let counts = queue.counts().await.expect("counts");
        let open = counts.get(&JobStatus::Queued).copied().unwrap_or(0)
            + counts.get(&JobStatus::Leased).copied().unwrap_or(0);
        if open == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pool.shutdown().await;
}

#[test]
fn every_pool_test_passes_on_multi_row_statements_and_sqld() {
    drover_test_support::rerun_on_other_databases(
        module_path!(),
        "every_pool_test_passes_on_multi_row_statements_and_sqld",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_whose_answer_was_lost_hands_its_jobs_back_without_using_an_attempt() {
    let env = Env::new(StaticRegistry::new().with(echo())).await;
    let job = env
        .api
        .enqueue(NewJob::new("echo", &json!({ "n": 1 })).max_attempts(1))
        .await
        .expect("enqueue")
        .job;
    // The claim applied in the database, under this pool's worker id, but its answer never
    // reached the pool (a dropped connection to a remote server): the job is leased to the
    // pool, which does not know it.
    let claimed = env
        .queue
        .claim("forgetful", Duration::from_millis(600), 1)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    let pool = env.pool(PoolConfig {
        worker_id: Some("forgetful".into()),
        lease_duration: Duration::from_millis(600),
        ..fast()
    });
    let done = env.api.wait_for(&job.id, WAIT).await.expect("wait");
    assert_eq!(done.job.status, JobStatus::Done, "{:?}", done.job);
    assert_eq!(done.job.attempts, 0, "the lost claim used no attempt");
    assert_eq!(done.job.lease_epoch, 2, "claimed again, and run");
    pool.shutdown().await;
}

/// Waits on "I/O" (a sleep of `input.ms`) inside `ctx.waiting`, counting the runs under way.
fn waiter(running: &Arc<AtomicUsize>, peak: &Arc<AtomicUsize>) -> AgentSpec {
    let (running, peak) = (Arc::clone(running), Arc::clone(peak));
    AgentSpec::native(
        "waiter",
        native_agent(move |input: Value, ctx| {
            let (running, peak) = (Arc::clone(&running), Arc::clone(&peak));
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                let ms = input["ms"].as_u64().unwrap_or(0);
                let slept = ctx
                    .waiting(async {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        ms
                    })
                    .await;
                running.fetch_sub(1, Ordering::SeqCst);
                Ok(json!({ "slept": slept }))
            }
        }),
    )
}

async fn enqueue_waits(env: &Env, count: usize, ms: u64) -> Vec<String> {
    let jobs: Vec<_> = (0..count)
        .map(|_| NewJob::new("waiter", &json!({ "ms": ms })))
        .collect();
    env.api
        .enqueue_batch(jobs)
        .await
        .expect("enqueue")
        .into_iter()
        .map(|e| e.job.id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_waiting_on_io_give_their_slot_to_other_jobs() {
    let (running, peak) = (Arc::default(), Arc::default());
    let env = Env::new(StaticRegistry::new().with(waiter(&running, &peak))).await;
    let ids = enqueue_waits(&env, 100, 1000).await;
    let started = std::time::Instant::now();
    let pool = env.pool(PoolConfig {
        concurrency: 2,
        max_waiting_runs: 200,
        ..fast()
    });
    let mut most_waiting = 0;
    for id in &ids {
        loop {
            most_waiting = most_waiting.max(pool.stats().waiting());
            let job = env.queue.get(id).await.expect("get").expect("job");
            if job.status == JobStatus::Done {
                break;
            }
            assert!(!job.status.is_terminal(), "{id} ended as {:?}", job.status);
            assert!(started.elapsed() < WAIT * 2, "the jobs never finished");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // Two slots, one second of waiting each: holding the slot while waiting, 100 jobs would
    // take 50 s.
    let took = started.elapsed();
    assert!(took < Duration::from_secs(20), "100 waits took {took:?}");
    assert!(
        peak.load(Ordering::SeqCst) > 2,
        "more runs than slots were under way at once: {}",
        peak.load(Ordering::SeqCst)
    );
    assert!(most_waiting > 0, "the pool counted waiting runs");
    pool.flush().await;
    assert_eq!(pool.stats().waiting(), 0);
    assert_eq!(pool.stats().in_flight(), 0);
    assert_eq!(pool.stats().runs_with_status(RunStatus::Success), 100);
    pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_runs_are_held_to_max_waiting_runs() {
    // Zero: a waiting run keeps its slot. Otherwise at most `concurrency + max_waiting_runs`
    // runs are under way.
    for max_waiting_runs in [0, 1, 3] {
        let (running, peak) = (Arc::default(), Arc::default());
        let env = Env::new(StaticRegistry::new().with(waiter(&running, &peak))).await;
        let ids = enqueue_waits(&env, 12, 200).await;
        let pool = env.pool(PoolConfig {
            concurrency: 2,
            max_waiting_runs,
            ..fast()
        });
        for id in &ids {
            let done = env.api.wait_for(id, WAIT).await.expect("wait");
            assert_eq!(done.job.status, JobStatus::Done);
        }
        let peak = peak.load(Ordering::SeqCst);
        assert!(
            (2..=2 + max_waiting_runs).contains(&peak),
            "max-waiting-runs {max_waiting_runs}: {peak} runs at once"
        );
        assert_eq!(pool.stats().waiting(), 0);
        pool.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_while_runs_wait_finishes_the_short_and_hands_back_the_rest() {
    let (running, peak) = (Arc::default(), Arc::default());
    // (The long runs are cut off mid-wait, so the count of runs under way is left as it was.)
    let env = Env::new(StaticRegistry::new().with(waiter(&running, &peak))).await;
    let long = enqueue_waits(&env, 3, 60_000).await;
    let short = enqueue_waits(&env, 2, 1_000).await;
    let pool = env.pool(PoolConfig {
        concurrency: 1,
        max_waiting_runs: 10,
        shutdown_grace: Duration::from_secs(3),
        ..fast()
    });
    // All five wait at once on the one slot.
    let deadline = std::time::Instant::now() + WAIT;
    while pool.stats().waiting() < 5 {
        assert!(std::time::Instant::now() < deadline, "never all waiting");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stats = Arc::clone(pool.stats());
    pool.shutdown().await;
    assert_eq!(stats.waiting(), 0, "no run is left counted as waiting");
    for id in &short {
        let job = env.queue.get(id).await.expect("get").expect("job");
        assert_eq!(
            job.status,
            JobStatus::Done,
            "{id} finished within the grace period"
        );
    }
    for id in &long {
        let job = env.queue.get(id).await.expect("get").expect("job");
        assert_eq!(job.status, JobStatus::Queued, "{id} handed back");
        assert_eq!(job.attempts, 0, "no attempt used");
        let run = env
            .store
            .latest_run_for_job(id)
            .await
            .expect("run")
            .expect("run");
        assert_eq!(run.status, RunStatus::Interrupted);
        assert_eq!(run.error.map(|e| e.tag), Some("Shutdown".into()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_and_abandoned_waits_leave_no_slot_or_permit_behind() {
    let tangled = AgentSpec::native(
        "tangled",
        native_agent(|input: Value, ctx| async move {
            let wait = |ms| ctx.waiting(tokio::time::sleep(Duration::from_millis(ms)));
            if input["abandon"] == json!(true) {
                // The wait loses the race, and its future is dropped mid-wait.
                tokio::select! {
                    () = wait(10_000) => return Err(ErrorInfo::new("Slow", "not cut short")),
                    () = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            } else {
                // Two waits at once (parallel calls), one inside the other's span.
                let ((), ()) = tokio::join!(wait(50), async {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    wait(80).await
                });
            }
            Ok(json!(null))
        }),
    );
    let env = Env::new(StaticRegistry::new().with(tangled)).await;
    let jobs: Vec<_> = (0..20)
        .map(|i| NewJob::new("tangled", &json!({ "abandon": i % 2 == 0 })))
        .collect();
    let ids: Vec<String> = env
        .api
        .enqueue_batch(jobs)
        .await
        .expect("enqueue")
        .into_iter()
        .map(|e| e.job.id)
        .collect();
    let pool = env.pool(PoolConfig {
        concurrency: 1,
        max_waiting_runs: 3,
        ..fast()
    });
    for id in &ids {
        let done = env.api.wait_for(id, WAIT).await.expect("wait");
        assert_eq!(done.job.status, JobStatus::Done, "{:?}", done.run);
    }
    // Abandoned waits take their slot back in the background.
    let deadline = std::time::Instant::now() + WAIT;
    while pool.stats().waiting() != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "a waiting permit was never given back"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The one slot and every permit are still there: more jobs run, and wait, as before.
    let more: Vec<_> = (0..6)
        .map(|i| NewJob::new("tangled", &json!({ "abandon": i % 2 == 0 })))
        .collect();
    for view in env.api.enqueue_batch(more).await.expect("enqueue") {
        let done = env.api.wait_for(&view.job.id, WAIT).await.expect("wait");
        assert_eq!(done.job.status, JobStatus::Done);
    }
    pool.shutdown().await;
}
