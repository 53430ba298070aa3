//! The shopper's real address behind a CDN or load balancer
//! (`[proxy] trusted-proxies` and `client-ip-header`), and request IDs.
//!
//! Only a peer inside `trusted-proxies` is believed: its `X-Forwarded-For`
//! is walked right to left past trusted hops to the first address that is
//! not one (or its `CF-Connecting-IP`-style header is taken as it is). From
//! any other peer such headers are ignored, and the address the access
//! log, the upstream's `X-Forwarded-For` and the canary hash see is the
//! peer's. Nothing here runs when `trusted-proxies` is not set.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use http::header::InvalidHeaderValue;
use http::{HeaderMap, HeaderName, HeaderValue};

/// An address block such as `10.0.0.0/8` or `2001:db8::/32` (a bare
/// address is a block of one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid address block `{s}`: write e.g. `10.0.0.0/8`, `2001:db8::/32` or `203.0.113.7`");
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().map_err(|_| bad())?, Some(p.parse::<u8>().map_err(|_| bad())?)),
            None => (s.parse::<IpAddr>().map_err(|_| bad())?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(bad());
        }
        Ok(Cidr { addr, prefix })
    }
}

impl Cidr {
    /// Whether `ip` is in this block (an IPv4-mapped IPv6 address counts as
    /// its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// `trusted-proxies` and `client-ip-header`: who is believed, and which header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIpSource {
    /// The peers whose header is believed (and, in `X-Forwarded-For`, the hops skipped).
    pub trusted: Box<[Cidr]>,
    /// `x-forwarded-for` (walked right to left) or a header holding one address.
    pub header: HeaderName,
}

/// Where a request comes from, as resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    /// The shopper's address.
    pub client: IpAddr,
    /// The connection's peer is a trusted proxy.
    pub trusted_peer: bool,
    /// With `X-Forwarded-For`: how many of its entries (from the left) are
    /// dropped, those before the client's (unverifiable, maybe spoofed).
    pub skip_entries: usize,
}

impl ClientIpSource {
    fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|c| c.contains(ip))
    }

    /// The client address of a request from `peer` with `headers`.
    pub fn resolve(&self, peer: IpAddr, headers: &HeaderMap) -> Resolved {
        let untrusted = Resolved { client: peer, trusted_peer: false, skip_entries: 0 };
        if !self.trusts(peer) {
            return untrusted;
        }
        let mut resolved = Resolved { trusted_peer: true, ..untrusted };
        if self.header != X_FORWARDED_FOR {
            if let Some(ip) = headers.get(&self.header).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse().ok()) {
                resolved.client = ip;
            }
            return resolved;
        }
        let entries: Vec<&str> = forwarded_entries(headers).collect();
        for (i, entry) in entries.iter().enumerate().rev() {
            let Ok(ip) = entry.parse::<IpAddr>() else { break };
            resolved.client = ip;
            resolved.skip_entries = i;
            if !self.trusts(ip) {
                break;
            }
        }
        resolved
    }
}

impl ClientIpSource {
    /// The `X-Forwarded-For` the upstream gets for a request from `peer`:
    /// from an untrusted peer only the peer; from a trusted one the chain
    /// from the client's entry on (the entries before it, which nobody
    /// trusted vouches for, dropped), then the peer.
    pub(crate) fn forwarded_for(&self, r: &Resolved, peer: IpAddr, headers: &HeaderMap) -> Result<HeaderValue, InvalidHeaderValue> {
        let skip = if self.header == X_FORWARDED_FOR { r.skip_entries } else { 0 };
        let chain: Vec<&str> = if r.trusted_peer { forwarded_entries(headers).skip(skip).collect() } else { Vec::new() };
        if chain.is_empty() {
            return crate::forwarded::ip_value(peer);
        }
        HeaderValue::try_from(format!("{}, {peer}", chain.join(", ")))
    }
}

/// The entries of every `X-Forwarded-For` line, in order, trimmed.
pub(crate) fn forwarded_entries(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty())
}

/// `X-Forwarded-For`.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The header carrying a request's ID.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest request ID kept from a trusted peer (longer ones are replaced).
const MAX_REQUEST_ID: usize = 200;

/// A trusted peer's request ID when it sent a usable one.
pub(crate) fn kept_request_id(headers: &HeaderMap) -> Option<HeaderValue> {
    headers.get(&REQUEST_ID).filter(|v| !v.is_empty() && v.len() <= MAX_REQUEST_ID).cloned()
}

/// A new request ID: 32 hex digits, a per-process random half and a
/// counter, written without the formatting machinery (one allocation: the value).
pub(crate) fn new_request_id() -> HeaderValue {
    static SEED: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
        h.write_u32(std::process::id());
        h.finish()
    });
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut buf = [0u8; 32];
    for (i, word) in [seed, n].into_iter().enumerate() {
        for (j, b) in buf[i * 16..(i + 1) * 16].iter_mut().enumerate() {
            *b = b"0123456789abcdef"[((word >> (60 - 4 * j)) & 0xf) as usize];
        }
    }
    HeaderValue::from_bytes(&buf).expect("hex digits are a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(header: &str, trusted: &[&str]) -> ClientIpSource {
        ClientIpSource {
            trusted: trusted.iter().map(|c| c.parse().unwrap()).collect(),
            header: HeaderName::from_bytes(header.as_bytes()).unwrap(),
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap())).collect()
    }

    #[test]
    fn blocks_contain_their_addresses() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains("10.200.1.2".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.1.1".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        let one: Cidr = "203.0.113.7".parse().unwrap();
        assert!(one.contains("203.0.113.7".parse().unwrap()) && !one.contains("203.0.113.8".parse().unwrap()));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:1::5".parse().unwrap()) && !v6.contains("2001:db9::1".parse().unwrap()));
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains("8.8.8.8".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err() && "ten".parse::<Cidr>().is_err());
    }

    #[test]
    fn forwarded_for_is_walked_right_to_left_past_trusted_hops() {
        let s = source("x-forwarded-for", &["10.0.0.0/8"]);
        let peer = "10.0.0.1".parse().unwrap();
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.0.0.2")]);
        let r = s.resolve(peer, &h);
        assert_eq!((r.client, r.trusted_peer, r.skip_entries), ("198.51.100.7".parse().unwrap(), true, 1));
        // an untrusted peer's header is not read at all
        let r = s.resolve("192.0.2.9".parse().unwrap(), &h);
        assert_eq!((r.client, r.trusted_peer), ("192.0.2.9".parse().unwrap(), false));
        // a trusted peer without the header, or with garbage in it, is the client
        assert_eq!(s.resolve(peer, &HeaderMap::new()).client, peer);
        assert_eq!(s.resolve(peer, &headers(&[("x-forwarded-for", "unknown")])).client, peer);
        // upstream: the chain from the client on, then the peer; an untrusted peer alone
        let r = s.resolve(peer, &h);
        assert_eq!(s.forwarded_for(&r, peer, &h).unwrap(), "198.51.100.7, 10.0.0.2, 10.0.0.1");
        let stranger = "192.0.2.9".parse().unwrap();
        assert_eq!(s.forwarded_for(&s.resolve(stranger, &h), stranger, &h).unwrap(), "192.0.2.9");
    }

    #[test]
    fn a_single_address_header_from_a_trusted_peer() {
        let s = source("cf-connecting-ip", &["173.245.48.0/20"]);
        let h = headers(&[("cf-connecting-ip", "198.51.100.7"), ("x-forwarded-for", "6.6.6.6")]);
        assert_eq!(s.resolve("173.245.48.5".parse().unwrap(), &h).client, "198.51.100.7".parse::<IpAddr>().unwrap());
        assert_eq!(s.resolve("6.6.6.7".parse().unwrap(), &h).client, "6.6.6.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn request_ids_are_unique_hex() {
        let (a, b) = (new_request_id(), new_request_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.to_str().unwrap().bytes().all(|c| c.is_ascii_hexdigit()));
    }
}
