//! `[cluster]`: a fleet of canopy nodes sharing their release state
//! through etcd. Without it canopy is a single node with a local journal.

use std::time::Duration;

use canopy_admin::ClusterSettings;
use serde::Deserialize;
use toml::Spanned;

use super::error::{ConfigError, Ctx};
use super::value::{or, Dur};

/// `prefix` when unset.
const PREFIX: &str = "/canopy";
/// `session-ttl` when unset.
const SESSION_TTL: Duration = Duration::from_secs(5);
/// `apply-timeout` when unset (longer than the session TTL, so a node cut
/// off from etcd has left the fleet before a flip would call it late).
const APPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// The shortest lease etcd grants with its default election timeout.
const SESSION_TTL_MIN: Duration = Duration::from_secs(2);
/// The longest node name (a DNS label).
const NODE_MAX: usize = 63;

/// `[cluster]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct FileCluster {
    etcd: Spanned<Vec<String>>,
    node: Option<Spanned<String>>,
    prefix: Option<Spanned<String>>,
    session_ttl: Option<Spanned<Dur>>,
    apply_timeout: Option<Spanned<Dur>>,
}

/// `[cluster]`, checked; `None` without it.
pub(super) fn parse(cx: &Ctx<'_>, section: Option<&Spanned<FileCluster>>) -> Result<Option<ClusterSettings>, ConfigError> {
    let Some(section) = section else { return Ok(None) };
    let c = section.get_ref();
    let endpoints = c.etcd.get_ref().clone();
    if endpoints.is_empty() {
        return Err(cx.err(c.etcd.span(), "`etcd` lists no endpoint (write e.g. [\"http://10.0.0.1:2379\", \"http://10.0.0.2:2379\"])"));
    }
    if let Some(bad) = endpoints.iter().find(|e| !e.starts_with("http://") || e.len() == "http://".len()) {
        return Err(cx.err(c.etcd.span(), format!("etcd endpoint `{bad}` is not an http:// URL (write e.g. `http://10.0.0.1:2379`)")));
    }
    let node = match &c.node {
        Some(n) => {
            let name = n.get_ref();
            if !valid_node(name) {
                return Err(cx.err(n.span(), format!("node name `{name}`: use 1 to {NODE_MAX} letters, digits, `-`, `_` or `.`")));
            }
            name.clone()
        }
        None => {
            host_name().ok_or_else(|| cx.err(section.span(), "[cluster] has no `node` and the host name cannot be read; set `node`"))?
        }
    };
    let prefix = match &c.prefix {
        Some(p) if !p.get_ref().starts_with('/') || p.get_ref().len() < 2 => {
            return Err(cx.err(p.span(), format!("prefix `{}` must start with `/` and name something (e.g. `/canopy/shop`)", p.get_ref())));
        }
        Some(p) => p.get_ref().trim_end_matches('/').to_string(),
        None => PREFIX.to_string(),
    };
    let session_ttl = or(c.session_ttl.as_ref().map(|d| *d.get_ref()), SESSION_TTL);
    if let Some(t) = &c.session_ttl {
        if session_ttl < SESSION_TTL_MIN || session_ttl.subsec_nanos() != 0 {
            return Err(cx.err(t.span(), "session-ttl must be whole seconds, at least 2s (etcd's leases count in seconds)"));
        }
    }
    let apply_timeout = or(c.apply_timeout.as_ref().map(|d| *d.get_ref()), APPLY_TIMEOUT);
    if apply_timeout <= session_ttl {
        let span = c.apply_timeout.as_ref().map_or(section.span(), Spanned::span);
        return Err(cx.err(
            span,
            format!(
                "apply-timeout ({apply_timeout:?}) must be longer than session-ttl ({session_ttl:?}): a node cut off from etcd leaves the fleet only when its session expires"
            ),
        ));
    }
    Ok(Some(ClusterSettings { endpoints, node, prefix, session_ttl, apply_timeout }))
}

fn valid_node(name: &str) -> bool {
    !name.is_empty() && name.len() <= NODE_MAX && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// This host's name, as the kernel has it.
fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?.trim().to_string();
    valid_node(&name).then_some(name)
}
