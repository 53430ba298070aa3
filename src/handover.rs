//! Graceful upgrade: which canopy to take over from (its pid file), and the
//! listening sockets this process hands to its successor over pingora's
//! upgrade socket (found through /proc, so no socket is ever closed and
//! re-bound: connections wait in the shared accept queue meanwhile).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use pingora::server::Fds;
use rustix::process::Pid;

/// Why a hand-over could not start.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    /// No live `canopy serve` is named by the pid file.
    #[error("no running canopy to take over from: {0}")]
    NoPredecessor(String),
    /// Some listen addresses have no listening socket in this process.
    #[error("listening sockets not found for {0}")]
    MissingSockets(String),
    /// The new process did not take the sockets.
    #[error("sending the listening sockets to {path}: {reason}")]
    Send {
        /// The upgrade socket.
        path: String,
        /// What failed (the new process is gone or never listened).
        reason: String,
    },
}

/// The pid `serve --upgrade` takes over from: the one in `pid_file`, if that
/// process is alive and is a `canopy serve` (a stale file may name a pid
/// reused by another program, which SIGQUIT would make dump core).
pub fn predecessor(pid_file: &Path) -> Result<Pid, HandoverError> {
    let text = std::fs::read_to_string(pid_file).map_err(|e| HandoverError::NoPredecessor(format!("{}: {e}", pid_file.display())))?;
    let pid = text
        .trim()
        .parse::<i32>()
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| HandoverError::NoPredecessor(format!("{} does not hold a pid", pid_file.display())))?;
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", pid.as_raw_nonzero())).unwrap_or_default();
    if pid.as_raw_nonzero().get() as u32 == std::process::id() || !cmdline.split(|b| *b == 0).any(|arg| arg == b"serve") {
        return Err(HandoverError::NoPredecessor(format!(
            "pid {} from {} is not a running `canopy serve`",
            pid.as_raw_nonzero(),
            pid_file.display()
        )));
    }
    Ok(pid)
}

/// Returns once process `pid` has exited (polled every 10 ms).
pub fn wait_exited(pid: Pid) {
    let proc_dir = format!("/proc/{}", pid.as_raw_nonzero());
    // a zombie (exited, not yet reaped by its parent) still has /proc/<pid>
    let alive = || {
        std::fs::read_to_string(format!("{proc_dir}/stat")).is_ok_and(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
    };
    while alive() {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Waits (at most `limit`, polling every 2 ms) until `pid_file` names a
/// process other than `me`: the successor writes it once it serves. Returns
/// whether it did.
pub fn wait_successor(pid_file: &Path, me: u32, limit: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let named = std::fs::read_to_string(pid_file).ok().and_then(|t| t.trim().parse::<u32>().ok());
        if named.is_some_and(|pid| pid != me) {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// Writes this process's pid to `path` (temp file and rename, so an upgrade
/// never reads half a pid).
pub fn write_pid_file(path: &Path) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, format!("{}\n", std::process::id()))?;
    std::fs::rename(&tmp, path)
}

/// This process's listening TCP sockets bound to `addrs`, keyed the way
/// pingora keys them (`addr.to_string()`, as given to `add_tcp`).
pub fn listening_fds(addrs: &[SocketAddr]) -> Result<Fds, HandoverError> {
    let listening = listening_inodes();
    let mut fds = Fds::new();
    let mut found = HashSet::new();
    for entry in std::fs::read_dir("/proc/self/fd").into_iter().flatten().flatten() {
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Ok(link) = std::fs::read_link(entry.path()) else { continue };
        let Some(inode) = link.to_str().and_then(|l| l.strip_prefix("socket:[")?.strip_suffix(']')?.parse::<u64>().ok()) else {
            continue;
        };
        if let Some(addr) = listening.get(&inode).filter(|a| addrs.contains(a)) {
            if found.insert(*addr) {
                fds.add(addr.to_string(), fd);
            }
        }
    }
    let missing: Vec<String> = addrs.iter().filter(|a| !found.contains(a)).map(|a| a.to_string()).collect();
    if missing.is_empty() {
        Ok(fds)
    } else {
        Err(HandoverError::MissingSockets(missing.join(", ")))
    }
}

/// Sends `fds` to the new process listening on `path` (pingora retries the
/// connection for about five seconds). Blocks.
pub fn send(fds: &Fds, path: &str) -> Result<(), HandoverError> {
    fds.send_to_sock(path).map(drop).map_err(|e| HandoverError::Send { path: path.to_string(), reason: e.to_string() })
}

/// Socket inode -> local address of every TCP socket in LISTEN state this
/// network namespace has (`/proc/self/net/tcp` and `tcp6`).
fn listening_inodes() -> HashMap<u64, SocketAddr> {
    let mut out = HashMap::new();
    for (table, v6) in [("tcp", false), ("tcp6", true)] {
        let text = std::fs::read_to_string(format!("/proc/self/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" {
                continue;
            }
            if let (Some(addr), Ok(inode)) = (parse_proc_addr(f[1], v6), f[9].parse::<u64>()) {
                out.insert(inode, addr);
            }
        }
    }
    out
}

/// `0100007F:1F90` (IPv4) or 32 hex digits and a port (IPv6): the kernel
/// prints each 32-bit word of the address as a host-order integer, so its
/// bytes in memory are that integer's native-endian bytes.
fn parse_proc_addr(s: &str, v6: bool) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Vec<u32> = (0..ip.len() / 8).map(|i| u32::from_str_radix(&ip[i * 8..i * 8 + 8], 16)).collect::<Result<_, _>>().ok()?;
    let ip = match (v6, words.as_slice()) {
        (false, [w]) => IpAddr::V4(Ipv4Addr::from(w.to_ne_bytes())),
        (true, [a, b, c, d]) => {
            let mut bytes = [0u8; 16];
            for (i, w) in [a, b, c, d].into_iter().enumerate() {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_kernel_socket_addresses() {
        assert_eq!(parse_proc_addr("0100007F:1F90", false), Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(parse_proc_addr("00000000:0050", false), Some("0.0.0.0:80".parse().unwrap()));
        assert_eq!(parse_proc_addr("00000000000000000000000001000000:1F90", true), Some("[::1]:8080".parse().unwrap()));
        assert_eq!(parse_proc_addr("00000000000000000000000000000000:01BB", true), Some("[::]:443".parse().unwrap()));
        assert_eq!(parse_proc_addr("zz:1", false), None);
    }

    #[test]
    fn finds_its_own_listening_sockets() {
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let b = std::net::TcpListener::bind("[::1]:0").unwrap();
        let addrs = [a.local_addr().unwrap(), b.local_addr().unwrap()];
        let fds = listening_fds(&addrs).unwrap();
        use std::os::fd::AsRawFd;
        assert_eq!(fds.get(&addrs[0].to_string()), Some(&a.as_raw_fd()));
        assert_eq!(fds.get(&addrs[1].to_string()), Some(&b.as_raw_fd()));
        let not_ours: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let e = listening_fds(&[not_ours]).err().expect("not found").to_string();
        assert_eq!(e, "listening sockets not found for 127.0.0.1:1");
    }
}
