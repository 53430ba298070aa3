//! Discovery: a live picture of this stack's containers (listed when the
//! engine answers, then followed through its events stream), and recovery
//! from a deploy that canopy did not finish (killed mid-way).

use std::time::Duration;

use canopy_docker::{Engine, ManagedContainer};
use canopy_proxy::{ReleaseName, ServiceName};
use futures_util::StreamExt;

use super::deploy::Touched;
use super::Controller;
use crate::replies::ContainerView;
use crate::stack::Docker;
use crate::state::Command;

impl Controller {
    /// Cleans up after a deploy that canopy did not finish (killed mid-way):
    /// the release is unregistered unless live, its containers removed (or
    /// stopped, when it was a kept release), and the deploy recorded as
    /// failed. Returns false when it could not start (a flip runs, or an
    /// upgrade holds changes): [`Self::run_discovery`] tries again.
    async fn recover(&self, engine: &Engine) -> bool {
        let Some(docker) = self.docker.as_ref() else { return true };
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
                .run_services(docker)
                .iter()
                .map(|s| Touched { name: self.container_name(&s.name, &release), created: !kept, was_running: false })
                .collect();
            self.undo(engine, &release, false, &touched, false, actor).await;
            "canopy restarted mid-deploy; the release's containers were cleaned up".to_string()
        };
        log::warn!("deploy of {release} was interrupted: {detail}");
        let result = if live { "ok" } else { "failed" };
        let mut st = self.state.lock().await;
        let cmd = Command::DeployEnded { release, result: result.into(), detail };
        if let Err(e) = self.commit(&mut st, vec![cmd], actor, &[]).await {
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
        let Some(docker) = self.docker.as_ref() else { return };
        tokio::join!(self.recover_when_possible(docker, shutdown.clone()), self.follow_containers(docker, shutdown));
    }

    /// The discovery half of [`Self::run_discovery`].
    async fn follow_containers(&self, docker: &Docker, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            let engine = match Engine::connect(&docker.settings.socket).await {
                Ok(engine) => engine,
                Err(e) => {
                    self.publish_containers(docker, Err(e.to_string()));
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = shutdown.changed() => return,
                    }
                }
            };
            let since = std::time::SystemTime::now();
            match engine.list_managed(&docker.settings.network).await {
                Ok(list) => self.publish_containers(docker, Ok(list)),
                Err(e) => self.publish_containers(docker, Err(e.to_string())),
            }
            let mut events = engine.events(Some(since));
            loop {
                tokio::select! {
                    event = events.next() => match event {
                        Some(Ok(event)) if self.is_ours(docker, &event.name) => {
                            match engine.list_managed(&docker.settings.network).await {
                                Ok(list) => self.publish_containers(docker, Ok(list)),
                                Err(e) => self.publish_containers(docker, Err(e.to_string())),
                            }
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => {
                            self.publish_containers(docker, Err(e.to_string()));
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

    /// The release and service of container `name`: the address template
    /// read backwards, for the services canopy runs.
    fn release_of(&self, docker: &Docker, name: &str) -> Option<(ReleaseName, ServiceName)> {
        let template = self.topology().template().clone();
        self.run_services(docker).into_iter().find_map(|s| template.release_of(&s.name, name).map(|release| (release, s.name)))
    }

    /// Adopts a listing of the engine (or why it failed) as what discovery knows.
    fn publish_containers(&self, docker: &Docker, listed: Result<Vec<ManagedContainer>, String>) {
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
}
