//! The HTTP endpoints (`/metrics`, `/healthz`, `/readyz` and the JSON API:
//! `/api/v1/retention`, `/api/v1/funnels`, `/api/v1/activity`) and the
//! listener that serves them whatever its clients do.
//!
//! The listener is the only part of cohortflow a stranger can reach, so it
//! bounds what a client can hold: a request's headers must arrive within
//! [`Limits::header_read_timeout`], and at most [`Limits::max_connections`]
//! are open at once. The last eighth of those slots is kept for the probes
//! and scrapes that come while the rest are taken: a connection in one of
//! them must send its request within a second and is closed after the
//! answer. Past the cap a connection is closed as soon as it is accepted,
//! so that neither file descriptors nor the listen backlog run out and
//! `/healthz` keeps answering. On shutdown the server stops accepting,
//! lets requests in flight finish for at most the drain time it is given,
//! then drops every connection left.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use prometheus::Registry;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::Published;
use super::metrics::render;
use crate::engine::figures::{Split, ValueRows};
use crate::ratelimit::LogLimiter;

/// How long a connection in a slot kept for probes may take to send its
/// request headers: probes and scrapes send theirs at once.
const PROBE_HEADER_TIMEOUT: Duration = Duration::from_secs(1);

/// What one client can hold of the listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once, the slots kept for probes included.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers, on a new
    /// connection or a kept-alive one.
    pub header_read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_connections: 256, header_read_timeout: Duration::from_secs(10) }
    }
}

impl Limits {
    /// The most connections accepted at once.
    pub const MOST_CONNECTIONS: usize = 65_536;

    /// The slots kept for probes: an eighth, at least one.
    pub fn reserved(&self) -> usize {
        (self.max_connections / 8).max(1)
    }
}

#[derive(Clone)]
struct AppState {
    registry: Registry,
    published: Arc<Published>,
}

/// The router for all endpoints.
pub fn router(registry: Registry, published: Arc<Published>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/api/v1/retention", get(retention))
        .route("/api/v1/funnels", get(funnels))
        .route("/api/v1/activity", get(activity))
        .route("/api/v1/lifecycle", get(lifecycle))
        .route("/api/v1/stickiness", get(stickiness))
        .route("/api/v1/trends", get(trends))
        .route("/api/v1/revenue", get(revenue))
        .with_state(AppState { registry, published })
}

async fn metrics(State(state): State<AppState>) -> Response {
    let body = render(&state.registry);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.published.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

/// The query of `/api/v1/retention`, `/api/v1/funnels` and `/api/v1/trends`.
#[derive(Debug, serde::Deserialize)]
struct BreakdownQuery {
    /// A `[[breakdown]]` name: the figures split by its values.
    breakdown: Option<String>,
}

/// A 400 answer saying why.
fn bad_request(error: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": error }))).into_response()
}

/// The values of breakdown `name` among `splits`, if the figure has it.
fn split_of<'a, T>(splits: &'a [Split<T>], name: &str) -> Option<&'a [ValueRows<T>]> {
    splits.iter().find(|s| s.breakdown == name).map(|s| s.values.as_slice())
}

/// The answer of `?breakdown=name` on an endpoint of `what` (its key and,
/// in errors, its kind): per table split by it, its `head` fields and its
/// values' rows under `rows`; a 400 when none is split by it.
fn by_breakdown<'a, T: serde::Serialize + 'a>(
    watermark_ms: Option<i64>,
    name: &str,
    (what, kind): (&str, &str),
    rows: &str,
    tables: impl Iterator<Item = (serde_json::Value, &'a [Split<T>])>,
) -> Response {
    let tables: Vec<_> = tables
        .filter_map(|(mut head, splits)| {
            let values: Vec<_> =
                split_of(splits, name)?.iter().map(|v| json!({ "value": v.value, rows: v.rows })).collect();
            head["values"] = json!(values);
            Some(head)
        })
        .collect();
    if tables.is_empty() {
        return bad_request(format!("no {kind} is broken down by `{name}`"));
    }
    Json(json!({ "watermark_ms": watermark_ms, "breakdown": name, what: tables })).into_response()
}

async fn retention(State(state): State<AppState>, Query(q): Query<BreakdownQuery>) -> Response {
    let f = state.published.figures();
    let Some(name) = q.breakdown else {
        return Json(json!({ "watermark_ms": f.watermark_ms, "retention": f.retention })).into_response();
    };
    let tables = f.retention.iter().map(|t| {
        let head = json!({ "name": t.name, "granularity": t.granularity, "mode": t.mode, "periods": t.periods });
        (head, t.breakdowns.as_slice())
    });
    by_breakdown(f.watermark_ms, &name, ("retention", "retention definition"), "cohorts", tables)
}

async fn funnels(State(state): State<AppState>, Query(q): Query<BreakdownQuery>) -> Response {
    let f = state.published.figures();
    let Some(name) = q.breakdown else {
        return Json(json!({ "watermark_ms": f.watermark_ms, "funnels": f.funnels })).into_response();
    };
    let tables = f.funnels.iter().map(|t| (json!({ "name": t.name, "steps": t.steps }), t.breakdowns.as_slice()));
    by_breakdown(f.watermark_ms, &name, ("funnels", "funnel"), "entries", tables)
}

/// The query of `/api/v1/activity`.
#[derive(Debug, serde::Deserialize)]
struct ActivityQuery {
    /// `day`, `week` or `month`: that table alone.
    granularity: Option<String>,
    /// A breakdown of `activity_breakdowns`: new and active users by day,
    /// split by its values.
    breakdown: Option<String>,
}

async fn activity(State(state): State<AppState>, Query(q): Query<ActivityQuery>) -> Response {
    let f = state.published.figures();
    if let Some(name) = q.breakdown {
        if q.granularity.as_deref().is_some_and(|g| g != "day") {
            return bad_request("activity breakdowns are by day: leave granularity out or set it to day".into());
        }
        let Some(values) = split_of(&f.activity_breakdowns, &name) else {
            return bad_request(format!("`{name}` is not one of activity_breakdowns"));
        };
        return Json(json!({ "watermark_ms": f.watermark_ms, "breakdown": name, "values": values })).into_response();
    }
    let rows = match q.granularity.as_deref() {
        None => {
            return Json(json!({
                "watermark_ms": f.watermark_ms,
                "activity": f.activity,
                "weeks": f.weeks,
                "months": f.months,
            }))
            .into_response();
        }
        Some("day") => json!(f.activity),
        Some("week") => json!(f.weeks),
        Some("month") => json!(f.months),
        Some(other) => return bad_request(format!("granularity `{other}` is not one of day, week, month")),
    };
    Json(json!({ "watermark_ms": f.watermark_ms, "granularity": q.granularity, "rows": rows })).into_response()
}

async fn lifecycle(State(state): State<AppState>) -> Json<serde_json::Value> {
    let f = state.published.figures();
    Json(json!({ "watermark_ms": f.watermark_ms, "lifecycle": f.lifecycle }))
}

async fn revenue(State(state): State<AppState>) -> Json<serde_json::Value> {
    let f = state.published.figures();
    let Some(r) = &f.revenue else {
        return Json(json!({ "watermark_ms": f.watermark_ms, "revenue": null }));
    };
    let money = |units: i128| crate::engine::revenue::decimal_text(units, r.scale);
    let days: Vec<_> = r
        .rows
        .iter()
        .map(|row| {
            json!({
                "date": row.date,
                "revenue": money(row.units),
                "paying_users": row.paying_users,
                "new_paying_users": row.new_paying_users,
            })
        })
        .collect();
    let rejected: serde_json::Map<String, serde_json::Value> = crate::engine::revenue::AmountReject::ALL
        .iter()
        .zip(r.rejected)
        .map(|(reason, n)| (reason.as_str().to_owned(), json!(n)))
        .collect();
    let cohorts: Vec<_> = r
        .cohorts
        .iter()
        .map(|t| {
            let rows: Vec<_> = t
                .rows
                .iter()
                .map(|row| {
                    let ltv: Vec<String> = row.units.iter().map(|&u| money(u)).collect();
                    json!({ "date": row.date, "revenue": ltv, "paying_users": row.paying_users })
                })
                .collect();
            json!({ "retention": t.name, "days": t.days, "cohorts": rows })
        })
        .collect();
    Json(json!({
        "watermark_ms": f.watermark_ms,
        "revenue": {
            "days": days,
            "ltv": cohorts,
            "revenue_total": money(r.paid_units),
            "refunds_total": money(r.refunded_units),
            "amounts_rejected": rejected,
        },
    }))
}

async fn trends(State(state): State<AppState>, Query(q): Query<BreakdownQuery>) -> Response {
    let f = state.published.figures();
    let Some(name) = q.breakdown else {
        return Json(json!({ "watermark_ms": f.watermark_ms, "trends": f.trends })).into_response();
    };
    let tables = f.trends.iter().map(|t| (json!({ "name": t.name }), t.breakdowns.as_slice()));
    by_breakdown(f.watermark_ms, &name, ("trends", "trend"), "rows", tables)
}

async fn stickiness(State(state): State<AppState>) -> Json<serde_json::Value> {
    let f = state.published.figures();
    Json(json!({ "watermark_ms": f.watermark_ms, "stickiness": f.stickiness }))
}

/// Serves `router` on `listener` within `limits` until `shutdown` is
/// cancelled; then lets requests in flight finish for at most `drain` and
/// drops every connection still open. Connection counts go to
/// `published`'s HTTP statistics.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    published: Arc<Published>,
    shutdown: CancellationToken,
    drain: Duration,
) -> std::io::Result<()> {
    let reserved = limits.reserved();
    let general = Arc::new(Semaphore::new(limits.max_connections.saturating_sub(reserved)));
    let probes = Arc::new(Semaphore::new(reserved));
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let stats = &published.http;
    let accept_errors = LogLimiter::new(Duration::from_secs(10));
    loop {
        let stream = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, most likely: the connections
                    // already open still get served meanwhile.
                    if let Some(held_back) = accept_errors.check("accept") {
                        tracing::warn!(error = %e, held_back, "cannot accept an HTTP connection");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        while connections.try_join_next().is_some() {}
        let (permit, timeout, keep_alive) = if let Ok(p) = general.clone().try_acquire_owned() {
            (p, limits.header_read_timeout, true)
        } else if let Ok(p) = probes.clone().try_acquire_owned() {
            (p, PROBE_HEADER_TIMEOUT.min(limits.header_read_timeout), false)
        } else {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let mut builder = http1::Builder::new();
        builder.timer(TokioTimer::new()).header_read_timeout(timeout).keep_alive(keep_alive);
        let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(router.clone()));
        let conn = graceful.watch(conn);
        let open = OpenConnection::new(published.clone(), permit);
        connections.spawn(async move {
            // A client that goes away or times out is no error of ours.
            let _ = conn.await;
            drop(open);
        });
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown()).await.is_err() {
        tracing::debug!(left = connections.len(), "HTTP connections dropped at the drain deadline");
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// One open connection: counted while it lives, its slot given back when
/// it ends, however it ends (an abort at the drain deadline included).
struct OpenConnection {
    published: Arc<Published>,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl OpenConnection {
    fn new(published: Arc<Published>, slot: tokio::sync::OwnedSemaphorePermit) -> Self {
        published.http.open.fetch_add(1, Ordering::Relaxed);
        OpenConnection { published, _slot: slot }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.published.http.open.fetch_sub(1, Ordering::Relaxed);
    }
}
