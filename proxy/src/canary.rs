//! Canary routing: while a canary runs, a share of the traffic goes to the
//! candidate release. Each request has a bucket in `0..BUCKETS`: its
//! `canopy-bucket` cookie, else a hash of its `Authorization` or
//! `vendure-token` header, else of the client address; it goes to the
//! candidate when its bucket is below the canary's weight. A shopper keeps
//! one bucket (canopy sets the cookie on the first answer), so raising the
//! weight only ever moves shoppers from the live release to the candidate.
//! Nothing here allocates or locks except the cookie written once per
//! shopper.

use std::net::IpAddr;

use http::{HeaderMap, HeaderValue};

/// Buckets a weight is counted in (a weight of 500 is 5%).
pub const BUCKETS: u16 = 10_000;
/// The cookie that carries a shopper's bucket.
pub const COOKIE: &str = "canopy-bucket";
/// How long a browser keeps the bucket cookie (a week: longer than a canary).
const COOKIE_MAX_AGE: u32 = 7 * 24 * 3600;

/// A canary in progress, as the snapshot carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Canary {
    /// Index of the candidate in the snapshot's releases.
    pub release: usize,
    /// Buckets (of [`BUCKETS`]) that go to the candidate.
    pub weight: u16,
}

/// A request's bucket, and whether its cookie carried it (when not, the
/// answer sets the cookie so the shopper keeps this bucket).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    /// In `0..BUCKETS`.
    pub value: u16,
    /// Read from the `canopy-bucket` cookie.
    pub from_cookie: bool,
}

impl Canary {
    /// Whether a request in `bucket` goes to the candidate.
    #[inline]
    pub fn takes(&self, bucket: u16) -> bool {
        bucket < self.weight
    }
}

/// The bucket of a request with these headers from `client`.
pub fn bucket(headers: &HeaderMap, client: Option<IpAddr>) -> Bucket {
    if let Some(value) = cookie_bucket(headers) {
        return Bucket { value, from_cookie: true };
    }
    let identity = headers.get(http::header::AUTHORIZATION).or_else(|| headers.get("vendure-token"));
    let hash = match (identity, client) {
        (Some(v), _) => fnv1a(v.as_bytes()),
        (None, Some(IpAddr::V4(ip))) => fnv1a(&ip.octets()),
        (None, Some(IpAddr::V6(ip))) => fnv1a(&ip.octets()),
        (None, None) => 0,
    };
    Bucket { value: (hash % u32::from(BUCKETS)) as u16, from_cookie: false }
}

/// The `Set-Cookie` value that keeps a shopper in `bucket`.
pub fn set_cookie(bucket: u16, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let value = format!("{COOKIE}={bucket}; Path=/; Max-Age={COOKIE_MAX_AGE}; HttpOnly; SameSite=Lax{secure}");
    HeaderValue::try_from(value).expect("a valid header value")
}

/// The bucket in a `canopy-bucket=N` cookie, if a `Cookie` header has a valid one.
fn cookie_bucket(headers: &HeaderMap) -> Option<u16> {
    for header in headers.get_all(http::header::COOKIE) {
        for pair in header.as_bytes().split(|b| *b == b';') {
            let pair = pair.trim_ascii();
            let Some(value) = pair.strip_prefix(COOKIE.as_bytes()).and_then(|rest| rest.strip_prefix(b"=")) else { continue };
            if value.is_empty() || value.len() > 5 || !value.iter().all(u8::is_ascii_digit) {
                continue;
            }
            let n = value.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
            if n < u32::from(BUCKETS) {
                return Some(n as u16);
            }
        }
    }
    None
}

/// FNV-1a, 32 bits: cheap and well spread over short keys.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(*b)).wrapping_mul(0x0100_0193))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn the_cookie_wins_then_the_identity_header_then_the_address() {
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let b = bucket(&headers(&[("cookie", "a=1; canopy-bucket=42; b=2"), ("authorization", "Bearer x")]), Some(ip));
        assert_eq!(b, Bucket { value: 42, from_cookie: true });
        let by_auth = bucket(&headers(&[("authorization", "Bearer x")]), Some(ip));
        assert!(!by_auth.from_cookie);
        assert_eq!(
            by_auth,
            bucket(&headers(&[("authorization", "Bearer x")]), Some("10.9.9.9".parse().unwrap())),
            "same token, same bucket"
        );
        let by_token = bucket(&headers(&[("vendure-token", "abc")]), Some(ip));
        assert_eq!(by_token, bucket(&headers(&[("vendure-token", "abc")]), None));
        let by_ip = bucket(&HeaderMap::new(), Some(ip));
        assert_eq!(by_ip, bucket(&headers(&[("cookie", "other=1")]), Some(ip)), "no bucket cookie: the address decides");
        assert!(by_ip.value < BUCKETS);
    }

    #[test]
    fn bad_cookies_are_ignored() {
        for bad in
            ["canopy-bucket=", "canopy-bucket=10000", "canopy-bucket=-1", "canopy-bucket=1a", "canopy-bucket=123456", "xcanopy-bucket=5"]
        {
            let mut h = HeaderMap::new();
            h.insert("cookie", HeaderValue::from_str(bad).unwrap());
            assert!(!bucket(&h, None).from_cookie, "{bad}");
        }
        let mut h = HeaderMap::new();
        h.append("cookie", HeaderValue::from_static("a=1"));
        h.append("cookie", HeaderValue::from_static("canopy-bucket=9999"));
        assert_eq!(bucket(&h, None), Bucket { value: 9999, from_cookie: true }, "a second Cookie header (h2) is read too");
    }

    #[test]
    fn addresses_spread_over_the_buckets() {
        // 1,000 shoppers behind distinct addresses: about a tenth below weight 1,000
        let below = (0..1000u32).filter(|i| bucket(&HeaderMap::new(), Some(IpAddr::from(i.to_be_bytes()))).value < 1000).count();
        assert!((60..=140).contains(&below), "{below} of 1000 in the lowest tenth");
    }

    #[test]
    fn the_cookie_it_sets() {
        assert_eq!(set_cookie(7, false), "canopy-bucket=7; Path=/; Max-Age=604800; HttpOnly; SameSite=Lax");
        assert!(set_cookie(7, true).to_str().unwrap().ends_with("; Secure"));
        let c = Canary { release: 1, weight: 500 };
        assert!(c.takes(499) && !c.takes(500));
    }
}
