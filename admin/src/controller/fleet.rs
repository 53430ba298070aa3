//! The controller in a fleet: where its state comes from at start, how it
//! follows the fleet's revisions (each applied to this node's release
//! table, in order), its local copy, and its readiness.

use std::sync::Arc;
use std::time::Duration;

use canopy_proxy::Release;
use tokio::sync::{MutexGuard, Notify};

use canopy_proxy::{ReleaseName, ServiceName};

use super::{resolve, seed_state, Controller};
use crate::clock::now_ms;
use crate::cluster::{CheckRequest, Fleet, FleetView};
use crate::error::ControlError;
use crate::persist::{Entry, Store};
use crate::report::{CheckResult, Report};
use crate::settings::Seed;
use crate::state::{Command, State};
use crate::validate::Mode;

/// How long to wait before reading etcd again after a failure.
const RETRY: Duration = Duration::from_millis(250);
/// How often a commit of records is applied again on a newer state.
const REBASES: u32 = 5;

/// The state a fleet node starts from: the fleet's (a first node seeds it
/// from its local copy or the config); without etcd, the local copy of the
/// last state this node applied, read-only until etcd answers.
pub(super) async fn initial_state(fleet: &Fleet, local: Option<State>, seed: Seed, store: &mut Store) -> Result<State, ControlError> {
    let (state, revision) = match fleet.read().await {
        Ok(Some(found)) => found,
        Ok(None) => {
            let first = match local {
                Some(s) => s,
                None => seed_state(seed)?,
            };
            fleet.seed(&first).await?
        }
        Err(e) => {
            log::warn!("fleet: {e}; starting from the local copy of the last applied state (read-only until etcd answers)");
            return match local {
                Some(s) => Ok(s),
                None => seed_state(seed),
            };
        }
    };
    store.checkpoint(&state)?;
    fleet.set_applied(revision);
    Ok(state)
}

impl Controller {
    /// Whether this node should take traffic (`GET /readyz`): always on a
    /// single canopy; in a fleet, while its session is live and it has
    /// caught up. `Err` says why not.
    pub fn readiness(&self) -> Result<(), String> {
        self.fleet.as_ref().map_or(Ok(()), |f| f.readiness())
    }

    /// The fleet for `canopy status` (`None` without `[cluster]`).
    pub(super) async fn fleet_view(&self) -> Option<FleetView> {
        Some(self.fleet.as_ref()?.view().await)
    }

    /// Keeps the local state file a copy of the state this node serves, so
    /// a restart without etcd starts from it.
    pub(super) fn keep_local_copy(&self, state: &State) {
        if let Err(e) = self.store.lock().expect("store lock").checkpoint(state) {
            log::warn!("fleet: keeping the local copy of the state: {e}");
        }
    }

    /// Starts following the fleet (with `[cluster]`): the session, and the
    /// loop that reads the fleet's state, then applies every revision the
    /// watch brings, reading again whole after any break or a new session.
    pub fn follow_fleet(self: &Arc<Self>) {
        let Some(fleet) = self.fleet.clone() else { return };
        let reconnected = Arc::new(Notify::new());
        fleet.spawn(fleet.clone().run_session(reconnected.clone()));
        let (this, following) = (self.clone(), fleet.clone());
        fleet.spawn(async move { this.follow(&following, &reconnected).await });
        let (this, answering) = (self.clone(), fleet.clone());
        fleet.spawn(async move {
            loop {
                let checking = this.clone();
                answering.answer_checks(move |request| checking.clone().check_for_fleet(request)).await;
                tokio::time::sleep(RETRY).await;
            }
        });
        let (this, answering) = (self.clone(), fleet.clone());
        fleet.spawn(async move {
            loop {
                let preparing = this.clone();
                answering.answer_deploys(move |request| preparing.clone().prepare_for_fleet(request)).await;
                tokio::time::sleep(RETRY).await;
            }
        });
    }

    /// Makes `commands` the fleet's next revision (the controller's commit
    /// in a fleet): one etcd transaction against the revision this node
    /// applied. When another node committed first, records and
    /// registrations are applied again on the newer state (read and
    /// applied here first); anything else is refused (409).
    pub(super) async fn commit_to_fleet(
        &self,
        fleet: &Fleet,
        st: &mut MutexGuard<'_, State>,
        commands: Vec<Command>,
        actor: &str,
        fresh: &[Arc<Release>],
    ) -> Result<(), ControlError> {
        let mut rebased = 0;
        loop {
            let entry = Entry { seq: st.seq + 1, at: now_ms(), actor: actor.into(), commands: commands.clone() };
            let next = entry.apply_to(st)?;
            match fleet.commit(&next, fleet.applied()).await {
                Ok(revision) => {
                    self.publish(&next, fresh);
                    fleet.set_applied(revision);
                    // after the table: the copy is for restarts without etcd, not on the flip's path
                    self.keep_local_copy(&next);
                    **st = next;
                    return Ok(());
                }
                Err(ControlError::Conflict(_)) if rebased < REBASES && rebaseable(&commands) => {
                    rebased += 1;
                    if let Ok(Some((state, revision))) = fleet.read().await {
                        self.apply_fleet_locked(st, state, revision).await;
                    }
                }
                Err(e) => {
                    if matches!(e, ControlError::Conflict(_)) {
                        fleet.count_refusal("conflict");
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Another node's request to check a release here, against this node's
    /// backends: once this node has applied the revision the request was
    /// made at; a rollback's quick checks may be the warm watch's fresh report.
    async fn check_for_fleet(self: Arc<Self>, request: CheckRequest) -> Option<Report> {
        let fleet = self.fleet.as_ref()?;
        let limit = fleet.settings().apply_timeout;
        let started = std::time::Instant::now();
        while fleet.applied() < request.revision && started.elapsed() < limit {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let release = match self.release(&request.release) {
            Ok(release) => release,
            Err(e) => return Some(unchecked(&request.release, fleet.node(), &e.to_string())),
        };
        if request.quick {
            if let Some(watched) = self.fresh_watch(&request.release) {
                return Some(watched);
            }
        }
        let mode = if request.quick { Mode::Quick } else { Mode::Full };
        Some(self.run_validation(&release, mode).await)
    }

    /// A flip's checks on every other node with a live session, once this
    /// node's `local` report passed: `local` with every other node's failed
    /// checks added (their reasons name the node), and a failed check for
    /// each node that did not answer within `apply-timeout`.
    pub(super) async fn fleet_checks(&self, local: Report, target: &ReleaseName, quick: bool) -> Result<Report, ControlError> {
        let Some(fleet) = &self.fleet else { return Ok(local) };
        let asked = fleet.ask_checks(target, quick).await?;
        let mut report = local;
        for (node, remote) in asked.answers {
            if remote.passed {
                continue;
            }
            let failed: Vec<CheckResult> = remote.checks.into_iter().filter(|c| !c.passed).collect();
            let failed = if failed.is_empty() { unchecked(target, &node, "no check ran").checks } else { failed };
            report.checks.extend(failed.into_iter().map(|mut c| {
                c.reason = format!("on node {node}: {}", c.reason);
                c
            }));
            report.passed = false;
        }
        for node in asked.silent {
            let why = format!("node {node} did not answer within apply-timeout {:?}", fleet.settings().apply_timeout);
            report.checks.extend(unchecked(target, &node, &why).checks);
            report.passed = false;
        }
        Ok(report)
    }

    async fn follow(&self, fleet: &Fleet, reconnected: &Notify) {
        loop {
            let epoch = fleet.session_epoch();
            let read = match fleet.read().await {
                Ok(Some(found)) => Ok(found),
                Ok(None) => {
                    let mine = self.state.lock().await.clone();
                    fleet.seed(&mine).await
                }
                Err(e) => Err(e),
            };
            let (state, revision) = match read {
                Ok(found) => found,
                Err(_) => {
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            };
            self.apply_fleet_state(state, revision).await;
            fleet.caught_up(epoch);
            let mut watch = match fleet.watch(fleet.applied() + 1).await {
                Ok(w) => w,
                Err(_) => {
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            };
            loop {
                tokio::select! {
                    next = watch.next() => match next {
                        Ok(Some((state, revision))) => self.apply_fleet_state(state, revision).await,
                        Ok(None) | Err(_) => break,
                    },
                    _ = reconnected.notified() => break,
                }
            }
        }
    }

    /// Applies the fleet's state at `revision` to this node (older or the
    /// same revisions are ignored): resolves the releases that are new or
    /// have new backends for this node, keeps the local copy, publishes the
    /// release table of the new state.
    pub(super) async fn apply_fleet_state(&self, next: State, revision: i64) {
        let mut st = self.state.lock().await;
        self.apply_fleet_locked(&mut st, next, revision).await;
    }

    /// [`Controller::apply_fleet_state`] with the state lock held.
    async fn apply_fleet_locked(&self, st: &mut MutexGuard<'_, State>, next: State, revision: i64) {
        let Some(fleet) = &self.fleet else { return };
        if revision <= fleet.applied() {
            return;
        }
        let topology = self.topology();
        let snap = self.table.load();
        let node = self.node();
        let mut fresh = Vec::new();
        for (name, record) in &next.releases {
            let backends = record.backends_for(node);
            if snap.find(name).is_some_and(|r| r.explicit() == backends) {
                continue;
            }
            match resolve(&topology, &self.table, name, backends).await {
                Ok(release) => fresh.push(release),
                Err(e) => log::error!("fleet: revision {revision}: release {name}: {e}"),
            }
        }
        let live_changed = st.live != next.live;
        self.publish(&next, &fresh);
        fleet.set_applied(revision);
        self.keep_local_copy(&next);
        let live = next.live.clone();
        **st = next;
        if live_changed {
            log::info!("fleet: revision {revision} applied: {} is live", live.map_or_else(|| "nothing".into(), |l| l.to_string()));
        }
        self.wake.notify_one();
        self.warm_wake.notify_one();
    }
}

/// A failed report for a release `node` could not check.
fn unchecked(release: &ReleaseName, node: &str, why: &str) -> Report {
    let service = ServiceName::parse("fleet").expect("a valid name");
    let check = CheckResult {
        service,
        check: format!("checks on node {node}"),
        kind: "fleet".into(),
        target: Some(node.to_string()),
        passed: false,
        attempts: 1,
        duration_ms: 0.0,
        reason: why.to_string(),
        output: None,
    };
    Report { release: release.clone(), passed: false, mode: "full".into(), at: now_ms(), duration_ms: 0.0, checks: vec![check] }
}

/// Whether `commands` may be applied again on a newer state than the one
/// they were made for (in a fleet, when another node committed first):
/// records and registrations may; a flip, a canary's step and a
/// deploy's start may not (they were decided on the state they saw).
fn rebaseable(commands: &[Command]) -> bool {
    commands.iter().all(|c| {
        matches!(
            c,
            Command::Register { .. }
                | Command::RecordCheck { .. }
                | Command::Audit { .. }
                | Command::MarkFailed { .. }
                | Command::Maintenance { .. }
                | Command::Containers { .. }
                | Command::DeployEnded { .. }
                | Command::Retire { .. }
        )
    })
}
