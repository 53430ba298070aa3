//! Lifecycle: create (or adopt), start, stop and remove one container; its address and logs.

use std::net::IpAddr;
use std::time::Duration;

use bollard::models::ContainerInspectResponse;
use bollard::query_parameters::{CreateContainerOptions, LogsOptions, RemoveContainerOptions, StopContainerOptions};
use futures_util::StreamExt;

use crate::discovery::{ip_on, labels_of, status_of_container, ContainerState};
use crate::engine::Engine;
use crate::error::{status_of, DockerError};
use crate::spec::{check_release_tag, ContainerSpec, LABEL_MANAGED, LABEL_RELEASE, LABEL_SERVICE};

/// What [`Engine::create`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    /// The container's id.
    pub id: String,
    /// `true` when a container made earlier for the same spec was found and
    /// kept (a restarted or repeated deploy); `false` when created now.
    pub adopted: bool,
    /// Its state: `Created` when new; whatever it was when adopted (a
    /// stopped release is `Exited`, a running one `Running`).
    pub state: ContainerState,
}

impl Engine {
    /// Creates the container `spec` describes, without starting it. Called
    /// after [`Engine::ensure_network`] and [`Engine::ensure_image`].
    ///
    /// Idempotent: when a container of that name exists, carries
    /// `canopy.managed=true`, the same release, service and image reference
    /// and is on `spec.network`, it is adopted as it is ([`Created::adopted`]);
    /// its other settings are not compared. A container of that name without
    /// the label is [`DockerError::NotManaged`], one made for something else is
    /// [`DockerError::Mismatch`]. A spec whose image tag is not its release is
    /// refused before the engine is asked ([`DockerError::TagMismatch`]).
    pub async fn create(&self, spec: &ContainerSpec) -> Result<Created, DockerError> {
        check_release_tag(&spec.name, &spec.image, &spec.release)?;
        // Twice at most: a container made by someone else between our inspect
        // and our create (409) is inspected again and adopted or refused.
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.docker.inspect_container(&spec.name, None).await {
                Ok(existing) => return adopt(spec, existing),
                Err(err) if status_of(&err) == Some(404) => {}
                Err(source) => return Err(engine_error(&spec.name, "inspect", source)),
            }
            let options = CreateContainerOptions { name: Some(spec.name.clone()), ..Default::default() };
            match self.docker.create_container(Some(options), spec.to_create_body()).await {
                Ok(created) => {
                    log::info!("created container {} from {}", spec.name, spec.image);
                    return Ok(Created { id: created.id, adopted: false, state: ContainerState::Created });
                }
                Err(err) if status_of(&err) == Some(409) && attempts < 2 => {}
                Err(source) => return Err(engine_error(&spec.name, "create", source)),
            }
        }
    }

    /// Starts the canopy container `name`; already running is fine. Called
    /// after [`Engine::create`], and to bring a stopped release back (a
    /// redeploy of a kept release takes only this, and so does a flip to a
    /// release whose `overlap = false` container canopy stopped). Returns
    /// once the engine has started the process, with `true` when this call
    /// started it and `false` when it was running already; readiness is
    /// [`Engine::wait_healthy`]'s job.
    pub async fn start(&self, name: &str) -> Result<bool, DockerError> {
        let inspect = self.inspect_managed(name).await?;
        if status_of_container(&inspect).0 == ContainerState::Running {
            return Ok(false);
        }
        match self.docker.start_container(name, None).await {
            Ok(()) => Ok(true),
            Err(err) if status_of(&err) == Some(304) => Ok(false),
            Err(source) => Err(engine_error(name, "start", source)),
        }
    }

    /// Stops the canopy container `name`: SIGTERM (or the image's stop
    /// signal), SIGKILL after `timeout` (rounded up to whole seconds). The
    /// container, its writable layer and logs are kept, so [`Engine::start`]
    /// brings it back in a second. Already stopped is fine.
    pub async fn stop(&self, name: &str, timeout: Duration) -> Result<(), DockerError> {
        self.inspect_managed(name).await?;
        let seconds = timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0);
        let options = StopContainerOptions { t: Some(i32::try_from(seconds).unwrap_or(i32::MAX)), signal: None };
        // The engine answers only once the container is down: wait longer than it may take.
        let docker = self.docker.clone().with_timeout(Duration::from_secs(seconds + 60));
        match docker.stop_container(name, Some(options)).await {
            Ok(()) => {
                log::info!("stopped container {name}");
                Ok(())
            }
            Err(err) if status_of(&err) == Some(304) => Ok(()),
            Err(source) => Err(engine_error(name, "stop", source)),
        }
    }

    /// Removes the canopy container `name`, killing it first if it runs, with
    /// its anonymous volumes (named volumes and binds stay). Called to prune
    /// releases beyond `keep-releases` and to clean up a failed deploy.
    /// Returns `false` when there was no such container (idempotent).
    pub async fn remove(&self, name: &str) -> Result<bool, DockerError> {
        match self.inspect_managed(name).await {
            Ok(_) => {}
            Err(DockerError::NotFound { .. }) => return Ok(false),
            Err(err) => return Err(err),
        }
        let options = RemoveContainerOptions { force: true, v: true, link: false };
        match self.docker.remove_container(name, Some(options)).await {
            Ok(()) => {
                log::info!("removed container {name}");
                Ok(true)
            }
            Err(err) if status_of(&err) == Some(404) => Ok(false),
            Err(source) => Err(engine_error(name, "remove", source)),
        }
    }

    /// The IP of container `name` on `network`: the backend address canopy
    /// proxies to (with the service's port), reachable from the host and from
    /// any container on that network. [`DockerError::NoAddress`] when it is
    /// not attached there or not running (a stopped container has no IP).
    pub async fn address(&self, name: &str, network: &str) -> Result<IpAddr, DockerError> {
        let inspect = self.inspect(name).await?;
        ip_on(&inspect, network).ok_or_else(|| DockerError::NoAddress { container: name.to_string(), network: network.to_string() })
    }

    /// The last `lines` lines of container `name`'s stdout and stderr,
    /// interleaved as written. The failure errors of
    /// [`Engine::wait_healthy`] carry these already; this is for showing
    /// them at other times.
    pub async fn logs_tail(&self, name: &str, lines: usize) -> Result<Vec<String>, DockerError> {
        let options = LogsOptions { stdout: true, stderr: true, tail: lines.to_string(), ..Default::default() };
        self.read_logs(name, lines, options).await
    }

    async fn read_logs(&self, name: &str, lines: usize, options: LogsOptions) -> Result<Vec<String>, DockerError> {
        let mut stream = self.docker.logs(name, Some(options));
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.next().await {
            bytes.extend_from_slice(&chunk.map_err(|source| engine_error(name, "read logs", source))?.into_bytes());
        }
        let text = String::from_utf8_lossy(&bytes);
        let all: Vec<&str> = text.lines().collect();
        Ok(all[all.len().saturating_sub(lines)..].iter().map(|line| line.to_string()).collect())
    }

    /// The state, health and (when stopped) exit code of container `name`,
    /// as the engine reports it now.
    pub async fn state(&self, name: &str) -> Result<(ContainerState, crate::Health, Option<i64>), DockerError> {
        Ok(status_of_container(&self.inspect(name).await?))
    }

    /// [`Self::logs_tail`] of what the container wrote since `since` (a
    /// restarted container's earlier runs left out).
    pub async fn logs_since(&self, name: &str, lines: usize, since: std::time::SystemTime) -> Result<Vec<String>, DockerError> {
        let secs = since.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let options = LogsOptions {
            stdout: true,
            stderr: true,
            tail: lines.to_string(),
            since: i32::try_from(secs).unwrap_or(0),
            ..Default::default()
        };
        self.read_logs(name, lines, options).await
    }

    pub(crate) async fn inspect(&self, name: &str) -> Result<ContainerInspectResponse, DockerError> {
        self.docker.inspect_container(name, None).await.map_err(|source| engine_error(name, "inspect", source))
    }

    /// Inspects `name`, refusing a container canopy did not make.
    async fn inspect_managed(&self, name: &str) -> Result<ContainerInspectResponse, DockerError> {
        let inspect = self.inspect(name).await?;
        if labels_of(&inspect).get(LABEL_MANAGED).map(String::as_str) != Some("true") {
            return Err(DockerError::NotManaged { container: name.to_string() });
        }
        Ok(inspect)
    }
}

/// An engine failure about container `name`; 404 becomes [`DockerError::NotFound`].
pub(crate) fn engine_error(name: &str, action: &'static str, source: bollard::errors::Error) -> DockerError {
    if status_of(&source) == Some(404) && matches!(action, "inspect" | "start" | "stop" | "remove" | "read logs") {
        return DockerError::NotFound { container: name.to_string() };
    }
    DockerError::Engine { container: name.to_string(), action, source }
}

fn adopt(spec: &ContainerSpec, existing: ContainerInspectResponse) -> Result<Created, DockerError> {
    let labels = labels_of(&existing);
    if labels.get(LABEL_MANAGED).map(String::as_str) != Some("true") {
        return Err(DockerError::NotManaged { container: spec.name.clone() });
    }
    let image = existing.config.as_ref().and_then(|config| config.image.clone()).unwrap_or_default();
    let networks = existing.network_settings.as_ref().and_then(|settings| settings.networks.as_ref());
    let on_network = networks.is_some_and(|networks| networks.contains_key(&spec.network));
    let found_network = networks.map(|networks| networks.keys().cloned().collect::<Vec<_>>().join(",")).unwrap_or_default();
    let compared = [
        ("release", spec.release.as_str(), labels.get(LABEL_RELEASE).cloned().unwrap_or_default()),
        ("service", spec.service.as_str(), labels.get(LABEL_SERVICE).cloned().unwrap_or_default()),
        ("image", spec.image.as_str(), image),
        ("network", spec.network.as_str(), if on_network { spec.network.clone() } else { found_network }),
    ];
    for (what, expected, found) in compared {
        if expected != found {
            return Err(DockerError::Mismatch { container: spec.name.clone(), what, expected: expected.to_string(), found });
        }
    }
    let (state, _, _) = status_of_container(&existing);
    log::info!("adopted container {} ({state})", spec.name);
    Ok(Created { id: existing.id.unwrap_or_default(), adopted: true, state })
}
