//! `/api/whoami`, `/api/users`: who the caller is, and users (admins only).

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use crate::api::error::ApiError;
use crate::api::openapi::{ErrorBody, TokenOrServer};
use crate::api::types::{Deleted, NewUser, TokenCreated, UserAnswer, UserCreated, UserList, WhoAmI};
use crate::api::{json_body, ApiPath, AppState};
use crate::engine::Principal;

#[utoipa::path(
    get,
    path = "/api/whoami",
    tag = "users",
    security(("bearer" = [])),
    extensions(("x-eserveless-access" = json!("user"))),
    responses(
        (status = 200, description = "The caller", body = WhoAmI),
        TokenOrServer,
    ),
)]
pub(super) async fn whoami(Extension(who): Extension<Principal>) -> Json<WhoAmI> {
    Json(WhoAmI { user: who.name, admin: who.admin })
}

#[utoipa::path(
    get,
    path = "/api/users",
    tag = "users",
    security(("bearer" = [])),
    extensions(("x-eserveless-access" = json!("admin"))),
    responses(
        (status = 200, description = "Every user", body = UserList),
        (status = 403, description = "The caller is not an admin (`admin_only`)", body = ErrorBody),
        TokenOrServer,
    ),
)]
pub(super) async fn list_users(State(s): State<AppState>, Extension(who): Extension<Principal>) -> Result<Json<UserList>, ApiError> {
    let users = s.platform.users(&who)?;
    Ok(Json(UserList {
        users: users
            .into_iter()
            .map(|u| UserAnswer { name: u.name, admin: u.admin, created_at: u.created_at, projects: u.projects })
            .collect(),
    }))
}

#[utoipa::path(
    post,
    path = "/api/users",
    tag = "users",
    security(("bearer" = [])),
    extensions(("x-eserveless-access" = json!("admin"))),
    request_body = NewUser,
    responses(
        (status = 201, description = "The user and its first token (shown this once)", body = UserCreated),
        (status = 400, description = "The body is not JSON (`malformed_json`)", body = ErrorBody),
        (status = 403, description = "The caller is not an admin (`admin_only`)", body = ErrorBody),
        (status = 409, description = "A user of that name exists (`user_exists`)", body = ErrorBody),
        (status = 413, description = "The body is larger than 64 KiB (`body_too_large`)", body = ErrorBody),
        (status = 422, description = "The body does not match, or the name is not valid (`invalid_body`, `invalid_name`)", body = ErrorBody),
        (status = 507, description = "The data directory is full (`insufficient_storage`)", body = ErrorBody),
        TokenOrServer,
    ),
)]
pub(super) async fn create_user(State(s): State<AppState>, Extension(who): Extension<Principal>, req: Request) -> Result<Response, ApiError> {
    // Refused before the body is read, as before: a non-admin learns nothing from a bad body.
    crate::engine::access::admin_only(&who, crate::engine::access::MANAGE_USERS)?;
    let body: NewUser = json_body(req.into_body()).await?;
    let u = s.platform.create_user(&who, &body.name, body.admin)?;
    let token = TokenCreated { id: u.token.id, name: u.token.name, token: u.token.token };
    Ok((StatusCode::CREATED, Json(UserCreated { name: u.name, admin: u.admin, token })).into_response())
}

#[utoipa::path(
    delete,
    path = "/api/users/{name}",
    tag = "users",
    security(("bearer" = [])),
    extensions(("x-eserveless-access" = json!("admin"))),
    params(("name" = String, Path, description = "The user")),
    responses(
        (status = 200, description = "The user was removed, with its tokens", body = Deleted),
        (status = 403, description = "The caller is not an admin (`admin_only`)", body = ErrorBody),
        (status = 404, description = "No such user (`user_not_found`)", body = ErrorBody),
        (status = 409, description = "The last admin, or a user who still owns projects (`last_admin`, `user_has_projects`)", body = ErrorBody),
        (status = 507, description = "The data directory is full (`insufficient_storage`)", body = ErrorBody),
        TokenOrServer,
    ),
)]
pub(super) async fn delete_user(State(s): State<AppState>, Extension(who): Extension<Principal>, ApiPath(name): ApiPath<String>) -> Result<Json<Deleted>, ApiError> {
    s.platform.delete_user(&who, &name)?;
    Ok(Json(Deleted { deleted: name }))
}
