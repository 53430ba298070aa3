//! canopy's test kit, used by its tests, benchmarks and examples (as a
//! dev-dependency only, like linkerd2-proxy's `linkerd-app-test`): real
//! upstream servers, loopback ports without races, process handles for the
//! `canopy` binary and the programs tests drive (pebble, docker-registry),
//! client load with its checks, TLS test certificates, and the configs of
//! canopy, nginx and HAProxy.
//!
//! Tests usually `use canopy_testkit::*;` for the items re-exported here and
//! name the modules for the rest (`canopy_testkit::load::Load`).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod api;
pub mod bench;
mod canopy;
pub mod configs;
pub mod etcd;
pub mod fleet;
pub mod history;
pub mod load;
pub mod pebble;
pub mod ports;
pub mod process;
pub mod registry;
pub mod relay;
pub mod tls;
pub mod traffic;
pub mod upstream;
mod wait;

pub use api::{client, get, inflight, register, status, switch, two_releases, two_releases_on, two_releases_with, Stack};
pub use canopy::{canopy_bin, canopy_cli, durable_state_in, fill_ports, Canopy, ConfigPorts};
pub use configs::config;
pub use ports::{dead_addr, reserve, reserve_many, Port};
pub use process::{listens, processes_with, sockets_to, tcp_states, wait_listening, Proc};
pub use wait::{eventually, until_some};
