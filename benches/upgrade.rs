//! Upgrade benchmark: what happens to traffic while the proxy itself is
//! replaced under load, for canopy (`serve --upgrade`), canopy restarted the
//! naive way (SIGTERM, then `canopy serve` again at once), HAProxy's
//! seamless reload (master-worker, `expose-fd listeners`) and nginx
//! (`nginx -s reload`), in one run on one machine.
//!
//!     cargo bench --bench upgrade
//!
//! `cargo bench` builds `target/release/canopy` itself (benches get the
//! package's binaries, `CARGO_BIN_EXE_canopy`), in the release profile.
//! nginx (`/usr/sbin/nginx`) and HAProxy (`/usr/sbin/haproxy`) are skipped
//! with a note when they are not installed.
//!
//! The upstream is the test kit's (hyper, answering JSON that names the
//! release) in this process on 127.0.0.1:0. For each proxy in
//! turn: [`KEEPALIVE_CLIENTS`] client tasks (each a reqwest client: one
//! keep-alive HTTP/1.1 connection, a new one when the proxy closes it) and
//! [`FRESH_CLIENTS`] tasks opening a new TCP connection for every request
//! (`Connection: close`, timed from `connect` to the first response byte)
//! send GET /products for the whole run, while a control thread replaces the
//! proxy [`UPGRADES`] times, one after another, waiting until the old
//! generation has exited and then [`PAUSE`] between them:
//!
//! - canopy `--upgrade`: start `canopy serve -c proxy.toml --upgrade` beside
//!   the running one (it takes over the listening sockets and the state);
//! - canopy restart: SIGTERM to the running one and `canopy serve` at once,
//!   started again every [`RESTART_RETRY`] while it exits (the address is in
//!   use until the old one has drained), as a supervisor restarting it would;
//! - HAProxy: `haproxy -W -S master.sock` with `stats socket ... expose-fd
//!   listeners`; `reload` on the master CLI (the master re-executes itself,
//!   and the new worker takes the listening sockets from the old one);
//! - nginx: `nginx -s reload` with the config unchanged (new workers inherit
//!   the master's listening sockets; the old ones finish and exit).
//!
//! Printed per proxy: failed requests by kind (connection refused, other
//! transport errors, non-200, each for keep-alive and new connections), and
//! the "accept gap": for every new-connection request started during an
//! upgrade, how long from its start until some new-connection request
//! started at or after it got its first response byte (so a client that
//! retried at once after a refusal is counted until it was served); the
//! longest per upgrade, against the same measure outside upgrades in the
//! same run. Also the upgrade's own timings: command returned, new
//! generation holding the listening socket, old generation exited.
//!
//! `UPGRADES=N` overrides the number of upgrades per proxy; `UPGRADE_ONLY=canopy`
//! runs only the two canopy variants.
//!
//! Bounded: every client stops after [`RUN_CAP`] or [`MAX_REQUESTS`], an
//! upgrade that has not completed after [`UPGRADE_TIMEOUT`] ends that
//! proxy's run, and a client waits [`RETRY_PAUSE`] after a failed request
//! (so failure counts scale with it; the accept gap does not). Everything
//! binds loopback only; every child process is stopped on drop. The process
//! exits 1 when a goal fails.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use canopy_testkit::bench::{ms, pct, wait_ready, Goals, Machine};
use canopy_testkit::configs::{nginx_command, CanopyBench, HaproxyBench, HaproxyServer, NginxBench};
use canopy_testkit::process::{alive, signal};
use canopy_testkit::{reserve, upstream, Proc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Client tasks on keep-alive connections.
const KEEPALIVE_CLIENTS: usize = 6;
/// Client tasks opening a new connection for every request.
const FRESH_CLIENTS: usize = 2;
/// Upgrades per proxy (`UPGRADES=N` overrides).
const UPGRADES: usize = 10;
/// Traffic before the first upgrade, and after each one once the old generation has exited.
const PAUSE: Duration = Duration::from_secs(1);
/// An upgrade not complete (new generation serving, old one exited) by then has failed.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(15);
/// Naive restart: how soon a `canopy serve` that exited is started again.
const RESTART_RETRY: Duration = Duration::from_millis(100);
/// No client runs longer than this.
const RUN_CAP: Duration = Duration::from_secs(120);
/// Nor sends more requests than this.
const MAX_REQUESTS: usize = 1_000_000;
/// A request not answered within this long has failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// A client's pause after a failed request.
const RETRY_PAUSE: Duration = Duration::from_millis(1);
/// After an upgrade's last event, requests started this much later still count as "during" it.
const WINDOW_MARGIN: Duration = Duration::from_millis(100);

// ------------------------------------------------------------------ records

#[derive(Clone, Copy, PartialEq, Eq)]
enum Fail {
    /// `connect` refused: nothing listened.
    Refused,
    /// Reset, closed early, timed out, or an unreadable answer.
    Transport,
    /// Answered, but not 200.
    Status,
}

/// One client request.
#[derive(Clone, Copy)]
struct Req {
    /// On a new connection of its own.
    fresh: bool,
    start: Instant,
    /// When the first response byte arrived (new connections only).
    first_byte: Option<Instant>,
    fail: Option<Fail>,
}

/// One failed request, described.
struct FailNote {
    at: Instant,
    fresh: bool,
    what: String,
}

/// One upgrade as the control thread saw it (durations from its start).
#[derive(Default)]
struct Upgrade {
    start: Option<Instant>,
    /// The command or call returned (HAProxy's master CLI, `nginx -s reload`).
    returned: Option<Duration>,
    /// The new generation holds the listening socket (naive restart: the new process answers on the port).
    serving: Option<Duration>,
    /// The old generation has exited.
    old_gone: Option<Duration>,
    /// Naive restart: `canopy serve` attempts that exited before serving.
    failed_starts: usize,
    error: Option<String>,
}

// ------------------------------------------------------------------ /proc

/// Whether `pid` has socket `inode` among its fds.
fn holds(pid: u32, inode: u64) -> bool {
    let want = format!("socket:[{inode}]");
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.as_os_str() == want.as_str()))
}

/// The inode of the socket listening on 127.0.0.1:`port` (this network namespace).
fn listening_inode(port: u16) -> Option<u64> {
    let local = format!("0100007F:{port:04X}");
    let text = std::fs::read_to_string("/proc/self/net/tcp").ok()?;
    text.lines().skip(1).find_map(|line| {
        // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() > 9 && f[1] == local && f[3] == "0A").then(|| f[9].parse().ok()).flatten()
    })
}

/// Pids of `p`'s children that are alive.
fn live_children(p: &Proc) -> Vec<u32> {
    p.children().into_iter().filter(|&k| alive(k)).collect()
}

/// The last lines of a log, for error messages.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(3)..].join(" | ")
}

// ------------------------------------------------------------------ proxies

#[derive(Clone, Copy, PartialEq, Eq)]
enum How {
    CanopyUpgrade,
    CanopyRestart,
    Haproxy,
    Nginx,
}

/// A running proxy under test.
struct Running {
    name: &'static str,
    how: How,
    proc_: Proc,
    port: u16,
    dir: PathBuf,
    /// Processes of earlier generations not yet exited.
    old: Vec<Proc>,
    _tmp: tempfile::TempDir,
}

fn canopy_cmd(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_canopy"));
    c.arg("serve").arg("-c").arg(dir.join("proxy.toml"));
    c
}

fn tempdir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(&format!("{name}-upgrade-")).tempdir().unwrap()
}

fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Proc {
    Proc::spawn(name, cmd, log)
}

async fn start_canopy(how: How, name: &'static str, addrs: [SocketAddr; 2]) -> Running {
    let tmp = tempdir("canopy");
    let dir = tmp.path().to_path_buf();
    let (port, admin_port) = (reserve(), reserve());
    // the default grace: draining ends when the last connection closes
    let toml = CanopyBench {
        port: port.port(),
        admin_port: admin_port.port(),
        state_file: dir.join("state.json"),
        releases: vec![("blue".into(), addrs[0]), ("green".into(), addrs[1])],
        proxy_lines: "threads = 2\nshutdown-grace = \"30s\"".into(),
        health_check: true,
    }
    .toml();
    std::fs::write(dir.join("proxy.toml"), toml).unwrap();
    let url = format!("http://{}/products", port.addr());
    let port = port.release();
    admin_port.release();
    let mut p = spawn("canopy", &mut canopy_cmd(&dir), &dir.join("canopy-0.log"));
    wait_ready(&mut p, &url, "blue").await;
    Running { name, how, proc_: p, port, dir, old: Vec::new(), _tmp: tmp }
}

async fn start_haproxy(addrs: [SocketAddr; 2]) -> Running {
    let tmp = tempdir("haproxy");
    let dir = tmp.path().to_path_buf();
    let port = reserve();
    let servers = vec![
        HaproxyServer { name: "blue".into(), addr: addrs[0], enabled: true },
        HaproxyServer { name: "green".into(), addr: addrs[1], enabled: false },
    ];
    let stats_socket = Some(format!("{} level admin expose-fd listeners", dir.join("admin.sock").display()));
    let cfg = HaproxyBench { port: port.port(), threads: 2, servers, stats_socket, frontend_lines: String::new() }.cfg();
    std::fs::write(dir.join("haproxy.cfg"), cfg).unwrap();
    let mut cmd = Command::new("/usr/sbin/haproxy");
    cmd.arg("-W").arg("-db").arg("-S").arg(dir.join("master.sock")).arg("-f").arg(dir.join("haproxy.cfg"));
    let url = format!("http://{}/products", port.addr());
    let port = port.release();
    let mut p = spawn("haproxy", &mut cmd, &dir.join("haproxy.log"));
    wait_ready(&mut p, &url, "blue").await;
    Running { name: "haproxy", how: How::Haproxy, proc_: p, port, dir, old: Vec::new(), _tmp: tmp }
}

async fn start_nginx(addrs: [SocketAddr; 2]) -> Running {
    let tmp = tempdir("nginx");
    let dir = tmp.path().to_path_buf();
    let port = reserve();
    let conf = NginxBench { dir: dir.clone(), port: port.port(), upstream: addrs[0], workers: 2, server_lines: String::new() }.conf();
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let url = format!("http://{}/products", port.addr());
    let port = port.release();
    let mut p = spawn("nginx", &mut nginx_command(&dir), &dir.join("stderr.log"));
    wait_ready(&mut p, &url, "blue").await;
    Running { name: "nginx", how: How::Nginx, proc_: p, port, dir, old: Vec::new(), _tmp: tmp }
}

/// Polls `done` every 2 ms until it holds or `UPGRADE_TIMEOUT` from `t0` is over.
fn poll_until(t0: Instant, mut done: impl FnMut() -> bool) -> Option<Duration> {
    loop {
        if done() {
            return Some(t0.elapsed());
        }
        if t0.elapsed() > UPGRADE_TIMEOUT {
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Replaces `r`'s running generation with a new one (upgrade number `n`).
async fn upgrade(r: &mut Running, n: usize, inode: u64) -> Upgrade {
    let t0 = Instant::now();
    let mut u = Upgrade { start: Some(t0), ..Upgrade::default() };
    match r.how {
        How::CanopyUpgrade => {
            let log = r.dir.join(format!("canopy-{n}.log"));
            let mut new = spawn("canopy", canopy_cmd(&r.dir).arg("--upgrade"), &log);
            let mut exited = None;
            u.serving = poll_until(t0, || {
                exited = new.exited();
                exited.is_some() || holds(new.pid(), inode)
            });
            if let Some(st) = exited {
                u.error = Some(format!("`serve --upgrade` exited with {st}: {}", tail(&log)));
                return u;
            }
            if u.serving.is_none() {
                u.error = Some(format!("`serve --upgrade` did not take the listening socket: {}", tail(&log)));
                return u;
            }
            let old = std::mem::replace(&mut r.proc_, new);
            r.old.push(old);
        }
        How::CanopyRestart => {
            signal(r.proc_.pid(), "-TERM");
            let old = std::mem::replace(&mut r.proc_, spawn("canopy", &mut canopy_cmd(&r.dir), &r.dir.join(format!("canopy-{n}.log"))));
            r.old.push(old);
            let pid_file = r.dir.join("state.json.pid");
            let addr = SocketAddr::from(([127, 0, 0, 1], r.port));
            loop {
                if let Some(_st) = r.proc_.exited() {
                    // "address in use" while the old one drains: start it again
                    u.failed_starts += 1;
                    if t0.elapsed() > UPGRADE_TIMEOUT {
                        break;
                    }
                    std::thread::sleep(RESTART_RETRY);
                    let log = r.dir.join(format!("canopy-{n}-{}.log", u.failed_starts));
                    r.proc_ = spawn("canopy", &mut canopy_cmd(&r.dir), &log);
                    continue;
                }
                let pid = r.proc_.pid();
                let named = std::fs::read_to_string(&pid_file).is_ok_and(|s| s.trim() == pid.to_string());
                if named && fresh_request(addr).await.is_ok() {
                    u.serving = Some(t0.elapsed());
                    break;
                }
                if t0.elapsed() > UPGRADE_TIMEOUT {
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        How::Haproxy => {
            let before = live_children(&r.proc_);
            let sock = r.dir.join("master.sock");
            let reload = async {
                let mut s = tokio::net::UnixStream::connect(&sock).await?;
                s.write_all(b"reload\n").await?;
                let mut out = String::new();
                s.read_to_string(&mut out).await?;
                Ok::<_, std::io::Error>(out)
            };
            match tokio::time::timeout(UPGRADE_TIMEOUT, reload).await {
                Ok(Ok(_)) => u.returned = Some(t0.elapsed()),
                Ok(Err(e)) => u.error = Some(format!("master CLI reload: {e}")),
                Err(_) => u.error = Some("master CLI reload: no answer".into()),
            }
            let p = &r.proc_;
            u.serving = poll_until(t0, || live_children(p).iter().any(|k| !before.contains(k) && holds(*k, inode)));
            u.old_gone = poll_until(t0, || before.iter().all(|k| !alive(*k)));
        }
        How::Nginx => {
            let before = live_children(&r.proc_);
            let out = tokio::process::Command::from(nginx_command(&r.dir)).args(["-s", "reload"]).output().await;
            match out {
                Ok(o) if o.status.success() => u.returned = Some(t0.elapsed()),
                Ok(o) => u.error = Some(format!("nginx -s reload: {}: {}", o.status, String::from_utf8_lossy(&o.stderr))),
                Err(e) => u.error = Some(format!("nginx -s reload: {e}")),
            }
            let p = &r.proc_;
            u.serving = poll_until(t0, || live_children(p).iter().any(|k| !before.contains(k) && holds(*k, inode)));
            u.old_gone = poll_until(t0, || before.iter().all(|k| !alive(*k)));
        }
    }
    if matches!(r.how, How::CanopyUpgrade | How::CanopyRestart) {
        // the next upgrade finds the new process through the pid file
        let (pid, pid_file) = (r.proc_.pid(), r.dir.join("state.json.pid"));
        let old = &mut r.old;
        u.old_gone = poll_until(t0, || {
            old.retain_mut(|p| p.exited().is_none());
            old.is_empty() && std::fs::read_to_string(&pid_file).is_ok_and(|s| s.trim() == pid.to_string())
        });
    }
    if u.error.is_none() && (u.serving.is_none() || u.old_gone.is_none()) {
        u.error = Some(format!("not complete after {UPGRADE_TIMEOUT:?}"));
    }
    u
}

// ------------------------------------------------------------------ clients

/// GET /products on a new connection (`Connection: close`); Ok(first byte's arrival).
async fn fresh_request(addr: SocketAddr) -> Result<Instant, (Fail, String)> {
    let io = |e: std::io::Error| {
        let kind = if e.kind() == std::io::ErrorKind::ConnectionRefused { Fail::Refused } else { Fail::Transport };
        (kind, e.to_string())
    };
    let mut s = tokio::net::TcpStream::connect(addr).await.map_err(io)?;
    s.set_nodelay(true).map_err(io)?;
    s.write_all(b"GET /products HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").await.map_err(io)?;
    let mut buf = vec![0; 4096];
    let n = s.read(&mut buf).await.map_err(io)?;
    let first = Instant::now();
    if n == 0 {
        return Err((Fail::Transport, "closed before answering".into()));
    }
    buf.truncate(n);
    s.read_to_end(&mut buf).await.map_err(io)?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").ok_or((Fail::Transport, "incomplete head".to_string()))?;
    if !head.starts_with("HTTP/1.1 200 ") {
        return Err((Fail::Status, head.lines().next().unwrap_or("").to_string()));
    }
    let v: serde_json::Value = serde_json::from_str(body).map_err(|e| (Fail::Transport, format!("body: {e}")))?;
    if v["release"] != "blue" {
        return Err((Fail::Transport, format!("answered {v}")));
    }
    Ok(first)
}

/// Whether a reqwest error is a refused connection.
fn refused(e: &reqwest::Error) -> bool {
    let mut src: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = src {
        if s.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused) {
            return true;
        }
        src = s.source();
    }
    false
}

async fn keepalive_once(http: &reqwest::Client, url: &str) -> Result<(), (Fail, String)> {
    let kind = |e: reqwest::Error| (if refused(&e) { Fail::Refused } else { Fail::Transport }, format!("{e:?}"));
    let r = http.get(url).send().await.map_err(kind)?;
    let status = r.status();
    let body = r.bytes().await.map_err(kind)?;
    if status != 200 {
        return Err((Fail::Status, format!("status {status}: {}", String::from_utf8_lossy(&body))));
    }
    Ok(())
}

async fn client_task(addr: SocketAddr, fresh: bool, stop: Arc<AtomicBool>) -> (Vec<Req>, Vec<FailNote>) {
    let http = reqwest::Client::builder().no_proxy().timeout(REQUEST_TIMEOUT).build().unwrap();
    let url = format!("http://{addr}/products");
    let began = Instant::now();
    let (mut reqs, mut notes) = (Vec::with_capacity(1 << 16), Vec::new());
    while !stop.load(Ordering::Relaxed) && began.elapsed() < RUN_CAP && reqs.len() < MAX_REQUESTS {
        let start = Instant::now();
        let result = if fresh {
            match tokio::time::timeout(REQUEST_TIMEOUT, fresh_request(addr)).await {
                Ok(r) => r.map(Some),
                Err(_) => Err((Fail::Transport, "timed out".into())),
            }
        } else {
            keepalive_once(&http, &url).await.map(|()| None)
        };
        match result {
            Ok(first_byte) => reqs.push(Req { fresh, start, first_byte, fail: None }),
            Err((fail, what)) => {
                reqs.push(Req { fresh, start, first_byte: None, fail: Some(fail) });
                notes.push(FailNote { at: Instant::now(), fresh, what });
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
    (reqs, notes)
}

// ------------------------------------------------------------------ one run

struct Outcome {
    name: &'static str,
    reqs: Vec<Req>,
    notes: Vec<FailNote>,
    upgrades: Vec<Upgrade>,
    elapsed: Duration,
}

/// Runs the clients against `r` while it is upgraded `count` times.
async fn measure(mut r: Running, count: usize) -> Outcome {
    let addr = SocketAddr::from(([127, 0, 0, 1], r.port));
    let inode = listening_inode(r.port).expect("the proxy's listening socket in /proc/net/tcp");
    let stop = Arc::new(AtomicBool::new(false));
    let began = Instant::now();
    let clients: Vec<_> =
        (0..KEEPALIVE_CLIENTS + FRESH_CLIENTS).map(|i| tokio::spawn(client_task(addr, i >= KEEPALIVE_CLIENTS, stop.clone()))).collect();
    // the control thread has its own runtime: a busy client runtime must not delay it
    let control = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let upgrades = rt.block_on(async {
            let mut upgrades = Vec::new();
            tokio::time::sleep(PAUSE).await;
            for n in 1..=count {
                let u = upgrade(&mut r, n, inode).await;
                let failed = u.error.is_some();
                upgrades.push(u);
                if failed || began.elapsed() + UPGRADE_TIMEOUT > RUN_CAP {
                    break;
                }
                tokio::time::sleep(PAUSE).await;
            }
            upgrades
        });
        (r, upgrades)
    });
    let (r, upgrades) = tokio::task::spawn_blocking(move || control.join().unwrap()).await.unwrap();
    stop.store(true, Ordering::Relaxed);
    let (mut reqs, mut notes) = (Vec::new(), Vec::new());
    for c in clients {
        let (rq, nt) = c.await.unwrap();
        reqs.extend(rq);
        notes.extend(nt);
    }
    let elapsed = began.elapsed();
    Outcome { name: r.name, reqs, notes, upgrades, elapsed }
}

// ------------------------------------------------------------------ analysis

struct Stats {
    requests: usize,
    rps: f64,
    /// [keep-alive, new connection] x [refused, other transport, non-200].
    failed: [[usize; 3]; 2],
    upgrades_ok: usize,
    upgrades_failed: usize,
    failed_starts: usize,
    /// Per upgrade: the longest wait of a new-connection request started during it.
    gap: Vec<Duration>,
    /// The same wait for every new-connection request started outside upgrades.
    base_wait: Vec<Duration>,
    /// Connect -> first byte of answered new-connection requests, outside and during upgrades.
    ttfb_outside: Vec<Duration>,
    ttfb_during: Vec<Duration>,
    returned: Vec<Duration>,
    serving: Vec<Duration>,
    old_gone: Vec<Duration>,
}

/// [start, end) of each upgrade, as request start times that count as "during" it.
fn windows(o: &Outcome) -> Vec<(Instant, Instant)> {
    let run_end = o.reqs.iter().map(|r| r.start).max().unwrap_or_else(Instant::now);
    let starts: Vec<Instant> = o.upgrades.iter().filter_map(|u| u.start).collect();
    o.upgrades
        .iter()
        .zip(&starts)
        .enumerate()
        .map(|(i, (u, &s))| {
            let next = starts.get(i + 1).copied().unwrap_or(run_end);
            let last = [u.returned, u.serving, u.old_gone].into_iter().flatten().max();
            let end = match (&u.error, last) {
                (None, Some(d)) => (s + d + WINDOW_MARGIN).min(next),
                _ => next,
            };
            (s, end)
        })
        .collect()
}

fn analyse(o: &Outcome) -> Stats {
    let mut failed = [[0; 3]; 2];
    for r in &o.reqs {
        if let Some(f) = r.fail {
            let k = match f {
                Fail::Refused => 0,
                Fail::Transport => 1,
                Fail::Status => 2,
            };
            failed[r.fresh as usize][k] += 1;
        }
    }
    let mut fresh: Vec<Req> = o.reqs.iter().filter(|r| r.fresh).copied().collect();
    fresh.sort_by_key(|r| r.start);
    // wait of request i: from its start to the first byte of the first answered
    // new-connection request started at or after it (itself, if answered)
    let run_end = o.reqs.iter().map(|r| r.start).max().unwrap_or_else(Instant::now);
    let mut next_ok: Vec<Option<Instant>> = vec![None; fresh.len()];
    let mut best: Option<Instant> = None;
    for i in (0..fresh.len()).rev() {
        if let Some(fb) = fresh[i].first_byte {
            best = Some(best.map_or(fb, |b| b.min(fb)));
        }
        next_ok[i] = best;
    }
    let wait = |i: usize| next_ok[i].unwrap_or(run_end).saturating_duration_since(fresh[i].start);
    let wins = windows(o);
    let during = |t: Instant| wins.iter().any(|(s, e)| t >= *s && t < *e);
    let mut gap = Vec::new();
    for (s, e) in &wins {
        let lo = fresh.partition_point(|r| r.start < *s);
        let hi = fresh.partition_point(|r| r.start < *e);
        if let Some(g) = (lo..hi).map(wait).max() {
            gap.push(g);
        }
    }
    let (mut base_wait, mut ttfb_outside, mut ttfb_during) = (Vec::new(), Vec::new(), Vec::new());
    for (i, r) in fresh.iter().enumerate() {
        let inside = during(r.start);
        if !inside {
            base_wait.push(wait(i));
        }
        if let Some(fb) = r.first_byte {
            (if inside { &mut ttfb_during } else { &mut ttfb_outside }).push(fb - r.start);
        }
    }
    let of = |f: fn(&Upgrade) -> Option<Duration>| o.upgrades.iter().filter_map(f).collect::<Vec<_>>();
    let upgrades_failed = o.upgrades.iter().filter(|u| u.error.is_some()).count();
    Stats {
        requests: o.reqs.len(),
        rps: o.reqs.len() as f64 / o.elapsed.as_secs_f64(),
        failed,
        upgrades_ok: o.upgrades.len() - upgrades_failed,
        upgrades_failed,
        failed_starts: o.upgrades.iter().map(|u| u.failed_starts).sum(),
        gap,
        base_wait,
        ttfb_outside,
        ttfb_during,
        returned: of(|u| u.returned),
        serving: of(|u| u.serving),
        old_gone: of(|u| u.old_gone),
    }
}

fn two(v: &[Duration], a: f64, b: f64) -> String {
    if v.is_empty() {
        "-".into()
    } else {
        format!("{}/{}", ms(pct(v, a)), ms(pct(v, b)))
    }
}

// ------------------------------------------------------------------ main

fn main() {
    let count: usize = std::env::var("UPGRADES").ok().and_then(|v| v.parse().ok()).unwrap_or(UPGRADES);
    let only_canopy = std::env::var("UPGRADE_ONLY").is_ok_and(|v| v == "canopy");
    let machine = Machine::now();
    let Machine { busy, loadavg, cpus } = &machine;
    let cpus = *cpus;

    // clients and the upstream share one runtime with a worker per CPU
    let rt = machine.runtime();
    let outcomes = rt.block_on(async {
        let blue = upstream::spawn("blue", "storefront").await;
        let green = upstream::spawn("green", "storefront").await;
        let addrs = [blue.addr, green.addr];
        eprintln!("upstream: blue {}", addrs[0]);
        let mut outcomes = Vec::new();
        eprintln!("== canopy --upgrade ({})", env!("CARGO_BIN_EXE_canopy"));
        outcomes.push(measure(start_canopy(How::CanopyUpgrade, "canopy --upgrade", addrs).await, count).await);
        eprintln!("== canopy restart (SIGTERM, then `canopy serve`)");
        outcomes.push(measure(start_canopy(How::CanopyRestart, "canopy restart", addrs).await, count).await);
        if only_canopy {
            eprintln!("(UPGRADE_ONLY=canopy: HAProxy and nginx skipped)");
            return outcomes;
        }
        if Path::new("/usr/sbin/haproxy").exists() {
            eprintln!("== haproxy");
            outcomes.push(measure(start_haproxy(addrs).await, count).await);
        } else {
            eprintln!("(haproxy not installed: skipped)");
        }
        if Path::new("/usr/sbin/nginx").exists() {
            eprintln!("== nginx");
            outcomes.push(measure(start_nginx(addrs).await, count).await);
        } else {
            eprintln!("(nginx not installed: skipped)");
        }
        outcomes
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    report(&outcomes, count, cpus, busy, loadavg).exit();
}

/// Prints the table and canopy's goals; returns the goals' verdict.
fn report(outcomes: &[Outcome], count: usize, cpus: usize, busy: &str, loadavg: &str) -> Goals {
    let stats: Vec<Stats> = outcomes.iter().map(analyse).collect();
    let mut out = String::new();
    let w = |out: &mut String, label: &str, vals: Vec<String>| {
        let _ = write!(out, "{label:<52}");
        for v in vals {
            let _ = write!(out, "{v:>18}");
        }
        out.push('\n');
    };
    let col = |f: &dyn Fn(&Outcome, &Stats) -> String| -> Vec<String> { outcomes.iter().zip(&stats).map(|(o, s)| f(o, s)).collect() };
    let _ = writeln!(
        out,
        "\nupgrade: {count} upgrades per proxy under load: {KEEPALIVE_CLIENTS} keep-alive HTTP/1.1 clients + {FRESH_CLIENTS} \
         new-connection clients, GET /products, upstream on loopback, {cpus} CPUs (busy before start: {busy}, load average {loadavg})"
    );
    let _ = writeln!(
        out,
        "canopy --upgrade: `canopy serve --upgrade` beside the running one; canopy restart: SIGTERM + `canopy serve` (again every \
         {RESTART_RETRY:?} while it exits); haproxy: master CLI `reload` (expose-fd listeners); nginx: `nginx -s reload`\n"
    );
    w(&mut out, "", col(&|o, _| o.name.to_string()));
    w(&mut out, "upgrades ok / failed", col(&|_, s| format!("{} / {}", s.upgrades_ok, s.upgrades_failed)));
    w(&mut out, "requests (req/s)", col(&|_, s| format!("{} ({:.0})", s.requests, s.rps)));
    w(&mut out, "failed requests", col(&|_, s| s.failed.iter().flatten().sum::<usize>().to_string()));
    w(
        &mut out,
        "  keep-alive: refused / other transport / non-200",
        col(&|_, s| format!("{} / {} / {}", s.failed[0][0], s.failed[0][1], s.failed[0][2])),
    );
    w(
        &mut out,
        "  new conn.: refused / other transport / non-200",
        col(&|_, s| format!("{} / {} / {}", s.failed[1][0], s.failed[1][1], s.failed[1][2])),
    );
    w(&mut out, "connection refused (all clients)", col(&|_, s| (s.failed[0][0] + s.failed[1][0]).to_string()));
    w(
        &mut out,
        "`canopy serve` starts that exited (address in use)",
        col(&|o, s| if o.name == "canopy restart" { s.failed_starts.to_string() } else { "-".into() }),
    );
    w(&mut out, "new conn. connect->first byte, outside p50/p99, ms", col(&|_, s| two(&s.ttfb_outside, 0.5, 0.99)));
    w(&mut out, "new conn. connect->first byte, during p99/max, ms", col(&|_, s| two(&s.ttfb_during, 0.99, 1.0)));
    w(&mut out, "accept gap per upgrade p50/max, ms", col(&|_, s| two(&s.gap, 0.5, 1.0)));
    w(&mut out, "  same wait outside upgrades p99/max, ms", col(&|_, s| two(&s.base_wait, 0.99, 1.0)));
    w(
        &mut out,
        "  worst accept gap / outside p99",
        col(&|_, s| match (pct(&s.gap, 1.0), pct(&s.base_wait, 0.99)) {
            (Some(g), Some(b)) if !b.is_zero() => format!("{:.1}x", g.as_secs_f64() / b.as_secs_f64()),
            _ => "-".into(),
        }),
    );
    w(&mut out, "upgrade command returned p50/max, ms", col(&|_, s| two(&s.returned, 0.5, 1.0)));
    w(&mut out, "new generation serving p50/max, ms", col(&|_, s| two(&s.serving, 0.5, 1.0)));
    w(&mut out, "old generation exited p50/max, ms", col(&|_, s| two(&s.old_gone, 0.5, 1.0)));

    for o in outcomes {
        if let Some(u) = o.upgrades.iter().find(|u| u.error.is_some()) {
            let failed = o.upgrades.iter().filter(|u| u.error.is_some()).count();
            let _ = writeln!(out, "\n{}: {failed} upgrade(s) failed, first: {}", o.name, u.error.as_deref().unwrap_or(""));
        }
        if o.notes.is_empty() {
            continue;
        }
        let _ = writeln!(out, "\n{}: {} failed requests (first 5; time after the latest upgrade started):", o.name, o.notes.len());
        let mut notes: Vec<&FailNote> = o.notes.iter().collect();
        notes.sort_by_key(|n| n.at);
        for n in notes.iter().take(5) {
            let after = o.upgrades.iter().rev().filter_map(|u| u.start).find(|s| *s <= n.at).map_or_else(
                || "before any upgrade".to_string(),
                |s| format!("{:.1} ms after upgrade started", (n.at - s).as_secs_f64() * 1e3),
            );
            let what: String = n.what.chars().take(160).collect();
            let _ = writeln!(out, "  {after}, {}: {what}", if n.fresh { "new conn." } else { "keep-alive" });
        }
    }

    // issue 16's bar for canopy: nothing lost, nothing refused, no worse than HAProxy
    let mut goals = Goals::default();
    if let Some(s) = outcomes.iter().zip(&stats).find(|(o, _)| o.name == "canopy --upgrade").map(|(_, s)| s) {
        let _ = writeln!(out, "\ncanopy --upgrade goals (issue 16):");
        let mut goal = |what: &str, measured: String, pass: bool| goals.check(&mut out, 52, what, measured, pass);
        let failed: usize = s.failed.iter().flatten().sum();
        let refused = s.failed[0][0] + s.failed[1][0];
        goal("all upgrades completed", format!("{} / {}", s.upgrades_ok, s.upgrades_ok + s.upgrades_failed), s.upgrades_failed == 0);
        goal("zero failed requests", failed.to_string(), failed == 0);
        goal("zero connections refused", refused.to_string(), refused == 0);
        if let Some(h) = outcomes.iter().zip(&stats).find(|(o, _)| o.name == "haproxy").map(|(_, s)| s) {
            let (c, hx) = (pct(&s.gap, 1.0), pct(&h.gap, 1.0));
            let hf: usize = h.failed.iter().flatten().sum();
            goal("failed requests <= HAProxy's", format!("{failed} vs {hf}"), failed <= hf);
            goal("worst accept gap <= HAProxy's", format!("{} vs {} ms", ms(c), ms(hx)), c.is_some() && c <= hx);
        }
    }
    print!("{out}");
    goals
}
