//! The live watch: quick-checks the live release every
//! `live-check-interval` (and right after it changes), as the warm watch
//! does for the previous release, so that a live release whose backends
//! died shows as an alert in `/status`, `canopy status`, the status page and
//! `canopy_live_release_healthy` within seconds. It logs when the verdict
//! changes, never at every check. It only reports: rolling back is a
//! decision for the operator (or the guard).

use std::time::UNIX_EPOCH;

use canopy_proxy::{Release, ReleaseName, Topology};

use super::{Controller, WATCH_MODE};
use crate::clock::now_ms;
use crate::report::Report;
use crate::validate::Mode;
use crate::view::LiveHealthView;

/// The live watch's latest report and since when its verdict holds.
#[derive(Debug, Clone)]
pub(crate) struct LiveWatched {
    /// The latest quick check of the live release.
    pub report: Report,
    /// When the verdict (passed or failed) last changed (Unix ms).
    pub since: u64,
}

impl Controller {
    /// Quick-checks the live release every `live_check_interval`, and at
    /// once after the live release changes. Runs until `shutdown` flips.
    pub async fn run_live_watch(&self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            let live = self.state.lock().await.live.clone();
            match live.and_then(|l| self.release(&l).ok()) {
                Some(release) => {
                    let rt = self.rt();
                    let mut report = rt.validator.validate(&self.topology(), &release, Mode::Quick, now_ms()).await;
                    report.mode = WATCH_MODE.into();
                    self.record_live(report);
                }
                None => *self.live_watch.lock().expect("live watch lock") = None,
            }
            tokio::select! {
                _ = tokio::time::sleep(self.rt().settings.live_check_interval) => {}
                _ = self.live_wake.notified() => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Keeps `report` as the latest, logging only a change of verdict.
    fn record_live(&self, report: Report) {
        let mut watched = self.live_watch.lock().expect("live watch lock");
        let before = watched.as_ref().filter(|w| w.report.release == report.release).map(|w| (w.report.passed, w.since));
        let since = match before {
            Some((passed, since)) if passed == report.passed => since,
            _ => report.at,
        };
        match (before.map(|(passed, _)| passed), report.passed) {
            (Some(false), false) => {}
            (_, false) => log::error!("live release {} is failing its health checks: {}", report.release, report.summary()),
            (Some(false), true) => log::info!("live release {} is healthy again", report.release),
            _ => {}
        }
        *watched = Some(LiveWatched { report, since });
    }

    /// The live watch's latest verdict on `live` (the release live now; a
    /// report about an earlier live release is stale).
    pub(super) fn live_health(&self, live: Option<&ReleaseName>) -> Option<LiveHealthView> {
        let watched = self.live_watch.lock().expect("live watch lock");
        let w = watched.as_ref().filter(|w| live == Some(&w.report.release))?;
        Some(LiveHealthView { release: w.report.release.clone(), healthy: w.report.passed, since: w.since, report: w.report.clone() })
    }
}

/// The alert for a live release that fails its checks, if it does.
pub(super) fn live_alert(health: &LiveHealthView) -> Option<String> {
    if health.healthy {
        return None;
    }
    let since = UNIX_EPOCH + std::time::Duration::from_millis(health.since);
    Some(format!(
        "live release {} is failing its health checks (since {}): {}",
        health.release,
        humantime::format_rfc3339_seconds(since),
        health.report.summary()
    ))
}

/// At start-up: says which backends of the live release do not resolve
/// (each of their requests is a 502 until they do; the resolver retries).
pub(super) fn warn_unresolved(topology: &Topology, live: &Release) {
    for (service, backends) in topology.services().iter().zip(live.all_backends()) {
        for e in backends.unresolved() {
            log::warn!(
                "live release {}: service {}: {e}; its requests fail (502) until it resolves (retried every resolve-interval)",
                live.name(),
                service.name
            );
        }
    }
}
