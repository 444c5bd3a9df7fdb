//! The HTTP API: the axum router, request parsing into typed requests, and JSON answers.
//! Errors all leave through [`ApiError`].

mod console;
mod deployments;
pub(crate) mod error;
mod functions;
mod health;
pub mod metrics;
mod projects;
mod secrets;
mod tokens;
pub mod types;
mod users;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, delete, get, post};
use axum::Router;
use serde_json::Value;

use crate::api::deployments::{list_deployments, rollback, show_deployment};
use crate::api::error::ApiError;
use crate::api::functions::{function_logs, function_run, function_runs, start_run};
use crate::api::health::{healthz, metrics_text, root};
use crate::api::metrics::{function_metrics, MetricsHistory};
use crate::api::projects::{create_project, delete_project, list_projects, show_project, upload_project};
use crate::api::secrets::{delete_secret, list_secrets, rotate_invoke_key, set_secrets};
use crate::api::tokens::{create_token, list_tokens, revoke_token};
use crate::api::users::{create_user, delete_user, list_users, whoami};
use crate::dataplane::gateway::Gateway;
use crate::engine::{EngineError, Platform};

/// Largest management API body.
pub const MAX_API_BODY: usize = 64 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub platform: Arc<Platform>,
    pub gateway: Gateway,
    /// The last hour of each function's series, for the console's charts.
    pub history: Arc<MetricsHistory>,
}

/// The whole router: API, gateway and fallbacks.
pub fn app(platform: Arc<Platform>) -> Router {
    let gateway = platform.gateway();
    let history = Arc::new(MetricsHistory::new(metrics::POINTS, chrono::Utc::now()));
    MetricsHistory::spawn_sampler(&history, &platform);
    let state = AppState { platform, gateway, history };
    // Every /api route needs a token; the layer runs only for matched routes, so unknown
    // /api paths still answer 404.
    let api = Router::new()
        .route("/api/whoami", get(whoami))
        .route("/api/users", get(list_users).post(create_user))
        .route("/api/users/{name}", delete(delete_user))
        .route("/api/tokens", get(list_tokens).post(create_token))
        .route("/api/tokens/{id}", delete(revoke_token))
        .route("/api/projects", get(list_projects).post(create_project))
        .route("/api/projects/{name}", get(show_project).delete(delete_project))
        .route("/api/projects/{name}/deployments", get(list_deployments))
        .route("/api/projects/{name}/uploads", post(upload_project))
        .route("/api/projects/{name}/deployments/{id}", get(show_deployment))
        .route("/api/projects/{name}/rollback", post(rollback))
        .route("/api/projects/{name}/functions/{function}/logs", get(function_logs))
        .route("/api/projects/{name}/functions/{function}/runs", get(function_runs).post(start_run))
        .route("/api/projects/{name}/functions/{function}/runs/{run}", get(function_run))
        .route("/api/projects/{name}/functions/{function}/metrics", get(function_metrics))
        .route("/api/projects/{name}/secrets", get(list_secrets).post(set_secrets))
        .route("/api/projects/{name}/secrets/{secret}", delete(delete_secret))
        .route("/api/projects/{name}/invoke-key", post(rotate_invoke_key))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/", get(root))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .route("/ui", get(console::ui_root))
        .route("/ui/", get(console::ui_index))
        .route("/ui/{*file}", get(console::ui_file))
        .merge(api)
        .route("/invoke/{project}/{function}", any(invoke))
        // `{*path}` matches no empty rest: a trailing slash is a path of its own.
        .route("/invoke/{project}/{function}/", any(invoke))
        .route("/invoke/{project}/{function}/{*path}", any(invoke))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// Authenticates the request's bearer token and hands the [`Principal`] to the handler.
async fn require_token(State(s): State<AppState>, mut req: Request, next: Next) -> Response {
    let header = req.headers().get(axum::http::header::AUTHORIZATION).map(|v| v.as_bytes().to_vec());
    match s.platform.authenticate(header).await {
        Ok(who) => {
            req.extensions_mut().insert(who);
            next.run(req).await
        }
        Err(e) => {
            let challenge = matches!(e, EngineError::TokenRequired | EngineError::TokenInvalid { .. });
            let mut resp = ApiError::from(e).into_response();
            if challenge {
                resp.headers_mut().insert(axum::http::header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
            }
            resp
        }
    }
}

async fn not_found() -> ApiError {
    ApiError::not_found("not_found", "no such endpoint; see the README for the API")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this endpoint does not take that method")
}

async fn invoke(State(s): State<AppState>, ConnectInfo(addr): ConnectInfo<SocketAddr>, req: Request) -> Response {
    s.gateway.invoke(req, Some(addr)).await
}

/// Reads a JSON body of at most [`MAX_API_BODY`] bytes into `T`.
pub async fn json_body<T: serde::de::DeserializeOwned>(body: Body) -> Result<T, ApiError> {
    parse_json_body(&read_body(body).await?)
}

/// Like [`json_body`], but an empty body is `T::default()` (for requests whose fields are all optional).
pub async fn optional_json_body<T: serde::de::DeserializeOwned + Default>(body: Body) -> Result<T, ApiError> {
    let bytes = read_body(body).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    parse_json_body(&bytes)
}

async fn read_body(body: Body) -> Result<bytes::Bytes, ApiError> {
    axum::body::to_bytes(body, MAX_API_BODY).await.map_err(|_| {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", format!("the request body is larger than {MAX_API_BODY} bytes"))
    })
}

fn parse_json_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request("malformed_json", format!("the body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::unprocessable("invalid_body", "the body must be a JSON object"));
    }
    serde_json::from_value(value).map_err(|e| ApiError::unprocessable("invalid_body", format!("the body does not match: {e}")))
}
