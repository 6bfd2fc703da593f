//! The HTTP routes: the embedded UI, `/api/v1/...`, `/metrics`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::middleware;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::stream::{self, Stream};
use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;

use crate::analysis;
use crate::api::report::{top_sites_by, TopSite};
use crate::api::tree::{metric_name, parse_metric};
use crate::api::{self, TimelinePoint, WindowJson};
use crate::exactness::Exactness;
use crate::profile::Metric;
use crate::timeline::Window;

use super::state::Shared;
use super::{assets, auth, metrics, query};

/// Most rows a `top`/`limit` parameter may ask for.
const MAX_ROWS: usize = 10_000;

type Sh = State<Arc<Shared>>;

/// An error answer: status and a JSON `{"error": ...}` body.
pub(super) struct ApiError(StatusCode, String);

impl ApiError {
    fn bad(msg: impl Into<String>) -> ApiError {
        ApiError(StatusCode::BAD_REQUEST, msg.into())
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&ErrorBody { error: &self.1 }).unwrap_or_default();
        (self.0, [(header::CONTENT_TYPE, "application/json")], body).into_response()
    }
}

fn json<T: Serialize>(v: &T) -> Response {
    match serde_json::to_vec(v) {
        Ok(body) => (
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            body,
        )
            .into_response(),
        Err(e) => ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Runs `f` on the blocking pool (profiles of long sessions take tens of
/// milliseconds) and answers with its JSON.
async fn compute<T, F>(shared: Arc<Shared>, f: F) -> Response
where
    T: Serialize + Send + 'static,
    F: FnOnce(&Shared) -> Result<T, ApiError> + Send + 'static,
{
    match tokio::task::spawn_blocking(move || f(&shared)).await {
        Ok(Ok(v)) => json(&v),
        Ok(Err(e)) => e.into_response(),
        Err(_) => {
            ApiError(StatusCode::INTERNAL_SERVER_ERROR, "request failed".into()).into_response()
        }
    }
}

type Params = BTreeMap<String, String>;

fn params(q: &Option<String>, allowed: &[&str]) -> Result<Params, ApiError> {
    query::parse(q.as_deref(), allowed).map_err(ApiError::bad)
}

fn window(p: &Params, name: &str, default: Option<&str>) -> Result<Window, ApiError> {
    let text = match (p.get(name), default) {
        (Some(t), _) => t.as_str(),
        (None, Some(d)) => d,
        (None, None) => {
            return Err(ApiError::bad(format!(
                "missing parameter '{name}' (e.g. {name}=30s..90s)"
            )))
        }
    };
    Window::parse(text).map_err(|e| ApiError::bad(format!("parameter '{name}': {e}")))
}

fn metric(p: &Params) -> Result<Metric, ApiError> {
    match p.get("metric") {
        None => Ok(Metric::LiveBytes),
        Some(m) => parse_metric(m).ok_or_else(|| {
            ApiError::bad(format!(
                "parameter 'metric': '{m}' is not live-bytes, alloc-bytes or allocs"
            ))
        }),
    }
}

fn rows(p: &Params, name: &str, default: usize) -> Result<usize, ApiError> {
    match p.get(name) {
        None => Ok(default),
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_ROWS).contains(n))
            .ok_or_else(|| {
                ApiError::bad(format!(
                    "parameter '{name}': '{v}' is not a number from 1 to {MAX_ROWS}"
                ))
            }),
    }
}

pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/app.js", get(|| async { assets::js(assets::APP_JS) }))
        .route("/flame.js", get(|| async { assets::js(assets::FLAME_JS) }))
        .route(
            "/timeline.js",
            get(|| async { assets::js(assets::TIMELINE_JS) }),
        )
        .route("/style.css", get(|| async { assets::css() }))
        .route("/api/v1/meta", get(meta))
        .route("/api/v1/timeline", get(timeline))
        .route("/api/v1/profile", get(profile))
        .route("/api/v1/diff", get(diff))
        .route("/api/v1/findings", get(findings))
        .route("/api/v1/top", get(top))
        .route("/api/v1/events", get(events))
        .route("/metrics", get(prometheus))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            shared.clone(),
            auth::require_token,
        ))
        .with_state(shared)
}

async fn not_found() -> Response {
    ApiError(
        StatusCode::NOT_FOUND,
        "no such page or endpoint (see /api/v1/meta)".into(),
    )
    .into_response()
}

async fn index(RawQuery(q): RawQuery) -> Response {
    if let Err(e) = params(&q, &[]) {
        return e.into_response();
    }
    assets::index()
}

async fn meta(State(shared): Sh, RawQuery(q): RawQuery) -> Response {
    compute(shared, move |s| {
        params(&q, &[])?;
        let d = s.read();
        let dropped = s.dropped.load(std::sync::atomic::Ordering::Relaxed);
        Ok(api::meta(&d.info, &d.timeline, &d.last, dropped))
    })
    .await
}

/// `/api/v1/timeline`.
#[derive(Serialize)]
struct TimelineDoc {
    points: Vec<TimelinePoint>,
}

async fn timeline(State(shared): Sh, RawQuery(q): RawQuery) -> Response {
    compute(shared, move |s| {
        params(&q, &[])?;
        Ok(TimelineDoc {
            points: api::series(&s.read().timeline),
        })
    })
    .await
}

async fn profile(State(shared): Sh, RawQuery(q): RawQuery) -> Response {
    compute(shared, move |s| {
        let p = params(&q, &["window", "metric"])?;
        let (w, m) = (window(&p, "window", Some(".."))?, metric(&p)?);
        let d = s.read();
        let profile = d.profile(w);
        let exact = Exactness::of(&profile).sites_exact();
        Ok(api::profile_doc(&profile, m, w.into(), exact))
    })
    .await
}

async fn diff(State(shared): Sh, RawQuery(q): RawQuery) -> Response {
    compute(shared, move |s| {
        let p = params(&q, &["baseline", "window", "top"])?;
        let (b, w) = (window(&p, "baseline", None)?, window(&p, "window", None)?);
        let top = rows(&p, "top", 20)?;
        let d = s.read();
        let windows = (WindowJson::from(b), WindowJson::from(w));
        let (base, win) = (d.profile(b), d.profile(w));
        let exact = Exactness::of(&base).sites_exact() && Exactness::of(&win).sites_exact();
        Ok(api::diff_doc(&base, &win, windows, exact, top))
    })
    .await
}

async fn findings(State(shared): Sh, RawQuery(q): RawQuery) -> Response {
    compute(shared, move |s| {
        let p = params(&q, &["window", "top"])?;
        let (w, top) = (window(&p, "window", Some(".."))?, rows(&p, "top", 20)?);
        let d = s.read();
        let analysis = analysis::analyze(&d.timeline, w);
        Ok(api::report_doc(&d.profile(w), &analysis, &d.timeline, top))
    })
    .await
}

/// `/api/v1/top`.
#[derive(Serialize)]
struct TopDoc {
    metric: &'static str,
    exact: bool,
    sites: Vec<TopSite>,
}

async fn top(State(shared): Sh, RawQuery(q): RawQuery) -> Response {
    compute(shared, move |s| {
        let p = params(&q, &["window", "metric", "limit"])?;
        let (w, m) = (window(&p, "window", Some(".."))?, metric(&p)?);
        let limit = rows(&p, "limit", 50)?;
        let d = s.read();
        let profile = d.profile(w);
        Ok(TopDoc {
            metric: metric_name(m),
            exact: Exactness::of(&profile).sites_exact(),
            sites: top_sites_by(&profile, m, limit),
        })
    })
    .await
}

/// Every tick as an SSE `tick` event (a timeline point); `lagged` when this
/// client fell behind and should reload the timeline.
async fn events(State(shared): Sh, RawQuery(q): RawQuery) -> Response {
    if let Err(e) = params(&q, &[]) {
        return e.into_response();
    }
    let rx = shared.ticks.subscribe();
    let s = stream::unfold(rx, |mut rx| async move {
        let ev = match rx.recv().await {
            Ok(data) => Event::default().event("tick").data(&*data),
            Err(RecvError::Lagged(n)) => Event::default().event("lagged").data(n.to_string()),
            Err(RecvError::Closed) => return None,
        };
        Some((Ok::<_, Infallible>(ev), rx))
    });
    sse(s)
}

fn sse(s: impl Stream<Item = Result<Event, Infallible>> + Send + 'static) -> Response {
    Sse::new(s)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

async fn prometheus(State(shared): Sh, RawQuery(q): RawQuery) -> Response {
    let text = tokio::task::spawn_blocking(move || {
        params(&q, &[])?;
        Ok::<_, ApiError>(metrics::render(&shared))
    })
    .await;
    match text {
        Ok(Ok(t)) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            t,
        )
            .into_response(),
        Ok(Err(e)) => e.into_response(),
        Err(_) => {
            ApiError(StatusCode::INTERNAL_SERVER_ERROR, "metrics failed".into()).into_response()
        }
    }
}
