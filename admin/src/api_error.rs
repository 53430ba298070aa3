//! `ApiError`: every way an admin request is refused, and the one place
//! where refusals become HTTP status codes and JSON bodies.

use crate::error::ControlError;
use crate::replies::ErrorReply;
use crate::state::StateError;

/// A refused admin request: the controller's refusal, or one of the API's
/// own (bad JSON, token, origin, method, size). The state is unchanged
/// whenever one is returned.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The controller refused or failed the change.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// Malformed request: bad JSON, wrong types, invalid names (400).
    #[error("{0}")]
    BadRequest(String),
    /// Missing or wrong bearer token (401).
    #[error("missing or invalid bearer token")]
    Unauthorized,
    /// Cross-origin browser request (403).
    #[error("{0}")]
    Forbidden(String),
    /// Unknown path (404).
    #[error("{kind} `{name}` not found")]
    NotFound {
        /// `path` (or `release`).
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
    /// Request body too large (413).
    #[error("request body larger than {0} bytes")]
    TooLarge(usize),
}

impl From<StateError> for ApiError {
    fn from(e: StateError) -> Self {
        ApiError::Control(e.into())
    }
}

impl ApiError {
    /// The HTTP status for this error.
    pub fn status(&self) -> u16 {
        match self {
            ApiError::Control(e) => control_status(e),
            ApiError::BadRequest(_) => 400,
            ApiError::Unauthorized => 401,
            ApiError::Forbidden(_) => 403,
            ApiError::NotFound { .. } => 404,
            ApiError::MethodNotAllowed { .. } => 405,
            ApiError::TooLarge(_) => 413,
        }
    }

    /// The JSON body: `error` always, plus the report, the steps and the
    /// log lines where they apply.
    pub fn body(&self) -> ErrorReply {
        let error = self.to_string();
        match self {
            ApiError::Control(ControlError::Validation(r)) => ErrorReply { error, report: Some((**r).clone()), ..ErrorReply::default() },
            ApiError::Control(ControlError::Deploy(f)) => {
                ErrorReply { error, report: f.report.clone(), steps: Some(f.steps.clone()), logs: Some(f.logs.clone()) }
            }
            ApiError::Control(ControlError::Containers { logs, .. }) => {
                ErrorReply { error, logs: Some(logs.clone()), ..ErrorReply::default() }
            }
            _ => ErrorReply { error, ..ErrorReply::default() },
        }
    }
}

/// The status of a controller refusal.
fn control_status(e: &ControlError) -> u16 {
    match e {
        ControlError::State(StateError::NotFound { .. }) => 404,
        ControlError::State(_) | ControlError::Busy | ControlError::Conflict(_) => 409,
        ControlError::Invalid(_) => 400,
        ControlError::NotEnabled(_) => 404,
        ControlError::Validation(_)
        | ControlError::Config(_)
        | ControlError::Containers { .. }
        | ControlError::NotRollbackReady(_)
        | ControlError::Unresolved { .. } => 422,
        ControlError::Upgrading | ControlError::Unavailable(_) => 503,
        ControlError::Persist(_) => 500,
        ControlError::Deploy(f) if f.engine_failed => 502,
        ControlError::Deploy(_) => 422,
    }
}
