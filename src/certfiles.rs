//! The certificate files proxy.toml names, as the controller's
//! [`CertSource`], and the watch that reloads them when one changes (a
//! renewal by certbot or a secrets manager needs no command).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use canopy_admin::{CertSource, Controller};
use canopy_proxy::Certificate;

use crate::config::{load_certificates, CertFile};

/// Size, modification time and inode of a file.
type Stamp = (u64, SystemTime, u64);

/// The `[[tls.certificate]]` files in force (a config reload replaces
/// them), plus ACME's status when `[tls.acme]` is set.
#[derive(Clone)]
pub struct CertFiles {
    files: Arc<Mutex<Vec<CertFile>>>,
    acme: Option<Arc<dyn Fn() -> serde_json::Value + Send + Sync>>,
}

impl CertFiles {
    /// Over `files` (as loaded at start).
    pub fn new(files: Vec<CertFile>) -> Self {
        Self { files: Arc::new(Mutex::new(files)), acme: None }
    }

    /// Shows `status` as ACME's state on the status page.
    pub fn with_acme_status(mut self, status: Arc<dyn Fn() -> serde_json::Value + Send + Sync>) -> Self {
        self.acme = Some(status);
        self
    }

    /// The files a reloaded config names, from now on.
    pub fn set_files(&self, files: Vec<CertFile>) {
        *self.files.lock().unwrap_or_else(|e| e.into_inner()) = files;
    }

    fn files(&self) -> Vec<CertFile> {
        self.files.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// What identifies each file's content cheaply: path, size, mtime, inode.
    fn stamps(&self) -> Vec<(PathBuf, Option<Stamp>)> {
        use std::os::unix::fs::MetadataExt;
        self.files()
            .iter()
            .flat_map(|f| [f.cert.clone(), f.key.clone()])
            .map(|p| {
                let m = std::fs::metadata(&p).ok().map(|m| (m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.ino()));
                (p, m)
            })
            .collect()
    }

    /// Polls the files every `interval` and reloads the certificates
    /// through `controller` when one changed (logged either way; a bad file
    /// leaves the certificates as they were and is retried when it changes
    /// again). Runs on its own thread for the process's life.
    pub fn watch(self, controller: Arc<Controller>, interval: Duration) {
        std::thread::Builder::new()
            .name("cert watch".into())
            .spawn(move || {
                let mut seen = self.stamps();
                loop {
                    std::thread::sleep(interval);
                    let now = self.stamps();
                    if now == seen {
                        continue;
                    }
                    // a writer that replaces cert and key one after the
                    // other: wait until both settled
                    std::thread::sleep(Duration::from_millis(200));
                    seen = self.stamps();
                    log::info!("a certificate file changed; reloading certificates");
                    let _ = controller.reload_certificates("file watch");
                }
            })
            .expect("spawning the certificate watch thread");
    }
}

impl CertSource for CertFiles {
    fn read(&self) -> Result<(Vec<Certificate>, Option<usize>), String> {
        load_certificates(&self.files()).map_err(|e| e.to_string())
    }

    fn acme(&self) -> serde_json::Value {
        self.acme.as_ref().map_or(serde_json::Value::Null, |f| f())
    }
}
