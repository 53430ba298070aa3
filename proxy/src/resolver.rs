//! Background re-resolution of release backends (containers get new
//! addresses when restarted); never on the request path.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::release::Release;
use crate::snapshot::Snapshot;
use crate::table::ReleaseTable;

/// Re-resolves every registered release's endpoints every `interval` and
/// publishes a new snapshot (same generation, same live release) when any
/// address changed.
pub struct Resolver {
    table: Arc<ReleaseTable>,
    interval: Duration,
}

impl Resolver {
    /// A resolver over `table`, polling every `interval`.
    pub fn new(table: Arc<ReleaseTable>, interval: Duration) -> Self {
        Self { table, interval }
    }

    /// One pass: resolve all releases, swap in the ones whose addresses changed.
    /// Returns how many releases changed.
    pub async fn refresh(&self) -> usize {
        let before = self.table.load();
        let mut changed: Vec<(Arc<Release>, Arc<Release>)> = Vec::new();
        for old in before.releases() {
            let fresh = Release::resolve(before.topology(), old.name().clone(), old.explicit().clone(), self.table.stats()).await;
            match fresh {
                Ok(fresh) if !fresh.same_addrs(old) => changed.push((old.clone(), Arc::new(fresh))),
                Ok(_) => {}
                Err(e) => log::warn!("re-resolving release {}: {e}", old.name()),
            }
        }
        if changed.is_empty() {
            return 0;
        }
        let mut n = 0;
        self.table.update(|cur| {
            let releases = cur
                .releases()
                .iter()
                .map(|r| match changed.iter().find(|(old, _)| Arc::ptr_eq(old, r)) {
                    // only replace releases nobody re-registered meanwhile
                    Some((_, fresh)) => {
                        n += 1;
                        log::info!("release {} backends re-resolved", r.name());
                        fresh.clone()
                    }
                    None => r.clone(),
                })
                .collect();
            let live = cur.live().map(|r| r.name().clone());
            Snapshot::new(cur.generation(), cur.topology().clone(), releases, live.as_ref(), cur.tunables().clone())
        });
        n
    }
}

#[async_trait]
impl BackgroundService for Resolver {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => { self.refresh().await; }
                _ = shutdown.changed() => return,
            }
        }
    }
}
