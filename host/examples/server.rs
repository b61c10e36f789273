//! Embedding drover-host in your own program, in the order of the original `server.ts`:
//! define agents, wire the shared infrastructure, start the workers, expose the producer API.
//!
//! ```sh
//! cargo run --example server            # then: curl -s localhost:8080/v1/templates
//! ```
//!
//! It serves the HTTP API on 127.0.0.1:8080 with two agents: `echo`, native Rust code in the
//! none sandbox, and whatever `*.wasm` agents sit in `./agents`, isolated in the wasm sandbox.

use std::sync::Arc;
use std::time::Duration;

use drover_host::api::RunApi;
use drover_host::api::http::{self, HttpState};
use drover_host::api::metrics::Metrics;
use drover_host::pool::{PoolConfig, PoolDeps, WorkerPool};
use drover_host::queue::{NewJob, Queue};
use drover_host::registry::{
    AgentSpec, ChainRegistry, DirRegistry, Registry, Schema, StaticRegistry,
};
use drover_host::sandbox::native_agent;
use drover_host::sandbox::wasm::{EngineConfig, WasmRuntime, WasmSandbox};
use drover_host::sandbox::{NoneSandbox, Sandbox, SandboxFor};
use drover_host::store::RunStore;
use serde_json::json;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    drover_host::telemetry::init(Default::default(), "info");

    // 1. Define your agents.
    let echo = AgentSpec::native(
        "echo",
        native_agent(
            |input, _ctx| async move { Ok(json!({ "received": input["n"], "ok": true })) },
        ),
    )
    .description("Reply with {received, ok: true}.")
    .input_schema(Schema::new(json!({
        "type": "object",
        "properties": { "n": { "type": "integer" } },
        "required": ["n"]
    }))?);

    // 2. Wire shared infra.
    let queue = Queue::open("file:./var/queue.db", None).await?;
    let storage = RunStore::open("file:./var/runs.db", None).await?;
    let runtime = WasmRuntime::new(&EngineConfig::default(), "./var/scratch")?;
    let components = DirRegistry::open("./agents", Arc::clone(&runtime)).await?;
    let _watch = components.watch();
    let registry: Arc<dyn Registry> = Arc::new(
        ChainRegistry::new()
            .with(Arc::new(StaticRegistry::new().with(echo)))
            .with(components),
    );
    let none: Arc<dyn Sandbox> = Arc::new(NoneSandbox::with_wasm(Arc::clone(&runtime)));
    let wasm: Arc<dyn Sandbox> = Arc::new(WasmSandbox::new(runtime));
    let sandbox_for: SandboxFor = Arc::new(move |_job, spec| {
        if spec.is_wasm() {
            Arc::clone(&wasm)
        } else {
            Arc::clone(&none)
        }
    });

    // 3. Start workers.
    let pool = WorkerPool::new(
        PoolDeps {
            queue: queue.clone(),
            store: storage.clone(),
            registry: Arc::clone(&registry),
            sandbox_for,
        },
        PoolConfig {
            concurrency: 4,
            lease_duration: Duration::from_secs(30),
            ..PoolConfig::default()
        },
    )
    .start();

    // 4. Expose the producer API, in Rust and over HTTP.
    let api = RunApi::new(queue, storage, registry);
    let job = api
        .enqueue(
            NewJob::new("echo", &json!({ "n": 42 }))
                .priority(10)
                .max_attempts(3),
        )
        .await?
        .job;
    let done = api.wait_for(&job.id, Duration::from_secs(60)).await?;
    println!("status: {}", done.job.status); // done
    println!(
        "output: {}",
        done.run
            .and_then(|r| r.output)
            .map_or_else(String::new, |o| o.to_string())
    );

    let app = http::router(HttpState {
        api,
        problems: Arc::new(Vec::new),
        metrics: Arc::new(Metrics::new(Some(pool.stats()))),
        auth: drover_host::api::auth::Auth::none(),
        stale_after: Duration::from_secs(90),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
    println!("serving on http://127.0.0.1:8080 (Ctrl-C to stop)");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    pool.shutdown().await;
    Ok(())
}
