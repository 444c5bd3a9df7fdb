//! `/api/projects/{name}/deployments/{id}`: one deployment, its build and its functions.

use axum::extract::{Path, State};
use axum::{Extension, Json};

use crate::api::error::ApiError;
use crate::api::projects::invoke_path;
use crate::api::types::{DeploymentAnswer, DeploymentFunction};
use crate::api::AppState;
use crate::engine::Principal;

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
