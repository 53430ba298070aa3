//! Client load through the proxy while something changes underneath (flips,
//! upgrades): keep-alive and fresh-connection GETs, POSTs whose bodies must
//! come back byte for byte, slow requests, WebSockets; and the check that
//! every answer came from a release that was allowed to serve it.
//!
//! Every answer names its release twice: canopy's `x-canopy-release` header
//! and the upstream's own word (the JSON body's `release`, `x-release` on an
//! echoed body, the prefix of a WebSocket echo). The loops count an answer
//! whose two names differ as a failure, so a proxy that routes with one
//! release table and tags with another cannot pass [`assert_right_releases`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};

use crate::upstream;

/// Most requests one client loop sends.
pub const MAX_REQUESTS: u32 = 100_000;
/// Longest a client loop runs.
pub const MAX_TIME: Duration = Duration::from_secs(240);

/// One kind of client loop.
#[derive(Debug, Clone, Copy)]
pub struct Kind {
    /// Name in reports.
    pub name: &'static str,
    /// A new connection per request (else keep-alive).
    pub fresh: bool,
    /// POST a body to `/echo` and compare what comes back.
    pub post: bool,
    /// GET that the upstream answers after this many milliseconds (0: at once).
    pub slow_ms: u64,
}

impl Kind {
    /// Keep-alive GETs.
    pub const KEEPALIVE_GET: Kind = Kind { name: "keepalive-get", fresh: false, post: false, slow_ms: 0 };
    /// A new connection for every GET.
    pub const FRESH_GET: Kind = Kind { name: "fresh-get", fresh: true, post: false, slow_ms: 0 };
    /// Keep-alive POSTs with bodies echoed byte for byte.
    pub const POST: Kind = Kind { name: "post", fresh: false, post: true, slow_ms: 0 };
    /// POSTs on new connections.
    pub const FRESH_POST: Kind = Kind { name: "fresh-post", fresh: true, post: true, slow_ms: 0 };

    /// GETs the upstream answers after `ms` milliseconds.
    pub const fn slow(name: &'static str, ms: u64) -> Kind {
        Kind { name, fresh: false, post: false, slow_ms: ms }
    }
}

/// One completed client request.
#[derive(Debug, Clone)]
pub struct Done {
    /// Its [`Kind`] name (or `websocket`).
    pub kind: &'static str,
    /// When the client started it.
    pub start: Instant,
    /// When it reached the upstream: canopy chose the release in [start, arrived].
    pub arrived: Instant,
    /// When the client had the whole answer.
    pub end: Instant,
    /// The release that answered.
    pub release: String,
}

/// One flip: when it was sent, when it was acknowledged, and the new live release.
#[derive(Debug, Clone)]
pub struct Flip {
    /// Sent.
    pub sent: Instant,
    /// Acknowledged (200).
    pub acked: Instant,
    /// The release made live.
    pub to: String,
}

/// Where client loops send their requests and how their clients are made.
#[derive(Clone)]
pub struct Target {
    /// `http://127.0.0.1:port` or `https://name:port`.
    pub base: String,
    /// A client builder for each loop (TLS roots, name resolution, HTTP/2).
    pub builder: Arc<dyn Fn() -> reqwest::ClientBuilder + Send + Sync>,
}

impl Target {
    /// Plain HTTP/1.1 to `proxy`.
    pub fn plain(proxy: SocketAddr) -> Target {
        Target { base: format!("http://{proxy}"), builder: Arc::new(reqwest::Client::builder) }
    }
}

/// Running client loops; [`Load::stop`] ends them and returns what happened.
pub struct Load {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Done>>>,
    failures: Arc<Mutex<Vec<String>>>,
    /// Each loop's name and task, which returns why it ended.
    tasks: Vec<(&'static str, tokio::task::JoinHandle<Ended>)>,
}

/// Why a client loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// [`Load::stop`] asked it to: it ran for the whole change.
    Stopped,
    /// It sent [`MAX_REQUESTS`] requests first.
    MaxRequests,
    /// It ran [`MAX_TIME`] first.
    MaxTime,
}

/// When the upstream read the request: [`upstream::RECEIVED_HEADER`] from
/// the in-process upstreams, or [`upstream::UNIX_RECEIVED_HEADER`] from an
/// upstream in a container, mapped onto this process's clock.
fn arrival(headers: &reqwest::header::HeaderMap) -> Instant {
    if let Some(unix) = headers.get(upstream::UNIX_RECEIVED_HEADER) {
        let us: u64 = unix.to_str().unwrap().parse().unwrap();
        let at = std::time::UNIX_EPOCH + Duration::from_micros(us);
        let ago = std::time::SystemTime::now().duration_since(at).unwrap_or_default();
        return Instant::now() - ago;
    }
    let us: u64 = headers[upstream::RECEIVED_HEADER].to_str().unwrap().parse().unwrap();
    upstream::epoch() + Duration::from_micros(us)
}

impl Load {
    /// Starts one loop per entry of `kinds` (each at most [`MAX_REQUESTS`]
    /// requests and [`MAX_TIME`]) and,
    /// with `websockets`, one loop opening WebSockets one after another (10
    /// echoed messages 40 ms apart each) against the proxy at `proxy`.
    pub fn start(proxy: SocketAddr, kinds: &[Kind], websockets: bool) -> Load {
        let load = Load::start_on(&Target::plain(proxy), kinds);
        if websockets {
            let ws = tokio::spawn(websocket_loop(proxy, load.stop.clone(), load.log.clone(), load.failures.clone()));
            return Load { tasks: load.tasks.into_iter().chain([("websocket", ws)]).collect(), ..load };
        }
        load
    }

    /// One loop per entry of `kinds` against `target` (no WebSockets).
    pub fn start_on(target: &Target, kinds: &[Kind]) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let tasks = kinds
            .iter()
            .map(|kind| (kind.name, tokio::spawn(client_loop(target.clone(), *kind, stop.clone(), log.clone(), failures.clone()))))
            .collect();
        Load { stop, log, failures, tasks }
    }

    /// Requests failed so far.
    pub fn failures(&self) -> usize {
        self.failures.lock().unwrap().len()
    }

    /// The failures so far (at most the first ten).
    pub fn failure_list(&self) -> Vec<String> {
        self.failures.lock().unwrap().iter().take(10).cloned().collect()
    }

    /// Stops every loop (each finishes its current request); returns the
    /// completed requests and the failures. Panics if a loop had already
    /// ended by itself at its cap ([`MAX_REQUESTS`], [`MAX_TIME`]): its
    /// requests would not cover what happened after, and the test would
    /// prove less than it says.
    pub async fn stop(self) -> (Vec<Done>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut capped = Vec::new();
        for (name, task) in self.tasks {
            let ended = task.await.expect("client loop panicked");
            if ended != Ended::Stopped {
                capped.push(format!("{name}: {ended:?}"));
            }
        }
        assert!(capped.is_empty(), "client loops ended before the test stopped them: {capped:?}");
        let done = self.log.lock().unwrap().clone();
        let failures = self.failures.lock().unwrap().clone();
        (done, failures)
    }
}

/// The release an upstream says answered: `x-release` on an echoed body,
/// else the JSON body's `release`.
fn upstream_release(headers: &reqwest::header::HeaderMap, body: &[u8]) -> Option<String> {
    if let Some(v) = headers.get(upstream::RELEASE_HEADER) {
        return v.to_str().ok().map(str::to_string);
    }
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v["release"].as_str().map(str::to_string)
}

/// Whether a loop that has sent `sent` requests since `started` goes on,
/// and if not, why.
fn next(stop: &AtomicBool, sent: u32, started: Instant) -> Option<Ended> {
    if stop.load(Ordering::Relaxed) {
        Some(Ended::Stopped)
    } else if sent >= MAX_REQUESTS {
        Some(Ended::MaxRequests)
    } else if started.elapsed() >= MAX_TIME {
        Some(Ended::MaxTime)
    } else {
        None
    }
}

async fn client_loop(
    target: Target,
    kind: Kind,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Done>>>,
    failures: Arc<Mutex<Vec<String>>>,
) -> Ended {
    let base = &target.base;
    let mut b = (target.builder)().no_proxy().timeout(Duration::from_secs(10));
    if kind.fresh {
        b = b.pool_max_idle_per_host(0);
    }
    let http = b.build().unwrap();
    let fail = |msg: String| failures.lock().unwrap().push(format!("{}: {msg}", kind.name));
    let (mut i, started) = (0u32, Instant::now());
    loop {
        if let Some(why) = next(&stop, i, started) {
            return why;
        }
        i += 1;
        let body: Vec<u8> = (0..(1000 + i % 7000)).map(|x| (x * 31 + i) as u8).collect();
        let start = Instant::now();
        let req = if kind.post {
            http.post(format!("{base}/echo")).body(body.clone())
        } else if kind.slow_ms > 0 {
            http.get(format!("{base}/products?ms={}", kind.slow_ms))
        } else {
            http.get(format!("{base}/shop-api/q{i}"))
        };
        match req.send().await {
            Ok(r) if r.status() == 200 => {
                let rel = r.headers()["x-canopy-release"].to_str().unwrap().to_string();
                let arrived = arrival(r.headers());
                let headers = r.headers().clone();
                match r.bytes().await {
                    Ok(got) if kind.post && got[..] != body[..] => fail("body changed".into()),
                    Ok(got) => match upstream_release(&headers, &got) {
                        Some(said) if said == rel => {
                            log.lock().unwrap().push(Done { kind: kind.name, start, arrived, end: Instant::now(), release: rel })
                        }
                        said => fail(format!("x-canopy-release {rel} but the upstream of {said:?} answered")),
                    },
                    Err(e) => fail(format!("body: {e}")),
                }
            }
            Ok(r) => fail(format!("status {}", r.status())),
            Err(e) => fail(format!("{e:?}")),
        }
    }
}

async fn websocket_loop(proxy: SocketAddr, stop: Arc<AtomicBool>, log: Arc<Mutex<Vec<Done>>>, failures: Arc<Mutex<Vec<String>>>) -> Ended {
    let fail = |msg: String| failures.lock().unwrap().push(msg);
    let started = Instant::now();
    // the upstream's own word is each echo's prefix (`juniper:m0`), checked against canopy's header
    loop {
        if let Some(why) = next(&stop, 0, started) {
            return why;
        }
        let start = Instant::now();
        let (mut ws, resp) = match tokio_tungstenite::connect_async(format!("ws://{proxy}/ws")).await {
            Ok(x) => x,
            Err(e) => {
                fail(format!("ws connect: {e}"));
                continue;
            }
        };
        let rel = resp.headers()["x-canopy-release"].to_str().unwrap().to_string();
        let arrived = arrival(resp.headers());
        let mut ok = true;
        for i in 0..10 {
            if let Err(e) = ws.send(format!("m{i}").into()).await {
                fail(format!("ws {rel} send m{i}: {e}"));
                ok = false;
                break;
            }
            match ws.next().await {
                Some(Ok(m)) if m.to_text().ok() == Some(&format!("{rel}:m{i}")) => {}
                other => {
                    fail(format!("ws {rel} m{i} at {:?}: {other:?}", start.elapsed()));
                    ok = false;
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        let _ = ws.close(None).await;
        if ok {
            log.lock().unwrap().push(Done { kind: "websocket", start, arrived, end: Instant::now(), release: rel });
        }
    }
}

/// Flips `n` times through the admin API at `switch_url` (`POST /switch`),
/// to `to[0]`, `to[1]`, `to[0]`, ... 15 ms apart; each must be acknowledged
/// with 200. Returns when each was sent and acknowledged.
pub async fn flip_many(switch_url: &str, n: usize, to: [&str; 2]) -> Vec<Flip> {
    let admin = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build().unwrap();
    let mut flips = Vec::new();
    for k in 0..n {
        let to = to[k % 2];
        let sent = Instant::now();
        let r = admin.post(switch_url).json(&serde_json::json!({"release": to})).send().await.unwrap();
        let acked = Instant::now();
        assert_eq!(r.status(), 200, "flip {k}: {}", r.text().await.unwrap());
        flips.push(Flip { sent, acked, to: to.to_string() });
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    flips
}

/// The releases that may serve a request that canopy received somewhere in
/// [start, arrived]: the one live when it started (per acknowledged flips,
/// `initial` before any), plus the target of any flip in progress or begun
/// before it reached the upstream. A flip acknowledged before `start` is
/// never undone, and a flip sent after `arrived` can no longer move it.
pub fn allowed(initial: &str, flips: &[Flip], start: Instant, arrived: Instant) -> Vec<String> {
    let mut live = vec![initial.to_string()];
    for f in flips {
        if f.acked <= start {
            live = vec![f.to.clone()];
        } else if f.sent < arrived {
            live.push(f.to.clone());
        }
    }
    live
}

/// Panics, naming the first one and the flips near it, if any request was
/// served by a release [`allowed`] does not admit.
pub fn assert_right_releases(initial: &str, flips: &[Flip], done: &[Done]) {
    let wrong: Vec<&Done> = done.iter().filter(|d| !allowed(initial, flips, d.start, d.arrived).contains(&d.release)).collect();
    let Some(w) = wrong.first() else { return };
    let t0 = flips.first().map_or(w.start, |f| f.sent);
    let near: Vec<String> = flips
        .iter()
        .filter(|f| f.acked + Duration::from_millis(100) > w.start && f.sent < w.end + Duration::from_millis(100))
        .map(|f| format!("{} sent {:?} acked {:?}", f.to, f.sent.checked_duration_since(t0), f.acked.checked_duration_since(t0)))
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

/// How many of `done` are of `kind`.
pub fn count(done: &[Done], kind: &str) -> usize {
    done.iter().filter(|d| d.kind == kind).count()
}
