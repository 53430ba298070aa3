//! Helpers shared by the benchmarks that run canopy, nginx and HAProxy side
//! by side (cutover.rs, upgrade.rs): child processes stopped on drop, free
//! loopback ports, readiness, the proxies' configs, percentiles.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A proxy that does not answer within this long is broken.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A child process that is stopped (TERM, then KILL with its children) on drop.
pub struct Proc {
    /// For messages.
    pub name: &'static str,
    /// The process.
    pub child: Child,
}

impl Proc {
    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Direct children (nginx workers), from /proc.
    pub fn children(&self) -> Vec<u32> {
        let pid = self.pid();
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
        let mut out = Vec::new();
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
                out.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
            }
        }
        out
    }

    /// Its exit status, once it has exited (reaps it).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

/// Sends `sig` (e.g. "-TERM") to `pid`, with kill(1).
pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").args([sig, &pid.to_string()]).stderr(Stdio::null()).status();
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        let kids = self.children();
        signal(self.pid(), "-TERM");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && self.exited().is_none() {
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.exited().is_none() {
            eprintln!("{} (pid {}) ignored SIGTERM; killing it", self.name, self.pid());
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // workers of a master that was killed outright would be orphaned
        for k in kids {
            if Path::new(&format!("/proc/{k}")).exists() {
                signal(k, "-KILL");
            }
        }
    }
}

pub fn spawn(name: &'static str, cmd: &mut Command, log: &Path) -> Proc {
    let log = std::fs::File::create(log).unwrap();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    Proc { name, child }
}

/// Ports that were free a moment ago, held together so they are distinct.
pub fn free_ports<const N: usize>() -> [u16; N] {
    let ls: Vec<TcpListener> = (0..N).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    std::array::from_fn(|i| ls[i].local_addr().unwrap().port())
}

/// Whether this process runs as root (nginx then needs `user root;`).
pub fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

/// Waits until GET `url` answers 200 by release `blue`, or panics with the log.
pub async fn wait_ready(proc_: &mut Proc, url: &str, log: &Path) {
    let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(1)).build().unwrap();
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Some(st) = proc_.exited() {
            panic!("{} exited with {st}:\n{}", proc_.name, std::fs::read_to_string(log).unwrap_or_default());
        }
        match http.get(url).send().await {
            Ok(r) if r.status() == 200 => {
                let v: Value = r.json().await.unwrap_or(Value::Null);
                if v["release"] == "blue" {
                    return;
                }
                last = format!("answered {v}");
            }
            Ok(r) => last = format!("status {}", r.status()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{} not ready at {url} ({last}):\n{}", proc_.name, std::fs::read_to_string(log).unwrap_or_default());
}

/// nginx's config for the benchmarks: 2 workers proxying every path to
/// `upstream` over keep-alive connections, everything under `dir`.
pub fn nginx_conf(dir: &Path, port: u16, upstream: SocketAddr) -> String {
    let user = if running_as_root() { "user root;\n" } else { "" };
    let d = dir.display();
    format!(
        r#"{user}daemon off;
worker_processes 2;
error_log {d}/error.log warn;
pid {d}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  upstream u {{ server {upstream}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://u;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"#
    )
}

/// `nginx` run with its prefix, error log and config under `dir`.
pub fn nginx_cmd(dir: &Path) -> Command {
    let mut c = Command::new("/usr/sbin/nginx");
    c.arg("-p").arg(dir).arg("-e").arg(dir.join("error.log")).arg("-c").arg(dir.join("nginx.conf"));
    c
}

/// Nearest-rank percentile.
pub fn pct(v: &[Duration], q: f64) -> Option<Duration> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort();
    let i = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1;
    Some(s[i])
}

/// Milliseconds with two decimals, or "-".
pub fn ms(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{:.2}", d.as_secs_f64() * 1e3))
}

/// The machine as a bench starts: how busy its CPUs were over the last
/// second, its load average and its CPU count (printed beside the figures).
pub struct Machine {
    /// e.g. "3%", from [`cpu_busy_1s`].
    pub busy: String,
    /// The three load averages.
    pub loadavg: String,
    /// CPUs available to this process.
    pub cpus: usize,
}

impl Machine {
    /// Samples the machine now (takes one second).
    pub fn now() -> Machine {
        let busy = cpu_busy_1s();
        let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let loadavg = loadavg.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
        let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
        Machine { busy, loadavg, cpus }
    }

    /// The runtime the clients and upstreams share: a worker per CPU.
    pub fn runtime(&self) -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread().worker_threads(self.cpus.max(1)).enable_all().build().unwrap()
    }
}

/// How busy the CPUs were over the last second, e.g. "3%" (from /proc/stat).
pub fn cpu_busy_1s() -> String {
    let sample = || -> Option<(u64, u64)> {
        let s = std::fs::read_to_string("/proc/stat").ok()?;
        let v: Vec<u64> = s.lines().next()?.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
        Some((v.iter().take(8).sum(), v.get(3)? + v.get(4)?))
    };
    let Some((t0, i0)) = sample() else { return "?".into() };
    std::thread::sleep(Duration::from_secs(1));
    let Some((t1, i1)) = sample() else { return "?".into() };
    let (t, i) = (t1 - t0, i1 - i0);
    if t == 0 {
        return "?".into();
    }
    format!("{:.0}%", 100.0 * (t - i) as f64 / t as f64)
}

/// canopy's proxy.toml for the benchmarks: `storefront` on every path,
/// releases `blue` (live) and `green` at `addrs`, state in `dir`.
pub fn canopy_toml(dir: &Path, port: u16, admin_port: u16, addrs: [SocketAddr; 2], shutdown_grace: &str) -> String {
    format!(
        r#"
[proxy]
listen = "127.0.0.1:{port}"
threads = 2
shutdown-grace = "{shutdown_grace}"

[admin]
listen = "127.0.0.1:{admin_port}"
state-file = "{state}"

[releases]
address-template = "bench-{{service}}--{{release}}.invalid"
initial = "blue"
validation-window = "1h"

[[service]]
name = "storefront"
port = 4000
routes = ["/"]
checks = [{{ kind = "http", path = "/health", timeout = "1s", retries = 0 }}]

[[release]]
name = "blue"
backends = {{ storefront = ["{blue}"] }}

[[release]]
name = "green"
backends = {{ storefront = ["{green}"] }}
"#,
        state = dir.join("state.json").display(),
        blue = addrs[0],
        green = addrs[1],
    )
}

/// HAProxy's config for the benchmarks: backend `be` with `blue` (ready) and
/// `green` (disabled) at `addrs`, 2 threads, an admin socket at `sock` with
/// `stats_opts` appended to its line.
pub fn haproxy_cfg(sock: &Path, port: u16, addrs: [SocketAddr; 2], stats_opts: &str) -> String {
    format!(
        r#"global
  nbthread 2
  maxconn 4096
  stats socket {sock} level admin{stats_opts}
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend f
  bind 127.0.0.1:{port}
  default_backend be
backend be
  server blue {blue}
  server green {green} disabled
"#,
        sock = sock.display(),
        blue = addrs[0],
        green = addrs[1],
    )
}
