//! The control state and its pure state machine: `State::apply(Command)`.
//! No I/O here: handlers translate requests into commands, the controller
//! persists and publishes what `apply` returns.

use std::collections::{BTreeMap, VecDeque};

use canopy_proxy::{Endpoint, ReleaseName, ServiceName};
use serde::{Deserialize, Serialize};

use crate::report::Report;

mod error;
pub use error::StateError;

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
    /// Set when canopy took this release out of service by itself (an
    /// automatic rollback, an aborted canary): a later switch or deploy of
    /// it warns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<Failure>,
    /// In a fleet: each node's own backends (each host runs its own
    /// containers), registered on that node; `backends` for a node not here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub nodes: BTreeMap<String, BackendMap>,
}

impl ReleaseRecord {
    /// The backends `node` routes to (`None`: a single canopy).
    pub fn backends_for(&self, node: Option<&str>) -> &BackendMap {
        node.and_then(|n| self.nodes.get(n)).unwrap_or(&self.backends)
    }
}

/// Why canopy took a release out of service by itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Failure {
    /// When.
    pub at: UnixMillis,
    /// `auto-rollback` or `canary-abort`.
    pub action: String,
    /// The evidence: the rule and the numbers.
    pub detail: String,
}

/// A canary in progress: the candidate takes `steps[step]` of
/// [`canopy_proxy::CANARY_BUCKETS`] buckets of the traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryState {
    /// The candidate.
    pub release: ReleaseName,
    /// The weight of each step, in buckets (of 10,000).
    pub steps: Vec<u16>,
    /// The current step (index into `steps`).
    pub step: usize,
    /// How long each step lasts before the next (the last ends in a switch).
    pub step_ms: u64,
    /// When the current step began.
    pub step_started_at: UnixMillis,
    /// Whether the guard judges each step (else steps advance by time only).
    pub guarded: bool,
    /// In a fleet: the node that started it, which steps it (and judges it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

impl CanaryState {
    /// The candidate's weight now, in buckets.
    pub fn weight(&self) -> u16 {
        self.steps.get(self.step).copied().unwrap_or(0)
    }
}

/// Maintenance mode: every routed request is answered 503 with `message`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Maintenance {
    /// What shoppers read (on the page) and API clients get (in the JSON).
    pub message: String,
    /// When it is expected to end (shown, and counted down in
    /// `Retry-After`); it stays on until turned off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<UnixMillis>,
    /// When it was turned on.
    pub since: UnixMillis,
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
    /// A canary in progress (its weight is in every snapshot, so a restart
    /// resumes it where it was).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryState>,
    /// Maintenance mode, while on (durable: on across restarts and upgrades).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<Maintenance>,
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
        /// In a fleet: the node these backends are for (the other nodes'
        /// backends are kept).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node: Option<String>,
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
        /// The audit action when not a plain `switch` (`canary-promote`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        action: Option<String>,
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
        /// The audit action when not a plain `rollback` (`auto-rollback`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        action: Option<String>,
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
    /// A canary of `canary.release` begins at its first step.
    CanaryStart {
        /// The canary (its step is 0).
        canary: CanaryState,
    },
    /// The running canary moves to `step`.
    CanaryStep {
        /// The new step.
        step: usize,
    },
    /// The running canary ends: `promoted` (committed with the switch to
    /// its candidate) or `aborted` (everyone back on the live release).
    CanaryEnd {
        /// `promoted` or `aborted`.
        result: String,
        /// Why (for an abort: the rule and the numbers, or who asked).
        detail: String,
    },
    /// canopy took `release` out of service by itself.
    MarkFailed {
        /// The release.
        release: ReleaseName,
        /// Why.
        failure: Failure,
    },
    /// Maintenance mode on (`Some`) or off (`None`).
    Maintenance {
        /// The maintenance, its message and expected end.
        on: Option<Maintenance>,
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
            Command::Switch { to, expect_generation, forced, window_ms, action, .. } => {
                Command::Switch { to, expect_generation, forced, window_ms, detail, action }
            }
            Command::Rollback { expect_generation, forced, window_ms, action, .. } => {
                Command::Rollback { expect_generation, forced, window_ms, detail, action }
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
            canary: None,
            maintenance: None,
        }
    }

    fn no_canary_but(&self, allowed: Option<&ReleaseName>) -> Result<(), StateError> {
        match &self.canary {
            Some(c) if Some(&c.release) != allowed => Err(StateError::CanaryRunning { name: c.release.clone() }),
            _ => Ok(()),
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
                // a canary ends in a switch to its candidate (with CanaryEnd)
                self.no_canary_but(Some(to))?;
                if self.live.as_ref() == Some(to) {
                    return Err(StateError::AlreadyLive { name: to.clone() });
                }
                Ok(())
            }
            Command::Rollback { expect_generation, .. } => {
                self.check_generation(*expect_generation)?;
                self.no_canary_but(None)?;
                match &self.previous {
                    Some(p) if self.releases.contains_key(&p.release) => Ok(()),
                    _ => Err(StateError::NoPrevious),
                }
            }
            Command::Retire { name } => {
                self.require(name)?;
                if self.canary.as_ref().is_some_and(|c| &c.release == name) {
                    return Err(StateError::CanaryRunning { name: name.clone() });
                }
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
            Command::DeployEnded { .. } | Command::Containers { .. } | Command::Maintenance { .. } => Ok(()),
            Command::CanaryStart { canary } => {
                self.no_canary_but(None)?;
                self.require(&canary.release)?;
                match &self.live {
                    None => Err(StateError::NoLive),
                    Some(live) if live == &canary.release => Err(StateError::AlreadyLive { name: live.clone() }),
                    Some(_) => Ok(()),
                }
            }
            Command::CanaryStep { step } => match &self.canary {
                Some(c) if *step < c.steps.len() => Ok(()),
                Some(_) | None => Err(StateError::NoCanary),
            },
            Command::CanaryEnd { .. } => self.canary.as_ref().map(drop).ok_or(StateError::NoCanary),
            Command::MarkFailed { release, .. } => self.require(release),
        }
    }

    /// Applies `cmd` at time `now`, returning the new state (or why not).
    /// `actor` is recorded in the audit log for flips and retirements.
    pub fn apply(&self, cmd: Command, now: UnixMillis, actor: &str) -> Result<State, StateError> {
        self.precheck(&cmd)?;
        let mut next = self.clone();
        match cmd {
            Command::Register { name, backends, node } => {
                let old = self.releases.get(&name);
                let registered_at = old.map_or(now, |r| r.registered_at);
                let last_check = None; // new backends invalidate the last report
                                       // a release canopy took out of service stays marked until it is retired
                let failed = old.and_then(|r| r.failed.clone());
                let mut nodes = old.map(|r| r.nodes.clone()).unwrap_or_default();
                let backends = match node {
                    Some(node) => {
                        nodes.insert(node, backends);
                        old.map(|r| r.backends.clone()).unwrap_or_default()
                    }
                    None => backends,
                };
                next.releases.insert(name.clone(), ReleaseRecord { backends, registered_at, last_check, failed, nodes });
                next.push(now, "register", actor, None, Some(name), false, String::new());
            }
            Command::Switch { to, forced, window_ms, detail, action, .. } => {
                // a canary's candidate going live ends the canary (a CanaryEnd
                // committed before the switch records how)
                if next.canary.as_ref().is_some_and(|c| c.release == to) {
                    next.canary = None;
                }
                let from = next.live.replace(to.clone());
                next.previous = from.clone().map(|release| Previous { release, retire_at: now + window_ms });
                next.generation += 1;
                next.push(now, action.as_deref().unwrap_or("switch"), actor, from, Some(to), forced, detail);
            }
            Command::Rollback { forced, window_ms, detail, action, .. } => {
                let prev = next.previous.take().expect("prechecked").release;
                let from = next.live.replace(prev.clone());
                next.previous = from.clone().map(|release| Previous { release, retire_at: now + window_ms });
                next.generation += 1;
                next.push(now, action.as_deref().unwrap_or("rollback"), actor, from, Some(prev), forced, detail);
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
            Command::CanaryStart { canary } => {
                let live = next.live.clone();
                let detail = format!("steps {}", percents(&canary.steps));
                next.push(now, "canary-start", actor, live, Some(canary.release.clone()), false, detail);
                next.canary = Some(canary);
            }
            Command::CanaryStep { step } => {
                let c = next.canary.as_mut().expect("prechecked");
                c.step = step;
                c.step_started_at = now;
                let (release, detail) = (c.release.clone(), format!("{} of the traffic", percents(&[c.weight()])));
                let live = next.live.clone();
                next.push(now, "canary-step", actor, live, Some(release), false, detail);
            }
            Command::CanaryEnd { result, detail } => {
                let c = next.canary.take().expect("prechecked");
                let live = next.live.clone();
                let action = if result == "promoted" { "canary-promote" } else { "canary-abort" };
                next.push(now, action, actor, live, Some(c.release), false, detail);
            }
            Command::MarkFailed { release, failure } => {
                next.releases.get_mut(&release).expect("prechecked").failed = Some(failure);
            }
            Command::Maintenance { on } => {
                let (action, detail) = match &on {
                    Some(m) => ("maintenance-on", m.message.clone()),
                    None => ("maintenance-off", String::new()),
                };
                let live = next.live.clone();
                next.push(now, action, actor, live, None, false, detail);
                next.maintenance = on;
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
    pub(crate) fn push(
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

/// Weights in buckets (of 10,000) as percentages: `5%, 25%, 50%`.
pub fn percents(steps: &[u16]) -> String {
    steps.iter().map(|w| format!("{}%", f64::from(*w) / 100.0)).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests;
