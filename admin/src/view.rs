//! JSON views of the control state for `GET /status` and `GET /releases`,
//! shared with the CLI (which deserialises them).

use std::collections::BTreeMap;

use canopy_docker::{ContainerState, Health};
use canopy_proxy::{Release, ReleaseName, Snapshot, Topology};
use serde::{Deserialize, Serialize};

use crate::clock::now_ms;
use crate::guard::GuardView;
use crate::replies::{CanaryView, Discovered, TlsView};
use crate::report::Report;
use crate::state::{Failure, Maintenance, State};

/// One service's backends in a release.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceView {
    /// Endpoints as registered (or from the template).
    pub endpoints: Vec<String>,
    /// Addresses they resolved to.
    pub addresses: Vec<String>,
    /// Endpoints that did not resolve, with the reason.
    pub unresolved: Vec<String>,
}

/// Where a release stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReleaseState {
    /// Serving traffic.
    Live,
    /// Live before the last flip, warm inside its validation window.
    Previous,
    /// Registered, not serving.
    Registered,
}

impl ReleaseState {
    /// `live`, `previous` or `registered`.
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseState::Live => "live",
            ReleaseState::Previous => "previous",
            ReleaseState::Registered => "registered",
        }
    }
}

/// A container canopy runs for a release (with `[docker]`), and why it is
/// not running when it is not.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReleaseContainer {
    /// The service it runs.
    pub service: String,
    /// The container.
    pub name: String,
    /// `running`, `exited`, ...
    pub state: ContainerState,
    /// `healthy`, `starting`, `unhealthy`, `none`.
    pub health: Health,
    /// Why it is not running: canopy stopped it (`overlap = false`, or the
    /// release was retired and kept), or it exited by itself (with its code).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

/// A registered release.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReleaseView {
    /// Name.
    pub name: ReleaseName,
    /// `live`, `previous` (warm, inside its validation window) or `registered`.
    pub state: ReleaseState,
    /// When registered (Unix ms).
    pub registered_at: u64,
    /// Requests in flight right now.
    pub inflight: i64,
    /// Backends per service.
    pub services: BTreeMap<String, ServiceView>,
    /// Last validation report.
    pub last_check: Option<Report>,
    /// Its containers (with `[docker]`; none for a release registered by hand).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<ReleaseContainer>,
    /// canopy took it out of service by itself (an automatic rollback, an
    /// aborted canary): why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<Failure>,
}

/// The previous release and its window.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreviousView {
    /// Name.
    pub release: ReleaseName,
    /// When it is retired (Unix ms).
    pub retire_at: u64,
    /// Seconds left in the validation window.
    pub seconds_left: f64,
    /// The background watch's latest quick check of it (what a rollback trusts
    /// while it is fresh and passing).
    pub watch: Option<Report>,
}

/// The live watch's latest quick check of the live release (see
/// `live-check-interval`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LiveHealthView {
    /// The live release it checked.
    pub release: ReleaseName,
    /// Its latest quick check passed.
    pub healthy: bool,
    /// Since when (Unix ms) the verdict has been what it is.
    pub since: u64,
    /// The latest quick check (`mode: "watch"`).
    pub report: Report,
}

/// `GET /status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusView {
    /// Live release.
    pub live: Option<ReleaseName>,
    /// In a fleet: every node, its applied revision and lag, and this
    /// node's readiness.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<crate::cluster::FleetView>,
    /// The live watch's latest verdict on the live release (absent until
    /// its first check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_health: Option<LiveHealthView>,
    /// Whether `x-canopy-release` request headers preview registered
    /// releases (`[releases] preview`); when false they are ignored and
    /// answered with `x-canopy-preview: disabled`.
    #[serde(default)]
    pub preview: bool,
    /// Previous release, while warm.
    pub previous: Option<PreviousView>,
    /// Generation (bumped by every flip).
    pub generation: u64,
    /// A switch or rollback is running now.
    pub switch_in_progress: bool,
    /// Every registered release.
    pub releases: Vec<ReleaseView>,
    /// With `[docker]`: what discovery knows (the engine's state and this
    /// stack's canopy containers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker: Option<Discovered>,
    /// Problems to see at once: the live release failing its checks; with
    /// `[docker]` also a live container not running, a refused container,
    /// the engine away. Absent when there are none (and no `[docker]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts: Option<Vec<String>>,
    /// With TLS: the served certificates and ACME's state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsView>,
    /// The canary in progress.
    #[serde(default)]
    pub canary: Option<CanaryView>,
    /// The guard: what it watches, its latest verdict, the rollback readiness.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<GuardView>,
    /// Maintenance mode, while on: every routed request is answered 503.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<Maintenance>,
    /// A pause in progress: new requests are held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<PauseView>,
}

/// A pause in progress, as `GET /status` and `POST /pause` show it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PauseView {
    /// Requests held now.
    pub held: usize,
    /// Requests held since the pause began.
    pub held_total: u64,
    /// Requests answered 503 (past `max`, or beyond the limit of held requests).
    pub refused: u64,
    /// Seconds before held requests are answered 503.
    pub seconds_left: f64,
}

impl PauseView {
    /// The view of `p` now.
    pub fn of(p: &canopy_proxy::Pause) -> Self {
        let (held_total, refused) = p.counts();
        Self { held: p.held(), held_total, refused, seconds_left: p.remaining().as_secs_f64() }
    }
}

/// Builds the view of one release from the state and its resolved form.
pub fn release_view(st: &State, release: &Release, topology: &Topology) -> ReleaseView {
    let name = release.name();
    let state = if st.live.as_ref() == Some(name) {
        ReleaseState::Live
    } else if st.previous.as_ref().is_some_and(|p| &p.release == name) {
        ReleaseState::Previous
    } else {
        ReleaseState::Registered
    };
    let rec = st.releases.get(name);
    let services = topology
        .services()
        .iter()
        .zip(release.all_backends())
        .map(|(s, b)| {
            let v = ServiceView {
                endpoints: b.endpoints().iter().map(|e| e.to_string()).collect(),
                addresses: b.addrs().iter().map(|a| a.to_string()).collect(),
                unresolved: b.unresolved().iter().map(|e| e.to_string()).collect(),
            };
            (s.name.to_string(), v)
        })
        .collect();
    ReleaseView {
        name: name.clone(),
        state,
        registered_at: rec.map_or(0, |r| r.registered_at),
        inflight: release.stats().inflight(),
        services,
        last_check: rec.and_then(|r| r.last_check.clone()),
        containers: Vec::new(),
        failed: rec.and_then(|r| r.failed.clone()),
    }
}

impl StatusView {
    /// Builds the status from state and the published snapshot (containers,
    /// alerts and TLS are added by the controller where configured).
    pub fn build(st: &State, snap: &Snapshot, switching: bool, watch: Option<Report>) -> Self {
        let now = now_ms();
        Self {
            live: st.live.clone(),
            fleet: None,
            live_health: None,
            preview: snap.preview(),
            previous: st.previous.as_ref().map(|p| PreviousView {
                release: p.release.clone(),
                retire_at: p.retire_at,
                seconds_left: p.retire_at.saturating_sub(now) as f64 / 1e3,
                watch,
            }),
            generation: st.generation,
            switch_in_progress: switching,
            releases: snap.releases().iter().map(|r| release_view(st, r, snap.topology())).collect(),
            docker: None,
            alerts: None,
            tls: None,
            canary: st.canary.as_ref().map(CanaryView::of),
            guard: None,
            maintenance: st.maintenance.clone(),
            paused: snap.pause().map(|p| PauseView::of(p)),
        }
    }
}
