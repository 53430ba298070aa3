//! A deploy across the fleet: every node prepares the release on its own
//! Docker engine (pull, create, start, healthy, register its containers),
//! the coordinating node waits until every live node has prepared, then
//! flips once; if any node fails or its session ends while preparing,
//! nothing flips anywhere and every node removes what it created.
//!
//! Keys: the request at `<prefix>/deploys/<id>`, each node's answer at
//! `<id>/prepared/<node>`, the coordinator's outcome at `<id>/outcome`
//! (`ok` or `abort`), each node's "done" (it heard the outcome, and after an
//! abort removed what it created) at `<id>/done/<node>`; the coordinator
//! deletes them all once every node is done.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use canopy_proxy::ReleaseName;
use serde::{Deserialize, Serialize};

use super::answers::{Leaving, Wait};
use super::Fleet;
use crate::clock::now_ms;
use crate::error::ControlError;

/// How often keys are read while waiting on other nodes.
const POLL: Duration = Duration::from_millis(20);

/// A request to every node to prepare a release.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PrepareRequest {
    /// Unique per deploy: the coordinating node and its clock.
    pub id: String,
    /// The release (= image tag).
    pub release: ReleaseName,
    /// The coordinating node.
    pub by: String,
    /// The fleet revision the deploy started at (its `deploying` mark).
    pub revision: i64,
    /// Keep the containers of a failed deploy for inspection.
    pub keep_failed: bool,
}

/// One node's answer: prepared, or why not.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PrepareAnswer {
    /// The node.
    pub node: String,
    /// `None`: prepared; else why not (the failing step).
    pub error: Option<String>,
    /// The failing container's last log lines.
    #[serde(default)]
    pub logs: Vec<String>,
    /// How long it took, in milliseconds.
    pub ms: f64,
}

/// What the other nodes said.
#[derive(Debug, Clone, Default)]
pub struct Prepared {
    /// Each node's answer.
    pub answers: BTreeMap<String, PrepareAnswer>,
    /// Nodes with a live session that did not answer in time, or whose
    /// session ended before they answered.
    pub silent: Vec<String>,
}

impl Fleet {
    fn deploys_prefix(&self) -> String {
        format!("{}/deploys/", self.settings.prefix)
    }

    async fn put(&self, key: String, value: Vec<u8>) -> Result<(), ControlError> {
        self.put_key(key, value, None).await.map_err(|e| self.unavailable("pass on the deploy", e))
    }

    /// Asks every other node with a live session to prepare `release`;
    /// returns the deploy's id and the nodes asked.
    pub(crate) async fn ask_prepare(&self, release: &ReleaseName, keep_failed: bool) -> Result<(String, Vec<String>), ControlError> {
        let others: Vec<String> = self.nodes().await?.into_keys().filter(|n| n != self.node()).collect();
        let id = format!("{}-{}", self.node(), now_ms());
        let request =
            PrepareRequest { id: id.clone(), release: release.clone(), by: self.node().to_string(), revision: self.applied(), keep_failed };
        self.put(format!("{}{id}", self.deploys_prefix()), serde_json::to_vec(&request).expect("request serialises")).await?;
        Ok((id, others))
    }

    /// Waits until each of `others` has answered deploy `id`, left the
    /// fleet, or `limit` passed.
    pub(crate) async fn prepared(&self, id: &str, others: &[String], limit: Duration) -> Prepared {
        let wait = Wait { nodes: others, limit, poll: POLL, leaving: Leaving::EndsTheWait, assumed_live: others };
        let found = self.await_answers(&format!("{}{id}/prepared/", self.deploys_prefix()), wait).await;
        let answers = found
            .by_node
            .into_values()
            .filter_map(|value| serde_json::from_slice::<PrepareAnswer>(&value).ok())
            .map(|answer| (answer.node.clone(), answer))
            .collect();
        Prepared { answers, silent: found.waiting }
    }

    /// Says how deploy `id` ended (`ok`: flipped, else every node undoes).
    pub(crate) async fn end_prepare(&self, id: &str, ok: bool) {
        let key = format!("{}{id}/outcome", self.deploys_prefix());
        if let Err(e) = self.put(key, if ok { b"ok".to_vec() } else { b"abort".to_vec() }).await {
            log::error!("fleet: recording the end of deploy {id}: {e} (the other nodes undo it when they hear nothing)");
        }
    }

    /// Waits until each of `nodes` is done with deploy `id` (or left the
    /// fleet, or `limit` passed), then deletes the deploy's keys; returns
    /// the nodes that did not say they were done.
    pub(crate) async fn done(&self, id: &str, nodes: &[String], limit: Duration) -> Vec<String> {
        // best effort: while the node list cannot be read, nobody is waited for
        let wait = Wait { nodes, limit, poll: POLL, leaving: Leaving::NotWaitedFor, assumed_live: &[] };
        let waiting = self.await_answers(&format!("{}{id}/done/", self.deploys_prefix()), wait).await.waiting;
        self.forget_deploy(id).await;
        waiting
    }

    /// Deletes deploy `id`'s keys.
    pub(crate) async fn forget_deploy(&self, id: &str) {
        if let Err(e) = self.delete_prefix(format!("{}{id}", self.deploys_prefix())).await {
            log::debug!("fleet: deleting the keys of deploy {id}: {e}");
        }
    }

    /// This node's answer to deploy `id`.
    pub(crate) async fn answer_prepare(&self, id: &str, answer: &PrepareAnswer) {
        let key = format!("{}{id}/prepared/{}", self.deploys_prefix(), self.node());
        if let Err(e) = self.put(key, serde_json::to_vec(answer).expect("answer serialises")).await {
            log::error!("fleet: answering deploy {id}: {e}");
        }
    }

    /// This node is done with deploy `id` (after an abort: cleaned up).
    pub(crate) async fn say_done(&self, id: &str) {
        let key = format!("{}{id}/done/{}", self.deploys_prefix(), self.node());
        if let Err(e) = self.put(key, b"1".to_vec()).await {
            log::error!("fleet: saying deploy {id} is done here: {e}");
        }
    }

    /// How deploy `id` (coordinated by `by`) ended: `Some(true)` flipped,
    /// `Some(false)` aborted; `None` when `by` left the fleet or `limit`
    /// passed without an outcome (the caller undoes: nothing may stay
    /// half-deployed).
    pub(crate) async fn outcome(&self, id: &str, by: &str, limit: Duration) -> Option<bool> {
        let started = Instant::now();
        let key = format!("{}{id}/outcome", self.deploys_prefix());
        while started.elapsed() < limit {
            if let Some((found, _)) = self.list_at(key.clone()).await {
                if let Some(value) = found.get(&key) {
                    return Some(value.as_slice() == b"ok");
                }
                if self.nodes().await.is_ok_and(|n| !n.contains_key(by)) {
                    return None;
                }
            }
            tokio::time::sleep(POLL).await;
        }
        None
    }

    /// Follows the deploy requests of other nodes from now on (those made
    /// while no watch ran first), handing each to `prepare`. Returns when
    /// the watch breaks (the caller starts it again).
    pub(crate) async fn answer_deploys<F, Fut>(&self, prepare: F)
    where
        F: Fn(PrepareRequest) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let answered = format!("/prepared/{}", self.node());
        self.follow_requests(&self.deploys_prefix(), &answered, |value| self.hand_over(value, &prepare)).await;
    }

    /// Hands the deploy request in `value` (not this node's own) to `prepare`.
    fn hand_over<F, Fut>(&self, value: &[u8], prepare: &F)
    where
        F: Fn(PrepareRequest) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let Ok(request) = serde_json::from_slice::<PrepareRequest>(value) else { return };
        // once per deploy, though a restarted watch lists it again
        if request.by != self.node() && self.deploys_seen.lock().expect("deploys lock").insert(request.id.clone()) {
            self.spawn(prepare(request));
        }
    }
}
