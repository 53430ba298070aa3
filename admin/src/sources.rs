//! What the server provides the controller with: where a config reload
//! reads the file ([`ConfigSource`]) and where certificates come from
//! ([`CertSource`], [`TlsParts`]).

use std::sync::Arc;

use canopy_proxy::{Certificate, FrontDoor, Topology, Tunables};

use crate::settings::ControlSettings;
use crate::validate::Validator;

/// A config file read again for a reload: what canopy applies in place.
pub struct Reload {
    /// Services, routes and the address template.
    pub topology: Topology,
    /// The checks of the new topology's services.
    pub validator: Validator,
    /// Validation window, drain and hook settings, ...
    pub settings: ControlSettings,
    /// Timeouts, retries, preview, access log.
    pub tunables: Tunables,
    /// What changed, in words, for the reply and the audit log.
    pub changes: Vec<String>,
    /// Run once the reload is in force (e.g. the new admin token).
    pub on_applied: Box<dyn FnOnce() + Send>,
}

/// Reads the config file again for `POST /reload` and SIGHUP (implemented by
/// the server, which owns the file format).
pub trait ConfigSource: Send + Sync {
    /// The new config's reloadable parts, or why it is refused: a parse or
    /// validation error with file, line and column, or a change that needs a
    /// new process (`canopy serve --upgrade`).
    fn read(&self) -> Result<Reload, String>;

    /// The file canopy was started with, as messages name it (`/etc/canopy/ux.toml`).
    fn file(&self) -> String;
}

/// Where certificates come from, implemented by the server (it knows the
/// files proxy.toml names and the ACME manager, if any).
pub trait CertSource: Send + Sync {
    /// Reads and checks every certificate file again: the certificates and
    /// the index of the default one, or why not (file and reason).
    fn read(&self) -> Result<(Vec<Certificate>, Option<usize>), String>;

    /// ACME's state for the status page (`null` without `[tls.acme]`).
    fn acme(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}

/// TLS state held by the controller when proxy.toml has TLS listeners.
pub(crate) struct TlsState {
    pub front: Arc<FrontDoor>,
    pub source: Box<dyn CertSource>,
    pub last_error: std::sync::Mutex<Option<String>>,
}

impl TlsState {
    pub(crate) fn new(parts: TlsParts) -> Self {
        TlsState { front: parts.front, source: parts.certificates, last_error: std::sync::Mutex::new(None) }
    }
}

/// HTTPS as the controller sees it: the front door whose SNI table holds the
/// certificates, and where certificate files are read from.
pub struct TlsParts {
    /// The front door (certificates, ACME answers).
    pub front: Arc<FrontDoor>,
    /// Reads and checks the certificate files again.
    pub certificates: Box<dyn CertSource>,
}
