//! Fleet-wide validation: before a flip commits, every other node with a
//! live session runs the target's checks against its own backends (each
//! host runs its own containers) and answers through etcd; the flip
//! commits only if every one passed.
//!
//! Keys: the request at `<prefix>/checks/<id>`, each node's answer at
//! `<prefix>/checks/<id>/<node>`; the coordinator deletes them all once it
//! has its answers.

use std::collections::BTreeMap;
use std::time::Duration;

use canopy_proxy::ReleaseName;
use etcd_client::DeleteOptions;
use serde::{Deserialize, Serialize};

use super::answers::{Leaving, Wait};
use super::Fleet;
use crate::clock::now_ms;
use crate::error::ControlError;
use crate::report::Report;

/// How often the answers are read while waiting for them.
const POLL: Duration = Duration::from_millis(5);

/// A request to every node to check a release.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckRequest {
    /// Unique per request: the asking node and its clock.
    pub id: String,
    /// The release to check.
    pub release: ReleaseName,
    /// Quick checks (a rollback's), else every check with its retries.
    pub quick: bool,
    /// The node that asks (it checks on its own).
    pub by: String,
    /// The fleet revision the asking node had applied: a node checks once
    /// it has applied it too (the release's registration with it).
    pub revision: i64,
}

/// One node's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckAnswer {
    /// The node that checked.
    pub node: String,
    /// Its report.
    pub report: Report,
}

/// What the other nodes said.
#[derive(Debug, Clone, Default)]
pub struct FleetChecks {
    /// Each node's report, by node.
    pub answers: BTreeMap<String, Report>,
    /// Nodes with a live session that did not answer in time.
    pub silent: Vec<String>,
}

impl Fleet {
    fn checks_prefix(&self) -> String {
        format!("{}/checks/", self.settings.prefix)
    }

    /// Asks every other node with a live session to check `release`;
    /// waits for their answers up to `apply-timeout`. Nodes whose session
    /// ends meanwhile are not waited for.
    pub(crate) async fn ask_checks(&self, release: &ReleaseName, quick: bool) -> Result<FleetChecks, ControlError> {
        let others: Vec<String> = self.nodes().await?.into_keys().filter(|n| n != self.node()).collect();
        if others.is_empty() {
            return Ok(FleetChecks::default());
        }
        let id = format!("{}-{}", self.node(), now_ms());
        let request =
            CheckRequest { id: id.clone(), release: release.clone(), quick, by: self.node().to_string(), revision: self.applied() };
        let key = format!("{}{id}", self.checks_prefix());
        let value = serde_json::to_vec(&request).expect("request serialises");
        // bound to this node's session: a request left behind by a node that
        // died mid-flip goes with its lease
        let lease = self.session.lease.load(std::sync::atomic::Ordering::SeqCst);
        self.put_key(key.clone(), value, (lease != 0).then_some(lease)).await.map_err(|e| self.unavailable("pass on the checks", e))?;
        let wait =
            Wait { nodes: &others, limit: self.settings.apply_timeout, poll: POLL, leaving: Leaving::NotWaitedFor, assumed_live: &others };
        let found = self.await_answers(&format!("{key}/"), wait).await;
        let answers = found
            .by_node
            .into_values()
            .filter_map(|value| serde_json::from_slice::<CheckAnswer>(&value).ok())
            .map(|answer| (answer.node, answer.report))
            .collect();
        let result = FleetChecks { answers, silent: found.waiting };
        // off the flip's path: nothing waits for the clean-up
        let kv = self.client.kv_client();
        self.spawn(async move {
            let deleted = super::with_retries(move || {
                let (mut kv, key) = (kv.clone(), key.clone());
                async move { kv.delete(key, Some(DeleteOptions::new().with_prefix())).await }
            });
            if let Err(e) = deleted.await {
                log::debug!("fleet: deleting a finished check request: {e}");
            }
        });
        Ok(result)
    }

    /// Follows the check requests of other nodes from now on, handing each
    /// to `check`, which returns this node's report; answers it. Returns
    /// when the watch breaks (the caller starts it again).
    pub(crate) async fn answer_checks<F, Fut>(&self, check: F)
    where
        F: Fn(CheckRequest) -> Fut,
        Fut: std::future::Future<Output = Option<Report>> + Send + 'static,
    {
        let answered = format!("/{}", self.node());
        self.follow_requests(&self.checks_prefix(), &answered, |value| self.answer(value, &check)).await;
    }

    /// Answers the check request in `value` (anything else, and this node's
    /// own requests, are passed over): runs `check` and puts the report.
    fn answer<F, Fut>(&self, value: &[u8], check: &F)
    where
        F: Fn(CheckRequest) -> Fut,
        Fut: std::future::Future<Output = Option<Report>> + Send + 'static,
    {
        let Ok(request) = serde_json::from_slice::<CheckRequest>(value) else { return };
        if request.by == self.node() {
            return;
        }
        let key = format!("{}{}/{}", self.checks_prefix(), request.id, self.node());
        let node = self.node().to_string();
        let kv = self.client.kv_client();
        let report = check(request);
        self.spawn(async move {
            let Some(report) = report.await else { return };
            let answer = serde_json::to_vec(&CheckAnswer { node, report }).expect("answer serialises");
            let put = super::with_retries(move || {
                let (mut kv, key, answer) = (kv.clone(), key.clone(), answer.clone());
                async move { kv.put(key, answer, None).await }
            });
            if let Err(e) = put.await {
                log::warn!("fleet: answering a check request: {e}");
            }
        });
    }
}
