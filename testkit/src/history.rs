//! A history of release flips and of the responses clients saw, and a
//! checker for it, in the spirit of Jepsen's checkers: tests record what
//! they did and what came back (from any number of threads, through an
//! `Arc<History>`), then [`History::check`] says whether every response fits
//! some order of events the flips allow.
//!
//! # The model
//!
//! A flip asks the fleet to make release `to` live. Its outcome is one of
//! ([`Outcome`]):
//! - acknowledged: the flip took effect somewhere in
//!   `[invoked, acknowledged]`, and from `acknowledged` on `to` is live on
//!   every node;
//! - refused: it never took effect (nothing changes);
//! - unknown (`acknowledged: None`, not refused, e.g. its coordinator was
//!   killed): it may have taken effect at any time after `invoked`.
//!
//! Flips are ordered by their invocation time, and an acknowledged flip
//! supersedes every flip invoked before it (canopy serializes flips, so an
//! earlier flip whose outcome is unknown cannot land after a later one was
//! acknowledged). The releases that may be live at instant `t` are then:
//! - the release of the latest-invoked flip acknowledged by `t` (or the
//!   history's initial release if there is none), and
//! - the release of every flip invoked after that one, by `t`, and not
//!   refused (flips in flight, and flips whose outcome is unknown).
//!
//! # The properties
//!
//! A response is served at some instant between `sent` and `received`, so
//! [`History::check`] requires:
//! - (a) no failed response: status 0 (a transport error) or 500 and above,
//!   except while its node is known not ready (an [`Unready`] window that
//!   overlaps `[sent, received]`): those are counted as excused;
//! - (b, c) every other response names (`x-canopy-release`) a release that
//!   may be live at some instant of `[sent, received]`. Hence: a response
//!   sent after flip F (to X) was acknowledged and received before the
//!   next flip was invoked names X, on every node; one that overlaps a flip
//!   in flight may name the old or the new release; a refused flip changes
//!   nothing; a flip of unknown outcome allows its release from its
//!   invocation until the next acknowledged flip; and a release is never
//!   named before its flip was invoked, nor once a later flip is
//!   acknowledged. A response that names no release breaks it too.
//!
//! An [`Unready`] window starts when its node is cut off (from etcd): in it
//! the node may still serve any release live since the window began (it
//! keeps serving the last state it applied), so such answers are allowed
//! too; the test checks on its own that no flip is acknowledged while the
//! node still reports itself ready.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// How many violations of each kind a report lists.
pub const REPORT_FIRST: usize = 10;

/// One flip: a request to make release `to` live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flip {
    /// The release it makes live.
    pub to: String,
    /// When it was asked for.
    pub invoked: Instant,
    /// When its outcome was known (it took effect, or, if `refused`, it was
    /// refused); `None` if its outcome is unknown.
    pub acknowledged: Option<Instant>,
    /// Whether it was refused (took no effect).
    pub refused: bool,
}

/// How a [`Flip`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It took effect by its acknowledgement.
    Acknowledged,
    /// It took no effect.
    Refused,
    /// It may or may not have taken effect.
    Unknown,
}

impl Flip {
    /// A flip to `to` asked for at `invoked` and acknowledged at `acknowledged`.
    pub fn acknowledged(to: &str, invoked: Instant, acknowledged: Instant) -> Flip {
        Flip { to: to.to_string(), invoked, acknowledged: Some(acknowledged), refused: false }
    }

    /// A flip to `to` asked for at `invoked` and refused at `answered`.
    pub fn refused(to: &str, invoked: Instant, answered: Instant) -> Flip {
        Flip { to: to.to_string(), invoked, acknowledged: Some(answered), refused: true }
    }

    /// A flip to `to` asked for at `invoked` whose outcome is unknown.
    pub fn unknown(to: &str, invoked: Instant) -> Flip {
        Flip { to: to.to_string(), invoked, acknowledged: None, refused: false }
    }

    /// How it ended.
    pub fn outcome(&self) -> Outcome {
        match (self.refused, self.acknowledged) {
            (true, _) => Outcome::Refused,
            (false, Some(_)) => Outcome::Acknowledged,
            (false, None) => Outcome::Unknown,
        }
    }
}

/// One response a client got from a node (or the error it got instead).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The node asked.
    pub node: String,
    /// When the request was sent.
    pub sent: Instant,
    /// When the response (or the error) came.
    pub received: Instant,
    /// Its `x-canopy-release` header.
    pub release: Option<String>,
    /// Its status; 0 for a transport error.
    pub status: u16,
}

impl Response {
    /// Whether it failed: a transport error (status 0) or a status of 500 or above.
    pub fn failed(&self) -> bool {
        self.status == 0 || self.status >= 500
    }
}

/// A window in which `node` is cut off (e.g. from etcd) and so not ready:
/// its failures there are excused, and it may serve any release live since
/// `from` (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unready {
    /// The node.
    pub node: String,
    /// When it was cut off (it stops being ready within its session TTL).
    pub from: Instant,
    /// When it was ready again; `None` if it never was.
    pub to: Option<Instant>,
}

/// What a history holds.
#[derive(Debug, Default)]
struct Records {
    flips: Vec<Flip>,
    responses: Vec<Response>,
    unready: Vec<Unready>,
}

/// Flips, responses and unready windows, recorded from any thread; see
/// the module doc for what [`History::check`] checks.
#[derive(Debug)]
pub struct History {
    start: Instant,
    initial: String,
    records: Mutex<Records>,
}

impl History {
    /// An empty history starting now, with `initial` live before any flip.
    pub fn new(initial: &str) -> Arc<History> {
        Self::starting_at(initial, Instant::now())
    }

    /// An empty history starting at `start` (reports give times relative
    /// to it), with `initial` live before any flip.
    pub fn starting_at(initial: &str, start: Instant) -> Arc<History> {
        Arc::new(History { start, initial: initial.to_string(), records: Mutex::new(Records::default()) })
    }

    /// When it starts.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// Records a flip.
    pub fn record_flip(&self, flip: Flip) {
        self.lock().flips.push(flip);
    }

    /// Records a response.
    pub fn record_response(&self, response: Response) {
        self.lock().responses.push(response);
    }

    /// Records a window in which a node was known not to be ready.
    pub fn record_unready(&self, window: Unready) {
        self.lock().unready.push(window);
    }

    /// How many responses were recorded so far.
    pub fn response_count(&self) -> usize {
        self.lock().responses.len()
    }

    /// Checks every response recorded so far (see the module doc).
    pub fn check(&self) -> Verdict {
        let records = self.lock();
        let mut flips = records.flips.clone();
        flips.sort_by_key(|f| f.invoked);
        let timeline = Timeline { initial: &self.initial, flips: &flips };
        let mut verdict = Verdict::new(self.start, &flips);
        let mut responses: Vec<&Response> = records.responses.iter().collect();
        responses.sort_by_key(|r| (r.sent, r.received));
        for r in responses {
            let excused = r.failed() && records.unready.iter().any(|w| w.node == r.node && w.overlaps(r.sent, r.received));
            verdict.count(r, excused);
            let (kind, expected) = match (&r.release, r.failed()) {
                (_, true) if excused => continue,
                (_, true) => (ViolationKind::Failed, BTreeSet::new()),
                (release, false) => {
                    let mut allowed = timeline.allowed(r.sent, r.received.max(r.sent));
                    // cut off: the node may still serve what was live when it was cut off
                    for w in records.unready.iter().filter(|w| w.node == r.node && w.overlaps(r.sent, r.received)) {
                        allowed.extend(timeline.allowed(w.from, r.received.max(r.sent)));
                    }
                    match release {
                        Some(got) if allowed.contains(got.as_str()) => continue,
                        Some(_) => (ViolationKind::WrongRelease, allowed),
                        None => (ViolationKind::MissingRelease, allowed),
                    }
                }
            };
            verdict.violations.push(Violation {
                kind,
                node: r.node.clone(),
                sent_ms: rel_ms(self.start, r.sent),
                received_ms: rel_ms(self.start, r.received),
                status: r.status,
                expected: expected.into_iter().map(String::from).collect(),
                got: r.release.clone(),
            });
        }
        verdict
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Records> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Unready {
    /// Whether the window shares an instant with `[from, to]`.
    fn overlaps(&self, from: Instant, to: Instant) -> bool {
        self.from <= to.max(from) && self.to.is_none_or(|end| end >= from)
    }
}

/// The flips in invocation order, and what they allow.
struct Timeline<'a> {
    initial: &'a str,
    flips: &'a [Flip],
}

impl<'a> Timeline<'a> {
    /// The releases that may be live at `t` (see the module doc).
    fn live_at(&self, t: Instant) -> BTreeSet<&'a str> {
        let last_acked = self.flips.iter().rposition(|f| !f.refused && f.acknowledged.is_some_and(|a| a <= t));
        let (confirmed, later) = match last_acked {
            Some(k) => (self.flips[k].to.as_str(), &self.flips[k + 1..]),
            None => (self.initial, self.flips),
        };
        let mut live = BTreeSet::from([confirmed]);
        live.extend(later.iter().filter(|f| !f.refused && f.invoked <= t).map(|f| f.to.as_str()));
        live
    }

    /// The releases that may be live at some instant of `[from, to]`: what
    /// is live at `from` and at every flip event up to `to` (the set changes
    /// only at events).
    fn allowed(&self, from: Instant, to: Instant) -> BTreeSet<&'a str> {
        let mut allowed = self.live_at(from);
        let events = self.flips.iter().filter(|f| !f.refused).flat_map(|f| [Some(f.invoked), f.acknowledged]).flatten();
        for e in events.filter(|e| *e > from && *e <= to) {
            allowed.extend(self.live_at(e));
        }
        allowed
    }
}

/// `t` in milliseconds after `start` (negative before it).
fn rel_ms(start: Instant, t: Instant) -> f64 {
    match t.checked_duration_since(start) {
        Some(d) => d.as_secs_f64() * 1e3,
        None => -(start - t).as_secs_f64() * 1e3,
    }
}

/// What kind of property a response broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ViolationKind {
    /// (a): a transport error or a 5xx outside an unready window of its node.
    Failed,
    /// (b, c): it named a release that could not be live while it was served.
    WrongRelease,
    /// It succeeded but named no release.
    MissingRelease,
}

/// One response that broke a property.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    /// Which property.
    pub kind: ViolationKind,
    /// The node that answered.
    pub node: String,
    /// When the request was sent, in ms after the history's start.
    pub sent_ms: f64,
    /// When the response came, in ms after the history's start.
    pub received_ms: f64,
    /// Its status (0: transport error).
    pub status: u16,
    /// The releases it could have named (empty for a failure).
    pub expected: Vec<String>,
    /// The release it named.
    pub got: Option<String>,
}

/// What one node answered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeCounts {
    /// Responses from it.
    pub responses: usize,
    /// Its failures outside its unready windows.
    pub failures: usize,
    /// Its failures inside its unready windows.
    pub excused: usize,
    /// Its successful responses by the release they named ("" for none).
    pub releases: BTreeMap<String, usize>,
}

/// What [`History::check`] found.
#[derive(Debug, Clone)]
pub struct Verdict {
    start: Instant,
    /// The flips, in invocation order.
    pub flips: Vec<Flip>,
    /// Responses checked.
    pub responses: usize,
    /// Per node.
    pub nodes: BTreeMap<String, NodeCounts>,
    /// Flips acknowledged.
    pub flips_acknowledged: usize,
    /// Flips refused.
    pub flips_refused: usize,
    /// Flips whose outcome is unknown.
    pub flips_unknown: usize,
    /// Failures outside unready windows (each also a violation).
    pub failures: usize,
    /// Failures inside unready windows (allowed).
    pub excused_failures: usize,
    /// Every response that broke a property, in the order they were sent.
    pub violations: Vec<Violation>,
}

impl Verdict {
    fn new(start: Instant, flips: &[Flip]) -> Verdict {
        let outcomes = |o| flips.iter().filter(|f| f.outcome() == o).count();
        Verdict {
            start,
            flips: flips.to_vec(),
            responses: 0,
            nodes: BTreeMap::new(),
            flips_acknowledged: outcomes(Outcome::Acknowledged),
            flips_refused: outcomes(Outcome::Refused),
            flips_unknown: outcomes(Outcome::Unknown),
            failures: 0,
            excused_failures: 0,
            violations: Vec::new(),
        }
    }

    fn count(&mut self, r: &Response, excused: bool) {
        self.responses += 1;
        let node = self.nodes.entry(r.node.clone()).or_default();
        node.responses += 1;
        let (all, mine) = match (r.failed(), excused) {
            (true, true) => (&mut self.excused_failures, &mut node.excused),
            (true, false) => (&mut self.failures, &mut node.failures),
            (false, _) => return *node.releases.entry(r.release.clone().unwrap_or_default()).or_default() += 1,
        };
        *all += 1;
        *mine += 1;
    }

    /// Whether no response broke a property.
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }

    /// The violations of `kind`.
    pub fn of_kind(&self, kind: ViolationKind) -> Vec<&Violation> {
        self.violations.iter().filter(|v| v.kind == kind).collect()
    }

    /// Panics with the report (see its `Display`) unless [`Verdict::ok`].
    #[track_caller]
    pub fn assert_ok(&self) {
        assert!(self.ok(), "the history breaks its properties:\n{self}");
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (responses, failures, excused) = (self.responses, self.failures, self.excused_failures);
        writeln!(f, "{responses} responses, {failures} failed (+{excused} excused while unready), {} violations", self.violations.len())?;
        let (acknowledged, refused, unknown) = (self.flips_acknowledged, self.flips_refused, self.flips_unknown);
        writeln!(f, "flips: {acknowledged} acknowledged, {refused} refused, {unknown} unknown")?;
        for flip in &self.flips {
            let at = |t| format!("{:.1}ms", rel_ms(self.start, t));
            let end = flip.acknowledged.map_or_else(|| "?".to_string(), at);
            writeln!(f, "  flip to {:?}: invoked {}, {:?} {end}", flip.to, at(flip.invoked), flip.outcome())?;
        }
        for (name, n) in &self.nodes {
            writeln!(
                f,
                "  node {name}: {} responses, {} failed, {} excused, releases {:?}",
                n.responses, n.failures, n.excused, n.releases
            )?;
        }
        for kind in [ViolationKind::Failed, ViolationKind::WrongRelease, ViolationKind::MissingRelease] {
            let of_kind = self.of_kind(kind);
            if of_kind.is_empty() {
                continue;
            }
            writeln!(f, "{kind:?}: {} (first {} listed)", of_kind.len(), of_kind.len().min(REPORT_FIRST))?;
            for v in of_kind.iter().take(REPORT_FIRST) {
                writeln!(
                    f,
                    "  node {} sent {:.1}ms received {:.1}ms status {}: expected one of {:?}, got {:?}",
                    v.node, v.sent_ms, v.received_ms, v.status, v.expected, v.got
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A history, and instants `ms` after its start.
    struct Clock {
        history: Arc<History>,
    }

    impl Clock {
        fn at(&self, ms: u64) -> Instant {
            self.history.start() + Duration::from_millis(ms)
        }

        fn flip(&self, to: &str, invoked: u64, acknowledged: u64) {
            self.history.record_flip(Flip::acknowledged(to, self.at(invoked), self.at(acknowledged)));
        }

        fn answer(&self, node: &str, sent: u64, received: u64, release: &str) {
            self.respond(node, sent, received, Some(release), 200);
        }

        fn respond(&self, node: &str, sent: u64, received: u64, release: Option<&str>, status: u16) {
            let (node, release) = (node.to_string(), release.map(str::to_string));
            self.history.record_response(Response { node, sent: self.at(sent), received: self.at(received), release, status });
        }
    }

    /// blue until a flip to green invoked at 100 ms and acknowledged at 150 ms.
    fn one_flip() -> Clock {
        let c = Clock { history: History::new("blue") };
        c.flip("green", 100, 150);
        c.answer("a", 10, 20, "blue");
        c.answer("b", 30, 40, "blue");
        c.answer("a", 200, 210, "green");
        c.answer("b", 220, 230, "green");
        c
    }

    #[test]
    fn a_clean_history_passes_with_its_counts() {
        let c = one_flip();
        let v = c.history.check();
        v.assert_ok();
        assert_eq!((v.responses, v.flips_acknowledged, v.flips_refused, v.flips_unknown), (4, 1, 0, 0));
        assert_eq!(v.nodes["a"].releases, BTreeMap::from([("blue".to_string(), 1), ("green".to_string(), 1)]));
        assert_eq!(v.nodes["b"].responses, 2);
    }

    #[test]
    fn a_stale_answer_after_an_acknowledgement_is_caught() {
        let c = one_flip();
        c.answer("b", 160, 170, "blue");
        let v = c.history.check();
        assert!(!v.ok());
        assert_eq!(v.violations.len(), 1, "{v}");
        let bad = &v.violations[0];
        assert_eq!((bad.kind, bad.node.as_str(), bad.got.as_deref()), (ViolationKind::WrongRelease, "b", Some("blue")));
        assert_eq!(bad.expected, ["green"]);
        assert!((bad.sent_ms - 160.0).abs() < 1e-6 && (bad.received_ms - 170.0).abs() < 1e-6, "{bad:?}");
    }

    #[test]
    fn an_answer_overlapping_a_flip_in_flight_may_name_either_release() {
        let c = one_flip();
        c.answer("a", 110, 140, "blue");
        c.answer("b", 110, 140, "green");
        // sent before the flip was invoked, served after: the new release is possible
        c.answer("a", 90, 110, "green");
        // sent before the acknowledgement, received after: the old one too
        c.answer("b", 140, 160, "blue");
        c.history.check().assert_ok();
    }

    #[test]
    fn a_release_is_never_named_before_its_flip_was_invoked() {
        let c = one_flip();
        c.answer("a", 50, 90, "green");
        c.answer("a", 60, 70, "purple");
        let v = c.history.check();
        let wrong = v.of_kind(ViolationKind::WrongRelease);
        assert_eq!(wrong.len(), 2, "{v}");
        assert!(wrong.iter().all(|w| w.expected == ["blue"]), "{v}");
    }

    #[test]
    fn failures_are_caught_unless_their_node_is_unready() {
        let c = one_flip();
        c.respond("a", 300, 310, None, 502);
        c.respond("b", 300, 310, Some("green"), 0);
        c.respond("a", 320, 330, None, 503);
        c.history.record_unready(Unready { node: "a".into(), from: c.at(315), to: Some(c.at(400)) });
        // unready excuses failures and releases live since the window began,
        // not older ones nor answers without a release
        c.answer("a", 340, 350, "blue");
        c.respond("a", 360, 370, None, 200);
        let v = c.history.check();
        assert_eq!((v.failures, v.excused_failures), (2, 1), "{v}");
        assert_eq!(v.of_kind(ViolationKind::Failed).len(), 2);
        assert_eq!(v.of_kind(ViolationKind::WrongRelease).len(), 1);
        assert_eq!(v.of_kind(ViolationKind::MissingRelease).len(), 1);
        assert_eq!((v.nodes["a"].failures, v.nodes["a"].excused, v.nodes["b"].failures), (1, 1, 1));
    }

    #[test]
    fn a_flip_of_unknown_outcome_allows_either_release_until_the_next_acknowledged_flip() {
        let c = one_flip();
        c.history.record_flip(Flip::unknown("purple", c.at(300)));
        c.answer("a", 400, 410, "purple");
        c.answer("b", 420, 430, "green");
        c.answer("a", 440, 450, "purple");
        c.flip("blue", 500, 550);
        // in flight: all three
        c.answer("b", 510, 520, "purple");
        c.answer("a", 510, 520, "blue");
        c.answer("b", 530, 540, "green");
        c.history.check().assert_ok();
        // once the next flip is acknowledged, neither
        c.answer("a", 600, 610, "purple");
        c.answer("b", 600, 610, "green");
        c.answer("a", 600, 610, "blue");
        let v = c.history.check();
        assert_eq!(v.violations.len(), 2, "{v}");
        assert_eq!((v.flips_acknowledged, v.flips_unknown), (2, 1));
        assert!(v.violations.iter().all(|w| w.expected == ["blue"] && w.sent_ms >= 600.0), "{v}");
    }

    #[test]
    fn a_refused_flip_changes_nothing() {
        let c = one_flip();
        c.history.record_flip(Flip::refused("purple", c.at(300), c.at(320)));
        c.answer("a", 305, 315, "green");
        c.answer("a", 400, 410, "green");
        c.answer("b", 310, 315, "purple");
        let v = c.history.check();
        assert_eq!(v.violations.len(), 1, "{v}");
        assert_eq!((v.violations[0].node.as_str(), v.violations[0].expected.as_slice()), ("b", ["green".to_string()].as_slice()));
        assert_eq!(v.flips_refused, 1);
    }

    #[test]
    fn threads_record_into_one_history() {
        let c = Clock { history: History::new("blue") };
        std::thread::scope(|s| {
            for node in ["n0", "n1", "n2", "n3"] {
                let c = &c;
                s.spawn(move || (0..100).for_each(|_| c.answer(node, 5, 6, "blue")));
            }
        });
        let v = c.history.check();
        v.assert_ok();
        assert_eq!((v.responses, v.nodes.len()), (400, 4));
    }

    #[test]
    #[should_panic(expected = "node b sent 160.0ms received 170.0ms status 200: expected one of [\"green\"], got Some(\"blue\")")]
    fn assert_ok_reports_each_violation_readably() {
        let c = one_flip();
        c.answer("b", 160, 170, "blue");
        c.history.check().assert_ok();
    }
}
