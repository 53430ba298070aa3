//! Live reload of proxy.toml (`canopy reload`, `POST /reload`, SIGHUP): the
//! file is read and validated again exactly as at start-up, compared with
//! what is running, and handed to the controller to apply in place. What
//! needs a new socket or thread (listen addresses, threads, ...) is refused
//! with the name of the setting: that takes `canopy serve --upgrade`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use canopy_admin::{ConfigSource, Guard, Reload, Validator};
use canopy_proxy::{AccessLog, FrontDoor, Tunables};

use crate::certfiles::CertFiles;

use crate::config::{self, AccessLogTarget, Config};

/// What is running, to compare a re-read file with.
struct Running {
    /// Settings that need a new process, as `name = value` lines.
    fixed: Vec<(&'static str, String)>,
    /// Reloadable areas, each as its settings' debug text.
    areas: Vec<(&'static str, String)>,
    access_log: (Option<AccessLogTarget>, Option<AccessLog>),
    token: Option<String>,
}

/// proxy.toml as the source of reloads, for [`canopy_admin::Controller::set_config_source`].
pub struct FileSource {
    path: PathBuf,
    running: Arc<Mutex<Running>>,
    guard: Guard,
    certs: Option<(CertFiles, Arc<FrontDoor>)>,
}

/// The settings only a new process can change (sockets, threads, files it holds).
fn fixed(c: &Config) -> Vec<(&'static str, String)> {
    vec![
        ("[proxy] listen", format!("{:?}", c.listen)),
        ("[proxy] listen-tls", format!("{:?}", c.listen_tls)),
        ("[proxy] h2c", c.h2c.to_string()),
        ("[tls] h2 / handshake-timeout", format!("{:?}", c.tls.as_ref().map(|t| &t.options))),
        ("[tls] watch-interval", format!("{:?}", c.tls.as_ref().map(|t| t.watch_interval))),
        ("[tls.acme]", format!("{:?}", c.tls.as_ref().map(|t| &t.acme))),
        ("[proxy] threads", c.threads.to_string()),
        ("[proxy] work-stealing", c.work_stealing.to_string()),
        ("[proxy] shutdown-grace", format!("{:?}", c.shutdown_grace)),
        ("[proxy] client-timeout", format!("{:?}", c.client_timeout)),
        ("[admin] listen", c.admin_listen.to_string()),
        ("[admin] state-file", c.control.state_file.display().to_string()),
        ("[admin] upgrade-socket", c.upgrade_socket.display().to_string()),
        ("[admin] nice / realtime", format!("{:?}", c.control.admin_priority)),
        ("[releases] resolve-interval", format!("{:?}", c.resolve_interval)),
        ("[docker] and the services' image / container / overlap", format!("{:?}", c.deploy)),
    ]
}

/// The reloadable areas, named as the reply and the audit log name them.
fn areas(c: &Config) -> Vec<(&'static str, String)> {
    let s = &c.control;
    vec![
        ("services, routes and address template", format!("{:?}", c.topology)),
        ("checks", format!("{:?}", c.checks)),
        ("proxy timeouts, retries, HTTPS redirect and HSTS", format!("{:?}", c.proxy)),
        (
            "TLS certificates",
            format!("{:?}", c.tls.as_ref().map(|t| (&t.files, t.certificates.iter().map(|c| c.fingerprint()).collect::<Vec<_>>()))),
        ),
        ("preview", s.preview.to_string()),
        ("validation window", format!("{:?}", s.validation_window)),
        ("drain timeout", format!("{:?}", s.drain_timeout)),
        ("retire hooks", format!("{:?} (timeout {:?})", s.retire_hooks, s.hook_timeout)),
        ("warm check interval", format!("{:?}", s.warm_check_interval)),
        ("access log", format!("{:?}", c.access_log)),
        ("admin token", format!("{}", c.token.as_deref().map(str::len).unwrap_or(0) > 0)),
    ]
}

impl FileSource {
    /// A source over `config` (as loaded at start, before `serve` took its
    /// parts), whose access log writer is `access_log` and whose admin
    /// listener checks tokens with `guard`.
    pub fn new(config: &Config, access_log: Option<AccessLog>, guard: Guard) -> Self {
        let running = Running {
            fixed: fixed(config),
            areas: areas(config),
            access_log: (config.access_log.clone(), access_log),
            token: config.token.clone(),
        };
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
    fn read(&self) -> Result<Reload, String> {
        let new = config::load(&self.path).map_err(|e| e.to_string())?;
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let needs_upgrade: Vec<String> = fixed(&new)
            .into_iter()
            .zip(&running.fixed)
            .filter(|(n, o)| n.1 != o.1)
            .map(|(n, o)| format!("{} ({} -> {})", n.0, o.1, n.1))
            .collect();
        if !needs_upgrade.is_empty() {
            return Err(format!(
                "{}: changed {} which a running process cannot take: start `canopy serve --upgrade -c {}` instead",
                self.path.display(),
                needs_upgrade.join(", "),
                self.path.display()
            ));
        }
        let new_areas = areas(&new);
        let changes: Vec<String> = new_areas.iter().zip(&running.areas).filter(|(n, o)| n.1 != o.1).map(|(n, _)| n.0.to_string()).collect();
        let access_log = if running.access_log.0 == new.access_log {
            running.access_log.1.clone()
        } else {
            crate::serve::access_log(&new.access_log).map_err(|e| e.to_string())?
        };
        let tunables = Tunables { proxy: new.proxy.clone(), preview: new.control.preview, access_log: access_log.clone() };
        let (token, guard, state) = (new.token.clone(), self.guard.clone(), self.running.clone());
        let token_changed = token != running.token;
        let (fixed_now, target) = (fixed(&new), new.access_log.clone());
        let certs = match (&self.certs, &new.tls) {
            (Some((files, front)), Some(tls)) => Some((files.clone(), front.clone(), tls.files.clone(), tls.certificates.clone())),
            _ => None,
        };
        let on_applied = Box::new(move || {
            if token_changed {
                guard.set_token(token.clone());
            }
            if let Some((files, front, paths, loaded)) = &certs {
                let default = paths.iter().position(|f| f.default);
                files.set_files(paths.clone());
                front.certs.set_files(loaded.clone(), default);
            }
            let mut r = state.lock().unwrap_or_else(|e| e.into_inner());
            *r = Running { fixed: fixed_now, areas: new_areas, access_log: (target, access_log), token };
        });
        Ok(Reload { topology: new.topology, validator: Validator::new(new.checks), settings: new.control, tunables, changes, on_applied })
    }
}
