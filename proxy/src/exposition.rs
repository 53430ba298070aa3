//! The data plane's Prometheus collector: reads the per-release atomics of
//! the release table's counters on scrape, so the request path keeps its
//! plain atomic adds (no label lookups, locks or allocations per request).

use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;

use crate::stats::FAMILIES;
use crate::table::ReleaseTable;

/// Collector of `canopy_requests_total`, `canopy_request_duration_seconds`,
/// `canopy_upstream_errors_total` and `canopy_inflight_requests` for a
/// [`prometheus::Registry`]. A release's series appear when it gets counters
/// (registration) and disappear when they are forgotten (retirement).
pub struct RequestCollector {
    table: Arc<ReleaseTable>,
    descs: Vec<Desc>,
}

impl RequestCollector {
    /// A collector over `table`'s counters.
    pub fn new(table: Arc<ReleaseTable>) -> Self {
        Self { table, descs: descs(&FAMILIES) }
    }
}

/// The descriptions of metric families given as (name, help, labels).
pub(crate) fn descs(families: &[(&str, &str, &[&str])]) -> Vec<Desc> {
    families
        .iter()
        .map(|(name, help, labels)| {
            let labels = labels.iter().map(|l| l.to_string()).collect();
            Desc::new(name.to_string(), help.to_string(), labels, Default::default()).expect("valid metric desc")
        })
        .collect()
}

impl Collector for RequestCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.table.stats().families()
    }
}
