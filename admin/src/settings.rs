//! The control plane's settings, as the server builds them from proxy.toml:
//! `[admin]` and `[releases]` ([`ControlSettings`], [`Seed`]) and `[docker]`
//! with each service's container ([`DeploySettings`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use canopy_docker::Healthcheck;
use canopy_proxy::ReleaseName;

use crate::priority::AdminPriority;
use crate::state::BackendMap;

/// Control-plane settings, from `[admin]` and `[releases]` in proxy.toml.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlSettings {
    /// Where the durable state lives.
    pub state_file: PathBuf,
    /// How long the previous release stays warm after a flip.
    pub validation_window: Duration,
    /// How long a retirement waits for in-flight requests before running hooks anyway.
    pub drain_timeout: Duration,
    /// Commands run (argv, `{release}` substituted) after a release is drained.
    pub retire_hooks: Vec<Vec<String>>,
    /// Limit for each retire hook (and for the migrate command).
    pub hook_timeout: Duration,
    /// Run by a paused switch or deploy before validating (argv, `{release}`
    /// substituted; empty: none).
    pub migrate: Vec<String>,
    /// Whether `x-canopy-release` request headers select registered releases.
    pub preview: bool,
    /// How often the warm previous release is quick-checked in the background,
    /// so that a rollback can trust a fresh result instead of checking inline.
    pub warm_check_interval: Duration,
    /// How often the live release is quick-checked in the background, so
    /// that a dead live release raises an alert within seconds.
    pub live_check_interval: Duration,
    /// How the admin thread asks to be scheduled; see [`crate::prioritise_current_thread`].
    pub admin_priority: AdminPriority,
    /// `[releases.guard]`: judging a new release against the one it replaced.
    pub guard: GuardSettings,
    /// `[releases.canary]`: the default canary steps.
    pub canary: CanarySettings,
    /// Refuse a switch when the candidate's start broke the live release
    /// (its checks fail once the candidate runs): a rollback would not work.
    pub require_rollback_ready: bool,
}

/// `[releases.guard]`: after a switch (while the previous release is warm)
/// and at each canary step, the new release is compared, per service, with
/// the release it replaces; a bad verdict rolls back (or aborts the canary).
#[derive(Debug, Clone, PartialEq)]
pub struct GuardSettings {
    /// Judge new releases at all (a switch or deploy may still turn it off).
    pub enabled: bool,
    /// How often the counters are read and judged.
    pub interval: Duration,
    /// The sliding window each judgement looks at.
    pub window: Duration,
    /// How far back before a switch the previous release's figures (its
    /// baseline) are taken from.
    pub baseline: Duration,
    /// Answers a service needs in the window before it is judged at all.
    pub min_requests: u64,
    /// Consecutive bad judgements before canopy acts.
    pub failure_limit: u32,
    /// Error ratio (5xx answers and upstream failures over all answers)
    /// above which a release is bad, when it is also above the baseline's.
    pub max_error_ratio: f64,
    /// Latency above this many times the baseline's is bad...
    pub max_latency_ratio: f64,
    /// ...at this quantile (0.99: p99)...
    pub latency_quantile: f64,
    /// ...when it is also above this floor (2 ms against 1 ms is no regression).
    pub latency_floor: Duration,
}

impl Default for GuardSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(1),
            window: Duration::from_secs(10),
            baseline: Duration::from_secs(60),
            min_requests: 20,
            failure_limit: 2,
            max_error_ratio: 0.05,
            max_latency_ratio: 2.0,
            latency_quantile: 0.99,
            latency_floor: Duration::from_millis(25),
        }
    }
}

/// `[releases.canary]`: what `--canary` without steps, and a deploy with a
/// canary, use.
#[derive(Debug, Clone, PartialEq)]
pub struct CanarySettings {
    /// Each step's share of the traffic, in percent (the last passing step
    /// ends in the switch).
    pub steps: Vec<f64>,
    /// How long each step runs.
    pub step_duration: Duration,
}

impl Default for CanarySettings {
    fn default() -> Self {
        Self { steps: vec![10.0, 50.0], step_duration: Duration::from_secs(60) }
    }
}

/// How the state is seeded when no state file exists.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Seed {
    /// Release made live on first start.
    pub initial: Option<ReleaseName>,
    /// Releases registered on first start, with explicit backends.
    pub releases: BTreeMap<ReleaseName, BackendMap>,
}

/// `[docker]` of proxy.toml plus each service's image and container table.
#[derive(Debug, Clone, PartialEq)]
pub struct DeploySettings {
    /// The engine's socket (`unix:///var/run/docker.sock`, `tcp://host:2375`).
    pub socket: String,
    /// The stack network every release's containers join (created if missing).
    pub network: String,
    /// Stopped releases kept for a fast redeploy (default 3); older ones are removed.
    pub keep_releases: usize,
    /// Longest a deploy waits for its containers to become healthy (default 5m).
    pub deploy_timeout: Duration,
    /// SIGTERM-to-SIGKILL time when stopping a container (default 10s).
    pub stop_timeout: Duration,
    /// Per service, in topology order: how canopy runs it, `None` for
    /// services canopy does not run (their backends come from the template
    /// or `register`).
    pub services: Vec<Option<ServiceContainer>>,
}

/// How every release of one service runs: `image` and `[service.container]`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceContainer {
    /// Image repository; the tag is the release name.
    pub repository: String,
    /// Environment, `KEY=VALUE`: the env file's lines, then the `env` table.
    pub env: Vec<String>,
    /// Volumes in `docker run -v` form.
    pub volumes: Vec<String>,
    /// Replaces the image's CMD.
    pub command: Option<Vec<String>>,
    /// User to run as.
    pub user: Option<String>,
    /// Replaces the image's HEALTHCHECK.
    pub healthcheck: Option<Healthcheck>,
    /// Memory limit in bytes.
    pub memory_bytes: Option<i64>,
    /// CPU limit.
    pub cpus: Option<f64>,
    /// `false`: only the live release's container runs (a worker running
    /// scheduled jobs): every flip starts the new live release's and stops
    /// the old one's. Default `true`.
    pub overlap: bool,
}
