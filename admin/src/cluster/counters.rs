//! The guard's raw material across the fleet: every node publishes its own
//! per-release counters (totals since it started) each guard interval,
//! bound to its session; the node that judges a release adds the others'
//! to its own, so a verdict is taken once, over the whole fleet's traffic.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use canopy_proxy::ServiceSample;

use super::Fleet;

/// A node's counters: per release, per service name, its totals.
pub type Counters = BTreeMap<String, BTreeMap<String, ServiceSample>>;

impl Fleet {
    fn counters_prefix(&self) -> String {
        format!("{}/counters/", self.settings.prefix)
    }

    /// Publishes this node's counters (bound to its session: they vanish
    /// with it). Without a session, nothing is published.
    pub(crate) async fn publish_counters(&self, counters: &Counters) {
        let lease = self.session.lease.load(Ordering::SeqCst);
        if lease == 0 || !self.session.live() {
            return;
        }
        let key = format!("{}{}", self.counters_prefix(), self.node());
        let value = serde_json::to_vec(counters).expect("counters serialise");
        if let Err(e) = self.put_key(key, value, Some(lease)).await {
            log::debug!("fleet: publishing the guard's counters: {e}");
        }
    }

    /// The other nodes' latest counters, by node (live sessions only).
    pub(crate) async fn others_counters(&self) -> BTreeMap<String, Counters> {
        let prefix = self.counters_prefix();
        let own = format!("{prefix}{}", self.node());
        let Ok(listed) = self.get_prefix(prefix.clone()).await else { return BTreeMap::new() };
        listed
            .kvs()
            .iter()
            .filter(|kv| kv.key() != own.as_bytes())
            .filter_map(|kv| {
                let node = String::from_utf8_lossy(kv.key()).strip_prefix(&prefix)?.to_string();
                Some((node, serde_json::from_slice::<Counters>(kv.value()).ok()?))
            })
            .collect()
    }
}

/// The other nodes' traffic, added up as it happens: each round adds what
/// each node counted since its previous round, so a node that joins (its
/// totals since it started) or leaves never makes the fleet's totals jump.
#[derive(Debug, Default)]
pub struct FleetCounters {
    previous: BTreeMap<String, Counters>,
    total: Counters,
}

impl FleetCounters {
    /// Takes in every other node's latest counters.
    pub fn absorb(&mut self, latest: BTreeMap<String, Counters>) {
        for (node, counters) in &latest {
            let Some(before) = self.previous.get(node) else { continue };
            for (release, services) in counters {
                for (service, now) in services {
                    let then = before.get(release).and_then(|s| s.get(service)).copied().unwrap_or_default();
                    self.total.entry(release.clone()).or_default().entry(service.clone()).or_default().add(&now.since(&then));
                }
            }
        }
        self.previous = latest;
    }

    /// The other nodes' traffic to `service` of `release` so far.
    pub fn of(&self, release: &str, service: &str) -> Option<&ServiceSample> {
        self.total.get(release)?.get(service)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(answered: u64, server_errors: u64) -> ServiceSample {
        ServiceSample { answered, server_errors, ..ServiceSample::default() }
    }

    fn counters(answered: u64, server_errors: u64) -> Counters {
        BTreeMap::from([("elm".to_string(), BTreeMap::from([("web".to_string(), sample(answered, server_errors))]))])
    }

    #[test]
    fn a_node_adds_what_it_counted_between_rounds_and_joining_or_restarting_adds_nothing() {
        let mut fleet = FleetCounters::default();
        // n2 joins with 1000 answers already counted: nothing yet
        fleet.absorb(BTreeMap::from([("n2".to_string(), counters(1000, 10))]));
        assert_eq!(fleet.of("elm", "web"), None);
        fleet.absorb(BTreeMap::from([("n2".to_string(), counters(1100, 30)), ("n3".to_string(), counters(50, 0))]));
        assert_eq!(fleet.of("elm", "web").map(|s| (s.answered, s.server_errors)), Some((100, 20)));
        // n2 restarts (its counters begin again), n3 counts on
        fleet.absorb(BTreeMap::from([("n2".to_string(), counters(5, 0)), ("n3".to_string(), counters(80, 3))]));
        assert_eq!(fleet.of("elm", "web").map(|s| (s.answered, s.server_errors)), Some((130, 23)));
    }
}
