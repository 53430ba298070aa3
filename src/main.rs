//! canopy: parse the CLI, load and validate the config (before any port is
//! bound), then serve; or run one admin client command.

use std::process::ExitCode;

use canopy::cli::{Cli, Cmd};
use canopy::client::ClientError;
use canopy::{client, config, preflight, serve};
use clap::Parser;

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match Cli::parse().command {
        Cmd::Serve { config, upgrade } => match config::load(&config) {
            Err(e) => fail(&e),
            Ok(cfg) => match serve::run(cfg, upgrade) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e),
            },
        },
        Cmd::CheckConfig { config } => match config::load(&config) {
            Ok(cfg) => {
                let warnings = runtime().block_on(preflight::unresolved_seeds(&cfg));
                for w in &warnings {
                    eprintln!("warning: {w}");
                }
                match warnings.len() {
                    0 => println!("{}: ok", config.display()),
                    n => println!("{}: ok, with {n} warning(s) above", config.display()),
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
        cmd => match runtime().block_on(client::run(cmd)) {
            Ok(out) => {
                print!("{out}");
                ExitCode::SUCCESS
            }
            // --json: the error object on stdout, for `| jq`
            Err(ClientError::Json(out)) => {
                print!("{out}");
                ExitCode::FAILURE
            }
            Err(e) => fail(&e),
        },
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime")
}

fn fail(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::FAILURE
}
