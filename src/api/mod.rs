//! The HTTP API: the axum router, request parsing into typed requests, and JSON answers.
//! Errors all leave through [`ApiError`].

mod console;
mod deployments;
pub(crate) mod error;
mod functions;
mod health;
pub mod metrics;
pub mod openapi;
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
use axum::routing::{any, get};
use axum::Router;
use serde_json::Value;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::error::ApiError;
use crate::api::health::{healthz, metrics_text, root};
use crate::api::metrics::MetricsHistory;
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
    let (api, doc) = api_router(Some(state.clone()));
    openapi::keep(&doc);
    drop(doc);
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

/// The `/api` routes and the OpenAPI document describing them, from one list: a route
/// added here without its `#[utoipa::path]` does not compile, and its document is what
/// `GET /api/openapi.json` serves. With `auth`, every route but the document needs a token
/// (a route layer: it runs only for matched routes, so unknown /api paths still answer 404).
fn api_router(auth: Option<AppState>) -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let mut protected = OpenApiRouter::new()
        .routes(routes!(users::whoami))
        .routes(routes!(users::list_users, users::create_user))
        .routes(routes!(users::delete_user))
        .routes(routes!(tokens::list_tokens, tokens::create_token))
        .routes(routes!(tokens::revoke_token))
        .routes(routes!(projects::list_projects, projects::create_project))
        .routes(routes!(projects::show_project, projects::delete_project))
        .routes(routes!(deployments::list_deployments))
        .routes(routes!(projects::upload_project))
        .routes(routes!(deployments::show_deployment))
        .routes(routes!(deployments::rollback))
        .routes(routes!(functions::function_logs))
        .routes(routes!(functions::function_runs, functions::start_run))
        .routes(routes!(functions::function_run))
        .routes(routes!(metrics::function_metrics))
        .routes(routes!(secrets::list_secrets, secrets::set_secrets))
        .routes(routes!(secrets::delete_secret))
        .routes(routes!(secrets::rotate_invoke_key));
    if let Some(state) = auth {
        protected = protected.route_layer(axum::middleware::from_fn_with_state(state, require_token));
    }
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi()).routes(routes!(openapi::openapi_json)).merge(protected).split_for_parts()
}

/// The OpenAPI 3.1 document of the `/api` routes (served at `GET /api/openapi.json`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    api_router(None).1
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
    // No body, or JSON `null`: nothing given.
    if bytes.iter().all(u8::is_ascii_whitespace) || serde_json::from_slice::<Value>(&bytes).is_ok_and(|v| v.is_null()) {
        return Ok(T::default());
    }
    parse_json_body(&bytes)
}

async fn read_body(body: Body) -> Result<bytes::Bytes, ApiError> {
    axum::body::to_bytes(body, MAX_API_BODY).await.map_err(|_| {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", format!("the request body is larger than {MAX_API_BODY} bytes"))
    })
}

/// The query string parsed into `T`; a query that does not fit is a 400 in the API's error
/// shape (axum's own rejection is plain text), naming what did not parse.
pub struct ApiQuery<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|q| ApiQuery(q.0))
            .map_err(|e| ApiError::bad_request("invalid_query", format!("the query string does not match: {}", e.body_text())))
    }
}

/// The path's parameters parsed into `T`; a path that does not fit (e.g. not UTF-8 once
/// decoded) is a 400 in the API's error shape.
pub struct ApiPath<T>(pub T);

impl<T: serde::de::DeserializeOwned + Send, S: Send + Sync> axum::extract::FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut axum::http::request::Parts, s: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, s)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e| ApiError::bad_request("invalid_path", format!("the path does not match: {}", e.body_text())))
    }
}

fn parse_json_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request("malformed_json", format!("the body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::unprocessable("invalid_body", "the body must be a JSON object"));
    }
    serde_json::from_value(value).map_err(|e| ApiError::unprocessable("invalid_body", format!("the body does not match: {e}")))
}
