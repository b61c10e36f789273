//! A real OAuth2 token endpoint over real HTTP on 127.0.0.1: the client-credentials grant at
//! `/oauth/token`, checking the client's id and secret (HTTP Basic, as RFC 6749 §2.3.1 encodes
//! them) and the scope asked for, counting every request, and issuing a fresh token each time
//! with a configurable `expires_in`. It can be told to fail (answering `503` with an error
//! description that echoes the client's credentials, as a careless server might) or to answer
//! slowly.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use serde_json::json;

/// `expires_in` left out of the answer.
const NO_EXPIRY: u64 = u64::MAX;

struct Shared {
    client_id: String,
    client_secret: String,
    scope: String,
    expires_in: AtomicU64,
    delay_ms: AtomicU64,
    failing: AtomicBool,
    requests: AtomicUsize,
    issued: Mutex<Vec<String>>,
    audiences: Mutex<Vec<Option<String>>>,
}

/// The token endpoint; stops when dropped.
pub struct OAuthServer {
    address: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl OAuthServer {
    /// Starts an endpoint for the client `client_id`/`client_secret` granting exactly `scope`,
    /// with tokens that expire in an hour.
    pub async fn start(client_id: &str, client_secret: &str, scope: &str) -> Self {
        let shared = Arc::new(Shared {
            client_id: client_id.to_string(),
            client_secret: client_secret.to_string(),
            scope: scope.to_string(),
            expires_in: AtomicU64::new(3600),
            delay_ms: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            requests: AtomicUsize::new(0),
            issued: Mutex::new(Vec::new()),
            audiences: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route("/oauth/token", post(token))
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the token endpoint");
        let address = listener.local_addr().expect("token endpoint address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        Self {
            address,
            shared,
            stop: Some(stop),
        }
    }

    /// `http://127.0.0.1:PORT/oauth/token`.
    pub fn token_url(&self) -> String {
        format!("http://{}/oauth/token", self.address)
    }

    /// The `expires_in` of the tokens issued from now on, in seconds (`None`: left out).
    pub fn set_expires_in(&self, seconds: Option<u64>) {
        self.shared
            .expires_in
            .store(seconds.unwrap_or(NO_EXPIRY), Ordering::SeqCst);
    }

    /// How long each answer waits before it is sent.
    pub fn set_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.shared.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Whether requests are answered `503` (with the client's credentials in the description).
    pub fn set_failing(&self, failing: bool) {
        self.shared.failing.store(failing, Ordering::SeqCst);
    }

    /// Requests received so far, answered or not.
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// A test of whether a token is one this endpoint issued (for a resource server to use).
    pub fn verifier(&self) -> impl Fn(&str) -> bool + Send + Sync + 'static {
        let shared = Arc::clone(&self.shared);
        move |token| {
            shared
                .issued
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .any(|t| t == token)
        }
    }

    /// The tokens issued so far, oldest first.
    pub fn issued(&self) -> Vec<String> {
        self.shared
            .issued
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The `audience` parameter of each request that got a token.
    pub fn audiences(&self) -> Vec<Option<String>> {
        self.shared
            .audiences
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for OAuthServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// An OAuth2 error answer (RFC 6749 §5.2).
fn refuse(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        [("content-type", "application/json")],
        json!({ "error": error, "error_description": description }).to_string(),
    )
        .into_response()
}

/// Reads `Authorization: Basic base64(urlencoded id ":" urlencoded secret)`.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get("authorization")?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    let unescape = |part: &str| {
        form_urlencoded::parse(format!("v={part}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
    };
    Some((unescape(id)?, unescape(secret)?))
}

async fn token(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    shared.requests.fetch_add(1, Ordering::SeqCst);
    let delay = shared.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let Some((id, secret)) = basic_credentials(&headers) else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "no HTTP Basic credentials",
        );
    };
    if shared.failing.load(Ordering::SeqCst) {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            &format!("cannot serve client {id} (secret {secret}) right now"),
        );
    }
    if id != shared.client_id || secret != shared.client_secret {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "unknown client or wrong secret",
        );
    }
    let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    if field("grant_type").as_deref() != Some("client_credentials") {
        return refuse(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "only client_credentials is granted",
        );
    }
    if field("scope").as_deref() != Some(shared.scope.as_str()) {
        return refuse(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            &format!("this client may ask for {:?} only", shared.scope),
        );
    }
    let token = {
        let mut issued = shared.issued.lock().unwrap_or_else(|p| p.into_inner());
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let token = format!("at-{}-{nanos:09}", issued.len() + 1);
        issued.push(token.clone());
        token
    };
    shared
        .audiences
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(field("audience"));
    let mut answer = json!({
        "access_token": token,
        "token_type": "bearer",
        "scope": shared.scope,
    });
    let expires_in = shared.expires_in.load(Ordering::SeqCst);
    if expires_in != NO_EXPIRY {
        answer["expires_in"] = json!(expires_in);
    }
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        answer.to_string(),
    )
        .into_response()
}
