//! Request routing: a pure function from (host, path) to a service index.
//!
//! Longest path prefix wins; a route with a host beats a host-less one of the
//! same length. Prefixes match on segment boundaries: `/assets` matches
//! `/assets` and `/assets/x.png` but not `/assetsx`.

use std::fmt;

/// One route: an optional host and a path prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    host: Option<Box<str>>,
    prefix: Box<str>,
}

/// Why a route string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid route `{0}`: expected a path prefix such as `/shop-api`, or `host/prefix` such as `admin.example.com/`")]
pub struct RouteError(pub String);

impl Route {
    /// Parses `/prefix` or `host/prefix` (host matched case-insensitively, without port).
    pub fn parse(s: &str) -> Result<Self, RouteError> {
        let err = || RouteError(s.to_string());
        let slash = s.find('/').ok_or_else(err)?;
        let (host, prefix) = s.split_at(slash);
        let bad = |c: char| c.is_whitespace() || c.is_control() || c == '?' || c == '#';
        if prefix.contains(bad) || host.contains(bad) || host.contains(':') {
            return Err(err());
        }
        let host = if host.is_empty() {
            None
        } else {
            crate::endpoint::Endpoint::new(host, 1).map_err(|_| err())?;
            Some(host.to_ascii_lowercase().into())
        };
        // A trailing slash (other than the root) adds nothing under segment matching.
        let prefix = if prefix.len() > 1 { prefix.trim_end_matches('/') } else { prefix };
        let prefix = if prefix.is_empty() { "/" } else { prefix };
        Ok(Self { host, prefix: prefix.into() })
    }

    /// True when both routes match exactly the same requests.
    pub fn same_match(&self, other: &Route) -> bool {
        self.host == other.host && self.prefix == other.prefix
    }

    fn matches(&self, host: Option<&[u8]>, path: &[u8]) -> bool {
        if let Some(want) = &self.host {
            match host {
                Some(h) if h.eq_ignore_ascii_case(want.as_bytes()) => {}
                _ => return false,
            }
        }
        let p = self.prefix.as_bytes();
        if p == b"/" {
            return true;
        }
        path.starts_with(p) && (path.len() == p.len() || path[p.len()] == b'/')
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(h) = &self.host {
            f.write_str(h)?;
        }
        f.write_str(&self.prefix)
    }
}

/// Routes sorted most specific first, each with its service index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteTable {
    routes: Box<[(Route, usize)]>,
}

impl RouteTable {
    /// Builds the table from `(service index, route)` pairs.
    pub fn new(routes: Vec<(usize, Route)>) -> Self {
        let mut routes: Vec<(Route, usize)> = routes.into_iter().map(|(s, r)| (r, s)).collect();
        routes.sort_by(|(a, _), (b, _)| b.prefix.len().cmp(&a.prefix.len()).then(b.host.is_some().cmp(&a.host.is_some())));
        Self { routes: routes.into() }
    }

    /// The service for a request with this host (without port) and path
    /// (without query), or `None` when no route matches. Allocation-free.
    pub fn route(&self, host: Option<&[u8]>, path: &[u8]) -> Option<usize> {
        self.routes.iter().find(|(r, _)| r.matches(host, path)).map(|(_, s)| *s)
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// True when no routes are configured.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

/// The host a request is for: the URI authority (HTTP/2, absolute form) or the
/// `Host` header, without the port.
pub fn request_host(req: &http::request::Parts) -> Option<&[u8]> {
    let raw: &[u8] = match req.uri.host() {
        Some(h) => return Some(h.as_bytes()),
        None => req.headers.get(http::header::HOST)?.as_bytes(),
    };
    Some(strip_port(raw))
}

fn strip_port(h: &[u8]) -> &[u8] {
    if h.first() == Some(&b'[') {
        // [v6]:port
        return match h.iter().position(|&c| c == b']') {
            Some(end) => &h[..=end],
            None => h,
        };
    }
    match h.iter().rposition(|&c| c == b':') {
        Some(i) => &h[..i],
        None => h,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable {
        let r = |s: &str| Route::parse(s).unwrap();
        RouteTable::new(vec![
            (0, r("/shop-api")),
            (0, r("/assets/")),
            (1, r("/")),
            (2, r("admin.example.com/")),
            (3, r("/shop-api/special")),
        ])
    }

    #[test]
    fn longest_prefix_on_segment_boundaries() {
        let t = table();
        assert_eq!(t.route(None, b"/shop-api"), Some(0));
        assert_eq!(t.route(None, b"/shop-api/x"), Some(0));
        assert_eq!(t.route(None, b"/shop-apix"), Some(1));
        assert_eq!(t.route(None, b"/shop-api/special/y"), Some(3));
        assert_eq!(t.route(None, b"/assets"), Some(0));
        assert_eq!(t.route(None, b"/"), Some(1));
        assert_eq!(t.route(None, b"/products/1"), Some(1));
    }

    #[test]
    fn host_routes_beat_hostless_ones() {
        let t = table();
        assert_eq!(t.route(Some(b"ADMIN.example.com"), b"/x"), Some(2));
        assert_eq!(t.route(Some(b"shop.example.com"), b"/x"), Some(1));
        assert_eq!(t.route(Some(b"admin.example.com"), b"/shop-api"), Some(0));
    }

    #[test]
    fn no_match_without_root_route() {
        let t = RouteTable::new(vec![(0, Route::parse("/api").unwrap())]);
        assert_eq!(t.route(None, b"/other"), None);
    }

    #[test]
    fn refuses_bad_routes() {
        for s in ["", "shop-api", "/a b", "/a?x", "host:80/"] {
            assert!(Route::parse(s).is_err(), "{s}");
        }
    }

    #[test]
    fn strips_ports() {
        assert_eq!(strip_port(b"example.com:8080"), b"example.com");
        assert_eq!(strip_port(b"[::1]:8080"), b"[::1]");
        assert_eq!(strip_port(b"example.com"), b"example.com");
    }
}
