//! Zero downtime under load: clients on keep-alive and fresh connections
//! (GET, POST with bodies, slow requests, a WebSocket) while the admin API
//! flips between two real releases 100+ times. No request may fail; every
//! request started after a switch reply is served by the new release; every
//! request in flight at a flip finishes on the release it started on.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use support::*;
use support::upstream;

/// One completed client request.
#[derive(Debug, Clone)]
struct Done {
    kind: &'static str,
    start: Instant,
    /// When the request reached the upstream: canopy chose the release in [start, arrived].
    arrived: Instant,
    end: Instant,
    release: String,
}

/// One flip: when it was sent, when it was acknowledged, and the new live release.
#[derive(Debug, Clone)]
struct Flip {
    sent: Instant,
    acked: Instant,
    to: String,
}

type Log = Arc<Mutex<Vec<Done>>>;

fn arrival(headers: &reqwest::header::HeaderMap) -> Instant {
    let us: u64 = headers[upstream::RECEIVED_HEADER].to_str().unwrap().parse().unwrap();
    upstream::epoch() + Duration::from_micros(us)
}

fn record(log: &Log, kind: &'static str, start: Instant, arrived: Instant, release: &str) {
    log.lock().unwrap().push(Done { kind, start, arrived, end: Instant::now(), release: release.to_string() });
}

/// The releases that may serve a request that canopy received somewhere in
/// [start, arrived]: the one live when it started (per acknowledged flips),
/// plus the target of any flip in progress or begun before it reached the
/// upstream. A flip acknowledged before `start` is never undone, and a flip
/// sent after `arrived` can no longer move it.
fn allowed(flips: &[Flip], start: Instant, arrived: Instant) -> Vec<String> {
    let mut live = vec!["juniper".to_string()];
    for f in flips {
        if f.acked <= start {
            live = vec![f.to.clone()];
        } else if f.sent < arrived {
            live.push(f.to.clone());
        }
    }
    live
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_flips_under_load_lose_nothing() {
    let (c, _juniper, _elm) = two_releases("", "").await;
    let c = Arc::new(c);
    let stop = Arc::new(AtomicBool::new(false));
    let log: Log = Arc::new(Mutex::new(Vec::new()));
    let failures: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();

    // keep-alive GETs, fresh-connection GETs, POSTs with bodies, slow GETs
    for (kind, fresh, slow, post) in [
        ("keepalive-get", false, false, false),
        ("keepalive-get", false, false, false),
        ("fresh-get", true, false, false),
        ("post", false, false, true),
        ("fresh-post", true, false, true),
        ("slow-get", false, true, false),
        ("slow-get", false, true, false),
    ] {
        let (c, stop, log, failures) = (c.clone(), stop.clone(), log.clone(), failures.clone());
        tasks.push(tokio::spawn(async move {
            let mut b = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10));
            if fresh {
                b = b.pool_max_idle_per_host(0);
            }
            let http = b.build().unwrap();
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) && i < 5000 {
                i += 1;
                let body: Vec<u8> = (0..(1000 + i % 7000)).map(|x| (x * 31 + i) as u8).collect();
                let start = Instant::now();
                let req = if post {
                    http.post(c.url("/echo")).body(body.clone())
                } else if slow {
                    http.get(c.url("/products?ms=150"))
                } else {
                    http.get(c.url(&format!("/shop-api/q{i}")))
                };
                match req.send().await {
                    Ok(r) if r.status() == 200 => {
                        let rel = r.headers()["x-canopy-release"].to_str().unwrap().to_string();
                        let arrived = arrival(r.headers());
                        match r.bytes().await {
                            Ok(got) if !post || got[..] == body[..] => record(&log, kind, start, arrived, &rel),
                            Ok(_) => failures.lock().unwrap().push(format!("{kind}: body changed")),
                            Err(e) => failures.lock().unwrap().push(format!("{kind}: body: {e}")),
                        }
                    }
                    Ok(r) => failures.lock().unwrap().push(format!("{kind}: status {}", r.status())),
                    Err(e) => failures.lock().unwrap().push(format!("{kind}: {e}")),
                }
            }
        }));
    }

    // WebSockets opened one after another; each spans several flips and must
    // stay on the release it was opened on.
    let ws_task = {
        let (c, stop, log, failures) = (c.clone(), stop.clone(), log.clone(), failures.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let start = Instant::now();
                let (mut ws, resp) = match tokio_tungstenite::connect_async(format!("ws://{}/ws", c.proxy)).await {
                    Ok(x) => x,
                    Err(e) => {
                        failures.lock().unwrap().push(format!("ws connect: {e}"));
                        continue;
                    }
                };
                let rel = resp.headers()["x-canopy-release"].to_str().unwrap().to_string();
                let arrived = arrival(resp.headers());
                for i in 0..10 {
                    if let Err(e) = ws.send(format!("m{i}").into()).await {
                        failures.lock().unwrap().push(format!("ws {rel} send m{i}: {e}"));
                        break;
                    }
                    match ws.next().await {
                        Some(Ok(m)) if m.to_text().ok() == Some(&format!("{rel}:m{i}")) => {}
                        other => {
                            failures.lock().unwrap().push(format!("ws {rel} m{i} at {:?}: {other:?}", start.elapsed()));
                            break;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(40)).await;
                }
                let _ = ws.close(None).await;
                record(&log, "websocket", start, arrived, &rel);
            }
        })
    };

    // 100+ flips through the admin API, validation included
    tokio::time::sleep(Duration::from_millis(200)).await;
    let admin = client();
    let mut flips = Vec::new();
    for k in 0..110 {
        let to = if k % 2 == 0 { "elm" } else { "juniper" };
        let sent = Instant::now();
        let r = admin.post(c.admin_url("/switch")).json(&json!({"release": to})).send().await.unwrap();
        let acked = Instant::now();
        assert_eq!(r.status(), 200, "flip {k}: {}", r.text().await.unwrap());
        flips.push(Flip { sent, acked, to: to.to_string() });
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    ws_task.await.unwrap();

    let failures = failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "{} failed requests: {:?}", failures.len(), &failures[..failures.len().min(10)]);
    let done = log.lock().unwrap().clone();
    let mut wrong = Vec::new();
    let mut spanned = 0;
    for d in &done {
        if !allowed(&flips, d.start, d.arrived).contains(&d.release) {
            wrong.push(d.clone());
        }
        if flips.iter().any(|f| d.arrived < f.sent && d.end > f.acked) {
            spanned += 1;
        }
    }
    if let Some(w) = wrong.first() {
        let t0 = flips[0].sent;
        let near: Vec<String> = flips
            .iter()
            .filter(|f| f.acked + Duration::from_millis(100) > w.start && f.sent < w.end + Duration::from_millis(100))
            .map(|f| format!("{} sent {:?} acked {:?}", f.to, f.sent - t0, f.acked - t0))
            .collect();
        panic!(
            "{} requests served by the wrong release; first: {} started {:?} reached upstream {:?} ended {:?} served by {}; flips near it: {near:?}",
            wrong.len(),
            w.kind,
            w.start.checked_duration_since(t0),
            w.arrived.checked_duration_since(t0),
            w.end.checked_duration_since(t0),
            w.release
        );
    }
    let count = |k: &str| done.iter().filter(|d| d.kind == k).count();
    eprintln!(
        "flips: {}, requests: {} (keepalive-get {}, fresh-get {}, post {}, fresh-post {}, slow-get {}, websocket {}), spanning a flip: {spanned}",
        flips.len(),
        done.len(),
        count("keepalive-get"),
        count("fresh-get"),
        count("post"),
        count("fresh-post"),
        count("slow-get"),
        count("websocket"),
    );
    assert!(flips.len() >= 100);
    assert!(count("websocket") >= 2 && count("slow-get") >= 10 && count("fresh-get") >= 20);
    assert!(spanned >= 10, "too few requests were in flight across a flip ({spanned}) to prove anything");
    let st = status(&c).await;
    assert_eq!(st["live"], flips.last().unwrap().to.as_str());
}
