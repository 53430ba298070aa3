//! canopy: parse the CLI, load and validate the config (before any port is
//! bound), then serve; or run one admin client command.

use std::process::ExitCode;

use canopy::cli::{Cli, Cmd};
use canopy::{client, config, serve};
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
            Ok(_) => {
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
        cmd => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
            match rt.block_on(client::run(cmd)) {
                Ok(out) => {
                    print!("{out}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            }
        }
    }
}

fn fail(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::FAILURE
}
