//! AcmeManager: installs cached certificates, then orders and renews them for the process's life.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use humantime::format_rfc3339_seconds as rfc3339;
use instant_acme::{Account, AccountBuilder, NewAccount};

use crate::certificate::CertInfo;
use crate::order;
use crate::persist::Cache;
use crate::{AcmeError, AcmeSettings, AcmeSink, CertStatus};

/// The longest the loop sleeps before looking at the clock again (the wall
/// clock may jump, or the machine sleep).
const MAX_SLEEP: Duration = Duration::from_secs(3600);

/// Obtains and renews the configured certificates and hands them to the
/// proxy through an [`AcmeSink`]. Build it with [`AcmeManager::new`], spawn
/// [`AcmeManager::run`] on a tokio runtime, and read [`AcmeManager::status`]
/// and the counters for the status page and metrics.
pub struct AcmeManager {
    settings: AcmeSettings,
    sink: Arc<dyn AcmeSink>,
    cache: Cache,
    /// One per name set, in the order of `settings.names`.
    certs: Mutex<Vec<CertStatus>>,
    renewals_ok: AtomicU64,
    renewals_failed: AtomicU64,
    /// Bumped by `renew_now`; the loop renews everything when it changes.
    requested: tokio::sync::watch::Sender<u64>,
    /// The last `requested` value the loop has finished a round for.
    completed: tokio::sync::watch::Sender<u64>,
}

/// The account the loop uses, registered or restored on the first order.
#[derive(Default)]
struct AccountSlot {
    account: Option<Account>,
    /// The server forgot the saved account: register a new one.
    ignore_file: bool,
}

impl AcmeManager {
    /// Validates `settings` ([`AcmeSettings::validate`]), checks that
    /// `ca_root` (if set) is a PEM certificate and creates the cache
    /// directory (0700) if missing. Does no network I/O.
    pub fn new(settings: AcmeSettings, sink: Arc<dyn AcmeSink>) -> Result<Self, AcmeError> {
        settings.validate()?;
        if let Some(root) = &settings.ca_root {
            check_ca_root(root)?;
        }
        let cache = Cache::open(&settings.cache_dir)?;
        let certs = settings.names.iter().map(|names| CertStatus::new(names.clone())).collect();
        Ok(Self {
            settings,
            sink,
            cache,
            certs: Mutex::new(certs),
            renewals_ok: AtomicU64::new(0),
            renewals_failed: AtomicU64::new(0),
            requested: tokio::sync::watch::Sender::new(0),
            completed: tokio::sync::watch::Sender::new(0),
        })
    }

    /// The renewal loop; runs for the process's life (spawn it). First it
    /// installs every cached certificate that matches its key, covers its
    /// names and has not expired, without touching the network; then it
    /// orders every certificate that is missing or past its renewal time,
    /// and sleeps until the next renewal time (two thirds of a certificate's
    /// lifetime) or retry time (`retry_interval` after a failure), or until
    /// [`AcmeManager::renew_now`]. A failure never uninstalls anything.
    pub async fn run(self: Arc<Self>) {
        let now = SystemTime::now();
        for index in 0..self.settings.names.len() {
            self.install_cached(index, now);
        }
        let mut account = AccountSlot::default();
        let mut requests = self.requested.subscribe();
        let mut handled = 0;
        loop {
            let wanted = *requests.borrow_and_update();
            let forced = wanted != handled;
            for index in 0..self.settings.names.len() {
                if forced || self.certs()[index].due(SystemTime::now()) {
                    self.renew(index, &mut account).await;
                }
            }
            if forced {
                handled = wanted;
                self.completed.send_replace(wanted);
            }
            let now = SystemTime::now();
            let next = self.certs().iter().map(|c| c.next_attempt.unwrap_or(now)).min().unwrap_or(now);
            let wait = next.duration_since(now).unwrap_or_default().min(MAX_SLEEP);
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = requests.changed() => {}
            }
        }
    }

    /// Asks the loop to order every certificate again now, whatever its
    /// renewal time, and returns once it has tried each one (look at
    /// [`AcmeManager::status`] for the outcome). Only returns while
    /// [`AcmeManager::run`] is running.
    pub async fn renew_now(&self) {
        let mut wanted = 0;
        self.requested.send_modify(|n| {
            *n += 1;
            wanted = *n;
        });
        let mut completed = self.completed.subscribe();
        // The sender lives in `self`, so waiting cannot fail.
        let _ = completed.wait_for(|done| *done >= wanted).await;
    }

    /// The state of each certificate, in the order of `settings.names`.
    pub fn status(&self) -> Vec<CertStatus> {
        self.certs().clone()
    }

    /// How many orders succeeded (a certificate was issued and installed)
    /// since start; for `canopy_acme_renewals_total{result="ok"}`.
    pub fn renewals_ok(&self) -> u64 {
        self.renewals_ok.load(Ordering::Relaxed)
    }

    /// How many order attempts failed since start; for
    /// `canopy_acme_renewals_total{result="failed"}`.
    pub fn renewals_failed(&self) -> u64 {
        self.renewals_failed.load(Ordering::Relaxed)
    }

    fn certs(&self) -> MutexGuard<'_, Vec<CertStatus>> {
        self.certs.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Installs the cached certificate of name set `index` if it is usable;
    /// otherwise logs why and leaves it due for an order at once.
    fn install_cached(&self, index: usize, now: SystemTime) {
        let names = &self.settings.names[index];
        let primary = &names[0];
        let cached = match self.cache.load_cert(primary) {
            Ok(Some(cached)) => cached,
            Ok(None) => {
                log::info!("ACME: no cached certificate for {primary}: ordering one");
                return;
            }
            Err(e) => {
                log::warn!("{e}; ordering a new certificate");
                return;
            }
        };
        let info = match CertInfo::inspect(&cached.chain_pem, &cached.key_pem) {
            Ok(info) => info,
            Err(reason) => {
                log::warn!("ACME: the cached certificate for {primary} is unusable ({reason}); ordering a new one");
                return;
            }
        };
        if !info.covers(names) {
            log::info!("ACME: the cached certificate for {primary} covers {:?}, not {names:?}; ordering a new one", info.names);
            return;
        }
        if info.not_after <= now {
            log::info!("ACME: the cached certificate for {primary} expired at {}; ordering a new one", rfc3339(info.not_after));
            return;
        }
        if let Err(reason) = self.sink.install(names, &cached.chain_pem, &cached.key_pem) {
            log::warn!("ACME: the proxy refused the cached certificate for {primary} ({reason}); ordering a new one");
            return;
        }
        self.certs()[index].installed(&info, cached.written, now);
        log::info!(
            "ACME: installed the cached certificate for {primary}, valid until {}, renewal at {}",
            rfc3339(info.not_after),
            rfc3339(info.renew_at())
        );
    }

    /// One attempt for name set `index`: records the outcome in its status,
    /// the counters and the log.
    async fn renew(&self, index: usize, account: &mut AccountSlot) {
        let names = &self.settings.names[index];
        let retry = self.settings.retry_interval;
        let mut result = self.obtain(names, account).await;
        if result.as_ref().is_err_and(AcmeError::account_gone) {
            // The server forgot the account (a test CA that restarted):
            // register a new one and order again at once.
            *account = AccountSlot { account: None, ignore_file: true };
            result = self.obtain(names, account).await;
        }
        match result {
            Ok((info, cache_error)) => {
                self.renewals_ok.fetch_add(1, Ordering::Relaxed);
                let now = SystemTime::now();
                let mut certs = self.certs();
                certs[index].installed(&info, now, now + retry);
                log::info!(
                    "ACME: installed a new certificate for {names:?}, valid until {}, renewal at {}",
                    rfc3339(info.not_after),
                    rfc3339(info.renew_at())
                );
                if let Some(e) = cache_error {
                    let reason = describe(&e);
                    log::warn!("{reason}; the certificate is installed but a restart will order a new one");
                    certs[index].last_error = Some(reason);
                }
            }
            Err(e) => {
                self.renewals_failed.fetch_add(1, Ordering::Relaxed);
                let now = SystemTime::now();
                let reason = describe(&e);
                log::warn!("{reason}; the installed certificate (if any) stays, next attempt at {}", rfc3339(now + retry));
                self.certs()[index].failed(reason, now, retry);
            }
        }
    }

    /// Orders, checks and installs a certificate for `names`, then caches it.
    /// A failure to cache is returned beside the success, not as an error:
    /// the certificate is served, and ordering again would not fix the disk.
    async fn obtain(&self, names: &[String], slot: &mut AccountSlot) -> Result<(CertInfo, Option<AcmeError>), AcmeError> {
        if slot.account.is_none() {
            slot.account = Some(self.account(slot.ignore_file).await?);
            slot.ignore_file = false;
        }
        let account = slot.account.as_ref().expect("set above");
        let primary = &names[0];
        let issued = order::issue(account, names, &*self.sink).await?;
        let info = CertInfo::inspect(&issued.chain_pem, &issued.key_pem)
            .map_err(|reason| AcmeError::Certificate { primary: primary.clone(), reason })?;
        if !info.covers(names) {
            let reason = format!("the CA issued it for {:?}, not for all of {names:?}", info.names);
            return Err(AcmeError::Certificate { primary: primary.clone(), reason });
        }
        self.sink
            .install(names, &issued.chain_pem, &issued.key_pem)
            .map_err(|reason| AcmeError::Refused { primary: primary.clone(), reason })?;
        let (cache, primary) = (self.cache.clone(), primary.clone());
        let saved = tokio::task::spawn_blocking(move || cache.save_cert(&primary, &issued.chain_pem, &issued.key_pem)).await;
        Ok((info, saved.expect("writing the cache does not panic").err()))
    }

    /// The saved account if it was registered at this directory (and the
    /// server still knows it), else a new one, registered with terms agreed
    /// and saved.
    async fn account(&self, ignore_file: bool) -> Result<Account, AcmeError> {
        let directory = &self.settings.directory;
        let failed = |source| AcmeError::Account { directory: directory.clone(), source };
        if !ignore_file {
            if let Some((credentials, registered_at)) = self.cache.load_account()? {
                if registered_at.as_deref() == Some(directory.as_str()) {
                    return self.builder()?.from_credentials(credentials).await.map_err(failed);
                }
                log::warn!(
                    "ACME: {} belongs to {}, not {directory}: registering a new account",
                    self.cache.account_path().display(),
                    registered_at.as_deref().unwrap_or("an unknown server")
                );
            }
        } else {
            log::warn!("ACME: {directory} no longer knows the saved account: registering a new one");
        }
        let contact: Vec<&str> = self.settings.contact.iter().map(String::as_str).collect();
        let new = NewAccount { contact: &contact, terms_of_service_agreed: true, only_return_existing: false };
        let (account, credentials) = self.builder()?.create(&new, directory.clone(), None).await.map_err(failed)?;
        self.cache.save_account(&credentials)?;
        log::info!("ACME: registered account {} at {directory}", account.id());
        Ok(account)
    }

    /// An HTTPS client trusting `ca_root` alone if set, else the platform's roots.
    fn builder(&self) -> Result<AccountBuilder, AcmeError> {
        let built = match &self.settings.ca_root {
            Some(root) => Account::builder_with_root(root),
            None => Account::builder(),
        };
        built.map_err(|source| AcmeError::Account { directory: self.settings.directory.clone(), source })
    }
}

/// The error's message followed by those of its sources that it does not
/// already include ("client error (Connect): tcp connect error: Connection refused").
fn describe(error: &AcmeError) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}

/// `ca_root` must be readable and start with a PEM certificate.
fn check_ca_root(path: &Path) -> Result<(), AcmeError> {
    let bad = |reason: String| AcmeError::CaRoot { path: path.to_path_buf(), reason };
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let (_, block) = x509_parser::pem::parse_x509_pem(&pem).map_err(|_| bad("no PEM block in it".to_string()))?;
    if block.label != "CERTIFICATE" {
        return Err(bad(format!("its first PEM block is `{}`, not a CERTIFICATE", block.label)));
    }
    block.parse_x509().map_err(|e| bad(format!("the certificate does not parse: {e}")))?;
    Ok(())
}
