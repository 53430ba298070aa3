//! `GET /metrics`: one `prometheus::Registry` holding the control-plane
//! metrics (switches, rollbacks, validation checks, build info), the data
//! plane's [`RequestCollector`] and the process collector, encoded by the
//! crate's `TextEncoder`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use canopy_proxy::prometheus::{
    self, core::Collector, histogram_opts, opts, Encoder, Gauge, GaugeVec, Histogram, IntCounterVec, IntGaugeVec, Registry, TextEncoder,
};
use canopy_proxy::{AccessLog, ReleaseName, ReleaseTable, RequestCollector, DURATION_BUCKETS};

use crate::report::Report;

const RESULTS: [&str; 3] = ["ok", "refused", "failed"];
/// The metric names, help texts and labels below are constants that are valid.
const VALID: &str = "valid metric options";

/// The content type of [`ControlMetrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The registry behind `GET /metrics` and the control-plane metrics the
/// controller updates (never on the request path).
pub struct ControlMetrics {
    registry: Registry,
    switches: IntCounterVec,
    rollbacks: IntCounterVec,
    flip_duration: Histogram,
    last_flip: Gauge,
    checks: IntCounterVec,
    /// Set from the state at each scrape; see [`Self::encode`].
    live: IntGaugeVec,
    rollback_target: IntGaugeVec,
    live_healthy: IntGaugeVec,
    reloads: IntCounterVec,
    last_reload: Gauge,
    /// Set from the state at each scrape: the canary's candidate and weight (percent).
    canary_weight: GaugeVec,
    guard_evaluations: IntCounterVec,
    auto_rollbacks: IntCounterVec,
    /// The guard's latest figures per release and service (`role`: candidate or baseline).
    guard_error_ratio: GaugeVec,
    guard_latency: GaugeVec,
    /// Serialises scrapes: the two gauges above are reset and refilled by each.
    scrape: Mutex<()>,
}

impl ControlMetrics {
    /// New, zeroed metrics in a fresh registry, with `table`'s per-request
    /// counters and this process's `process_*` metrics beside them.
    pub fn new(table: Arc<ReleaseTable>) -> Self {
        let switches = IntCounterVec::new(opts!("canopy_switches_total", "Switch attempts by result."), &["result"]).expect(VALID);
        let rollbacks = IntCounterVec::new(opts!("canopy_rollbacks_total", "Rollback attempts by result."), &["result"]).expect(VALID);
        let flip_duration = Histogram::with_opts(histogram_opts!(
            "canopy_switch_duration_seconds",
            "Validation plus flip time of successful switches and rollbacks.",
            DURATION_BUCKETS.to_vec()
        ))
        .expect(VALID);
        let last_flip =
            Gauge::new("canopy_last_switch_timestamp_seconds", "Unix time of the last successful flip (0 if none).").expect(VALID);
        let checks = IntCounterVec::new(
            opts!("canopy_validation_checks_total", "Validation check results."),
            &["release", "service", "check", "result"],
        )
        .expect(VALID);
        let live =
            IntGaugeVec::new(opts!("canopy_live_release_info", "The release serving traffic (value 1)."), &["release"]).expect(VALID);
        let rollback_target = IntGaugeVec::new(
            opts!("canopy_rollback_target_healthy", "Latest background check of the warm previous release: 1 passed, 0 failed."),
            &["release"],
        )
        .expect(VALID);
        let live_healthy = IntGaugeVec::new(
            opts!("canopy_live_release_healthy", "Latest background check of the live release: 1 passed, 0 failed (absent until checked)."),
            &["release"],
        )
        .expect(VALID);
        let access_log_dropped = AccessLog::dropped_counter();
        let reloads =
            IntCounterVec::new(opts!("canopy_config_reloads_total", "Config reloads by result (ok, refused)."), &["result"]).expect(VALID);
        let last_reload =
            Gauge::new("canopy_config_last_reload_timestamp_seconds", "Unix time of the last successful config reload (0 if none).")
                .expect(VALID);
        let canary_weight = GaugeVec::new(
            opts!("canopy_canary_weight", "Share of the traffic (percent) the running canary's candidate takes."),
            &["release"],
        )
        .expect(VALID);
        let guard_evaluations = IntCounterVec::new(
            opts!("canopy_guard_evaluations_total", "Guard evaluations of a new release by rule and result (pass, fail, inconclusive)."),
            &["release", "rule", "result"],
        )
        .expect(VALID);
        let auto_rollbacks = IntCounterVec::new(
            opts!("canopy_auto_rollbacks_total", "Releases rolled back (or canaries aborted) by the guard, by the rule broken."),
            &["rule"],
        )
        .expect(VALID);
        for rule in ["error-ratio", "latency"] {
            auto_rollbacks.with_label_values(&[rule]);
        }
        let guard_error_ratio = GaugeVec::new(
            opts!("canopy_guard_error_ratio", "The guard's latest error ratio per service of the release judged (candidate) and of the one it is compared with (baseline)."),
            &["release", "service", "role"],
        )
        .expect(VALID);
        let guard_latency = GaugeVec::new(
            opts!(
                "canopy_guard_latency_seconds",
                "The guard's latest latency at its quantile, per service of the candidate and the baseline."
            ),
            &["release", "service", "role"],
        )
        .expect(VALID);
        let build = GaugeVec::new(opts!("canopy_build_info", "The running canopy build (value 1)."), &["version"]).expect(VALID);
        for result in RESULTS {
            // every result is exported from the start, as 0
            switches.with_label_values(&[result]);
            rollbacks.with_label_values(&[result]);
        }
        for result in ["ok", "refused"] {
            reloads.with_label_values(&[result]);
        }
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1.0);
        let registry = Registry::new();
        let collectors: Vec<Box<dyn Collector>> = vec![
            Box::new(switches.clone()),
            Box::new(rollbacks.clone()),
            Box::new(flip_duration.clone()),
            Box::new(last_flip.clone()),
            Box::new(checks.clone()),
            Box::new(live.clone()),
            Box::new(rollback_target.clone()),
            Box::new(live_healthy.clone()),
            Box::new(access_log_dropped),
            Box::new(reloads.clone()),
            Box::new(last_reload.clone()),
            Box::new(canary_weight.clone()),
            Box::new(guard_evaluations.clone()),
            Box::new(auto_rollbacks.clone()),
            Box::new(guard_error_ratio.clone()),
            Box::new(guard_latency.clone()),
            Box::new(build),
            Box::new(RequestCollector::new(table)),
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        ];
        for c in collectors {
            registry.register(c).expect("metric names are distinct");
        }
        Self {
            registry,
            switches,
            rollbacks,
            flip_duration,
            last_flip,
            checks,
            live,
            rollback_target,
            live_healthy,
            reloads,
            last_reload,
            canary_weight,
            guard_evaluations,
            auto_rollbacks,
            guard_error_ratio,
            guard_latency,
            scrape: Mutex::new(()),
        }
    }

    /// Adds `collector` to the registry behind `GET /metrics` (the deploy
    /// metrics, registered only when deploys are enabled).
    pub fn register(&self, collector: Box<dyn Collector>) {
        if let Err(e) = self.registry.register(collector) {
            log::error!("registering a metric: {e}");
        }
    }

    /// Counts a flip's outcome (`ok`, `refused`, `failed`) under its action:
    /// `switch` (switches and deploys) or `rollback`.
    pub fn flip_outcome(&self, action: &str, result: &str) {
        let counter = if action == "rollback" { &self.rollbacks } else { &self.switches };
        counter.with_label_values(&[result]).inc();
    }

    /// Records a completed flip (validation + persist + publish).
    pub fn flipped(&self, d: Duration) {
        self.flip_duration.observe(d.as_secs_f64());
        self.last_flip.set(crate::clock::now_ms() as f64 / 1e3);
    }

    /// Counts a config reload (`ok` or `refused`).
    pub fn reloaded(&self, result: &str) {
        self.reloads.with_label_values(&[result]).inc();
        if result == "ok" {
            self.last_reload.set(crate::clock::now_ms() as f64 / 1e3);
        }
    }

    /// Counts one guard evaluation of `release` and sets its figures.
    pub fn guard_evaluated(&self, release: &ReleaseName, against: &ReleaseName, e: &crate::guard::Evaluation) {
        for rule in [crate::guard::Rule::ErrorRatio, crate::guard::Rule::Latency] {
            let result = if e.inconclusive {
                "inconclusive"
            } else if e.services.iter().any(|s| s.broken.iter().any(|b| b.rule == rule)) {
                "fail"
            } else {
                "pass"
            };
            self.guard_evaluations.with_label_values(&[release.as_str(), rule.as_str(), result]).inc();
        }
        self.guard_error_ratio.reset();
        self.guard_latency.reset();
        for s in &e.services {
            let service = s.service.as_str();
            for (role, name, figures) in [("candidate", release, Some(&s.candidate)), ("baseline", against, s.baseline.as_ref())] {
                let Some(f) = figures else { continue };
                self.guard_error_ratio.with_label_values(&[name.as_str(), service, role]).set(f.error_ratio);
                if let Some(l) = f.latency {
                    self.guard_latency.with_label_values(&[name.as_str(), service, role]).set(l);
                }
            }
        }
    }

    /// Counts a release rolled back (or a canary aborted) by the guard.
    pub fn auto_rolled_back(&self, rule: crate::guard::Rule) {
        self.auto_rollbacks.with_label_values(&[rule.as_str()]).inc();
    }

    /// Counts every check result of a report.
    pub fn record_checks(&self, r: &Report) {
        let release = r.release.as_str();
        for c in &r.checks {
            let result = if c.passed { "pass" } else { "fail" };
            self.checks.with_label_values(&[release, c.service.as_str(), &c.check, result]).inc();
        }
    }

    /// Drops the series of a retired release (label values stay bounded by
    /// what is registered).
    pub fn forget(&self, release: &ReleaseName) {
        for vec in [&self.checks, &self.guard_evaluations] {
            for family in vec.collect() {
                for m in family.get_metric() {
                    let labels: HashMap<&str, &str> = m.get_label().iter().map(|l| (l.name(), l.value())).collect();
                    if labels.get("release") == Some(&release.as_str()) {
                        let _ = vec.remove(&labels);
                    }
                }
            }
        }
    }

    /// Every metric as Prometheus text ([`CONTENT_TYPE`]): `live` is the live
    /// release, `live_healthy` whether the live watch's latest check of it
    /// passed (`None` before the first), `watched` the warm previous release
    /// and whether its latest background check passed, `canary` the running
    /// canary's candidate and weight (in buckets of 10,000).
    pub fn encode(
        &self,
        live: Option<&ReleaseName>,
        live_healthy: Option<bool>,
        watched: Option<(ReleaseName, bool)>,
        canary: Option<(&ReleaseName, u16)>,
    ) -> String {
        let _one = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        self.canary_weight.reset();
        if let Some((release, weight)) = canary {
            self.canary_weight.with_label_values(&[release.as_str()]).set(f64::from(weight) / 100.0);
        }
        self.live.reset();
        self.live_healthy.reset();
        if let Some(l) = live {
            self.live.with_label_values(&[l.as_str()]).set(1);
            if let Some(healthy) = live_healthy {
                self.live_healthy.with_label_values(&[l.as_str()]).set(i64::from(healthy));
            }
        }
        self.rollback_target.reset();
        if let Some((release, passed)) = watched {
            self.rollback_target.with_label_values(&[release.as_str()]).set(i64::from(passed));
        }
        let mut out = Vec::with_capacity(16 * 1024);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            log::error!("encoding metrics: {e}");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}
