//! The controller: turns commands into validated, persisted, published
//! state. Switch = validate -> persist -> flip -> reply; on any failure
//! nothing changes. Also retires releases (drain, hooks) and runs the
//! validation-window timer.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use canopy_proxy::{Release, ReleaseName, ReleaseTable, Snapshot, Topology, Tunables};
use serde::Serialize;
use tokio::sync::{Mutex, MutexGuard, Notify};

use crate::checks::{run_program, substitute, Attempt};
use crate::error::ApiError;
use crate::metrics::ControlMetrics;
use crate::persist::{Entry, Store};
use crate::report::Report;
use crate::state::{BackendMap, Command, Event, Previous, State};
use crate::validate::{Mode, Validator};
use crate::view::{release_view, ReleaseView, StatusView};

mod deploy;
mod tls;
pub use deploy::{ContainerView, DeployFailure, DeployReply, DeployRequest, DeploySettings, DeployStep, Discovered, ServiceContainer};
pub use tls::{CertSource, CertView, TlsView};

/// Control-plane settings, from `[admin]` and `[releases]` in proxy.toml.
#[derive(Debug, Clone)]
pub struct ControlSettings {
    /// Where the durable state lives.
    pub state_file: PathBuf,
    /// How long the previous release stays warm after a flip.
    pub validation_window: Duration,
    /// How long a retirement waits for in-flight requests before running hooks anyway.
    pub drain_timeout: Duration,
    /// Commands run (argv, `{release}` substituted) after a release is drained.
    pub retire_hooks: Vec<Vec<String>>,
    /// Limit for each retire hook.
    pub hook_timeout: Duration,
    /// Whether `x-canopy-release` request headers select registered releases.
    pub preview: bool,
    /// How often the warm previous release is quick-checked in the background,
    /// so that a rollback can trust a fresh result instead of checking inline.
    pub warm_check_interval: Duration,
    /// How the admin thread asks to be scheduled; see [`crate::prioritise_current_thread`].
    pub admin_priority: crate::AdminPriority,
}

/// How the state is seeded when no state file exists.
#[derive(Debug, Clone, Default)]
pub struct Seed {
    /// Release made live on first start.
    pub initial: Option<ReleaseName>,
    /// Releases registered on first start, with explicit backends.
    pub releases: BTreeMap<ReleaseName, BackendMap>,
}

/// A `POST /switch` request.
#[derive(Debug, Clone)]
pub struct SwitchRequest {
    /// Target release.
    pub release: ReleaseName,
    /// Refuse unless the generation is still this.
    pub expect_generation: Option<u64>,
    /// Skip validation.
    pub force: bool,
}

/// The checks and control settings in force; a config reload replaces both.
pub struct Runtime {
    /// The validation checks of every service.
    pub validator: Validator,
    /// Control-plane settings.
    pub settings: ControlSettings,
}

/// A config file read again for a reload: what canopy applies in place.
pub struct Reload {
    /// Services, routes and the address template.
    pub topology: Topology,
    /// The checks of the new topology's services.
    pub validator: Validator,
    /// Validation window, drain and hook settings, ...
    pub settings: ControlSettings,
    /// Timeouts, retries, preview, access log.
    pub tunables: Tunables,
    /// What changed, in words, for the reply and the audit log.
    pub changes: Vec<String>,
    /// Run once the reload is in force (e.g. the new admin token).
    pub on_applied: Box<dyn FnOnce() + Send>,
}

/// Reads the config file again for `POST /reload` and SIGHUP (implemented by
/// the server, which owns the file format).
pub trait ConfigSource: Send + Sync {
    /// The new config's reloadable parts, or why it is refused: a parse or
    /// validation error with file, line and column, or a change that needs a
    /// new process (`canopy serve --upgrade`).
    fn read(&self) -> Result<Reload, String>;
}

/// The reply to a successful reload.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadReply {
    /// Whether anything changed.
    pub changed: bool,
    /// What changed.
    pub changes: Vec<String>,
    /// The generation, which a reload leaves as it was (it is no flip).
    pub generation: u64,
}

/// The reply to a successful switch or rollback.
#[derive(Debug, Clone, Serialize)]
pub struct FlipReply {
    /// Live release now.
    pub live: ReleaseName,
    /// Release live before (now warm until `retire_at`).
    pub previous: Option<Previous>,
    /// Generation now.
    pub generation: u64,
    /// Validation was skipped on request.
    pub forced: bool,
    /// The validation report (absent when forced). For a rollback this may be
    /// the background watch's report of the warm release (`mode: "watch"`).
    pub report: Option<Report>,
    /// Validation + persist + flip, in milliseconds.
    pub duration_ms: f64,
    /// Of which checks run by this call (0 when forced or when a watched
    /// report was fresh enough).
    pub validation_ms: f64,
    /// Of which the durable state write.
    pub persist_ms: f64,
}

/// What a retire hook did.
#[derive(Debug, Clone, Serialize)]
pub struct HookResult {
    /// The command run.
    pub argv: Vec<String>,
    /// Exit 0 within the timeout.
    pub passed: bool,
    /// Exit status or why it failed.
    pub reason: String,
    /// Captured output (truncated).
    pub output: Option<String>,
}

/// The reply to a retirement.
#[derive(Debug, Clone, Serialize)]
pub struct RetireReply {
    /// The retired release.
    pub release: ReleaseName,
    /// All in-flight requests finished before the hooks ran.
    pub drained: bool,
    /// Requests still in flight when the drain timeout ended.
    pub inflight_left: i64,
    /// Hook results, in order.
    pub hooks: Vec<HookResult>,
}

/// The control plane's single owner of state.
pub struct Controller {
    table: Arc<ReleaseTable>,
    /// Checks and settings, replaced whole by a config reload (the topology
    /// is the release table's).
    runtime: ArcSwap<Runtime>,
    /// Where a reload reads the config from; set by the server at start.
    source: std::sync::OnceLock<Box<dyn ConfigSource>>,
    state: Mutex<State>,
    /// Where commits are made durable; locked only while `state` is held.
    store: std::sync::Mutex<Store>,
    flip: Mutex<()>,
    wake: Notify,
    warm_wake: Notify,
    warm: std::sync::Mutex<Option<Watched>>,
    metrics: ControlMetrics,
    /// Set by [`Controller::hand_over`]: this process no longer writes the state.
    handed_over: AtomicBool,
    /// Set by [`Controller::hold_changes`]: the predecessor still serves.
    held: AtomicBool,
    /// Set by [`Controller::enable_deploy`] when proxy.toml has `[docker]`.
    docker: std::sync::OnceLock<deploy::Docker>,
    /// Set by [`Controller::enable_tls`] when proxy.toml has TLS listeners.
    tls: std::sync::OnceLock<tls::Tls>,
}

/// When a flip call started and how much of it went to checks.
#[derive(Debug, Clone, Copy)]
struct Timing {
    started: Instant,
    validation: Duration,
}

/// The background watch's latest quick check of the warm previous release.
#[derive(Debug, Clone)]
struct Watched {
    /// When the check started.
    started: Instant,
    report: Report,
}

/// `Report::mode` of the background watch's reports of the warm release.
pub const WATCH_MODE: &str = "watch";

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

async fn resolve(topology: &Topology, table: &ReleaseTable, name: &ReleaseName, backends: &BackendMap) -> Result<Arc<Release>, ApiError> {
    Release::resolve(topology, name.clone(), backends.clone(), table.stats())
        .await
        .map(Arc::new)
        .map_err(|e| ApiError::BadRequest(e.to_string()))
}

impl Controller {
    /// Loads the state file (or seeds a first state and writes it), resolves
    /// every release and publishes the first snapshot. A corrupt state file
    /// is an error naming it: canopy must not start without its live release.
    pub async fn start(table: Arc<ReleaseTable>, validator: Validator, settings: ControlSettings, seed: Seed) -> Result<Self, ApiError> {
        let topology = table.load().topology().clone();
        let tunables = table.load().tunables().clone();
        let (mut store, loaded) = Store::open(&settings.state_file)?;
        let state = match loaded {
            Some(s) => s,
            None => {
                let mut s = State::empty();
                let now = now_ms();
                let mut seeds = seed.releases.clone();
                if let Some(initial) = &seed.initial {
                    seeds.entry(initial.clone()).or_default();
                }
                for (name, backends) in seeds {
                    s = s.apply(Command::Register { name, backends }, now, "canopy (config)")?;
                }
                if let Some(initial) = seed.initial {
                    let detail = "initial release from config".to_string();
                    let cmd = Command::Switch { to: initial, expect_generation: None, forced: true, window_ms: 0, detail };
                    s = s.apply(cmd, now, "canopy (initial)")?;
                }
                store.checkpoint(&s)?;
                s
            }
        };
        let resolving = state.releases.iter().map(|(n, r)| resolve(&topology, &table, n, &r.backends));
        let releases = futures_util::future::try_join_all(resolving).await?;
        {
            let _w = table.write_lock();
            table.store(Snapshot::new(state.generation, topology.clone(), releases, state.live.as_ref(), tunables));
        }
        let metrics = ControlMetrics::new(table.clone());
        Ok(Self {
            table,
            runtime: ArcSwap::from_pointee(Runtime { validator, settings }),
            source: std::sync::OnceLock::new(),
            state: Mutex::new(state),
            store: std::sync::Mutex::new(store),
            flip: Mutex::new(()),
            wake: Notify::new(),
            warm_wake: Notify::new(),
            warm: std::sync::Mutex::new(None),
            metrics,
            handed_over: AtomicBool::new(false),
            held: AtomicBool::new(false),
            docker: std::sync::OnceLock::new(),
            tls: std::sync::OnceLock::new(),
        })
    }

    /// The services, routes and address template in force (the release table's).
    fn topology(&self) -> Arc<Topology> {
        self.table.load().topology().clone()
    }

    /// The checks and settings in force.
    fn rt(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Where [`Self::reload`] reads the config; set once at start.
    pub fn set_config_source(&self, source: Box<dyn ConfigSource>) {
        let _ = self.source.set(source);
    }

    /// Reads the config file again and applies it in place: services, routes,
    /// address template, checks, timeouts, validation window, retire hooks,
    /// access log, token. Every registered release is re-resolved for the new
    /// topology and the release table replaced whole, so requests in flight
    /// finish on the old routes and the next one takes the new; live,
    /// previous and generation stay. A bad file or a change that needs a new
    /// socket is refused (422) and nothing changes. Waits for a running
    /// switch or rollback; one reload at a time.
    pub async fn reload(&self, actor: &str) -> Result<ReloadReply, ApiError> {
        let Some(source) = self.source.get() else {
            return Err(ApiError::Config("this canopy was started without a config file to reload".into()));
        };
        let _flip = self.flip.lock().await;
        self.writable()?;
        let result = self.apply_reload(source.as_ref(), actor).await;
        self.metrics.reloaded(if result.is_ok() { "ok" } else { "refused" });
        result
    }

    async fn apply_reload(&self, source: &dyn ConfigSource, actor: &str) -> Result<ReloadReply, ApiError> {
        let new = source.read().map_err(|e| {
            log::error!("config reload refused: {e}");
            ApiError::Config(format!("config reload refused, nothing changed: {e}"))
        })?;
        let topology = Arc::new(new.topology);
        let mut st = self.state.lock().await;
        for (name, record) in &st.releases {
            if let Some(svc) = record.backends.keys().find(|svc| topology.service_index(svc).is_none()) {
                return Err(ApiError::Config(format!(
                    "config reload refused, nothing changed: release `{name}` has backends for service `{svc}`, which the new config no longer has; retire it first"
                )));
            }
        }
        // counters follow the new services from here (kept for the ones that stay)
        let names = topology.services().iter().map(|s| s.name.clone()).collect();
        self.table.stats().set_services(names);
        let resolving = st.releases.iter().map(|(n, r)| resolve(&topology, &self.table, n, &r.backends));
        let releases = match futures_util::future::try_join_all(resolving).await {
            Ok(r) => r,
            Err(e) => {
                let cur = self.topology().services().iter().map(|s| s.name.clone()).collect();
                self.table.stats().set_services(cur);
                return Err(ApiError::Config(format!("config reload refused, nothing changed: {e}")));
            }
        };
        let detail = if new.changes.is_empty() { "no change".to_string() } else { new.changes.join("; ") };
        let event = self.refusal_event(&st, "reload", actor, None, "ok", detail);
        self.commit(&mut st, vec![Command::Audit { event }], actor, None, None).inspect_err(|_| {
            let cur = self.topology().services().iter().map(|s| s.name.clone()).collect();
            self.table.stats().set_services(cur);
        })?;
        {
            let _w = self.table.write_lock();
            let snapshot = Snapshot::new(st.generation, topology, releases, st.live.as_ref(), Arc::new(new.tunables));
            self.table.store(snapshot);
        }
        self.runtime.store(Arc::new(Runtime { validator: new.validator, settings: new.settings }));
        (new.on_applied)();
        self.wake.notify_one();
        self.warm_wake.notify_one();
        log::info!("config reloaded by {actor}: {}", if new.changes.is_empty() { "no change".into() } else { new.changes.join("; ") });
        Ok(ReloadReply { changed: !new.changes.is_empty(), changes: new.changes, generation: st.generation })
    }

    /// Stops this process from changing the state, for a graceful upgrade:
    /// waits for a running switch or rollback and any commit in progress, then
    /// refuses every later change with [`ApiError::Upgrading`] (503) and stops
    /// writing checkpoints. Called on SIGQUIT before the listening sockets are
    /// handed to the new process, which loads the state after it has them, so
    /// exactly one process owns the state at any time and every acknowledged
    /// change is in what the new one loads.
    pub async fn hand_over(&self) {
        let _flip = self.flip.lock().await;
        let _state = self.state.lock().await;
        self.handed_over.store(true, Ordering::SeqCst);
        log::info!("state handed over: this process takes no more changes");
    }

    /// Takes changes again after a hand-over the new process never completed.
    pub fn resume(&self) {
        self.handed_over.store(false, Ordering::SeqCst);
        log::info!("hand-over abandoned: this process takes changes again");
    }

    /// Whether [`Self::hand_over`] has run (and [`Self::resume`] not since).
    pub fn is_handed_over(&self) -> bool {
        self.handed_over.load(Ordering::SeqCst)
    }

    /// For the new process of an upgrade: refuses changes (503) until
    /// [`Self::release_hold`], called when the predecessor has exited, so no
    /// request is routed by its old release table after a flip made here.
    pub fn hold_changes(&self) {
        self.held.store(true, Ordering::SeqCst);
    }

    /// Takes changes from now on (see [`Self::hold_changes`]).
    pub fn release_hold(&self) {
        self.held.store(false, Ordering::SeqCst);
        self.wake.notify_one();
        log::info!("upgrade complete: the previous process has exited; taking changes");
    }

    /// Waits (at most `limit`) until [`Self::release_hold`] if held; returns
    /// whether changes are allowed by then.
    pub async fn wait_released(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.held.load(Ordering::SeqCst) {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// Refuses a change while handed over or held.
    fn writable(&self) -> Result<(), ApiError> {
        if self.is_handed_over() || self.held.load(Ordering::SeqCst) {
            return Err(ApiError::Upgrading);
        }
        Ok(())
    }

    /// Applies `commands` (in order, now, by `actor`), makes the result
    /// durable, publishes a snapshot with `upsert` added (or replacing its
    /// namesake) and `remove` dropped, then adopts it. Returns how long the
    /// durable write took. If a command is refused or the write fails,
    /// nothing is published and the old state stays.
    fn commit(
        &self,
        guard: &mut MutexGuard<'_, State>,
        commands: Vec<Command>,
        actor: &str,
        upsert: Option<Arc<Release>>,
        remove: Option<&ReleaseName>,
    ) -> Result<Duration, ApiError> {
        // read under the state lock, which hand_over takes before setting it
        self.writable()?;
        let entry = Entry { seq: guard.seq + 1, at: now_ms(), actor: actor.into(), commands };
        let next = entry.apply_to(guard)?;
        let persist_started = Instant::now();
        self.store.lock().expect("store lock").commit(&next, &entry)?;
        let persisted = persist_started.elapsed();
        {
            let _w = self.table.write_lock();
            let cur = self.table.load();
            let mut releases: Vec<Arc<Release>> = cur
                .releases()
                .iter()
                .filter(|r| Some(r.name()) != remove && upsert.as_ref().is_none_or(|u| u.name() != r.name()))
                .cloned()
                .collect();
            releases.extend(upsert);
            self.table.store(Snapshot::new(next.generation, cur.topology().clone(), releases, next.live.as_ref(), cur.tunables().clone()));
        }
        **guard = next;
        Ok(persisted)
    }

    fn release(&self, name: &ReleaseName) -> Result<Arc<Release>, ApiError> {
        self.table.load().find(name).cloned().ok_or_else(|| ApiError::NotFound { kind: "release", name: name.to_string() })
    }

    async fn run_validation(&self, release: &Release, mode: Mode) -> Report {
        let rt = self.rt();
        let report = rt.validator.validate(&self.topology(), release, mode, now_ms()).await;
        self.metrics.record_checks(&report);
        report
    }

    fn refusal_event(&self, st: &State, action: &str, actor: &str, to: Option<ReleaseName>, result: &str, detail: String) -> Event {
        Event {
            at: now_ms(),
            action: action.into(),
            actor: actor.into(),
            from: st.live.clone(),
            to,
            result: result.into(),
            forced: false,
            generation: st.generation,
            detail,
        }
    }

    /// Registers (or re-registers with new backends) a release. Returns its
    /// view and whether it was new. Unresolvable hosts are reported in the view,
    /// not refused: containers may start after they are registered.
    pub async fn register(&self, name: ReleaseName, backends: BackendMap, actor: &str) -> Result<(ReleaseView, bool), ApiError> {
        let topology = self.topology();
        for svc in backends.keys() {
            if topology.service_index(svc).is_none() {
                let known: Vec<&str> = topology.services().iter().map(|s| s.name.as_str()).collect();
                return Err(ApiError::BadRequest(format!("unknown service `{svc}` (known: {})", known.join(", "))));
            }
        }
        if let Some((svc, _)) = backends.iter().find(|(_, v)| v.is_empty()) {
            return Err(ApiError::BadRequest(format!("service `{svc}` has an empty backend list")));
        }
        let release = resolve(&topology, &self.table, &name, &backends).await?;
        let mut st = self.state.lock().await;
        let created = !st.releases.contains_key(&name);
        self.commit(&mut st, vec![Command::Register { name: name.clone(), backends }], actor, Some(release.clone()), None)?;
        let view = release_view(&st, &release, &topology);
        Ok((view, created))
    }

    /// Runs full validation of a registered release and remembers the report.
    pub async fn check(&self, name: &ReleaseName) -> Result<Report, ApiError> {
        let release = self.release(name)?;
        let report = self.run_validation(&release, Mode::Full).await;
        let mut st = self.state.lock().await;
        let record = Command::RecordCheck { report: report.clone() };
        if st.precheck(&record).is_ok() {
            self.commit(&mut st, vec![record], "", None, None)?;
        }
        Ok(report)
    }

    /// Validates `req.release` (unless forced), then persists and flips.
    pub async fn switch(&self, req: SwitchRequest, actor: &str) -> Result<FlipReply, ApiError> {
        let _flip = self.flip_lock()?;
        let started = Instant::now();
        let window_ms = self.rt().settings.validation_window.as_millis() as u64;
        let cmd = Command::Switch {
            to: req.release.clone(),
            expect_generation: req.expect_generation,
            forced: req.force,
            window_ms,
            detail: String::new(),
        };
        self.state.lock().await.precheck(&cmd).inspect_err(|_| self.metrics.switch("refused"))?;
        let release = self.release(&req.release)?;
        let report = if req.force { None } else { Some(self.run_validation(&release, Mode::Full).await) };
        let timing = Timing { started, validation: started.elapsed() };
        let result = self.flip_commit(cmd, report, "switch", actor, Some(req.release), timing).await;
        self.metrics.switch(match &result {
            Ok(_) => "ok",
            Err(ApiError::Persist(_)) => "failed",
            Err(_) => "refused",
        });
        result
    }

    /// Flips back to the previous release unless it is unhealthy: trusts the
    /// background watch's passing report when it is at most two watch
    /// intervals old, otherwise re-checks it quickly inline. `force` skips both.
    pub async fn rollback(&self, expect_generation: Option<u64>, force: bool, actor: &str) -> Result<FlipReply, ApiError> {
        let _flip = self.flip_lock()?;
        let started = Instant::now();
        let window_ms = self.rt().settings.validation_window.as_millis() as u64;
        let cmd = Command::Rollback { expect_generation, forced: force, window_ms, detail: String::new() };
        let (target, from) = {
            let st = self.state.lock().await;
            st.precheck(&cmd).inspect_err(|_| self.metrics.rollback("refused"))?;
            (st.previous.as_ref().map(|p| p.release.clone()).expect("prechecked"), st.live.clone())
        };
        let release = self.release(&target)?;
        // overlap = false services: the target's containers were stopped at the switch
        self.start_exclusive(&target).await.inspect_err(|_| self.metrics.rollback("refused"))?;
        let report = match (force, self.fresh_watch(&target)) {
            (true, _) => None,
            (false, Some(watched)) => Some(watched),
            (false, None) => Some(self.run_validation(&release, Mode::Quick).await),
        };
        let validation = if report.as_ref().is_some_and(|r| r.mode != WATCH_MODE) { started.elapsed() } else { Duration::ZERO };
        let result = self.flip_commit(cmd, report, "rollback", actor, Some(target), Timing { started, validation }).await;
        if let (Ok(_), Some(from)) = (&result, &from) {
            self.stop_exclusive(from).await;
        }
        self.metrics.rollback(match &result {
            Ok(_) => "ok",
            Err(ApiError::Persist(_)) => "failed",
            Err(_) => "refused",
        });
        result
    }

    /// The one-flip-at-a-time lock; refused at once while another flip runs
    /// (409) or after a hand-over (503).
    fn flip_lock(&self) -> Result<MutexGuard<'_, ()>, ApiError> {
        let guard = self.flip.try_lock().map_err(|_| ApiError::Conflict("another switch or rollback is in progress".into()))?;
        self.writable()?;
        Ok(guard)
    }

    async fn flip_commit(
        &self,
        cmd: Command,
        report: Option<Report>,
        action: &str,
        actor: &str,
        to: Option<ReleaseName>,
        Timing { started, validation }: Timing,
    ) -> Result<FlipReply, ApiError> {
        let forced = report.is_none();
        let mut st = self.state.lock().await;
        if let Some(r) = report.as_ref().filter(|r| !r.passed) {
            // Refused: remember the report and the refusal, leave live alone.
            let event = self.refusal_event(&st, action, actor, to, "refused", r.summary());
            let commands = vec![Command::RecordCheck { report: r.clone() }, Command::Audit { event }];
            if let Err(e) = self.commit(&mut st, commands, actor, None, None) {
                log::error!("recording refused {action}: {e}");
            }
            log::warn!("{action} refused: {}", r.summary());
            return Err(ApiError::Validation(Box::new(r.clone())));
        }
        let summary = report.as_ref().map_or_else(|| "forced: validation skipped".to_string(), Report::summary);
        let cmd = match cmd {
            Command::Switch { to, expect_generation, forced, window_ms, .. } => {
                Command::Switch { to, expect_generation, forced, window_ms, detail: summary }
            }
            Command::Rollback { expect_generation, forced, window_ms, .. } => {
                Command::Rollback { expect_generation, forced, window_ms, detail: summary }
            }
            other => other,
        };
        let mut commands = vec![cmd];
        commands.extend(report.iter().map(|r| Command::RecordCheck { report: r.clone() }));
        let persisted = self.commit(&mut st, commands, actor, None, None).inspect_err(|e| log::error!("{action} failed: {e}"))?;
        let duration = started.elapsed();
        self.metrics.flipped(duration);
        if forced {
            log::warn!("{action} to {} FORCED by {actor}: validation skipped", st.live.as_ref().map_or("-", |l| l.as_str()));
        } else {
            log::info!("{action} to {} by {actor} in {duration:?}", st.live.as_ref().map_or("-", |l| l.as_str()));
        }
        self.wake.notify_one();
        self.warm_wake.notify_one();
        Ok(FlipReply {
            live: st.live.clone().expect("a flip sets live"),
            previous: st.previous.clone(),
            generation: st.generation,
            forced,
            report,
            duration_ms: duration.as_secs_f64() * 1e3,
            validation_ms: validation.as_secs_f64() * 1e3,
            persist_ms: persisted.as_secs_f64() * 1e3,
        })
    }

    /// Retires a release: drop it from the table (no new requests), wait for
    /// its in-flight requests (bounded by the drain timeout), run the retire
    /// hooks (each bounded), forget its counters. Refused for the live release.
    pub async fn retire(&self, name: &ReleaseName, actor: &str) -> Result<RetireReply, ApiError> {
        let stats = self.release(name)?.stats().clone();
        {
            let mut st = self.state.lock().await;
            self.commit(&mut st, vec![Command::Retire { name: name.clone() }], actor, None, Some(name))?;
        }
        self.wake.notify_one();
        let rt = self.rt();
        let deadline = Instant::now() + rt.settings.drain_timeout;
        while stats.inflight() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let inflight_left = stats.inflight().max(0);
        let mut hooks = Vec::new();
        for argv in &rt.settings.retire_hooks {
            let argv = substitute(argv, name, None);
            let Attempt { passed, reason, output } = run_program(&argv, rt.settings.hook_timeout).await;
            if !passed {
                log::error!("retire hook {argv:?} for {name} failed: {reason}");
            }
            hooks.push(HookResult { argv, passed, reason, output });
        }
        self.table.stats().forget(name);
        self.metrics.forget(name);
        self.containers_retired(name, actor).await;
        if !hooks.is_empty() {
            let failed = hooks.iter().filter(|h| !h.passed).count();
            let mut st = self.state.lock().await;
            let detail = format!("{} hook(s), {failed} failed; drained: {}", hooks.len(), inflight_left == 0);
            let result = if failed == 0 { "ok" } else { "failed" };
            let event = self.refusal_event(&st, "retire-hooks", actor, Some(name.clone()), result, detail);
            if let Err(e) = self.commit(&mut st, vec![Command::Audit { event }], actor, None, None) {
                log::error!("recording the retire hooks of {name}: {e}");
            }
        }
        log::info!("retired {name} (drained: {})", inflight_left == 0);
        Ok(RetireReply { release: name.clone(), drained: inflight_left == 0, inflight_left, hooks })
    }

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
                            Err(ApiError::Upgrading) => {
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
    /// Runs until `shutdown` flips.
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
                    let mut report = rt.validator.validate(&self.topology(), &release, Mode::Quick, now_ms()).await;
                    report.mode = WATCH_MODE.into();
                    if !report.passed {
                        log::warn!("warm release {} is unhealthy: {}", release.name(), report.summary());
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
    fn watched(&self, previous: Option<&ReleaseName>) -> Option<Report> {
        let warm = self.warm.lock().expect("warm lock");
        warm.as_ref().map(|w| &w.report).filter(|r| previous == Some(&r.release)).cloned()
    }

    /// The watch's report of `release` if it passed and started at most two
    /// watch intervals ago.
    fn fresh_watch(&self, release: &ReleaseName) -> Option<Report> {
        let warm = self.warm.lock().expect("warm lock");
        let w = warm.as_ref()?;
        let fresh = w.started.elapsed() <= 2 * self.rt().settings.warm_check_interval;
        (fresh && w.report.passed && &w.report.release == release).then(|| w.report.clone())
    }

    /// Gives the calling (admin) thread the configured priority, once.
    pub fn prioritise_current_thread(&self) {
        let _ = crate::priority::prioritise_current_thread(self.rt().settings.admin_priority);
    }

    /// The status document: live, previous (with its latest watch report),
    /// generation, every release.
    pub async fn status(&self) -> StatusView {
        let st = self.state.lock().await.clone();
        let snap = self.table.load();
        let watched = self.watched(st.previous.as_ref().map(|p| &p.release));
        StatusView::build(&st, &snap, snap.topology(), self.flip.try_lock().is_err(), watched)
    }

    /// The audit log, newest last.
    pub async fn events(&self) -> Vec<Event> {
        self.state.lock().await.events.iter().cloned().collect()
    }

    /// Prometheus text for control-plane, data-plane and process metrics.
    pub async fn metrics_text(&self) -> String {
        let (live, previous) = {
            let st = self.state.lock().await;
            (st.live.clone(), st.previous.as_ref().map(|p| p.release.clone()))
        };
        let watched = self.watched(previous.as_ref()).map(|r| (r.release, r.passed));
        self.metrics.encode(live.as_ref(), watched)
    }
}
