//! canopy-admin: the control plane. Admin HTTP API, validation checks, the
//! switch/rollback/retire state machine and the durable state file.
//!
//! Endpoints (JSON unless noted; errors are `{"error": ...}` with 400, 401,
//! 403, 404, 405, 409, 413, 422, 500 or 503):
//! - `GET /` — status page (HTML)
//! - `GET /healthz` — the proxy itself is up (no token needed)
//! - `GET /readyz` — this node should take traffic (in a fleet: live session, caught up; no token needed)
//! - `GET /status` — live, previous, generation, releases with backends and state
//! - `GET /releases`, `GET /releases/{name}` — registered releases
//! - `PUT /releases/{name}` — register, body `{"backends": {"server": ["host:port"]}, "allow_unresolved": false}`
//!   (optional); 422 naming the hosts that do not resolve unless `allow_unresolved` (or `?allow_unresolved=true`)
//! - `POST /releases/{name}/check` — run validation, return the report
//! - `POST /switch` — `{"release": "elm", "expect_generation": 3, "force": false}`; `?force=true`
//! - `POST /rollback` — `{"expect_generation": 4, "force": false}` (optional); `?force=true`
//! - `DELETE /releases/{name}` — retire (drain, hooks, stop its containers); refused for the live release
//! - `POST /deploy` — `{"release": "elm", "keep_failed": false}`: pull, create, start, healthy, checks, switch
//! - `POST /reload` — read proxy.toml again and apply it in place (422 with file:line:column if refused)
//! - `GET /tls` — served certificates (names, file, expiry) and ACME's state
//! - `POST /tls/reload` — read the certificate files again and swap them in (422 naming the file if refused)
//! - `GET /events` — audit log
//! - `GET /metrics` — Prometheus text
//! - `GET /openapi.json` — this API as OpenAPI 3
#![deny(unsafe_code)] // one exception: sched_setscheduler in priority.rs
#![warn(missing_docs)]

mod api;
mod api_error;
mod auth;
mod checks;
mod clock;
mod cluster;
mod controller;
mod error;
mod guard;
mod metrics;
mod persist;
mod priority;
mod replies;
mod report;
mod requests;
mod settings;
mod sources;
mod stack;
mod state;
mod validate;
mod view;

pub use api::{AdminApi, MAX_BODY, OPENAPI};
pub use api_error::ApiError;
pub use auth::Guard;
pub use canopy_docker::Healthcheck;
pub use checks::{validate_path, validate_status, Check, CheckError, CheckKind, SmokeRequest};
pub use clock::{now_ms, UnixMillis};
pub use cluster::{ClusterSettings, Fleet, FleetAck, FleetCollector, FleetView, NodeAck, NodeRecord, NodeView, ETCD_REQUEST_TIMEOUT};
pub use controller::{Controller, Parts, Runtime};
pub use error::ControlError;
pub use guard::{Broken, Evaluation, Figures, GuardView, Readiness, Rule, ServiceJudgement, Verdict, WatchView};
pub use persist::{journal_path, load as load_state, Entry, PersistError, StateStore, Store};
pub use priority::{prioritise_current_thread, AdminPriority, Obtained};
pub use replies::{
    CanaryView, CertView, ContainerStep, ContainerView, DeployFailure, DeployReply, DeployStep, Discovered, ErrorReply, FlipReply,
    HookResult, MaintenanceReply, ReloadReply, RetireReply, TlsView,
};
pub use report::{CheckResult, Report};
pub use requests::{DeployRequest, SwitchRequest};
pub use settings::{CanarySettings, ControlSettings, DeploySettings, GuardSettings, Seed, ServiceContainer};
pub use sources::{CertSource, ConfigSource, Reload, TlsParts};
pub use state::{
    BackendMap, CanaryState, Command, ContainerChange, Event, Failure, Maintenance, Previous, ReleaseRecord, State, StateError,
    STATE_VERSION,
};
pub use validate::{Mode, Validator};
pub use view::{LiveHealthView, PauseView, PreviousView, ReleaseContainer, ReleaseState, ReleaseView, ServiceView, StatusView};
