//! `wasi:http/outgoing-handler` for agents and tools: every request a guest sends is checked
//! against its manifest's `allowed-outbound-hosts` and the operator's `[outbound]` list, sent by
//! the host's client (see [`crate::outbound`]) within the run's limits, and recorded as an
//! `http_request` event.
//!
//! Bodies are buffered by the host within their limits: the request's before it is sent, the
//! response's before the guest sees its head. Redirects come back to the guest as they are.
//!
//! The event of a run's request is one of
//!
//! ```json
//! {"method": "GET", "url": "https://api.example.com:443/v1/items", "status": 200,
//!  "requestBytes": 0, "responseBytes": 512, "ms": 12}
//! {"method": "GET", "url": "http://169.254.169.254:80/latest", "refused": "…"}
//! {"method": "GET", "url": "https://api.example.com:443/slow", "error": "timeout",
//!  "message": "…", "requestBytes": 0, "ms": 30000}
//! ```
//!
//! with the URL's scheme, host, port and path only (never its query), and never a header. A
//! tool's requests are checked and limited the same way under the tool's own manifest, and
//! recorded on the calling run's timeline, with the tool's name in `"tool"`.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use serde_json::json;
use wasmtime_wasi_http::{
    Error as HttpError, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks,
    WasiHttpView,
};

use super::state::HostState;
use crate::outbound::{
    ErrorKind, Exchange, OutboundError, RunOutbound, event_url_of, request_too_large,
};
use crate::sandbox::{Control, RunContext};
use crate::secrets::Secrets;

/// The outbound HTTP of one store: the `wasi:http` context and what its requests are held to.
pub(crate) struct HttpState {
    ctx: WasiHttpCtx,
    hooks: Hooks,
}

/// What a store's requests go through.
struct Hooks {
    /// The run's (or tool call's) policy and limits; none: every request is refused.
    outbound: Option<RunOutbound>,
    /// Where its events go (for a tool call, the calling run's timeline).
    events: Option<RunContext>,
    /// The tool whose call this store serves, if it does: its requests' events name it, and
    /// they are sent without giving a CPU slot back (the calling run waits on the whole call).
    tool: Option<Arc<str>>,
    /// Whose abort ends a request in flight.
    control: Option<Arc<Control>>,
    /// The host's secrets, and those the run may use.
    secrets: Secrets,
    granted: Arc<[String]>,
}

impl HttpState {
    /// No network: every request is refused (a component describing itself).
    pub(crate) fn none() -> Self {
        Self::new(None, None, None)
    }

    /// Requests under `outbound`, recorded on `events` (if given), ended by `control`'s abort.
    /// No secret is substituted.
    pub(crate) fn new(
        outbound: Option<RunOutbound>,
        events: Option<RunContext>,
        control: Option<Arc<Control>>,
    ) -> Self {
        Self {
            ctx: WasiHttpCtx::new(),
            hooks: Hooks {
                outbound,
                events,
                control,
                tool: None,
                secrets: Secrets::empty(),
                granted: Arc::from([]),
            },
        }
    }

    /// Substitutes the placeholders of `granted` (of `secrets`) in the requests' headers (and
    /// bodies, for secrets that allow it) just before they are sent, and redacts every message
    /// with `secrets`.
    pub(crate) fn with_secrets(mut self, secrets: Secrets, granted: &[String]) -> Self {
        self.hooks.secrets = secrets;
        self.hooks.granted = Arc::from(granted);
        self
    }

    /// Marks the store as serving a call of the tool `name` (see [`Hooks::tool`]).
    pub(crate) fn for_tool(mut self, name: &str) -> Self {
        self.hooks.tool = Some(Arc::from(name));
        self
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http.ctx,
            table: &mut self.table,
            hooks: &mut self.http.hooks,
        }
    }
}

type SendFuture = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), HttpError>> + Send>,
                ),
                HttpError,
            >,
        > + Send,
>;

impl WasiHttpHooks for Hooks {
    // The client writes `host` from the checked URL.
    fn set_host_header(&mut self) -> bool {
        false
    }

    // A request without a scheme is refused, never completed.
    fn default_scheme(&mut self) -> Option<http::uri::Scheme> {
        None
    }

    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> SendFuture {
        let outbound = self.outbound.clone();
        let events = self.events.clone();
        let control = self.control.clone();
        let secrets = self.secrets.clone();
        let granted = Arc::clone(&self.granted);
        let tool = self.tool.clone();
        Box::new(async move {
            let (parts, body) = request.into_parts();
            let method = parts.method.to_string();
            let Some(outbound) = outbound else {
                return Err(HttpError::HttpRequestDenied);
            };
            let started = Instant::now();
            let mut sent_bytes = 0u64;
            let checked = outbound.check(&parts.uri);
            let url = match &checked {
                Ok(checked) => checked.event_url().to_string(),
                Err(_) => event_url_of(&parts.uri),
            };
            let exchange = async {
                let checked = checked?;
                let _permit = outbound.permit().await;
                let mut body = collect(body, outbound.limits().max_request_bytes).await?;
                let mut headers = parts.headers;
                let applied = match secrets.needs_body(&granted) {
                    true => {
                        let mut bytes = body.to_vec();
                        let applied = secrets
                            .apply(&granted, &checked.target, &mut headers, Some(&mut bytes))
                            .await;
                        body = Bytes::from(bytes);
                        applied
                    }
                    false => {
                        secrets
                            .apply(&granted, &checked.target, &mut headers, None)
                            .await
                    }
                };
                applied.map_err(|e| OutboundError::new(ErrorKind::Denied, e.to_string()))?;
                sent_bytes = body.len() as u64;
                outbound.send(&checked, parts.method, headers, body).await
            };
            let aborted = async {
                match &control {
                    Some(control) => control.abort_requested().await,
                    None => std::future::pending().await,
                }
            };
            // While the request is in flight the run gives its CPU slot back, as for a model
            // call.
            let exchange = async {
                match (&events, &tool) {
                    (Some(events), None) => events.waiting(exchange).await,
                    _ => exchange.await,
                }
            };
            let result = tokio::select! {
                result = exchange => result,
                _ = aborted => Err(OutboundError::new(
                    ErrorKind::Cancelled,
                    "the run was cancelled while the request was in flight",
                )),
            };
            // Whatever a message quotes of the request, no secret's value is in it.
            let result = result.map_err(|mut e| {
                e.message = secrets.redact(&e.message).into_owned();
                e
            });
            let url = secrets.redact(&url).into_owned();
            let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            if let Some(events) = &events {
                let payload = match &result {
                    Ok(exchange) => json!({
                        "method": method, "url": url, "status": exchange.status.as_u16(),
                        "requestBytes": sent_bytes, "responseBytes": exchange.body.len(),
                        "ms": ms,
                    }),
                    Err(e) if e.kind == ErrorKind::Denied || e.kind == ErrorKind::UriInvalid => {
                        json!({ "method": method, "url": url, "refused": e.message })
                    }
                    Err(e) => json!({
                        "method": method, "url": url, "error": e.kind.as_str(),
                        "message": e.message, "requestBytes": sent_bytes, "ms": ms,
                    }),
                };
                let mut payload = payload;
                if let (Some(tool), Some(fields)) = (&tool, payload.as_object_mut()) {
                    fields.insert("tool".into(), json!(&**tool));
                }
                record(events, &payload).await;
            }
            let Exchange {
                status,
                headers,
                body,
            } = result.map_err(to_wasi)?;
            let mut response = http::Response::new(
                Full::new(body)
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            );
            *response.status_mut() = status;
            *response.headers_mut() = headers;
            let io: Box<dyn Future<Output = Result<(), HttpError>> + Send> =
                Box::new(async { Ok(()) });
            Ok((response, io))
        })
    }
}

/// Reads a request body of at most `max` bytes.
async fn collect(mut body: WasiBody, max: u64) -> Result<Bytes, OutboundError> {
    let mut bytes = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            OutboundError::new(
                ErrorKind::Internal,
                format!("cannot read the request body: {e}"),
            )
        })?;
        if let Ok(data) = frame.into_data() {
            if (bytes.len() + data.len()) as u64 > max {
                return Err(request_too_large(max));
            }
            bytes.extend_from_slice(&data);
        }
    }
    Ok(bytes.freeze())
}

/// The guest's error code for a failed request.
fn to_wasi(error: OutboundError) -> HttpError {
    match error.kind {
        ErrorKind::Denied => HttpError::HttpRequestDenied,
        ErrorKind::UriInvalid => HttpError::HttpRequestUriInvalid,
        ErrorKind::RequestBodySize => HttpError::HttpRequestBodySize(None),
        ErrorKind::ResponseBodySize => HttpError::HttpResponseBodySize(None),
        ErrorKind::Timeout => HttpError::HttpResponseTimeout,
        ErrorKind::ConnectTimeout => HttpError::ConnectionTimeout,
        ErrorKind::Connect => HttpError::ConnectionRefused,
        ErrorKind::Dns => HttpError::DnsError {
            rcode: None,
            info_code: None,
        },
        ErrorKind::Protocol => HttpError::HttpProtocolError,
        ErrorKind::Cancelled | ErrorKind::Internal => HttpError::InternalError(Some(error.message)),
    }
}

async fn record(events: &RunContext, payload: &serde_json::Value) {
    match serde_json::value::to_raw_value(payload) {
        Ok(raw) => events.record_event("http_request", Arc::from(raw)).await,
        Err(e) => tracing::warn!(error = %e, "cannot encode an http_request event"),
    }
}
