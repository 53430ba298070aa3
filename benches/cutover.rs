//! Cutover benchmark: what happens to traffic while the upstream release is
//! switched, for canopy (admin API), nginx (config rewrite + `nginx -s reload`)
//! and HAProxy (runtime API over its stats socket), in one run on one machine.
//!
//!     cargo bench --bench cutover
//!
//! `cargo bench` builds `target/release/canopy` itself (benches get the
//! package's binaries, `CARGO_BIN_EXE_canopy`), in the release profile.
//! nginx (`/usr/sbin/nginx`) and HAProxy (`/usr/sbin/haproxy`) are skipped
//! with a note when they are not installed.
//!
//! Two real upstream releases, `blue` and `green` (the test kit's upstream,
//! hyper, answering JSON that names the release), run in-process on
//! 127.0.0.1:0. For each proxy in turn: 8 client tasks, each with its own
//! reqwest client (one keep-alive HTTP/1.1 connection), send GET /products
//! through the proxy for the whole run, while a control thread flips
//! blue -> green ("switch") and green -> blue ("rollback") with a short pause
//! between flips:
//!
//! - canopy: `POST /switch {"release": "green"}` (validated: an http check of
//!   the candidate's /health, state written durably, then the flip) and
//!   `POST /rollback` (canopy trusts its background watch's fresh, passing
//!   quick check of the warm release, else re-checks it inline; then the flip);
//! - nginx: rewrite the config's upstream and run `nginx -s reload`; the call
//!   returns when the reload command returns;
//! - HAProxy: `set server be/green state ready; set server be/blue state maint`
//!   (and the reverse) in one line over the admin socket.
//!
//! Printed per proxy: failed requests (transport errors or non-200), requests
//! sent after a switch call returned but answered by the old release, time
//! from the start of the switch call to the first new-release answer, switch
//! and rollback call latency p50/p99, and for canopy its idle RSS and its own
//! account of each flip (from the reply: total, of which validation); then the
//! issue's goals with pass/fail. For context it also times, by itself, the
//! durable write canopy does on every flip (same size as canopy's state file,
//! in the same temp directory's file system), idle and under client load.
//!
//! `CUTOVER_FLIPS=N` overrides the number of switch+rollback pairs for every
//! proxy, and `CUTOVER_ONLY=canopy` skips nginx and HAProxy (quick runs while
//! working on canopy's flip path).
//!
//! Everything binds loopback only; every child process is stopped on drop.
//! The process exits 1 when a goal fails.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use canopy_testkit::bench::{ms, pct, wait_ready, Goals, Machine};
use canopy_testkit::configs::{nginx_command, CanopyBench, HaproxyBench, HaproxyServer, NginxBench};
use canopy_testkit::{reserve, upstream, Proc};
use serde_json::Value;

/// Client tasks hammering the proxy.
const CLIENTS: usize = 8;
/// Traffic before the first flip and after the last one.
const SETTLE: Duration = Duration::from_millis(500);
/// canopy switch+rollback pairs timed before the clients start.
const UNLOADED_PAIRS: usize = 25;

// ------------------------------------------------------------------ records

/// One client request.
#[derive(Clone, Copy)]
struct Req {
    start: Instant,
    end: Instant,
    /// `Some(release)` (0 = blue, 1 = green) when answered 200 by a release.
    release: Option<u8>,
}

/// One failed client request.
struct Failure {
    at: Instant,
    what: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Switch,
    Rollback,
}

/// One flip as the control thread saw it.
struct Flip {
    kind: Kind,
    /// The release live once the call returned.
    to: u8,
    sent: Instant,
    acked: Instant,
    ok: bool,
    error: Option<String>,
    /// canopy only: the durations the server reports.
    server_ms: Option<ServerMs>,
}

const NAMES: [&str; 2] = ["blue", "green"];

fn release_id(name: &str) -> Option<u8> {
    NAMES.iter().position(|n| *n == name).map(|i| i as u8)
}

// ------------------------------------------------------------------ processes

fn rss_kb(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse().ok()
}

/// How `pid`'s thread named `name` is scheduled: "SCHED_FIFO 1" or "nice -10"
/// (fields 19, 40 and 41 of its stat).
fn thread_sched(pid: u32, name: &str) -> Option<String> {
    std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten().find_map(|t| {
        let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
        if comm.trim_end() != name {
            return None;
        }
        let stat = std::fs::read_to_string(t.path().join("stat")).ok()?;
        // fields after the parenthesised command name, which may contain spaces
        let f: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let field = |n: usize| f.get(n - 3).copied();
        Some(match field(41)? {
            "1" => format!("SCHED_FIFO {}", field(40)?),
            "2" => format!("SCHED_RR {}", field(40)?),
            _ => format!("nice {}", field(19)?),
        })
    })
}

// ------------------------------------------------------------------ proxies

struct Upstreams {
    addrs: [SocketAddr; 2],
}

/// How a proxy is flipped.
enum Control {
    Canopy { admin: SocketAddr },
    Nginx { dir: PathBuf, addrs: [SocketAddr; 2], port: u16 },
    Haproxy { sock: PathBuf },
}

/// A running proxy under test.
struct Running {
    name: &'static str,
    proc_: Proc,
    url: String,
    control: Control,
    /// canopy: VmRSS after start-up, kB.
    idle_rss_kb: Option<u64>,
    /// canopy: its durable state file.
    state_file: Option<PathBuf>,
    _tmp: tempfile::TempDir,
}

/// The bench's canopy: releases blue (live) and green, a validated switch.
fn canopy_config(dir: &Path, port: u16, admin_port: u16, addrs: [SocketAddr; 2]) -> String {
    CanopyBench {
        port,
        admin_port,
        state_file: dir.join("state.json"),
        releases: vec![(NAMES[0].into(), addrs[0]), (NAMES[1].into(), addrs[1])],
        proxy_lines: "threads = 2\nshutdown-grace = \"1s\"".into(),
        health_check: true,
    }
    .toml()
}

/// The bench's nginx: 2 workers, every path to `upstream`.
fn nginx_config(dir: &Path, port: u16, upstream: SocketAddr) -> String {
    NginxBench { dir: dir.to_path_buf(), port, upstream, workers: 2, server_lines: String::new() }.conf()
}

async fn start_canopy(up: &Upstreams) -> Running {
    let tmp = tempfile::Builder::new().prefix("canopy-cutover-").tempdir().unwrap();
    let dir = tmp.path();
    let (port, admin_port) = (reserve(), reserve());
    let conf = dir.join("proxy.toml");
    std::fs::write(&conf, canopy_config(dir, port.port(), admin_port.port(), up.addrs)).unwrap();
    let url = format!("http://{}/products", port.addr());
    let admin = admin_port.addr();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_canopy"));
    cmd.arg("serve").arg("-c").arg(&conf);
    port.release();
    admin_port.release();
    let mut p = Proc::spawn("canopy", &mut cmd, &dir.join("canopy.log"));
    wait_ready(&mut p, &url, NAMES[0]).await;
    // Idle: started, both releases registered, one request served; nothing else.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_rss_kb = rss_kb(p.pid(), "VmRSS:");
    let state_file = Some(dir.join("state.json"));
    Running { name: "canopy", proc_: p, url, control: Control::Canopy { admin }, idle_rss_kb, state_file, _tmp: tmp }
}

async fn start_nginx(up: &Upstreams) -> Running {
    let tmp = tempfile::Builder::new().prefix("nginx-cutover-").tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let port = reserve();
    std::fs::write(dir.join("nginx.conf"), nginx_config(&dir, port.port(), up.addrs[0])).unwrap();
    let url = format!("http://{}/products", port.addr());
    let control = Control::Nginx { dir: dir.clone(), addrs: up.addrs, port: port.port() };
    port.release();
    let mut p = Proc::spawn("nginx", &mut nginx_command(&dir), &dir.join("stderr.log"));
    wait_ready(&mut p, &url, NAMES[0]).await;
    Running { name: "nginx", proc_: p, url, control, idle_rss_kb: None, state_file: None, _tmp: tmp }
}

async fn start_haproxy(up: &Upstreams) -> Running {
    let tmp = tempfile::Builder::new().prefix("haproxy-cutover-").tempdir().unwrap();
    let dir = tmp.path();
    let port = reserve();
    let sock = dir.join("admin.sock");
    let servers =
        NAMES.iter().zip(up.addrs).map(|(n, addr)| HaproxyServer { name: n.to_string(), addr, enabled: *n == NAMES[0] }).collect();
    let stats_socket = Some(format!("{} level admin", sock.display()));
    let cfg = HaproxyBench { port: port.port(), threads: 2, servers, stats_socket, frontend_lines: String::new() }.cfg();
    std::fs::write(dir.join("haproxy.cfg"), cfg).unwrap();
    let url = format!("http://{}/products", port.addr());
    let mut cmd = Command::new("/usr/sbin/haproxy");
    cmd.arg("-db").arg("-f").arg(dir.join("haproxy.cfg"));
    port.release();
    let mut p = Proc::spawn("haproxy", &mut cmd, &dir.join("haproxy.log"));
    wait_ready(&mut p, &url, NAMES[0]).await;
    Running { name: "haproxy", proc_: p, url, control: Control::Haproxy { sock }, idle_rss_kb: None, state_file: None, _tmp: tmp }
}

/// canopy's own account of a flip (from the reply), ms.
#[derive(Clone, Copy)]
struct ServerMs {
    /// Validation + durable write + flip.
    total: f64,
    /// Of which checks run by the call.
    validation: f64,
    /// Of which the durable state write.
    persist: f64,
}

/// Performs one flip to release `to`; Ok(canopy's own timings).
async fn flip(control: &Control, admin_http: &reqwest::Client, kind: Kind, to: u8) -> Result<Option<ServerMs>, String> {
    let name = NAMES[to as usize];
    match control {
        Control::Canopy { admin } => {
            let req = match kind {
                Kind::Switch => admin_http.post(format!("http://{admin}/switch")).json(&serde_json::json!({ "release": name })),
                Kind::Rollback => admin_http.post(format!("http://{admin}/rollback")),
            };
            let r = req.send().await.map_err(|e| e.to_string())?;
            let status = r.status();
            let body: Value = r.json().await.map_err(|e| e.to_string())?;
            if status != 200 || body["live"] != name {
                return Err(format!("{status}: {body}"));
            }
            let field = |k: &str| body[k].as_f64().ok_or_else(|| format!("no `{k}` in {body}"));
            Ok(Some(ServerMs { total: field("duration_ms")?, validation: field("validation_ms")?, persist: field("persist_ms")? }))
        }
        Control::Nginx { dir, addrs, port } => {
            let conf = dir.join("nginx.conf");
            let next = dir.join("nginx.conf.next");
            tokio::fs::write(&next, nginx_config(dir, *port, addrs[to as usize])).await.map_err(|e| e.to_string())?;
            tokio::fs::rename(&next, &conf).await.map_err(|e| e.to_string())?;
            let out = tokio::process::Command::from(nginx_command(dir)).args(["-s", "reload"]).output().await.map_err(|e| e.to_string())?;
            if !out.status.success() {
                return Err(format!("nginx -s reload: {}: {}", out.status, String::from_utf8_lossy(&out.stderr)));
            }
            Ok(None)
        }
        Control::Haproxy { sock } => {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let from = NAMES[1 - to as usize];
            let line = format!("set server be/{name} state ready; set server be/{from} state maint\n");
            let mut s = tokio::net::UnixStream::connect(sock).await.map_err(|e| e.to_string())?;
            s.write_all(line.as_bytes()).await.map_err(|e| e.to_string())?;
            let mut out = String::new();
            s.read_to_string(&mut out).await.map_err(|e| e.to_string())?;
            if !out.trim().is_empty() {
                return Err(format!("haproxy: {}", out.trim()));
            }
            Ok(None)
        }
    }
}

// ------------------------------------------------------------------ one run

struct Plan {
    pairs: usize,
    pause: Duration,
}

struct Outcome {
    name: &'static str,
    reqs: Vec<Req>,
    failures: Vec<Failure>,
    flips: Vec<Flip>,
    elapsed: Duration,
    idle_rss_kb: Option<u64>,
    rss_after_kb: Option<u64>,
    began: Instant,
    /// canopy: mean size of a journal entry (what each flip appends and flushes).
    entry_bytes: Option<u64>,
    /// canopy: how its admin thread was scheduled during the run.
    admin_sched: Option<String>,
    /// canopy: flips timed with no client load.
    unloaded: Vec<Flip>,
}

async fn client_task(url: String, stop: Arc<AtomicBool>, check_header: bool) -> (Vec<Req>, Vec<Failure>) {
    let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(5)).build().unwrap();
    let mut reqs = Vec::with_capacity(1 << 16);
    let mut failures = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let start = Instant::now();
        let result = async {
            let r = http.get(&url).send().await.map_err(|e| format!("{e:?}"))?;
            let status = r.status();
            let header = r.headers().get("x-canopy-release").and_then(|v| v.to_str().ok()).map(str::to_string);
            let body = r.bytes().await.map_err(|e| format!("body: {e:?}"))?;
            if status != 200 {
                return Err(format!("status {status}: {}", String::from_utf8_lossy(&body)));
            }
            let v: Value = serde_json::from_slice(&body).map_err(|e| format!("body not JSON: {e}"))?;
            let rel = v["release"].as_str().and_then(release_id).ok_or_else(|| format!("no release in {v}"))?;
            if check_header && header.as_deref() != Some(NAMES[rel as usize]) {
                return Err(format!("x-canopy-release {header:?} but body says {}", NAMES[rel as usize]));
            }
            Ok(rel)
        }
        .await;
        let end = Instant::now();
        match result {
            Ok(rel) => reqs.push(Req { start, end, release: Some(rel) }),
            Err(what) => {
                reqs.push(Req { start, end, release: None });
                failures.push(Failure { at: end, what });
            }
        }
    }
    (reqs, failures)
}

/// How the thread making the control calls was scheduled (first run's answer).
static CALLER_SCHED: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Flips `pairs` times blue -> green -> blue, `pause` apart, after and before
/// `settle`. Runs on the calling thread with its own runtime, so that a busy
/// client runtime does not delay the control calls being timed, and (when
/// permitted) at the priority canopy gives its admin thread, for every proxy
/// alike: otherwise this caller's own wake-ups behind the load generator
/// would be most of the measured tail.
fn run_flips(control: &Control, pairs: usize, pause: Duration, settle: Duration) -> Vec<Flip> {
    if let Some(got) = canopy_admin::prioritise_current_thread(canopy_admin::AdminPriority::default()) {
        let _ = CALLER_SCHED.set(format!("{got:?}"));
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let admin_http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build().unwrap();
        tokio::time::sleep(settle).await;
        let mut flips = Vec::with_capacity(pairs * 2);
        let mut live = 0u8;
        for i in 0..pairs * 2 {
            let (kind, to) = if i % 2 == 0 { (Kind::Switch, 1) } else { (Kind::Rollback, 0) };
            let sent = Instant::now();
            let r = flip(control, &admin_http, kind, to).await;
            let acked = Instant::now();
            let ok = r.is_ok();
            if ok {
                live = to;
            }
            flips.push(Flip { kind, to: live, sent, acked, ok, server_ms: r.as_ref().ok().copied().flatten(), error: r.err() });
            tokio::time::sleep(pause).await;
        }
        tokio::time::sleep(settle).await;
        flips
    })
}

async fn measure(mut p: Running, plan: &Plan) -> Outcome {
    let stop = Arc::new(AtomicBool::new(false));
    let began = Instant::now();
    let clients: Vec<_> = (0..CLIENTS).map(|_| tokio::spawn(client_task(p.url.clone(), stop.clone(), p.name == "canopy"))).collect();

    let control = std::mem::replace(&mut p.control, Control::Haproxy { sock: PathBuf::new() });
    let (pairs, pause) = (plan.pairs, plan.pause);
    let flipper = std::thread::spawn(move || run_flips(&control, pairs, pause, SETTLE));
    let flips = tokio::task::spawn_blocking(move || flipper.join().unwrap()).await.unwrap();
    stop.store(true, Ordering::Relaxed);
    let mut reqs = Vec::new();
    let mut failures = Vec::new();
    for c in clients {
        let (r, f) = c.await.unwrap();
        reqs.extend(r);
        failures.extend(f);
    }
    let elapsed = began.elapsed();
    let rss_after_kb = rss_kb(p.proc_.pid(), "VmRSS:");
    if let Some(st) = p.proc_.exited() {
        eprintln!("warning: {} exited during the run with {st}", p.name);
    }
    let entry_bytes = p.state_file.as_ref().and_then(|f| {
        let journal = std::fs::read(canopy_admin::journal_path(f)).ok()?;
        let used = journal.iter().position(|&b| b == 0).unwrap_or(journal.len()); // then preallocated zeros
        let entries = journal[..used].iter().filter(|&&b| b == b'\n').count() as u64;
        (entries > 0).then(|| used as u64 / entries)
    });
    let admin_sched = if p.name == "canopy" { thread_sched(p.proc_.pid(), "canopy admin") } else { None };
    Outcome {
        name: p.name,
        reqs,
        failures,
        flips,
        elapsed,
        idle_rss_kb: p.idle_rss_kb,
        rss_after_kb,
        began,
        entry_bytes,
        admin_sched,
        unloaded: Vec::new(),
    }
}

// ------------------------------------------------------------------ analysis

struct Stats {
    requests: usize,
    rps: f64,
    failed: usize,
    flips_ok: usize,
    flips_failed: usize,
    old_after_return: usize,
    /// Latest time after a switch call returned at which a request was sent that the old release answered.
    old_window_max: Option<Duration>,
    /// A few of those requests, described.
    examples: Vec<String>,
    /// Per flip: call start -> first new-release answer (to a request sent after the call started).
    to_first_new: Vec<Duration>,
    /// Flips after which no new-release answer came before the next flip.
    never_new: usize,
    switch: Vec<Duration>,
    rollback: Vec<Duration>,
    switch_server: Vec<Duration>,
    rollback_server: Vec<Duration>,
    switch_validation: Vec<Duration>,
    rollback_validation: Vec<Duration>,
    switch_persist: Vec<Duration>,
    rollback_persist: Vec<Duration>,
    /// Per flip: call latency minus canopy's own timing (HTTP, scheduling, reply).
    outside: Vec<Duration>,
    unloaded_switch: Vec<Duration>,
    unloaded_rollback: Vec<Duration>,
}

fn analyse(o: &Outcome) -> Stats {
    let mut reqs = o.reqs.clone();
    reqs.sort_by_key(|r| r.start);
    let mut old_after_return = 0;
    let mut old_window_max: Option<Duration> = None;
    let mut to_first_new = Vec::new();
    let mut never_new = 0;
    let mut examples = Vec::new();
    let ok_flips: Vec<&Flip> = o.flips.iter().filter(|f| f.ok).collect();
    for (k, f) in ok_flips.iter().enumerate() {
        let next_sent = ok_flips.get(k + 1).map(|n| n.sent);
        let lo = reqs.partition_point(|r| r.start < f.sent);
        let hi = next_sent.map_or(reqs.len(), |t| reqs.partition_point(|r| r.start < t));
        let window = &reqs[lo..hi];
        // first new-release answer to a request sent after the call started
        match window.iter().filter(|r| r.release == Some(f.to)).map(|r| r.end).min() {
            Some(end) => to_first_new.push(end - f.sent),
            None => never_new += 1,
        }
        // Requests sent after the call returned must be answered by the new
        // release, unless they were still in flight when a later flip started
        // (then that flip's release is right too).
        for r in window.iter().filter(|r| r.start >= f.acked) {
            let Some(rel) = r.release else { continue };
            let later_ok = ok_flips[k + 1..].iter().take_while(|n| n.sent < r.end).any(|n| n.to == rel);
            if rel != f.to && !later_ok {
                old_after_return += 1;
                let w = r.start - f.acked;
                old_window_max = Some(old_window_max.map_or(w, |m| m.max(w)));
                if examples.len() < 5 {
                    examples.push(format!(
                        "sent {:.2} ms after flip {} returned ({:.2} ms call), answered by {} in {:.2} ms",
                        w.as_secs_f64() * 1e3,
                        k,
                        (f.acked - f.sent).as_secs_f64() * 1e3,
                        NAMES[rel as usize],
                        (r.end - r.start).as_secs_f64() * 1e3,
                    ));
                }
            }
        }
    }
    let lat_of = |flips: &[Flip], kind: Kind| -> Vec<Duration> {
        flips.iter().filter(|f| f.ok && f.kind == kind).map(|f| f.acked - f.sent).collect()
    };
    let lat = |kind: Kind| lat_of(&o.flips, kind);
    let outside = o
        .flips
        .iter()
        .filter_map(|f| f.server_ms.map(|s| (f.acked - f.sent).saturating_sub(Duration::from_secs_f64(s.total / 1e3))))
        .collect();
    let server = |kind: Kind, part: fn(&ServerMs) -> f64| -> Vec<Duration> {
        o.flips
            .iter()
            .filter(|f| f.kind == kind)
            .filter_map(|f| f.server_ms.as_ref().map(part))
            .map(|ms| Duration::from_secs_f64(ms / 1e3))
            .collect()
    };
    Stats {
        requests: o.reqs.len(),
        rps: o.reqs.len() as f64 / o.elapsed.as_secs_f64(),
        failed: o.failures.len(),
        flips_ok: ok_flips.len(),
        flips_failed: o.flips.len() - ok_flips.len(),
        old_after_return,
        old_window_max,
        examples,
        to_first_new,
        never_new,
        switch: lat(Kind::Switch),
        rollback: lat(Kind::Rollback),
        switch_server: server(Kind::Switch, |s| s.total),
        rollback_server: server(Kind::Rollback, |s| s.total),
        switch_validation: server(Kind::Switch, |s| s.validation),
        rollback_validation: server(Kind::Rollback, |s| s.validation),
        switch_persist: server(Kind::Switch, |s| s.persist),
        rollback_persist: server(Kind::Rollback, |s| s.persist),
        outside,
        unloaded_switch: lat_of(&o.unloaded, Kind::Switch),
        unloaded_rollback: lat_of(&o.unloaded, Kind::Rollback),
    }
}

fn p50_99(v: &[Duration]) -> String {
    if v.is_empty() {
        "-".into()
    } else {
        format!("{}/{}", ms(pct(v, 0.5)), ms(pct(v, 0.99)))
    }
}

fn mb(kb: Option<u64>) -> String {
    kb.map_or("-".into(), |k| format!("{:.1}", k as f64 / 1024.0))
}

// ------------------------------------------------------------------ main

/// What canopy's durable write costs on this disk by itself: write a
/// journal entry of `bytes` into preallocated space and fdatasync (as
/// admin/src/persist.rs does per flip).
fn persist_probe(bytes: usize, rounds: usize, gap: Duration) -> Vec<Duration> {
    use std::io::Write;
    use std::os::unix::fs::FileExt;
    let tmp = tempfile::Builder::new().prefix("canopy-cutover-fsync-").tempdir().unwrap();
    let mut f = std::fs::File::create(tmp.path().join("journal")).unwrap();
    f.write_all(&vec![0; bytes.max(1) * rounds]).unwrap();
    f.sync_all().unwrap();
    let mut data = vec![b'x'; bytes.max(1)];
    *data.last_mut().unwrap() = b'\n';
    (0..rounds)
        .map(|i| {
            let t = Instant::now();
            f.write_all_at(&data, (i * data.len()) as u64).unwrap();
            f.sync_data().unwrap();
            let took = t.elapsed();
            std::thread::sleep(gap);
            took
        })
        .collect()
}

fn main() {
    let pairs_override: Option<usize> = std::env::var("CUTOVER_FLIPS").ok().and_then(|v| v.parse().ok());
    let only_canopy = std::env::var("CUTOVER_ONLY").is_ok_and(|v| v == "canopy");
    let plan = |pairs: usize, pause_ms: u64| Plan { pairs: pairs_override.unwrap_or(pairs), pause: Duration::from_millis(pause_ms) };
    let machine = Machine::now();
    let Machine { busy, loadavg, cpus } = &machine;
    let cpus = *cpus;

    // Clients and upstreams share one runtime with a worker per CPU.
    let rt = machine.runtime();
    let outcomes = rt.block_on(async {
        let blue = upstream::spawn("blue", "storefront").await;
        let green = upstream::spawn("green", "storefront").await;
        let up = Upstreams { addrs: [blue.addr, green.addr] };
        eprintln!("upstreams: blue {} green {}", up.addrs[0], up.addrs[1]);

        let mut outcomes = Vec::new();
        eprintln!("== canopy ({})", env!("CARGO_BIN_EXE_canopy"));
        let mut c = start_canopy(&up).await;
        // The same flips with no client load, for comparison (ends on blue, as it began).
        let control = std::mem::replace(&mut c.control, Control::Haproxy { sock: PathBuf::new() });
        let (control, unloaded) = tokio::task::spawn_blocking(move || {
            let flips = run_flips(&control, UNLOADED_PAIRS, Duration::from_millis(20), Duration::ZERO);
            (control, flips)
        })
        .await
        .unwrap();
        c.control = control;
        let mut o = measure(c, &plan(200, 20)).await;
        o.unloaded = unloaded;
        outcomes.push(o);
        let bytes = outcomes[0].entry_bytes.unwrap_or(1024) as usize;
        let probe_idle = tokio::task::spawn_blocking(move || persist_probe(bytes, 50, Duration::ZERO)).await.unwrap();
        let mut probe_loaded = Vec::new();
        if only_canopy {
            eprintln!("(CUTOVER_ONLY=canopy: nginx and HAProxy skipped)");
        } else if Path::new("/usr/sbin/nginx").exists() {
            eprintln!("== nginx");
            let n = start_nginx(&up).await;
            outcomes.push(measure(n, &plan(30, 250)).await);
        } else {
            eprintln!("(nginx not installed: skipped)");
        }
        if !only_canopy && Path::new("/usr/sbin/haproxy").exists() {
            eprintln!("== haproxy");
            let h = start_haproxy(&up).await;
            // the same durable write under the same client load (HAProxy itself writes nothing)
            let probe = std::thread::spawn(move || {
                std::thread::sleep(SETTLE);
                persist_probe(bytes, 50, Duration::from_millis(100))
            });
            outcomes.push(measure(h, &plan(30, 100)).await);
            probe_loaded = tokio::task::spawn_blocking(move || probe.join().unwrap()).await.unwrap();
        } else if !only_canopy {
            eprintln!("(haproxy not installed: skipped)");
        }
        (outcomes, [probe_idle, probe_loaded])
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    let (outcomes, probe) = outcomes;
    report(&outcomes, &probe, cpus, busy, loadavg).exit();
}

/// Prints the table and canopy's goals; returns the goals' verdict.
fn report(outcomes: &[Outcome], probe: &[Vec<Duration>; 2], cpus: usize, busy: &str, loadavg: &str) -> Goals {
    let stats: Vec<Stats> = outcomes.iter().map(analyse).collect();
    let mut out = String::new();
    let w = |out: &mut String, label: &str, vals: Vec<String>| {
        let _ = write!(out, "{label:<44}");
        for v in vals {
            let _ = write!(out, "{v:>17}");
        }
        out.push('\n');
    };
    let col = |f: &dyn Fn(&Outcome, &Stats) -> String| -> Vec<String> { outcomes.iter().zip(&stats).map(|(o, s)| f(o, s)).collect() };
    let _ = writeln!(
        out,
        "\ncutover: {CLIENTS} keep-alive HTTP/1.1 clients, GET /products, releases blue/green on loopback, {cpus} CPUs \
         (busy before start: {busy}, load average {loadavg})"
    );
    let _ = writeln!(
        out,
        "switch = blue->green (canopy: POST /switch, validated), rollback = green->blue (canopy: POST /rollback; \
         nginx: rewrite + nginx -s reload; haproxy: runtime API)\n"
    );
    w(&mut out, "", col(&|o, _| o.name.to_string()));
    w(&mut out, "flips (switch + rollback) ok / failed", col(&|_, s| format!("{} / {}", s.flips_ok, s.flips_failed)));
    w(&mut out, "requests (req/s)", col(&|_, s| format!("{} ({:.0})", s.requests, s.rps)));
    w(&mut out, "failed requests", col(&|_, s| s.failed.to_string()));
    w(&mut out, "old release after switch call returned", col(&|_, s| s.old_after_return.to_string()));
    w(&mut out, "  ... latest such request sent after return, ms", col(&|_, s| ms(s.old_window_max)));
    w(&mut out, "call start -> first new answer p50, ms", col(&|_, s| ms(pct(&s.to_first_new, 0.5))));
    w(&mut out, "call start -> first new answer p99, ms", col(&|_, s| ms(pct(&s.to_first_new, 0.99))));
    w(&mut out, "call start -> first new answer max, ms", col(&|_, s| ms(pct(&s.to_first_new, 1.0))));
    w(&mut out, "flips with no new answer before next flip", col(&|_, s| s.never_new.to_string()));
    w(&mut out, "switch call p50, ms", col(&|_, s| ms(pct(&s.switch, 0.5))));
    w(&mut out, "switch call p99, ms", col(&|_, s| ms(pct(&s.switch, 0.99))));
    w(&mut out, "switch call max, ms", col(&|_, s| ms(pct(&s.switch, 1.0))));
    w(&mut out, "  canopy's own timing p50/p99, ms", col(&|_, s| p50_99(&s.switch_server)));
    w(&mut out, "    of which validation p50/p99, ms", col(&|_, s| p50_99(&s.switch_validation)));
    w(&mut out, "    of which durable write p50/p99, ms", col(&|_, s| p50_99(&s.switch_persist)));
    w(&mut out, "rollback call p50, ms", col(&|_, s| ms(pct(&s.rollback, 0.5))));
    w(&mut out, "rollback call p99, ms", col(&|_, s| ms(pct(&s.rollback, 0.99))));
    w(&mut out, "rollback call max, ms", col(&|_, s| ms(pct(&s.rollback, 1.0))));
    w(&mut out, "  canopy's own timing p50/p99, ms", col(&|_, s| p50_99(&s.rollback_server)));
    w(&mut out, "    of which validation p50/p99, ms", col(&|_, s| p50_99(&s.rollback_validation)));
    w(&mut out, "    of which durable write p50/p99, ms", col(&|_, s| p50_99(&s.rollback_persist)));
    w(&mut out, "call time outside canopy's timing p50/p99, ms", col(&|_, s| p50_99(&s.outside)));
    w(&mut out, "no client load: switch call p50/p99, ms", col(&|_, s| p50_99(&s.unloaded_switch)));
    w(&mut out, "no client load: rollback call p50/p99, ms", col(&|_, s| p50_99(&s.unloaded_rollback)));
    w(&mut out, "idle RSS after start-up, MB", col(&|o, _| mb(o.idle_rss_kb)));
    w(&mut out, "RSS after the run, MB", col(&|o, _| if o.name == "canopy" { mb(o.rss_after_kb) } else { "-".into() }));
    w(&mut out, "admin thread scheduling", col(&|o, _| o.admin_sched.clone().unwrap_or_else(|| "-".into())));
    w(&mut out, "bench thread making the control calls", col(&|_, _| CALLER_SCHED.get().cloned().unwrap_or_else(|| "-".into())));
    if let Some(bytes) = outcomes.iter().find_map(|o| o.entry_bytes) {
        let _ = writeln!(
            out,
            "\ncanopy's journal entry per flip: {bytes} bytes. The same durable write (write into preallocated space, fdatasync) \
             by itself on this disk, p50/p99: {} ms idle ({} rounds), {} ms under the client load of the HAProxy run ({} rounds)",
            p50_99(&probe[0]),
            probe[0].len(),
            p50_99(&probe[1]),
            probe[1].len(),
        );
    }

    // failures and refused flips, briefly
    for (o, s) in outcomes.iter().zip(&stats) {
        if !s.examples.is_empty() {
            let _ = writeln!(
                out,
                "\n{}: {} requests sent after a flip returned were answered by the old release, e.g.:",
                o.name, s.old_after_return
            );
            for e in &s.examples {
                let _ = writeln!(out, "  {e}");
            }
        }
        let flips_failed: Vec<&Flip> = o.flips.iter().filter(|f| !f.ok).collect();
        if !flips_failed.is_empty() {
            let _ = writeln!(
                out,
                "\n{}: {} flip calls failed, first: {}",
                o.name,
                flips_failed.len(),
                flips_failed[0].error.as_deref().unwrap_or("?")
            );
        }
        if o.failures.is_empty() {
            continue;
        }
        let _ = writeln!(out, "\n{}: {} failed requests (first 5; time after the latest flip call started):", o.name, o.failures.len());
        for f in o.failures.iter().take(5) {
            let after = o.flips.iter().rev().find(|fl| fl.sent <= f.at).map_or_else(
                || format!("{:.1} ms into the run, before any flip", (f.at - o.began).as_secs_f64() * 1e3),
                |fl| format!("{:.1} ms after flip started", (f.at - fl.sent).as_secs_f64() * 1e3),
            );
            let what: String = f.what.chars().take(200).collect();
            let _ = writeln!(out, "  {after}: {what}");
        }
    }

    // goals from issue 5, for canopy
    let mut goals = Goals::default();
    if let Some((o, s)) = outcomes.iter().zip(&stats).find(|(o, _)| o.name == "canopy") {
        let _ = writeln!(out, "\ncanopy goals (issue 5):");
        let mut goal = |what: &str, measured: String, pass: bool| goals.check(&mut out, 42, what, measured, pass);
        let sw99 = pct(&s.switch, 0.99);
        let rb99 = pct(&s.rollback, 0.99);
        goal("switch call p99 <= 25 ms (validated)", format!("{} ms", ms(sw99)), sw99.is_some_and(|d| d <= Duration::from_millis(25)));
        goal("rollback call p99 <= 5 ms", format!("{} ms", ms(rb99)), rb99.is_some_and(|d| d <= Duration::from_millis(5)));
        goal("zero failed requests", s.failed.to_string(), s.failed == 0);
        goal("zero old-release answers after return", s.old_after_return.to_string(), s.old_after_return == 0);
        goal("idle RSS <= 30 MB", format!("{} MB", mb(o.idle_rss_kb)), o.idle_rss_kb.is_some_and(|k| k <= 30 * 1024));
        goal("all flips accepted", format!("{} / {}", s.flips_ok, s.flips_ok + s.flips_failed), s.flips_failed == 0);
    }
    print!("{out}");
    goals
}
