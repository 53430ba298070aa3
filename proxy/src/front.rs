//! The front door's shared state: the certificates (SNI table), the ACME
//! HTTP-01 answers, and the counters of handshakes and of requests by
//! protocol, with the Prometheus collector that reads them on scrape.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};

use crate::certs::CertStore;
use crate::exposition::descs;
use crate::stats::{counter, family, sample};
use crate::tls::HandshakeCounts;

/// Where HTTP-01 challenges are answered (RFC 8555 §8.3).
pub const ACME_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// Certificates, ACME answers and front-door counters, shared by the proxy
/// service (which reads them per handshake or request) and the control
/// plane (which replaces them).
#[derive(Debug, Default)]
pub struct FrontDoor {
    /// The certificates TLS listeners serve.
    pub certs: Arc<CertStore>,
    /// Outcomes of TLS handshakes.
    pub handshakes: Arc<HandshakeCounts>,
    challenges: ArcSwap<HashMap<String, Arc<str>>>,
    /// Requests by HTTP version (1.0, 1.1, 2) and whether over TLS.
    protocols: [[AtomicU64; 2]; 3],
    /// Requests answered 413: body over the service's `max-request-body`.
    bodies_too_large: AtomicU64,
}

impl FrontDoor {
    /// Empty: no certificate, no challenge, zero counts.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Answers `GET /.well-known/acme-challenge/{token}` with `key_authorization` from now on.
    pub fn set_challenge(&self, token: &str, key_authorization: &str) {
        self.challenges.rcu(|old| {
            let mut map = HashMap::clone(old);
            map.insert(token.to_string(), Arc::from(key_authorization));
            map
        });
    }

    /// Stops answering `token`.
    pub fn clear_challenge(&self, token: &str) {
        self.challenges.rcu(|old| {
            let mut map = HashMap::clone(old);
            map.remove(token);
            map
        });
    }

    /// The answer for a request path under [`ACME_CHALLENGE_PREFIX`], if it
    /// names a pending token.
    pub(crate) fn challenge(&self, path: &str) -> Option<Arc<str>> {
        let token = path.strip_prefix(ACME_CHALLENGE_PREFIX)?;
        self.challenges.load().get(token).cloned()
    }

    /// Counts one request (called once per request).
    #[inline]
    pub(crate) fn count_request(&self, version: http::Version, tls: bool) {
        let v = match version {
            http::Version::HTTP_2 => 2,
            http::Version::HTTP_11 => 1,
            _ => 0,
        };
        self.protocols[v][usize::from(tls)].fetch_add(1, Relaxed);
    }

    /// Counts one request refused for its body size.
    pub(crate) fn count_body_too_large(&self) {
        self.bodies_too_large.fetch_add(1, Relaxed);
    }
}

const VERSIONS: [&str; 3] = ["1.0", "1.1", "2"];

/// Name, help and labels of the front door's families, in collect order.
const FAMILIES: [(&str, &str, &[&str]); 4] = [
    ("canopy_tls_handshakes_total", "TLS handshakes on the proxy's TLS listeners, by result (ok, error, timeout).", &["result"]),
    ("canopy_tls_certificate_expiry_seconds", "Unix time at which each served certificate expires, by its first name.", &["name"]),
    ("canopy_requests_by_protocol_total", "Requests received, by HTTP version and whether over TLS.", &["version", "tls"]),
    ("canopy_request_body_too_large_total", "Requests answered 413: their body was over the service's max-request-body.", &[]),
];

/// Collector of the [`FrontDoor`]'s families for a [`prometheus::Registry`].
pub struct FrontCollector {
    front: Arc<FrontDoor>,
    descs: Vec<Desc>,
}

impl FrontCollector {
    /// A collector over `front`.
    pub fn new(front: Arc<FrontDoor>) -> Self {
        Self { front, descs: descs(&FAMILIES) }
    }
}

impl Collector for FrontCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let handshakes = self
            .front
            .handshakes
            .snapshot()
            .into_iter()
            .map(|(result, n)| {
                let mut m = sample(&[("result", result)]);
                m.set_counter(counter(n));
                m
            })
            .collect();
        let table = self.front.certs.load();
        let mut expiry = Vec::new();
        for c in table.certificates() {
            let name = c.names().first().map_or(c.source(), String::as_str);
            let mut m = sample(&[("name", name)]);
            let mut g = proto::Gauge::default();
            g.set_value(c.not_after().duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()));
            m.set_gauge(g);
            expiry.push(m);
        }
        let mut protocols = Vec::new();
        for (v, row) in VERSIONS.iter().zip(&self.front.protocols) {
            for (tls, n) in ["false", "true"].iter().zip(row) {
                let mut m = sample(&[("version", v), ("tls", tls)]);
                m.set_counter(counter(n.load(Relaxed)));
                protocols.push(m);
            }
        }
        let mut too_large = sample(&[]);
        too_large.set_counter(counter(self.front.bodies_too_large.load(Relaxed)));
        vec![
            family(&FAMILIES[0], MetricType::COUNTER, handshakes),
            family(&FAMILIES[1], MetricType::GAUGE, expiry),
            family(&FAMILIES[2], MetricType::COUNTER, protocols),
            family(&FAMILIES[3], MetricType::COUNTER, vec![too_large]),
        ]
    }
}
