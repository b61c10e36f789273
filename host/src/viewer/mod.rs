//! The run viewer: one page, served by the host itself at `/`, that shows runs and their event
//! timelines, live long-lived agents, the loaded agent types and the queue, and can enqueue,
//! cancel and stop. Its three files are compiled into the binary; it needs nothing else.
//!
//! The page holds no data of its own: everything comes from the HTTP API, which enforces
//! `DROVER_API_TOKEN` (the page asks for the token, or takes it once from `/?token=…`).

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

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}
