//! Live reload of proxy.toml (`canopy reload`, `POST /reload`, SIGHUP): the
//! file is read and validated again exactly as at start-up, compared with
//! what is running (the typed diff of [`Fixed`] and [`Reloadable`]), and
//! handed to the controller to apply in place. What needs a new socket or
//! thread (listen addresses, threads, ...) is refused with the name of the
//! setting: that takes `canopy serve --upgrade`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use canopy_admin::{ConfigSource, Guard, Reload, Validator};
use canopy_proxy::{AccessLog, FrontDoor, Tunables};

use crate::certfiles::CertFiles;
use crate::config::{self, AccessLogTarget, Config, Fixed, Reloadable};

/// What is running, to compare a re-read file with.
struct Running {
    fixed: Fixed,
    live: Reloadable,
    /// The writer of `live.access_log`.
    access_log: Option<AccessLog>,
}

/// proxy.toml as the source of reloads, for [`canopy_admin::Controller::set_config_source`].
pub struct FileSource {
    path: PathBuf,
    running: Arc<Mutex<Running>>,
    guard: Guard,
    certs: Option<(CertFiles, Arc<FrontDoor>)>,
}

impl FileSource {
    /// A source over `config` (as loaded at start, before `serve` took its
    /// parts), whose access log writer is `access_log` and whose admin
    /// listener checks tokens with `guard`.
    pub fn new(config: &Config, access_log: Option<AccessLog>, guard: Guard) -> Self {
        let running = Running { fixed: config.fixed.clone(), live: config.live.clone(), access_log };
        Self { path: config.path.clone(), running: Arc::new(Mutex::new(running)), guard, certs: None }
    }

    /// A reload also replaces the certificates from files: the files the new
    /// config names (loaded and checked while it was read) go into `front`'s
    /// SNI table, and `files` follows them for `canopy tls reload` and the watch.
    pub fn with_certificates(mut self, files: CertFiles, front: Arc<FrontDoor>) -> Self {
        self.certs = Some((files, front));
        self
    }
}

impl ConfigSource for FileSource {
    fn file(&self) -> String {
        self.path.display().to_string()
    }

    fn read(&self) -> Result<Reload, String> {
        let new = config::load(&self.path).map_err(|e| e.to_string())?;
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let needs_upgrade = running.fixed.changes(&new.fixed);
        if !needs_upgrade.is_empty() {
            return Err(format!(
                "{}: changed {} which a running process cannot take: start `canopy serve --upgrade -c {}` instead",
                self.path.display(),
                needs_upgrade.join(", "),
                self.path.display()
            ));
        }
        let changes = running.live.changes(&new.live).into_iter().map(String::from).collect();
        let access_log = if running.live.access_log == new.live.access_log {
            running.access_log.clone()
        } else {
            open_access_log(&new.live.access_log).map_err(|e| e.to_string())?
        };
        let settings = new.control();
        let Config { path: _, fixed: _, live, seed: _ } = new;
        let tunables = Tunables { proxy: live.proxy.clone(), preview: live.releases.preview, access_log: access_log.clone() };
        let (guard, state) = (self.guard.clone(), self.running.clone());
        let token_changed = live.token != running.live.token;
        let certs = self.certs.clone();
        let (topology, validator) = (live.topology.clone(), Validator::new(live.checks.clone()));
        let on_applied = Box::new(move || {
            if token_changed {
                guard.set_token(live.token.clone());
            }
            if let Some((files, front)) = &certs {
                let tls = live.certificates.clone();
                let default = tls.files.iter().position(|f| f.default);
                files.set_files(tls.files);
                front.certs.set_files(tls.certificates, default);
            }
            let mut r = state.lock().unwrap_or_else(|e| e.into_inner());
            r.live = live;
            r.access_log = access_log;
        });
        Ok(Reload { topology, validator, settings, tunables, changes, on_applied })
    }
}

/// The access log file could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("access log {path}: {source}")]
pub struct AccessLogError {
    /// The file.
    pub path: std::path::PathBuf,
    /// The OS error.
    #[source]
    pub source: std::io::Error,
}

/// Starts the access log writer for `target` (none when off): at start-up,
/// and when a reload names another target.
pub fn open_access_log(target: &Option<AccessLogTarget>) -> Result<Option<AccessLog>, AccessLogError> {
    Ok(match target {
        None => None,
        Some(AccessLogTarget::Stdout) => Some(AccessLog::start(Box::new(std::io::stdout()))),
        Some(AccessLogTarget::File(path)) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| AccessLogError { path: path.clone(), source })?;
            Some(AccessLog::start(Box::new(f)))
        }
    })
}
