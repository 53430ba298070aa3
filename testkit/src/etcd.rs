//! A real etcd cluster on loopback (`/usr/bin/etcd`, Debian's 3.4), for the
//! fleet tests: members that can be killed, restarted, paused and resumed,
//! and `etcdctl` aimed at them.
//!
//! Ports: every member's client and peer ports are reserved with
//! [`crate::ports::reserve`] and released together right before the members
//! start (a released port stays out of the kernel's automatic choices for
//! 60 s, see [`crate::ports`]). A killed member's ports are parked the same
//! way, so [`EtcdCluster::restart`] within 60 s finds them free.
//!
//! Restarts: etcd ignores the `--initial-cluster*` flags once its data dir
//! holds a WAL ("the member has already been bootstrapped"), so a member is
//! restarted with exactly the flags it first ran with.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::ports::{reserve, Port};
use crate::process::{listens, signal, Proc};
use crate::relay::Relay;

/// The etcd binary.
pub const ETCD: &str = "/usr/bin/etcd";
/// The etcdctl binary.
pub const ETCDCTL: &str = "/usr/bin/etcdctl";
/// How long [`EtcdCluster::start`] waits for every member to be healthy.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a started member has to listen on its client port.
pub const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one member's `/health` may take before it counts as unhealthy.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);

/// Clusters started by this process, for unique cluster tokens.
static CLUSTERS: AtomicUsize = AtomicUsize::new(0);

/// One member: its ports, its data dir and its process while it runs.
#[derive(Debug)]
struct Member {
    name: String,
    client: u16,
    peer: u16,
    dir: PathBuf,
    /// How many times it was started (names its log files).
    starts: usize,
    proc: Option<Proc>,
}

/// An n-member etcd cluster on 127.0.0.1 with its data dirs and logs in a
/// temporary directory it owns; every member is killed on drop.
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<Member>,
    /// `--initial-cluster`, the same for every member and every start.
    initial_cluster: String,
    /// `--initial-cluster-token`, unique per cluster.
    token: String,
    tmp: tempfile::TempDir,
}

impl EtcdCluster {
    /// Starts `n` members (heartbeat 50 ms, election timeout 500 ms) and
    /// waits until all of them are healthy; panics after [`START_TIMEOUT`]
    /// with the tail of every member's log.
    pub fn start(n: usize) -> EtcdCluster {
        assert!(n > 0, "an etcd cluster needs a member");
        let tmp = tempfile::tempdir().expect("temp dir");
        let held: Vec<(Port, Port)> = (0..n).map(|_| (reserve(), reserve())).collect();
        let members: Vec<Member> = held
            .iter()
            .enumerate()
            .map(|(i, (client, peer))| Member {
                name: format!("m{i}"),
                client: client.port(),
                peer: peer.port(),
                dir: tmp.path().join(format!("m{i}.etcd")),
                starts: 0,
                proc: None,
            })
            .collect();
        let initial_cluster = members.iter().map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer)).collect::<Vec<_>>().join(",");
        let token = format!("canopy-{}-{}", std::process::id(), CLUSTERS.fetch_add(1, Ordering::Relaxed));
        let mut cluster = EtcdCluster { members, initial_cluster, token, tmp };
        // every member's ports go at once: the first member dials the others' peer ports
        for (client, peer) in held {
            client.release();
            peer.release();
        }
        for i in 0..n {
            cluster.spawn(i);
        }
        cluster.wait_healthy(n, START_TIMEOUT);
        cluster
    }

    /// The number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether it has no members (never: [`EtcdCluster::start`] needs one).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Every member's client URL, `http://127.0.0.1:port`.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.member_endpoint(i)).collect()
    }

    /// Member `i`'s client URL, `http://127.0.0.1:port`.
    pub fn member_endpoint(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.members[i].client)
    }

    /// Member `i`'s client address (for a [`crate::relay::Relay`] in front of it).
    pub fn member_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.members[i].client))
    }

    /// A [`Relay`] in front of every member, in member order: one node's
    /// own way to etcd, to cut or blackhole without touching the others'
    /// (give the node their [`Relay::url`]s as its endpoints).
    pub fn relays(&self) -> Vec<Relay> {
        (0..self.members.len()).map(|i| Relay::start(self.member_addr(i))).collect()
    }

    /// Member `i`'s pid, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].proc.as_ref().map(Proc::pid)
    }

    /// SIGKILLs member `i`; it stays down (its ports parked) until
    /// [`EtcdCluster::restart`].
    pub fn kill(&mut self, i: usize) {
        let m = &mut self.members[i];
        let mut proc = m.proc.take().unwrap_or_else(|| panic!("etcd {} is not running", m.name));
        proc.kill();
        park(m.client);
        park(m.peer);
    }

    /// Starts killed member `i` again with its data dir, ports and flags,
    /// and waits until it listens on its client port (not until it is
    /// healthy: without a quorum it never is; see [`EtcdCluster::wait_healthy`]).
    pub fn restart(&mut self, i: usize) {
        assert!(self.members[i].proc.is_none(), "etcd {} is running", self.members[i].name);
        self.spawn(i);
    }

    /// SIGSTOPs member `i` (it holds its connections and answers nothing).
    pub fn pause(&self, i: usize) {
        self.signal(i, "-STOP");
    }

    /// SIGCONTs member `i` after [`EtcdCluster::pause`].
    pub fn resume(&self, i: usize) {
        self.signal(i, "-CONT");
    }

    /// Runs `etcdctl` (API v3) against every member with `args`, e.g.
    /// `["put", "k", "v"]` or `["--command-timeout=2s", "get", "k"]`.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        etcdctl(&self.endpoints(), args)
    }

    /// The value of `key` (`etcdctl get --print-value-only`), `None` if it
    /// is unset or the get failed.
    pub fn get(&self, key: &str) -> Option<String> {
        let out = self.etcdctl(&["--command-timeout=2s", "get", "--print-value-only", key]);
        let text = String::from_utf8_lossy(&out.stdout);
        (out.status.success() && !text.is_empty()).then(|| text.trim_end_matches('\n').to_string())
    }

    /// Puts `key` = `value` with a 2 s command timeout; whether it succeeded.
    pub fn put(&self, key: &str, value: &str) -> bool {
        self.etcdctl(&["--command-timeout=2s", "put", key, value]).status.success()
    }

    /// How many members answer `GET /health` with `"health":"true"` (asked
    /// at once, each within [`HEALTH_TIMEOUT`]).
    pub fn healthy_members(&self) -> usize {
        let addrs: Vec<SocketAddr> = (0..self.members.len()).map(|i| self.member_addr(i)).collect();
        std::thread::scope(|s| {
            let asks: Vec<_> = addrs.iter().map(|a| s.spawn(move || healthy(*a))).collect();
            asks.into_iter().map(|h| h.join().unwrap_or(false)).filter(|&ok| ok).count()
        })
    }

    /// The index of the member that leads now, by asking each running
    /// member (`etcdctl endpoint status`); `None` while none knows a leader.
    pub fn leader(&self) -> Option<usize> {
        let running: Vec<usize> = (0..self.members.len()).filter(|&i| self.members[i].proc.is_some()).collect();
        let endpoints: Vec<String> = running.iter().map(|&i| self.member_endpoint(i)).collect();
        let out = etcdctl(&endpoints, &["--command-timeout=1s", "endpoint", "status", "-w", "json"]);
        let statuses: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let member = |s: &serde_json::Value| s["Status"]["header"]["member_id"].as_u64();
        let leader = statuses.iter().find_map(|s| s["Status"]["leader"].as_u64().filter(|&l| l != 0))?;
        let endpoint = statuses.iter().find(|s| member(s) == Some(leader))?["Endpoint"].as_str()?;
        running.into_iter().find(|&i| self.member_endpoint(i) == endpoint)
    }

    /// Waits until at least `n` members are healthy; panics after `limit`
    /// with the tail of every member's log.
    pub fn wait_healthy(&self, n: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let healthy = self.healthy_members();
            if healthy >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd: {healthy} of {} members healthy after {limit:?}, wanted {n}\n{}",
                self.members.len(),
                self.log_tails(30)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last `lines` lines of every member's current log, for messages.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for (i, m) in self.members.iter().enumerate() {
            let text = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            let state = if m.proc.is_some() { "running" } else { "down" };
            out += &format!("--- etcd {} ({state}), last {lines} lines of {}:\n", m.name, self.log_path(i).display());
            for l in &all[all.len().saturating_sub(lines)..] {
                out += l;
                out.push('\n');
            }
        }
        out
    }

    /// The temporary directory with the data dirs and logs.
    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }

    /// Member `i`'s current log file (one per start: `m0.log`, `m0.2.log`, ...).
    pub fn log_path(&self, i: usize) -> PathBuf {
        let m = &self.members[i];
        match m.starts {
            0 | 1 => self.tmp.path().join(format!("{}.log", m.name)),
            k => self.tmp.path().join(format!("{}.{k}.log", m.name)),
        }
    }

    fn spawn(&mut self, i: usize) {
        self.members[i].starts += 1;
        let log = self.log_path(i);
        let m = &self.members[i];
        let peer_url = format!("http://127.0.0.1:{}", m.peer);
        let client_url = format!("http://127.0.0.1:{}", m.client);
        let mut cmd = Command::new(ETCD);
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&m.dir)
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
            .args(["--initial-cluster", &self.initial_cluster, "--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.token])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--logger", "zap", "--log-outputs", "stderr"]);
        let mut proc = Proc::spawn(&format!("etcd {}", m.name), &mut cmd, &log);
        let (port, name) = (m.client, m.name.clone());
        let listening = wait_for_listen(&mut proc, port);
        self.members[i].proc = Some(proc);
        if !listening {
            panic!("etcd {name} did not listen on port {port} within {LISTEN_TIMEOUT:?}\n{}", self.log_tails(30));
        }
    }

    fn signal(&self, i: usize, sig: &str) {
        let pid = self.pid(i).unwrap_or_else(|| panic!("etcd {} is not running", self.members[i].name));
        assert!(signal(pid, sig), "kill {sig} {pid} (etcd {}) failed", self.members[i].name);
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        // SIGKILL at once: a paused member would sit out Proc's SIGTERM grace
        for m in &mut self.members {
            if let Some(mut p) = m.proc.take() {
                p.kill();
            }
        }
    }
}

/// Runs `etcdctl` (API v3) with `--endpoints` set to `endpoints` and `args`.
pub fn etcdctl(endpoints: &[String], args: &[&str]) -> Output {
    Command::new(ETCDCTL)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {ETCDCTL}: {e}"))
}

/// Whether the etcd member at `addr` answers `GET /health` with
/// `"health":"true"` within [`HEALTH_TIMEOUT`] (a raw HTTP/1.0 request).
pub fn healthy(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = TcpStream::connect_timeout(&addr, HEALTH_TIMEOUT) else { return false };
    let _ = s.set_read_timeout(Some(HEALTH_TIMEOUT));
    let _ = s.set_write_timeout(Some(HEALTH_TIMEOUT));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.starts_with("HTTP/1.") && body.contains("\"health\":\"true\"")
}

/// Whether `proc` listens on `port` within [`LISTEN_TIMEOUT`] (false at
/// once if it exits).
fn wait_for_listen(proc: &mut Proc, port: u16) -> bool {
    let deadline = Instant::now() + LISTEN_TIMEOUT;
    while Instant::now() < deadline && proc.exited().is_none() {
        if listens(proc.pid(), port) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// Parks a port a killed member listened on, like [`Port::release`]: a
/// loopback connection whose accepted end closes first leaves the port in
/// TIME_WAIT, out of the kernel's automatic choices for 60 s, while etcd
/// (SO_REUSEADDR) can bind it again at once.
fn park(port: u16) {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(listener) = TcpListener::bind(addr) else { return };
    if let Ok(client) = TcpStream::connect(addr) {
        if let Ok((accepted, _)) = listener.accept() {
            drop(accepted);
        }
        drop(client);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_three_member_cluster_keeps_writing_with_a_quorum_and_stops_without_one() {
        let mut etcd = EtcdCluster::start(3);
        assert_eq!(etcd.healthy_members(), 3);
        assert!(etcd.put("k", "v1"), "put on a healthy cluster\n{}", etcd.log_tails(20));
        assert_eq!(etcd.get("k").as_deref(), Some("v1"));

        let leader = etcd.leader().expect("a healthy cluster has a leader");
        etcd.kill(leader);
        // a killed leader leaves the others electing for up to a second
        etcd.wait_healthy(2, Duration::from_secs(10));
        let next = etcd.leader().expect("the two left elect a leader");
        assert_ne!(next, leader, "the new leader is one of the members left");
        let out = etcd.etcdctl(&["--command-timeout=2s", "put", "k", "v2"]);
        assert!(out.status.success(), "put with 2 of 3 members: {out:?}\n{}", etcd.log_tails(20));
        assert_eq!(etcd.get("k").as_deref(), Some("v2"));

        etcd.kill(next);
        let out = etcd.etcdctl(&["--command-timeout=2s", "put", "k", "v3"]);
        assert!(!out.status.success(), "a put with 1 of 3 members succeeded: {out:?}");
        assert_eq!(etcd.healthy_members(), 0);
        assert_eq!(etcd.leader(), None, "one member of three has no leader");

        etcd.restart(next);
        etcd.wait_healthy(2, Duration::from_secs(20));
        assert!(etcd.put("k", "v4"), "put after a restart\n{}", etcd.log_tails(20));
        assert_eq!(etcd.get("k").as_deref(), Some("v4"));
        // the restarted member kept its data: it answers a serializable read itself
        let out = etcdctl(&[etcd.member_endpoint(next)], &["--consistency=s", "get", "--print-value-only", "k"]);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "v4");
    }

    #[test]
    fn a_client_behind_relays_loses_etcd_while_they_are_cut_or_blackholed() {
        let etcd = EtcdCluster::start(3);
        let relays = etcd.relays();
        let urls: Vec<String> = relays.iter().map(Relay::url).collect();
        let put = |v: &str| etcdctl(&urls, &["--command-timeout=2s", "put", "k", v]);
        let out = put("1");
        assert!(out.status.success(), "put through the relays: {out:?}");
        relays.iter().for_each(Relay::blackhole);
        assert!(!put("2").status.success(), "a put went through blackholed relays");
        relays.iter().for_each(Relay::heal);
        assert!(put("3").status.success(), "put after a heal");
        relays.iter().for_each(Relay::cut);
        assert!(!put("4").status.success(), "a put went through cut relays");
        relays.iter().for_each(Relay::heal);
        assert!(put("5").status.success(), "put after a heal");
        // the members themselves never lost each other
        assert_eq!((etcd.get("k").as_deref(), etcd.healthy_members()), (Some("5"), 3));
    }

    #[test]
    fn a_paused_member_is_unhealthy_until_resumed() {
        let etcd = EtcdCluster::start(3);
        etcd.pause(2);
        // a paused leader leaves the others electing for up to a second
        etcd.wait_healthy(2, Duration::from_secs(10));
        assert!(!healthy(etcd.member_addr(2)), "a paused member answered /health");
        let out = etcd.etcdctl(&["--command-timeout=2s", "put", "k", "v"]);
        assert!(out.status.success(), "put with one member paused: {out:?}\n{}", etcd.log_tails(20));
        etcd.resume(2);
        etcd.wait_healthy(3, Duration::from_secs(20));
    }
}
