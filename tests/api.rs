//! The HTTP API's router on a real socket, over real libsql files, with native agents run by a
//! real worker pool: who may send requests (Host, Origin, content type), what lists and
//! templates publish, deeply nested documents, conflicts, internal errors and the caps on
//! concurrent requests.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use drover_host::api::RunApi;
use drover_host::api::http::{self, HttpConfig, HttpState, MAX_PAGE_BYTES, PREVIEW_BYTES};
use drover_host::api::metrics::Metrics;
use drover_host::pool::{PoolConfig, PoolDeps, PoolHandle, WorkerPool};
use drover_host::registry::{AgentSpec, Registry, StaticRegistry};
use drover_host::sandbox::native_agent;
use drover_host::sandbox::{NoneSandbox, Sandbox, SandboxFor};
use drover_host::store::Usage;
use drover_test_support::{TestDb, WAIT};
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{Value, json};

/// The router of a host with these agents, served on 127.0.0.1, and (optionally) a pool.
struct Server {
    url: String,
    port: u16,
    db: TestDb,
    pool: Option<PoolHandle>,
    server: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(registry: StaticRegistry, config: HttpConfig, with_pool: bool) -> Self {
        Self::start_with(
            registry,
            config,
            with_pool,
            tokio::sync::Semaphore::MAX_PERMITS,
        )
        .await
    }

    /// [`Server::start`], with at most `max_connections` connections open at once.
    async fn start_with(
        registry: StaticRegistry,
        config: HttpConfig,
        with_pool: bool,
        max_connections: usize,
    ) -> Self {
        let none: Arc<dyn Sandbox> = Arc::new(NoneSandbox::new());
        Self::start_in(registry, config, with_pool.then_some(none), max_connections).await
    }

    /// [`Server::start`], with a pool whose runs go to `sandbox` (none: no pool).
    async fn start_in(
        registry: StaticRegistry,
        config: HttpConfig,
        sandbox: Option<Arc<dyn Sandbox>>,
        max_connections: usize,
    ) -> Self {
        let db = TestDb::new().await;
        let registry: Arc<dyn Registry> = Arc::new(registry);
        let api = RunApi::new(db.queue.clone(), db.store.clone(), Arc::clone(&registry));
        let pool = sandbox.map(|sandbox| {
            let sandbox_for: SandboxFor = Arc::new(move |_job, _spec| Arc::clone(&sandbox));
            WorkerPool::new(
                PoolDeps {
                    queue: db.queue.clone(),
                    store: db.store.clone(),
                    registry: Arc::clone(&registry),
                    sandbox_for,
                },
                PoolConfig {
                    concurrency: 4,
                    reclaim_interval: Duration::from_millis(100),
                    signal_poll_interval: Duration::from_millis(50),
                    shutdown_grace: Duration::from_secs(5),
                    ..PoolConfig::default()
                },
            )
            .start()
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let state = HttpState {
            api,
            problems: Arc::new(Vec::new),
            metrics: Arc::new(Metrics::new(None)),
            auth: drover_host::api::auth::Auth::none(),
            stale_after: Duration::from_secs(90),
        };
        let config = HttpConfig {
            listen: Some(address),
            ..config
        };
        let app = http::router_with(state, &config).fallback(http::not_found);
        let server = tokio::spawn(async move {
            axum::serve(http::ConnectionLimit::new(listener, max_connections), app)
                .await
                .expect("serve");
        });
        Self {
            url: format!("http://{address}"),
            port: address.port(),
            db,
            pool,
            server,
        }
    }

    async fn stop(self) {
        if let Some(pool) = self.pool {
            pool.shutdown().await;
        }
        self.server.abort();
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let response = reqwest::Client::new()
            .post(format!("{}{path}", self.url))
            .json(&body)
            .send()
            .await
            .expect("POST");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let (status, text) = self.get_text(path).await;
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn get_text(&self, path: &str) -> (StatusCode, String) {
        let response = reqwest::get(format!("{}{path}", self.url))
            .await
            .expect("GET");
        let status = response.status();
        (status, response.text().await.expect("body"))
    }
}

fn echo() -> AgentSpec {
    AgentSpec::native(
        "echo",
        native_agent(|input: Value, _ctx| async move { Ok(json!({ "echo": input })) }),
    )
}

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

/// `[[[…1…]]]`, `depth` levels deep, as text.
fn nested_text(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

/// Emits an event and returns an output, both nested `depth` levels deep.
fn nester(depth: usize) -> AgentSpec {
    AgentSpec::native(
        "nester",
        native_agent(move |_input: Value, ctx| async move {
            let mut value = json!(1);
            for _ in 0..depth {
                value = json!([value]);
            }
            ctx.emit("deep", &value).await?;
            Ok(value)
        }),
    )
}

async fn wait_done(server: &Server, id: &str) -> Value {
    let (status, view) = server
        .get(&format!(
            "/v1/jobs/{id}/wait?timeoutMs={}",
            WAIT.as_millis()
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{view}");
    view
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_must_say_they_are_json() {
    let server = Server::start(
        StaticRegistry::new().with(echo()),
        HttpConfig::default(),
        false,
    )
    .await;
    let client = reqwest::Client::new();
    let body = r#"{"agentId": "echo", "input": {"n": 1}}"#;
    // What a page's `fetch(…, {mode: "no-cors", body: new Blob([…])})` sends: no content type.
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        for path in ["/v1/jobs", "/spawn", "/v1/jobs/whatever/cancel"] {
            let mut request = client.post(format!("{}{path}", server.url)).body(body);
            if let Some(ct) = content_type {
                request = request.header("content-type", ct);
            }
            let response = request.send().await.expect("POST");
            assert_eq!(
                response.status(),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "{path} with {content_type:?}"
            );
            let error: Value = response.json().await.expect("a JSON error");
            assert_eq!(error["error"]["tag"], "UnsupportedMediaType", "{error}");
        }
    }
    let (_, jobs) = server.get("/v1/jobs").await;
    assert_eq!(jobs["jobs"], json!([]), "nothing was enqueued");

    // With the content type (parameters allowed), it works.
    let response = client
        .post(format!("{}/v1/jobs", server.url))
        .header("content-type", "application/json; charset=utf-8")
        .body(body)
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), StatusCode::CREATED);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_origins_and_host_names_are_refused() {
    let server = Server::start(
        StaticRegistry::new().with(echo()),
        HttpConfig {
            allowed_hosts: vec!["drover.internal".into(), "proxy.example:8443".into()],
            ..HttpConfig::default()
        },
        false,
    )
    .await;
    let port = server.port;
    let send = |headers: Vec<(&'static str, String)>, post: bool| {
        let url = server.url.clone();
        async move {
            let mut map = HeaderMap::new();
            for (name, value) in headers {
                map.insert(name, HeaderValue::from_str(&value).expect("header"));
            }
            let client = reqwest::Client::new();
            let request = if post {
                client
                    .post(format!("{url}/v1/jobs"))
                    .json(&json!({ "agentId": "echo", "input": null }))
            } else {
                client.get(format!("{url}/v1/jobs"))
            };
            let response = request.headers(map).send().await.expect("send");
            let status = response.status();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };

    let refused: Vec<(Vec<(&str, String)>, &str)> = vec![
        // A DNS-rebinding page: the attacker's name, pointing at 127.0.0.1.
        (
            vec![("host", format!("evil.example:{port}"))],
            "ForbiddenHost",
        ),
        (vec![("host", "localhost:1".to_string())], "ForbiddenHost"),
        (vec![("host", "192.0.2.7:1".to_string())], "ForbiddenHost"),
        (
            vec![("host", format!("127.0.0.1.nip.io:{port}"))],
            "ForbiddenHost",
        ),
        (
            vec![("host", "proxy.example:9999".to_string())],
            "ForbiddenHost",
        ),
        (
            vec![("origin", "http://evil.example".to_string())],
            "ForbiddenOrigin",
        ),
        (vec![("origin", "null".to_string())], "ForbiddenOrigin"),
        (
            vec![("origin", format!("http://localhost:{}", port + 1))],
            "ForbiddenOrigin",
        ),
        // A page served from another address on the same port.
        (
            vec![("origin", format!("http://192.0.2.7:{port}"))],
            "ForbiddenOrigin",
        ),
        (
            vec![("sec-fetch-site", "cross-site".to_string())],
            "ForbiddenOrigin",
        ),
    ];
    for (headers, tag) in refused {
        for post in [false, true] {
            let (status, error) = send(headers.clone(), post).await;
            assert_eq!(
                status,
                StatusCode::FORBIDDEN,
                "{headers:?} post={post}: {error}"
            );
            assert_eq!(error["error"]["tag"], tag, "{headers:?}: {error}");
        }
    }
    let (_, jobs) = server.get("/v1/jobs").await;
    assert_eq!(jobs["jobs"], json!([]), "nothing was enqueued");

    let accepted: Vec<Vec<(&str, String)>> = vec![
        vec![],
        vec![("host", format!("localhost:{port}"))],
        vec![("host", format!("[::1]:{port}"))],
        vec![("host", format!("192.0.2.7:{port}"))],
        vec![("host", "drover.internal:1234".to_string())],
        vec![("host", "proxy.example:8443".to_string())],
        vec![
            ("origin", format!("http://127.0.0.1:{port}")),
            ("sec-fetch-site", "same-origin".to_string()),
        ],
        vec![("origin", "https://drover.internal".to_string())],
    ];
    for headers in accepted {
        let (status, body) = send(headers.clone(), false).await;
        assert_eq!(status, StatusCode::OK, "{headers:?}: {body}");
    }
    let (status, body) = send(vec![("origin", format!("http://127.0.0.1:{port}"))], true).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_name_env_variables_but_show_no_values_or_paths() {
    let mut spec = echo();
    spec.env = BTreeMap::from([
        ("API_KEY".to_string(), "sk-very-secret-value".to_string()),
        ("REGION".to_string(), "eu-west-3".to_string()),
    ]);
    spec.source = Some(PathBuf::from("/srv/private/agents/echo.wasm"));
    let server = Server::start(
        StaticRegistry::new().with(spec),
        HttpConfig::default(),
        false,
    )
    .await;
    let (status, text) = server.get_text("/v1/templates").await;
    assert_eq!(status, StatusCode::OK);
    for secret in ["sk-very-secret-value", "eu-west-3", "/srv/private"] {
        assert!(!text.contains(secret), "{secret} is published: {text}");
    }
    let body: Value = serde_json::from_str(&text).expect("json");
    let echo = &body["templates"][0];
    assert_eq!(echo["id"], "echo");
    assert_eq!(echo["envKeys"], json!(["API_KEY", "REGION"]));
    assert!(
        echo.get("env").is_none() && echo.get("source").is_none(),
        "{echo}"
    );
    assert!(echo["limits"].is_object(), "{echo}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_hold_previews_and_stop_at_a_byte_bound() {
    let server = Server::start(
        StaticRegistry::new().with(echo()).with(sleeper()),
        HttpConfig::default(),
        false,
    )
    .await;
    // Eight queued jobs of 200 KiB each: 1.6 MB of inputs, more than a page holds.
    let pad = "x".repeat(200 << 10);
    for i in 0..8 {
        let (status, created) = server
            .post(
                "/v1/jobs",
                json!({ "id": format!("big-{i}"), "agentId": "sleeper", "input": { "pad": pad, "i": i } }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
    }
    let (status, text) = server.get_text("/v1/jobs?limit=100").await;
    assert_eq!(status, StatusCode::OK);
    assert!(text.len() <= MAX_PAGE_BYTES, "{} bytes", text.len());
    let page: Value = serde_json::from_str(&text).expect("json");
    let jobs = page["jobs"].as_array().expect("jobs");
    assert_eq!(jobs.len(), 8, "summaries are small: all fit");
    assert_eq!(page["truncated"], false);
    for job in jobs {
        assert!(job.get("input").is_none(), "no full input in a list");
        let preview = &job["inputPreview"];
        assert_eq!(preview["truncated"], true, "{preview}");
        assert!(preview["bytes"].as_u64().expect("bytes") > 200 << 10);
        let shown = preview["text"].as_str().expect("text");
        assert!(shown.len() <= PREVIEW_BYTES && shown.starts_with("{\"pad\":\"xxx"));
    }
    // The job itself keeps its whole input.
    let (_, one) = server.get("/v1/jobs/big-3").await;
    assert_eq!(
        one["job"]["input"]["pad"].as_str().map(str::len),
        Some(200 << 10)
    );
    assert_eq!(one["job"]["input"]["i"], 3);
    server.stop().await;

    // Runs with big outputs: the list previews them; a page of many stops at the bound.
    let server = Server::start(
        StaticRegistry::new().with(echo()),
        HttpConfig::default(),
        true,
    )
    .await;
    let pad = "y".repeat(100 << 10);
    for i in 0..4 {
        let (_, created) = server
            .post(
                "/v1/jobs",
                json!({ "id": format!("run-{i}"), "agentId": "echo", "input": { "pad": pad } }),
            )
            .await;
        assert_eq!(created["job"]["id"], format!("run-{i}"));
        wait_done(&server, &format!("run-{i}")).await;
    }
    let (status, page) = server.get("/v1/runs?limit=100").await;
    assert_eq!(status, StatusCode::OK);
    let runs = page["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 4);
    for run in runs {
        assert!(run.get("output").is_none() && run.get("input").is_none());
        assert_eq!(run["outputPreview"]["truncated"], true, "{run}");
        assert!(run["outputPreview"]["text"].as_str().expect("text").len() <= PREVIEW_BYTES);
    }
    let id = runs[0]["id"].as_str().expect("id");
    let (_, full) = server.get(&format!("/v1/runs/{id}")).await;
    assert_eq!(
        full["run"]["output"]["echo"]["pad"].as_str().map(str::len),
        Some(100 << 10)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_pages_stop_at_a_byte_bound_and_say_where_to_go_on() {
    let flood = AgentSpec::native(
        "flood",
        native_agent(|_input: Value, ctx| async move {
            let blob = "z".repeat(60 << 10);
            for i in 0..40 {
                ctx.emit("chunk", &json!({ "i": i, "blob": blob })).await?;
            }
            Ok(json!({ "ok": true }))
        }),
    );
    let server = Server::start(
        StaticRegistry::new().with(flood),
        HttpConfig::default(),
        true,
    )
    .await;
    let (_, created) = server
        .post("/v1/jobs", json!({ "id": "flood", "agentId": "flood" }))
        .await;
    assert_eq!(created["job"]["id"], "flood", "{created}");
    let view = wait_done(&server, "flood").await;
    let run_id = view["run"]["id"].as_str().expect("run").to_string();
    // 40 × 60 KiB: more than two pages; following `nextAfter` reaches every event once.
    let mut after = 0;
    let mut chunks = Vec::new();
    let mut pages = 0;
    loop {
        let (status, text) = server
            .get_text(&format!("/v1/runs/{run_id}/events?after={after}"))
            .await;
        assert_eq!(status, StatusCode::OK);
        assert!(text.len() <= MAX_PAGE_BYTES, "{} bytes", text.len());
        let page: Value = serde_json::from_str(&text).expect("json");
        pages += 1;
        for event in page["events"].as_array().expect("events") {
            if event["kind"] == "chunk" {
                chunks.push(event["payload"]["i"].as_i64().expect("i"));
            }
        }
        if page["truncated"] == false {
            break;
        }
        after = page["nextAfter"].as_i64().expect("nextAfter");
        assert!(pages < 20, "paging never ends");
    }
    assert!(pages >= 3, "{pages} pages");
    assert_eq!(chunks, (0..40).collect::<Vec<_>>());
    // An instance's events (by job id) are paged the same way.
    let (status, text) = server.get_text("/v1/agents/flood/events").await;
    assert_eq!(status, StatusCode::OK);
    assert!(text.len() <= MAX_PAGE_BYTES, "{} bytes", text.len());
    let page: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(page["runId"], run_id.as_str());
    assert_eq!(page["truncated"], true);
    assert!(
        page["nextAfter"].as_i64().is_some(),
        "{}",
        page["nextAfter"]
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_outputs_and_events_are_served_intact() {
    const DEPTH: usize = 200;
    let server = Server::start(
        StaticRegistry::new().with(nester(DEPTH)),
        HttpConfig::default(),
        true,
    )
    .await;
    let nested = nested_text(DEPTH);
    let (status, created) = server
        .post("/v1/jobs", json!({ "id": "deep", "agentId": "nester" }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let (status, view) = server
        .get_text(&format!(
            "/v1/jobs/deep/wait?timeoutMs={}",
            WAIT.as_millis()
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert!(view.contains(&format!("\"output\":{nested}")), "{view}");
    let run_id = view
        .split("\"run\":{\"id\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("run id")
        .to_string();

    // Every route that serves the stored documents answers, with the documents as stored.
    let (status, list) = server.get_text("/v1/runs").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert!(list.contains(&run_id), "{list}");
    let (status, run) = server.get_text(&format!("/v1/runs/{run_id}")).await;
    assert_eq!(status, StatusCode::OK, "{run}");
    assert!(run.contains(&format!("\"output\":{nested}")), "{run}");
    let (status, events) = server.get_text(&format!("/v1/runs/{run_id}/events")).await;
    assert_eq!(status, StatusCode::OK, "{events}");
    assert!(
        events.contains(&format!("\"payload\":{nested}")),
        "{events}"
    );
    let (status, job) = server.get_text("/v1/jobs/deep").await;
    assert_eq!(status, StatusCode::OK, "{job}");
    assert!(job.contains(&nested), "{job}");
    let (status, jobs) = server.get_text("/v1/jobs").await;
    assert_eq!(status, StatusCode::OK, "{jobs}");

    // A deeply nested input, too: enqueued, listed and shown.
    let client = reqwest::Client::new();
    let response = client
        .post(format!("{}/v1/jobs", server.url))
        .header("content-type", "application/json")
        .body(format!(
            r#"{{"id": "deep-in", "agentId": "nester", "input": {nested}}}"#
        ))
        .send()
        .await
        .expect("POST");
    let status = response.status();
    let text = response.text().await.expect("body");
    assert_eq!(status, StatusCode::CREATED, "{text}");
    assert!(text.contains(&nested), "{text}");
    let (status, jobs) = server.get_text("/v1/jobs").await;
    assert_eq!(status, StatusCode::OK, "{jobs}");
    assert!(jobs.contains("deep-in"), "{jobs}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_answer_409_with_a_clear_error() {
    let server = Server::start(
        StaticRegistry::new().with(echo()).with(sleeper()),
        HttpConfig::default(),
        true,
    )
    .await;
    let (status, _) = server
        .post(
            "/v1/jobs",
            json!({ "id": "j1", "agentId": "echo", "input": { "n": 1, "m": 2 } }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    // The same job again (key order and spacing aside): the existing job.
    let client = reqwest::Client::new();
    let again = client
        .post(format!("{}/v1/jobs", server.url))
        .header("content-type", "application/json")
        .body(r#"{"id":"j1","agentId":"echo","input":{ "m" : 2, "n" : 1 }}"#)
        .send()
        .await
        .expect("POST");
    assert_eq!(again.status(), StatusCode::OK);
    // Another input, or another agent, under the same id: a conflict.
    for body in [
        json!({ "id": "j1", "agentId": "echo", "input": { "n": 2 } }),
        json!({ "id": "j1", "agentId": "sleeper", "input": { "n": 1, "m": 2 } }),
    ] {
        let (status, error) = server.post("/v1/jobs", body.clone()).await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}: {error}");
        assert_eq!(error["error"]["tag"], "JobIdConflict", "{error}");
        assert!(
            error["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("j1") && m.contains("already exists")),
            "{error}"
        );
    }

    // Cancel or stop a finished job: 409, saying it has finished.
    let view = wait_done(&server, "j1").await;
    assert_eq!(view["job"]["status"], "done");
    for action in ["cancel", "stop"] {
        let (status, error) = server
            .post(&format!("/v1/jobs/j1/{action}"), json!({}))
            .await;
        assert_eq!(status, StatusCode::CONFLICT, "{action}: {error}");
        assert_eq!(error["error"]["tag"], "AlreadyFinished", "{error}");
        assert!(
            error["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("already finished") && m.contains("done")),
            "{error}"
        );
    }
    let (_, after) = server.get("/v1/jobs/j1").await;
    assert_eq!(after["job"]["status"], "done", "nothing changed");
    // An unfinished one is still cancelled.
    let (_, slow) = server
        .post(
            "/v1/jobs",
            json!({ "agentId": "sleeper", "input": { "ms": 60000 } }),
        )
        .await;
    let id = slow["job"]["id"].as_str().expect("id");
    let (status, cancelled) = server
        .post(&format!("/v1/jobs/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{cancelled}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_errors_keep_their_details_in_the_log() {
    let server = Server::start(
        StaticRegistry::new().with(echo()),
        HttpConfig::default(),
        false,
    )
    .await;
    // Break the run store under the running host.
    let path = server
        .db
        .store_url()
        .strip_prefix("file:")
        .expect("a file URL")
        .to_string();
    let conn = libsql::Builder::new_local(&path)
        .build()
        .await
        .expect("open")
        .connect()
        .expect("connect");
    conn.execute("DROP TABLE runs", ()).await.expect("drop");
    let (status, text) = server.get_text("/v1/runs").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{text}");
    let body: Value = serde_json::from_str(&text).expect("a JSON error");
    assert_eq!(body["error"]["tag"], "Internal");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(message.contains("reference"), "{message}");
    let dir = PathBuf::from(&path);
    let dir = dir.parent().expect("dir").display().to_string();
    for detail in ["no such table", "runs.db", dir.as_str(), "file:"] {
        assert!(!text.contains(detail), "{detail:?} leaked: {text}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_and_requests_over_their_caps_get_503_with_retry_after() {
    let server = Server::start(
        StaticRegistry::new().with(sleeper()),
        HttpConfig {
            max_waiters: 2,
            max_in_flight: 3,
            ..HttpConfig::default()
        },
        false,
    )
    .await;
    // No pool: the job stays queued, and waits on it last their full timeout.
    let (status, _) = server
        .post("/v1/jobs", json!({ "id": "never", "agentId": "sleeper" }))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    // Two waits that hold the cap: written to the server before any poll, so that they are
    // in its handler first.
    let address = server.url.trim_start_matches("http://").to_string();
    let mut waits = Vec::new();
    for _ in 0..2 {
        use tokio::io::AsyncWriteExt;
        let mut stream = tokio::net::TcpStream::connect(&address)
            .await
            .expect("connect");
        stream
            .write_all(
                format!(
                    "GET /v1/jobs/never/wait?timeoutMs=15000 HTTP/1.1\r\nHost: {address}\r\n\
                     Connection: close\r\n\r\n"
                )
                .as_bytes(),
            )
            .await
            .expect("send the wait");
        waits.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let deadline = Instant::now() + WAIT;
    let refused = loop {
        let response = reqwest::get(format!("{}/v1/jobs/never/wait?timeoutMs=1", server.url))
            .await
            .expect("wait");
        if response.status() == StatusCode::SERVICE_UNAVAILABLE {
            break response;
        }
        assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
        assert!(Instant::now() < deadline, "the cap on waits never applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        refused
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let error: Value = refused.json().await.expect("a JSON error");
    assert_eq!(error["error"]["tag"], "Overloaded", "{error}");
    // Other requests still get through (two of three in-flight permits are taken)...
    let (status, _) = server.get("/v1/jobs/never").await;
    assert_eq!(status, StatusCode::OK);
    for mut wait in waits {
        use tokio::io::AsyncReadExt;
        let mut answer = String::new();
        wait.read_to_string(&mut answer)
            .await
            .expect("the wait's answer");
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
    // ...and once the waits are over, a wait is accepted again.
    let (status, _) = server.get("/v1/jobs/never/wait?timeoutMs=1").await;
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
    server.stop().await;

    // The cap on all requests: one permit, held by a wait.
    let server = Server::start(
        StaticRegistry::new().with(sleeper()),
        HttpConfig {
            max_in_flight: 1,
            ..HttpConfig::default()
        },
        false,
    )
    .await;
    let (status, _) = server
        .post("/v1/jobs", json!({ "id": "never", "agentId": "sleeper" }))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    // The wait that holds the one permit, written to the server before the first poll.
    let address = server.url.trim_start_matches("http://").to_string();
    let mut held = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    {
        use tokio::io::AsyncWriteExt;
        held.write_all(
            format!(
                "GET /v1/jobs/never/wait?timeoutMs=15000 HTTP/1.1\r\nHost: {address}\r\n\
                 Connection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .expect("send the wait");
    }
    let wait = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut answer = String::new();
        held.read_to_string(&mut answer)
            .await
            .expect("the wait's answer");
        answer
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let response = reqwest::get(format!("{}/healthz", server.url))
            .await
            .expect("healthz");
        if response.status() == StatusCode::SERVICE_UNAVAILABLE {
            assert!(response.headers().contains_key("retry-after"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cap on requests never applied"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let answer = wait.await.expect("join");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let (status, _) = server.get("/healthz").await;
    assert_eq!(status, StatusCode::OK);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_takes_too_long_is_answered_503() {
    let server = Server::start(
        StaticRegistry::new().with(echo()),
        HttpConfig {
            request_timeout: Duration::from_millis(300),
            ..HttpConfig::default()
        },
        false,
    )
    .await;
    // Another process holds the queue's write lock: the enqueue waits for it.
    let path = server
        .db
        .queue_url()
        .strip_prefix("file:")
        .expect("a file URL")
        .to_string();
    let conn = libsql::Builder::new_local(&path)
        .build()
        .await
        .expect("open")
        .connect()
        .expect("connect");
    conn.execute("BEGIN IMMEDIATE", ()).await.expect("lock");
    let response = reqwest::Client::new()
        .post(format!("{}/v1/jobs", server.url))
        .json(&json!({ "id": "slow", "agentId": "echo", "input": null }))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
    let error: Value = response.json().await.expect("a JSON error");
    assert_eq!(error["error"]["tag"], "Overloaded", "{error}");
    conn.execute("COMMIT", ()).await.expect("unlock");
    // Once the lock is gone, the host answers as usual.
    let (status, _) = server
        .post(
            "/v1/jobs",
            json!({ "id": "later", "agentId": "echo", "input": null }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_wait_until_one_closes() {
    let server = Server::start_with(
        StaticRegistry::new().with(echo()),
        HttpConfig::default(),
        false,
        2,
    )
    .await;
    let address = server.url.trim_start_matches("http://").to_string();
    // Two idle connections take both places.
    let first = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    let _second = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .expect("client");
    let refused = impatient
        .get(format!("{}/healthz", server.url))
        .send()
        .await;
    assert!(refused.is_err(), "served over the cap: {refused:?}");
    // Once one closes, the next is served.
    drop(first);
    let (status, _) = server.get("/healthz").await;
    assert_eq!(status, StatusCode::OK);
    server.stop().await;
}

/// Runs native agents as the none sandbox does, and reports the usage their input names, as a
/// sandbox whose agents call models reports what those calls used.
struct Metered(NoneSandbox);

impl Sandbox for Metered {
    fn name(&self) -> &'static str {
        "metered"
    }

    fn run<'a>(
        &'a self,
        spec: &'a AgentSpec,
        input: Arc<serde_json::value::RawValue>,
        ctx: drover_host::sandbox::RunContext,
    ) -> futures::future::BoxFuture<'a, drover_host::sandbox::RunOutcome> {
        Box::pin(async move {
            let usage = serde_json::from_str::<Value>(input.get())
                .ok()
                .and_then(|v| serde_json::from_value::<Usage>(v["usage"].clone()).ok());
            let mut outcome = self.0.run(spec, input, ctx).await;
            outcome.usage = usage;
            outcome
        })
    }
}

/// A run's usage, as its sandbox reports it, is recorded with the run and served by the run,
/// the run list and the job's view (camelCase); a run without usage says `null`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_carry_the_usage_their_sandbox_reports() {
    let metered: Arc<dyn Sandbox> = Arc::new(Metered(NoneSandbox::new()));
    let server = Server::start_in(
        StaticRegistry::new().with(echo()),
        HttpConfig::default(),
        Some(metered),
        tokio::sync::Semaphore::MAX_PERMITS,
    )
    .await;
    let usage = json!({
        "turns": 4, "inputTokens": 1_500, "outputTokens": 230, "costUsd": 0.000_42, "toolCalls": 3
    });
    let (status, _) = server
        .post(
            "/v1/jobs",
            json!({ "id": "talker", "agentId": "echo", "input": { "usage": usage } }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = server
        .post(
            "/v1/jobs",
            json!({ "id": "quiet", "agentId": "echo", "input": {} }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let talker = wait_done(&server, "talker").await;
    assert_eq!(talker["run"]["usage"], usage, "{talker}");
    let quiet = wait_done(&server, "quiet").await;
    assert_eq!(quiet["run"]["usage"], Value::Null, "{quiet}");

    let run_id = talker["run"]["id"].as_str().expect("run id");
    let (status, full) = server.get(&format!("/v1/runs/{run_id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(full["run"]["usage"], usage, "{full}");
    let stored = server
        .db
        .store
        .get_run(run_id)
        .await
        .expect("get")
        .expect("run");
    assert_eq!(
        stored.usage,
        Some(serde_json::from_value::<Usage>(usage.clone()).expect("usage"))
    );

    let (status, page) = server.get("/v1/runs").await;
    assert_eq!(status, StatusCode::OK);
    let runs = page["runs"].as_array().expect("runs");
    let listed = |job: &str| {
        runs.iter()
            .find(|r| r["jobId"] == job)
            .map(|r| r["usage"].clone())
    };
    assert_eq!(listed("talker"), Some(usage.clone()), "{page}");
    assert_eq!(listed("quiet"), Some(Value::Null), "{page}");
    server.stop().await;
}

/// `POST /v1/jobs/batch` enqueues up to 1000 jobs at once, idempotent by id; an invalid job
/// enqueues none of the batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_enqueues_its_jobs_at_once_or_none_of_them() {
    let server = Server::start(
        StaticRegistry::new().with(echo()),
        HttpConfig::default(),
        true,
    )
    .await;
    let batch = |ids: &[&str]| {
        json!({ "jobs": ids
            .iter()
            .map(|id| json!({ "id": id, "agentId": "echo", "input": { "n": 1 } }))
            .collect::<Vec<_>>() })
    };
    let (status, answer) = server
        .post("/v1/jobs/batch", batch(&["b1", "b2", "b3"]))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let jobs = answer["jobs"].as_array().expect("jobs");
    assert_eq!(jobs.len(), 3);
    assert!(jobs.iter().all(|j| j["created"] == true), "{answer}");
    assert_eq!(jobs[1]["job"]["id"], "b2");
    // Again, with one new: the known ones are found, not made twice.
    let (status, answer) = server.post("/v1/jobs/batch", batch(&["b1", "b4"])).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["jobs"][0]["created"], false);
    assert_eq!(answer["jobs"][1]["created"], true);
    for id in ["b1", "b2", "b3", "b4"] {
        assert_eq!(wait_done(&server, id).await["job"]["status"], "done");
    }

    // Empty, too big, or one job invalid: 400, and nothing of it is enqueued.
    let (status, error) = server.post("/v1/jobs/batch", json!({ "jobs": [] })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
    let many: Vec<String> = (0..1001).map(|n| format!("m{n}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let (status, error) = server.post("/v1/jobs/batch", batch(&many)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("1001")),
        "{error}"
    );
    let mut bad = batch(&["c1", "c2"]);
    bad["jobs"][1]["maxAttempts"] = json!(0);
    let (status, error) = server.post("/v1/jobs/batch", bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
    let (status, _) = server.get("/v1/jobs/c1").await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "the valid job of a refused batch is not enqueued"
    );
}
