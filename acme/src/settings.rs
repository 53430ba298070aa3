//! AcmeSettings: what to certify, where to ask, where to cache; validated once.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use crate::AcmeError;

/// The default of [`AcmeSettings::retry_interval`]: one hour.
pub const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_secs(3600);

/// The ACME settings, as the proxy's config loader builds them from
/// `[tls.acme]`. [`AcmeManager::new`](crate::AcmeManager::new) validates them
/// (see [`AcmeSettings::validate`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcmeSettings {
    /// The ACME directory URL (https only), e.g.
    /// `https://acme-v02.api.letsencrypt.org/directory`.
    pub directory: String,
    /// Contact URIs registered with the account, e.g. `["mailto:ops@example.com"]`;
    /// may be empty. Only used when the account is created.
    pub contact: Vec<String>,
    /// One certificate per inner list; the first name is the primary one and
    /// names the cache files. E.g. `[["shop.example", "www.shop.example"]]`.
    /// Every name must be a DNS name (no wildcard: HTTP-01 cannot prove one).
    pub names: Vec<Vec<String>>,
    /// Holds `account.json` and `<primary>.crt` / `<primary>.key`; created
    /// with mode 0700 if missing.
    pub cache_dir: PathBuf,
    /// A PEM root certificate for the ACME server's own HTTPS (a test CA such
    /// as pebble's). When set, only this root is trusted for talking to the
    /// server; `None` trusts the platform's roots.
    pub ca_root: Option<PathBuf>,
    /// After a failed attempt, try again this long later. Default
    /// [`DEFAULT_RETRY_INTERVAL`] (1 h).
    pub retry_interval: Duration,
}

impl AcmeSettings {
    /// Checks the rules that need no file system: an https directory, at
    /// least one non-empty name set, every name a DNS name that is not a
    /// wildcard nor an IP address, no name twice in a set and no primary
    /// name twice. Called by [`AcmeManager::new`](crate::AcmeManager::new);
    /// the config loader may call it to fail before binding any port.
    pub fn validate(&self) -> Result<(), AcmeError> {
        if !self.directory.starts_with("https://") {
            return Err(AcmeError::BadDirectory { directory: self.directory.clone() });
        }
        if self.names.is_empty() {
            return Err(AcmeError::NoNames);
        }
        let mut primaries = HashSet::new();
        for (index, set) in self.names.iter().enumerate() {
            let Some(primary) = set.first() else {
                return Err(AcmeError::EmptyNameSet { index });
            };
            let mut seen = HashSet::new();
            for name in set {
                check_name(name)?;
                if !seen.insert(name.to_ascii_lowercase()) {
                    return Err(AcmeError::DuplicateName { name: name.to_ascii_lowercase() });
                }
            }
            if !primaries.insert(primary.to_ascii_lowercase()) {
                return Err(AcmeError::DuplicateName { name: primary.to_ascii_lowercase() });
            }
        }
        Ok(())
    }
}

/// One name: a DNS name HTTP-01 can validate. Its being a DNS name also makes
/// it a safe file name (no `/`, no `..`).
fn check_name(name: &str) -> Result<(), AcmeError> {
    let bad = |reason| Err(AcmeError::BadName { name: name.to_string(), reason });
    if name.starts_with("*.") {
        return bad("wildcards need DNS-01, canopy only does HTTP-01");
    }
    if name.parse::<std::net::IpAddr>().is_ok() {
        return bad("IP addresses are not supported, only DNS names");
    }
    if rustls_pki_types::DnsName::try_from(name).is_err() || !name.contains('.') || name.ends_with('.') {
        return bad("not a DNS name such as shop.example");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(names: &[&[&str]]) -> AcmeSettings {
        AcmeSettings {
            directory: "https://acme.test/dir".into(),
            contact: vec![],
            names: names.iter().map(|set| set.iter().map(|n| n.to_string()).collect()).collect(),
            cache_dir: PathBuf::from("/nonexistent"),
            ca_root: None,
            retry_interval: DEFAULT_RETRY_INTERVAL,
        }
    }

    fn message(names: &[&[&str]]) -> String {
        settings(names).validate().unwrap_err().to_string()
    }

    #[test]
    fn accepts_name_sets() {
        settings(&[&["shop.example", "www.shop.example"], &["api.example"]]).validate().unwrap();
    }

    #[test]
    fn rejects_what_http01_cannot_prove() {
        assert_eq!(
            message(&[&["*.shop.example"]]),
            "ACME: invalid certificate name `*.shop.example`: wildcards need DNS-01, canopy only does HTTP-01"
        );
        assert_eq!(
            message(&[&["127.0.0.1"]]),
            "ACME: invalid certificate name `127.0.0.1`: IP addresses are not supported, only DNS names"
        );
        for name in ["../etc", "shop/example", "localhost", "shop example", ""] {
            assert_eq!(message(&[&[name]]), format!("ACME: invalid certificate name `{name}`: not a DNS name such as shop.example"));
        }
    }

    #[test]
    fn rejects_empty_and_duplicate_sets() {
        assert_eq!(message(&[]), "ACME: no certificate names given: list at least one set of names");
        assert_eq!(message(&[&["a.example"], &[]]), "ACME: name set 1 is empty: each certificate needs at least one name");
        assert_eq!(message(&[&["a.example", "A.example"]]), "ACME: certificate name `a.example` is listed twice");
        assert_eq!(message(&[&["a.example"], &["a.example", "b.example"]]), "ACME: certificate name `a.example` is listed twice");
    }

    #[test]
    fn rejects_plain_http_directory() {
        let mut s = settings(&[&["a.example"]]);
        s.directory = "http://acme.test/dir".into();
        assert_eq!(s.validate().unwrap_err().to_string(), "ACME: directory `http://acme.test/dir` is not an https:// URL");
    }
}
