//! A fleet: canopy nodes that share one release state through etcd.
//!
//! etcd holds the whole control [`State`] under `<prefix>/state`; its
//! `mod_revision` is the fleet's revision. A change is one etcd
//! transaction that compares the revision this node last applied (two flips
//! at once on two nodes: exactly one wins, the other is refused with 409).
//! Every node watches the key and applies each revision to its own release
//! table, in order (each revision is a whole state, so applying the newest
//! is applying all before it).
//!
//! Each node keeps a session: the key `<prefix>/nodes/<node>`, bound to a
//! lease of `session-ttl`, holding the revision it applied
//! ([`NodeRecord`]). A flip is acknowledged once every node with a live
//! session has applied its revision ([`Fleet::acknowledge`]). A node cut
//! off from etcd keeps serving the last table it applied, refuses changes,
//! and reports itself not ready ([`Fleet::readiness`]) before its session
//! can expire, so a load balancer drains it before the fleet moves on
//! without it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};

use crate::clock::{now_ms, UnixMillis};
use crate::error::ControlError;
use crate::state::State;

mod ack;
mod answers;
mod checks;
mod counters;
mod deploys;
mod kv;
mod metrics;
mod session;

pub use ack::{FleetAck, NodeAck};
pub(crate) use checks::CheckRequest;
pub use counters::{Counters, FleetCounters};
pub(crate) use deploys::{PrepareAnswer, PrepareRequest};
pub use metrics::FleetCollector;
use metrics::FleetMetrics;
pub(crate) use session::Session;

/// How long one etcd request may take before the node treats etcd as unreachable.
pub const ETCD_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// `[cluster]`: where etcd is and who this node is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// etcd client URLs (`http://host:2379`).
    pub endpoints: Vec<String>,
    /// This node's name, unique in the fleet.
    pub node: String,
    /// Key prefix of this fleet (several fleets may share one etcd), no trailing `/`.
    pub prefix: String,
    /// The node's session lease: it is taken out of the fleet this long
    /// after it last reached etcd (whole seconds, etcd's lease unit).
    pub session_ttl: Duration,
    /// How long a flip waits for every live node to apply it before it
    /// names the late ones.
    pub apply_timeout: Duration,
}

/// What a node publishes about itself in its session key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The node's name.
    pub node: String,
    /// The fleet revision whose state it serves.
    pub applied: i64,
    /// When it applied it.
    pub applied_at: UnixMillis,
    /// canopy's version on the node.
    pub version: String,
    /// Its proxy and admin listeners.
    pub listeners: Vec<String>,
}

/// Every node with a live session, as etcd has them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetView {
    /// This node.
    pub node: String,
    /// The newest fleet revision this node has seen.
    pub revision: i64,
    /// The revision this node serves.
    pub applied: i64,
    /// Whether this node is ready for traffic (session live, caught up).
    pub ready: bool,
    /// Why not, when not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_ready: Option<String>,
    /// Each node with a live session, with its lag behind `revision`.
    pub nodes: Vec<NodeView>,
    /// Why the node list could not be read (etcd unreachable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One node of [`FleetView`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeView {
    /// What the node published.
    #[serde(flatten)]
    pub record: NodeRecord,
    /// Revisions it is behind the newest.
    pub lag: i64,
}

/// The fleet as this node sees it: the etcd client, the revision applied
/// here, the session.
pub struct Fleet {
    settings: ClusterSettings,
    client: Client,
    /// The fleet's own runtime (one thread): etcd's connections and the
    /// session live there, apart from the proxy's and the admin API's
    /// runtimes, for the whole process.
    rt: tokio::runtime::Handle,
    /// The fleet revision of the state this node serves.
    applied: AtomicI64,
    /// The newest fleet revision seen (by a read, a watch or a commit):
    /// the state key's `mod_revision`.
    latest: AtomicI64,
    /// When this node applied `applied` (unix ms).
    applied_at: AtomicU64,
    session: Session,
    /// This node's listeners and version, for its session key.
    about: (String, Vec<String>),
    metrics: FleetMetrics,
    /// Nodes a flip named late, with the revision they had not applied: an
    /// alert until they have (or their session ends).
    late: std::sync::Mutex<BTreeMap<String, i64>>,
    /// Set while this process has handed its state to a successor (`serve
    /// --upgrade`): the successor publishes the node's record, not this one.
    quiet: std::sync::atomic::AtomicBool,
    /// Deploy requests of other nodes this node has taken up.
    deploys_seen: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

impl Fleet {
    /// A fleet handle for `settings`, with its own runtime thread (no
    /// request is sent yet: etcd may be down when canopy starts).
    pub fn new(settings: ClusterSettings, version: String, listeners: Vec<String>) -> Result<Arc<Self>, ControlError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("canopy-etcd")
            .enable_all()
            .build()
            .map_err(|e| ControlError::Invalid(format!("[cluster]: cannot start the etcd client's thread: {e}")))?;
        // lives as long as the process (a runtime must not be dropped in async code)
        let rt = Box::leak(Box::new(runtime)).handle().clone();
        let ttl = settings.session_ttl;
        let options = ConnectOptions::new()
            .with_connect_timeout(ETCD_REQUEST_TIMEOUT)
            .with_timeout(ETCD_REQUEST_TIMEOUT)
            .with_keep_alive(ttl / 4, ttl / 4)
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        let client = rt
            .block_on(Client::connect(&settings.endpoints, Some(options)))
            .map_err(|e| ControlError::Invalid(format!("[cluster] etcd {:?}: {e}", settings.endpoints)))?;
        Ok(Arc::new(Fleet {
            session: Session::new(ttl),
            settings,
            client,
            rt,
            applied: AtomicI64::new(0),
            latest: AtomicI64::new(0),
            applied_at: AtomicU64::new(0),
            about: (version, listeners),
            metrics: FleetMetrics::new(),
            late: std::sync::Mutex::new(BTreeMap::new()),
            deploys_seen: std::sync::Mutex::new(Default::default()),
            quiet: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    /// The settings.
    pub fn settings(&self) -> &ClusterSettings {
        &self.settings
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.settings.node
    }

    fn state_key(&self) -> String {
        format!("{}/state", self.settings.prefix)
    }

    fn nodes_prefix(&self) -> String {
        format!("{}/nodes/", self.settings.prefix)
    }

    /// The revision this node serves.
    pub fn applied(&self) -> i64 {
        self.applied.load(Ordering::SeqCst)
    }

    /// The newest revision seen.
    pub fn latest(&self) -> i64 {
        self.latest.load(Ordering::SeqCst)
    }

    /// Records that this node now serves `revision` (and wakes the session,
    /// which publishes it).
    pub(crate) fn set_applied(&self, revision: i64) {
        self.applied.store(revision, Ordering::SeqCst);
        self.applied_at.store(now_ms(), Ordering::SeqCst);
        self.latest.fetch_max(revision, Ordering::SeqCst);
        self.session.changed.notify_one();
    }

    /// Records the newest revision seen elsewhere.
    pub(crate) fn saw(&self, revision: i64) {
        self.latest.fetch_max(revision, Ordering::SeqCst);
    }

    /// This node's session record.
    fn record(&self) -> NodeRecord {
        NodeRecord {
            node: self.settings.node.clone(),
            applied: self.applied(),
            applied_at: self.applied_at.load(Ordering::SeqCst),
            version: self.about.0.clone(),
            listeners: self.about.1.clone(),
        }
    }

    /// Counts a flip the fleet refused, by reason (`conflict`, `etcd`).
    pub(crate) fn count_refusal(&self, reason: &str) {
        self.metrics.refused.with_label_values(&[reason]).inc();
    }

    /// An etcd error as the refusal the operator sees: 503 naming etcd.
    fn unavailable(&self, what: &str, e: impl std::fmt::Display) -> ControlError {
        if what.starts_with("commit") {
            self.count_refusal("etcd");
        }
        ControlError::Unavailable(format!(
            "etcd ({}) did not {what}: {e}; this node keeps serving revision {} and refuses changes until etcd answers",
            self.settings.endpoints.join(", "),
            self.applied()
        ))
    }

    /// Reads the fleet's state and its revision; `None` before the first node seeded it.
    pub(crate) async fn read(&self) -> Result<Option<(State, i64)>, ControlError> {
        let (kv, key) = (self.client.kv_client(), self.state_key());
        let resp = self
            .run(move || {
                let (mut kv, key) = (kv.clone(), key.clone());
                async move { kv.get(key, None).await }
            })
            .await
            .map_err(|e| self.unavailable("answer a read", e))?;
        match resp.kvs().first() {
            None => Ok(None),
            Some(kv) => {
                self.saw(kv.mod_revision());
                Ok(Some((self.decode(kv.value(), kv.mod_revision())?, kv.mod_revision())))
            }
        }
    }

    /// Writes `seed` as the fleet's first state unless another node did
    /// first; returns the state that holds and its revision.
    pub(crate) async fn seed(&self, seed: &State) -> Result<(State, i64), ControlError> {
        let key = self.state_key();
        let txn = Txn::new().when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)]).and_then([TxnOp::put(
            key.clone(),
            encode(seed),
            None,
        )]);
        let resp = self.txn(txn).await.map_err(|e| self.unavailable("take the first state", e))?;
        if resp.succeeded() {
            let revision = resp.header().map_or(0, |h| h.revision());
            log::info!("fleet: seeded the fleet's state at revision {revision}");
            return Ok((seed.clone(), revision));
        }
        self.read().await?.ok_or_else(|| self.unavailable("keep the state it holds", "the state key vanished"))
    }

    /// Commits `next` if the fleet's state is still at revision `read`
    /// (the one this node applied): one transaction. Returns the new
    /// revision; a conflict (another node changed the state first) is 409.
    pub(crate) async fn commit(&self, next: &State, read: i64) -> Result<i64, ControlError> {
        let key = self.state_key();
        let txn = Txn::new()
            .when([Compare::mod_revision(key.clone(), CompareOp::Equal, read)])
            .and_then([TxnOp::put(key.clone(), encode(next), None)])
            .or_else([TxnOp::get(key, Some(GetOptions::new().with_keys_only()))]);
        let resp = self
            .txn(txn)
            .await
            .map_err(|e| self.unavailable("commit the change (it may or may not have been committed: check `canopy status`)", e))?;
        let revision = resp.header().map_or(0, |h| h.revision());
        if !resp.succeeded() {
            return Err(ControlError::Conflict(format!(
                "another node changed the fleet's state first (this node had applied revision {read}, etcd is at {revision}); nothing changed, retry"
            )));
        }
        self.saw(revision);
        Ok(revision)
    }

    fn decode(&self, bytes: &[u8], revision: i64) -> Result<State, ControlError> {
        serde_json::from_slice(bytes).map_err(|e| {
            ControlError::Unavailable(format!("the fleet's state at {} revision {revision} is unreadable: {e}", self.state_key()))
        })
    }

    /// Watches the state key from `from` on: each item is a state and its
    /// revision, in order. Ends (`None`) or errs when the watch breaks; the
    /// caller reads again and watches anew.
    pub(crate) async fn watch(&self, from: i64) -> Result<StateWatch<'_>, ControlError> {
        let options = etcd_client::WatchOptions::new().with_start_revision(from);
        let (watch, key) = (self.client.watch_client(), self.state_key());
        let stream = self
            .run(move || {
                let (mut watch, key, options) = (watch.clone(), key.clone(), options.clone());
                async move { watch.watch(key, Some(options)).await }
            })
            .await
            .map_err(|e| self.unavailable("start a watch", e))?;
        Ok(StateWatch { fleet: self, stream, pending: Vec::new() })
    }

    /// Every node's session record (live sessions only), by name.
    pub(crate) async fn nodes(&self) -> Result<BTreeMap<String, NodeRecord>, ControlError> {
        Ok(self.nodes_at().await?.0)
    }

    /// [`Fleet::nodes`], and the etcd revision they were read at.
    pub(crate) async fn nodes_at(&self) -> Result<(BTreeMap<String, NodeRecord>, i64), ControlError> {
        let resp = self.get_prefix(self.nodes_prefix()).await.map_err(|e| self.unavailable("list the nodes", e))?;
        let at = resp.header().map_or(0, |h| h.revision());
        let nodes =
            resp.kvs().iter().filter_map(|kv| serde_json::from_slice::<NodeRecord>(kv.value()).ok()).map(|r| (r.node.clone(), r)).collect();
        Ok((nodes, at))
    }

    /// Watches the node records from etcd revision `from` on.
    pub(crate) async fn watch_nodes(&self, from: i64) -> Result<etcd_client::WatchStream, ControlError> {
        self.watch_prefix(self.nodes_prefix(), from).await.map_err(|e| self.unavailable("watch the nodes", e))
    }

    /// The fleet for `canopy status`.
    pub async fn view(&self) -> FleetView {
        let (ready, not_ready) = match self.readiness() {
            Ok(()) => (true, None),
            Err(why) => (false, Some(why)),
        };
        let (nodes, error) = match self.nodes().await {
            Ok(nodes) => (nodes, None),
            Err(e) => (BTreeMap::new(), Some(e.to_string())),
        };
        let revision = self.latest().max(nodes.values().map(|r| r.applied).max().unwrap_or(0));
        FleetView {
            node: self.settings.node.clone(),
            revision,
            applied: self.applied(),
            ready,
            not_ready,
            nodes: nodes.into_values().map(|record| NodeView { lag: revision - record.applied, record }).collect(),
            error,
        }
    }

    /// The fleet's alerts for `canopy status` and the status page: this node
    /// not ready; a node that did not apply a flip within `apply-timeout`
    /// and still has not (cleared once it has, or once its session ends).
    pub fn alerts(&self, view: &FleetView) -> Vec<String> {
        let mut alerts = Vec::new();
        if let Some(why) = &view.not_ready {
            alerts.push(format!("this node ({}) is not ready for traffic: {why}", view.node));
        }
        let mut late = self.late.lock().expect("late lock");
        if view.error.is_none() {
            late.retain(|node, revision| view.nodes.iter().any(|n| &n.record.node == node && n.record.applied < *revision));
        }
        for (node, revision) in late.iter() {
            alerts.push(format!(
                "node {node} did not apply revision {revision} within apply-timeout {:?} and still has not: it may serve an older release",
                self.settings.apply_timeout
            ));
        }
        alerts
    }

    /// Remembers nodes a flip found late (see [`Fleet::alerts`]).
    pub(crate) fn note_late(&self, nodes: &[String], revision: i64) {
        let mut late = self.late.lock().expect("late lock");
        for node in nodes.iter().filter(|n| !n.starts_with('(')) {
            late.insert(node.clone(), revision);
        }
    }

    /// Whether this node should take traffic: its session is live (it
    /// reached etcd within `session-ttl`, so the fleet waits for it) and it
    /// has caught up since. `Err` says why not.
    pub fn readiness(&self) -> Result<(), String> {
        self.session.readiness(&self.settings.endpoints)
    }

    /// The current session's number (0 before the first).
    pub(crate) fn session_epoch(&self) -> u64 {
        self.session.epoch()
    }

    /// Says the node caught up on the fleet's state within session `epoch`.
    pub(crate) fn caught_up(&self, epoch: u64) {
        self.session.caught_up(epoch);
    }

    /// Keeps this node's session (its lease and its key) for as long as
    /// the process runs; re-establishes it after etcd comes back, then
    /// wakes `reconnected` so the state is read again.
    pub(crate) async fn run_session(self: Arc<Self>, reconnected: Arc<tokio::sync::Notify>) {
        session::run(&self, &reconnected).await
    }

    /// Stops (or, after an abandoned hand-over, resumes) publishing this
    /// node's record: after `serve --upgrade` hands over, the successor's
    /// session owns the node's key (it puts it at every keep-alive), so this
    /// process's lease, ending with it, never takes the key with it.
    pub fn set_quiet(&self, quiet: bool) {
        self.quiet.store(quiet, Ordering::SeqCst);
    }

    /// Puts this node's record, bound to `lease` (not while quiet).
    async fn put_record(&self, lease: i64) -> Result<(), etcd_client::Error> {
        if self.quiet.load(Ordering::SeqCst) {
            return Ok(());
        }
        let key = format!("{}{}", self.nodes_prefix(), self.settings.node);
        let value = serde_json::to_vec(&self.record()).expect("node record serialises");
        self.put_key(key, value, Some(lease)).await
    }

    /// Runs one etcd request (made by `request`) on the fleet's runtime,
    /// bounded by [`ETCD_REQUEST_TIMEOUT`] (the client's own timeout does
    /// not cover every way a partition stalls a request). A request that
    /// could not connect was never sent: it is made again (the channel
    /// balances it to another member), a few times within the bound.
    async fn run<T, F, Fut>(&self, request: F) -> Result<T, etcd_client::Error>
    where
        T: Send + 'static,
        F: Fn() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    {
        let task = self.rt.spawn(with_retries(request));
        task.await.unwrap_or_else(|e| Err(etcd_client::Error::IoError(std::io::Error::other(e.to_string()))))
    }

    /// Spawns `task` on the fleet's runtime.
    pub(crate) fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.rt.spawn(task);
    }
}

/// A watch of the state key: yields `(state, revision)` in revision order.
pub(crate) struct StateWatch<'a> {
    fleet: &'a Fleet,
    stream: etcd_client::WatchStream,
    pending: Vec<(State, i64)>,
}

impl StateWatch<'_> {
    /// The next state and its revision; `Ok(None)` when the watch ended.
    pub async fn next(&mut self) -> Result<Option<(State, i64)>, ControlError> {
        loop {
            if !self.pending.is_empty() {
                return Ok(Some(self.pending.remove(0)));
            }
            let Some(resp) = self.stream.message().await.map_err(|e| self.fleet.unavailable("keep the watch", e))? else {
                return Ok(None);
            };
            if resp.canceled() || resp.compact_revision() > 0 {
                return Ok(None); // compacted past our revision: read the whole state again
            }
            for event in resp.events() {
                if let (etcd_client::EventType::Put, Some(kv)) = (event.event_type(), event.kv()) {
                    self.fleet.saw(kv.mod_revision());
                    self.pending.push((self.fleet.decode(kv.value(), kv.mod_revision())?, kv.mod_revision()));
                }
            }
        }
    }
}

/// The state as etcd holds it.
fn encode(state: &State) -> Vec<u8> {
    serde_json::to_vec(state).expect("state serialises")
}

/// One etcd request (made by `request`), bounded by
/// [`ETCD_REQUEST_TIMEOUT`]; made again while it could not connect (it was
/// never sent), a few times within the bound.
pub(crate) async fn with_retries<T, F, Fut>(request: F) -> Result<T, etcd_client::Error>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let limit = ETCD_REQUEST_TIMEOUT + Duration::from_millis(500);
    let attempts = async move {
        let mut attempt = 0;
        loop {
            match request().await {
                Err(e) if attempt < CONNECT_RETRIES && never_sent(&e) => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                result => return result,
            }
        }
    };
    tokio::time::timeout(limit, attempts).await.unwrap_or_else(|_| Err(timed_out()))
}

/// How often a request that could not connect is made again.
const CONNECT_RETRIES: u32 = 5;

/// Whether `e` says the request never left this node (no connection).
fn never_sent(e: &etcd_client::Error) -> bool {
    let text = e.to_string();
    text.contains("tcp connect error") || text.contains("error trying to connect") || text.contains("Connection refused")
}

/// The error of a request etcd did not answer in time.
fn timed_out() -> etcd_client::Error {
    etcd_client::Error::IoError(std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no answer within {ETCD_REQUEST_TIMEOUT:?}")))
}
