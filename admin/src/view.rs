//! JSON views of the control state for `GET /status` and `GET /releases`.

use std::collections::BTreeMap;

use canopy_proxy::{Release, ReleaseName, Snapshot, Topology};
use serde::Serialize;

use crate::report::Report;
use crate::state::State;

/// One service's backends in a release.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceView {
    /// Endpoints as registered (or from the template).
    pub endpoints: Vec<String>,
    /// Addresses they resolved to.
    pub addresses: Vec<String>,
    /// Endpoints that did not resolve, with the reason.
    pub unresolved: Vec<String>,
}

/// A registered release.
#[derive(Debug, Clone, Serialize)]
pub struct ReleaseView {
    /// Name.
    pub name: ReleaseName,
    /// `live`, `previous` (warm, inside its validation window) or `registered`.
    pub state: &'static str,
    /// When registered (Unix ms).
    pub registered_at: u64,
    /// Requests in flight right now.
    pub inflight: i64,
    /// Backends per service.
    pub services: BTreeMap<String, ServiceView>,
    /// Last validation report.
    pub last_check: Option<Report>,
}

/// The previous release and its window.
#[derive(Debug, Clone, Serialize)]
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

/// `GET /status`.
#[derive(Debug, Clone, Serialize)]
pub struct StatusView {
    /// Live release.
    pub live: Option<ReleaseName>,
    /// Previous release, while warm.
    pub previous: Option<PreviousView>,
    /// Generation (bumped by every flip).
    pub generation: u64,
    /// A switch or rollback is running now.
    pub switch_in_progress: bool,
    /// Every registered release.
    pub releases: Vec<ReleaseView>,
}

/// Builds the view of one release from the state and its resolved form.
pub fn release_view(st: &State, release: &Release, topology: &Topology) -> ReleaseView {
    let name = release.name();
    let state = if st.live.as_ref() == Some(name) {
        "live"
    } else if st.previous.as_ref().is_some_and(|p| &p.release == name) {
        "previous"
    } else {
        "registered"
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
    }
}

impl StatusView {
    /// Builds the status from state and the published snapshot.
    pub fn build(st: &State, snap: &Snapshot, topology: &Topology, switching: bool, watch: Option<Report>) -> Self {
        let now = crate::controller::now_ms();
        Self {
            live: st.live.clone(),
            previous: st.previous.as_ref().map(|p| PreviousView {
                release: p.release.clone(),
                retire_at: p.retire_at,
                seconds_left: p.retire_at.saturating_sub(now) as f64 / 1e3,
                watch,
            }),
            generation: st.generation,
            switch_in_progress: switching,
            releases: snap.releases().iter().map(|r| release_view(st, r, topology)).collect(),
        }
    }
}
