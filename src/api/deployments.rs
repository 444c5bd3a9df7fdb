//! `/api/projects/{name}/deployments[/{id}]` and `/rollback`: a project's history, one
//! deployment with its build and its functions, and making an earlier one live again.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::{Extension, Json};

use crate::api::error::ApiError;
use crate::api::projects::invoke_path;
use crate::api::types::{
    DeploymentAnswer, DeploymentFunction, DeploymentList, DeploymentListItem, DeploymentsQuery, Links, RollbackAnswer, RollbackRequest,
};
use crate::api::{optional_json_body, AppState};
use crate::engine::Principal;

pub(super) async fn list_deployments(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
    Query(q): Query<DeploymentsQuery>,
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

pub(super) async fn rollback(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
    body: Body,
) -> Result<Json<RollbackAnswer>, ApiError> {
    let req: RollbackRequest = optional_json_body(body).await?;
    let r = s.platform.rollback(&who, &name, req.deployment).await?;
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

pub(super) async fn show_deployment(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path((name, id)): Path<(String, String)>,
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
