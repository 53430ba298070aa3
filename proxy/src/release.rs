//! A registered release as the data plane sees it: resolved backends per
//! service, its response header value and its counters.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use http::HeaderValue;

use crate::endpoint::{Endpoint, ResolveError};
use crate::names::{ReleaseName, ServiceName};
use crate::stats::{ReleaseStats, StatsRegistry};
use crate::topology::Topology;

/// The resolved backends of one service of one release, picked round robin.
#[derive(Debug)]
pub struct Backends {
    endpoints: Box<[Endpoint]>,
    addrs: Box<[SocketAddr]>,
    next: AtomicUsize,
    unresolved: Box<[ResolveError]>,
}

impl Backends {
    /// The socket addresses in use.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The endpoints as registered (host names included).
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// Endpoints that did not resolve at the last attempt, with the reason.
    pub fn unresolved(&self) -> &[ResolveError] {
        &self.unresolved
    }

    /// The backend for a request's `attempt`-th try (0 = first), round robin.
    /// `start` is drawn once per request via [`Self::start`], so retries walk
    /// on to the next backend. `None` when nothing resolved.
    #[inline]
    pub fn pick(&self, start: usize, attempt: usize) -> Option<SocketAddr> {
        let n = self.addrs.len();
        if n == 0 {
            return None;
        }
        Some(self.addrs[(start + attempt) % n])
    }

    /// Draws the round-robin starting point for a new request.
    #[inline]
    pub fn start(&self) -> usize {
        self.next.fetch_add(1, Relaxed)
    }
}

/// A release: name, backends for every service (topology order), counters.
#[derive(Debug)]
pub struct Release {
    name: ReleaseName,
    header: HeaderValue,
    explicit: BTreeMap<ServiceName, Vec<Endpoint>>,
    services: Box<[Backends]>,
    stats: Arc<ReleaseStats>,
}

impl Release {
    /// Resolves every service's endpoints (explicit ones, else the address
    /// template) without blocking the runtime. Endpoints that fail to resolve
    /// are kept in [`Backends::unresolved`] so the background re-resolver and
    /// validation can report them; the release is still built.
    pub async fn resolve(
        topology: &Topology,
        name: ReleaseName,
        explicit: BTreeMap<ServiceName, Vec<Endpoint>>,
        stats: &StatsRegistry,
    ) -> Result<Self, crate::endpoint::EndpointError> {
        let per_service = topology.endpoints_for(&name, &explicit)?;
        let mut services = Vec::with_capacity(per_service.len());
        for endpoints in per_service {
            let mut addrs = Vec::new();
            let mut unresolved = Vec::new();
            for e in &endpoints {
                match e.resolve().await {
                    Ok(a) => addrs.extend(a),
                    Err(err) => unresolved.push(err),
                }
            }
            addrs.dedup();
            services.push(Backends {
                endpoints: endpoints.into(),
                addrs: addrs.into(),
                next: AtomicUsize::new(0),
                unresolved: unresolved.into(),
            });
        }
        Ok(Self::assemble(name, explicit, services, stats))
    }

    /// Builds a release from already-resolved addresses (tests, benchmarks and
    /// callers that resolved elsewhere). `addrs` is indexed like the topology's services.
    pub fn from_addrs(name: ReleaseName, addrs: Vec<Vec<SocketAddr>>, stats: &StatsRegistry) -> Self {
        let services = addrs
            .into_iter()
            .map(|a| Backends {
                endpoints: a.iter().map(|s| Endpoint::from_addr(*s)).collect(),
                addrs: a.into(),
                next: AtomicUsize::new(0),
                unresolved: Box::new([]),
            })
            .collect();
        Self::assemble(name, BTreeMap::new(), services, stats)
    }

    fn assemble(name: ReleaseName, explicit: BTreeMap<ServiceName, Vec<Endpoint>>, services: Vec<Backends>, stats: &StatsRegistry) -> Self {
        let header = HeaderValue::from_str(name.as_str()).expect("release names are valid header values");
        let stats = stats.for_release(&name);
        Self { name, header, explicit, services: services.into(), stats }
    }

    /// True when re-resolving would give a different set of addresses.
    pub fn same_addrs(&self, other: &Release) -> bool {
        self.services.len() == other.services.len()
            && self.services.iter().zip(other.services.iter()).all(|(a, b)| {
                let (mut x, mut y) = (a.addrs.to_vec(), b.addrs.to_vec());
                x.sort();
                y.sort();
                x == y && a.unresolved.len() == b.unresolved.len()
            })
    }

    /// The release's name.
    pub fn name(&self) -> &ReleaseName {
        &self.name
    }

    /// The value of the `x-canopy-release` response header (built once).
    pub fn header(&self) -> &HeaderValue {
        &self.header
    }

    /// Explicit backends as registered (services absent here use the template).
    pub fn explicit(&self) -> &BTreeMap<ServiceName, Vec<Endpoint>> {
        &self.explicit
    }

    /// Backends of the service at `index` (topology order).
    pub fn backends(&self, index: usize) -> &Backends {
        &self.services[index]
    }

    /// Backends of every service, in topology order.
    pub fn all_backends(&self) -> &[Backends] {
        &self.services
    }

    /// The release's counters.
    pub fn stats(&self) -> &Arc<ReleaseStats> {
        &self.stats
    }
}
