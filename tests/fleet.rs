//! A fleet of canopy nodes flipping as one through a real 3-member etcd
//! cluster on loopback (Debian's etcd), with real network faults: each
//! node reaches etcd through its own relays, which a test can blackhole;
//! etcd members are killed and restarted. Every response the clients get
//! is recorded with its node, its times and its release, and a history
//! checker (canopy_testkit::history) verifies over the whole history that
//! no request begun after a flip's acknowledgement is answered by an older
//! release on a ready node, and that none failed.

use std::time::{Duration, Instant};

use canopy_testkit::fleet::{Fleet, Traffic};
use canopy_testkit::history::{Flip, History, Unready};
use canopy_testkit::{eventually, until_some};
use serde_json::Value;

/// Traffic is bounded by this, whatever happens.
const TRAFFIC_LIMIT: Duration = Duration::from_secs(180);

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// The acknowledgement a flip reply carries.
fn ack(body: &Value) -> &Value {
    body.get("fleet").unwrap_or_else(|| panic!("a fleet flip reply names its acknowledgement: {body}"))
}

/// Records a switch's outcome in the history; panics on anything but an
/// acknowledged flip or a refusal.
fn record(history: &History, to: &str, invoked: Instant, status: u16, body: &Value) -> bool {
    let answered = Instant::now();
    match status {
        200 if ack(body)["acknowledged"] == true => {
            history.record_flip(Flip::acknowledged(to, invoked, answered));
            true
        }
        409 | 503 => {
            history.record_flip(Flip::refused(to, invoked, answered));
            false
        }
        _ => panic!("switch to {to}: {status} {body}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_flips_under_load_on_three_nodes_lose_nothing_and_are_served_everywhere_once_acknowledged() {
    let fleet = Fleet::start(3, 3, &["juniper", "elm"], "").await;
    let history = History::new("juniper");
    let traffic = Traffic::start(&fleet, &history, 2, TRAFFIC_LIMIT);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut acks = Vec::new();
    for k in 0..50 {
        let to = if k % 2 == 0 { "elm" } else { "juniper" };
        let invoked = Instant::now();
        let (status, body) = fleet.switch(k % 3, to).await;
        assert!(record(&history, to, invoked, status, &body), "flip {k} to {to} on n{}: {status} {body}", k % 3 + 1);
        let a = ack(&body);
        assert_eq!(a["nodes"].as_array().map(Vec::len), Some(3), "every node applied flip {k}: {body}");
        acks.push(a["ack_ms"].as_f64().expect("ack_ms"));
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    traffic.stop().await;
    let verdict = history.check();
    verdict.assert_ok();
    assert!(verdict.responses > 1000, "traffic ran: {verdict}");
    assert!(verdict.nodes.values().all(|n| n.responses > 200), "every node served: {verdict}");
    acks.sort_by(f64::total_cmp);
    println!(
        "50 flips on 3 nodes: {} responses, 0 failed; acknowledgement p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        verdict.responses,
        percentile(&acks, 0.5),
        percentile(&acks, 0.99),
        acks[acks.len() - 1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_flips_at_once_on_two_nodes_one_wins_and_every_node_ends_on_it() {
    // a slow check keeps both flips in flight at once
    let slow = r#"{ kind = "command", name = "slow", argv = ["sleep", "0.3"], timeout = "5s", retries = 0 },"#;
    let fleet = Fleet::start(3, 3, &["juniper", "elm", "oak"], slow).await;
    for round in 0..5 {
        let live = fleet.serving().await[0].clone().expect("a live release");
        let (a, b) = if live == "juniper" { ("elm", "oak") } else { ("juniper", if live == "elm" { "oak" } else { "elm" }) };
        let (ra, rb) = tokio::join!(fleet.switch(0, a), fleet.switch(1, b));
        let won: Vec<&str> = [(a, &ra), (b, &rb)].iter().filter(|(_, r)| r.0 == 200).map(|(to, _)| *to).collect();
        assert_eq!(won.len(), 1, "round {round}: exactly one of two concurrent flips wins: {ra:?} {rb:?}");
        let lost = if won[0] == a { &rb } else { &ra };
        assert_eq!(lost.0, 409, "round {round}: the other is refused with 409: {lost:?}");
        let error = lost.1["error"].as_str().unwrap_or_default();
        assert!(error.contains("another") || error.contains("in progress"), "round {round}: the refusal says why: {error}");
        let winner = won[0].to_string();
        eventually("every node serves the winner", Duration::from_secs(2), || async {
            fleet.serving().await.iter().all(|r| r.as_deref() == Some(winner.as_str()))
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_cut_off_from_etcd_keeps_serving_turns_unready_is_named_by_a_flip_and_catches_up() {
    let fleet = Fleet::start(3, 3, &["juniper", "elm"], "").await;
    let history = History::new("juniper");
    let traffic = Traffic::start(&fleet, &history, 1, TRAFFIC_LIMIT);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cut = &fleet.nodes[2];

    let cut_at = Instant::now();
    cut.cut_off();
    // keeps serving its release while it turns unready, within the session TTL (2 s)
    let unready_at = until_some("n3 turns unready", Duration::from_secs(5), || async { (!cut.ready().await).then(Instant::now) }).await;
    let unready_after = unready_at - cut_at;
    assert!(unready_after <= Duration::from_millis(2200), "n3 unready {unready_after:?} after the cut (session-ttl 2 s)");
    assert_eq!(fleet.serving().await[2].as_deref(), Some("juniper"), "n3 keeps serving its last release");

    // a flip meanwhile is acknowledged once n3's session has expired, naming it
    let invoked = Instant::now();
    let (status, body) = fleet.switch(0, "elm").await;
    assert!(record(&history, "elm", invoked, status, &body), "{status} {body}");
    let acknowledged_at = Instant::now();
    assert!(acknowledged_at > unready_at, "no flip is acknowledged while n3 still says it is ready");
    let a = ack(&body);
    assert_eq!(a["expired"], serde_json::json!(["n3"]), "the flip names n3: {body}");
    let applied: Vec<&str> = a["nodes"].as_array().unwrap().iter().map(|n| n["node"].as_str().unwrap()).collect();
    assert_eq!(applied, ["n1", "n2"], "{body}");
    let status_n1 = fleet.nodes[0].status().await;
    let nodes: Vec<&str> = status_n1["fleet"]["nodes"].as_array().unwrap().iter().map(|n| n["node"].as_str().unwrap()).collect();
    assert_eq!(nodes, ["n1", "n2"], "n1's status lists the live sessions: {status_n1}");
    assert_eq!(fleet.serving().await[2].as_deref(), Some("juniper"), "cut off, n3 still serves its last state");

    // reconnected: catches up, then ready again
    let healed = Instant::now();
    cut.heal();
    until_some("n3 serves elm again", Duration::from_secs(10), || async {
        (fleet.serving().await[2].as_deref() == Some("elm")).then_some(())
    })
    .await;
    let caught_up = healed.elapsed();
    let ready_at = until_some("n3 ready again", Duration::from_secs(10), || async { cut.ready().await.then(Instant::now) }).await;
    history.record_unready(Unready { node: "n3".into(), from: cut_at, to: Some(ready_at) });
    println!(
        "n3: unready {unready_after:?} after the cut; caught up {caught_up:?} after the heal; ready again {:?} after it",
        ready_at - healed
    );
    assert!(caught_up <= Duration::from_secs(1), "n3 caught up {caught_up:?} after reconnecting");

    // and from then on it serves the new release only: the history says so
    tokio::time::sleep(Duration::from_millis(500)).await;
    traffic.stop().await;
    history.check().assert_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flips_go_on_with_one_etcd_member_down_and_are_refused_without_quorum_while_every_node_serves() {
    // session-ttl 5 s (the default): it outlasts etcd's election of a new
    // leader (up to twice its 500 ms election timeout here) plus one
    // keep-alive period, which 2 s under load does not (docs/fleet.md)
    let mut fleet = Fleet::start_with(3, 3, &["juniper", "elm"], "", "5s", "10s").await;
    // the member whose loss costs most: the leader (the others elect a new one)
    let leader = fleet.etcd.leader().expect("etcd has a leader");
    let killed = Instant::now();
    fleet.etcd.kill(leader);
    // the nodes' sessions move to the members left: every node stays ready
    // throughout the election and after it
    let mut elected = false;
    while !elected || killed.elapsed() < Duration::from_secs(3) {
        for node in &fleet.nodes {
            let ready = node.ready().await;
            assert!(
                ready,
                "{} stays ready with etcd's leader m{leader} down ({:?} after)\n{}",
                node.name,
                killed.elapsed(),
                fleet.fleet_logs()
            );
        }
        elected = elected || fleet.etcd.leader().is_some();
        assert!(killed.elapsed() < Duration::from_secs(15), "no new etcd leader within 15 s\n{}", fleet.etcd.log_tails(30));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = fleet.switch(1, "elm").await;
    assert_eq!(status, 200, "one member down: flips go on: {body}\n{}", fleet.fleet_logs());
    assert_eq!(ack(&body)["acknowledged"], true, "{body}");

    let other = (0..3).find(|&i| i != leader).expect("a member still up");
    fleet.etcd.kill(other);
    let (status, body) = fleet.switch(1, "juniper").await;
    assert_eq!(status, 503, "two of three down: refused: {body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.contains("etcd") && error.contains("refuses changes"), "the refusal names etcd: {error}");
    for _ in 0..20 {
        assert!(fleet.serving().await.iter().all(|r| r.as_deref() == Some("elm")), "every node keeps serving elm");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    fleet.etcd.restart(other);
    fleet.etcd.wait_healthy(2, Duration::from_secs(15));
    let flipped = until_some("a flip once quorum is back", Duration::from_secs(20), || async {
        let (status, body) = fleet.switch(2, "juniper").await;
        if status != 200 {
            eprintln!("quorum back? switch: {status} {body}");
        }
        (status == 200).then_some(body)
    })
    .await;
    assert_eq!(ack(&flipped)["acknowledged"], true, "{flipped}");
    eventually("every node serves juniper", Duration::from_secs(2), || async {
        fleet.serving().await.iter().all(|r| r.as_deref() == Some("juniper"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_node_that_coordinates_a_flip_at_random_points_leaves_one_release_everywhere_and_no_gap() {
    let mut fleet = Fleet::start(3, 3, &["juniper", "elm"], "").await;
    let mut acknowledged = Vec::new(); // (generation, release)
    let mut landed = 0; // flips whose coordinator died but that had committed
    let mut rng = 0x2545_f491_u64;
    // kill points spread over twice a flip's own duration (from the previous round)
    let mut flip_ms = 100u64;
    for round in 0..8 {
        let victim = round % 3;
        let live = fleet.serving().await[(victim + 1) % 3].clone().expect("live");
        let to = if live == "juniper" { "elm" } else { "juniper" };
        // the victim coordinates a flip; it dies somewhere along the way
        let url = fleet.nodes[victim].canopy.admin_url("/switch");
        let flip = tokio::spawn(async move {
            let r = canopy_testkit::client().post(url).json(&serde_json::json!({"release": to})).send().await;
            r.map(|r| r.status().as_u16()).unwrap_or(0)
        });
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        tokio::time::sleep(Duration::from_millis(rng % (2 * flip_ms + 1))).await;
        fleet.kill9(victim);
        let _ = flip.await;
        // the others agree on one release within the session TTL (2 s)
        let others: Vec<usize> = (0..3).filter(|i| *i != victim).collect();
        let agreed = until_some("the live nodes agree within the session TTL", Duration::from_secs(2), || async {
            let serving = fleet.serving().await;
            let seen: Vec<&Option<String>> = others.iter().map(|i| &serving[*i]).collect();
            (seen.iter().all(|s| s.is_some() && *s == seen[0])).then(|| seen[0].clone().unwrap())
        })
        .await;
        landed += usize::from(agreed == to);
        fleet.restart(victim);
        eventually("the restarted node serves the fleet's release", Duration::from_secs(5), || async {
            fleet.serving().await.iter().all(|r| r.as_deref() == Some(agreed.as_str()))
        })
        .await;
        eventually("the restarted node is ready", Duration::from_secs(5), || fleet.nodes[victim].ready()).await;
        // and an acknowledged flip by another node goes through
        let back = if agreed == "juniper" { "elm" } else { "juniper" };
        let (status, body) = fleet.switch((victim + 1) % 3, back).await;
        assert_eq!(status, 200, "round {round}: {body}");
        assert_eq!(ack(&body)["acknowledged"], true, "round {round}: {body}");
        acknowledged.push((body["generation"].as_u64().unwrap(), back.to_string()));
        flip_ms = body["duration_ms"].as_f64().unwrap_or(100.0) as u64 + 1;
    }
    // the fleet's audit log holds every flip, with no gap in the generations,
    // and every acknowledged flip where it was acknowledged
    let events = canopy_testkit::client().get(fleet.nodes[0].canopy.admin_url("/events")).send().await.unwrap();
    let events: Vec<Value> = events.json().await.unwrap();
    let flips: Vec<(u64, String)> = events
        .iter()
        .filter(|e| e["result"] == "ok" && (e["action"] == "switch" || e["action"] == "rollback"))
        .map(|e| (e["generation"].as_u64().unwrap(), e["to"].as_str().unwrap().to_string()))
        .collect();
    let generations: Vec<u64> = flips.iter().map(|f| f.0).collect();
    assert!(generations.windows(2).all(|w| w[1] == w[0] + 1), "no gap in the flips' generations: {generations:?}");
    for a in &acknowledged {
        assert!(flips.contains(a), "acknowledged flip {a:?} is in the fleet's journal: {flips:?}");
    }
    println!("8 coordinators killed mid-flip: {landed} of their flips had committed, {} had not; generations {generations:?}", 8 - landed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_upgraded_in_place_stays_in_the_fleet_after_its_predecessor_exits() {
    let mut fleet = Fleet::start(3, 3, &["juniper", "elm"], "").await;
    let (mut old, new_pid, admin) = {
        let node = &mut fleet.nodes[2].canopy;
        let log = std::fs::File::create(node.dir.join("canopy-1.log")).unwrap();
        let new = std::process::Command::new(canopy_testkit::canopy_bin())
            .args(["serve", "-c"])
            .arg(node.dir.join("proxy.toml"))
            .arg("--upgrade")
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let new_pid = new.id();
        (std::mem::replace(&mut node.child, new), new_pid, node.admin.port())
    };
    canopy_testkit::wait_listening(new_pid, admin, Duration::from_secs(20), "the upgraded n3's admin listener");
    // flips while both processes run: both apply them; only the new one may own n3's key
    for to in ["elm", "juniper", "elm", "juniper"] {
        let (status, body) = fleet.switch(0, to).await;
        assert_eq!(status, 200, "{body}");
    }
    // the predecessor finishes (shutdown-grace 2 s) and exits; its lease ends a session TTL later
    let deadline = Instant::now() + Duration::from_secs(20);
    while old.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the predecessor did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let st = fleet.nodes[0].status().await;
    let nodes: Vec<&str> = st["fleet"]["nodes"].as_array().unwrap().iter().map(|n| n["node"].as_str().unwrap()).collect();
    assert_eq!(nodes, ["n1", "n2", "n3"], "n3 is still in the fleet: {st}\n{}", fleet.fleet_logs());
    let (status, body) = fleet.switch(0, "elm").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ack(&body)["nodes"].as_array().map(Vec::len), Some(3), "the upgraded n3 applied the flip: {body}");
    assert!(fleet.serving().await.iter().all(|r| r.as_deref() == Some("elm")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cli_names_every_node_in_status_and_in_a_flip_and_readyz_and_metrics_say_ready() {
    let fleet = Fleet::start(3, 3, &["juniper", "elm"], "").await;
    let n1 = &fleet.nodes[0].canopy;
    let out = n1.cli(&["switch", "elm"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("applied by every live node in") && ["n1 ", "n2 ", "n3 "].iter().all(|n| text.contains(n)), "{text}");
    let out = n1.cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("fleet:      node n1 ready, serving revision"), "{text}");
    for n in ["n1", "n2", "n3"] {
        assert!(text.lines().any(|l| l.trim_start().starts_with(n) && l.contains("up to date")), "{n} listed up to date:\n{text}");
    }
    let r = canopy_testkit::client().get(n1.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let metrics = canopy_testkit::client().get(n1.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    for line in ["canopy_cluster_session_up 1", "canopy_cluster_ready 1", "canopy_cluster_flips_refused_total{reason=\"conflict\"} 0"] {
        assert!(metrics.contains(line), "{line} in /metrics");
    }
    assert!(metrics.contains("canopy_cluster_apply_seconds_count 2"), "two acknowledged flips (the first switch and this one)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_node_is_left_out_of_a_flip_and_catches_up_before_it_is_ready_again() {
    let fleet = Fleet::start(3, 3, &["juniper", "elm"], "").await;
    let history = History::new("juniper");
    let traffic = Traffic::start(&fleet, &history, 1, TRAFFIC_LIMIT);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // like `docker pause`: the whole process stops, session keep-alives included
    let pid = fleet.nodes[2].canopy.child.id();
    let paused_at = Instant::now();
    assert!(canopy_testkit::process::signal(pid, "-STOP"));
    let invoked = Instant::now();
    let (status, body) = fleet.switch(0, "elm").await;
    assert!(record(&history, "elm", invoked, status, &body), "{status} {body}");
    assert_eq!(ack(&body)["expired"], serde_json::json!(["n3"]), "the flip waits for n3's session to expire, naming it: {body}");
    // n3's last keep-alive was at most a third of the TTL before the pause
    let waited = paused_at.elapsed();
    assert!(waited >= Duration::from_millis(1300), "acknowledged {waited:?} after the pause: before n3's session could expire");
    let resumed = Instant::now();
    assert!(canopy_testkit::process::signal(pid, "-CONT"));
    let ready_at =
        until_some("n3 ready again", Duration::from_secs(10), || async { fleet.nodes[2].ready().await.then(Instant::now) }).await;
    assert_eq!(fleet.serving().await[2].as_deref(), Some("elm"), "n3 caught up before it said it was ready");
    history.record_unready(Unready { node: "n3".into(), from: paused_at, to: Some(ready_at) });
    println!("n3 paused: flip acknowledged {waited:?} after the pause; ready {:?} after it resumed", ready_at - resumed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    traffic.stop().await;
    history.check().assert_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_guard_judges_the_whole_fleets_traffic_once_and_rolls_every_node_back() {
    let fleet = Fleet::start(3, 3, &["juniper", "elm"], "").await;
    // elm fails half its requests on n2 and n3 only (its checks still pass);
    // the shoppers reach n2 and n3 only, so n1, which judges, sees none itself
    for node in &fleet.nodes[1..] {
        node.upstreams["elm"].knobs.error_permille.store(500, std::sync::atomic::Ordering::Relaxed);
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut shoppers = Vec::new();
    for node in &fleet.nodes[1..] {
        let (url, stop) = (node.canopy.url("/"), stop.clone());
        shoppers.push(tokio::spawn(async move {
            let c = canopy_testkit::client();
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                let _ = c.get(&url).send().await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await; // juniper's baseline
    let (status, body) = fleet.switch(0, "elm").await;
    assert_eq!(status, 200, "{body}");
    eventually("the guard on n1 rolls the fleet back to juniper", Duration::from_secs(15), || async {
        fleet.serving().await.iter().all(|r| r.as_deref() == Some("juniper"))
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for s in shoppers {
        let _ = s.await;
    }
    let events: Vec<Value> =
        canopy_testkit::client().get(fleet.nodes[1].canopy.admin_url("/events")).send().await.unwrap().json().await.unwrap();
    let rollback = events.iter().find(|e| e["action"] == "auto-rollback").unwrap_or_else(|| panic!("an auto-rollback event: {events:?}"));
    assert_eq!(rollback["actor"].as_str().map(|a| a.contains("guard")), Some(true), "{rollback}");
    assert_eq!(events.iter().filter(|e| e["action"] == "auto-rollback").count(), 1, "taken once, for the whole fleet: {events:?}");
}
