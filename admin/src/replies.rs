//! The admin API's replies, typed: what the controller returns, the API
//! serialises and the CLI (`src/client.rs`) deserialises, one definition
//! each. Views of the state for `GET /status` are in `view.rs`.

use canopy_docker::{ContainerState, Health};
use canopy_proxy::ReleaseName;
use serde::{Deserialize, Serialize};

use crate::guard::Readiness;
use crate::report::Report;
use crate::state::{Maintenance, Previous};

/// The reply to a successful switch or rollback.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlipReply {
    /// Live release now.
    pub live: ReleaseName,
    /// Release live before (now warm until `retire_at`).
    pub previous: Option<Previous>,
    /// Generation now.
    pub generation: u64,
    /// Validation was skipped on request.
    pub forced: bool,
    /// The validation report (absent when forced). For a rollback this may be
    /// the background watch's report of the warm release (`mode: "watch"`).
    pub report: Option<Report>,
    /// Validation + persist + flip, in milliseconds.
    pub duration_ms: f64,
    /// Of which checks run by this call (0 when forced or when a watched
    /// report was fresh enough).
    pub validation_ms: f64,
    /// Of which the durable state write.
    pub persist_ms: f64,
    /// `overlap = false` containers of the new live release started for the
    /// flip, and of the old one stopped after it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<ContainerStep>,
    /// For a switch: whether the release live before still passes its checks
    /// now that the new one has started (a rollback to it would work).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_ready: Option<Readiness>,
    /// Things the operator should know (the release was rolled back by
    /// canopy before).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// With `canary`: the canary started (nothing flipped yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryView>,
    /// In a fleet: which nodes applied the flip, and when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<crate::cluster::FleetAck>,
}

/// A canary in progress.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CanaryView {
    /// The candidate.
    pub release: ReleaseName,
    /// Its share of the traffic now, in percent.
    pub weight: f64,
    /// The current step (0-based) of `steps`.
    pub step: usize,
    /// Every step's share, in percent; the last passing step ends in the switch.
    pub steps: Vec<f64>,
    /// When the current step began (Unix ms).
    pub step_started_at: u64,
    /// When it ends (Unix ms), unless the guard or an operator acts first.
    pub step_ends_at: u64,
    /// The guard judges each step against the live release in the same period.
    pub guarded: bool,
}

impl CanaryView {
    /// The view of `c`.
    pub fn of(c: &crate::state::CanaryState) -> Self {
        CanaryView {
            release: c.release.clone(),
            weight: f64::from(c.weight()) / 100.0,
            step: c.step,
            steps: c.steps.iter().map(|w| f64::from(*w) / 100.0).collect(),
            step_started_at: c.step_started_at,
            step_ends_at: c.step_started_at + c.step_ms,
            guarded: c.guarded,
        }
    }
}

/// A container started or stopped by a flip (`overlap = false`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerStep {
    /// `start` or `stop`.
    pub action: String,
    /// The service it runs.
    pub service: String,
    /// The container.
    pub name: String,
    /// How long it took, in milliseconds (a start includes becoming ready).
    pub ms: f64,
}

/// What a retire hook did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HookResult {
    /// The command run.
    pub argv: Vec<String>,
    /// Exit 0 within the timeout.
    pub passed: bool,
    /// Exit status or why it failed.
    pub reason: String,
    /// Captured output (truncated).
    pub output: Option<String>,
}

/// The reply to a retirement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RetireReply {
    /// The retired release.
    pub release: ReleaseName,
    /// All in-flight requests finished before the hooks ran.
    pub drained: bool,
    /// Requests still in flight when the drain timeout ended.
    pub inflight_left: i64,
    /// Hook results, in order.
    pub hooks: Vec<HookResult>,
}

/// The reply to a successful reload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReloadReply {
    /// Whether anything changed.
    pub changed: bool,
    /// What changed.
    pub changes: Vec<String>,
    /// The generation, which a reload leaves as it was (it is no flip).
    pub generation: u64,
}

/// One step of a deploy, as the reply and the CLI show it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeployStep {
    /// `network`, `pull`, `create`, `start`, `healthy`, `register`, `checks`, `switch`, `stop`.
    pub step: String,
    /// The service it was about, if one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// What happened.
    pub detail: String,
    /// How long it took, in milliseconds.
    pub ms: f64,
}

/// The reply to a successful deploy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeployReply {
    /// The release now live.
    pub release: ReleaseName,
    /// The release live before, if any (warm for the validation window).
    pub previous: Option<ReleaseName>,
    /// Generation after the switch.
    pub generation: u64,
    /// Every step in order.
    pub steps: Vec<DeployStep>,
    /// The validation report the switch rests on.
    pub report: Option<Report>,
    /// The whole deploy, in milliseconds.
    pub duration_ms: f64,
    /// Whether the release live before still works (see [`FlipReply::rollback_ready`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_ready: Option<Readiness>,
    /// Things the operator should know.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// With `canary`: the canary started instead of the switch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryView>,
}

/// A refused or failed deploy: why, the steps done (all undone since), and
/// the failing container's last log lines.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeployFailure {
    /// The engine failed (or could not be reached), as opposed to the
    /// release being refused (image, health, checks).
    #[serde(skip)]
    pub engine_failed: bool,
    /// The reason.
    pub error: String,
    /// The steps that ran, the failing one last.
    pub steps: Vec<DeployStep>,
    /// Last log lines of the container that failed, if one did.
    pub logs: Vec<String>,
    /// The validation report, when checks failed.
    pub report: Option<Report>,
}

/// An error reply: `{"error": ...}` plus, where they apply, the validation
/// report, the deploy's steps and the failing container's log lines.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ErrorReply {
    /// Why the request was refused; nothing changed.
    pub error: String,
    /// The failed validation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<Report>,
    /// A refused deploy's steps, the failing one last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<DeployStep>>,
    /// The failing container's last log lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs: Option<Vec<String>>,
}

/// One canopy container of this stack, for `/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerView {
    /// Container name.
    pub name: String,
    /// Its `canopy.release` label.
    pub release: String,
    /// Its `canopy.service` label.
    pub service: String,
    /// Image reference.
    pub image: String,
    /// Image tag.
    pub tag: Option<String>,
    /// `running`, `exited`, ...
    pub state: ContainerState,
    /// `healthy`, `starting`, `unhealthy`, `none`.
    pub health: Health,
    /// Exit code of a stopped container.
    pub exit_code: Option<i64>,
    /// Address on the stack network while running.
    pub ip: Option<String>,
    /// Why canopy refuses it (image tag differs from its release label).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// What discovery knows right now.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Discovered {
    /// `ok`, or why the engine cannot be used.
    pub engine: String,
    /// This stack's canopy containers, by name.
    pub containers: Vec<ContainerView>,
}

/// One served certificate, for `/status` and `GET /tls`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertView {
    /// DNS names it is served for.
    pub names: Vec<String>,
    /// Its file, or `acme:<name>`.
    pub source: String,
    /// End of validity, RFC 3339.
    pub not_after: String,
    /// Seconds left until then (negative once expired).
    pub expires_in_secs: i64,
}

/// The TLS part of the status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TlsView {
    /// Every certificate in the SNI table (the first is the default unless
    /// one is marked `default`).
    pub certificates: Vec<CertView>,
    /// Why the last certificate reload was refused (cleared by a good one).
    pub last_reload_error: Option<String>,
    /// ACME's state, `null` without `[tls.acme]`.
    pub acme: serde_json::Value,
}

/// The reply of `GET`, `POST` and `DELETE /maintenance`: whether it is on
/// now, and if so its message, expected end and start.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MaintenanceReply {
    /// Whether every routed request is answered 503 now.
    pub on: bool,
    /// The maintenance, while on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<Maintenance>,
}

impl From<Option<Maintenance>> for MaintenanceReply {
    fn from(maintenance: Option<Maintenance>) -> Self {
        Self { on: maintenance.is_some(), maintenance }
    }
}
