//! `ApiError`: every way an admin request can be refused, with its status code.

use serde_json::json;

use crate::persist::PersistError;
use crate::report::Report;
use crate::state::StateError;

/// A refused admin request. Each variant maps to one status code and a JSON body
/// `{"error": "...", ...}`; the state is unchanged whenever one is returned.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed request: bad JSON, wrong types, invalid names (400).
    #[error("{0}")]
    BadRequest(String),
    /// Missing or wrong bearer token (401).
    #[error("missing or invalid bearer token")]
    Unauthorized,
    /// Cross-origin browser request (403).
    #[error("{0}")]
    Forbidden(String),
    /// Unknown release or path (404).
    #[error("{kind} `{name}` not found")]
    NotFound {
        /// `release` or `path`.
        kind: &'static str,
        /// What was asked for.
        name: String,
    },
    /// Method not allowed on this path (405).
    #[error("method {method} not allowed on {path}")]
    MethodNotAllowed {
        /// The method used.
        method: String,
        /// The path.
        path: String,
    },
    /// Conflicts with current state: switch in progress, stale generation,
    /// retiring the live release (409).
    #[error("{0}")]
    Conflict(String),
    /// Request body too large (413).
    #[error("request body larger than {0} bytes")]
    TooLarge(usize),
    /// Validation failed; the report says which check and why (422).
    #[error("validation of release `{}` failed: {}", .0.release, .0.summary())]
    Validation(Box<Report>),
    /// canopy is being upgraded (503 with `Retry-After: 1`): this process has
    /// handed the state to its successor, or is the successor and its
    /// predecessor still finishes requests with the release table it had.
    /// Nothing changed; retry in a moment (the same address answers).
    #[error("canopy is being upgraded: state changes wait until the previous process has finished; nothing changed, retry in a moment")]
    Upgrading,
    /// A config reload was refused: the file is invalid (the message names
    /// file, line and column) or a change needs a new process (422).
    #[error("{0}")]
    Config(String),
    /// The state could not be written; nothing changed (500).
    #[error("{0}; nothing changed")]
    Persist(#[from] PersistError),
    /// A deploy was refused (422: image, container health, checks) or the
    /// engine failed (502); nothing live changed. The body carries the steps
    /// that ran and the failing container's last log lines.
    #[error("deploy refused: {}", .0.error)]
    Deploy(Box<crate::controller::DeployFailure>),
}

impl From<StateError> for ApiError {
    fn from(e: StateError) -> Self {
        match &e {
            StateError::NotFound { name } => ApiError::NotFound { kind: "release", name: name.to_string() },
            _ => ApiError::Conflict(e.to_string()),
        }
    }
}

impl ApiError {
    /// The HTTP status for this error.
    pub fn status(&self) -> u16 {
        match self {
            ApiError::BadRequest(_) => 400,
            ApiError::Unauthorized => 401,
            ApiError::Forbidden(_) => 403,
            ApiError::NotFound { .. } => 404,
            ApiError::MethodNotAllowed { .. } => 405,
            ApiError::Conflict(_) => 409,
            ApiError::TooLarge(_) => 413,
            ApiError::Validation(_) => 422,
            ApiError::Config(_) => 422,
            ApiError::Persist(_) => 500,
            ApiError::Upgrading => 503,
            ApiError::Deploy(f) => f.status,
        }
    }

    /// The JSON body: `error` always, plus `report` for validation failures.
    pub fn body(&self) -> serde_json::Value {
        match self {
            ApiError::Validation(r) => json!({ "error": self.to_string(), "report": r }),
            ApiError::Deploy(f) => json!({ "error": self.to_string(), "steps": f.steps, "logs": f.logs, "report": f.report }),
            _ => json!({ "error": self.to_string() }),
        }
    }
}
