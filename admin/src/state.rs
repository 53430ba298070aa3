//! The control state and its pure state machine: `State::apply(Command)`.
//! No I/O here: handlers translate requests into commands, the controller
//! persists and publishes what `apply` returns.

use std::collections::{BTreeMap, VecDeque};

use canopy_proxy::{Endpoint, ReleaseName, ServiceName};
use serde::{Deserialize, Serialize};

use crate::report::Report;

/// Version of the state file format written by this build.
pub const STATE_VERSION: u32 = 1;
/// Audit events kept (oldest dropped first).
pub const MAX_EVENTS: usize = 200;

pub use crate::clock::UnixMillis;

/// Explicit backends per service; services absent use the address template.
pub type BackendMap = BTreeMap<ServiceName, Vec<Endpoint>>;

/// One registered release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRecord {
    /// Explicit backends (may be empty: all from the template).
    #[serde(default)]
    pub backends: BackendMap,
    /// When it was first registered.
    pub registered_at: UnixMillis,
    /// The last validation report, if it was ever checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check: Option<Report>,
}

/// The release that was live before the last flip, kept warm until `retire_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Previous {
    /// Its name.
    pub release: ReleaseName,
    /// When the validation window ends and it is retired automatically.
    pub retire_at: UnixMillis,
}

/// One audit log entry: who did what, when, and how it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// When it happened.
    pub at: UnixMillis,
    /// `switch`, `rollback`, `retire` or `register`.
    pub action: String,
    /// Who asked (from the admin request), or `canopy` for automatic actions.
    pub actor: String,
    /// Live release before.
    #[serde(default)]
    pub from: Option<ReleaseName>,
    /// Release acted on (switch target, retired release...).
    #[serde(default)]
    pub to: Option<ReleaseName>,
    /// `ok`, `refused` or `failed`.
    pub result: String,
    /// Validation skipped on request.
    #[serde(default)]
    pub forced: bool,
    /// Generation after the action.
    pub generation: u64,
    /// Short summary (failed checks, reason).
    #[serde(default)]
    pub detail: String,
}

/// Everything that must survive a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// File format version ([`STATE_VERSION`]).
    pub version: u32,
    /// Bumped by every flip (switch or rollback).
    pub generation: u64,
    /// Commits recorded (bumped by the store, not by `apply`): orders the
    /// journal against the checkpoint.
    #[serde(default)]
    pub seq: u64,
    /// The release serving traffic.
    pub live: Option<ReleaseName>,
    /// The release that was live before, while its validation window runs.
    pub previous: Option<Previous>,
    /// Every registered release.
    pub releases: BTreeMap<ReleaseName, ReleaseRecord>,
    /// Audit log, newest last.
    #[serde(default)]
    pub events: VecDeque<Event>,
    /// A `canopy deploy` of this release began and has not ended: after a
    /// crash, its containers are cleaned up at start (never left serving).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploying: Option<ReleaseName>,
    /// Releases whose containers are stopped (kept for a fast redeploy),
    /// oldest first; pruning removes from the front.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stopped: Vec<ReleaseName>,
}

/// A change to the control state (also the journal's record of it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Command {
    /// Register a release, or replace the backends of a registered one.
    Register {
        /// The release.
        name: ReleaseName,
        /// Its explicit backends.
        backends: BackendMap,
    },
    /// Make `to` live; the current live release becomes `previous`.
    Switch {
        /// The release to make live.
        to: ReleaseName,
        /// Refuse unless the generation is still this.
        expect_generation: Option<u64>,
        /// Validation was skipped.
        forced: bool,
        /// How long the old live release stays warm.
        window_ms: u64,
        /// Audit summary (validation result).
        detail: String,
    },
    /// Make `previous` live again; the current live release becomes `previous`.
    Rollback {
        /// Refuse unless the generation is still this.
        expect_generation: Option<u64>,
        /// Validation was skipped.
        forced: bool,
        /// How long the release rolled back from stays warm.
        window_ms: u64,
        /// Audit summary (re-check result).
        detail: String,
    },
    /// Drop a release (never the live one).
    Retire {
        /// The release.
        name: ReleaseName,
    },
    /// Remember the last validation report of a release.
    RecordCheck {
        /// The report (names its release).
        report: Report,
    },
    /// Append an audit entry only (refusals and failures).
    Audit {
        /// The entry.
        event: Event,
    },
    /// A deploy of `release` began (its containers may exist from now on).
    /// Refused while another deploy is recorded as running.
    DeployStarted {
        /// The release being deployed.
        release: ReleaseName,
    },
    /// The running deploy ended; audited with its result.
    DeployEnded {
        /// The release that was deployed.
        release: ReleaseName,
        /// `ok`, `refused` or `failed`.
        result: String,
        /// Why, or the step summary.
        detail: String,
    },
    /// The containers of `release` were stopped (kept) or started again
    /// (`stopped = false`), or removed (`removed = true`).
    Containers {
        /// The release.
        release: ReleaseName,
        /// What happened: `stopped`, `started` or `removed`.
        change: ContainerChange,
    },
}

impl Command {
    /// The same command with `detail` as its audit summary (a flip's
    /// validation result, known only once the checks have run).
    pub fn with_detail(self, detail: String) -> Self {
        match self {
            Command::Switch { to, expect_generation, forced, window_ms, .. } => {
                Command::Switch { to, expect_generation, forced, window_ms, detail }
            }
            Command::Rollback { expect_generation, forced, window_ms, .. } => {
                Command::Rollback { expect_generation, forced, window_ms, detail }
            }
            other => other,
        }
    }
}

/// What happened to a release's containers, for [`Command::Containers`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ContainerChange {
    /// Stopped and kept (a redeploy starts them again).
    Stopped,
    /// Started again.
    Started,
    /// Removed for good (pruned, or a failed deploy cleaned up).
    Removed,
}

impl ContainerChange {
    fn action(self) -> &'static str {
        match self {
            ContainerChange::Stopped => "stop-containers",
            ContainerChange::Started => "start-containers",
            ContainerChange::Removed => "remove-containers",
        }
    }
}

/// Why a command was refused; the state is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// The named release is not registered.
    #[error("release `{name}` is not registered")]
    NotFound {
        /// The name asked for.
        name: ReleaseName,
    },
    /// The release asked for is already live.
    #[error("release `{name}` is already live")]
    AlreadyLive {
        /// The live release.
        name: ReleaseName,
    },
    /// The caller's view is out of date.
    #[error("stale generation: expected {expected}, current is {current}")]
    StaleGeneration {
        /// What the caller expected.
        expected: u64,
        /// The current generation.
        current: u64,
    },
    /// Rollback with nothing to roll back to.
    #[error("nothing to roll back to: no previous release is warm")]
    NoPrevious,
    /// The live release cannot be retired.
    #[error("release `{name}` is live; switch to another release before retiring it")]
    RetireLive {
        /// The live release.
        name: ReleaseName,
    },
    /// A deploy is already running (or was, when canopy stopped).
    #[error("a deploy of release `{name}` is in progress")]
    DeployRunning {
        /// The release being deployed.
        name: ReleaseName,
    },
}

impl State {
    /// The state of a fresh install: nothing registered.
    pub fn empty() -> Self {
        Self {
            version: STATE_VERSION,
            generation: 0,
            seq: 0,
            live: None,
            previous: None,
            releases: BTreeMap::new(),
            events: VecDeque::new(),
            deploying: None,
            stopped: Vec::new(),
        }
    }

    fn check_generation(&self, expect: Option<u64>) -> Result<(), StateError> {
        match expect {
            Some(e) if e != self.generation => Err(StateError::StaleGeneration { expected: e, current: self.generation }),
            _ => Ok(()),
        }
    }

    fn require(&self, name: &ReleaseName) -> Result<(), StateError> {
        if self.releases.contains_key(name) {
            Ok(())
        } else {
            Err(StateError::NotFound { name: name.clone() })
        }
    }

    /// Checks whether `cmd` would be accepted, without building the new state.
    pub fn precheck(&self, cmd: &Command) -> Result<(), StateError> {
        match cmd {
            Command::Register { .. } | Command::Audit { .. } => Ok(()),
            Command::Switch { to, expect_generation, .. } => {
                self.check_generation(*expect_generation)?;
                self.require(to)?;
                if self.live.as_ref() == Some(to) {
                    return Err(StateError::AlreadyLive { name: to.clone() });
                }
                Ok(())
            }
            Command::Rollback { expect_generation, .. } => {
                self.check_generation(*expect_generation)?;
                match &self.previous {
                    Some(p) if self.releases.contains_key(&p.release) => Ok(()),
                    _ => Err(StateError::NoPrevious),
                }
            }
            Command::Retire { name } => {
                self.require(name)?;
                if self.live.as_ref() == Some(name) {
                    return Err(StateError::RetireLive { name: name.clone() });
                }
                Ok(())
            }
            Command::RecordCheck { report } => self.require(&report.release),
            Command::DeployStarted { .. } => match &self.deploying {
                Some(name) => Err(StateError::DeployRunning { name: name.clone() }),
                None => Ok(()),
            },
            Command::DeployEnded { .. } | Command::Containers { .. } => Ok(()),
        }
    }

    /// Applies `cmd` at time `now`, returning the new state (or why not).
    /// `actor` is recorded in the audit log for flips and retirements.
    pub fn apply(&self, cmd: Command, now: UnixMillis, actor: &str) -> Result<State, StateError> {
        self.precheck(&cmd)?;
        let mut next = self.clone();
        match cmd {
            Command::Register { name, backends } => {
                let registered_at = self.releases.get(&name).map_or(now, |r| r.registered_at);
                let last_check = None; // new backends invalidate the last report
                next.releases.insert(name.clone(), ReleaseRecord { backends, registered_at, last_check });
                next.push(now, "register", actor, None, Some(name), false, String::new());
            }
            Command::Switch { to, forced, window_ms, detail, .. } => {
                let from = next.live.replace(to.clone());
                next.previous = from.clone().map(|release| Previous { release, retire_at: now + window_ms });
                next.generation += 1;
                next.push(now, "switch", actor, from, Some(to), forced, detail);
            }
            Command::Rollback { forced, window_ms, detail, .. } => {
                let prev = next.previous.take().expect("prechecked").release;
                let from = next.live.replace(prev.clone());
                next.previous = from.clone().map(|release| Previous { release, retire_at: now + window_ms });
                next.generation += 1;
                next.push(now, "rollback", actor, from, Some(prev), forced, detail);
            }
            Command::Retire { name } => {
                next.releases.remove(&name);
                if next.previous.as_ref().is_some_and(|p| p.release == name) {
                    next.previous = None;
                }
                let live = next.live.clone();
                next.push(now, "retire", actor, live, Some(name), false, String::new());
            }
            Command::RecordCheck { report } => {
                let rec = next.releases.get_mut(&report.release).expect("prechecked");
                rec.last_check = Some(report);
            }
            Command::Audit { event } => next.push_event(event),
            Command::DeployStarted { release } => {
                next.deploying = Some(release.clone());
                let live = next.live.clone();
                next.push(now, "deploy-start", actor, live, Some(release), false, String::new());
            }
            Command::DeployEnded { release, result, detail } => {
                next.deploying = None;
                let event = Event {
                    at: now,
                    action: "deploy".into(),
                    actor: actor.into(),
                    from: next.live.clone(),
                    to: Some(release),
                    result,
                    forced: false,
                    generation: next.generation,
                    detail,
                };
                next.push_event(event);
            }
            Command::Containers { release, change } => {
                next.stopped.retain(|r| r != &release);
                if change == ContainerChange::Stopped {
                    next.stopped.push(release.clone());
                }
                let live = next.live.clone();
                next.push(now, change.action(), actor, live, Some(release), false, String::new());
            }
        }
        Ok(next)
    }

    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        at: UnixMillis,
        action: &str,
        actor: &str,
        from: Option<ReleaseName>,
        to: Option<ReleaseName>,
        forced: bool,
        detail: String,
    ) {
        let generation = self.generation;
        self.push_event(Event {
            at,
            action: action.into(),
            actor: actor.into(),
            from,
            to,
            result: "ok".into(),
            forced,
            generation,
            detail,
        });
    }

    fn push_event(&mut self, e: Event) {
        self.events.push_back(e);
        while self.events.len() > MAX_EVENTS {
            self.events.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> ReleaseName {
        ReleaseName::parse(s).unwrap()
    }

    fn reg(s: State, name: &str) -> State {
        s.apply(Command::Register { name: n(name), backends: BackendMap::new() }, 1, "t").unwrap()
    }

    fn switch(to: &str, expect: Option<u64>) -> Command {
        Command::Switch { to: n(to), expect_generation: expect, forced: false, window_ms: 1000, detail: String::new() }
    }

    fn two() -> State {
        let s = reg(reg(State::empty(), "juniper"), "elm");
        s.apply(switch("juniper", None), 10, "t").unwrap()
    }

    #[test]
    fn switch_moves_live_and_keeps_previous_warm() {
        let s = two().apply(switch("elm", Some(1)), 100, "ops").unwrap();
        assert_eq!(s.live, Some(n("elm")));
        assert_eq!(s.previous, Some(Previous { release: n("juniper"), retire_at: 1100 }));
        assert_eq!(s.generation, 2);
        let e = s.events.back().unwrap();
        assert_eq!((e.action.as_str(), e.actor.as_str(), e.result.as_str()), ("switch", "ops", "ok"));
        assert_eq!((e.from.clone(), e.to.clone()), (Some(n("juniper")), Some(n("elm"))));
    }

    #[test]
    fn refusals_leave_state_alone() {
        let s = two();
        assert_eq!(s.apply(switch("oak", None), 5, "t"), Err(StateError::NotFound { name: n("oak") }));
        assert_eq!(s.apply(switch("juniper", None), 5, "t"), Err(StateError::AlreadyLive { name: n("juniper") }));
        assert_eq!(s.apply(switch("elm", Some(0)), 5, "t"), Err(StateError::StaleGeneration { expected: 0, current: 1 }));
        assert_eq!(s.apply(Command::Retire { name: n("juniper") }, 5, "t"), Err(StateError::RetireLive { name: n("juniper") }));
        let fresh = reg(State::empty(), "elm");
        let rb = Command::Rollback { expect_generation: None, forced: false, window_ms: 0, detail: String::new() };
        assert_eq!(fresh.apply(rb, 5, "t"), Err(StateError::NoPrevious));
    }

    #[test]
    fn rollback_swaps_live_and_previous() {
        let s = two().apply(switch("elm", None), 100, "t").unwrap();
        let rb = Command::Rollback { expect_generation: Some(2), forced: false, window_ms: 50, detail: String::new() };
        let r = s.apply(rb, 200, "t").unwrap();
        assert_eq!(r.live, Some(n("juniper")));
        assert_eq!(r.previous, Some(Previous { release: n("elm"), retire_at: 250 }));
        assert_eq!(r.generation, 3);
    }

    #[test]
    fn retiring_previous_clears_it() {
        let s = two().apply(switch("elm", None), 100, "t").unwrap();
        let r = s.apply(Command::Retire { name: n("juniper") }, 200, "t").unwrap();
        assert!(r.previous.is_none());
        assert!(!r.releases.contains_key(&n("juniper")));
        let rb = Command::Rollback { expect_generation: None, forced: false, window_ms: 0, detail: String::new() };
        assert_eq!(r.apply(rb, 300, "t"), Err(StateError::NoPrevious));
    }

    #[test]
    fn reregistering_keeps_registration_time_and_drops_report() {
        let s = reg(State::empty(), "elm");
        let mut b = BackendMap::new();
        b.insert(ServiceName::parse("server").unwrap(), vec![Endpoint::parse("127.0.0.1:1").unwrap()]);
        let s2 = s.apply(Command::Register { name: n("elm"), backends: b.clone() }, 99, "t").unwrap();
        assert_eq!(s2.releases[&n("elm")].registered_at, 1);
        assert_eq!(s2.releases[&n("elm")].backends, b);
    }

    #[test]
    fn audit_log_is_bounded() {
        let mut s = State::empty();
        for i in 0..(MAX_EVENTS + 10) {
            s = reg(s, if i % 2 == 0 { "elm" } else { "oak" });
        }
        assert_eq!(s.events.len(), MAX_EVENTS);
    }

    #[test]
    fn one_deploy_at_a_time_and_its_end_is_audited() {
        let s = two();
        let s = s.apply(Command::DeployStarted { release: n("oak") }, 20, "ops").unwrap();
        assert_eq!(s.deploying, Some(n("oak")));
        assert_eq!(s.apply(Command::DeployStarted { release: n("elm") }, 21, "ops"), Err(StateError::DeployRunning { name: n("oak") }));
        let end = Command::DeployEnded { release: n("oak"), result: "failed".into(), detail: "crashed".into() };
        let s = s.apply(end, 22, "ops").unwrap();
        assert_eq!(s.deploying, None);
        let e = s.events.back().unwrap();
        assert_eq!((e.action.as_str(), e.result.as_str(), e.detail.as_str()), ("deploy", "failed", "crashed"));
    }

    #[test]
    fn stopped_releases_are_kept_oldest_first() {
        let stop = |r: &str| Command::Containers { release: n(r), change: ContainerChange::Stopped };
        let s = two().apply(stop("juniper"), 1, "t").unwrap().apply(stop("elm"), 2, "t").unwrap();
        assert_eq!(s.stopped, vec![n("juniper"), n("elm")]);
        let s = s.apply(stop("juniper"), 3, "t").unwrap();
        assert_eq!(s.stopped, vec![n("elm"), n("juniper")]);
        let s = s.apply(Command::Containers { release: n("elm"), change: ContainerChange::Started }, 4, "t").unwrap();
        assert_eq!(s.stopped, vec![n("juniper")]);
        let s = s.apply(Command::Containers { release: n("juniper"), change: ContainerChange::Removed }, 5, "t").unwrap();
        assert!(s.stopped.is_empty());
        assert_eq!(s.events.back().unwrap().action, "remove-containers");
    }

    #[test]
    fn state_files_without_deploy_fields_still_load() {
        let mut json = serde_json::to_value(two()).unwrap();
        json.as_object_mut().unwrap().remove("deploying");
        json.as_object_mut().unwrap().remove("stopped");
        assert_eq!(serde_json::from_value::<State>(json).unwrap(), two());
    }

    #[test]
    fn round_trips_through_json() {
        let s = two();
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<State>(&json).unwrap(), s);
    }
}
