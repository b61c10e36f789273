//! Tenants: jobs, runs and events carry a tenant and a user, lists filter by tenant, and API
//! tokens scoped to a tenant see and touch only that tenant's work. The HTTP API's router on a
//! real socket over real libsql files, with native agents run by a real worker pool.

use std::sync::Arc;
use std::time::Duration;

use drover_host::api::RunApi;
use drover_host::api::http::{self, HttpConfig, HttpState};
use drover_host::api::metrics::Metrics;
use drover_host::pool::{PoolConfig, PoolDeps, PoolHandle, WorkerPool};
use drover_host::queue::{JobFilter, NewJob};
use drover_host::registry::{AgentSpec, Registry, StaticRegistry, native_agent};
use drover_host::sandbox::{NoneSandbox, Sandbox, SandboxFor};
use drover_host::store::{RunFilter, RunStatus};
use drover_test_support::{TestDb, WAIT};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// A host's router on 127.0.0.1 with a pool, over fresh databases.
struct Server {
    url: String,
    db: TestDb,
    pool: PoolHandle,
    server: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start() -> Self {
        let db = TestDb::new().await;
        let registry: Arc<dyn Registry> = Arc::new(
            StaticRegistry::new()
                .with(echo())
                .with(worker())
                .with(AgentSpec::native(
                    "noisy",
                    native_agent(|input: Value, ctx| async move {
                        ctx.emit("said", &input).await?;
                        Ok(input)
                    }),
                )),
        );
        let api = RunApi::new(db.queue.clone(), db.store.clone(), Arc::clone(&registry));
        let sandbox: Arc<dyn Sandbox> = Arc::new(NoneSandbox::new());
        let sandbox_for: SandboxFor = Arc::new(move |_job, _spec| Arc::clone(&sandbox));
        let pool = WorkerPool::new(
            PoolDeps {
                queue: db.queue.clone(),
                store: db.store.clone(),
                registry: Arc::clone(&registry),
                sandbox_for,
            },
            PoolConfig {
                concurrency: 4,
                reclaim_interval: Duration::from_millis(100),
                signal_poll_interval: Duration::from_millis(20),
                shutdown_grace: Duration::from_secs(5),
                ..PoolConfig::default()
            },
        )
        .start();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let state = HttpState {
            api,
            problems: Arc::new(Vec::new),
            metrics: Arc::new(Metrics::new(None)),
            token: None,
            stale_after: Duration::from_secs(90),
        };
        let config = HttpConfig {
            listen: Some(address),
            ..HttpConfig::default()
        };
        let app = http::router_with(state, &config).fallback(http::not_found);
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("serve");
        });
        Self {
            url: format!("http://{address}"),
            db,
            pool,
            server,
        }
    }

    async fn stop(self) {
        self.pool.shutdown().await;
        self.server.abort();
    }

    /// Sends a request (a JSON body for POSTs) with `token`, if any.
    async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request =
            reqwest::Client::new().request(method.clone(), format!("{}{path}", self.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if method == Method::POST {
            request = request.json(&body.unwrap_or(json!({})));
        }
        let response = request.send().await.expect("send");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(Method::GET, path, None, None).await
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(Method::POST, path, None, Some(body)).await
    }

    async fn wait_done(&self, id: &str) -> Value {
        let (status, view) = self
            .get(&format!(
                "/v1/jobs/{id}/wait?timeoutMs={}",
                WAIT.as_millis()
            ))
            .await;
        assert_eq!(status, StatusCode::OK, "{view}");
        assert_eq!(view["job"]["status"], "done", "{view}");
        view
    }
}

fn echo() -> AgentSpec {
    AgentSpec::native(
        "echo",
        native_agent(|input: Value, _ctx| async move { Ok(json!({ "echo": input })) }),
    )
}

/// A long-lived agent that works until it is asked to stop.
fn worker() -> AgentSpec {
    AgentSpec::native(
        "worker",
        native_agent(|_input: Value, ctx| async move {
            while !ctx.stop_requested() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok(json!("stopped"))
        }),
    )
    .long_lived()
}

/// The ids of a list's items, in order.
fn ids(list: &Value, key: &str) -> Vec<String> {
    list[key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key} in {list}"))
        .iter()
        .map(|item| item["id"].as_str().expect("id").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_and_user_go_from_the_request_to_the_job_and_its_runs_and_lists_filter_by_them() {
    let server = Server::start().await;
    let (status, body) = server
        .post(
            "/v1/jobs",
            json!({ "id": "a-1", "agentId": "echo", "input": 1, "tenantId": "acme", "userId": "ann" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["job"]["tenantId"], "acme");
    assert_eq!(body["job"]["userId"], "ann");
    let (status, _) = server
        .post(
            "/v1/jobs",
            json!({ "id": "b-1", "agentId": "echo", "input": 2, "tenantId": "beta" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = server
        .post(
            "/v1/jobs",
            json!({ "id": "none-1", "agentId": "echo", "input": 3 }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, spawned) = server
        .post(
            "/spawn",
            json!({ "agentType": "worker", "tenantId": "beta", "userId": "bob" }),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{spawned}");
    let agent = spawned["workloadName"].as_str().expect("name").to_string();
    assert_eq!(spawned["job"]["tenantId"], "beta");
    assert_eq!(spawned["job"]["userId"], "bob");
    // The meta keeps them too, as before.
    assert_eq!(
        spawned["job"]["meta"],
        json!({ "tenantId": "beta", "userId": "bob" })
    );

    let view = server.wait_done("a-1").await;
    assert_eq!(view["job"]["tenantId"], "acme");
    assert_eq!(view["run"]["tenantId"], "acme");
    assert_eq!(view["run"]["userId"], "ann");
    server.wait_done("b-1").await;
    server.wait_done("none-1").await;
    let run_of_a = view["run"]["id"].as_str().expect("run id").to_string();
    let (_, run) = server.get(&format!("/v1/runs/{run_of_a}")).await;
    assert_eq!(run["run"]["tenantId"], "acme");
    assert_eq!(run["run"]["userId"], "ann");

    // Lists: by tenant, or everything.
    let (_, jobs) = server.get("/v1/jobs?tenantId=acme").await;
    assert_eq!(ids(&jobs, "jobs"), ["a-1"]);
    assert_eq!(jobs["jobs"][0]["tenantId"], "acme");
    assert_eq!(jobs["jobs"][0]["userId"], "ann");
    let (_, jobs) = server.get("/v1/jobs?tenantId=beta").await;
    assert_eq!(ids(&jobs, "jobs"), [agent.as_str(), "b-1"]);
    let (_, jobs) = server.get("/v1/jobs").await;
    assert_eq!(ids(&jobs, "jobs").len(), 4);
    let (_, runs) = server.get("/v1/runs?tenantId=acme").await;
    assert_eq!(ids(&runs, "runs"), [run_of_a.as_str()]);
    assert_eq!(runs["runs"][0]["tenantId"], "acme");
    let (_, runs) = server.get("/v1/runs?tenantId=nobody").await;
    assert_eq!(runs["runs"], json!([]));
    let (_, agents) = server.get("/v1/agents?tenantId=beta").await;
    assert_eq!(ids(&agents, "agents"), [agent.as_str()]);
    let (_, agents) = server.get("/v1/agents?tenantId=acme").await;
    assert_eq!(agents["agents"], json!([]));

    // The same through the Rust API.
    let acme = JobFilter {
        tenant_id: Some("acme".into()),
        ..JobFilter::default()
    };
    let jobs = server.db.queue.list(&acme).await.expect("list");
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].user_id.as_deref(), Some("ann"));
    drover_test_support::wait_for_run_status(&server.db.store, &agent, RunStatus::Running).await;
    let runs = server
        .db
        .store
        .list_runs(&RunFilter {
            tenant_id: Some("beta".into()),
            ..RunFilter::default()
        })
        .await
        .expect("runs");
    assert!(runs.iter().all(|r| r.tenant_id.as_deref() == Some("beta")));
    assert_eq!(runs.len(), 2, "{runs:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_tenant_and_user_ids_get_a_clear_400_and_nothing_is_written() {
    let server = Server::start().await;
    let long = "t".repeat(65);
    for (tenant, user) in [
        (json!("has space"), json!(null)),
        (json!("*"), json!(null)),
        (json!(""), json!(null)),
        (json!(long), json!(null)),
        (json!("-leading"), json!(null)),
        (json!("ok"), json!("line\nbreak")),
        (json!("ok"), json!("")),
        (json!(7), json!(null)),
    ] {
        let (status, body) = server
            .post(
                "/v1/jobs",
                json!({ "agentId": "echo", "tenantId": tenant, "userId": user }),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{tenant} {user}: {body}");
        assert_eq!(body["error"]["tag"], "InvalidRequest", "{body}");
        let message = body["error"]["message"].as_str().expect("message");
        assert!(
            message.contains("tenantId")
                || message.contains("userId")
                || message.contains("string"),
            "{message}"
        );
        let (status, body) = server
            .post(
                "/spawn",
                json!({ "agentType": "worker", "tenantId": tenant, "userId": user }),
            )
            .await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "spawn {tenant} {user}: {body}"
        );
    }
    for path in [
        "/v1/jobs?tenantId=a%20b",
        "/v1/runs?tenantId=*",
        "/v1/agents?tenantId=",
    ] {
        let (status, body) = server.get(path).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .expect("message")
                .contains("tenantId"),
            "{body}"
        );
    }
    assert!(
        server
            .db
            .queue
            .list(&JobFilter::default())
            .await
            .expect("list")
            .is_empty(),
        "nothing was written"
    );
    // A good one still goes through, through the Rust API too.
    let api = RunApi::new(
        server.db.queue.clone(),
        server.db.store.clone(),
        Arc::new(StaticRegistry::new().with(echo())),
    );
    let job = api
        .enqueue(
            NewJob::new("echo", &json!(1))
                .tenant("acme.eu-1")
                .user("Ann Example"),
        )
        .await
        .expect("enqueue")
        .job;
    assert_eq!(job.tenant_id.as_deref(), Some("acme.eu-1"));
    assert_eq!(job.user_id.as_deref(), Some("Ann Example"));
    server.stop().await;
}
