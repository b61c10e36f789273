//! Embedding drover-host in your own program: define agents, open the queue and the run
//! store, start the worker pool, and serve the HTTP API with the run viewer, all with the
//! library's own types.
//!
//! ```sh
//! cargo run -p drover-host --example server
//! # then: curl -s localhost:8090/v1/types, or open http://127.0.0.1:8090/ for the viewer
//! ```
//!
//! It shows:
//! - a native agent (`echo`, Rust code in the none sandbox, with an input schema) next to the
//!   `*.wasm` agents of `./agents`, each in the wasm sandbox, in one registry that follows the
//!   directory for changes;
//! - a job enqueued and awaited through [`RunApi`], the same API the HTTP routes call;
//! - the HTTP API and the viewer on 127.0.0.1:8090 (or the address given as its argument), with its databases in `./var/example`, so
//!   it runs beside a `drover-host run` (port 8080, `./var`) without touching it;
//! - a graceful stop on Ctrl-C: the server stops taking requests, the pool finishes its runs.

use std::sync::Arc;
use std::time::Duration;

use drover_host::api::RunApi;
use drover_host::api::http::{self, HttpConfig, HttpState};
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

    // 2. Open the queue and the run store (files of their own), and the wasm runtime.
    std::fs::create_dir_all("./var/example")?;
    let queue = Queue::open("file:./var/example/queue.db", None).await?;
    let storage = RunStore::open("file:./var/example/runs.db", None).await?;
    let runtime = WasmRuntime::new(&EngineConfig::default(), "./var/example/scratch")?;
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

    // 3. Start the worker pool.
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

    // 4. Enqueue through the producer API in Rust, then serve it over HTTP with the viewer.
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

    // Another address: `cargo run -p drover-host --example server -- 127.0.0.1:9000`.
    let wanted = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8090".into());
    let wanted: std::net::SocketAddr = wanted
        .parse()
        .map_err(|e| anyhow::anyhow!("{wanted:?} is not an address like 127.0.0.1:8090: {e}"))?;
    let listener = tokio::net::TcpListener::bind(wanted)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {wanted}: {e}"))?;
    let address = listener.local_addr()?;
    let state = HttpState {
        api,
        problems: Arc::new(Vec::new),
        metrics: Arc::new(Metrics::new(Some(pool.stats()))),
        auth: drover_host::api::auth::Auth::none(),
        stale_after: Duration::from_secs(90),
    };
    let config = HttpConfig {
        listen: Some(address),
        ..HttpConfig::default()
    };
    let app = http::protect(drover_host::viewer::router(), &config)
        .merge(http::router_with(state, &config))
        .fallback(http::not_found);
    println!("serving the API and the viewer on http://{address}/ (Ctrl-C to stop)");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    pool.shutdown().await;
    Ok(())
}
