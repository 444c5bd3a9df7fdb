//! `/api/tokens`: API tokens of the caller (of anyone, for admins).

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use crate::api::error::ApiError;
use crate::api::openapi::{ErrorBody, TokenOrServer};
use crate::api::types::{NewToken, Revoked, TokenCreated, TokenList, TokensQuery};
use crate::api::{json_body, ApiPath, ApiQuery, AppState};
use crate::engine::Principal;

#[utoipa::path(
    get,
    path = "/api/tokens",
    tag = "tokens",
    security(("bearer" = [])),
    extensions(("x-eserveless-access" = json!("user"))),
    params(TokensQuery),
    responses(
        (status = 200, description = "The caller's tokens (another user's, or everyone's, for admins); never their secrets", body = TokenList),
        (status = 400, description = "The query does not match (`invalid_query`)", body = ErrorBody),
        (status = 403, description = "`user` or `all` asked by a non-admin (`admin_only`)", body = ErrorBody),
        (status = 404, description = "No such user (`user_not_found`)", body = ErrorBody),
        TokenOrServer,
    ),
)]
pub(super) async fn list_tokens(State(s): State<AppState>, Extension(who): Extension<Principal>, ApiQuery(q): ApiQuery<TokensQuery>) -> Result<Json<TokenList>, ApiError> {
    let tokens = s.platform.tokens(&who, q.user.as_deref(), q.all)?;
    Ok(Json(TokenList { tokens }))
}

#[utoipa::path(
    post,
    path = "/api/tokens",
    tag = "tokens",
    security(("bearer" = [])),
    extensions(("x-eserveless-access" = json!("user"))),
    request_body = NewToken,
    responses(
        (status = 201, description = "The token (its text shown this once)", body = TokenCreated),
        (status = 400, description = "The body is not JSON (`malformed_json`)", body = ErrorBody),
        (status = 403, description = "A token for another user asked by a non-admin (`admin_only`)", body = ErrorBody),
        (status = 404, description = "No such user (`user_not_found`)", body = ErrorBody),
        (status = 413, description = "The body is larger than 64 KiB (`body_too_large`)", body = ErrorBody),
        (status = 422, description = "The body does not match, or the name is not valid (`invalid_body`, `invalid_name`)", body = ErrorBody),
        (status = 507, description = "The data directory is full (`insufficient_storage`)", body = ErrorBody),
        TokenOrServer,
    ),
)]
pub(super) async fn create_token(State(s): State<AppState>, Extension(who): Extension<Principal>, req: Request) -> Result<Response, ApiError> {
    let body: NewToken = json_body(req.into_body()).await?;
    let t = s.platform.create_token(&who, &body.name, body.user.as_deref())?;
    Ok((StatusCode::CREATED, Json(TokenCreated { id: t.id, name: t.name, token: t.token })).into_response())
}

#[utoipa::path(
    delete,
    path = "/api/tokens/{id}",
    tag = "tokens",
    security(("bearer" = [])),
    extensions(("x-eserveless-access" = json!("user"))),
    params(("id" = String, Path, description = "The token's id (from `GET /api/tokens`)")),
    responses(
        (status = 200, description = "The token is revoked", body = Revoked),
        (status = 404, description = "No such token of the caller's (any user's, for admins) (`token_not_found`)", body = ErrorBody),
        (status = 409, description = "Revoked already (`already_revoked`)", body = ErrorBody),
        (status = 507, description = "The data directory is full (`insufficient_storage`)", body = ErrorBody),
        TokenOrServer,
    ),
)]
pub(super) async fn revoke_token(State(s): State<AppState>, Extension(who): Extension<Principal>, ApiPath(id): ApiPath<String>) -> Result<Json<Revoked>, ApiError> {
    let revoked = s.platform.revoke_token(&who, &id)?;
    Ok(Json(Revoked { revoked }))
}
