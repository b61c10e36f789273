//! A scripted model server speaking the real wire protocols over real HTTP: OpenAI-compatible
//! Chat Completions at `/v1/chat/completions` and Anthropic Messages at `/v1/messages`.
//!
//! A script is a queue of [`Reply`]s, one per request, in order; a reply's content is written
//! in the format of the path it answers (so one script serves either protocol), unless it is a
//! raw body. When the script runs out the server answers `500` saying so. Every request is
//! recorded for assertions, and the most requests seen in flight at once is kept.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

/// What a reply says.
#[derive(Debug, Clone)]
enum Content {
    /// An assistant message with this text.
    Text(String),
    /// An assistant message asking for tool calls `(id, name, arguments)`, with optional text.
    ToolCalls(Vec<(String, String, Value)>, String),
    /// This JSON body, as is.
    Json(Value),
    /// These bytes, as is.
    Raw(Vec<u8>),
}

/// One scripted reply.
#[derive(Debug, Clone)]
pub struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    content: Content,
    usage: (u64, u64),
    model: String,
    delay: Duration,
}

impl Reply {
    fn new(content: Content) -> Self {
        Self {
            status: 200,
            headers: Vec::new(),
            content,
            usage: (10, 5),
            model: "scripted-model".to_string(),
            delay: Duration::ZERO,
        }
    }

    /// `200` with an assistant message of `text` (finish reason `stop` / `end_turn`).
    pub fn text(text: &str) -> Self {
        Self::new(Content::Text(text.to_string()))
    }

    /// `200` with an assistant message asking for these tool calls `(id, name, arguments)`.
    pub fn tool_calls(calls: Vec<(&str, &str, Value)>) -> Self {
        Self::new(Content::ToolCalls(
            calls
                .into_iter()
                .map(|(id, name, args)| (id.to_string(), name.to_string(), args))
                .collect(),
            String::new(),
        ))
    }

    /// `status` with a provider-style error body.
    pub fn status(status: u16) -> Self {
        Self {
            status,
            ..Self::new(Content::Json(json!({
                "error": {"message": format!("scripted error {status}"), "type": "scripted"}
            })))
        }
    }

    /// `200` with this JSON body, as is.
    pub fn json(body: Value) -> Self {
        Self::new(Content::Json(body))
    }

    /// `200` with these bytes as the body, as is.
    pub fn raw(body: impl Into<Vec<u8>>) -> Self {
        Self::new(Content::Raw(body.into()))
    }

    /// Answers with this status instead.
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    /// Adds a `Retry-After: seconds` header.
    pub fn retry_after(self, seconds: u64) -> Self {
        self.header("retry-after", &seconds.to_string())
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Waits this long before answering.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Reports this usage (input, output tokens); the default is (10, 5).
    pub fn usage(mut self, input: u64, output: u64) -> Self {
        self.usage = (input, output);
        self
    }

    /// Answers as this provider model.
    pub fn model(mut self, model: &str) -> Self {
        self.model = model.to_string();
        self
    }

    /// The body for a request to `path`.
    fn body(&self, path: &str) -> Vec<u8> {
        let anthropic = path.ends_with("/messages");
        let (input, output) = self.usage;
        let value = match (&self.content, anthropic) {
            (Content::Raw(bytes), _) => return bytes.clone(),
            (Content::Json(value), _) => value.clone(),
            (Content::Text(text), false) => json!({
                "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": self.model,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": input, "completion_tokens": output,
                          "total_tokens": input + output}
            }),
            (Content::ToolCalls(calls, text), false) => json!({
                "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": self.model,
                "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                    "role": "assistant",
                    "content": if text.is_empty() { Value::Null } else { json!(text) },
                    "tool_calls": calls.iter().map(|(id, name, args)| json!({
                        "id": id, "type": "function",
                        "function": {"name": name, "arguments": args.to_string()}
                    })).collect::<Vec<_>>()
                }}],
                "usage": {"prompt_tokens": input, "completion_tokens": output,
                          "total_tokens": input + output}
            }),
            (Content::Text(text), true) => json!({
                "id": "msg_1", "type": "message", "role": "assistant", "model": self.model,
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn", "stop_sequence": null,
                "usage": {"input_tokens": input, "output_tokens": output}
            }),
            (Content::ToolCalls(calls, text), true) => {
                let mut content = Vec::new();
                if !text.is_empty() {
                    content.push(json!({"type": "text", "text": text}));
                }
                content.extend(calls.iter().map(|(id, name, args)| {
                    json!({"type": "tool_use", "id": id, "name": name, "input": args})
                }));
                json!({
                    "id": "msg_1", "type": "message", "role": "assistant", "model": self.model,
                    "content": content, "stop_reason": "tool_use", "stop_sequence": null,
                    "usage": {"input_tokens": input, "output_tokens": output}
                })
            }
        };
        value.to_string().into_bytes()
    }
}

/// A request the server received.
#[derive(Debug, Clone)]
pub struct Received {
    /// The path (`/v1/chat/completions`, `/v1/messages`, …).
    pub path: String,
    /// The headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The body as JSON (`null` if it was not JSON).
    pub body: Value,
    /// The body as sent.
    pub raw: Vec<u8>,
}

impl Received {
    /// The value of header `name` (lower case), if sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct Shared {
    script: Mutex<VecDeque<Reply>>,
    always: Option<Reply>,
    record: bool,
    requests: Mutex<Vec<Received>>,
    served: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

/// The scripted server; stops when dropped.
pub struct ModelServer {
    address: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl ModelServer {
    /// Starts a server on 127.0.0.1 answering with `script`, one reply per request.
    pub async fn start(script: Vec<Reply>) -> Self {
        Self::with(Shared {
            script: Mutex::new(script.into()),
            record: true,
            ..Shared::default()
        })
        .await
    }

    /// Starts a server answering every request with `reply` (recording none of them).
    pub async fn always(reply: Reply) -> Self {
        Self::with(Shared {
            always: Some(reply),
            ..Shared::default()
        })
        .await
    }

    async fn with(shared: Shared) -> Self {
        let shared = Arc::new(shared);
        let app = Router::new()
            .route("/v1/chat/completions", post(answer))
            .route("/v1/messages", post(answer))
            .fallback(|uri: Uri| async move {
                (
                    StatusCode::NOT_FOUND,
                    format!("the model server has no route {uri}"),
                )
            })
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the model server");
        let address = listener.local_addr().expect("model server address");
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

    /// `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.address)
    }

    /// The requests received so far, in order.
    pub fn requests(&self) -> Vec<Received> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Requests answered so far.
    pub fn served(&self) -> usize {
        self.shared.served.load(Ordering::SeqCst)
    }

    /// The most requests that were being answered at once.
    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    /// Replies of the script not used yet.
    pub fn remaining(&self) -> usize {
        self.shared
            .script
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}

impl Drop for ModelServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Decrements the in-flight count however the request ends.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn answer(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    let _in_flight = InFlight(&shared.in_flight);
    shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let path = uri.path().to_string();
    if shared.record {
        let received = Received {
            path: path.clone(),
            headers: headers
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            raw: body.to_vec(),
        };
        shared
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(received);
    }
    let reply = match &shared.always {
        Some(reply) => Some(reply.clone()),
        None => shared
            .script
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front(),
    };
    let response = match reply {
        None => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [("content-type", "application/json")],
            json!({"error": {"message": "the model server's script ran out of replies"}})
                .to_string(),
        )
            .into_response(),
        Some(reply) => {
            if !reply.delay.is_zero() {
                tokio::time::sleep(reply.delay).await;
            }
            let mut response = (
                StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                reply.body(&path),
            )
                .into_response();
            let headers = response.headers_mut();
            headers.insert(
                "content-type",
                axum::http::HeaderValue::from_static("application/json"),
            );
            for (name, value) in &reply.headers {
                if let (Ok(name), Ok(value)) = (
                    axum::http::HeaderName::from_bytes(name.as_bytes()),
                    axum::http::HeaderValue::from_str(value),
                ) {
                    headers.insert(name, value);
                }
            }
            response
        }
    };
    shared.served.fetch_add(1, Ordering::SeqCst);
    response
}
