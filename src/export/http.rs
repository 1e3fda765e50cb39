//! The HTTP endpoints: `/metrics`, `/healthz`, `/readyz` and the JSON API
//! (`/api/v1/retention`, `/api/v1/funnels`, `/api/v1/activity`).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use prometheus::Registry;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::Published;
use super::metrics::render;

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

async fn retention(State(state): State<AppState>) -> Json<serde_json::Value> {
    let f = state.published.figures();
    Json(json!({ "watermark_ms": f.watermark_ms, "retention": f.retention }))
}

async fn funnels(State(state): State<AppState>) -> Json<serde_json::Value> {
    let f = state.published.figures();
    Json(json!({ "watermark_ms": f.watermark_ms, "funnels": f.funnels }))
}

async fn activity(State(state): State<AppState>) -> Json<serde_json::Value> {
    let f = state.published.figures();
    Json(json!({ "watermark_ms": f.watermark_ms, "activity": f.activity }))
}

/// Serves `router` on `listener` until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, router: Router, shutdown: CancellationToken) -> std::io::Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(async move { shutdown.cancelled().await }).await
}
