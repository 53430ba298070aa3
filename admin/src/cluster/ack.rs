//! Acknowledgement of a flip across the fleet: the flip's revision applied
//! by every node with a live session.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::Fleet;

/// How long to wait before reading the node list again after a failure.
const POLL: Duration = Duration::from_millis(20);

/// A flip's acknowledgement across the fleet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetAck {
    /// The fleet revision of the flip.
    pub revision: i64,
    /// Every node with a live session applied it (the late and expired
    /// ones below excepted: an expired node is out of the fleet and not
    /// ready, so it does not hold the flip back).
    pub acknowledged: bool,
    /// Each node that applied it, with how long after the commit this
    /// node saw it do so.
    pub nodes: Vec<NodeAck>,
    /// Nodes whose session expired before they applied it: cut off from
    /// etcd, not ready, serving their last applied state until they
    /// reconnect and catch up.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expired: Vec<String>,
    /// Nodes with a live session that did not apply it within
    /// `apply-timeout` (the flip stands; they are alerted on).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub late: Vec<String>,
    /// From the commit to the acknowledgement, in milliseconds.
    pub ack_ms: f64,
}

/// One node's acknowledgement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeAck {
    /// The node.
    pub node: String,
    /// Milliseconds after the commit.
    pub applied_ms: f64,
}

impl Fleet {
    /// Waits until every node with a live session has applied `revision`
    /// (committed at `committed`), or `apply-timeout` has passed; names the
    /// nodes that applied it, those whose session expired first (among
    /// them any of `members`, the nodes live when the flip began, that are
    /// gone), and those still late. While etcd cannot be read, waits on
    /// (until the timeout).
    pub async fn acknowledge(&self, revision: i64, committed: Instant, members: &[String]) -> FleetAck {
        let limit = self.settings.apply_timeout;
        // this node applied it before the commit returned (its record says so a write later)
        let applied = BTreeMap::from([(self.node().to_string(), Duration::ZERO)]);
        let waiting = members.iter().filter(|m| *m != self.node()).cloned().collect();
        let mut tally = Tally { revision, applied, waiting, expired: Vec::new() };
        let mut read = false;
        // the node list once, then its changes as they come (a watch from
        // the list's revision on); read again whenever the watch breaks
        'reading: while committed.elapsed() < limit {
            let Ok((mut nodes, at)) = self.nodes_at().await else {
                tokio::time::sleep(POLL).await;
                continue;
            };
            read = true;
            if tally.settle(&nodes, committed.elapsed()) {
                break;
            }
            let Ok(mut watch) = self.watch_nodes(at + 1).await else { continue };
            loop {
                let left = limit.saturating_sub(committed.elapsed());
                let Ok(Ok(Some(resp))) = tokio::time::timeout(left, watch.message()).await else { continue 'reading };
                for event in resp.events() {
                    let Some(kv) = event.kv() else { continue };
                    let name = String::from_utf8_lossy(kv.key()).rsplit('/').next().unwrap_or_default().to_string();
                    match event.event_type() {
                        etcd_client::EventType::Put => {
                            if let Ok(record) = serde_json::from_slice::<super::NodeRecord>(kv.value()) {
                                nodes.insert(record.node.clone(), record);
                            }
                        }
                        etcd_client::EventType::Delete => {
                            nodes.remove(&name);
                        }
                    }
                }
                if tally.settle(&nodes, committed.elapsed()) {
                    break 'reading;
                }
            }
        }
        let Tally { applied, waiting, expired, .. } = tally;
        let mut late: Vec<String> = waiting.into_iter().collect();
        if !read {
            late.push(format!("(every node: etcd could not be read within {limit:?})"));
        }
        if !late.is_empty() {
            self.note_late(&late, revision);
            log::error!(
                "fleet: revision {revision} not applied within apply-timeout {limit:?} by {} (their sessions are live): they may serve an older release",
                late.join(", ")
            );
        }
        if late.is_empty() {
            self.metrics.apply_seconds.observe(committed.elapsed().as_secs_f64());
        }
        FleetAck {
            revision,
            acknowledged: late.is_empty(),
            nodes: applied.into_iter().map(|(node, at)| NodeAck { node, applied_ms: at.as_secs_f64() * 1e3 }).collect(),
            expired,
            late,
            ack_ms: committed.elapsed().as_secs_f64() * 1e3,
        }
    }
}

/// Who applied a revision, who is still waiting, who left.
struct Tally {
    revision: i64,
    applied: BTreeMap<String, Duration>,
    waiting: BTreeSet<String>,
    expired: Vec<String>,
}

impl Tally {
    /// Takes in the node list as of `now` (after the commit); whether
    /// every node still in the fleet has applied the revision.
    fn settle(&mut self, nodes: &BTreeMap<String, super::NodeRecord>, now: Duration) -> bool {
        for (name, record) in nodes {
            if record.applied >= self.revision {
                self.applied.entry(name.clone()).or_insert(now);
                self.waiting.remove(name);
            } else if !self.applied.contains_key(name) {
                self.waiting.insert(name.clone());
            }
        }
        // gone before applying: its session expired
        let gone: Vec<String> = self.waiting.iter().filter(|n| !nodes.contains_key(*n)).cloned().collect();
        for name in gone {
            self.waiting.remove(&name);
            log::warn!("fleet: node {name} left the fleet (session expired) before applying revision {}", self.revision);
            self.expired.push(name);
        }
        self.waiting.is_empty() && !self.applied.is_empty()
    }
}
