//! The protected API the long-lived queue worker posts its items to: `POST /work` with
//! `Authorization: Bearer <token>`, `X-Tenant-ID` and a JSON body `{"item": …}` (a `GET` is
//! checked the same way, and has no item).
//!
//! It answers `401` without one of its accepted tokens, `400` without a tenant or with a body
//! that is not `{"item": …}`, and `200 {"accepted": item}` otherwise. Every request is kept
//! (its tenant, item and status), and so is every `Authorization` value it was sent, so that
//! tests can say what reached it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

/// One request the API answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// Its `X-Tenant-ID`, if any.
    pub tenant: Option<String>,
    /// Its `item`, if the body had one.
    pub item: Option<Value>,
    /// The status it was answered with.
    pub status: u16,
    /// Its `Authorization` header, if any.
    pub authorization: Option<String>,
}

struct Shared {
    accepts: Box<dyn Fn(&str) -> bool + Send + Sync>,
    received: Mutex<Vec<Received>>,
}

/// A running sample API; it stops when dropped.
pub struct SampleApi {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl SampleApi {
    /// Starts the API on a free port of 127.0.0.1, accepting these bearer tokens.
    pub async fn start(tokens: &[&str]) -> Self {
        let tokens: Vec<String> = tokens.iter().map(|t| t.to_string()).collect();
        Self::accepting(move |token| tokens.iter().any(|ok| ok == token)).await
    }

    /// Starts the API on a free port of 127.0.0.1, accepting the bearer tokens `accepts` says
    /// yes to (those a token endpoint issued, say).
    pub async fn accepting(accepts: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        let shared = Arc::new(Shared {
            accepts: Box::new(accepts),
            received: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route("/work", post(work).get(work))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the sample API");
        let addr = listener.local_addr().expect("the sample API's address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, shared, task }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Every request answered so far, in order.
    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().expect("lock").clone()
    }
}

impl Drop for SampleApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn work(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let authorization = text("authorization");
    let tenant = text("x-tenant-id");
    let item = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("item").cloned());
    let authorized = authorization
        .as_deref()
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| (shared.accepts)(t));
    let (status, answer) = if !authorized {
        (StatusCode::UNAUTHORIZED, json!({"error": "unauthorized"}))
    } else if tenant.is_none() {
        (
            StatusCode::BAD_REQUEST,
            json!({"error": "X-Tenant-ID missing"}),
        )
    } else if let Some(item) = &item {
        (StatusCode::OK, json!({"accepted": item}))
    } else {
        (
            StatusCode::BAD_REQUEST,
            json!({"error": "expected {\"item\": …}"}),
        )
    };
    shared.received.lock().expect("lock").push(Received {
        tenant,
        item,
        status: status.as_u16(),
        authorization,
    });
    (status, axum::Json(answer)).into_response()
}
