//! canopy-acme: certificates from an ACME CA (RFC 8555) by HTTP-01, for canopy.
//!
//! The proxy builds [`AcmeSettings`] from `[tls.acme]`, implements
//! [`AcmeSink`] (answer challenge tokens, install certificates), builds an
//! [`AcmeManager`] and spawns [`AcmeManager::run`]. The manager then
//!
//! 1. installs each certificate cached in `cache_dir` that is still good,
//!    without network I/O,
//! 2. orders each missing certificate (account in `cache_dir/account.json`,
//!    registered on first use), answering the http-01 challenges through
//!    the sink, installs it and only then caches it (atomically, key 0600),
//! 3. renews each at two thirds of its lifetime; after a failure the old
//!    certificate stays installed and it retries after `retry_interval`.
//!
//! [`AcmeManager::status`] and the counters feed the status page and metrics.
//! This crate does not know pingora.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod certificate;
mod error;
mod manager;
mod order;
mod persist;
mod settings;
mod sink;
mod status;

pub use error::AcmeError;
pub use manager::AcmeManager;
pub use settings::{AcmeSettings, DEFAULT_RETRY_INTERVAL};
pub use sink::AcmeSink;
pub use status::CertStatus;
