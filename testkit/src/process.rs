//! Child processes for tests and benchmarks: started with their output in a
//! log file, stopped on drop (TERM, then KILL with their children), and what
//! /proc says about them (their sockets, their children, whether they live).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a process has to exit after SIGTERM before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// A child process, its stdout and stderr in a log file; stopped on drop
/// (SIGTERM, then SIGKILL for it and its direct children after [`STOP_GRACE`]).
#[derive(Debug)]
pub struct Proc {
    /// For messages.
    pub name: String,
    /// The process.
    pub child: Child,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
}

impl Proc {
    /// Starts `cmd` (stdin closed, stdout and stderr to `log`); panics with
    /// `name` if it cannot be started.
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Proc {
        let file = std::fs::File::create(log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file handle"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc { name: name.to_string(), child, log: log.to_path_buf() }
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status, once it has exited (reaps it).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// What it wrote so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its direct children (nginx workers), from /proc.
    pub fn children(&self) -> Vec<u32> {
        children(self.pid())
    }

    /// Waits until it exits by itself; panics with its log after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.exited() {
                return st;
            }
            assert!(Instant::now() < deadline, "{} (pid {}) did not exit within {limit:?}:\n{}", self.name, self.pid(), self.output());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL and reap (no grace).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        let kids = self.children();
        signal(self.pid(), "-TERM");
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline && self.exited().is_none() {
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.exited().is_none() {
            eprintln!("{} (pid {}) ignored SIGTERM; killing it", self.name, self.pid());
            self.kill();
        }
        // workers of a master that was killed outright would be orphaned
        for k in kids {
            if alive(k) {
                signal(k, "-KILL");
            }
        }
    }
}

/// Sends `sig` (e.g. "-TERM") to `pid` with kill(1); whether it was delivered.
pub fn signal(pid: u32, sig: &str) -> bool {
    Command::new("kill").args([sig, &pid.to_string()]).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// Whether `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
}

/// Direct children of `pid`, from /proc.
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    let mut out = Vec::new();
    for t in tasks.flatten() {
        if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
    }
    out
}

/// Processes whose command line contains `needle`, as "pid: command line".
pub fn processes_with(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) {
                found.push(format!("{}: {cmd}", e.file_name().to_string_lossy()));
            }
        }
    }
    found
}

/// Whether this process runs as root (nginx then needs `user root;`).
pub fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

/// One TCP socket a process holds, from /proc/<pid>/net/tcp{,6}.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Socket {
    /// Local port.
    pub local_port: u16,
    /// Remote address as the kernel prints it (hex `ADDR:PORT`).
    pub remote: String,
    /// The kernel's state code: `0A` LISTEN, `01` ESTABLISHED, `08` CLOSE_WAIT, ...
    pub state: String,
}

/// The TCP sockets process `pid` holds (its fds matched against
/// /proc/<pid>/net/tcp{,6}); sockets in TIME_WAIT belong to no process.
pub fn sockets(pid: u32) -> Vec<Socket> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return Vec::new() };
    let inodes: HashSet<String> = fds
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| Some(l.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.to_string()))
        .collect();
    let mut out = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() <= 9 || !inodes.contains(f[9]) {
                continue;
            }
            let Some(local_port) = f[1].rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok()) else { continue };
            out.push(Socket { local_port, remote: f[2].to_string(), state: f[3].to_string() });
        }
    }
    out
}

/// The states of the TCP sockets `pid` holds with local port `port`.
pub fn tcp_states(pid: u32, port: u16) -> Vec<String> {
    sockets(pid).into_iter().filter(|s| s.local_port == port).map(|s| s.state).collect()
}

/// The TCP sockets `pid` holds that are connected to `peer` (an IPv4
/// address), whatever their state.
pub fn sockets_to(pid: u32, peer: std::net::SocketAddr) -> Vec<Socket> {
    let std::net::SocketAddr::V4(v4) = peer else { return Vec::new() };
    // /proc prints the address as the u32 in host byte order (little endian here)
    let want = format!("{:08X}:{:04X}", u32::from_le_bytes(v4.ip().octets()), v4.port());
    sockets(pid).into_iter().filter(|s| s.remote == want).collect()
}

/// Whether process `pid` itself listens on TCP `port`. Tests run in
/// parallel, so "something accepts on the port" may be another test's
/// server; this is not.
pub fn listens(pid: u32, port: u16) -> bool {
    tcp_states(pid, port).iter().any(|s| s == "0A")
}

/// Waits until process `pid` listens on `port` (see [`listens`]); panics
/// with `what` after `timeout`.
pub fn wait_listening(pid: u32, port: u16, timeout: Duration, what: &str) {
    let deadline = Instant::now() + timeout;
    while !listens(pid, port) {
        assert!(Instant::now() < deadline, "{what} did not listen on port {port} within {timeout:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs the docker CLI (tests use it to look behind canopy's back); stdout
/// trimmed, "" when it fails (e.g. no such container).
pub fn docker(args: &[&str]) -> String {
    let out = std::process::Command::new("docker").args(args).output().expect("docker CLI");
    if !out.status.success() {
        return String::new();
    }
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs the workspace's `scripts/NAME` with bash and `args` (e.g. the test
/// image builders); panics with its output when it fails.
pub fn run_script(name: &str, args: &[&str]) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace").join("scripts").join(name);
    let out = Command::new("bash").arg(&path).args(args).output().unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(out.status.success(), "scripts/{name}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// `KIND-xxxxxx`, random per test process: a prefix for the names of a
/// test's containers, networks and image tags, so that runs never collide.
pub fn unique_prefix(kind: &str) -> String {
    let random = std::collections::hash_map::RandomState::new();
    let n = std::hash::BuildHasher::hash_one(&random, std::process::id()) & 0xff_ffff;
    format!("{kind}-{n:06x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_of_this_process_are_found_by_port_and_peer() {
        let listener = crate::ports::listener();
        let addr = listener.local_addr().unwrap();
        let me = std::process::id();
        assert!(listens(me, addr.port()));
        let client = std::net::TcpStream::connect(addr).unwrap();
        let (_accepted, _) = listener.accept().unwrap();
        let to = sockets_to(me, addr);
        assert_eq!(to.len(), 1, "{to:?}");
        assert_eq!((to[0].local_port, to[0].state.as_str()), (client.local_addr().unwrap().port(), "01"));
        drop(listener);
        assert!(!listens(me, addr.port()));
    }
}
