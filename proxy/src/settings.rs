//! The request path's settings: `[proxy]` tunables and what a snapshot
//! carries of them, so a config reload applies from the next request.

use std::time::Duration;

use crate::access_log::AccessLog;
use crate::client_ip::ClientIpSource;
use crate::error_pages::ErrorPages;

/// Data-plane tunables, from `[proxy]` in proxy.toml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxySettings {
    /// Time allowed to establish a TCP connection to a backend (then retry or 502).
    pub connect_timeout: Duration,
    /// Time allowed between bytes from the upstream while waiting for or reading
    /// its response (then 504 if nothing was sent yet).
    pub upstream_timeout: Duration,
    /// Extra attempts on other backends of the same release after a connect failure.
    pub max_retries: usize,
    /// How long idle upstream keep-alive connections stay pooled.
    pub upstream_idle_timeout: Duration,
    /// Record per-request status and duration metrics (in-flight counts, which
    /// draining relies on, are always kept). Off only to measure their cost.
    pub metrics: bool,
    /// Answer plaintext requests with a 308 to `https://` on this port
    /// (ACME challenges excepted); `None`: serve them.
    pub https_redirect: Option<u16>,
    /// `Strict-Transport-Security` value added to responses over TLS.
    pub hsts: Option<http::HeaderValue>,
    /// The pages browsers get when canopy answers 404, 413, 502, 503 or 504 itself.
    pub error_pages: ErrorPages,
    /// Whose forwarding headers are believed, and which one names the client
    /// (`None`: no one's; the client is the connection's peer).
    pub client_ip: Option<ClientIpSource>,
    /// Give every request an `X-Request-ID` (kept from a trusted peer, else
    /// new), upstream, in the answer and in the access log.
    pub request_id: bool,
    /// Requests for any other host are redirected here (308; ACME
    /// challenges excepted).
    pub canonical_host: Option<String>,
}

impl Default for ProxySettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(2),
            upstream_timeout: Duration::from_secs(60),
            max_retries: 2,
            upstream_idle_timeout: Duration::from_secs(60),
            metrics: true,
            https_redirect: None,
            hsts: None,
            error_pages: ErrorPages::default(),
            client_ip: None,
            request_id: false,
            canonical_host: None,
        }
    }
}

/// The request path's settings that a config reload may change: each
/// snapshot carries the ones it was built with, so a request keeps them
/// (with its routes) from start to end and the next request gets the new ones.
#[derive(Debug, Clone, Default)]
pub struct Tunables {
    /// Timeouts, retries, metrics.
    pub proxy: ProxySettings,
    /// Whether `x-canopy-release` request headers select registered releases.
    pub preview: bool,
    /// Where access log lines go (off when `None`).
    pub access_log: Option<AccessLog>,
}
