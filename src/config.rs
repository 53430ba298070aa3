//! proxy.toml -> runtime types. `File*` types mirror the file one to one
//! (serde, unknown keys refused); `TryFrom`-style conversion then checks
//! every rule and reports the file, line and column of the offending value.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use canopy_admin::{Check, CheckKind, ControlSettings, DeploySettings, Healthcheck, Seed, ServiceContainer, SmokeRequest};
use canopy_proxy::{AddressTemplate, Endpoint, ProxySettings, ReleaseName, Route, Service, ServiceName, Topology};
use serde::Deserialize;
use toml::Spanned;

mod tls;
pub use tls::{load_all as load_certificates, CertFile, TlsConfig};

/// A config that cannot be used; says where and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax or shape error (unknown key, wrong type, bad value).
    #[error("{}", .at)]
    Parse {
        /// Where, with the message.
        at: Located,
        /// The parser's error.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// A value that parses but breaks a rule (duplicate service, ...).
    #[error("{0}")]
    Invalid(Box<Located>),
}

/// A message pinned to a place in the config file, shown with the line and a caret.
#[derive(Debug)]
pub struct Located {
    /// The config file.
    pub path: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong.
    pub message: String,
    source_line: String,
}

impl Located {
    fn new(path: &Path, text: &str, span: Option<Range<usize>>, message: String) -> Self {
        let start = span.map_or(0, |s| s.start).min(text.len());
        let before = &text[..start];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = text[line_start..start].chars().count() + 1;
        let source_line = text[line_start..].lines().next().unwrap_or("").to_string();
        Self { path: path.to_path_buf(), line, column, message, source_line }
    }
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.line.to_string();
        let pad = " ".repeat(n.len());
        writeln!(f, "{}:{}:{}: {}", self.path.display(), self.line, self.column, self.message.trim_end())?;
        writeln!(f, "{pad} |")?;
        writeln!(f, "{n} | {}", self.source_line)?;
        write!(f, "{pad} | {}^", " ".repeat(self.column.saturating_sub(1)))
    }
}

/// A duration written like `10m`, `2s` or `500ms`.
#[derive(Debug, Clone, Copy)]
struct Dur(Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map(Dur)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration `{s}`: {e} (write e.g. `500ms`, `10s`, `10m`)")))
    }
}

/// A socket address such as `0.0.0.0:8080`.
#[derive(Debug, Clone, Copy)]
struct Addr(SocketAddr);

impl<'de> Deserialize<'de> for Addr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map(Addr).map_err(|_| {
            serde::de::Error::custom(format!("invalid listen address `{s}`: expected ip:port such as `0.0.0.0:8080` or `[::]:8080`"))
        })
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    proxy: FileProxy,
    #[serde(default)]
    admin: FileAdmin,
    releases: FileReleases,
    #[serde(default)]
    service: Vec<FileService>,
    #[serde(default)]
    release: Vec<FileRelease>,
    docker: Option<Spanned<FileDocker>>,
    tls: Option<Spanned<tls::FileTls>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileDocker {
    socket: Option<Spanned<String>>,
    network: Spanned<String>,
    keep_releases: Option<usize>,
    deploy_timeout: Option<Dur>,
    stop_timeout: Option<Dur>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileContainer {
    #[serde(default)]
    env: BTreeMap<String, String>,
    env_file: Option<Spanned<String>>,
    #[serde(default)]
    volumes: Vec<Spanned<String>>,
    command: Option<Vec<String>>,
    user: Option<String>,
    healthcheck: Option<FileHealthcheck>,
    memory: Option<Spanned<String>>,
    cpus: Option<Spanned<f64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileHealthcheck {
    #[serde(default)]
    test: Vec<String>,
    interval: Option<Dur>,
    timeout: Option<Dur>,
    retries: Option<u32>,
    start_period: Option<Dur>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileProxy {
    listen: Option<Spanned<OneOrMany<String>>>,
    listen_tls: Option<Spanned<OneOrMany<String>>>,
    h2c: Option<bool>,
    threads: Option<Spanned<usize>>,
    work_stealing: Option<bool>,
    connect_timeout: Option<Dur>,
    upstream_timeout: Option<Dur>,
    upstream_idle_timeout: Option<Dur>,
    max_retries: Option<usize>,
    metrics: Option<bool>,
    client_timeout: Option<Dur>,
    shutdown_grace: Option<Dur>,
    access_log: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileAdmin {
    listen: Option<Spanned<Addr>>,
    state_file: Option<String>,
    token_file: Option<Spanned<String>>,
    upgrade_socket: Option<Spanned<String>>,
    nice: Option<Spanned<i32>>,
    realtime: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileReleases {
    address_template: Spanned<String>,
    initial: Option<ReleaseName>,
    validation_window: Option<Dur>,
    #[serde(default)]
    preview: bool,
    drain_timeout: Option<Dur>,
    #[serde(default)]
    retire_hooks: Vec<Spanned<Vec<String>>>,
    hook_timeout: Option<Dur>,
    resolve_interval: Option<Dur>,
    warm_check_interval: Option<Spanned<Dur>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileService {
    name: Spanned<ServiceName>,
    port: Spanned<u16>,
    #[serde(default)]
    routes: Vec<Spanned<String>>,
    #[serde(default)]
    checks: Vec<Spanned<FileCheck>>,
    image: Option<Spanned<String>>,
    container: Option<Spanned<FileContainer>>,
    overlap: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileRelease {
    name: Spanned<ReleaseName>,
    backends: BTreeMap<Spanned<ServiceName>, Vec<Endpoint>>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
enum FileCheckKind {
    Http,
    Graphql,
    Smoke,
    Command,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileCheck {
    kind: FileCheckKind,
    name: Option<String>,
    path: Option<String>,
    expect_status: Option<u16>,
    expect_body: Option<String>,
    query: Option<String>,
    requests: Option<Vec<FileSmokeRequest>>,
    argv: Option<Vec<String>>,
    timeout: Option<Dur>,
    retries: Option<u32>,
    interval: Option<Dur>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileSmokeRequest {
    #[serde(default = "get")]
    method: String,
    path: String,
    body: Option<String>,
    #[serde(default = "ok")]
    expect_status: u16,
    expect_body: Option<String>,
}

fn get() -> String {
    "GET".into()
}
fn ok() -> u16 {
    200
}

/// Where the access log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    /// Standard output.
    Stdout,
    /// Appended to this file.
    File(PathBuf),
}

/// A validated configuration: everything `serve` needs.
#[derive(Debug)]
pub struct Config {
    /// The file it came from.
    pub path: PathBuf,
    /// Plaintext proxy listen addresses.
    pub listen: Vec<SocketAddr>,
    /// TLS proxy listen addresses (`[tls]` is set when there are any).
    pub listen_tls: Vec<SocketAddr>,
    /// Plaintext listeners also take HTTP/2 with prior knowledge (h2c).
    pub h2c: bool,
    /// Certificates, handshake settings and ACME, with `listen-tls`.
    pub tls: Option<TlsConfig>,
    /// Worker threads of the proxy service.
    pub threads: usize,
    /// Whether the proxy's worker threads share one work-stealing runtime
    /// (pingora's default) or each run their own.
    pub work_stealing: bool,
    /// Data-plane tunables.
    pub proxy: ProxySettings,
    /// How long SIGTERM waits for in-flight requests.
    pub shutdown_grace: Duration,
    /// Longest wait for a client's complete request head (idle keep-alive included).
    pub client_timeout: Duration,
    /// Access log destination (off when `None`).
    pub access_log: Option<AccessLogTarget>,
    /// Admin listen address.
    pub admin_listen: SocketAddr,
    /// Admin bearer token, read from `token-file`.
    pub token: Option<String>,
    /// Services and routes.
    pub topology: Topology,
    /// Checks per service (topology order).
    pub checks: Vec<Vec<Check>>,
    /// Control-plane settings.
    pub control: ControlSettings,
    /// First-start seed.
    pub seed: Seed,
    /// How often backends are re-resolved.
    pub resolve_interval: Duration,
    /// The Unix socket a `serve --upgrade` process receives the listening
    /// sockets on (default: the state file's path plus `.upgrade.sock`, so two
    /// canopy instances on one host never share it).
    pub upgrade_socket: PathBuf,
    /// Where the serving process writes its pid (the state file's path plus
    /// `.pid`): `serve --upgrade` signals that process to hand over.
    pub pid_file: PathBuf,
    /// `[docker]` and the services' images: `canopy deploy` is enabled when set.
    pub deploy: Option<DeploySettings>,
}

struct Ctx<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Ctx<'_> {
    fn err(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid(Box::new(Located::new(self.path, self.text, Some(span), message.into())))
    }

    fn relative(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.path.parent().unwrap_or(Path::new(".")).join(p)
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
    let file: FileConfig = toml::from_str(text).map_err(|source| ConfigError::Parse {
        at: Located::new(path, text, source.span(), source.message().to_string()),
        source: Box::new(source),
    })?;
    let cx = Ctx { path, text };
    let whole = 0..0;

    // [[service]]: names, ports, routes, checks
    let mut services: Vec<Service> = Vec::new();
    let mut routes: Vec<(usize, Route)> = Vec::new();
    let mut checks = Vec::new();
    for (i, s) in file.service.iter().enumerate() {
        Topology::check_service(&services, s.name.get_ref()).map_err(|e| cx.err(s.name.span(), e.to_string()))?;
        if *s.port.get_ref() == 0 {
            return Err(cx.err(s.port.span(), "port must be between 1 and 65535"));
        }
        services.push(Service { name: s.name.get_ref().clone(), port: *s.port.get_ref() });
        for r in &s.routes {
            let route = Route::parse(r.get_ref()).map_err(|e| cx.err(r.span(), e.to_string()))?;
            Topology::check_route(&services, &routes, i, &route).map_err(|e| cx.err(r.span(), e.to_string()))?;
            routes.push((i, route));
        }
        let mut svc_checks = Vec::new();
        for c in &s.checks {
            svc_checks.push(check(&cx, c)?);
        }
        checks.push(svc_checks);
    }
    if services.is_empty() {
        return Err(cx.err(whole.clone(), "no [[service]] is configured; canopy needs at least one"));
    }
    if routes.is_empty() {
        return Err(cx.err(whole, "no service has `routes`; nothing would be served"));
    }
    let template = AddressTemplate::parse(file.releases.address_template.get_ref())
        .map_err(|e| cx.err(file.releases.address_template.span(), e.to_string()))?;
    let topology = Topology::new(services, routes, template).expect("rules checked above");

    // [[release]] seeds
    let mut seed = Seed { initial: file.releases.initial.clone(), releases: BTreeMap::new() };
    for r in &file.release {
        if seed.releases.contains_key(r.name.get_ref()) {
            return Err(cx.err(r.name.span(), format!("release `{}` is listed twice", r.name.get_ref())));
        }
        let mut backends = BTreeMap::new();
        for (svc, list) in &r.backends {
            if topology.service_index(svc.get_ref()).is_none() {
                return Err(cx.err(svc.span(), format!("unknown service `{}` in release backends", svc.get_ref())));
            }
            if list.is_empty() {
                return Err(cx.err(svc.span(), format!("service `{}` has an empty backend list", svc.get_ref())));
            }
            backends.insert(svc.get_ref().clone(), list.clone());
        }
        seed.releases.insert(r.name.get_ref().clone(), backends);
    }

    // [proxy]
    let p = &file.proxy;
    let addresses = |field: &Option<Spanned<OneOrMany<String>>>| -> Result<Vec<SocketAddr>, ConfigError> {
        let Some(field) = field else { return Ok(Vec::new()) };
        let strs: Vec<&String> = match field.get_ref() {
            OneOrMany::One(a) => vec![a],
            OneOrMany::Many(v) => v.iter().collect(),
        };
        strs.into_iter()
            .map(|a| {
                a.parse::<SocketAddr>().map_err(|_| {
                    cx.err(field.span(), format!("invalid listen address `{a}`: expected ip:port such as `0.0.0.0:8080` or `[::]:8080`"))
                })
            })
            .collect()
    };
    let listen = addresses(&p.listen)?;
    let listen_tls = addresses(&p.listen_tls)?;
    let listen_span = p.listen.as_ref().or(p.listen_tls.as_ref()).map_or(0..0, Spanned::span);
    if listen.is_empty() && listen_tls.is_empty() {
        return Err(cx.err(listen_span, "[proxy] needs at least one address in `listen` or `listen-tls`"));
    }
    let threads = match &p.threads {
        Some(t) if *t.get_ref() == 0 || *t.get_ref() > 1024 => return Err(cx.err(t.span(), "threads must be between 1 and 1024")),
        Some(t) => *t.get_ref(),
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let defaults = ProxySettings::default();
    let mut proxy = ProxySettings {
        connect_timeout: p.connect_timeout.map_or(defaults.connect_timeout, |d| d.0),
        upstream_timeout: p.upstream_timeout.map_or(defaults.upstream_timeout, |d| d.0),
        upstream_idle_timeout: p.upstream_idle_timeout.map_or(defaults.upstream_idle_timeout, |d| d.0),
        max_retries: p.max_retries.unwrap_or(defaults.max_retries),
        metrics: p.metrics.unwrap_or(defaults.metrics),
        https_redirect: None,
        hsts: None,
    };
    let access_log = p.access_log.as_deref().map(|s| match s {
        "stdout" | "-" => AccessLogTarget::Stdout,
        f => AccessLogTarget::File(cx.relative(f)),
    });

    // [admin]
    let admin_listen = file.admin.listen.as_ref().map_or(SocketAddr::from(([127, 0, 0, 1], 9901)), |a| a.get_ref().0);
    let token = match &file.admin.token_file {
        Some(t) => {
            let p = cx.relative(t.get_ref());
            let raw = std::fs::read_to_string(&p).map_err(|e| cx.err(t.span(), format!("cannot read token file {}: {e}", p.display())))?;
            let token = raw.trim().to_string();
            if token.len() < 16 {
                return Err(cx.err(t.span(), format!("token file {} holds fewer than 16 characters", p.display())));
            }
            Some(token)
        }
        None => None,
    };
    let admin_span = file.admin.listen.as_ref().map_or(0..0, |a| a.span());
    let all: Vec<(SocketAddr, Range<usize>)> = listen
        .iter()
        .map(|a| (*a, p.listen.as_ref().map_or(0..0, Spanned::span)))
        .chain(listen_tls.iter().map(|a| (*a, p.listen_tls.as_ref().map_or(0..0, Spanned::span))))
        .collect();
    for (i, (a, span)) in all.iter().enumerate() {
        if let Some((b, _)) = all[..i].iter().find(|(b, _)| overlaps(a, b)) {
            return Err(cx.err(span.clone(), format!("listen addresses {b} and {a} overlap: each address may be listed once")));
        }
        if overlaps(a, &admin_listen) {
            // pingora would share one socket between both services: half the
            // proxy's connections would reach the admin API and vice versa
            let (span, which) = if admin_span.is_empty() {
                (span.clone(), "the default admin listen address")
            } else {
                (admin_span.clone(), "admin listen")
            };
            return Err(cx.err(span, format!("{which} {admin_listen} overlaps proxy listen {a}: the admin API needs a port of its own")));
        }
    }
    if !admin_listen.ip().is_loopback() && token.is_none() {
        let span = admin_span;
        return Err(cx.err(
            span,
            format!("admin listens on non-loopback {admin_listen}: set `token-file` so the admin API requires a bearer token"),
        ));
    }

    // [releases]
    let r = &file.releases;
    for h in &r.retire_hooks {
        if h.get_ref().first().is_none_or(|a| a.is_empty()) {
            return Err(cx.err(h.span(), "a retire hook needs a program (argv[0])"));
        }
    }
    let warm_check_interval = match &r.warm_check_interval {
        Some(d) if d.get_ref().0 < Duration::from_millis(100) => {
            return Err(cx.err(d.span(), "warm-check-interval must be at least 100ms"));
        }
        Some(d) => d.get_ref().0,
        None => Duration::from_secs(1),
    };
    let admin_nice = match &file.admin.nice {
        Some(n) if !(-20..=19).contains(n.get_ref()) => return Err(cx.err(n.span(), "nice must be between -20 and 19")),
        Some(n) => *n.get_ref(),
        None => -10,
    };
    let state_file = cx.relative(file.admin.state_file.as_deref().unwrap_or("canopy-state.json"));
    let beside_state = |suffix: &str| {
        let mut p = state_file.clone().into_os_string();
        p.push(suffix);
        PathBuf::from(p)
    };
    let upgrade_socket = match &file.admin.upgrade_socket {
        Some(s) => (cx.relative(s.get_ref()), Some(s.span())),
        None => (beside_state(".upgrade.sock"), None),
    };
    // sun_path holds 108 bytes with the terminating NUL
    if upgrade_socket.0.as_os_str().len() > 107 {
        let message = format!(
            "upgrade socket path {} is longer than the 107 bytes a Unix socket path may have; set `upgrade-socket` to a shorter path",
            upgrade_socket.0.display()
        );
        return Err(cx.err(upgrade_socket.1.unwrap_or(0..0), message));
    }
    let (upgrade_socket, pid_file) = (upgrade_socket.0, beside_state(".pid"));
    let deploy = docker(&cx, &file)?;
    let tls = match (&file.tls, listen_tls.first()) {
        (None, None) => None,
        (None, Some(_)) => {
            let span = p.listen_tls.as_ref().map_or(0..0, Spanned::span);
            return Err(cx.err(span, "`listen-tls` needs a [tls] section with [[tls.certificate]] files or [tls.acme]"));
        }
        (Some(t), None) => return Err(cx.err(t.span(), "[tls] is set but [proxy] has no `listen-tls`: nothing would serve HTTPS")),
        (Some(t), Some(first_tls)) => {
            let parsed = tls::parse(&cx, t.get_ref(), beside_state(".acme"))?;
            if parsed.tls.certificates.is_empty() && parsed.tls.acme.is_none() {
                return Err(cx.err(t.span(), "[tls] has no [[tls.certificate]] and no [tls.acme]: no handshake could succeed"));
            }
            if listen.is_empty() && (parsed.redirect_http || parsed.tls.acme.is_some()) {
                let what = if parsed.redirect_http { "redirect-http" } else { "[tls.acme] (its HTTP-01 challenges come over plain HTTP)" };
                return Err(cx.err(t.span(), format!("{what} needs a plaintext `listen` address (port 80 in production)")));
            }
            proxy.https_redirect = parsed.redirect_http.then_some(first_tls.port());
            proxy.hsts = parsed.hsts;
            Some(parsed.tls)
        }
    };
    let control = ControlSettings {
        state_file,
        validation_window: r.validation_window.map_or(Duration::from_secs(600), |d| d.0),
        drain_timeout: r.drain_timeout.map_or(Duration::from_secs(30), |d| d.0),
        retire_hooks: r.retire_hooks.iter().map(|h| h.get_ref().clone()).collect(),
        hook_timeout: r.hook_timeout.map_or(Duration::from_secs(60), |d| d.0),
        preview: r.preview,
        warm_check_interval,
        admin_priority: canopy_admin::AdminPriority { realtime: file.admin.realtime.unwrap_or(true), nice: admin_nice },
    };

    Ok(Config {
        path: path.to_path_buf(),
        listen,
        listen_tls,
        h2c: p.h2c.unwrap_or(false),
        tls,
        threads,
        work_stealing: p.work_stealing.unwrap_or(true),
        proxy,
        shutdown_grace: p.shutdown_grace.map_or(Duration::from_secs(30), |d| d.0),
        client_timeout: p.client_timeout.map_or(Duration::from_secs(60), |d| d.0).max(Duration::from_secs(1)),
        access_log,
        admin_listen,
        token,
        topology,
        checks,
        control,
        seed,
        resolve_interval: r.resolve_interval.map_or(Duration::from_secs(30), |d| d.0),
        upgrade_socket,
        pid_file,
        deploy,
    })
}

/// `[docker]` and each service's `image`, `[service.container]` and
/// `overlap`, checked; `None` without `[docker]`.
fn docker(cx: &Ctx<'_>, file: &FileConfig) -> Result<Option<DeploySettings>, ConfigError> {
    let Some(section) = &file.docker else {
        if let Some(s) = file.service.iter().find(|s| s.image.is_some() || s.container.is_some() || s.overlap.is_some()) {
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
    let mut services = Vec::new();
    for s in &file.service {
        let Some(image) = &s.image else {
            if let Some(c) = &s.container {
                return Err(
                    cx.err(c.span(), format!("[service.container] of service `{}` needs `image` in its [[service]]", s.name.get_ref()))
                );
            }
            if let Some(o) = &s.overlap {
                return Err(cx.err(o.span(), format!("`overlap` of service `{}` applies only to services with `image`", s.name.get_ref())));
            }
            services.push(None);
            continue;
        };
        services.push(Some(service_container(cx, s, image)?));
    }
    if services.iter().all(Option::is_none) {
        return Err(cx.err(section.span(), "[docker] is set but no [[service]] has `image`: nothing would be deployed"));
    }
    Ok(Some(DeploySettings {
        socket,
        network: network.clone(),
        keep_releases: d.keep_releases.unwrap_or(3),
        deploy_timeout: d.deploy_timeout.map_or(Duration::from_secs(300), |t| t.0),
        stop_timeout: d.stop_timeout.map_or(Duration::from_secs(10), |t| t.0),
        services,
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
    let mut env = Vec::new();
    if let Some(f) = &c.env_file {
        let path = cx.relative(f.get_ref());
        let text = std::fs::read_to_string(&path).map_err(|e| cx.err(f.span(), format!("cannot read env file {}: {e}", path.display())))?;
        env = canopy_docker::parse_env_file(&path.display().to_string(), &text).map_err(|e| cx.err(f.span(), e.to_string()))?;
    }
    for (key, value) in &c.env {
        if key.is_empty() || key.contains('=') || key.contains(char::is_whitespace) {
            let span = s.container.as_ref().map_or(0..0, Spanned::span);
            return Err(cx.err(span, format!("invalid environment variable name `{key}`")));
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
        let span = s.container.as_ref().map_or(0..0, Spanned::span);
        return Err(cx.err(span, "`command` is empty: leave it out to keep the image's"));
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
        overlap: s.overlap.as_ref().is_none_or(|o| *o.get_ref()),
    })
}

/// `512m`, `2g`, `1048576`, `64k` in bytes; Docker refuses less than 6 MiB.
fn memory(s: &str) -> Option<i64> {
    let s = s.trim().to_ascii_lowercase();
    let s = s.strip_suffix('b').unwrap_or(&s);
    let (digits, unit) = match s.char_indices().last()? {
        (i, 'k') => (&s[..i], 1i64 << 10),
        (i, 'm') => (&s[..i], 1 << 20),
        (i, 'g') => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    let bytes = digits.parse::<i64>().ok()?.checked_mul(unit)?;
    (bytes >= 6 << 20).then_some(bytes)
}

/// Whether binding both addresses would clash: the same port on the same IP,
/// or on a wildcard that covers the other (`[::]` is dual-stack on Linux).
fn overlaps(a: &SocketAddr, b: &SocketAddr) -> bool {
    let covers = |x: &SocketAddr, y: &SocketAddr| x.ip() == y.ip() || (x.ip().is_unspecified() && (x.is_ipv6() || y.is_ipv4()));
    a.port() == b.port() && (covers(a, b) || covers(b, a))
}

/// Converts one `checks = [...]` entry, refusing fields that do not apply to its kind.
fn check(cx: &Ctx<'_>, c: &Spanned<FileCheck>) -> Result<Check, ConfigError> {
    let f = c.get_ref();
    let err = |m: String| cx.err(c.span(), m);
    let kind_name = match f.kind {
        FileCheckKind::Http => "http",
        FileCheckKind::Graphql => "graphql",
        FileCheckKind::Smoke => "smoke",
        FileCheckKind::Command => "command",
    };
    let allowed: &[&str] = match f.kind {
        FileCheckKind::Http => &["path", "expect-status", "expect-body"],
        FileCheckKind::Graphql => &["path", "query"],
        FileCheckKind::Smoke => &["requests"],
        FileCheckKind::Command => &["argv"],
    };
    let present = [
        ("path", f.path.is_some()),
        ("expect-status", f.expect_status.is_some()),
        ("expect-body", f.expect_body.is_some()),
        ("query", f.query.is_some()),
        ("requests", f.requests.is_some()),
        ("argv", f.argv.is_some()),
    ];
    if let Some((k, _)) = present.iter().find(|(k, p)| *p && !allowed.contains(k)) {
        return Err(err(format!("`{k}` does not apply to {kind_name} checks (they take: {})", allowed.join(", "))));
    }
    let need = |v: &Option<String>, k: &str| v.clone().ok_or_else(|| err(format!("{kind_name} checks need `{k}`")));
    let kind = match f.kind {
        FileCheckKind::Http => CheckKind::Http {
            path: need(&f.path, "path")?,
            expect_status: f.expect_status.unwrap_or(200),
            expect_body: f.expect_body.clone(),
        },
        FileCheckKind::Graphql => CheckKind::Graphql { path: need(&f.path, "path")?, query: need(&f.query, "query")? },
        FileCheckKind::Smoke => {
            let mut requests = Vec::new();
            for r in f.requests.as_deref().unwrap_or_default() {
                let method = http::Method::from_bytes(r.method.to_ascii_uppercase().as_bytes())
                    .map_err(|_| err(format!("invalid HTTP method `{}`", r.method)))?;
                requests.push(SmokeRequest {
                    method,
                    path: r.path.clone(),
                    body: r.body.clone(),
                    expect_status: r.expect_status,
                    expect_body: r.expect_body.clone(),
                });
            }
            CheckKind::Smoke { requests }
        }
        FileCheckKind::Command => CheckKind::Command { argv: f.argv.clone().unwrap_or_default() },
    };
    let check = Check {
        name: f.name.clone().unwrap_or_else(|| Check::default_name(&kind)),
        kind,
        timeout: f.timeout.map_or(Duration::from_secs(5), |d| d.0),
        retries: f.retries.unwrap_or(2),
        interval: f.interval.map_or(Duration::from_secs(1), |d| d.0),
    };
    check.validate().map_err(|e| err(e.to_string()))?;
    Ok(check)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[proxy]
listen = "127.0.0.1:8080"

[releases]
address-template = "app-{service}--{release}"

[[service]]
name = "server"
port = 3000
routes = ["/"]
"#;

    fn err(text: &str) -> String {
        parse(Path::new("proxy.toml"), text).unwrap_err().to_string()
    }

    #[test]
    fn minimal_config_loads_with_defaults() {
        let c = parse(Path::new("/etc/canopy/proxy.toml"), MINIMAL).unwrap();
        assert_eq!(c.admin_listen, "127.0.0.1:9901".parse().unwrap());
        assert_eq!(c.control.state_file, Path::new("/etc/canopy/canopy-state.json"));
        assert_eq!(c.control.validation_window, Duration::from_secs(600));
        assert_eq!(c.shutdown_grace, Duration::from_secs(30));
    }

    #[test]
    fn unknown_key_names_line_and_column() {
        let text = MINIMAL.replace("port = 3000", "port = 3000\nprot = 1");
        let e = err(&text);
        assert!(e.starts_with("proxy.toml:11:1: unknown field `prot`"), "{e}");
        assert!(e.contains("11 | prot = 1"), "{e}");
    }

    #[test]
    fn duplicate_service_points_at_second_name() {
        let text = format!("{MINIMAL}\n[[service]]\nname = \"server\"\nport = 3001\n");
        let e = err(&text);
        assert!(e.starts_with("proxy.toml:14:8: duplicate service name `server`"), "{e}");
    }

    #[test]
    fn duplicate_route_is_refused() {
        let text = format!("{MINIMAL}\n[[service]]\nname = \"web\"\nport = 3001\nroutes = [\"/\"]\n");
        let e = err(&text);
        assert!(e.starts_with("proxy.toml:16:11: route `/` of service `web` is already routed to service `server`"), "{e}");
    }

    #[test]
    fn bad_duration_and_address() {
        let e = err(&MINIMAL.replace("[releases]", "[releases]\nvalidation-window = \"ten minutes\""));
        assert!(e.starts_with("proxy.toml:6:21: invalid duration `ten minutes`"), "{e}");
        let e = err(&MINIMAL.replace("127.0.0.1:8080", "localhost:http"));
        assert!(e.starts_with("proxy.toml:3:10: invalid listen address `localhost:http`"), "{e}");
        let e = err(&MINIMAL.replace("[releases]", "[releases]\nwarm-check-interval = \"10ms\""));
        assert!(e.starts_with("proxy.toml:6:23: warm-check-interval must be at least 100ms"), "{e}");
        let e = err(&format!("{MINIMAL}\n[admin]\nnice = -21\n"));
        assert!(e.contains(":8: nice must be between -20 and 19"), "{e}");
        let e = err(&format!("{MINIMAL}\n[admin]\nrealtime = \"yes\"\n"));
        assert!(e.starts_with("proxy.toml:14:12: invalid type: string \"yes\", expected a boolean"), "{e}");
    }

    #[test]
    fn check_fields_must_fit_kind() {
        let text =
            MINIMAL.replace("routes = [\"/\"]", "routes = [\"/\"]\nchecks = [{ kind = \"http\", path = \"/health\", query = \"{ x }\" }]");
        let e = err(&text);
        assert!(e.contains("`query` does not apply to http checks"), "{e}");
    }

    #[test]
    fn listen_addresses_must_not_overlap() {
        let e = err(&format!("{MINIMAL}\n[admin]\nlisten = \"127.0.0.1:8080\"\n"));
        assert!(e.starts_with("proxy.toml:14:10: admin listen 127.0.0.1:8080 overlaps proxy listen 127.0.0.1:8080"), "{e}");
        let e = err(&MINIMAL.replace("\"127.0.0.1:8080\"", "\"0.0.0.0:9901\""));
        assert!(
            e.starts_with("proxy.toml:3:10: the default admin listen address 127.0.0.1:9901 overlaps proxy listen 0.0.0.0:9901"),
            "{e}"
        );
        let e = err(&MINIMAL.replace("\"127.0.0.1:8080\"", "[\"[::]:8080\", \"127.0.0.1:8080\"]"));
        assert!(e.starts_with("proxy.toml:3:10: listen addresses [::]:8080 and 127.0.0.1:8080 overlap"), "{e}");
        // distinct IPs, ports or families are fine
        for (a, b) in [("127.0.0.1:8080", "127.0.0.2:8080"), ("127.0.0.1:8080", "127.0.0.1:8081"), ("0.0.0.0:8080", "[::1]:8080")] {
            let text = MINIMAL.replace("\"127.0.0.1:8080\"", &format!("[\"{a}\", \"{b}\"]"));
            assert!(parse(Path::new("proxy.toml"), &text).is_ok(), "{a} {b}");
        }
    }

    const DOCKER: &str = r#"
[docker]
network = "shop"
keep-releases = 2
deploy-timeout = "90s"

[[service]]
name = "worker"
port = 3020
image = "ghcr.io/acme/worker"
overlap = false

[service.container]
env = { NODE_ENV = "production" }
volumes = ["assets:/data", "/srv/conf:/conf:ro"]
command = ["node", "worker.js"]
memory = "512m"
cpus = 1.5
healthcheck = { test = ["/bin/probe"], interval = "2s", retries = 5 }
"#;

    #[test]
    fn docker_section_and_service_containers() {
        let c = parse(Path::new("proxy.toml"), &format!("{MINIMAL}{DOCKER}")).unwrap();
        let d = c.deploy.expect("[docker] set");
        assert_eq!((d.network.as_str(), d.keep_releases), ("shop", 2));
        assert_eq!((d.deploy_timeout, d.stop_timeout), (Duration::from_secs(90), Duration::from_secs(10)));
        assert!(d.services[0].is_none(), "server has no image: backends from the template");
        let w = d.services[1].as_ref().unwrap();
        assert_eq!(w.repository, "ghcr.io/acme/worker");
        assert_eq!(w.env, ["NODE_ENV=production"]);
        assert_eq!(w.volumes, ["assets:/data", "/srv/conf:/conf:ro"]);
        assert_eq!(w.memory_bytes, Some(512 << 20));
        assert_eq!(w.cpus, Some(1.5));
        assert!(!w.overlap);
        let h = w.healthcheck.as_ref().unwrap();
        assert_eq!((h.test.clone(), h.interval, h.retries), (vec!["/bin/probe".to_string()], Some(Duration::from_secs(2)), Some(5)));
        // without [docker] nothing is deployed
        assert!(parse(Path::new("proxy.toml"), MINIMAL).unwrap().deploy.is_none());
    }

    #[test]
    fn docker_errors_point_at_the_value() {
        let full = format!("{MINIMAL}{DOCKER}");
        let e = err(&full.replace("ghcr.io/acme/worker", "ghcr.io/acme/worker:elm"));
        assert!(e.starts_with("proxy.toml:21:9: image `ghcr.io/acme/worker:elm` has a tag (`elm`): the tag is the release name"), "{e}");
        let e = err(&full.replace("\"512m\"", "\"lots\""));
        assert!(e.starts_with("proxy.toml:28:10: invalid memory limit `lots`"), "{e}");
        let e = err(&full.replace("cpus = 1.5", "cpus = 0.0"));
        assert!(e.starts_with("proxy.toml:29:8: cpus must be a positive number"), "{e}");
        let e = err(&full.replace("\"/srv/conf:/conf:ro\"", "\"conf\""));
        assert!(e.starts_with("proxy.toml:26:28: invalid volume `conf`"), "{e}");
        let e = err(&full.replace("network = \"shop\"", "network = \"shop net\""));
        assert!(e.starts_with("proxy.toml:14:11: invalid Docker network name `shop net`"), "{e}");
        let e = err(&full.replace("network = \"shop\"", "network = \"shop\"\nsocket = \"docker.sock\""));
        assert!(e.starts_with("proxy.toml:15:10: invalid Docker socket `docker.sock`"), "{e}");
        let e = err(&full.replace("keep-releases = 2", "keep-release = 2"));
        assert!(e.starts_with("proxy.toml:15:1: unknown field `keep-release`"), "{e}");
        let e = err(&full.replace("cpus = 1.5", "cpu = 1.5"));
        assert!(e.starts_with("proxy.toml:29:1: unknown field `cpu`"), "{e}");
        let e = err(&full.replace("deploy-timeout = \"90s\"", "deploy-timeout = \"soon\""));
        assert!(e.starts_with("proxy.toml:16:18: invalid duration `soon`"), "{e}");
        // image without [docker]
        let without = full.replace("[docker]\nnetwork = \"shop\"\nkeep-releases = 2\ndeploy-timeout = \"90s\"\n", "");
        let e = err(&without);
        assert!(e.contains("service `worker` sets how canopy runs its containers, but there is no [docker] section"), "{e}");
        // container table without image
        let e = err(&full.replace("image = \"ghcr.io/acme/worker\"\n", ""));
        assert!(e.contains("[service.container] of service `worker` needs `image`"), "{e}");
        // env file: missing, then a bad line with its line number
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.toml");
        let text = full.replace("env = {", "env-file = \"worker.env\"\nenv = {");
        let e = parse(&path, &text).unwrap_err().to_string();
        assert!(e.contains("cannot read env file") && e.contains("worker.env"), "{e}");
        std::fs::write(dir.path().join("worker.env"), "DB=postgres\nBAD KEY=1\n").unwrap();
        let e = parse(&path, &text).unwrap_err().to_string();
        assert!(e.contains("line 2: variable name `BAD KEY` contains whitespace"), "{e}");
        std::fs::write(dir.path().join("worker.env"), "DB=postgres\n").unwrap();
        let c = parse(&path, &text).unwrap();
        assert_eq!(c.deploy.unwrap().services[1].as_ref().unwrap().env, ["DB=postgres", "NODE_ENV=production"]);
    }

    #[test]
    fn memory_limits() {
        assert_eq!(memory("512m"), Some(512 << 20));
        assert_eq!(memory("2G"), Some(2 << 30));
        assert_eq!(memory("8388608"), Some(8 << 20));
        assert_eq!(memory("1m"), None, "Docker refuses less than 6 MiB");
        assert_eq!(memory("m"), None);
    }

    #[test]
    fn public_admin_needs_token() {
        let text = format!("{MINIMAL}\n[admin]\nlisten = \"0.0.0.0:9901\"\n");
        let e = err(&text);
        assert!(e.contains("set `token-file`"), "{e}");
    }
}
