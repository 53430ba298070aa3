//! A fleet under test: a real etcd cluster and canopy nodes (the real
//! binary) on loopback. Each node reaches every etcd member through its own
//! [`Relay`], so one node can be cut off from etcd while the members still
//! reach each other, and each node has its own upstream per release (each
//! host runs its own containers).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::etcd::EtcdCluster;
use crate::history::{History, Response};
use crate::relay::Relay;
use crate::upstream::{self, Upstream};
use crate::{client, Canopy};

/// The fleet's key prefix in etcd.
pub const PREFIX: &str = "/canopy/test";

/// A node's proxy.toml: one service, `web`, on every path, checked on
/// `/health`, plus `checks` (each ending in a comma); `[cluster]` with the
/// given endpoints, `session-ttl` and `apply-timeout`.
pub fn node_config(node: &str, endpoints: &[String], session_ttl: &str, apply_timeout: &str, checks: &str) -> String {
    let etcd: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    let head = crate::configs::listeners("upstream-timeout = \"2s\"\nshutdown-grace = \"2s\"\n");
    format!(
        r#"{head}
[releases]
address-template = "{{release}}-{{service}}.invalid"
validation-window = "10m"

[[service]]
name = "web"
port = 80
routes = ["/"]
checks = [
  {{ kind = "http", path = "/health", timeout = "1s", retries = 0 }},
  {checks}
]

[cluster]
etcd = [{}]
node = "{node}"
prefix = "{PREFIX}"
session-ttl = "{session_ttl}"
apply-timeout = "{apply_timeout}"
"#,
        etcd.join(", ")
    )
}

/// One canopy node of the fleet.
pub struct Node {
    /// Its name (`n1`, `n2`, ...).
    pub name: String,
    /// The process.
    pub canopy: Canopy,
    /// Its ways to the etcd members (cut one node off with [`Node::cut_off`]).
    pub relays: Vec<Relay>,
    /// Its own upstream per release.
    pub upstreams: BTreeMap<String, Upstream>,
}

impl Node {
    /// Blackholes every way from this node to etcd (a partition: nothing
    /// answers, connections hang).
    pub fn cut_off(&self) {
        self.relays.iter().for_each(Relay::blackhole);
    }

    /// Lets it reach etcd again.
    pub fn heal(&self) {
        self.relays.iter().for_each(Relay::heal);
    }

    /// `GET /readyz`: whether it says it is ready.
    pub async fn ready(&self) -> bool {
        let r = client().get(self.canopy.admin_url("/readyz")).timeout(Duration::from_secs(2)).send().await;
        r.is_ok_and(|r| r.status().as_u16() == 200)
    }

    /// `GET /status`.
    pub async fn status(&self) -> Value {
        crate::status(&self.canopy).await
    }
}

/// The etcd cluster and the canopy nodes.
pub struct Fleet {
    /// The etcd cluster.
    pub etcd: EtcdCluster,
    /// The nodes, `n1` first.
    pub nodes: Vec<Node>,
}

impl Fleet {
    /// `members` etcd members and `nodes` canopy nodes (session TTL 2 s,
    /// apply timeout 5 s), each node with its own upstream for each of
    /// `releases`, registered on it; `releases[0]` made live.
    pub async fn start(members: usize, nodes: usize, releases: &[&str], checks: &str) -> Fleet {
        Self::start_with(members, nodes, releases, checks, "2s", "5s").await
    }

    /// `members` etcd members and one canopy node per config in `configs`
    /// (templates with `{proxy_port}` and `{admin_port}`, without
    /// `[cluster]`: the kit appends it, naming the node `n1`, `n2`, ...,
    /// with session TTL 2 s and apply timeout 5 s). No release is registered.
    pub async fn start_nodes(members: usize, configs: &[String]) -> Fleet {
        let etcd = EtcdCluster::start(members);
        let mut fleet = Fleet { etcd, nodes: Vec::new() };
        for (i, config) in configs.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let relays = fleet.etcd.relays();
            let etcd: Vec<String> = relays.iter().map(|r| format!("\"{}\"", r.url())).collect();
            let cluster = format!(
                "\n[cluster]\netcd = [{}]\nnode = \"{name}\"\nprefix = \"{PREFIX}\"\nsession-ttl = \"2s\"\napply-timeout = \"5s\"\n",
                etcd.join(", ")
            );
            let canopy = Canopy::start(&format!("{config}{cluster}"));
            fleet.nodes.push(Node { name, canopy, relays, upstreams: BTreeMap::new() });
        }
        for node in &fleet.nodes {
            crate::eventually("every node ready", Duration::from_secs(10), || node.ready()).await;
        }
        fleet
    }

    /// [`Fleet::start`] with the session TTL and apply timeout given.
    pub async fn start_with(members: usize, nodes: usize, releases: &[&str], checks: &str, ttl: &str, apply: &str) -> Fleet {
        let etcd = EtcdCluster::start(members);
        let mut fleet = Fleet { etcd, nodes: Vec::new() };
        for i in 1..=nodes {
            let name = format!("n{i}");
            let relays = fleet.etcd.relays();
            let endpoints: Vec<String> = relays.iter().map(Relay::url).collect();
            let canopy = Canopy::start(&node_config(&name, &endpoints, ttl, apply, checks));
            let mut upstreams = BTreeMap::new();
            for r in releases {
                upstreams.insert(r.to_string(), upstream::spawn(r, "web").await);
            }
            fleet.nodes.push(Node { name, canopy, relays, upstreams });
        }
        for node in &fleet.nodes {
            crate::eventually("every node ready", Duration::from_secs(10), || node.ready()).await;
        }
        for node in &fleet.nodes {
            for (release, up) in &node.upstreams {
                fleet.register(node, release, up.addr).await;
            }
        }
        if let Some(first) = releases.first() {
            let (status, body) = fleet.switch(0, first).await;
            assert_eq!(status, 200, "first switch: {body}");
        }
        fleet
    }

    /// Registers `release` on `node` with its own backend.
    pub async fn register(&self, node: &Node, release: &str, addr: std::net::SocketAddr) {
        let url = node.canopy.admin_url(&format!("/releases/{release}"));
        let r = client().put(url).json(&json!({"backends": {"web": [addr.to_string()]}})).send().await.expect("PUT /releases");
        let status = r.status().as_u16();
        assert!(status == 200 || status == 201, "register {release} on {}: {status} {}", node.name, r.text().await.unwrap_or_default());
    }

    /// `POST /switch` on node `i`; (status, body).
    pub async fn switch(&self, i: usize, release: &str) -> (u16, Value) {
        let url = self.nodes[i].canopy.admin_url("/switch");
        let r = client().post(url).json(&json!({"release": release})).timeout(Duration::from_secs(30)).send().await;
        match r {
            Ok(r) => (r.status().as_u16(), r.json().await.unwrap_or(Value::Null)),
            Err(e) => (0, json!({"error": e.to_string()})),
        }
    }

    /// Kills node `i` with SIGKILL (its ports and directory stay).
    pub fn kill9(&mut self, i: usize) {
        self.nodes[i].canopy.kill9();
    }

    /// Starts node `i` again in its directory (its state file, its config
    /// with fresh ports), after [`Fleet::kill9`].
    pub fn restart(&mut self, i: usize) {
        let old = &mut self.nodes[i].canopy;
        let tmp = old.tmp.take();
        let (dir, template) = (old.dir.clone(), old.template.clone());
        let mut started = Canopy::start_in(&dir, &template);
        started.tmp = tmp;
        self.nodes[i].canopy = started;
    }

    /// Every node's log lines about the fleet (for a failed assertion's message).
    pub fn fleet_logs(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            out += &format!("--- {} ---\n", node.name);
            for line in node.canopy.log().lines().filter(|l| l.contains("fleet") || l.contains("etcd")) {
                out += line;
                out.push('\n');
            }
        }
        out
    }

    /// The release every node serves now (`GET /` through each proxy).
    pub async fn serving(&self) -> Vec<Option<String>> {
        let mut out = Vec::new();
        for node in &self.nodes {
            let r = client().get(node.canopy.url("/")).timeout(Duration::from_secs(2)).send().await;
            out.push(r.ok().and_then(|r| r.headers().get("x-canopy-release").and_then(|v| v.to_str().ok()).map(String::from)));
        }
        out
    }
}

/// Clients on every node recording each response in a [`History`]: per
/// node, `keep_alive` clients reusing their connection and one opening a
/// new connection per request; bounded by `limit`.
pub struct Traffic {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    /// Starts the clients.
    pub fn start(fleet: &Fleet, history: &Arc<History>, keep_alive: usize, limit: Duration) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let deadline = Instant::now() + limit;
        let mut tasks = Vec::new();
        for node in &fleet.nodes {
            for k in 0..=keep_alive {
                let fresh = k == keep_alive;
                let builder = reqwest::Client::builder().timeout(Duration::from_secs(5));
                let c = if fresh { builder.pool_max_idle_per_host(0) } else { builder }.build().expect("client");
                let (url, name, history, stop) = (node.canopy.url("/"), node.name.clone(), history.clone(), stop.clone());
                tasks.push(tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        let sent = Instant::now();
                        let r = c.get(&url).send().await;
                        let (status, release) = match r {
                            Ok(r) => {
                                let release = r.headers().get("x-canopy-release").and_then(|v| v.to_str().ok()).map(String::from);
                                let status = r.status().as_u16();
                                let _ = r.bytes().await;
                                (status, release)
                            }
                            Err(_) => (0, None),
                        };
                        history.record_response(Response { node: name.clone(), sent, received: Instant::now(), release, status });
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }));
            }
        }
        Traffic { stop, tasks }
    }

    /// Stops the clients and waits for them.
    pub async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
