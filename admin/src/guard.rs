//! The guard's judgement, pure: the counters of a new release (a
//! [`ServiceSample`] per service over a window) against those of the
//! release it replaces (its baseline) under [`GuardSettings`], in, an
//! [`Evaluation`] out. The controller samples the data plane's counters and
//! acts on the verdict (`controller/guard.rs`).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use canopy_proxy::{ReleaseName, ServiceName, ServiceSample, DURATION_BUCKETS};
use serde::{Deserialize, Serialize};

use crate::clock::UnixMillis;
use crate::settings::GuardSettings;

/// One service's figures over a window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    /// Answers in the window.
    pub requests: u64,
    /// 5xx answers (upstream failures included) over all answers.
    pub error_ratio: f64,
    /// The latency at the guard's quantile, in seconds (`None`: no answers).
    pub latency: Option<f64>,
}

impl Figures {
    /// The figures of `sample` with the latency at `quantile`.
    pub fn of(sample: &ServiceSample, quantile: f64) -> Self {
        let error_ratio = if sample.answered == 0 { 0.0 } else { sample.server_errors as f64 / sample.answered as f64 };
        Figures { requests: sample.answered, error_ratio, latency: quantile_of(&sample.durations, quantile) }
    }
}

/// A rule of the guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rule {
    /// Too many 5xx answers and upstream failures.
    ErrorRatio,
    /// Too slow at the quantile.
    Latency,
}

impl Rule {
    /// `error-ratio` or `latency` (the metric label and the audit word).
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::ErrorRatio => "error-ratio",
            Rule::Latency => "latency",
        }
    }
}

/// A broken rule and its evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Broken {
    /// Which rule.
    pub rule: Rule,
    /// The numbers, in words: `error ratio 21.0% (42 of 200) > 5.0% and > juniper's 0.5%`.
    pub evidence: String,
}

/// One service's judgement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceJudgement {
    /// The service.
    pub service: ServiceName,
    /// The new release's figures.
    pub candidate: Figures,
    /// The release it is compared with (none without enough answers of its own).
    pub baseline: Option<Figures>,
    /// Too few answers for a judgement (below `min-requests`).
    pub inconclusive: bool,
    /// The rules it breaks.
    pub broken: Vec<Broken>,
}

/// One evaluation over every service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Per service.
    pub services: Vec<ServiceJudgement>,
    /// Some service breaks a rule.
    pub bad: bool,
    /// No service had enough answers to be judged.
    pub inconclusive: bool,
}

impl Evaluation {
    /// The broken rules, `service: evidence`, joined.
    pub fn evidence(&self) -> String {
        let lines: Vec<String> =
            self.services.iter().flat_map(|s| s.broken.iter().map(move |b| format!("{}: {}", s.service, b.evidence))).collect();
        lines.join("; ")
    }

    /// The first broken rule (the one an automatic rollback is counted under).
    pub fn first_rule(&self) -> Option<Rule> {
        self.services.iter().flat_map(|s| &s.broken).map(|b| b.rule).next()
    }
}

/// Answers a latency quantile needs above it to mean more than one slow
/// request: with 50 answers in the window the guard compares p90, not the
/// maximum it would call p99 (both releases at the same quantile).
const TAIL: f64 = 5.0;

/// Judges `candidate` (per service, over the window) against `baseline`
/// (the same services of the release it replaces: before the switch, or in
/// the same window during a canary). `against` names that release in the
/// evidence.
pub fn evaluate(
    rules: &GuardSettings,
    services: &[ServiceName],
    candidate: &[ServiceSample],
    baseline: &[Option<ServiceSample>],
    against: &str,
) -> Evaluation {
    let mut judged = Vec::new();
    for (i, service) in services.iter().enumerate() {
        let Some(sample) = candidate.get(i) else { continue };
        // the quantile a window this small can tell: at least TAIL answers above it
        let quantile = rules.latency_quantile.min(1.0 - TAIL / sample.answered.max(1) as f64).max(0.5);
        let cand = Figures::of(sample, quantile);
        let base = baseline.get(i).copied().flatten().map(|b| Figures::of(&b, quantile)).filter(|b| b.requests >= rules.min_requests);
        let inconclusive = cand.requests < rules.min_requests;
        let mut broken = Vec::new();
        if !inconclusive {
            let base_ratio = base.map_or(0.0, |b| b.error_ratio);
            if cand.error_ratio > rules.max_error_ratio && cand.error_ratio > base_ratio {
                let errors = (cand.error_ratio * cand.requests as f64).round();
                let versus = base.map_or_else(String::new, |b| format!(" and > {against}'s {}", percent(b.error_ratio)));
                let evidence = format!(
                    "error ratio {} ({errors} of {}) > {}{versus}",
                    percent(cand.error_ratio),
                    cand.requests,
                    percent(rules.max_error_ratio)
                );
                broken.push(Broken { rule: Rule::ErrorRatio, evidence });
            }
            if let (Some(c), Some(Some(b))) = (cand.latency, base.map(|b| b.latency)) {
                let floor = rules.latency_floor.as_secs_f64();
                if c > rules.max_latency_ratio * b && c > floor {
                    let q = quantile_name(quantile);
                    let evidence = format!("{q} {} > {} × {against}'s {} and > {}", ms(c), rules.max_latency_ratio, ms(b), ms(floor));
                    broken.push(Broken { rule: Rule::Latency, evidence });
                }
            }
        }
        judged.push(ServiceJudgement { service: service.clone(), candidate: cand, baseline: base, inconclusive, broken });
    }
    let bad = judged.iter().any(|s| !s.broken.is_empty());
    let inconclusive = judged.iter().all(|s| s.inconclusive);
    Evaluation { services: judged, bad, inconclusive }
}

/// The counters of one release at one moment, per service (topology order).
#[derive(Debug, Clone)]
pub struct Reading {
    /// When it was taken.
    pub at: Instant,
    /// Totals per service.
    pub services: Vec<ServiceSample>,
}

/// The recent readings of every release, oldest first, kept for a while
/// (the longest of the guard's window and baseline).
#[derive(Debug, Default)]
pub struct History {
    releases: HashMap<ReleaseName, VecDeque<Reading>>,
}

impl History {
    /// Adds `reading` of `release`, dropping readings older than `keep`.
    pub fn record(&mut self, release: &ReleaseName, reading: Reading, keep: Duration) {
        let readings = self.releases.entry(release.clone()).or_default();
        while readings.front().is_some_and(|r| reading.at.duration_since(r.at) > keep) {
            readings.pop_front();
        }
        readings.push_back(reading);
    }

    /// Forgets the releases not in `present` (retired).
    pub fn keep_only(&mut self, present: &[&ReleaseName]) {
        self.releases.retain(|name, _| present.contains(&name));
    }

    /// What `release` did from `from` to its latest reading: the latest
    /// reading minus the first one taken at or after `from` (or the oldest
    /// kept). `None` without two readings.
    pub fn since(&self, release: &ReleaseName, from: Instant) -> Option<Vec<ServiceSample>> {
        let readings = self.releases.get(release)?;
        let last = readings.back()?;
        let first = readings.iter().find(|r| r.at >= from).or(readings.front())?;
        (!std::ptr::eq(first, last)).then(|| last.services.iter().zip(&first.services).map(|(l, f)| l.since(f)).collect())
    }
}

/// What a watch compares its candidate with.
#[derive(Debug, Clone)]
pub enum Against {
    /// After a switch: the previous release's figures over the baseline
    /// window before the switch.
    Baseline(Vec<Option<ServiceSample>>),
    /// During a canary: the live release in the same window.
    SamePeriod,
}

/// The guard's watch over a new release: judged every interval until it
/// passes (the window ends) or is found bad `failure-limit` times in a row.
#[derive(Debug, Clone)]
pub struct Watch {
    /// The release judged.
    pub candidate: ReleaseName,
    /// The release it is compared with (and rolled back to).
    pub against: ReleaseName,
    /// How.
    pub kind: Against,
    /// Judged from here (the switch, or the canary step's start).
    pub since: Instant,
    /// The same moment, for the status.
    pub since_ms: UnixMillis,
    /// Bad evaluations in a row.
    pub consecutive_bad: u32,
    /// Evaluations so far, and of those with a verdict (enough answers).
    pub evaluations: u64,
    /// Evaluations with enough answers to judge.
    pub conclusive: u64,
    /// The latest evaluation.
    pub last: Option<Evaluation>,
}

impl Watch {
    /// A watch over `candidate` against `against`, from `since`.
    pub fn new(candidate: ReleaseName, against: ReleaseName, kind: Against, since: Instant, since_ms: UnixMillis) -> Self {
        Watch { candidate, against, kind, since, since_ms, consecutive_bad: 0, evaluations: 0, conclusive: 0, last: None }
    }

    /// Judges the candidate's latest window in `history`; returns the
    /// evaluation, and whether it is the `failure-limit`th bad one in a row
    /// (time to act). An evaluation without enough answers leaves the count
    /// of bad ones as it was.
    pub fn judge(&mut self, rules: &GuardSettings, services: &[ServiceName], history: &History, now: Instant) -> (Evaluation, bool) {
        let from = self.since.max(now.checked_sub(rules.window).unwrap_or(self.since));
        let candidate = history.since(&self.candidate, from).unwrap_or_default();
        let baseline: Vec<Option<ServiceSample>> = match &self.kind {
            Against::Baseline(b) => b.clone(),
            Against::SamePeriod => history.since(&self.against, from).unwrap_or_default().into_iter().map(Some).collect(),
        };
        let evaluation = evaluate(rules, services, &candidate, &baseline, self.against.as_str());
        self.evaluations += 1;
        if !evaluation.inconclusive {
            self.conclusive += 1;
            self.consecutive_bad = if evaluation.bad { self.consecutive_bad + 1 } else { 0 };
        }
        let act = evaluation.bad && self.consecutive_bad >= rules.failure_limit.max(1);
        self.last = Some(evaluation.clone());
        (evaluation, act)
    }
}

/// A verdict the guard acted on (or could not).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// When.
    pub at: UnixMillis,
    /// The release found bad.
    pub release: ReleaseName,
    /// `auto-rollback`, `canary-abort`, or `alert` when the rollback was refused.
    pub action: String,
    /// The first rule broken.
    pub rule: Rule,
    /// The numbers.
    pub evidence: String,
    /// Why canopy could not act, when it could not (the release it would
    /// roll back to failed its checks, say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

/// Whether the live release still works once a candidate has started (its
/// migrations have run): a rollback to it is only as good as this.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readiness {
    /// The live release checked (the rollback target after the switch).
    pub release: ReleaseName,
    /// The candidate that had started.
    pub candidate: ReleaseName,
    /// Every check of the live release passed.
    pub ready: bool,
    /// What failed, in words (empty when ready).
    pub why: String,
    /// When it was checked.
    pub at: UnixMillis,
}

/// The guard's side of the control state: the readings, the watch in
/// progress, the last verdict and the last rollback readiness. In memory:
/// a restart starts a fresh watch only at the next flip.
#[derive(Debug, Default)]
pub struct GuardBook {
    /// Recent counter readings of every release.
    pub history: History,
    /// The watch in progress.
    pub watch: Option<Watch>,
    /// The latest verdict acted on.
    pub verdict: Option<Verdict>,
    /// When an automatic rollback was last refused (retried at most every few seconds).
    pub refused_at: Option<Instant>,
    /// The latest rollback readiness (checked before each switch).
    pub readiness: Option<Readiness>,
    /// In a fleet: the other nodes' traffic, added to this node's readings.
    pub fleet: crate::cluster::FleetCounters,
}

/// The guard in `/status` and `GET /guard`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuardView {
    /// The guard judges new releases.
    pub enabled: bool,
    /// The watch in progress, if any.
    pub watching: Option<WatchView>,
    /// The latest verdict acted on.
    pub verdict: Option<Verdict>,
    /// The latest rollback readiness.
    pub rollback_ready: Option<Readiness>,
}

/// A watch in progress, for the status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WatchView {
    /// The release judged.
    pub release: ReleaseName,
    /// Compared with.
    pub against: ReleaseName,
    /// `after-switch` (against the baseline before it) or `canary` (against
    /// the live release in the same period).
    pub kind: String,
    /// Judged since (Unix ms).
    pub since: UnixMillis,
    /// Evaluations so far, and those with enough answers to judge.
    pub evaluations: u64,
    /// Evaluations with enough answers.
    pub conclusive: u64,
    /// Bad evaluations in a row, and how many make a verdict.
    pub consecutive_bad: u32,
    /// Bad evaluations in a row that make a verdict.
    pub failure_limit: u32,
    /// The latest evaluation.
    pub last: Option<Evaluation>,
}

impl GuardBook {
    /// The view of the guard with `rules`.
    pub fn view(&self, rules: &GuardSettings) -> GuardView {
        let watching = self.watch.as_ref().map(|w| WatchView {
            release: w.candidate.clone(),
            against: w.against.clone(),
            kind: match w.kind {
                Against::Baseline(_) => "after-switch".into(),
                Against::SamePeriod => "canary".into(),
            },
            since: w.since_ms,
            evaluations: w.evaluations,
            conclusive: w.conclusive,
            consecutive_bad: w.consecutive_bad,
            failure_limit: rules.failure_limit,
            last: w.last.clone(),
        });
        GuardView { enabled: rules.enabled, watching, verdict: self.verdict.clone(), rollback_ready: self.readiness.clone() }
    }
}

/// The duration at quantile `q` of a histogram (per-bucket counts over
/// [`DURATION_BUCKETS`], then those above), interpolated linearly inside its
/// bucket as Prometheus' `histogram_quantile` does; above the last bound it
/// is the last bound. `None` without observations.
pub fn quantile_of(durations: &[u64; DURATION_BUCKETS.len() + 1], q: f64) -> Option<f64> {
    let total: u64 = durations.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let mut below = 0u64;
    for (i, n) in durations.iter().enumerate() {
        if *n > 0 && (below + n) as f64 >= rank {
            let Some(upper) = DURATION_BUCKETS.get(i) else { return Some(DURATION_BUCKETS[DURATION_BUCKETS.len() - 1]) };
            let lower = if i == 0 { 0.0 } else { DURATION_BUCKETS[i - 1] };
            let within = (rank - below as f64) / *n as f64;
            return Some(lower + (upper - lower) * within);
        }
        below += n;
    }
    Some(DURATION_BUCKETS[DURATION_BUCKETS.len() - 1])
}

fn percent(ratio: f64) -> String {
    format!("{:.1}%", ratio * 100.0)
}

fn ms(secs: f64) -> String {
    format!("{:.0} ms", secs * 1e3)
}

fn quantile_name(q: f64) -> String {
    format!("p{}", (q * 100.0).round())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn sample(requests: u64, errors: u64, latency: Duration) -> ServiceSample {
        let mut s = ServiceSample { answered: requests, server_errors: errors, ..ServiceSample::default() };
        let i = DURATION_BUCKETS.iter().position(|b| latency.as_secs_f64() <= *b).unwrap_or(DURATION_BUCKETS.len());
        s.durations[i] = requests;
        s
    }

    fn server() -> Vec<ServiceName> {
        vec![ServiceName::parse("server").unwrap()]
    }

    #[test]
    fn errors_above_the_ceiling_and_the_baseline_are_bad() {
        let rules = GuardSettings::default();
        let ms10 = Duration::from_millis(10);
        let e = evaluate(&rules, &server(), &[sample(200, 42, ms10)], &[Some(sample(1000, 5, ms10))], "juniper");
        assert!(e.bad && !e.inconclusive);
        assert_eq!(e.first_rule(), Some(Rule::ErrorRatio));
        assert_eq!(e.evidence(), "server: error ratio 21.0% (42 of 200) > 5.0% and > juniper's 0.5%");
        // a shop with a steady 8% of errors does not roll back a release with 8%
        let e = evaluate(&rules, &server(), &[sample(200, 16, ms10)], &[Some(sample(1000, 80, ms10))], "juniper");
        assert!(!e.bad, "{e:?}");
        // 1% noise in both is fine
        assert!(!evaluate(&rules, &server(), &[sample(200, 2, ms10)], &[Some(sample(1000, 10, ms10))], "j").bad);
    }

    #[test]
    fn too_few_requests_give_no_verdict() {
        let rules = GuardSettings::default();
        let e = evaluate(&rules, &server(), &[sample(19, 19, Duration::from_millis(1))], &[None], "j");
        assert!(!e.bad && e.inconclusive);
    }

    #[test]
    fn slower_than_the_ratio_and_the_floor_is_bad() {
        let rules = GuardSettings::default();
        let (fast, slow) = (sample(500, 0, Duration::from_millis(20)), sample(500, 0, Duration::from_millis(80)));
        let e = evaluate(&rules, &server(), &[slow], &[Some(fast)], "juniper");
        assert_eq!(e.first_rule(), Some(Rule::Latency), "{e:?}");
        assert!(e.evidence().starts_with("server: p99 "), "{}", e.evidence());
        // 60 answers: a p99 would be the slowest one; the guard compares p92 instead
        let (fast, slow) = (sample(60, 0, Duration::from_millis(20)), sample(60, 0, Duration::from_millis(80)));
        let e = evaluate(&rules, &server(), &[slow], &[Some(fast)], "juniper");
        assert!(e.evidence().starts_with("server: p92 "), "{}", e.evidence());
        // 4x slower but under the floor: no regression worth a rollback
        let (tiny, small) = (sample(500, 0, Duration::from_micros(400)), sample(500, 0, Duration::from_millis(2)));
        assert!(!evaluate(&rules, &server(), &[small], &[Some(tiny)], "j").bad);
        // no baseline: latency is not judged
        assert!(!evaluate(&rules, &server(), &[slow], &[None], "j").bad);
    }

    #[test]
    fn a_watch_acts_after_failure_limit_bad_evaluations_in_a_row() {
        let rules = GuardSettings::default();
        let (elm, juniper) = (ReleaseName::parse("elm").unwrap(), ReleaseName::parse("juniper").unwrap());
        let t0 = Instant::now();
        let mut history = History::default();
        let keep = Duration::from_secs(60);
        let reading =
            |at: Instant, requests: u64, errors: u64| Reading { at, services: vec![sample(requests, errors, Duration::from_millis(5))] };
        history.record(&elm, reading(t0, 0, 0), keep);
        let mut watch = Watch::new(elm.clone(), juniper, Against::Baseline(vec![None]), t0, 0);
        // second 1: 100 answers, 20 failing
        history.record(&elm, reading(t0 + Duration::from_secs(1), 100, 20), keep);
        let (e, act) = watch.judge(&rules, &server(), &history, t0 + Duration::from_secs(1));
        assert!(e.bad && !act, "one bad evaluation is not enough");
        // second 2: still failing
        history.record(&elm, reading(t0 + Duration::from_secs(2), 200, 40), keep);
        let (_, act) = watch.judge(&rules, &server(), &history, t0 + Duration::from_secs(2));
        assert!(act);
        assert_eq!((watch.evaluations, watch.conclusive, watch.consecutive_bad), (2, 2, 2));
        // without new answers there is no verdict, and the count stays
        let mut quiet = Watch::new(elm.clone(), ReleaseName::parse("oak").unwrap(), Against::SamePeriod, t0, 0);
        let (e, act) = quiet.judge(&rules, &server(), &History::default(), t0);
        assert!(e.inconclusive && !act && quiet.conclusive == 0);
    }

    #[test]
    fn quantiles_interpolate_inside_their_bucket() {
        let mut d = [0u64; DURATION_BUCKETS.len() + 1];
        d[4] = 100; // (5 ms, 10 ms]
        let p50 = quantile_of(&d, 0.5).unwrap();
        assert!((p50 - 0.0075).abs() < 1e-9, "{p50}");
        assert_eq!(quantile_of(&[0; DURATION_BUCKETS.len() + 1], 0.99), None);
        d[DURATION_BUCKETS.len()] = 1_000; // above 10 s
        assert_eq!(quantile_of(&d, 0.99), Some(10.0));
    }
}
