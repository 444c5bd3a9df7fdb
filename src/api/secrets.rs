//! `/api/projects/{name}/secrets` and the project's invoke key.

use axum::extract::{Request, State};
use axum::{Extension, Json};

use crate::api::error::ApiError;
use crate::api::openapi::{EngineAndDisk, ErrorBody, TokenOrServer};
use crate::api::types::{Deleted, InvokeKey, SecretAnswer, SecretList, SecretsChange, SecretsSet, INVOKE_KEY_HEADER};
use crate::api::{json_body, ApiPath, AppState};
use crate::engine::Principal;

#[utoipa::path(
    get,
    path = "/api/projects/{name}/secrets",
    tag = "secrets",
    security(("bearer" = [])),
    extensions(("x-eserveless-access" = json!("owner"))),
    params(("name" = String, Path, description = "The project")),
    responses(
        (status = 200, description = "The secrets' names (never their values)", body = SecretList),
        (status = 404, description = "No such project, or not the caller's (`project_not_found`)", body = ErrorBody),
        TokenOrServer,
    ),
)]
pub(super) async fn list_secrets(State(s): State<AppState>, Extension(who): Extension<Principal>, ApiPath(name): ApiPath<String>) -> Result<Json<SecretList>, ApiError> {
    let secrets = s.platform.secrets(&who, &name)?;
    Ok(Json(SecretList { secrets: secrets.into_iter().map(|r| SecretAnswer { name: r.name, updated_at: r.updated_at }).collect() }))
}

#[utoipa::path(
    post,
    path = "/api/projects/{name}/secrets",
    tag = "secrets",
    security(("bearer" = [])),
    extensions(("x-eserveless-access" = json!("owner"))),
    params(("name" = String, Path, description = "The project")),
    request_body = SecretsChange,
    responses(
        (status = 200, description = "The secrets are set; instances restart with them", body = SecretsSet),
        (status = 400, description = "The body is not JSON (`malformed_json`)", body = ErrorBody),
        (status = 404, description = "No such project, or not the caller's (`project_not_found`)", body = ErrorBody),
        (status = 413, description = "The body is larger than 64 KiB (`body_too_large`)", body = ErrorBody),
        (status = 422, description = "The body does not match, nothing to set, or a name or value is not valid (`invalid_body`, `invalid_secret`, ...)", body = ErrorBody),
        TokenOrServer, EngineAndDisk,
    ),
)]
pub(super) async fn set_secrets(State(s): State<AppState>, Extension(who): Extension<Principal>, ApiPath(name): ApiPath<String>, req: Request) -> Result<Json<SecretsSet>, ApiError> {
    s.platform.owned_project(&who, &name)?;
    let body: SecretsChange = json_body(req.into_body()).await?;
    if body.set.is_empty() {
        return Err(ApiError::unprocessable("invalid_body", "nothing to set; send {\"set\": {\"NAME\": \"value\"}}"));
    }
    let set: Vec<(String, String)> = body.set.into_iter().collect();
    s.platform.change_secrets(&name, &set, &[]).await?;
    Ok(Json(SecretsSet { set: set.into_iter().map(|(n, _)| n).collect() }))
}

#[utoipa::path(
    delete,
    path = "/api/projects/{name}/secrets/{secret}",
    tag = "secrets",
    security(("bearer" = [])),
    extensions(("x-eserveless-access" = json!("owner"))),
    params(("name" = String, Path, description = "The project"), ("secret" = String, Path, description = "The secret's name")),
    responses(
        (status = 200, description = "The secret is removed", body = Deleted),
        (status = 404, description = "No such project or secret (`project_not_found`, `secret_not_found`)", body = ErrorBody),
        (status = 422, description = "The name is not a valid secret name (`invalid_secret`)", body = ErrorBody),
        TokenOrServer, EngineAndDisk,
    ),
)]
pub(super) async fn delete_secret(State(s): State<AppState>, Extension(who): Extension<Principal>, ApiPath((name, secret)): ApiPath<(String, String)>) -> Result<Json<Deleted>, ApiError> {
    s.platform.owned_project(&who, &name)?;
    s.platform.change_secrets(&name, &[], std::slice::from_ref(&secret)).await?;
    Ok(Json(Deleted { deleted: secret }))
}

#[utoipa::path(
    post,
    path = "/api/projects/{name}/invoke-key",
    tag = "secrets",
    security(("bearer" = [])),
    extensions(("x-eserveless-access" = json!("owner"))),
    params(("name" = String, Path, description = "The project")),
    responses(
        (status = 200, description = "A new invoke key (the old one stops working)", body = InvokeKey),
        (status = 404, description = "No such project, or not the caller's (`project_not_found`)", body = ErrorBody),
        (status = 507, description = "The data directory is full (`insufficient_storage`)", body = ErrorBody),
        TokenOrServer,
    ),
)]
pub(super) async fn rotate_invoke_key(State(s): State<AppState>, Extension(who): Extension<Principal>, ApiPath(name): ApiPath<String>) -> Result<Json<InvokeKey>, ApiError> {
    s.platform.owned_project(&who, &name)?;
    let key = s.platform.rotate_invoke_key(&name)?;
    tracing::info!(project = %name, by = %who.name, "invoke key rotated");
    Ok(Json(InvokeKey { project: name, invoke_key: key, header: INVOKE_KEY_HEADER.to_string() }))
}
