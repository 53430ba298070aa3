//! Backend endpoints as written by the operator (`host:port`), and their resolution.

use std::fmt;
use std::net::SocketAddr;

/// Longest wait for one DNS lookup (the background re-resolver tries again later).
pub const RESOLVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// One backend as the operator wrote it: a host name or IP literal plus a port.
///
/// Parsed once at the edge (config file or admin API); resolved to socket
/// addresses off the request path by [`Endpoint::resolve`].
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    host: Box<str>,
    port: u16,
}

/// Why an endpoint string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// No `:port` suffix, or the port is not a number in 1..=65535.
    #[error("invalid backend address `{0}`: expected host:port (e.g. `10.0.0.5:3000`, `vendure-server--elm:3000`, `[::1]:3000`)")]
    Syntax(String),
    /// The host part has characters no host name or IP literal can have.
    #[error("invalid host `{0}` in backend address: expected a DNS name or IP address")]
    Host(String),
}

/// Why resolving an endpoint failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot resolve `{endpoint}`: {reason}")]
pub struct ResolveError {
    /// The endpoint that did not resolve.
    pub endpoint: String,
    /// The resolver's message.
    pub reason: String,
}

fn valid_host(h: &str) -> bool {
    !h.is_empty() && h.len() <= 253 && h.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.' || c == b'_')
}

impl Endpoint {
    /// Parses `host:port` or `[v6]:port`.
    pub fn parse(s: &str) -> Result<Self, EndpointError> {
        if let Ok(addr) = s.parse::<SocketAddr>() {
            if addr.port() == 0 {
                return Err(EndpointError::Syntax(s.to_string()));
            }
            return Ok(Self::from_addr(addr));
        }
        let (host, port) = s.rsplit_once(':').ok_or_else(|| EndpointError::Syntax(s.to_string()))?;
        let port: u16 = port.parse().map_err(|_| EndpointError::Syntax(s.to_string()))?;
        if port == 0 {
            return Err(EndpointError::Syntax(s.to_string()));
        }
        Self::new(host, port)
    }

    /// Builds an endpoint from a host (name or IP literal, no brackets) and a port.
    pub fn new(host: &str, port: u16) -> Result<Self, EndpointError> {
        if host.parse::<std::net::IpAddr>().is_err() && !valid_host(host) {
            return Err(EndpointError::Host(host.to_string()));
        }
        Ok(Self { host: host.into(), port })
    }

    /// An endpoint that is already a socket address (no DNS needed).
    pub fn from_addr(addr: SocketAddr) -> Self {
        Self { host: addr.ip().to_string().into(), port: addr.port() }
    }

    /// The host part.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Resolves to socket addresses without blocking the runtime (IP literals
    /// need no lookup). Called when a release is registered and by the
    /// background re-resolver, never per request.
    pub async fn resolve(&self) -> Result<Vec<SocketAddr>, ResolveError> {
        if let Ok(ip) = self.host.parse::<std::net::IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, self.port)]);
        }
        let err = |reason: String| ResolveError { endpoint: self.to_string(), reason };
        let lookup = tokio::net::lookup_host((&*self.host, self.port));
        let addrs: Vec<SocketAddr> = tokio::time::timeout(RESOLVE_TIMEOUT, lookup)
            .await
            .map_err(|_| err(format!("no answer within {RESOLVE_TIMEOUT:?}")))?
            .map_err(|e| err(e.to_string()))?
            .collect();
        if addrs.is_empty() {
            return Err(err("no addresses".into()));
        }
        Ok(addrs)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl serde::Serialize for Endpoint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Endpoint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_literals() {
        assert_eq!(Endpoint::parse("vendure-server--elm:3000").unwrap().to_string(), "vendure-server--elm:3000");
        assert_eq!(Endpoint::parse("[::1]:80").unwrap().to_string(), "[::1]:80");
        assert_eq!(Endpoint::parse("127.0.0.1:8080").unwrap().port(), 8080);
    }

    #[test]
    fn refuses_garbage() {
        for s in ["nohost", "host:0", "host:99999", ":80", "a b:80", "host:http"] {
            assert!(Endpoint::parse(s).is_err(), "{s}");
        }
    }

    #[tokio::test]
    async fn resolves_literals_without_dns() {
        let e = Endpoint::parse("127.0.0.1:9").unwrap();
        assert_eq!(e.resolve().await.unwrap(), vec!["127.0.0.1:9".parse().unwrap()]);
    }
}
