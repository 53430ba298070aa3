//! Fleet benchmark: how long a flip takes to be acknowledged by a fleet of
//! 1, 3 and 5 canopy nodes through a 3-member etcd cluster, against a
//! single canopy without `[cluster]`, all in one run on one machine, and
//! how many etcd requests a flip costs.
//!
//!     cargo bench --bench fleet
//!
//! `cargo bench` builds `target/release/canopy` itself. etcd is Debian's
//! (`/usr/bin/etcd`); the run is skipped with a note without it. Each node
//! has its own upstream per release (the test kit's), checked on `/health`
//! before every switch (on every node, in a fleet). For each setting:
//! `FLEET_FLIPS` switches (default 100) alternating between two releases,
//! sent to the nodes in turn, after 6 warm-up flips; printed: the switch
//! call's latency p50/p99 as the operator sees it, the acknowledgement's own
//! figure (commit to every node applied) p50/p99, the ratio of the p50 call
//! latency to the single canopy's, and the etcd requests per flip (gRPC
//! requests every etcd member handled, from their `/metrics`, over the
//! flips, divided by the flips: the node sessions' keep-alives in that time
//! included). For reference it times etcd's own writes (the floor: a flip
//! is a few writes in a row). `TMPDIR=/dev/shm` puts etcd's data in memory,
//! which shows canopy's share apart from the disk's fsync.
//!
//! Everything binds loopback only; every child process stops on drop.

use std::time::{Duration, Instant};

use canopy_testkit::bench::Machine;
use canopy_testkit::fleet::{node_config, Fleet};
use canopy_testkit::{client, upstream, Canopy};
use serde_json::{json, Value};

/// Warm-up flips before measuring (even: juniper is live after them).
const WARM_UP: usize = 6;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Switch calls to `admins` in turn; returns (call ms, ack ms) per flip.
async fn flips(admins: &[String], n: usize) -> (Vec<f64>, Vec<f64>) {
    let (mut calls, mut acks) = (Vec::new(), Vec::new());
    for k in 0..n {
        let to = if k % 2 == 0 { "elm" } else { "juniper" };
        let started = Instant::now();
        let r = client().post(&admins[k % admins.len()]).json(&json!({"release": to})).send().await.expect("POST /switch");
        let status = r.status().as_u16();
        let body: Value = r.json().await.expect("JSON reply");
        let call = started.elapsed().as_secs_f64() * 1e3;
        assert_eq!(status, 200, "switch to {to}: {body}");
        if let Some(a) = body.get("fleet") {
            assert_eq!(a["acknowledged"], true, "{body}");
            acks.push(a["ack_ms"].as_f64().expect("ack_ms"));
        }
        calls.push(call);
    }
    calls.sort_by(f64::total_cmp);
    acks.sort_by(f64::total_cmp);
    (calls, acks)
}

/// gRPC requests every etcd member has handled so far.
async fn etcd_requests(fleet: &Fleet) -> f64 {
    let mut total = 0.0;
    for i in 0..fleet.etcd.len() {
        let url = format!("{}/metrics", fleet.etcd.member_endpoint(i));
        let Ok(r) = client().get(url).send().await else { continue };
        let text = r.text().await.unwrap_or_default();
        total += text
            .lines()
            .filter(|l| l.starts_with("grpc_server_handled_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    total
}

/// etcd's own write latency on this machine (the floor under every flip:
/// its commit and each node's acknowledgement are writes): 50 puts through
/// etcd's JSON gateway, one after another; (p50, p99) in ms.
async fn etcd_writes(fleet: &Fleet) -> (f64, f64) {
    let url = format!("{}/v3/kv/put", fleet.etcd.member_endpoint(0));
    let mut times = Vec::new();
    for i in 0..50 {
        // base64 of "bench" and of a short value
        let body = json!({"key": "YmVuY2g=", "value": if i % 2 == 0 { "YQ==" } else { "Yg==" }});
        let started = Instant::now();
        let r = client().post(&url).json(&body).send().await.expect("etcd put");
        assert!(r.status().is_success(), "etcd put: {}", r.status());
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    (percentile(&times, 0.5), percentile(&times, 0.99))
}

/// A single canopy without `[cluster]`, with the same service, checks and releases.
async fn single(n: usize) -> (Vec<f64>, Vec<f64>) {
    let config = node_config("single", &[], "5s", "10s", "");
    let config = config.split("[cluster]").next().expect("config").to_string();
    let canopy = Canopy::start(&config);
    let mut ups = Vec::new();
    for release in ["juniper", "elm"] {
        let up = upstream::spawn(release, "web").await;
        let url = canopy.admin_url(&format!("/releases/{release}"));
        let r = client().put(url).json(&json!({"backends": {"web": [up.addr.to_string()]}})).send().await.expect("register");
        assert!(r.status().is_success());
        ups.push(up);
    }
    let admin = vec![canopy.admin_url("/switch")];
    flips(&admin, WARM_UP).await;
    flips(&admin, n).await
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !std::path::Path::new(canopy_testkit::etcd::ETCD).exists() {
        println!("fleet bench skipped: {} is not installed (apt-get install etcd-server)", canopy_testkit::etcd::ETCD);
        return;
    }
    let n: usize = std::env::var("FLEET_FLIPS").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let m = tokio::task::spawn_blocking(Machine::now).await.expect("machine");
    println!("machine: {} CPUs, {} busy, load {}", m.cpus, m.busy, m.loadavg);
    println!("fleet flips: {n} switches per setting, 3 etcd members on loopback, session-ttl 2s\n");
    let (calls, _) = single(n).await;
    let base = percentile(&calls, 0.5);
    println!("{:<28} call p50 {:>7.2} ms  p99 {:>7.2} ms  (baseline)", "single canopy, no [cluster]", base, percentile(&calls, 0.99));
    for nodes in [1, 3, 5] {
        let fleet = Fleet::start(3, nodes, &["juniper", "elm"], "").await;
        let admins: Vec<String> = fleet.nodes.iter().map(|node| node.canopy.admin_url("/switch")).collect();
        flips(&admins, WARM_UP).await;
        if nodes == 1 {
            let (p50, p99) = etcd_writes(&fleet).await;
            println!(
                "{:<28} put  p50 {p50:>7.2} ms  p99 {p99:>7.2} ms  (the floor: a flip makes 2 to 4 writes in a row)",
                "etcd write, for reference"
            );
        }
        let before = etcd_requests(&fleet).await;
        let (calls, acks) = flips(&admins, n).await;
        let requests = (etcd_requests(&fleet).await - before) / n as f64;
        println!(
            "{:<28} call p50 {:>7.2} ms  p99 {:>7.2} ms  ({:.2}x)  ack p50 {:>6.2} ms  p99 {:>6.2} ms  etcd requests/flip {:>5.1}",
            format!("fleet of {nodes} node{}", if nodes == 1 { "" } else { "s" }),
            percentile(&calls, 0.5),
            percentile(&calls, 0.99),
            percentile(&calls, 0.5) / base,
            percentile(&acks, 0.5),
            percentile(&acks, 0.99),
            requests
        );
        drop(fleet);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
