//! The containers canopy runs (with `[docker]`): their settings, the
//! `overlap = false` containers every flip starts and stops, what a
//! retirement does to a release's containers, and how they show in
//! `/status` and in a failed check's reason.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use canopy_docker::{ContainerState, DockerError, Engine};
use canopy_proxy::{Endpoint, Release, ReleaseName, ServiceName};

use super::{resolve, Controller};
use crate::error::ControlError;
use crate::replies::{ContainerStep, ContainerView, Discovered};
use crate::report::Report;
use crate::settings::ServiceContainer;
use crate::stack::Docker;
use crate::state::{Command, ContainerChange, State};
use crate::view::ReleaseContainer;

/// A service canopy runs: its topology index, name, port and settings.
pub(super) struct RunService<'a> {
    pub index: usize,
    pub name: ServiceName,
    pub port: u16,
    pub container: &'a ServiceContainer,
}

/// What a flip started before its checks: the containers (to stop again
/// if it is refused), and the release re-resolved when one came back with
/// another address than the one registered.
#[derive(Default)]
pub(crate) struct Started {
    pub started: Vec<(ServiceName, String, Duration)>,
    pub readdressed: Option<Arc<Release>>,
}

impl Started {
    /// Nothing was started.
    pub fn is_empty(&self) -> bool {
        self.started.is_empty()
    }

    /// The starts, as the flip's reply lists them.
    pub fn steps(&self) -> Vec<ContainerStep> {
        self.started.iter().map(|(service, name, took)| step("start", service, name, *took)).collect()
    }
}

fn step(action: &str, service: &ServiceName, name: &str, took: Duration) -> ContainerStep {
    ContainerStep { action: action.into(), service: service.to_string(), name: name.to_string(), ms: took.as_secs_f64() * 1e3 }
}

/// Why a container canopy runs for `release` is not running.
fn why_not_running(st: &State, release: &ReleaseName, overlap: bool, c: &ContainerView) -> String {
    if st.stopped.contains(release) {
        "stopped (retired; kept for a fast redeploy)".into()
    } else if !overlap && st.live.as_ref() != Some(release) {
        "stopped (overlap = false)".into()
    } else {
        match (c.state, c.exit_code) {
            (ContainerState::Exited, Some(code)) => format!("exited with code {code}"),
            (state, _) => state.to_string(),
        }
    }
}

impl Controller {
    /// The container half, or why `what` needs `[docker]`.
    pub(super) fn docker(&self) -> Result<&Docker, ControlError> {
        self.docker.as_ref().ok_or_else(|| {
            ControlError::NotEnabled(format!("deploy needs a [docker] section and services with `image` in {}", self.config_file()))
        })
    }

    /// The container of `service` of `release`: the address template's host.
    pub(super) fn container_name(&self, service: &ServiceName, release: &ReleaseName) -> String {
        self.topology().template().render(service, release)
    }

    /// The services canopy runs, in topology order.
    pub(super) fn run_services<'a>(&self, docker: &'a Docker) -> Vec<RunService<'a>> {
        self.topology()
            .services()
            .iter()
            .zip(&docker.settings.services)
            .enumerate()
            .filter_map(|(index, (s, c))| c.as_ref().map(|container| RunService { index, name: s.name.clone(), port: s.port, container }))
            .collect()
    }

    /// The topology indices of `release`'s `overlap = false` services whose
    /// containers exist and are not running (stopped by canopy when another
    /// release went live).
    pub(super) fn stopped_exclusive(&self, release: &ReleaseName) -> Vec<usize> {
        let (Some(docker), Some(discovered)) = (&self.docker, self.discovered()) else { return Vec::new() };
        self.run_services(docker)
            .into_iter()
            .filter(|s| !s.container.overlap)
            .filter(|s| {
                let name = self.container_name(&s.name, release);
                discovered.containers.iter().any(|c| c.name == name && c.state != ContainerState::Running)
            })
            .map(|s| s.index)
            .collect()
    }

    /// What discovery knows (`None` without `[docker]`).
    pub fn discovered(&self) -> Option<Discovered> {
        self.docker.as_ref().map(|d| d.discovered.lock().expect("discovered lock").clone())
    }

    /// Before a flip to `release`: starts its stopped `overlap = false`
    /// containers and waits until each is ready, so that the checks see
    /// them. Containers that do not exist (a release registered by hand) are
    /// skipped, and so, logged, is everything when the engine cannot be
    /// reached (the checks then decide). A container that does not come up
    /// refuses the flip, after stopping what was started.
    pub(super) async fn start_exclusive(&self, release: &Arc<Release>) -> Result<Started, ControlError> {
        let mut start = Started::default();
        let Some(docker) = &self.docker else { return Ok(start) };
        let exclusive: Vec<RunService> = self.run_services(docker).into_iter().filter(|s| !s.container.overlap).collect();
        if exclusive.is_empty() {
            return Ok(start);
        }
        let name = release.name();
        let engine = match Engine::connect(&docker.settings.socket).await {
            Ok(engine) => engine,
            Err(e) => {
                log::error!("flip to {name}: cannot start its overlap = false containers: {e}");
                return Ok(start);
            }
        };
        let mut backends = release.explicit().clone();
        for service in &exclusive {
            let container = self.container_name(&service.name, name);
            let clock = Instant::now();
            let result = match engine.start(&container).await {
                Ok(true) => engine.wait_healthy(&container, docker.settings.deploy_timeout).await.map(|_| true),
                other => other,
            };
            match result {
                Ok(true) => {
                    log::info!("flip to {name}: started {container} (overlap = false)");
                    start.started.push((service.name.clone(), container.clone(), clock.elapsed()));
                }
                Ok(false) | Err(DockerError::NotFound { .. }) => continue,
                Err(e) => {
                    self.stop_containers(&start.started).await;
                    if !matches!(e, DockerError::Engine { .. }) {
                        // it was started, then failed to come up
                        let _ = engine.stop(&container, docker.settings.stop_timeout).await;
                    }
                    let error = format!("flip to {name}: {}", first_line(&e.to_string()).trim_end_matches("; its last log lines:"));
                    return Err(ControlError::Containers { error, logs: e.logs().to_vec() });
                }
            }
            // a restarted container may have another address than the one registered
            let explicit = backends.get(&service.name).cloned();
            if let (Some(registered), Ok(ip)) = (explicit, engine.address(&container, &docker.settings.network).await) {
                let now = Endpoint::from_addr(SocketAddr::new(ip, service.port));
                if registered != [now.clone()] {
                    log::info!("flip to {name}: {container} came back at {now}");
                    backends.insert(service.name.clone(), vec![now]);
                }
            }
        }
        if &backends != release.explicit() {
            match resolve(&self.topology(), &self.table, name, &backends).await {
                Ok(fresh) => start.readdressed = Some(fresh),
                Err(e) => {
                    self.stop_containers(&start.started).await;
                    return Err(e);
                }
            }
        }
        Ok(start)
    }

    /// After a flip away from `release`: stops its `overlap = false`
    /// containers. Failures are logged (the flip has happened).
    pub(super) async fn stop_exclusive(&self, release: &ReleaseName) -> Vec<ContainerStep> {
        let Some(docker) = &self.docker else { return Vec::new() };
        let exclusive: Vec<(ServiceName, String)> = self
            .run_services(docker)
            .into_iter()
            .filter(|s| !s.container.overlap)
            .map(|s| (s.name.clone(), self.container_name(&s.name, release)))
            .collect();
        if exclusive.is_empty() {
            return Vec::new();
        }
        let engine = match Engine::connect(&docker.settings.socket).await {
            Ok(engine) => engine,
            Err(e) => {
                log::error!("overlap = false: cannot stop the containers of {release}: {e}");
                return Vec::new();
            }
        };
        let mut steps = Vec::new();
        for (service, name) in exclusive {
            let clock = Instant::now();
            match engine.stop(&name, docker.settings.stop_timeout).await {
                Ok(()) => {
                    log::info!("stopped {name} (overlap = false)");
                    steps.push(step("stop", &service, &name, clock.elapsed()));
                }
                Err(DockerError::NotFound { .. }) => {}
                Err(e) => log::error!("overlap = false: stopping {name}: {e}"),
            }
        }
        steps
    }

    /// Stops containers a refused flip started (errors logged).
    pub(super) async fn stop_containers(&self, started: &[(ServiceName, String, Duration)]) {
        let Some(docker) = &self.docker else { return };
        if started.is_empty() {
            return;
        }
        let engine = match Engine::connect(&docker.settings.socket).await {
            Ok(engine) => engine,
            Err(e) => return log::error!("cannot stop again the containers a refused flip started: {e}"),
        };
        for (_, name, _) in started {
            match engine.stop(name, docker.settings.stop_timeout).await {
                Ok(()) => log::info!("stopped {name} again: the flip it was started for was refused"),
                Err(e) => log::error!("stopping {name} after a refused flip: {e}"),
            }
        }
    }

    /// Adds to each failed check of `report` the state of the container
    /// behind it when that container is not running (`vendure-worker--elm is
    /// stopped (overlap = false)`), so a timeout names its cause. Asks the
    /// engine (discovery may lag a start or stop by a moment).
    pub(super) async fn explain_stopped(&self, report: &mut Report) {
        let Some(docker) = &self.docker else { return };
        if report.passed {
            return;
        }
        let services = self.run_services(docker);
        let failed: Vec<usize> = (0..report.checks.len())
            .filter(|&i| !report.checks[i].passed && services.iter().any(|s| s.name == report.checks[i].service))
            .collect();
        if failed.is_empty() {
            return;
        }
        let Ok(engine) = Engine::connect(&docker.settings.socket).await else { return };
        let st = self.state.lock().await.clone();
        for i in failed {
            let Some(service) = services.iter().find(|s| s.name == report.checks[i].service) else { continue };
            let name = self.container_name(&service.name, &report.release);
            let Ok((state, health, exit_code)) = engine.state(&name).await else { continue };
            if state != ContainerState::Running {
                let view = ContainerView {
                    name: name.clone(),
                    release: report.release.to_string(),
                    service: service.name.to_string(),
                    image: String::new(),
                    tag: None,
                    state,
                    health,
                    exit_code,
                    ip: None,
                    problem: None,
                };
                let why = why_not_running(&st, &report.release, service.container.overlap, &view);
                let check = &mut report.checks[i];
                check.reason = format!("{}; {name} is {why}", check.reason);
            }
        }
    }

    /// The containers canopy runs for `release` as discovery sees them, with
    /// why those not running are not.
    pub(super) fn release_containers(&self, st: &State, release: &ReleaseName, discovered: &Discovered) -> Vec<ReleaseContainer> {
        let Some(docker) = &self.docker else { return Vec::new() };
        self.run_services(docker)
            .into_iter()
            .filter_map(|s| {
                let name = self.container_name(&s.name, release);
                let c = discovered.containers.iter().find(|c| c.name == name)?;
                let why = (c.state != ContainerState::Running).then(|| why_not_running(st, release, s.container.overlap, c));
                Some(ReleaseContainer { service: s.name.to_string(), name, state: c.state, health: c.health, why })
            })
            .collect()
    }

    /// Problems a user should see at once: the engine away, containers of
    /// the live release that are not running (an `overlap = false` one
    /// included: the live release's must run), and refused containers.
    pub(super) fn container_alerts(&self, st: &State, discovered: &Discovered) -> Vec<String> {
        let mut alerts = Vec::new();
        if discovered.engine != "ok" {
            alerts.push(format!("Docker engine: {}", discovered.engine));
        }
        let Some(docker) = &self.docker else { return alerts };
        // a live release without any container is not run by canopy (registered by hand)
        let runs = |release: &ReleaseName| discovered.containers.iter().any(|c| c.release == release.as_str());
        if let Some(live) = st.live.clone().filter(runs) {
            for s in self.run_services(docker) {
                let name = self.container_name(&s.name, &live);
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

    /// After a release is retired: stops its containers (kept for a fast
    /// redeploy), then removes the oldest stopped releases beyond
    /// `keep-releases`. A no-op without `[docker]`; engine errors are logged.
    pub(super) async fn containers_retired(&self, release: &ReleaseName, actor: &str) {
        let Some(docker) = &self.docker else { return };
        let _containers = self.containers.lock().await;
        if self.state.lock().await.releases.contains_key(release) {
            log::info!("retired release {release} was deployed again meanwhile: its containers keep running");
            return;
        }
        let engine = match Engine::connect(&docker.settings.socket).await {
            Ok(engine) => engine,
            Err(e) => {
                log::error!("cannot stop the containers of retired release {release}: {e}");
                return;
            }
        };
        let names: Vec<String> = self.run_services(docker).iter().map(|s| self.container_name(&s.name, release)).collect();
        let mut any = false;
        for name in &names {
            match engine.stop(name, docker.settings.stop_timeout).await {
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
        if let Err(e) = self.commit(&mut st, vec![cmd], actor, &[]).await {
            log::error!("recording the stop of {release}: {e}");
        }
        let excess = st.stopped.len().saturating_sub(docker.settings.keep_releases);
        // (a stopped release is never registered: a deploy that restarts it records that first)
        let prune: Vec<ReleaseName> = st.stopped.iter().take(excess).filter(|r| !st.releases.contains_key(*r)).cloned().collect();
        drop(st);
        for old in prune {
            for s in self.run_services(docker) {
                let name = self.container_name(&s.name, &old);
                if let Err(e) = engine.remove(&name).await {
                    log::error!("pruning {name}: {e}");
                }
            }
            log::info!("pruned release {old}: more than {} stopped releases", docker.settings.keep_releases);
            let mut st = self.state.lock().await;
            let cmd = Command::Containers { release: old.clone(), change: ContainerChange::Removed };
            if let Err(e) = self.commit(&mut st, vec![cmd], "canopy (keep-releases)", &[]).await {
                log::error!("recording the removal of {old}: {e}");
            }
        }
    }
}

/// The first line of a message (engine errors carry log lines after it).
pub(super) fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_string()
}
