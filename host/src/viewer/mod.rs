//! The run viewer: one page, served by the host itself at `/`, that shows runs and their event
//! timelines (a model-backed run's as its conversation, with tokens and cost per model call),
//! live long-lived agents (with a chat panel on a long-lived agent's run page: the messages
//! posted to it, its replies, and a form to post one), the loaded agent types and the queue, and
//! can enqueue, cancel and stop. Its three files are compiled into the binary; it needs nothing
//! else. Whatever a run recorded is put into the page as text, never as markup.
//!
//! The page holds no data of its own: everything comes from the HTTP API, which enforces
//! `DROVER_API_TOKEN` and the `[[api-tokens]]` (the page asks for the token, or takes it once
//! from `/?token=…`, then drops it from the address; it keeps the token for the tab only, in
//! `sessionStorage`). With a tenant's token it shows that tenant's work only, and no host-wide
//! counts (which need `admin`).
//!
//! Every file is served with a strict `Content-Security-Policy` (scripts, styles and requests
//! from this host only; no inline script or style; no framing), `X-Frame-Options: DENY`,
//! `X-Content-Type-Options: nosniff` and `Referrer-Policy: no-referrer`.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

const INDEX: &str = include_str!("assets/index.html");
const APP: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/style.css");

/// The viewer's routes: `/`, `/assets/app.js`, `/assets/style.css`.
pub fn router() -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/assets/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP) }),
        )
        .route(
            "/assets/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
}

/// What the page may load and do: its own script, style and API, the inline icon, nothing
/// else; and no page may frame it.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
}
