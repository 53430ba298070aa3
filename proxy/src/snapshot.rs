//! An immutable view of every registered release and which one is live.
//! Requests load one snapshot and keep it until they finish.

use std::sync::Arc;

use crate::canary::Canary;
use crate::error_pages::Maintenance;
use crate::names::ReleaseName;
use crate::pause::Pause;
use crate::release::Release;
use crate::settings::Tunables;
use crate::topology::Topology;

/// Everything a request needs to be routed, frozen at one generation.
#[derive(Debug)]
pub struct Snapshot {
    generation: u64,
    topology: Arc<Topology>,
    releases: Box<[Arc<Release>]>,
    live: Option<usize>,
    /// `tunables.preview`, kept beside the routes (read on every request).
    preview: bool,
    tunables: Arc<Tunables>,
    /// The canary in progress, if any: its candidate takes the buckets below its weight.
    canary: Option<Canary>,
    /// Maintenance mode, while on: every routed request is answered 503.
    maintenance: Option<Arc<Maintenance>>,
    /// A pause in progress: new requests wait for its resume.
    pause: Option<Arc<Pause>>,
}

/// Where a request goes: indexes into its snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// Index of the release in [`Snapshot::releases`].
    pub release: usize,
    /// Index of the service in the topology.
    pub service: usize,
    /// Chosen by the request's preview header (a canary does not move it).
    pub previewed: bool,
}

/// Why a request could not be routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// No route matches the path (and host).
    NoRoute,
    /// A route matched but no release is live.
    NoLiveRelease {
        /// The service the route selected.
        service: usize,
    },
}

impl Snapshot {
    /// Builds a snapshot. `live` must name one of `releases` (else nothing is live).
    pub fn new(
        generation: u64,
        topology: Arc<Topology>,
        releases: Vec<Arc<Release>>,
        live: Option<&ReleaseName>,
        tunables: Arc<Tunables>,
    ) -> Self {
        let live = live.and_then(|n| releases.iter().position(|r| r.name() == n));
        Self {
            generation,
            topology,
            releases: releases.into(),
            live,
            preview: tunables.preview,
            tunables,
            canary: None,
            maintenance: None,
            pause: None,
        }
    }

    /// This snapshot with a canary of `release` at `weight` (of
    /// [`crate::canary::BUCKETS`]); none when `release` is not registered
    /// here, is live, or the weight is 0.
    pub fn with_canary(mut self, release: &ReleaseName, weight: u16) -> Self {
        let index = self.releases.iter().position(|r| r.name() == release);
        self.canary = index.filter(|i| Some(*i) != self.live && weight > 0).map(|release| Canary { release, weight });
        self
    }

    /// This snapshot in maintenance mode (`Some`), or not.
    pub fn with_maintenance(mut self, maintenance: Option<Arc<Maintenance>>) -> Self {
        self.maintenance = maintenance;
        self
    }

    /// This snapshot with a pause in progress (`Some`), or none.
    pub fn with_pause(mut self, pause: Option<Arc<Pause>>) -> Self {
        self.pause = pause;
        self
    }

    /// The pause in progress, if any.
    #[inline]
    pub fn pause(&self) -> Option<&Arc<Pause>> {
        self.pause.as_ref()
    }

    /// Maintenance mode, while on.
    #[inline]
    pub fn maintenance(&self) -> Option<&Arc<Maintenance>> {
        self.maintenance.as_ref()
    }

    /// An empty snapshot: nothing registered, nothing live.
    pub fn empty(topology: Arc<Topology>, tunables: Arc<Tunables>) -> Self {
        Self::new(0, topology, Vec::new(), None, tunables)
    }

    /// Routes a request: longest-prefix route to a service, then the live
    /// release, or the preview release named by `preview_header` when preview
    /// is enabled and that release is registered (unknown names fall back to
    /// live). While a canary runs, the caller moves a non-preview request to
    /// the candidate by its bucket ([`Self::canary`]). Pure and allocation-free.
    #[inline]
    pub fn route(&self, host: Option<&[u8]>, path: &[u8], preview_header: Option<&[u8]>) -> Result<Target, Miss> {
        let service = self.topology.routes().route(host, path).ok_or(Miss::NoRoute)?;
        let previewed = preview_header
            .filter(|_| self.preview)
            .and_then(|want| self.releases.iter().position(|r| r.name().as_str().as_bytes() == want));
        let release = previewed.or(self.live).ok_or(Miss::NoLiveRelease { service })?;
        Ok(Target { release, service, previewed: previewed.is_some() })
    }

    /// The canary in progress, if any.
    #[inline]
    pub fn canary(&self) -> Option<&Canary> {
        self.canary.as_ref()
    }

    /// The generation this snapshot was built for (bumped by every switch).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The topology.
    pub fn topology(&self) -> &Arc<Topology> {
        &self.topology
    }

    /// All registered releases.
    pub fn releases(&self) -> &[Arc<Release>] {
        &self.releases
    }

    /// The release at `index`.
    #[inline]
    pub fn release(&self, index: usize) -> &Release {
        &self.releases[index]
    }

    /// The registered release with this name.
    pub fn find(&self, name: &ReleaseName) -> Option<&Arc<Release>> {
        self.releases.iter().find(|r| r.name() == name)
    }

    /// The live release, if any.
    pub fn live(&self) -> Option<&Arc<Release>> {
        self.live.map(|i| &self.releases[i])
    }

    /// Whether preview routing by header is enabled.
    pub fn preview(&self) -> bool {
        self.preview
    }

    /// The request path's settings this snapshot was built with.
    #[inline]
    pub fn tunables(&self) -> &Arc<Tunables> {
        &self.tunables
    }
}
