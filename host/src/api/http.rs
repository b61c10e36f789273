//! The HTTP API: JSON (camelCase) over the same operations as [`RunApi`], plus the routes of
//! the long-lived agent walkthrough (`POST /spawn`, `/v1/agents`), health and metrics.
//!
//! | route | does |
//! |---|---|
//! | `POST /v1/jobs` | enqueue (`201`; `200` with the existing job for a known id with the same agent and input, `409` with another) |
//! | `POST /v1/jobs/batch` | enqueue `{"jobs": [...]}`, 1 to 1000 jobs, in one statement (`200` with each job and whether it was created; `400` if any is invalid, and then none is enqueued) |
//! | `GET /v1/jobs` | list summaries (`status`, `agentId`, `tenantId`, `rootJobId`, `limit`, `offset`) |
//! | `GET /v1/jobs/{id}/children` | summaries of the jobs the job's runs spawned, oldest first |
//! | `GET /v1/jobs/{id}` | the job and its run, in full |
//! | `GET /v1/jobs/{id}/wait?timeoutMs=` | the job once finished (`408` with its state on timeout) |
//! | `POST /v1/jobs/{id}/cancel` | cancel (`202`; `409` if it has already finished) |
//! | `POST /v1/jobs/{id}/stop` | graceful stop (`202`; `409` if it has already finished) |
//! | `GET /v1/runs` | list summaries (`agentId`, `status`, `jobId`, `lifecycle`, `tenantId`, `limit`, `offset`) |
//! | `GET /v1/runs/{id}` | one run, in full (with its `usage`: turns, tokens, cost, tool calls) |
//! | `GET /v1/runs/{id}/events?after=` | its events |
//! | `GET /v1/types` | the loaded agent types (and files that failed to load); `GET /v1/templates` is the same under the walkthrough's name |
//! | `POST /spawn` | start a long-lived agent of a long-lived type: `{"agentType", "input"?, "tenantId"?, "userId"?}` (`202 {workloadName, job}`; `400 NotLongLived` for a run-to-completion type) |
//! | `GET /v1/agents`, `GET /v1/agents/{id}` | long-lived agent instances (`status`, `tenantId`, `limit`) |
//! | `GET /v1/agents/{id}/events` | the instance's events (paged like a run's) |
//! | `DELETE /v1/agents/{id}` | graceful stop (or cancel if it never started) |
//! | `POST /v1/agents/{id}/messages?waitMs=` | post `{"message": <json>}` to a long-lived agent's inbox (`202 {messageId}`; with `waitMs`, `200 {messageId, reply}` once it replies) |
//! | `GET /v1/agents/{id}/messages?limit=` | its latest messages, oldest first, with their replies |
//! | `GET /v1/stats` | jobs and runs counted by status (admin) |
//! | `POST /v1/tokens/{name}/revoke` | revoke a configured API token on every host (admin) |
//! | `GET /healthz`, `GET /metrics` | liveness, Prometheus metrics |
//!
//! Errors are `{"error": {"tag", "message"}}` with a 4xx/5xx status. With a token configured
//! (see [`super::auth`]), every route here but `/healthz` requires `Authorization: Bearer
//! <token>` (`401`) whose verbs cover it (`403`), and a tenant's token sees only its tenant.
//!
//! Every request is checked before it reaches a route (see [`HttpConfig`]): its `Host` must be
//! the host's own (`403`), an `Origin` or `Sec-Fetch-Site` header must not name another site
//! (`403`), and every `POST` must say `Content-Type: application/json` (`415`), even one
//! without a body. A web page can therefore not send it a request without the browser asking
//! first, and the host never says yes to that question. Requests at once, `wait` requests at
//! once and each request's time are capped too, and [`ConnectionLimit`] caps connections.
//!
//! Lists hold summaries: documents (inputs, outputs, metadata) appear as a short preview
//! (`{text, bytes, truncated}`), and a page stops growing at [`MAX_PAGE_BYTES`]; such a page
//! says `"truncated": true` and where to go on (`nextOffset`, or `nextAfter` for events).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::Listener;
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::auth::{Auth, Principal, Refusal, Verb};
use super::metrics::Metrics;
use super::{ApiError, JobView, RunApi};
use crate::inbox::{InboxError, Message};
use crate::queue::{ErrorInfo, Job, JobFilter, JobStatus, Lifecycle, NewJob};
use crate::registry::dir::LoadProblem;
use crate::registry::{AgentCode, ChildrenPolicy, DeclarativeAgent, Limits, Quota, Schema};
use crate::store::{Event, Run, RunFilter, RunStatus, Usage};
use crate::time::now_ms;

/// Longest wait a client may ask for.
const MAX_WAIT: Duration = Duration::from_secs(300);
/// Default wait when the client does not say.
const DEFAULT_WAIT: Duration = Duration::from_secs(30);
/// A list response stops taking items once it is this large (it always holds at least one).
pub const MAX_PAGE_BYTES: usize = 1 << 20;
/// How much of a document a list shows.
pub const PREVIEW_BYTES: usize = 256;
/// What a `503` asks the client to wait before trying again, in seconds.
const RETRY_AFTER_SECS: &str = "1";

/// What the HTTP handlers share.
#[derive(Clone)]
pub struct HttpState {
    /// The producer API.
    pub api: RunApi,
    /// Files in the agent directory that failed to load (for `/v1/templates`).
    pub problems: Arc<dyn Fn() -> Vec<LoadProblem> + Send + Sync>,
    /// Metrics exported at `/metrics`.
    pub metrics: Arc<Metrics>,
    /// The API tokens the host accepts (see [`super::auth`]).
    pub auth: Auth,
    /// A running long-lived agent without a heartbeat for this long is flagged stale.
    pub stale_after: Duration,
}

/// Who may talk to the host, and how much at once. Only `Host` values that are IP addresses,
/// `localhost`, or in `allowed_hosts` are answered.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// The address the host listens on. `Host` must be `localhost` or an IP address (never a
    /// name a DNS-rebinding page could use), with this port. `None`: with any port.
    pub listen: Option<SocketAddr>,
    /// More `Host` values to accept (`name` for any port, or `name:port`), for a host reached
    /// by another name or through a proxy.
    pub allowed_hosts: Vec<String>,
    /// Requests handled at once; more get `503` with `Retry-After`.
    pub max_in_flight: usize,
    /// `wait` requests open at once; more get `503` with `Retry-After`.
    pub max_waiters: usize,
    /// How long a request (other than `wait`, which has its own bound) may take before it is
    /// answered with `503`.
    pub request_timeout: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: None,
            allowed_hosts: Vec::new(),
            max_in_flight: 512,
            max_waiters: 64,
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// The API's routes (the viewer adds its own), with the default [`HttpConfig`].
pub fn router(state: HttpState) -> Router {
    router_with(state, &HttpConfig::default())
}

/// The API's routes (the viewer adds its own), checked and limited as `config` says.
pub fn router_with(state: HttpState, config: &HttpConfig) -> Router {
    let timed = Router::new()
        .route("/v1/jobs", post(enqueue).get(list_jobs))
        .route("/v1/jobs/batch", post(enqueue_batch))
        .route("/v1/jobs/{id}", get(get_job))
        .route("/v1/jobs/{id}/children", get(job_children))
        .route("/v1/jobs/{id}/cancel", post(cancel_job))
        .route("/v1/jobs/{id}/stop", post(stop_job))
        .route("/v1/runs", get(list_runs))
        .route("/v1/runs/{id}", get(get_run))
        .route("/v1/runs/{id}/events", get(run_events))
        .route("/v1/types", get(types))
        .route("/v1/templates", get(templates))
        .route("/spawn", post(spawn))
        .route("/v1/agents", get(list_agents))
        .route("/v1/agents/{id}", get(get_agent).delete(delete_agent))
        .route("/v1/agents/{id}/events", get(agent_events))
        .route("/v1/stats", get(stats))
        .route("/v1/tokens/{name}/revoke", post(revoke_token))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(
            config.request_timeout,
            time_limit,
        ));
    let waits = Router::new()
        .route("/v1/jobs/{id}/wait", get(wait_job))
        .route(
            "/v1/agents/{id}/messages",
            post(post_message).get(list_messages),
        )
        .route_layer(middleware::from_fn_with_state(
            Cap::new(config.max_waiters, "wait requests"),
            shed,
        ));
    let api = timed
        .merge(waits)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .layer(middleware::from_fn_with_state(
            Cap::new(config.max_in_flight, "requests"),
            shed,
        ))
        .with_state(state);
    protect(api, config)
}

/// Adds the checks of `Host`, `Origin`, `Sec-Fetch-Site` and `Content-Type` to other routes
/// served next to the API (the viewer's).
pub fn protect(router: Router, config: &HttpConfig) -> Router {
    router.layer(middleware::from_fn_with_state(
        Arc::new(Guard::new(config)),
        guard,
    ))
}

/// The names a request may give for this host.
#[derive(Debug)]
struct Guard {
    listen: Option<SocketAddr>,
    allowed: Vec<String>,
}

impl Guard {
    fn new(config: &HttpConfig) -> Self {
        Self {
            listen: config.listen,
            allowed: config
                .allowed_hosts
                .iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect(),
        }
    }

    /// Whether `host` is in the allow-list (as `name` or `name:port`).
    fn allowed_name(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        let (name, _) = split_port(&host);
        self.allowed.iter().any(|a| *a == host || *a == name)
    }

    /// Whether `host` (a `Host` value) names this host.
    fn allows(&self, host: &str) -> bool {
        if self.allowed_name(host) {
            return true;
        }
        let host = host.to_ascii_lowercase();
        let (name, port) = split_port(&host);
        // An address, not a name: no DNS rebinding page can make a browser send one of these
        // (its Host would be the page's own name), so any address the host is reached at will do.
        let address = name.parse::<std::net::Ipv4Addr>().is_ok()
            || name
                .strip_prefix('[')
                .and_then(|n| n.strip_suffix(']'))
                .is_some_and(|n| n.parse::<std::net::Ipv6Addr>().is_ok());
        let Some(listen) = self.listen else {
            return address || name == "localhost";
        };
        port.unwrap_or(80) == listen.port() && (address || name == "localhost")
    }
}

/// `name:port` → (`name`, port); a bracketed IPv6 address keeps its brackets.
fn split_port(host: &str) -> (&str, Option<u16>) {
    let split = if host.starts_with('[') {
        host.find("]:").map(|i| (&host[..=i], &host[i + 2..]))
    } else {
        host.rsplit_once(':')
    };
    match split {
        Some((name, port)) => match port.parse() {
            Ok(port) => (name, Some(port)),
            Err(_) => (host, None),
        },
        None => (host, None),
    }
}

async fn guard(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let text = |name: header::HeaderName| headers.get(name).map(|v| v.to_str().unwrap_or(""));
    let host = text(header::HOST).or_else(|| request.uri().authority().map(|a| a.as_str()));
    if !host.is_some_and(|h| guard.allows(h)) {
        return HttpError::new(
            StatusCode::FORBIDDEN,
            "ForbiddenHost",
            format!(
                "this host does not answer to the name {:?}; add it to DROVER_ALLOWED_HOSTS to allow it",
                host.unwrap_or("")
            ),
        )
        .into_response();
    }
    // A page's own requests carry its origin, which names the host just as `Host` does (a
    // proxy may change `Host`: names in the allow-list are accepted in either).
    if let Some(origin) = text(header::ORIGIN) {
        let own = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .is_some_and(|rest| {
                !rest.contains('/')
                    && (host.is_some_and(|h| h.eq_ignore_ascii_case(rest))
                        || guard.allowed_name(rest))
            });
        if !own {
            return HttpError::new(
                StatusCode::FORBIDDEN,
                "ForbiddenOrigin",
                format!("requests from the origin {origin:?} are not accepted"),
            )
            .into_response();
        }
    }
    if let Some(site) = text(header::HeaderName::from_static("sec-fetch-site"))
        && !matches!(site, "same-origin" | "none")
    {
        return HttpError::new(
            StatusCode::FORBIDDEN,
            "ForbiddenOrigin",
            format!("requests from other sites are not accepted (Sec-Fetch-Site: {site})"),
        )
        .into_response();
    }
    if matches!(
        *request.method(),
        Method::POST | Method::PUT | Method::PATCH
    ) {
        let content_type = text(header::CONTENT_TYPE);
        let json = content_type.is_some_and(|ct| {
            ct.split(';')
                .next()
                .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
        });
        if !json {
            return HttpError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                format!(
                    "{} requests need Content-Type: application/json (even without a body), got {}",
                    request.method(),
                    content_type.map_or_else(|| "none".to_string(), |ct| format!("{ct:?}"))
                ),
            )
            .into_response();
        }
    }
    next.run(request).await
}

/// A listener that holds at most `max` connections open at once: past that it accepts no more
/// until one closes (they wait in the kernel's backlog), so that clients cannot use up the
/// host's file descriptors, which its databases need too.
pub struct ConnectionLimit<L> {
    inner: L,
    permits: Arc<Semaphore>,
}

impl<L> ConnectionLimit<L> {
    /// Wraps `inner`, with at most `max` connections open at once.
    pub fn new(inner: L, max: usize) -> Self {
        Self {
            inner,
            permits: Arc::new(Semaphore::new(max)),
        }
    }
}

impl<L: Listener> Listener for ConnectionLimit<L> {
    type Io = Counted<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let permit = loop {
            // The semaphore is never closed; the loop only satisfies the type.
            if let Ok(permit) = Arc::clone(&self.permits).acquire_owned().await {
                break permit;
            }
        };
        let (io, addr) = self.inner.accept().await;
        (
            Counted {
                io,
                _permit: permit,
            },
            addr,
        )
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection that gives its place back to its [`ConnectionLimit`] when it closes.
pub struct Counted<Io> {
    io: Io,
    _permit: OwnedSemaphorePermit,
}

impl<Io: AsyncRead + Unpin> AsyncRead for Counted<Io> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for Counted<Io> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// A cap on requests of one kind handled at once.
#[derive(Clone)]
struct Cap {
    permits: Arc<Semaphore>,
    what: &'static str,
}

impl Cap {
    fn new(permits: usize, what: &'static str) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(permits)),
            what,
        }
    }
}

/// Answers `503` with `Retry-After` when the cap is reached.
async fn shed(State(cap): State<Cap>, request: Request, next: Next) -> Response {
    let Ok(_permit) = cap.permits.try_acquire_owned() else {
        return busy(format!("too many {} at once; try again shortly", cap.what));
    };
    next.run(request).await
}

/// Answers `503` if the request takes longer than `limit`.
async fn time_limit(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => busy(format!(
            "the request took longer than {} ms; try again shortly",
            limit.as_millis()
        )),
    }
}

fn busy(message: String) -> Response {
    let mut response =
        HttpError::new(StatusCode::SERVICE_UNAVAILABLE, "Overloaded", message).into_response();
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from_static(RETRY_AFTER_SECS),
    );
    response
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
        let mut response = (self.status, Json(One("error", &self.error))).into_response();
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
        | ApiError::Store(crate::store::StoreError::Db(e))
        | ApiError::Inbox(InboxError::Db(e)) => Some(e),
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
            ApiError::Conflict(error) => HttpError {
                status: StatusCode::CONFLICT,
                error,
                retry_after: None,
            },
            ApiError::Forbidden(error) => HttpError {
                status: StatusCode::FORBIDDEN,
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
            ApiError::Inbox(InboxError::TooLarge { .. }) => HttpError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "MessageTooLarge",
                e.to_string(),
            ),
            ApiError::Inbox(InboxError::Full { .. }) => HttpError {
                retry_after: Some(1),
                ..HttpError::new(StatusCode::TOO_MANY_REQUESTS, "InboxFull", e.to_string())
            },
            ApiError::WaitTimeout(view) => HttpError::new(
                StatusCode::REQUEST_TIMEOUT,
                "Timeout",
                format!("job {} did not finish in time", view.job.id),
            ),
            other => internal(&other),
        }
    }
}

/// A `500` that says nothing about the host's insides (database paths and URLs, say): the
/// detail goes to the log under a reference the answer carries.
fn internal(error: &dyn std::fmt::Display) -> HttpError {
    let reference = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    tracing::error!(error = %error, reference = %reference, "request failed");
    HttpError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Internal",
        format!("the host failed to answer; its log has the details under reference {reference}"),
    )
}

type HttpResult = Result<Response, HttpError>;

/// The verb a request needs: `admin` for the host-wide routes, `read` for the other `GET`s,
/// `enqueue`, `cancel` for what they name; any other request `admin`.
fn verb_for(method: &Method, path: &str) -> Verb {
    let path = path.trim_end_matches('/');
    if path == "/metrics" || path == "/v1/stats" || path.starts_with("/v1/tokens/") {
        return Verb::Admin;
    }
    match *method {
        Method::GET | Method::HEAD => Verb::Read,
        Method::POST if path == "/v1/jobs" || path == "/v1/jobs/batch" || path == "/spawn" => {
            Verb::Enqueue
        }
        Method::POST if path.starts_with("/v1/agents/") && path.ends_with("/messages") => {
            Verb::Enqueue
        }
        Method::POST if path.ends_with("/cancel") || path.ends_with("/stop") => Verb::Cancel,
        Method::DELETE => Verb::Cancel,
        _ => Verb::Admin,
    }
}

/// Checks the request's bearer token and the verb its route needs, and hands the caller
/// ([`Principal`]) to the route. `/healthz` needs no token.
async fn authorize(State(state): State<HttpState>, mut request: Request, next: Next) -> Response {
    if request.uri().path() == "/healthz" {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let principal = match state.auth.authenticate(presented).await {
        Ok(principal) => principal,
        Err(refusal) => {
            let message = match refusal {
                Refusal::Unknown => "this host requires Authorization: Bearer <token>".to_string(),
                Refusal::Revoked(name) => format!("the token {name:?} has been revoked"),
            };
            return HttpError::new(StatusCode::UNAUTHORIZED, "Unauthorized", message)
                .into_response();
        }
    };
    let verb = verb_for(request.method(), request.uri().path());
    if !principal.may(verb) {
        return HttpError::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!(
                "the token {:?} may not do this: {} {} needs the {:?} verb",
                principal.name,
                request.method(),
                request.uri().path(),
                verb.as_str()
            ),
        )
        .into_response();
    }
    request.extensions_mut().insert(principal);
    next.run(request).await
}

/// The producer API as the request's caller may use it: scoped to its token's tenant.
struct Scoped(RunApi);

impl FromRequestParts<HttpState> for Scoped {
    type Rejection = HttpError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &HttpState,
    ) -> Result<Self, Self::Rejection> {
        // `authorize` runs before every route that takes this; without it, nothing is shown.
        let principal = parts
            .extensions
            .get::<Principal>()
            .ok_or_else(|| internal(&"a route ran without its caller checked"))?;
        Ok(Scoped(state.api.for_tenant(principal.tenant.clone())))
    }
}

/// Parses a JSON body (its content type was checked on the way in), turning every problem
/// into a `400` that says what is wrong.
fn body<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, HttpError> {
    serde_json::from_slice(bytes).map_err(|e| {
        let tag = if e.is_data() {
            "InvalidRequest"
        } else {
            "InvalidJson"
        };
        HttpError::new(StatusCode::BAD_REQUEST, tag, e.to_string())
    })
}

/// A JSON object of one member, serialized straight to text: stored documents inside are
/// copied as they are, never parsed again (however deeply they nest).
struct One<'a, T: ?Sized>(&'static str, &'a T);

impl<T: Serialize + ?Sized> Serialize for One<'_, T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry(self.0, self.1)?;
        map.end()
    }
}

fn ok<T: Serialize>(status: StatusCode, value: T) -> HttpResult {
    let bytes = serde_json::to_vec(&value).map_err(|e| internal(&e))?;
    Ok(json_response(status, bytes))
}

fn json_response(status: StatusCode, bytes: Vec<u8>) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response()
}

/// The first [`PREVIEW_BYTES`] of a stored document's JSON text, for lists.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Preview<'a> {
    /// The start of the text (cut at a character boundary).
    text: &'a str,
    /// The whole text's length in bytes.
    bytes: usize,
    /// Whether `text` is only the start.
    truncated: bool,
}

fn preview(raw: &RawValue) -> Preview<'_> {
    let all = raw.get();
    let mut end = all.len().min(PREVIEW_BYTES);
    while !all.is_char_boundary(end) {
        end -= 1;
    }
    Preview {
        text: &all[..end],
        bytes: all.len(),
        truncated: end < all.len(),
    }
}

/// A job as lists show it: everything but its documents, which are previews.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JobSummary<'a> {
    id: &'a str,
    agent_id: &'a str,
    input_preview: Preview<'a>,
    meta_preview: Option<Preview<'a>>,
    priority: i64,
    status: JobStatus,
    scheduled_for: i64,
    created_at: i64,
    updated_at: i64,
    attempts: i64,
    max_attempts: i64,
    lease_epoch: i64,
    lease_owner: Option<&'a str>,
    lease_expires_at: Option<i64>,
    cancel_requested: bool,
    stop_requested: bool,
    lifecycle: Lifecycle,
    restarts: i64,
    max_restarts: Option<i64>,
    run_id: Option<&'a str>,
    result_status: Option<&'a str>,
    result_error: Option<&'a ErrorInfo>,
    finished_at: Option<i64>,
    tenant_id: Option<&'a str>,
    user_id: Option<&'a str>,
    parent_job_id: Option<&'a str>,
    parent_run_id: Option<&'a str>,
    root_job_id: &'a str,
    depth: i64,
}

impl<'a> From<&'a Job> for JobSummary<'a> {
    fn from(job: &'a Job) -> Self {
        Self {
            id: &job.id,
            agent_id: &job.agent_id,
            input_preview: preview(&job.input),
            meta_preview: job.meta.as_deref().map(preview),
            priority: job.priority,
            status: job.status,
            scheduled_for: job.scheduled_for,
            created_at: job.created_at,
            updated_at: job.updated_at,
            attempts: job.attempts,
            max_attempts: job.max_attempts,
            lease_epoch: job.lease_epoch,
            lease_owner: job.lease_owner.as_deref(),
            lease_expires_at: job.lease_expires_at,
            cancel_requested: job.cancel_requested,
            stop_requested: job.stop_requested,
            lifecycle: job.lifecycle,
            restarts: job.restarts,
            max_restarts: job.max_restarts,
            run_id: job.run_id.as_deref(),
            result_status: job.result_status.as_deref(),
            result_error: job.result_error.as_ref(),
            finished_at: job.finished_at,
            tenant_id: job.tenant_id.as_deref(),
            user_id: job.user_id.as_deref(),
            parent_job_id: job.parent_job_id.as_deref(),
            parent_run_id: job.parent_run_id.as_deref(),
            root_job_id: &job.root_job_id,
            depth: job.depth,
        }
    }
}

/// A run as lists show it: everything but its documents, which are previews.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RunSummary<'a> {
    id: &'a str,
    job_id: Option<&'a str>,
    agent_id: &'a str,
    attempt: i64,
    parent_run_id: Option<&'a str>,
    status: RunStatus,
    sandbox: Option<&'a str>,
    lifecycle: Lifecycle,
    input_preview: Option<Preview<'a>>,
    output_preview: Option<Preview<'a>>,
    error: Option<&'a ErrorInfo>,
    started_at: i64,
    ended_at: Option<i64>,
    heartbeat_at: Option<i64>,
    fuel_used: Option<i64>,
    peak_memory: Option<i64>,
    worker_id: Option<&'a str>,
    usage: Option<Usage>,
    tenant_id: Option<&'a str>,
    user_id: Option<&'a str>,
}

impl<'a> From<&'a Run> for RunSummary<'a> {
    fn from(run: &'a Run) -> Self {
        Self {
            id: &run.id,
            job_id: run.job_id.as_deref(),
            agent_id: &run.agent_id,
            attempt: run.attempt,
            parent_run_id: run.parent_run_id.as_deref(),
            status: run.status,
            sandbox: run.sandbox.as_deref(),
            lifecycle: run.lifecycle,
            input_preview: run.input.as_deref().map(preview),
            output_preview: run.output.as_deref().map(preview),
            error: run.error.as_ref(),
            started_at: run.started_at,
            ended_at: run.ended_at,
            heartbeat_at: run.heartbeat_at,
            fuel_used: run.fuel_used,
            peak_memory: run.peak_memory,
            worker_id: run.worker_id.as_deref(),
            usage: run.usage,
            tenant_id: run.tenant_id.as_deref(),
            user_id: run.user_id.as_deref(),
        }
    }
}

/// Where a page cut short by [`MAX_PAGE_BYTES`] goes on.
enum Cursor {
    /// `nextOffset`: the offset of the first item left out.
    Offset(u32),
    /// `nextAfter`: the sequence number of the last event included.
    After,
    /// Nothing to go on with (a list without paging).
    None,
}

/// `{"<key>": [items…], "truncated": …}`: items are added while the page is under
/// [`MAX_PAGE_BYTES`] (the first always is); a page cut short says `"truncated": true` and,
/// as `cursor` says, where the rest begins.
fn page<T: Serialize>(
    key: &'static str,
    items: impl IntoIterator<Item = T>,
    cursor: Cursor,
    seq_of: impl Fn(&T) -> i64,
) -> HttpResult {
    page_after(None, key, items, cursor, seq_of)
}

/// [`page`], with one more member (`name`, value) first.
fn page_after<T: Serialize>(
    first: Option<(&'static str, serde_json::Value)>,
    key: &'static str,
    items: impl IntoIterator<Item = T>,
    cursor: Cursor,
    seq_of: impl Fn(&T) -> i64,
) -> HttpResult {
    let mut out = Vec::with_capacity(4096);
    out.extend_from_slice(b"{");
    if let Some((name, value)) = first {
        serde_json::to_writer(&mut out, name).map_err(|e| internal(&e))?;
        out.push(b':');
        serde_json::to_writer(&mut out, &value).map_err(|e| internal(&e))?;
        out.push(b',');
    }
    serde_json::to_writer(&mut out, key).map_err(|e| internal(&e))?;
    out.extend_from_slice(b":[");
    let mut count: u32 = 0;
    let mut last_seq = None;
    let mut truncated = false;
    for item in items {
        let bytes = serde_json::to_vec(&item).map_err(|e| internal(&e))?;
        if count > 0 && out.len() + bytes.len() + 1 > MAX_PAGE_BYTES {
            truncated = true;
            break;
        }
        if count > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&bytes);
        count += 1;
        last_seq = Some(seq_of(&item));
    }
    out.extend_from_slice(if truncated {
        b"],\"truncated\":true"
    } else {
        b"],\"truncated\":false"
    });
    if truncated {
        match cursor {
            Cursor::Offset(offset) => {
                out.extend_from_slice(format!(",\"nextOffset\":{}", offset + count).as_bytes());
            }
            Cursor::After => {
                if let Some(seq) = last_seq {
                    out.extend_from_slice(format!(",\"nextAfter\":{seq}").as_bytes());
                }
            }
            Cursor::None => {}
        }
    }
    out.push(b'}');
    Ok(json_response(StatusCode::OK, out))
}

async fn enqueue(Scoped(api): Scoped, Body(bytes): Body) -> HttpResult {
    let job: NewJob = body(&bytes)?;
    let enqueued = api.enqueue(job).await?;
    let status = if enqueued.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    ok(status, One("job", &enqueued.job))
}

/// Most jobs one `POST /v1/jobs/batch` may carry.
pub const MAX_BATCH_JOBS: usize = 1000;

/// Body of `POST /v1/jobs/batch`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    jobs: Vec<NewJob>,
}

/// One job of a batch's answer.
#[derive(Serialize)]
struct BatchItem<'a> {
    job: JobSummary<'a>,
    created: bool,
}

async fn enqueue_batch(Scoped(api): Scoped, Body(bytes): Body) -> HttpResult {
    let batch: BatchBody = body(&bytes)?;
    if batch.jobs.is_empty() || batch.jobs.len() > MAX_BATCH_JOBS {
        return Err(HttpError::new(
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            format!(
                "a batch holds 1 to {MAX_BATCH_JOBS} jobs, not {}",
                batch.jobs.len()
            ),
        ));
    }
    let enqueued = api.enqueue_batch(batch.jobs).await?;
    let items: Vec<BatchItem<'_>> = enqueued
        .iter()
        .map(|e| BatchItem {
            job: JobSummary::from(&e.job),
            created: e.created,
        })
        .collect();
    ok(StatusCode::OK, One("jobs", &items))
}

/// Query of `GET /v1/jobs`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct JobQuery {
    status: Option<String>,
    agent_id: Option<String>,
    tenant_id: Option<String>,
    root_job_id: Option<String>,
    limit: Option<u32>,
    offset: Option<u32>,
}

async fn list_jobs(Scoped(api): Scoped, Query(q): Query<JobQuery>) -> HttpResult {
    let filter = JobFilter {
        status: parse_list(q.status.as_deref())?,
        agent_id: q.agent_id,
        tenant_id: tenant_query(q.tenant_id)?,
        root_job_id: q.root_job_id,
        parent_job_id: None,
        limit: q.limit,
        offset: q.offset,
    };
    let jobs = api.list(&filter).await?;
    page(
        "jobs",
        jobs.iter().map(JobSummary::from),
        Cursor::Offset(q.offset.unwrap_or(0)),
        |_| 0,
    )
}

/// A `tenantId` query parameter, checked like a job's (`400` if it is not a tenant id).
fn tenant_query(tenant: Option<String>) -> Result<Option<String>, HttpError> {
    if let Some(tenant) = &tenant {
        crate::queue::validate_tenant_id(tenant)
            .map_err(|e| HttpError::new(StatusCode::BAD_REQUEST, "InvalidRequest", e))?;
    }
    Ok(tenant)
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

async fn get_job(Scoped(api): Scoped, Path(id): Path<String>) -> HttpResult {
    ok(StatusCode::OK, api.get(&id).await?)
}

async fn job_children(Scoped(api): Scoped, Path(id): Path<String>) -> HttpResult {
    let children = api.children(&id).await?;
    page(
        "jobs",
        children.iter().map(JobSummary::from),
        Cursor::None,
        |_| 0,
    )
}

/// Query of `GET /v1/jobs/{id}/wait`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WaitQuery {
    timeout_ms: Option<u64>,
}

async fn wait_job(
    Scoped(api): Scoped,
    Path(id): Path<String>,
    Query(q): Query<WaitQuery>,
) -> HttpResult {
    let timeout = q
        .timeout_ms
        .map_or(DEFAULT_WAIT, Duration::from_millis)
        .min(MAX_WAIT);
    match api.wait_for(&id, timeout).await {
        Ok(view) => ok(StatusCode::OK, view),
        Err(ApiError::WaitTimeout(view)) => ok(StatusCode::REQUEST_TIMEOUT, *view),
        Err(e) => Err(e.into()),
    }
}

async fn cancel_job(Scoped(api): Scoped, Path(id): Path<String>) -> HttpResult {
    ok(StatusCode::ACCEPTED, One("job", &api.cancel(&id).await?))
}

async fn stop_job(Scoped(api): Scoped, Path(id): Path<String>) -> HttpResult {
    ok(StatusCode::ACCEPTED, One("job", &api.stop(&id).await?))
}

/// Query of `GET /v1/runs`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RunQuery {
    status: Option<String>,
    agent_id: Option<String>,
    job_id: Option<String>,
    lifecycle: Option<Lifecycle>,
    tenant_id: Option<String>,
    limit: Option<u32>,
    offset: Option<u32>,
}

async fn list_runs(Scoped(api): Scoped, Query(q): Query<RunQuery>) -> HttpResult {
    let filter = RunFilter {
        status: parse_list(q.status.as_deref())?,
        agent_id: q.agent_id,
        job_id: q.job_id,
        lifecycle: q.lifecycle,
        tenant_id: tenant_query(q.tenant_id)?,
        limit: q.limit,
        offset: q.offset,
    };
    let runs = api.runs(&filter).await?;
    page(
        "runs",
        runs.iter().map(RunSummary::from),
        Cursor::Offset(q.offset.unwrap_or(0)),
        |_| 0,
    )
}

async fn get_run(Scoped(api): Scoped, Path(id): Path<String>) -> HttpResult {
    ok(StatusCode::OK, One("run", &api.run(&id).await?))
}

/// Query of the event routes.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EventQuery {
    after: Option<i64>,
    limit: Option<u32>,
}

async fn run_events(
    Scoped(api): Scoped,
    Path(id): Path<String>,
    Query(q): Query<EventQuery>,
) -> HttpResult {
    api.run(&id).await?;
    let events = api
        .events(&id, q.after.unwrap_or(0), q.limit.unwrap_or(1000))
        .await?;
    page("events", events.iter(), Cursor::After, |e: &&Event| e.seq)
}

/// An agent type as `/v1/templates` shows it: the names of its environment variables, not
/// their values, and nothing about where its file is.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Template<'a> {
    id: &'a str,
    version: &'a str,
    description: &'a str,
    lifecycle: Lifecycle,
    limits: &'a Limits,
    env_keys: Vec<&'a str>,
    scratch_dir: bool,
    /// Milliseconds.
    stop_grace: u64,
    max_restarts: Option<i64>,
    input_schema: Option<&'a Schema>,
    output_schema: Option<&'a Schema>,
    sandbox: &'static str,
    digest: Option<&'a str>,
    imports: Option<&'a [String]>,
    models: &'a [String],
    tools: &'a [String],
    /// The names of the host secrets the agent may use.
    secrets: &'a [String],
    quota: &'a Quota,
    /// The agents it may spawn, and the bounds on its tree (`[children]`).
    children: &'a ChildrenPolicy,
    /// A declarative agent's prompt and model.
    declarative: Option<&'a DeclarativeAgent>,
}

async fn types(State(state): State<HttpState>) -> HttpResult {
    agent_types(&state, "types")
}

async fn templates(State(state): State<HttpState>) -> HttpResult {
    agent_types(&state, "templates")
}

/// The loaded agent types, as `{<key>: [...], "problems": [...]}`: `types` on `/v1/types`,
/// `templates` on the walkthrough's `/v1/templates`.
fn agent_types(state: &HttpState, key: &str) -> HttpResult {
    let specs = state.api.registry().list();
    let templates: Vec<Template<'_>> = specs
        .iter()
        .map(|spec| Template {
            id: &spec.id,
            version: &spec.version,
            description: &spec.description,
            lifecycle: spec.lifecycle,
            limits: &spec.limits,
            env_keys: spec.env.keys().map(String::as_str).collect(),
            scratch_dir: spec.scratch_dir,
            stop_grace: u64::try_from(spec.stop_grace.as_millis()).unwrap_or(u64::MAX),
            max_restarts: spec.max_restarts,
            input_schema: spec.input_schema.as_ref(),
            output_schema: spec.output_schema.as_ref(),
            sandbox: if spec.is_wasm() { "wasm" } else { "none" },
            digest: match &spec.code {
                AgentCode::Wasm(agent) => Some(agent.digest()),
                AgentCode::Native(_) | AgentCode::Declarative(_) => None,
            },
            imports: match &spec.code {
                AgentCode::Wasm(agent) => Some(&agent.description().imports),
                AgentCode::Native(_) | AgentCode::Declarative(_) => None,
            },
            models: &spec.models,
            tools: &spec.tools,
            secrets: &spec.secrets,
            quota: &spec.quota,
            children: &spec.children,
            declarative: match &spec.code {
                AgentCode::Declarative(agent) => Some(agent),
                AgentCode::Native(_) | AgentCode::Wasm(_) => None,
            },
        })
        .collect();
    let mut body = serde_json::Map::new();
    body.insert(
        key.to_string(),
        serde_json::to_value(templates).map_err(|e| internal(&e))?,
    );
    body.insert(
        "problems".to_string(),
        serde_json::to_value((state.problems)()).map_err(|e| internal(&e))?,
    );
    ok(StatusCode::OK, body)
}

/// Body of `POST /spawn`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SpawnRequest {
    agent_type: String,
    tenant_id: Option<String>,
    user_id: Option<String>,
    input: Option<Box<RawValue>>,
}

/// Body of a `202` from `POST /spawn`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Spawned<'a> {
    workload_name: &'a str,
    job: &'a Job,
}

/// Ids `/spawn` tries before giving up (each new one colliding with an existing job is
/// astronomically unlikely; this only bounds the loop).
const SPAWN_ID_TRIES: usize = 4;

async fn spawn(Scoped(api): Scoped, Body(bytes): Body) -> HttpResult {
    let mut request: SpawnRequest = body(&bytes)?;
    // A tenant's token spawns for its tenant (naming another is refused on enqueue).
    if request.tenant_id.is_none() {
        request.tenant_id = api.tenant().map(str::to_string);
    }
    let spec = api.agent(&request.agent_type)?;
    if spec.lifecycle != Lifecycle::LongLived {
        return Err(HttpError::new(
            StatusCode::BAD_REQUEST,
            "NotLongLived",
            format!(
                "agent type {:?} runs to completion (lifecycle \"job\"); enqueue it as a job \
                 (POST /v1/jobs, `drover-host enqueue {}`) — /spawn starts long-lived agents",
                spec.id, spec.id
            ),
        ));
    }
    let ids = std::iter::repeat_with(|| {
        format!(
            "{}-{}",
            spec.id,
            &uuid::Uuid::now_v7().simple().to_string()[20..]
        )
    });
    let job = spawn_job(&api, &spec.id, &request, ids).await?;
    ok(
        StatusCode::ACCEPTED,
        Spawned {
            workload_name: &job.id,
            job: &job,
        },
    )
}

/// Enqueues a new job for a spawn request under the first of `ids` not yet taken: a spawn
/// never answers with a job that was already there.
async fn spawn_job(
    api: &RunApi,
    agent_id: &str,
    request: &SpawnRequest,
    ids: impl IntoIterator<Item = String>,
) -> Result<Job, HttpError> {
    // The meta keeps them too, as it did before jobs had a tenant and a user of their own.
    let meta = serde_json::json!({ "tenantId": request.tenant_id, "userId": request.user_id });
    for id in ids.into_iter().take(SPAWN_ID_TRIES) {
        let mut job = NewJob::new(agent_id, &serde_json::Value::Null)
            .id(&id)
            .meta(&meta);
        job.tenant_id.clone_from(&request.tenant_id);
        job.user_id.clone_from(&request.user_id);
        if let Some(input) = &request.input {
            job.input = Arc::from(input.clone());
        }
        match api.enqueue(job).await {
            Ok(enqueued) if enqueued.created => return Ok(enqueued.job),
            Ok(_) | Err(ApiError::Conflict(_)) => {
                tracing::warn!(id = %id, "a spawn's new job id was taken; trying another");
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(internal(&"no free job id for a spawn"))
}

/// A long-lived agent instance (one job of a long-lived agent), in the vocabulary of the
/// long-lived walkthrough.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AgentInstance<J, R> {
    /// The workload name (the job id).
    id: String,
    agent_type: String,
    /// `Pending`, `Running`, `Stopping`, `Completed`, `Failed` or `Cancelled`.
    phase: &'static str,
    last_heartbeat_at: Option<i64>,
    /// Running, but silent for longer than the host's stale threshold.
    stale: bool,
    job: J,
    run: Option<R>,
}

fn instance<'a, J, R>(
    view: &'a JobView,
    stale_after: Duration,
    job: impl Fn(&'a Job) -> J,
    run: impl Fn(&'a Run) -> R,
) -> AgentInstance<J, R> {
    let JobView { job: j, run: r } = view;
    let phase = match j.status {
        JobStatus::Scheduled | JobStatus::Queued => "Pending",
        JobStatus::Leased if j.stop_requested => "Stopping",
        JobStatus::Leased => "Running",
        JobStatus::Done => "Completed",
        JobStatus::Failed => "Failed",
        JobStatus::Cancelled => "Cancelled",
    };
    let running = r.as_ref().filter(|r| r.status == RunStatus::Running);
    let last = running.map(|r| r.heartbeat_at.unwrap_or(r.started_at));
    let stale_ms = i64::try_from(stale_after.as_millis()).unwrap_or(i64::MAX);
    AgentInstance {
        id: j.id.clone(),
        agent_type: j.agent_id.clone(),
        phase,
        last_heartbeat_at: r.as_ref().and_then(|r| r.heartbeat_at),
        stale: last.is_some_and(|t| now_ms() - t > stale_ms),
        job: job(j),
        run: r.as_ref().map(run),
    }
}

/// Query of `GET /v1/agents`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AgentQuery {
    status: Option<String>,
    tenant_id: Option<String>,
    limit: Option<u32>,
}

async fn list_agents(
    State(state): State<HttpState>,
    Scoped(api): Scoped,
    Query(q): Query<AgentQuery>,
) -> HttpResult {
    let long_lived: Vec<String> = api
        .registry()
        .list()
        .iter()
        .filter(|s| s.lifecycle == Lifecycle::LongLived)
        .map(|s| s.id.clone())
        .collect();
    let statuses = parse_list(q.status.as_deref())?;
    let tenant_id = tenant_query(q.tenant_id)?;
    let mut views = Vec::new();
    for agent in long_lived {
        let jobs = api
            .list(&JobFilter {
                status: statuses.clone(),
                agent_id: Some(agent),
                tenant_id: tenant_id.clone(),
                limit: q.limit.or(Some(200)),
                ..JobFilter::default()
            })
            .await?;
        views.extend(api.views(jobs).await?);
    }
    views.sort_by_key(|v| std::cmp::Reverse(v.job.created_at));
    page(
        "agents",
        views
            .iter()
            .map(|v| instance(v, state.stale_after, JobSummary::from, RunSummary::from)),
        Cursor::None,
        |_| 0,
    )
}

async fn get_agent(
    State(state): State<HttpState>,
    Scoped(api): Scoped,
    Path(id): Path<String>,
) -> HttpResult {
    let view = api.get(&id).await?;
    ok(
        StatusCode::OK,
        One("agent", &instance(&view, state.stale_after, |j| j, |r| r)),
    )
}

async fn agent_events(
    Scoped(api): Scoped,
    Path(id): Path<String>,
    Query(q): Query<EventQuery>,
) -> HttpResult {
    let view = api.get(&id).await?;
    let events = match &view.run {
        Some(run) => {
            api.events(&run.id, q.after.unwrap_or(0), q.limit.unwrap_or(1000))
                .await?
        }
        None => Vec::new(),
    };
    let run_id = serde_json::json!(view.run.as_ref().map(|r| r.id.as_str()));
    page_after(
        Some(("runId", run_id)),
        "events",
        events.iter(),
        Cursor::After,
        |e: &&Event| e.seq,
    )
}

async fn delete_agent(Scoped(api): Scoped, Path(id): Path<String>) -> HttpResult {
    ok(StatusCode::ACCEPTED, One("job", &api.stop(&id).await?))
}

/// Body of `POST /v1/agents/{id}/messages`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageRequest {
    /// The message: any JSON.
    message: Box<RawValue>,
}

/// Query of the message routes.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MessageQuery {
    /// `POST`: how long to wait for the reply (none: do not wait; at most [`MAX_WAIT`]).
    wait_ms: Option<u64>,
    /// `GET`: how many of the latest messages (default 100).
    limit: Option<u32>,
}

/// Body of the answers to `POST /v1/agents/{id}/messages`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Posted<'a> {
    message_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reply: Option<&'a RawValue>,
    message: &'a Message,
}

async fn post_message(
    Scoped(api): Scoped,
    Path(id): Path<String>,
    Query(q): Query<MessageQuery>,
    Body(bytes): Body,
) -> HttpResult {
    let request: MessageRequest = body(&bytes)?;
    let mut message = api.post_message(&id, &request.message).await?;
    let wait = Duration::from_millis(q.wait_ms.unwrap_or(0)).min(MAX_WAIT);
    if !wait.is_zero() {
        message = api.wait_reply(&message.id, wait).await?;
    }
    let status = match message.reply {
        Some(_) => StatusCode::OK,
        None => StatusCode::ACCEPTED,
    };
    ok(
        status,
        Posted {
            message_id: &message.id,
            reply: message.reply.as_deref(),
            message: &message,
        },
    )
}

async fn list_messages(
    Scoped(api): Scoped,
    Path(id): Path<String>,
    Query(q): Query<MessageQuery>,
) -> HttpResult {
    let messages = api.messages(&id, q.limit.unwrap_or(100)).await?;
    page("messages", messages.iter(), Cursor::None, |_| 0)
}

/// Body of `/v1/stats`.
#[derive(Serialize)]
struct Stats {
    jobs: std::collections::BTreeMap<&'static str, i64>,
    runs: std::collections::BTreeMap<&'static str, i64>,
}

async fn stats(State(state): State<HttpState>) -> HttpResult {
    let jobs = state.api.queue().counts().await.map_err(ApiError::from)?;
    let runs = state.api.store().counts().await.map_err(ApiError::from)?;
    ok(
        StatusCode::OK,
        Stats {
            jobs: JobStatus::ALL
                .iter()
                .map(|s| (s.as_str(), jobs.get(s).copied().unwrap_or(0)))
                .collect(),
            runs: RunStatus::ALL
                .iter()
                .map(|s| (s.as_str(), runs.get(s).copied().unwrap_or(0)))
                .collect(),
        },
    )
}

/// Body of `POST /v1/tokens/{name}/revoke`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RevokedToken<'a> {
    #[serde(flatten)]
    token: &'a super::auth::Revoked,
    /// The long-lived agents asked to stop.
    stopped_agents: &'a [String],
}

async fn revoke_token(State(state): State<HttpState>, Path(name): Path<String>) -> HttpResult {
    let revoked = state
        .auth
        .revoke(&name)
        .await
        .map_err(|e| internal(&e))?
        .ok_or_else(|| {
            HttpError::new(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("no API token named {name:?} in this host's configuration"),
            )
        })?;
    let stopped = match (&revoked.tenant, revoked.stop_agents) {
        (Some(tenant), true) => state.api.stop_tenant_agents(tenant).await?,
        _ => Vec::new(),
    };
    if !stopped.is_empty() {
        tracing::info!(token = %revoked.name, agents = stopped.len(), "stopping the revoked token's agents");
    }
    ok(
        StatusCode::OK,
        One(
            "token",
            &RevokedToken {
                token: &revoked,
                stopped_agents: &stopped,
            },
        ),
    )
}

async fn healthz() -> HttpResult {
    ok(StatusCode::OK, One("status", "ok"))
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
        Ok(()) => ok(StatusCode::OK, One("status", "ready")),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Db;
    use crate::queue::{Queue, QueueOptions};
    use crate::registry::{AgentSpec, Registry, StaticRegistry};
    use crate::sandbox::native_agent;
    use crate::store::RunStore;

    #[tokio::test]
    async fn a_spawn_never_answers_with_a_job_that_was_already_there() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("file:{}", dir.path().join("db").display());
        let db = Db::open(&url, None).await.expect("db");
        let queue = Queue::with_db(db.clone(), QueueOptions::default())
            .await
            .expect("queue");
        let store = RunStore::with_db(db).await.expect("store");
        let worker = AgentSpec::native(
            "worker",
            native_agent(|_input, _ctx| async { Ok(serde_json::Value::Null) }),
        )
        .long_lived();
        let registry: Arc<dyn Registry> = Arc::new(StaticRegistry::new().with(worker));
        let api = RunApi::new(queue, store, registry);
        let request: SpawnRequest =
            serde_json::from_str(r#"{"agentType": "worker", "tenantId": "t2", "input": {"a": 1}}"#)
                .expect("request");
        // Two jobs hold the first ids: one with the very same payload, one with another.
        let first = api
            .enqueue(
                NewJob::new("worker", &serde_json::json!({ "a": 1 }))
                    .id("taken-1")
                    .meta(&serde_json::json!({ "tenantId": "t2", "userId": null })),
            )
            .await
            .expect("enqueue")
            .job;
        api.enqueue(NewJob::new("worker", &serde_json::json!({ "other": true })).id("taken-2"))
            .await
            .expect("enqueue");
        let ids = ["taken-1", "taken-2", "fresh"].map(String::from);
        let job = spawn_job(&api, "worker", &request, ids)
            .await
            .expect("spawn");
        assert_eq!(job.id, "fresh");
        assert_ne!(job.created_at, 0);
        assert_eq!(job.input.get(), r#"{"a": 1}"#);
        assert_eq!(
            api.get("taken-1").await.expect("get").job.created_at,
            first.created_at
        );
        // With every id taken, it fails rather than hand back someone else's job.
        let taken = ["taken-1", "taken-2"].map(String::from);
        let error = spawn_job(&api, "worker", &request, taken)
            .await
            .expect_err("no free id");
        assert_eq!(error.status, StatusCode::INTERNAL_SERVER_ERROR);
    }
}
