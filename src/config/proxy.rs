//! `[proxy]`: where shoppers connect, worker threads, the data plane's
//! timeouts and retries, shutdown and the access log.

use std::net::SocketAddr;
use std::ops::Range;
use std::time::Duration;

use canopy_proxy::{Cidr, ClientIpSource, ErrorPages, ProxySettings, PAGE_STATUSES};
use serde::Deserialize;
use toml::Spanned;

use super::error::{ConfigError, Ctx};
use super::value::{addresses, body_limit, or, Dur, OneOrMany};

/// `h2c` when unset: plaintext listeners speak HTTP/1 only.
const H2C: bool = false;
/// `work-stealing` when unset: pingora's default, one runtime for all workers.
const WORK_STEALING: bool = true;
/// `shutdown-grace` when unset.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// `client-timeout` when unset.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
/// The shortest `client-timeout` (shorter values are raised to it).
const CLIENT_TIMEOUT_MIN: Duration = Duration::from_secs(1);
/// `max-request-body` when unset: larger request bodies are answered 413.
/// Shop and GraphQL requests are a few KiB; uploads (Vendure's admin asset
/// uploads) raise it for their service.
pub const MAX_REQUEST_BODY: u64 = 10 << 20;
/// The most `threads` a config may ask for.
const THREADS_MAX: usize = 1024;

/// `[proxy]` as written. The data-plane defaults are [`ProxySettings::default`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct FileProxy {
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
    max_request_body: Option<Spanned<String>>,
    error_pages: Option<Spanned<String>>,
    trusted_proxies: Option<Spanned<Vec<Spanned<String>>>>,
    client_ip_header: Option<Spanned<String>>,
    request_id: Option<bool>,
    canonical_host: Option<Spanned<String>>,
}

/// Where the access log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    /// Standard output.
    Stdout,
    /// Appended to this file.
    File(std::path::PathBuf),
}

/// `[proxy]`, checked.
pub(super) struct Proxy {
    pub listen: Vec<SocketAddr>,
    pub listen_tls: Vec<SocketAddr>,
    /// Where `listen` and `listen-tls` are written (the start of the file when absent).
    pub listen_span: Range<usize>,
    pub listen_tls_span: Range<usize>,
    pub h2c: bool,
    pub threads: usize,
    pub work_stealing: bool,
    /// `https_redirect` and `hsts` are `[tls]`'s, filled in there.
    pub settings: ProxySettings,
    pub shutdown_grace: Duration,
    pub client_timeout: Duration,
    pub access_log: Option<AccessLogTarget>,
    /// The request body limit of services that set none (`None`: no limit).
    pub max_request_body: Option<u64>,
}

/// Checks `[proxy]`.
pub(super) fn parse(cx: &Ctx<'_>, p: &FileProxy) -> Result<Proxy, ConfigError> {
    let listen = addresses(cx, &p.listen)?;
    let listen_tls = addresses(cx, &p.listen_tls)?;
    let span = |f: &Option<Spanned<OneOrMany<String>>>| f.as_ref().map_or(0..0, Spanned::span);
    if listen.is_empty() && listen_tls.is_empty() {
        let first = p.listen.as_ref().or(p.listen_tls.as_ref()).map_or(0..0, Spanned::span);
        return Err(cx.err(first, "[proxy] needs at least one address in `listen` or `listen-tls`"));
    }
    let threads = match &p.threads {
        Some(t) if *t.get_ref() == 0 || *t.get_ref() > THREADS_MAX => {
            return Err(cx.err(t.span(), format!("threads must be between 1 and {THREADS_MAX}")))
        }
        Some(t) => *t.get_ref(),
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let defaults = ProxySettings::default();
    let settings = ProxySettings {
        connect_timeout: or(p.connect_timeout, defaults.connect_timeout),
        upstream_timeout: or(p.upstream_timeout, defaults.upstream_timeout),
        upstream_idle_timeout: or(p.upstream_idle_timeout, defaults.upstream_idle_timeout),
        max_retries: p.max_retries.unwrap_or(defaults.max_retries),
        metrics: p.metrics.unwrap_or(defaults.metrics),
        https_redirect: None,
        hsts: None,
        error_pages: error_pages(cx, &p.error_pages)?,
        client_ip: client_ip(cx, p)?,
        request_id: p.request_id.unwrap_or(defaults.request_id),
        canonical_host: canonical_host(cx, &p.canonical_host)?,
    };
    let access_log = p.access_log.as_deref().map(|s| match s {
        "stdout" | "-" => AccessLogTarget::Stdout,
        f => AccessLogTarget::File(cx.relative(f)),
    });
    Ok(Proxy {
        listen,
        listen_tls,
        listen_span: span(&p.listen),
        listen_tls_span: span(&p.listen_tls),
        h2c: p.h2c.unwrap_or(H2C),
        threads,
        work_stealing: p.work_stealing.unwrap_or(WORK_STEALING),
        settings,
        shutdown_grace: or(p.shutdown_grace, SHUTDOWN_GRACE),
        client_timeout: or(p.client_timeout, CLIENT_TIMEOUT).max(CLIENT_TIMEOUT_MIN),
        access_log,
        max_request_body: body_limit(cx, &p.max_request_body, Some(MAX_REQUEST_BODY))?,
    })
}

/// `error-pages`: the directory's `404.html`, `413.html`, `502.html`,
/// `503.html` and `504.html` in place of the built-in pages (each one
/// optional; at least one must be there).
fn error_pages(cx: &Ctx<'_>, dir: &Option<Spanned<String>>) -> Result<ErrorPages, ConfigError> {
    let Some(dir) = dir else { return Ok(ErrorPages::default()) };
    let path = cx.relative(dir.get_ref());
    if !path.is_dir() {
        return Err(cx.err(dir.span(), format!("error-pages: {} is not a directory", path.display())));
    }
    let mut custom = Vec::new();
    for status in PAGE_STATUSES {
        let file = path.join(format!("{status}.html"));
        match std::fs::read(&file) {
            Ok(html) => custom.push((status, html)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(cx.err(dir.span(), format!("error-pages: cannot read {}: {e}", file.display()))),
        }
    }
    if custom.is_empty() {
        let names: Vec<String> = PAGE_STATUSES.iter().map(|s| format!("{s}.html")).collect();
        return Err(cx.err(dir.span(), format!("error-pages: {} holds none of {}", path.display(), names.join(", "))));
    }
    Ok(ErrorPages::with(custom))
}

/// `trusted-proxies` and `client-ip-header` (which needs the former).
fn client_ip(cx: &Ctx<'_>, p: &FileProxy) -> Result<Option<ClientIpSource>, ConfigError> {
    let Some(list) = &p.trusted_proxies else {
        return match &p.client_ip_header {
            Some(h) => Err(cx.err(h.span(), "client-ip-header needs `trusted-proxies`: only a trusted proxy's header is believed")),
            None => Ok(None),
        };
    };
    let trusted = list
        .get_ref()
        .iter()
        .map(|c| c.get_ref().trim().parse::<Cidr>().map_err(|e| cx.err(c.span(), e)))
        .collect::<Result<Box<[_]>, _>>()?;
    if trusted.is_empty() {
        return Err(
            cx.err(list.span(), "trusted-proxies is empty: name the address blocks of your CDN or load balancer, or leave the key out")
        );
    }
    let header = match &p.client_ip_header {
        Some(h) => http::HeaderName::from_bytes(h.get_ref().trim().as_bytes()).map_err(|_| {
            cx.err(
                h.span(),
                format!("invalid client-ip-header `{}`: write a header name such as `X-Forwarded-For` or `CF-Connecting-IP`", h.get_ref()),
            )
        })?,
        None => canopy_proxy::X_FORWARDED_FOR.clone(),
    };
    Ok(Some(ClientIpSource { trusted, header }))
}

/// `canonical-host`: a host name alone (no scheme, port or path).
fn canonical_host(cx: &Ctx<'_>, host: &Option<Spanned<String>>) -> Result<Option<String>, ConfigError> {
    let Some(host) = host else { return Ok(None) };
    let name = host.get_ref().trim().to_ascii_lowercase();
    let valid = !name.is_empty()
        && name.split('.').all(|label| !label.is_empty() && label.len() < 64 && !label.starts_with('-') && !label.ends_with('-'))
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if !valid {
        return Err(
            cx.err(host.span(), format!("invalid canonical-host `{}`: write a host name alone, e.g. `shop.example`", host.get_ref()))
        );
    }
    Ok(Some(name))
}
