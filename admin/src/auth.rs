//! Admin access rules: bearer token (constant-time compare) and refusal of
//! cross-origin browser requests (CSRF, DNS rebinding).

use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora::http::RequestHeader;
use pingora::protocols::l4::socket::SocketAddr;
use subtle::ConstantTimeEq;

use crate::api_error::ApiError;

/// Decides whether an admin request may proceed. Clones share the token, so
/// a config reload can replace it for every listener at once.
#[derive(Clone)]
pub struct Guard {
    token: Arc<ArcSwap<Option<String>>>,
}

fn is_loopback_host(host: &str) -> bool {
    let h = host
        .strip_prefix('[')
        .and_then(|h| h.split_once(']'))
        .map(|(h, _)| h)
        .unwrap_or_else(|| host.rsplit_once(':').map_or(host, |(h, p)| if p.bytes().all(|c| c.is_ascii_digit()) { h } else { host }));
    h.eq_ignore_ascii_case("localhost") || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl Guard {
    /// A guard requiring `token` when set. (Requiring a token for non-loopback
    /// listeners is enforced by the config loader.)
    pub fn new(token: Option<String>) -> Self {
        Self { token: Arc::new(ArcSwap::from_pointee(token.filter(|t| !t.is_empty()))) }
    }

    /// Requires `token` from the next request on (config reload of `token-file`).
    pub fn set_token(&self, token: Option<String>) {
        self.token.store(Arc::new(token.filter(|t| !t.is_empty())));
    }

    /// Refuses the request unless it carries the token (when one is set;
    /// `public` endpoints are exempt) and is not a cross-origin browser request.
    pub fn check(&self, req: &RequestHeader, public: bool) -> Result<(), ApiError> {
        let token = self.token.load();
        let header = |n: &str| req.headers.get(n).and_then(|v| v.to_str().ok());
        if let Some(origin) = header("origin") {
            let host = header("host").unwrap_or("");
            // https too: the listener may sit behind a TLS-terminating proxy
            let same =
                origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://")).is_some_and(|o| o.eq_ignore_ascii_case(host));
            // Without a token only loopback Host names are trusted (defeats DNS rebinding).
            let trusted = token.is_some() || is_loopback_host(host);
            if !(same && trusted) {
                return Err(ApiError::Forbidden(format!(
                    "cross-origin request from `{origin}` refused (the admin API takes no browser requests from other origins)"
                )));
            }
        }
        if header("sec-fetch-site").is_some_and(|s| s == "cross-site") {
            return Err(ApiError::Forbidden("cross-site browser request refused".into()));
        }
        let Some(token) = token.as_ref() else { return Ok(()) };
        if public {
            return Ok(());
        }
        let given = header("authorization").and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("");
        if given.as_bytes().ct_eq(token.as_bytes()).into() {
            Ok(())
        } else {
            Err(ApiError::Unauthorized)
        }
    }

    /// Who is asking, for the audit log: the `x-canopy-actor` header (the CLI
    /// sends the user name) and the client address.
    pub fn actor(&self, req: &RequestHeader, client: Option<&SocketAddr>) -> String {
        let name: String = req
            .headers
            .get("x-canopy-actor")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("admin-api")
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(64)
            .collect();
        match client.and_then(|c| c.as_inet()) {
            Some(a) => format!("{name}@{}", a.ip()),
            None => name,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for h in ["127.0.0.1:9901", "localhost:9901", "[::1]:9901", "127.0.0.2", "LOCALHOST"] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in ["evil.com:9901", "10.0.0.1:9901", ""] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }
}
