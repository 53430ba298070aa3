//! Flips: switch and rollback, and the one routine every flip goes through
//! (deploy's switch too): precheck, start what must run, validate, make it
//! durable, swap the table, stop what must stop, metrics, audit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use canopy_proxy::{Release, ReleaseName};

use super::containers::Started;
use super::{Controller, FlipGuard, WATCH_MODE};
use crate::error::ControlError;
use crate::replies::{ContainerStep, FlipReply};
use crate::report::Report;
use crate::requests::SwitchRequest;
use crate::state::Command;
use crate::validate::Mode;

/// Which release a flip makes live.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// A registered release (switch, deploy).
    Release(ReleaseName),
    /// The warm previous release (rollback).
    Previous,
}

/// How a flip validates its target before the swap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Checks {
    /// Every check with its retries (switch, deploy).
    Full,
    /// A rollback's: the background watch's passing report while it is
    /// fresh, else the quick checks inline.
    Rollback,
    /// None (`force`): said in the reply, the log and the audit log.
    Skip,
}

/// A flip asked for.
#[derive(Debug, Clone)]
pub(crate) struct Flip {
    /// What to make live.
    pub target: Target,
    /// Refuse unless the generation is still this.
    pub expect_generation: Option<u64>,
    /// How to validate the target.
    pub checks: Checks,
}

impl Flip {
    /// `switch` or `rollback`: the audit action and the metric it counts in.
    fn action(&self) -> &'static str {
        match self.target {
            Target::Release(_) => "switch",
            Target::Previous => "rollback",
        }
    }
}

impl Controller {
    /// Validates `req.release` (unless forced), then persists and flips.
    pub async fn switch(&self, req: SwitchRequest, actor: &str) -> Result<FlipReply, ControlError> {
        let one = self.flip_lock()?;
        let checks = if req.force { Checks::Skip } else { Checks::Full };
        let flip = Flip { target: Target::Release(req.release), expect_generation: req.expect_generation, checks };
        self.validated_flip(&one, flip, actor).await
    }

    /// Flips back to the previous release unless it is unhealthy: trusts the
    /// background watch's passing report when it is at most two watch
    /// intervals old, otherwise re-checks it quickly inline. `force` skips both.
    pub async fn rollback(&self, expect_generation: Option<u64>, force: bool, actor: &str) -> Result<FlipReply, ControlError> {
        let one = self.flip_lock()?;
        let checks = if force { Checks::Skip } else { Checks::Rollback };
        self.validated_flip(&one, Flip { target: Target::Previous, expect_generation, checks }, actor).await
    }

    /// The one-flip-at-a-time lock; refused at once while another flip runs
    /// (409) or after a hand-over (503).
    pub(crate) fn flip_lock(&self) -> Result<FlipGuard<'_>, ControlError> {
        let guard = self.flip.try_lock().map_err(|_| ControlError::Busy)?;
        self.writable()?;
        Ok(guard)
    }

    /// The one flip routine: every change of the live release goes through
    /// here. Prechecks the command against the state; starts the target's
    /// stopped `overlap = false` containers (and waits until they are
    /// ready); validates the target as `flip.checks` says; makes the flip
    /// durable and swaps the release table; stops the old live release's
    /// `overlap = false` containers; counts and logs it. A refusal (or a
    /// failed write) stops what it started again, is recorded in the audit
    /// log, and leaves the live release live.
    pub(crate) async fn validated_flip(&self, _one: &FlipGuard<'_>, flip: Flip, actor: &str) -> Result<FlipReply, ControlError> {
        let action = flip.action();
        let result = self.flip_steps(&flip, actor).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(ControlError::Persist(_)) => "failed",
            Err(_) => "refused",
        };
        self.metrics.flip_outcome(action, outcome);
        if let Err(e) = &result {
            log::warn!("{action} {outcome}: {e}");
        }
        result
    }

    async fn flip_steps(&self, flip: &Flip, actor: &str) -> Result<FlipReply, ControlError> {
        let started = Instant::now();
        let action = flip.action();
        let forced = flip.checks == Checks::Skip;
        let window_ms = self.rt().settings.validation_window.as_millis() as u64;
        let (command, target, from) = {
            let st = self.state.lock().await;
            let (expect_generation, detail) = (flip.expect_generation, String::new());
            let command = match &flip.target {
                Target::Release(to) => Command::Switch { to: to.clone(), expect_generation, forced, window_ms, detail },
                Target::Previous => Command::Rollback { expect_generation, forced, window_ms, detail },
            };
            st.precheck(&command)?;
            let target = match &flip.target {
                Target::Release(to) => to.clone(),
                Target::Previous => st.previous.as_ref().map(|p| p.release.clone()).expect("prechecked"),
            };
            (command, target, st.live.clone())
        };
        let registered = self.release(&target)?;

        // start what must run: the target's overlap = false containers
        let start = match self.start_exclusive(&registered).await {
            Ok(start) => start,
            Err(e) => {
                self.audit(action, actor, Some(target), "refused", e.to_string()).await;
                return Err(e);
            }
        };
        let release: Arc<Release> = start.readdressed.clone().unwrap_or(registered);

        // a container just started may take a moment to listen: full checks (with their retries)
        let report = match flip.checks {
            Checks::Skip => None,
            Checks::Full => Some(self.run_validation(&release, Mode::Full).await),
            Checks::Rollback if !start.is_empty() => Some(self.run_validation(&release, Mode::Full).await),
            Checks::Rollback => match self.fresh_watch(&target) {
                Some(watched) => Some(watched),
                None => Some(self.run_validation(&release, Mode::Quick).await),
            },
        };
        let validation = if report.as_ref().is_some_and(|r| r.mode != WATCH_MODE) { started.elapsed() } else { Duration::ZERO };
        if let Some(refused) = report.as_ref().filter(|r| !r.passed) {
            self.undo_start(&start).await;
            self.record_refusal(action, actor, &target, refused).await;
            return Err(ControlError::Validation(Box::new(refused.clone())));
        }

        // durable, then the table swap (both in commit)
        let summary = report.as_ref().map_or_else(|| "forced: validation skipped".to_string(), Report::summary);
        let mut commands = Vec::new();
        if let Some(fresh) = &start.readdressed {
            commands.push(Command::Register { name: target.clone(), backends: fresh.explicit().clone() });
        }
        commands.push(command.with_detail(summary));
        commands.extend(report.iter().filter(|r| r.mode != WATCH_MODE).map(|r| Command::RecordCheck { report: r.clone() }));
        let fresh: Vec<Arc<Release>> = start.readdressed.iter().cloned().collect();
        let committed = {
            let mut st = self.state.lock().await;
            self.commit(&mut st, commands, actor, &fresh).map(|persisted| (persisted, st.clone()))
        };
        let (persisted, st) = match committed {
            Ok(done) => done,
            Err(e) => {
                log::error!("{action} to {target} failed: {e}");
                self.undo_start(&start).await;
                return Err(e);
            }
        };
        let duration = started.elapsed();
        self.metrics.flipped(duration);
        if forced {
            log::warn!("{action} to {target} FORCED by {actor}: validation skipped");
        } else {
            log::info!("{action} to {target} by {actor} in {duration:?}");
        }
        self.wake.notify_one();
        self.warm_wake.notify_one();

        // stop what must stop: the old live release's overlap = false containers
        let mut containers: Vec<ContainerStep> = start.steps();
        if let Some(from) = &from {
            containers.extend(self.stop_exclusive(from).await);
        }
        Ok(FlipReply {
            live: st.live.clone().expect("a flip sets live"),
            previous: st.previous.clone(),
            generation: st.generation,
            forced,
            report,
            duration_ms: duration.as_secs_f64() * 1e3,
            validation_ms: validation.as_secs_f64() * 1e3,
            persist_ms: persisted.as_secs_f64() * 1e3,
            containers,
        })
    }

    /// Records a refused flip: the failed report as the release's last
    /// check, and the refusal in the audit log.
    async fn record_refusal(&self, action: &str, actor: &str, target: &ReleaseName, report: &Report) {
        let mut st = self.state.lock().await;
        let event = super::event(&st, action, actor, Some(target.clone()), "refused", report.summary());
        let mut commands = vec![Command::Audit { event }];
        let check = Command::RecordCheck { report: report.clone() };
        if st.precheck(&check).is_ok() {
            commands.insert(0, check);
        }
        if let Err(e) = self.commit(&mut st, commands, actor, &[]) {
            log::error!("recording the refused {action}: {e}");
        }
    }

    /// Stops again what a refused flip started.
    async fn undo_start(&self, start: &Started) {
        if !start.is_empty() {
            self.stop_containers(&start.started).await;
        }
    }
}
