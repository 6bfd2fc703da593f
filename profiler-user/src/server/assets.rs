//! The web UI (`web/` at the workspace root), embedded at build time: the
//! binary alone serves it, offline, without any CDN.

use axum::http::header;
use axum::response::{IntoResponse, Response};

const INDEX_HTML: &str = include_str!("../../../web/index.html");
const STYLE_CSS: &str = include_str!("../../../web/style.css");
pub(super) const APP_JS: &str = include_str!("../../../web/app.js");
pub(super) const FLAME_JS: &str = include_str!("../../../web/flame.js");
pub(super) const TIMELINE_JS: &str = include_str!("../../../web/timeline.js");

/// Asset headers: no caching (a rebuilt binary serves a new UI), and no
/// resource from anywhere else.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-store"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:",
            ),
        ],
        body,
    )
        .into_response()
}

pub(super) fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

pub(super) fn css() -> Response {
    asset("text/css; charset=utf-8", STYLE_CSS)
}

pub(super) fn js(body: &'static str) -> Response {
    asset("text/javascript; charset=utf-8", body)
}
