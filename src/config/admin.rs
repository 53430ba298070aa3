//! `[admin]`: the admin API's address and token, the state file and what
//! lives beside it (pid file, upgrade socket), and the admin thread's priority.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;

use canopy_admin::AdminPriority;
use serde::Deserialize;
use toml::Spanned;

use super::error::{ConfigError, Ctx};
use super::proxy::Proxy;
use super::value::Addr;

/// `listen` when unset: loopback only.
pub(super) const LISTEN: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 9901));
/// `state-file` when unset (relative to the config file).
const STATE_FILE: &str = "canopy-state.json";
/// `upgrade-socket` when unset: the state file's path plus this.
const UPGRADE_SOCKET_SUFFIX: &str = ".upgrade.sock";
/// The pid file is always the state file's path plus this.
const PID_FILE_SUFFIX: &str = ".pid";
/// `realtime` when unset.
const REALTIME: bool = true;
/// `nice` when unset (used when real-time scheduling is refused).
const NICE: i32 = -10;
/// The shortest admin token accepted.
const TOKEN_MIN: usize = 16;
/// `sun_path` holds 108 bytes with the terminating NUL.
const SOCKET_PATH_MAX: usize = 107;

/// `[admin]` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct FileAdmin {
    listen: Option<Spanned<Addr>>,
    state_file: Option<String>,
    token_file: Option<Spanned<String>>,
    upgrade_socket: Option<Spanned<String>>,
    nice: Option<Spanned<i32>>,
    realtime: Option<bool>,
}

/// `[admin]`, checked.
pub(super) struct Admin {
    pub listen: SocketAddr,
    pub token: Option<String>,
    pub state_file: PathBuf,
    pub upgrade_socket: PathBuf,
    pub pid_file: PathBuf,
    pub priority: AdminPriority,
}

impl Admin {
    /// The state file's path plus `suffix` (where canopy keeps what belongs to it).
    pub fn beside_state(&self, suffix: &str) -> PathBuf {
        beside(&self.state_file, suffix)
    }
}

fn beside(state_file: &std::path::Path, suffix: &str) -> PathBuf {
    let mut p = state_file.to_path_buf().into_os_string();
    p.push(suffix);
    PathBuf::from(p)
}

/// Checks `[admin]`, and that its address is apart from every proxy address.
pub(super) fn parse(cx: &Ctx<'_>, a: &FileAdmin, proxy: &Proxy) -> Result<Admin, ConfigError> {
    let listen = a.listen.as_ref().map_or(LISTEN, |a| a.get_ref().0);
    let token = match &a.token_file {
        Some(t) => {
            let p = cx.relative(t.get_ref());
            let raw = std::fs::read_to_string(&p).map_err(|e| cx.err(t.span(), format!("cannot read token file {}: {e}", p.display())))?;
            let token = raw.trim().to_string();
            if token.len() < TOKEN_MIN {
                return Err(cx.err(t.span(), format!("token file {} holds fewer than {TOKEN_MIN} characters", p.display())));
            }
            Some(token)
        }
        None => None,
    };
    let admin_span = a.listen.as_ref().map_or(0..0, |a| a.span());
    let all: Vec<(SocketAddr, Range<usize>)> = proxy
        .listen
        .iter()
        .map(|a| (*a, proxy.listen_span.clone()))
        .chain(proxy.listen_tls.iter().map(|a| (*a, proxy.listen_tls_span.clone())))
        .collect();
    for (i, (a, span)) in all.iter().enumerate() {
        if let Some((b, _)) = all[..i].iter().find(|(b, _)| overlaps(a, b)) {
            return Err(cx.err(span.clone(), format!("listen addresses {b} and {a} overlap: each address may be listed once")));
        }
        if overlaps(a, &listen) {
            // pingora would share one socket between both services: half the
            // proxy's connections would reach the admin API and vice versa
            let (span, which) = if admin_span.is_empty() {
                (span.clone(), "the default admin listen address")
            } else {
                (admin_span.clone(), "admin listen")
            };
            return Err(cx.err(span, format!("{which} {listen} overlaps proxy listen {a}: the admin API needs a port of its own")));
        }
    }
    if !listen.ip().is_loopback() && token.is_none() {
        return Err(cx.err(
            admin_span,
            format!("admin listens on non-loopback {listen}: set `token-file` so the admin API requires a bearer token"),
        ));
    }
    let nice = match &a.nice {
        Some(n) if !(-20..=19).contains(n.get_ref()) => return Err(cx.err(n.span(), "nice must be between -20 and 19")),
        Some(n) => *n.get_ref(),
        None => NICE,
    };
    let state_file = cx.relative(a.state_file.as_deref().unwrap_or(STATE_FILE));
    let (upgrade_socket, socket_span) = match &a.upgrade_socket {
        Some(s) => (cx.relative(s.get_ref()), Some(s.span())),
        None => (beside(&state_file, UPGRADE_SOCKET_SUFFIX), None),
    };
    if upgrade_socket.as_os_str().len() > SOCKET_PATH_MAX {
        let message = format!(
            "upgrade socket path {} is longer than the {SOCKET_PATH_MAX} bytes a Unix socket path may have; set `upgrade-socket` to a shorter path",
            upgrade_socket.display()
        );
        return Err(cx.err(socket_span.unwrap_or(0..0), message));
    }
    Ok(Admin {
        listen,
        token,
        pid_file: beside(&state_file, PID_FILE_SUFFIX),
        state_file,
        upgrade_socket,
        priority: AdminPriority { realtime: a.realtime.unwrap_or(REALTIME), nice },
    })
}

/// Whether binding both addresses would clash: the same port on the same IP,
/// or on a wildcard that covers the other (`[::]` is dual-stack on Linux).
fn overlaps(a: &SocketAddr, b: &SocketAddr) -> bool {
    let covers = |x: &SocketAddr, y: &SocketAddr| x.ip() == y.ip() || (x.ip().is_unspecified() && (x.is_ipv6() || y.is_ipv4()));
    a.port() == b.port() && (covers(a, b) || covers(b, a))
}
