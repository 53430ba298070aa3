//! Per-request metrics, recorded lock- and allocation-free with atomics that
//! live beside each release, and rendered to Prometheus text on scrape.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::names::{ReleaseName, ServiceName};

/// Upper bounds (seconds) of the request duration histogram buckets.
pub const DURATION_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Kinds of upstream failure counted in `canopy_upstream_errors_total{kind}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    /// TCP connect refused or failed.
    Connect = 0,
    /// Connect or response timed out.
    Timeout = 1,
    /// The upstream closed or reset the connection mid-exchange.
    Closed = 2,
    /// The upstream sent something that is not valid HTTP.
    Protocol = 3,
    /// The release has no resolved backend for the service.
    NoBackend = 4,
}

const ERROR_KINDS: [&str; 5] = ["connect", "timeout", "closed", "protocol", "no_backend"];
const CODES: usize = 600;

/// A fixed-bucket histogram of durations.
#[derive(Debug)]
pub struct Histogram {
    buckets: [AtomicU64; DURATION_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self { buckets: Default::default(), count: AtomicU64::new(0), sum_micros: AtomicU64::new(0) }
    }
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = DURATION_BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(d.as_micros() as u64, Relaxed);
    }

    /// Appends the `_bucket`, `_sum` and `_count` lines for `name{labels}`.
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, b) in DURATION_BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        let braced = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{braced} {sum}");
        let _ = writeln!(out, "{name}_count{braced} {count}");
    }
}

/// Counters for one service of one release.
#[derive(Debug)]
pub struct ServiceStats {
    name: ServiceName,
    by_code: Box<[AtomicU64]>,
    errors: [AtomicU64; ERROR_KINDS.len()],
    duration: Histogram,
}

impl ServiceStats {
    fn new(name: ServiceName) -> Self {
        Self {
            name,
            by_code: (0..CODES).map(|_| AtomicU64::new(0)).collect(),
            errors: Default::default(),
            duration: Histogram::default(),
        }
    }

    /// Records a finished request: its status (0 when none was sent) and duration.
    pub fn record(&self, status: u16, elapsed: Duration) {
        let i = if (status as usize) < CODES { status as usize } else { 0 };
        self.by_code[i].fetch_add(1, Relaxed);
        self.duration.observe(elapsed);
    }

    /// Records an upstream failure.
    pub fn upstream_error(&self, kind: UpstreamErrorKind) {
        self.errors[kind as usize].fetch_add(1, Relaxed);
    }
}

/// Counters for one release: in-flight requests and per-service stats.
///
/// Shared by every `Release` value with the same name, so counters survive
/// re-registration and re-resolution.
#[derive(Debug)]
pub struct ReleaseStats {
    name: ReleaseName,
    inflight: AtomicI64,
    services: Box<[ServiceStats]>,
}

impl ReleaseStats {
    /// Requests currently being served by this release.
    pub fn inflight(&self) -> i64 {
        self.inflight.load(Relaxed)
    }

    /// Marks a request as started; [`Self::finish`] must follow exactly once.
    pub fn start(&self) {
        self.inflight.fetch_add(1, Relaxed);
    }

    /// Marks a request as finished.
    pub fn finish(&self) {
        self.inflight.fetch_sub(1, Relaxed);
    }

    /// The stats of the service at `index` (topology order).
    pub fn service(&self, index: usize) -> &ServiceStats {
        &self.services[index]
    }

}

/// The set of live counters, keyed by release; touched only on the control path.
#[derive(Debug)]
pub struct StatsRegistry {
    services: Vec<ServiceName>,
    releases: Mutex<HashMap<ReleaseName, Arc<ReleaseStats>>>,
}

impl StatsRegistry {
    /// A registry for a topology with these services (in topology order).
    pub fn new(services: Vec<ServiceName>) -> Self {
        Self { services, releases: Mutex::new(HashMap::new()) }
    }

    /// The counters of `release`, created on first use.
    pub fn for_release(&self, release: &ReleaseName) -> Arc<ReleaseStats> {
        let mut map = self.releases.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(release.clone())
            .or_insert_with(|| {
                Arc::new(ReleaseStats {
                    name: release.clone(),
                    inflight: AtomicI64::new(0),
                    services: self.services.iter().cloned().map(ServiceStats::new).collect(),
                })
            })
            .clone()
    }

    /// The counters of `release` if it has any.
    pub fn get(&self, release: &ReleaseName) -> Option<Arc<ReleaseStats>> {
        self.releases.lock().unwrap_or_else(|e| e.into_inner()).get(release).cloned()
    }

    /// Requests in flight across every release (for graceful shutdown).
    pub fn total_inflight(&self) -> i64 {
        self.releases.lock().unwrap_or_else(|e| e.into_inner()).values().map(|r| r.inflight()).sum()
    }

    /// Forgets a retired release's counters (keeps label cardinality bounded).
    pub fn forget(&self, release: &ReleaseName) {
        self.releases.lock().unwrap_or_else(|e| e.into_inner()).remove(release);
    }

    /// Appends the data-plane metric families in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let mut releases: Vec<Arc<ReleaseStats>> =
            self.releases.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        releases.sort_by(|a, b| a.name.cmp(&b.name));

        out.push_str("# HELP canopy_requests_total Requests answered, by release, service and status code.\n");
        out.push_str("# TYPE canopy_requests_total counter\n");
        for r in &releases {
            for s in r.services.iter() {
                for (code, c) in s.by_code.iter().enumerate() {
                    let n = c.load(Relaxed);
                    if n > 0 {
                        let _ = writeln!(
                            out,
                            "canopy_requests_total{{release=\"{}\",service=\"{}\",code=\"{}\"}} {n}",
                            r.name, s.name, code
                        );
                    }
                }
            }
        }
        out.push_str("# HELP canopy_request_duration_seconds Time from request arrival to the end of the response.\n");
        out.push_str("# TYPE canopy_request_duration_seconds histogram\n");
        for r in &releases {
            for s in r.services.iter() {
                let labels = format!("release=\"{}\",service=\"{}\"", r.name, s.name);
                s.duration.render(out, "canopy_request_duration_seconds", &labels);
            }
        }
        out.push_str("# HELP canopy_upstream_errors_total Upstream failures, by kind.\n");
        out.push_str("# TYPE canopy_upstream_errors_total counter\n");
        for r in &releases {
            for s in r.services.iter() {
                for (k, c) in s.errors.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "canopy_upstream_errors_total{{release=\"{}\",service=\"{}\",kind=\"{}\"}} {}",
                        r.name,
                        s.name,
                        ERROR_KINDS[k],
                        c.load(Relaxed)
                    );
                }
            }
        }
        out.push_str("# HELP canopy_inflight_requests Requests being served, by release.\n");
        out.push_str("# TYPE canopy_inflight_requests gauge\n");
        for r in &releases {
            let _ = writeln!(out, "canopy_inflight_requests{{release=\"{}\"}} {}", r.name, r.inflight());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_renders() {
        let reg = StatsRegistry::new(vec![ServiceName::parse("server").unwrap()]);
        let elm = ReleaseName::parse("elm").unwrap();
        let st = reg.for_release(&elm);
        st.start();
        st.service(0).record(200, Duration::from_millis(3));
        st.service(0).record(502, Duration::from_millis(30));
        st.service(0).upstream_error(UpstreamErrorKind::Connect);
        let mut out = String::new();
        reg.render(&mut out);
        assert!(out.contains("canopy_requests_total{release=\"elm\",service=\"server\",code=\"200\"} 1"));
        assert!(out.contains("canopy_requests_total{release=\"elm\",service=\"server\",code=\"502\"} 1"));
        assert!(out.contains("canopy_request_duration_seconds_bucket{release=\"elm\",service=\"server\",le=\"0.005\"} 1"));
        assert!(out.contains("canopy_request_duration_seconds_count{release=\"elm\",service=\"server\"} 2"));
        assert!(out.contains("canopy_upstream_errors_total{release=\"elm\",service=\"server\",kind=\"connect\"} 1"));
        assert!(out.contains("canopy_inflight_requests{release=\"elm\"} 1"));
        assert!(Arc::ptr_eq(&st, &reg.for_release(&elm)));
    }
}
