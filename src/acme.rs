//! `[tls.acme]` wired to the proxy: the ACME manager answers its HTTP-01
//! challenges through the front door (the plaintext listener serves
//! `/.well-known/acme-challenge/`), installs certificates into the same
//! SNI table as the files, and runs as a background service. Its state
//! reaches the status page and `/metrics`.

use std::sync::Arc;

use async_trait::async_trait;
use canopy_acme::{AcmeManager, AcmeSettings, AcmeSink};
use canopy_proxy::prometheus::core::{Collector, Desc, Opts};
use canopy_proxy::prometheus::proto::MetricFamily;
use canopy_proxy::prometheus::{IntCounterVec, IntGaugeVec};
use canopy_proxy::{Certificate, FrontDoor};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

/// The proxy side of ACME: challenge answers and the SNI table.
struct FrontSink(Arc<FrontDoor>);

impl AcmeSink for FrontSink {
    fn set_challenge(&self, token: &str, key_authorization: &str) {
        self.0.set_challenge(token, key_authorization);
    }

    fn clear_challenge(&self, token: &str) {
        self.0.clear_challenge(token);
    }

    fn install(&self, names: &[String], chain_pem: &str, key_pem: &str) -> Result<(), String> {
        let source = format!("acme:{}", names.first().map_or("?", String::as_str));
        let cert = Certificate::from_pem(&source, &source, chain_pem.as_bytes(), key_pem.as_bytes()).map_err(|e| e.to_string())?;
        log::info!(
            "ACME certificate for {} installed (valid until {})",
            names.join(", "),
            humantime::format_rfc3339_seconds(cert.not_after())
        );
        self.0.certs.set_acme(cert);
        Ok(())
    }
}

/// The ACME manager as a pingora background service, with its metrics.
pub struct Acme {
    manager: Arc<AcmeManager>,
}

impl Acme {
    /// A manager for `settings` serving through `front` (not started yet).
    pub fn new(settings: AcmeSettings, front: Arc<FrontDoor>) -> Result<Self, canopy_acme::AcmeError> {
        Ok(Self { manager: Arc::new(AcmeManager::new(settings, Arc::new(FrontSink(front)))?) })
    }

    /// ACME's state per certificate, for the status page.
    pub fn status_fn(&self) -> Arc<dyn Fn() -> serde_json::Value + Send + Sync> {
        let manager = self.manager.clone();
        Arc::new(move || serde_json::to_value(manager.status()).unwrap_or_default())
    }

    /// `canopy_acme_renewals_total{result}` and `canopy_acme_renewal_failing{name}`.
    pub fn collector(&self) -> Box<dyn Collector> {
        Box::new(AcmeCollector::new(self.manager.clone()))
    }
}

#[async_trait]
impl BackgroundService for Acme {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        tokio::select! {
            _ = self.manager.clone().run() => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Reads the manager's counters and status on scrape.
struct AcmeCollector {
    manager: Arc<AcmeManager>,
    renewals: IntCounterVec,
    failing: IntGaugeVec,
    descs: Vec<Desc>,
}

impl AcmeCollector {
    fn new(manager: Arc<AcmeManager>) -> Self {
        let renewals =
            IntCounterVec::new(Opts::new("canopy_acme_renewals_total", "ACME orders (first issue or renewal), by result."), &["result"])
                .expect("valid metric");
        let failing = IntGaugeVec::new(
            Opts::new(
                "canopy_acme_renewal_failing",
                "1 while the last ACME order for a certificate (by first name) failed: the old certificate is still served.",
            ),
            &["name"],
        )
        .expect("valid metric");
        let descs = renewals.desc().into_iter().chain(failing.desc()).cloned().collect();
        Self { manager, renewals, failing, descs }
    }
}

impl Collector for AcmeCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let set = |result: &str, n: u64| {
            let c = self.renewals.with_label_values(&[result]);
            c.inc_by(n.saturating_sub(c.get()));
        };
        set("ok", self.manager.renewals_ok());
        set("failed", self.manager.renewals_failed());
        for s in self.manager.status() {
            let name = s.names.first().map_or("", String::as_str);
            self.failing.with_label_values(&[name]).set(i64::from(s.last_error.is_some()));
        }
        self.renewals.collect().into_iter().chain(self.failing.collect()).collect()
    }
}
