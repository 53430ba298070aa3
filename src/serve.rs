//! Assembles the pingora server: proxy service, admin service, background
//! re-resolver and validation-window timer; graceful SIGTERM handling.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use canopy_admin::{AdminApi, Controller, Guard, Validator};
use canopy_proxy::prometheus::IntCounter;
use canopy_proxy::{AccessLog, CanopyProxy, ClientTimeouts, ReleaseTable, Resolver};
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;
use tokio::signal::unix::{signal, SignalKind};

use crate::config::{AccessLogTarget, Config};

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
    State(#[from] canopy_admin::ApiError),
    /// The access log file could not be opened.
    #[error("access log {path}: {source}")]
    AccessLog {
        /// The file.
        path: std::path::PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Runtime setup failed.
    #[error("{0}")]
    Runtime(#[from] std::io::Error),
}

/// Runs the validation-window timer and the warm release's health watch as a
/// pingora background service.
struct ControlLoops(Arc<Controller>);

#[async_trait]
impl BackgroundService for ControlLoops {
    async fn start(&self, shutdown: ShutdownWatch) {
        tokio::join!(self.0.run_window_timer(shutdown.clone()), self.0.run_warm_watch(shutdown));
    }
}

/// SIGTERM: stop accepting, wait for in-flight requests (at most the grace
/// period), exit. SIGINT: exit now. SIGQUIT: pingora's graceful upgrade.
struct Signals {
    table: Arc<ReleaseTable>,
    grace: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        let mut quit = signal(SignalKind::quit()).expect("SIGQUIT handler");
        tokio::select! {
            _ = term.recv() => {
                let table = self.table.clone();
                let grace = self.grace;
                log::info!("SIGTERM: draining in-flight requests (grace {grace:?})");
                std::thread::spawn(move || drain_then_exit(&table, grace));
                ShutdownSignal::GracefulTerminate
            }
            _ = int.recv() => ShutdownSignal::FastShutdown,
            _ = quit.recv() => ShutdownSignal::GracefulUpgrade,
        }
    }
}

fn drain_then_exit(table: &ReleaseTable, grace: Duration) {
    let deadline = Instant::now() + grace;
    // let requests whose headers were already being read get counted
    std::thread::sleep(Duration::from_millis(50).min(grace));
    while table.stats().total_inflight() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let left = table.stats().total_inflight();
    if left > 0 {
        log::warn!("grace period over with {left} request(s) still in flight; exiting");
    } else {
        log::info!("all requests finished; exiting");
    }
    std::process::exit(0);
}

/// Fails early, with the address, when a listen address cannot be bound.
fn probe(addr: SocketAddr) -> Result<(), ServeError> {
    TcpListener::bind(addr).map(drop).map_err(|source| ServeError::Bind { addr, source })
}

fn access_log(target: &Option<AccessLogTarget>, dropped: IntCounter) -> Result<Option<AccessLog>, ServeError> {
    Ok(match target {
        None => None,
        Some(AccessLogTarget::Stdout) => Some(AccessLog::start(Box::new(std::io::stdout()), dropped)),
        Some(AccessLogTarget::File(path)) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| ServeError::AccessLog { path: path.clone(), source })?;
            Some(AccessLog::start(Box::new(f), dropped))
        }
    })
}

/// Builds everything from a validated config and serves until a signal.
pub fn run(config: Config) -> Result<(), ServeError> {
    for addr in config.listen.iter().chain(std::iter::once(&config.admin_listen)) {
        probe(*addr)?;
    }
    let table = Arc::new(ReleaseTable::new(Arc::new(config.topology), config.control.preview));
    let validator = Validator::new(config.checks);
    let startup = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let controller = Arc::new(startup.block_on(Controller::start(
        table.clone(),
        validator,
        config.control,
        config.seed,
    ))?);
    drop(startup);
    let access_log = access_log(&config.access_log, controller.access_log_dropped())?;

    let grace = config.shutdown_grace;
    let conf = ServerConf {
        threads: config.threads,
        work_stealing: config.work_stealing,
        grace_period_seconds: Some(grace.as_secs().max(1)),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let conf = server.configuration.clone();

    let app = pingora::proxy::http_proxy(&conf, CanopyProxy::new(table.clone(), config.proxy, access_log));
    let mut proxy = Service::new("canopy proxy".into(), ClientTimeouts::new(app, config.client_timeout));
    for addr in &config.listen {
        proxy.add_tcp(&addr.to_string());
    }
    let mut admin = Service::new("canopy admin".into(), AdminApi::new(controller.clone(), Guard::new(config.token)));
    admin.add_tcp(&config.admin_listen.to_string());
    admin.threads = Some(1);

    server.add_service(proxy);
    server.add_service(admin);
    server.add_service(background_service("resolver", Resolver::new(table.clone(), config.resolve_interval)));
    server.add_service(background_service("validation window and warm watch", ControlLoops(controller)));
    log::info!(
        "canopy serving on {} (admin on {})",
        config.listen.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", "),
        config.admin_listen
    );
    server.run(RunArgs { shutdown_signal: Box::new(Signals { table, grace }) });
    Ok(())
}
