//! The HTTP API: JSON (camelCase) over the same operations as [`RunApi`], plus the routes of
//! the long-lived agent walkthrough (`POST /spawn`, `/v1/agents`), health and metrics.
//!
//! | route | does |
//! |---|---|
//! | `POST /v1/jobs` | enqueue (`201`, or `200` with the existing job for a known id) |
//! | `GET /v1/jobs` | list (`status`, `agentId`, `limit`, `offset`) |
//! | `GET /v1/jobs/{id}` | the job and its run |
//! | `GET /v1/jobs/{id}/wait?timeoutMs=` | the job once finished (`408` with its state on timeout) |
//! | `POST /v1/jobs/{id}/cancel` | cancel (`202`) |
//! | `POST /v1/jobs/{id}/stop` | graceful stop (`202`) |
//! | `GET /v1/runs` | list (`agentId`, `status`, `jobId`, `lifecycle`, `limit`, `offset`) |
//! | `GET /v1/runs/{id}` | one run |
//! | `GET /v1/runs/{id}/events?after=` | its events |
//! | `GET /v1/templates` | the loaded agent types (and files that failed to load) |
//! | `POST /spawn` | start a long-lived agent (`202 {workloadName}`) |
//! | `GET /v1/agents`, `GET /v1/agents/{id}` | long-lived agent instances |
//! | `GET /v1/agents/{id}/events` | the instance's events |
//! | `DELETE /v1/agents/{id}` | graceful stop (or cancel if it never started) |
//! | `GET /v1/stats` | jobs and runs counted by status |
//! | `GET /healthz`, `GET /metrics` | liveness, Prometheus metrics |
//!
//! Errors are `{"error": {"tag", "message"}}` with a 4xx/5xx status. With a token configured,
//! every route here requires `Authorization: Bearer <token>`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::metrics::Metrics;
use super::{ApiError, JobView, RunApi};
use crate::queue::{ErrorInfo, Job, JobFilter, JobStatus, Lifecycle, NewJob};
use crate::registry::AgentSpec;
use crate::registry::dir::LoadProblem;
use crate::store::{Run, RunFilter, RunStatus};
use crate::time::now_ms;

/// Longest wait a client may ask for.
const MAX_WAIT: Duration = Duration::from_secs(300);
/// Default wait when the client does not say.
const DEFAULT_WAIT: Duration = Duration::from_secs(30);

/// What the HTTP handlers share.
#[derive(Clone)]
pub struct HttpState {
    /// The producer API.
    pub api: RunApi,
    /// Files in the agent directory that failed to load (for `/v1/templates`).
    pub problems: Arc<dyn Fn() -> Vec<LoadProblem> + Send + Sync>,
    /// Metrics exported at `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Bearer token every API request must carry, if set.
    pub token: Option<Arc<str>>,
    /// A running long-lived agent without a heartbeat for this long is flagged stale.
    pub stale_after: Duration,
}

/// The API's routes (the viewer adds its own).
pub fn router(state: HttpState) -> Router {
    let api = Router::new()
        .route("/v1/jobs", post(enqueue).get(list_jobs))
        .route("/v1/jobs/{id}", get(get_job))
        .route("/v1/jobs/{id}/wait", get(wait_job))
        .route("/v1/jobs/{id}/cancel", post(cancel_job))
        .route("/v1/jobs/{id}/stop", post(stop_job))
        .route("/v1/runs", get(list_runs))
        .route("/v1/runs/{id}", get(get_run))
        .route("/v1/runs/{id}/events", get(run_events))
        .route("/v1/templates", get(templates))
        .route("/spawn", post(spawn))
        .route("/v1/agents", get(list_agents))
        .route("/v1/agents/{id}", get(get_agent).delete(delete_agent))
        .route("/v1/agents/{id}/events", get(agent_events))
        .route("/v1/stats", get(stats))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .method_not_allowed_fallback(method_not_allowed);
    api.layer(middleware::from_fn_with_state(state.clone(), authorize))
        .with_state(state)
}

/// The answer to a request for a route that does not exist (JSON, like every API error).
pub async fn not_found(request: Request) -> Response {
    HttpError::new(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("no route {} {}", request.method(), request.uri().path()),
    )
    .into_response()
}

async fn method_not_allowed(request: Request) -> Response {
    HttpError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        format!(
            "{} is not allowed on {}",
            request.method(),
            request.uri().path()
        ),
    )
    .into_response()
}

/// A query string, parsed; a malformed one is a JSON `400` that says what is wrong.
struct Query<T>(T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| Query(value))
            .map_err(|e| HttpError::new(e.status(), "InvalidRequest", e.body_text()))
    }
}

/// A path parameter; one that is not valid UTF-8 (after percent-decoding) is a JSON `400`.
struct Path<T>(T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| Path(value))
            .map_err(|e| HttpError::new(e.status(), "InvalidRequest", e.body_text()))
    }
}

/// A request body; one over the size limit is a JSON `413`.
struct Body(Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = HttpError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        Bytes::from_request(request, state)
            .await
            .map(Body)
            .map_err(|e| HttpError::new(e.status(), "InvalidRequest", e.body_text()))
    }
}

/// An error response: `{"error": {"tag", "message"}}`.
#[derive(Debug)]
pub struct HttpError {
    status: StatusCode,
    error: ErrorInfo,
    /// Seconds after which the client may try again (`Retry-After`).
    retry_after: Option<u64>,
}

impl HttpError {
    /// An error with a status.
    pub fn new(status: StatusCode, tag: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            error: ErrorInfo::new(tag, message),
            retry_after: None,
        }
    }

    /// `503 Service Unavailable` with a `Retry-After`: the host cannot take this now (its
    /// database is locked, full, unreachable or too far behind), but may shortly.
    fn unavailable(message: impl Into<String>) -> Self {
        Self {
            retry_after: Some(1),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "Unavailable", message)
        }
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(json!({ "error": self.error }))).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
        }
        response
    }
}

/// The database error behind an API error, if that is what it is.
fn db_error(error: &ApiError) -> Option<&crate::db::DbError> {
    match error {
        ApiError::Queue(crate::queue::QueueError::Db(e))
        | ApiError::Store(crate::store::StoreError::Db(e)) => Some(e),
        _ => None,
    }
}

impl From<ApiError> for HttpError {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::NotFound(what) => HttpError::new(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("{what} not found"),
            ),
            ApiError::BadRequest(error) => HttpError {
                status: StatusCode::BAD_REQUEST,
                error,
                retry_after: None,
            },
            other if db_error(&other).is_some_and(|e| e.is_transient()) => {
                tracing::warn!(error = %other, "request refused for now");
                HttpError::unavailable(
                    "the host cannot take this request now (its database is busy or unreachable); \
                     try again shortly",
                )
            }
            ApiError::WaitTimeout(view) => HttpError::new(
                StatusCode::REQUEST_TIMEOUT,
                "Timeout",
                format!("job {} did not finish in time", view.job.id),
            ),
            other => {
                tracing::error!(error = %other, "request failed");
                HttpError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Internal",
                    other.to_string(),
                )
            }
        }
    }
}

type HttpResult = Result<Response, HttpError>;

async fn authorize(State(state): State<HttpState>, request: Request, next: Next) -> Response {
    if let Some(token) = &state.token {
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !presented.is_some_and(|p| constant_time_eq(p.as_bytes(), token.as_bytes())) {
            return HttpError::new(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "this host requires Authorization: Bearer <token>",
            )
            .into_response();
        }
    }
    next.run(request).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Parses a JSON body, turning every problem into a `400` that says what is wrong.
fn body<T: DeserializeOwned>(headers: &HeaderMap, bytes: &Bytes) -> Result<T, HttpError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    if !content_type.starts_with("application/json") {
        return Err(HttpError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!("expected application/json, got {content_type}"),
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        let tag = if e.is_data() {
            "InvalidRequest"
        } else {
            "InvalidJson"
        };
        HttpError::new(StatusCode::BAD_REQUEST, tag, e.to_string())
    })
}

fn ok<T: Serialize>(status: StatusCode, value: T) -> HttpResult {
    Ok((status, Json(value)).into_response())
}

async fn enqueue(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Body(bytes): Body,
) -> HttpResult {
    let job: NewJob = body(&headers, &bytes)?;
    let enqueued = state.api.enqueue(job).await?;
    let status = if enqueued.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    ok(status, json!({ "job": enqueued.job }))
}

/// Query of `GET /v1/jobs`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct JobQuery {
    status: Option<String>,
    agent_id: Option<String>,
    limit: Option<u32>,
    offset: Option<u32>,
}

async fn list_jobs(State(state): State<HttpState>, Query(q): Query<JobQuery>) -> HttpResult {
    let filter = JobFilter {
        status: parse_list(q.status.as_deref())?,
        agent_id: q.agent_id,
        limit: q.limit,
        offset: q.offset,
    };
    ok(
        StatusCode::OK,
        json!({ "jobs": state.api.list(&filter).await? }),
    )
}

/// Parses `a,b,c` into statuses.
fn parse_list<T: std::str::FromStr<Err = String>>(text: Option<&str>) -> Result<Vec<T>, HttpError> {
    text.into_iter()
        .flat_map(|t| t.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .map_err(|e: String| HttpError::new(StatusCode::BAD_REQUEST, "InvalidRequest", e))
        })
        .collect()
}

async fn get_job(State(state): State<HttpState>, Path(id): Path<String>) -> HttpResult {
    ok(StatusCode::OK, state.api.get(&id).await?)
}

/// Query of `GET /v1/jobs/{id}/wait`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WaitQuery {
    timeout_ms: Option<u64>,
}

async fn wait_job(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    Query(q): Query<WaitQuery>,
) -> HttpResult {
    let timeout = q
        .timeout_ms
        .map_or(DEFAULT_WAIT, Duration::from_millis)
        .min(MAX_WAIT);
    match state.api.wait_for(&id, timeout).await {
        Ok(view) => ok(StatusCode::OK, view),
        Err(ApiError::WaitTimeout(view)) => ok(StatusCode::REQUEST_TIMEOUT, *view),
        Err(e) => Err(e.into()),
    }
}

async fn cancel_job(State(state): State<HttpState>, Path(id): Path<String>) -> HttpResult {
    ok(
        StatusCode::ACCEPTED,
        json!({ "job": state.api.cancel(&id).await? }),
    )
}

async fn stop_job(State(state): State<HttpState>, Path(id): Path<String>) -> HttpResult {
    ok(
        StatusCode::ACCEPTED,
        json!({ "job": state.api.stop(&id).await? }),
    )
}

/// Query of `GET /v1/runs`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RunQuery {
    status: Option<String>,
    agent_id: Option<String>,
    job_id: Option<String>,
    lifecycle: Option<Lifecycle>,
    limit: Option<u32>,
    offset: Option<u32>,
}

async fn list_runs(State(state): State<HttpState>, Query(q): Query<RunQuery>) -> HttpResult {
    let filter = RunFilter {
        status: parse_list(q.status.as_deref())?,
        agent_id: q.agent_id,
        job_id: q.job_id,
        lifecycle: q.lifecycle,
        limit: q.limit,
        offset: q.offset,
    };
    ok(
        StatusCode::OK,
        json!({ "runs": state.api.runs(&filter).await? }),
    )
}

async fn get_run(State(state): State<HttpState>, Path(id): Path<String>) -> HttpResult {
    ok(StatusCode::OK, json!({ "run": state.api.run(&id).await? }))
}

/// Query of the event routes.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EventQuery {
    after: Option<i64>,
    limit: Option<u32>,
}

async fn run_events(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    Query(q): Query<EventQuery>,
) -> HttpResult {
    state.api.run(&id).await?;
    let events = state
        .api
        .events(&id, q.after.unwrap_or(0), q.limit.unwrap_or(1000))
        .await?;
    ok(StatusCode::OK, json!({ "events": events }))
}

/// An agent type as `/v1/templates` shows it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Template<'a> {
    #[serde(flatten)]
    spec: &'a AgentSpec,
    sandbox: &'static str,
    digest: Option<&'a str>,
    imports: Option<&'a [String]>,
}

async fn templates(State(state): State<HttpState>) -> HttpResult {
    let specs = state.api.registry().list();
    let templates: Vec<Template<'_>> = specs
        .iter()
        .map(|spec| Template {
            spec,
            sandbox: if spec.is_wasm() { "wasm" } else { "none" },
            digest: match &spec.code {
                crate::registry::AgentCode::Wasm(agent) => Some(agent.digest()),
                crate::registry::AgentCode::Native(_) => None,
            },
            imports: match &spec.code {
                crate::registry::AgentCode::Wasm(agent) => Some(&agent.description().imports),
                crate::registry::AgentCode::Native(_) => None,
            },
        })
        .collect();
    ok(
        StatusCode::OK,
        json!({ "templates": templates, "problems": (state.problems)() }),
    )
}

/// Body of `POST /spawn`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SpawnRequest {
    agent_type: String,
    tenant_id: Option<String>,
    user_id: Option<String>,
    input: Option<serde_json::Value>,
}

async fn spawn(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Body(bytes): Body,
) -> HttpResult {
    let request: SpawnRequest = body(&headers, &bytes)?;
    let spec = state.api.agent(&request.agent_type)?;
    let id = format!(
        "{}-{}",
        spec.id,
        &uuid::Uuid::now_v7().simple().to_string()[20..]
    );
    let job = NewJob::new(&spec.id, &request.input.unwrap_or(serde_json::Value::Null))
        .id(&id)
        .meta(&json!({ "tenantId": request.tenant_id, "userId": request.user_id }));
    let enqueued = state.api.enqueue(job).await?;
    ok(
        StatusCode::ACCEPTED,
        json!({ "workloadName": enqueued.job.id, "job": enqueued.job }),
    )
}

/// A long-lived agent instance (one job of a long-lived agent), in the vocabulary of the
/// long-lived walkthrough.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AgentInstance {
    /// The workload name (the job id).
    id: String,
    agent_type: String,
    /// `Pending`, `Running`, `Stopping`, `Completed`, `Failed` or `Cancelled`.
    phase: &'static str,
    last_heartbeat_at: Option<i64>,
    /// Running, but silent for longer than the host's stale threshold.
    stale: bool,
    job: Job,
    run: Option<Run>,
}

fn instance(view: JobView, stale_after: Duration) -> AgentInstance {
    let JobView { job, run } = view;
    let phase = match job.status {
        JobStatus::Scheduled | JobStatus::Queued => "Pending",
        JobStatus::Leased if job.stop_requested => "Stopping",
        JobStatus::Leased => "Running",
        JobStatus::Done => "Completed",
        JobStatus::Failed => "Failed",
        JobStatus::Cancelled => "Cancelled",
    };
    let running = run.as_ref().filter(|r| r.status == RunStatus::Running);
    let last = running.map(|r| r.heartbeat_at.unwrap_or(r.started_at));
    let stale_ms = i64::try_from(stale_after.as_millis()).unwrap_or(i64::MAX);
    AgentInstance {
        id: job.id.clone(),
        agent_type: job.agent_id.clone(),
        phase,
        last_heartbeat_at: run.as_ref().and_then(|r| r.heartbeat_at),
        stale: last.is_some_and(|t| now_ms() - t > stale_ms),
        job,
        run,
    }
}

/// Query of `GET /v1/agents`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AgentQuery {
    status: Option<String>,
    limit: Option<u32>,
}

async fn list_agents(State(state): State<HttpState>, Query(q): Query<AgentQuery>) -> HttpResult {
    let long_lived: Vec<String> = state
        .api
        .registry()
        .list()
        .iter()
        .filter(|s| s.lifecycle == Lifecycle::LongLived)
        .map(|s| s.id.clone())
        .collect();
    let statuses = parse_list(q.status.as_deref())?;
    let mut instances = Vec::new();
    for agent in long_lived {
        let jobs = state
            .api
            .list(&JobFilter {
                status: statuses.clone(),
                agent_id: Some(agent),
                limit: q.limit.or(Some(200)),
                offset: None,
            })
            .await?;
        for view in state.api.views(jobs).await? {
            instances.push(instance(view, state.stale_after));
        }
    }
    instances.sort_by_key(|i| std::cmp::Reverse(i.job.created_at));
    ok(StatusCode::OK, json!({ "agents": instances }))
}

async fn get_agent(State(state): State<HttpState>, Path(id): Path<String>) -> HttpResult {
    let view = state.api.get(&id).await?;
    ok(
        StatusCode::OK,
        json!({ "agent": instance(view, state.stale_after) }),
    )
}

async fn agent_events(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    Query(q): Query<EventQuery>,
) -> HttpResult {
    let view = state.api.get(&id).await?;
    let events = match &view.run {
        Some(run) => {
            state
                .api
                .events(&run.id, q.after.unwrap_or(0), q.limit.unwrap_or(1000))
                .await?
        }
        None => Vec::new(),
    };
    ok(
        StatusCode::OK,
        json!({ "runId": view.run.map(|r| r.id), "events": events }),
    )
}

async fn delete_agent(State(state): State<HttpState>, Path(id): Path<String>) -> HttpResult {
    ok(
        StatusCode::ACCEPTED,
        json!({ "job": state.api.stop(&id).await? }),
    )
}

async fn stats(State(state): State<HttpState>) -> HttpResult {
    let jobs = state.api.queue().counts().await.map_err(ApiError::from)?;
    let runs = state.api.store().counts().await.map_err(ApiError::from)?;
    let jobs: serde_json::Map<String, Value> = JobStatus::ALL
        .iter()
        .map(|s| {
            (
                s.as_str().to_string(),
                json!(jobs.get(s).copied().unwrap_or(0)),
            )
        })
        .collect();
    let runs: serde_json::Map<String, Value> = RunStatus::ALL
        .iter()
        .map(|s| {
            (
                s.as_str().to_string(),
                json!(runs.get(s).copied().unwrap_or(0)),
            )
        })
        .collect();
    ok(StatusCode::OK, json!({ "jobs": jobs, "runs": runs }))
}

async fn healthz() -> HttpResult {
    ok(StatusCode::OK, json!({ "status": "ok" }))
}

/// Ready only if both databases take a write now (each writer alive, its lock available, its
/// disk not full), within a couple of seconds.
async fn readyz(State(state): State<HttpState>) -> HttpResult {
    const PROBE: Duration = Duration::from_secs(2);
    let probe = |db: crate::db::Db, what: &'static str| async move {
        match tokio::time::timeout(PROBE, db.probe_write()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "readiness: the {what} does not take writes");
                Err(format!("the {what} does not take writes"))
            }
            Err(_) => Err(format!("the {what} did not take a write within {PROBE:?}")),
        }
    };
    let (queue, store) = tokio::join!(
        probe(state.api.queue().db().clone(), "queue database"),
        probe(state.api.store().db().clone(), "run store")
    );
    match queue.and(store) {
        Ok(()) => ok(StatusCode::OK, json!({ "status": "ready" })),
        Err(problem) => Err(HttpError::unavailable(problem)),
    }
}

async fn metrics(State(state): State<HttpState>) -> HttpResult {
    let text = state
        .metrics
        .render(&state.api)
        .await
        .map_err(HttpError::from)?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}
