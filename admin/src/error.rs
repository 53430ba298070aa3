//! `ControlError`: every way the controller refuses or fails a change, in
//! its own terms. The admin API maps each to a status code at the edge
//! (`api::ApiError`); the state is unchanged whenever one is returned.

use crate::persist::PersistError;
use crate::replies::DeployFailure;
use crate::report::Report;
use crate::state::StateError;

/// A refused or failed control-plane operation; nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The state machine refused: release not registered, already live,
    /// stale generation, nothing to roll back to, the live release retired,
    /// a deploy running.
    #[error(transparent)]
    State(#[from] StateError),
    /// Another switch, rollback or deploy is running (one at a time).
    #[error("another switch or rollback is in progress")]
    Busy,
    /// Refused by the state of things: a deploy already running or
    /// interrupted, a release already live.
    #[error("{0}")]
    Conflict(String),
    /// The request names something invalid: an unknown service, an empty
    /// backend list, a backend that cannot be resolved.
    #[error("{0}")]
    Invalid(String),
    /// A release to register has backends whose host names do not resolve:
    /// it would answer every request of those services with a 502.
    #[error(
        "release `{release}` not registered: {} (start its backends first, give them with --backend SERVICE=HOST:PORT, or register anyway with --allow-unresolved / `?allow_unresolved=true`)",
        .unresolved.join("; ")
    )]
    Unresolved {
        /// The release.
        release: canopy_proxy::ReleaseName,
        /// `service: cannot resolve `host:port`: reason`, for each.
        unresolved: Vec<String>,
    },
    /// The operation needs a part of proxy.toml this canopy runs without
    /// (`[docker]` for a deploy, `listen-tls` for certificates, a config file
    /// for a reload).
    #[error("{0}")]
    NotEnabled(String),
    /// Validation failed; the report says which check and why.
    #[error("validation of release `{}` failed: {}", .0.release, .0.summary())]
    Validation(Box<Report>),
    /// The candidate's start broke the live release (its checks fail now), so
    /// a rollback would not work; refused with `require-rollback-ready`.
    #[error("{0}")]
    NotRollbackReady(String),
    /// A config or certificate reload was refused: the message names the
    /// file, line and column, or the setting that needs `serve --upgrade`.
    #[error("{0}")]
    Config(String),
    /// A container the flip needs could not be started or did not become
    /// ready (an `overlap = false` container of the target release).
    #[error("{error}")]
    Containers {
        /// Which container and why.
        error: String,
        /// Its last log lines.
        logs: Vec<String>,
    },
    /// canopy is being upgraded: this process has handed the state to its
    /// successor, or is the successor and its predecessor still finishes
    /// requests with the release table it had. Retry in a moment.
    #[error("canopy is being upgraded: state changes wait until the previous process has finished; nothing changed, retry in a moment")]
    Upgrading,
    /// In a fleet: etcd is unreachable or has no quorum; this node serves
    /// its last applied state and refuses changes (503).
    #[error("{0}")]
    Unavailable(String),
    /// The state could not be written.
    #[error("{0}; nothing changed")]
    Persist(#[from] PersistError),
    /// A deploy was refused (image, container health, checks) or the engine
    /// failed; nothing live changed. Carries the steps that ran and the
    /// failing container's last log lines.
    #[error("deploy refused: {}", .0.error)]
    Deploy(Box<DeployFailure>),
}
