//! The engine's one error type: what went wrong, in domain terms. It knows nothing of HTTP;
//! `api::error` turns each variant into a status and a stable code.

use crate::infra::store::StoreError;

/// The sources some variants carry, for callers that build or inspect them.
pub use crate::engine::source::SourceError;
pub use crate::infra::driver::DriverError;

/// Why an engine operation failed. Callers branch on the variant; the message says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// `hint`: empty, or the closest name the caller may see and what to type next.
    #[error("no project `{project}`{hint}")]
    ProjectNotFound { project: String, hint: String },
    /// `deployment` is the id as the caller gave it (it may not even be a number).
    #[error("no deployment `{deployment}` in project `{project}`")]
    DeploymentNotFound { project: String, deployment: String },
    /// `hint`: empty, or the closest live name and the project's functions.
    #[error("project `{project}` has no live function `{function}`{hint}")]
    FunctionNotFound { project: String, function: String, hint: String },
    /// `run` is the id as the caller gave it.
    #[error("`{project}/{function}` has no run `{run}`; see `eserveless runs {project}/{function}`")]
    RunNotFound { project: String, function: String, run: String },
    #[error("project `{project}` has no secret `{secret}`")]
    SecretNotFound { project: String, secret: String },
    #[error("no user `{user}`")]
    UserNotFound { user: String },
    /// `token` is the id as the caller gave it; another user's token is not found either.
    #[error("no token `{token}` of yours")]
    TokenNotFound { token: String },

    #[error("the project name `{project}` is taken by another user; deploy under another `name`")]
    NameTaken { project: String },
    #[error("user `{user}` exists already")]
    UserExists { user: String },

    /// A request value the engine refuses; `code` is stable (clients branch on it).
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    /// The thing exists but is in a state that does not allow the operation; `code` is stable.
    #[error("{message}")]
    WrongState { code: &'static str, message: String },

    /// `action`: what only admins may do, and what the user can do instead.
    #[error("user `{user}` is not an admin; only admins {action}")]
    AdminOnly { user: String, action: &'static str },
    #[error("this endpoint needs an API token: send `Authorization: Bearer <token>` (see `eserveless login`)")]
    TokenRequired,
    /// The token is malformed, unknown or revoked; `message` says which and what to do.
    #[error("{message}")]
    TokenInvalid { message: String },

    /// An upload larger than the server's cap (`--max-upload`); the message names the cap.
    #[error("{message}")]
    UploadTooLarge { message: String },

    /// Reading the repository failed (bad URL, unreachable, unknown ref, timeout).
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The container engine (Docker) did not answer.
    #[error("the container engine is unavailable")]
    EngineUnavailable(#[source] DriverError),
    /// The data directory is full: nothing can be recorded until space is freed.
    #[error("the data directory {dir} is out of space")]
    StorageFull {
        /// The data directory, for the message.
        dir: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Secrets were saved but the live functions could not be restarted with them.
    #[error("the secrets are saved, but the functions could not be restarted with them")]
    RestartFailed(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A failure inside the server: nothing the caller can fix.
    #[error("{what}")]
    Internal {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl EngineError {
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        EngineError::Invalid { code, message: message.into() }
    }
    pub fn wrong_state(code: &'static str, message: impl Into<String>) -> Self {
        EngineError::WrongState { code, message: message.into() }
    }
    pub fn project_not_found(project: &str) -> Self {
        EngineError::ProjectNotFound { project: project.to_string(), hint: String::new() }
    }
    pub fn internal(what: &'static str, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        EngineError::Internal { what, source: source.into() }
    }
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        if e.is_storage_full() {
            // /healthz reports the data directory degraded for a while (while free space stays low).
            crate::infra::datadir::note_storage_full();
            let dir = crate::infra::datadir::storage_dir_display();
            tracing::error!(data_dir = %dir, "a write failed: database or disk is full");
            EngineError::StorageFull { dir, source: Box::new(e) }
        } else {
            EngineError::internal("the store failed", e)
        }
    }
}

/// The engine's results.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;
