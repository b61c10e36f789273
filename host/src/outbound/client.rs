//! The host-side client: checks a request against the policy, resolves and checks its
//! addresses, and sends it within the run's limits.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, StatusCode, Uri, header};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{AllowList, HttpLimits, OutboundConfig, Scheme, Target, addr, decide, non_public};

/// The limits each request of a run is held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendLimits {
    /// Requests in flight at once (more wait their turn).
    pub max_concurrent_requests: u32,
    /// Largest request body, in bytes.
    pub max_request_bytes: u64,
    /// Largest response body, in bytes.
    pub max_response_bytes: u64,
    /// Longest one request may take, response body included.
    pub request_timeout: Duration,
}

/// The host's outbound HTTP: the operator's list and limits, and the clients that send checked
/// requests (built on first use). Cheap to clone.
#[derive(Clone)]
pub struct Outbound {
    inner: Arc<Inner>,
}

struct Inner {
    operator: Option<AllowList>,
    limits: SendLimits,
    connect_timeout: Duration,
    clients: OnceLock<Result<Clients, String>>,
}

/// One client that connects to public addresses only, one that connects wherever a name
/// resolves (for hosts both lists name).
struct Clients {
    public_only: reqwest::Client,
    any_address: reqwest::Client,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("operator", &self.inner.operator)
            .field("limits", &self.inner.limits)
            .finish()
    }
}

impl Default for Outbound {
    fn default() -> Self {
        Self::build(None, &OutboundConfig::default())
    }
}

impl Outbound {
    /// The host's outbound HTTP as `config` sets it up; fails if the section is not valid.
    pub fn new(config: &OutboundConfig) -> Result<Self, String> {
        config.validate()?;
        Ok(Self::build(config.operator_list()?, config))
    }

    fn build(operator: Option<AllowList>, config: &OutboundConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                operator,
                limits: config.limits(),
                connect_timeout: Duration::from_millis(config.connect_timeout_ms.max(1)),
                clients: OnceLock::new(),
            }),
        }
    }

    /// The limits every request is held to.
    pub fn limits(&self) -> SendLimits {
        self.inner.limits
    }

    /// The outbound HTTP of one run (or tool call) whose manifest allows `manifest` and
    /// lowers the host's limits to `lower`.
    pub fn for_run(&self, manifest: AllowList, lower: &HttpLimits) -> RunOutbound {
        let limits = self.inner.limits.lowered(lower);
        RunOutbound {
            outbound: self.clone(),
            manifest,
            limits,
            permits: Arc::new(Semaphore::new(limits.max_concurrent_requests as usize)),
        }
    }

    fn clients(&self) -> Result<&Clients, OutboundError> {
        self.inner
            .clients
            .get_or_init(|| {
                let builder = || {
                    reqwest::Client::builder()
                        .redirect(reqwest::redirect::Policy::none())
                        .no_proxy()
                        .connect_timeout(self.inner.connect_timeout)
                        .pool_idle_timeout(Duration::from_secs(60))
                };
                let build = |b: reqwest::ClientBuilder| b.build().map_err(|e| e.to_string());
                Ok(Clients {
                    public_only: build(builder().dns_resolver(Arc::new(PublicOnly)))?,
                    any_address: build(builder())?,
                })
            })
            .as_ref()
            .map_err(|e| OutboundError::new(ErrorKind::Internal, format!("HTTP client: {e}")))
    }
}

/// A request the policy let through: where it goes, and how it is reached.
#[derive(Debug, Clone)]
pub struct Checked {
    /// Its target.
    pub target: Target,
    url: reqwest::Url,
    any_address: bool,
    event_url: String,
}

impl Checked {
    /// `scheme://host:port/path`: the request's URL without its query, as events show it.
    pub fn event_url(&self) -> &str {
        &self.event_url
    }
}

/// `scheme://authority/path` of a request URI, without user information or query, for an event
/// about a request that could not be checked.
pub fn event_url_of(uri: &Uri) -> String {
    let authority = uri
        .authority()
        .map(|a| a.as_str().rsplit_once('@').map_or(a.as_str(), |(_, h)| h))
        .unwrap_or("");
    format!(
        "{}://{authority}{}",
        uri.scheme_str().unwrap_or(""),
        uri.path()
    )
}

/// The outbound HTTP of one run: its manifest's list and its concurrency.
#[derive(Debug, Clone)]
pub struct RunOutbound {
    outbound: Outbound,
    manifest: AllowList,
    limits: SendLimits,
    permits: Arc<Semaphore>,
}

/// What a sent request came to (for its event).
#[derive(Debug, Clone)]
pub struct Exchange {
    /// The answer's status.
    pub status: StatusCode,
    /// The answer's headers.
    pub headers: HeaderMap,
    /// The answer's body.
    pub body: Bytes,
}

impl RunOutbound {
    /// The limits each request is held to.
    pub fn limits(&self) -> SendLimits {
        self.limits
    }

    /// Checks a request's URI against the policy. A URI without a scheme or a host (a relative
    /// one) is refused: it is never completed from a `Host` header.
    pub fn check(&self, uri: &Uri) -> Result<Checked, OutboundError> {
        let scheme = match uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("http") => Scheme::Http,
            Some(s) if s.eq_ignore_ascii_case("https") => Scheme::Https,
            Some(s) => {
                return Err(OutboundError::invalid(format!(
                    "scheme {s:?} is not allowed: use http or https"
                )));
            }
            None => return Err(OutboundError::invalid("the request URL has no scheme")),
        };
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or("");
        if authority.is_empty() {
            return Err(OutboundError::invalid(
                "the request URL has no host (relative URLs are refused)",
            ));
        }
        let target =
            Target::new(scheme, authority).map_err(|e| OutboundError::invalid(e.to_string()))?;
        let any_address = decide(
            self.outbound.inner.operator.as_ref(),
            &self.manifest,
            &target,
        )
        .map_err(|why| OutboundError::new(ErrorKind::Denied, why))?;
        let url = reqwest::Url::parse(&uri.to_string())
            .map_err(|e| OutboundError::invalid(format!("not a valid URL: {e}")))?;
        // The URL as the client reads it must go where the policy was asked about (a name like
        // `0x7f.1` is an address to some parsers).
        let expected = target.host.to_string();
        if url.host_str() != Some(expected.as_str())
            || url.port_or_known_default() != Some(target.port)
        {
            return Err(OutboundError::new(
                ErrorKind::Denied,
                format!(
                    "the URL's host {:?} is read as {:?} by the client: refused as ambiguous",
                    expected,
                    url.host_str().unwrap_or("")
                ),
            ));
        }
        let event_url = format!("{target}{}", uri.path());
        Ok(Checked {
            target,
            url,
            any_address,
            event_url,
        })
    }

    /// Waits for one of the run's request slots.
    pub async fn permit(&self) -> OwnedSemaphorePermit {
        match Arc::clone(&self.permits).acquire_owned().await {
            Ok(permit) => permit,
            // The semaphore is never closed.
            Err(_) => unreachable!("the run's request semaphore is never closed"),
        }
    }

    /// Sends a checked request and reads its answer, within the run's limits. Names are
    /// resolved and every address checked when connecting; redirects are not followed.
    pub async fn send(
        &self,
        checked: &Checked,
        method: Method,
        mut headers: HeaderMap,
        body: Bytes,
    ) -> Result<Exchange, OutboundError> {
        let limits = self.limits();
        if body.len() as u64 > limits.max_request_bytes {
            return Err(request_too_large(limits.max_request_bytes));
        }
        let clients = self.outbound.clients()?;
        let client = match checked.any_address {
            true => &clients.any_address,
            false => &clients.public_only,
        };
        // The client writes these from the URL and the body.
        headers.remove(header::HOST);
        headers.remove(header::CONTENT_LENGTH);
        let request = client
            .request(method, checked.url.clone())
            .headers(headers)
            .body(body)
            .timeout(limits.request_timeout);
        let mut response = request.send().await.map_err(from_reqwest)?;
        let status = response.status();
        let headers = response.headers().clone();
        let max = limits.max_response_bytes;
        if response.content_length().is_some_and(|len| len > max) {
            return Err(response_too_large(max));
        }
        let mut body = BytesMut::new();
        while let Some(chunk) = response.chunk().await.map_err(from_reqwest)? {
            if (body.len() + chunk.len()) as u64 > max {
                return Err(response_too_large(max));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Exchange {
            status,
            headers,
            body: body.freeze(),
        })
    }
}

/// The refusal of a request body over `max` bytes.
pub fn request_too_large(max: u64) -> OutboundError {
    OutboundError::new(
        ErrorKind::RequestBodySize,
        format!("the request body is larger than the limit of {max} bytes (max-request-bytes)"),
    )
}

fn response_too_large(max: u64) -> OutboundError {
    OutboundError::new(
        ErrorKind::ResponseBodySize,
        format!("the response body is larger than the limit of {max} bytes (max-response-bytes)"),
    )
}

/// What went wrong with a request, for the guest's error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The policy refused it (nothing was sent).
    Denied,
    /// Its URL is not one the host sends to.
    UriInvalid,
    /// Its body is over the limit.
    RequestBodySize,
    /// The answer's body is over the limit.
    ResponseBodySize,
    /// It took longer than the request timeout.
    Timeout,
    /// Connecting took longer than the connect timeout.
    ConnectTimeout,
    /// The connection could not be made, or broke.
    Connect,
    /// The name could not be resolved.
    Dns,
    /// The answer was not valid HTTP.
    Protocol,
    /// The run was cancelled meanwhile.
    Cancelled,
    /// The host could not send it.
    Internal,
}

impl ErrorKind {
    /// The kind as events show it.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Denied => "denied",
            ErrorKind::UriInvalid => "invalid-url",
            ErrorKind::RequestBodySize => "request-too-large",
            ErrorKind::ResponseBodySize => "response-too-large",
            ErrorKind::Timeout => "timeout",
            ErrorKind::ConnectTimeout => "connect-timeout",
            ErrorKind::Connect => "connection",
            ErrorKind::Dns => "dns",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Internal => "internal",
        }
    }
}

/// Why a request got no answer.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct OutboundError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// What happened.
    pub message: String,
}

impl OutboundError {
    /// An error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::UriInvalid, message)
    }
}

/// A name that resolved to non-public addresses only, refused when connecting.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Blocked(String);

fn from_reqwest(error: reqwest::Error) -> OutboundError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    let mut text = String::new();
    while let Some(cause) = source {
        if let Some(blocked) = cause.downcast_ref::<Blocked>() {
            return OutboundError::new(ErrorKind::Denied, blocked.0.clone());
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    let kind = if error.is_timeout() && error.is_connect() {
        ErrorKind::ConnectTimeout
    } else if error.is_timeout() || text.contains("timed out") {
        ErrorKind::Timeout
    } else if text.contains("dns error") || text.contains("failed to lookup") {
        ErrorKind::Dns
    } else if error.is_connect() || error.is_request() || error.is_body() {
        ErrorKind::Connect
    } else {
        ErrorKind::Protocol
    };
    OutboundError::new(kind, text)
}

/// Resolves names with the system resolver and keeps only public addresses; a name with none
/// is refused.
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = found
                .iter()
                .filter(|a| addr::classify(a.ip()).is_none())
                .copied()
                .collect();
            if public.is_empty()
                && let Some(first) = found.first()
                && let Some(class) = addr::classify(first.ip())
            {
                let what = format!("{host} resolves to {}, which", first.ip());
                return Err(Box::new(Blocked(non_public(&what, class, true))) as _);
            }
            let addrs: reqwest::dns::Addrs = Box::new(public.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(patterns: &[&str], uri: &str) -> Result<Checked, OutboundError> {
        let list = AllowList::parse(patterns).expect("patterns");
        let uri: Uri = uri.parse().expect("uri");
        Outbound::default()
            .for_run(list, &HttpLimits::default())
            .check(&uri)
    }

    #[test]
    fn urls_without_a_host_or_with_a_foreign_scheme_are_refused() {
        let any = ["*://*:*"];
        for uri in [
            "/relative",
            "ftp://example.com/",
            "http://user:pw@example.com/",
        ] {
            let error = check(&any, uri).expect_err(uri);
            assert_eq!(error.kind, ErrorKind::UriInvalid, "{uri}: {error}");
        }
    }

    #[test]
    fn a_host_the_client_would_read_as_an_address_is_refused() {
        // `0x7f.1` is a name to the policy and 127.0.0.1 to a URL parser.
        let error = check(&["http://*"], "http://0x7f.1/").expect_err("refused");
        assert_eq!(error.kind, ErrorKind::Denied, "{error}");
        let ok = check(&["http://*"], "http://Example.COM/a/b?q=secret").expect("allowed");
        assert_eq!(ok.event_url(), "http://example.com:80/a/b");
    }
}
