//! `/api/tokens`: API tokens of the caller (of anyone, for admins).

use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use crate::api::error::ApiError;
use crate::api::types::{NewToken, Revoked, TokenCreated, TokenList, TokensQuery};
use crate::api::{json_body, AppState};
use crate::engine::Principal;

pub(super) async fn list_tokens(State(s): State<AppState>, Extension(who): Extension<Principal>, Query(q): Query<TokensQuery>) -> Result<Json<TokenList>, ApiError> {
    let tokens = s.platform.tokens(&who, q.user.as_deref(), q.all)?;
    Ok(Json(TokenList { tokens }))
}

pub(super) async fn create_token(State(s): State<AppState>, Extension(who): Extension<Principal>, req: Request) -> Result<Response, ApiError> {
    let body: NewToken = json_body(req.into_body()).await?;
    let t = s.platform.create_token(&who, &body.name, body.user.as_deref())?;
    Ok((StatusCode::CREATED, Json(TokenCreated { id: t.id, name: t.name, token: t.token })).into_response())
}

pub(super) async fn revoke_token(State(s): State<AppState>, Extension(who): Extension<Principal>, Path(id): Path<String>) -> Result<Json<Revoked>, ApiError> {
    let revoked = s.platform.revoke_token(&who, &id)?;
    Ok(Json(Revoked { revoked }))
}
