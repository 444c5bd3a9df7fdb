//! `/api/whoami`, `/api/users`: who the caller is, and users (admins only).

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use crate::api::error::ApiError;
use crate::api::types::{Deleted, NewUser, TokenCreated, UserAnswer, UserCreated, UserList, WhoAmI};
use crate::api::{json_body, AppState};
use crate::engine::Principal;

pub(super) async fn whoami(Extension(who): Extension<Principal>) -> Json<WhoAmI> {
    Json(WhoAmI { user: who.name, admin: who.admin })
}

pub(super) async fn list_users(State(s): State<AppState>, Extension(who): Extension<Principal>) -> Result<Json<UserList>, ApiError> {
    let users = s.platform.users(&who)?;
    Ok(Json(UserList {
        users: users
            .into_iter()
            .map(|u| UserAnswer { name: u.name, admin: u.admin, created_at: u.created_at, projects: u.projects })
            .collect(),
    }))
}

pub(super) async fn create_user(State(s): State<AppState>, Extension(who): Extension<Principal>, req: Request) -> Result<Response, ApiError> {
    // Refused before the body is read, as before: a non-admin learns nothing from a bad body.
    crate::engine::access::admin_only(&who, crate::engine::access::MANAGE_USERS)?;
    let body: NewUser = json_body(req.into_body()).await?;
    let u = s.platform.create_user(&who, &body.name, body.admin)?;
    let token = TokenCreated { id: u.token.id, name: u.token.name, token: u.token.token };
    Ok((StatusCode::CREATED, Json(UserCreated { name: u.name, admin: u.admin, token })).into_response())
}

pub(super) async fn delete_user(State(s): State<AppState>, Extension(who): Extension<Principal>, Path(name): Path<String>) -> Result<Json<Deleted>, ApiError> {
    s.platform.delete_user(&who, &name)?;
    Ok(Json(Deleted { deleted: name }))
}
