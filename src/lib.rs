//! The `canopy` binary's library half: config loading, the CLI, the admin
//! client and server assembly (kept here so tests and benches can use them).
#![forbid(unsafe_code)]

pub mod acme;
pub mod certfiles;
pub mod cli;
pub mod client;
pub mod config;
pub mod handover;
pub mod preflight;
pub mod reload;
pub mod serve;
