//! Canaries: a share of the traffic to the candidate, step by step, each
//! step judged by the guard against the live release in the same period; a
//! passing last step ends in the one validated flip, a bad one sends
//! everyone back to the live release (the candidate stays registered for
//! inspection). Shoppers keep their bucket (`canopy_proxy::canary`), so a
//! cart never moves back and forth.

use canopy_proxy::{ReleaseName, CANARY_BUCKETS};

use super::flip::{Checks, Flip, Target};
use super::guard::failed;
use super::{Controller, FlipGuard};
use crate::clock::now_ms;
use crate::error::ControlError;
use crate::guard::Evaluation;
use crate::replies::{CanaryView, FlipReply};
use crate::state::{percents, CanaryState, Command, StateError};
use crate::validate::Mode;

impl Controller {
    /// Starts a canary of `release` with `steps` (percent of the traffic;
    /// empty: `[releases.canary] steps`), after validating it (its
    /// `overlap = false` services are left out: their containers start at
    /// the promotion). `guarded`: the guard judges each step.
    pub(super) async fn start_canary(
        &self,
        _one: &FlipGuard<'_>,
        release: ReleaseName,
        steps: Vec<f64>,
        guarded: bool,
        actor: &str,
    ) -> Result<FlipReply, ControlError> {
        let settings = self.rt().settings.canary.clone();
        let steps = if steps.is_empty() { settings.steps.clone() } else { steps };
        let weights = weights(&steps)?;
        let canary = CanaryState {
            release: release.clone(),
            steps: weights,
            step: 0,
            step_ms: settings.step_duration.as_millis() as u64,
            step_started_at: now_ms(),
            guarded,
            node: self.node().map(String::from),
        };
        let start = Command::CanaryStart { canary };
        self.state.lock().await.precheck(&start)?;
        let registered = self.release(&release)?;
        let stopped = self.stopped_exclusive(&release);
        let rt = self.rt();
        let mut report =
            rt.validator.validate_services(&self.topology(), &registered, Mode::Full, now_ms(), |i| !stopped.contains(&i)).await;
        self.metrics.record_checks(&report);
        self.explain_stopped(&mut report).await;
        if !report.passed {
            self.audit("canary-start", actor, Some(release), "refused", report.summary()).await;
            return Err(ControlError::Validation(Box::new(report)));
        }
        let live = {
            let mut st = self.state.lock().await;
            // the step starts once the checks are done
            let start = match start {
                Command::CanaryStart { mut canary } => {
                    canary.step_started_at = now_ms();
                    Command::CanaryStart { canary }
                }
                other => other,
            };
            self.commit(&mut st, vec![Command::RecordCheck { report }, start], actor, &[]).await?;
            st.live.clone().expect("a canary has a live release")
        };
        if guarded {
            self.guard_canary(&release, &live);
        }
        // overlap = false: only the live release's container runs until the promotion starts the candidate's
        self.stop_exclusive(&release).await;
        log::info!("canary of {release} started by {actor}: {}", percents(&self.canary_now().await.map(|c| c.steps).unwrap_or_default()));
        self.canary_reply().await
    }

    /// Every guard interval: moves the canary to its next step when the
    /// current one has run its course (and, when guarded, was judged on
    /// enough answers: no verdict without traffic, so it waits), or promotes
    /// it after its last step.
    pub(super) async fn step_canary(&self) {
        let Some(c) = self.canary_now().await else { return };
        // in a fleet, the node that started the canary steps it, once
        if c.node.as_deref().is_some_and(|n| Some(n) != self.node()) {
            return;
        }
        if now_ms() < c.step_started_at + c.step_ms {
            return;
        }
        if c.guarded && !self.canary_step_judged() {
            log::debug!("canary of {}: step {} waits for enough traffic to be judged", c.release, c.step + 1);
            return;
        }
        let Ok(one) = self.flip_lock() else { return };
        let actor = "canopy (canary)";
        if c.step + 1 < c.steps.len() {
            let live = {
                let mut st = self.state.lock().await;
                if let Err(e) = self.commit(&mut st, vec![Command::CanaryStep { step: c.step + 1 }], actor, &[]).await {
                    log::error!("canary of {}: the next step: {e}", c.release);
                    return;
                }
                st.live.clone()
            };
            if let (Some(live), true) = (live, c.guarded) {
                self.guard_canary(&c.release, &live);
            }
            log::info!("canary of {}: step {} of {}", c.release, c.step + 2, c.steps.len());
        } else if let Err(e) = self.promote(&one, &c, actor).await {
            log::error!("canary of {}: the promotion was refused: {e}; the canary goes on at its last step", c.release);
        }
    }

    /// `canopy canary promote`: the validated flip to the candidate now.
    pub async fn promote_canary(&self, actor: &str) -> Result<FlipReply, ControlError> {
        let one = self.flip_lock()?;
        self.promote_canary_locked(&one, actor).await
    }

    /// [`Self::promote_canary`] under the flip lock the caller holds.
    pub(super) async fn promote_canary_locked(&self, one: &FlipGuard<'_>, actor: &str) -> Result<FlipReply, ControlError> {
        let c = self.canary_now().await.ok_or(StateError::NoCanary)?;
        self.promote(one, &c, actor).await
    }

    /// `canopy canary abort`: everyone back on the live release.
    pub async fn abort_canary_by_hand(&self, actor: &str) -> Result<FlipReply, ControlError> {
        let one = self.flip_lock()?;
        self.abort_canary(&one, actor, format!("aborted by {actor}"), None).await?;
        self.current_reply().await
    }

    /// The switch to the canary's candidate, ending the canary in the same
    /// commit (through the one flip routine: containers, checks, readiness).
    async fn promote(&self, one: &FlipGuard<'_>, c: &CanaryState, actor: &str) -> Result<FlipReply, ControlError> {
        let detail = format!("promoted after {} step(s) ({})", c.step + 1, percents(&c.steps[..=c.step.min(c.steps.len() - 1)]));
        let end = Command::CanaryEnd { result: "promoted".into(), detail };
        let flip = Flip {
            target: Target::Release(c.release.clone()),
            expect_generation: None,
            checks: Checks::Full,
            action: Some("canary-promote"),
            also: vec![end],
            guard: c.guarded,
            reason: None,
        };
        let reply = self.validated_flip(one, flip, actor).await?;
        log::info!("canary of {} promoted by {actor}", c.release);
        Ok(reply)
    }

    /// Ends the canary: weight 0, everyone back on the live release; the
    /// candidate stays registered (marked failed when the guard found it bad).
    pub(super) async fn abort_canary(
        &self,
        _one: &FlipGuard<'_>,
        actor: &str,
        detail: String,
        evaluation: Option<&Evaluation>,
    ) -> Result<(), ControlError> {
        let mut st = self.state.lock().await;
        let c = st.canary.clone().ok_or(StateError::NoCanary)?;
        let mut commands = vec![Command::CanaryEnd { result: "aborted".into(), detail: detail.clone() }];
        if evaluation.is_some() {
            commands.push(failed(&c.release, "canary-abort", &detail));
        }
        self.commit(&mut st, commands, actor, &[]).await?;
        drop(st);
        self.guard.lock().expect("guard lock").watch = None;
        log::warn!("canary of {} aborted by {actor}: {detail}", c.release);
        Ok(())
    }

    /// The canary in progress.
    async fn canary_now(&self) -> Option<CanaryState> {
        self.state.lock().await.canary.clone()
    }

    /// The reply to a canary start: the live state and the canary.
    async fn canary_reply(&self) -> Result<FlipReply, ControlError> {
        let mut reply = self.current_reply().await?;
        reply.canary = self.canary_now().await.as_ref().map(CanaryView::of);
        Ok(reply)
    }
}

/// Steps in percent as weights in buckets: each above 0, below 100 and
/// above the one before (raising the weight only moves shoppers to the
/// candidate).
fn weights(steps: &[f64]) -> Result<Vec<u16>, ControlError> {
    let mut out: Vec<u16> = Vec::new();
    for s in steps {
        if !(*s > 0.0 && *s < 100.0) {
            return Err(ControlError::Invalid(format!(
                "canary step {s}% must be above 0 and below 100 (the last step ends in the switch)"
            )));
        }
        let w = (s * f64::from(CANARY_BUCKETS) / 100.0).round() as u16;
        if out.last().is_some_and(|last| w <= *last) {
            return Err(ControlError::Invalid(format!("canary steps must rise: {s}% after {}%", f64::from(*out.last().unwrap()) / 100.0)));
        }
        out.push(w);
    }
    if out.is_empty() {
        return Err(ControlError::Invalid("a canary needs at least one step".into()));
    }
    Ok(out)
}
