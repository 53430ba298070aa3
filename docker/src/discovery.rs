//! Discovery: the canopy containers that exist, and a stream of what happens to them.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::models::{ContainerInspectResponse, ContainerStateStatusEnum, EventMessage, HealthStatusEnum};
use bollard::query_parameters::{EventsOptions, ListContainersOptions};
use futures_util::{future, Stream, StreamExt};

use crate::engine::Engine;
use crate::error::{status_of, DockerError};
use crate::image::image_tag;
use crate::spec::{check_release_tag, LABEL_MANAGED, LABEL_RELEASE, LABEL_SERVICE};

/// A container's lifecycle state as the engine reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerState {
    /// Created, never started.
    Created,
    /// Its process runs.
    Running,
    /// Frozen by `docker pause`.
    Paused,
    /// Being restarted by a restart policy.
    Restarting,
    /// Being removed.
    Removing,
    /// Its process ended (stopped, crashed or killed); see the exit code.
    Exited,
    /// The engine failed to stop or remove it.
    Dead,
}

/// A container's health as its healthcheck reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// No healthcheck (the image defines none, or it is disabled).
    None,
    /// Started, no probe has succeeded yet and the failures do not yet count.
    Starting,
    /// The last probe succeeded.
    Healthy,
    /// The last `retries` probes failed.
    Unhealthy,
}

impl ContainerState {
    /// The engine's word for the state (`running`, `exited`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Restarting => "restarting",
            Self::Removing => "removing",
            Self::Exited => "exited",
            Self::Dead => "dead",
        }
    }
}

impl Health {
    /// The engine's word for the health (`healthy`, `starting`, ...; `none`
    /// without a healthcheck).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Starting => "starting",
            Self::Healthy => "healthy",
            Self::Unhealthy => "unhealthy",
        }
    }

    fn from_status(status: Option<HealthStatusEnum>) -> Health {
        match status {
            Some(HealthStatusEnum::STARTING) => Health::Starting,
            Some(HealthStatusEnum::HEALTHY) => Health::Healthy,
            Some(HealthStatusEnum::UNHEALTHY) => Health::Unhealthy,
            Some(HealthStatusEnum::NONE | HealthStatusEnum::EMPTY) | None => Health::None,
        }
    }
}

impl fmt::Display for ContainerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state, health and exit code of an inspected container.
pub(crate) fn status_of_container(inspect: &ContainerInspectResponse) -> (ContainerState, Health, Option<i64>) {
    let state = inspect.state.as_ref();
    let status = match state.and_then(|state| state.status) {
        // Newer engines say `stopping` while the process still runs.
        Some(ContainerStateStatusEnum::RUNNING | ContainerStateStatusEnum::STOPPING) => ContainerState::Running,
        Some(ContainerStateStatusEnum::PAUSED) => ContainerState::Paused,
        Some(ContainerStateStatusEnum::RESTARTING) => ContainerState::Restarting,
        Some(ContainerStateStatusEnum::REMOVING) => ContainerState::Removing,
        Some(ContainerStateStatusEnum::EXITED) => ContainerState::Exited,
        Some(ContainerStateStatusEnum::DEAD) => ContainerState::Dead,
        Some(ContainerStateStatusEnum::CREATED | ContainerStateStatusEnum::EMPTY) | None => ContainerState::Created,
    };
    // Docker 20.10 leaves a stopped container `unhealthy`: that says nothing
    // about the release, so health is reported for running containers only.
    let health = match status {
        ContainerState::Running | ContainerState::Paused => {
            Health::from_status(state.and_then(|state| state.health.as_ref()).and_then(|health| health.status))
        }
        _ => Health::None,
    };
    let exit_code = match status {
        ContainerState::Exited | ContainerState::Dead | ContainerState::Restarting => state.and_then(|state| state.exit_code),
        _ => None,
    };
    (status, health, exit_code)
}

/// The container's name without the engine's leading `/`.
pub(crate) fn name_of(inspect: &ContainerInspectResponse) -> String {
    inspect.name.as_deref().unwrap_or_default().trim_start_matches('/').to_string()
}

/// The container's IP on `network`, if attached there and running.
pub(crate) fn ip_on(inspect: &ContainerInspectResponse, network: &str) -> Option<IpAddr> {
    let networks = inspect.network_settings.as_ref()?.networks.as_ref()?;
    networks.get(network)?.ip_address.as_deref()?.parse().ok()
}

pub(crate) fn labels_of(inspect: &ContainerInspectResponse) -> HashMap<String, String> {
    inspect.config.as_ref().and_then(|config| config.labels.clone()).unwrap_or_default()
}

/// A container carrying `canopy.managed=true`, as [`Engine::list_managed`] finds it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ManagedContainer {
    /// Container name (`vendure-server--elm`).
    pub name: String,
    /// Container id.
    pub id: String,
    /// Its `canopy.release` label (empty when missing).
    pub release: String,
    /// Its `canopy.service` label (empty when missing).
    pub service: String,
    /// The image reference it was created from (`acme/vendure-server:elm`).
    pub image: String,
    /// That reference's tag, `None` when it has none.
    pub tag: Option<String>,
    /// Lifecycle state.
    pub state: ContainerState,
    /// Healthcheck status while running or paused; [`Health::None`] otherwise
    /// (the engine leaves a stopped container `unhealthy`, which is not news).
    pub health: Health,
    /// Exit code when exited, dead or restarting.
    pub exit_code: Option<i64>,
    /// Its IP on the network asked for, `None` when not attached or not running.
    pub ip: Option<IpAddr>,
}

impl ManagedContainer {
    /// `Ok` when the image tag is the release label; otherwise
    /// [`DockerError::TagMismatch`]: such a container is refused as a backend
    /// and reported.
    pub fn check_tag(&self) -> Result<(), DockerError> {
        check_release_tag(&self.name, &self.image, &self.release)
    }
}

/// What happened to a canopy container, from [`Engine::events`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Created (not yet started).
    Create,
    /// Its process started.
    Start,
    /// Its process ended: crashed, killed or stopped (a stop is `Die` then `Stop`).
    Die {
        /// The exit code, when the engine reports it (137 for SIGKILL).
        exit_code: Option<i64>,
    },
    /// Stopped by request (`docker stop`, [`Engine::stop`]).
    Stop,
    /// Removed.
    Destroy,
    /// Its health changed to this status.
    Health(Health),
}

/// One event about a canopy container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerEvent {
    /// What happened.
    pub kind: EventKind,
    /// Container name.
    pub name: String,
    /// Container id.
    pub id: String,
    /// Its `canopy.release` label (empty when missing).
    pub release: String,
    /// Its `canopy.service` label (empty when missing).
    pub service: String,
    /// Its image reference.
    pub image: String,
    /// When the engine saw it.
    pub at: SystemTime,
}

impl ContainerEvent {
    fn from_message(message: EventMessage) -> Option<ContainerEvent> {
        let action = message.action?;
        let actor = message.actor?;
        let mut attributes = actor.attributes.unwrap_or_default();
        let kind = match action.as_str() {
            "create" => EventKind::Create,
            "start" => EventKind::Start,
            "die" => EventKind::Die { exit_code: attributes.get("exitCode").and_then(|code| code.parse().ok()) },
            "stop" => EventKind::Stop,
            "destroy" => EventKind::Destroy,
            health => {
                let status = health.strip_prefix("health_status:")?.trim();
                EventKind::Health(Health::from_status(status.parse().ok()))
            }
        };
        let at = message
            .time_nano
            .and_then(|nanos| u64::try_from(nanos).ok())
            .map_or_else(SystemTime::now, |nanos| UNIX_EPOCH + Duration::from_nanos(nanos));
        Some(ContainerEvent {
            kind,
            name: attributes.remove("name").unwrap_or_default(),
            id: actor.id.unwrap_or_default(),
            release: attributes.remove(LABEL_RELEASE).unwrap_or_default(),
            service: attributes.remove(LABEL_SERVICE).unwrap_or_default(),
            image: attributes.remove("image").unwrap_or_default(),
            at,
        })
    }
}

/// The engine actions [`Engine::events`] reports.
const ACTIONS: [&str; 6] = ["create", "start", "die", "stop", "destroy", "health_status"];

impl Engine {
    /// Every container labelled `canopy.managed=true`, running or not, sorted
    /// by name, with its IP on `network` (the stack network). Called at
    /// controller start and whenever a full picture is wanted; between
    /// calls, [`Engine::events`] says what changed. A container removed while
    /// listing is left out.
    pub async fn list_managed(&self, network: &str) -> Result<Vec<ManagedContainer>, DockerError> {
        let filters = HashMap::from([("label".to_string(), vec![format!("{LABEL_MANAGED}=true")])]);
        let options = ListContainersOptions { all: true, filters: Some(filters), ..Default::default() };
        let summaries = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|source| DockerError::Discovery { action: "list containers", source })?;
        let mut found = Vec::with_capacity(summaries.len());
        for id in summaries.into_iter().filter_map(|summary| summary.id) {
            // Inspect, not the summary: only inspect has health on API 1.41,
            // and it keeps the reference as created even if the tag moved since.
            let inspect = match self.docker.inspect_container(&id, None).await {
                Ok(inspect) => inspect,
                Err(err) if status_of(&err) == Some(404) => continue,
                Err(source) => return Err(DockerError::Discovery { action: "inspect container", source }),
            };
            let (state, health, exit_code) = status_of_container(&inspect);
            let mut labels = labels_of(&inspect);
            let image = inspect.config.as_ref().and_then(|config| config.image.clone()).unwrap_or_default();
            found.push(ManagedContainer {
                name: name_of(&inspect),
                ip: ip_on(&inspect, network),
                id,
                release: labels.remove(LABEL_RELEASE).unwrap_or_default(),
                service: labels.remove(LABEL_SERVICE).unwrap_or_default(),
                tag: image_tag(&image).map(str::to_string),
                image,
                state,
                health,
                exit_code,
            });
        }
        found.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(found)
    }

    /// A stream of create, start, die, stop, destroy and health-status events
    /// of canopy containers, as the engine pushes them (a `docker kill`
    /// arrives as `Die` within milliseconds). With `since`, events from that
    /// time on are replayed first: take the time before
    /// [`Engine::list_managed`], list, then subscribe with it, and nothing
    /// falls between. The stream ends when the engine connection does (engine
    /// restart); subscribe again with the time of the last event seen.
    pub fn events(&self, since: Option<SystemTime>) -> impl Stream<Item = Result<ContainerEvent, DockerError>> + Send + Unpin + 'static {
        let filters = HashMap::from([
            ("type".to_string(), vec!["container".to_string()]),
            ("label".to_string(), vec![format!("{LABEL_MANAGED}=true")]),
            ("event".to_string(), ACTIONS.iter().map(|action| action.to_string()).collect()),
        ]);
        self.container_events(filters, since)
    }

    /// Container events matching `filters` (the engine's event filters).
    pub(crate) fn container_events(
        &self,
        filters: HashMap<String, Vec<String>>,
        since: Option<SystemTime>,
    ) -> impl Stream<Item = Result<ContainerEvent, DockerError>> + Send + Unpin + 'static {
        let since = since.map(|time| {
            let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
            format!("{}.{:09}", since.as_secs(), since.subsec_nanos())
        });
        let options = EventsOptions { since, until: None, filters: Some(filters) };
        Box::pin(self.docker.events(Some(options)).filter_map(|message| {
            future::ready(match message {
                Ok(message) => ContainerEvent::from_message(message).map(Ok),
                Err(source) => Some(Err(DockerError::Discovery { action: "events", source })),
            })
        }))
    }
}
