//! proxy.toml -> runtime types. `File*` types mirror the file one to one
//! (serde, unknown keys refused), one module per section; their conversion
//! checks every rule and reports the file, line and column of the offending
//! value. The result is split by what a reload may change ([`Reloadable`])
//! and what needs `canopy serve --upgrade` ([`Fixed`]); docs/configuration.md
//! lists every key with its default and its class.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use canopy_admin::{AdminPriority, Check, ClusterSettings, ControlSettings, DeploySettings, Seed};
use canopy_proxy::{ProxySettings, Topology};
use serde::Deserialize;
use toml::Spanned;

mod access;
mod admin;
mod check;
mod cluster;
mod diff;
mod docker;
mod error;
mod hint;
mod proxy;
#[cfg(test)]
mod reference;
mod releases;
mod service;
#[cfg(test)]
mod tests;
mod tls;
mod value;

pub use access::{admin_access, AdminAccess};
pub use error::{ConfigError, Located};
pub use proxy::AccessLogTarget;
pub use releases::ReleaseSettings;
pub use tls::{load_all as load_certificates, CertFile, TlsCertificates, TlsListener};

use error::Ctx;

/// proxy.toml as written: its sections.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    proxy: proxy::FileProxy,
    #[serde(default)]
    admin: admin::FileAdmin,
    releases: releases::FileReleases,
    #[serde(default)]
    service: Vec<service::FileService>,
    #[serde(default)]
    release: Vec<releases::FileRelease>,
    docker: Option<Spanned<docker::FileDocker>>,
    tls: Option<Spanned<tls::FileTls>>,
    cluster: Option<Spanned<cluster::FileCluster>>,
}

/// A validated configuration: everything `serve` needs, split by what a
/// reload may change.
#[derive(Debug)]
pub struct Config {
    /// The file it came from.
    pub path: PathBuf,
    /// What only a new process can take (`canopy serve --upgrade`).
    pub fixed: Fixed,
    /// What `canopy reload` (SIGHUP, `POST /reload`) applies in place.
    pub live: Reloadable,
    /// First-start seed (`initial`, `[[release]]`): read only when no state
    /// file exists, so neither a reload nor an upgrade looks at it.
    pub seed: Seed,
}

/// The settings only a new process can change: sockets, threads, files the
/// process holds, background loops started once. A reload that changes one
/// is refused naming it; [`Fixed::changes`] compares every field.
#[derive(Debug, Clone, PartialEq)]
pub struct Fixed {
    /// Plaintext proxy listen addresses.
    pub listen: Vec<SocketAddr>,
    /// TLS proxy listen addresses (`tls` is set when there are any).
    pub listen_tls: Vec<SocketAddr>,
    /// Plaintext listeners also take HTTP/2 with prior knowledge (h2c).
    pub h2c: bool,
    /// Handshake settings, the certificate watch and ACME, with `listen-tls`.
    pub tls: Option<TlsListener>,
    /// Worker threads of the proxy service.
    pub threads: usize,
    /// Whether the proxy's worker threads share one work-stealing runtime
    /// (pingora's default) or each run their own.
    pub work_stealing: bool,
    /// How long SIGTERM waits for in-flight requests.
    pub shutdown_grace: Duration,
    /// Longest wait for a client's complete request head (idle keep-alive included).
    pub client_timeout: Duration,
    /// Admin listen address.
    pub admin_listen: SocketAddr,
    /// Where the durable state lives.
    pub state_file: PathBuf,
    /// The Unix socket a `serve --upgrade` process receives the listening
    /// sockets on (default: the state file's path plus `.upgrade.sock`, so two
    /// canopy instances on one host never share it).
    pub upgrade_socket: PathBuf,
    /// Where the serving process writes its pid (the state file's path plus
    /// `.pid`): `serve --upgrade` signals that process to hand over.
    pub pid_file: PathBuf,
    /// How the admin thread asks to be scheduled.
    pub admin_priority: AdminPriority,
    /// How often backends are re-resolved.
    pub resolve_interval: Duration,
    /// `[docker]` and the services' images: `canopy deploy` is enabled when set.
    pub deploy: Option<DeploySettings>,
    /// `[cluster]`: the state is a fleet's, in etcd.
    pub cluster: Option<ClusterSettings>,
}

/// The settings a reload applies in place, from the next request or the
/// next flip on. [`Reloadable::changes`] names each area that differs.
#[derive(Debug, Clone, PartialEq)]
pub struct Reloadable {
    /// Services, routes and the address template.
    pub topology: Topology,
    /// Checks per service (topology order).
    pub checks: Vec<Vec<Check>>,
    /// Data-plane tunables (with `[tls]`'s redirect and HSTS).
    pub proxy: ProxySettings,
    /// The `[[tls.certificate]]` files (none without `[tls]`).
    pub certificates: TlsCertificates,
    /// Validation window, preview, retirement and the warm watch.
    pub releases: ReleaseSettings,
    /// Access log destination (off when `None`).
    pub access_log: Option<AccessLogTarget>,
    /// Admin bearer token, read from `token-file`.
    pub token: Option<String>,
}

impl Config {
    /// The controller's settings: the reloadable `[releases]` settings with
    /// the fixed state file and admin priority.
    pub fn control(&self) -> ControlSettings {
        let ReleaseSettings {
            preview,
            validation_window,
            drain_timeout,
            retire_hooks,
            hook_timeout,
            migrate,
            warm_check_interval,
            require_rollback_ready,
            guard,
            canary,
            live_check_interval,
        } = self.live.releases.clone();
        ControlSettings {
            state_file: self.fixed.state_file.clone(),
            validation_window,
            drain_timeout,
            retire_hooks,
            hook_timeout,
            migrate,
            preview,
            warm_check_interval,
            live_check_interval,
            admin_priority: self.fixed.admin_priority,
            guard,
            canary,
            require_rollback_ready,
        }
    }
}

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
    parse(path, &text)
}

/// Validates config text (`path` is used in messages and for relative paths).
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let file: FileConfig = toml::from_str(text).map_err(|source| ConfigError::parse(path, text, source))?;
    let cx = Ctx { path, text };
    let mut proxy = proxy::parse(&cx, &file.proxy)?;
    let (topology, checks) = service::topology(&cx, &file.service, &file.releases.address_template, proxy.max_request_body)?;
    let seed = releases::seed(&cx, &file.releases, &file.release, &topology)?;
    let admin = admin::parse(&cx, &file.admin, &proxy)?;
    let release_settings = releases::settings(&cx, &file.releases)?;
    let deploy = docker::parse(&cx, file.docker.as_ref(), &file.service)?;
    let cluster = cluster::parse(&cx, file.cluster.as_ref())?;
    let (tls, certificates) = match (&file.tls, proxy.listen_tls.first()) {
        (None, None) => (None, TlsCertificates::default()),
        (None, Some(_)) => {
            return Err(cx.err(proxy.listen_tls_span, "`listen-tls` needs a [tls] section with [[tls.certificate]] files or [tls.acme]"));
        }
        (Some(t), None) => return Err(cx.err(t.span(), "[tls] is set but [proxy] has no `listen-tls`: nothing would serve HTTPS")),
        (Some(t), Some(first_tls)) => {
            let parsed = tls::parse(&cx, t.get_ref(), admin.beside_state(".acme"))?;
            if parsed.certificates.files.is_empty() && parsed.listener.acme.is_none() {
                return Err(cx.err(t.span(), "[tls] has no [[tls.certificate]] and no [tls.acme]: no handshake could succeed"));
            }
            if proxy.listen.is_empty() && (parsed.redirect_http || parsed.listener.acme.is_some()) {
                let what = if parsed.redirect_http { "redirect-http" } else { "[tls.acme] (its HTTP-01 challenges come over plain HTTP)" };
                return Err(cx.err(t.span(), format!("{what} needs a plaintext `listen` address (port 80 in production)")));
            }
            proxy.settings.https_redirect = parsed.redirect_http.then_some(first_tls.port());
            proxy.settings.hsts = parsed.hsts;
            (Some(parsed.listener), parsed.certificates)
        }
    };
    let fixed = Fixed {
        listen: proxy.listen,
        listen_tls: proxy.listen_tls,
        h2c: proxy.h2c,
        tls,
        threads: proxy.threads,
        work_stealing: proxy.work_stealing,
        shutdown_grace: proxy.shutdown_grace,
        client_timeout: proxy.client_timeout,
        admin_listen: admin.listen,
        state_file: admin.state_file,
        upgrade_socket: admin.upgrade_socket,
        pid_file: admin.pid_file,
        admin_priority: admin.priority,
        resolve_interval: releases::resolve_interval(&file.releases),
        deploy,
        cluster,
    };
    let live = Reloadable {
        topology,
        checks,
        proxy: proxy.settings,
        certificates,
        releases: release_settings,
        access_log: proxy.access_log,
        token: admin.token,
    };
    Ok(Config { path: path.to_path_buf(), fixed, live, seed })
}
