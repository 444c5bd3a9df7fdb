//! The HTTP API: the axum router, request parsing into typed requests, and JSON answers.
//! Errors all leave through [`ApiError`].

pub mod error;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, delete, get, post};
use axum::{Extension, Json, Router};
use serde_json::{json, Value};

use crate::engine::auth::{AuthError, Principal};
use crate::api::error::ApiError;
use crate::dataplane::gateway::{Gateway, Route};
use crate::engine::{DeployRequest, Platform};
use crate::infra::store::{DeploymentRow, ProjectRow};

/// Largest management API body.
pub const MAX_API_BODY: usize = 64 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub platform: Arc<Platform>,
    pub gateway: Gateway,
    pub metrics: Arc<crate::infra::metrics::Metrics>,
}

/// The whole router: API, gateway and fallbacks.
pub fn app(platform: Arc<Platform>) -> Router {
    let gateway = Gateway::new(platform.routes.clone());
    let state = AppState { metrics: platform.metrics.clone(), platform, gateway };
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
        .route("/api/projects/{name}/deployments/{id}", get(show_deployment))
        .route("/api/projects/{name}/functions/{function}/logs", get(function_logs))
        .route("/api/projects/{name}/functions/{function}/runs", get(function_runs))
        .route("/api/projects/{name}/secrets", get(list_secrets).post(set_secrets))
        .route("/api/projects/{name}/secrets/{secret}", delete(delete_secret))
        .route("/api/projects/{name}/invoke-key", post(rotate_invoke_key))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/", get(root))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .merge(api)
        .route("/invoke/{project}/{function}", any(invoke))
        .route("/invoke/{project}/{function}/{*path}", any(invoke))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// Authenticates the request's bearer token and hands the [`Principal`] to the handler.
async fn require_token(State(s): State<AppState>, mut req: Request, next: Next) -> Response {
    let header = req.headers().get(axum::http::header::AUTHORIZATION).map(|v| v.as_bytes().to_vec());
    let store = s.platform.store.clone();
    // SQLite is blocking; keep it off the async workers.
    let result = tokio::task::spawn_blocking(move || crate::engine::auth::authenticate(&store, header.as_deref())).await;
    match result {
        Ok(Ok(who)) => {
            req.extensions_mut().insert(who);
            next.run(req).await
        }
        Ok(Err(AuthError::Store(e))) => ApiError::from(e).into_response(),
        Ok(Err(e)) => {
            let code = if matches!(e, AuthError::Missing) { "token_required" } else { "token_invalid" };
            let mut resp = ApiError::unauthorized(code, e.to_string()).into_response();
            resp.headers_mut().insert(axum::http::header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
            resp
        }
        Err(e) => ApiError::internal(&e).into_response(),
    }
}

fn project_not_found(name: &str) -> ApiError {
    ApiError::not_found("project_not_found", format!("no project `{name}`"))
}

/// The project, if it exists and `who` may see it; another user's project is not found.
fn owned_project(s: &AppState, who: &Principal, name: &str) -> Result<ProjectRow, ApiError> {
    s.platform.store.project(name)?.filter(|p| who.owns(p.owner.as_deref())).ok_or_else(|| project_not_found(name))
}

fn admin_only(who: &Principal) -> Result<(), ApiError> {
    if who.admin {
        Ok(())
    } else {
        Err(ApiError::forbidden("admin_only", format!("user `{}` is not an admin; only admins manage users", who.name)))
    }
}

async fn whoami(Extension(who): Extension<Principal>) -> Json<Value> {
    Json(json!({ "user": who.name, "admin": who.admin }))
}

async fn list_users(State(s): State<AppState>, Extension(who): Extension<Principal>) -> Result<Json<Value>, ApiError> {
    admin_only(&who)?;
    let store = &s.platform.store;
    let mut out = Vec::new();
    for u in store.users()? {
        let projects = store.projects_owned_by(&u.name)?;
        out.push(json!({ "name": u.name, "admin": u.admin, "created_at": u.created_at, "projects": projects }));
    }
    Ok(Json(json!({ "users": out })))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    name: String,
    #[serde(default)]
    admin: bool,
}

async fn create_user(State(s): State<AppState>, Extension(who): Extension<Principal>, req: Request) -> Result<Response, ApiError> {
    admin_only(&who)?;
    let body: NewUser = json_body(req.into_body()).await?;
    crate::engine::auth::validate_user_name(&body.name).map_err(|m| ApiError::unprocessable("invalid_name", m))?;
    let store = &s.platform.store;
    let user = store.create_user(&body.name, body.admin)?.ok_or_else(|| {
        ApiError::new(StatusCode::CONFLICT, "user_exists", format!("user `{}` exists already", body.name))
    })?;
    let (id, token) = crate::engine::auth::issue_token(store, user.id, "initial")?;
    tracing::info!(user = %user.name, admin = user.admin, by = %who.name, "user created");
    Ok((
        StatusCode::CREATED,
        Json(json!({ "name": user.name, "admin": user.admin, "token": { "id": id, "name": "initial", "token": token } })),
    )
        .into_response())
}

async fn delete_user(State(s): State<AppState>, Extension(who): Extension<Principal>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    admin_only(&who)?;
    let store = &s.platform.store;
    let user = store.user(&name)?.ok_or_else(|| ApiError::not_found("user_not_found", format!("no user `{name}`")))?;
    let owned = store.projects_owned_by(&name)?;
    if !owned.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "user_has_projects",
            format!("user `{name}` still owns {}; remove those projects first", owned.join(", ")),
        ));
    }
    if user.admin && store.users()?.iter().filter(|u| u.admin).count() == 1 {
        return Err(ApiError::new(StatusCode::CONFLICT, "last_admin", format!("`{name}` is the last admin; create another admin first")));
    }
    store.delete_user(&name)?;
    tracing::info!(user = %name, by = %who.name, "user removed");
    Ok(Json(json!({ "deleted": name })))
}

#[derive(serde::Deserialize)]
struct TokensQuery {
    user: Option<String>,
    #[serde(default)]
    all: bool,
}

async fn list_tokens(State(s): State<AppState>, Extension(who): Extension<Principal>, Query(q): Query<TokensQuery>) -> Result<Json<Value>, ApiError> {
    let user = match (&q.user, q.all) {
        (_, true) | (Some(_), _) => {
            admin_only(&who)?;
            q.user.clone()
        }
        (None, false) => Some(who.name.clone()),
    };
    let tokens = s.platform.store.tokens(user.as_deref())?;
    Ok(Json(json!({ "tokens": tokens })))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    name: String,
    #[serde(default)]
    user: Option<String>,
}

async fn create_token(State(s): State<AppState>, Extension(who): Extension<Principal>, req: Request) -> Result<Response, ApiError> {
    let body: NewToken = json_body(req.into_body()).await?;
    crate::engine::auth::validate_token_name(&body.name).map_err(|m| ApiError::unprocessable("invalid_name", m))?;
    let store = &s.platform.store;
    let user_id = match &body.user {
        Some(u) if *u != who.name => {
            admin_only(&who)?;
            store.user(u)?.ok_or_else(|| ApiError::not_found("user_not_found", format!("no user `{u}`")))?.id
        }
        _ => who.user_id,
    };
    let (id, token) = crate::engine::auth::issue_token(store, user_id, &body.name)?;
    Ok((StatusCode::CREATED, Json(json!({ "id": id, "name": body.name, "token": token }))).into_response())
}

async fn revoke_token(State(s): State<AppState>, Extension(who): Extension<Principal>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let gone = || ApiError::not_found("token_not_found", format!("no token `{id}` of yours"));
    let n: i64 = id.parse().map_err(|_| gone())?;
    let store = &s.platform.store;
    let token = store.token(n)?.filter(|t| who.admin || t.user == who.name).ok_or_else(gone)?;
    if token.revoked_at.is_some() {
        return Err(ApiError::new(StatusCode::CONFLICT, "already_revoked", format!("token {n} was revoked at {}", token.revoked_at.map(|t| t.to_rfc3339()).unwrap_or_default())));
    }
    store.revoke_token(n)?;
    tracing::info!(token = n, user = %token.user, by = %who.name, "token revoked");
    Ok(Json(json!({ "revoked": n })))
}

async fn list_secrets(State(s): State<AppState>, Extension(who): Extension<Principal>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    owned_project(&s, &who, &name)?;
    let names: Vec<Value> = s
        .platform
        .store
        .secrets(&name)?
        .into_iter()
        .map(|r| json!({ "name": r.name, "updated_at": r.updated_at }))
        .collect();
    Ok(Json(json!({ "secrets": names })))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretsChange {
    #[serde(default)]
    set: std::collections::BTreeMap<String, String>,
}

async fn set_secrets(State(s): State<AppState>, Extension(who): Extension<Principal>, Path(name): Path<String>, req: Request) -> Result<Json<Value>, ApiError> {
    owned_project(&s, &who, &name)?;
    let body: SecretsChange = json_body(req.into_body()).await?;
    if body.set.is_empty() {
        return Err(ApiError::unprocessable("invalid_body", "nothing to set; send {\"set\": {\"NAME\": \"value\"}}"));
    }
    let set: Vec<(String, String)> = body.set.into_iter().collect();
    s.platform.change_secrets(&name, &set, &[]).await?;
    Ok(Json(json!({ "set": set.iter().map(|(n, _)| n).collect::<Vec<_>>() })))
}

async fn delete_secret(State(s): State<AppState>, Extension(who): Extension<Principal>, Path((name, secret)): Path<(String, String)>) -> Result<Json<Value>, ApiError> {
    owned_project(&s, &who, &name)?;
    s.platform.change_secrets(&name, &[], std::slice::from_ref(&secret)).await?;
    Ok(Json(json!({ "deleted": secret })))
}

async fn rotate_invoke_key(State(s): State<AppState>, Extension(who): Extension<Principal>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    owned_project(&s, &who, &name)?;
    let key = s.platform.rotate_invoke_key(&name)?;
    tracing::info!(project = %name, by = %who.name, "invoke key rotated");
    Ok(Json(json!({ "project": name, "invoke_key": key, "header": "X-Eserveless-Key" })))
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
    let docker = s.platform.driver.ping().await.err().map(|e| e.to_string());
    let storage = crate::infra::datadir::storage_problem(&s.platform.config.data_dir);
    let status = if docker.is_none() && storage.is_none() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = json!({
        "status": if status == StatusCode::OK { "ok" } else { "degraded" },
        "docker": docker.as_deref().unwrap_or("ok"),
        "storage": storage.as_deref().unwrap_or("ok"),
    });
    (status, Json(body)).into_response()
}

async fn metrics_text(State(s): State<AppState>) -> Response {
    let text = s.metrics.render();
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

async fn create_project(State(s): State<AppState>, Extension(who): Extension<Principal>, req: Request) -> Result<Response, ApiError> {
    let body: DeployRequest = json_body(req.into_body()).await?;
    let submitted = s.platform.submit(body, &who).await?;
    let status = if submitted.status == crate::engine::SubmitStatus::Unchanged { StatusCode::OK } else { StatusCode::ACCEPTED };
    let location = format!("/api/projects/{}/deployments/{}", submitted.project, submitted.deployment_id);
    let mut resp = (status, Json(json!({
        "project": submitted.project,
        "deployment": submitted.deployment_id,
        "commit": submitted.commit,
        "status": submitted.status,
        "invoke_key": submitted.invoke_key,
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

async fn list_projects(State(s): State<AppState>, Extension(who): Extension<Principal>) -> Result<Json<Value>, ApiError> {
    let store = &s.platform.store;
    let mut out = Vec::new();
    for p in store.projects()?.into_iter().filter(|p| who.owns(p.owner.as_deref())) {
        let live = p.live_deployment_id.map(|id| store.deployment(id)).transpose()?.flatten();
        let latest = store.latest_deployment(&p.name)?;
        out.push(json!({
            "name": p.name,
            "owner": p.owner,
            "repository": p.repository,
            "live_commit": live.as_ref().map(|d| d.commit.clone()),
            "latest_deployment": latest.as_ref().map(deployment_summary),
        }));
    }
    Ok(Json(json!({ "projects": out })))
}

async fn show_project(State(s): State<AppState>, Extension(who): Extension<Principal>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    let store = &s.platform.store;
    let p = owned_project(&s, &who, &name)?;
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
                    "auth": (f.kind == "http").then_some(f.options.auth),
                    "memory_bytes": f.options.memory_bytes.unwrap_or(s.platform.config.limits.memory_bytes as u64),
                    "cpu_millis": f.options.cpu_millis.unwrap_or((s.platform.config.limits.nano_cpus / 1_000_000) as u32),
                    "image": f.image,
                    "instances": instances,
                })
            })
            .collect(),
        None => Vec::new(),
    };
    Ok(Json(json!({
        "name": p.name,
        "owner": p.owner,
        "repository": p.repository,
        "ref": p.git_ref,
        "created_at": p.created_at,
        "live": live.as_ref().map(|d| json!({ "deployment": d.id, "commit": d.commit, "runtime": d.runtime, "warnings": d.warnings })),
        "latest_deployment": latest.as_ref().map(deployment_summary),
        "functions": functions,
    })))
}

async fn show_deployment(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    owned_project(&s, &who, &name)?;
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

async fn delete_project(State(s): State<AppState>, Extension(who): Extension<Principal>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    owned_project(&s, &who, &name)?;
    Ok(Json(s.platform.delete(&name).await?))
}

fn known_function(s: &AppState, who: &Principal, project: &str, function: &str) -> Result<(), ApiError> {
    let store = &s.platform.store;
    let p = owned_project(s, who, project)?;
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
    Extension(who): Extension<Principal>,
    Path((name, function)): Path<(String, String)>,
    Query(q): Query<RunsQuery>,
) -> Result<Json<Value>, ApiError> {
    known_function(&s, &who, &name, &function)?;
    let runs = s.platform.store.cron_runs(&name, &function, q.limit.unwrap_or(50).min(500))?;
    Ok(Json(json!({ "runs": runs })))
}

/// A function's output: saved output of removed instances, running containers (read from the
/// engine as the answer is sent) and recent cron runs. The answer is streamed entry by entry,
/// so the server holds at most one container's output tail (`--log-bytes`) at a time while
/// reading from the engine, whatever the function wrote.
async fn function_logs(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path((name, function)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    known_function(&s, &who, &name, &function)?;
    let platform = s.platform.clone();
    // What the store holds is read before the answer starts: a store error is still a status.
    let mut saved: Vec<Value> = platform
        .store
        .function_logs(&name, &function)?
        .into_iter()
        .map(|l| json!({ "source": "instance", "container": l.container, "at": l.at, "output": l.output, "running": false }))
        .collect();
    for run in platform.store.cron_runs(&name, &function, 20)?.into_iter().rev() {
        if run.status == "skipped" {
            continue;
        }
        saved.push(json!({ "source": "cron", "run": run.id, "at": run.started_at, "status": run.status, "output": run.output, "running": false }));
    }
    // Running containers of the function (http instances and cron runs in progress).
    let running: Vec<crate::infra::driver::ManagedContainer> = match platform.driver.list_managed().await {
        Ok(list) => list
            .into_iter()
            .filter(|c| {
                c.running
                    && c.labels.get(crate::infra::driver::labels::PROJECT) == Some(&name)
                    && c.labels.get(crate::infra::driver::labels::FUNCTION) == Some(&function)
            })
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list running containers for logs");
            Vec::new()
        }
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::convert::Infallible>>(1);
    tokio::spawn(async move {
        let mut first = true;
        let mut send = |v: &Value| {
            let mut chunk = if std::mem::take(&mut first) { b"{\"entries\":[".to_vec() } else { b",".to_vec() };
            chunk.extend_from_slice(v.to_string().as_bytes());
            bytes::Bytes::from(chunk)
        };
        let (saved_instances, saved_runs): (Vec<Value>, Vec<Value>) = saved.into_iter().partition(|v| v["source"] == "instance");
        for v in &saved_instances {
            if tx.send(Ok(send(v))).await.is_err() {
                return;
            }
        }
        for c in running {
            let Ok(out) = platform.driver.logs(&c.id, platform.config.log_bytes).await else { continue };
            let role = c.labels.get(crate::infra::driver::labels::ROLE).cloned().unwrap_or_default();
            let v = json!({
                "source": if role == "cron" { "cron" } else { "instance" },
                "container": c.id, "at": chrono::Utc::now(), "output": out, "running": true,
            });
            drop(out);
            if tx.send(Ok(send(&v))).await.is_err() {
                return;
            }
        }
        for v in &saved_runs {
            if tx.send(Ok(send(v))).await.is_err() {
                return;
            }
        }
        let end: &[u8] = if first { b"{\"entries\":[]}" } else { b"]}" };
        let _ = tx.send(Ok(bytes::Bytes::from_static(end))).await;
    });
    let body = Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) }));
    Ok(([(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response())
}
