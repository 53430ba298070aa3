//! `[tls]` of proxy.toml: certificate files (loaded and checked here, so a
//! bad file stops `check-config` and start-up with its path and reason),
//! handshake settings, the HTTPS redirect, HSTS and `[tls.acme]`.

use std::path::PathBuf;
use std::time::Duration;

use canopy_acme::AcmeSettings;
use canopy_proxy::{Certificate, TlsOptions};
use serde::Deserialize;
use toml::Spanned;

use super::error::{ConfigError, Ctx};
use super::value::{or, Dur, OneOrMany};

/// `watch-interval` when unset (`"0s"` turns the watch off).
const WATCH_INTERVAL: Duration = Duration::from_secs(5);
/// The shortest `handshake-timeout` and `watch-interval`.
const INTERVAL_MIN: Duration = Duration::from_millis(100);
/// `redirect-http` when unset: plaintext requests are served.
const REDIRECT_HTTP: bool = false;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct FileTls {
    h2: Option<bool>,
    handshake_timeout: Option<Spanned<Dur>>,
    redirect_http: Option<Spanned<bool>>,
    hsts: Option<Spanned<String>>,
    watch_interval: Option<Spanned<Dur>>,
    #[serde(default)]
    certificate: Vec<Spanned<FileCertificate>>,
    acme: Option<Spanned<FileAcme>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileCertificate {
    cert: Spanned<String>,
    key: Spanned<String>,
    #[serde(default)]
    default: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileAcme {
    directory: Spanned<String>,
    #[serde(default)]
    contact: Vec<Spanned<String>>,
    names: Spanned<Vec<Spanned<OneOrMany<String>>>>,
    cache_dir: Option<String>,
    ca_root: Option<Spanned<String>>,
    retry_interval: Option<Dur>,
}

/// A `[[tls.certificate]]` entry: where its files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFile {
    /// PEM chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// Served to clients whose SNI no certificate has (or who send none).
    pub default: bool,
}

impl CertFile {
    /// Loads and checks the pair (see [`Certificate::from_files`]).
    pub fn load(&self) -> Result<Certificate, canopy_proxy::CertError> {
        Certificate::from_files(&self.cert, &self.key)
    }
}

/// Loads every file of `files`: the certificates and the default's index.
pub fn load_all(files: &[CertFile]) -> Result<(Vec<Certificate>, Option<usize>), canopy_proxy::CertError> {
    let certs = files.iter().map(CertFile::load).collect::<Result<Vec<_>, _>>()?;
    Ok((certs, files.iter().position(|f| f.default)))
}

/// The `[tls]` settings only a new process can change: the listeners'
/// handshake, the certificate watch and ACME.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsListener {
    /// ALPN and handshake deadline.
    pub options: TlsOptions,
    /// How often the files are checked for changes (`None`: never).
    pub watch_interval: Option<Duration>,
    /// `[tls.acme]`.
    pub acme: Option<AcmeSettings>,
}

/// The `[[tls.certificate]]` files and their certificates, loaded and
/// checked: a reload replaces them. Two are equal when they name the same
/// files and those hold the same certificates (by fingerprint).
#[derive(Debug, Clone, Default)]
pub struct TlsCertificates {
    /// The `[[tls.certificate]]` files.
    pub files: Vec<CertFile>,
    /// Those files' certificates, loaded and checked.
    pub certificates: Vec<Certificate>,
}

impl PartialEq for TlsCertificates {
    fn eq(&self, other: &Self) -> bool {
        let Self { files, certificates } = self;
        let fingerprints = |c: &[Certificate]| c.iter().map(Certificate::fingerprint).collect::<Vec<_>>();
        *files == other.files && fingerprints(certificates) == fingerprints(&other.certificates)
    }
}

/// What `[tls]` adds to `[proxy]`'s settings.
pub(super) struct Parsed {
    pub listener: TlsListener,
    pub certificates: TlsCertificates,
    pub redirect_http: bool,
    pub hsts: Option<http::HeaderValue>,
}

/// Checks `[tls]`; `cache_default` is where ACME caches without `cache-dir`.
pub(super) fn parse(cx: &Ctx<'_>, t: &FileTls, cache_default: PathBuf) -> Result<Parsed, ConfigError> {
    let handshake_timeout = match &t.handshake_timeout {
        Some(d) if d.get_ref().0 < INTERVAL_MIN => {
            return Err(cx.err(d.span(), "handshake-timeout must be at least 100ms"));
        }
        Some(d) => d.get_ref().0,
        None => TlsOptions::default().handshake_timeout,
    };
    let watch_interval = match &t.watch_interval {
        Some(d) if d.get_ref().0.is_zero() => None,
        Some(d) if d.get_ref().0 < INTERVAL_MIN => {
            return Err(cx.err(d.span(), "watch-interval must be at least 100ms (or 0s for off)"));
        }
        Some(d) => Some(d.get_ref().0),
        None => Some(WATCH_INTERVAL),
    };
    let hsts = match &t.hsts {
        Some(h) => {
            let v = h.get_ref();
            if !v.trim_start().to_ascii_lowercase().starts_with("max-age=") {
                return Err(cx.err(h.span(), format!("hsts `{v}` must start with `max-age=` (e.g. `max-age=31536000; includeSubDomains`)")));
            }
            Some(http::HeaderValue::from_str(v).map_err(|_| cx.err(h.span(), "hsts holds characters a header value cannot"))?)
        }
        None => None,
    };
    let mut files = Vec::new();
    let mut certificates = Vec::new();
    for c in &t.certificate {
        let f = c.get_ref();
        if f.default && files.iter().any(|x: &CertFile| x.default) {
            return Err(cx.err(c.span(), "only one [[tls.certificate]] may be the `default`"));
        }
        let file = CertFile { cert: cx.relative(f.cert.get_ref()), key: cx.relative(f.key.get_ref()), default: f.default };
        let cert = file.load().map_err(|e| {
            // point at the key for key problems, else at the certificate
            let span = match e {
                canopy_proxy::CertError::BadKey { .. } | canopy_proxy::CertError::Mismatch { .. } => f.key.span(),
                canopy_proxy::CertError::Read { ref path, .. } if *path == file.key => f.key.span(),
                _ => f.cert.span(),
            };
            cx.err(span, e.to_string())
        })?;
        if cert.names().is_empty() {
            return Err(cx.err(
                f.cert.span(),
                format!("{}: the certificate names no host (no DNS subject alternative name or common name)", file.cert.display()),
            ));
        }
        files.push(file);
        certificates.push(cert);
    }
    let acme = match &t.acme {
        Some(a) => Some(acme(cx, a.get_ref(), cache_default)?),
        None => None,
    };
    let redirect_http = t.redirect_http.as_ref().map_or(REDIRECT_HTTP, |r| *r.get_ref());
    let options = TlsOptions { h2: t.h2.unwrap_or(TlsOptions::default().h2), handshake_timeout };
    Ok(Parsed {
        listener: TlsListener { options, watch_interval, acme },
        certificates: TlsCertificates { files, certificates },
        redirect_http,
        hsts,
    })
}

fn acme(cx: &Ctx<'_>, a: &FileAcme, cache_default: PathBuf) -> Result<AcmeSettings, ConfigError> {
    let ca_root = match &a.ca_root {
        Some(p) => {
            let path = cx.relative(p.get_ref());
            std::fs::metadata(&path).map_err(|e| cx.err(p.span(), format!("cannot read ca-root {}: {e}", path.display())))?;
            Some(path)
        }
        None => None,
    };
    let names = a
        .names
        .get_ref()
        .iter()
        .map(|entry| match entry.get_ref() {
            OneOrMany::One(n) => vec![n.to_ascii_lowercase()],
            OneOrMany::Many(v) => v.iter().map(|n| n.to_ascii_lowercase()).collect(),
        })
        .collect();
    let settings = AcmeSettings {
        directory: a.directory.get_ref().clone(),
        contact: a.contact.iter().map(|c| c.get_ref().clone()).collect(),
        names,
        cache_dir: a.cache_dir.as_deref().map_or(cache_default, |d| cx.relative(d)),
        ca_root,
        retry_interval: or(a.retry_interval, canopy_acme::DEFAULT_RETRY_INTERVAL),
    };
    settings.validate().map_err(|e| {
        let span = if matches!(e, canopy_acme::AcmeError::BadDirectory { .. }) { a.directory.span() } else { a.names.span() };
        cx.err(span, e.to_string())
    })?;
    Ok(settings)
}
