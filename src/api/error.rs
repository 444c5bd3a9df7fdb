//! The one mapping from the engine's errors to HTTP answers (the answer's shape is
//! [`crate::http_error`], shared with the gateway).

use axum::http::StatusCode;

pub use crate::http_error::ApiError;

use crate::engine::error::EngineError;
use crate::engine::source::SourceError;

/// The one mapping from the engine's errors to HTTP answers.
impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        use EngineError as E;
        let message = e.to_string();
        match e {
            E::ProjectNotFound { .. } => Self::not_found("project_not_found", message),
            E::DeploymentNotFound { .. } => Self::not_found("deployment_not_found", message),
            E::FunctionNotFound { .. } => Self::not_found("function_not_found", message),
            E::RunNotFound { .. } => Self::not_found("run_not_found", message),
            E::SecretNotFound { .. } => Self::not_found("secret_not_found", message),
            E::UserNotFound { .. } => Self::not_found("user_not_found", message),
            E::TokenNotFound { .. } => Self::not_found("token_not_found", message),
            E::NameTaken { .. } => Self::new(StatusCode::CONFLICT, "name_taken", message),
            E::UserExists { .. } => Self::new(StatusCode::CONFLICT, "user_exists", message),
            E::Invalid { code, message } => Self::unprocessable(code, message),
            E::WrongState { code, message } => Self::new(StatusCode::CONFLICT, code, message),
            E::AdminOnly { .. } => Self::forbidden("admin_only", message),
            E::TokenRequired => Self::unauthorized("token_required", message),
            E::TokenInvalid { message } => Self::unauthorized("token_invalid", message),
            E::UploadTooLarge { message } => Self::new(StatusCode::PAYLOAD_TOO_LARGE, "upload_too_large", message),
            E::Source(s) => match s {
                SourceError::BadUrl(_) => Self::unprocessable("invalid_repository", message),
                SourceError::Timeout(..) => Self::new(StatusCode::GATEWAY_TIMEOUT, "repository_timeout", message),
                SourceError::NoSuchRef { .. } => Self::unprocessable("ref_not_found", message),
                _ => Self::unprocessable("repository_unreachable", message),
            },
            E::EngineUnavailable(d) => Self::unavailable("docker_unavailable", d.to_string()),
            E::StorageFull { dir, .. } => {
                ApiError::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    "insufficient_storage",
                    format!("the server's data directory {dir} is out of space (database or disk is full); nothing live is affected, but nothing can be recorded until space is freed on its file system"),
                )
            }
            E::RestartFailed(ref source) => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "restart_failed", format!("{message}: {source}"))
            }
            E::Internal { .. } => ApiError::internal(&e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::response::IntoResponse;

    #[tokio::test]
    async fn shape_and_retry_after() {
        let r = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "queue_full", "busy").with_retry_after(1).into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
        let body = axum::body::to_bytes(r.into_body(), 1024).await.expect("body");
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v, serde_json::json!({"error": {"code": "queue_full", "message": "busy"}}));
    }

    /// Every engine error variant, with the status and code its answer carries.
    #[test]
    fn every_engine_error_maps_to_its_status_and_code() {
        use crate::engine::error::EngineError as E;
        let s = |x: &str| x.to_string();
        let driver = || crate::engine::error::DriverError::Unreachable(s("connection refused"));
        let cases: Vec<(E, StatusCode, &str)> = vec![
            (E::ProjectNotFound { project: s("p"), hint: s("") }, StatusCode::NOT_FOUND, "project_not_found"),
            (E::DeploymentNotFound { project: s("p"), deployment: s("x") }, StatusCode::NOT_FOUND, "deployment_not_found"),
            (E::FunctionNotFound { project: s("p"), function: s("f"), hint: s("") }, StatusCode::NOT_FOUND, "function_not_found"),
            (E::RunNotFound { project: s("p"), function: s("f"), run: s("9") }, StatusCode::NOT_FOUND, "run_not_found"),
            (E::SecretNotFound { project: s("p"), secret: s("K") }, StatusCode::NOT_FOUND, "secret_not_found"),
            (E::UserNotFound { user: s("u") }, StatusCode::NOT_FOUND, "user_not_found"),
            (E::TokenNotFound { token: s("7") }, StatusCode::NOT_FOUND, "token_not_found"),
            (E::NameTaken { project: s("p") }, StatusCode::CONFLICT, "name_taken"),
            (E::UserExists { user: s("u") }, StatusCode::CONFLICT, "user_exists"),
            (E::invalid("invalid_ref", "bad"), StatusCode::UNPROCESSABLE_ENTITY, "invalid_ref"),
            (E::wrong_state("last_admin", "last"), StatusCode::CONFLICT, "last_admin"),
            (E::AdminOnly { user: s("u"), action: "manage users" }, StatusCode::FORBIDDEN, "admin_only"),
            (E::TokenRequired, StatusCode::UNAUTHORIZED, "token_required"),
            (E::TokenInvalid { message: s("revoked") }, StatusCode::UNAUTHORIZED, "token_invalid"),
            (E::UploadTooLarge { message: s("over 64 MiB") }, StatusCode::PAYLOAD_TOO_LARGE, "upload_too_large"),
            (E::Source(SourceError::BadUrl(s("bad url"))), StatusCode::UNPROCESSABLE_ENTITY, "invalid_repository"),
            (
                E::Source(SourceError::Timeout(std::time::Duration::from_secs(1), s("u"))),
                StatusCode::GATEWAY_TIMEOUT,
                "repository_timeout",
            ),
            (
                E::Source(SourceError::NoSuchRef { url: s("u"), reference: s("r") }),
                StatusCode::UNPROCESSABLE_ENTITY,
                "ref_not_found",
            ),
            (
                E::Source(SourceError::Unreachable { url: s("u"), detail: s("d") }),
                StatusCode::UNPROCESSABLE_ENTITY,
                "repository_unreachable",
            ),
            (E::EngineUnavailable(driver()), StatusCode::SERVICE_UNAVAILABLE, "docker_unavailable"),
            (E::RestartFailed(driver().into()), StatusCode::INTERNAL_SERVER_ERROR, "restart_failed"),
            (E::internal("the store failed", driver()), StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        ];
        for (e, status, code) in cases {
            let shown = format!("{e:?}");
            let display = e.to_string();
            let a = ApiError::from(e);
            assert_eq!((a.status, a.code), (status, code), "{shown}");
            // The client reads the engine's own message, except where the source adds to it
            // or the details belong only in the log.
            if !["docker_unavailable", "restart_failed", "internal"].contains(&code) {
                assert_eq!(a.message, display, "{shown}");
            }
        }
    }

    /// The messages clients see stay the ones they saw before the engine had its own errors.
    #[test]
    fn engine_error_messages_are_kept() {
        use crate::engine::error::EngineError as E;
        let a = ApiError::from(E::NameTaken { project: "p".into() });
        assert_eq!(a.message, "the project name `p` is taken by another user; deploy under another `name`");
        let a = ApiError::from(E::EngineUnavailable(crate::engine::error::DriverError::Unreachable("down".into())));
        assert_eq!(a.message, crate::engine::error::DriverError::Unreachable("down".into()).to_string());
        let a = ApiError::from(E::internal("x", crate::engine::error::DriverError::Unreachable("secret detail".into())));
        assert_eq!(a.message, "internal server error; see the server log", "internal details stay in the log");
    }
}
