//! A small blocking HTTP client over `wasi:http/outgoing-handler`.
//!
//! ```ignore
//! use drover_sdk::http::{self, Request};
//!
//! let response = http::send(&Request::get("https://api.example.com/items"))?;
//! assert_eq!(response.status, 200);
//! ```
//!
//! The host decides where a request may go (the agent's `allowed-outbound-hosts`, and the
//! operator's list), and holds it to its limits: a refused request fails with
//! [`Error::Denied`] and nothing is sent. Redirects are not followed: a `3xx` answer is
//! returned as it is. [`start`] sends a request without waiting for its answer, so that several
//! can be in flight at once.

use std::fmt;

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, FutureIncomingResponse, IncomingBody, Method, OutgoingBody, OutgoingRequest,
    Scheme,
};
use wasip2::io::streams::StreamError;

/// An HTTP request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `POST`, … (any token).
    pub method: String,
    /// An absolute `http` or `https` URL.
    pub url: String,
    /// Header names and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body (empty: none).
    pub body: Vec<u8>,
}

impl Request {
    /// A request with `method` to `url`, no headers and no body.
    pub fn new(method: impl Into<String>, url: impl Into<String>) -> Self {
        Self {
            method: method.into(),
            url: url.into(),
            ..Self::default()
        }
    }

    /// A `GET` of `url`.
    pub fn get(url: impl Into<String>) -> Self {
        Self::new("GET", url)
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }
}

/// An HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header names and values, in order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (case-insensitive), as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The URL is not an absolute `http` or `https` URL.
    InvalidUrl(String),
    /// A method, header name or header value cannot be sent.
    InvalidRequest(String),
    /// The host refused to send the request (its policy); nothing was sent.
    Denied,
    /// The request body is larger than the host allows.
    RequestTooLarge,
    /// The answer's body is larger than the host allows.
    ResponseTooLarge,
    /// The request took longer than the host allows.
    Timeout,
    /// Any other failure, with the host's error code.
    Failed(String),
}

impl Error {
    /// A short machine-readable name of the error.
    pub fn tag(&self) -> &'static str {
        match self {
            Error::InvalidUrl(_) => "InvalidUrl",
            Error::InvalidRequest(_) => "InvalidRequest",
            Error::Denied => "Denied",
            Error::RequestTooLarge => "RequestTooLarge",
            Error::ResponseTooLarge => "ResponseTooLarge",
            Error::Timeout => "Timeout",
            Error::Failed(_) => "Failed",
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidUrl(why) => write!(f, "invalid URL: {why}"),
            Error::InvalidRequest(why) => write!(f, "invalid request: {why}"),
            Error::Denied => f.write_str("the host refused the request"),
            Error::RequestTooLarge => f.write_str("the request body is too large"),
            Error::ResponseTooLarge => f.write_str("the response body is too large"),
            Error::Timeout => f.write_str("the request timed out"),
            Error::Failed(code) => write!(f, "the request failed: {code}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<ErrorCode> for Error {
    fn from(code: ErrorCode) -> Self {
        match code {
            ErrorCode::HttpRequestDenied => Error::Denied,
            ErrorCode::HttpRequestBodySize(_) => Error::RequestTooLarge,
            ErrorCode::HttpResponseBodySize(_) => Error::ResponseTooLarge,
            ErrorCode::HttpResponseTimeout | ErrorCode::ConnectionTimeout => Error::Timeout,
            ErrorCode::HttpRequestUriInvalid => Error::InvalidUrl("refused by the host".into()),
            other => Error::Failed(format!("{other:?}")),
        }
    }
}

/// Sends `request` and waits for the whole answer.
pub fn send(request: &Request) -> Result<Response, Error> {
    start(request)?.wait()
}

/// A request sent, its answer not yet read.
#[derive(Debug)]
pub struct Pending {
    future: FutureIncomingResponse,
}

/// Sends `request` without waiting for the answer.
pub fn start(request: &Request) -> Result<Pending, Error> {
    let (scheme, authority, path) = split_url(&request.url)?;
    let headers = Fields::new();
    for (name, value) in &request.headers {
        headers
            .append(name, value.as_bytes())
            .map_err(|e| Error::InvalidRequest(format!("header {name:?}: {e:?}")))?;
    }
    let outgoing = OutgoingRequest::new(headers);
    let method = match request.method.to_ascii_uppercase().as_str() {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "OPTIONS" => Method::Options,
        "PATCH" => Method::Patch,
        _ => Method::Other(request.method.clone()),
    };
    let invalid = |what: &str| Error::InvalidRequest(format!("{what} cannot be sent"));
    outgoing
        .set_method(&method)
        .map_err(|()| invalid("the method"))?;
    outgoing
        .set_scheme(Some(&scheme))
        .map_err(|()| invalid("the scheme"))?;
    outgoing
        .set_authority(Some(authority))
        .map_err(|()| Error::InvalidUrl(format!("{authority:?} is not a valid host")))?;
    outgoing
        .set_path_with_query(Some(path))
        .map_err(|()| Error::InvalidUrl(format!("{path:?} is not a valid path")))?;
    let body = outgoing.body().map_err(|()| invalid("the body"))?;
    let future = outgoing_handler::handle(outgoing, None)?;
    // A body the host stops reading (a refused request) is not an error here: the answer says
    // what happened.
    if let Ok(stream) = body.write() {
        for chunk in request.body.chunks(4096) {
            if stream.blocking_write_and_flush(chunk).is_err() {
                break;
            }
        }
    }
    let _ = OutgoingBody::finish(body, None);
    Ok(Pending { future })
}

impl Pending {
    /// Waits for the answer and reads its body.
    pub fn wait(self) -> Result<Response, Error> {
        let response = loop {
            match self.future.get() {
                Some(result) => break result,
                None => self.future.subscribe().block(),
            }
        };
        let response =
            response.map_err(|()| Error::Failed("the answer was already taken".into()))??;
        let status = response.status();
        let headers = response.headers().entries().into_iter().collect::<Vec<_>>();
        let incoming = response
            .consume()
            .map_err(|()| Error::Failed("the body was already taken".into()))?;
        let body = read_body(&incoming)?;
        drop(response);
        let _ = IncomingBody::finish(incoming);
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

fn read_body(incoming: &IncomingBody) -> Result<Vec<u8>, Error> {
    let stream = incoming
        .stream()
        .map_err(|()| Error::Failed("the body stream was already taken".into()))?;
    let mut body = Vec::new();
    loop {
        match stream.blocking_read(64 << 10) {
            Ok(chunk) => body.extend_from_slice(&chunk),
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => {
                return Err(Error::Failed(e.to_debug_string()));
            }
        }
    }
    Ok(body)
}

/// `(scheme, authority, path-with-query)` of an absolute URL; the fragment is dropped.
fn split_url(url: &str) -> Result<(Scheme, &str, &str), Error> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| Error::InvalidUrl(format!("{url:?} is not an absolute URL")))?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => {
            return Err(Error::InvalidUrl(format!(
                "scheme {other:?}: only http and https"
            )));
        }
    };
    let rest = rest.split_once('#').map_or(rest, |(before, _)| before);
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.is_empty() {
        return Err(Error::InvalidUrl(format!("{url:?} has no host")));
    }
    Ok((scheme, authority, if path.is_empty() { "/" } else { path }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_split() {
        let (scheme, authority, path) =
            split_url("https://api.example.com:8443/a?b=1#c").expect("valid");
        assert!(matches!(scheme, Scheme::Https));
        assert_eq!((authority, path), ("api.example.com:8443", "/a?b=1"));
        let (_, authority, path) = split_url("http://127.0.0.1:9000").expect("valid");
        assert_eq!((authority, path), ("127.0.0.1:9000", "/"));
        assert!(split_url("/relative").is_err());
        assert!(split_url("ftp://x/").is_err());
        assert!(split_url("http:///path").is_err());
    }
}
