//! DockerError: every way an engine step can fail, naming the image or container.

use std::time::Duration;

/// The error of every [`Engine`](crate::Engine) step. Each variant names what it
/// is about (socket, network, image and tag, or container) so that the message
/// alone tells an operator what went wrong; those that end a deploy because a
/// container misbehaved carry the last lines of its log.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// The socket address has a scheme canopy does not speak.
    #[error("invalid Docker socket `{socket}`: expected unix:///path/to/docker.sock, tcp://host:port or http://host:port")]
    BadSocket {
        /// The address as given.
        socket: String,
    },
    /// Nothing answered at the socket, or it did not speak the Engine API.
    #[error("cannot reach the Docker engine at {socket}: {source}")]
    Unreachable {
        /// The address as given.
        socket: String,
        /// What the client saw.
        #[source]
        source: bollard::errors::Error,
    },
    /// Inspecting or creating a network failed.
    #[error("Docker network `{network}`: {source}")]
    Network {
        /// The network name.
        network: String,
        /// The engine's answer.
        #[source]
        source: bollard::errors::Error,
    },
    /// The image reference has no tag (or only a digest), so it names no release.
    #[error("image reference `{image}` has no tag: canopy needs repository:release")]
    NoTag {
        /// The reference as given.
        image: String,
    },
    /// Inspecting a local image failed for a reason other than its absence.
    #[error("image `{image}`: {source}")]
    Image {
        /// The image reference.
        image: String,
        /// The engine's answer.
        #[source]
        source: bollard::errors::Error,
    },
    /// The image is not present locally and pulling it failed.
    #[error("cannot pull image `{repository}` tag `{tag}`: {reason}")]
    Pull {
        /// The repository part of the reference (`ghcr.io/acme/vendure-server`).
        repository: String,
        /// The tag, i.e. the release name.
        tag: String,
        /// The engine's or the registry's reason.
        reason: String,
    },
    /// An engine call about one container failed.
    #[error("container `{container}`: {action} failed: {source}")]
    Engine {
        /// The container name.
        container: String,
        /// What was being done (`create`, `start`, `stop`, ...).
        action: &'static str,
        /// The engine's answer.
        #[source]
        source: bollard::errors::Error,
    },
    /// No container has this name.
    #[error("container `{container}` does not exist")]
    NotFound {
        /// The container name.
        container: String,
    },
    /// A container has the name but lacks the `canopy.managed=true` label.
    #[error("container `{container}` exists but is not managed by canopy (no label canopy.managed=true); refusing to touch it")]
    NotManaged {
        /// The container name.
        container: String,
    },
    /// A canopy container has the name but was made for another image, release or service.
    #[error("container `{container}` exists with {what} `{found}` where `{expected}` was asked for; remove it first")]
    Mismatch {
        /// The container name.
        container: String,
        /// Which property differs: `image`, `release` or `service`.
        what: &'static str,
        /// The value the spec asks for.
        expected: String,
        /// The value the existing container has.
        found: String,
    },
    /// A container's image tag differs from its `canopy.release` label.
    #[error("container `{container}` runs image `{image}` but is labelled release `{release}`: the image tag must be the release name")]
    TagMismatch {
        /// The container name.
        container: String,
        /// The image reference the container was created from.
        image: String,
        /// Its `canopy.release` label.
        release: String,
    },
    /// The container stopped before it became healthy (or running, without a healthcheck).
    #[error("container `{container}` exited with code {exit_code} before it was ready{}", log_tail(.logs))]
    Exited {
        /// The container name.
        container: String,
        /// Its exit code (137 when killed).
        exit_code: i64,
        /// The last lines of its stdout and stderr.
        logs: Vec<String>,
    },
    /// The container waited for is stopped, and its last run ended before
    /// this wait began: it was not started again (e.g. canopy itself stopped
    /// it earlier), so its exit says nothing about the release.
    #[error(
        "container `{container}` did not start: it is still stopped from its earlier run (exited with code {exit_code} at {finished_at})"
    )]
    NotStarted {
        /// The container name.
        container: String,
        /// The exit code of that earlier run.
        exit_code: i64,
        /// When that run ended, as the engine reports it.
        finished_at: String,
    },
    /// Docker marked the container `unhealthy`: its healthcheck failed `retries` times in a row.
    #[error("container `{container}` is unhealthy (last probe: {probe}){}", log_tail(.logs))]
    Unhealthy {
        /// The container name.
        container: String,
        /// Exit code and output of the last healthcheck probe.
        probe: String,
        /// The last lines of its stdout and stderr.
        logs: Vec<String>,
    },
    /// The container was neither ready nor failed when the wait ran out.
    #[error("container `{container}` not ready after {:.1}s (state {state}, health {health}){}", .waited.as_secs_f64(), log_tail(.logs))]
    HealthTimeout {
        /// The container name.
        container: String,
        /// How long was waited.
        waited: Duration,
        /// Its state when the wait ran out (`running`, `created`, ...).
        state: String,
        /// Its health then (`starting`, `none`, ...).
        health: String,
        /// The last lines of its stdout and stderr.
        logs: Vec<String>,
    },
    /// The container is not attached to the network, or has no IP on it (it is not running).
    #[error("container `{container}` has no address on network `{network}`")]
    NoAddress {
        /// The container name.
        container: String,
        /// The network name.
        network: String,
    },
    /// Listing containers or reading the events stream failed.
    #[error("Docker engine: {action} failed: {source}")]
    Discovery {
        /// `list containers` or `events`.
        action: &'static str,
        /// The engine's answer.
        #[source]
        source: bollard::errors::Error,
    },
    /// A line of an env file is not `KEY=VALUE`, `KEY`, a comment or blank.
    #[error("env file {file}, line {line}: {reason}")]
    EnvFile {
        /// The file's name as the caller gave it.
        file: String,
        /// The 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
}

impl DockerError {
    /// The container log lines this error carries (empty for most variants).
    pub fn logs(&self) -> &[String] {
        match self {
            Self::Exited { logs, .. } | Self::Unhealthy { logs, .. } | Self::HealthTimeout { logs, .. } => logs,
            _ => &[],
        }
    }
}

fn log_tail(logs: &[String]) -> String {
    if logs.is_empty() {
        return "; it logged nothing".to_string();
    }
    let mut out = String::from("; its last log lines:");
    for line in logs {
        out.push_str("\n    ");
        out.push_str(line);
    }
    out
}

/// The HTTP status of an engine answer, if it was one.
pub(crate) fn status_of(err: &bollard::errors::Error) -> Option<u16> {
    match err {
        bollard::errors::Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// The engine's own message for an answer, else the client error's text.
pub(crate) fn reason_of(err: &bollard::errors::Error) -> String {
    match err {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message.clone(),
        bollard::errors::Error::DockerStreamError { error } => error.clone(),
        other => other.to_string(),
    }
}
