//! `/api/projects/{name}/deployments[/{id}]` and `/rollback`: a project's history, one
//! deployment with its build and its functions, and making an earlier one live again.

use axum::body::Body;
use axum::extract::State;
use axum::{Extension, Json};

use crate::api::error::ApiError;
use crate::api::openapi::{EngineAndDisk, ErrorBody, TokenOrServer};
use crate::api::projects::invoke_path;
use crate::api::types::{
    DeploymentAnswer, DeploymentFunction, DeploymentList, DeploymentListItem, DeploymentsQuery, Links, RollbackAnswer, RollbackRequest,
};
use crate::api::{optional_json_body, ApiPath, ApiQuery, AppState};
use crate::engine::{EngineError, Principal};

#[utoipa::path(
    get,
    path = "/api/projects/{name}/deployments",
    tag = "deployments",
    security(("bearer" = [])),
    extensions(("x-eserveless-access" = json!("owner"))),
    params(("name" = String, Path, description = "The project"), DeploymentsQuery),
    responses(
        (status = 200, description = "The project's deployments, newest first", body = DeploymentList),
        (status = 400, description = "The query does not match (`invalid_query`)", body = ErrorBody),
        (status = 404, description = "No such project, or not the caller's (`project_not_found`)", body = ErrorBody),
        TokenOrServer,
    ),
)]
pub(super) async fn list_deployments(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<DeploymentsQuery>,
) -> Result<Json<DeploymentList>, ApiError> {
    let entries = s.platform.history(&who, &name, q.limit.unwrap_or(20).clamp(1, 200)).await?;
    let deployments = entries
        .into_iter()
        .map(|e| {
            let d = e.deployment;
            DeploymentListItem {
                id: d.id,
                commit: d.commit,
                source: d.source,
                dirty: d.dirty,
                digest: d.digest,
                git_ref: d.git_ref,
                repository: d.repository,
                runtime: d.runtime,
                status: d.status,
                error: d.error,
                created_at: d.created_at,
                started_at: d.started_at,
                finished_at: d.finished_at,
                submitted_by: d.submitted_by,
                rollback_of: d.rollback_of,
                live: e.live,
                images_present: e.images_present,
            }
        })
        .collect();
    Ok(Json(DeploymentList { project: name, deployments }))
}

#[utoipa::path(
    post,
    path = "/api/projects/{name}/rollback",
    tag = "deployments",
    security(("bearer" = [])),
    extensions(("x-eserveless-access" = json!("owner"))),
    params(("name" = String, Path, description = "The project")),
    request_body(content = Option<RollbackRequest>, description = "Optional (no body, or `null`): without one, the newest successful deployment older than the live one"),
    responses(
        (status = 200, description = "The earlier deployment is live again, recorded as a new deployment", body = RollbackAnswer),
        (status = 400, description = "The body is not JSON (`malformed_json`)", body = ErrorBody),
        (status = 404, description = "No such project or deployment (`project_not_found`, `deployment_not_found`)", body = ErrorBody),
        (status = 409, description = "Nothing to roll back to, it is live already, or its images are gone (`no_rollback_target`, `already_live`, `images_removed`, ...)", body = ErrorBody),
        (status = 413, description = "The body is larger than 64 KiB (`body_too_large`)", body = ErrorBody),
        (status = 422, description = "The body does not match, or names a deployment the project does not have (`invalid_body`, `deployment_not_found`)", body = ErrorBody),
        TokenOrServer, EngineAndDisk,
    ),
)]
pub(super) async fn rollback(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    ApiPath(name): ApiPath<String>,
    body: Body,
) -> Result<Json<RollbackAnswer>, ApiError> {
    let req: RollbackRequest = optional_json_body(body).await?;
    let r = s.platform.rollback(&who, &name, req.deployment).await.map_err(|e| match e {
        // The deployment named in the body: the request is what is wrong, not its URL (the
        // project exists), so a 422 rather than a 404.
        EngineError::DeploymentNotFound { .. } if req.deployment.is_some() => ApiError::unprocessable("deployment_not_found", e.to_string()),
        e => e.into(),
    })?;
    Ok(Json(RollbackAnswer {
        links: Links { deployment: format!("/api/projects/{name}/deployments/{}", r.deployment), project: format!("/api/projects/{name}") },
        project: name,
        deployment: r.deployment,
        rollback_of: r.target.id,
        commit: r.target.commit,
        previous: r.previous,
        rebuilt: false,
    }))
}

#[utoipa::path(
    get,
    path = "/api/projects/{name}/deployments/{id}",
    tag = "deployments",
    security(("bearer" = [])),
    extensions(("x-eserveless-access" = json!("owner"))),
    params(("name" = String, Path, description = "The project"), ("id" = String, Path, description = "The deployment's id")),
    responses(
        (status = 200, description = "The deployment, with its build log and functions", body = DeploymentAnswer),
        (status = 404, description = "No such project or deployment (`project_not_found`, `deployment_not_found`)", body = ErrorBody),
        TokenOrServer,
    ),
)]
pub(super) async fn show_deployment(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    ApiPath((name, id)): ApiPath<(String, String)>,
) -> Result<Json<DeploymentAnswer>, ApiError> {
    let detail = s.platform.deployment(&who, &name, &id)?;
    let functions = detail
        .functions
        .into_iter()
        .map(|f| DeploymentFunction {
            invoke_path: invoke_path(&name, &f.name, f.kind),
            name: f.name,
            kind: f.kind,
            schedule: f.schedule,
            image: f.image,
            build_state: f.build_state,
            build_log: f.build_log,
        })
        .collect();
    let d = detail.deployment;
    Ok(Json(DeploymentAnswer { deployment: d, live: detail.live, functions }))
}
