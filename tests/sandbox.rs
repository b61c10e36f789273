//! The wasm sandbox, with the real components of `agents/` (compiled for `wasm32-wasip2` by the
//! test-support build) running in real wasmtime, through the real pool and libsql files.

use std::sync::Arc;
use std::time::Duration;

use drover_host::api::http::{self, HttpState};
use drover_host::api::metrics::Metrics;
use drover_host::api::{ApiError, JobView, RunApi};
use drover_host::pool::{PoolConfig, PoolDeps, PoolHandle, WorkerPool};
use drover_host::queue::{Job, JobStatus, Lifecycle, NewJob};
use drover_host::registry::{
    AgentCode, AgentSpec, DEFAULT_LONG_LIVED_EVENT_RATE, DirRegistry, Registry,
};
use drover_host::sandbox::wasm::{EngineConfig, WasmRuntime, WasmSandbox};
use drover_host::sandbox::{NoneSandbox, Sandbox, SandboxFor};
use drover_host::store::{Run, RunStatus};
use drover_test_support::{
    AgentDir, CHAOS, ECHO, ECHO_V0_1, HostProcess, QUEUE_WORKER, TestDb, WAIT, wait_for_status,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The chaos agent under a few names, each with the limits its misbehaviour needs.
const CHAOS_LIMITED: &str = r#"
description = "chaos with tight limits"
scratch-dir = true
[limits]
fuel = 200_000_000
memory = "32MiB"
timeout-ms = 20000
max-output-bytes = "64KiB"
max-events = 50
max-log-bytes = "4KiB"
[env]
GREETING = "hello from the manifest"
"#;

const CHAOS_UNMETERED: &str = r#"
[limits]
fuel = "unlimited"
timeout-ms = 300
"#;

const CHAOS_ENDLESS: &str = r#"
[limits]
fuel = "unlimited"
timeout-ms = "none"
"#;

const CHAOS_DEAF: &str = r#"
lifecycle = "long-lived"
stop-grace-ms = 300
"#;

/// A long-lived chaos held to a slow event rate.
const CHAOS_RATED: &str = r#"
lifecycle = "long-lived"
[limits]
max-events-per-second = 10
event-burst = 20
"#;

/// A chaos that sleeps with a scratch directory (for the crash clean-up test).
const CHAOS_SCRATCH: &str = r#"
scratch-dir = true
[limits]
fuel = "unlimited"
timeout-ms = "none"
"#;

const QUEUE_WORKER_FAST: &str = r#"
lifecycle = "long-lived"
[env]
POLL_INTERVAL_MS = "25"
"#;

struct Host {
    db: TestDb,
    agents: AgentDir,
    runtime: Arc<WasmRuntime>,
    registry: Arc<DirRegistry>,
    api: RunApi,
    pool: Option<PoolHandle>,
}

/// Which jobs run in the none sandbox.
type Trusted = dyn Fn(&Job, &AgentSpec) -> bool + Send + Sync;

/// The engine every test host gets unless it says otherwise.
fn engine() -> EngineConfig {
    EngineConfig {
        max_instances: 64,
        cache_dir: Some(drover_test_support::cache_dir()),
        ..EngineConfig::default()
    }
}

impl Host {
    /// A host whose agent directory holds echo, queue-worker and the chaos variants.
    async fn start() -> Self {
        let agents = AgentDir::new();
        agents
            .add("echo", ECHO, None)
            .add("queue-worker", QUEUE_WORKER, Some(QUEUE_WORKER_FAST))
            .add("chaos", CHAOS, Some(CHAOS_LIMITED))
            .add("chaos-unmetered", CHAOS, Some(CHAOS_UNMETERED))
            .add("chaos-endless", CHAOS, Some(CHAOS_ENDLESS))
            .add("chaos-deaf", CHAOS, Some(CHAOS_DEAF))
            .add("chaos-rated", CHAOS, Some(CHAOS_RATED));
        Self::start_with(agents, |_job, _spec| false).await
    }

    /// A host on `agents`; jobs for which `trusted` says so run in the none sandbox.
    async fn start_with(
        agents: AgentDir,
        trusted: impl Fn(&Job, &AgentSpec) -> bool + Send + Sync + 'static,
    ) -> Self {
        Self::start_on(engine(), agents, Arc::new(trusted)).await
    }

    /// A host whose wasm engine is set up by `config`.
    async fn start_on(config: EngineConfig, agents: AgentDir, trusted: Arc<Trusted>) -> Self {
        let db = TestDb::new().await;
        let runtime = WasmRuntime::new(&config, db.dir.path().join("scratch")).expect("runtime");
        let registry = DirRegistry::open(agents.path(), Arc::clone(&runtime))
            .await
            .expect("registry");
        let wasm: Arc<dyn Sandbox> = Arc::new(WasmSandbox::new(Arc::clone(&runtime)));
        let none: Arc<dyn Sandbox> = Arc::new(NoneSandbox::with_wasm(Arc::clone(&runtime)));
        let sandbox_for: SandboxFor = Arc::new(move |job, spec| {
            if trusted(job, spec) {
                Arc::clone(&none)
            } else {
                Arc::clone(&wasm)
            }
        });
        let registry_dyn: Arc<dyn Registry> = registry.clone();
        let api = RunApi::new(
            db.queue.clone(),
            db.store.clone(),
            Arc::clone(&registry_dyn),
        );
        let pool = WorkerPool::new(
            PoolDeps {
                queue: db.queue.clone(),
                store: db.store.clone(),
                registry: registry_dyn,
                sandbox_for,
            },
            PoolConfig {
                concurrency: 4,
                signal_poll_interval: Duration::from_millis(50),
                ..PoolConfig::default()
            },
        )
        .start();
        Self {
            db,
            agents,
            runtime,
            registry,
            api,
            pool: Some(pool),
        }
    }

    /// `GET /v1/templates`, from the real HTTP API on this host's registry.
    async fn templates(&self) -> Value {
        let registry = Arc::clone(&self.registry);
        let state = HttpState {
            api: self.api.clone(),
            problems: Arc::new(move || registry.problems()),
            metrics: Arc::new(Metrics::new(None)),
            auth: drover_host::api::auth::Auth::none(),
            stale_after: Duration::from_secs(90),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let server = tokio::spawn(async move { axum::serve(listener, http::router(state)).await });
        let body = reqwest::get(format!("http://{address}/v1/templates"))
            .await
            .expect("GET /v1/templates")
            .json::<Value>()
            .await
            .expect("json");
        server.abort();
        body
    }

    async fn run(&self, agent: &str, input: Value) -> JobView {
        let job = self
            .api
            .enqueue(NewJob::new(agent, &input))
            .await
            .expect("enqueue")
            .job;
        self.api.wait_for(&job.id, WAIT).await.expect("wait")
    }

    /// Runs a chaos mode and returns the failed job's view.
    async fn contained(&self, agent: &str, mode: &str) -> (JobView, Run) {
        let view = self.run(agent, json!({ "mode": mode })).await;
        assert_eq!(view.job.status, JobStatus::Failed, "{mode}: {:?}", view.job);
        let run = view.run.clone().expect("run");
        // The host is fine and the next job on the same pool succeeds.
        self.echo_still_works().await;
        (view, run)
    }

    async fn echo_still_works(&self) {
        let view = self.run("echo", json!({ "n": 7 })).await;
        assert_eq!(view.job.status, JobStatus::Done);
        assert_eq!(
            output(&view.run.expect("run")),
            json!({ "received": 7, "ok": true })
        );
    }

    async fn events(&self, run: &Run) -> Vec<(String, Value)> {
        self.pool.as_ref().expect("pool").flush().await;
        self.api
            .events(&run.id, 0, 10_000)
            .await
            .expect("events")
            .into_iter()
            .map(|e| (e.kind, serde_json::from_str(e.payload.get()).expect("json")))
            .collect()
    }

    async fn shutdown(mut self) {
        if let Some(pool) = self.pool.take() {
            pool.shutdown().await;
        }
    }
}

fn output(run: &Run) -> Value {
    serde_json::from_str(run.output.as_ref().expect("output").get()).expect("json")
}

fn error_of(run: &Run) -> (String, String) {
    let e = run.error.clone().expect("error");
    (e.tag, e.message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_runs_in_the_wasm_sandbox() {
    let host = Host::start().await;
    let view = host.run("echo", json!({ "n": 42 })).await;
    assert_eq!(view.job.status, JobStatus::Done);
    let run = view.run.expect("run");
    assert_eq!(output(&run), json!({ "received": 42, "ok": true }));
    assert_eq!(run.sandbox.as_deref(), Some("wasm"));
    assert!(run.fuel_used.is_some_and(|f| f > 0), "fuel is metered");
    assert!(run.peak_memory.is_some_and(|m| m > 0), "memory is measured");
    let spec = host.registry.get("echo").expect("echo");
    assert_eq!(spec.lifecycle, Lifecycle::Job);
    assert!(
        spec.input_schema.is_some(),
        "the schema comes from describe"
    );
    assert!(
        spec.description.contains("received"),
        "{}",
        spec.description
    );
    host.shutdown().await;
}

/// An agent built against `drover:agent@0.1.0`, before models and tools, loads and runs
/// unchanged beside the current ones, with its events and its schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_built_against_wit_0_1_0_still_runs() {
    let host = Host::start().await;
    host.agents.add("echo-old", ECHO_V0_1, None);
    host.registry.rescan().await;
    let spec = host
        .registry
        .get("echo-old")
        .expect("the 0.1.0 agent loads");
    let AgentCode::Wasm(agent) = &spec.code else {
        panic!("a component")
    };
    let imports = &agent.description().imports;
    assert!(
        imports.iter().any(|i| i == "drover:agent/host@0.1.0"),
        "{imports:?}"
    );
    assert!(
        !imports.iter().any(|i| i.contains("@0.2.0")),
        "it knows nothing newer: {imports:?}"
    );
    assert!(spec.input_schema.is_some());

    let view = host.run("echo-old", json!({ "n": 42 })).await;
    assert_eq!(view.job.status, JobStatus::Done, "{:?}", view.run);
    let run = view.run.expect("run");
    assert_eq!(output(&run), json!({ "received": 42, "ok": true }));
    let events = host.events(&run).await;
    let echoed = events
        .iter()
        .find(|(kind, _)| kind == "echoed")
        .expect("its event is recorded");
    assert_eq!(echoed.1["n"], 42);
    assert!(echoed.1["at"].as_u64().is_some_and(|t| t > 0));

    let refused = host
        .api
        .enqueue(NewJob::new("echo-old", &json!({ "n": "x" })))
        .await;
    assert!(
        matches!(&refused, Err(ApiError::BadRequest(e)) if e.tag == "InvalidInput"),
        "its schema is applied: {refused:?}"
    );
    host.echo_still_works().await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_that_breaks_the_agents_schema_fails_at_once() {
    let host = Host::start().await;
    let rejected = host
        .api
        .enqueue(NewJob::new("echo", &json!({ "n": "seven" })))
        .await;
    match rejected {
        Err(ApiError::BadRequest(e)) => {
            assert_eq!(e.tag, "InvalidInput");
            assert!(e.message.contains("/n"), "{}", e.message);
        }
        other => panic!("expected InvalidInput, got {other:?}"),
    }
    // Straight onto the queue (another producer): fails without retry, before any run.
    host.db
        .queue
        .enqueue(NewJob::new("echo", &json!({})).id("no-n").max_attempts(3))
        .await
        .expect("enqueue");
    let view = host.api.wait_for("no-n", WAIT).await.expect("wait");
    assert_eq!(view.job.status, JobStatus::Failed);
    assert_eq!(view.job.attempts, 1);
    assert_eq!(
        view.job.result_error.map(|e| e.tag),
        Some("InvalidInput".into())
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_loop_runs_out_of_fuel() {
    let host = Host::start().await;
    let (_, run) = host.contained("chaos", "spin").await;
    assert_eq!(run.status, RunStatus::Quota);
    let (tag, message) = error_of(&run);
    assert_eq!(tag, "OutOfFuel");
    assert!(message.contains("200000000"), "{message}");
    assert!(run.fuel_used.is_some_and(|f| f >= 200_000_000));
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_loop_without_a_fuel_limit_times_out() {
    let host = Host::start().await;
    let (_, run) = host.contained("chaos-unmetered", "spin").await;
    assert_eq!(run.status, RunStatus::Timeout);
    assert_eq!(error_of(&run).0, "Timeout");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_hoarding_hits_the_memory_limit() {
    let host = Host::start().await;
    let (_, run) = host.contained("chaos", "hoard").await;
    assert_eq!(run.status, RunStatus::Error);
    let (tag, message) = error_of(&run);
    assert_eq!(tag, "MemoryLimit");
    assert!(message.contains("memory limit of 32 MiB"), "{message}");
    // What the guest did then: Rust's allocation failure aborts, and says so on stderr.
    assert!(
        message.contains("wasm trap: wasm `unreachable` instruction executed"),
        "{message}"
    );
    assert!(
        message.contains("memory allocation of 1048576 bytes failed"),
        "{message}"
    );
    assert_no_backtrace_header(&message);
    assert!(
        run.peak_memory.is_some_and(|m| m <= 32 << 20),
        "{:?}",
        run.peak_memory
    );
    host.shutdown().await;
}

/// Trap messages carry the trap, not wasmtime's backtrace header, and stay short.
fn assert_no_backtrace_header(message: &str) {
    assert!(
        !message.contains("error while executing at wasm backtrace"),
        "{message}"
    );
    assert!(message.len() < 2000, "{} bytes: {message}", message.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_is_limited_by_the_engines_cap_too() {
    let agents = AgentDir::new();
    agents
        .add("echo", ECHO, None)
        // No memory in the manifest: the 64 MiB default is more than this engine grants, so
        // the engine's 16 MiB is the limit.
        .add("chaos", CHAOS, None)
        .add("chaos-trusted", CHAOS, None)
        .add("greedy", CHAOS, Some("[limits]\nmemory = \"32MiB\""))
        .add("boundless", CHAOS, Some("[limits]\nmemory = \"unlimited\""));
    let config = EngineConfig {
        max_memory_bytes: 16 << 20,
        ..engine()
    };
    let host = Host::start_on(
        config,
        agents,
        Arc::new(|_job: &Job, spec: &AgentSpec| spec.id == "chaos-trusted"),
    )
    .await;

    // A manifest asking for more than the engine grants is refused at load, clearly.
    let ids: Vec<String> = host.registry.list().iter().map(|s| s.id.clone()).collect();
    assert_eq!(ids, ["chaos", "chaos-trusted", "echo"]);
    let templates = host.templates().await;
    let problems = templates["problems"].as_array().expect("problems");
    assert_eq!(problems.len(), 2, "{problems:?}");
    for (file, asked) in [
        ("greedy.wasm", "32 MiB"),
        ("boundless.wasm", "\"unlimited\""),
    ] {
        let problem = problems
            .iter()
            .find(|p| p["path"].as_str().is_some_and(|p| p.ends_with(file)))
            .unwrap_or_else(|| panic!("no problem for {file}: {problems:?}"));
        let error = problem["error"].as_str().expect("error");
        assert!(
            error.contains(&format!(
                "memory = {asked} is more than this host grants an instance (16 MiB"
            )),
            "{error}"
        );
    }
    let chaos = host.registry.get("chaos").expect("chaos");
    assert_eq!(chaos.limits.memory_bytes, 16 << 20);

    // Sandboxed: held to the (clamped) limit.
    let (_, run) = host.contained("chaos", "hoard").await;
    let (tag, message) = error_of(&run);
    assert_eq!(tag, "MemoryLimit", "{message}");
    assert!(message.contains("memory limit of 16 MiB"), "{message}");

    // Trusted runs have no memory limit of their own, but the pool slot's cap still stops them,
    // and that is reported as what it is.
    let (_, run) = host.contained("chaos-trusted", "hoard").await;
    assert_eq!(run.sandbox.as_deref(), Some("none"));
    let (tag, message) = error_of(&run);
    assert_eq!(tag, "MemoryLimit", "{message}");
    assert!(
        message.contains("this host grants an instance at most 16 MiB"),
        "{message}"
    );
    assert_no_backtrace_header(&message);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_fails_the_run_with_its_message() {
    let host = Host::start().await;
    let (_, run) = host.contained("chaos", "panic").await;
    let (tag, message) = error_of(&run);
    assert_eq!(tag, "Trap");
    // The trap itself, the frame that panicked (past the abort machinery), and the panic's
    // message from stderr.
    assert!(
        message.contains("wasm trap: wasm `unreachable` instruction executed"),
        "{message}"
    );
    let frames = message
        .split_once("(in ")
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(frames, _)| frames)
        .unwrap_or_else(|| panic!("no frames: {message}"));
    assert!(frames.starts_with("chaos.wasm!"), "{frames}");
    assert!(
        !frames.contains("abort") && !frames.contains("panicking"),
        "{frames}"
    );
    assert!(message.contains("panicked on purpose"), "{message}");
    assert_no_backtrace_header(&message);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_recursion_overflows_the_stack_safely() {
    let host = Host::start().await;
    let (_, run) = host.contained("chaos", "recurse").await;
    let (tag, message) = error_of(&run);
    assert_eq!(tag, "StackOverflow", "{message}");
    assert!(
        message.contains("wasm trap: call stack exhausted"),
        "{message}"
    );
    assert!(message.contains("chaos.wasm!chaos::recurse ×"), "{message}");
    assert_no_backtrace_header(&message);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_out_of_bounds_read_traps_with_its_address() {
    let host = Host::start().await;
    let (_, run) = host.contained("chaos", "oob").await;
    let (tag, message) = error_of(&run);
    assert_eq!(tag, "Trap", "{message}");
    assert!(
        message.contains("wasm trap: out of bounds memory access"),
        "{message}"
    );
    assert!(
        message.contains("memory fault at wasm address 0xffffff00"),
        "{message}"
    );
    assert_no_backtrace_header(&message);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_filesystem_is_limited_to_the_scratch_directory() {
    let host = Host::start().await;
    let view = host.run("chaos", json!({ "mode": "escape" })).await;
    assert_eq!(view.job.status, JobStatus::Done);
    let out = output(&view.run.expect("run"));
    let attempts = out["attempts"].as_array().expect("attempts");
    // Each attempt, the stage at which it failed, and why.
    let expected = [
        // Paths outside every preopen: there is nothing to open them in.
        ("/etc/passwd", "read", "NotFound"),
        ("/proc/self/environ", "read", "NotFound"),
        ("../../etc/passwd", "read", "NotFound"),
        // Paths that start in /scratch and climb out: refused by the directory capability.
        ("/scratch/../etc/passwd", "read", "PermissionDenied"),
        ("/scratch/../../../etc/passwd", "read", "PermissionDenied"),
        // A link to an absolute path cannot even be made.
        ("symlink to /etc/passwd", "create-symlink", "not-permitted"),
        // Links to relative paths outside can be made; reading through them is refused.
        ("symlink to ../../etc/passwd", "read", "PermissionDenied"),
        (
            "symlink to .., then up/etc/passwd",
            "read",
            "PermissionDenied",
        ),
        // The root is not a directory the agent has.
        ("list /", "list", "NotFound"),
    ];
    assert_eq!(attempts.len(), expected.len(), "{out}");
    for (attempt, (what, stage, error)) in attempts.iter().zip(expected) {
        assert_eq!(attempt["what"], what, "{attempt}");
        assert_eq!(attempt["escaped"], json!(false), "{attempt}");
        assert_eq!(attempt["stage"], stage, "{attempt}");
        assert!(
            attempt["error"]
                .as_str()
                .is_some_and(|e| e.starts_with(error)),
            "{attempt}"
        );
    }
    assert_eq!(
        out["scratch"],
        json!({ "Ok": "hello" }),
        "the scratch directory works"
    );
    // And it is gone after the run.
    let leftovers = std::fs::read_dir(host.runtime.scratch_dir())
        .expect("the runtime's scratch directory")
        .filter_map(Result::ok)
        .filter(|e| e.file_name() != ".lock")
        .count();
    assert_eq!(leftovers, 0, "scratch directories are removed");
    host.echo_still_works().await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_environment_holds_only_the_manifests_variables() {
    let host = Host::start().await;
    let view = host.run("chaos", json!({ "mode": "env" })).await;
    assert_eq!(view.job.status, JobStatus::Done);
    let env = output(&view.run.expect("run"));
    assert_eq!(env, json!({ "GREETING": "hello from the manifest" }));
    host.echo_still_works().await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_output_is_refused() {
    let host = Host::start().await;
    let view = host
        .run("chaos", json!({ "mode": "big-output", "bytes": 1_000_000 }))
        .await;
    assert_eq!(view.job.status, JobStatus::Failed);
    let (tag, message) = error_of(&view.run.expect("run"));
    assert_eq!(tag, "OutputTooLarge");
    assert!(message.contains("65536"), "{message}");
    host.echo_still_works().await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_flood_is_cut_off_at_the_limit() {
    let host = Host::start().await;
    let (_, run) = host.contained("chaos", "flood").await;
    let (tag, _) = error_of(&run);
    assert_eq!(tag, "EventLimit");
    let events = host.events(&run).await;
    let floods = events.iter().filter(|(k, _)| k == "flood").count();
    assert_eq!(floods, 50, "exactly the limit was kept");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_payload_over_the_size_limit_fails_the_run() {
    let host = Host::start().await;
    // Well under the 64 KiB default: fine.
    let view = host
        .run("chaos", json!({ "mode": "big-event", "bytes": 1000 }))
        .await;
    assert_eq!(view.job.status, JobStatus::Done);
    let view = host
        .run("chaos", json!({ "mode": "big-event", "bytes": 100_000 }))
        .await;
    assert_eq!(view.job.status, JobStatus::Failed);
    let run = view.run.expect("run");
    let (tag, message) = error_of(&run);
    assert_eq!(tag, "EventLimit");
    assert!(
        message
            .contains("event payload of 100011 bytes is larger than the agent's limit of 64 KiB"),
        "{message}"
    );
    let events = host.events(&run).await;
    assert!(!events.iter().any(|(k, _)| k == "big"), "nothing was kept");
    host.echo_still_works().await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_lived_agent_is_held_to_its_event_rate() {
    let host = Host::start().await;
    // Long-lived agents have no event count, but a rate by default.
    let worker = host.registry.get("queue-worker").expect("queue-worker");
    assert_eq!(worker.limits.max_events, None);
    assert_eq!(
        worker.limits.event_rate,
        Some(DEFAULT_LONG_LIVED_EVENT_RATE)
    );

    let (_, run) = host.contained("chaos-rated", "flood").await;
    let (tag, message) = error_of(&run);
    assert_eq!(tag, "EventLimit");
    assert!(
        message.contains("faster than its limit of 10 per second (bursts of 20"),
        "{message}"
    );
    let floods = host
        .events(&run)
        .await
        .iter()
        .filter(|(k, _)| k == "flood")
        .count() as i64;
    // The burst, plus what the rate refilled while the run lasted; no more.
    let lasted_ms = run.ended_at.expect("ended") - run.started_at;
    assert!(floods >= 20, "{floods}");
    assert!(
        floods <= 20 + 10 * lasted_ms / 1000 + 1,
        "{floods} in {lasted_ms} ms"
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_calls_share_the_log_budget_with_stdout() {
    let host = Host::start().await;
    // 2000 `log` calls: far more than the 50 events and the 4 KiB of log the agent may have.
    // They are log output, not events: kept up to the budget, then dropped with a notice.
    let view = host
        .run("chaos", json!({ "mode": "log-flood", "lines": 2000 }))
        .await;
    assert_eq!(view.job.status, JobStatus::Done, "{:?}", view.run);
    let events = host.events(&view.run.expect("run")).await;
    let logs: Vec<&Value> = events
        .iter()
        .filter(|(k, _)| k == "log")
        .map(|(_, p)| p)
        .collect();
    assert_eq!(
        logs[0],
        &json!({ "level": "info", "message": "log line 0" })
    );
    let kept: usize = logs
        .iter()
        .filter(|p| p["level"] == "info")
        .map(|p| p["message"].as_str().map_or(0, str::len))
        .sum();
    assert!((4000..=4096).contains(&kept), "kept {kept} bytes");
    let notices = logs
        .iter()
        .filter(|p| {
            p["message"]
                .as_str()
                .is_some_and(|m| m.contains("truncated"))
        })
        .count();
    assert_eq!(notices, 1, "{logs:?}");

    // One huge message is cut to the budget too.
    let view = host
        .run(
            "chaos",
            json!({ "mode": "log-flood", "lines": 1, "bytes": 1_000_000 }),
        )
        .await;
    assert_eq!(view.job.status, JobStatus::Done);
    let events = host.events(&view.run.expect("run")).await;
    let kept: usize = events
        .iter()
        .filter(|(k, p)| k == "log" && p["level"] == "info")
        .map(|(_, p)| p["message"].as_str().map_or(0, str::len))
        .sum();
    assert_eq!(kept, 4096);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_and_stderr_become_bounded_log_events() {
    let host = Host::start().await;
    let view = host
        .run("chaos", json!({ "mode": "print", "lines": 2 }))
        .await;
    assert_eq!(view.job.status, JobStatus::Done);
    let events = host.events(&view.run.expect("run")).await;
    let logs: Vec<(String, String)> = events
        .iter()
        .filter(|(k, _)| k == "log")
        .map(|(_, p)| {
            (
                p["stream"].as_str().unwrap_or_default().to_string(),
                p["message"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert!(
        logs.contains(&("stdout".into(), "stdout line 0".into())),
        "{logs:?}"
    );
    assert!(
        logs.contains(&("stderr".into(), "stderr line 1".into())),
        "{logs:?}"
    );

    // Far more output than the 4 KiB budget: kept up to the budget, then a truncation notice.
    let view = host
        .run("chaos", json!({ "mode": "print", "lines": 2000 }))
        .await;
    assert_eq!(view.job.status, JobStatus::Done);
    let events = host.events(&view.run.expect("run")).await;
    let kept: usize = events
        .iter()
        .filter(|(k, _)| k == "log")
        .map(|(_, p)| p["message"].as_str().map_or(0, str::len))
        .sum();
    assert!(kept <= 4096 + 100, "kept {kept} bytes");
    assert!(
        events.iter().any(|(_, p)| p["message"]
            .as_str()
            .is_some_and(|m| m.contains("truncated"))),
        "a truncation notice"
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_spinning_guest_interrupts_it() {
    let host = Host::start().await;
    let job = host
        .api
        .enqueue(NewJob::new("chaos-endless", &json!({ "mode": "spin" })).max_attempts(3))
        .await
        .expect("enqueue")
        .job;
    wait_for_status(&host.db.queue, &job.id, JobStatus::Leased).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    host.api.cancel(&job.id).await.expect("cancel");
    let view = host.api.wait_for(&job.id, WAIT).await.expect("wait");
    assert_eq!(view.job.status, JobStatus::Failed);
    assert_eq!(view.job.attempts, 1, "a cancel is never retried");
    let run = view.run.expect("run");
    assert_eq!(run.status, RunStatus::Cancelled);
    assert_eq!(error_of(&run).0, "Cancelled");
    host.echo_still_works().await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agents_own_error_says_whether_to_retry() {
    let host = Host::start().await;
    let permanent = host
        .api
        .enqueue(
            NewJob::new("chaos", &json!({ "mode": "fail", "retryable": false })).max_attempts(3),
        )
        .await
        .expect("enqueue")
        .job;
    let view = host.api.wait_for(&permanent.id, WAIT).await.expect("wait");
    assert_eq!(view.job.status, JobStatus::Failed);
    assert_eq!(view.job.attempts, 1);
    assert_eq!(
        view.job.result_error.map(|e| (e.tag, e.message)),
        Some(("ChaosFailure".into(), "failed on purpose".into()))
    );
    let retryable = host
        .api
        .enqueue(NewJob::new("chaos", &json!({ "mode": "fail" })).max_attempts(3))
        .await
        .expect("enqueue")
        .job;
    let view = host.api.wait_for(&retryable.id, WAIT).await.expect("wait");
    assert_eq!(view.job.status, JobStatus::Failed);
    assert_eq!(view.job.attempts, 3, "retried until attempts ran out");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_worker_heartbeats_until_stopped_and_completes() {
    let host = Host::start().await;
    let spec = host.registry.get("queue-worker").expect("queue-worker");
    assert_eq!(spec.lifecycle, Lifecycle::LongLived);
    let job = host
        .api
        .enqueue(NewJob::new("queue-worker", &json!({ "itemsPerBatch": 2 })))
        .await
        .expect("enqueue")
        .job;
    wait_for_status(&host.db.queue, &job.id, JobStatus::Leased).await;
    // Heartbeats accumulate while it runs.
    let run = loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let view = host.api.get(&job.id).await.expect("get");
        if let Some(run) = view.run {
            let beats = host
                .events(&run)
                .await
                .iter()
                .filter(|(k, _)| k == "heartbeat")
                .count();
            if beats >= 3 {
                break run;
            }
        }
    };
    assert_eq!(run.status, RunStatus::Running);
    assert!(run.heartbeat_at.is_some());
    host.api.stop(&job.id).await.expect("stop");
    let view = host.api.wait_for(&job.id, WAIT).await.expect("wait");
    assert_eq!(
        view.job.status,
        JobStatus::Done,
        "a requested stop is a completion"
    );
    let run = view.run.expect("run");
    assert_eq!(run.status, RunStatus::Success);
    let out = output(&run);
    assert!(
        out["itemsProcessed"].as_u64().is_some_and(|n| n >= 2),
        "{out}"
    );
    let events = host.events(&run).await;
    let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds[..2], ["run_start", "worker_started"]);
    assert!(kinds.contains(&"item_processed"));
    assert_eq!(kinds[kinds.len() - 2..], ["worker_stopping", "run_end"]);
    let started = &events[1].1;
    assert_eq!(
        started["intervalMs"],
        json!(25),
        "the manifest's env reached the agent"
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_ignores_a_stop_is_interrupted_after_its_grace_period() {
    let host = Host::start().await;
    let job = host
        .api
        .enqueue(NewJob::new("chaos-deaf", &json!({ "mode": "deaf" })))
        .await
        .expect("enqueue")
        .job;
    wait_for_status(&host.db.queue, &job.id, JobStatus::Leased).await;
    host.api.stop(&job.id).await.expect("stop");
    let view = host.api.wait_for(&job.id, WAIT).await.expect("wait");
    assert_eq!(view.job.status, JobStatus::Failed);
    let run = view.run.expect("run");
    assert_eq!(run.status, RunStatus::Interrupted);
    assert_eq!(error_of(&run).0, "StopTimeout");
    host.echo_still_works().await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_components_and_manifests_are_reported_and_skipped() {
    let agents = AgentDir::new();
    agents
        .add("echo", ECHO, None)
        .add_bytes("garbage", b"\0asm\x0d\0\x01\0 not really")
        .add_bytes("core", b"\0asm\x01\0\0\0")
        .add_bytes("notes", b"hello, I am text")
        .add_bytes("empty", b"")
        .add("badmanifest", ECHO, Some("lifecycle = \"sometimes\""))
        .add("dup", ECHO, Some("id = \"echo\""));
    std::fs::write(agents.path().join("readme.toml"), "not = \"an agent\"").expect("write");
    // A component's manifest waiting for its component is neither an agent nor a problem.
    std::fs::write(
        agents.path().join("waiting.toml"),
        "description = \"its .wasm is not copied in yet\"\n[limits]\ntimeout-ms = 1000\n",
    )
    .expect("write");
    let host = Host::start_with(agents, |_, _| false).await;
    let ids: Vec<String> = host.registry.list().iter().map(|s| s.id.clone()).collect();
    assert_eq!(ids, ["echo"]);
    let problems = host.registry.problems();
    let files: Vec<String> = problems
        .iter()
        .map(|p| {
            p.path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(
        files,
        [
            "badmanifest.wasm",
            "core.wasm",
            "dup.wasm",
            "empty.wasm",
            "garbage.wasm",
            "notes.wasm",
            "readme.toml"
        ],
        "{problems:?}"
    );
    for problem in &problems {
        assert!(!problem.error.is_empty());
    }
    let dup = problems
        .iter()
        .find(|p| p.path.ends_with("dup.wasm"))
        .expect("dup");
    assert!(dup.error.contains("already taken"), "{}", dup.error);
    let bad = problems
        .iter()
        .find(|p| p.path.ends_with("badmanifest.wasm"))
        .expect("bad manifest");
    assert!(bad.error.contains("sometimes"), "{}", bad.error);
    let error = |file: &str| {
        problems
            .iter()
            .find(|p| p.path.ends_with(file))
            .map(|p| p.error.clone())
            .unwrap_or_default()
    };
    // A core module is told how to become a component; no file's bytes are dumped.
    let core = error("core.wasm");
    assert!(
        core.contains("core WebAssembly module")
            && core.contains("wasm32-wasip2")
            && core.contains("wasm-tools component new"),
        "{core}"
    );
    assert!(
        error("notes.wasm").contains("not WebAssembly"),
        "{}",
        error("notes.wasm")
    );
    assert!(
        error("empty.wasm").contains("empty"),
        "{}",
        error("empty.wasm")
    );
    for problem in &problems {
        assert!(
            !problem.error.contains("actual=[") && !problem.error.contains("0x61"),
            "{}",
            problem.error
        );
    }
    let stray = problems
        .iter()
        .find(|p| p.path.ends_with("readme.toml"))
        .expect("a manifest without a component");
    assert!(
        stray.error.contains("no component readme.wasm beside it")
            && stray.error.contains("system-prompt"),
        "{}",
        stray.error
    );
    host.echo_still_works().await;
    host.shutdown().await;
}

/// The shipped declarative echo agent, `agents/echo-llm.toml`.
fn echo_llm_manifest() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../agents/echo-llm.toml");
    std::fs::read_to_string(&path).expect("agents/echo-llm.toml")
}

/// Waits until `check` holds of the registry, rescanning meanwhile.
async fn until(host: &Host, what: &str, check: impl Fn(&DirRegistry) -> bool) {
    let deadline = std::time::Instant::now() + WAIT;
    while !check(&host.registry) {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declarative_agents_load_from_toml_and_reload() {
    let agents = AgentDir::new();
    agents.add("echo", ECHO, None).add(
        "tooled",
        ECHO,
        Some("models = [\"cheap\"]\ntools = [\"calc\"]\n[quota]\nmax-tool-calls = 3"),
    );
    let dir = agents.path().to_path_buf();
    std::fs::write(dir.join("echo-llm.toml"), echo_llm_manifest()).expect("write");
    std::fs::write(dir.join("Cargo.toml"), "[workspace]\nmembers = []\n").expect("write");
    let host = Host::start_with(agents, |_, _| false).await;
    assert!(
        host.registry.problems().is_empty(),
        "{:?}",
        host.registry.problems()
    );

    // The shipped echo: a prompt, a model, schemas from TOML tables, and a turn budget.
    let spec = host.registry.get("echo-llm").expect("echo-llm is an agent");
    let AgentCode::Declarative(agent) = &spec.code else {
        panic!("echo-llm is declarative: {:?}", spec.code);
    };
    assert_eq!(
        agent.system_prompt,
        "Reply with {received, ok: true} as JSON."
    );
    assert_eq!(agent.model, "cheap");
    assert_eq!(spec.models, ["cheap"], "its model is one it may call");
    assert!(spec.tools.is_empty());
    assert_eq!(spec.quota.max_turns, Some(2));
    assert_eq!(spec.lifecycle, Lifecycle::Job);
    let input = spec.input_schema.as_ref().expect("input schema");
    assert!(input.validate(&json!({ "n": 42 })).is_ok());
    assert!(input.validate(&json!({ "n": "forty-two" })).is_err());
    let output = spec.output_schema.as_ref().expect("output schema");
    assert!(
        output
            .validate(&json!({ "received": 42, "ok": true }))
            .is_ok()
    );
    assert!(
        output
            .validate(&json!({ "received": 42, "ok": "yes" }))
            .is_err()
    );
    let tooled = host.registry.get("tooled").expect("tooled");
    assert_eq!(
        (tooled.models.as_slice(), tooled.tools.as_slice()),
        (&["cheap".to_string()][..], &["calc".to_string()][..])
    );
    assert_eq!(tooled.quota.max_tool_calls, Some(3));

    // /v1/templates shows what each agent may use and its budgets.
    let templates = host.templates().await;
    let listed = |id: &str| {
        templates["templates"]
            .as_array()
            .expect("templates")
            .iter()
            .find(|t| t["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} listed: {templates}"))
    };
    let echo_llm = listed("echo-llm");
    assert_eq!(echo_llm["models"], json!(["cheap"]), "{echo_llm}");
    assert_eq!(echo_llm["quota"]["maxTurns"], json!(2), "{echo_llm}");
    assert_eq!(
        echo_llm["declarative"]["model"],
        json!("cheap"),
        "{echo_llm}"
    );
    assert_eq!(listed("tooled")["tools"], json!(["calc"]));
    assert_eq!(listed("echo")["declarative"], Value::Null);

    // Input is checked against its schema; a valid input fails clearly, as this host has no
    // model alias `cheap`, and the host goes on.
    let refused = host
        .api
        .enqueue(NewJob::new("echo-llm", &json!({ "n": "x" })))
        .await
        .expect_err("input against the schema");
    assert!(matches!(refused, ApiError::BadRequest(_)), "{refused:?}");
    let view = host.run("echo-llm", json!({ "n": 42 })).await;
    assert_eq!(view.job.status, JobStatus::Failed);
    let (tag, message) = error_of(&view.run.expect("run"));
    assert_eq!(tag, "ModelUnavailable", "{message}");
    assert!(message.contains("\"cheap\" is not configured"), "{message}");
    host.echo_still_works().await;

    // Editing the file reloads it.
    let _watch = host.registry.watch();
    let edited = echo_llm_manifest().replace("max-turns = 2", "max-turns = 12");
    std::fs::write(dir.join("echo-llm.toml"), edited).expect("edit");
    until(&host, "the edit is picked up", |r| {
        r.get("echo-llm")
            .is_some_and(|s| s.quota.max_turns == Some(12))
    })
    .await;

    // A component beside it makes the pair ambiguous: reported, and the agent is gone.
    host.agents.add("echo-llm", ECHO, None);
    until(&host, "the conflict is reported", |r| {
        r.get("echo-llm").is_none()
            && r.problems()
                .iter()
                .any(|p| p.path.ends_with("echo-llm.wasm"))
    })
    .await;
    let problem = host
        .registry
        .problems()
        .into_iter()
        .find(|p| p.path.ends_with("echo-llm.wasm"))
        .expect("problem");
    assert!(
        problem.error.contains("system-prompt") && problem.error.contains("component beside it"),
        "{}",
        problem.error
    );
    std::fs::remove_file(dir.join("echo-llm.wasm")).expect("remove");
    until(&host, "the declarative agent is back", |r| {
        r.get("echo-llm").is_some_and(|s| s.is_declarative()) && r.problems().is_empty()
    })
    .await;

    // Broken declarative agents are reported with what is missing or wrong; the rest load.
    for (name, text, expected) in [
        ("noprompt", "model = \"cheap\"", "no system-prompt"),
        ("nomodel", "system-prompt = \"Hi.\"", "needs a model"),
        (
            "badquota",
            "system-prompt = \"Hi.\"\nmodel = \"cheap\"\n[quota]\nmax-turns = 0",
            "max-turns must be positive",
        ),
        (
            "badschema",
            "system-prompt = \"Hi.\"\nmodel = \"cheap\"\n[input-schema]\ntype = 7",
            "input-schema",
        ),
        (
            "forever",
            "system-prompt = \"Hi.\"\nmodel = \"cheap\"\nlifecycle = \"long-lived\"",
            "cannot be set for a declarative agent",
        ),
        (
            "badtool",
            "system-prompt = \"Hi.\"\nmodel = \"cheap\"\ntools = [\"a tool\"]",
            "invalid tool name",
        ),
    ] {
        std::fs::write(dir.join(format!("{name}.toml")), text).expect("write");
        host.registry.rescan().await;
        let problems = host.registry.problems();
        let problem = problems
            .iter()
            .find(|p| p.path.ends_with(format!("{name}.toml")))
            .unwrap_or_else(|| panic!("{name} reported: {problems:?}"));
        assert!(
            problem.error.contains(expected),
            "{name}: {}",
            problem.error
        );
        assert!(host.registry.get(name).is_none(), "{name}");
    }
    assert!(host.registry.get("echo-llm").is_some());
    host.echo_still_works().await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_are_hot_reloaded_and_running_jobs_keep_their_version() {
    let agents = AgentDir::new();
    agents.add("worker", QUEUE_WORKER, Some(QUEUE_WORKER_FAST));
    let host = Host::start_with(agents, |_, _| false).await;
    let _watch = host.registry.watch();
    let before = host.registry.get("worker").expect("worker");

    // A long-lived run starts on the current version.
    let job = host
        .api
        .enqueue(NewJob::new("worker", &json!(null)))
        .await
        .expect("enqueue")
        .job;
    wait_for_status(&host.db.queue, &job.id, JobStatus::Leased).await;

    // A new agent appears, and the worker's file is replaced (by another component).
    host.agents.add("echo", ECHO, None);
    host.agents
        .add("worker", CHAOS, Some("lifecycle = \"long-lived\""));
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let replaced = host
            .registry
            .get("worker")
            .is_some_and(|s| !Arc::ptr_eq(&s, &before));
        if replaced && host.registry.get("echo").is_some() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "reload never happened"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    host.echo_still_works().await;

    // The new component is what is registered, and what new jobs run: the digest is the chaos
    // agent's, and only chaos answers `{"mode": "ok"}` with `{"ok": true}`.
    let chaos_digest = sha256_hex(&std::fs::read(CHAOS).expect("read chaos"));
    let worker = host.registry.get("worker").expect("worker");
    match &worker.code {
        AgentCode::Wasm(agent) => assert_eq!(agent.digest(), chaos_digest),
        other => panic!("the worker is a component, not {other:?}"),
    }
    let templates = host.templates().await;
    let listed = templates["templates"]
        .as_array()
        .expect("templates")
        .iter()
        .find(|t| t["id"] == "worker")
        .cloned()
        .expect("worker template");
    assert_eq!(listed["digest"], json!(chaos_digest), "{listed}");
    let view = host.run("worker", json!({ "mode": "ok" })).await;
    assert_eq!(view.job.status, JobStatus::Done);
    assert_eq!(output(&view.run.expect("run")), json!({ "ok": true }));

    // The running job still runs the queue worker it started with, and stops like one.
    host.api.stop(&job.id).await.expect("stop");
    let view = host.api.wait_for(&job.id, WAIT).await.expect("wait");
    assert_eq!(view.job.status, JobStatus::Done);
    let out = output(&view.run.expect("run"));
    assert!(out.get("itemsProcessed").is_some(), "{out}");

    // A broken new version is reported, saying that the previous one keeps running; and it
    // does.
    host.agents.add_bytes("worker", b"\0asm\x01\0\0\0");
    until(&host, "the broken version is reported", |registry| {
        registry
            .problems()
            .iter()
            .any(|p| p.path.ends_with("worker.wasm"))
    })
    .await;
    let problem = host
        .registry
        .problems()
        .into_iter()
        .find(|p| p.path.ends_with("worker.wasm"))
        .expect("the problem");
    assert!(
        problem.error.contains("core WebAssembly module")
            && problem
                .error
                .contains("agent \"worker\" keeps running its previous version"),
        "{}",
        problem.error
    );
    let view = host.run("worker", json!({ "mode": "ok" })).await;
    assert_eq!(
        view.job.status,
        JobStatus::Done,
        "the previous version runs"
    );

    // Removing a file removes its agent.
    std::fs::remove_file(host.agents.path().join("echo.wasm")).expect("remove");
    let deadline = std::time::Instant::now() + WAIT;
    while host.registry.get("echo").is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "removal never noticed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_none_sandbox_runs_a_trusted_wasm_agent_without_isolation() {
    let agents = AgentDir::new();
    agents.add("chaos", CHAOS, Some(CHAOS_LIMITED));
    let host = Host::start_with(agents, |job, _spec| {
        job.meta
            .as_ref()
            .is_some_and(|m| m.get().contains("trusted"))
    })
    .await;
    let isolated = host.run("chaos", json!({ "mode": "env" })).await;
    let trusted_job = host
        .api
        .enqueue(NewJob::new("chaos", &json!({ "mode": "env" })).meta(&json!({ "trusted": true })))
        .await
        .expect("enqueue")
        .job;
    let trusted = host
        .api
        .wait_for(&trusted_job.id, WAIT)
        .await
        .expect("wait");
    let isolated_run = isolated.run.expect("run");
    let trusted_run = trusted.run.expect("run");
    assert_eq!(isolated_run.sandbox.as_deref(), Some("wasm"));
    assert_eq!(trusted_run.sandbox.as_deref(), Some("none"));
    assert!(output(&isolated_run).get("PATH").is_none());
    // Trusted or not, the host's environment is not handed over wholesale: a trusted agent
    // sees what its host puts in its spec (see `DROVER_TRUSTED_ENV`).
    assert!(
        output(&trusted_run).get("PATH").is_none(),
        "the host environment is not inherited"
    );
    host.shutdown().await;
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_component_for_another_world_is_reported_and_skipped() {
    let agents = AgentDir::new();
    agents
        .add("echo", ECHO, None)
        .add_bytes("hollow", &wasm_encoder::Component::new().finish());
    let host = Host::start_with(agents, |_, _| false).await;
    let ids: Vec<String> = host.registry.list().iter().map(|s| s.id.clone()).collect();
    assert_eq!(ids, ["echo"]);
    let problems = host.registry.problems();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].path.ends_with("hollow.wasm"));
    let error = &problems[0].error;
    // It compiles (it is a component), but it is not an agent.
    assert!(
        error.starts_with("the component does not fit the drover:agent world"),
        "{error}"
    );
    assert!(
        error.contains("describe") || error.contains("run"),
        "{error}"
    );
    host.echo_still_works().await;
    host.shutdown().await;
}

/// A TCP listener and a UDP socket on 127.0.0.1 for the `sockets` chaos mode to try.
struct Targets {
    tcp: std::net::TcpListener,
    udp: std::net::UdpSocket,
}

impl Targets {
    fn open() -> Self {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("tcp listener");
        tcp.set_nonblocking(true).expect("nonblocking");
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp socket");
        udp.set_nonblocking(true).expect("nonblocking");
        Self { tcp, udp }
    }

    fn input(&self) -> Value {
        json!({
            "mode": "sockets",
            "port": self.tcp.local_addr().expect("address").port(),
            "udpPort": self.udp.local_addr().expect("address").port(),
        })
    }
}

/// The `sockets` report, by attempt: (escaped, stage, error, result).
fn socket_attempts(out: &Value) -> Vec<(String, Value)> {
    out["attempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .map(|a| {
            (
                a["what"].as_str().unwrap_or_default().to_string(),
                a.clone(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_are_denied_in_the_wasm_sandbox() {
    let host = Host::start().await;
    let targets = Targets::open();
    let view = host.run("chaos", targets.input()).await;
    assert_eq!(view.job.status, JobStatus::Done);
    let run = view.run.expect("run");
    assert_eq!(run.sandbox.as_deref(), Some("wasm"));
    let attempts = socket_attempts(&output(&run));
    let expected = [
        // No socket can even be made.
        ("tcp connect", "create", "access-denied"),
        ("udp send", "create", "access-denied"),
        // wasmtime-wasi answers a lookup it may not make with this code.
        ("name lookup", "resolve", "permanent-resolver-failure"),
    ];
    assert_eq!(attempts.len(), expected.len(), "{attempts:?}");
    for ((what, attempt), (want, stage, error)) in attempts.iter().zip(expected) {
        assert_eq!(what, want);
        assert_eq!(attempt["escaped"], json!(false), "{attempt}");
        assert_eq!(attempt["stage"], stage, "{attempt}");
        assert_eq!(attempt["error"], error, "{attempt}");
    }
    // Nothing reached the listeners (the run is over, so a connection would be waiting).
    let accepted = targets.tcp.accept();
    assert!(
        accepted
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
        "{accepted:?}"
    );
    let mut buf = [0u8; 64];
    let received = targets.udp.recv(&mut buf);
    assert!(
        received
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
        "{received:?}"
    );
    host.echo_still_works().await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_wasm_agent_gets_the_hosts_network() {
    let agents = AgentDir::new();
    agents.add("echo", ECHO, None).add("chaos", CHAOS, None);
    let host = Host::start_with(agents, |_job, spec| spec.id == "chaos").await;
    let targets = Targets::open();
    let view = host.run("chaos", targets.input()).await;
    assert_eq!(view.job.status, JobStatus::Done);
    let run = view.run.expect("run");
    assert_eq!(run.sandbox.as_deref(), Some("none"));
    let attempts = socket_attempts(&output(&run));
    for (what, attempt) in &attempts {
        assert_eq!(attempt["escaped"], json!(true), "{what}: {attempt}");
    }
    // The connection and the datagram really arrived.
    targets.tcp.set_nonblocking(false).expect("blocking");
    let (mut stream, _) = targets.tcp.accept().expect("the agent connected");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut greeting = String::new();
    std::io::Read::read_to_string(&mut stream, &mut greeting).expect("read");
    assert_eq!(greeting, "hello from chaos");
    targets.udp.set_nonblocking(false).expect("blocking");
    targets.udp.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut buf = [0u8; 64];
    let n = targets.udp.recv(&mut buf).expect("the agent's datagram");
    assert_eq!(&buf[..n], b"hello from chaos");
    host.echo_still_works().await;
    host.shutdown().await;
}

/// The `<pid>-…` scratch directory of process `pid` under `root`.
fn scratch_dir_of(root: &std::path::Path, pid: u32) -> Option<std::path::PathBuf> {
    std::fs::read_dir(root)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{pid}-")))
        })
}

/// The run directories in a host's scratch directory.
fn run_dirs(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_hosts_scratch_directories_are_removed_at_the_next_start() {
    const EXE: &str = env!("CARGO_BIN_EXE_drover-host");
    let data = tempfile::tempdir().expect("temp dir");
    let agents = AgentDir::new();
    agents.add("chaos-scratch", CHAOS, Some(CHAOS_SCRATCH));
    let scratch = data.path().join("scratch");
    let args = |name: &str| -> Vec<String> {
        let db = data.path().join(name);
        std::fs::create_dir_all(&db).expect("db dir");
        [
            "--data-dir".to_string(),
            data.path().display().to_string(),
            "--agents".to_string(),
            agents.path().display().to_string(),
            "--cache-dir".to_string(),
            drover_test_support::cache_dir().display().to_string(),
            "--queue-url".to_string(),
            format!("file:{}", db.join("queue.db").display()),
            "--storage-url".to_string(),
            format!("file:{}", db.join("runs.db").display()),
        ]
        .to_vec()
    };

    // Host A runs a job with a scratch directory…
    let a = HostProcess::start(EXE, &args("a"), &[]);
    let enqueued = reqwest::Client::new()
        .post(format!("{}/v1/jobs", a.url))
        .json(&json!({ "agentId": "chaos-scratch", "input": { "mode": "sleep", "ms": 600_000 } }))
        .send()
        .await
        .expect("enqueue");
    assert!(enqueued.status().is_success(), "{enqueued:?}");
    let a_dir = scratch_dir_of(&scratch, a.pid()).expect("host A's scratch directory");
    let deadline = std::time::Instant::now() + WAIT;
    let a_run = loop {
        if let Some(run) = run_dirs(&a_dir).pop() {
            break run;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the run never got its scratch directory"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    // …while host B starts on the same scratch root: A is alive, so its directory stays.
    let b = HostProcess::start(EXE, &args("b"), &[]);
    let b_dir = scratch_dir_of(&scratch, b.pid()).expect("host B's scratch directory");
    assert!(
        a_run.exists(),
        "a live host's run directory survives another's start"
    );

    // A is killed: nothing removes its directory then.
    let a_pid = a.pid();
    a.signal("KILL");
    assert!(a_run.exists());

    // The next host to start removes it, and leaves B's alone.
    let runtime = WasmRuntime::new(&engine(), &scratch).expect("runtime");
    assert!(
        !a_dir.exists(),
        "the killed host {a_pid}'s directory is removed"
    );
    assert!(b_dir.exists(), "the live host's directory stays");
    assert!(runtime.scratch_dir().exists());
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guests_huge_failure_is_stored_cut_to_size() {
    let host = Host::start().await;
    let (view, run) = host.contained("chaos", "long-fail").await;
    let (tag, message) = error_of(&run);
    assert!(tag.len() <= 64 && tag.starts_with("ÉÉ"), "{tag}");
    assert!(message.len() <= 8 << 10, "{} bytes", message.len());
    assert!(
        message.ends_with("[truncated; 1048576 bytes in all]"),
        "{message}"
    );
    let job_error = view.job.result_error.expect("job error");
    assert_eq!((job_error.tag, job_error.message), (tag, message));
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_agents_huge_failure_is_cut_to_size_too() {
    use drover_host::queue::ErrorInfo;
    use drover_host::sandbox::native_agent;
    use drover_host::sandbox::{RunContext, RunIdentity};

    let spec = AgentSpec::native(
        "loud",
        native_agent(|_input, _ctx| async move {
            Err(ErrorInfo::new("T".repeat(1000), "m".repeat(1 << 20)))
        }),
    );
    let ctx = RunContext::detached(
        RunIdentity {
            run_id: Arc::from("loud-1"),
            job_id: "loud".into(),
            agent_id: "loud".into(),
            attempt: 1,
            tenant_id: None,
            user_id: None,
            root_job_id: None,
        },
        None,
    );
    let input: Arc<serde_json::value::RawValue> =
        Arc::from(serde_json::value::to_raw_value(&json!({})).expect("json"));
    let outcome = NoneSandbox::new().run(&spec, input, ctx).await;
    let failure = outcome.result.expect_err("it fails");
    assert_eq!(failure.error.tag, "T".repeat(64));
    assert!(failure.error.message.len() <= 8 << 10);
    assert!(
        failure
            .error
            .message
            .ends_with("[truncated; 1048576 bytes in all]")
    );
}

/// A component of `count` core instances of a module with one memory: tiny, but each instance
/// would take a memory slot of the engine's pool.
fn swarm_component(count: u32) -> Vec<u8> {
    let mut module = wasm_encoder::Module::new();
    let mut memories = wasm_encoder::MemorySection::new();
    memories.memory(wasm_encoder::MemoryType {
        minimum: 1,
        maximum: Some(1),
        memory64: false,
        shared: false,
        page_size_log2: None,
    });
    module.section(&memories);
    let mut component = wasm_encoder::Component::new();
    component.section(&wasm_encoder::ModuleSection(&module));
    let mut instances = wasm_encoder::InstanceSection::new();
    for _ in 0..count {
        instances.instantiate(0, Vec::<(&str, wasm_encoder::ModuleArg)>::new());
    }
    component.section(&instances);
    component.finish()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_of_hundreds_of_core_instances_is_refused_at_load() {
    let agents = AgentDir::new();
    agents
        .add("echo", ECHO, None)
        .add_bytes("swarm", &swarm_component(500));
    let host = Host::start_with(agents, |_, _| false).await;
    let ids: Vec<String> = host.registry.list().iter().map(|s| s.id.clone()).collect();
    assert_eq!(ids, ["echo"]);
    let problems = host.registry.problems();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].path.ends_with("swarm.wasm"));
    let error = &problems[0].error;
    assert!(
        error.contains("500 core module instances") && error.contains("maximum of 16"),
        "{error}"
    );
    // The pool's slots are all there for the agents that did load.
    let jobs = futures::future::join_all((0..8).map(|n| host.run("echo", json!({ "n": n })))).await;
    for view in jobs {
        assert_eq!(view.job.status, JobStatus::Done, "{:?}", view.job);
    }
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_held_without_limit_hit_the_handle_limit() {
    let host = Host::start().await;
    let (_, run) = host.contained("chaos", "pollables").await;
    let (tag, message) = error_of(&run);
    assert_eq!(tag, "HandleLimit", "{message}");
    assert!(message.contains("more than 256 handles"), "{message}");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_files_until_refused_fails_only_that_run() {
    let host = Host::start().await;
    let (_, run) = host.contained("chaos", "open-files").await;
    let (tag, message) = error_of(&run);
    assert_eq!(tag, "HandleLimit", "{message}");
    // Its descriptors are closed and its scratch directory is gone.
    assert!(run_dirs(host.runtime.scratch_dir()).is_empty());
    host.shutdown().await;
}

/// Resident memory of this process, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib << 10
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_random_request_fails_only_that_run() {
    let host = Host::start().await;
    let before = rss();
    let view = host.run("chaos", json!({ "mode": "random" })).await;
    assert_eq!(view.job.status, JobStatus::Failed, "{:?}", view.job);
    let (tag, message) = error_of(&view.run.expect("run"));
    assert_eq!(tag, "HostLimit", "{message}");
    assert!(
        message.contains("more than 1 MiB of random bytes"),
        "{message}"
    );
    assert!(
        rss() < before + (256 << 20),
        "the host allocated for the guest: {} -> {}",
        before,
        rss()
    );
    // A request within the bound is served.
    let view = host
        .run("chaos", json!({ "mode": "random", "bytes": 1000 }))
        .await;
    assert_eq!(view.job.status, JobStatus::Done, "{:?}", view.job);
    assert_eq!(output(&view.run.expect("run"))["bytes"], 1000);
    host.echo_still_works().await;
    host.shutdown().await;
}

/// A chaos with little fuel and plenty of time: only fuel can end a loop of host calls.
const CHAOS_FRUGAL: &str = r#"
[limits]
fuel = 20_000_000
timeout-ms = 20000
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loops_of_cheap_host_calls_run_out_of_fuel() {
    let agents = AgentDir::new();
    agents
        .add("echo", ECHO, None)
        .add("chaos-frugal", CHAOS, Some(CHAOS_FRUGAL));
    let host = Host::start_with(agents, |_, _| false).await;
    for mode in ["clock-loop", "random-loop"] {
        let (_, run) = host.contained("chaos-frugal", mode).await;
        assert_eq!(run.status, RunStatus::Quota, "{mode}: {:?}", run.error);
        assert_eq!(error_of(&run).0, "OutOfFuel");
        assert!(run.fuel_used.is_some_and(|f| f >= 20_000_000));
    }
    host.shutdown().await;
}

/// A component that fits the `drover:agent` world and describes itself with an input schema of
/// `schema_bytes` bytes: `{}` padded with spaces, written by `describe` itself so that the file
/// stays small.
fn bloated_component(schema_bytes: u32) -> Vec<u8> {
    let wat = format!(
        r#"(component
  (core module $m
    (memory (export "mem") 400)
    (global $heap (mut i32) (i32.const 4096))
    (data (i32.const 16) "bloated")
    (data (i32.const 32) "1.0.0")
    (data (i32.const 48) "describes itself at length")
    (data (i32.const 96) "{{}}")
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32)
      (local.set $p (i32.and (i32.add (global.get $heap) (i32.const 7)) (i32.const -8)))
      (global.set $heap (i32.add (local.get $p) (local.get 3)))
      (local.get $p))
    (func (export "describe") (result i32)
      (memory.fill (i32.const 1048576) (i32.const 32) (i32.const {schema_bytes}))
      (i32.store16 (i32.const 1048576) (i32.const 0x7d7b))
      (i32.store (i32.const 256) (i32.const 16))
      (i32.store (i32.const 260) (i32.const 7))
      (i32.store (i32.const 264) (i32.const 32))
      (i32.store (i32.const 268) (i32.const 5))
      (i32.store (i32.const 272) (i32.const 48))
      (i32.store (i32.const 276) (i32.const 26))
      (i32.store8 (i32.const 280) (i32.const 0))
      (i32.store8 (i32.const 284) (i32.const 1))
      (i32.store (i32.const 288) (i32.const 1048576))
      (i32.store (i32.const 292) (i32.const {schema_bytes}))
      (i32.store8 (i32.const 296) (i32.const 0))
      (i32.const 256))
    (func (export "run") (param i32 i32) (result i32)
      (i32.store8 (i32.const 512) (i32.const 0))
      (i32.store (i32.const 516) (i32.const 96))
      (i32.store (i32.const 520) (i32.const 2))
      (i32.const 512)))
  (core instance $i (instantiate $m))
  (type $lifecycle' (enum "job" "long-lived"))
  (export $lifecycle "lifecycle" (type $lifecycle'))
  (type $info' (record
    (field "id" string)
    (field "version" string)
    (field "description" string)
    (field "lifecycle" $lifecycle)
    (field "input-schema" (option string))
    (field "output-schema" (option string))))
  (export $info "agent-info" (type $info'))
  (type $failure' (record (field "tag" string) (field "message" string) (field "retryable" bool)))
  (export $failure "failure" (type $failure'))
  (func (export "describe") (result $info)
    (canon lift (core func $i "describe") (memory (core memory $i "mem")) (realloc (core func $i "realloc"))))
  (func (export "run") (param "input" string) (result (result string (error $failure)))
    (canon lift (core func $i "run") (memory (core memory $i "mem")) (realloc (core func $i "realloc")))))"#
    );
    wat::parse_str(wat).expect("the test component's text is valid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_description_over_its_size_bounds_is_refused_at_load() {
    let agents = AgentDir::new();
    agents
        .add("echo", ECHO, None)
        .add_bytes("modest", &bloated_component(1000))
        .add_bytes("large", &bloated_component(100_000))
        .add_bytes("bloated", &bloated_component(20 << 20));
    let host = Host::start_with(agents, |_, _| false).await;
    let ids: Vec<String> = host.registry.list().iter().map(|s| s.id.clone()).collect();
    assert_eq!(ids, ["echo", "modest"], "{:?}", host.registry.problems());
    let problems = host.registry.problems();
    assert_eq!(problems.len(), 2, "{problems:?}");
    let error_of_file = |name: &str| {
        problems
            .iter()
            .find(|p| p.path.ends_with(name))
            .map(|p| p.error.clone())
            .unwrap_or_else(|| panic!("{name} is not among {problems:?}"))
    };
    let large = error_of_file("large.wasm");
    assert!(
        large.contains("input schema is 100000 bytes; at most 64 KiB"),
        "{large}"
    );
    // Far over the bounds: refused before the host copies it.
    let bloated = error_of_file("bloated.wasm");
    assert!(bloated.contains("it returned more than 1 MiB"), "{bloated}");
    let templates = host.templates().await;
    assert!(
        templates.to_string().len() < 1 << 20,
        "{} bytes",
        templates.to_string().len()
    );
    host.echo_still_works().await;
    host.shutdown().await;
}

/// A chaos that may use 512 MiB of memory.
const CHAOS_BIG: &str = r#"
[limits]
memory = "512MiB"
timeout-ms = 60000
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_a_run_touched_is_returned_when_it_ends() {
    let agents = AgentDir::new();
    agents
        .add("echo", ECHO, None)
        .add("chaos-big", CHAOS, Some(CHAOS_BIG));
    let host = Host::start_with(agents, |_, _| false).await;
    host.echo_still_works().await;
    let baseline = rss();
    let view = host
        .run("chaos-big", json!({ "mode": "touch", "bytes": 400 << 20 }))
        .await;
    assert_eq!(view.job.status, JobStatus::Done, "{:?}", view.job);
    let run = view.run.expect("run");
    assert!(run.peak_memory.is_some_and(|m| m >= 400 << 20));
    let after = rss();
    assert!(
        after < baseline + (150 << 20),
        "{} MiB resident before the run, {} MiB after",
        baseline >> 20,
        after >> 20
    );
    host.echo_still_works().await;
    host.shutdown().await;
}

/// Files anywhere below `dir`.
fn files_below(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => files_below(&e.path()),
                    _ => 1,
                })
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_directory_others_may_write_to_is_not_used() {
    use std::os::unix::fs::PermissionsExt;

    let root = tempfile::tempdir().expect("temp dir");
    let private = root.path().join("private");
    let shared = root.path().join("shared");
    std::fs::create_dir(&shared).expect("shared dir");
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    for (dir, used) in [(&private, true), (&shared, false)] {
        let config = EngineConfig {
            max_instances: 4,
            cache_dir: Some(dir.clone()),
            ..EngineConfig::default()
        };
        let runtime = WasmRuntime::new(&config, root.path().join("scratch")).expect("runtime");
        let bytes = std::fs::read(ECHO).expect("echo component");
        runtime
            .load_bytes(bytes)
            .await
            .expect("echo loads either way");
        assert_eq!(files_below(dir) > 0, used, "{}", dir.display());
    }
    let mode = std::fs::metadata(&private)
        .expect("private dir")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700, "{mode:o}");
}

/// A chaos with a small scratch directory.
const CHAOS_QUOTA: &str = r#"
scratch-dir = true
[limits]
fuel = "unlimited"
scratch-bytes = "4MiB"
scratch-files = 100
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_filling_its_scratch_directory_fails_only_its_run() {
    let agents = AgentDir::new();
    agents
        .add("echo", ECHO, None)
        .add("chaos-quota", CHAOS, Some(CHAOS_QUOTA));
    let host = Host::start_with(agents, |_, _| false).await;
    for (input, over) in [
        (
            json!({ "mode": "fill-disk", "bytes": 256 << 20 }),
            "scratch-bytes",
        ),
        (json!({ "mode": "many-files", "n": 5000 }), "scratch-files"),
    ] {
        let view = host.run("chaos-quota", input.clone()).await;
        assert_eq!(
            view.job.status,
            JobStatus::Failed,
            "{input}: {:?}",
            view.job
        );
        let (tag, message) = error_of(&view.run.expect("run"));
        assert_eq!(tag, "DiskLimit", "{input}: {message}");
        assert!(message.contains(over), "{message}");
        assert!(run_dirs(host.runtime.scratch_dir()).is_empty());
        host.echo_still_works().await;
    }
    // Within the budgets.
    for input in [
        json!({ "mode": "fill-disk", "bytes": 1 << 20 }),
        json!({ "mode": "many-files", "n": 50 }),
    ] {
        let view = host.run("chaos-quota", input.clone()).await;
        assert_eq!(view.job.status, JobStatus::Done, "{input}: {:?}", view.job);
    }
    host.shutdown().await;
}

/// Chaos jobs with a small event byte budget, and a long-lived chaos with a slow byte rate.
fn byte_budget_agents() -> AgentDir {
    let agents = AgentDir::new();
    agents
        .add("echo", ECHO, None)
        .add(
            "chaos-bytes",
            CHAOS,
            Some("[limits]\nmax-events = \"unlimited\"\nmax-event-total-bytes = \"4KiB\"\n"),
        )
        .add(
            "chaos-log-bytes",
            CHAOS,
            Some("[limits]\nmax-event-total-bytes = \"1KiB\"\n"),
        )
        .add(
            "chaos-lines",
            CHAOS,
            Some("[limits]\nmax-log-bytes = \"1KiB\"\n"),
        )
        .add(
            "chaos-byte-rated",
            CHAOS,
            Some(
                "lifecycle = \"long-lived\"\n[limits]\nmax-event-bytes-per-second = \"1KiB\"\n\
                 event-byte-burst = \"4KiB\"\n",
            ),
        );
    agents
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_held_to_its_event_byte_budget() {
    let host = Host::start_with(byte_budget_agents(), |_job, _spec| false).await;
    let defaults = host.registry.get("echo").expect("echo").limits.clone();
    assert_eq!(defaults.max_event_total_bytes, Some(16 << 20));

    // Tiny events count at least 128 bytes each: 4 KiB buys exactly 32 of them.
    let (_, run) = host.contained("chaos-bytes", "flood").await;
    let (tag, message) = error_of(&run);
    assert_eq!(tag, "EventLimit");
    assert!(
        message.contains("more than its limit of 4096 bytes (max-event-total-bytes"),
        "{message}"
    );
    let floods = host
        .events(&run)
        .await
        .iter()
        .filter(|(k, _)| k == "flood")
        .count();
    assert_eq!(floods, 32);

    // One event within the budget is fine; one past it fails the run and is not kept.
    let view = host
        .run("chaos-bytes", json!({ "mode": "big-event", "bytes": 3000 }))
        .await;
    assert_eq!(view.job.status, JobStatus::Done, "{:?}", view.run);
    let view = host
        .run("chaos-bytes", json!({ "mode": "big-event", "bytes": 5000 }))
        .await;
    assert_eq!(view.job.status, JobStatus::Failed);
    let run = view.run.expect("run");
    assert_eq!(error_of(&run).0, "EventLimit");
    assert!(!host.events(&run).await.iter().any(|(k, _)| k == "big"));
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_output_counts_against_the_event_byte_budget() {
    let host = Host::start_with(byte_budget_agents(), |_job, _spec| false).await;
    // 2 × 50 lines of output, each charged at least 128 bytes of a 1 KiB budget.
    let view = host
        .run("chaos-log-bytes", json!({ "mode": "print", "lines": 50 }))
        .await;
    assert_eq!(view.job.status, JobStatus::Failed);
    let run = view.run.expect("run");
    let (tag, message) = error_of(&run);
    assert_eq!(tag, "EventLimit");
    assert!(message.contains("max-event-total-bytes"), "{message}");
    let logs = host
        .events(&run)
        .await
        .iter()
        .filter(|(k, _)| k == "log")
        .count();
    assert_eq!(logs, 8, "1 KiB / 128 bytes");
    host.echo_still_works().await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_lines_cannot_turn_the_log_budget_into_as_many_rows() {
    let host = Host::start_with(byte_budget_agents(), |_job, _spec| false).await;
    // 1000 empty lines are 1000 bytes, within the 1 KiB log budget, but a run gets one log
    // event per 8 bytes of it: 128, then one notice.
    let view = host
        .run(
            "chaos-lines",
            json!({ "mode": "blank-lines", "lines": 1000 }),
        )
        .await;
    assert_eq!(view.job.status, JobStatus::Done, "{:?}", view.run);
    let events = host.events(&view.run.expect("run")).await;
    let logs: Vec<&Value> = events
        .iter()
        .filter(|(k, _)| k == "log")
        .map(|(_, p)| p)
        .collect();
    assert_eq!(
        logs.len(),
        129,
        "{:?}",
        &logs[logs.len().saturating_sub(3)..]
    );
    assert!(
        logs.iter().take(128).all(|p| p["message"] == ""),
        "{:?}",
        &logs[..3]
    );
    let notice = logs[128]["message"].as_str().unwrap_or_default();
    assert!(notice.contains("more than 128 log lines"), "{notice}");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_lived_agent_is_held_to_its_event_byte_rate() {
    let host = Host::start_with(byte_budget_agents(), |_job, _spec| false).await;
    let (_, run) = host.contained("chaos-byte-rated", "flood").await;
    let (tag, message) = error_of(&run);
    assert_eq!(tag, "EventLimit");
    assert!(
        message.contains("faster than its limit of 1024 bytes per second (bursts of 4096"),
        "{message}"
    );
    let floods = host
        .events(&run)
        .await
        .iter()
        .filter(|(k, _)| k == "flood")
        .count() as i64;
    // The burst (32 events of 128 bytes), plus what the rate refilled while the run lasted.
    let lasted_ms = run.ended_at.expect("ended") - run.started_at;
    assert!(floods >= 32, "{floods}");
    assert!(
        floods <= 32 + lasted_ms * 8 / 1000 + 1,
        "{floods} in {lasted_ms} ms"
    );
    host.shutdown().await;
}
