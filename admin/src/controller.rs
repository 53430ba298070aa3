//! The controller: the control plane's single owner of state. Turns
//! commands into validated, durable, published state: every change goes
//! through [`Controller::commit`], which applies the commands, makes them
//! durable and publishes the release table derived from the new state.
//!
//! Its `impl` is split by concern: `flip.rs` (switch, rollback and the one
//! flip routine every flip goes through), `releases.rs` (register, check,
//! retire), `reload.rs` (config reload), `upgrade.rs` (hand-over between
//! processes), `loops.rs` (validation window, warm watch, checkpoints),
//! `watch.rs` (the live release's health watch and its alert),
//! `containers.rs` (`overlap = false` containers, container views),
//! `deploy.rs` (a deploy and its undo), `discovery.rs` (following the
//! engine, recovery after a crash) and `tls.rs` (certificates).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use canopy_proxy::prometheus::core::Collector;
use canopy_proxy::{Release, ReleaseName, ReleaseTable, Snapshot, Topology};
use tokio::sync::{Mutex, MutexGuard, Notify};

use crate::clock::now_ms;
use crate::cluster::Fleet;
use crate::error::ControlError;
use crate::guard::GuardBook;
use crate::metrics::ControlMetrics;
use crate::persist::{Entry, StateStore, Store};
use crate::report::Report;
use crate::settings::{ControlSettings, DeploySettings, Seed};
use crate::sources::{ConfigSource, TlsParts, TlsState};
use crate::stack::Docker;
use crate::state::{BackendMap, Command, Event, State};
use crate::validate::{Mode, Validator};
use crate::view::StatusView;

mod canary;
mod containers;
mod deploy;
mod discovery;
mod fleet;
mod fleet_deploy;
mod flip;
mod front;
pub use front::PAUSE_MAX_HELD;
mod guard;
mod loops;
mod releases;
mod reload;
mod tls;
mod upgrade;
mod watch;

/// The checks and control settings in force; a config reload replaces both.
pub struct Runtime {
    /// The validation checks of every service.
    pub validator: Validator,
    /// Control-plane settings.
    pub settings: ControlSettings,
}

/// Everything a controller is made of, complete before it starts: nothing
/// is added to a running controller.
pub struct Parts {
    /// The release table the proxy reads (its topology and tunables are the config's).
    pub table: Arc<ReleaseTable>,
    /// The validation checks of every service.
    pub validator: Validator,
    /// Control-plane settings.
    pub settings: ControlSettings,
    /// How to seed the state on a first start.
    pub seed: Seed,
    /// `[docker]`: enables `canopy deploy`, discovery and `overlap = false`.
    pub deploy: Option<DeploySettings>,
    /// TLS listeners: enables certificate reloads and the TLS view.
    pub tls: Option<TlsParts>,
    /// Where a reload reads the config from (none: reloads are refused).
    pub config: Option<Box<dyn ConfigSource>>,
    /// More metrics for `GET /metrics` (the front door's, ACME's).
    pub collectors: Vec<Box<dyn Collector>>,
    /// Started by `serve --upgrade`: changes wait (503) until
    /// [`Controller::release_hold`] says the predecessor has exited.
    pub hold_changes: bool,
    /// `[cluster]`: the state is the fleet's, in etcd.
    pub fleet: Option<Arc<Fleet>>,
}

/// The background watch's latest quick check of the warm previous release.
#[derive(Debug, Clone)]
pub(crate) struct Watched {
    /// When the check started.
    pub started: Instant,
    pub report: Report,
}

/// `Report::mode` of the background watch's reports of the warm release.
pub const WATCH_MODE: &str = "watch";

/// The control plane's single owner of state.
pub struct Controller {
    table: Arc<ReleaseTable>,
    /// Checks and settings, replaced whole by a config reload (the topology
    /// is the release table's).
    runtime: ArcSwap<Runtime>,
    /// Where a reload reads the config from.
    source: Option<Box<dyn ConfigSource>>,
    state: Mutex<State>,
    /// Where commits are made durable; locked only while `state` is held.
    store: std::sync::Mutex<Box<dyn StateStore>>,
    /// One flip (switch, rollback, deploy, reload) at a time.
    flip: Mutex<()>,
    /// Set while `flip` is held ([`FlipGuard`]): what `/status` reads, so
    /// that reading the status never takes the lock a flip needs.
    flipping: AtomicBool,
    /// Held while a deploy or a retirement starts or stops containers, so
    /// a redeploy never interleaves with the retirement of the same release.
    containers: Mutex<()>,
    /// Wakes the validation-window timer after every change.
    wake: Notify,
    /// Wakes the warm watch after every flip.
    warm_wake: Notify,
    warm: std::sync::Mutex<Option<Watched>>,
    /// Wakes the live watch when the live release changes.
    live_wake: Notify,
    /// The live watch's latest report.
    live_watch: std::sync::Mutex<Option<watch::LiveWatched>>,
    metrics: ControlMetrics,
    /// Set by [`Controller::hand_over`]: this process no longer writes the state.
    handed_over: AtomicBool,
    /// Set while the predecessor of `serve --upgrade` still serves.
    held: AtomicBool,
    /// With `[docker]`.
    docker: Option<Docker>,
    /// With TLS listeners.
    tls: Option<TlsState>,
    /// The guard: counter readings, the watch over a new release, verdicts.
    guard: std::sync::Mutex<GuardBook>,
    /// Restarts the guard's interval at a flip, so its judgements fall a
    /// whole interval apart from the first answer on.
    guard_tick: Notify,
    /// In a fleet: etcd holds the state; the local state file is a copy.
    fleet: Option<Arc<Fleet>>,
}

/// Proof that the caller holds the one-flip-at-a-time lock; `/status` says
/// a flip runs for as long as it lives.
pub(crate) struct FlipGuard<'a> {
    _lock: MutexGuard<'a, ()>,
    flipping: &'a AtomicBool,
}

impl Drop for FlipGuard<'_> {
    fn drop(&mut self) {
        self.flipping.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Resolves `name`'s backends (explicit ones, else the address template) for `topology`.
async fn resolve(
    topology: &Topology,
    table: &ReleaseTable,
    name: &ReleaseName,
    backends: &BackendMap,
) -> Result<Arc<Release>, ControlError> {
    Release::resolve(topology, name.clone(), backends.clone(), table.stats())
        .await
        .map(Arc::new)
        .map_err(|e| ControlError::Invalid(e.to_string()))
}

impl Controller {
    /// Loads the durable state (or seeds a first state and writes it),
    /// resolves every release and publishes the first snapshot. A corrupt
    /// state file is an error naming it: canopy must not start without its
    /// live release.
    pub async fn start(parts: Parts) -> Result<Self, ControlError> {
        let Parts { table, validator, settings, seed, deploy, tls, config, collectors, hold_changes, fleet } = parts;
        let topology = table.load().topology().clone();
        let (mut store, loaded) = Store::open(&settings.state_file)?;
        let state = match &fleet {
            Some(fleet) => fleet::initial_state(fleet, loaded, seed, &mut store).await?,
            None => match loaded {
                Some(s) => s,
                None => {
                    let s = seed_state(seed)?;
                    store.checkpoint(&s)?;
                    s
                }
            },
        };
        let node = fleet.as_ref().map(|f| f.node().to_string());
        let resolving = state.releases.iter().map(|(n, r)| resolve(&topology, &table, n, r.backends_for(node.as_deref())));
        let releases = futures_util::future::try_join_all(resolving).await?;
        if let Some(live) = releases.iter().find(|r| state.live.as_ref() == Some(r.name())) {
            watch::warn_unresolved(&topology, live);
        }
        table.update(|cur| snapshot_of(&state, topology.clone(), releases, cur.tunables().clone()));
        let metrics = ControlMetrics::new(table.clone());
        for c in collectors {
            metrics.register(c);
        }
        let docker = deploy.map(|settings| Docker::new(settings, &metrics));
        let tls = tls.map(TlsState::new);
        Ok(Self {
            table,
            runtime: ArcSwap::from_pointee(Runtime { validator, settings }),
            source: config,
            state: Mutex::new(state),
            store: std::sync::Mutex::new(Box::new(store)),
            flip: Mutex::new(()),
            flipping: AtomicBool::new(false),
            containers: Mutex::new(()),
            wake: Notify::new(),
            warm_wake: Notify::new(),
            warm: std::sync::Mutex::new(None),
            live_wake: Notify::new(),
            live_watch: std::sync::Mutex::new(None),
            metrics,
            handed_over: AtomicBool::new(false),
            held: AtomicBool::new(hold_changes),
            docker,
            tls,
            guard: std::sync::Mutex::new(GuardBook::default()),
            guard_tick: Notify::new(),
            fleet,
        })
    }

    /// This node's name in a fleet (`None`: a single canopy).
    fn node(&self) -> Option<&str> {
        self.fleet.as_deref().map(Fleet::node)
    }

    /// The services, routes and address template in force (the release table's).
    fn topology(&self) -> Arc<Topology> {
        self.table.load().topology().clone()
    }

    /// The checks and settings in force.
    fn rt(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Applies `commands` (in order, now, by `actor`), makes the result
    /// durable, then publishes the release table derived from the new state
    /// (its releases, live release and generation) and adopts it. Every
    /// release a `Register` command names must be in `fresh`, resolved with
    /// exactly the registered backends; other releases keep their resolved
    /// form. Returns how long the durable write took. If a command is
    /// refused or the write fails, nothing is published and the old state
    /// stays.
    async fn commit(
        &self,
        st: &mut MutexGuard<'_, State>,
        commands: Vec<Command>,
        actor: &str,
        fresh: &[Arc<Release>],
    ) -> Result<Duration, ControlError> {
        // read under the state lock, which hand_over takes before setting it
        self.writable()?;
        for command in &commands {
            if let Command::Register { name, backends, .. } = command {
                if !fresh.iter().any(|r| r.name() == name && r.explicit() == backends) {
                    return Err(ControlError::Invalid(format!(
                        "release `{name}` was not resolved with the backends it is registered with"
                    )));
                }
            }
        }
        let persist_started = Instant::now();
        if let Some(fleet) = &self.fleet {
            self.commit_to_fleet(fleet, st, commands, actor, fresh).await?;
            return Ok(persist_started.elapsed());
        }
        let entry = Entry { seq: st.seq + 1, at: now_ms(), actor: actor.into(), commands };
        let next = entry.apply_to(st)?;
        self.store.lock().expect("store lock").commit(&next, &entry)?;
        let persisted = persist_started.elapsed();
        self.publish(&next, fresh);
        **st = next;
        Ok(persisted)
    }

    /// Publishes the table for `st`: the current releases it still holds (in
    /// their order, replaced by their namesake in `fresh`), then the new ones
    /// from `fresh`.
    fn publish(&self, st: &State, fresh: &[Arc<Release>]) {
        let mut live_changed = false;
        self.table.update(|cur| {
            live_changed = cur.live().map(|r| r.name()) != st.live.as_ref();
            let mut releases: Vec<Arc<Release>> = cur
                .releases()
                .iter()
                .filter(|r| st.releases.contains_key(r.name()))
                .map(|r| fresh.iter().find(|f| f.name() == r.name()).unwrap_or(r).clone())
                .collect();
            releases.extend(fresh.iter().filter(|f| st.releases.contains_key(f.name()) && cur.find(f.name()).is_none()).cloned());
            // a pause lasts until its resume, whatever is committed meanwhile
            snapshot_of(st, cur.topology().clone(), releases, cur.tunables().clone()).with_pause(cur.pause().cloned())
        });
        if live_changed {
            self.live_wake.notify_one();
        }
    }

    /// Appends an audit event (a refusal, a failure, a hook's result); a
    /// failure to record it is logged, not returned: the outcome it records
    /// stands either way.
    async fn audit(&self, action: &str, actor: &str, subject: Option<ReleaseName>, result: &str, detail: String) {
        let mut st = self.state.lock().await;
        let event = event(&st, action, actor, subject, result, detail);
        if let Err(e) = self.commit(&mut st, vec![Command::Audit { event }], actor, &[]).await {
            log::error!("recording {action} ({result}) in the audit log: {e}");
        }
    }

    /// The registered release `name` as the proxy routes to it.
    fn release(&self, name: &ReleaseName) -> Result<Arc<Release>, ControlError> {
        self.table.load().find(name).cloned().ok_or_else(|| crate::state::StateError::NotFound { name: name.clone() }.into())
    }

    /// Runs the checks of `release` in `mode`, counts them, and says which
    /// container behind a failed check is stopped, if one is.
    async fn run_validation(&self, release: &Release, mode: Mode) -> Report {
        let rt = self.rt();
        let mut report = rt.validator.validate(&self.topology(), release, mode, now_ms()).await;
        self.metrics.record_checks(&report);
        self.explain_stopped(&mut report).await;
        report
    }

    /// Gives the calling (admin) thread the configured priority, once.
    pub fn prioritise_current_thread(&self) {
        let _ = crate::priority::prioritise_current_thread(self.rt().settings.admin_priority);
    }

    /// The status document: live, previous (with its latest watch report),
    /// generation, every release with its containers; with `[docker]` what
    /// discovery knows and the alerts; with TLS the certificates.
    pub async fn status(&self) -> StatusView {
        let st = self.state.lock().await.clone();
        let snap = self.table.load();
        let watched = self.watched(st.previous.as_ref().map(|p| &p.release));
        let switching = self.flipping.load(std::sync::atomic::Ordering::SeqCst);
        let mut view = StatusView::build(&st, &snap, switching, watched);
        view.live_health = self.live_health(st.live.as_ref());
        let mut alerts: Vec<String> = view.live_health.as_ref().and_then(watch::live_alert).into_iter().collect();
        if let Some(discovered) = self.discovered() {
            for release in &mut view.releases {
                release.containers = self.release_containers(&st, &release.name, &discovered);
            }
            alerts.extend(self.container_alerts(&st, &discovered));
            view.docker = Some(discovered);
        }
        if !alerts.is_empty() || view.docker.is_some() {
            view.alerts = Some(alerts);
        }
        view.tls = self.tls_view();
        view.guard = Some(self.guard_view());
        view.fleet = self.fleet_view().await;
        if let (Some(fleet), Some(f)) = (&self.fleet, &view.fleet) {
            let fleet_alerts = fleet.alerts(f);
            if !fleet_alerts.is_empty() {
                view.alerts.get_or_insert_with(Vec::new).extend(fleet_alerts);
            }
        }
        view
    }

    /// The audit log, newest last.
    pub async fn events(&self) -> Vec<Event> {
        self.state.lock().await.events.iter().cloned().collect()
    }

    /// The live release and the generation (for `GET /healthz`).
    pub async fn live(&self) -> (Option<ReleaseName>, u64) {
        let st = self.state.lock().await;
        (st.live.clone(), st.generation)
    }

    /// Prometheus text for control-plane, data-plane and process metrics.
    pub async fn metrics_text(&self) -> String {
        let (live, previous) = {
            let st = self.state.lock().await;
            (st.live.clone(), st.previous.as_ref().map(|p| p.release.clone()))
        };
        let watched = self.watched(previous.as_ref()).map(|r| (r.release, r.passed));
        let canary = self.state.lock().await.canary.as_ref().map(|c| (c.release.clone(), c.weight()));
        let live_health = self.live_health(live.as_ref()).map(|h| h.healthy);
        self.metrics.encode(live.as_ref(), live_health, watched, canary.as_ref().map(|(r, w)| (r, *w)))
    }
}

/// The state of a first start: the seed releases registered, the initial
/// one made live.
fn seed_state(seed: Seed) -> Result<State, ControlError> {
    let mut s = State::empty();
    let now = now_ms();
    let mut seeds = seed.releases;
    if let Some(initial) = &seed.initial {
        seeds.entry(initial.clone()).or_default();
    }
    for (name, backends) in seeds {
        s = s.apply(Command::Register { name, backends, node: None }, now, "canopy (config)")?;
    }
    if let Some(initial) = seed.initial {
        // not `forced`: nothing was live to protect, and the live watch checks it from the start
        let detail = "initial release from config (first start)".to_string();
        let cmd = Command::Switch { to: initial, expect_generation: None, forced: false, window_ms: 0, detail, action: None };
        s = s.apply(cmd, now, "canopy (initial)")?;
    }
    Ok(s)
}

/// The snapshot of `st` over `releases`: live, generation and the canary.
fn snapshot_of(st: &State, topology: Arc<Topology>, releases: Vec<Arc<Release>>, tunables: Arc<canopy_proxy::Tunables>) -> Snapshot {
    let snapshot = Snapshot::new(st.generation, topology, releases, st.live.as_ref(), tunables)
        .with_maintenance(st.maintenance.as_ref().map(front::maintenance_answer));
    match &st.canary {
        Some(c) => snapshot.with_canary(&c.release, c.weight()),
        None => snapshot,
    }
}

/// An audit event about `subject`, at the state's live release and generation.
fn event(st: &State, action: &str, actor: &str, subject: Option<ReleaseName>, result: &str, detail: String) -> Event {
    Event {
        at: now_ms(),
        action: action.into(),
        actor: actor.into(),
        from: st.live.clone(),
        to: subject,
        result: result.into(),
        forced: false,
        generation: st.generation,
        detail,
    }
}
