//! The control plane's side of HTTPS: re-reading certificate files into the
//! SNI table (`POST /tls/reload`, `canopy tls reload`, a changed file, a
//! config reload) and the certificates' view for `/status` and `GET /tls`.
//! A refused file leaves every certificate as it was.

use std::time::SystemTime;

use super::Controller;
use crate::error::ControlError;
use crate::replies::{CertView, TlsView};
use crate::sources::TlsState;

impl Controller {
    fn tls(&self) -> Result<&TlsState, ControlError> {
        self.tls.as_ref().ok_or_else(|| {
            ControlError::NotEnabled(format!(
                "TLS is not configured: {} has no `listen-tls` (and [tls] section), so this canopy serves plain HTTP and no certificates",
                self.config_file()
            ))
        })
    }

    /// Re-reads every certificate file and swaps the SNI table whole: new
    /// handshakes get the new certificates, open connections keep theirs.
    /// A missing, bad, mismatched or expired file refuses the reload (422)
    /// and the certificates in use stay.
    pub fn reload_certificates(&self, actor: &str) -> Result<TlsView, ControlError> {
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
                return Err(ControlError::Config(format!("certificate reload refused, certificates unchanged: {e}")));
            }
        }
        drop(last);
        Ok(self.tls_view().expect("enabled above"))
    }

    /// `GET /tls`: the served certificates and ACME's state, or why this
    /// canopy has none.
    pub fn tls_status(&self) -> Result<TlsView, ControlError> {
        self.tls()?;
        Ok(self.tls_view().expect("TLS is enabled"))
    }

    /// The served certificates and ACME's state; `None` without TLS.
    pub fn tls_view(&self) -> Option<TlsView> {
        let tls = self.tls.as_ref()?;
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
