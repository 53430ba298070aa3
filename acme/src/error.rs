//! AcmeError: every way getting or keeping a certificate can fail, naming the name, file or server.

use std::path::PathBuf;

/// The error of settings validation, of start-up and of one renewal attempt.
/// Each variant names what it is about (the certificate's primary name, the
/// file or the ACME server), so that the message alone, as shown in
/// [`CertStatus::last_error`](crate::CertStatus::last_error) and in the log,
/// tells an operator what went wrong.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    /// `names` lists no certificate at all.
    #[error("ACME: no certificate names given: list at least one set of names")]
    NoNames,
    /// One of the `names` sets is empty.
    #[error("ACME: name set {index} is empty: each certificate needs at least one name")]
    EmptyNameSet {
        /// The 0-based position of the set.
        index: usize,
    },
    /// A name cannot be validated by HTTP-01.
    #[error("ACME: invalid certificate name `{name}`: {reason}")]
    BadName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The same name appears twice (in one set, or as the primary of two sets,
    /// whose cache files would collide).
    #[error("ACME: certificate name `{name}` is listed twice")]
    DuplicateName {
        /// The name (lowercased).
        name: String,
    },
    /// The directory URL is not an https:// URL.
    #[error("ACME: directory `{directory}` is not an https:// URL")]
    BadDirectory {
        /// The URL as given.
        directory: String,
    },
    /// The cache directory could not be created or read.
    #[error("ACME: cache directory {}: {source}", path.display())]
    CacheDir {
        /// The directory.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The `ca_root` file is missing or holds no PEM certificate.
    #[error("ACME: CA root {}: {reason}", path.display())]
    CaRoot {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// `account.json` exists but cannot be read or parsed.
    #[error("ACME: account file {}: {reason}; remove it to register a new account", path.display())]
    AccountFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Registering or restoring the account with the ACME server failed
    /// (the server is unreachable, or refused the account).
    #[error("ACME: account at {directory}: {source}")]
    Account {
        /// The directory URL.
        directory: String,
        /// What the ACME client saw.
        #[source]
        source: instant_acme::Error,
    },
    /// One step of an order failed (the server is unreachable, answered with
    /// an error, or did not finish in time).
    #[error("ACME: certificate for {primary}: {step} failed: {source}")]
    Order {
        /// The certificate's primary name.
        primary: String,
        /// What was being done (`new order`, `finalize`, ...).
        step: &'static str,
        /// What the ACME client saw.
        #[source]
        source: instant_acme::Error,
    },
    /// The server offered no http-01 challenge for a name.
    #[error("ACME: the server offers no http-01 challenge for `{name}`")]
    NoHttp01 {
        /// The name.
        name: String,
    },
    /// The server could not validate a name (it fetched the wrong answer, or none).
    #[error("ACME: validation of `{name}` failed: {reason}")]
    Invalid {
        /// The name.
        name: String,
        /// The server's reason.
        reason: String,
    },
    /// An issued or cached certificate is unusable (does not parse, does not
    /// match its key, does not cover the names).
    #[error("ACME: certificate for {primary}: {reason}")]
    Certificate {
        /// The certificate's primary name.
        primary: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The proxy refused to install the certificate.
    #[error("ACME: the proxy refused the certificate for {primary}: {reason}")]
    Refused {
        /// The certificate's primary name.
        primary: String,
        /// The proxy's reason.
        reason: String,
    },
    /// Writing a file of the cache failed.
    #[error("ACME: cannot write {}: {source}", path.display())]
    CacheWrite {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
}

impl AcmeError {
    /// Whether the server said the account no longer exists (an ACME test
    /// server that restarted forgets its accounts): the next attempt registers
    /// a new one.
    pub(crate) fn account_gone(&self) -> bool {
        match self {
            Self::Order { source: instant_acme::Error::Api(problem), .. } => {
                problem.r#type.as_deref() == Some("urn:ietf:params:acme:error:accountDoesNotExist")
            }
            _ => false,
        }
    }
}
