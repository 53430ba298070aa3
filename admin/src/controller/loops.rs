//! The controller's background loops: the validation-window timer (retires
//! the previous release when its window ends), the warm watch (keeps a fresh
//! quick check of the previous release, so a rollback need not wait for
//! one) and checkpoints of a long journal, taken between flips.

use std::time::{Duration, Instant};

use canopy_proxy::ReleaseName;

use super::{Controller, Watched, WATCH_MODE};
use crate::clock::now_ms;
use crate::error::ControlError;
use crate::report::Report;
use crate::validate::Mode;

impl Controller {
    /// Retires the previous release when its validation window ends. Runs
    /// until `shutdown` flips; woken early by every state change.
    pub async fn run_window_timer(&self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            let due = self.state.lock().await.previous.clone();
            let sleep = match &due {
                Some(p) => Duration::from_millis(p.retire_at.saturating_sub(now_ms())),
                None => Duration::from_secs(3600),
            };
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {
                    let Some(p) = due else { continue };
                    let still = self.state.lock().await.previous.as_ref() == Some(&p);
                    if still {
                        log::info!("validation window of {} ended; retiring it", p.release);
                        match self.retire(&p.release, "canopy (validation window)").await {
                            // retried when the upgrade completes (release_hold wakes this loop)
                            Err(ControlError::Upgrading) => {
                                tokio::select! {
                                    _ = self.wake.notified() => {}
                                    _ = shutdown.changed() => return,
                                }
                            }
                            Err(e) => log::error!("automatic retire of {}: {e}", p.release),
                            Ok(_) => {}
                        }
                    }
                }
                _ = self.wake.notified() => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Quick-checks the warm previous release every `warm_check_interval`
    /// (and right after every flip) so a rollback need not wait for a check.
    /// Its `overlap = false` services whose containers canopy stopped are
    /// left out: a rollback starts and checks those itself. Logs when
    /// the verdict changes, not at every check. Runs until `shutdown` flips.
    /// Also folds a long journal into a checkpoint here, between flips.
    pub async fn run_warm_watch(&self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            self.checkpoint_if_due().await;
            let previous = self.state.lock().await.previous.as_ref().map(|p| p.release.clone());
            let release = previous.and_then(|p| self.release(&p).ok());
            match release {
                Some(release) => {
                    let started = Instant::now();
                    let rt = self.rt();
                    let stopped = self.stopped_exclusive(release.name());
                    let include = |i: usize| !stopped.contains(&i);
                    let mut report = rt.validator.validate_services(&self.topology(), &release, Mode::Quick, now_ms(), include).await;
                    report.mode = WATCH_MODE.into();
                    let before = self.watched(Some(release.name())).map(|r| r.passed);
                    match (before, report.passed) {
                        (Some(false), false) => {}
                        (_, false) => log::warn!("warm release {} is unhealthy: {}", release.name(), report.summary()),
                        (Some(false), true) => log::info!("warm release {} is healthy again", release.name()),
                        _ => {}
                    }
                    *self.warm.lock().expect("warm lock") = Some(Watched { started, report });
                }
                None => *self.warm.lock().expect("warm lock") = None,
            }
            tokio::select! {
                _ = tokio::time::sleep(self.rt().settings.warm_check_interval) => {}
                _ = self.warm_wake.notified() => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Writes a checkpoint when the journal is long, so that flips never pay for one.
    async fn checkpoint_if_due(&self) {
        if !self.store.lock().expect("store lock").wants_checkpoint() {
            return;
        }
        let st = self.state.lock().await;
        let mut store = self.store.lock().expect("store lock");
        if store.wants_checkpoint() && !self.is_handed_over() {
            if let Err(e) = store.checkpoint(&st) {
                log::error!("checkpoint: {e} (the journal keeps every commit; will retry)");
            }
        }
    }

    /// The watch's latest report, if it is about `previous` (the release
    /// that is warm now; a report of an earlier one is stale).
    pub(super) fn watched(&self, previous: Option<&ReleaseName>) -> Option<Report> {
        let warm = self.warm.lock().expect("warm lock");
        warm.as_ref().map(|w| &w.report).filter(|r| previous == Some(&r.release)).cloned()
    }

    /// The watch's report of `release` if it passed and started at most two
    /// watch intervals ago.
    pub(super) fn fresh_watch(&self, release: &ReleaseName) -> Option<Report> {
        let warm = self.warm.lock().expect("warm lock");
        let w = warm.as_ref()?;
        let fresh = w.started.elapsed() <= 2 * self.rt().settings.warm_check_interval;
        (fresh && w.report.passed && &w.report.release == release).then(|| w.report.clone())
    }
}
