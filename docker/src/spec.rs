//! ContainerSpec: what one service of one release runs, and the labels that say so.

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::{ContainerCreateBody, EndpointSettings, HealthConfig, HostConfig, NetworkingConfig};

use crate::error::DockerError;
use crate::image::image_tag;

/// Label set to `true` on every container (and network) canopy creates; the
/// only containers canopy lists, adopts, stops or removes.
pub const LABEL_MANAGED: &str = "canopy.managed";
/// Label holding the release name; must equal the image tag.
pub const LABEL_RELEASE: &str = "canopy.release";
/// Label holding the service name (`vendure-server`).
pub const LABEL_SERVICE: &str = "canopy.service";

/// One container to run: one service of one release. Built by the controller
/// from `[[service]]` and its `[service.container]` table; release and
/// service names are expected to be validated already. Fields left at their
/// default keep what the image says.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSpec {
    /// Container name, from the service's address template (`vendure-server--elm`).
    pub name: String,
    /// Image reference `repository:tag`; the tag must be the release name.
    pub image: String,
    /// Release name, the `canopy.release` label (`elm`).
    pub release: String,
    /// Service name, the `canopy.service` label (`vendure-server`).
    pub service: String,
    /// The stack network the container joins (its only network).
    pub network: String,
    /// Extra DNS names on the network besides the container name. Default
    /// none: an alias shared by two releases resolves to both.
    pub aliases: Vec<String>,
    /// Environment, `KEY=VALUE`, after the image's own; later entries win.
    /// Put [`parse_env_file`]'s result first, then the `env` table.
    pub env: Vec<String>,
    /// Volumes in `docker run -v` form: `volume:/path`, `/host/path:/path:ro`.
    pub binds: Vec<String>,
    /// Arguments replacing the image's CMD (passed to its ENTRYPOINT). `None`
    /// keeps the image's.
    pub command: Option<Vec<String>>,
    /// `user`, `user:group` or `uid:gid` to run as; `None` keeps the image's.
    pub user: Option<String>,
    /// Overrides the image's HEALTHCHECK; `None` keeps it.
    pub healthcheck: Option<Healthcheck>,
    /// Memory limit in bytes; `None` means unlimited.
    pub memory_bytes: Option<i64>,
    /// CPU limit in CPUs (`1.5`); `None` means unlimited.
    pub cpus: Option<f64>,
}

/// A healthcheck override; each `None` keeps the image's value (Docker's
/// defaults where the image has none: 30s interval, 30s timeout, 3 retries,
/// no start period).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Healthcheck {
    /// The probe's argv, run in the container without a shell; exit 0 means
    /// healthy. Empty keeps the image's probe.
    pub test: Vec<String>,
    /// Time between probes (at least 1ms).
    pub interval: Option<Duration>,
    /// Time one probe may take before it counts as failed.
    pub timeout: Option<Duration>,
    /// Consecutive failures after which the container is `unhealthy`.
    pub retries: Option<u32>,
    /// Time after start during which failures do not count.
    pub start_period: Option<Duration>,
}

impl ContainerSpec {
    /// A spec for `service` of `release` running `repository:release` on
    /// `network`, named `name`, everything else as the image says.
    pub fn new(name: &str, repository: &str, release: &str, service: &str, network: &str) -> Self {
        ContainerSpec {
            name: name.to_string(),
            image: format!("{repository}:{release}"),
            release: release.to_string(),
            service: service.to_string(),
            network: network.to_string(),
            aliases: Vec::new(),
            env: Vec::new(),
            binds: Vec::new(),
            command: None,
            user: None,
            healthcheck: None,
            memory_bytes: None,
            cpus: None,
        }
    }

    /// The three canopy labels this container carries.
    pub fn labels(&self) -> HashMap<String, String> {
        HashMap::from([
            (LABEL_MANAGED.to_string(), "true".to_string()),
            (LABEL_RELEASE.to_string(), self.release.clone()),
            (LABEL_SERVICE.to_string(), self.service.clone()),
        ])
    }

    /// The engine's create request for this spec.
    pub(crate) fn to_create_body(&self) -> ContainerCreateBody {
        let endpoint = EndpointSettings { aliases: (!self.aliases.is_empty()).then(|| self.aliases.clone()), ..Default::default() };
        ContainerCreateBody {
            image: Some(self.image.clone()),
            env: (!self.env.is_empty()).then(|| self.env.clone()),
            cmd: self.command.clone(),
            user: self.user.clone(),
            labels: Some(self.labels()),
            healthcheck: self.healthcheck.as_ref().map(Healthcheck::to_config),
            host_config: Some(HostConfig {
                binds: (!self.binds.is_empty()).then(|| self.binds.clone()),
                network_mode: Some(self.network.clone()),
                memory: self.memory_bytes,
                nano_cpus: self.cpus.map(|cpus| (cpus * 1e9).round() as i64),
                ..Default::default()
            }),
            networking_config: Some(NetworkingConfig { endpoints_config: Some(HashMap::from([(self.network.clone(), endpoint)])) }),
            ..Default::default()
        }
    }
}

impl Healthcheck {
    fn to_config(&self) -> HealthConfig {
        let nanos = |d: Option<Duration>| d.map(|d| d.as_nanos().min(i64::MAX as u128) as i64);
        let test = (!self.test.is_empty()).then(|| {
            let mut test = vec!["CMD".to_string()];
            test.extend(self.test.iter().cloned());
            test
        });
        HealthConfig {
            test,
            interval: nanos(self.interval),
            timeout: nanos(self.timeout),
            retries: self.retries.map(i64::from),
            start_period: nanos(self.start_period),
            start_interval: None,
        }
    }
}

/// Checks that `image`'s tag is `release`: the image tag is a release's
/// identity. Called before creating a container and on every container
/// discovered; `container` only names the culprit in the error
/// ([`DockerError::TagMismatch`]).
pub fn check_release_tag(container: &str, image: &str, release: &str) -> Result<(), DockerError> {
    if image_tag(image) == Some(release) {
        return Ok(());
    }
    Err(DockerError::TagMismatch { container: container.to_string(), image: image.to_string(), release: release.to_string() })
}

/// Parses the contents of an env file the way `docker run --env-file` does:
/// one `KEY=VALUE` per line, taken literally (no quotes, no expansion); blank
/// lines and lines starting with `#` skipped; a bare `KEY` takes the value
/// from canopy's own environment and is skipped when unset there. `file`
/// only names the file in errors ([`DockerError::EnvFile`]).
pub fn parse_env_file(file: &str, contents: &str) -> Result<Vec<String>, DockerError> {
    let mut env = Vec::new();
    for (index, raw) in contents.lines().enumerate() {
        let line = raw.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = match line.split_once('=') {
            Some((key, value)) => (key, Some(value)),
            None => (line.trim_end(), None),
        };
        let error = |reason: String| DockerError::EnvFile { file: file.to_string(), line: index + 1, reason };
        if key.is_empty() {
            return Err(error("no variable name before `=`".to_string()));
        }
        if key.contains(char::is_whitespace) {
            return Err(error(format!("variable name `{key}` contains whitespace")));
        }
        match value {
            Some(value) => env.push(format!("{key}={value}")),
            None => {
                if let Ok(value) = std::env::var(key) {
                    env.push(format!("{key}={value}"));
                }
            }
        }
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_file_lines_as_docker_reads_them() {
        let contents = "# db\nDB_HOST=postgres\n\n  DB_PORT=5432\nGREETING=a=b \"c\"\nCANOPY_TEST_UNSET_VAR\nPATH\n";
        let env = parse_env_file("vendure.env", contents).unwrap();
        let path = std::env::var("PATH").unwrap();
        assert_eq!(
            env,
            vec!["DB_HOST=postgres".to_string(), "DB_PORT=5432".to_string(), "GREETING=a=b \"c\"".to_string(), format!("PATH={path}"),]
        );
    }

    #[test]
    fn env_file_errors_name_file_and_line() {
        let err = parse_env_file("vendure.env", "A=1\nBAD KEY=2\n").unwrap_err();
        assert_eq!(err.to_string(), "env file vendure.env, line 2: variable name `BAD KEY` contains whitespace");
        let err = parse_env_file("vendure.env", "=2\n").unwrap_err();
        assert_eq!(err.to_string(), "env file vendure.env, line 1: no variable name before `=`");
    }

    #[test]
    fn release_tag_must_equal_release_label() {
        assert!(check_release_tag("s--elm", "ghcr.io/acme/vendure-server:elm", "elm").is_ok());
        assert!(check_release_tag("s--elm", "127.0.0.1:5000/acme/server:elm", "elm").is_ok());
        let err = check_release_tag("s--elm", "ghcr.io/acme/vendure-server:juniper", "elm").unwrap_err();
        assert_eq!(
            err.to_string(),
            "container `s--elm` runs image `ghcr.io/acme/vendure-server:juniper` but is labelled release `elm`: the image tag must be the release name"
        );
        assert!(check_release_tag("s--elm", "127.0.0.1:5000/acme/server", "elm").is_err());
    }

    #[test]
    fn spec_becomes_a_create_request() {
        let mut spec = ContainerSpec::new("vendure-server--elm", "acme/vendure-server", "elm", "vendure-server", "vendure");
        spec.cpus = Some(1.5);
        spec.healthcheck = Some(Healthcheck {
            test: vec!["/server".into(), "--probe".into()],
            interval: Some(Duration::from_millis(500)),
            ..Default::default()
        });
        let body = spec.to_create_body();
        assert_eq!(body.image.as_deref(), Some("acme/vendure-server:elm"));
        assert_eq!(body.labels.unwrap()[LABEL_RELEASE], "elm");
        let host = body.host_config.unwrap();
        assert_eq!(host.nano_cpus, Some(1_500_000_000));
        assert_eq!(host.network_mode.as_deref(), Some("vendure"));
        let health = body.healthcheck.unwrap();
        assert_eq!(health.test.unwrap(), ["CMD", "/server", "--probe"]);
        assert_eq!(health.interval, Some(500_000_000));
        assert_eq!(health.retries, None);
    }
}
