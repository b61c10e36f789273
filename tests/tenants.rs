//! Tenants: jobs, runs and events carry a tenant and a user, lists filter by tenant, and API
//! tokens scoped to a tenant see and touch only that tenant's work. The HTTP API's router on a
//! real socket over real libsql files, with native agents run by a real worker pool.

use std::sync::Arc;
use std::time::Duration;

use drover_host::api::RunApi;
use drover_host::api::auth::{self, ApiTokenConfig, Auth, Refusal, Verb};
use drover_host::api::http::{self, HttpConfig, HttpState};
use drover_host::api::metrics::Metrics;
use drover_host::pool::{PoolConfig, PoolDeps, PoolHandle, WorkerPool};
use drover_host::queue::{JobFilter, NewJob};
use drover_host::registry::{AgentSpec, Registry, StaticRegistry};
use drover_host::sandbox::native_agent;
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

/// The tokens of [`Server::with_tokens`]: each one's text is its name.
fn tokens() -> Vec<ApiTokenConfig> {
    let token = |name: &str, tenant: &str, verbs: &[Verb], stop: bool| ApiTokenConfig {
        name: name.into(),
        sha256: auth::hex(&auth::hash_token(name)),
        tenant: tenant.into(),
        verbs: verbs.to_vec(),
        stop_agents_on_revoke: stop,
    };
    let worker = [Verb::Read, Verb::Enqueue, Verb::Cancel];
    vec![
        token("acme", "acme", &worker, true),
        token("beta", "beta", &worker, false),
        token("acme-reader", "acme", &[Verb::Read], false),
        token("ops", "*", &[Verb::Admin], false),
    ]
}

/// The admin token (`DROVER_API_TOKEN`) of [`Server::with_tokens`].
const ROOT: &str = "root-token";

impl Server {
    async fn start() -> Self {
        Self::start_with(None).await
    }

    /// A server that accepts the tokens of [`tokens`] and [`ROOT`].
    async fn with_tokens() -> Self {
        Self::start_with(Some(tokens())).await
    }

    async fn start_with(tokens: Option<Vec<ApiTokenConfig>>) -> Self {
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
            auth: match &tokens {
                Some(tokens) => Auth::open(Some(ROOT), tokens, db.queue.db().clone())
                    .await
                    .expect("auth"),
                None => Auth::none(),
            },
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
    // The same id for another tenant is a conflict, even with the same agent and input.
    let (status, body) = server
        .post(
            "/v1/jobs",
            json!({ "id": "a-1", "agentId": "echo", "input": 1, "tenantId": "beta" }),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, _) = server
        .post(
            "/v1/jobs",
            json!({ "id": "a-1", "agentId": "echo", "input": 1, "tenantId": "acme" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
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

/// The body a request for an id nobody has gets, with `id` in its place.
async fn unknown(server: &Server, method: Method, path: &str, id: &str, token: &str) -> Value {
    let (status, body) = server
        .send(
            method.clone(),
            &path.replace("{id}", "no-such-id"),
            Some(token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {body}");
    serde_json::from_str(&body.to_string().replace("no-such-id", id)).expect("json")
}

/// Asks `path` (with `{id}` for `id`) as `token`: it must answer 404 with exactly the body
/// of an unknown id.
async fn not_found_like_unknown(
    server: &Server,
    method: Method,
    path: &str,
    id: &str,
    token: &str,
) {
    let expected = unknown(server, method.clone(), path, id, token).await;
    let (status, body) = server
        .send(method.clone(), &path.replace("{id}", id), Some(token), None)
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "{method} {path} {id}: {body}"
    );
    assert_eq!(body, expected, "{method} {path} {id}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_token_sees_and_touches_only_its_own_tenant_on_every_route() {
    let server = Server::with_tokens().await;
    let s = &server;
    let post = |path: &'static str, token: &'static str, body: Value| async move {
        s.send(Method::POST, path, Some(token), Some(body)).await
    };
    let get = |path: String, token: &'static str| async move {
        s.send(Method::GET, &path, Some(token), None).await
    };

    // Enqueue: the token's tenant, whatever the body says; another tenant is refused.
    let (status, body) = post(
        "/v1/jobs",
        "acme",
        json!({ "id": "a-1", "agentId": "noisy", "input": "hello" }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["job"]["tenantId"], "acme");
    let (status, body) = post(
        "/v1/jobs",
        "beta",
        json!({ "id": "b-1", "agentId": "noisy", "input": "secret of beta", "tenantId": "beta" }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = post(
        "/v1/jobs",
        "acme",
        json!({ "agentId": "echo", "tenantId": "beta" }),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("\"beta\""),
        "{body}"
    );
    // Beta's id, with beta's very payload: a conflict that shows nothing of beta's job.
    let (status, body) = post(
        "/v1/jobs",
        "acme",
        json!({ "id": "b-1", "agentId": "noisy", "input": "secret of beta" }),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(!body.to_string().contains("beta"), "{body}");
    // Spawn: the same.
    let (status, body) = post(
        "/spawn",
        "acme",
        json!({ "agentType": "worker", "tenantId": "beta" }),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, spawned) = post(
        "/spawn",
        "acme",
        json!({ "agentType": "worker", "userId": "ann" }),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{spawned}");
    assert_eq!(spawned["job"]["tenantId"], "acme");
    assert_eq!(spawned["job"]["meta"]["tenantId"], "acme");
    let agent_a = spawned["workloadName"].as_str().expect("name").to_string();
    let (_, spawned) = post("/spawn", "beta", json!({ "agentType": "worker" })).await;
    let agent_b = spawned["workloadName"].as_str().expect("name").to_string();

    for (id, token) in [("a-1", "acme"), ("b-1", "beta")] {
        let (status, view) = get(
            format!("/v1/jobs/{id}/wait?timeoutMs={}", WAIT.as_millis()),
            token,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{view}");
        assert_eq!(view["job"]["status"], "done", "{view}");
    }
    for agent in [&agent_a, &agent_b] {
        drover_test_support::wait_for_run_status(&server.db.store, agent, RunStatus::Running).await;
    }
    let (_, view) = get("/v1/jobs/b-1".into(), "beta").await;
    let run_b = view["run"]["id"].as_str().expect("run").to_string();
    let (_, view) = get("/v1/jobs/a-1".into(), "acme").await;
    let run_a = view["run"]["id"].as_str().expect("run").to_string();

    // Lists hold only the token's tenant, whatever the query asks.
    let (_, jobs) = get("/v1/jobs".into(), "acme").await;
    assert_eq!(ids(&jobs, "jobs"), [agent_a.as_str(), "a-1"]);
    let (_, jobs) = get("/v1/jobs?tenantId=beta".into(), "acme").await;
    assert_eq!(jobs["jobs"], json!([]));
    let (_, runs) = get("/v1/runs".into(), "acme").await;
    let runs = ids(&runs, "runs");
    assert!(
        runs.contains(&run_a) && !runs.contains(&run_b) && runs.len() == 2,
        "{runs:?}"
    );
    let (_, runs) = get("/v1/runs?tenantId=beta".into(), "acme").await;
    assert_eq!(runs["runs"], json!([]));
    let (_, agents) = get("/v1/agents".into(), "acme").await;
    assert_eq!(ids(&agents, "agents"), [agent_a.as_str()]);
    let (_, agents) = get("/v1/agents?tenantId=beta".into(), "acme").await;
    assert_eq!(agents["agents"], json!([]));
    let (_, agents) = get("/v1/agents".into(), "beta").await;
    assert_eq!(ids(&agents, "agents"), [agent_b.as_str()], "{agents}");

    // Another tenant's ids are answered exactly like unknown ones, on every route that takes one.
    for (method, path, id) in [
        (Method::GET, "/v1/jobs/{id}", "b-1"),
        (Method::GET, "/v1/jobs/{id}/wait?timeoutMs=10", "b-1"),
        (Method::POST, "/v1/jobs/{id}/cancel", agent_b.as_str()),
        (Method::POST, "/v1/jobs/{id}/stop", agent_b.as_str()),
        (Method::GET, "/v1/runs/{id}", run_b.as_str()),
        (Method::GET, "/v1/runs/{id}/events", run_b.as_str()),
        (Method::GET, "/v1/agents/{id}", agent_b.as_str()),
        (Method::GET, "/v1/agents/{id}/events", agent_b.as_str()),
        (Method::DELETE, "/v1/agents/{id}", agent_b.as_str()),
    ] {
        not_found_like_unknown(&server, method.clone(), path, id, "acme").await;
        // The owner reaches it (the destructive ones are left for later).
        if method == Method::GET {
            let (status, body) = get(path.replace("{id}", id), "beta").await;
            assert_eq!(status, StatusCode::OK, "{path}: {body}");
        }
    }
    // Beta's agent was not touched by any of that.
    let (_, agent) = get(format!("/v1/agents/{agent_b}"), "beta").await;
    assert_eq!(agent["agent"]["phase"], "Running", "{agent}");
    assert_eq!(agent["agent"]["job"]["stopRequested"], false, "{agent}");
    // Acme's own events, agent and job.
    let (status, events) = get(format!("/v1/runs/{run_a}/events"), "acme").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        events["events"]
            .as_array()
            .expect("events")
            .iter()
            .any(|e| e["kind"] == "said"),
        "{events}"
    );
    let (status, _) = get(format!("/v1/agents/{agent_a}/events"), "acme").await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = s
        .send(
            Method::DELETE,
            &format!("/v1/agents/{agent_a}"),
            Some("acme"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");

    // Templates are the host's agent types, not tenant data.
    let (status, _) = get("/v1/templates".into(), "acme-reader").await;
    assert_eq!(status, StatusCode::OK);
    // Host-wide routes need admin, and say so.
    for path in ["/v1/stats", "/metrics"] {
        let (status, body) = get(path.into(), "acme").await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .expect("message")
                .contains("\"admin\""),
            "{body}"
        );
        for admin in ["ops", ROOT] {
            let response = reqwest::Client::new()
                .get(format!("{}{path}", server.url))
                .bearer_auth(admin)
                .send()
                .await
                .expect("send");
            assert_eq!(response.status(), StatusCode::OK, "{admin} {path}");
        }
    }
    let (status, body) = post("/v1/tokens/beta/revoke", "acme", json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // Missing verbs are named.
    let (status, body) = post("/v1/jobs", "acme-reader", json!({ "agentId": "echo" })).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("\"enqueue\""),
        "{body}"
    );
    let (status, body) = post("/spawn", "acme-reader", json!({ "agentType": "worker" })).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = post("/v1/jobs/a-1/cancel", "acme-reader", json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("\"cancel\""),
        "{body}"
    );
    let (status, _) = s
        .send(
            Method::DELETE,
            &format!("/v1/agents/{agent_a}"),
            Some("acme-reader"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = get("/v1/jobs/a-1".into(), "acme-reader").await;
    assert_eq!(status, StatusCode::OK);
    // No token, or a wrong one: 401; /healthz needs none.
    for token in [None, Some("guess")] {
        let (status, body) = s.send(Method::GET, "/v1/jobs", token, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    }
    let (status, _) = s.send(Method::GET, "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK);
    // Tokens of every tenant see everything.
    for admin in ["ops", ROOT] {
        let (_, jobs) = s.send(Method::GET, "/v1/jobs", Some(admin), None).await;
        assert_eq!(ids(&jobs, "jobs").len(), 4, "{admin}");
        let (status, _) = s.send(Method::GET, "/v1/jobs/b-1", Some(admin), None).await;
        assert_eq!(status, StatusCode::OK);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_refused_here_at_once_and_by_other_hosts_within_a_second() {
    let db = TestDb::new().await;
    let here = Auth::open(None, &tokens(), db.queue.db().clone())
        .await
        .expect("auth");
    let there = Auth::open(None, &tokens(), db.queue.db().clone())
        .await
        .expect("auth");
    for auth in [&here, &there] {
        let principal = auth.authenticate(Some("acme")).await.expect("accepted");
        assert_eq!(principal.tenant.as_deref(), Some("acme"));
    }
    let revoked = here.revoke("acme").await.expect("revoke").expect("known");
    assert!(revoked.newly && revoked.stop_agents);
    assert_eq!(
        here.authenticate(Some("acme")).await,
        Err(Refusal::Revoked("acme".into()))
    );
    // The other host reads the revocations again once its copy is older than the refresh.
    tokio::time::sleep(auth::REVOCATION_REFRESH).await;
    assert_eq!(
        there.authenticate(Some("acme")).await,
        Err(Refusal::Revoked("acme".into()))
    );
    // A host started later knows it too; other tokens are untouched; again is no news.
    let later = Auth::open(None, &tokens(), db.queue.db().clone())
        .await
        .expect("auth");
    assert!(later.authenticate(Some("acme")).await.is_err());
    assert!(later.authenticate(Some("beta")).await.is_ok());
    assert!(
        !here
            .revoke("acme")
            .await
            .expect("revoke")
            .expect("known")
            .newly
    );
    assert_eq!(here.revoke("nobody").await.expect("revoke"), None);
    // A new token under the old name is a new token.
    let mut renewed = tokens();
    renewed[0].sha256 = auth::hex(&auth::hash_token("acme-2"));
    here.reload(&renewed).expect("reload");
    assert!(here.authenticate(Some("acme-2")).await.is_ok());
    assert!(here.authenticate(Some("acme")).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_token_that_says_so_stops_its_tenants_agents_and_no_others() {
    let server = Server::with_tokens().await;
    let mut agents = Vec::new();
    for token in ["acme", "acme", "beta"] {
        let (status, spawned) = server
            .send(
                Method::POST,
                "/spawn",
                Some(token),
                Some(json!({ "agentType": "worker" })),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{spawned}");
        let id = spawned["workloadName"].as_str().expect("name").to_string();
        drover_test_support::wait_for_run_status(&server.db.store, &id, RunStatus::Running).await;
        agents.push(id);
    }
    let (status, body) = server
        .send(
            Method::POST,
            "/v1/tokens/acme/revoke",
            Some("ops"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut stopped: Vec<&str> = body["token"]["stoppedAgents"]
        .as_array()
        .expect("stopped")
        .iter()
        .map(|v| v.as_str().expect("id"))
        .collect();
    stopped.sort_unstable();
    let mut acme = vec![agents[0].as_str(), agents[1].as_str()];
    acme.sort_unstable();
    assert_eq!(stopped, acme);
    let (status, body) = server
        .send(Method::GET, "/v1/jobs", Some("acme"), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("revoked"),
        "{body}"
    );
    // Acme's agents stop gracefully (and complete); beta's runs on.
    for id in &agents[..2] {
        let (_, view) = server
            .send(
                Method::GET,
                &format!("/v1/jobs/{id}/wait?timeoutMs={}", WAIT.as_millis()),
                Some("ops"),
                None,
            )
            .await;
        assert_eq!(view["job"]["status"], "done", "{view}");
        assert_eq!(view["run"]["status"], "success", "{view}");
    }
    let (_, agent) = server
        .send(
            Method::GET,
            &format!("/v1/agents/{}", agents[2]),
            Some("beta"),
            None,
        )
        .await;
    assert_eq!(agent["agent"]["phase"], "Running", "{agent}");
    // Unknown names are 404.
    let (status, _) = server
        .send(
            Method::POST,
            "/v1/tokens/nobody/revoke",
            Some(ROOT),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    server.stop().await;
}

const EXE: &str = env!("CARGO_BIN_EXE_drover-host");

/// Runs `drover-host args…` with `token` as `DROVER_API_TOKEN` and `stdin` as its input.
fn cli(url: &str, token: Option<&str>, args: &[&str], stdin: &str) -> (i32, String, String) {
    use std::io::Write;

    let mut command = std::process::Command::new(EXE);
    command
        .args(args)
        .env("DROVER_URL", url)
        .env_remove("DROVER_API_TOKEN")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    if let Some(token) = token {
        command.env("DROVER_API_TOKEN", token);
    }
    let mut child = command.spawn().expect("run drover-host");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `drover-host tokens new`: the token and the TOML entry it printed.
fn new_token(name: &str, tenant: &str, verbs: &str) -> (String, String) {
    let (code, out, err) = cli(
        "http://127.0.0.1:9",
        None,
        &[
            "tokens", "new", "--name", name, "--tenant", tenant, "--verbs", verbs,
        ],
        "",
    );
    assert_eq!(code, 0, "{err}");
    let token = out
        .lines()
        .find_map(|l| l.strip_prefix("token: "))
        .expect("a token line")
        .to_string();
    let entry = out
        .split_once("\n\n")
        .map(|(_, toml)| toml.to_string())
        .expect("a TOML entry");
    assert!(
        !entry.contains(&token),
        "the entry holds only the hash: {entry}"
    );
    (token, entry)
}

async fn status_with(url: &str, path: &str, token: &str) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .get(format!("{url}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .expect("send");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Sends SIGHUP to the host.
fn hang_up(host: &drover_test_support::HostProcess) {
    let sent = std::process::Command::new("kill")
        .args(["-HUP", &host.pid().to_string()])
        .status()
        .expect("kill");
    assert!(sent.success());
}

/// Waits (at most [`WAIT`]) until `check` holds.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + WAIT;
    while !check().await {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_refuses_a_revoked_token_at_once_and_reloads_its_tokens_on_sighup() {
    let (acme, acme_entry) = new_token("acme-ci", "acme", "enqueue,read");
    let (beta, beta_entry) = new_token("beta-ro", "beta", "read");
    let (gamma, gamma_entry) = new_token("gamma", "gamma", "read");
    // `tokens hash` gives the entry's hash.
    let (code, hash, _) = cli(
        "http://127.0.0.1:9",
        None,
        &["tokens", "hash"],
        &format!("{acme}\n"),
    );
    assert_eq!(code, 0);
    assert!(
        acme_entry.contains(&format!("sha256 = \"{}\"", hash.trim())),
        "{acme_entry}"
    );

    let agents = drover_test_support::AgentDir::new();
    agents.add("echo", drover_test_support::ECHO, None);
    let data = tempfile::tempdir().expect("temp dir");
    let config = data.path().join("drover.toml");
    std::fs::write(&config, format!("{acme_entry}\n{beta_entry}")).expect("config");
    let dir = data.path();
    let mut args = drover_test_support::host_args(agents.path(), dir, "var", Some(&config));
    args.extend(["--concurrency", "2"].map(String::from));
    let host = drover_test_support::HostProcess::start(EXE, &args, &[("DROVER_API_TOKEN", "root")]);
    let url = host.url.clone();

    // Acme's token enqueues for acme; the CLI lists by tenant.
    let (code, out, err) = cli(
        &url,
        Some(&acme),
        &["enqueue", "echo", "{\"n\": 1}", "--wait"],
        "",
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = cli(
        &url,
        Some("root"),
        &["jobs", "--tenant", "acme", "--json"],
        "",
    );
    assert_eq!(code, 0, "{err}");
    let jobs: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(jobs["jobs"].as_array().map(Vec::len), Some(1), "{jobs}");
    assert_eq!(jobs["jobs"][0]["tenantId"], "acme");
    let (code, out, _) = cli(
        &url,
        Some("root"),
        &["runs", "--tenant", "beta", "--json"],
        "",
    );
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<Value>(&out).expect("json")["runs"],
        json!([])
    );
    let (code, out, _) = cli(&url, Some("root"), &["jobs", "--tenant", "acme"], "");
    assert_eq!(code, 0);
    assert!(out.contains("TENANT") && out.contains("acme"), "{out}");

    // Revoked: refused at once. Revoking needs admin.
    let (code, _, err) = cli(&url, Some(&beta), &["tokens", "revoke", "acme-ci"], "");
    assert_eq!(code, 1);
    assert!(err.contains("Forbidden") && err.contains("admin"), "{err}");
    assert_eq!(status_with(&url, "/v1/jobs", &acme).await.0, StatusCode::OK);
    let (code, out, err) = cli(&url, Some("root"), &["tokens", "revoke", "acme-ci"], "");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("revoked acme-ci"), "{out}");
    let (status, body) = status_with(&url, "/v1/jobs", &acme).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("revoked"),
        "{body}"
    );
    let (code, _, err) = cli(
        &url,
        Some("root"),
        &["tokens", "revoke", "no-such-token"],
        "",
    );
    assert_eq!(code, 1);
    assert!(err.contains("NotFound"), "{err}");

    // SIGHUP: beta's token leaves the file, gamma's joins.
    assert_eq!(
        status_with(&url, "/v1/jobs", &gamma).await.0,
        StatusCode::UNAUTHORIZED
    );
    std::fs::write(&config, format!("{acme_entry}\n{gamma_entry}")).expect("config");
    hang_up(&host);
    eventually("gamma's token is accepted", async || {
        status_with(&url, "/v1/jobs", &gamma).await.0 == StatusCode::OK
    })
    .await;
    assert_eq!(
        status_with(&url, "/v1/jobs", &beta).await.0,
        StatusCode::UNAUTHORIZED
    );
    // Gamma sees none of acme's jobs.
    let (_, jobs) = status_with(&url, "/v1/jobs", &gamma).await;
    assert_eq!(jobs["jobs"], json!([]));
    // The revocation outlives the reload.
    assert_eq!(
        status_with(&url, "/v1/jobs", &acme).await.0,
        StatusCode::UNAUTHORIZED
    );

    // A file that does not parse keeps the tokens as they were, and the log says why.
    std::fs::write(&config, "[[api-tokens]]\nname = 7\n").expect("config");
    hang_up(&host);
    eventually("the log says the tokens stay", async || {
        host.log_text().contains("not reloaded")
    })
    .await;
    assert_eq!(
        status_with(&url, "/v1/jobs", &gamma).await.0,
        StatusCode::OK
    );
    assert_eq!(status_with(&url, "/healthz", "").await.0, StatusCode::OK);
}
