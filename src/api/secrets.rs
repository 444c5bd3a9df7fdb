//! `/api/projects/{name}/secrets` and the project's invoke key.

use axum::extract::{Path, Request, State};
use axum::{Extension, Json};

use crate::api::error::ApiError;
use crate::api::types::{Deleted, InvokeKey, SecretAnswer, SecretList, SecretsChange, SecretsSet, INVOKE_KEY_HEADER};
use crate::api::{json_body, AppState};
use crate::engine::Principal;

pub(super) async fn list_secrets(State(s): State<AppState>, Extension(who): Extension<Principal>, Path(name): Path<String>) -> Result<Json<SecretList>, ApiError> {
    let secrets = s.platform.secrets(&who, &name)?;
    Ok(Json(SecretList { secrets: secrets.into_iter().map(|r| SecretAnswer { name: r.name, updated_at: r.updated_at }).collect() }))
}

pub(super) async fn set_secrets(State(s): State<AppState>, Extension(who): Extension<Principal>, Path(name): Path<String>, req: Request) -> Result<Json<SecretsSet>, ApiError> {
    s.platform.owned_project(&who, &name)?;
    let body: SecretsChange = json_body(req.into_body()).await?;
    if body.set.is_empty() {
        return Err(ApiError::unprocessable("invalid_body", "nothing to set; send {\"set\": {\"NAME\": \"value\"}}"));
    }
    let set: Vec<(String, String)> = body.set.into_iter().collect();
    s.platform.change_secrets(&name, &set, &[]).await?;
    Ok(Json(SecretsSet { set: set.into_iter().map(|(n, _)| n).collect() }))
}

pub(super) async fn delete_secret(State(s): State<AppState>, Extension(who): Extension<Principal>, Path((name, secret)): Path<(String, String)>) -> Result<Json<Deleted>, ApiError> {
    s.platform.owned_project(&who, &name)?;
    s.platform.change_secrets(&name, &[], std::slice::from_ref(&secret)).await?;
    Ok(Json(Deleted { deleted: secret }))
}

pub(super) async fn rotate_invoke_key(State(s): State<AppState>, Extension(who): Extension<Principal>, Path(name): Path<String>) -> Result<Json<InvokeKey>, ApiError> {
    s.platform.owned_project(&who, &name)?;
    let key = s.platform.rotate_invoke_key(&name)?;
    tracing::info!(project = %name, by = %who.name, "invoke key rotated");
    Ok(Json(InvokeKey { project: name, invoke_key: key, header: INVOKE_KEY_HEADER.to_string() }))
}
