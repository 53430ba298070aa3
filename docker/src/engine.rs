//! Engine: one connection to a Docker Engine, its API version negotiated.

use bollard::{Docker, API_DEFAULT_VERSION};

use crate::error::DockerError;

/// The engine's socket when neither the config nor `DOCKER_HOST` names one.
pub(crate) const DEFAULT_SOCKET: &str = "unix:///var/run/docker.sock";

/// Seconds bollard waits for the head of an engine answer (streams, once
/// answered, are not limited by it). Pulls and stops answer within it: the
/// engine sends headers before the work.
const REQUEST_TIMEOUT_SECS: u64 = 120;

/// A connected Docker Engine. Cheap to clone (the client is shared); every
/// step of a deploy is a method on it.
#[derive(Debug, Clone)]
pub struct Engine {
    pub(crate) docker: Docker,
    socket: String,
}

impl Engine {
    /// The socket canopy uses when none is configured: `DOCKER_HOST` if set,
    /// else `unix:///var/run/docker.sock`.
    pub fn default_socket() -> String {
        std::env::var("DOCKER_HOST").ok().filter(|host| !host.is_empty()).unwrap_or_else(|| DEFAULT_SOCKET.to_string())
    }

    /// Connects to the engine at `socket` (`unix:///var/run/docker.sock`, a bare
    /// `/path/docker.sock`, `tcp://host:2375` or `http://host:2375`; no TLS)
    /// and negotiates the API version: bollard's default is 1.53, the engine
    /// may be older (Docker 20.10 speaks 1.41), and the lower is kept. (bollard
    /// 0.21.1 sends unversioned paths such as `/containers/json`, so the
    /// engine answers in its own newest version whatever is negotiated; the
    /// request bodies canopy sends are valid from 1.41 on.) Called once at
    /// start; fails with
    /// [`DockerError::Unreachable`] when nothing answers (no socket file,
    /// connection refused, not an engine).
    pub async fn connect(socket: &str) -> Result<Engine, DockerError> {
        let docker = if socket.starts_with("unix://") || socket.starts_with('/') {
            Docker::connect_with_unix(socket, REQUEST_TIMEOUT_SECS, API_DEFAULT_VERSION)
        } else if socket.starts_with("tcp://") || socket.starts_with("http://") {
            Docker::connect_with_http(socket, REQUEST_TIMEOUT_SECS, API_DEFAULT_VERSION)
        } else {
            return Err(DockerError::BadSocket { socket: socket.to_string() });
        };
        let unreachable = |source| DockerError::Unreachable { socket: socket.to_string(), source };
        let docker = docker.map_err(unreachable)?.negotiate_version().await.map_err(unreachable)?;
        log::debug!("Docker engine at {socket}: API {}", docker.client_version());
        Ok(Engine { docker, socket: socket.to_string() })
    }

    /// The socket this engine was reached at, as given to [`Engine::connect`].
    pub fn socket(&self) -> &str {
        &self.socket
    }

    /// The API version in use after negotiation, e.g. `1.41`.
    pub fn api_version(&self) -> String {
        self.docker.client_version().to_string()
    }
}
