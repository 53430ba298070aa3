//! Requests from one node to the others, and their answers, through etcd
//! keys: a request at `<prefix><id>`, each node's answer at a key ending in
//! its name. The fleet's checks and deploys both use these: following the
//! requests of other nodes, and waiting for the answers to one's own.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use etcd_client::EventType;

use super::Fleet;

/// What a wait for answers ([`Fleet::await_answers`]) does about a node
/// that leaves the fleet (its session ends) before it answered.
#[derive(Debug, Clone, Copy)]
pub(super) enum Leaving {
    /// It is no longer waited for.
    NotWaitedFor,
    /// The wait ends: it will not answer, and the caller fails.
    EndsTheWait,
}

/// A wait for answers from other nodes.
pub(super) struct Wait<'a> {
    /// The nodes asked.
    pub nodes: &'a [String],
    /// How long to wait at most.
    pub limit: Duration,
    /// How often the answers are read.
    pub poll: Duration,
    /// See [`Leaving`].
    pub leaving: Leaving,
    /// The nodes taken to be in the fleet while its node list cannot be read.
    pub assumed_live: &'a [String],
}

/// What a wait for answers found.
pub(super) struct Answers {
    /// Each answer, by the node that gave it.
    pub by_node: BTreeMap<String, Vec<u8>>,
    /// The nodes still waited for when the wait ended (none when every one answered).
    pub waiting: Vec<String>,
}

impl Fleet {
    /// The keys under `prefix` with their values, and the etcd revision read at.
    pub(super) async fn list_at(&self, prefix: String) -> Option<(BTreeMap<String, Vec<u8>>, i64)> {
        let resp = self.get_prefix(prefix).await.ok()?;
        let at = resp.header().map_or(0, |h| h.revision());
        Some((resp.kvs().iter().map(|kv| (String::from_utf8_lossy(kv.key()).into_owned(), kv.value().to_vec())).collect(), at))
    }

    /// Reads the answers at `<answers><node>` until each of `wait.nodes`
    /// has answered, `wait.limit` has passed, or (see [`Leaving`]) a node
    /// left the fleet.
    pub(super) async fn await_answers(&self, answers: &str, wait: Wait<'_>) -> Answers {
        let started = Instant::now();
        let mut by_node = BTreeMap::new();
        loop {
            for (key, value) in self.list_at(answers.to_string()).await.map(|(found, _)| found).unwrap_or_default() {
                if let Some(node) = key.strip_prefix(answers) {
                    by_node.insert(node.to_string(), value);
                }
            }
            let live = self.nodes().await.map(|n| n.into_keys().collect::<Vec<_>>()).unwrap_or_else(|_| wait.assumed_live.to_vec());
            let unanswered = wait.nodes.iter().filter(|n| !by_node.contains_key(*n));
            let (waiting, one_left): (Vec<String>, bool) = match wait.leaving {
                Leaving::NotWaitedFor => (unanswered.filter(|n| live.contains(n)).cloned().collect(), false),
                Leaving::EndsTheWait => {
                    let waiting: Vec<String> = unanswered.cloned().collect();
                    let one_left = waiting.iter().any(|n| !live.contains(n));
                    (waiting, one_left)
                }
            };
            if waiting.is_empty() || one_left || started.elapsed() >= wait.limit {
                return Answers { by_node, waiting };
            }
            tokio::time::sleep(wait.poll).await;
        }
    }

    /// Hands the value of every request under `prefix` (a key
    /// `<prefix><id>`; the answers below it are passed over) to `handle`:
    /// first those there now that this node has not answered (no key
    /// `<prefix><id><answered>`), then each new one as it is put. Returns
    /// when the watch breaks (the caller starts it again).
    pub(super) async fn follow_requests(&self, prefix: &str, answered: &str, mut handle: impl FnMut(&[u8])) {
        let is_request = |key: &str| key.strip_prefix(prefix).is_some_and(|id| !id.contains('/'));
        let Some((listed, at)) = self.list_at(prefix.to_string()).await else { return };
        for (key, value) in &listed {
            if is_request(key) && !listed.contains_key(&format!("{key}{answered}")) {
                handle(value);
            }
        }
        let Ok(mut stream) = self.watch_prefix(prefix.to_string(), at + 1).await else { return };
        while let Ok(Some(resp)) = stream.message().await {
            for event in resp.events() {
                if let (EventType::Put, Some(kv)) = (event.event_type(), event.kv()) {
                    if is_request(&String::from_utf8_lossy(kv.key())) {
                        handle(kv.value());
                    }
                }
            }
        }
    }
}
