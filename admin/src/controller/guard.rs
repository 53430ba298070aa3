//! The guard at work: reads every release's counters each interval (the data
//! plane's own atomics; nothing is added to the request path), judges the
//! watched release (`crate::guard`), and on a bad verdict rolls back through
//! the one flip routine, or aborts the canary. A release it takes out of
//! service is marked failed.

use std::time::{Duration, Instant};

use canopy_proxy::{ReleaseName, ServiceName};

use super::flip::{Checks, Flip, Target};
use super::Controller;
use crate::clock::now_ms;
use crate::cluster::Counters;
use crate::guard::{Against, Evaluation, GuardView, Reading, Verdict, Watch};
use crate::state::{Command, Failure};

/// A refused automatic rollback is tried again at most this often.
const RETRY_REFUSED: Duration = Duration::from_secs(5);

impl Controller {
    /// Reads the counters and judges the watched release every
    /// `[releases.guard] interval`; steps the canary on. Runs until `shutdown`.
    pub async fn run_guard(&self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            let interval = self.rt().settings.guard.interval;
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                // a new watch began: its first judgement is one interval away
                _ = self.guard_tick.notified() => continue,
                _ = shutdown.changed() => return,
            }
            // in a fleet: this node's counters out, every other node's in
            if let Some(fleet) = &self.fleet {
                fleet.publish_counters(&self.own_counters()).await;
                let others = fleet.others_counters().await;
                self.guard.lock().expect("guard lock").fleet.absorb(others);
            }
            self.read_counters(Instant::now());
            if let Some((watch, evaluation)) = self.judge().await {
                self.act_on(watch, evaluation).await;
            }
            self.step_canary().await;
        }
    }

    /// This node's counters, per release and service (published to the
    /// fleet for the node that judges).
    fn own_counters(&self) -> Counters {
        let snapshot = self.table.load();
        let names: Vec<String> = snapshot.topology().services().iter().map(|s| s.name.to_string()).collect();
        snapshot
            .releases()
            .iter()
            .map(|r| {
                let samples = names.iter().cloned().zip(r.stats().services().iter().map(|s| s.sample())).collect();
                (r.name().to_string(), samples)
            })
            .collect()
    }

    /// Records a reading of every release in the table, as of `at`: this
    /// node's counters plus, in a fleet, every other node's traffic as
    /// absorbed so far, so the verdict is over the whole fleet's traffic.
    fn read_counters(&self, at: Instant) {
        let snapshot = self.table.load();
        let names: Vec<String> = snapshot.topology().services().iter().map(|s| s.name.to_string()).collect();
        let rules = &self.rt().settings.guard;
        let keep = rules.window.max(rules.baseline) + rules.interval * 2;
        let mut book = self.guard.lock().expect("guard lock");
        for release in snapshot.releases() {
            let mut services: Vec<_> = release.stats().services().iter().map(|s| s.sample()).collect();
            for (sample, name) in services.iter_mut().zip(&names) {
                if let Some(theirs) = book.fleet.of(release.name().as_str(), name) {
                    sample.add(theirs);
                }
            }
            book.history.record(release.name(), Reading { at, services }, keep);
        }
        let present: Vec<&ReleaseName> = snapshot.releases().iter().map(|r| r.name()).collect();
        book.history.keep_only(&present);
    }

    /// Judges the watched release once; returns the watch and the evaluation
    /// when it is time to act. A watch whose moment has passed (the
    /// previous release retired, another flip, the canary ended) ends here.
    async fn judge(&self) -> Option<(Watch, Evaluation)> {
        let (live, previous, canary) = {
            let st = self.state.lock().await;
            (st.live.clone(), st.previous.as_ref().map(|p| p.release.clone()), st.canary.as_ref().map(|c| c.release.clone()))
        };
        let rt = self.rt();
        let services: Vec<ServiceName> = self.topology().services().iter().map(|s| s.name.clone()).collect();
        let mut book = self.guard.lock().expect("guard lock");
        let book = &mut *book;
        let watch = book.watch.as_mut()?;
        let current = match watch.kind {
            Against::Baseline(_) => live.as_ref() == Some(&watch.candidate) && previous.as_ref() == Some(&watch.against),
            Against::SamePeriod => canary.as_ref() == Some(&watch.candidate) && live.as_ref() == Some(&watch.against),
        };
        if !current {
            let w = book.watch.take().expect("a watch");
            log::info!("guard: {} passed ({} evaluations, {} with enough answers)", w.candidate, w.evaluations, w.conclusive);
            return None;
        }
        let (evaluation, act) = watch.judge(&rt.settings.guard, &services, &book.history, Instant::now());
        self.metrics.guard_evaluated(&watch.candidate, &watch.against, &evaluation);
        if evaluation.bad {
            log::warn!(
                "guard: {} is bad ({}/{}): {}",
                watch.candidate,
                watch.consecutive_bad,
                rt.settings.guard.failure_limit,
                evaluation.evidence()
            );
        }
        let recently_refused = book.refused_at.is_some_and(|t| t.elapsed() < RETRY_REFUSED);
        (act && !recently_refused).then(|| (watch.clone(), evaluation))
    }

    /// Rolls back (or aborts the canary of) the release `watch` found bad.
    async fn act_on(&self, watch: Watch, evaluation: Evaluation) {
        let Some(rule) = evaluation.first_rule() else { return };
        let evidence = format!("{} (rule {})", evaluation.evidence(), rule.as_str());
        let actor = "canopy (guard)";
        // an operator's flip runs: judge again next interval
        let Ok(one) = self.flip_lock() else { return };
        let (action, result) = match watch.kind {
            Against::SamePeriod => ("canary-abort", self.abort_canary(&one, actor, evidence.clone(), Some(&evaluation)).await),
            Against::Baseline(_) => {
                let flip = Flip {
                    target: Target::Previous,
                    expect_generation: None,
                    checks: Checks::Rollback,
                    action: Some("auto-rollback"),
                    also: vec![failed(&watch.candidate, "auto-rollback", &evidence)],
                    guard: false,
                    reason: Some(evidence.clone()),
                };
                ("auto-rollback", self.validated_flip(&one, flip, actor).await.map(drop))
            }
        };
        let refused = result.err().map(|e| e.to_string());
        let verdict = Verdict { at: now_ms(), release: watch.candidate.clone(), action: action.into(), rule, evidence, refused };
        let mut book = self.guard.lock().expect("guard lock");
        match &verdict.refused {
            None => {
                self.metrics.auto_rolled_back(rule);
                log::warn!("guard: {action} of {}: {}", verdict.release, verdict.evidence);
                book.watch = None;
                book.refused_at = None;
            }
            Some(why) => {
                if book.refused_at.is_none() {
                    log::error!("guard: {} is bad ({}) but the {action} was refused: {why}", verdict.release, verdict.evidence);
                }
                book.refused_at = Some(Instant::now());
            }
        }
        book.verdict = Some(verdict);
    }

    /// After a flip to `to` (from `from`): with `guard`, watch `to` against
    /// `from`'s figures before the switch; else stop watching.
    pub(super) fn guard_after_flip(&self, to: &ReleaseName, from: Option<&ReleaseName>, guard: bool) {
        // the reading the new release is judged from
        let now = Instant::now();
        self.read_counters(now);
        let rules = self.rt().settings.guard.clone();
        let mut book = self.guard.lock().expect("guard lock");
        book.watch = None;
        book.refused_at = None;
        let (Some(from), true) = (from, guard) else { return };
        let from_at = now.checked_sub(rules.baseline).unwrap_or(now);
        let baseline = book.history.since(from, from_at).map(|b| b.into_iter().map(Some).collect()).unwrap_or_default();
        book.watch = Some(Watch::new(to.clone(), from.clone(), Against::Baseline(baseline), now, now_ms()));
        self.guard_tick.notify_one();
        log::info!("guard: watching {to} against {from} while {from} stays warm");
    }

    /// Watches the canary's candidate against the live release in the same
    /// period, from now (a new step starts a new period).
    pub(super) fn guard_canary(&self, candidate: &ReleaseName, live: &ReleaseName) {
        let now = Instant::now();
        self.read_counters(now);
        let mut book = self.guard.lock().expect("guard lock");
        book.watch = Some(Watch::new(candidate.clone(), live.clone(), Against::SamePeriod, now, now_ms()));
        book.refused_at = None;
        self.guard_tick.notify_one();
    }

    /// Whether the canary's current step has had a judgement with enough answers.
    pub(super) fn canary_step_judged(&self) -> bool {
        let book = self.guard.lock().expect("guard lock");
        book.watch.as_ref().is_some_and(|w| w.conclusive > 0 && matches!(w.kind, Against::SamePeriod))
    }

    /// The guard in `/status` and `GET /guard`.
    pub fn guard_view(&self) -> GuardView {
        self.guard.lock().expect("guard lock").view(&self.rt().settings.guard)
    }
}

/// The command that marks `release` as taken out of service by canopy.
pub(super) fn failed(release: &ReleaseName, action: &str, evidence: &str) -> Command {
    Command::MarkFailed { release: release.clone(), failure: Failure { at: now_ms(), action: action.into(), detail: evidence.into() } }
}
