//! `/api/projects`: deploy (create or update), list, show and remove projects.

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use crate::api::error::ApiError;
use crate::api::openapi::{EngineAndDisk, ErrorBody, TarGz, TokenOrServer};
use crate::api::types::{FunctionType, 
    DeployAnswer, DeployRequest, DeploymentSummary, Links, LiveDeployment, ProjectAnswer, ProjectDeleted,
    ProjectFunction, ProjectList, ProjectListItem, SubmitStatus, UploadRequest,
};
use crate::api::{json_body, ApiPath, AppState};
use crate::engine::views::{DeploymentRow, LiveFunction};
use crate::engine::Principal;

/// Where a function is invoked, for http functions.
pub(super) fn invoke_path(project: &str, function: &str, kind: FunctionType) -> Option<String> {
    (kind == FunctionType::Http).then(|| format!("/invoke/{project}/{function}"))
}

fn summary(d: &DeploymentRow) -> DeploymentSummary {
    DeploymentSummary {
        id: d.id,
        commit: d.commit.clone(),
        source: d.source,
        dirty: d.dirty,
        digest: d.digest.clone(),
        git_ref: d.git_ref.clone(),
        status: d.status,
        error: d.error.clone(),
        created_at: d.created_at,
        finished_at: d.finished_at,
    }
}

#[utoipa::path(
    post,
    path = "/api/projects",
    tag = "projects",
    security(("bearer" = [])),
    extensions(("x-eserveless-access" = json!("user"))),
    request_body = DeployRequest,
    responses(
        (status = 200, description = "The commit (or upload) is live already: nothing queued (`status: unchanged`)", body = DeployAnswer),
        (status = 202, description = "A deployment is queued (`status: queued`); its URL in `Location`", body = DeployAnswer,
            headers(("Location" = String, description = "The deployment: `/api/projects/{name}/deployments/{id}`"))),
        (status = 400, description = "The body is not JSON (`malformed_json`)", body = ErrorBody),
        (status = 409, description = "The name is another user's project, or the server cannot take it now (`name_taken`, ...)", body = ErrorBody),
        (status = 413, description = "The body is larger than 64 KiB (`body_too_large`)", body = ErrorBody),
        (status = 422, description = "The body, the name, the repository URL or ref, or the manifest is not valid; or the repository does not answer (`invalid_body`, `invalid_name`, `invalid_repository`, `ref_not_found`, `repository_unreachable`, `invalid_manifest`, ...)", body = ErrorBody),
        (status = 429, description = "Too many deployments queued (`queue_full`)", body = ErrorBody),
        (status = 504, description = "The repository did not answer in time (`repository_timeout`)", body = ErrorBody),
        TokenOrServer, EngineAndDisk,
    ),
)]
pub(super) async fn create_project(State(s): State<AppState>, Extension(who): Extension<Principal>, req: Request) -> Result<Response, ApiError> {
    let body: DeployRequest = json_body(req.into_body()).await?;
    let submitted = s.platform.submit(body, &who).await?;
    Ok(deploy_answer(submitted))
}

/// `POST /api/projects/{name}/uploads?commit=SHA&dirty=true`: the body is the directory as a
/// gzip-compressed tar (`eserveless deploy DIR` makes it), streamed to disk under the
/// server's `--max-upload` cap.
#[utoipa::path(
    post,
    path = "/api/projects/{name}/uploads",
    tag = "projects",
    security(("bearer" = [])),
    extensions(("x-eserveless-access" = json!("user"))),
    params(("name" = String, Path, description = "The project"), UploadRequest),
    request_body(content = TarGz, content_type = "application/gzip", description = "The directory as a gzip-compressed tar (`eserveless deploy DIR` makes it), at most the server's `--max-upload`"),
    responses(
        (status = 200, description = "The commit (or upload) is live already: nothing queued (`status: unchanged`)", body = DeployAnswer),
        (status = 202, description = "A deployment is queued (`status: queued`); its URL in `Location`", body = DeployAnswer,
            headers(("Location" = String, description = "The deployment: `/api/projects/{name}/deployments/{id}`"))),
        (status = 400, description = "The query does not match (`invalid_query`)", body = ErrorBody),
        (status = 409, description = "The name is another user's project (`name_taken`)", body = ErrorBody),
        (status = 413, description = "The upload is larger than `--max-upload`, or unpacks to more than its caps (`upload_too_large`)", body = ErrorBody),
        (status = 422, description = "The name, the query, the archive (not a gzip tar, unsafe entries) or the manifest is not valid (`invalid_name`, `invalid_query`, `invalid_upload`, `invalid_manifest`, ...)", body = ErrorBody),
        (status = 429, description = "Too many deployments queued (`queue_full`)", body = ErrorBody),
        TokenOrServer, EngineAndDisk,
    ),
)]
pub(super) async fn upload_project(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    ApiPath(name): ApiPath<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let query = axum::extract::Query::<UploadRequest>::try_from_uri(req.uri())
        .map_err(|e| ApiError::unprocessable("invalid_query", format!("the upload's query does not match (`commit`, `dirty`): {}", e.body_text())))?
        .0;
    let body = req.into_body().into_data_stream();
    let submitted = s.platform.submit_upload(&name, query, body, &who).await?;
    Ok(deploy_answer(submitted))
}

fn deploy_answer(submitted: crate::engine::Submitted) -> Response {
    let status = if submitted.status == SubmitStatus::Unchanged { StatusCode::OK } else { StatusCode::ACCEPTED };
    let location = format!("/api/projects/{}/deployments/{}", submitted.project, submitted.deployment_id);
    let answer = DeployAnswer {
        links: Links { deployment: location.clone(), project: format!("/api/projects/{}", submitted.project) },
        project: submitted.project,
        deployment: submitted.deployment_id,
        commit: submitted.commit,
        source: submitted.source,
        dirty: submitted.dirty,
        digest: submitted.digest,
        status: submitted.status,
        invoke_key: submitted.invoke_key,
    };
    let mut resp = (status, Json(answer)).into_response();
    if let Ok(v) = location.parse() {
        resp.headers_mut().insert(axum::http::header::LOCATION, v);
    }
    resp
}

#[utoipa::path(
    get,
    path = "/api/projects",
    tag = "projects",
    security(("bearer" = [])),
    extensions(("x-eserveless-access" = json!("user"))),
    responses(
        (status = 200, description = "The caller's projects (every project, for admins)", body = ProjectList),
        TokenOrServer,
    ),
)]
pub(super) async fn list_projects(State(s): State<AppState>, Extension(who): Extension<Principal>) -> Result<Json<ProjectList>, ApiError> {
    let projects = s
        .platform
        .projects(&who)?
        .into_iter()
        .map(|p| ProjectListItem {
            latest_deployment: p.latest.as_ref().map(summary),
            name: p.project.name,
            owner: p.project.owner,
            repository: p.project.repository,
            live_commit: p.live_commit,
        })
        .collect();
    Ok(Json(ProjectList { projects }))
}

fn project_function(project: &str, f: LiveFunction) -> ProjectFunction {
    let LiveFunction { function: f, memory_bytes, cpu_millis, instances, instance_list, next_run, last_run } = f;
    let http = f.kind == FunctionType::Http;
    ProjectFunction {
        invoke_path: invoke_path(project, &f.name, f.kind),
        scaling: http.then_some(f.scaling),
        auth: http.then_some(f.options.auth),
        name: f.name,
        kind: f.kind,
        schedule: f.schedule,
        timeout_ms: f.timeout_ms,
        memory_bytes,
        cpu_millis,
        image: f.image,
        instances,
        instance_list,
        next_run,
        last_run,
    }
}

#[utoipa::path(
    get,
    path = "/api/projects/{name}",
    tag = "projects",
    security(("bearer" = [])),
    extensions(("x-eserveless-access" = json!("owner"))),
    params(("name" = String, Path, description = "The project")),
    responses(
        (status = 200, description = "The project, its live deployment and functions", body = ProjectAnswer),
        (status = 404, description = "No such project, or not the caller's (`project_not_found`)", body = ErrorBody),
        TokenOrServer,
    ),
)]
pub(super) async fn show_project(State(s): State<AppState>, Extension(who): Extension<Principal>, ApiPath(name): ApiPath<String>) -> Result<Json<ProjectAnswer>, ApiError> {
    let d = s.platform.project(&who, &name)?;
    let functions = d.functions.into_iter().map(|f| project_function(&name, f)).collect();
    Ok(Json(ProjectAnswer {
        name: d.project.name,
        owner: d.project.owner,
        repository: d.project.repository,
        git_ref: d.project.git_ref,
        created_at: d.project.created_at,
        live: d.live.map(|l| LiveDeployment {
            deployment: l.id,
            commit: l.commit,
            source: l.source,
            dirty: l.dirty,
            digest: l.digest,
            runtime: l.runtime,
            warnings: l.warnings,
        }),
        latest_deployment: d.latest.as_ref().map(summary),
        functions,
    }))
}

#[utoipa::path(
    delete,
    path = "/api/projects/{name}",
    tag = "projects",
    security(("bearer" = [])),
    extensions(("x-eserveless-access" = json!("owner"))),
    params(("name" = String, Path, description = "The project")),
    responses(
        (status = 200, description = "The project is removed, with its containers and images", body = ProjectDeleted),
        (status = 404, description = "No such project, or not the caller's (`project_not_found`)", body = ErrorBody),
        TokenOrServer, EngineAndDisk,
    ),
)]
pub(super) async fn delete_project(State(s): State<AppState>, Extension(who): Extension<Principal>, ApiPath(name): ApiPath<String>) -> Result<Json<ProjectDeleted>, ApiError> {
    s.platform.owned_project(&who, &name)?;
    let d = s.platform.delete(&name).await?;
    Ok(Json(ProjectDeleted { deleted: d.project, containers_removed: d.containers_removed, images_removed: d.images_removed }))
}
