//! The release table: one `ArcSwap<Snapshot>` read once per request and
//! replaced whole by the control plane.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::drain::Drain;
use crate::settings::Tunables;
use crate::snapshot::Snapshot;
use crate::stats::StatsRegistry;
use crate::topology::Topology;

/// The shared release table, the counters registry and the proxy's
/// [`Drain`] state (shared by the request path and the control plane).
#[derive(Debug)]
pub struct ReleaseTable {
    current: ArcSwap<Snapshot>,
    writer: Mutex<()>,
    stats: StatsRegistry,
    drain: Drain,
}

impl ReleaseTable {
    /// A table holding an empty snapshot of `topology`.
    pub fn new(topology: Arc<Topology>, tunables: Arc<Tunables>) -> Self {
        let stats = StatsRegistry::new(topology.services().iter().map(|s| s.name.clone()).collect());
        Self { current: ArcSwap::from_pointee(Snapshot::empty(topology, tunables)), writer: Mutex::new(()), stats, drain: Drain::default() }
    }

    /// The current snapshot; a request calls this exactly once and keeps the `Arc`.
    #[inline]
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Replaces the snapshot with `next(current)`, atomically for readers
    /// (requests that already loaded the old one finish on it) and one writer
    /// at a time (the control plane and the background re-resolver never
    /// overwrite each other's snapshot with a stale one). The only way to
    /// change the table. Returns the published snapshot.
    pub fn update(&self, next: impl FnOnce(&Snapshot) -> Snapshot) -> Arc<Snapshot> {
        let _one = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let published = Arc::new(next(&self.current.load()));
        self.current.store(published.clone());
        published
    }

    /// Whether the proxy is draining, and its open client connections.
    #[inline]
    pub fn drain(&self) -> &Drain {
        &self.drain
    }

    /// The counters registry (one entry per registered release).
    pub fn stats(&self) -> &StatsRegistry {
        &self.stats
    }
}
