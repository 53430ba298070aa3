//! Which canopy a client command talks to: the admin API's base URL and
//! token, each with where it came from (a flag, an environment variable, a
//! config file, the default), so that every connection or authentication
//! error can name what fixes it.
//!
//! Flags win over environment variables, and an explicit address or token
//! file wins over one read from a config file: `--admin`, then `-c FILE`'s
//! `[admin] listen`, then `CANOPY_ADMIN`, then `CANOPY_CONFIG`'s, then
//! `127.0.0.1:9901`; the same order for the token file.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::cli::ClientOpts;
use crate::config::{admin_access, AdminAccess};

/// The admin address when nothing names one (`[admin] listen`'s default).
pub const DEFAULT_ADMIN: &str = "http://127.0.0.1:9901";

/// What fixes a wrong or missing admin address, for error messages.
pub const FIX_ADMIN: &str = "Point the CLI at canopy's admin API with --admin HOST:PORT (or CANOPY_ADMIN), \
     or at its config with -c FILE (or CANOPY_CONFIG) to take the `[admin] listen` there";

/// What fixes a missing or wrong token, for error messages.
pub const FIX_TOKEN: &str = "give the file holding the admin token with --token-file FILE (or CANOPY_TOKEN_FILE), \
     or canopy's config with -c FILE (or CANOPY_CONFIG) whose `token-file` is read";

/// Where a setting came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A command-line flag (`--admin`).
    Flag(&'static str),
    /// An environment variable (`CANOPY_ADMIN`).
    Env(&'static str),
    /// A key of a config file, named by `-c` or `CANOPY_CONFIG` (`via`).
    Config {
        /// The config file.
        file: PathBuf,
        /// The key in it.
        key: &'static str,
        /// `-c` or `CANOPY_CONFIG`.
        via: &'static str,
    },
    /// Nothing named it.
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(name) => write!(f, "from {name}"),
            Origin::Env(name) => write!(f, "from {name}"),
            Origin::Config { file, key, via } => write!(f, "`{key}` in {} (from {via})", file.display()),
            Origin::Default => write!(f, "the default; nothing named another"),
        }
    }
}

/// The admin API a command talks to.
#[derive(Debug, Clone)]
pub struct Target {
    /// `http://host:port`, no trailing slash.
    pub base: String,
    /// Where the address came from.
    pub base_from: Origin,
    /// The bearer token, if a token file was named.
    pub token: Option<String>,
    /// The token file and where its name came from.
    pub token_from: Option<(PathBuf, Origin)>,
}

/// Why no target could be made: the message names the setting and its origin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TargetError(pub String);

/// A config file to read the admin address and token file from.
struct ConfigFile {
    path: PathBuf,
    via: &'static str,
    read: Option<AdminAccess>,
}

impl ConfigFile {
    fn access(&mut self) -> Result<&AdminAccess, TargetError> {
        if self.read.is_none() {
            let access =
                admin_access(&self.path).map_err(|e| TargetError(format!("cannot read the config file given with {}: {e}", self.via)))?;
            self.read = Some(access);
        }
        Ok(self.read.as_ref().expect("read above"))
    }

    fn origin(&self, key: &'static str) -> Origin {
        Origin::Config { file: self.path.clone(), key, via: self.via }
    }
}

/// Finds the admin API for `opts`, reading `env` for the environment
/// variables (the process's own in `canopy`, a map in tests).
pub fn find(opts: &ClientOpts, env: &dyn Fn(&str) -> Option<String>) -> Result<Target, TargetError> {
    let mut flag_config = opts.config.clone().map(|path| ConfigFile { path, via: "-c", read: None });
    let mut env_config = env("CANOPY_CONFIG").map(|p| ConfigFile { path: p.into(), via: "CANOPY_CONFIG", read: None });

    let (raw, base_from) = if let Some(a) = &opts.admin {
        (a.clone(), Origin::Flag("--admin"))
    } else if let Some(c) = flag_config.as_mut() {
        (c.access()?.address.to_string(), c.origin("[admin] listen"))
    } else if let Some(a) = env("CANOPY_ADMIN") {
        (a, Origin::Env("CANOPY_ADMIN"))
    } else if let Some(c) = env_config.as_mut() {
        (c.access()?.address.to_string(), c.origin("[admin] listen"))
    } else {
        (DEFAULT_ADMIN.to_string(), Origin::Default)
    };
    let base = admin_url(&raw).map_err(|why| TargetError(format!("invalid admin address `{raw}` ({base_from}): {why}")))?;

    let token_from = match &opts.token_file {
        Some(t) => Some((t.clone(), Origin::Flag("--token-file"))),
        None => match config_token(flag_config.as_mut())? {
            Some(found) => Some(found),
            None => match env("CANOPY_TOKEN_FILE") {
                Some(t) => Some((t.into(), Origin::Env("CANOPY_TOKEN_FILE"))),
                None => config_token(env_config.as_mut())?,
            },
        },
    };
    let token = match &token_from {
        Some((path, from)) => Some(read_token(path, from)?),
        None => None,
    };
    Ok(Target { base, base_from, token, token_from })
}

/// The token file a config file names, if it is given and names one.
fn config_token(config: Option<&mut ConfigFile>) -> Result<Option<(PathBuf, Origin)>, TargetError> {
    let Some(c) = config else { return Ok(None) };
    let file = c.access()?.token_file.clone();
    Ok(file.map(|t| (t, c.origin("[admin] token-file"))))
}

fn read_token(path: &Path, from: &Origin) -> Result<String, TargetError> {
    let raw = std::fs::read_to_string(path)
        .map_err(|e| TargetError(format!("cannot read the admin token file {} ({from}): {e}; {FIX_TOKEN}", path.display())))?;
    let token = raw.trim().to_string();
    if token.is_empty() {
        return Err(TargetError(format!("the admin token file {} ({from}) is empty", path.display())));
    }
    Ok(token)
}

/// `host:port` or `http(s)://host:port[/]` as a base URL without a trailing slash.
pub fn admin_url(raw: &str) -> Result<String, String> {
    const EXPECTED: &str = "expected host:port or http://host:port, such as 127.0.0.1:9901";
    let raw = raw.trim();
    let with_scheme = if raw.contains("://") { raw.to_string() } else { format!("http://{raw}") };
    let url = reqwest::Url::parse(&with_scheme).map_err(|e| format!("{e}; {EXPECTED}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("scheme `{}` is not http or https; {EXPECTED}", url.scheme()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("no host; {EXPECTED}"));
    }
    if url.path() != "/" || url.query().is_some() || !url.username().is_empty() {
        return Err(format!("the admin API's address takes no path, query or user; {EXPECTED}"));
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn opts(config: Option<&Path>, admin: Option<&str>, token_file: Option<&Path>) -> ClientOpts {
        ClientOpts { config: config.map(Into::into), admin: admin.map(Into::into), token_file: token_file.map(Into::into), json: false }
    }

    fn env_of(vars: &[(&str, String)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn addresses_without_a_scheme_are_http() {
        assert_eq!(admin_url("127.0.0.1:20901").unwrap(), "http://127.0.0.1:20901");
        assert_eq!(admin_url("localhost:9901").unwrap(), "http://localhost:9901");
        assert_eq!(admin_url("http://127.0.0.1:9901/").unwrap(), "http://127.0.0.1:9901");
        assert_eq!(admin_url("https://admin.shop.example").unwrap(), "https://admin.shop.example");
        assert_eq!(admin_url("[::1]:9901").unwrap(), "http://[::1]:9901");
        for bad in ["ftp://x:1", "127.0.0.1:9901/status", "http://", "a b:1"] {
            assert!(admin_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn flags_beat_the_environment_and_explicit_beats_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let (ux, env_cfg) = (dir.path().join("ux.toml"), dir.path().join("env.toml"));
        std::fs::write(dir.path().join("token"), "t0123456789abcdef\n").unwrap();
        std::fs::write(&ux, "[admin]\nlisten = \"0.0.0.0:20901\"\ntoken-file = \"token\"\n").unwrap();
        std::fs::write(&env_cfg, "[admin]\nlisten = \"127.0.0.1:30901\"\n").unwrap();
        let none = env_of(&[]);

        let t = find(&opts(None, None, None), &none).unwrap();
        assert_eq!((t.base.as_str(), &t.base_from, t.token), (DEFAULT_ADMIN, &Origin::Default, None));

        let t = find(&opts(Some(&ux), None, None), &none).unwrap();
        assert_eq!(t.base, "http://127.0.0.1:20901");
        assert_eq!(t.token.as_deref(), Some("t0123456789abcdef"));
        assert!(t.base_from.to_string().contains("ux.toml (from -c)"), "{}", t.base_from);

        // -c beats CANOPY_ADMIN; --admin beats -c
        let env = env_of(&[("CANOPY_ADMIN", "127.0.0.1:1".into()), ("CANOPY_CONFIG", env_cfg.display().to_string())]);
        assert_eq!(find(&opts(Some(&ux), None, None), &env).unwrap().base, "http://127.0.0.1:20901");
        assert_eq!(find(&opts(Some(&ux), Some("127.0.0.1:2"), None), &env).unwrap().base, "http://127.0.0.1:2");
        // CANOPY_ADMIN beats CANOPY_CONFIG
        assert_eq!(find(&opts(None, None, None), &env).unwrap().base, "http://127.0.0.1:1");
        let env = env_of(&[("CANOPY_CONFIG", env_cfg.display().to_string())]);
        let t = find(&opts(None, None, None), &env).unwrap();
        assert_eq!((t.base.as_str(), t.token), ("http://127.0.0.1:30901", None));
        assert!(t.base_from.to_string().contains("(from CANOPY_CONFIG)"), "{}", t.base_from);
    }

    #[test]
    fn errors_name_the_origin() {
        let e = find(&opts(None, Some("ftp://x:1"), None), &env_of(&[])).unwrap_err().to_string();
        assert!(e.contains("invalid admin address `ftp://x:1` (from --admin)"), "{e}");
        let e = find(&opts(None, None, None), &env_of(&[("CANOPY_TOKEN_FILE", "/nonexistent/token".into())])).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/token (from CANOPY_TOKEN_FILE)") && e.contains("--token-file"), "{e}");
        let e = find(&opts(Some(Path::new("/nonexistent/ux.toml")), None, None), &env_of(&[])).unwrap_err().to_string();
        assert!(e.contains("config file given with -c") && e.contains("/nonexistent/ux.toml"), "{e}");
    }
}
