//! The test kit from the shell: free ports and the proxies' configs for the
//! shell benchmarks and tests/schemathesis.sh (so they are written once, for
//! the Rust and the shell side alike):
//!
//! ```text
//! testkit ports N                                                   N free loopback ports
//! testkit canopy PORT ADMIN_PORT STATE_FILE UPSTREAM [PROXY_LINES]   proxy.toml: release `juniper` on UPSTREAM
//! testkit nginx DIR PORT UPSTREAM WORKERS [SERVER_LINES]             nginx.conf, everything under DIR
//! testkit haproxy PORT UPSTREAM THREADS [FRONTEND_LINES]             haproxy.cfg, one server
//! ```
//!
//! Each prints to stdout. The ports are let go so that nothing else on the
//! machine is handed them for the next 60 s, while the proxies the script
//! starts bind them by number (see `canopy_testkit::ports`).

use std::net::SocketAddr;
use std::process::ExitCode;

use canopy_testkit::configs::{CanopyBench, HaproxyBench, HaproxyServer, NginxBench};
use canopy_testkit::reserve;

const USAGE: &str = "usage: testkit ports N
       testkit canopy PORT ADMIN_PORT STATE_FILE UPSTREAM [PROXY_LINES]
       testkit nginx DIR PORT UPSTREAM WORKERS [SERVER_LINES]
       testkit haproxy PORT UPSTREAM THREADS [FRONTEND_LINES]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("testkit: {e}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &[String]) -> Result<String, String> {
    let arg = |i: usize, what: &str| args.get(i).cloned().ok_or(format!("missing {what}"));
    let opt = |i: usize| args.get(i).cloned().unwrap_or_default();
    let num = |i: usize, what: &str| -> Result<u16, String> { arg(i, what)?.parse().map_err(|e| format!("{what}: {e}")) };
    let addr = |i: usize| -> Result<SocketAddr, String> { arg(i, "UPSTREAM")?.parse().map_err(|e| format!("UPSTREAM: {e}")) };
    match args.first().map(String::as_str) {
        Some("ports") => {
            let n = num(1, "N")?;
            let held: Vec<_> = (0..n).map(|_| reserve()).collect();
            Ok(held.into_iter().map(|p| p.release().to_string()).collect::<Vec<_>>().join(" ") + "\n")
        }
        Some("canopy") => Ok(CanopyBench {
            port: num(1, "PORT")?,
            admin_port: num(2, "ADMIN_PORT")?,
            state_file: arg(3, "STATE_FILE")?.into(),
            releases: vec![("juniper".into(), addr(4)?)],
            proxy_lines: if args.len() > 5 { opt(5) } else { "threads = 1".into() },
            health_check: false,
        }
        .toml()),
        Some("nginx") => Ok(NginxBench {
            dir: arg(1, "DIR")?.into(),
            port: num(2, "PORT")?,
            upstream: addr(3)?,
            workers: num(4, "WORKERS")?.into(),
            server_lines: opt(5),
        }
        .conf()),
        Some("haproxy") => Ok(HaproxyBench {
            port: num(1, "PORT")?,
            threads: num(3, "THREADS")?.into(),
            servers: vec![HaproxyServer { name: "s1".into(), addr: addr(2)?, enabled: true }],
            stats_socket: None,
            frontend_lines: opt(4),
        }
        .cfg()),
        _ => Err("no such command".into()),
    }
}
