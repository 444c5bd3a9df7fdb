//! The HTTP API: the axum router, request parsing into typed requests, and JSON answers.
//! Errors all leave through [`ApiError`].

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::gateway::{Gateway, Route};
use crate::platform::{DeployRequest, Platform};
use crate::store::DeploymentRow;

/// Largest management API body.
pub const MAX_API_BODY: usize = 64 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub platform: Arc<Platform>,
    pub gateway: Gateway,
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// The whole router: API, gateway and fallbacks.
pub fn app(platform: Arc<Platform>) -> Router {
    let gateway = Gateway::new(platform.routes.clone());
    let state = AppState { metrics: platform.metrics.clone(), platform, gateway };
    Router::new()
        .route("/", get(root))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .route("/api/projects", get(list_projects).post(create_project))
        .route("/api/projects/{name}", get(show_project).delete(delete_project))
        .route("/api/projects/{name}/deployments/{id}", get(show_deployment))
        .route("/api/projects/{name}/functions/{function}/logs", get(function_logs))
        .route("/api/projects/{name}/functions/{function}/runs", get(function_runs))
        .route("/invoke/{project}/{function}", any(invoke))
        .route("/invoke/{project}/{function}/{*path}", any(invoke))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("not_found", "no such endpoint; see the README for the API")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this endpoint does not take that method")
}

async fn root() -> Json<Value> {
    Json(json!({ "name": "eserveless", "version": env!("CARGO_PKG_VERSION") }))
}

async fn healthz(State(s): State<AppState>) -> Response {
    match s.platform.driver.ping().await {
        Ok(()) => Json(json!({ "status": "ok", "docker": "ok" })).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "degraded", "docker": e.to_string() })))
            .into_response(),
    }
}

async fn metrics_text(State(s): State<AppState>) -> Response {
    let text = s.metrics.render(&s.platform.pools);
    ([(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response()
}

async fn invoke(State(s): State<AppState>, ConnectInfo(addr): ConnectInfo<SocketAddr>, req: Request) -> Response {
    s.gateway.invoke(req, Some(addr)).await
}

/// Reads a JSON body of at most [`MAX_API_BODY`] bytes into `T`.
pub async fn json_body<T: serde::de::DeserializeOwned>(body: Body) -> Result<T, ApiError> {
    let bytes = axum::body::to_bytes(body, MAX_API_BODY).await.map_err(|_| {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", format!("the request body is larger than {MAX_API_BODY} bytes"))
    })?;
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request("malformed_json", format!("the body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::unprocessable("invalid_body", "the body must be a JSON object"));
    }
    serde_json::from_value(value).map_err(|e| ApiError::unprocessable("invalid_body", format!("the body does not match: {e}")))
}

async fn create_project(State(s): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let body: DeployRequest = json_body(req.into_body()).await?;
    let submitted = s.platform.submit(body).await?;
    let status = if submitted.status == "unchanged" { StatusCode::OK } else { StatusCode::ACCEPTED };
    let location = format!("/api/projects/{}/deployments/{}", submitted.project, submitted.deployment_id);
    let mut resp = (status, Json(json!({
        "project": submitted.project,
        "deployment": submitted.deployment_id,
        "commit": submitted.commit,
        "status": submitted.status,
        "links": { "deployment": location, "project": format!("/api/projects/{}", submitted.project) },
    })))
        .into_response();
    if let Ok(v) = location.parse() {
        resp.headers_mut().insert(axum::http::header::LOCATION, v);
    }
    Ok(resp)
}

fn deployment_summary(d: &DeploymentRow) -> Value {
    json!({
        "id": d.id,
        "commit": d.commit,
        "ref": d.git_ref,
        "status": d.status,
        "error": d.error,
        "created_at": d.created_at,
        "finished_at": d.finished_at,
    })
}

async fn list_projects(State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    let store = &s.platform.store;
    let mut out = Vec::new();
    for p in store.projects()? {
        let live = p.live_deployment_id.map(|id| store.deployment(id)).transpose()?.flatten();
        let latest = store.latest_deployment(&p.name)?;
        out.push(json!({
            "name": p.name,
            "repository": p.repository,
            "live_commit": live.as_ref().map(|d| d.commit.clone()),
            "latest_deployment": latest.as_ref().map(deployment_summary),
        }));
    }
    Ok(Json(json!({ "projects": out })))
}

async fn show_project(State(s): State<AppState>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    let store = &s.platform.store;
    let p = store.project(&name)?.ok_or_else(|| ApiError::not_found("project_not_found", format!("no project `{name}`")))?;
    let live = p.live_deployment_id.map(|id| store.deployment(id)).transpose()?.flatten();
    let latest = store.latest_deployment(&name)?;
    let routes = s.platform.routes.project(&name);
    let functions: Vec<Value> = match &live {
        Some(d) => store
            .functions(d.id)?
            .into_iter()
            .map(|f| {
                let instances = match routes.as_ref().and_then(|r| r.get(&f.name)) {
                    Some(Route::Http(pool)) => Some(pool.counts()),
                    _ => None,
                };
                json!({
                    "name": f.name,
                    "type": f.kind,
                    "schedule": f.schedule,
                    "invoke_path": (f.kind == "http").then(|| format!("/invoke/{}/{}", name, f.name)),
                    "timeout_ms": f.timeout_ms,
                    "scaling": (f.kind == "http").then_some(&f.scaling),
                    "image": f.image,
                    "instances": instances,
                })
            })
            .collect(),
        None => Vec::new(),
    };
    Ok(Json(json!({
        "name": p.name,
        "repository": p.repository,
        "ref": p.git_ref,
        "created_at": p.created_at,
        "live": live.as_ref().map(|d| json!({ "deployment": d.id, "commit": d.commit, "runtime": d.runtime, "warnings": d.warnings })),
        "latest_deployment": latest.as_ref().map(deployment_summary),
        "functions": functions,
    })))
}

async fn show_deployment(State(s): State<AppState>, Path((name, id)): Path<(String, String)>) -> Result<Json<Value>, ApiError> {
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::not_found("deployment_not_found", format!("no deployment `{id}` in project `{name}`")))?;
    let store = &s.platform.store;
    let d = store
        .deployment(id)?
        .filter(|d| d.project == name)
        .ok_or_else(|| ApiError::not_found("deployment_not_found", format!("no deployment `{id}` in project `{name}`")))?;
    let live_id = store.project(&name)?.and_then(|p| p.live_deployment_id);
    let functions: Vec<Value> = store
        .functions(id)?
        .into_iter()
        .map(|f| {
            json!({
                "name": f.name,
                "type": f.kind,
                "schedule": f.schedule,
                "image": f.image,
                "build_state": f.build_state,
                "build_log": f.build_log,
                "invoke_path": (f.kind == "http").then(|| format!("/invoke/{}/{}", name, f.name)),
            })
        })
        .collect();
    Ok(Json(json!({
        "id": d.id,
        "project": d.project,
        "repository": d.repository,
        "ref": d.git_ref,
        "commit": d.commit,
        "runtime": d.runtime,
        "status": d.status,
        "live": live_id == Some(d.id),
        "error": d.error,
        "warnings": d.warnings,
        "log": d.log,
        "created_at": d.created_at,
        "started_at": d.started_at,
        "finished_at": d.finished_at,
        "functions": functions,
    })))
}

async fn delete_project(State(s): State<AppState>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    Ok(Json(s.platform.delete(&name).await?))
}

fn known_function(s: &AppState, project: &str, function: &str) -> Result<(), ApiError> {
    let store = &s.platform.store;
    let p = store.project(project)?.ok_or_else(|| ApiError::not_found("project_not_found", format!("no project `{project}`")))?;
    let found = match p.live_deployment_id {
        Some(id) => store.functions(id)?.iter().any(|f| f.name == function),
        None => false,
    };
    if found {
        Ok(())
    } else {
        Err(ApiError::not_found("function_not_found", format!("project `{project}` has no live function `{function}`")))
    }
}

#[derive(serde::Deserialize)]
struct RunsQuery {
    limit: Option<u32>,
}

async fn function_runs(
    State(s): State<AppState>,
    Path((name, function)): Path<(String, String)>,
    Query(q): Query<RunsQuery>,
) -> Result<Json<Value>, ApiError> {
    known_function(&s, &name, &function)?;
    let runs = s.platform.store.cron_runs(&name, &function, q.limit.unwrap_or(50).min(500))?;
    Ok(Json(json!({ "runs": runs })))
}

async fn function_logs(State(s): State<AppState>, Path((name, function)): Path<(String, String)>) -> Result<Json<Value>, ApiError> {
    known_function(&s, &name, &function)?;
    let platform = &s.platform;
    let mut entries: Vec<Value> = platform
        .store
        .function_logs(&name, &function)?
        .into_iter()
        .map(|l| json!({ "source": "instance", "container": l.container, "at": l.at, "output": l.output, "running": false }))
        .collect();
    // Running containers of the function (http instances and cron runs in progress).
    if let Ok(list) = platform.driver.list_managed().await {
        for c in list.into_iter().filter(|c| {
            c.labels.get(crate::driver::labels::PROJECT) == Some(&name)
                && c.labels.get(crate::driver::labels::FUNCTION) == Some(&function)
        }) {
            if let Ok(out) = platform.driver.logs(&c.id, 64 * 1024).await {
                let role = c.labels.get(crate::driver::labels::ROLE).cloned().unwrap_or_default();
                entries.push(json!({
                    "source": if role == "cron" { "cron" } else { "instance" },
                    "container": c.id, "at": chrono::Utc::now(), "output": out, "running": true,
                }));
            }
        }
    }
    for run in platform.store.cron_runs(&name, &function, 20)?.into_iter().rev() {
        if run.status == "skipped" {
            continue;
        }
        entries.push(json!({ "source": "cron", "run": run.id, "at": run.started_at, "status": run.status, "output": run.output, "running": false }));
    }
    Ok(Json(json!({ "entries": entries })))
}
