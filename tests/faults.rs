//! Faults, injected for real: a database whose write lock another connection holds past the
//! lease, a disk that fills up, a writer operation that panics, a record the database refuses,
//! a host paused with SIGSTOP past its lease, and a host whose clock is an hour ahead. In each,
//! every finished job must end `done` exactly once, and no job may complete twice.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use drover_host::api::RunApi;
use drover_host::db::{Db, DbError};
use drover_host::pool::{PoolConfig, PoolDeps, PoolHandle, WorkerPool};
use drover_host::queue::{JobStatus, NewJob, Queue, QueueOptions};
use drover_host::registry::{AgentSpec, Registry, StaticRegistry};
use drover_host::sandbox::native_agent;
use drover_host::sandbox::{NoneSandbox, Sandbox, SandboxFor};
use drover_host::store::{Run, RunFilter, RunStatus, RunStore};
use drover_test_support::{AgentDir, CHAOS, HostProcess, WAIT};
use reqwest::StatusCode;
use serde_json::{Value, json};

const EXE: &str = env!("CARGO_BIN_EXE_drover-host");

/// A queue, a run store and a pool of native agents on database files in `dir`.
struct Env {
    queue: Queue,
    store: RunStore,
    api: RunApi,
    registry: Arc<dyn Registry>,
}

impl Env {
    async fn open(dir: &Path, registry: StaticRegistry) -> Self {
        let queue = Queue::with_db(
            Db::open(&queue_url(dir), None).await.expect("queue db"),
            QueueOptions {
                backoff_base: Duration::from_millis(1),
                backoff_max: Duration::from_millis(5),
                ..QueueOptions::default()
            },
        )
        .await
        .expect("queue");
        let store = RunStore::open(&store_url(dir), None).await.expect("store");
        let registry: Arc<dyn Registry> = Arc::new(registry);
        let api = RunApi::new(queue.clone(), store.clone(), Arc::clone(&registry));
        Self {
            queue,
            store,
            api,
            registry,
        }
    }

    fn pool(&self, config: PoolConfig) -> PoolHandle {
        let none: Arc<dyn Sandbox> = Arc::new(NoneSandbox::new());
        let sandbox_for: SandboxFor = Arc::new(move |_job, _spec| Arc::clone(&none));
        WorkerPool::new(
            PoolDeps {
                queue: self.queue.clone(),
                store: self.store.clone(),
                registry: Arc::clone(&self.registry),
                sandbox_for,
            },
            config,
        )
        .start()
    }

    /// Every run of job `id`.
    async fn runs(&self, id: &str) -> Vec<Run> {
        self.store
            .list_runs(&RunFilter {
                job_id: Some(id.to_string()),
                ..Default::default()
            })
            .await
            .expect("runs")
    }

    /// Enqueues `n` jobs (`job-0`…) that sleep `ms` milliseconds each, and waits until every
    /// one of them runs.
    async fn start_sleepers(&self, n: usize, ms: u64) {
        let jobs: Vec<NewJob> = (0..n)
            .map(|i| NewJob::new("sleeper", &json!({ "ms": ms })).id(format!("job-{i}")))
            .collect();
        self.queue.enqueue_batch(jobs).await.expect("enqueue");
        wait_until("every job running", || async {
            count_leased(&self.queue).await == n as i64
        })
        .await;
    }

    /// Waits for jobs `job-0`… `job-{n-1}` to finish, then checks that each is done once.
    async fn assert_all_done_once(&self, pool: &PoolHandle, n: usize) {
        for i in 0..n {
            let done = self
                .api
                .wait_for(&format!("job-{i}"), WAIT)
                .await
                .expect("wait");
            assert!(done.job.status.is_terminal(), "job-{i} finished");
        }
        pool.flush().await;
        for i in 0..n {
            self.assert_done_once(&format!("job-{i}")).await;
        }
    }

    /// Checks that job `id` is done, decided by its one successful run, with no attempt used.
    async fn assert_done_once(&self, id: &str) {
        let job = self.queue.get(id).await.expect("get").expect("job");
        assert_eq!(job.status, JobStatus::Done, "{id}: {job:?}");
        assert_eq!(job.attempts, 0, "{id}: no attempt used: {job:?}");
        let runs = self.runs(id).await;
        assert_eq!(runs.len(), 1, "{id} ran once: {runs:?}");
        assert_eq!(runs[0].status, RunStatus::Success, "{id}: {runs:?}");
        assert_eq!(job.run_id.as_deref(), Some(runs[0].id.as_str()), "{id}");
    }
}

fn queue_url(dir: &Path) -> String {
    format!("file:{}", dir.join("queue.db").display())
}

fn store_url(dir: &Path) -> String {
    format!("file:{}", dir.join("runs.db").display())
}

/// Sleeps for `input.ms` milliseconds.
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

/// Holds the write lock of the database file `path` (as another process's `BEGIN EXCLUSIVE`
/// would) until dropped.
struct WriteLock {
    conn: libsql::Connection,
    _db: libsql::Database,
}

impl WriteLock {
    async fn take(path: &Path) -> Self {
        let db = libsql::Builder::new_local(path)
            .build()
            .await
            .expect("open");
        let conn = db.connect().expect("connect");
        conn.busy_timeout(Duration::from_secs(30)).expect("timeout");
        conn.execute("BEGIN EXCLUSIVE", ())
            .await
            .expect("take the write lock");
        Self { conn, _db: db }
    }

    async fn release(self) {
        self.conn.execute("ROLLBACK", ()).await.expect("release");
    }
}

async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn count_leased(queue: &Queue) -> i64 {
    queue
        .counts()
        .await
        .expect("counts")
        .get(&JobStatus::Leased)
        .copied()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_lock_held_past_the_lease_loses_no_finished_outcome() {
    const JOBS: usize = 64;
    let dir = tempfile::tempdir().expect("dir");
    let env = Env::open(dir.path(), StaticRegistry::new().with(sleeper())).await;
    let pool = env.pool(PoolConfig {
        concurrency: JOBS,
        lease_duration: Duration::from_secs(5),
        reclaim_interval: Duration::from_millis(200),
        ..PoolConfig::default()
    });
    env.start_sleepers(JOBS, 2000).await;
    // Both databases are locked for 20 s, four leases, while every run finishes: no outcome,
    // run or renewal can be written meanwhile.
    let queue_lock = WriteLock::take(&dir.path().join("queue.db")).await;
    let store_lock = WriteLock::take(&dir.path().join("runs.db")).await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(
        pool.stats().write_failures() > 0,
        "the lock made writes fail"
    );
    queue_lock.release().await;
    store_lock.release().await;
    env.assert_all_done_once(&pool, JOBS).await;
    pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_that_cannot_renew_stops_its_runs_before_its_lease_can_expire() {
    let dir = tempfile::tempdir().expect("dir");
    let env = Env::open(dir.path(), StaticRegistry::new().with(sleeper())).await;
    let pool = env.pool(PoolConfig {
        concurrency: 1,
        lease_duration: Duration::from_secs(1),
        reclaim_interval: Duration::from_secs(3600),
        ..PoolConfig::default()
    });
    env.queue
        .enqueue(
            NewJob::new("sleeper", &json!({ "ms": 30_000 }))
                .id("long")
                .max_attempts(2),
        )
        .await
        .expect("enqueue");
    wait_until("running", || async { count_leased(&env.queue).await == 1 }).await;
    // Renewals now wait for the lock, and fail: the pool can no longer know that it holds the
    // lease, so it must stop the run before the lease could have run out.
    let lock = WriteLock::take(&dir.path().join("queue.db")).await;
    let started = Instant::now();
    wait_until("the run fenced", || async { pool.stats().fenced() == 1 }).await;
    let fenced_after = started.elapsed();
    lock.release().await;
    assert!(
        fenced_after < Duration::from_secs(1),
        "stopped within the lease: {fenced_after:?}"
    );
    pool.flush().await;
    let runs = env.runs("long").await;
    let first = runs.iter().find(|r| r.attempt == 1).expect("first run");
    assert_eq!(first.status, RunStatus::Lost, "{first:?}");
    assert_eq!(
        first.error.as_ref().map(|e| e.tag.as_str()),
        Some("LeaseLost")
    );
    pool.shutdown().await;
}

/// A tmpfs of `size` mounted at a fresh directory, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// `None` (with a note) where mounting is not possible, unless under CI.
    fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().expect("dir");
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            assert!(
                std::env::var_os("CI").is_none(),
                "cannot mount a tmpfs (this test needs root)"
            );
            eprintln!("skipped: cannot mount a tmpfs (this test needs root)");
            return None;
        }
        Some(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file until the disk is full.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).expect("filler");
        let block = vec![0u8; 64 << 10];
        while file.write_all(&block).is_ok() {}
        let _ = file.sync_all();
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_fills_up_loses_no_finished_outcome() {
    const JOBS: usize = 16;
    let Some(disk) = SmallDisk::mount("32m") else {
        return;
    };
    let env = Env::open(disk.path(), StaticRegistry::new().with(sleeper())).await;
    let pool = env.pool(PoolConfig {
        concurrency: JOBS,
        lease_duration: Duration::from_secs(3),
        reclaim_interval: Duration::from_millis(200),
        ..PoolConfig::default()
    });
    env.start_sleepers(JOBS, 1000).await;
    let filler = disk.fill();
    // The runs finish while nothing can be written, for longer than the lease.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        pool.stats().write_failures() > 0,
        "the full disk made writes fail"
    );
    std::fs::remove_file(filler).expect("free the disk");
    env.assert_all_done_once(&pool, JOBS).await;
    pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_write_fails_alone_and_the_writer_carries_on() {
    let dir = tempfile::tempdir().expect("dir");
    let db = Db::open(&queue_url(dir.path()), None).await.expect("db");
    let failed = db
        .write(|_conn| async move {
            if true {
                panic!("a bug in a write");
            }
            Ok(())
        })
        .await;
    assert!(
        matches!(&failed, Err(DbError::Panicked(message)) if message.contains("a bug in a write")),
        "{failed:?}"
    );
    // The writer thread lives on: writes and the readiness probe go through.
    db.probe_write().await.expect("the writer still writes");
    let env = Env::open(dir.path(), StaticRegistry::new().with(sleeper())).await;
    let pool = env.pool(PoolConfig::default());
    env.queue
        .enqueue(NewJob::new("sleeper", &json!({ "ms": 1 })).id("after"))
        .await
        .expect("enqueue");
    env.api.wait_for("after", WAIT).await.expect("wait");
    pool.flush().await;
    env.assert_done_once("after").await;
    pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_the_database_refuses_fails_only_its_own_job() {
    let dir = tempfile::tempdir().expect("dir");
    let poison = AgentSpec::native(
        "poison",
        native_agent(|_input: Value, _ctx| async move { Ok(json!({ "poison": true })) }),
    );
    let env = Env::open(
        dir.path(),
        StaticRegistry::new().with(sleeper()).with(poison),
    )
    .await;
    // The run store refuses any run whose output says "poison", as a remote server refuses a
    // request over its size limit.
    let conn = libsql::Builder::new_local(dir.path().join("runs.db"))
        .build()
        .await
        .expect("open")
        .connect()
        .expect("connect");
    for event in ["INSERT", "UPDATE"] {
        conn.execute(
            &format!(
                "CREATE TRIGGER refuse_poison_{event} BEFORE {event} ON runs
                 WHEN NEW.output LIKE '%poison%'
                 BEGIN SELECT RAISE(ABORT, 'refused'); END"
            ),
            (),
        )
        .await
        .expect("trigger");
    }
    let mut jobs: Vec<NewJob> = (0..40)
        .map(|n| NewJob::new("sleeper", &json!({ "ms": 5 })).id(format!("job-{n}")))
        .collect();
    jobs.insert(20, NewJob::new("poison", &json!({})).id("poisoned"));
    env.queue.enqueue_batch(jobs).await.expect("enqueue");
    let pool = env.pool(PoolConfig {
        concurrency: 16,
        ..PoolConfig::default()
    });
    let poisoned = env.api.wait_for("poisoned", WAIT).await.expect("wait");
    assert_eq!(poisoned.job.status, JobStatus::Failed, "{poisoned:?}");
    let error = poisoned.job.result_error.expect("error");
    assert_eq!(error.tag, "RecordRejected");
    env.assert_all_done_once(&pool, 40).await;
    let runs = env.runs("poisoned").await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(
        runs[0].error.as_ref().map(|e| e.tag.as_str()),
        Some("RecordRejected")
    );
    assert!(pool.stats().records_rejected() >= 1);
    pool.shutdown().await;
}

/// Two real hosts on one pair of database files, with the chaos agent.
struct Fleet {
    agents: AgentDir,
    data: tempfile::TempDir,
}

impl Fleet {
    fn new() -> Self {
        let agents = AgentDir::new();
        agents.add(
            "chaos",
            CHAOS,
            Some("[limits]\nfuel = \"unlimited\"\ntimeout-ms = \"none\"\n"),
        );
        Self {
            agents,
            data: tempfile::tempdir().expect("dir"),
        }
    }

    /// Whether another process could take the queue file's write lock now.
    async fn write_lock_is_free(&self) -> bool {
        let db = libsql::Builder::new_local(self.data.path().join("queue.db"))
            .build()
            .await
            .expect("open");
        let conn = db.connect().expect("connect");
        conn.busy_timeout(Duration::from_millis(200))
            .expect("timeout");
        let free = conn.execute("BEGIN IMMEDIATE", ()).await.is_ok();
        if free {
            conn.execute("ROLLBACK", ()).await.expect("release");
        }
        free
    }

    fn host(&self, worker_id: &str, envs: &[(&str, &str)]) -> HostProcess {
        let dir = self.data.path();
        let args: Vec<String> = [
            "--agents",
            &self.agents.path().display().to_string(),
            "--data-dir",
            &dir.join("var").display().to_string(),
            "--cache-dir",
            &drover_test_support::cache_dir().display().to_string(),
            "--queue-url",
            &queue_url(dir),
            "--storage-url",
            &store_url(dir),
            "--lease-ms",
            "1500",
            "--reclaim-interval-ms",
            "200",
            "--worker-id",
            worker_id,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        HostProcess::start(EXE, &args, envs)
    }
}

async fn http(method: reqwest::Method, url: String, body: Option<Value>) -> (StatusCode, Value) {
    let mut request = reqwest::Client::new().request(method, url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn enqueue_sleep(url: &str, id: &str, ms: u64) {
    let (status, body) = http(
        reqwest::Method::POST,
        format!("{url}/v1/jobs"),
        Some(json!({ "id": id, "agentId": "chaos", "maxAttempts": 3,
                     "input": { "mode": "sleep", "ms": ms } })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

async fn job_on(url: &str, id: &str, owner: &str) -> bool {
    let (_, view) = http(reqwest::Method::GET, format!("{url}/v1/jobs/{id}"), None).await;
    view["job"]["status"] == "leased" && view["job"]["leaseOwner"] == owner
}

async fn runs_of(url: &str, id: &str) -> Vec<Value> {
    let (_, runs) = http(
        reqwest::Method::GET,
        format!("{url}/v1/runs?jobId={id}"),
        None,
    )
    .await;
    runs["runs"].as_array().cloned().unwrap_or_default()
}

fn signal(pid: u32, signal: &str) {
    let sent = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(sent.success(), "kill -{signal}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_paused_past_its_lease_stops_its_run_and_nothing_completes_twice() {
    let fleet = Fleet::new();
    let a = fleet.host("host-a", &[]);
    enqueue_sleep(&a.url, "long", 6000).await;
    wait_until("running on host A", || job_on(&a.url, "long", "host-a")).await;
    let b = fleet.host("host-b", &[]);
    // Host A freezes (a VM pause, a laptop lid) for twice its lease; host B takes the job over.
    // A process frozen inside a write transaction would hold the file's write lock, and no
    // other process on the file could write until it woke (a limit of sharing a file, which is
    // why hosts on several machines share a server instead): freeze it between two writes.
    loop {
        signal(a.pid(), "STOP");
        if fleet.write_lock_is_free().await {
            break;
        }
        signal(a.pid(), "CONT");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_until("taken over by host B", || job_on(&b.url, "long", "host-b")).await;
    signal(a.pid(), "CONT");
    let (status, done) = http(
        reqwest::Method::GET,
        format!("{}/v1/jobs/long/wait?timeoutMs=30000", b.url),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["job"]["status"], "done", "{done}");
    assert_eq!(done["run"]["workerId"], "host-b", "{done}");
    // Host A, awake again, stops its copy instead of finishing it: one success in all.
    wait_until("host A's run recorded lost", || async {
        runs_of(&b.url, "long")
            .await
            .iter()
            .any(|r| r["workerId"] == "host-a" && r["status"] == "lost")
    })
    .await;
    let runs = runs_of(&b.url, "long").await;
    let successes = runs.iter().filter(|r| r["status"] == "success").count();
    assert_eq!(successes, 1, "{runs:?}");
    assert_eq!(runs.len(), 2, "{runs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_whose_clock_is_an_hour_ahead_reclaims_nobody() {
    let fleet = Fleet::new();
    let a = fleet.host("host-a", &[]);
    enqueue_sleep(&a.url, "steady", 4000).await;
    wait_until("running on host A", || job_on(&a.url, "steady", "host-a")).await;
    // Host B's clock is an hour fast: by its own clock, every lease has long expired.
    let b = fleet.host("host-b", &[("DROVER_CLOCK_SKEW_MS", "3600000")]);
    let (status, done) = http(
        reqwest::Method::GET,
        format!("{}/v1/jobs/steady/wait?timeoutMs=30000", b.url),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["job"]["status"], "done", "{done}");
    assert_eq!(done["job"]["attempts"], 0, "{done}");
    assert_eq!(done["run"]["workerId"], "host-a", "{done}");
    let runs = runs_of(&b.url, "steady").await;
    assert_eq!(runs.len(), 1, "only host A ran it: {runs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_database_makes_the_host_unready_and_sheds_enqueues_it_cannot_take() {
    let fleet = Fleet::new();
    // The HTTP caps are raised out of the way: this is about what the database's writer holds.
    let host = fleet.host(
        "host",
        &[
            ("DROVER_MAX_IN_FLIGHT", "4096"),
            ("DROVER_MAX_CONNECTIONS", "4096"),
        ],
    );
    let (status, _) = http(reqwest::Method::GET, format!("{}/readyz", host.url), None).await;
    assert_eq!(status, StatusCode::OK);
    let lock = WriteLock::take(&fleet.data.path().join("queue.db")).await;
    let (status, body) = http(reqwest::Method::GET, format!("{}/readyz", host.url), None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    // More enqueues than the database's writer queues: those it cannot hold are refused at
    // once, with a time to come back; none is accepted and then lost.
    let client = reqwest::Client::new();
    let requests = (0..1500).map(|n| {
        let client = client.clone();
        let url = format!("{}/v1/jobs", host.url);
        async move {
            let response = client
                .post(url)
                .json(&json!({ "id": format!("j-{n}"), "agentId": "chaos",
                               "input": { "mode": "ok" } }))
                .send()
                .await;
            (n, response)
        }
    });
    let release = async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        lock.release().await;
    };
    let (responses, ()) = tokio::join!(futures::future::join_all(requests), release);
    // Its connections close: the host holds a bounded number open at once.
    drop(client);
    let mut accepted = Vec::new();
    let mut refused = 0;
    for (n, response) in responses {
        let Ok(response) = response else {
            continue;
        };
        match response.status() {
            StatusCode::CREATED => accepted.push(n),
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(
                    response.headers().contains_key("retry-after"),
                    "a 503 says when to come back"
                );
                let body: Value = response.json().await.unwrap_or(Value::Null);
                assert_eq!(body["error"]["tag"], "Unavailable", "{body}");
                refused += 1;
            }
            other => panic!("j-{n}: unexpected {other}"),
        }
    }
    assert!(refused > 0, "some enqueues were shed");
    assert!(!accepted.is_empty(), "the rest went through");
    for n in accepted {
        let (status, _) = http(
            reqwest::Method::GET,
            format!("{}/v1/jobs/j-{n}", host.url),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "accepted j-{n} exists");
    }
    let (status, _) = http(reqwest::Method::GET, format!("{}/readyz", host.url), None).await;
    assert_eq!(status, StatusCode::OK, "ready again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guests_spinning_on_every_core_do_not_hold_up_the_api_or_cancels() {
    const SPINNERS: usize = 50;
    let fleet = Fleet::new();
    let host = fleet.host("host", &[("DROVER_CONCURRENCY", "64")]);
    let client = reqwest::Client::new();
    for n in 0..SPINNERS {
        let (status, body) = http(
            reqwest::Method::POST,
            format!("{}/v1/jobs", host.url),
            Some(json!({ "id": format!("spin-{n}"), "agentId": "chaos",
                         "input": { "mode": "spin" } })),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    wait_until("every guest spinning", || async {
        let (_, jobs) = http(
            reqwest::Method::GET,
            format!("{}/v1/jobs?status=leased&limit=100", host.url),
            None,
        )
        .await;
        jobs["jobs"].as_array().map_or(0, Vec::len) == SPINNERS
    })
    .await;
    // With every core busy with guests, the API still answers, and all fifty cancels are
    // taken and carried out (before guests ran apart from the API, this took about 15 s).
    let started = Instant::now();
    let (status, _) = http(reqwest::Method::GET, format!("{}/healthz", host.url), None).await;
    assert_eq!(status, StatusCode::OK);
    let cancels = (0..SPINNERS).map(|n| {
        let request = client
            .post(format!("{}/v1/jobs/spin-{n}/cancel", host.url))
            .json(&json!({}));
        async move { request.send().await.expect("cancel").status() }
    });
    for status in futures::future::join_all(cancels).await {
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    let answered = started.elapsed();
    for n in 0..SPINNERS {
        let (status, done) = http(
            reqwest::Method::GET,
            format!("{}/v1/jobs/spin-{n}/wait?timeoutMs=30000", host.url),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{done}");
        assert_eq!(done["job"]["resultError"]["tag"], "Cancelled", "{done}");
    }
    assert!(
        answered < Duration::from_secs(5),
        "the health check and fifty cancels took {answered:?}"
    );
}
