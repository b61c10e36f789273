//! The model gateway: the host calls models on a guest's behalf, so API keys never enter a
//! guest.
//!
//! A host's `drover.toml` declares model aliases (`[models.cheap]`: provider, base URL, model
//! name, the environment variable holding the key, prices, limits; see [`AliasConfig`]). The
//! [`ModelGateway`] turns a provider-neutral [`ChatRequest`] on an alias into one HTTP call of
//! that alias's protocol — the OpenAI-compatible Chat Completions API (OpenAI, Ollama, vLLM,
//! llama.cpp's server, LM Studio, OpenRouter, Groq, …) or Anthropic's Messages API — and the
//! answer back into a [`ChatResponse`] with its token usage and cost.
//!
//! Per alias it holds at most `max-concurrent` requests in flight, gives each HTTP attempt
//! `timeout-ms` (body included; a timeout is not retried, as it would multiply the caller's
//! wait), and retries `429`, `5xx` and connection failures up to `max-retries` times, after
//! the provider's `Retry-After` (in seconds, at most 30 s) or a doubling backoff. What is left
//! is a typed [`ModelError`]: `ModelRateLimited`, `ModelUnavailable` or `ModelBadResponse`,
//! carrying the provider's own message, bounded and with the key scrubbed out. Response bodies
//! are read up to 16 MiB. The key itself lives in a type whose `Debug` prints `[redacted]`.
//!
//! # Why hand-written wire types on `reqwest`
//! The two protocols' few request and response fields the gateway uses are written here, on
//! the `reqwest` client the host already has, rather than with a client crate such as
//! `async-openai`: that crate covers only the OpenAI protocol (Anthropic would need a second
//! crate with a second set of types), brings its own retry policy (which retries on its own
//! terms, around our timeout and `Retry-After` rules) and its own `reqwest` version, and is a
//! large build for the handful of fields used here. Owning the retry loop is what lets the
//! host enforce the limits above at the boundary, the same way for both protocols.
//!
//! `https://` base URLs use `reqwest`'s rustls client, which checks certificates against the
//! platform's trust store.

mod anthropic;
mod config;
mod openai;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use tokio::sync::Semaphore;

pub use config::{AliasConfig, MaxTokensField, ModelConfigError, ModelsConfig, Provider};
pub use drover_agent_loop::{FinishReason, Message, Role, TokenUsage, ToolCall, ToolDefinition};

/// Most bytes of a response body read.
pub const MAX_RESPONSE_BYTES: usize = 16 << 20;
/// Most bytes of a provider's error message kept in a [`ModelError`].
pub const MAX_ERROR_MESSAGE: usize = 2048;
/// Longest wait before a retry, whatever `Retry-After` asks for.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

/// One request to a model alias.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    /// The alias (`cheap`), not the provider's model name.
    pub model: String,
    /// The conversation.
    pub messages: Vec<Message>,
    /// The tools the model may ask for.
    pub tools: Vec<ToolDefinition>,
    /// Most output tokens (none: the alias's `max-output-tokens`; more is clamped to it).
    pub max_output_tokens: Option<u32>,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Ask for a JSON object (OpenAI's `response_format`; Anthropic has no such mode).
    pub json_output: bool,
}

/// A model's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatResponse {
    /// The assistant's message (text and tool calls).
    pub message: Message,
    /// Why it stopped.
    pub finish_reason: FinishReason,
    /// Tokens used, as the provider counts them.
    pub usage: TokenUsage,
    /// What the call cost: tokens × the alias's prices per million.
    pub cost_usd: f64,
    /// The provider's model name (as it answered, else as configured).
    pub model: String,
    /// HTTP attempts made (1 without retries).
    pub attempts: u32,
}

/// A model call that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// The alias is not configured (or not allowed to the caller).
    #[error("model alias `{0}` is not configured")]
    UnknownAlias(String),
    /// The provider cannot be reached, timed out, failed, or refused the call.
    #[error("{message}")]
    Unavailable {
        /// What happened.
        message: String,
    },
    /// The provider kept answering `429 Too Many Requests`.
    #[error("{message}")]
    RateLimited {
        /// What happened.
        message: String,
    },
    /// The provider's answer cannot be used (or it rejected the request as malformed).
    #[error("{message}")]
    BadResponse {
        /// What happened.
        message: String,
    },
}

impl ModelError {
    /// The error tag a run records and a guest receives.
    pub fn tag(&self) -> &'static str {
        match self {
            Self::UnknownAlias(_) => "ModelNotAllowed",
            Self::Unavailable { .. } => "ModelUnavailable",
            Self::RateLimited { .. } => "ModelRateLimited",
            Self::BadResponse { .. } => "ModelBadResponse",
        }
    }

    /// Whether trying again later may succeed.
    pub fn retryable(&self) -> bool {
        matches!(self, Self::Unavailable { .. } | Self::RateLimited { .. })
    }
}

/// An API key. Its `Debug` and `Display` print `[redacted]`.
#[derive(Clone)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key.
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Model calls of one agent on one alias, since the host started.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelMetrics {
    /// The agent.
    pub agent_id: String,
    /// The alias.
    pub alias: String,
    /// Calls made.
    pub calls: u64,
    /// Calls that failed.
    pub failures: u64,
    /// Input tokens used.
    pub input_tokens: u64,
    /// Output tokens used.
    pub output_tokens: u64,
    /// Cost in US dollars.
    pub cost_usd: f64,
}

/// A provider's answer, decoded.
struct Decoded {
    message: Message,
    finish_reason: FinishReason,
    usage: TokenUsage,
    model: Option<String>,
}

struct Alias {
    name: String,
    config: AliasConfig,
    key: Option<ApiKey>,
    endpoint: String,
    slots: Semaphore,
}

impl fmt::Debug for Alias {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Alias")
            .field("name", &self.name)
            .field("config", &self.config)
            .field("key", &self.key)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl Alias {
    /// `text` with the key (if any) replaced by `[redacted]`, cut to `limit` bytes.
    fn scrub(&self, text: &str, limit: usize) -> String {
        let mut text = match &self.key {
            Some(key) if !key.expose().is_empty() => text.replace(key.expose(), "[redacted]"),
            _ => text.to_string(),
        };
        if text.len() > limit {
            let mut end = limit;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            text.push('…');
        }
        text
    }

    fn headers(&self) -> Result<HeaderMap, ModelError> {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let bad_key = || ModelError::Unavailable {
            message: format!(
                "model alias `{}`: the API key is not a valid HTTP header value",
                self.name
            ),
        };
        match self.config.provider {
            Provider::OpenAi => {
                if let Some(key) = &self.key {
                    let mut value = HeaderValue::from_str(&format!("Bearer {}", key.expose()))
                        .map_err(|_| bad_key())?;
                    value.set_sensitive(true);
                    headers.insert(AUTHORIZATION, value);
                }
            }
            Provider::Anthropic => {
                if let Some(key) = &self.key {
                    let mut value = HeaderValue::from_str(key.expose()).map_err(|_| bad_key())?;
                    value.set_sensitive(true);
                    headers.insert("x-api-key", value);
                }
                headers.insert(
                    "anthropic-version",
                    HeaderValue::from_static(anthropic::VERSION),
                );
            }
        }
        Ok(headers)
    }
}

/// What one HTTP attempt came to.
enum Attempt {
    Done(Decoded),
    /// Worth another attempt, after the given delay if the provider asked for one.
    Retry {
        error: ModelError,
        after: Option<Duration>,
    },
    Fail(ModelError),
}

/// The model gateway of a host: its aliases, one HTTP client, and per-(agent, alias) metrics.
/// Cheap to clone (shared inside).
#[derive(Debug, Clone)]
pub struct ModelGateway {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    aliases: BTreeMap<String, Alias>,
    http: reqwest::Client,
    metrics: Mutex<HashMap<(String, String), ModelMetrics>>,
}

impl ModelGateway {
    /// A gateway for `config`'s aliases. Reads each alias's API key from its `api-key-env`
    /// variable now; a variable that is not set (or empty) is an error naming it.
    pub fn new(config: &ModelsConfig) -> Result<Self, ModelConfigError> {
        Self::with_keys(config, |variable| {
            std::env::var(variable).ok().filter(|v| !v.is_empty())
        })
    }

    /// Like [`ModelGateway::new`], with the keys looked up by `key_of` (given the variable's
    /// name) rather than in the environment.
    pub fn with_keys(
        config: &ModelsConfig,
        key_of: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ModelConfigError> {
        config.validate()?;
        let mut aliases = BTreeMap::new();
        for (name, alias) in &config.0 {
            let key = match &alias.api_key_env {
                Some(variable) => Some(ApiKey::new(key_of(variable).ok_or_else(|| {
                    ModelConfigError::MissingKey {
                        alias: name.clone(),
                        variable: variable.clone(),
                    }
                })?)),
                None => None,
            };
            let path = match alias.provider {
                Provider::OpenAi => "chat/completions",
                Provider::Anthropic => "messages",
            };
            let endpoint = format!("{}/{path}", alias.base_url.trim_end_matches('/'));
            aliases.insert(
                name.clone(),
                Alias {
                    name: name.clone(),
                    config: alias.clone(),
                    key,
                    endpoint,
                    slots: Semaphore::new(alias.max_concurrent),
                },
            );
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ModelConfigError::Client(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                aliases,
                http,
                metrics: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// A gateway with no aliases: every call is [`ModelError::UnknownAlias`].
    pub fn empty() -> Self {
        Self {
            inner: Arc::new(Inner {
                aliases: BTreeMap::new(),
                http: reqwest::Client::new(),
                metrics: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The configured aliases, sorted.
    pub fn aliases(&self) -> Vec<String> {
        self.inner.aliases.keys().cloned().collect()
    }

    /// Whether `alias` is configured.
    pub fn has(&self, alias: &str) -> bool {
        self.inner.aliases.contains_key(alias)
    }

    /// The alias's most output tokens per call.
    pub fn max_output_tokens(&self, alias: &str) -> Option<u32> {
        self.inner
            .aliases
            .get(alias)
            .map(|a| a.config.max_output_tokens)
    }

    /// Sends `request` to its alias's provider, retrying as configured. `max_output_tokens` is
    /// clamped to the alias's; `agent_id` is for metrics.
    pub async fn complete(
        &self,
        agent_id: &str,
        request: &ChatRequest,
    ) -> Result<ChatResponse, ModelError> {
        let Some(alias) = self.inner.aliases.get(&request.model) else {
            return Err(ModelError::UnknownAlias(request.model.clone()));
        };
        let result = self.complete_on(alias, request).await;
        self.record(agent_id, alias, &result);
        result
    }

    async fn complete_on(
        &self,
        alias: &Alias,
        request: &ChatRequest,
    ) -> Result<ChatResponse, ModelError> {
        let config = &alias.config;
        let max_tokens = request
            .max_output_tokens
            .map_or(config.max_output_tokens, |n| {
                n.clamp(1, config.max_output_tokens)
            });
        let body = match config.provider {
            Provider::OpenAi => {
                openai::request_body(&config.model, request, max_tokens, config.max_tokens_field)
            }
            Provider::Anthropic => anthropic::request_body(&config.model, request, max_tokens),
        }
        .map_err(|e| ModelError::BadResponse {
            message: format!("cannot encode the request: {e}"),
        })?;
        let body = bytes::Bytes::from(body);
        let headers = alias.headers()?;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let outcome = {
                let _slot = alias
                    .slots
                    .acquire()
                    .await
                    .map_err(|_| ModelError::Unavailable {
                        message: format!("model alias `{}` is shut down", alias.name),
                    })?;
                self.attempt(alias, &headers, body.clone()).await
            };
            match outcome {
                Attempt::Done(decoded) => {
                    let cost_usd = (decoded.usage.input_tokens as f64 * config.input_usd_per_mtok
                        + decoded.usage.output_tokens as f64 * config.output_usd_per_mtok)
                        / 1e6;
                    return Ok(ChatResponse {
                        message: decoded.message,
                        finish_reason: decoded.finish_reason,
                        usage: decoded.usage,
                        cost_usd,
                        model: decoded.model.unwrap_or_else(|| config.model.clone()),
                        attempts,
                    });
                }
                Attempt::Fail(error) => return Err(error),
                Attempt::Retry { error, after } => {
                    if attempts > config.max_retries {
                        return Err(error);
                    }
                    let backoff = Duration::from_millis(
                        config
                            .retry_base_ms
                            .saturating_mul(1 << (attempts - 1).min(16)),
                    );
                    let delay = after.unwrap_or(backoff).min(MAX_RETRY_DELAY);
                    tracing::debug!(
                        alias = %alias.name,
                        attempt = attempts,
                        delay_ms = delay.as_millis() as u64,
                        error = %error,
                        "model call will be retried"
                    );
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// One HTTP attempt, bounded by the alias's timeout.
    async fn attempt(&self, alias: &Alias, headers: &HeaderMap, body: bytes::Bytes) -> Attempt {
        let timeout = Duration::from_millis(alias.config.timeout_ms);
        let call = async {
            let response = self
                .inner
                .http
                .post(&alias.endpoint)
                .headers(headers.clone())
                .body(body)
                .send()
                .await;
            let mut response = match response {
                Ok(response) => response,
                Err(e) => {
                    return Attempt::Retry {
                        error: ModelError::Unavailable {
                            message: format!(
                                "model alias `{}`: cannot reach {}: {}",
                                alias.name,
                                alias.endpoint,
                                alias.scrub(&error_chain(&e), MAX_ERROR_MESSAGE)
                            ),
                        },
                        after: None,
                    };
                }
            };
            let status = response.status();
            let retry_after = retry_after(response.headers());
            let limit = if status.is_success() {
                MAX_RESPONSE_BYTES
            } else {
                64 << 10
            };
            let body = match read_bounded(&mut response, limit).await {
                Ok(body) => body,
                Err(ReadError::TooLarge) if status.is_success() => {
                    return Attempt::Fail(ModelError::BadResponse {
                        message: format!(
                            "model alias `{}`: the response is larger than {} MiB",
                            alias.name,
                            MAX_RESPONSE_BYTES >> 20
                        ),
                    });
                }
                Err(ReadError::TooLarge) => Vec::new(),
                Err(ReadError::Http(e)) => {
                    return Attempt::Retry {
                        error: ModelError::Unavailable {
                            message: format!(
                                "model alias `{}`: the response broke off: {}",
                                alias.name,
                                alias.scrub(&error_chain(&e), MAX_ERROR_MESSAGE)
                            ),
                        },
                        after: None,
                    };
                }
            };
            if status.is_success() {
                let decoded = match alias.config.provider {
                    Provider::OpenAi => openai::parse_response(&body),
                    Provider::Anthropic => anthropic::parse_response(&body),
                };
                return match decoded {
                    Ok(decoded) => Attempt::Done(decoded),
                    Err(problem) => Attempt::Fail(ModelError::BadResponse {
                        message: format!(
                            "model alias `{}`: {}",
                            alias.name,
                            alias.scrub(&problem, MAX_ERROR_MESSAGE)
                        ),
                    }),
                };
            }
            let message = format!(
                "model alias `{}`: the provider answered {}: {}",
                alias.name,
                status,
                alias.scrub(&provider_message(&body), MAX_ERROR_MESSAGE)
            );
            match status {
                StatusCode::TOO_MANY_REQUESTS => Attempt::Retry {
                    error: ModelError::RateLimited { message },
                    after: retry_after,
                },
                s if s.is_server_error() => Attempt::Retry {
                    error: ModelError::Unavailable { message },
                    after: retry_after,
                },
                StatusCode::BAD_REQUEST
                | StatusCode::PAYLOAD_TOO_LARGE
                | StatusCode::UNPROCESSABLE_ENTITY => {
                    Attempt::Fail(ModelError::BadResponse { message })
                }
                _ => Attempt::Fail(ModelError::Unavailable { message }),
            }
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(outcome) => outcome,
            Err(_) => Attempt::Fail(ModelError::Unavailable {
                message: format!(
                    "model alias `{}`: no answer within {} ms (its timeout-ms)",
                    alias.name, alias.config.timeout_ms
                ),
            }),
        }
    }

    fn record(&self, agent_id: &str, alias: &Alias, result: &Result<ChatResponse, ModelError>) {
        let mut metrics = self.inner.metrics.lock().unwrap_or_else(|p| p.into_inner());
        let entry = metrics
            .entry((agent_id.to_string(), alias.name.clone()))
            .or_insert_with(|| ModelMetrics {
                agent_id: agent_id.to_string(),
                alias: alias.name.clone(),
                ..ModelMetrics::default()
            });
        entry.calls += 1;
        match result {
            Ok(response) => {
                entry.input_tokens += response.usage.input_tokens;
                entry.output_tokens += response.usage.output_tokens;
                entry.cost_usd += response.cost_usd;
            }
            Err(_) => entry.failures += 1,
        }
    }

    /// Calls, failures, tokens and cost per (agent, alias), sorted.
    pub fn metrics(&self) -> Vec<ModelMetrics> {
        let metrics = self.inner.metrics.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<ModelMetrics> = metrics.values().cloned().collect();
        all.sort_by(|a, b| (&a.agent_id, &a.alias).cmp(&(&b.agent_id, &b.alias)));
        all
    }
}

enum ReadError {
    TooLarge,
    Http(reqwest::Error),
}

/// The body, read chunk by chunk and given up past `limit` bytes.
async fn read_bounded(
    response: &mut reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, ReadError> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(ReadError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(ReadError::Http)? {
        if body.len() + chunk.len() > limit {
            return Err(ReadError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `Retry-After` in seconds (an HTTP date is ignored: the backoff applies).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let seconds: f64 = text.parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0)
        .then(|| Duration::from_secs_f64(seconds.min(MAX_RETRY_DELAY.as_secs_f64())))
}

/// The provider's message in an error body: `error.message` (both protocols), `error` as a
/// string, or the body's text.
fn provider_message(body: &[u8]) -> String {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) {
        let error = &value["error"];
        if let Some(message) = error["message"].as_str().or_else(|| error.as_str()) {
            return message.to_string();
        }
        if let Some(message) = value["message"].as_str() {
            return message.to_string();
        }
    }
    let text = String::from_utf8_lossy(body).trim().to_string();
    if text.is_empty() {
        "(no message)".to_string()
    } else {
        text
    }
}

/// An error with its sources, as one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
