//! Per-request metrics, recorded lock- and allocation-free with atomics that
//! live beside each release, and turned into Prometheus metric families on
//! scrape (see `exposition` for the collector that hands them to a registry).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::proto::{self, MetricFamily, MetricType};

use crate::names::{ReleaseName, ServiceName};

/// Upper bounds (seconds) of the request duration histogram buckets.
pub const DURATION_BUCKETS: [f64; 14] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

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

    /// The histogram as a Prometheus sample (cumulative buckets, sum in seconds).
    pub(crate) fn to_proto(&self) -> proto::Histogram {
        let mut cumulative = 0;
        let buckets = DURATION_BUCKETS
            .iter()
            .zip(&self.buckets)
            .map(|(bound, n)| {
                cumulative += n.load(Relaxed);
                let mut b = proto::Bucket::default();
                b.set_upper_bound(*bound);
                b.set_cumulative_count(cumulative);
                b
            })
            .collect();
        let mut h = proto::Histogram::default();
        h.set_bucket(buckets);
        // count read after the buckets: a concurrent observation never makes +Inf < a bucket
        h.set_sample_count(self.count.load(Relaxed).max(cumulative));
        h.set_sample_sum(self.sum_micros.load(Relaxed) as f64 / 1e6);
        h
    }
}

/// What the counters of one service of one release say at one moment,
/// totals since they began: the guard's raw material (it subtracts two
/// samples to see an interval). Read on the control path only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServiceSample {
    /// Answers with a status (100-599).
    pub answered: u64,
    /// Of which 5xx: the upstream's, and canopy's own 502/504 for upstream failures.
    pub server_errors: u64,
    /// Request durations per bucket of [`DURATION_BUCKETS`] (not cumulative),
    /// the last entry counting those above the last bound.
    pub durations: [u64; DURATION_BUCKETS.len() + 1],
}

impl ServiceSample {
    /// What happened between `earlier` and this sample.
    pub fn since(&self, earlier: &ServiceSample) -> ServiceSample {
        let mut durations = [0; DURATION_BUCKETS.len() + 1];
        for (d, (now, then)) in durations.iter_mut().zip(self.durations.iter().zip(&earlier.durations)) {
            *d = now.saturating_sub(*then);
        }
        ServiceSample {
            answered: self.answered.saturating_sub(earlier.answered),
            server_errors: self.server_errors.saturating_sub(earlier.server_errors),
            durations,
        }
    }

    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &ServiceSample) {
        self.answered += other.answered;
        self.server_errors += other.server_errors;
        for (d, o) in self.durations.iter_mut().zip(&other.durations) {
            *d += o;
        }
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
        Self { name, by_code: (0..CODES).map(|_| AtomicU64::new(0)).collect(), errors: Default::default(), duration: Histogram::default() }
    }

    /// Records a finished request: its status (0 when none was sent) and duration.
    pub fn record(&self, status: u16, elapsed: Duration) {
        let i = if (status as usize) < CODES { status as usize } else { 0 };
        self.by_code[i].fetch_add(1, Relaxed);
        self.duration.observe(elapsed);
    }

    /// The counters now, for the guard.
    pub fn sample(&self) -> ServiceSample {
        let answered = self.by_code[100..].iter().map(|c| c.load(Relaxed)).sum();
        let server_errors = self.by_code[500..].iter().map(|c| c.load(Relaxed)).sum();
        let mut durations = [0; DURATION_BUCKETS.len() + 1];
        for (d, b) in durations.iter_mut().zip(&self.duration.buckets) {
            *d = b.load(Relaxed);
        }
        let within: u64 = durations.iter().sum();
        durations[DURATION_BUCKETS.len()] = self.duration.count.load(Relaxed).saturating_sub(within);
        ServiceSample { answered, server_errors, durations }
    }

    /// The service's name.
    pub fn name(&self) -> &ServiceName {
        &self.name
    }

    /// Records an upstream failure.
    pub fn upstream_error(&self, kind: UpstreamErrorKind) {
        self.errors[kind as usize].fetch_add(1, Relaxed);
    }
}

/// Counters for one release: in-flight requests and per-service stats.
///
/// Shared by every `Release` value with the same name, so counters survive
/// re-registration and re-resolution. After a config reload changes the
/// services, a new value (in the new topology's order) shares the in-flight
/// counter and the counters of the services both have with the old one,
/// which the requests still running on the old snapshot keep using.
#[derive(Debug)]
pub struct ReleaseStats {
    name: ReleaseName,
    inflight: Arc<AtomicI64>,
    services: Box<[Arc<ServiceStats>]>,
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

    /// The stats of every service (topology order).
    pub fn services(&self) -> &[Arc<ServiceStats>] {
        &self.services
    }
}

/// The set of live counters, keyed by release; touched only on the control path.
#[derive(Debug)]
pub struct StatsRegistry {
    services: Mutex<Vec<ServiceName>>,
    releases: Mutex<HashMap<ReleaseName, Arc<ReleaseStats>>>,
}

impl StatsRegistry {
    /// A registry for a topology with these services (in topology order).
    pub fn new(services: Vec<ServiceName>) -> Self {
        Self { services: Mutex::new(services), releases: Mutex::new(HashMap::new()) }
    }

    /// The services of a reloaded topology (in its order): counters handed
    /// out from now on follow it; see [`ReleaseStats`].
    pub fn set_services(&self, services: Vec<ServiceName>) {
        *self.services.lock().unwrap_or_else(|e| e.into_inner()) = services;
    }

    /// The counters of `release` for the current services, created on first
    /// use (or re-laid after the services changed, keeping the counts).
    pub fn for_release(&self, release: &ReleaseName) -> Arc<ReleaseStats> {
        let services = self.services.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut map = self.releases.lock().unwrap_or_else(|e| e.into_inner());
        let old = map.get(release);
        if let Some(old) = old.filter(|o| o.services.iter().map(|s| &s.name).eq(services.iter())) {
            return old.clone();
        }
        let stats = Arc::new(ReleaseStats {
            name: release.clone(),
            inflight: old.map_or_else(|| Arc::new(AtomicI64::new(0)), |o| o.inflight.clone()),
            services: services
                .into_iter()
                .map(|name| match old.and_then(|o| o.services.iter().find(|s| s.name == name)) {
                    Some(kept) => kept.clone(),
                    None => Arc::new(ServiceStats::new(name)),
                })
                .collect(),
        });
        map.insert(release.clone(), stats.clone());
        stats
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

    /// The data-plane metric families (`canopy_requests_total`,
    /// `canopy_request_duration_seconds`, `canopy_upstream_errors_total`,
    /// `canopy_inflight_requests`) over every release with counters; called on scrape.
    pub(crate) fn families(&self) -> Vec<MetricFamily> {
        let mut releases: Vec<Arc<ReleaseStats>> = self.releases.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        releases.sort_by(|a, b| a.name.cmp(&b.name));
        let (mut requests, mut durations, mut errors, mut inflight) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for r in &releases {
            for s in r.services.iter() {
                let (release, service) = (r.name.as_str(), s.name.as_str());
                for (code, c) in s.by_code.iter().enumerate() {
                    let n = c.load(Relaxed);
                    if n > 0 {
                        let mut m = sample(&[("release", release), ("service", service), ("code", &code.to_string())]);
                        m.set_counter(counter(n));
                        requests.push(m);
                    }
                }
                let mut m = sample(&[("release", release), ("service", service)]);
                m.set_histogram(s.duration.to_proto());
                durations.push(m);
                for (kind, c) in ERROR_KINDS.iter().zip(&s.errors) {
                    let mut m = sample(&[("release", release), ("service", service), ("kind", kind)]);
                    m.set_counter(counter(c.load(Relaxed)));
                    errors.push(m);
                }
            }
            let mut m = sample(&[("release", r.name.as_str())]);
            let mut g = proto::Gauge::default();
            g.set_value(r.inflight() as f64);
            m.set_gauge(g);
            inflight.push(m);
        }
        vec![
            family(&FAMILIES[0], MetricType::COUNTER, requests),
            family(&FAMILIES[1], MetricType::HISTOGRAM, durations),
            family(&FAMILIES[2], MetricType::COUNTER, errors),
            family(&FAMILIES[3], MetricType::GAUGE, inflight),
        ]
    }
}

/// Name, help and variable labels of each data-plane family, in the order
/// [`StatsRegistry::families`] returns them.
pub(crate) const FAMILIES: [(&str, &str, &[&str]); 4] = [
    ("canopy_requests_total", "Requests answered, by release, service and status code.", &["release", "service", "code"]),
    ("canopy_request_duration_seconds", "Time from request arrival to the end of the response.", &["release", "service"]),
    ("canopy_upstream_errors_total", "Upstream failures, by kind.", &["release", "service", "kind"]),
    ("canopy_inflight_requests", "Requests being served, by release.", &["release"]),
];

pub(crate) fn sample(labels: &[(&str, &str)]) -> proto::Metric {
    let pairs = labels
        .iter()
        .map(|(k, v)| {
            let mut p = proto::LabelPair::default();
            p.set_name(k.to_string());
            p.set_value(v.to_string());
            p
        })
        .collect();
    let mut m = proto::Metric::default();
    m.set_label(pairs);
    m
}

pub(crate) fn counter(n: u64) -> proto::Counter {
    let mut c = proto::Counter::default();
    c.set_value(n as f64);
    c
}

pub(crate) fn family((name, help, _): &(&str, &str, &[&str]), kind: MetricType, metrics: Vec<proto::Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
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
        prometheus::TextEncoder::new().encode_utf8(&reg.families(), &mut out).unwrap();
        assert!(out.contains("canopy_requests_total{release=\"elm\",service=\"server\",code=\"200\"} 1"));
        assert!(out.contains("canopy_requests_total{release=\"elm\",service=\"server\",code=\"502\"} 1"));
        assert!(out.contains("canopy_request_duration_seconds_bucket{release=\"elm\",service=\"server\",le=\"0.005\"} 1"));
        assert!(out.contains("canopy_request_duration_seconds_count{release=\"elm\",service=\"server\"} 2"));
        assert!(out.contains("canopy_upstream_errors_total{release=\"elm\",service=\"server\",kind=\"connect\"} 1"));
        assert!(out.contains("canopy_inflight_requests{release=\"elm\"} 1"));
        assert!(Arc::ptr_eq(&st, &reg.for_release(&elm)));
    }

    #[test]
    fn new_services_keep_the_counts_of_those_that_stay() {
        let name = |n: &str| ServiceName::parse(n).unwrap();
        let reg = StatsRegistry::new(vec![name("server"), name("storefront")]);
        let elm = ReleaseName::parse("elm").unwrap();
        let old = reg.for_release(&elm);
        old.start();
        old.service(1).record(200, Duration::from_millis(1));
        // a reload adds `search` before `storefront`
        reg.set_services(vec![name("server"), name("search"), name("storefront")]);
        let new = reg.for_release(&elm);
        assert!(!Arc::ptr_eq(&old, &new));
        assert!(Arc::ptr_eq(&old.services[1], &new.services[2]), "storefront's counters are kept");
        assert_eq!(new.inflight(), 1, "the in-flight count is shared");
        old.finish(); // a request that started before the reload ends
        assert_eq!((new.inflight(), reg.total_inflight()), (0, 0));
        assert!(Arc::ptr_eq(&new, &reg.for_release(&elm)));
    }
}
