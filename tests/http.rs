//! Outbound HTTP from agents and tools: the real `fetch` component in real wasmtime, through
//! the real pool, sending real requests to real servers on 127.0.0.1.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{any, get};
use drover_host::api::{JobView, RunApi};
use drover_host::config::HostConfig;
use drover_host::model::ModelGateway;
use drover_host::outbound::Outbound;
use drover_host::pool::{PoolConfig, PoolDeps, PoolHandle, WorkerPool};
use drover_host::queue::{JobStatus, NewJob};
use drover_host::registry::{DirRegistry, Registry, ToolRegistry};
use drover_host::sandbox::caps::Capabilities;
use drover_host::sandbox::wasm::{EngineConfig, ToolNetwork, WasmRuntime, WasmSandbox};
use drover_host::sandbox::{Control, Sandbox, SandboxFor};
use drover_host::secrets::Secrets;
use drover_host::store::Run;
use drover_test_support::{AgentDir, FETCH, TOOL_HTTP_GET, TestDb, WAIT, wait_for_status};
use serde_json::{Value, json};
use tokio::sync::Mutex;

/// What the local server saw.
#[derive(Default)]
struct Seen {
    /// Requests that reached it.
    hits: AtomicUsize,
    /// Requests in flight now, and the most at once.
    in_flight: AtomicUsize,
    peak: AtomicUsize,
    /// The `authorization` header and the body of the last request to `/echo`.
    last: Mutex<Option<(Option<String>, Vec<u8>)>>,
}

/// A server on 127.0.0.1: `/ok`, `/echo` (returns the body), `/big` (1 MiB), `/redirect`
/// (to `location` of the query), `/hang` (never answers), `/slow` (answers after 300 ms).
struct Server {
    port: u16,
    seen: Arc<Seen>,
}

async fn serve() -> Server {
    let seen = Arc::new(Seen::default());
    let app = Router::new()
        .route(
            "/ok",
            get(|State(seen): State<Arc<Seen>>| async move {
                seen.hits.fetch_add(1, Ordering::SeqCst);
                "hello"
            }),
        )
        .route(
            "/echo",
            any(
                |State(seen): State<Arc<Seen>>, headers: HeaderMap, body: Bytes| async move {
                    seen.hits.fetch_add(1, Ordering::SeqCst);
                    let auth = headers
                        .get(header::AUTHORIZATION)
                        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
                    *seen.last.lock().await = Some((auth, body.to_vec()));
                    body
                },
            ),
        )
        .route("/big", get(|| async { "x".repeat(1 << 20) }))
        .route(
            "/redirect",
            get(
                |State(seen): State<Arc<Seen>>,
                 axum::extract::RawQuery(q): axum::extract::RawQuery| async move {
                    seen.hits.fetch_add(1, Ordering::SeqCst);
                    let to = q.unwrap_or_default().trim_start_matches("to=").to_string();
                    (StatusCode::FOUND, [(header::LOCATION, to)], "")
                },
            ),
        )
        .route(
            "/hang",
            get(|State(seen): State<Arc<Seen>>| async move {
                seen.hits.fetch_add(1, Ordering::SeqCst);
                std::future::pending::<()>().await;
                "never"
            }),
        )
        .route(
            "/slow",
            get(|State(seen): State<Arc<Seen>>| async move {
                let now = seen.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                seen.peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(300)).await;
                seen.in_flight.fetch_sub(1, Ordering::SeqCst);
                "slow".into_response()
            }),
        )
        .with_state(Arc::clone(&seen));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Server { port, seen }
}

struct Host {
    _db: TestDb,
    _agents: AgentDir,
    api: RunApi,
    pool: Option<PoolHandle>,
}

impl Host {
    /// A host on `agents` whose `drover.toml` is `config`; `env` provides the secrets'
    /// variables.
    async fn start(agents: AgentDir, config: &str, env: &[(&str, &str)]) -> Self {
        let config = HostConfig::parse(config).expect("config");
        let db = TestDb::new().await;
        let runtime = WasmRuntime::new(
            &EngineConfig {
                max_instances: 32,
                cache_dir: Some(drover_test_support::cache_dir()),
                ..EngineConfig::default()
            },
            db.dir.path().join("scratch"),
        )
        .expect("runtime");
        let registry = DirRegistry::open(agents.path(), Arc::clone(&runtime))
            .await
            .expect("registry");
        let problems = registry.problems();
        assert!(problems.is_empty(), "{problems:?}");
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let secrets = Secrets::with_env(&config.secrets, reqwest::Client::new(), |var| {
            env.iter()
                .find(|(k, _)| k == var)
                .map(|(_, v)| v.clone().into())
        })
        .expect("secrets");
        let tools: Arc<dyn ToolRegistry> = registry.clone();
        let caps = Capabilities::with_outbound(
            Arc::new(ModelGateway::empty()),
            Some((tools, Arc::clone(&runtime))),
            Outbound::new(&config.outbound).expect("outbound"),
            secrets,
        );
        let wasm: Arc<dyn Sandbox> =
            Arc::new(WasmSandbox::new(Arc::clone(&runtime)).with_capabilities(caps));
        let sandbox_for: SandboxFor = Arc::new(move |_, _| Arc::clone(&wasm));
        let registry: Arc<dyn Registry> = registry;
        let api = RunApi::new(db.queue.clone(), db.store.clone(), Arc::clone(&registry));
        let pool = WorkerPool::new(
            PoolDeps {
                queue: db.queue.clone(),
                store: db.store.clone(),
                registry,
                sandbox_for,
            },
            PoolConfig {
                concurrency: 2,
                signal_poll_interval: Duration::from_millis(50),
                ..PoolConfig::default()
            },
        )
        .start();
        Self {
            _db: db,
            _agents: agents,
            api,
            pool: Some(pool),
        }
    }

    async fn enqueue(&self, agent: &str, input: Value) -> String {
        self.api
            .enqueue(NewJob::new(agent, &input))
            .await
            .expect("enqueue")
            .job
            .id
    }

    async fn run(&self, agent: &str, input: Value) -> JobView {
        let id = self.enqueue(agent, input).await;
        self.api.wait_for(&id, WAIT).await.expect("wait")
    }

    /// Runs `agent` on `input`, which must succeed, and returns its output and its
    /// `http_request` events.
    async fn fetch(&self, agent: &str, input: Value) -> (Value, Vec<Value>) {
        let view = self.run(agent, input).await;
        assert_eq!(view.job.status, JobStatus::Done, "{:?}", view.run);
        let run = view.run.expect("run");
        let output = output(&run);
        (output, self.http_events(&run).await)
    }

    async fn http_events(&self, run: &Run) -> Vec<Value> {
        self.pool.as_ref().expect("pool").flush().await;
        self.api
            .events(&run.id, 0, 10_000)
            .await
            .expect("events")
            .into_iter()
            .filter(|e| e.kind == "http_request")
            .map(|e| serde_json::from_str(e.payload.get()).expect("json"))
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

fn manifest(hosts: &[String]) -> String {
    format!("allowed-outbound-hosts = {hosts:?}\n")
}

fn error_tag(output: &Value) -> &str {
    output["error"]["tag"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_go_only_where_the_manifest_and_the_operator_both_allow() {
    let server = serve().await;
    let port = server.port;
    let agents = AgentDir::new();
    agents
        .add(
            "named",
            FETCH,
            Some(&manifest(&[format!("http://127.0.0.1:{port}")])),
        )
        .add(
            "wildcard",
            FETCH,
            Some(&manifest(&[format!("http://*:{port}")])),
        )
        .add(
            "outside",
            FETCH,
            Some(&manifest(&["http://127.0.0.2:*".into()])),
        )
        .add("nothing", FETCH, None);
    let config = format!("[outbound]\nallowed-hosts = [\"http://127.0.0.1:{port}\"]\n");
    let host = Host::start(agents, &config, &[]).await;
    let url = format!("http://127.0.0.1:{port}/ok?token=abc");

    let (ok, events) = host.fetch("named", json!({ "url": url })).await;
    assert_eq!(ok["status"], 200, "{ok}");
    assert_eq!(ok["body"], "hello");
    // The event has method, scheme://host:port/path (no query), status, sizes and time.
    assert_eq!(events.len(), 1, "{events:?}");
    let event = &events[0];
    assert_eq!(event["method"], "GET");
    assert_eq!(event["url"], format!("http://127.0.0.1:{port}/ok"));
    assert_eq!(event["status"], 200);
    assert_eq!(event["requestBytes"], 0);
    assert_eq!(event["responseBytes"], 5);
    assert!(event["ms"].is_u64(), "{event}");
    assert!(!event.to_string().contains("token"), "{event}");
    assert_eq!(server.seen.hits.load(Ordering::SeqCst), 1);

    let refused = [
        // Another scheme, another port.
        ("named", format!("https://127.0.0.1:{port}/ok")),
        (
            "named",
            format!("http://127.0.0.1:{}/ok", port.wrapping_add(1)),
        ),
        // A wildcard does not reach a loopback address.
        ("wildcard", url.clone()),
        // The manifest allows it, the operator does not.
        ("outside", format!("http://127.0.0.2:{port}/ok")),
        // No allowed-outbound-hosts: no network.
        ("nothing", url.clone()),
        // A relative URL.
        ("named", "/ok".into()),
    ];
    for (agent, url) in refused {
        let (out, events) = host.fetch(agent, json!({ "url": url })).await;
        let tag = error_tag(&out);
        assert!(
            tag == "Denied" || tag == "InvalidUrl",
            "{agent} {url}: {out}"
        );
        if tag == "Denied" {
            assert_eq!(events.len(), 1, "{agent} {url}: {events:?}");
            assert!(events[0]["refused"].is_string(), "{:?}", events[0]);
            assert!(events[0].get("status").is_none());
        }
    }
    assert_eq!(
        server.seen.hits.load(Ordering::SeqCst),
        1,
        "a refused request reached the server"
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_comes_back_to_the_guest_and_its_target_is_checked_again() {
    let server = serve().await;
    let port = server.port;
    let agents = AgentDir::new();
    agents.add(
        "named",
        FETCH,
        Some(&manifest(&[format!("http://127.0.0.1:{port}")])),
    );
    let config =
        format!("[outbound]\nallowed-hosts = [\"http://*:*\", \"http://127.0.0.1:{port}\"]\n");
    let host = Host::start(agents, &config, &[]).await;
    let elsewhere = "http://169.254.169.254/latest/meta-data";
    let (out, _) = host
        .fetch(
            "named",
            json!({ "url": format!("http://127.0.0.1:{port}/redirect?to={elsewhere}") }),
        )
        .await;
    assert_eq!(out["status"], 302, "{out}");
    assert_eq!(out["location"], elsewhere);
    let (followed, events) = host.fetch("named", json!({ "url": elsewhere })).await;
    assert_eq!(error_tag(&followed), "Denied", "{followed}");
    let why = events[0]["refused"].as_str().expect("refused");
    assert!(why.contains("allowed-outbound-hosts"), "{why}");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_public_addresses_need_patterns_that_name_them() {
    let server = serve().await;
    let port = server.port;
    let agents = AgentDir::new();
    agents
        .add(
            "by-name",
            FETCH,
            Some(&manifest(&[format!("http://localhost:{port}")])),
        )
        .add("any", FETCH, Some(&manifest(&["http://*:*".into()])));
    // The operator allows every host, and names localhost.
    let config =
        format!("[outbound]\nallowed-hosts = [\"http://*:*\", \"http://localhost:{port}\"]\n");
    let host = Host::start(agents, &config, &[]).await;
    let url = format!("http://localhost:{port}/ok");

    // Named by both lists: the name may resolve to loopback.
    let (ok, _) = host.fetch("by-name", json!({ "url": url })).await;
    assert_eq!(ok["status"], 200, "{ok}");
    // Covered by a wildcard: refused when the name resolves to 127.0.0.1.
    let (out, events) = host.fetch("any", json!({ "url": url })).await;
    assert_eq!(error_tag(&out), "Denied", "{out}");
    let why = events[0]["refused"].as_str().expect("refused");
    assert!(why.contains("loopback"), "{why}");
    // Addresses written in the URL: metadata, loopback, private, IPv4-mapped loopback.
    for url in [
        "http://169.254.169.254/latest/meta-data".to_string(),
        format!("http://127.0.0.1:{port}/ok"),
        "http://10.0.0.1/".to_string(),
        format!("http://[::ffff:127.0.0.1]:{port}/ok"),
    ] {
        let (out, events) = host.fetch("any", json!({ "url": url })).await;
        assert_eq!(error_tag(&out), "Denied", "{url}: {out}");
        assert!(events[0]["refused"].is_string(), "{url}: {events:?}");
    }
    assert_eq!(server.seen.hits.load(Ordering::SeqCst), 1);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_held_to_their_limits() {
    let server = serve().await;
    let port = server.port;
    let agents = AgentDir::new();
    let allowed = manifest(&[format!("http://127.0.0.1:{port}")]);
    agents
        .add("named", FETCH, Some(&allowed))
        // A manifest may lower the host's limits, not raise them.
        .add(
            "tight",
            FETCH,
            Some(&format!("{allowed}[limits]\nmax-response-bytes = 4\n")),
        )
        .add(
            "greedy",
            FETCH,
            Some(&format!(
                "{allowed}[limits]\nmax-response-bytes = \"4MiB\"\n"
            )),
        );
    let config = format!(
        "[outbound]\nallowed-hosts = [\"http://127.0.0.1:{port}\"]\nmax-response-bytes = 65536\n\
         max-request-bytes = 1024\n"
    );
    let host = Host::start(agents, &config, &[]).await;
    let base = format!("http://127.0.0.1:{port}");

    let (big, events) = host
        .fetch("named", json!({ "url": format!("{base}/big") }))
        .await;
    assert_eq!(error_tag(&big), "ResponseTooLarge", "{big}");
    assert_eq!(events[0]["error"], "response-too-large", "{events:?}");
    let (greedy, _) = host
        .fetch("greedy", json!({ "url": format!("{base}/big") }))
        .await;
    assert_eq!(error_tag(&greedy), "ResponseTooLarge", "{greedy}");
    let (ok, _) = host
        .fetch("named", json!({ "url": format!("{base}/ok") }))
        .await;
    assert_eq!(ok["body"], "hello", "{ok}");
    let (tight, _) = host
        .fetch("tight", json!({ "url": format!("{base}/ok") }))
        .await;
    assert_eq!(error_tag(&tight), "ResponseTooLarge", "{tight}");

    let small = "a".repeat(1000);
    let (echoed, _) = host
        .fetch(
            "named",
            json!({ "method": "POST", "url": format!("{base}/echo"), "body": small }),
        )
        .await;
    assert_eq!(echoed["body"], small, "{echoed}");
    let hits = server.seen.hits.load(Ordering::SeqCst);
    let (large, events) = host
        .fetch(
            "named",
            json!({ "method": "POST", "url": format!("{base}/echo"), "body": "a".repeat(5000) }),
        )
        .await;
    assert_eq!(error_tag(&large), "RequestTooLarge", "{large}");
    assert_eq!(events[0]["error"], "request-too-large", "{events:?}");
    assert_eq!(
        server.seen.hits.load(Ordering::SeqCst),
        hits,
        "nothing was sent"
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_gets_no_answer_times_out() {
    let server = serve().await;
    let port = server.port;
    let agents = AgentDir::new();
    agents.add(
        "named",
        FETCH,
        Some(&manifest(&[format!("http://127.0.0.1:{port}")])),
    );
    let config = format!(
        "[outbound]\nallowed-hosts = [\"http://127.0.0.1:{port}\"]\nrequest-timeout-ms = 300\n"
    );
    let host = Host::start(agents, &config, &[]).await;
    let (out, events) = host
        .fetch(
            "named",
            json!({ "url": format!("http://127.0.0.1:{port}/hang") }),
        )
        .await;
    assert_eq!(error_tag(&out), "Timeout", "{out}");
    assert_eq!(events[0]["error"], "timeout", "{events:?}");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runs_time_limit_ends_a_run_blocked_in_a_request() {
    let server = serve().await;
    let port = server.port;
    let agents = AgentDir::new();
    agents.add(
        "short",
        FETCH,
        Some(&format!(
            "{}[limits]\ntimeout-ms = 500\n",
            manifest(&[format!("http://127.0.0.1:{port}")])
        )),
    );
    let config = format!("[outbound]\nallowed-hosts = [\"http://127.0.0.1:{port}\"]\n");
    let host = Host::start(agents, &config, &[]).await;
    let view = host
        .run(
            "short",
            json!({ "url": format!("http://127.0.0.1:{port}/hang") }),
        )
        .await;
    assert_eq!(view.job.status, JobStatus::Failed, "{:?}", view.run);
    let error = view.run.and_then(|r| r.error).expect("error");
    assert_eq!(error.tag, "Timeout", "{error:?}");
    assert_eq!(server.seen.hits.load(Ordering::SeqCst), 1);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_ends_a_run_blocked_in_a_request() {
    let server = serve().await;
    let port = server.port;
    let agents = AgentDir::new();
    agents.add(
        "named",
        FETCH,
        Some(&manifest(&[format!("http://127.0.0.1:{port}")])),
    );
    let config = format!("[outbound]\nallowed-hosts = [\"http://127.0.0.1:{port}\"]\n");
    let host = Host::start(agents, &config, &[]).await;
    let id = host
        .enqueue(
            "named",
            json!({ "url": format!("http://127.0.0.1:{port}/hang") }),
        )
        .await;
    tokio::time::timeout(WAIT, async {
        while server.seen.hits.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the request reached the server");
    host.api.cancel(&id).await.expect("cancel");
    wait_for_status(host.api.queue(), &id, JobStatus::Failed).await;
    let view = host.api.get(&id).await.expect("job");
    let error = view.run.and_then(|r| r.error).expect("error");
    assert_eq!(error.tag, "Cancelled", "{error:?}");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_has_at_most_its_share_of_requests_in_flight() {
    let server = serve().await;
    let port = server.port;
    let agents = AgentDir::new();
    agents.add(
        "named",
        FETCH,
        Some(&manifest(&[format!("http://127.0.0.1:{port}")])),
    );
    let slow = json!({ "url": format!("http://127.0.0.1:{port}/slow") });
    let requests = json!({ "requests": [slow, slow, slow, slow] });

    for (cap, expected) in [(1, 1), (4, 4)] {
        let config = format!(
            "[outbound]\nallowed-hosts = [\"http://127.0.0.1:{port}\"]\n\
             max-concurrent-requests = {cap}\n"
        );
        server.seen.peak.store(0, Ordering::SeqCst);
        let host = Host::start(agents_with_fetch(port), &config, &[]).await;
        let (out, events) = host.fetch("named", requests.clone()).await;
        let results = out["results"].as_array().expect("results");
        assert!(results.iter().all(|r| r["status"] == 200), "{out}");
        assert_eq!(events.len(), 4);
        assert_eq!(
            server.seen.peak.load(Ordering::SeqCst),
            expected,
            "cap {cap}"
        );
        host.shutdown().await;
    }
    drop(agents);
}

fn agents_with_fetch(port: u16) -> AgentDir {
    let agents = AgentDir::new();
    agents.add(
        "named",
        FETCH,
        Some(&manifest(&[format!("http://127.0.0.1:{port}")])),
    );
    agents
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placeholders_are_replaced_only_for_the_secrets_hosts() {
    let server = serve().await;
    let port = server.port;
    let agents = AgentDir::new();
    agents
        .add(
            "granted",
            FETCH,
            Some(&format!(
                "allowed-outbound-hosts = [\"http://127.0.0.1:{port}\", \"http://localhost:{port}\"]\n\
                 secrets = [\"sample-api-a\"]\n"
            )),
        )
        .add("ungranted", FETCH, Some(&manifest(&[format!("http://127.0.0.1:{port}")])));
    let config = format!(
        "[outbound]\nallowed-hosts = [\"http://127.0.0.1:{port}\", \"http://localhost:{port}\"]\n\
         [secrets.sample-api-a]\nfrom-env = \"SAMPLE_API_A_TOKEN\"\n\
         hosts = [\"http://127.0.0.1:{port}\"]\n"
    );
    let value = "s3cr3t-value-9f2c";
    let host = Host::start(agents, &config, &[("SAMPLE_API_A_TOKEN", value)]).await;
    // The guest has the placeholder in its environment, and only that.
    let headers = json!({ "authorization": "Bearer ${DROVER_SECRET_SAMPLE_API_A}" });

    let (ok, events) = host
        .fetch(
            "granted",
            json!({ "url": format!("http://127.0.0.1:{port}/echo"), "headers": headers }),
        )
        .await;
    assert_eq!(ok["status"], 200, "{ok}");
    let (auth, _) = server.seen.last.lock().await.clone().expect("a request");
    assert_eq!(auth.as_deref(), Some(format!("Bearer {value}").as_str()));
    assert!(!events[0].to_string().contains(value));

    // Another host (the same server under another name), or an agent not granted the secret:
    // refused, nothing sent.
    let hits = server.seen.hits.load(Ordering::SeqCst);
    // (The agent that was not granted it has no such variable: it writes the placeholder out.)
    let written_out = json!({ "authorization": "Bearer DROVER_SECRET_sample-api-a" });
    for (agent, url, headers) in [
        ("granted", format!("http://localhost:{port}/echo"), &headers),
        (
            "ungranted",
            format!("http://127.0.0.1:{port}/echo"),
            &written_out,
        ),
    ] {
        let view = host
            .run(agent, json!({ "url": url, "headers": headers }))
            .await;
        let run = view.run.expect("run");
        let out = output(&run);
        assert_eq!(error_tag(&out), "Denied", "{agent} {url}: {out}");
        let events = host.http_events(&run).await;
        assert!(events[0]["refused"].is_string(), "{events:?}");
        assert!(!events[0].to_string().contains(value));
    }
    assert_eq!(server.seen.hits.load(Ordering::SeqCst), hits);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_makes_requests_under_its_own_manifest() {
    let server = serve().await;
    let port = server.port;
    let agents = AgentDir::new();
    agents.add_tool(
        "http-get",
        TOOL_HTTP_GET,
        Some(&manifest(&[format!("http://127.0.0.1:{port}")])),
    );
    let offline_agents = AgentDir::new();
    offline_agents.add_tool("http-get", TOOL_HTTP_GET, None);
    let db = TestDb::new().await;
    let runtime = WasmRuntime::new(
        &EngineConfig {
            max_instances: 8,
            cache_dir: Some(drover_test_support::cache_dir()),
            ..EngineConfig::default()
        },
        db.dir.path().join("scratch"),
    )
    .expect("runtime");
    let registry = DirRegistry::open(agents.path(), Arc::clone(&runtime))
        .await
        .expect("registry");
    let offline_registry = DirRegistry::open(offline_agents.path(), Arc::clone(&runtime))
        .await
        .expect("registry");
    let config = HostConfig::parse(&format!(
        "[outbound]\nallowed-hosts = [\"http://127.0.0.1:{port}\"]\n"
    ))
    .expect("config");
    let outbound = Outbound::new(&config.outbound).expect("outbound");
    let input = json!({ "url": format!("http://127.0.0.1:{port}/ok") }).to_string();
    let control = Control::new();
    let secrets = Secrets::empty();
    let network = |outbound, secrets| ToolNetwork {
        outbound,
        secrets,
        granted: Vec::new(),
        events: None,
    };

    let online = registry.get_tool("http-get").expect("tool");
    let outcome = runtime
        .call_tool_under(&online, &input, &control, network(&outbound, &secrets))
        .await;
    let output: Value = serde_json::from_str(&outcome.result.expect("result")).expect("json");
    assert_eq!(output, json!({ "status": 200, "body": "hello" }));

    // Without allowed-outbound-hosts of its own, the same component is refused; and without
    // the host's outbound HTTP, so is every tool.
    let offline = offline_registry.get_tool("http-get").expect("tool");
    let refused = runtime
        .call_tool_under(&offline, &input, &control, network(&outbound, &secrets))
        .await;
    assert_eq!(refused.result.expect_err("refused").tag, "Denied");
    let no_network = runtime.call_tool(&online, &input, &control).await;
    assert_eq!(no_network.result.expect_err("refused").tag, "Denied");
    assert_eq!(server.seen.hits.load(Ordering::SeqCst), 1);
}
