//! The containers of this stack as the controller holds them (with
//! `[docker]`): their settings, what discovery knows, the deploy metrics.

use std::sync::Mutex;

use canopy_proxy::prometheus::{histogram_opts, opts, HistogramVec, IntCounterVec, IntGaugeVec};

use crate::metrics::ControlMetrics;
use crate::replies::Discovered;
use crate::settings::DeploySettings;

/// The container half of the controller (present when proxy.toml has `[docker]`).
pub(crate) struct Docker {
    pub(crate) settings: DeploySettings,
    pub(crate) discovered: Mutex<Discovered>,
    pub(crate) deploys: IntCounterVec,
    pub(crate) phases: HistogramVec,
    pub(crate) containers: IntGaugeVec,
}

const PHASE_BUCKETS: [f64; 14] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0];
const VALID: &str = "valid metric options";

impl Docker {
    /// The container half with `settings`, its metrics registered in
    /// `metrics`. The engine is reached on first use, so canopy starts (and
    /// serves) while it is down.
    pub(crate) fn new(settings: DeploySettings, metrics: &ControlMetrics) -> Self {
        let deploys = IntCounterVec::new(opts!("canopy_deploys_total", "Deploys by result."), &["result"]).expect(VALID);
        for result in ["ok", "refused", "failed"] {
            deploys.with_label_values(&[result]);
        }
        let phases = HistogramVec::new(
            histogram_opts!("canopy_deploy_duration_seconds", "Time of each deploy phase (and `total`).", PHASE_BUCKETS.to_vec()),
            &["phase"],
        )
        .expect(VALID);
        let containers = IntGaugeVec::new(
            opts!("canopy_release_containers", "canopy containers of this stack by release, service and state (value 1 each)."),
            &["release", "service", "state"],
        )
        .expect(VALID);
        metrics.register(Box::new(deploys.clone()));
        metrics.register(Box::new(phases.clone()));
        metrics.register(Box::new(containers.clone()));
        let discovered = Mutex::new(Discovered { engine: "not contacted yet".into(), containers: Vec::new() });
        Docker { settings, discovered, deploys, phases, containers }
    }
}
