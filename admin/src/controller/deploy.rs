//! Deploy: a release's containers from its image tags (pull, create, start,
//! healthy), then register, validate and switch; retire stops them, pruning
//! removes the oldest stopped; discovery keeps a live picture of them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex as StdMutex;
use std::time::{Duration, Instant};

use canopy_docker::{ContainerSpec, ContainerState, DockerError, Engine, Healthcheck, ImageStatus, ManagedContainer};
use canopy_proxy::prometheus::{histogram_opts, opts, HistogramVec, IntCounterVec, IntGaugeVec};
use canopy_proxy::{Endpoint, ReleaseName, ServiceName};
use futures_util::StreamExt;
use serde::Serialize;

use super::{Controller, Timing};
use crate::error::ApiError;
use crate::report::Report;
use crate::state::{BackendMap, Command, ContainerChange};
use crate::validate::Mode;

/// `[docker]` of proxy.toml plus each service's image and container table.
#[derive(Debug, Clone, PartialEq)]
pub struct DeploySettings {
    /// The engine's socket (`unix:///var/run/docker.sock`, `tcp://host:2375`).
    pub socket: String,
    /// The stack network every release's containers join (created if missing).
    pub network: String,
    /// Stopped releases kept for a fast redeploy (default 3); older ones are removed.
    pub keep_releases: usize,
    /// Longest a deploy waits for its containers to become healthy (default 5m).
    pub deploy_timeout: Duration,
    /// SIGTERM-to-SIGKILL time when stopping a container (default 10s).
    pub stop_timeout: Duration,
    /// Per service, in topology order: how canopy runs it, `None` for
    /// services canopy does not run (their backends come from the template
    /// or `register`).
    pub services: Vec<Option<ServiceContainer>>,
}

/// How every release of one service runs: `image` and `[service.container]`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceContainer {
    /// Image repository; the tag is the release name.
    pub repository: String,
    /// Environment, `KEY=VALUE`: the env file's lines, then the `env` table.
    pub env: Vec<String>,
    /// Volumes in `docker run -v` form.
    pub volumes: Vec<String>,
    /// Replaces the image's CMD.
    pub command: Option<Vec<String>>,
    /// User to run as.
    pub user: Option<String>,
    /// Replaces the image's HEALTHCHECK.
    pub healthcheck: Option<Healthcheck>,
    /// Memory limit in bytes.
    pub memory_bytes: Option<i64>,
    /// CPU limit.
    pub cpus: Option<f64>,
    /// `false`: the old release's container is stopped at the switch and
    /// started again on rollback (a worker running scheduled jobs). Default `true`.
    pub overlap: bool,
}

/// A `POST /deploy` request.
#[derive(Debug, Clone)]
pub struct DeployRequest {
    /// The release (= image tag) to deploy.
    pub release: ReleaseName,
    /// Keep the containers of a failed deploy for inspection instead of removing them.
    pub keep_failed: bool,
}

/// One step of a deploy, as the reply and the CLI show it.
#[derive(Debug, Clone, Serialize)]
pub struct DeployStep {
    /// `network`, `pull`, `create`, `start`, `healthy`, `register`, `checks`, `switch`, `stop`.
    pub step: &'static str,
    /// The service it was about, if one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// What happened.
    pub detail: String,
    /// How long it took, in milliseconds.
    pub ms: f64,
}

/// The reply to a successful deploy.
#[derive(Debug, Clone, Serialize)]
pub struct DeployReply {
    /// The release now live.
    pub release: ReleaseName,
    /// The release live before, if any (warm for the validation window).
    pub previous: Option<ReleaseName>,
    /// Generation after the switch.
    pub generation: u64,
    /// Every step in order.
    pub steps: Vec<DeployStep>,
    /// The validation report the switch rests on.
    pub report: Option<Report>,
    /// The whole deploy, in milliseconds.
    pub duration_ms: f64,
}

/// A refused or failed deploy: why, the steps done (all undone since), and
/// the failing container's last log lines.
#[derive(Debug, Clone, Serialize)]
pub struct DeployFailure {
    /// HTTP status: 422 refused (image, health, checks), 502 engine failure.
    #[serde(skip)]
    pub status: u16,
    /// The reason.
    pub error: String,
    /// The steps that ran, the failing one last.
    pub steps: Vec<DeployStep>,
    /// Last log lines of the container that failed, if one did.
    pub logs: Vec<String>,
    /// The validation report, when checks failed.
    pub report: Option<Report>,
}

/// One canopy container of this stack, for `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct ContainerView {
    /// Container name.
    pub name: String,
    /// Its `canopy.release` label.
    pub release: String,
    /// Its `canopy.service` label.
    pub service: String,
    /// Image reference.
    pub image: String,
    /// Image tag.
    pub tag: Option<String>,
    /// `running`, `exited`, ...
    pub state: ContainerState,
    /// `healthy`, `starting`, `unhealthy`, `none`.
    pub health: canopy_docker::Health,
    /// Exit code of a stopped container.
    pub exit_code: Option<i64>,
    /// Address on the stack network while running.
    pub ip: Option<String>,
    /// Why canopy refuses it (image tag differs from its release label).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// What discovery knows right now.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Discovered {
    /// `ok`, or why the engine cannot be used.
    pub engine: String,
    /// This stack's canopy containers, by name.
    pub containers: Vec<ContainerView>,
}

/// The deploy half of the controller (present when proxy.toml has `[docker]`).
pub(crate) struct Docker {
    settings: DeploySettings,
    discovered: StdMutex<Discovered>,
    deploys: IntCounterVec,
    phases: HistogramVec,
    containers: IntGaugeVec,
}

const PHASE_BUCKETS: [f64; 14] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0];
const VALID: &str = "valid metric options";

/// Collects steps and their timings.
struct Steps {
    steps: Vec<DeployStep>,
    phases: BTreeMap<&'static str, Duration>,
}

impl Steps {
    fn record(&mut self, step: &'static str, service: Option<&ServiceName>, detail: String, took: Duration) {
        log::info!("deploy: {step}{} {detail} ({took:?})", service.map(|s| format!(" {s}")).unwrap_or_default());
        *self.phases.entry(step).or_default() += took;
        self.steps.push(DeployStep { step, service: service.map(ToString::to_string), detail, ms: took.as_secs_f64() * 1e3 });
    }
}

impl Steps {
    /// Records `step` as failed when `result` is an error, and passes it on.
    fn check<T>(
        &mut self,
        step: &'static str,
        service: Option<&ServiceName>,
        clock: Instant,
        result: Result<T, DockerError>,
    ) -> Result<T, Stop> {
        result.map_err(|e| {
            let reason = first_line(&e.to_string()).trim_end_matches("; its last log lines:").to_string();
            self.record(step, service, format!("FAILED: {reason}"), clock.elapsed());
            Stop::engine(&e)
        })
    }
}

/// Why the steps stopped; turned into a [`DeployFailure`].
struct Stop {
    status: u16,
    error: String,
    logs: Vec<String>,
    report: Option<Box<Report>>,
}

impl Stop {
    fn refused(error: impl ToString) -> Self {
        Stop { status: 422, error: error.to_string(), logs: Vec::new(), report: None }
    }
    fn engine(error: &DockerError) -> Self {
        let status = match error {
            DockerError::Pull { .. }
            | DockerError::Exited { .. }
            | DockerError::Unhealthy { .. }
            | DockerError::HealthTimeout { .. }
            | DockerError::Mismatch { .. }
            | DockerError::NotManaged { .. }
            | DockerError::TagMismatch { .. }
            | DockerError::NoTag { .. } => 422,
            _ => 502,
        };
        Stop { status, error: error.to_string(), logs: error.logs().to_vec(), report: None }
    }
}

/// A container this deploy touched, and how to undo that.
struct Touched {
    name: String,
    /// Created by this deploy (removed on failure), else adopted.
    created: bool,
    /// Was running before (left running on failure).
    was_running: bool,
}

impl Docker {
    fn container_name(controller: &Controller, service: &ServiceName, release: &ReleaseName) -> String {
        controller.topology().template().render(service, release)
    }
}

impl Controller {
    /// Enables `POST /deploy` and discovery with `settings`; registers the
    /// deploy metrics. Called once after [`Controller::start`] when proxy.toml
    /// has `[docker]`; the engine is reached on first use, so canopy starts
    /// (and serves) while it is down.
    pub fn enable_deploy(&self, settings: DeploySettings) {
        let deploys = IntCounterVec::new(opts!("canopy_deploys_total", "Deploys by result."), &["result"]).expect(VALID);
        for result in ["ok", "refused", "failed"] {
            deploys.with_label_values(&[result]);
        }
        let phases = HistogramVec::new(
            histogram_opts!("canopy_deploy_duration_seconds", "Time of each deploy phase (and `total`).", PHASE_BUCKETS.to_vec()),
            &["phase"],
        )
        .expect(VALID);
        let containers = IntGaugeVec::new(
            opts!("canopy_release_containers", "canopy containers of this stack by release, service and state (value 1 each)."),
            &["release", "service", "state"],
        )
        .expect(VALID);
        self.metrics.register(Box::new(deploys.clone()));
        self.metrics.register(Box::new(phases.clone()));
        self.metrics.register(Box::new(containers.clone()));
        let discovered = StdMutex::new(Discovered { engine: "not contacted yet".into(), containers: Vec::new() });
        if self.docker.set(Docker { settings, discovered, deploys, phases, containers }).is_err() {
            log::error!("enable_deploy called twice; keeping the first settings");
        }
    }

    fn docker(&self) -> Result<&Docker, ApiError> {
        self.docker
            .get()
            .ok_or_else(|| ApiError::BadRequest("deploy needs a [docker] section and services with `image` in proxy.toml".into()))
    }

    /// What discovery knows (`None` without `[docker]`).
    pub fn discovered(&self) -> Option<Discovered> {
        self.docker.get().map(|d| d.discovered.lock().expect("discovered lock").clone())
    }

    /// Deploys `req.release`: image present (pulled with progress) → one
    /// container per service with `image`, named by the address template,
    /// created (or adopted) and started on the stack network → healthy
    /// within `deploy-timeout` → registered with the containers' addresses →
    /// validated → switched. One at a time with switches and rollbacks (409).
    /// On any failure nothing live changes: the release is unregistered and
    /// the containers this deploy created are removed (kept with
    /// `keep_failed`), those it restarted stopped again.
    pub async fn deploy(&self, req: DeployRequest, actor: &str) -> Result<DeployReply, ApiError> {
        let docker = self.docker()?;
        let _flip = self.flip_lock()?;
        let started = Instant::now();
        let release = req.release.clone();
        {
            let st = self.state.lock().await;
            if st.live.as_ref() == Some(&release) {
                return Err(ApiError::Conflict(format!("release `{release}` is already live")));
            }
            if let Some(running) = &st.deploying {
                return Err(ApiError::Conflict(format!(
                    "a deploy of release `{running}` is in progress, or was interrupted by a restart and is cleaned up once the Docker engine answers"
                )));
            }
        }
        let engine = match Engine::connect(&docker.settings.socket).await {
            Ok(engine) => engine,
            Err(e) => {
                docker.deploys.with_label_values(&["failed"]).inc();
                return Err(ApiError::Deploy(Box::new(DeployFailure {
                    status: 502,
                    error: e.to_string(),
                    steps: Vec::new(),
                    logs: Vec::new(),
                    report: None,
                })));
            }
        };
        {
            let mut st = self.state.lock().await;
            self.commit(&mut st, vec![Command::DeployStarted { release: release.clone() }], actor, None, None)?;
        }
        let was_registered = self.state.lock().await.releases.contains_key(&release);
        let was_stopped = self.state.lock().await.stopped.contains(&release);
        let mut steps = Steps { steps: Vec::new(), phases: BTreeMap::new() };
        let mut touched = Vec::new();
        let outcome = self.deploy_steps(docker, &engine, &release, actor, started, &mut steps, &mut touched).await;
        let total = started.elapsed();
        match outcome {
            Ok((reply_report, previous, generation)) => {
                let mut commands = Vec::new();
                if was_stopped {
                    commands.push(Command::Containers { release: release.clone(), change: ContainerChange::Started });
                }
                let detail = format!("{} steps in {:.0} ms", steps.steps.len(), total.as_secs_f64() * 1e3);
                commands.push(Command::DeployEnded { release: release.clone(), result: "ok".into(), detail });
                let mut st = self.state.lock().await;
                if let Err(e) = self.commit(&mut st, commands, actor, None, None) {
                    log::error!("recording the end of the deploy of {release}: {e}");
                }
                drop(st);
                docker.deploys.with_label_values(&["ok"]).inc();
                for (phase, took) in &steps.phases {
                    docker.phases.with_label_values(&[phase]).observe(took.as_secs_f64());
                }
                docker.phases.with_label_values(&["total"]).observe(total.as_secs_f64());
                Ok(DeployReply {
                    release,
                    previous,
                    generation,
                    steps: steps.steps,
                    report: reply_report,
                    duration_ms: total.as_secs_f64() * 1e3,
                })
            }
            Err(stop) => {
                let result = if stop.status == 502 { "failed" } else { "refused" };
                log::warn!("deploy of {release} {result}: {}", stop.error);
                self.undo(&engine, &release, was_registered, &touched, req.keep_failed, actor).await;
                let mut st = self.state.lock().await;
                let ended = Command::DeployEnded { release: release.clone(), result: result.into(), detail: first_line(&stop.error) };
                if let Err(e) = self.commit(&mut st, vec![ended], actor, None, None) {
                    log::error!("recording the end of the deploy of {release}: {e}");
                }
                drop(st);
                docker.deploys.with_label_values(&[result]).inc();
                Err(ApiError::Deploy(Box::new(DeployFailure {
                    status: stop.status,
                    error: stop.error,
                    steps: steps.steps,
                    logs: stop.logs,
                    report: stop.report.map(|r| *r),
                })))
            }
        }
    }

    /// The steps of a deploy; on `Err` the caller undoes what `touched` lists.
    #[allow(clippy::too_many_arguments)]
    async fn deploy_steps(
        &self,
        docker: &Docker,
        engine: &Engine,
        release: &ReleaseName,
        actor: &str,
        started: Instant,
        steps: &mut Steps,
        touched: &mut Vec<Touched>,
    ) -> Result<(Option<Report>, Option<ReleaseName>, u64), Stop> {
        let settings = &docker.settings;
        let deadline = started + settings.deploy_timeout;
        let services: Vec<(ServiceName, u16, &ServiceContainer)> = self
            .topology()
            .services()
            .iter()
            .zip(&settings.services)
            .filter_map(|(s, c)| c.as_ref().map(|c| (s.name.clone(), s.port, c)))
            .collect();
        if services.is_empty() {
            return Err(Stop::refused("no service has `image` in proxy.toml: nothing to deploy"));
        }

        let clock = Instant::now();
        let network = steps.check("network", None, clock, engine.ensure_network(&settings.network).await)?;
        steps.record("network", None, format!("{} {network:?}", settings.network).to_lowercase(), clock.elapsed());

        for (service, _, container) in &services {
            let reference = format!("{}:{release}", container.repository);
            let clock = Instant::now();
            let mut lines = 0usize;
            let mut last = String::new();
            let status = engine
                .ensure_image(&reference, |p| {
                    lines += 1;
                    log::info!("deploy: pull {reference}: {p}");
                    last = p.to_string();
                })
                .await;
            let status = steps.check("pull", Some(service), clock, status)?;
            let detail = match status {
                ImageStatus::Present => format!("{reference} present"),
                ImageStatus::Pulled => format!("{reference} pulled ({lines} progress lines; last: {last})"),
            };
            steps.record("pull", Some(service), detail, clock.elapsed());
        }

        let mut names = Vec::new();
        for (service, _, container) in &services {
            let name = Docker::container_name(self, service, release);
            let spec = spec(&name, service, release, &settings.network, container);
            let clock = Instant::now();
            let created = steps.check("create", Some(service), clock, engine.create(&spec).await)?;
            let was_running = created.adopted && created.state == ContainerState::Running;
            touched.push(Touched { name: name.clone(), created: !created.adopted, was_running });
            let detail = if created.adopted { format!("{name} adopted ({})", created.state) } else { format!("{name} created") };
            steps.record("create", Some(service), detail, clock.elapsed());
            names.push(name);
        }
        for ((service, _, _), name) in services.iter().zip(&names) {
            let clock = Instant::now();
            steps.check("start", Some(service), clock, engine.start(name).await)?;
            steps.record("start", Some(service), format!("{name} started"), clock.elapsed());
        }
        for ((service, _, _), name) in services.iter().zip(&names) {
            let clock = Instant::now();
            let left = deadline.saturating_duration_since(Instant::now());
            let ready = steps.check("healthy", Some(service), clock, engine.wait_healthy(name, left).await)?;
            steps.record("healthy", Some(service), format!("{name} {ready:?}").to_lowercase(), clock.elapsed());
        }

        let clock = Instant::now();
        let mut backends = BackendMap::new();
        for ((service, port, _), name) in services.iter().zip(&names) {
            let ip = engine.address(name, &settings.network).await.map_err(|e| Stop::engine(&e))?;
            backends.insert(service.clone(), vec![Endpoint::from_addr(SocketAddr::new(ip, *port))]);
        }
        let listed: Vec<String> = backends.iter().map(|(s, e)| format!("{s}={}", e[0])).collect();
        self.register(release.clone(), backends, actor).await.map_err(|e| Stop::refused(e.to_string()))?;
        steps.record("register", None, listed.join(", "), clock.elapsed());

        let clock = Instant::now();
        let window_ms = self.rt().settings.validation_window.as_millis() as u64;
        let cmd = Command::Switch { to: release.clone(), expect_generation: None, forced: false, window_ms, detail: String::new() };
        self.state.lock().await.precheck(&cmd).map_err(|e| Stop::refused(e.to_string()))?;
        let registered = self.release(release).map_err(|e| Stop::refused(e.to_string()))?;
        let report = self.run_validation(&registered, Mode::Full).await;
        steps.record("checks", None, report.summary(), clock.elapsed());
        if !report.passed {
            // records the refusal in the audit log, like a refused switch
            let timing = Timing { started: clock, validation: clock.elapsed() };
            let _ = self.flip_commit(cmd, Some(report.clone()), "switch", actor, Some(release.clone()), timing).await;
            self.metrics.switch("refused");
            return Err(Stop {
                status: 422,
                error: format!("validation of release `{release}` failed: {}", report.summary()),
                logs: Vec::new(),
                report: Some(Box::new(report)),
            });
        }
        let clock = Instant::now();
        let timing = Timing { started, validation: started.elapsed() };
        let flipped = self.flip_commit(cmd, Some(report.clone()), "switch", actor, Some(release.clone()), timing).await;
        self.metrics.switch(if flipped.is_ok() { "ok" } else { "failed" });
        let flipped = flipped.map_err(|e| Stop { status: e.status(), error: e.to_string(), logs: Vec::new(), report: None })?;
        let previous = flipped.previous.as_ref().map(|p| p.release.clone());
        steps.record("switch", None, format!("live: {release} (generation {})", flipped.generation), clock.elapsed());

        // overlap = false: the old release's container stops now
        if let Some(previous) = &previous {
            for (service, _, container) in &services {
                if container.overlap {
                    continue;
                }
                let name = Docker::container_name(self, service, previous);
                let clock = Instant::now();
                match engine.stop(&name, settings.stop_timeout).await {
                    Ok(()) => steps.record("stop", Some(service), format!("{name} stopped (overlap = false)"), clock.elapsed()),
                    Err(DockerError::NotFound { .. }) => {}
                    Err(e) => log::error!("overlap = false: stopping {name}: {e}"),
                }
            }
        }
        Ok((Some(report), previous, flipped.generation))
    }

    /// Undoes a failed deploy: unregisters the release (unless it was
    /// registered before) and removes the containers it created (stops those
    /// it restarted), or with `keep_failed` leaves them for inspection.
    async fn undo(
        &self,
        engine: &Engine,
        release: &ReleaseName,
        was_registered: bool,
        touched: &[Touched],
        keep_failed: bool,
        actor: &str,
    ) {
        if !was_registered {
            let mut st = self.state.lock().await;
            if st.releases.contains_key(release) && st.live.as_ref() != Some(release) {
                if let Err(e) = self.commit(&mut st, vec![Command::Retire { name: release.clone() }], actor, None, Some(release)) {
                    log::error!("unregistering the failed release {release}: {e}");
                }
            }
        }
        if keep_failed {
            log::info!("deploy of {release} failed; --keep-failed: its containers stay for inspection");
            return;
        }
        let stop_timeout = self.docker.get().map_or(Duration::from_secs(10), |d| d.settings.stop_timeout);
        for t in touched {
            let result = if t.created {
                engine.remove(&t.name).await.map(drop)
            } else if !t.was_running {
                engine.stop(&t.name, stop_timeout).await
            } else {
                Ok(())
            };
            if let Err(e) = result {
                log::error!("cleaning up {} after the failed deploy of {release}: {e}", t.name);
            }
        }
        if touched.iter().any(|t| t.created) {
            let mut st = self.state.lock().await;
            let cmd = Command::Containers { release: release.clone(), change: ContainerChange::Removed };
            if let Err(e) = self.commit(&mut st, vec![cmd], actor, None, None) {
                log::error!("recording the cleanup of {release}: {e}");
            }
        }
    }

    /// The containers of `release`'s `overlap = false` services.
    fn exclusive(&self, docker: &Docker, release: &ReleaseName) -> Vec<String> {
        self.topology()
            .services()
            .iter()
            .zip(&docker.settings.services)
            .filter(|(_, c)| c.as_ref().is_some_and(|c| !c.overlap))
            .map(|(s, _)| Docker::container_name(self, &s.name, release))
            .collect()
    }

    /// Before a rollback to `release`: starts its `overlap = false`
    /// containers (stopped at the switch away from it) and waits until they
    /// are healthy, so that its validation sees them. A no-op without such
    /// services, for containers that do not exist (a release registered by
    /// hand) and, logged, when the engine is unreachable (the validation
    /// then decides); refused (422) when one does not come up.
    pub(crate) async fn start_exclusive(&self, release: &ReleaseName) -> Result<(), ApiError> {
        let Some(docker) = self.docker.get() else { return Ok(()) };
        let names = self.exclusive(docker, release);
        if names.is_empty() {
            return Ok(());
        }
        let refused = |status: u16, e: &dyn std::fmt::Display, logs: &[String]| {
            let error = format!("rollback to {release}: {e}");
            ApiError::Deploy(Box::new(DeployFailure { status, error, steps: Vec::new(), logs: logs.to_vec(), report: None }))
        };
        let engine = match Engine::connect(&docker.settings.socket).await {
            Ok(engine) => engine,
            Err(e) => {
                log::error!("rollback to {release}: cannot start its overlap = false containers: {e}");
                return Ok(());
            }
        };
        let mut started = Vec::new();
        for name in &names {
            match engine.start(name).await {
                Ok(()) => started.push(name),
                Err(DockerError::NotFound { .. }) => {}
                Err(e) => return Err(refused(422, &e, e.logs())),
            }
        }
        for name in started {
            engine.wait_healthy(name, docker.settings.deploy_timeout).await.map_err(|e| refused(422, &e, e.logs()))?;
            log::info!("rollback to {release}: started {name} again (overlap = false)");
        }
        Ok(())
    }

    /// After a rollback away from `release`: stops its `overlap = false`
    /// containers. Failures are logged (the flip has happened).
    pub(crate) async fn stop_exclusive(&self, release: &ReleaseName) {
        let Some(docker) = self.docker.get() else { return };
        let names = self.exclusive(docker, release);
        if names.is_empty() {
            return;
        }
        let engine = match Engine::connect(&docker.settings.socket).await {
            Ok(engine) => engine,
            Err(e) => return log::error!("overlap = false: cannot stop the containers of {release}: {e}"),
        };
        for name in names {
            match engine.stop(&name, docker.settings.stop_timeout).await {
                Ok(()) => log::info!("stopped {name} (overlap = false)"),
                Err(DockerError::NotFound { .. }) => {}
                Err(e) => log::error!("overlap = false: stopping {name}: {e}"),
            }
        }
    }

    /// After a release is retired: stops its containers (kept for a fast
    /// redeploy), then removes the oldest stopped releases beyond
    /// `keep-releases`. A no-op without `[docker]`; engine errors are logged.
    pub(crate) async fn containers_retired(&self, release: &ReleaseName, actor: &str) {
        let Some(docker) = self.docker.get() else { return };
        let engine = match Engine::connect(&docker.settings.socket).await {
            Ok(engine) => engine,
            Err(e) => {
                log::error!("cannot stop the containers of retired release {release}: {e}");
                return;
            }
        };
        let mut any = false;
        for (service, c) in self.topology().services().iter().zip(&docker.settings.services) {
            if c.is_none() {
                continue;
            }
            let name = Docker::container_name(self, &service.name, release);
            match engine.stop(&name, docker.settings.stop_timeout).await {
                Ok(()) => any = true,
                Err(DockerError::NotFound { .. }) => {}
                Err(e) => log::error!("stopping {name} of retired release {release}: {e}"),
            }
        }
        if !any {
            return;
        }
        let mut st = self.state.lock().await;
        let cmd = Command::Containers { release: release.clone(), change: ContainerChange::Stopped };
        if let Err(e) = self.commit(&mut st, vec![cmd], actor, None, None) {
            log::error!("recording the stop of {release}: {e}");
        }
        let excess = st.stopped.len().saturating_sub(docker.settings.keep_releases);
        let prune: Vec<ReleaseName> = st.stopped.iter().take(excess).cloned().collect();
        drop(st);
        for old in prune {
            for (service, c) in self.topology().services().iter().zip(&docker.settings.services) {
                if c.is_none() {
                    continue;
                }
                let name = Docker::container_name(self, &service.name, &old);
                if let Err(e) = engine.remove(&name).await {
                    log::error!("pruning {name}: {e}");
                }
            }
            log::info!("pruned release {old}: more than {} stopped releases", docker.settings.keep_releases);
            let mut st = self.state.lock().await;
            let cmd = Command::Containers { release: old.clone(), change: ContainerChange::Removed };
            if let Err(e) = self.commit(&mut st, vec![cmd], "canopy (keep-releases)", None, None) {
                log::error!("recording the removal of {old}: {e}");
            }
        }
    }

    /// Cleans up after a deploy that canopy did not finish (killed mid-way):
    /// the release is unregistered unless live, its containers removed (or
    /// stopped, when it was a kept release), and the deploy recorded as
    /// failed. Returns false when it could not start (a flip runs, or an
    /// upgrade holds changes): [`Self::run_discovery`] tries again.
    async fn recover(&self, engine: &Engine) -> bool {
        let Some(docker) = self.docker.get() else { return true };
        let Ok(_flip) = self.flip_lock() else { return false };
        let (release, live, kept) = {
            let st = self.state.lock().await;
            let Some(release) = st.deploying.clone() else { return true };
            let live = st.live.as_ref() == Some(&release) || st.previous.as_ref().is_some_and(|p| p.release == release);
            let kept = st.stopped.contains(&release);
            (release, live, kept)
        };
        let actor = "canopy (restart)";
        let detail = if live {
            "canopy restarted after the switch; the deploy had completed".to_string()
        } else {
            let touched: Vec<Touched> = self
                .topology()
                .services()
                .iter()
                .zip(&docker.settings.services)
                .filter(|(_, c)| c.is_some())
                .map(|(s, _)| Touched { name: Docker::container_name(self, &s.name, &release), created: !kept, was_running: false })
                .collect();
            self.undo(engine, &release, false, &touched, false, actor).await;
            "canopy restarted mid-deploy; the release's containers were cleaned up".to_string()
        };
        log::warn!("deploy of {release} was interrupted: {detail}");
        let result = if live { "ok" } else { "failed" };
        let mut st = self.state.lock().await;
        let cmd = Command::DeployEnded { release, result: result.into(), detail };
        if let Err(e) = self.commit(&mut st, vec![cmd], actor, None, None) {
            log::error!("recording the interrupted deploy: {e}");
            return false;
        }
        true
    }

    /// Finishes an interrupted deploy ([`Self::recover`]) once the engine
    /// answers and changes are allowed (after `serve --upgrade` they wait for
    /// the previous process to exit), trying again every second.
    async fn recover_when_possible(&self, docker: &Docker, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            if let Ok(engine) = Engine::connect(&docker.settings.socket).await {
                if self.recover(&engine).await {
                    return;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Keeps [`Self::discovered`] and `canopy_release_containers` current:
    /// lists this stack's containers when the engine answers, then follows
    /// its events stream (a killed container shows within milliseconds);
    /// reconnects every second while the engine is away. Also finishes an
    /// interrupted deploy first ([`Self::recover`]). Runs until `shutdown`.
    pub async fn run_discovery(&self, shutdown: tokio::sync::watch::Receiver<bool>) {
        let Some(docker) = self.docker.get() else { return };
        tokio::join!(self.recover_when_possible(docker, shutdown.clone()), self.follow_containers(docker, shutdown));
    }

    /// The discovery half of [`Self::run_discovery`].
    async fn follow_containers(&self, docker: &Docker, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            let engine = match Engine::connect(&docker.settings.socket).await {
                Ok(engine) => engine,
                Err(e) => {
                    self.publish(docker, Err(e.to_string()));
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = shutdown.changed() => return,
                    }
                }
            };
            let since = std::time::SystemTime::now();
            match engine.list_managed(&docker.settings.network).await {
                Ok(list) => self.publish(docker, Ok(list)),
                Err(e) => self.publish(docker, Err(e.to_string())),
            }
            let mut events = engine.events(Some(since));
            loop {
                tokio::select! {
                    event = events.next() => match event {
                        Some(Ok(event)) if self.is_ours(docker, &event.name) => {
                            match engine.list_managed(&docker.settings.network).await {
                                Ok(list) => self.publish(docker, Ok(list)),
                                Err(e) => self.publish(docker, Err(e.to_string())),
                            }
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => {
                            self.publish(docker, Err(e.to_string()));
                            break;
                        }
                        None => break,
                    },
                    _ = shutdown.changed() => return,
                }
            }
        }
    }

    /// Whether container `name` is one of this stack's: the address template
    /// of a service canopy runs, for some release.
    fn is_ours(&self, docker: &Docker, name: &str) -> bool {
        self.release_of(docker, name).is_some()
    }

    fn release_of(&self, docker: &Docker, name: &str) -> Option<(ReleaseName, ServiceName)> {
        let topology = self.topology();
        let template = topology.template().as_str();
        for (service, c) in topology.services().iter().zip(&docker.settings.services) {
            if c.is_none() {
                continue;
            }
            let pattern = template.replace("{service}", service.name.as_str());
            let (before, after) = pattern.split_once("{release}")?;
            let middle = name.strip_prefix(before).and_then(|rest| rest.strip_suffix(after));
            if let Some(release) = middle.and_then(|m| ReleaseName::parse(m).ok()) {
                return Some((release, service.name.clone()));
            }
        }
        None
    }

    fn publish(&self, docker: &Docker, listed: Result<Vec<ManagedContainer>, String>) {
        let mut discovered = docker.discovered.lock().expect("discovered lock");
        match listed {
            Ok(list) => {
                discovered.engine = "ok".into();
                discovered.containers = list
                    .into_iter()
                    .filter(|c| self.is_ours(docker, &c.name))
                    .map(|c| ContainerView {
                        problem: c.check_tag().err().map(|e| e.to_string()),
                        name: c.name,
                        release: c.release,
                        service: c.service,
                        image: c.image,
                        tag: c.tag,
                        state: c.state,
                        health: c.health,
                        exit_code: c.exit_code,
                        ip: c.ip.map(|ip| ip.to_string()),
                    })
                    .collect();
                for c in discovered.containers.iter().filter(|c| c.problem.is_some()) {
                    log::warn!("refusing container {}: {}", c.name, c.problem.as_deref().unwrap_or_default());
                }
            }
            Err(e) => discovered.engine = e,
        }
        docker.containers.reset();
        for c in &discovered.containers {
            docker.containers.with_label_values(&[&c.release, &c.service, c.state.as_str()]).set(1);
        }
    }

    /// Problems a user should see at once: containers of the live release
    /// that are not running, and refused containers.
    pub async fn container_alerts(&self) -> Vec<String> {
        let Some(discovered) = self.discovered() else { return Vec::new() };
        let live = self.state.lock().await.live.clone();
        let mut alerts = Vec::new();
        if discovered.engine != "ok" {
            alerts.push(format!("Docker engine: {}", discovered.engine));
        }
        let Some(docker) = self.docker.get() else { return alerts };
        // a live release without any container is not run by canopy (registered by hand)
        let runs = |release: &ReleaseName| discovered.containers.iter().any(|c| c.release == release.as_str());
        if let Some(live) = live.filter(runs) {
            for (service, c) in self.topology().services().iter().zip(&docker.settings.services) {
                if c.is_none() {
                    continue;
                }
                let name = Docker::container_name(self, &service.name, &live);
                match discovered.containers.iter().find(|c| c.name == name) {
                    None => alerts.push(format!("live release {live}: container {name} does not exist")),
                    Some(c) if c.state != ContainerState::Running => {
                        let code = c.exit_code.map(|code| format!(" (exit code {code})")).unwrap_or_default();
                        alerts.push(format!("live release {live}: container {name} is {}{code}", c.state));
                    }
                    _ => {}
                }
            }
        }
        for c in discovered.containers.iter().filter(|c| c.problem.is_some()) {
            alerts.push(c.problem.clone().unwrap_or_default());
        }
        alerts
    }
}

fn spec(name: &str, service: &ServiceName, release: &ReleaseName, network: &str, c: &ServiceContainer) -> ContainerSpec {
    let mut spec = ContainerSpec::new(name, &c.repository, release.as_str(), service.as_str(), network);
    spec.env = c.env.clone();
    spec.binds = c.volumes.clone();
    spec.command = c.command.clone();
    spec.user = c.user.clone();
    spec.healthcheck = c.healthcheck.clone();
    spec.memory_bytes = c.memory_bytes;
    spec.cpus = c.cpus;
    spec
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_string()
}
