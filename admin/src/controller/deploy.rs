//! Deploy: a release's containers from its image tags (pull, create, start,
//! healthy), registered, then the one validated flip; and the undo of a
//! deploy that did not finish.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use canopy_docker::{ContainerSpec, ContainerState, DockerError, Engine, ImageStatus};
use canopy_proxy::{Endpoint, ReleaseName, ServiceName};

use super::containers::{first_line, RunService};
use super::flip::Flip;
use super::{Controller, FlipGuard};
use crate::error::ControlError;
use crate::replies::{DeployFailure, DeployReply, DeployStep, FlipReply};
use crate::report::Report;
use crate::requests::DeployRequest;
use crate::settings::ServiceContainer;
use crate::stack::Docker;
use crate::state::{BackendMap, Command, ContainerChange, StateError};

/// Collects steps and their timings.
#[derive(Default)]
pub(super) struct Steps {
    steps: Vec<DeployStep>,
    phases: BTreeMap<&'static str, Duration>,
}

impl Steps {
    pub(super) fn record(&mut self, step: &'static str, service: Option<&ServiceName>, detail: String, took: Duration) {
        log::info!("deploy: {step}{} {detail} ({took:?})", service.map(|s| format!(" {s}")).unwrap_or_default());
        *self.phases.entry(step).or_default() += took;
        self.steps.push(DeployStep { step: step.into(), service: service.map(ToString::to_string), detail, ms: took.as_secs_f64() * 1e3 });
    }

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
pub(super) struct Stop {
    pub engine_failed: bool,
    pub error: String,
    pub logs: Vec<String>,
    pub report: Option<Box<Report>>,
}

impl Stop {
    pub(super) fn refused(error: impl ToString) -> Self {
        Stop { engine_failed: false, error: error.to_string(), logs: Vec::new(), report: None }
    }

    fn engine(error: &DockerError) -> Self {
        let engine_failed = !matches!(
            error,
            DockerError::Pull { .. }
                | DockerError::Exited { .. }
                | DockerError::NotStarted { .. }
                | DockerError::Unhealthy { .. }
                | DockerError::HealthTimeout { .. }
                | DockerError::Mismatch { .. }
                | DockerError::NotManaged { .. }
                | DockerError::TagMismatch { .. }
                | DockerError::NoTag { .. }
        );
        Stop { engine_failed, error: error.to_string(), logs: error.logs().to_vec(), report: None }
    }

    fn failure(self, steps: Vec<DeployStep>) -> ControlError {
        let Stop { engine_failed, error, logs, report } = self;
        ControlError::Deploy(Box::new(DeployFailure { engine_failed, error, steps, logs, report: report.map(|r| *r) }))
    }
}

/// A container this deploy touched, and how to undo that.
pub(super) struct Touched {
    pub name: String,
    /// Created by this deploy (removed on failure), else adopted.
    pub created: bool,
    /// Was running before (left running on failure).
    pub was_running: bool,
}

impl Controller {
    /// Deploys `req.release`: image present (pulled with progress) → one
    /// container per service with `image`, named by the address template,
    /// created (or adopted) and started on the stack network → healthy
    /// within `deploy-timeout` → registered with the containers' addresses →
    /// the validated flip (checks, switch, the old release's `overlap =
    /// false` containers stopped). One at a time with switches and
    /// rollbacks (409). On any failure nothing live changes: the release is
    /// unregistered (unless it was registered before) and the containers
    /// this deploy created are removed (kept with `keep_failed`), those it
    /// started stopped again.
    pub async fn deploy(&self, req: DeployRequest, actor: &str) -> Result<DeployReply, ControlError> {
        let docker = self.docker()?;
        let one = self.flip_lock()?;
        // a retirement stopping containers finishes first (and records it)
        let _containers = self.containers.lock().await;
        let started = Instant::now();
        let release = req.release.clone();
        let was_registered = {
            let st = self.state.lock().await;
            if st.live.as_ref() == Some(&release) {
                return Err(StateError::AlreadyLive { name: release }.into());
            }
            if let Some(running) = &st.deploying {
                return Err(ControlError::Conflict(format!(
                    "a deploy of release `{running}` is in progress, or was interrupted by a restart and is cleaned up once the Docker engine answers"
                )));
            }
            st.releases.contains_key(&release)
        };
        let engine = match Engine::connect(&docker.settings.socket).await {
            Ok(engine) => engine,
            Err(e) => {
                docker.deploys.with_label_values(&["failed"]).inc();
                return Err(Stop::engine(&e).failure(Vec::new()));
            }
        };
        {
            let mut st = self.state.lock().await;
            self.commit(&mut st, vec![Command::DeployStarted { release: release.clone() }], actor, &[]).await?;
        }
        let mut steps = Steps::default();
        let mut touched = Vec::new();
        let outcome = self.deploy_steps(&one, docker, &engine, &req, actor, &mut steps, &mut touched).await;
        let total = started.elapsed();
        let (result, ended) = match outcome {
            Ok(reply) => {
                let detail = format!("{} steps in {:.0} ms", steps.steps.len(), total.as_secs_f64() * 1e3);
                // its containers run again: read `stopped` now, not at the start (the
                // retirement that stopped them may have been recorded during this deploy)
                (Ok(reply), vec![Command::DeployEnded { release: release.clone(), result: "ok".into(), detail }])
            }
            Err(stop) => {
                let result = if stop.engine_failed { "failed" } else { "refused" };
                log::warn!("deploy of {release} {result}: {}", stop.error);
                self.undo(&engine, &release, was_registered, &touched, req.keep_failed, actor).await;
                let ended = Command::DeployEnded { release: release.clone(), result: result.into(), detail: first_line(&stop.error) };
                (Err((result, stop)), vec![ended])
            }
        };
        {
            let mut st = self.state.lock().await;
            let mut ended = ended;
            if result.is_ok() && st.stopped.contains(&release) {
                ended.insert(0, Command::Containers { release: release.clone(), change: ContainerChange::Started });
            }
            if let Err(e) = self.commit(&mut st, ended, actor, &[]).await {
                log::error!("recording the end of the deploy of {release}: {e}");
            }
        }
        match result {
            Ok(flip) => {
                docker.deploys.with_label_values(&["ok"]).inc();
                for (phase, took) in &steps.phases {
                    docker.phases.with_label_values(&[phase]).observe(took.as_secs_f64());
                }
                docker.phases.with_label_values(&["total"]).observe(total.as_secs_f64());
                let FlipReply { previous, generation, report, rollback_ready, warnings, canary, .. } = flip;
                // with a canary, nothing flipped: the live release stays (it is not "previous")
                let previous = if canary.is_some() { None } else { previous.map(|p| p.release) };
                Ok(DeployReply {
                    release,
                    previous,
                    generation,
                    steps: steps.steps,
                    report,
                    duration_ms: total.as_secs_f64() * 1e3,
                    rollback_ready,
                    warnings,
                    canary,
                })
            }
            Err((result, stop)) => {
                docker.deploys.with_label_values(&[result]).inc();
                Err(stop.failure(steps.steps))
            }
        }
    }

    /// The steps of a deploy; on `Err` the caller undoes what `touched` lists.
    #[allow(clippy::too_many_arguments)]
    async fn deploy_steps(
        &self,
        one: &FlipGuard<'_>,
        docker: &Docker,
        engine: &Engine,
        req: &DeployRequest,
        actor: &str,
        steps: &mut Steps,
        touched: &mut Vec<Touched>,
    ) -> Result<FlipReply, Stop> {
        // here, and in a fleet on every other node at once
        let everywhere = self.prepare_everywhere(docker, engine, req, actor, steps, touched).await?;
        let flipped = self.flip_deployed(one, req, actor, steps).await;
        if let Some((id, others)) = &everywhere {
            self.end_everywhere(id, others, flipped.is_ok()).await;
        }
        flipped
    }

    /// A deploy's own containers on this node: network, images, containers
    /// created (or adopted) and started, healthy, registered (in a fleet,
    /// as this node's backends of the release).
    pub(super) async fn prepare_here(
        &self,
        docker: &Docker,
        engine: &Engine,
        release: &ReleaseName,
        actor: &str,
        steps: &mut Steps,
        touched: &mut Vec<Touched>,
    ) -> Result<(), Stop> {
        let settings = &docker.settings;
        let deadline = Instant::now() + settings.deploy_timeout;
        let services = self.run_services(docker);
        if services.is_empty() {
            return Err(Stop::refused(format!("no service has `image` in {}: nothing to deploy", self.config_file())));
        }

        let clock = Instant::now();
        let network = steps.check("network", None, clock, engine.ensure_network(&settings.network).await)?;
        steps.record("network", None, format!("{} {network:?}", settings.network).to_lowercase(), clock.elapsed());

        for s in &services {
            let reference = format!("{}:{release}", s.container.repository);
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
            let status = steps.check("pull", Some(&s.name), clock, status)?;
            let detail = match status {
                ImageStatus::Present => format!("{reference} present"),
                ImageStatus::Pulled => format!("{reference} pulled ({lines} progress lines; last: {last})"),
            };
            steps.record("pull", Some(&s.name), detail, clock.elapsed());
        }

        let mut names = Vec::new();
        for s in &services {
            let name = self.container_name(&s.name, release);
            let spec = spec(&name, s, release, &settings.network);
            let clock = Instant::now();
            let created = steps.check("create", Some(&s.name), clock, engine.create(&spec).await)?;
            let was_running = created.adopted && created.state == ContainerState::Running;
            touched.push(Touched { name: name.clone(), created: !created.adopted, was_running });
            let detail = if created.adopted { format!("{name} adopted ({})", created.state) } else { format!("{name} created") };
            steps.record("create", Some(&s.name), detail, clock.elapsed());
            names.push(name);
        }
        for (s, name) in services.iter().zip(&names) {
            let clock = Instant::now();
            let started = steps.check("start", Some(&s.name), clock, engine.start(name).await)?;
            let detail = if started { format!("{name} started") } else { format!("{name} running") };
            steps.record("start", Some(&s.name), detail, clock.elapsed());
        }
        for (s, name) in services.iter().zip(&names) {
            let clock = Instant::now();
            let left = deadline.saturating_duration_since(Instant::now());
            let ready = steps.check("healthy", Some(&s.name), clock, engine.wait_healthy(name, left).await)?;
            steps.record("healthy", Some(&s.name), format!("{name} {ready:?}").to_lowercase(), clock.elapsed());
        }

        let clock = Instant::now();
        let mut backends = BackendMap::new();
        for (s, name) in services.iter().zip(&names) {
            let ip = engine.address(name, &settings.network).await.map_err(|e| Stop::engine(&e))?;
            backends.insert(s.name.clone(), vec![Endpoint::from_addr(SocketAddr::new(ip, s.port))]);
        }
        let listed: Vec<String> = backends.iter().map(|(s, e)| format!("{s}={}", e[0])).collect();
        // a service canopy does not run may not resolve: the checks step names it
        self.register(release.clone(), backends, true, actor).await.map_err(Stop::refused)?;
        steps.record("register", None, listed.join(", "), clock.elapsed());
        Ok(())
    }

    /// A deploy's flip once its containers are ready (everywhere): a switch, a
    /// paused switch or a canary, with its steps recorded.
    async fn flip_deployed(&self, one: &FlipGuard<'_>, req: &DeployRequest, actor: &str, steps: &mut Steps) -> Result<FlipReply, Stop> {
        let release = &req.release;
        // the one flip routine: checks, durable switch, the old release's overlap = false containers stopped
        let clock = Instant::now();
        let guard = req.guard.unwrap_or(true) && self.rt().settings.guard.enabled;
        let flipped = match (&req.canary, req.pause) {
            (Some(steps), _) => self.start_canary(one, release.clone(), steps.clone(), guard, actor).await,
            // held around the migration and the flip, as `switch --pause`
            (None, Some(max)) => self.paused_flip(one, Flip::switch(release.clone(), None, false, guard), release, max, actor).await,
            (None, None) => self.validated_flip(one, Flip::switch(release.clone(), None, false, guard), actor).await,
        };
        match flipped {
            Ok(reply) if reply.canary.is_some() => {
                let canary = reply.canary.as_ref().expect("a canary");
                let detail = format!("{}% of the traffic to {release} (steps {:?})", canary.weight, canary.steps);
                steps.record("canary", None, detail, clock.elapsed());
                Ok(reply)
            }
            Ok(reply) => {
                let validation = Duration::from_secs_f64(reply.validation_ms / 1e3);
                let summary = reply.report.as_ref().map_or_else(String::new, Report::summary);
                steps.record("checks", None, summary, validation.min(clock.elapsed()));
                let detail = format!("live: {release} (generation {})", reply.generation);
                steps.record("switch", None, detail, clock.elapsed().saturating_sub(validation));
                for c in reply.containers.iter().filter(|c| c.action == "stop") {
                    let service = ServiceName::parse(&c.service).ok();
                    let took = Duration::from_secs_f64(c.ms / 1e3);
                    steps.record("stop", service.as_ref(), format!("{} stopped (overlap = false)", c.name), took);
                }
                Ok(reply)
            }
            Err(ControlError::Validation(report)) => {
                steps.record("checks", None, report.summary(), clock.elapsed());
                let error = format!("validation of release `{release}` failed: {}", report.summary());
                Err(Stop { engine_failed: false, error, logs: Vec::new(), report: Some(report) })
            }
            Err(e) => {
                steps.record("switch", None, format!("FAILED: {e}"), clock.elapsed());
                let engine_failed = matches!(e, ControlError::Persist(_));
                Err(Stop { engine_failed, error: e.to_string(), logs: Vec::new(), report: None })
            }
        }
    }

    /// Undoes a failed deploy: unregisters the release (unless it was
    /// registered before) and removes the containers it created (stops those
    /// it started), or with `keep_failed` leaves them for inspection.
    pub(super) async fn undo(
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
                if let Err(e) = self.commit(&mut st, vec![Command::Retire { name: release.clone() }], actor, &[]).await {
                    log::error!("unregistering the failed release {release}: {e}");
                }
            }
        }
        if keep_failed {
            log::info!("deploy of {release} failed; --keep-failed: its containers stay for inspection");
            return;
        }
        let stop_timeout = self.docker.as_ref().map_or(Duration::from_secs(10), |d| d.settings.stop_timeout);
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
            if let Err(e) = self.commit(&mut st, vec![cmd], actor, &[]).await {
                log::error!("recording the cleanup of {release}: {e}");
            }
        }
    }
}

fn spec(name: &str, s: &RunService, release: &ReleaseName, network: &str) -> ContainerSpec {
    let c: &ServiceContainer = s.container;
    let mut spec = ContainerSpec::new(name, &c.repository, release.as_str(), s.name.as_str(), network);
    spec.env = c.env.clone();
    spec.binds = c.volumes.clone();
    spec.command = c.command.clone();
    spec.user = c.user.clone();
    spec.healthcheck = c.healthcheck.clone();
    spec.memory_bytes = c.memory_bytes;
    spec.cpus = c.cpus;
    spec
}
