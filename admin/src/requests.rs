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
    /// Judge the new release afterwards (`None`: as `[releases.guard]` says).
    pub guard: Option<bool>,
    /// Start a canary with these steps (percent of the traffic) instead of
    /// switching at once; an empty list takes `[releases.canary]`'s.
    pub canary: Option<Vec<f64>>,
    /// Hold traffic around the flip (and `[releases] migrate`) for at most this long.
    pub pause: Option<std::time::Duration>,
}

/// A `POST /deploy` request.
#[derive(Debug, Clone)]
pub struct DeployRequest {
    /// The release (= image tag) to deploy.
    pub release: ReleaseName,
    /// Keep the containers of a failed deploy for inspection instead of removing them.
    pub keep_failed: bool,
    /// Judge the new release afterwards (`None`: as `[releases.guard]` says).
    pub guard: Option<bool>,
    /// End in a canary with these steps instead of a switch (empty: the configured steps).
    pub canary: Option<Vec<f64>>,
    /// Hold traffic around the flip (and `[releases] migrate`) for at most this long.
    pub pause: Option<std::time::Duration>,
}
