//! What the CLI's client commands read from proxy.toml (`canopy status -c
//! FILE`): where the admin API listens and which file holds its token. Only
//! `[admin]`'s `listen` and `token-file` are read; every other key is
//! `canopy serve`'s business (and `check-config`'s), so a file the operator
//! cannot fully read (a certificate key) still points the CLI at its canopy.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::admin::LISTEN;
use super::error::{ConfigError, Ctx};
use super::value::Addr;

/// proxy.toml as the client reads it: other sections and keys are ignored.
#[derive(Deserialize)]
struct FileAccess {
    #[serde(default)]
    admin: FileAdminAccess,
}

/// `[admin]` as the client reads it.
#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct FileAdminAccess {
    listen: Option<Addr>,
    token_file: Option<String>,
}

/// How a client reaches the admin API a config file describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminAccess {
    /// Where to connect: `[admin] listen`, with a wildcard address
    /// (`0.0.0.0`, `[::]`) replaced by loopback.
    pub address: SocketAddr,
    /// `[admin] token-file`, relative to the config file's directory.
    pub token_file: Option<PathBuf>,
}

/// Reads the admin address and token file of the config at `path`.
pub fn admin_access(path: &Path) -> Result<AdminAccess, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
    let file: FileAccess = toml::from_str(&text).map_err(|source| ConfigError::parse(path, &text, source))?;
    let cx = Ctx { path, text: &text };
    let mut address = file.admin.listen.map_or(LISTEN, |a| a.0);
    if address.ip().is_unspecified() {
        let loopback = if address.is_ipv4() { IpAddr::V4(Ipv4Addr::LOCALHOST) } else { IpAddr::V6(Ipv6Addr::LOCALHOST) };
        address.set_ip(loopback);
    }
    Ok(AdminAccess { address, token_file: file.admin.token_file.map(|t| cx.relative(&t)) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<AdminAccess, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ux.toml");
        std::fs::write(&path, text).unwrap();
        admin_access(&path).map(|a| AdminAccess { token_file: a.token_file.map(|t| t.strip_prefix(dir.path()).unwrap().into()), ..a })
    }

    #[test]
    fn reads_listen_and_token_file_and_ignores_the_rest() {
        let a = read("[proxy]\nlisten = \"0.0.0.0:8080\"\n[admin]\nlisten = \"0.0.0.0:20901\"\ntoken-file = \"secrets/token\"\nstate-file = \"s.json\"\n[[service]]\nname = \"x\"\n").unwrap();
        assert_eq!(a, AdminAccess { address: "127.0.0.1:20901".parse().unwrap(), token_file: Some("secrets/token".into()) });
        let a = read("[admin]\nlisten = \"[::]:9902\"\n").unwrap();
        assert_eq!(a.address, "[::1]:9902".parse().unwrap());
        let a = read("[proxy]\nlisten = \"0.0.0.0:8080\"\n").unwrap();
        assert_eq!(a, AdminAccess { address: "127.0.0.1:9901".parse().unwrap(), token_file: None });
    }

    #[test]
    fn a_bad_admin_address_is_located() {
        let e = read("[admin]\nlisten = \"localhost\"\n").unwrap_err().to_string();
        assert!(e.contains("ux.toml:2:10") && e.contains("invalid listen address `localhost`"), "{e}");
    }
}
