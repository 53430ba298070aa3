//! The fleet's metrics: what this node applied, its session and readiness
//! (read at each scrape), acknowledgement times and refused flips.

use std::sync::Arc;

use canopy_proxy::prometheus::core::{Collector, Desc};
use canopy_proxy::prometheus::proto::MetricFamily;
use canopy_proxy::prometheus::{histogram_opts, opts, Histogram, IntCounterVec, IntGauge};

use super::Fleet;

/// The metric names, help texts and labels below are constants that are valid.
const VALID: &str = "valid metric options";
/// Acknowledgement times, in seconds.
const ACK_BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// The counters a fleet node keeps as flips happen.
pub(crate) struct FleetMetrics {
    /// From a flip's commit to every live node having applied it.
    pub apply_seconds: Histogram,
    /// Flips refused by the fleet, by reason (`conflict`, `etcd`).
    pub refused: IntCounterVec,
}

impl FleetMetrics {
    pub fn new() -> Self {
        let apply_seconds = Histogram::with_opts(histogram_opts!(
            "canopy_cluster_apply_seconds",
            "From a flip's commit in etcd until every node with a live session applied it.",
            ACK_BUCKETS.to_vec()
        ))
        .expect(VALID);
        let refused = IntCounterVec::new(
            opts!(
                "canopy_cluster_flips_refused_total",
                "Flips the fleet refused: conflict (another node changed the state first), etcd (unreachable or no quorum)."
            ),
            &["reason"],
        )
        .expect(VALID);
        for reason in ["conflict", "etcd"] {
            refused.with_label_values(&[reason]);
        }
        FleetMetrics { apply_seconds, refused }
    }
}

/// Collector of the fleet's families for a `prometheus::Registry`.
pub struct FleetCollector {
    fleet: Arc<Fleet>,
    applied: IntGauge,
    session_up: IntGauge,
    ready: IntGauge,
    descs: Vec<Desc>,
}

impl FleetCollector {
    /// A collector over `fleet`.
    pub fn new(fleet: Arc<Fleet>) -> Self {
        let applied = IntGauge::new("canopy_cluster_applied_revision", "The fleet revision whose state this node serves.").expect(VALID);
        let session_up =
            IntGauge::new("canopy_cluster_session_up", "1 while this node holds a live session with etcd, else 0.").expect(VALID);
        let ready = IntGauge::new("canopy_cluster_ready", "1 while this node is ready for traffic (GET /readyz answers 200), else 0.")
            .expect(VALID);
        let m = &fleet.metrics;
        let descs = [applied.desc(), session_up.desc(), ready.desc(), m.apply_seconds.desc(), m.refused.desc()]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        FleetCollector { fleet, applied, session_up, ready, descs }
    }
}

impl Collector for FleetCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.applied.set(self.fleet.applied());
        self.session_up.set(i64::from(self.fleet.session.live()));
        self.ready.set(i64::from(self.fleet.readiness().is_ok()));
        let m = &self.fleet.metrics;
        [self.applied.collect(), self.session_up.collect(), self.ready.collect(), m.apply_seconds.collect(), m.refused.collect()]
            .into_iter()
            .flatten()
            .collect()
    }
}
