//! The control plane's side of HTTPS: re-reading certificate files into the
//! SNI table (`POST /tls/reload`, `canopy tls reload`, a changed file, a
//! config reload) and the certificates' view for `/status` and `GET /tls`.
//! A refused file leaves every certificate as it was.

use std::sync::Arc;
use std::time::SystemTime;

use canopy_proxy::{Certificate, FrontCollector, FrontDoor};
use serde::Serialize;

use super::Controller;
use crate::error::ApiError;

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

/// TLS state held by the controller once the server enables it.
pub(super) struct Tls {
    front: Arc<FrontDoor>,
    source: Box<dyn CertSource>,
    last_error: std::sync::Mutex<Option<String>>,
}

/// One served certificate, for `/status` and `GET /tls`.
#[derive(Debug, Clone, Serialize)]
pub struct CertView {
    /// DNS names it is served for.
    pub names: Vec<String>,
    /// Its file, or `acme:<name>`.
    pub source: String,
    /// End of validity, RFC 3339.
    pub not_after: String,
    /// Seconds left until then (negative once expired).
    pub expires_in_secs: i64,
}

/// The TLS part of the status.
#[derive(Debug, Clone, Serialize)]
pub struct TlsView {
    /// Every certificate in the SNI table (the first is the default unless
    /// one is marked `default`).
    pub certificates: Vec<CertView>,
    /// Why the last certificate reload was refused (cleared by a good one).
    pub last_reload_error: Option<String>,
    /// ACME's state, `null` without `[tls.acme]`.
    pub acme: serde_json::Value,
}

impl Controller {
    /// Registers the front door's metrics (handshakes, certificate expiry,
    /// requests by protocol) on `/metrics`; called once at start.
    pub fn register_front_door(&self, front: Arc<FrontDoor>) {
        self.metrics.register(Box::new(FrontCollector::new(front)));
    }

    /// Registers more metrics on `/metrics` (e.g. ACME's); called at start.
    pub fn register_metrics(&self, collector: Box<dyn canopy_proxy::prometheus::core::Collector>) {
        self.metrics.register(collector);
    }

    /// Turns on certificate reloads and the TLS view; called once at start
    /// when proxy.toml has TLS listeners.
    pub fn enable_tls(&self, front: Arc<FrontDoor>, source: Box<dyn CertSource>) {
        let tls = Tls { front, source, last_error: std::sync::Mutex::new(None) };
        if self.tls.set(tls).is_err() {
            log::error!("enable_tls called twice; keeping the first");
        }
    }

    fn tls(&self) -> Result<&Tls, ApiError> {
        self.tls.get().ok_or_else(|| ApiError::BadRequest("TLS is not configured: proxy.toml has no `listen-tls`".into()))
    }

    /// Re-reads every certificate file and swaps the SNI table whole: new
    /// handshakes get the new certificates, open connections keep theirs.
    /// A missing, bad, mismatched or expired file refuses the reload (422)
    /// and the certificates in use stay.
    pub fn reload_certificates(&self, actor: &str) -> Result<TlsView, ApiError> {
        let tls = self.tls()?;
        let result = tls.source.read();
        let mut last = tls.last_error.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok((certs, default)) => {
                let n = certs.len();
                tls.front.certs.set_files(certs, default);
                *last = None;
                log::info!("certificates reloaded by {actor}: {n} from files");
            }
            Err(e) => {
                log::error!("certificate reload by {actor} refused, certificates unchanged: {e}");
                *last = Some(e.clone());
                return Err(ApiError::Config(format!("certificate reload refused, certificates unchanged: {e}")));
            }
        }
        drop(last);
        Ok(self.tls_view().expect("enabled above"))
    }

    /// The served certificates and ACME's state; `None` without TLS.
    pub fn tls_view(&self) -> Option<TlsView> {
        let tls = self.tls.get()?;
        let now = SystemTime::now();
        let certificates = tls
            .front
            .certs
            .load()
            .certificates()
            .iter()
            .map(|c| CertView {
                names: c.names().to_vec(),
                source: c.source().to_string(),
                not_after: humantime::format_rfc3339_seconds(c.not_after()).to_string(),
                expires_in_secs: match c.not_after().duration_since(now) {
                    Ok(left) => left.as_secs() as i64,
                    Err(e) => -(e.duration().as_secs() as i64),
                },
            })
            .collect();
        let last_reload_error = tls.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Some(TlsView { certificates, last_reload_error, acme: tls.source.acme() })
    }
}
