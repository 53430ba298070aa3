//! Flips: switch and rollback, and the one routine every flip goes through
//! (deploy's switch too): precheck, start what must run, validate, make it
//! durable, swap the table, stop what must stop, metrics, audit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use canopy_proxy::{Release, ReleaseName};

use super::containers::Started;
use super::{Controller, FlipGuard, WATCH_MODE};
use crate::clock::now_ms;
use crate::error::ControlError;
use crate::guard::Readiness;
use crate::replies::{ContainerStep, FlipReply};
use crate::report::Report;
use crate::requests::SwitchRequest;
use crate::state::{Command, State};
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
    /// The audit action and metric word when not a plain `switch` or
    /// `rollback` (`auto-rollback`, `canary-promote`).
    pub action: Option<&'static str>,
    /// Commands committed with the flip, atomically (a canary's end).
    pub also: Vec<Command>,
    /// Watch the new live release afterwards and roll back on a bad verdict
    /// (a switch's `guard`, when `[releases.guard]` is enabled).
    pub guard: bool,
    /// Why this flip happens, first in its audit detail (the guard's evidence).
    pub reason: Option<String>,
}

impl Flip {
    /// A switch to `release` (or a deploy's), fully checked unless forced.
    pub fn switch(release: ReleaseName, expect_generation: Option<u64>, force: bool, guard: bool) -> Self {
        let checks = if force { Checks::Skip } else { Checks::Full };
        Flip { target: Target::Release(release), expect_generation, checks, action: None, also: Vec::new(), guard, reason: None }
    }

    /// A rollback to the warm previous release.
    pub fn rollback(expect_generation: Option<u64>, force: bool) -> Self {
        let checks = if force { Checks::Skip } else { Checks::Rollback };
        Flip { target: Target::Previous, expect_generation, checks, action: None, also: Vec::new(), guard: false, reason: None }
    }

    /// The audit action and the metric it counts in.
    fn action(&self) -> &'static str {
        match (self.action, &self.target) {
            (Some(action), _) => action,
            (None, Target::Release(_)) => "switch",
            (None, Target::Previous) => "rollback",
        }
    }
}

impl Controller {
    /// Validates `req.release` (unless forced), then persists and flips; or,
    /// with `req.canary`, starts a canary of it.
    pub async fn switch(&self, req: SwitchRequest, actor: &str) -> Result<FlipReply, ControlError> {
        let one = self.flip_lock()?;
        let guard = req.guard.unwrap_or(true) && self.rt().settings.guard.enabled;
        if let Some(steps) = req.canary {
            return self.start_canary(&one, req.release, steps, guard, actor).await;
        }
        // switching to the canary's own release promotes it
        if self.state.lock().await.canary.as_ref().is_some_and(|c| c.release == req.release) {
            return self.promote_canary_locked(&one, actor).await;
        }
        let flip = Flip::switch(req.release.clone(), req.expect_generation, req.force, guard);
        match req.pause {
            Some(max) => self.paused_flip(&one, flip, &req.release, max, actor).await,
            None => self.validated_flip(&one, flip, actor).await,
        }
    }

    /// Flips back to the previous release unless it is unhealthy: trusts the
    /// background watch's passing report when it is at most two watch
    /// intervals old, otherwise re-checks it quickly inline. `force` skips
    /// both. While a canary runs, a rollback aborts it instead: everyone goes
    /// back to the live release at once.
    pub async fn rollback(&self, expect_generation: Option<u64>, force: bool, actor: &str) -> Result<FlipReply, ControlError> {
        let one = self.flip_lock()?;
        if self.state.lock().await.canary.is_some() {
            self.abort_canary(&one, actor, format!("aborted by {actor} (rollback)"), None).await?;
            return self.current_reply().await;
        }
        self.validated_flip(&one, Flip::rollback(expect_generation, force), actor).await
    }

    /// The one-flip-at-a-time lock; refused at once while another flip runs
    /// (409) or after a hand-over (503).
    pub(crate) fn flip_lock(&self) -> Result<FlipGuard<'_>, ControlError> {
        let guard = self.flips_held(self.flip.try_lock().map_err(|_| ControlError::Busy)?);
        self.writable()?;
        Ok(guard)
    }

    /// The one-flip-at-a-time lock, waited for (a reload, a hand-over).
    pub(crate) async fn flip_lock_wait(&self) -> FlipGuard<'_> {
        self.flips_held(self.flip.lock().await)
    }

    /// `lock` (the flip lock, just taken) as a [`FlipGuard`]: flagged for
    /// `/status` until it is dropped.
    fn flips_held<'a>(&'a self, lock: tokio::sync::MutexGuard<'a, ()>) -> FlipGuard<'a> {
        self.flipping.store(true, std::sync::atomic::Ordering::SeqCst);
        FlipGuard { _lock: lock, flipping: &self.flipping }
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
            // a flip decided on this generation commits only on it: in a
            // fleet, a flip committed by another node meanwhile refuses it (409)
            let (expect_generation, detail) = (Some(flip.expect_generation.unwrap_or(st.generation)), String::new());
            let action = flip.action.map(String::from);
            let command = match &flip.target {
                Target::Release(to) => Command::Switch { to: to.clone(), expect_generation, forced, window_ms, detail, action },
                Target::Previous => Command::Rollback { expect_generation, forced, window_ms, detail, action },
            };
            st.precheck(&command)?;
            let target = match &flip.target {
                Target::Release(to) => to.clone(),
                Target::Previous => st.previous.as_ref().map(|p| p.release.clone()).expect("prechecked"),
            };
            (command, target, st.live.clone())
        };
        let registered = self.release(&target)?;
        // in a fleet: the nodes live now (the acknowledgement names those gone by then)
        let members = match &self.fleet {
            Some(f) => f.nodes().await.map(|n| n.into_keys().collect()).unwrap_or_default(),
            None => Vec::new(),
        };

        // start what must run: the target's overlap = false containers
        let start = match self.start_exclusive(&registered).await {
            Ok(start) => start,
            Err(e) => {
                self.audit(action, actor, Some(target), "refused", e.to_string()).await;
                return Err(e);
            }
        };
        let release: Arc<Release> = start.readdressed.clone().unwrap_or(registered);

        let (report, rollback_ready) = match flip.checks {
            Checks::Full => {
                // for a switch, the live release's checks again beside the candidate's
                // (rollback readiness: the candidate has started; does the live release still work?)
                let readiness = async {
                    match (&flip.target, &from) {
                        (Target::Release(_), Some(live)) => Some(self.rollback_readiness(live, &target).await),
                        _ => None,
                    }
                };
                let (report, ready) = tokio::join!(self.run_validation(&release, Mode::Full), readiness);
                (Some(report), ready)
            }
            checks => (self.rollback_report(checks, &release, &target, &start).await, None),
        };
        // in a fleet: every other node checks the target against its own backends too
        let report = match report {
            Some(local) if local.passed && self.fleet.is_some() => {
                match self.fleet_checks(local, &target, flip.checks == Checks::Rollback).await {
                    Ok(report) => Some(report),
                    Err(e) => {
                        self.undo_start(&start).await;
                        return Err(e);
                    }
                }
            }
            report => report,
        };
        let validation = if report.as_ref().is_some_and(|r| r.mode != WATCH_MODE) { started.elapsed() } else { Duration::ZERO };
        if let Some(refused) = report.as_ref().filter(|r| !r.passed) {
            self.undo_start(&start).await;
            self.record_refusal(action, actor, &target, refused).await;
            return Err(ControlError::Validation(Box::new(refused.clone())));
        }
        if let Some(r) = rollback_ready.as_ref().filter(|r| !r.ready && self.rt().settings.require_rollback_ready) {
            self.undo_start(&start).await;
            let why = format!("not rollback-ready: {}", r.why);
            self.audit(action, actor, Some(target), "refused", why.clone()).await;
            return Err(ControlError::NotRollbackReady(why));
        }

        // durable, then the table swap (both in commit)
        let mut summary = report.as_ref().map_or_else(|| "forced: validation skipped".to_string(), Report::summary);
        if let Some(reason) = &flip.reason {
            summary = format!("{reason}; {summary}");
        }
        let mut commands = Vec::new();
        if let Some(fresh) = &start.readdressed {
            commands.push(Command::Register {
                name: target.clone(),
                backends: fresh.explicit().clone(),
                node: self.node().map(String::from),
            });
        }
        // (a canary's end before the switch to its candidate, which it allows)
        commands.extend(flip.also.iter().cloned());
        commands.push(command.with_detail(summary));
        commands.extend(report.iter().filter(|r| r.mode != WATCH_MODE).map(|r| Command::RecordCheck { report: r.clone() }));
        let fresh: Vec<Arc<Release>> = start.readdressed.iter().cloned().collect();
        let committed = {
            let mut st = self.state.lock().await;
            // (the revision is read under the state lock: no other revision applies meanwhile)
            let committed = self.commit(&mut st, commands, actor, &fresh).await;
            committed.map(|persisted| (persisted, st.clone(), self.fleet.as_ref().map(|f| (f.applied(), Instant::now()))))
        };
        let (persisted, st, revision) = match committed {
            Ok(done) => done,
            Err(e) => {
                log::error!("{action} to {target} failed: {e}");
                self.undo_start(&start).await;
                return Err(e);
            }
        };
        // in a fleet: acknowledged once every node with a live session applied it
        let fleet = match (&self.fleet, revision) {
            (Some(f), Some((revision, at))) => Some(f.acknowledge(revision, at, &members).await),
            _ => None,
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
        // the guard watches the new live release (a rollback ends the watch of the one left)
        self.guard_after_flip(&target, from.as_ref(), flip.guard);

        // stop what must stop: the old live release's overlap = false containers
        let mut containers: Vec<ContainerStep> = start.steps();
        if let Some(from) = &from {
            containers.extend(self.stop_exclusive(from).await);
        }
        let warnings = self.failed_warning(&st, &target).into_iter().collect();
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
            rollback_ready,
            warnings,
            canary: None,
            fleet,
        })
    }

    /// A rollback's report (or none, forced): full checks when it had to
    /// start containers (they may take a moment to listen), else the warm
    /// watch's fresh report, else quick checks.
    async fn rollback_report(&self, checks: Checks, release: &Release, target: &ReleaseName, start: &Started) -> Option<Report> {
        match checks {
            Checks::Skip => None,
            Checks::Full => Some(self.run_validation(release, Mode::Full).await),
            Checks::Rollback if !start.is_empty() => Some(self.run_validation(release, Mode::Full).await),
            Checks::Rollback => match self.fresh_watch(target) {
                Some(watched) => Some(watched),
                None => Some(self.run_validation(release, Mode::Quick).await),
            },
        }
    }

    /// Re-runs every check of the live release once `candidate` has
    /// started: if they fail now, the candidate's start (its migrations)
    /// broke the release a rollback would go back to.
    async fn rollback_readiness(&self, live: &ReleaseName, candidate: &ReleaseName) -> Readiness {
        let report = match self.release(live) {
            Ok(release) => Some(self.run_validation(&release, Mode::Full).await),
            Err(_) => None,
        };
        let (ready, why) = match &report {
            Some(r) if r.passed => (true, String::new()),
            Some(r) => (
                false,
                format!(
                    "{live} fails its checks now that {candidate} has started ({}): {candidate}'s start (its migrations?) broke the running release, so a rollback to {live} would not work",
                    r.summary()
                ),
            ),
            None => (false, format!("{live} is not in the release table")),
        };
        if !ready {
            log::warn!("rollback readiness: {why}");
        }
        let readiness = Readiness { release: live.clone(), candidate: candidate.clone(), ready, why, at: now_ms() };
        self.guard.lock().expect("guard lock").readiness = Some(readiness.clone());
        readiness
    }

    /// A warning when `target` was taken out of service by canopy before.
    fn failed_warning(&self, st: &State, target: &ReleaseName) -> Option<String> {
        let failure = st.releases.get(target)?.failed.as_ref()?;
        let at = humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(failure.at));
        let warning = format!("{target} was taken out of service by canopy ({}) at {at}: {}", failure.action, failure.detail);
        log::warn!("{warning}");
        Some(warning)
    }

    /// The live state as a flip reply (after a canary abort, which flips nothing).
    pub(super) async fn current_reply(&self) -> Result<FlipReply, ControlError> {
        let st = self.state.lock().await;
        let live = st.live.clone().ok_or(crate::state::StateError::NoLive)?;
        Ok(FlipReply {
            live,
            previous: st.previous.clone(),
            generation: st.generation,
            forced: false,
            report: None,
            duration_ms: 0.0,
            validation_ms: 0.0,
            persist_ms: 0.0,
            containers: Vec::new(),
            rollback_ready: None,
            warnings: Vec::new(),
            canary: None,
            fleet: None,
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
        if let Err(e) = self.commit(&mut st, commands, actor, &[]).await {
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
