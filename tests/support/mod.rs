//! Test harness: runs the real `canopy` binary on loopback ports with a
//! generated config, and real upstreams from `upstream.rs`.
#![allow(dead_code)]

pub mod load;
pub mod tls;
pub mod upstream;

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// `N` distinct loopback ports that were free a moment ago. They are held
/// together while chosen, so no two are equal (two separate bind-to-0 calls
/// may return the same port). The caller's server binds them itself; see
/// [`listens`] for telling its socket from another process's.
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<TcpListener> = (0..N).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    std::array::from_fn(|i| held[i].local_addr().unwrap().port())
}

/// One port that was free a moment ago.
pub fn free_port() -> u16 {
    free_ports::<1>()[0]
}

/// `template` with `{proxy_port}` and `{admin_port}` set to two distinct free
/// ports, and those ports.
pub fn with_ports(template: &str) -> (String, u16, u16) {
    let (text, pp, ap, _) = with_all_ports(template);
    (text, pp, ap)
}

/// [`with_ports`], and `{tls_port}` set to a third port when the template has it.
pub fn with_all_ports(template: &str) -> (String, u16, u16, Option<u16>) {
    let [pp, ap, tp] = free_ports();
    let text = template.replace("{proxy_port}", &pp.to_string()).replace("{admin_port}", &ap.to_string());
    let tls = text.contains("{tls_port}").then_some(tp);
    (text.replace("{tls_port}", &tp.to_string()), pp, ap, tls)
}

/// The states (kernel hex codes, `0A` = LISTEN) of the TCP sockets process
/// `pid` holds with local port `port`: its fds against /proc/<pid>/net/tcp{,6}.
pub fn tcp_states(pid: u32, port: u16) -> Vec<String> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return Vec::new() };
    let inodes: std::collections::HashSet<String> = fds
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| Some(l.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.to_string()))
        .collect();
    let port_hex = format!(":{port:04X}");
    let mut states = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 9 && f[1].ends_with(&port_hex) && inodes.contains(f[9]) {
                states.push(f[3].to_string());
            }
        }
    }
    states
}

/// Whether process `pid` itself listens on TCP `port`. Tests run in parallel
/// and pick ports by binding to 0, so "something accepts on the port" may be
/// another test's server; this is not.
pub fn listens(pid: u32, port: u16) -> bool {
    tcp_states(pid, port).iter().any(|s| s == "0A")
}

/// Waits until process `pid` listens on `port` (see [`listens`]); panics with
/// `what` after `timeout`.
pub fn wait_listening(pid: u32, port: u16, timeout: Duration, what: &str) {
    let deadline = Instant::now() + timeout;
    while !listens(pid, port) {
        assert!(Instant::now() < deadline, "{what} did not listen on port {port} within {timeout:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A loopback address where nothing listens (connections are refused). The
/// port stays bound (without listening) for the life of the test process, so
/// no other test's server can take it and answer.
pub fn dead_addr() -> SocketAddr {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let addr = socket.local_addr().unwrap();
    std::mem::forget(socket);
    addr
}

/// The config used by most tests: server, worker (no routes) and storefront.
/// `{extra_releases}` and `{extra_server_checks}` are filled by callers.
pub fn config(extra_top: &str, server_checks: &str) -> String {
    format!(
        r#"
[proxy]
listen = "127.0.0.1:{{proxy_port}}"
threads = 2
connect-timeout = "500ms"
upstream-timeout = "2s"
shutdown-grace = "5s"

[admin]
listen = "127.0.0.1:{{admin_port}}"
state-file = "state.json"

[releases]
address-template = "test-{{service}}--{{release}}.invalid"
validation-window = "10m"
preview = true
drain-timeout = "10s"
{extra_top}

[[service]]
name = "server"
port = 3000
routes = ["/shop-api", "/admin-api", "/assets", "/payments", "/health"]
checks = [
  {{ kind = "http", path = "/health", timeout = "1s", retries = 0 }},
  {{ kind = "graphql", path = "/shop-api", query = "{{ products {{ totalItems }} }}", timeout = "1s", retries = 0 }},
  {server_checks}
]

[[service]]
name = "worker"
port = 3020
checks = [{{ kind = "http", path = "/health", timeout = "1s", retries = 0 }}]

[[service]]
name = "storefront"
port = 4000
routes = ["/"]
checks = [{{ kind = "http", path = "/health", timeout = "1s", retries = 0 }}]
"#
    )
}

/// A running canopy process.
pub struct Canopy {
    pub child: Child,
    pub dir: PathBuf,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    /// The TLS listener, when the config has `{tls_port}`.
    pub tls: Option<SocketAddr>,
    pub config_text: String,
    /// The config with `{proxy_port}`/`{admin_port}` placeholders, for restarts.
    pub template: String,
    pub tmp: Option<tempfile::TempDir>,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_canopy")
}

impl Canopy {
    /// Starts canopy in a fresh temp dir with `config` (ports substituted).
    pub fn start(config: &str) -> Canopy {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let mut c = Self::start_in(&dir, config);
        c.tmp = Some(tmp);
        c
    }

    /// Starts canopy in `dir` (keeps an existing state file there).
    pub fn start_in(dir: &Path, config: &str) -> Canopy {
        for _ in 0..5 {
            let (text, pp, ap, tp) = with_all_ports(config);
            if let Some(mut c) = Self::try_start(dir, text, pp, ap, tp) {
                c.template = config.to_string();
                return c;
            }
        }
        panic!("canopy did not start");
    }

    /// Starts canopy in `dir` with the proxy on `proxy_port` (which the
    /// caller chose, e.g. because another server must know it first).
    pub fn start_in_on(dir: &Path, config: &str, proxy_port: u16) -> Canopy {
        let (text, _, ap, tp) = with_all_ports(&config.replace("{proxy_port}", &proxy_port.to_string()));
        let mut c = Self::try_start(dir, text, proxy_port, ap, tp).unwrap_or_else(|| panic!("canopy did not start on port {proxy_port}"));
        c.template = config.to_string();
        c
    }

    fn try_start(dir: &Path, text: String, pp: u16, ap: u16, tp: Option<u16>) -> Option<Canopy> {
        std::fs::write(dir.join("proxy.toml"), &text).unwrap();
        let log = std::fs::File::create(dir.join("canopy.log")).unwrap();
        let child = Command::new(bin())
            .args(["serve", "-c"])
            .arg(dir.join("proxy.toml"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut c = Canopy {
            child,
            dir: dir.to_path_buf(),
            proxy: SocketAddr::from(([127, 0, 0, 1], pp)),
            admin: SocketAddr::from(([127, 0, 0, 1], ap)),
            tls: tp.map(|p| SocketAddr::from(([127, 0, 0, 1], p))),
            config_text: text,
            template: String::new(),
            tmp: None,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = c.child.try_wait() {
                let log = c.log();
                if log.contains("cannot listen") {
                    return None;
                }
                panic!("canopy exited with {status}:\n{log}");
            }
            // ours, not another test's server that took a port first
            let pid = c.child.id();
            if listens(pid, pp) && listens(pid, ap) && tp.is_none_or(|tp| listens(pid, tp)) {
                return Some(c);
            }
            // pingora waits for a port taken after canopy's own probe; pick new ones
            if c.log().contains("is in use, will try again") {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("canopy not ready in 20s:\n{}", c.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("canopy.log")).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.proxy, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    pub fn state_file(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    /// What canopy would start from after a restart (state file + journal).
    pub fn durable_state(&self) -> Value {
        durable_state_in(&self.dir)
    }

    /// The raw state file and journal, to show that nothing was written.
    pub fn durable_bytes(&self) -> (Vec<u8>, Vec<u8>) {
        let read = |p: PathBuf| std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        (read(self.state_file()), read(canopy_admin::journal_path(&self.state_file())))
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Runs a CLI client command against this canopy's admin API.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(bin()).args(args).env("CANOPY_ADMIN", format!("http://{}", self.admin)).output().unwrap()
    }
}

impl Drop for Canopy {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build().unwrap()
}

/// Registers `release` with the given upstreams for server, worker and storefront.
pub async fn register(c: &Canopy, release: &str, server: SocketAddr, worker: SocketAddr, storefront: SocketAddr) -> Value {
    let body = serde_json::json!({"backends": {
        "server": [server.to_string()], "worker": [worker.to_string()], "storefront": [storefront.to_string()]}});
    let r = client().put(c.admin_url(&format!("/releases/{release}"))).json(&body).send().await.unwrap();
    assert!(r.status().is_success(), "register {release}: {}", r.status());
    r.json().await.unwrap()
}

/// One release's three upstreams.
pub struct Stack {
    pub server: upstream::Upstream,
    pub worker: upstream::Upstream,
    pub storefront: upstream::Upstream,
}

impl Stack {
    pub async fn spawn(release: &str) -> Stack {
        Stack {
            server: upstream::spawn(release, "server").await,
            worker: upstream::spawn(release, "worker").await,
            storefront: upstream::spawn(release, "storefront").await,
        }
    }

    pub async fn register(&self, c: &Canopy, release: &str) -> Value {
        register(c, release, self.server.addr, self.worker.addr, self.storefront.addr).await
    }
}

/// POST /switch; returns (status, body).
pub async fn switch(c: &Canopy, release: &str) -> (u16, Value) {
    let r = client().post(c.admin_url("/switch")).json(&serde_json::json!({"release": release})).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// GET through the proxy; returns (status, x-canopy-release, JSON body or Null).
pub async fn get(c: &Canopy, path: &str) -> (u16, String, Value) {
    let r = client().get(c.url(path)).send().await.unwrap();
    let rel = r.headers().get("x-canopy-release").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    (r.status().as_u16(), rel, r.json().await.unwrap_or(Value::Null))
}

pub async fn status(c: &Canopy) -> Value {
    client().get(c.admin_url("/status")).send().await.unwrap().json().await.unwrap()
}

/// Canopy with releases `juniper` (live, validated) and `elm` (registered), each
/// a real three-service stack; `extra_top` goes into `[releases]`, `server_checks`
/// into the server's checks.
pub async fn two_releases(extra_top: &str, server_checks: &str) -> (Canopy, Stack, Stack) {
    two_releases_with(&config(extra_top, server_checks)).await
}

/// [`two_releases`] on a config text of the caller's (placeholders as in [`config`]).
pub async fn two_releases_with(config_text: &str) -> (Canopy, Stack, Stack) {
    two_releases_on(Canopy::start(config_text)).await
}

/// [`two_releases`] on a canopy the caller started (e.g. in a directory
/// holding files its config names).
pub async fn two_releases_on(c: Canopy) -> (Canopy, Stack, Stack) {
    let juniper = Stack::spawn("juniper").await;
    let elm = Stack::spawn("elm").await;
    juniper.register(&c, "juniper").await;
    elm.register(&c, "elm").await;
    let (code, body) = switch(&c, "juniper").await;
    assert_eq!(code, 200, "{body}");
    (c, juniper, elm)
}

/// The durable state in `dir` (its `state.json` and journal), read the way
/// canopy reads it at start-up, as JSON. Panics with the reason if it does not load.
pub fn durable_state_in(dir: &Path) -> Value {
    let file = dir.join("state.json");
    let state = canopy_admin::load_state(&file)
        .unwrap_or_else(|e| panic!("durable state does not load: {e}"))
        .unwrap_or_else(|| panic!("no durable state in {}", dir.display()));
    serde_json::to_value(state).unwrap()
}

/// Sum of `canopy_inflight_requests` over every release, from GET /metrics.
pub async fn inflight(c: &Canopy) -> i64 {
    let text = client().get(c.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines().filter(|l| l.starts_with("canopy_inflight_requests{")).map(|l| l.rsplit(' ').next().unwrap().parse::<i64>().unwrap()).sum()
}

/// Polls `check` every 20 ms until it holds; panics with `what` after `limit`.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
