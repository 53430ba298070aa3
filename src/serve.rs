//! Assembles the pingora server: proxy service, admin service, background
//! re-resolver and validation-window timer; graceful SIGTERM handling and
//! graceful upgrade (`serve --upgrade` takes the listening sockets of the
//! running process over pingora's upgrade socket).

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use canopy_admin::{AdminApi, Controller, Fleet, FleetCollector, Guard, Parts, TlsParts, Validator};
use canopy_proxy::prometheus::core::Collector;
use canopy_proxy::{CanopyProxy, ClientTimeouts, FrontCollector, FrontDoor, ReleaseTable, Resolver, TlsTerminator, Tunables};

use crate::acme::Acme;
use crate::certfiles::CertFiles;
use pingora::listeners::ListenerConfig;
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;
use rustix::process::{kill_process, Signal};
use tokio::signal::unix::{signal, SignalKind};

use crate::config::Config;
use crate::handover::{self, HandoverError};
use crate::reload::{open_access_log, AccessLogError, FileSource};

/// Why `serve` could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A listen address is taken or not ours.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The state file or initial releases could not be loaded.
    #[error("{0}")]
    State(#[from] canopy_admin::ControlError),
    /// The access log file could not be opened.
    #[error(transparent)]
    AccessLog(#[from] AccessLogError),
    /// `serve --upgrade` found no running canopy to take over from, or could not signal it.
    #[error("--upgrade: {0}")]
    Upgrade(String),
    /// See [`HandoverError`].
    #[error("--upgrade: {0}")]
    Handover(#[from] HandoverError),
    /// Runtime setup failed.
    #[error("{0}")]
    Runtime(#[from] std::io::Error),
    /// `[tls.acme]` could not be set up (its cache directory, its CA root).
    #[error("{0}")]
    Acme(String),
}

/// Runs the validation-window timer, the warm and live releases' health
/// watches and (with `[docker]`) container discovery as a pingora
/// background service.
struct ControlLoops(Arc<Controller>);

#[async_trait]
impl BackgroundService for ControlLoops {
    async fn start(&self, shutdown: ShutdownWatch) {
        tokio::join!(
            self.0.run_window_timer(shutdown.clone()),
            self.0.run_warm_watch(shutdown.clone()),
            self.0.run_guard(shutdown.clone()),
            self.0.run_live_watch(shutdown.clone()),
            self.0.run_discovery(shutdown)
        );
    }
}

/// SIGTERM: stop accepting, wait for in-flight requests (at most the grace
/// period), exit. SIGINT: exit now. SIGHUP: reload proxy.toml in place. SIGQUIT (sent by `serve --upgrade`): stop
/// taking state changes, then pingora's graceful upgrade hands the listening
/// sockets to the new process and this one drains and exits.
struct Signals {
    table: Arc<ReleaseTable>,
    controller: Arc<Controller>,
    grace: Duration,
    /// Every listen address (proxy and admin): their sockets are handed over.
    listen: Vec<SocketAddr>,
    upgrade_socket: String,
    /// Written once the signal handlers are in place (SIGQUIT before that
    /// would kill the process instead of upgrading it).
    pid_file: std::path::PathBuf,
}

impl Signals {
    /// SIGQUIT: stop changing the state, hand the listening sockets to the
    /// new process, then drain like SIGTERM. If the new process does not take
    /// them (it died, or never started), resume and keep serving.
    async fn hand_over(&self) -> bool {
        log::info!("SIGQUIT: handing the state and the listening sockets to the new process");
        // a process still waiting for its own predecessor to finish hands over
        // only after that (within the new process's 5 s wait for the sockets),
        // so at most one older release table serves at any time
        if !self.controller.wait_released(Duration::from_secs(4)).await {
            log::error!("upgrade refused: the previous upgrade has not completed (its process still serves); try again later");
            return false;
        }
        self.controller.hand_over().await;
        let (listen, path) = (self.listen.clone(), self.upgrade_socket.clone());
        let sent = tokio::task::spawn_blocking(move || handover::send(&handover::listening_fds(&listen)?, &path)).await;
        match sent {
            Ok(Ok(())) => {
                // go on accepting until the new process serves too (it writes the
                // pid file once its listeners run), so no connection waits for it;
                // no flip can happen meanwhile: this process takes no changes and
                // the new one holds them until this one has exited
                let (pid_file, me) = (self.pid_file.clone(), std::process::id());
                let limit = Duration::from_secs(5);
                let ready = tokio::task::spawn_blocking(move || handover::wait_successor(&pid_file, me, limit)).await;
                if !ready.unwrap_or(false) {
                    log::warn!("the new process did not report ready within {limit:?}; draining anyway");
                }
                log::info!("listening sockets handed over; draining in-flight requests (grace {:?})", self.grace);
                self.table.drain().start();
                let (table, grace) = (self.table.clone(), self.grace);
                std::thread::spawn(move || drain_then_exit(&table, grace));
                true
            }
            Ok(Err(e)) => {
                log::error!("upgrade failed, this process keeps serving: {e}");
                self.controller.resume();
                false
            }
            Err(e) => {
                log::error!("upgrade failed, this process keeps serving: {e}");
                self.controller.resume();
                false
            }
        }
    }
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        let mut quit = signal(SignalKind::quit()).expect("SIGQUIT handler");
        let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
        if let Err(e) = handover::write_pid_file(&self.pid_file) {
            log::warn!("cannot write pid file {}: {e} (`serve --upgrade` will not find this process)", self.pid_file.display());
        }
        loop {
            tokio::select! {
                _ = term.recv() => {
                    let table = self.table.clone();
                    let grace = self.grace;
                    log::info!("SIGTERM: draining in-flight requests (grace {grace:?})");
                table.drain().start();
                    std::thread::spawn(move || drain_then_exit(&table, grace));
                    return ShutdownSignal::GracefulTerminate;
                }
                _ = int.recv() => return ShutdownSignal::FastShutdown,
                // reload proxy.toml in place; the outcome is logged and audited
                _ = hup.recv() => {
                    if let Err(e) = self.controller.reload("SIGHUP").await {
                        log::error!("SIGHUP: {e}");
                    }
                }
                // the sockets are the new process's now: stop accepting at once
                // (pingora's own upgrade path would go on accepting for 5 s, and
                // route with a release table the new process may have flipped)
                _ = quit.recv() => if self.hand_over().await {
                    return ShutdownSignal::GracefulTerminate;
                },
            }
        }
    }
}

/// Exits once every client connection has closed (or `grace` is over).
/// Draining has begun: each connection closes after its current response,
/// or after [`SHUTDOWN_LINGER`] if its client sends nothing more.
fn drain_then_exit(table: &ReleaseTable, grace: Duration) {
    let deadline = Instant::now() + grace;
    // let the listeners stop, and heads already being read become requests
    std::thread::sleep(Duration::from_millis(50).min(grace));
    let busy = || table.drain().connections() > 0 || table.stats().total_inflight() > 0;
    while busy() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let (left, open) = (table.stats().total_inflight(), table.drain().connections());
    if left > 0 || open > 0 {
        log::warn!("grace period over with {left} request(s) in flight on {open} connection(s); exiting");
    } else {
        log::info!("all connections drained; exiting");
    }
    std::process::exit(0);
}

/// Fails early, with the address, when a listen address cannot be bound.
fn probe(addr: SocketAddr) -> Result<(), ServeError> {
    TcpListener::bind(addr).map(drop).map_err(|source| ServeError::Bind { addr, source })
}

/// Builds everything from a validated config and serves until a signal.
/// With `upgrade`, takes over from the canopy named in the pid file: it is
/// told to stop taking state changes and to hand over its listening sockets
/// (proxy and admin), and only then is the state loaded here, so the two
/// processes never both change it and no connection is refused meanwhile.
pub fn run(config: Config, upgrade: bool) -> Result<(), ServeError> {
    let predecessor = if upgrade {
        let old = handover::predecessor(&config.fixed.pid_file)?;
        log::info!("upgrade: taking over from canopy pid {}", old.as_raw_nonzero());
        kill_process(old, Signal::QUIT).map_err(|e| ServeError::Upgrade(format!("signalling pid {}: {e}", old.as_raw_nonzero())))?;
        Some(old)
    } else {
        for addr in config.fixed.listen.iter().chain(&config.fixed.listen_tls).chain(std::iter::once(&config.fixed.admin_listen)) {
            probe(*addr)?;
        }
        None
    };
    let grace = config.fixed.shutdown_grace;
    let conf = ServerConf {
        threads: config.fixed.threads,
        work_stealing: config.fixed.work_stealing,
        grace_period_seconds: Some(grace.as_secs().max(1)),
        graceful_shutdown_timeout_seconds: Some(1),
        upgrade_sock: config.fixed.upgrade_socket.to_string_lossy().into_owned(),
        ..ServerConf::default()
    };
    let opt = Opt { upgrade, ..Opt::default() };
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    // with --upgrade: waits (up to 5 s) for the old process's listening sockets
    server.bootstrap();
    let conf = server.configuration.clone();

    // the old process, if any, has stopped changing the state: load it now
    let access_log = open_access_log(&config.live.access_log)?;
    let guard = Guard::new(config.live.token.clone());
    let mut source = FileSource::new(&config, access_log.clone(), guard.clone());
    let control = config.control();
    // from here on `config` is the part only a new process can change
    let Config { path: _, fixed: config, live, seed } = config;

    // the front door: certificates, ACME answers, handshake and protocol counters
    let front = FrontDoor::new();
    let mut collectors: Vec<Box<dyn Collector>> = vec![Box::new(FrontCollector::new(front.clone()))];
    let mut acme = None;
    let certificates = live.certificates;
    let cert_files = match &config.tls {
        Some(tls) => {
            let default = certificates.files.iter().position(|f| f.default);
            front.certs.set_files(certificates.certificates.clone(), default);
            let mut files = CertFiles::new(certificates.files.clone());
            if let Some(settings) = &tls.acme {
                let a = Acme::new(settings.clone(), front.clone()).map_err(|e| ServeError::Acme(e.to_string()))?;
                collectors.push(a.collector());
                files = files.with_acme_status(a.status_fn());
                acme = Some(a);
            }
            Some(files)
        }
        None => None,
    };

    if let Some(files) = &cert_files {
        source = source.with_certificates(files.clone(), front.clone());
    }
    let tunables = Tunables { proxy: live.proxy, preview: control.preview, access_log };
    let fleet = match &config.cluster {
        Some(cluster) => {
            let listeners = config
                .listen
                .iter()
                .map(|a| format!("http://{a}"))
                .chain(config.listen_tls.iter().map(|a| format!("https://{a}")))
                .chain(std::iter::once(format!("admin http://{}", config.admin_listen)))
                .collect();
            let fleet = Fleet::new(cluster.clone(), env!("CARGO_PKG_VERSION").into(), listeners)?;
            collectors.push(Box::new(FleetCollector::new(fleet.clone())));
            Some(fleet)
        }
        None => None,
    };
    let table = Arc::new(ReleaseTable::new(Arc::new(live.topology), Arc::new(tunables)));
    let parts = Parts {
        table: table.clone(),
        validator: Validator::new(live.checks),
        settings: control,
        seed,
        deploy: config.deploy,
        tls: cert_files.clone().map(|files| TlsParts { front: front.clone(), certificates: Box::new(files) }),
        config: Some(Box::new(source)),
        collectors,
        // its in-flight requests finish on its release table: flips wait for them
        hold_changes: predecessor.is_some(),
        fleet,
    };
    let startup = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let controller = Arc::new(startup.block_on(Controller::start(parts))?);
    drop(startup);
    controller.follow_fleet();
    if let Some(old) = predecessor {
        let controller = controller.clone();
        std::thread::spawn(move || {
            handover::wait_exited(old);
            controller.release_hold();
        });
    }
    if let (Some(tls), Some(files)) = (&config.tls, &cert_files) {
        if let (Some(every), false) = (tls.watch_interval, certificates.files.is_empty()) {
            files.clone().watch(controller.clone(), every);
        }
    }
    let proxy_app = || pingora::proxy::http_proxy(&conf, CanopyProxy::with_front_door(table.clone(), front.clone()));
    if !config.listen.is_empty() {
        let app = ClientTimeouts::new(proxy_app(), config.client_timeout, table.clone()).with_h2c(config.h2c);
        let mut proxy = Service::new("canopy proxy".into(), app);
        for addr in &config.listen {
            proxy.add_listener(unbuffered_listener(addr));
        }
        server.add_service(proxy);
    }
    if let Some(tls) = &config.tls {
        let terminator = Arc::new(TlsTerminator::new(&front.certs, &tls.options, front.handshakes.clone()));
        let app = ClientTimeouts::new(proxy_app(), config.client_timeout, table.clone()).with_tls(terminator);
        // plain TCP to pingora: the handshake is canopy's (deadline, counters)
        let mut proxy = Service::new("canopy proxy (TLS)".into(), app);
        for addr in &config.listen_tls {
            proxy.add_listener(unbuffered_listener(addr));
        }
        server.add_service(proxy);
    }
    let mut admin = Service::new("canopy admin".into(), AdminApi::new(controller.clone(), guard));
    admin.add_tcp(&config.admin_listen.to_string());
    admin.threads = Some(1);

    server.add_service(admin);
    server.add_service(background_service("resolver", Resolver::new(table.clone(), config.resolve_interval)));
    if let Some(acme) = acme {
        server.add_service(background_service("ACME certificates", acme));
    }
    server.add_service(background_service("validation window and health watches", ControlLoops(controller.clone())));
    log::info!(
        "canopy serving on {} (admin on {})",
        config
            .listen
            .iter()
            .map(|a| format!("http://{a}"))
            .chain(config.listen_tls.iter().map(|a| format!("https://{a}")))
            .collect::<Vec<_>>()
            .join(", "),
        config.admin_listen
    );
    let signals = Signals {
        table,
        controller,
        grace,
        listen: config.listen.iter().chain(&config.listen_tls).copied().chain(std::iter::once(config.admin_listen)).collect(),
        upgrade_socket: config.upgrade_socket.to_string_lossy().into_owned(),
        pid_file: config.pid_file,
    };
    server.run(RunArgs { shutdown_signal: Box::new(signals) });
    Ok(())
}

/// A listener without pingora's 64 KiB read buffer in front of each
/// connection: it stayed allocated, and resident, while a connection sat
/// idle between requests (4 to 8 KB each). Plaintext HTTP/1 reads a head
/// straight into pingora's own buffer (allocated per request), so the L4
/// buffer only added a copy; rustls reads at most 4 KiB per call into its
/// own record buffer, so a TLS upload takes one `recv` per 4 KiB instead of
/// per 64 KiB (nginx, with OpenSSL's defaults, takes two per 16 KiB record).
/// Writes keep pingora's small write buffer (one `write` for a head and a
/// short body).
fn unbuffered_listener(addr: &SocketAddr) -> ListenerConfig {
    ListenerConfig::tcp(addr.to_string()).l4_buffer(L4BufferSettings::default().read(0))
}
