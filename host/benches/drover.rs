//! The benchmark harness. Every figure is measured beside a baseline in the same run and reported
//! as a ratio, because on shared machines only ratios hold.
//!
//! ```sh
//! cargo bench -p drover-host --bench drover              # full run, writes docs/BENCHMARKS.md
//! cargo bench -p drover-host --bench drover -- --quick   # small sizes, proves the harness works
//! cargo bench -p drover-host --bench drover -- --only throughput   # one benchmark
//! cargo bench -p drover-host --bench drover -- --only sync   # the two sync modes side by side
//! cargo bench -p drover-host --bench drover -- --only gateway   # the model gateway's overhead
//! cargo bench -p drover-host --bench drover -- --only tools  # a tool call vs a native function
//! cargo bench -p drover-host --bench drover -- --only outbound  # a guest's HTTP request vs reqwest
//! cargo bench -p drover-host --bench drover -- --only waiting  # 10,000 runs waiting on a model
//! cargo bench -p drover-host --bench drover -- --only fair  # claims with fair shares vs without
//! cargo bench -p drover-host --bench drover -- --only children  # spawn + wait of a child vs enqueue + wait
//! cargo bench -p drover-host --bench drover -- --only inbox  # a message round trip to a long-lived agent
//! cargo bench -p drover-host --bench drover -- --only remote  # hosts on sqld, a slow link, cancels across hosts
//! cargo bench -p drover-host --bench drover -- --only languages  # TypeScript and Python agents beside Rust
//! ```
//!
//! `cargo test` runs this harness too (without `--bench`), in quick mode, so that the test suite
//! proves it still works; its figures are then from an unoptimized build and mean nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use drover_host::db::{Db, DbOptions, SyncMode};
use drover_host::pool::{PoolConfig, PoolDeps, PoolHandle, WorkerPool};
use drover_host::queue::{
    FairShare, Finish, FinishKind, JobStatus, KeyExpr, Lifecycle, NewJob, Queue, QueueOptions,
};
use drover_host::registry::{AgentSpec, Registry, StaticRegistry};
use drover_host::sandbox::native_agent;
use drover_host::sandbox::wasm::{EngineConfig, Metering, WasmRuntime, WasmSandbox};
use drover_host::sandbox::{NoneSandbox, RunContext, RunIdentity, Sandbox, SandboxFor};
use drover_host::store::{RunStatus, RunStore};
use serde_json::json;
use serde_json::value::RawValue;

#[path = "drover/languages.rs"]
mod languages;
#[path = "drover/remote.rs"]
mod remote;

/// The same allocator as the `drover-host` binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How much work each benchmark does.
#[derive(Clone, Copy)]
struct Scale {
    quick: bool,
}

impl Scale {
    fn pick<T>(self, quick: T, full: T) -> T {
        if self.quick { quick } else { full }
    }
}

/// One line of the report.
struct Row {
    name: String,
    figure: String,
    baseline: String,
    ratio: f64,
    target: String,
    /// `Some(true)`: target met; `Some(false)`: missed; `None`: no target.
    met: Option<bool>,
}

impl Row {
    fn verdict(&self) -> &'static str {
        match self.met {
            Some(true) => "met",
            Some(false) => "**missed**",
            None => "—",
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes `--bench`; anything else (`cargo test`) gets the quick mode.
    let quick = args.iter().any(|a| a == "--quick") || !args.iter().any(|a| a == "--bench");
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let wanted = |name: &str| only.as_deref().is_none_or(|o| o == name);
    let scale = Scale { quick };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let work = tempfile::tempdir().expect("temp dir");
    if let Some(i) = args.iter().position(|a| a == DENSITY_CHILD) {
        // One density measurement, alone in this process (see `density`).
        let mode = match args.get(i + 1).map(String::as_str) {
            Some("wasm") => Worker::Rust,
            Some("js") => Worker::JavaScript,
            _ => Worker::Native,
        };
        let n = args
            .get(i + 2)
            .and_then(|n| n.parse().ok())
            .expect("agent count");
        let (rss, lateness) = runtime.block_on(live_agents(n, mode, work.path()));
        println!("{rss} {lateness}");
        return;
    }
    if let Some(i) = args.iter().position(|a| a == WAITING_CHILD) {
        // One waiting-runs measurement, alone in this process (see `waiting_runs`).
        let mode = args.get(i + 1).expect("mode");
        let n = args
            .get(i + 2)
            .and_then(|n| n.parse().ok())
            .expect("run count");
        let base_url = args.get(i + 3).expect("model server");
        let (rss, secs, most) = runtime.block_on(waiting_child(mode, n, base_url, work.path()));
        println!("{rss} {secs} {most}");
        return;
    }
    let mut rows = Vec::new();

    let dir = work.path();
    if wanted("per-job") {
        eprintln!("[1/7] per-job instance cost");
        rows.extend(runtime.block_on(per_job_cost(scale, dir)));
    }
    if wanted("throughput") {
        eprintln!("[2/7] end-to-end durable throughput");
        rows.extend(runtime.block_on(throughput(scale, dir)));
    }
    if wanted("backlog") {
        eprintln!("[2b/6] throughput beside a backlog of scheduled jobs");
        rows.extend(runtime.block_on(scheduled_backlog(scale, dir)));
    }
    if wanted("cancel") {
        eprintln!("[3/7] cancel latency");
        rows.extend(runtime.block_on(cancel_latency(scale, dir)));
    }
    if wanted("density") {
        eprintln!("[4/7] density of long-lived agents");
        rows.extend(density(scale));
    }
    if wanted("quota") {
        eprintln!("[5/7] quota overhead");
        rows.extend(runtime.block_on(quota_overhead(scale, dir)));
    }
    if wanted("cold-start") {
        eprintln!("[6/7] cold vs warm start");
        rows.extend(runtime.block_on(cold_start(scale, dir)));
    }
    if wanted("sync") {
        eprintln!("[7/7] synchronous=FULL vs NORMAL");
        rows.extend(runtime.block_on(sync_modes(scale, dir)));
    }
    if wanted("gateway") {
        eprintln!("[8/9] model gateway overhead");
        rows.extend(runtime.block_on(gateway_overhead(scale)));
        rows.extend(runtime.block_on(guest_model_call(scale, dir)));
    }
    if wanted("waiting") {
        eprintln!("[10] runs waiting on a slow model");
        rows.extend(runtime.block_on(waiting_runs(scale)));
    }
    if wanted("tools") {
        eprintln!("[9/9] tool call: fresh instance + call vs a native function");
        rows.extend(runtime.block_on(tool_call(scale, dir)));
    }
    if wanted("fair") {
        eprintln!("[11] claims with fair shares across 100 tenants");
        rows.extend(runtime.block_on(fair_claims(scale, dir)));
    }
    if wanted("outbound") {
        eprintln!("[12] outbound HTTP: a guest's request vs a host-side reqwest call");
        rows.extend(runtime.block_on(outbound_request(scale, dir)));
    }
    if wanted("children") {
        eprintln!("[13] a parent's spawn + wait of a child vs enqueue + wait from the Rust API");
        rows.extend(runtime.block_on(child_round_trip(scale, dir)));
    }
    if wanted("inbox") {
        eprintln!("[14] a message round trip to a long-lived agent vs a GET of its job");
        rows.extend(runtime.block_on(inbox_round_trip(scale, dir)));
    }
    if wanted("languages") {
        eprintln!("[16] agents in TypeScript and Python beside Rust");
        rows.extend(runtime.block_on(languages::languages(scale, dir)));
        rows.extend(languages::density(scale));
    }
    if wanted("remote") {
        eprintln!("[15] several hosts on one libsql server (sqld)");
        rows.extend(runtime.block_on(remote::remote_hosts(scale, dir)));
    }
    if only.is_some() {
        // A partial run is for investigating; it does not replace the report.
        println!("{}", report(&rows, scale));
        return;
    }

    let report = report(&rows, scale);
    println!("{report}");
    let out = if quick {
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("BENCHMARKS.quick.md")
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/BENCHMARKS.md")
    };
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent).expect("report directory");
    }
    std::fs::write(&out, report).expect("write report");
    eprintln!("wrote {}", out.display());
}

// ---------------------------------------------------------------------------------------------
// 1. Per-job instance cost

async fn per_job_cost(scale: Scale, work: &Path) -> Vec<Row> {
    let iterations = scale.pick(2_000, 20_000);
    let runtime = wasm_runtime(work, 64, Metering::ON);
    let wasm_spec = component_spec(&runtime, "echo", drover_test_support::ECHO).await;
    let wasm: Arc<dyn Sandbox> = Arc::new(WasmSandbox::new(Arc::clone(&runtime)));
    let native_spec = native_echo();
    let none: Arc<dyn Sandbox> = Arc::new(NoneSandbox::new());
    let input: Arc<RawValue> =
        Arc::from(RawValue::from_string(r#"{"n":42}"#.into()).expect("json"));

    // Alternate between the two in rounds, so that both see the same moments of a noisy machine.
    let (mut wasm_times, mut native_times) = (Vec::new(), Vec::new());
    for _ in 0..10 {
        wasm_times.extend(time_runs(&wasm, &wasm_spec, &input, iterations / 10).await);
        native_times.extend(time_runs(&none, &native_spec, &input, iterations / 10).await);
    }
    let (w50, w99) = (percentile(&wasm_times, 0.50), percentile(&wasm_times, 0.99));
    let (n50, n99) = (
        percentile(&native_times, 0.50),
        percentile(&native_times, 0.99),
    );
    vec![
        Row {
            name: format!(
                "Per-job instance cost, p50 ({iterations} runs): new store + instantiate + call + drop of `echo` in the wasm sandbox, vs the native agent in the none sandbox"
            ),
            figure: micros(w50),
            baseline: micros(n50),
            ratio: w50 / n50,
            target: "≤ 15 µs".into(),
            met: Some(w50 <= 15e-6),
        },
        Row {
            name: "Per-job instance cost, p99".into(),
            figure: micros(w99),
            baseline: micros(n99),
            ratio: w99 / n99,
            target: String::new(),
            met: None,
        },
    ]
}

async fn time_runs(
    sandbox: &Arc<dyn Sandbox>,
    spec: &AgentSpec,
    input: &Arc<RawValue>,
    iterations: usize,
) -> Vec<f64> {
    let run = |i: usize| {
        let ctx = RunContext::detached(
            RunIdentity {
                run_id: Arc::from(format!("bench-{i}")),
                job_id: String::new(),
                agent_id: spec.id.clone(),
                attempt: 1,
                tenant_id: None,
                user_id: None,
                root_job_id: None,
            },
            None,
        );
        sandbox.run(spec, Arc::clone(input), ctx)
    };
    for i in 0..iterations / 10 {
        let outcome = run(i).await;
        assert!(outcome.result.is_ok(), "{:?}", outcome.result);
    }
    let mut times = Vec::with_capacity(iterations);
    for i in 0..iterations {
        let started = Instant::now();
        let outcome = run(i).await;
        times.push(started.elapsed().as_secs_f64());
        assert!(outcome.result.is_ok());
    }
    times
}

// ---------------------------------------------------------------------------------------------
// 2. End-to-end durable throughput

async fn throughput(scale: Scale, work: &Path) -> Vec<Row> {
    let jobs = scale.pick(2_000, 20_000);
    let rounds = scale.pick(1, 3);
    let concurrency = 32;
    // The most the pool claims at once: its slots, and as many again claimed ahead.
    let batch = 2 * concurrency;
    let runtime = wasm_runtime(work, 256, Metering::ON);
    let echo = component_spec(&runtime, "echo", drover_test_support::ECHO).await;
    let registry: Arc<dyn Registry> = Arc::new(StaticRegistry::new().with(echo));

    // Drain and floor alternate, each on fresh databases, and each reports its median round.
    let (mut drains, mut floors, mut enqueues, mut claim_sizes) = (vec![], vec![], vec![], vec![]);
    for _ in 0..rounds {
        // The drain: fresh wasm instance per job, runs and events recorded.
        let dir = tempfile::tempdir_in(work).expect("dir");
        let (queue, store) = databases(dir.path()).await;
        let enqueue_started = Instant::now();
        enqueue_echo(&queue, jobs).await;
        enqueues.push(jobs as f64 / enqueue_started.elapsed().as_secs_f64());
        let wasm: Arc<dyn Sandbox> = Arc::new(WasmSandbox::new(Arc::clone(&runtime)));
        let started = Instant::now();
        let pool = start_pool(&queue, &store, &registry, wasm, concurrency, 1);
        wait_for_runs(&pool, jobs as u64).await;
        pool.flush().await;
        let elapsed = started.elapsed();
        claim_sizes.push(pool.stats().claimed() as f64 / pool.stats().claims().max(1) as f64);
        pool.shutdown().await;
        let counts = queue.counts().await.expect("counts");
        assert_eq!(
            counts.get(&JobStatus::Done).copied(),
            Some(jobs as i64),
            "{counts:?}"
        );
        let runs = store.counts().await.expect("run counts");
        assert_eq!(runs.get(&RunStatus::Success).copied(), Some(jobs as i64));
        drains.push(jobs as f64 / elapsed.as_secs_f64());

        // The floor: the same claim (of the jobs lane) and fenced complete statements, no
        // agent, no runs, in
        // batches as large as the pool's largest claim.
        let floor_dir = tempfile::tempdir_in(work).expect("dir");
        let (floor_queue, _) = databases(floor_dir.path()).await;
        enqueue_echo(&floor_queue, jobs).await;
        let started = Instant::now();
        let mut done = 0;
        loop {
            let claimed = floor_queue
                .claim_lifecycle(
                    "floor",
                    Duration::from_secs(30),
                    batch,
                    Some(drover_host::queue::Lifecycle::Job),
                )
                .await
                .expect("claim");
            if claimed.is_empty() {
                break;
            }
            let outcomes: Vec<Finish> = claimed
                .iter()
                .map(|c| Finish {
                    lease: c.lease.clone(),
                    kind: FinishKind::Complete,
                    run_id: None,
                    result_status: Some("success".into()),
                })
                .collect();
            done += floor_queue.finish(&outcomes).await.expect("finish").len();
        }
        assert_eq!(done, jobs);
        floors.push(jobs as f64 / started.elapsed().as_secs_f64());
    }
    let (drained, floor) = (percentile(&drains, 0.5), percentile(&floors, 0.5));
    let (enqueue_rate, claim_size) = (percentile(&enqueues, 0.5), percentile(&claim_sizes, 0.5));

    vec![
        Row {
            name: format!(
                "Durable throughput (median of {rounds}): drain {jobs} `echo` jobs through `file:` libsql with {concurrency} slots, a fresh wasm instance per job, runs and events recorded (claims of {claim_size:.0} jobs on average); vs the bare queue floor (claim + fenced complete, batches of {batch})"
            ),
            figure: format!("{drained:.0} jobs/s"),
            baseline: format!("{floor:.0} jobs/s"),
            ratio: drained / floor,
            target: "≥ 30,000 jobs/s and ≥ 0.35 of the floor".into(),
            met: Some(drained >= 30_000.0 && drained / floor >= 0.35),
        },
        Row {
            name: format!(
                "Batched enqueue of the same {jobs} jobs (batches of 1,000; one statement each)"
            ),
            figure: format!("{enqueue_rate:.0} jobs/s"),
            baseline: format!("{floor:.0} jobs/s (floor drain)"),
            ratio: enqueue_rate / floor,
            target: String::new(),
            met: None,
        },
    ]
}

/// Drains due jobs from a table that also holds a large backlog of jobs scheduled for
/// tomorrow (at a higher priority than the due ones, so that a claim walking the queue in
/// priority order would meet them all first), against the same drain from an empty table.
/// Claims read only due jobs, so the backlog should cost next to nothing.
async fn scheduled_backlog(scale: Scale, work: &Path) -> Vec<Row> {
    let jobs = scale.pick(2_000, 20_000);
    let backlog = scale.pick(20_000, 1_000_000);
    let rounds = scale.pick(1, 3);
    let concurrency = 32;
    let runtime = wasm_runtime(work, 256, Metering::ON);
    let echo = component_spec(&runtime, "echo", drover_test_support::ECHO).await;
    let registry: Arc<dyn Registry> = Arc::new(StaticRegistry::new().with(echo));
    let wasm: Arc<dyn Sandbox> = Arc::new(WasmSandbox::new(Arc::clone(&runtime)));

    let backlog_dir = tempfile::tempdir_in(work).expect("dir");
    let (backlog_queue, backlog_store) = databases(backlog_dir.path()).await;
    let tomorrow = drover_host::time::now_ms() + 86_400_000;
    for chunk in (0..backlog).collect::<Vec<_>>().chunks(1000) {
        let batch = chunk
            .iter()
            .map(|n| {
                NewJob::new("echo", &json!({ "n": n }))
                    .priority(10)
                    .scheduled_for(tomorrow)
            })
            .collect();
        backlog_queue.enqueue_batch(batch).await.expect("enqueue");
    }

    let drain = |queue: Queue, store: RunStore| {
        let registry = Arc::clone(&registry);
        let wasm = Arc::clone(&wasm);
        async move {
            enqueue_echo(&queue, jobs).await;
            let started = Instant::now();
            let pool = start_pool(&queue, &store, &registry, wasm, concurrency, 1);
            wait_for_runs(&pool, jobs as u64).await;
            pool.flush().await;
            let elapsed = started.elapsed();
            pool.shutdown().await;
            jobs as f64 / elapsed.as_secs_f64()
        }
    };
    let (mut with_backlog, mut empty) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        with_backlog.push(drain(backlog_queue.clone(), backlog_store.clone()).await);
        let dir = tempfile::tempdir_in(work).expect("dir");
        let (queue, store) = databases(dir.path()).await;
        empty.push(drain(queue, store).await);
    }
    let scheduled = backlog_queue.counts().await.expect("counts");
    assert_eq!(
        scheduled.get(&JobStatus::Scheduled).copied(),
        Some(backlog as i64),
        "the backlog stayed scheduled"
    );
    let (with_backlog, empty) = (percentile(&with_backlog, 0.5), percentile(&empty, 0.5));
    vec![Row {
        name: format!(
            "Throughput beside a backlog (median of {rounds}): drain {jobs} due `echo` jobs from a table that also holds {backlog} jobs scheduled for tomorrow at a higher priority; vs the same drain from an empty table"
        ),
        figure: format!("{with_backlog:.0} jobs/s"),
        baseline: format!("{empty:.0} jobs/s"),
        ratio: with_backlog / empty,
        target: "≥ 0.8 of the empty table".into(),
        met: Some(with_backlog / empty >= 0.8),
    }]
}

// ---------------------------------------------------------------------------------------------
// 11. Claims with fair shares

/// The bare queue drain of the throughput floor (claims of the jobs lane in batches of 64, each
/// followed by a fenced complete of the batch) over jobs of 100 tenants, with fair shares by
/// tenant (with a cap per tenant high enough never to bind, so that every claim counts each
/// tenant's leased jobs; and without caps) and without fair shares.
async fn fair_claims(scale: Scale, work: &Path) -> Vec<Row> {
    let jobs = scale.pick(2_000, 100_000);
    let tenants = 100;
    let batch = 64;
    let rounds = scale.pick(1, 3);
    let fair = FairShare::new(KeyExpr::Tenant).max_running(1_000_000);
    let drain = |fair_share: Option<FairShare>| async move {
        let dir = tempfile::tempdir_in(work).expect("dir");
        let url = format!("file:{}", dir.path().join("queue.db").display());
        let db = Db::open_with(&url, None, DbOptions::default())
            .await
            .expect("open db");
        let queue = Queue::with_db(
            db,
            QueueOptions {
                fair_share,
                ..QueueOptions::default()
            },
        )
        .await
        .expect("queue");
        for start in (0..jobs).step_by(1000) {
            let chunk = (start..jobs.min(start + 1000))
                .map(|n| {
                    let mut job = NewJob::new("echo", &json!({ "n": n }));
                    job.tenant_id = Some(format!("tenant-{}", n % tenants));
                    job
                })
                .collect();
            queue.enqueue_batch(chunk).await.expect("enqueue");
        }
        let started = Instant::now();
        let mut done = 0;
        loop {
            let claimed = queue
                .claim_lifecycle(
                    "bench",
                    Duration::from_secs(30),
                    batch,
                    Some(Lifecycle::Job),
                )
                .await
                .expect("claim");
            if claimed.is_empty() {
                break;
            }
            let outcomes: Vec<Finish> = claimed
                .iter()
                .map(|c| Finish {
                    lease: c.lease.clone(),
                    kind: FinishKind::Complete,
                    run_id: None,
                    result_status: Some("success".into()),
                })
                .collect();
            done += queue.finish(&outcomes).await.expect("finish").len();
        }
        assert_eq!(done, jobs);
        jobs as f64 / started.elapsed().as_secs_f64()
    };
    let turns = FairShare::new(KeyExpr::Tenant);
    let (mut capped, mut uncapped, mut off) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        capped.push(drain(Some(fair.clone())).await);
        off.push(drain(None).await);
        uncapped.push(drain(Some(turns.clone())).await);
    }
    let off = percentile(&off, 0.5);
    [
        (capped, "taking turns by tenant, with a cap counted per tenant"),
        (uncapped, "taking turns by tenant, without caps"),
    ]
    .into_iter()
    .map(|(on, how)| {
        let on = percentile(&on, 0.5);
        Row {
            name: format!(
                "Claims with fair shares (median of {rounds}): drain {jobs} jobs of {tenants} tenants through `file:` libsql, claims of {batch} and a fenced complete each, {how}; vs the same drain without fair shares"
            ),
            figure: format!("{on:.0} jobs/s"),
            baseline: format!("{off:.0} jobs/s"),
            ratio: on / off,
            target: "≥ 0.8 of the drain without fair shares".into(),
            met: Some(on / off >= 0.8),
        }
    })
    .collect()
}

// ---------------------------------------------------------------------------------------------
// 7. synchronous=FULL vs NORMAL

/// The same work on database files synced at every commit (`full`, the default) and at
/// checkpoints only (`normal`): single enqueues, each its own acknowledged commit, and the
/// durable drain of the throughput benchmark. Reported as full / normal.
async fn sync_modes(scale: Scale, work: &Path) -> Vec<Row> {
    let jobs = scale.pick(1_000, 10_000);
    let singles = scale.pick(100, 1_000);
    let rounds = scale.pick(1, 3);
    let concurrency = 32;
    let runtime = wasm_runtime(work, 256, Metering::ON);
    let echo = component_spec(&runtime, "echo", drover_test_support::ECHO).await;
    let registry: Arc<dyn Registry> = Arc::new(StaticRegistry::new().with(echo));
    let modes = [SyncMode::Full, SyncMode::Normal];
    let (mut enqueues, mut drains) = ([vec![], vec![]], [vec![], vec![]]);
    // The modes alternate, each on fresh databases, so both see the same moments of the disk.
    for _ in 0..rounds {
        for (i, sync) in modes.into_iter().enumerate() {
            let dir = tempfile::tempdir_in(work).expect("dir");
            let (queue, store) = databases_with(dir.path(), sync).await;
            let started = Instant::now();
            for n in 0..singles {
                queue
                    .enqueue(NewJob::new("echo", &json!({ "n": n })))
                    .await
                    .expect("enqueue");
            }
            enqueues[i].push(singles as f64 / started.elapsed().as_secs_f64());
            enqueue_echo(&queue, jobs).await;
            let total = jobs + singles;
            let wasm: Arc<dyn Sandbox> = Arc::new(WasmSandbox::new(Arc::clone(&runtime)));
            let started = Instant::now();
            let pool = start_pool(&queue, &store, &registry, wasm, concurrency, 1);
            wait_for_runs(&pool, total as u64).await;
            pool.flush().await;
            drains[i].push(total as f64 / started.elapsed().as_secs_f64());
            pool.shutdown().await;
            let done = queue.counts().await.expect("counts");
            assert_eq!(done.get(&JobStatus::Done).copied(), Some(total as i64));
        }
    }
    let median =
        |samples: &[Vec<f64>; 2]| [percentile(&samples[0], 0.5), percentile(&samples[1], 0.5)];
    let ([enqueue_full, enqueue_normal], [drain_full, drain_normal]) =
        (median(&enqueues), median(&drains));
    vec![
        Row {
            name: format!(
                "Single enqueues (median of {rounds}): {singles} `enqueue` calls one after another, each its own commit, on a `file:` queue with `DROVER_DB_SYNC=full`; vs `normal`"
            ),
            figure: format!("{enqueue_full:.0} jobs/s"),
            baseline: format!("{enqueue_normal:.0} jobs/s"),
            ratio: enqueue_full / enqueue_normal,
            target: String::new(),
            met: None,
        },
        Row {
            name: format!(
                "Durable drain (median of {rounds}): {} `echo` jobs as in the throughput benchmark, `DROVER_DB_SYNC=full`; vs `normal`",
                jobs + singles
            ),
            figure: format!("{drain_full:.0} jobs/s"),
            baseline: format!("{drain_normal:.0} jobs/s"),
            ratio: drain_full / drain_normal,
            target: String::new(),
            met: None,
        },
    ]
}

async fn enqueue_echo(queue: &Queue, jobs: usize) {
    enqueue_for(queue, "echo", jobs).await;
}

/// Enqueues `jobs` jobs `{n}` for `agent`, in batches.
async fn enqueue_for(queue: &Queue, agent: &str, jobs: usize) {
    for chunk in (0..jobs).collect::<Vec<_>>().chunks(1000) {
        let batch = chunk
            .iter()
            .map(|n| NewJob::new(agent, &json!({ "n": n })))
            .collect();
        queue.enqueue_batch(batch).await.expect("enqueue");
    }
}

async fn wait_for_runs(pool: &PoolHandle, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while pool.stats().runs_with_status(RunStatus::Success) < n {
        assert!(Instant::now() < deadline, "the pool did not finish");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Cancel latency

async fn cancel_latency(scale: Scale, work: &Path) -> Vec<Row> {
    let rounds = scale.pick(8, 40);
    let runtime = wasm_runtime(work, 64, Metering::ON);
    let mut chaos = component_spec(&runtime, "chaos", drover_test_support::CHAOS).await;
    chaos.limits.fuel = None;
    chaos.limits.timeout = None;
    let spinner = AgentSpec::native(
        "native-spin",
        native_agent(|_input, _ctx| async move {
            loop {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }),
    );
    let registry: Arc<dyn Registry> = Arc::new(StaticRegistry::new().with(chaos).with(spinner));
    let dir = tempfile::tempdir_in(work).expect("dir");
    let (queue, store) = databases(dir.path()).await;
    let wasm: Arc<dyn Sandbox> = Arc::new(WasmSandbox::new(Arc::clone(&runtime)));
    let none: Arc<dyn Sandbox> = Arc::new(NoneSandbox::new());
    let sandbox_for: SandboxFor = Arc::new(move |_job, spec| {
        if spec.is_wasm() {
            Arc::clone(&wasm)
        } else {
            Arc::clone(&none)
        }
    });
    let pool = WorkerPool::new(
        PoolDeps {
            queue: queue.clone(),
            store: store.clone(),
            registry: Arc::clone(&registry),
            sandbox_for,
        },
        PoolConfig {
            concurrency: LOAD + 4,
            ..PoolConfig::default()
        },
    )
    .start();
    let api = drover_host::api::RunApi::new(queue.clone(), store, registry);
    let measure = async |agent: &str, input: serde_json::Value| {
        let mut times = Vec::new();
        for _ in 0..rounds {
            let job = api
                .enqueue(NewJob::new(agent, &input))
                .await
                .expect("enqueue")
                .job;
            while queue.get(&job.id).await.expect("get").expect("job").status != JobStatus::Leased {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            // Let the guest get deep into its loop.
            tokio::time::sleep(Duration::from_millis(30)).await;
            let started = Instant::now();
            api.cancel(&job.id).await.expect("cancel");
            let view = api
                .wait_for(&job.id, Duration::from_secs(30))
                .await
                .expect("wait");
            times.push(started.elapsed().as_secs_f64());
            assert_eq!(view.job.status, JobStatus::Failed);
        }
        times
    };
    let wasm_times = measure("chaos", json!({ "mode": "spin" })).await;
    let native_times = measure("native-spin", json!(null)).await;
    // The same cancels while other guests spin flat out on every core: the cancel travels
    // through the API and the pool, which must not wait behind guest CPU.
    let mut load = Vec::new();
    for _ in 0..LOAD {
        let job = api
            .enqueue(NewJob::new("chaos", &json!({ "mode": "spin" })))
            .await
            .expect("enqueue")
            .job;
        load.push(job.id);
    }
    for id in &load {
        while queue.get(id).await.expect("get").expect("job").status != JobStatus::Leased {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let loaded_times = measure("chaos", json!({ "mode": "spin" })).await;
    for id in &load {
        api.cancel(id).await.expect("cancel");
    }
    pool.shutdown().await;
    let (l50, l99) = (
        percentile(&loaded_times, 0.5),
        percentile(&loaded_times, 0.99),
    );
    let (w50, w99) = (percentile(&wasm_times, 0.5), percentile(&wasm_times, 0.99));
    let (n50, n99) = (
        percentile(&native_times, 0.5),
        percentile(&native_times, 0.99),
    );
    vec![
        Row {
            name: format!(
                "Cancel latency, p99 ({rounds} cancels): from `cancel` to the job being terminal, a wasm guest spinning in pure compute; vs a native agent that yields"
            ),
            figure: millis(w99),
            baseline: millis(n99),
            ratio: w99 / n99,
            target: "≤ 100 ms".into(),
            met: Some(w99 <= 0.100),
        },
        Row {
            name: "Cancel latency, p50".into(),
            figure: millis(w50),
            baseline: millis(n50),
            ratio: w50 / n50,
            target: String::new(),
            met: None,
        },
        Row {
            name: format!(
                "Cancel latency under load, p99 ({rounds} cancels): the same, while {LOAD} other wasm guests spin in pure compute; vs no load"
            ),
            figure: millis(l99),
            baseline: millis(w99),
            ratio: l99 / w99,
            target: "≤ 100 ms".into(),
            met: Some(l99 <= 0.100),
        },
        Row {
            name: "Cancel latency under load, p50".into(),
            figure: millis(l50),
            baseline: millis(w50),
            ratio: l50 / w50,
            target: String::new(),
            met: None,
        },
    ]
}

/// Guests spinning beside the cancels of the loaded cancel measurement.
const LOAD: usize = 50;

// ---------------------------------------------------------------------------------------------
// 4. Density of long-lived agents

fn density(scale: Scale) -> Vec<Row> {
    let steps: &[usize] = if scale.quick {
        &[100]
    } else {
        &[1_000, 5_000, 10_000]
    };
    let mut rows = Vec::new();
    for &n in steps {
        let (wasm_rss, wasm_late) = density_in_child(n, "wasm");
        let (native_rss, native_late) = density_in_child(n, "native");
        rows.push(Row {
            name: format!("Density, {n} long-lived `queue-worker` agents idling and heartbeating every second in one host: resident memory per agent; vs the same loop as a native agent"),
            figure: kib(wasm_rss),
            baseline: kib(native_rss),
            ratio: wasm_rss / native_rss.max(1.0),
            target: if n == 10_000 { "≤ 200 KiB at 10,000".into() } else { String::new() },
            met: (n == 10_000).then_some(wasm_rss <= 200.0 * 1024.0),
        });
        rows.push(Row {
            name: format!("Density, {n} agents: heartbeat lateness p99 (gap between heartbeats beyond the 1 s interval, over 4 s once every agent has heartbeaten)"),
            figure: millis(wasm_late),
            baseline: millis(native_late),
            ratio: wasm_late / native_late.max(1e-4),
            target: String::new(),
            met: None,
        });
    }
    rows
}

/// The argument that makes this harness measure one density step and print the result.
const DENSITY_CHILD: &str = "--density-child";

/// Runs [`live_agents`] in a fresh process, so that memory freed by an earlier step cannot be
/// reused by this one and hide its cost.
fn density_in_child(n: usize, mode: &str) -> (f64, f64) {
    let exe = std::env::current_exe().expect("benchmark executable");
    let output = std::process::Command::new(exe)
        .args([DENSITY_CHILD, mode, &n.to_string()])
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("start a density measurement");
    assert!(output.status.success(), "density measurement failed");
    let text = String::from_utf8_lossy(&output.stdout);
    let mut figures = text
        .lines()
        .last()
        .unwrap_or_default()
        .split_whitespace()
        .map(|f| f.parse::<f64>().expect("figure"));
    let rss = figures.next().expect("rss");
    let lateness = figures.next().expect("lateness");
    (rss, lateness)
}

/// Which long-lived agent [`live_agents`] runs.
#[derive(Clone, Copy, PartialEq)]
enum Worker {
    /// The `queue-worker` component.
    Rust,
    /// The `queue-worker-js` component.
    JavaScript,
    /// The same loop as a native agent.
    Native,
}

/// Starts `n` long-lived agents (wasm queue workers, or the same loop natively), lets them
/// heartbeat for a few seconds, and returns the resident memory per agent and the p99
/// heartbeat lateness.
async fn live_agents(n: usize, worker: Worker, work: &Path) -> (f64, f64) {
    const INTERVAL_MS: i64 = 1000;
    let dir = tempfile::tempdir_in(work).expect("dir");
    let (queue, store) = databases(dir.path()).await;
    let runtime = wasm_runtime(work, u32::try_from(n + 16).expect("n"), Metering::ON);
    let spec = if worker == Worker::Rust {
        let mut spec = component_spec(&runtime, "worker", drover_test_support::QUEUE_WORKER).await;
        spec.env
            .insert("POLL_INTERVAL_MS".into(), INTERVAL_MS.to_string());
        spec
    } else if worker == Worker::JavaScript {
        component_spec(&runtime, "worker", drover_test_support::QUEUE_WORKER_JS).await
    } else {
        AgentSpec::native(
            "worker",
            native_agent(|_input, ctx| async move {
                ctx.emit("worker_started", &json!({ "intervalMs": INTERVAL_MS }))
                    .await?;
                let mut items = 0u64;
                loop {
                    ctx.heartbeat().await;
                    ctx.emit("heartbeat", &json!({ "status": "running" }))
                        .await?;
                    items += 1;
                    ctx.emit("item_processed", &json!({ "item": items }))
                        .await?;
                    if ctx.sleep(Duration::from_millis(INTERVAL_MS as u64)).await {
                        break;
                    }
                }
                Ok(json!({ "itemsProcessed": items }))
            }),
        )
        .long_lived()
    };
    let registry: Arc<dyn Registry> = Arc::new(StaticRegistry::new().with(spec));
    let sandbox: Arc<dyn Sandbox> = if worker != Worker::Native {
        Arc::new(WasmSandbox::new(Arc::clone(&runtime)))
    } else {
        Arc::new(NoneSandbox::new())
    };
    let pool = start_pool(&queue, &store, &registry, sandbox, 4, n);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_bytes();
    let jobs: Vec<NewJob> = (0..n)
        .map(|i| {
            NewJob::new("worker", &json!({ "intervalMs": INTERVAL_MS }))
                .id(format!("agent-{i}"))
                .lifecycle(drover_host::queue::Lifecycle::LongLived)
        })
        .collect();
    queue.enqueue_batch(jobs).await.expect("enqueue");
    let deadline = Instant::now() + Duration::from_secs(300);
    while pool.stats().in_flight() < n as i64 {
        assert!(Instant::now() < deadline, "agents did not all start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Steady state: every agent is instantiated and has heartbeaten at least once.
    while heartbeating_runs(&store).await < n {
        assert!(Instant::now() < deadline, "agents did not all heartbeat");
        pool.flush().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let measured_from = drover_host::time::now_ms();
    tokio::time::sleep(Duration::from_secs(4)).await;
    pool.flush().await;
    let after = rss_bytes();
    let lateness = heartbeat_lateness(&store, measured_from, INTERVAL_MS).await;
    let per_agent = (after.saturating_sub(before)) as f64 / n as f64;
    pool.shutdown().await;
    (per_agent, lateness)
}

/// How many runs have recorded a heartbeat event.
async fn heartbeating_runs(store: &RunStore) -> usize {
    let counted = store
        .db()
        .run(|conn| async move {
            drover_host::db::query_all(
                &conn,
                "SELECT count(DISTINCT run_id) FROM events WHERE kind = 'heartbeat'",
                (),
                |row| drover_host::db::RowExt::int(row, 0),
            )
            .await
        })
        .await
        .expect("count heartbeats");
    counted
        .first()
        .and_then(|n| usize::try_from(*n).ok())
        .unwrap_or(0)
}

/// p99 of (gap between consecutive heartbeats of one agent − the interval), in seconds.
async fn heartbeat_lateness(store: &RunStore, since: i64, interval_ms: i64) -> f64 {
    let gaps = store
        .db()
        .run(move |conn| async move {
            drover_host::db::query_all(
                &conn,
                "SELECT gap FROM (
                    SELECT ts - lag(ts) OVER (PARTITION BY run_id ORDER BY seq) AS gap
                    FROM events WHERE kind = 'heartbeat' AND ts >= ?1)
                 WHERE gap IS NOT NULL",
                [since],
                |row| drover_host::db::RowExt::int(row, 0),
            )
            .await
        })
        .await
        .expect("heartbeat gaps");
    let lateness: Vec<f64> = gaps
        .iter()
        .map(|gap| (gap - interval_ms).max(0) as f64 / 1000.0)
        .collect();
    if lateness.is_empty() {
        return 0.0;
    }
    percentile(&lateness, 0.99)
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

// ---------------------------------------------------------------------------------------------
// 5. Quota overhead

async fn quota_overhead(scale: Scale, work: &Path) -> Vec<Row> {
    let rounds = scale.pick(5, 40);
    let sieve = quota_modes(rounds, work, r#"{"mode":"sieve","n":2000000}"#).await;
    let json = quota_modes(rounds, work, r#"{"mode":"json","n":40}"#).await;
    let row = |name: &str, medians: &[f64], mode: usize, target: &str, met: Option<bool>| Row {
        name: name.into(),
        figure: millis(medians[mode]),
        baseline: millis(medians[3]),
        ratio: medians[mode] / medians[3],
        target: target.into(),
        met,
    };
    vec![
        row(
            "Quota overhead: a CPU-bound guest (sieve of Eratosthenes to 2,000,000), median run with fuel and epochs on; vs both off",
            &sieve,
            0,
            "≤ 1.15×",
            Some(sieve[0] / sieve[3] <= 1.15),
        ),
        row("Quota overhead, sieve, fuel alone", &sieve, 1, "", None),
        row(
            "Quota overhead, sieve, epoch checks alone",
            &sieve,
            2,
            "",
            None,
        ),
        row(
            "Quota overhead, a JSON-bound guest (40 round trips of a 200-record document through serde_json), fuel and epochs on",
            &json,
            0,
            "",
            None,
        ),
    ]
}

/// Median run time of the `chaos` agent on `input` with fuel and epochs on, fuel alone, epochs
/// alone, and neither (in that order).
async fn quota_modes(rounds: usize, work: &Path, input: &str) -> Vec<f64> {
    let input: Arc<RawValue> = Arc::from(RawValue::from_string(input.into()).expect("json"));
    let modes = [
        Metering::ON,
        Metering {
            fuel: true,
            epochs: false,
        },
        Metering {
            fuel: false,
            epochs: true,
        },
        Metering::OFF,
    ];
    let mut setups = Vec::new();
    for metering in modes {
        let runtime = wasm_runtime(work, 16, metering);
        let mut spec = component_spec(&runtime, "chaos", drover_test_support::CHAOS).await;
        spec.limits.fuel = None;
        spec.limits.timeout = None;
        let sandbox: Arc<dyn Sandbox> = Arc::new(WasmSandbox::new(runtime));
        setups.push((sandbox, spec, Vec::new()));
    }
    // One run of each mode per round, so that all four see the same moments of the machine.
    for _ in 0..rounds {
        for (sandbox, spec, times) in &mut setups {
            times.extend(time_runs(sandbox, spec, &input, 1).await);
        }
    }
    setups
        .iter()
        .map(|(_, _, times)| percentile(times, 0.5))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 6. Cold vs warm start

async fn cold_start(scale: Scale, work: &Path) -> Vec<Row> {
    let agents = tempfile::tempdir_in(work).expect("agents");
    let sources = [
        drover_test_support::ECHO,
        drover_test_support::QUEUE_WORKER,
        drover_test_support::CHAOS,
    ];
    let count = scale.pick(3, 10);
    for i in 0..count {
        // Ten distinct components: the same code with a distinguishing custom section, so that
        // each one is compiled (and cached) on its own.
        let mut bytes = std::fs::read(sources[i % sources.len()]).expect("read");
        bytes.extend(custom_section(
            "drover-bench",
            format!("variant {i}").as_bytes(),
        ));
        std::fs::write(agents.path().join(format!("agent-{i}.wasm")), bytes).expect("write");
    }
    let cache = tempfile::tempdir_in(work).expect("cache");
    let start = async || {
        let started = Instant::now();
        let runtime = WasmRuntime::new(
            &EngineConfig {
                max_instances: 64,
                cache_dir: Some(cache.path().to_path_buf()),
                ..EngineConfig::default()
            },
            work.join("scratch"),
        )
        .expect("runtime");
        let registry = drover_host::registry::DirRegistry::open(agents.path(), runtime)
            .await
            .expect("registry");
        assert_eq!(registry.list().len(), count, "{:?}", registry.problems());
        started.elapsed().as_secs_f64()
    };
    let cold = start().await;
    let warm = start().await;
    vec![Row {
        name: format!(
            "Cold vs warm start: engine + loading {count} agents, compiled-artifact cache empty; vs warm"
        ),
        figure: millis(cold),
        baseline: millis(warm),
        ratio: cold / warm,
        target: String::new(),
        met: None,
    }]
}

/// A WebAssembly custom section named `name` (valid at the end of a component, too).
fn custom_section(name: &str, payload: &[u8]) -> Vec<u8> {
    use wasm_encoder::{Encode, Section};

    let section = wasm_encoder::CustomSection {
        name: name.into(),
        data: payload.into(),
    };
    let mut bytes = vec![section.id()];
    section.encode(&mut bytes);
    bytes
}

// ---------------------------------------------------------------------------------------------
// 8. Tool call

/// The expression both sides evaluate.
const TOOL_EXPRESSION: &str = "(17.5 * 4 - 3) % 9 + 2 ^ 10 / -(8 - 4)";

async fn tool_call(scale: Scale, work: &Path) -> Vec<Row> {
    use drover_host::registry::ToolSpec;
    use drover_host::sandbox::Control;

    let rounds = scale.pick(50, 5000);
    let runtime = wasm_runtime(work, 16, Metering::ON);
    let toolbox = runtime
        .load_toolbox_file(Path::new(drover_test_support::TOOL_CALC))
        .await
        .expect("load calc");
    let calc = ToolSpec::from_toolbox("calc", Arc::new(toolbox))
        .expect("calc spec")
        .remove(0);
    let input = json!({ "expression": TOOL_EXPRESSION }).to_string();
    let control = Control::new();
    let expected = native_calc(&input);
    let mut tool = Vec::with_capacity(rounds);
    let mut native = Vec::with_capacity(rounds);
    // Alternate the two, so that both see the same moments of the machine.
    for _ in 0..rounds {
        let started = Instant::now();
        let outcome = runtime.call_tool(&calc, &input, &control).await;
        tool.push(started.elapsed().as_secs_f64());
        let output: serde_json::Value =
            serde_json::from_str(&outcome.result.expect("calc answers")).expect("json");
        assert_eq!(output.to_string(), expected);

        let started = Instant::now();
        let output = std::hint::black_box(native_calc(std::hint::black_box(&input)));
        native.push(started.elapsed().as_secs_f64());
        assert_eq!(output, expected);
    }
    let row = |p: f64, target: &str, met: Option<bool>| {
        let (t, n) = (percentile(&tool, p), percentile(&native, p));
        Row {
            name: format!(
                "Tool call: a fresh instance of the calc tool and one call (input checked against its schema, output checked), p{}; vs the same arithmetic as a native function",
                (p * 100.0).round()
            ),
            figure: micros(t),
            baseline: micros(n),
            ratio: t / n,
            target: target.into(),
            met,
        }
    };
    let p50 = percentile(&tool, 0.5);
    vec![row(0.5, "≤ 25 µs", Some(p50 <= 25e-6)), row(0.99, "", None)]
}

/// What the calc tool does, natively: decode `{"expression"}`, evaluate, encode `{"value"}`.
fn native_calc(input: &str) -> String {
    fn expr(t: &[u8], i: &mut usize) -> f64 {
        let mut v = term(t, i);
        while let Some(&op @ (b'+' | b'-')) = peek(t, i) {
            *i += 1;
            let rhs = term(t, i);
            v = if op == b'+' { v + rhs } else { v - rhs };
        }
        v
    }
    fn term(t: &[u8], i: &mut usize) -> f64 {
        let mut v = unary(t, i);
        while let Some(&op @ (b'*' | b'/' | b'%')) = peek(t, i) {
            *i += 1;
            let rhs = unary(t, i);
            v = match op {
                b'*' => v * rhs,
                b'/' => v / rhs,
                _ => v % rhs,
            };
        }
        v
    }
    fn unary(t: &[u8], i: &mut usize) -> f64 {
        if peek(t, i) == Some(&b'-') {
            *i += 1;
            return -unary(t, i);
        }
        let base = atom(t, i);
        if peek(t, i) == Some(&b'^') {
            *i += 1;
            return base.powf(unary(t, i));
        }
        base
    }
    fn atom(t: &[u8], i: &mut usize) -> f64 {
        if peek(t, i) == Some(&b'(') {
            *i += 1;
            let v = expr(t, i);
            *i += 1;
            return v;
        }
        let start = *i;
        while t.get(*i).is_some_and(|c| c.is_ascii_digit() || *c == b'.') {
            *i += 1;
        }
        std::str::from_utf8(&t[start..*i])
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(f64::NAN)
    }
    fn peek<'a>(t: &'a [u8], i: &mut usize) -> Option<&'a u8> {
        while t.get(*i).is_some_and(u8::is_ascii_whitespace) {
            *i += 1;
        }
        t.get(*i)
    }
    let input: serde_json::Value = serde_json::from_str(input).expect("json");
    let text = input["expression"].as_str().unwrap_or_default();
    let value = expr(text.as_bytes(), &mut 0);
    json!({ "value": value }).to_string()
}

// ---------------------------------------------------------------------------------------------
// Shared set-up

fn wasm_runtime(work: &Path, instances: u32, metering: Metering) -> Arc<WasmRuntime> {
    WasmRuntime::new(
        &EngineConfig {
            max_instances: instances,
            cache_dir: Some(drover_test_support::cache_dir()),
            metering,
            ..EngineConfig::default()
        },
        work.join("scratch"),
    )
    .expect("wasm runtime")
}

async fn component_spec(runtime: &WasmRuntime, id: &str, path: &str) -> AgentSpec {
    let agent = runtime
        .load_file(Path::new(path))
        .await
        .expect("load component");
    AgentSpec::from_component(id, Arc::new(agent)).expect("spec")
}

fn native_echo() -> AgentSpec {
    AgentSpec::native(
        "echo",
        native_agent(
            |input, _ctx| async move { Ok(json!({ "received": input["n"], "ok": true })) },
        ),
    )
}

async fn databases(dir: &Path) -> (Queue, RunStore) {
    databases_with(dir, SyncMode::default()).await
}

async fn databases_with(dir: &Path, sync: SyncMode) -> (Queue, RunStore) {
    let open = |file: &str| {
        let url = format!("file:{}", dir.join(file).display());
        async move {
            Db::open_with(&url, None, DbOptions { sync })
                .await
                .expect("open db")
        }
    };
    let queue = Queue::with_db(open("queue.db").await, QueueOptions::default())
        .await
        .expect("queue");
    let store = RunStore::with_db(open("runs.db").await)
        .await
        .expect("store");
    (queue, store)
}

fn start_pool(
    queue: &Queue,
    store: &RunStore,
    registry: &Arc<dyn Registry>,
    sandbox: Arc<dyn Sandbox>,
    concurrency: usize,
    max_agents: usize,
) -> PoolHandle {
    WorkerPool::new(
        PoolDeps {
            queue: queue.clone(),
            store: store.clone(),
            registry: Arc::clone(registry),
            sandbox_for: Arc::new(move |_job, _spec| Arc::clone(&sandbox)),
        },
        PoolConfig {
            concurrency,
            max_agents,
            ..PoolConfig::default()
        },
    )
    .start()
}

// ---------------------------------------------------------------------------------------------
// 13. Children

/// A parent run's `spawn` and `wait` of a child (the host's side of `drover:agent/agents`: the
/// policy's checks of depth, fan-out and tree size, the enqueue with lineage, the wait for the
/// child's outcome and output), vs `RunApi::enqueue` and `RunApi::wait_for` of the same job,
/// alternating, on one pool that runs a native echo.
async fn child_round_trip(scale: Scale, work: &Path) -> Vec<Row> {
    use drover_host::children::{Caller, Children, SpawnOptions};
    use drover_host::registry::{ChildrenPolicy, Quota};

    let rounds = scale.pick(20, 1000);
    let registry: Arc<dyn Registry> = Arc::new(StaticRegistry::new().with(native_echo()));
    let dir = tempfile::tempdir_in(work).expect("dir");
    let (queue, store) = databases(dir.path()).await;
    let pool = start_pool(
        &queue,
        &store,
        &registry,
        Arc::new(NoneSandbox::new()),
        4,
        4,
    );
    let api = drover_host::api::RunApi::new(queue.clone(), store.clone(), Arc::clone(&registry));
    // The parent: a job of an agent this pool does not run, so that it stays queued.
    let parent = queue
        .enqueue(NewJob::new("parent", &json!(null)))
        .await
        .expect("parent")
        .job;
    let children = Children::open(queue.clone(), store.clone(), Arc::clone(&registry))
        .await
        .expect("children")
        .for_run(
            ChildrenPolicy {
                allowed: vec!["echo".into()],
                max_total: 100_000,
                ..ChildrenPolicy::default()
            },
            Quota::default(),
            Caller {
                agent_id: "parent".into(),
                job_id: parent.id.clone(),
                run_id: "bench-run".into(),
            },
        );
    let input = json!({ "n": 1 }).to_string();
    let mut spawned = Vec::with_capacity(rounds);
    let mut enqueued = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let started = Instant::now();
        let child = children
            .spawn("echo", input.clone(), SpawnOptions::default())
            .await
            .expect("spawn");
        let outcome = children
            .wait(&child.id, Duration::from_secs(30), std::future::pending())
            .await
            .expect("wait");
        spawned.push(started.elapsed().as_secs_f64());
        assert_eq!(outcome.status, JobStatus::Done);
        assert!(outcome.output.is_some());

        let started = Instant::now();
        let job = api
            .enqueue(NewJob::new("echo", &json!({ "n": 1 })))
            .await
            .expect("enqueue")
            .job;
        let view = api
            .wait_for(&job.id, Duration::from_secs(30))
            .await
            .expect("wait");
        enqueued.push(started.elapsed().as_secs_f64());
        assert_eq!(view.job.status, JobStatus::Done);
    }
    pool.shutdown().await;
    let (s, e) = (percentile(&spawned, 0.5), percentile(&enqueued, 0.5));
    vec![Row {
        name: "Child round trip: a parent run's spawn of a native echo child and its wait for the child's output, p50; vs enqueue + wait_for of the same job from the Rust API".into(),
        figure: millis(s),
        baseline: millis(e),
        ratio: s / e,
        target: "≤ 1.5×".into(),
        met: Some(s / e <= 1.5),
    }]
}

// ---------------------------------------------------------------------------------------------
// 8. Model gateway overhead

/// `ModelGateway::complete` against a local scripted server, vs a direct HTTP POST of the same
/// body to the same server (decoded as JSON), alternating in rounds. The guest → host part of a
/// model call is not in this figure.
async fn gateway_overhead(scale: Scale) -> Vec<Row> {
    use drover_host::model::{
        AliasConfig, ChatRequest, Message, ModelGateway, ModelsConfig, Provider,
    };
    use drover_test_support::model_server::{ModelServer, Reply};

    let iterations = scale.pick(200, 10_000);
    let server = ModelServer::always(Reply::text(r#"{"received": 42, "ok": true}"#)).await;
    let alias = AliasConfig::new(Provider::OpenAi, server.base_url(), "bench-model");
    let models = ModelGateway::new(&ModelsConfig(
        [("cheap".to_string(), alias)].into_iter().collect(),
    ))
    .expect("gateway");
    let request = ChatRequest {
        model: "cheap".into(),
        messages: vec![
            Message::system("Reply with {received, ok: true} as JSON."),
            Message::user(r#"{"n": 42}"#),
        ],
        tools: Vec::new(),
        max_output_tokens: None,
        temperature: None,
        json_output: true,
    };
    // What the gateway sends for `request`.
    let body = serde_json::to_vec(&json!({
        "model": "bench-model",
        "messages": [
            {"role": "system", "content": "Reply with {received, ok: true} as JSON."},
            {"role": "user", "content": r#"{"n": 42}"#},
        ],
        "max_tokens": 1024,
        "response_format": {"type": "json_object"},
    }))
    .expect("body");
    let url = format!("{}/chat/completions", server.base_url());
    let client = reqwest::Client::new();

    let (mut via_gateway, mut direct) = (Vec::new(), Vec::new());
    for _ in 0..10 {
        for _ in 0..iterations / 10 {
            let started = Instant::now();
            let response = models.complete("bench", &request).await.expect("complete");
            via_gateway.push(started.elapsed().as_secs_f64());
            assert_eq!(response.attempts, 1);
        }
        for _ in 0..iterations / 10 {
            let started = Instant::now();
            let response = client
                .post(&url)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .expect("send");
            let bytes = response.bytes().await.expect("body");
            let value: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
            direct.push(started.elapsed().as_secs_f64());
            assert!(value["choices"].is_array());
        }
    }
    assert_eq!(server.served(), 2 * (iterations / 10) * 10);
    let (g50, g99) = (
        percentile(&via_gateway, 0.50),
        percentile(&via_gateway, 0.99),
    );
    let (d50, d99) = (percentile(&direct, 0.50), percentile(&direct, 0.99));
    vec![
        Row {
            name: format!(
                "Model gateway overhead, p50 ({iterations} calls): `ModelGateway::complete` (encode, permit, HTTP, decode, cost, metrics) vs a direct HTTP POST of the same body to the same local server; added {:.1} µs",
                (g50 - d50) * 1e6
            ),
            figure: micros(g50),
            baseline: micros(d50),
            ratio: g50 / d50,
            target: "≤ 100 µs added (host side)".into(),
            met: Some(g50 - d50 <= 100e-6),
        },
        Row {
            name: format!(
                "Model gateway overhead, p99; added {:.1} µs",
                (g99 - d99) * 1e6
            ),
            figure: micros(g99),
            baseline: micros(d99),
            ratio: g99 / d99,
            target: String::new(),
            met: None,
        },
    ]
}

fn percentile(samples: &[f64], p: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn micros(seconds: f64) -> String {
    format!("{:.1} µs", seconds * 1e6)
}

fn millis(seconds: f64) -> String {
    format!("{:.1} ms", seconds * 1e3)
}

fn kib(bytes: f64) -> String {
    format!("{:.1} KiB", bytes / 1024.0)
}

// ---------------------------------------------------------------------------------------------
// The report

fn report(rows: &[Row], scale: Scale) -> String {
    let mut out = String::new();
    out.push_str("# Benchmarks\n\n");
    out.push_str(
        "Produced by `cargo bench -p drover-host --bench drover` (the harness is \
         `host/benches/drover.rs`). Every figure is measured beside its baseline in the same run; \
         the ratio is figure ÷ baseline.\n\n",
    );
    if scale.quick {
        out.push_str("**Quick mode**: small sizes, for checking the harness only.\n\n");
    }
    out.push_str(&format!("Machine: {}\n\n", machine()));
    out.push_str("| benchmark | figure | baseline | ratio | target | verdict |\n");
    out.push_str("|---|---|---|---|---|---|\n");
    for row in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {:.2} | {} | {} |\n",
            row.name,
            row.figure,
            row.baseline,
            row.ratio,
            row.target,
            row.verdict()
        ));
    }
    out
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or_else(String::new, |kb| format!(", {} GiB RAM", kb / (1 << 20)));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| format!(", Linux {}", k.trim()))
        .unwrap_or_default();
    format!(
        "{cores} × {cpu}{memory}{kernel}; {}",
        humantime::format_rfc3339_seconds(std::time::SystemTime::now())
    )
}

// ---------------------------------------------------------------------------------------------
// 10. Runs waiting on a slow model

/// The argument that makes this harness run one waiting-runs measurement and print the result.
const WAITING_CHILD: &str = "--waiting-child";

/// `n` runs of the declarative `echo-llm` agent, each waiting on a model that answers after
/// 2 s, in one host: resident memory per waiting run, beside the same number of native runs
/// that wait 2 s on nothing (the pool's own cost of a waiting run). The host runs in a child
/// process, so that the model server's memory (here, in this process) is not counted.
async fn waiting_runs(scale: Scale) -> Vec<Row> {
    use drover_test_support::model_server::{ModelServer, Reply};

    raise_open_files_limit();
    let n = scale.pick(200, 10_000);
    let server = ModelServer::always(
        Reply::text(r#"{"received": 1, "ok": true}"#).delay(Duration::from_secs(2)),
    )
    .await;
    let child = |mode: &'static str, base_url: String| async move {
        let exe = std::env::current_exe().expect("benchmark executable");
        let output = tokio::task::spawn_blocking(move || {
            std::process::Command::new(exe)
                .args([WAITING_CHILD, mode, &n.to_string(), &base_url])
                .stderr(std::process::Stdio::inherit())
                .output()
        })
        .await
        .expect("join")
        .expect("start a waiting-runs measurement");
        assert!(output.status.success(), "waiting-runs measurement failed");
        let text = String::from_utf8_lossy(&output.stdout);
        let figures: Vec<f64> = text
            .lines()
            .last()
            .unwrap_or_default()
            .split_whitespace()
            .map(|f| f.parse().expect("figure"))
            .collect();
        (figures[0], figures[1], figures[2])
    };
    let (model_rss, model_secs, most) = child("model", server.base_url()).await;
    let (native_rss, native_secs, native_most) = child("native", server.base_url()).await;
    assert_eq!(server.served(), n + 16, "every run asked the model once");
    vec![
        Row {
            name: format!(
                "{n} declarative `echo-llm` runs on a model that answers after 2 s, 16 CPU slots: resident memory per waiting run (at the most waiting at once: {most} runs; native: {native_most}); vs {n} native runs waiting 2 s on nothing"
            ),
            figure: kib(model_rss),
            baseline: kib(native_rss),
            ratio: model_rss / native_rss.max(1.0),
            target: "≤ 150 KiB per waiting run".into(),
            met: Some(model_rss <= 150.0 * 1024.0),
        },
        Row {
            name: format!(
                "{n} runs waiting on the 2 s model: time until all are done (every one completes); vs the native runs"
            ),
            figure: format!("{model_secs:.2} s"),
            baseline: format!("{native_secs:.2} s"),
            ratio: model_secs / native_secs.max(1e-3),
            target: String::new(),
            met: None,
        },
    ]
}

/// Lets this process hold as many sockets as its hard limit allows.
fn raise_open_files_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        let _ = setrlimit(Resource::Nofile, limit);
    }
}

/// One waiting-runs measurement in this (child) process: the resident memory each waiting run
/// adds (at the moment the most were waiting at once), the seconds until all `n` are done, and
/// that most.
async fn waiting_child(mode: &str, n: usize, base_url: &str, work: &Path) -> (f64, f64, f64) {
    use drover_host::model::{AliasConfig, ModelGateway, ModelsConfig, Provider};
    use drover_host::registry::{DirRegistry, ToolRegistry};
    use drover_host::sandbox::caps::Capabilities;

    raise_open_files_limit();
    let dir = tempfile::tempdir_in(work).expect("dir");
    let (queue, store) = databases(dir.path()).await;
    let runtime = wasm_runtime(work, 64, Metering::ON);
    let agents = dir.path().join("agents");
    std::fs::create_dir_all(&agents).expect("agents dir");
    std::fs::write(
        agents.join("echo-llm.toml"),
        include_str!("../../agents/echo-llm.toml"),
    )
    .expect("echo-llm");
    let dir_registry = DirRegistry::open(&agents, Arc::clone(&runtime))
        .await
        .expect("registry");
    let mut alias = AliasConfig::new(Provider::OpenAi, base_url, "bench-model");
    alias.max_concurrent = n;
    alias.timeout_ms = 120_000;
    let models = ModelGateway::new(&ModelsConfig(
        [("cheap".to_string(), alias)].into_iter().collect(),
    ))
    .expect("gateway");
    let tools: Arc<dyn ToolRegistry> = dir_registry.clone();
    let caps = Capabilities::new(Arc::new(models), Some((tools, Arc::clone(&runtime))));
    let registry: Arc<dyn Registry> = match mode {
        "model" => dir_registry,
        _ => Arc::new(StaticRegistry::new().with(AgentSpec::native(
            "echo-llm",
            native_agent(|input, ctx: RunContext| async move {
                ctx.waiting(tokio::time::sleep(Duration::from_secs(2)))
                    .await;
                Ok(json!({ "received": input["n"], "ok": true }))
            }),
        ))),
    };
    let sandbox: Arc<dyn Sandbox> =
        Arc::new(NoneSandbox::with_wasm(Arc::clone(&runtime)).with_capabilities(caps));
    let sandbox_for: SandboxFor = Arc::new(move |_job, _spec| Arc::clone(&sandbox));
    let pool = WorkerPool::new(
        PoolDeps {
            queue: queue.clone(),
            store: store.clone(),
            registry,
            sandbox_for,
        },
        PoolConfig {
            concurrency: 16,
            max_waiting_runs: n,
            ..PoolConfig::default()
        },
    )
    .start();
    // A few runs first, so that what every run shares (clients, caches) is already there.
    enqueue_for(&queue, "echo-llm", 16).await;
    wait_for_runs(&pool, 16).await;
    let before = rss_bytes();
    let started = Instant::now();
    enqueue_for(&queue, "echo-llm", n).await;
    // Sample while the runs come and go: the most waiting at once, and the memory then.
    let (mut most_waiting, mut rss_then) = (0, before);
    while pool.stats().runs_with_status(RunStatus::Success) < (16 + n) as u64 {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "the runs did not finish"
        );
        let waiting = pool.stats().waiting();
        if waiting > most_waiting {
            (most_waiting, rss_then) = (waiting, rss_bytes());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = started.elapsed().as_secs_f64();
    pool.shutdown().await;
    let per_run = rss_then.saturating_sub(before) as f64 / most_waiting.max(1) as f64;
    (per_run, took, most_waiting as f64)
}

/// A model call made by a guest: a wasm run of `chaos` in `model` mode (instantiate, call
/// `drover:agent/model.complete`, which goes through the run's capabilities and the gateway to
/// the local server, return) vs the same component's run that calls nothing plus a direct HTTP
/// POST of the same body to the same server. The difference is what the guest → host → server
/// path adds over doing both halves separately.
async fn guest_model_call(scale: Scale, work: &Path) -> Vec<Row> {
    use drover_host::model::{AliasConfig, ModelGateway, ModelsConfig, Provider};
    use drover_host::sandbox::caps::Capabilities;
    use drover_test_support::model_server::{ModelServer, Reply};

    let iterations = scale.pick(200, 5_000);
    let server = ModelServer::always(Reply::text("hello")).await;
    let alias = AliasConfig::new(Provider::OpenAi, server.base_url(), "bench-model");
    let models = ModelGateway::new(&ModelsConfig(
        [("cheap".to_string(), alias)].into_iter().collect(),
    ))
    .expect("gateway");
    let runtime = wasm_runtime(work, 64, Metering::ON);
    let mut spec = component_spec(&runtime, "chaos", drover_test_support::CHAOS).await;
    spec.models = vec!["cheap".into()];
    let caps = Capabilities::new(Arc::new(models), None);
    let wasm: Arc<dyn Sandbox> =
        Arc::new(WasmSandbox::new(Arc::clone(&runtime)).with_capabilities(caps));
    let raw = |text: &str| -> Arc<RawValue> {
        Arc::from(RawValue::from_string(text.into()).expect("json"))
    };
    let (model, idle) = (
        raw(r#"{"mode":"model"}"#),
        raw(r#"{"mode":"touch","bytes":0}"#),
    );
    let body = serde_json::to_vec(&json!({
        "model": "bench-model",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 1024,
    }))
    .expect("body");
    let url = format!("{}/chat/completions", server.base_url());
    let client = reqwest::Client::new();
    let (mut through_guest, mut separately) = (Vec::new(), Vec::new());
    for _ in 0..10 {
        through_guest.extend(time_runs(&wasm, &spec, &model, iterations / 10).await);
        let idle_runs = time_runs(&wasm, &spec, &idle, iterations / 10).await;
        for idle_run in idle_runs {
            let started = Instant::now();
            let response = client
                .post(&url)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .expect("send");
            let bytes = response.bytes().await.expect("body");
            let value: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
            assert!(value["choices"].is_array());
            separately.push(idle_run + started.elapsed().as_secs_f64());
        }
    }
    let (g50, g99) = (
        percentile(&through_guest, 0.50),
        percentile(&through_guest, 0.99),
    );
    let (s50, s99) = (percentile(&separately, 0.50), percentile(&separately, 0.99));
    vec![
        Row {
            name: format!(
                "Model call from a guest, p50 ({iterations} runs): a wasm run calling `model.complete` once (guest → capabilities → gateway → local server) vs a wasm run calling nothing plus a direct HTTP POST of the same body; added {:.1} µs",
                (g50 - s50) * 1e6
            ),
            figure: micros(g50),
            baseline: micros(s50),
            ratio: g50 / s50,
            target: "≤ 100 µs added".into(),
            met: Some(g50 - s50 <= 100e-6),
        },
        Row {
            name: format!(
                "Model call from a guest, p99; added {:.1} µs",
                (g99 - s99) * 1e6
            ),
            figure: micros(g99),
            baseline: micros(s99),
            ratio: g99 / s99,
            target: String::new(),
            met: None,
        },
    ]
}

// ---------------------------------------------------------------------------------------------
// Outbound HTTP from a guest

/// A wasm run sending one GET through `wasi:http` (policy check, host client, event) vs the same
/// component's run that sends nothing plus a host-side `reqwest` GET of the same local URL.
async fn outbound_request(scale: Scale, work: &Path) -> Vec<Row> {
    use drover_host::model::ModelGateway;
    use drover_host::outbound::{AllowList, Outbound, OutboundConfig};
    use drover_host::sandbox::caps::Capabilities;
    use drover_host::secrets::Secrets;

    let iterations = scale.pick(200, 5_000);
    let app = axum::Router::new().route("/ok", axum::routing::get(|| async { "hello" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let allowed = format!("http://127.0.0.1:{port}");
    let outbound = Outbound::new(&OutboundConfig {
        allowed_hosts: Some(vec![allowed.clone()]),
        ..OutboundConfig::default()
    })
    .expect("outbound");
    let runtime = wasm_runtime(work, 64, Metering::ON);
    let mut spec = component_spec(&runtime, "fetch", drover_test_support::FETCH).await;
    spec.outbound = AllowList::parse(&[allowed]).expect("patterns");
    let caps = Capabilities::with_outbound(
        Arc::new(ModelGateway::empty()),
        None,
        outbound,
        Secrets::empty(),
    );
    let wasm: Arc<dyn Sandbox> =
        Arc::new(WasmSandbox::new(Arc::clone(&runtime)).with_capabilities(caps));
    let raw =
        |text: String| -> Arc<RawValue> { Arc::from(RawValue::from_string(text).expect("json")) };
    let url = format!("http://127.0.0.1:{port}/ok");
    let (request, idle) = (
        raw(json!({ "url": url }).to_string()),
        // Refused by the SDK before any host call.
        raw(json!({ "url": "ftp://127.0.0.1/" }).to_string()),
    );
    let client = reqwest::Client::new();
    let (mut through_guest, mut separately) = (Vec::new(), Vec::new());
    for _ in 0..10 {
        through_guest.extend(time_runs(&wasm, &spec, &request, iterations / 10).await);
        let idle_runs = time_runs(&wasm, &spec, &idle, iterations / 10).await;
        for idle_run in idle_runs {
            let started = Instant::now();
            let response = client.get(&url).send().await.expect("send");
            let bytes = response.bytes().await.expect("body");
            assert_eq!(&bytes[..], b"hello");
            separately.push(idle_run + started.elapsed().as_secs_f64());
        }
    }
    let (g50, g99) = (
        percentile(&through_guest, 0.50),
        percentile(&through_guest, 0.99),
    );
    let (s50, s99) = (percentile(&separately, 0.50), percentile(&separately, 0.99));
    vec![
        Row {
            name: format!(
                "Outbound HTTP from a guest, p50 ({iterations} runs): a wasm run sending one GET through `wasi:http` (policy, host client, event) to a local server vs the same component sending nothing plus a host-side reqwest GET; added {:.1} µs",
                (g50 - s50) * 1e6
            ),
            figure: micros(g50),
            baseline: micros(s50),
            ratio: g50 / s50,
            target: "≤ 200 µs added".into(),
            met: Some(g50 - s50 <= 200e-6),
        },
        Row {
            name: format!(
                "Outbound HTTP from a guest, p99; added {:.1} µs",
                (g99 - s99) * 1e6
            ),
            figure: micros(g99),
            baseline: micros(s99),
            ratio: g99 / s99,
            target: String::new(),
            met: None,
        },
    ]
}

// ---------------------------------------------------------------------------------------------
// 13. A message round trip to a long-lived agent

/// `POST /v1/agents/{id}/messages?waitMs=` to the `chat` agent running in a pool of the same
/// process (the post is stored, wakes the agent blocked in `receive`, whose reply is stored and
/// wakes the request), vs a plain `GET /v1/jobs/{id}` of the same job over the same HTTP stack,
/// alternating in rounds.
async fn inbox_round_trip(scale: Scale, work: &Path) -> Vec<Row> {
    use drover_host::api::RunApi;
    use drover_host::api::auth::Auth;
    use drover_host::api::http::{self, HttpState};
    use drover_host::api::metrics::Metrics;
    use drover_host::inbox::{Inbox, InboxConfig};

    let iterations = scale.pick(100, 5_000);
    let dir = work.join("inbox");
    std::fs::create_dir_all(&dir).expect("dir");
    let (queue, store) = databases(&dir).await;
    let inbox = Inbox::open(&queue, InboxConfig::default())
        .await
        .expect("inbox");
    let runtime = wasm_runtime(work, 16, Metering::ON);
    let spec = component_spec(&runtime, "chat", drover_test_support::CHAT).await;
    let registry: Arc<dyn Registry> = Arc::new(StaticRegistry::new().with(spec));
    let sandbox: Arc<dyn Sandbox> =
        Arc::new(WasmSandbox::new(Arc::clone(&runtime)).with_inbox(inbox.clone()));
    let pool = start_pool(&queue, &store, &registry, sandbox, 2, 4);
    let api = RunApi::new(queue.clone(), store.clone(), Arc::clone(&registry)).with_inbox(inbox);
    let job = api
        .enqueue(NewJob::new("chat", &serde_json::Value::Null).id("chat-bench"))
        .await
        .expect("spawn chat")
        .job;
    let state = HttpState {
        api,
        problems: Arc::new(Vec::new),
        metrics: Arc::new(Metrics::new(None)),
        auth: Auth::none(),
        stale_after: Duration::from_secs(90),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let app = http::router(state);
    tokio::spawn(async move { axum::serve(listener, app).await });
    let base = format!("http://{address}");
    let client = reqwest::Client::new();
    let post_url = format!("{base}/v1/agents/{}/messages?waitMs=10000", job.id);
    let get_url = format!("{base}/v1/jobs/{}", job.id);
    let round_trip = |n: usize| {
        let (client, url) = (client.clone(), post_url.clone());
        async move {
            let started = Instant::now();
            let response = client
                .post(&url)
                .json(&json!({ "message": { "n": n } }))
                .send()
                .await
                .expect("post");
            assert_eq!(response.status(), reqwest::StatusCode::OK);
            let body: serde_json::Value = response.json().await.expect("json");
            assert_eq!(body["reply"]["echo"]["n"], n);
            started.elapsed().as_secs_f64()
        }
    };
    // The first message waits for the agent to start.
    round_trip(0).await;
    let (mut messages, mut gets) = (Vec::new(), Vec::new());
    for round in 0..10 {
        for i in 0..iterations / 10 {
            messages.push(round_trip(1 + round * iterations + i).await);
            let started = Instant::now();
            let response = client.get(&get_url).send().await.expect("get");
            assert_eq!(response.status(), reqwest::StatusCode::OK);
            let _: serde_json::Value = response.json().await.expect("json");
            gets.push(started.elapsed().as_secs_f64());
        }
    }
    queue.stop(&job.id).await.expect("stop chat");
    pool.shutdown().await;
    let (m50, m99) = (percentile(&messages, 0.50), percentile(&messages, 0.99));
    let (g50, g99) = (percentile(&gets, 0.50), percentile(&gets, 0.99));
    vec![
        Row {
            name: format!(
                "Message round trip to a long-lived agent, p50 ({iterations} messages): `POST /v1/agents/{{id}}/messages?waitMs=` to `chat` in the same host (message stored, agent woken in `receive`, reply stored, request woken) vs `GET /v1/jobs/{{id}}` over the same HTTP"
            ),
            figure: micros(m50),
            baseline: micros(g50),
            ratio: m50 / g50,
            target: "≤ 2 ms".into(),
            met: Some(m50 <= 2e-3),
        },
        Row {
            name: "Message round trip to a long-lived agent, p99".into(),
            figure: micros(m99),
            baseline: micros(g99),
            ratio: m99 / g99,
            target: String::new(),
            met: None,
        },
    ]
}
