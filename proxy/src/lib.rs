//! canopy-proxy: the data plane. A release table (`ArcSwap<Snapshot>`),
//! pure routing, the pingora `ProxyHttp` implementation and lock-free
//! per-request metrics. Never depends on the control plane.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod access_log;
mod answer;
mod canary;
mod certs;
mod client_ip;
mod downstream;
mod drain;
mod endpoint;
mod error_pages;
mod exposition;
mod forwarded;
mod front;
mod h2;
mod handler;
mod names;
mod pause;
mod release;
mod resolver;
mod routing;
mod settings;
mod snapshot;
mod stats;
mod table;
mod tls;
mod topology;

pub use access_log::{AccessLog, AccessRecord};
pub use answer::{MAX_REQUEST_HEADER_BYTES, PREVIEW_HEADER, RELEASE_HEADER};
pub use canary::{Bucket, Canary, BUCKETS as CANARY_BUCKETS, COOKIE as CANARY_COOKIE};
pub use certs::{CertError, CertStore, Certificate, SniTable};
pub use client_ip::{Cidr, ClientIpSource, Resolved, REQUEST_ID, X_FORWARDED_FOR};
pub use downstream::ClientTimeouts;
pub use drain::{Drain, SHUTDOWN_LINGER};
pub use endpoint::{Endpoint, EndpointError, ResolveError};
pub use error_pages::{ErrorPages, Maintenance as MaintenanceAnswer, MAINTENANCE_RETRY_AFTER, PAGE_STATUSES};
pub use exposition::RequestCollector;
pub use front::{FrontCollector, FrontDoor, ACME_CHALLENGE_PREFIX};
pub use handler::{CanopyProxy, RequestCtx};
pub use names::{NameError, ReleaseName, ServiceName, MAX_NAME_LEN};
pub use pause::{Held, Pause, PAUSE_RETRY_AFTER};
/// The metrics library canopy's collectors and counters are built on.
pub use prometheus;
pub use release::{Backends, Release};
pub use resolver::Resolver;
pub use routing::{request_host, Route, RouteError, RouteTable};
pub use settings::{ProxySettings, Tunables};
pub use snapshot::{Miss, Snapshot, Target};
pub use stats::{ReleaseStats, ServiceSample, ServiceStats, StatsRegistry, UpstreamErrorKind, DURATION_BUCKETS};
pub use table::ReleaseTable;
pub use tls::{HandshakeCounts, TlsOptions, TlsTerminator};
pub use topology::{AddressTemplate, Service, TemplateError, Topology, TopologyError};
