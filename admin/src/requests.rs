//! The requests the admin API hands the controller (besides plain names).

use canopy_proxy::ReleaseName;

/// A `POST /switch` request.
#[derive(Debug, Clone)]
pub struct SwitchRequest {
    /// Target release.
    pub release: ReleaseName,
    /// Refuse unless the generation is still this.
    pub expect_generation: Option<u64>,
    /// Skip validation.
    pub force: bool,
}

/// A `POST /deploy` request.
#[derive(Debug, Clone)]
pub struct DeployRequest {
    /// The release (= image tag) to deploy.
    pub release: ReleaseName,
    /// Keep the containers of a failed deploy for inspection instead of removing them.
    pub keep_failed: bool,
}
