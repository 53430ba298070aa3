//! The real `canopy` binary as a test runs it: started in a directory with a
//! config whose ports the kit chose, ready once the process itself listens on
//! every port, killed on drop; its log, its admin CLI and its durable files.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::ports::{reserve, Port};
use crate::process::listens;

/// How long canopy may take to listen on its ports after start.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The `canopy` binary under test: `CARGO_BIN_EXE_canopy` (cargo sets it
/// when it builds and runs the root package's tests and benches), else
/// `canopy` beside the running test's directory (`target/<profile>/deps/..`).
pub fn canopy_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("CARGO_BIN_EXE_canopy") {
        return path.into();
    }
    let exe = std::env::current_exe().expect("the test's own path");
    let mut dir = exe.parent().expect("the test's directory");
    if dir.ends_with("deps") || dir.ends_with("examples") {
        dir = dir.parent().expect("the profile directory");
    }
    let bin = dir.join("canopy");
    assert!(bin.exists(), "{} is missing: run the tests through cargo (cargo test builds it)", bin.display());
    bin
}

/// The ports of a config template: `{proxy_port}`, `{admin_port}` and, when
/// the template has it, `{tls_port}`, each held until the process starts.
#[derive(Debug)]
pub struct ConfigPorts {
    /// `{proxy_port}`.
    pub proxy: Port,
    /// `{admin_port}`.
    pub admin: Port,
    /// `{tls_port}`, when the template has one.
    pub tls: Option<Port>,
}

impl ConfigPorts {
    /// Lets every port go, just before the process that binds them starts
    /// (see [`Port::release`]).
    pub fn release(self) {
        let ConfigPorts { proxy, admin, tls } = self;
        proxy.release();
        admin.release();
        tls.map(Port::release);
    }
}

/// `template` with `{proxy_port}`, `{admin_port}` and `{tls_port}` set to
/// ports held for it (`proxy` when the caller holds that one already).
pub fn fill_ports_with(template: &str, proxy: Option<Port>) -> (String, ConfigPorts) {
    let proxy = proxy.unwrap_or_else(reserve);
    let admin = reserve();
    let tls = template.contains("{tls_port}").then(reserve);
    let text = template
        .replace("{proxy_port}", &proxy.port().to_string())
        .replace("{admin_port}", &admin.port().to_string())
        .replace("{tls_port}", &tls.as_ref().map_or(0, Port::port).to_string());
    (text, ConfigPorts { proxy, admin, tls })
}

/// `template` with its ports set to ports held for it (see [`ConfigPorts`]).
pub fn fill_ports(template: &str) -> (String, ConfigPorts) {
    fill_ports_with(template, None)
}

/// A running canopy process (`canopy serve`), killed on drop.
#[derive(Debug)]
pub struct Canopy {
    /// The process.
    pub child: Child,
    /// Its directory: its config (proxy.toml unless started with
    /// [`Canopy::start_as`]), canopy.log, the state file.
    pub dir: PathBuf,
    /// The proxy listener.
    pub proxy: SocketAddr,
    /// The admin listener.
    pub admin: SocketAddr,
    /// The TLS listener, when the config has `{tls_port}`.
    pub tls: Option<SocketAddr>,
    /// The config it runs with.
    pub config_text: String,
    /// The config with its port placeholders, for restarts.
    pub template: String,
    /// Its temporary directory, when the kit made it.
    pub tmp: Option<tempfile::TempDir>,
}

impl Canopy {
    /// Starts canopy in a fresh temp dir with `config` (ports filled in).
    pub fn start(config: &str) -> Canopy {
        let tmp = tempfile::tempdir().expect("temp dir");
        let mut c = Self::start_in(tmp.path(), config);
        c.tmp = Some(tmp);
        c
    }

    /// Starts canopy in `dir` (keeps an existing state file there).
    pub fn start_in(dir: &Path, config: &str) -> Canopy {
        Self::start_file(dir, "proxy.toml", config)
    }

    /// Starts canopy in a fresh temp dir with its config in a file named
    /// `file` (e.g. `ux.toml`: messages must name the file loaded).
    pub fn start_as(file: &str, config: &str) -> Canopy {
        let tmp = tempfile::tempdir().expect("temp dir");
        let mut c = Self::start_file(tmp.path(), file, config);
        c.tmp = Some(tmp);
        c
    }

    fn start_file(dir: &Path, file: &str, config: &str) -> Canopy {
        for _ in 0..5 {
            if let Some(c) = Self::try_start(dir, file, config, None) {
                return c;
            }
        }
        panic!("canopy did not start: its ports were taken five times over");
    }

    /// Starts canopy in `dir` with the proxy on `proxy`, a port the caller
    /// held because another server had to know it first.
    pub fn start_in_on(dir: &Path, config: &str, proxy: Port) -> Canopy {
        let port = proxy.port();
        Self::try_start(dir, "proxy.toml", config, Some(proxy)).unwrap_or_else(|| panic!("canopy did not start on port {port}"))
    }

    fn try_start(dir: &Path, file: &str, template: &str, proxy: Option<Port>) -> Option<Canopy> {
        let (text, ports) = fill_ports_with(template, proxy);
        std::fs::write(dir.join(file), &text).expect("write the config");
        let log = std::fs::File::create(dir.join("canopy.log")).expect("create canopy.log");
        let (pp, ap, tp) = (ports.proxy.port(), ports.admin.port(), ports.tls.as_ref().map(Port::port));
        let mut cmd = Command::new(canopy_bin());
        cmd.args(["serve", "-c"]).arg(dir.join(file)).env("RUST_LOG", "info").stdout(Stdio::null()).stderr(log);
        ports.release();
        let child = cmd.spawn().expect("start canopy");
        let loopback = |p| SocketAddr::from(([127, 0, 0, 1], p));
        let mut c = Canopy {
            child,
            dir: dir.to_path_buf(),
            proxy: loopback(pp),
            admin: loopback(ap),
            tls: tp.map(loopback),
            config_text: text,
            template: template.to_string(),
            tmp: None,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = c.child.try_wait() {
                let log = c.log();
                if log.contains("cannot listen") {
                    return None;
                }
                panic!("canopy exited with {status}:\n{log}");
            }
            // its own sockets, not another test's server on the same port
            let pid = c.child.id();
            if listens(pid, pp) && listens(pid, ap) && tp.is_none_or(|tp| listens(pid, tp)) {
                return Some(c);
            }
            // pingora waits for a port someone took after canopy's own probe
            if c.log().contains("is in use, will try again") {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("canopy not ready in {READY_TIMEOUT:?}:\n{}", c.log());
    }

    /// What canopy logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("canopy.log")).unwrap_or_default()
    }

    /// `http://<proxy><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.proxy, path)
    }

    /// `http://<admin><path>`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// The state file (the configs of this kit name it `state.json`).
    pub fn state_file(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    /// What canopy would start from after a restart, as JSON, read by `load`
    /// (the tests pass `canopy_admin::load_state`: canopy's own reader).
    pub fn durable_state<S, E>(&self, load: impl FnOnce(&Path) -> Result<Option<S>, E>) -> Value
    where
        S: serde::Serialize,
        E: std::fmt::Display,
    {
        durable_state_in(&self.dir, load)
    }

    /// Every file beside the state file whose name starts with its name
    /// (state file, journal, pid file, temporary files), by name: compare
    /// two of these to show that nothing was written.
    pub fn durable_files(&self) -> BTreeMap<String, Vec<u8>> {
        let mut files = BTreeMap::new();
        for e in std::fs::read_dir(&self.dir).expect("canopy's directory").flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("state.json") && e.file_type().is_ok_and(|t| t.is_file()) {
                files.insert(name, std::fs::read(e.path()).unwrap_or_else(|err| panic!("{}: {err}", e.path().display())));
            }
        }
        assert!(files.contains_key("state.json"), "no state file in {}: {:?}", self.dir.display(), files.keys());
        files
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Runs a client command of the binary against this canopy's admin API.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(canopy_bin()).args(args).env("CANOPY_ADMIN", format!("http://{}", self.admin)).output().expect("run canopy")
    }
}

/// Runs the binary's command `args` with exactly the `CANOPY_*` variables in
/// `env` (none from the test's own environment): how an operator's shell
/// runs it.
pub fn canopy_cli(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(canopy_bin());
    cmd.args(args);
    for var in ["CANOPY_ADMIN", "CANOPY_CONFIG", "CANOPY_TOKEN_FILE"] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied()).output().expect("run canopy")
}

impl Drop for Canopy {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The durable state in `dir` (its `state.json` and journal), read by `load`
/// the way canopy reads it at start-up, as JSON. Panics with the reason if it
/// does not load.
pub fn durable_state_in<S, E>(dir: &Path, load: impl FnOnce(&Path) -> Result<Option<S>, E>) -> Value
where
    S: serde::Serialize,
    E: std::fmt::Display,
{
    let state = load(&dir.join("state.json"))
        .unwrap_or_else(|e| panic!("durable state does not load: {e}"))
        .unwrap_or_else(|| panic!("no durable state in {}", dir.display()));
    serde_json::to_value(state).expect("state as JSON")
}
