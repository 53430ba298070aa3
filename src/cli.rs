//! Command-line interface: `serve`, `check-config` and the admin client commands.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// canopy: a reverse proxy with built-in blue/green release switching.
#[derive(Debug, Parser)]
#[command(name = "canopy", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Cmd,
}

/// How client commands reach the admin API. Flags win over environment
/// variables; an explicit address or token file wins over one read from a
/// config file: `--admin`, then `-c`, then `CANOPY_ADMIN`, then
/// `CANOPY_CONFIG`, then `127.0.0.1:9901` (and the same order for the token
/// file). Every connection or authentication error names these.
#[derive(Debug, Clone, Args)]
pub struct ClientOpts {
    /// canopy's config file: the admin address (`[admin] listen`) and token
    /// file (`token-file`) are read from it [env: CANOPY_CONFIG].
    #[arg(short = 'c', long = "config", value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// Admin API address: `host:port` or `http://host:port` [env:
    /// CANOPY_ADMIN] [default: from -c, else 127.0.0.1:9901].
    #[arg(long, value_name = "ADDRESS", global = true)]
    pub admin: Option<String>,
    /// File holding the admin bearer token [env: CANOPY_TOKEN_FILE]
    /// [default: `token-file` from -c].
    #[arg(long, value_name = "FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// Print the raw JSON reply instead of text (a refusal too, on stdout,
    /// with a non-zero exit).
    #[arg(long, global = true)]
    pub json: bool,
}

/// How a switch or deploy goes live: at once (guarded), or as a canary.
#[derive(Debug, Clone, Args)]
pub struct GoLiveOpts {
    /// Send this share of the traffic to the release step by step (percent,
    /// e.g. `5,25,50`), each step judged by the guard, then switch; without
    /// a value: the steps of `[releases.canary]`.
    #[arg(long, value_delimiter = ',', num_args = 0.., value_name = "PERCENT,...")]
    pub canary: Option<Vec<f64>>,
    /// Do not judge the new release after it goes live (no automatic rollback).
    #[arg(long)]
    pub no_guard: bool,
    /// Hold traffic around the flip: pause, run `[releases] migrate`,
    /// validate, flip, resume (any failure resumes on the old release).
    #[arg(long, conflicts_with = "canary")]
    pub pause: bool,
    /// With `--pause`: the longest hold, then held requests get 503.
    #[arg(long, value_name = "SPAN", default_value = "30s")]
    pub pause_max: String,
}

/// Options shared by `switch` and `rollback`.
#[derive(Debug, Clone, Args)]
pub struct FlipOpts {
    /// Skip validation (logged, and reported in the reply and the audit log).
    #[arg(long)]
    pub force: bool,
    /// Refuse unless the generation is still this.
    #[arg(long)]
    pub expect_generation: Option<u64>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Run the proxy and admin API.
    Serve {
        /// Config file.
        #[arg(short, long, env = "CANOPY_CONFIG", default_value = "proxy.toml")]
        config: PathBuf,
        /// Take over from the canopy running with this config (same state
        /// file): it stops taking changes and hands its listening sockets
        /// over, finishes its in-flight requests and exits. No connection is
        /// refused meanwhile. For a new binary, a changed config, or both.
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate a config file and exit (0 = valid).
    CheckConfig {
        /// Config file.
        #[arg(short, long, env = "CANOPY_CONFIG", default_value = "proxy.toml")]
        config: PathBuf,
    },
    /// Show the live release, the previous one and every registered release.
    Status(#[command(flatten)] ClientOpts),
    /// List registered releases with their backends.
    Releases(#[command(flatten)] ClientOpts),
    /// Register a release (or replace its backends).
    Register {
        /// Release name, e.g. `elm`.
        name: String,
        /// Explicit backend `service=host:port` (repeatable); other services use the address template.
        #[arg(long = "backend", value_name = "SERVICE=HOST:PORT")]
        backends: Vec<String>,
        /// Register even if a backend's host name does not resolve yet (its
        /// containers start later); otherwise that is refused, naming it.
        #[arg(long)]
        allow_unresolved: bool,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Run every validation check of a release and print the report.
    Check {
        /// Release name.
        name: String,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Validate a release and flip all traffic to it.
    Switch {
        /// Release name.
        name: String,
        #[command(flatten)]
        flip: FlipOpts,
        #[command(flatten)]
        live: GoLiveOpts,

        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Deploy a release from its image tags: pull, create and start its
    /// containers, wait until healthy, validate, switch. Prints each step.
    Deploy {
        /// Release name = image tag, e.g. `elm`.
        name: String,
        /// Keep the containers of a failed deploy for inspection.
        #[arg(long)]
        keep_failed: bool,
        #[command(flatten)]
        live: GoLiveOpts,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Flip back to the previous release.
    Rollback {
        #[command(flatten)]
        flip: FlipOpts,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Retire a release: drain it, run retire hooks, drop it.
    Retire {
        /// Release name.
        name: String,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Show what the guard watches now (the new release's figures against
    /// the previous release's), its latest verdict and the rollback readiness.
    Guard(#[command(flatten)] ClientOpts),
    /// The canary in progress: `show` (default), `promote` (switch to its
    /// release now, validated) or `abort` (everyone back on the live release).
    Canary {
        /// `show`, `promote` or `abort`.
        #[arg(value_enum, default_value_t = CanaryAction::Show)]
        action: CanaryAction,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Maintenance mode: `show` (default); `on`: every routed request is
    /// answered 503 with `Retry-After` (a page with `--message` for
    /// browsers, JSON for API clients), durable across restarts and
    /// upgrades, until `off`.
    Maintenance {
        /// `show`, `on` or `off`.
        #[arg(value_enum, default_value_t = MaintenanceAction::Show)]
        action: MaintenanceAction,
        /// With `on`: what shoppers read.
        #[arg(long)]
        message: Option<String>,
        /// With `on`: the expected end, a time (`2026-12-06T10:00:00Z`) or
        /// a span from now (`30m`): shown, and counted down in `Retry-After`.
        #[arg(long)]
        until: Option<String>,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Hold new requests (not refused, not failed) until `canopy resume`;
    /// past `--max`, or beyond `--max-held` held at once, they get 503 with
    /// `Retry-After`. In-flight requests finish; health and ACME paths pass.
    Pause {
        /// The longest hold.
        #[arg(long, value_name = "SPAN", default_value = "30s")]
        max: String,
        /// The most requests held at once.
        #[arg(long, value_name = "N")]
        max_held: Option<usize>,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Release every held request: each is routed by the table as it is now.
    Resume(#[command(flatten)] ClientOpts),
    /// Show the switch audit log.
    Events(#[command(flatten)] ClientOpts),
    /// Read proxy.toml again and apply it in place (routes, services, checks,
    /// timeouts, ...); refused with file:line:column if invalid, or naming the
    /// settings that need `serve --upgrade`. Same as SIGHUP.
    Reload(#[command(flatten)] ClientOpts),
    /// HTTPS certificates: `show` (default) lists the served certificates
    /// with their expiry and ACME's state; `reload` reads the certificate
    /// files again and swaps them in without dropping a connection (refused,
    /// naming the file, if one is bad: the old certificates stay).
    Tls {
        /// `show` or `reload`.
        #[arg(value_enum, default_value_t = TlsAction::Show)]
        action: TlsAction,
        #[command(flatten)]
        opts: ClientOpts,
    },
}

/// What `canopy tls` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TlsAction {
    /// List the served certificates.
    Show,
    /// Re-read the certificate files.
    Reload,
}

/// What `canopy canary` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CanaryAction {
    /// Show the canary in progress.
    Show,
    /// Switch to the canary's release now (validated).
    Promote,
    /// Send everyone back to the live release.
    Abort,
}

/// What `canopy maintenance` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MaintenanceAction {
    /// Show whether maintenance mode is on.
    Show,
    /// Turn it on.
    On,
    /// Turn it off.
    Off,
}
