//! Who may do what: authentication of API tokens, users and their tokens. Only admins manage
//! users and other users' tokens; the checks live here, not in the API.

use chrono::{DateTime, Utc};

use crate::engine::auth::{self, AuthError, Principal};
use crate::engine::error::{EngineError, Result};
use crate::engine::Platform;

/// A user and the projects it owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub admin: bool,
    pub created_at: DateTime<Utc>,
    pub projects: Vec<String>,
}

/// A token as listed (and answered): never its secret.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct TokenInfo {
    pub id: i64,
    pub user: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A token just made: its text exists only in this answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedToken {
    pub id: i64,
    pub name: String,
    pub token: String,
}

/// A user just made, with its first token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedUser {
    pub name: String,
    pub admin: bool,
    pub token: IssuedToken,
}

/// What `users` commands need: "only admins manage users".
pub const MANAGE_USERS: &str = "manage users";

/// Fails unless `who` is an admin; `action` completes "only admins …".
pub fn admin_only(who: &Principal, action: &'static str) -> Result<()> {
    if who.admin {
        Ok(())
    } else {
        Err(EngineError::AdminOnly { user: who.name.clone(), action })
    }
}

impl Platform {
    /// Checks an `Authorization` header value and names the user behind it.
    pub async fn authenticate(&self, authorization: Option<Vec<u8>>) -> Result<Principal> {
        let store = self.store.clone();
        // SQLite is blocking; keep it off the async workers.
        let result = tokio::task::spawn_blocking(move || auth::authenticate(&store, authorization.as_deref()))
            .await
            .map_err(|e| EngineError::internal("the authentication task failed", e))?;
        result.map_err(|e| match e {
            AuthError::Store(e) => EngineError::from(e),
            AuthError::Missing => EngineError::TokenRequired,
            other => EngineError::TokenInvalid { message: other.to_string() },
        })
    }

    /// All users with the projects they own (admins only).
    pub fn users(&self, who: &Principal) -> Result<Vec<UserInfo>> {
        admin_only(who, MANAGE_USERS)?;
        let mut out = Vec::new();
        for u in self.store.users()? {
            let projects = self.store.projects_owned_by(&u.name)?;
            out.push(UserInfo { name: u.name, admin: u.admin, created_at: u.created_at, projects });
        }
        Ok(out)
    }

    /// Creates a user with a first token named `initial` (admins only).
    pub fn create_user(&self, who: &Principal, name: &str, admin: bool) -> Result<CreatedUser> {
        admin_only(who, MANAGE_USERS)?;
        auth::validate_user_name(name).map_err(|m| EngineError::invalid(m.code(), m.to_string()))?;
        let user = self.store.create_user(name, admin)?.ok_or_else(|| EngineError::UserExists { user: name.to_string() })?;
        let (id, token) = auth::issue_token(&self.store, user.id, "initial")?;
        tracing::info!(user = %user.name, admin = user.admin, by = %who.name, "user created");
        Ok(CreatedUser { name: user.name, admin: user.admin, token: IssuedToken { id, name: "initial".to_string(), token } })
    }

    /// Removes a user that owns no project and is not the last admin (admins only).
    pub fn delete_user(&self, who: &Principal, name: &str) -> Result<()> {
        admin_only(who, MANAGE_USERS)?;
        let user = self.store.user(name)?.ok_or_else(|| EngineError::UserNotFound { user: name.to_string() })?;
        let owned = self.store.projects_owned_by(name)?;
        if !owned.is_empty() {
            return Err(EngineError::wrong_state(
                "user_has_projects",
                format!("user `{name}` still owns {}; remove those projects first", owned.join(", ")),
            ));
        }
        if user.admin && self.store.users()?.iter().filter(|u| u.admin).count() == 1 {
            return Err(EngineError::wrong_state("last_admin", format!("`{name}` is the last admin; create another admin first")));
        }
        self.store.delete_user(name)?;
        tracing::info!(user = %name, by = %who.name, "user removed");
        Ok(())
    }

    /// Tokens of `who`, or of `user` or of everyone (`all`) for admins.
    pub fn tokens(&self, who: &Principal, user: Option<&str>, all: bool) -> Result<Vec<TokenInfo>> {
        let user = match (user, all) {
            (_, true) => {
                admin_only(who, "list every user's tokens; without --all (`?all=true`) you see your own")?;
                user
            }
            (Some(u), false) if u != who.name => {
                admin_only(who, "list another user's tokens; without --user you see your own")?;
                user
            }
            (_, false) => Some(who.name.as_str()),
        };
        Ok(self
            .store
            .tokens(user)?
            .into_iter()
            .map(|t| TokenInfo {
                id: t.id,
                user: t.user,
                name: t.name,
                created_at: t.created_at,
                last_used_at: t.last_used_at,
                revoked_at: t.revoked_at,
            })
            .collect())
    }

    /// Makes a token for `who`, or for `user` (admins only).
    pub fn create_token(&self, who: &Principal, name: &str, user: Option<&str>) -> Result<IssuedToken> {
        auth::validate_token_name(name).map_err(|m| EngineError::invalid(m.code(), m.to_string()))?;
        let user_id = match user {
            Some(u) if u != who.name => {
                admin_only(who, "make tokens for other users; without --user the token is yours")?;
                self.store.user(u)?.ok_or_else(|| EngineError::UserNotFound { user: u.to_string() })?.id
            }
            _ => who.user_id,
        };
        let (id, token) = auth::issue_token(&self.store, user_id, name)?;
        Ok(IssuedToken { id, name: name.to_string(), token })
    }

    /// Revokes a token of `who` (any token for admins); `id` as the caller gave it.
    pub fn revoke_token(&self, who: &Principal, id: &str) -> Result<i64> {
        let gone = || EngineError::TokenNotFound { token: id.to_string() };
        let n: i64 = id.parse().map_err(|_| gone())?;
        let token = self.store.token(n)?.filter(|t| who.admin || t.user == who.name).ok_or_else(gone)?;
        if let Some(at) = token.revoked_at {
            return Err(EngineError::wrong_state("already_revoked", format!("token {n} was revoked at {}", at.to_rfc3339())));
        }
        self.store.revoke_token(n)?;
        tracing::info!(token = n, user = %token.user, by = %who.name, "token revoked");
        Ok(n)
    }
}
