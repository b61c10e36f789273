//! Model aliases as `drover.toml` declares them (`[models.<alias>]`), and their validation.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The wire protocol an alias speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// The OpenAI-compatible Chat Completions API (OpenAI, Ollama, vLLM, llama.cpp's server,
    /// LM Studio, OpenRouter, Groq, …).
    OpenAi,
    /// Anthropic's Messages API.
    Anthropic,
}

impl Provider {
    /// The name used in `drover.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OpenAi => "openai",
            Self::Anthropic => "anthropic",
        }
    }
}

/// Which request field carries the output token limit for an OpenAI-compatible alias.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaxTokensField {
    /// `max_tokens`: understood by every OpenAI-compatible server.
    #[default]
    MaxTokens,
    /// `max_completion_tokens`: what OpenAI's newer (reasoning) models require.
    MaxCompletionTokens,
}

/// The model aliases of a host: `[models.<alias>]` tables of `drover.toml`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ModelsConfig(pub BTreeMap<String, AliasConfig>);

impl ModelsConfig {
    /// Checks every alias (see [`AliasConfig::validate`]); reads no environment variable.
    pub fn validate(&self) -> Result<(), ModelConfigError> {
        for (alias, config) in &self.0 {
            if alias.is_empty() || alias.len() > 64 {
                return Err(ModelConfigError::Invalid {
                    alias: alias.clone(),
                    problem: "an alias name must have 1 to 64 characters".into(),
                });
            }
            config
                .validate()
                .map_err(|problem| ModelConfigError::Invalid {
                    alias: alias.clone(),
                    problem,
                })?;
        }
        Ok(())
    }
}

/// One model alias.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct AliasConfig {
    /// The wire protocol: `openai` or `anthropic`.
    pub provider: Provider,
    /// The API's base URL, e.g. `http://127.0.0.1:11434/v1`; requests go to
    /// `{base-url}/chat/completions` or `{base-url}/messages`; `http://` or `https://`.
    pub base_url: String,
    /// The provider's model name, e.g. `gpt-4o-mini` or `qwen2.5:0.5b`.
    pub model: String,
    /// The environment variable holding the API key (none: no key is sent, as for a local
    /// server). Read once, when the host starts.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Price of a million input tokens, in US dollars.
    #[serde(default)]
    pub input_usd_per_mtok: f64,
    /// Price of a million output tokens, in US dollars.
    #[serde(default)]
    pub output_usd_per_mtok: f64,
    /// Most output tokens per call; a request asking for more is clamped to this.
    #[serde(default = "default_max_output_tokens")]
    pub max_output_tokens: u32,
    /// How long one HTTP attempt may take, body included, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Requests in flight at once on this alias; more wait for a free one.
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent: usize,
    /// Retries after a `429`, a `5xx` or a connection failure.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// The first retry's delay in milliseconds when the provider sends no `Retry-After`; it
    /// doubles with each retry, up to 30 s.
    #[serde(default = "default_retry_base_ms")]
    pub retry_base_ms: u64,
    /// For `openai`: the output limit's field, `max_tokens` or `max_completion_tokens`.
    #[serde(default)]
    pub max_tokens_field: MaxTokensField,
}

fn default_max_output_tokens() -> u32 {
    1024
}
fn default_timeout_ms() -> u64 {
    60_000
}
fn default_max_concurrent() -> usize {
    64
}
fn default_max_retries() -> u32 {
    3
}
fn default_retry_base_ms() -> u64 {
    500
}

/// Most retries an alias may ask for.
const MAX_RETRIES: u32 = 10;

impl AliasConfig {
    /// An alias of `provider` at `base_url` serving `model`, with the defaults: no key, free,
    /// 1024 output tokens, 60 s, 64 at once, 3 retries.
    pub fn new(provider: Provider, base_url: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            provider,
            base_url: base_url.into(),
            model: model.into(),
            api_key_env: None,
            input_usd_per_mtok: 0.0,
            output_usd_per_mtok: 0.0,
            max_output_tokens: default_max_output_tokens(),
            timeout_ms: default_timeout_ms(),
            max_concurrent: default_max_concurrent(),
            max_retries: default_max_retries(),
            retry_base_ms: default_retry_base_ms(),
            max_tokens_field: MaxTokensField::default(),
        }
    }

    /// Checks the alias: an `http` or `https` base URL with a host, a model name, prices that
    /// are finite and not negative, limits above zero. Says what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        match reqwest::Url::parse(&self.base_url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {}
            Ok(url) => {
                return Err(format!(
                    "base-url {:?} must be an http:// or https:// URL with a host (not {}:)",
                    self.base_url,
                    url.scheme()
                ));
            }
            Err(e) => return Err(format!("base-url {:?} is not a URL: {e}", self.base_url)),
        }
        if self.model.trim().is_empty() {
            return Err("model must name the provider's model".into());
        }
        if let Some(var) = &self.api_key_env
            && (var.is_empty() || var.contains('='))
        {
            return Err(format!(
                "api-key-env {var:?} is not an environment variable name"
            ));
        }
        for (key, price) in [
            ("input-usd-per-mtok", self.input_usd_per_mtok),
            ("output-usd-per-mtok", self.output_usd_per_mtok),
        ] {
            if !price.is_finite() || price < 0.0 {
                return Err(format!(
                    "{key} must be a finite price of 0 or more, not {price}"
                ));
            }
        }
        if self.max_output_tokens == 0 {
            return Err("max-output-tokens must be above 0".into());
        }
        if self.timeout_ms == 0 {
            return Err("timeout-ms must be above 0".into());
        }
        if self.max_concurrent == 0 {
            return Err("max-concurrent must be above 0".into());
        }
        if self.max_concurrent > tokio::sync::Semaphore::MAX_PERMITS {
            return Err("max-concurrent is too large".into());
        }
        if self.max_retries > MAX_RETRIES {
            return Err(format!("max-retries must be at most {MAX_RETRIES}"));
        }
        Ok(())
    }
}

/// A model alias that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelConfigError {
    /// The alias's settings are wrong.
    #[error("model alias `{alias}`: {problem}")]
    Invalid {
        /// The alias.
        alias: String,
        /// What is wrong.
        problem: String,
    },
    /// The environment variable that should hold the alias's API key is not set.
    #[error(
        "model alias `{alias}`: the environment variable {variable} (its api-key-env) is not set"
    )]
    MissingKey {
        /// The alias.
        alias: String,
        /// The variable.
        variable: String,
    },
    /// The HTTP client cannot be built.
    #[error("cannot build the model gateway's HTTP client: {0}")]
    Client(String),
}
