//! OAuth2 client-credentials secrets: an access token fetched on first use from the secret's
//! token endpoint, for its scope, and kept until shortly before it expires.
//!
//! One fetch at a time per secret: callers that need the token while it is being fetched wait
//! for that fetch and share its token. A failed fetch is an error for the caller that waited
//! for it and is not kept; the next caller tries again.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use oauth2::basic::BasicClient;
use oauth2::{
    AsyncHttpClient, ClientId, ClientSecret, HttpRequest, HttpResponse, RequestTokenError, Scope,
    TokenResponse, TokenUrl,
};

use super::{Value, check_value};

/// Largest token endpoint answer read, in bytes.
const MAX_TOKEN_RESPONSE_BYTES: usize = 64 << 10;

/// How long a token whose answer gave no `expires_in` is kept.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(60);

/// Longest a token is given up before it expires.
const MAX_MARGIN: Duration = Duration::from_secs(30);

/// A token kept for reuse.
#[derive(Debug)]
pub(super) struct Cached {
    /// The access token.
    pub(super) token: Value,
    /// When it is fetched again.
    pub(super) refresh_at: Instant,
}

/// Where a secret's tokens come from, and the one kept.
pub(super) struct TokenSource {
    /// What tokens are fetched with.
    pub(super) http: reqwest::Client,
    pub(super) client_id: String,
    pub(super) client_secret: Value,
    pub(super) token_url: TokenUrl,
    pub(super) scopes: Vec<String>,
    pub(super) audience: Option<String>,
    pub(super) cached: tokio::sync::Mutex<Option<Cached>>,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Neither the client's credentials nor the token.
        f.debug_struct("TokenSource")
            .field("token_url", &self.token_url.as_str())
            .field("scopes", &self.scopes)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl TokenSource {
    /// Asks the token endpoint for a token; returns it and when to fetch the next one. Says
    /// what went wrong otherwise (the caller redacts the message).
    pub(super) async fn fetch(&self) -> Result<Cached, String> {
        let client = BasicClient::new(ClientId::new(self.client_id.clone()))
            .set_client_secret(ClientSecret::new(self.client_secret.0.to_string()))
            .set_token_uri(self.token_url.clone());
        let mut request = client
            .exchange_client_credentials()
            .add_scopes(self.scopes.iter().cloned().map(Scope::new));
        if let Some(audience) = &self.audience {
            request = request.add_extra_param("audience", audience.clone());
        }
        let started = Instant::now();
        let response = request
            .request_async(&Http(&self.http))
            .await
            .map_err(|e| match e {
                RequestTokenError::ServerResponse(error) => {
                    format!("the token endpoint refused: {error}")
                }
                RequestTokenError::Request(error) => error.0,
                RequestTokenError::Parse(error, _) => format!(
                    "the token endpoint's answer is not a token response (at `{}`)",
                    error.path()
                ),
                RequestTokenError::Other(problem) => format!("the token endpoint: {problem}"),
            })?;
        let token = response.access_token().secret();
        check_value(token).map_err(|problem| format!("the access token: {problem}"))?;
        let lifetime = response.expires_in().unwrap_or(DEFAULT_LIFETIME);
        let margin = (lifetime / 10).min(MAX_MARGIN);
        Ok(Cached {
            token: Value(token.as_str().into()),
            refresh_at: started + lifetime.saturating_sub(margin),
        })
    }
}

/// The host's HTTP client, as the `oauth2` crate calls one.
struct Http<'a>(&'a reqwest::Client);

/// A token request that could not be sent or answered.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct HttpError(String);

impl<'c> AsyncHttpClient<'c> for Http<'_> {
    type Error = HttpError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let cannot = |e: reqwest::Error| {
                HttpError(format!(
                    "cannot reach the token endpoint: {}",
                    e.without_url()
                ))
            };
            let mut response = self
                .0
                .request(parts.method, parts.uri.to_string())
                .headers(parts.headers)
                .body(body)
                .send()
                .await
                .map_err(cannot)?;
            let mut bytes = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(cannot)? {
                if bytes.len() + chunk.len() > MAX_TOKEN_RESPONSE_BYTES {
                    return Err(HttpError(format!(
                        "the token endpoint's answer is larger than {MAX_TOKEN_RESPONSE_BYTES} \
                         bytes"
                    )));
                }
                bytes.extend_from_slice(&chunk);
            }
            let mut answer = http::Response::new(bytes);
            *answer.status_mut() = response.status();
            *answer.headers_mut() = std::mem::take(response.headers_mut());
            Ok(answer)
        })
    }
}
