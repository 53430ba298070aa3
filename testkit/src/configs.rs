//! Configs written once for tests, benchmarks and the shell benchmarks
//! (through examples/testkit.rs): canopy's test template, and canopy,
//! nginx and HAProxy as the benchmarks run them side by side.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::process::running_as_root;

/// The start of a test's canopy config: `[proxy]` on `{proxy_port}` (two
/// threads, a 500 ms connect timeout, then `proxy_lines`) and `[admin]` on
/// `{admin_port}` with `state.json` beside the config.
pub fn listeners(proxy_lines: &str) -> String {
    format!(
        r#"
[proxy]
listen = "127.0.0.1:{{proxy_port}}"
threads = 2
connect-timeout = "500ms"
{proxy_lines}
[admin]
listen = "127.0.0.1:{{admin_port}}"
state-file = "state.json"
"#
    )
}

/// The canopy config most tests use: server, worker (no routes) and
/// storefront, preview on, `state.json` in canopy's directory, ports as
/// `{proxy_port}` and `{admin_port}` (filled in by
/// [`Canopy::start`](crate::Canopy::start)). `extra_top` goes into
/// `[releases]`, `server_checks` (each ending in a comma) into the server's
/// checks after its http and GraphQL ones.
pub fn config(extra_top: &str, server_checks: &str) -> String {
    let head = listeners("upstream-timeout = \"2s\"\nshutdown-grace = \"5s\"\n");
    format!(
        r#"{head}
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

/// canopy as the benchmarks run it: one service, `storefront`, on every
/// path, and releases with fixed backends, the first one live.
#[derive(Debug, Clone)]
pub struct CanopyBench {
    /// Proxy listener port (127.0.0.1).
    pub port: u16,
    /// Admin listener port (127.0.0.1).
    pub admin_port: u16,
    /// The state file.
    pub state_file: PathBuf,
    /// Release names and their storefront backend; the first is `initial`.
    pub releases: Vec<(String, SocketAddr)>,
    /// Lines for `[proxy]` after `listen` (e.g. `threads = 1`).
    pub proxy_lines: String,
    /// Whether the storefront has an http check of `/health` (a validated
    /// switch runs it); without one nothing is checked.
    pub health_check: bool,
}

impl CanopyBench {
    /// The proxy.toml text.
    pub fn toml(&self) -> String {
        let CanopyBench { port, admin_port, state_file, releases, proxy_lines, health_check } = self;
        let initial = releases.first().map_or("", |(name, _)| name.as_str());
        let mut out = format!(
            r#"[proxy]
listen = "127.0.0.1:{port}"
{proxy_lines}

[admin]
listen = "127.0.0.1:{admin_port}"
state-file = "{state}"

[releases]
address-template = "bench-{{service}}--{{release}}.invalid"
initial = "{initial}"
validation-window = "1h"

[[service]]
name = "storefront"
port = 4000
routes = ["/"]
"#,
            proxy_lines = proxy_lines.trim_end(),
            state = state_file.display(),
        );
        if *health_check {
            out.push_str("checks = [{ kind = \"http\", path = \"/health\", timeout = \"1s\", retries = 0 }]\n");
        }
        for (name, addr) in releases {
            let _ = write!(out, "\n[[release]]\nname = \"{name}\"\nbackends = {{ storefront = [\"{addr}\"] }}\n");
        }
        out
    }
}

/// nginx as the benchmarks run it: a keep-alive reverse proxy for every
/// path to one upstream, everything (pid, logs, temp files) under `dir`.
#[derive(Debug, Clone)]
pub struct NginxBench {
    /// Its prefix directory.
    pub dir: PathBuf,
    /// Listener port (127.0.0.1).
    pub port: u16,
    /// The upstream.
    pub upstream: SocketAddr,
    /// `worker_processes`.
    pub workers: usize,
    /// Lines for the `server` block (e.g. a TLS listener and its certificate).
    pub server_lines: String,
}

impl NginxBench {
    /// The nginx.conf text (`user root;` when this process is root, so the
    /// workers can use the temp directory).
    pub fn conf(&self) -> String {
        let NginxBench { dir, port, upstream, workers, server_lines } = self;
        let user = if running_as_root() { "user root;\n" } else { "" };
        let d = dir.display();
        format!(
            r#"{user}daemon off;
worker_processes {workers};
error_log {d}/error.log warn;
pid {d}/nginx.pid;
events {{ worker_connections 16384; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  upstream u {{ server {upstream}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port};
{server_lines}
    location / {{
      proxy_pass http://u;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"#,
            server_lines = server_lines.trim_end(),
        )
    }

    /// `nginx` with its prefix, early error log and config (`nginx.conf`) under `dir`.
    pub fn command(&self) -> std::process::Command {
        nginx_command(&self.dir)
    }
}

/// `/usr/sbin/nginx` with prefix, early error log and `nginx.conf` under `dir`.
pub fn nginx_command(dir: &std::path::Path) -> std::process::Command {
    let mut c = std::process::Command::new("/usr/sbin/nginx");
    c.arg("-p").arg(dir).arg("-e").arg(dir.join("error.log")).arg("-c").arg(dir.join("nginx.conf"));
    c
}

/// One server of [`HaproxyBench`]'s backend `be`.
#[derive(Debug, Clone)]
pub struct HaproxyServer {
    /// Its name (`be/<name>` on the runtime API).
    pub name: String,
    /// Its address.
    pub addr: SocketAddr,
    /// Ready at start (else `disabled`).
    pub enabled: bool,
}

/// HAProxy as the benchmarks run it: HTTP mode, one frontend, one
/// keep-alive backend `be`.
#[derive(Debug, Clone)]
pub struct HaproxyBench {
    /// Frontend port (127.0.0.1).
    pub port: u16,
    /// `nbthread`.
    pub threads: usize,
    /// The backend's servers.
    pub servers: Vec<HaproxyServer>,
    /// `stats socket` arguments after `stats socket` (path, level, options), if any.
    pub stats_socket: Option<String>,
    /// Lines for the frontend (e.g. a TLS `bind`).
    pub frontend_lines: String,
}

impl HaproxyBench {
    /// The haproxy.cfg text.
    pub fn cfg(&self) -> String {
        let HaproxyBench { port, threads, servers, stats_socket, frontend_lines } = self;
        let stats = stats_socket.as_ref().map_or(String::new(), |s| format!("  stats socket {s}\n"));
        let mut out = format!(
            r#"global
  nbthread {threads}
  maxconn 8192
{stats}defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend f
  bind 127.0.0.1:{port}
{frontend_lines}
  default_backend be
backend be
"#,
            frontend_lines = frontend_lines.trim_end(),
        );
        for HaproxyServer { name, addr, enabled } in servers {
            let _ = writeln!(out, "  server {name} {addr}{}", if *enabled { "" } else { " disabled" });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_configs_name_their_parts() {
        let a: SocketAddr = "127.0.0.1:4001".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:4002".parse().unwrap();
        let canopy = CanopyBench {
            port: 8080,
            admin_port: 9901,
            state_file: "/tmp/s.json".into(),
            releases: vec![("blue".into(), a), ("green".into(), b)],
            proxy_lines: "threads = 2\n".into(),
            health_check: true,
        }
        .toml();
        assert!(canopy.contains("initial = \"blue\"") && canopy.contains("threads = 2\n\n[admin]"), "{canopy}");
        assert!(canopy.contains("name = \"green\"\nbackends = { storefront = [\"127.0.0.1:4002\"] }"), "{canopy}");
        assert!(canopy.contains("checks = [{ kind = \"http\""), "{canopy}");
        let haproxy = HaproxyBench {
            port: 80,
            threads: 2,
            servers: vec![
                HaproxyServer { name: "blue".into(), addr: a, enabled: true },
                HaproxyServer { name: "green".into(), addr: b, enabled: false },
            ],
            stats_socket: Some("/tmp/a.sock level admin".into()),
            frontend_lines: String::new(),
        }
        .cfg();
        assert!(haproxy.contains("  stats socket /tmp/a.sock level admin\ndefaults"), "{haproxy}");
        assert!(haproxy.ends_with("  server blue 127.0.0.1:4001\n  server green 127.0.0.1:4002 disabled\n"), "{haproxy}");
        let nginx = NginxBench { dir: "/tmp/n".into(), port: 81, upstream: a, workers: 1, server_lines: String::new() }.conf();
        assert!(nginx.contains("worker_processes 1;") && nginx.contains("upstream u { server 127.0.0.1:4001; keepalive 64; }"), "{nginx}");
    }
}
