//! `[docker]` and, per `[[service]]`, `image`, `overlap` and
//! `[service.container]`: how `canopy deploy` runs release stacks.

use std::time::Duration;

use canopy_admin::{DeploySettings, Healthcheck, ServiceContainer};
use serde::Deserialize;
use toml::Spanned;

use super::error::{ConfigError, Ctx};
use super::service::{FileContainer, FileService};
use super::value::{or, Dur};

/// `keep-releases` when unset.
const KEEP_RELEASES: usize = 3;
/// `deploy-timeout` when unset.
const DEPLOY_TIMEOUT: Duration = Duration::from_secs(300);
/// `stop-timeout` when unset.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// `overlap` when unset: old and new release run side by side until the window ends.
const OVERLAP: bool = true;
/// The smallest memory limit Docker accepts.
const MEMORY_MIN: i64 = 6 << 20;

/// `[docker]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct FileDocker {
    socket: Option<Spanned<String>>,
    network: Spanned<String>,
    keep_releases: Option<usize>,
    deploy_timeout: Option<Dur>,
    stop_timeout: Option<Dur>,
}

/// `[docker]` and each service's `image`, `[service.container]` and
/// `overlap`, checked; `None` without `[docker]`.
pub(super) fn parse(
    cx: &Ctx<'_>,
    section: Option<&Spanned<FileDocker>>,
    services: &[FileService],
) -> Result<Option<DeploySettings>, ConfigError> {
    let Some(section) = section else {
        if let Some(s) = services.iter().find(|s| s.image.is_some() || s.container.is_some() || s.overlap.is_some()) {
            let span =
                [s.image.as_ref().map(Spanned::span), s.container.as_ref().map(Spanned::span), s.overlap.as_ref().map(Spanned::span)]
                    .into_iter()
                    .flatten()
                    .next()
                    .unwrap_or(0..0);
            return Err(cx.err(
                span,
                format!("service `{}` sets how canopy runs its containers, but there is no [docker] section", s.name.get_ref()),
            ));
        }
        return Ok(None);
    };
    let d = section.get_ref();
    let socket = match &d.socket {
        Some(s) => {
            let ok = ["unix://", "/", "tcp://", "http://"].iter().any(|p| s.get_ref().starts_with(p));
            if !ok {
                return Err(cx.err(
                    s.span(),
                    format!(
                        "invalid Docker socket `{}`: expected unix:///path/to/docker.sock, tcp://host:port or http://host:port",
                        s.get_ref()
                    ),
                ));
            }
            s.get_ref().clone()
        }
        None => canopy_docker::Engine::default_socket(),
    };
    let network = d.network.get_ref();
    let network_ok = network.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && network.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !network_ok {
        return Err(cx.err(
            d.network.span(),
            format!("invalid Docker network name `{network}`: letters, digits, `_`, `.` and `-`, starting with a letter or digit"),
        ));
    }
    let mut containers = Vec::new();
    for s in services {
        let Some(image) = &s.image else {
            if let Some(c) = &s.container {
                return Err(
                    cx.err(c.span(), format!("[service.container] of service `{}` needs `image` in its [[service]]", s.name.get_ref()))
                );
            }
            if let Some(o) = &s.overlap {
                return Err(cx.err(o.span(), format!("`overlap` of service `{}` applies only to services with `image`", s.name.get_ref())));
            }
            containers.push(None);
            continue;
        };
        containers.push(Some(service_container(cx, s, image)?));
    }
    if containers.iter().all(Option::is_none) {
        return Err(cx.err(section.span(), "[docker] is set but no [[service]] has `image`: nothing would be deployed"));
    }
    Ok(Some(DeploySettings {
        socket,
        network: network.clone(),
        keep_releases: d.keep_releases.unwrap_or(KEEP_RELEASES),
        deploy_timeout: or(d.deploy_timeout, DEPLOY_TIMEOUT),
        stop_timeout: or(d.stop_timeout, STOP_TIMEOUT),
        services: containers,
    }))
}

/// One service's `image` and `[service.container]`.
fn service_container(cx: &Ctx<'_>, s: &FileService, image: &Spanned<String>) -> Result<ServiceContainer, ConfigError> {
    let repository = image.get_ref();
    if repository.is_empty() || repository.contains(char::is_whitespace) || repository.contains('@') {
        return Err(cx.err(image.span(), format!("invalid image repository `{repository}`")));
    }
    if let Some(tag) = canopy_docker::image_tag(repository) {
        return Err(cx.err(
            image.span(),
            format!("image `{repository}` has a tag (`{tag}`): the tag is the release name, write the repository only"),
        ));
    }
    let empty = FileContainer::default();
    let c = s.container.as_ref().map_or(&empty, Spanned::get_ref);
    let container_span = || s.container.as_ref().map_or(0..0, Spanned::span);
    let mut env = Vec::new();
    if let Some(f) = &c.env_file {
        let path = cx.relative(f.get_ref());
        let text = std::fs::read_to_string(&path).map_err(|e| cx.err(f.span(), format!("cannot read env file {}: {e}", path.display())))?;
        env = canopy_docker::parse_env_file(&path.display().to_string(), &text).map_err(|e| cx.err(f.span(), e.to_string()))?;
    }
    for (key, value) in &c.env {
        if key.is_empty() || key.contains('=') || key.contains(char::is_whitespace) {
            return Err(cx.err(container_span(), format!("invalid environment variable name `{key}`")));
        }
        env.push(format!("{key}={value}"));
    }
    let mut volumes = Vec::new();
    for v in &c.volumes {
        let parts: Vec<&str> = v.get_ref().split(':').collect();
        let ok = (2..=3).contains(&parts.len()) && parts[..2].iter().all(|p| !p.is_empty()) && parts[1].starts_with('/');
        if !ok {
            return Err(cx.err(
                v.span(),
                format!("invalid volume `{}`: expected `name:/path`, `/host/path:/path` or either with `:ro`", v.get_ref()),
            ));
        }
        volumes.push(v.get_ref().clone());
    }
    let memory_bytes =
        match &c.memory {
            Some(m) => Some(memory(m.get_ref()).ok_or_else(|| {
                cx.err(m.span(), format!("invalid memory limit `{}`: write e.g. `512m`, `2g` (at least 6m)", m.get_ref()))
            })?),
            None => None,
        };
    let cpus = match &c.cpus {
        Some(n) if !(*n.get_ref() > 0.0 && n.get_ref().is_finite()) => {
            return Err(cx.err(n.span(), "cpus must be a positive number such as 0.5 or 2"))
        }
        Some(n) => Some(*n.get_ref()),
        None => None,
    };
    if c.command.as_ref().is_some_and(Vec::is_empty) {
        return Err(cx.err(container_span(), "`command` is empty: leave it out to keep the image's"));
    }
    let healthcheck = c.healthcheck.as_ref().map(|h| Healthcheck {
        test: h.test.clone(),
        interval: h.interval.map(|d| d.0),
        timeout: h.timeout.map(|d| d.0),
        retries: h.retries,
        start_period: h.start_period.map(|d| d.0),
    });
    Ok(ServiceContainer {
        repository: repository.clone(),
        env,
        volumes,
        command: c.command.clone(),
        user: c.user.clone(),
        healthcheck,
        memory_bytes,
        cpus,
        overlap: s.overlap.as_ref().map_or(OVERLAP, |o| *o.get_ref()),
    })
}

/// `512m`, `2g`, `1048576`, `64k` in bytes; Docker refuses less than 6 MiB.
pub(super) fn memory(s: &str) -> Option<i64> {
    let bytes = i64::try_from(super::value::size(s)?).ok()?;
    (bytes >= MEMORY_MIN).then_some(bytes)
}
