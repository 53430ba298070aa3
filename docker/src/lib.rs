//! canopy-docker: the Docker Engine layer of `canopy deploy`.
//!
//! A release of a stack is a set of containers, one per service, all started
//! from images whose tag is the release name and labelled with
//! [`LABEL_MANAGED`], [`LABEL_RELEASE`] and [`LABEL_SERVICE`]. This crate gives
//! the controller the idempotent engine steps a deploy is made of, in the order
//! it calls them:
//!
//! 1. [`Engine::connect`] (API version negotiated with the engine),
//! 2. [`Engine::ensure_network`] and [`Engine::ensure_image`] (pulled with
//!    progress when missing),
//! 3. [`Engine::create`] from a [`ContainerSpec`] (adopting a container canopy
//!    made earlier), [`Engine::start`], [`Engine::wait_healthy`],
//! 4. [`Engine::address`] for the backends, later [`Engine::stop`] and
//!    [`Engine::remove`] to retire and prune,
//!
//! and discovery: [`Engine::list_managed`] and [`Engine::events`].
//!
//! The data plane never sees this crate; only the control plane uses it.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod discovery;
mod engine;
mod error;
mod health;
mod image;
mod lifecycle;
mod network;
mod spec;

pub use discovery::{ContainerEvent, ContainerState, EventKind, Health, ManagedContainer};
pub use engine::Engine;
pub use error::DockerError;
pub use health::Readiness;
pub use image::{image_tag, ImageStatus, PullProgress};
pub use lifecycle::Created;
pub use network::NetworkStatus;
pub use spec::{check_release_tag, parse_env_file, ContainerSpec, Healthcheck, LABEL_MANAGED, LABEL_RELEASE, LABEL_SERVICE};
