//! Why a command was refused.

use canopy_proxy::ReleaseName;

/// Why a command was refused; the state is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// The named release is not registered.
    #[error("release `{name}` is not registered")]
    NotFound {
        /// The name asked for.
        name: ReleaseName,
    },
    /// The release asked for is already live.
    #[error("release `{name}` is already live")]
    AlreadyLive {
        /// The live release.
        name: ReleaseName,
    },
    /// The caller's view is out of date.
    #[error(
        "stale generation: expected {expected}, current is {current} (another flip changed the live release first; nothing changed, retry)"
    )]
    StaleGeneration {
        /// What the caller expected.
        expected: u64,
        /// The current generation.
        current: u64,
    },
    /// Rollback with nothing to roll back to.
    #[error("nothing to roll back to: no previous release is warm")]
    NoPrevious,
    /// The live release cannot be retired.
    #[error("release `{name}` is live; switch to another release before retiring it")]
    RetireLive {
        /// The live release.
        name: ReleaseName,
    },
    /// A canary runs: other flips wait until it is promoted or aborted.
    #[error("a canary of release `{name}` is running: promote or abort it first (`canopy canary promote|abort`)")]
    CanaryRunning {
        /// The canary's candidate.
        name: ReleaseName,
    },
    /// No canary runs.
    #[error("no canary is running")]
    NoCanary,
    /// A canary needs a live release to compare with and share traffic with.
    #[error("a canary needs a live release; switch to a first release instead")]
    NoLive,
    /// A deploy is already running (or was, when canopy stopped).
    #[error("a deploy of release `{name}` is in progress")]
    DeployRunning {
        /// The release being deployed.
        name: ReleaseName,
    },
}
