//! `/`, `/healthz` and `/metrics`: what a load balancer or a scraper asks, without a token.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::api::types::{HealthAnswer, ServerInfo};
use crate::api::AppState;

pub(super) async fn root() -> Json<ServerInfo> {
    Json(ServerInfo { name: "eserveless".to_string(), version: env!("CARGO_PKG_VERSION").to_string() })
}

pub(super) async fn healthz(State(s): State<AppState>) -> Response {
    let h = s.platform.health().await;
    let status = if h.ok() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = HealthAnswer {
        status: if h.ok() { "ok" } else { "degraded" }.to_string(),
        docker: h.docker.unwrap_or_else(|| "ok".to_string()),
        storage: h.storage.unwrap_or_else(|| "ok".to_string()),
    };
    (status, Json(body)).into_response()
}

pub(super) async fn metrics_text(State(s): State<AppState>) -> Response {
    let text = s.platform.metrics_text();
    ([(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response()
}
